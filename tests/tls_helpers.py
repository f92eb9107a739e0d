"""Real certificates for tests: trustme CAs and node pairs written to files."""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

from agent.peers.tls import ClientTls


@dataclass
class NodeFiles:
    cert: Path
    key: Path
    ca: Path  # the CA this node trusts for its peers

    def settings(self, **extra) -> dict:
        """Config values (node_config / AgentProcess keys) that serve and trust TLS."""
        return {"tls_cert": self.cert, "tls_key": self.key, "tls_ca": self.ca, **extra}

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def write_ca(ca: trustme.CA, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def issue(ca: trustme.CA, directory: Path, name: str, trust: trustme.CA | None = None,
          not_before: dt.datetime | None = None, not_after: dt.datetime | None = None
          ) -> NodeFiles:
    """A pair from `ca` for 127.0.0.1/localhost in `directory`, trusting `trust` (else
    `ca`)."""
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert("127.0.0.1", "localhost", common_name=name,
                         not_before=not_before, not_after=not_after)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    for i, blob in enumerate(leaf.cert_chain_pems):
        blob.write_to_path(str(cert), append=i > 0)
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return NodeFiles(cert, key, write_ca(trust or ca, directory / f"trust-{name}"))


def served_certificate(port: int, ca: Path) -> bytes:
    """The DER certificate a fresh handshake with 127.0.0.1:`port` gets (blocking)."""
    import socket

    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            return s.getpeercert(binary_form=True)


def loopback_tls(directory: Path) -> tuple[ssl.SSLContext, ClientTls]:
    """A server context for 127.0.0.1 from a fresh CA, and a client's trust in that
    CA (its PEM written in `directory`): a TLS peer on loopback for one test."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    return server, ClientTls(write_ca(ca, directory))

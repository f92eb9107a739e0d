"""The TLS options of every command that talks to a node, and the client TLS they make."""

from __future__ import annotations

import argparse

from protocol.errors import ConfigError


def client_tls(args: argparse.Namespace):
    """The `ClientTls` those options describe; a bad file is a `ConfigError`."""
    from ..peers.tls import ClientTls, TlsError

    try:
        return ClientTls.from_args(args.tls_ca, args.tls_cert, args.tls_key)
    except TlsError as e:
        raise ConfigError(str(e)) from None


def add_client_tls_args(p: argparse.ArgumentParser) -> None:
    """The TLS options of every command that talks to a node."""
    p.add_argument("--tls-ca", metavar="FILE",
                   help="CA certificate(s) trusted for https:// nodes (default: system bundle)")
    p.add_argument("--tls-cert", metavar="FILE",
                   help="client certificate, for a node that requires one (--tls-client-auth)")
    p.add_argument("--tls-key", metavar="FILE", help="the key of --tls-cert")

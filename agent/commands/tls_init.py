"""`segsync tls init`: a private cluster CA (made once) and a certificate and key for
one node, with the `cryptography` library, so an operator needs no openssl recipes.

Keys are EC P-256 (small, and the cheapest handshakes). Files are written whole
under a temporary name and renamed into place, so a running agent re-reading its
pair never sees half a file; keys are created with mode 0600 from the start.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

from protocol.errors import ConfigError
from protocol.transport import node_alt_names

CA_CERT, CA_KEY = "ca.crt", "ca.key"
CLOCK_SKEW = dt.timedelta(hours=1)  # not_before this far back: peers' clocks differ


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Whole, fsynced, created with `mode`, then renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # O_CREAT's mode passes through the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(name: str, days: int, now: dt.datetime):
    """(certificate, key) of a new self-signed CA that may sign node certificates only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_node_cert(ca_cert, ca_key, node: str, dns: list[str], ips: list[str], days: int,
                   now: dt.datetime):
    """(certificate, key) of one node, for serving and as a client (mutual TLS).
    ValueError for a bad name or address."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    dns_names, addresses = node_alt_names(node, dns, ips)
    key = _new_key()
    alt_names = [x509.DNSName(d) for d in dns_names] + [x509.IPAddress(a) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def load_or_make_ca(ca_dir: Path, name: str, days: int, now: dt.datetime, out) -> tuple:
    """The cluster CA in `ca_dir`: loaded if there, else made (key 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    if cert_path.exists() or key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"CA in {ca_dir}: cannot use {CA_CERT} and {CA_KEY}: {e}") from None
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            raise ConfigError(f"CA in {ca_dir}: {CA_KEY} is not the key of {CA_CERT}")
        print(f"using the CA in {ca_dir}", file=out)
        return cert, key
    ca_dir.mkdir(parents=True, exist_ok=True)
    cert, key = make_ca(name, days, now)
    write_file(key_path, key_pem(key), 0o600)
    write_file(cert_path, cert_pem(cert), 0o644)
    print(f"made a new CA: {cert_path} (give it to every node as --tls-ca), "
          f"{key_path} (keep it secret: it signs node certificates)", file=out)
    return cert, key


def tls_init(out_dir: Path, node: str, ca_dir: Path | None, dns: list[str], ips: list[str],
             days: int, ca_days: int, force: bool, out=None) -> tuple[Path, Path]:
    """Make (or reuse) the CA and write NODE.crt and NODE.key into `out_dir`. Every
    check runs before anything is written: bad input changes nothing."""
    out = out or sys.stdout
    if days <= 0 or ca_days <= 0:
        raise ConfigError("--days and --ca-days must be > 0")
    if not node or "/" in node or node.startswith("."):
        raise ConfigError(f"--node {node!r}: a plain name (it names the files too)")
    try:
        node_alt_names(node, dns, ips)
    except ValueError as e:
        raise ConfigError(f"subject alternative name {e}") from None
    cert_path, key_path = out_dir / f"{node}.crt", out_dir / f"{node}.key"
    if not force and (cert_path.exists() or key_path.exists()):
        raise ConfigError(f"{cert_path} or {key_path} exists; pass --force to replace them "
                          "(a running agent picks the new pair up)")
    now = dt.datetime.now(dt.timezone.utc)
    ca_cert, ca_key = load_or_make_ca(ca_dir or out_dir, "segsync cluster CA", ca_days, now, out)
    cert, key = make_node_cert(ca_cert, ca_key, node, dns, ips, days, now)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_file(key_path, key_pem(key), 0o600)
    write_file(cert_path, cert_pem(cert), 0o644)
    if ca_dir is not None and ca_dir.resolve() != out_dir.resolve():
        write_file(out_dir / CA_CERT, cert_pem(ca_cert), 0o644)
    print(f"node {node}: {cert_path}, {key_path} (mode 0600), valid {days} days; "
          f"serve with --tls-cert {cert_path} --tls-key {key_path} "
          f"--tls-ca {out_dir / CA_CERT}", file=out)
    return cert_path, key_path


def cmd_tls(args: argparse.Namespace) -> int:
    tls_init(Path(args.out), args.node, Path(args.ca) if args.ca else None, args.dns or [],
             args.ip or [], args.days, args.ca_days, args.force)
    return 0


def register(sub) -> None:
    tls = sub.add_parser("tls", help="certificates for TLS between nodes")
    actions = tls.add_subparsers(dest="tls_command", required=True, metavar="ACTION")
    p = actions.add_parser("init", help="a cluster CA (made once) and one node's certificate")
    p.add_argument("--out", required=True, metavar="DIR", help="where NODE.crt and NODE.key go")
    p.add_argument("--node", required=True, metavar="NAME",
                   help="node name: the certificate's name (DNS name or IP address)")
    p.add_argument("--ca", metavar="DIR",
                   help=f"the cluster CA ({CA_CERT}, {CA_KEY}); made there if absent "
                        "(default: --out)")
    p.add_argument("--dns", action="append", metavar="NAME", help="another DNS name; repeat")
    p.add_argument("--ip", action="append", metavar="ADDR", help="an IP address; repeat")
    p.add_argument("--days", type=int, default=825, help="node certificate validity (825)")
    p.add_argument("--ca-days", type=int, default=3650, help="CA validity if made (3650)")
    p.add_argument("--force", action="store_true", help="replace this node's existing pair")
    p.set_defaults(func=cmd_tls)


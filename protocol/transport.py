"""Transport-security rules, sans-I/O: when a node may listen or talk in clear, which
TLS options go together, what a certificate's validity dates mean right now, and
which subject alternative names a node certificate gets.

The bearer token guards every write; over plain HTTP anyone on the path reads it.
These rules make clear text on a public network an explicit operator choice
(`insecure`), never an accident. Each function returns what is wrong (a sentence an
operator can act on) or None, so the caller decides how to fail.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from typing import Collection, Iterable


def listen_problem(host: str, loopback: bool, has_token: bool, has_tls: bool,
                   insecure: bool) -> str | None:
    """A non-loopback address needs a token AND TLS, unless `insecure`."""
    if loopback or insecure:
        return None
    missing = []
    if not has_token:
        missing.append("a token (--token-file)")
    if not has_tls:
        missing.append("TLS (--tls-cert and --tls-key)")
    if not missing:
        return None
    return (f"refusing to listen on {host} without {' and '.join(missing)}; "
            "pass --insecure to allow it")


def plain_peer_problem(url: str, scheme: str, loopback: bool, has_token: bool,
                       insecure: bool) -> str | None:
    """An http:// peer off this machine would get the token in clear text."""
    if scheme != "http" or loopback or not has_token or insecure:
        return None
    return (f"refusing peer {url}: plain http to a non-loopback host would send the "
            "token in clear; use https:// (with --tls-ca) or pass --insecure")


def token_receivers(entries: Iterable[tuple[str, str | None]], this_node: str,
                    without_token: Collection[str]) -> list[str]:
    """The URLs among (url, name) peer entries that a node would send its token to: not
    its own line (a node file lists every node, this one too) nor a peer configured
    as a wubloader node (its client never carries the token)."""
    return [url for url, name in entries
            if not (name is not None and name == this_node) and url not in without_token]


def tls_options_problem(cert: bool, key: bool, ca: bool, client_auth: bool) -> str | None:
    """Which TLS options need which others."""
    if cert != key:
        return ("--tls-cert and --tls-key go together: "
                f"{'--tls-key' if cert else '--tls-cert'} is missing")
    if client_auth and not ca:
        return "--tls-client-auth needs --tls-ca (the CA whose client certificates are accepted)"
    if client_auth and not cert:
        return ("--tls-client-auth needs --tls-cert and --tls-key "
                "(this node presents its own certificate to its peers)")
    return None


def validity_problem(not_before: dt.datetime, not_after: dt.datetime,
                     now: dt.datetime) -> str | None:
    """Why a certificate is not valid at `now` (peers will refuse it), or None."""
    if now < not_before:
        return f"not valid before {not_before:%Y-%m-%d %H:%M:%S} UTC"
    if now > not_after:
        return f"expired at {not_after:%Y-%m-%d %H:%M:%S} UTC"
    return None


_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def is_dns_name(text: str) -> bool:
    """A host name (labels of letters, digits and inner hyphens; `*.` first allowed)."""
    if not text or len(text) > 253:
        return False
    labels = text.rstrip(".").split(".")
    if labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    return all(_DNS_LABEL.match(label) for label in labels)


def node_alt_names(node: str, dns: list[str], ips: list[str]
                   ) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """(DNS names, IP addresses) a node certificate names: the node name (as an IP if
    it is one) plus the extras, without duplicates. ValueError says which one is bad."""
    dns_out: list[str] = []
    ip_out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for text in [node, *dns]:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            if not is_dns_name(text):
                raise ValueError(f"{text!r} is not a valid DNS name") from None
            if text.lower() not in (d.lower() for d in dns_out):
                dns_out.append(text)
            continue
        if address not in ip_out:
            ip_out.append(address)
    for text in ips:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address") from None
        if address not in ip_out:
            ip_out.append(address)
    return dns_out, ip_out


def reload_due(loaded: tuple | None, previous: tuple | None, current: tuple | None) -> bool:
    """Whether to re-read a certificate/key pair, from the files' signature (mtime,
    size, inode of each; None when unreadable) as loaded, at the previous look and
    now. Act only on a signature that differs from the loaded one and has held still
    for one look: renewal tools write the certificate and the key one after the other,
    and the half-written state in between is not a pair worth reporting as broken. A
    file that disappears is no reason to act: the pair in use stays."""
    return current is not None and current != loaded and current == previous


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

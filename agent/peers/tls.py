"""TLS for a node: the server's and the clients' `ssl.SSLContext`s, built once from
the configuration, and the re-reading of the certificate/key pair when it changes.

hypercorn builds its server context once and every handshake takes the certificate
from that context object when it starts; `load_cert_chain` into the same object
therefore switches new handshakes to a renewed pair without a restart
(tests/test_tls.py checks it). A pair is checked in a scratch context before it
touches a live one: a failed `load_cert_chain` can leave a context with the new
certificate and no key. The bytes checked are the bytes loaded (both loads read the
same private copies), so a file changing in between cannot slip through.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import trio

from protocol import messages as m
from protocol.transport import reload_due, validity_problem

log = logging.getLogger(__name__)

DEFAULT_RELOAD_INTERVAL = 5.0  # seconds between looks at the certificate/key files
HANDSHAKE_TIMEOUT = 10.0  # a client that stalls its handshake holds a connection this long


_plain_receive_some = trio.SSLStream.receive_some


async def _gathering_receive_some(self, max_bytes=None):
    """trio's SSLStream.receive_some, returning every complete record already received
    (up to `max_bytes`) instead of one: OpenSSL hands out one 16 KiB record per read,
    and each read climbs the whole HTTP stack (httpcore/h11/httpx on the client,
    h11/ASGI in hypercorn), so a TLS catch-up paid 4-64x the climbs of plain http.
    The extra records are decrypted from the buffer trio already filled, without
    awaiting (nothing can interleave); anything but data (no complete record, an
    alert, the peer's close) is left for the next call to meet the usual way."""
    data = await _plain_receive_some(self, max_bytes)
    if max_bytes is None or not data or len(data) >= max_bytes:
        return data
    parts = [data]
    total = len(data)
    ssl_object = self._ssl_object
    while total < max_bytes:
        try:
            more = ssl_object.read(max_bytes - total)
        except ssl.SSLError:
            break
        if not more:
            break
        parts.append(more)
        total += len(more)
    return b"".join(parts) if len(parts) > 1 else data


# What an SSLStream asks its socket for at once (trio's default: 64 KiB). The socket
# gives what it holds, so a read never waits for more; gathering then hands a
# client's 1 MiB read (agent/peers/client.py RESPONSE_READ_BYTES) up to 1 MiB of records:
# a TLS catch-up's client CPU over plain http went from +30-60% to +5-10%
# (bench/tls_overhead.py). Memory stays bounded: one read per connection at a time.
TRANSPORT_READ_BYTES = 1024 * 1024


def install_gathering_reads() -> None:
    """Make every trio SSLStream (httpx's clients, hypercorn's server) gather records.
    SSLStream is the only caller of SocketStream.receive_some without a size (httpcore
    and hypercorn pass theirs): the default size is only its transport reads'."""
    trio.SSLStream.receive_some = _gathering_receive_some  # type: ignore[method-assign]
    trio._highlevel_socket.DEFAULT_RECEIVE_SIZE = TRANSPORT_READ_BYTES


install_gathering_reads()


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be used, and why."""


@dataclass(frozen=True)
class KeyPair:
    """A certificate chain and its key, read and checked together."""
    cert_pem: bytes
    key_pem: bytes
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime
    signature: tuple  # of the files it was read from (see file_signature)


def file_signature(*paths: Path) -> tuple | None:
    """(mtime, size, inode) of each file; None if any cannot be looked at."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return None
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def _no_password() -> bytes:
    raise TlsError("the key is encrypted; segsync needs an unencrypted key file (mode 0600)")


@contextmanager
def _private_files(*blobs: bytes) -> Iterator[list[str]]:
    """Paths holding `blobs`, readable by this process only, gone on exit: anonymous
    memory files where Linux has them (the key never touches a disk), else files in a
    private (0700) temporary directory."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds = []
        try:
            for blob in blobs:
                fds.append(os.memfd_create("segsync-tls", os.MFD_CLOEXEC))
                view = memoryview(blob)
                while view:
                    view = view[os.write(fds[-1], view):]
            yield [f"/proc/self/fd/{fd}" for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="segsync-tls-") as directory:
        paths = []
        for i, blob in enumerate(blobs):
            path = os.path.join(directory, str(i))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            paths.append(path)
        yield paths


def _load_chain(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """`load_cert_chain` from bytes (it only takes paths)."""
    with _private_files(cert_pem, key_pem) as (cert_path, key_path):
        context.load_cert_chain(cert_path, key_path, password=_no_password)


def read_pair(cert_path: Path, key_path: Path) -> KeyPair:
    """Read a certificate (chain) and its key and check that they make a usable pair.
    Blocking file I/O: call it in a thread from trio. TlsError says what is wrong."""
    from cryptography import x509  # imported on use: the one-shot's start-up stays light

    signature = file_signature(cert_path, key_path)
    try:
        cert_pem = Path(cert_path).read_bytes()
    except OSError as e:
        raise TlsError(f"tls-cert {cert_path}: {e.strerror or e}") from None
    try:
        key_pem = Path(key_path).read_bytes()
    except OSError as e:
        raise TlsError(f"tls-key {key_path}: {e.strerror or e}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        raise TlsError(f"tls-cert {cert_path}: not a PEM certificate ({e})") from None
    try:
        _load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert_pem, key_pem)
    except OSError as e:  # ssl.SSLError is an OSError too
        if not isinstance(e, ssl.SSLError):
            raise TlsError(f"tls-cert {cert_path}: cannot load: {e}") from None
        raise TlsError(f"tls-cert {cert_path} and tls-key {key_path} are not a usable pair "
                       f"({e.reason or e})") from None
    return KeyPair(cert_pem, key_pem, cert.subject.rfc4514_string(),
                   cert.not_valid_before_utc, cert.not_valid_after_utc, signature or ())


def _verify_locations(context: ssl.SSLContext, ca_path: Path) -> None:
    try:
        context.load_verify_locations(cafile=str(ca_path))
    except (OSError, ssl.SSLError) as e:
        raise TlsError(f"tls-ca {ca_path}: {getattr(e, 'strerror', None) or e}") from None


def server_context(pair: KeyPair, ca_path: Path | None, client_auth: bool) -> ssl.SSLContext:
    """The context hypercorn serves with: TLS 1.2+, HTTP/1.1, and with `client_auth`
    a client certificate from `ca_path` required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(["http/1.1"])
    _load_chain(context, pair.cert_pem, pair.key_pem)
    if client_auth:
        assert ca_path is not None
        _verify_locations(context, ca_path)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class ClientTls:
    """The one TLS setup of every outgoing connection of a node or a command: trust
    `ca_path` (else the default bundle) and, for mutual TLS, present `pair`. Plain-http
    peers never handshake, so the default bundle is loaded only when first needed
    (~25 ms of CPU that a one-shot talking to http peers does not pay)."""

    def __init__(self, ca_path: Path | None = None, pair: KeyPair | None = None) -> None:
        self.ca_path = ca_path
        self._context: ssl.SSLContext | None = None
        if ca_path is not None or pair is not None:
            self._context = self._build(pair)

    def _build(self, pair: KeyPair | None) -> ssl.SSLContext:
        if self.ca_path is None:
            import httpx
            context = httpx.create_ssl_context()
        else:
            # only the given CA: verifies the peer's certificate and host name
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            _verify_locations(context, self.ca_path)
        if pair is not None:
            _load_chain(context, pair.cert_pem, pair.key_pem)
        return context

    @classmethod
    def from_args(cls, ca: str | None, cert: str | None, key: str | None) -> "ClientTls":
        """A command's `--tls-ca/--tls-cert/--tls-key` (the pair is presented to a node
        that requires client certificates). TlsError says what is wrong."""
        from protocol.transport import tls_options_problem

        problem = tls_options_problem(bool(cert), bool(key), bool(ca), False)
        if problem:
            raise TlsError(problem)
        pair = read_pair(Path(cert), Path(key)) if cert and key else None
        return cls(Path(ca) if ca else None, pair)

    @classmethod
    def from_config(cls, cfg) -> "ClientTls":
        """A configuration's tls-ca and, presented to nodes that require client
        certificates, its tls-cert/tls-key pair (the one-shot's, a tool's)."""
        try:
            return cls.from_args(cfg.tls_ca, cfg.tls_cert, cfg.tls_key)
        except TlsError as e:
            from protocol.errors import ConfigError
            raise ConfigError(str(e)) from None

    @property
    def context(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = self._build(None)
        return self._context

    def verify_for(self, url: str) -> ssl.SSLContext | bool:
        """What httpx's `verify=` gets for a client of `url`."""
        return self.context if url.startswith("https:") else False


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class CertReloader:
    """Re-reads the certificate/key pair when its files change and loads it into the
    live contexts (the server's, and the clients' under mutual TLS). A broken new
    pair changes nothing: the last good one stays, and the reason is logged and kept
    for status until a good pair is loaded."""

    def __init__(self, cert_path: Path, key_path: Path, pair: KeyPair,
                 contexts: list[ssl.SSLContext], interval: float = DEFAULT_RELOAD_INTERVAL,
                 clock: Callable[[], dt.datetime] = _utc_now) -> None:
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)
        self.pair = pair
        self.contexts = contexts
        self.interval = interval
        self.clock = clock
        self.loaded_at = time.time()
        self.reload_error: str | None = None
        self._previous = pair.signature
        self.warn_if_invalid()

    def warn_if_invalid(self) -> None:
        problem = self.validity()
        if problem:
            log.warning("TLS certificate %s (%s) is %s: peers will refuse it",
                        self.cert_path, self.pair.subject, problem)

    def validity(self) -> str | None:
        return validity_problem(self.pair.not_before, self.pair.not_after, self.clock())

    def prepare(self) -> KeyPair | None:
        """One look at the files (blocking: run it in a thread): a new pair, read and
        checked in a scratch context, or None (nothing new, or broken: logged and kept
        for status)."""
        current = file_signature(self.cert_path, self.key_path)
        due = reload_due(self.pair.signature, self._previous, current)
        self._previous = current
        if not due or current == self._failed_signature:
            return None
        try:
            return read_pair(self.cert_path, self.key_path)
        except (TlsError, OSError) as e:
            self._fail(current, e)
            return None

    def apply(self, pair: KeyPair) -> bool:
        """Load a prepared pair into the live contexts. Call it from the thread that
        does the handshakes (trio's): OpenSSL sets a context's certificate and key one
        after the other, and a handshake started between the two, in another thread,
        would pair the new certificate with the old key and fail."""
        try:
            for context in self.contexts:
                _load_chain(context, pair.cert_pem, pair.key_pem)
        except (TlsError, OSError) as e:  # the same bytes loaded in a scratch context:
            self._fail(pair.signature, e)  # only the machine (no memory) fails here
            return False
        self.pair = pair
        self.loaded_at = time.time()
        self.reload_error = None
        self._failed_signature = None
        log.info("TLS certificate reloaded from %s: %s, valid until %s", self.cert_path,
                 pair.subject, f"{pair.not_after:%Y-%m-%d %H:%M:%S} UTC")
        self.warn_if_invalid()
        return True

    def _fail(self, signature, e: Exception) -> None:
        self._failed_signature = signature
        self.reload_error = f"{e}; still serving the previous certificate"
        log.error("TLS reload failed: %s", self.reload_error)

    _failed_signature: tuple | None = None

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval)
            pair = await trio.to_thread.run_sync(self.prepare)
            if pair is not None:
                self.apply(pair)

    def status(self) -> m.TlsStatus:
        # strings are clipped to the protocol's limit by the message itself
        return m.TlsStatus(cert=str(self.cert_path), subject=self.pair.subject,
                           not_after=self.pair.not_after.timestamp(),
                           loaded_at=self.loaded_at, problem=self.validity(),
                           reload_error=self.reload_error)


class NodeTls:
    """A node's TLS, from its configuration: the server context (None: plain http),
    the client side, and the reloader that keeps both on the current pair."""

    def __init__(self, cert: Path | None = None, key: Path | None = None,
                 ca: Path | None = None, client_auth: bool = False,
                 reload_interval: float = DEFAULT_RELOAD_INTERVAL) -> None:
        pair = read_pair(cert, key) if cert is not None and key is not None else None
        self.server: ssl.SSLContext | None = None
        self.reloader: CertReloader | None = None
        # the client side always holds the node's pair: a client certificate is only
        # sent to a server that asks for one (a peer with --tls-client-auth)
        self.client = ClientTls(ca, pair)
        if pair is not None:
            assert cert is not None and key is not None
            self.server = server_context(pair, ca, client_auth)
            contexts = [self.server, self.client.context]
            self.reloader = CertReloader(cert, key, pair, contexts, reload_interval)

    @classmethod
    def from_config(cls, cfg) -> "NodeTls":
        return cls(cfg.tls_cert, cfg.tls_key, cfg.tls_ca, cfg.tls_client_auth,
                   cfg.tls_reload_interval)

    def configure_hypercorn(self, hc) -> None:
        """Serve HTTPS with our context (hypercorn would build its own from paths, once,
        and we could not reload it)."""
        if self.server is None:
            return
        assert self.reloader is not None
        hc.certfile, hc.keyfile = str(self.reloader.cert_path), str(self.reloader.key_path)
        hc.ssl_handshake_timeout = HANDSHAKE_TIMEOUT
        context = self.server
        hc.create_ssl_context = lambda: context

    def status(self) -> m.TlsStatus | None:
        return self.reloader.status() if self.reloader is not None else None


def peers_problem(entries: Iterable, cfg) -> str | None:
    """The first peer (`url` and `name` of each entry) the clear-text rule refuses (see
    protocol.transport), for a configuration's token, node name, peer kinds and
    --insecure."""
    import httpx

    from protocol.peerkind import PeerKind
    from protocol.transport import is_loopback, plain_peer_problem, token_receivers


    has_token, insecure = cfg.token is not None, cfg.insecure
    wubloader = {url for url, kind in cfg.peer_kinds.items() if kind is PeerKind.WUBLOADER}
    urls = token_receivers(((e.url, e.name) for e in entries), cfg.node_name, wubloader)
    for url in urls:
        parsed = httpx.URL(url)
        problem = plain_peer_problem(url, parsed.scheme, is_loopback(parsed.host), has_token,
                                     insecure)
        if problem:
            return problem
    return None


def config_problem(cfg, file_peers: list) -> str | None:
    """What is wrong with a configuration's transport security, or None: TLS options
    that go together, files that must load, the bind rule and the clear-text peer
    rule. Reads the files (start-up only)."""
    from protocol.peerlist import PeerEntry
    from protocol.transport import is_loopback, listen_problem, tls_options_problem


    if not isinstance(cfg.tls_client_auth, bool):
        return "tls-client-auth must be true or false"
    has_cert = cfg.tls_cert is not None
    problem = tls_options_problem(has_cert, cfg.tls_key is not None, cfg.tls_ca is not None,
                                  cfg.tls_client_auth)
    if problem:
        return problem
    try:
        if has_cert:
            read_pair(cfg.tls_cert, cfg.tls_key)
        if cfg.tls_ca is not None:
            _verify_locations(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cfg.tls_ca)
    except TlsError as e:
        return str(e)
    host, _ = cfg.listen_host_port
    problem = listen_problem(host, is_loopback(host), cfg.token is not None, has_cert,
                             cfg.insecure)
    static = [PeerEntry(None, url) for url in cfg.peers]
    return problem or peers_problem([*static, *file_peers], cfg)


def status_lines(tls: m.TlsStatus | None) -> list[str]:
    """`segsync status` lines for a node's TLS (its status reply's `tls`; none for a
    plain-http node or an older one that does not report it)."""
    if tls is None:
        return []
    until = tls.not_after
    until_text = (dt.datetime.fromtimestamp(until, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
                  if until is not None else "?")
    lines = [f"tls: {tls.subject} from {tls.cert}, valid until {until_text}"]
    if tls.problem:
        lines.append(f"  TLS CERTIFICATE {tls.problem.upper()}: peers refuse it")
    if tls.reload_error:
        lines.append(f"  TLS RELOAD FAILED: {tls.reload_error}")
    return lines

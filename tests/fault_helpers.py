"""Tools for the fault and hostile-input tests.

- `AgentProcess`: a real `segsync run` in its own process, killable with SIGKILL.
- `audit_archive`: what a crash may leave behind (bad final names, temp files).
- `tree_snapshot`: every file and directory under a path, to prove nothing changed.
- hostile peers, one per kind of breakage, as trio tasks on 127.0.0.1 port 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import h11
import msgpack
import trio

from agent.archive.local_files import file_matches_name
from agent.archive.store import is_temp_file
from helpers import free_port, wait_healthy
from protocol import endpoints
from protocol import messages as m
from protocol.digests import hour_digest, pair_digest
from protocol.errors import SegmentNameError
from protocol.fetchstream import frame_header
from protocol.names import Kind, parse_path

REPO = Path(__file__).resolve().parent.parent


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


# ---- real agent processes ----

class AgentProcess:
    """`python -m agent.commands.cli run` on a fixed port, so a restart keeps its URL."""

    def __init__(self, root: Path, workdir: Path, peers: list[str] = (), port: int | None = None,
                 token_file: Path | None = None, **settings) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        # an agent with tls_cert/tls_key/tls_ca settings serves https
        self.url = f"{'https' if 'tls_cert' in settings else 'http'}://127.0.0.1:{self.port}"
        self.verify = (ssl.create_default_context(cafile=str(settings["tls_ca"]))
                       if "tls_ca" in settings else True)
        self.peers = list(peers)
        self.token_file = token_file
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / f"agent-{self.port}.toml"
        toml = {"recent-window": 0, "backfill-interval": 0.5, "request-timeout": 5.0,
                "backoff-cap": 1.0, "log-level": "INFO"}
        toml.update({k.replace("_", "-"): v for k, v in settings.items()})
        self.config_path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in toml.items()))
        self.log_path = self.workdir / f"agent-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "agent.commands.cli", "run", "--root", str(self.root),
               "--listen", f"127.0.0.1:{self.port}", "--node-name", self.root.name,
               "--config", str(self.config_path)]
        for peer in self.peers:
            cmd += ["--peer", peer]
        if self.token_file is not None:
            cmd += ["--token-file", str(self.token_file)]
        return cmd

    def start(self, timeout: float = 20.0) -> "AgentProcess":
        assert self.proc is None or self.proc.poll() is not None
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command(), cwd=REPO, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        self.starts += 1
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float) -> None:
        wait_healthy(self.url, self.proc, timeout, self.log_tail, self.verify)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up code runs, exactly like a power cut of the process."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> "AgentProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---- what is on disk ----

@dataclasses.dataclass
class Audit:
    segments: int = 0
    tombstones: int = 0
    bad: list[str] = dataclasses.field(default_factory=list)    # final name, wrong bytes
    temps: list[str] = dataclasses.field(default_factory=list)  # our temp files


def audit_archive(root: Path) -> Audit:
    """Every file under a final segment name must hash to its name."""
    audit = Audit()
    root = Path(root)
    for dirpath, _, files in os.walk(root):
        for f in files:
            full = Path(dirpath) / f
            if is_temp_file(f):
                audit.temps.append(str(full.relative_to(root)))
                continue
            try:
                name, kind = parse_path(str(full.relative_to(root)))
            except SegmentNameError:
                continue
            if kind is Kind.TOMBSTONE:
                audit.tombstones += 1
            elif file_matches_name(full, name):
                audit.segments += 1
            else:
                audit.bad.append(str(full.relative_to(root)))
    return audit


STATE_DIR = ".segsync"  # the agent's own state (index, scrub resume point): not archive


def tree_snapshot(base: Path) -> dict[str, tuple]:
    """relative path -> ('dir',) or ('file', size, sha256) for everything under base,
    but the agent's own state directories (ROOT/.segsync/, which it writes as it runs)."""
    out: dict[str, tuple] = {}
    base = Path(base)
    for dirpath, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if d != STATE_DIR]
        for d in dirs:
            out[str((Path(dirpath) / d).relative_to(base))] = ("dir",)
        for f in files:
            p = Path(dirpath) / f
            data = p.read_bytes()
            out[str(p.relative_to(base))] = ("file", len(data), hashlib.sha256(data).digest())
    return out


# ---- hostile peers ----

FETCH_STREAM = b"application/x-segsync-fetch"


async def _serve(handler, task_status) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    task_status.started(f"http://127.0.0.1:{port}")
    await trio.serve_listeners(handler, listeners)


async def _read_request(stream, conn: h11.Connection, want_body: bool = True):
    """Read one request with h11; returns (request, body) or None at EOF."""
    request, body = None, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            conn.receive_data(data)
            if not data and request is None:
                return None
            continue
        if isinstance(event, h11.Request):
            request = event
            if not want_body:
                return request, b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def _respond(stream, conn: h11.Connection, status: int, body: bytes,
                   content_type: bytes = b"application/msgpack") -> None:
    headers = [("content-type", content_type), ("content-length", str(len(body))),
               ("connection", "close")]
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
    await stream.send_all(conn.send(h11.Data(data=body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


async def _one_shot_http(stream, reply) -> None:
    """Answer each request on a connection with `reply(request, body)`, then close."""
    conn = h11.Connection(h11.SERVER)
    try:
        with trio.move_on_after(60):
            got = await _read_request(stream, conn)
            if got is None:
                return
            status, body = reply(*got)
            await _respond(stream, conn, status, body)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        pass
    finally:
        await stream.aclose()


def refusing_peer_url() -> str:
    """A port that was just closed: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


async def error_peer(task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Answers every request with HTTP 500."""
    await _serve(lambda s: _one_shot_http(s, lambda req, body: (500, b"internal error")),
                 task_status)


async def garbage_peer(task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Answers 200 with bytes that are not a valid message (random, or msgpack of junk)."""
    rng = random.Random(6)
    junk = [b"\xc1", b"\x93\x01\x02", b"\xdd\xff\xff\xff\xff", b"\x81\xa1v\x01",
            b"\x82\xa1v\x01\xa4type\xa6listing"]

    def reply(req, body):
        if rng.random() < 0.5:
            return 200, rng.choice(junk)
        return 200, rng.randbytes(rng.randrange(1, 300))

    await _serve(lambda s: _one_shot_http(s, reply), task_status)


async def silent_peer(task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Accepts connections, reads whatever comes, never answers."""
    async def handler(stream):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
    await _serve(handler, task_status)


async def trickle_peer(task_status=trio.TASK_STATUS_IGNORED, interval: float = 0.5) -> None:
    """Answers, but one byte every `interval` seconds, forever: a read timeout never fires."""
    async def handler(stream):
        conn = h11.Connection(h11.SERVER)
        try:
            if await _read_request(stream, conn, want_body=False) is None:
                return
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000000\r\n\r\n")
            while True:
                await stream.send_all(b"\x90")
                await trio.sleep(interval)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()
    await _serve(handler, task_status)


class LyingPeer:
    """Speaks the protocol well, lists segments, but serves bytes that do not match names.

    mode "mismatch": wrong bytes at full speed; "slow": a segment body at one byte per
    0.2 s; "flood": answers uploads and downloads with an endless stream of bytes;
    "cut" (batch only): a batch reply breaks off in its first segment.
    With `batch`, it also answers batch fetches (/v1/fetch) in the same spirit; without,
    it is a peer from before batch fetch (404), and downloads come one by one.
    """

    def __init__(self, names: list, mode: str = "mismatch", batch: bool = False) -> None:
        self.names = names  # SegmentName list it claims to hold
        self.mode = mode
        self.batch = batch
        self.downloads = 0
        self.uploads = 0
        self.flooded = 0  # most bytes one flood reply got out before the client hung up

    def _listing(self):
        by_hour: dict[tuple, list[str]] = {}
        for n in self.names:
            by_hour.setdefault((n.channel, n.quality, n.hour), []).append(n.filename)
        return by_hour

    def reply(self, req: h11.Request, body: bytes) -> tuple[int, bytes]:
        target = req.target.decode()
        by_hour = self._listing()
        if target == endpoints.PAIR_DIGESTS:
            q = m.decode(body, m.PairDigestsRequest)
            pairs: dict[tuple, list] = {}
            for (c, ql, h), names in by_hour.items():
                if q.first_hour <= h <= q.last_hour:
                    pairs.setdefault((c, ql), []).append((h, hour_digest(names)))
            out = [(c, ql, pair_digest(d)) for (c, ql), d in sorted(pairs.items())]
            return 200, m.encode(m.PairDigests(q.first_hour, q.last_hour, out))
        if target == endpoints.HOUR_DIGESTS:
            q = m.decode(body, m.HourDigestsRequest)
            hours = [(h, hour_digest(names)) for (c, ql, h), names in sorted(by_hour.items())
                     if (c, ql) == (q.channel, q.quality)]
            return 200, m.encode(m.HourDigests(q.channel, q.quality, hours))
        if target == endpoints.LISTING:
            q = m.decode(body, m.ListingRequest)
            names = sorted(by_hour.get((q.channel, q.quality, q.hour), []))
            return 200, m.encode(m.Listing(q.channel, q.quality, q.hour, names))
        if target == endpoints.OFFER:
            return 200, m.encode(m.OfferReply("want"))
        if target.startswith(endpoints.segment_url("")) and req.method == b"GET":
            self.downloads += 1
            return 200, os.urandom(5000)
        if target.startswith(endpoints.segment_url("")) and req.method == b"PUT":
            self.uploads += 1
            return 200, m.encode(m.Ack("stored"))
        if target == endpoints.TOMBSTONE:
            return 200, m.encode(m.Ack("stored"))
        return 404, m.encode(m.Error("not_found", target))

    async def _handle(self, stream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            got = await _read_request(stream, conn)
            if got is None:
                return
            req, body = got
            segment = req.target.decode().startswith(endpoints.segment_url(""))
            if self.mode == "flood" and segment:
                self.downloads += req.method == b"GET"
                self.uploads += req.method == b"PUT"
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n")
                sent, chunk = 0, b"\0" * 65536
                try:
                    while sent < 1_000_000_000:
                        await stream.send_all(chunk)
                        sent += len(chunk)
                        self.flooded = max(self.flooded, sent)
                finally:
                    self.flooded = max(self.flooded, sent)
                return
            if self.mode == "slow" and segment and req.method == b"GET":
                self.downloads += 1
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n")
                for _ in range(5000):
                    await stream.send_all(b"x")
                    await trio.sleep(0.2)
                return
            if self.batch and req.target.decode() == endpoints.FETCH:
                return await self._fetch(stream, conn, m.decode(body, m.FetchRequest).paths)
            status, reply = self.reply(req, body)
            await _respond(stream, conn, status, reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()

    async def _fetch(self, stream, conn: h11.Connection, paths: list[str]) -> None:
        self.downloads += len(paths)
        if self.mode == "mismatch":  # well framed, wrong bytes
            body = b"".join(frame_header(m.FetchItem(p, 5000)) + os.urandom(5000)
                            for p in paths)
            return await _respond(stream, conn, 200, body, FETCH_STREAM)
        if self.mode == "cut":  # the first segment starts, then the connection drops
            header = frame_header(m.FetchItem(paths[0], 5000))
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n"
                                  % (len(header) + 5000) + header + b"x" * 100)
            return
        if self.mode == "slow":
            header = frame_header(m.FetchItem(paths[0], 5000))
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n"
                                  % (len(header) + 5000) + header)
            for _ in range(5000):
                await stream.send_all(b"x")
                await trio.sleep(0.2)
            return
        # flood: announces a segment far over any limit, then sends bytes for ever
        huge = msgpack.packb({"v": 1, "type": "fetch_item", "path": paths[0],
                              "size": 10**12})
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000000\r\n\r\n"
                              + len(huge).to_bytes(2, "big") + huge)
        sent, chunk = 0, b"\0" * 65536
        try:
            while True:
                await stream.send_all(chunk)
                sent += len(chunk)
                self.flooded = max(self.flooded, sent)
        finally:
            self.flooded = max(self.flooded, sent)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await _serve(self._handle, task_status)

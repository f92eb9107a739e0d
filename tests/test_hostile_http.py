"""Hostile HTTP input against a real agent process, over raw sockets (hypothesis).

Every /v1 endpoint and the compat endpoints get random and mutated requests: bad
names, `..` and absolute paths, encoded traversal, NUL bytes, huge headers, bodies
over the limit, bodies shorter or longer than announced, messages of the wrong
shape, wrong and missing tokens. Checked for every single request:

- the answer is never a 5xx; a refusal is a 4xx with a clear error body (our JSON or
  msgpack Error; for requests that are not even HTTP, hypercorn's bare 400/413/431);
- no answer ever carries the canary bytes kept next to the archive root;
- the tree holding the archive and the canary is byte-for-byte unchanged, unless the
  request was a well-formed, accepted write (a valid tombstone), which is then checked;
- without the token, the locked agent answers nothing but /healthz with a 2xx.

SEGSYNC_FUZZ_EXAMPLES sets the examples per agent (default 1200; --runslow: 15000).
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.parse

import msgpack
import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.archive.local_files import file_matches_name
from fault_helpers import AgentProcess, env_int, tree_snapshot
from helpers import hours_ago, make_name, touch_tombstone, write_segment_file
from tls_helpers import issue
from protocol import limits
from protocol import messages as m
from protocol.names import Kind, parse_path

EXAMPLES = env_int("SEGSYNC_FUZZ_EXAMPLES", 1200)
TOKEN = "fuzz-token-0123456789"
CANARY = b"CANARY-must-never-leave-this-file-7d1e"
COUNTS: dict[str, int] = {}


# ---- the world under attack ----

class World:
    def __init__(self, base, workdir, locked: bool, tls=None) -> None:
        """`tls`: tls_helpers.NodeFiles to serve https with (the wire is then TLS)."""
        self.base = base
        self.root = base / "archive"
        self.root.mkdir(parents=True)
        self.locked = locked
        when = hours_ago(30)
        self.held = make_name(b"held segment " * 300, when)
        write_segment_file(self.root, self.held, b"held segment " * 300)
        self.buried = make_name(b"tombstoned segment " * 100, when.replace(second=4))
        write_segment_file(self.root, self.buried, b"tombstoned segment " * 100)
        touch_tombstone(self.root, self.buried)
        self.absent = make_name(b"never stored", when.replace(second=8))
        # the canary, laid out like an archive beside the root: traversal would find it
        (base / "canary.txt").write_bytes(CANARY)
        self.evil = make_name(CANARY, when, channel="evil")
        write_segment_file(base, self.evil, CANARY)
        token_file = None
        if locked:
            token_file = workdir / "token"
            token_file.write_text(TOKEN + "\n")
        # no scrub pass while the worlds live (its first one, a minute after start-up,
        # writes ROOT/.segsync/scrub.json: a change of the tree no request made)
        self.agent = AgentProcess(self.root, workdir, token_file=token_file,
                                  protect_reads=locked, backfill=False,
                                  scrub_start_delay=86400.0,
                                  **(tls.settings() if tls else {}))
        self.tls_context = tls.client_context() if tls else None
        self.agent.start()
        self.host, port = self.agent.url.split("://")[1].split(":")
        self.port = int(port)
        self.snapshot = tree_snapshot(base)

    @property
    def components(self) -> list[bytes]:
        n = self.held
        return [n.channel.encode(), n.quality.encode(), n.hour.encode(), n.filename.encode(),
                n.tombstone_filename.encode(), self.buried.filename.encode(),
                self.absent.filename.encode(), b"evil", self.evil.filename.encode()]


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    made = {}
    try:
        for locked in (False, True):
            base = tmp_path_factory.mktemp("locked" if locked else "open")
            made[locked] = World(base, tmp_path_factory.mktemp("run"), locked)
        # a locked agent serving https: the same attacks inside TLS
        files = issue(trustme.CA(), tmp_path_factory.mktemp("tls"), "hostile")
        made["tls"] = World(tmp_path_factory.mktemp("tls-world"),
                            tmp_path_factory.mktemp("run"), True, files)
        yield made
    finally:
        for w in made.values():
            w.agent.kill()
        print(f"\nhostile HTTP requests tried: {COUNTS}")


# ---- hostile pieces ----

HOSTILE_COMPONENTS = [
    b"..", b".", b"", b"%2e%2e", b"%2E%2e", b".%2e", b"%2e.", b"%2f", b"..%2f..",
    b"%2fetc%2fpasswd", b"%00", b"a%00b", b"a\x00b", b"%5c..", b"\\..", b"..\\..",
    b"%c0%ae%c0%ae", b"%ff", b"%", b"%zz", b"~", b"//", b"canary.txt", b"evil", b".hidden",
    b"%2e%2e%2fevil", b"x" * 300, b"%e2%80%ae", b"a b", b"a?b", b"a#b", b"%3f", b"%23",
    b"\xff\xfe", b"\t", b"%0d%0ahost: evil", b"2019-13-45T99", b"-", b"45:51.608000-.ts",
]
PREFIXES = [b"/v1/segments", b"/segments", b"/files", b"/v1/offer", b"/v1/tombstone",
            b"/v1/pair-digests", b"/v1/hour-digests", b"/v1/listing", b"/v1/status",
            b"/v1/fetch", b"/healthz", b"/metrics", b"/v1", b"", b"/..", b"/%2e%2e", b"//v1/segments",
            b"/V1/segments", b"/v1/segments/", b"/v2/segments"]
METHODS = [b"GET", b"PUT", b"POST", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"FOO", b"get"]


def message_objects(world: World) -> list[dict]:
    """Valid message maps of every type: the seeds that mutations start from."""
    n = world.absent
    hour = n.hour
    msgs = [m.Offer(n.path, 12), m.Tombstone(n.tombstone_path),
            m.PairDigestsRequest(hour, hour), m.HourDigestsRequest(n.channel, n.quality,
                                                                   hour, hour),
            m.ListingRequest(n.channel, n.quality, hour), m.StatusRequest(),
            m.Ack("stored"), m.Error("x", "y"), m.Listing(n.channel, n.quality, hour, []),
            m.FetchRequest([world.held.path, n.path, world.buried.path]),
            m.FetchItem(n.path, 12), m.FetchMissing(n.path, "not_found")]
    return [msg.to_obj() for msg in msgs]


JUNK_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=True),
    st.text(max_size=40), st.binary(max_size=40),
    st.sampled_from(["../../../etc/passwd", "/etc/passwd", "evil/x/2020-01-01T00/a.ts",
                     "a\x00b", "%2e%2e/x", "desertbus/source/../../evil"]),
    st.lists(st.integers(), max_size=5), st.dictionaries(st.text(max_size=5),
                                                         st.integers(), max_size=3),
)


@st.composite
def mutated_message(draw, world: World) -> bytes:
    obj = dict(draw(st.sampled_from(message_objects(world))))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["drop", "add", "retype", "path", "version", "type"]))
        keys = sorted(obj)
        if op == "drop" and keys:
            obj.pop(draw(st.sampled_from(keys)))
        elif op == "add":
            obj[draw(st.text(max_size=8))] = draw(JUNK_VALUES)
        elif op == "retype" and keys:
            obj[draw(st.sampled_from(keys))] = draw(JUNK_VALUES)
        elif op == "path":
            comps = draw(st.lists(st.sampled_from(world.components + HOSTILE_COMPONENTS),
                                  max_size=6))
            obj["path"] = b"/".join(comps).decode("utf-8", "replace")
        elif op == "version":
            obj["v"] = draw(st.sampled_from([0, 2, 1.0, True, "1", None, -1]))
        elif op == "type":
            obj["type"] = draw(st.sampled_from(list(m.MESSAGE_TYPES) + ["", "x", None, 1]))
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return b"\xc1"


ENDPOINTS = [(b"POST", b"/v1/offer"), (b"POST", b"/v1/tombstone"),
             (b"POST", b"/v1/pair-digests"), (b"POST", b"/v1/hour-digests"),
             (b"POST", b"/v1/listing"), (b"POST", b"/v1/status"), (b"POST", b"/v1/fetch")]


@st.composite
def framed_request(draw, world: World) -> tuple[bytes, str]:
    """A well-framed request to a real endpoint: only the message or the name is bad."""
    if draw(st.booleans()):
        method, path = draw(st.sampled_from(ENDPOINTS))
        body = draw(st.one_of(mutated_message(world), st.binary(max_size=200)))
    else:
        method = draw(st.sampled_from([b"GET", b"PUT"]))
        base = draw(st.sampled_from([b"/v1/segments/", b"/segments/"]))
        n = draw(st.sampled_from([world.held, world.buried, world.absent, world.evil]))
        parts = [n.channel, n.quality, n.hour, n.filename]
        i = draw(st.integers(0, 3))
        parts[i] = draw(st.sampled_from(HOSTILE_COMPONENTS)).decode("latin-1") \
            if draw(st.booleans()) else parts[i]
        path = base + "/".join(urllib.parse.quote(p, safe=":%") for p in parts).encode()
        body = b"held segment " * 300 if method == b"PUT" else b""
        if method == b"PUT" and draw(st.booleans()):
            body = body[:-1] + b"X"
    auth = b"Bearer " + TOKEN.encode() if draw(st.integers(0, 9)) < 8 else b"Bearer nope"
    raw = (method + b" " + path + b" HTTP/1.1\r\nhost: x\r\nauthorization: " + auth +
           b"\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
    return raw, "exact"


@st.composite
def hostile_request(draw, world: World) -> tuple[bytes, str]:
    """(raw request bytes, body mode) where mode says whether an answer must come."""
    if draw(st.integers(0, 2)) == 0:
        return draw(framed_request(world))
    method = draw(st.sampled_from(METHODS))
    comps = draw(st.lists(st.one_of(st.sampled_from(world.components),
                                    st.sampled_from(HOSTILE_COMPONENTS),
                                    st.binary(min_size=1, max_size=12).map(
                                        lambda b: urllib.parse.quote_from_bytes(b).encode()),
                                    st.binary(min_size=1, max_size=6)),
                          max_size=6))
    path = draw(st.sampled_from(PREFIXES))
    if comps or draw(st.booleans()):
        path += b"/" + b"/".join(comps)
    if not path.startswith(b"/") and draw(st.booleans()):
        path = b"/" + path
    if draw(st.integers(0, 5)) == 0:
        path += b"?" + draw(st.sampled_from([b"tombstones=true", b"tombstones=false",
                                             b"tombstones=%00", b"tombstones=1&tombstones=0",
                                             b"a=1&" * 40, b"%ff", b"tombstones"]))
    body = draw(st.one_of(
        st.just(b""),
        mutated_message(world),
        st.binary(max_size=600),
        st.sampled_from([b"\xdd\xff\xff\xff\xff", b"\x91" * 2000, b"\xdf\x7f\xff\xff\xff",
                         b"\x00" * (limits.MAX_REQUEST_BYTES + 10),
                         m.encode(m.Offer(world.held.path, 5)),
                         m.encode(m.StatusRequest()),
                         b"held segment " * 300]),  # the right bytes, under another name
    ))
    headers = [b"host: segsync"]
    auth = draw(st.sampled_from([None, b"Bearer " + TOKEN.encode(), b"Bearer wrong",
                                 b"bearer " + TOKEN.encode(), TOKEN.encode(),
                                 b"Bearer " + TOKEN.encode() + b" ", b"Basic Zm9vOmJhcg==",
                                 b"Bearer " + TOKEN.encode()[:-1], b"Bearer"]))
    if auth is not None:
        headers.append(b"authorization: " + auth)
    mode = draw(st.sampled_from(["exact", "exact", "exact", "short", "long", "missing",
                                 "bogus", "chunked"]))
    if mode == "exact":
        headers.append(b"content-length: %d" % len(body))
    elif mode == "short":  # announce more than is sent, then stop sending
        headers.append(b"content-length: %d" % (len(body) + draw(st.integers(1, 10**7))))
    elif mode == "long":
        headers.append(b"content-length: %d" % max(0, len(body) - draw(st.integers(1, 50))))
    elif mode == "bogus":
        headers.append(b"content-length: " + draw(st.sampled_from(
            [b"-1", b"abc", b"1e3", b"99999999999999999999", b"", b" 5", b"0x10", b"5, 6"])))
    elif mode == "chunked":
        headers.append(b"transfer-encoding: chunked")
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    extra = draw(st.sampled_from(["none", "none", "huge", "many", "nul", "dup-length"]))
    if extra == "huge":
        headers.append(b"x-junk: " + b"a" * draw(st.sampled_from([9000, 20000, 200000])))
    elif extra == "many":
        headers.extend(b"x-h%d: v" % i for i in range(draw(st.integers(50, 400))))
    elif extra == "nul":
        headers.append(b"x-nul: a\x00b")
    elif extra == "dup-length":
        headers.append(b"content-length: 1")
    headers.append(b"connection: close")
    head = method + b" " + path + b" HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n"
    # an answer must come when the request is well framed; otherwise the server may close
    # with unread bytes, and the kernel's RST can wipe its answer before we read it
    return head + body, mode if mode == "exact" and extra == "none" else "ragged"


# ---- the wire ----

def exchange(world: World, raw: bytes, mode: str) -> bytes:
    s = socket.create_connection((world.host, world.port), timeout=10)
    if world.tls_context is not None:
        assert mode == "exact", "a TLS stream cannot half-close: framed requests only"
        s = world.tls_context.wrap_socket(s, server_hostname=world.host)
    try:
        try:
            s.sendall(raw)
            if mode != "exact":  # a body announced but never finished: stop sending
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # it hung up on us first; what it said before is still readable
        out = bytearray()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                raise AssertionError(f"no answer and no close within 10 s: {raw[:200]!r}")
            if not chunk:
                break
            out += chunk
            if len(out) > 8 * 2**20:
                break
        return bytes(out)
    finally:
        s.close()


def parse_response(data: bytes) -> tuple[int, dict, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    if b"content-length" in headers:
        body = body[: int(headers[b"content-length"])]
    return status, headers, body


def is_clear_error(status: int, headers: dict, body: bytes) -> bool:
    ctype = headers.get(b"content-type")
    if ctype == b"application/json":
        obj = json.loads(body)
        return isinstance(obj.get("error"), str) and obj["error"] and isinstance(
            obj.get("code"), str)
    if ctype == b"application/msgpack":
        err = m.decode(body, m.Error)
        return bool(err.code and err.message)
    if status == 401 and ctype == b"text/html; charset=utf-8" and b"log in" in body:
        return True  # the dashboard's login page (GET / of a locked node)
    # framing errors are answered by hypercorn itself, before any application code
    return ctype is None and body == b"" and status in (400, 413, 431)


def check_one(world: World, raw: bytes, mode: str) -> None:
    kind = "locked" if world.locked else "open"
    COUNTS[kind] = COUNTS.get(kind, 0) + 1
    data = exchange(world, raw, mode)
    after = tree_snapshot(world.base)
    request_line = raw.split(b"\r\n", 1)[0][:200]
    assert CANARY not in data, f"canary leaked by {request_line!r}"
    assert b"tombstoned segment " * 2 not in data, f"tombstoned bytes served to {request_line!r}"
    if not data:
        # silence is only for a body that never finished arriving
        assert mode != "exact", f"no answer to {request_line!r}"
        status = None
    else:
        status, headers, body = parse_response(data)
        assert status < 500, f"{status} for {request_line!r}: {body[:300]!r}"
        cut = (len(body) < int(headers.get(b"content-length", b"0") or 0)
               and not raw.startswith(b"HEAD "))
        assert not cut or mode != "exact", f"answer cut short for {request_line!r}"
        if status >= 400 and (raw.startswith(b"HEAD ") or cut):  # body left out, or RST
            assert b"content-type" in headers or status in (400, 413, 431)
        elif status >= 400:
            assert is_clear_error(status, headers, body), \
                f"unclear {status} for {request_line!r}: {headers} {body[:200]!r}"
        elif world.locked:
            # a header value's trailing whitespace is not part of it (RFC 9110 5.5;
            # h11 strips it): "Bearer TOKEN " carries the token
            assert status < 300 and request_line.split(b" ")[1].startswith(b"/healthz") \
                or re.search(rb"\r\nauthorization: Bearer " + re.escape(TOKEN.encode())
                             + rb"[ \t]*\r\n", raw), \
                f"{status} without the token for {request_line!r}"
    deadline = time.monotonic() + 3
    while after != world.snapshot and time.monotonic() < deadline:
        # a handler may still be undoing a refused upload whose sender we just dropped
        time.sleep(0.02)
        after = tree_snapshot(world.base)
    if after != world.snapshot:
        accepted_write(world, after, status, raw)
    COUNTS[f"{kind} {status}"] = COUNTS.get(f"{kind} {status}", 0) + 1


def accepted_write(world: World, after: dict, status, raw: bytes) -> None:
    """The tree changed: only well-formed writes that the agent may accept can do that
    (a tombstone, or a segment whose bytes hash to its name), inside the archive, and
    nothing that was there may change."""
    added = set(after) - set(world.snapshot)
    changed = {k for k in world.snapshot if after.get(k) != world.snapshot[k]}
    assert not changed, f"tree changed ({sorted(changed)[:5]}) by {raw[:200]!r}"
    for rel in sorted(added):
        assert rel.startswith("archive/"), f"{rel} written outside the archive by {raw[:200]!r}"
        if after[rel][0] != "file":
            continue
        name, kind = parse_path(rel.removeprefix("archive/"))
        if kind is Kind.TOMBSTONE:
            assert after[rel][1] == 0
            COUNTS["accepted tombstones"] = COUNTS.get("accepted tombstones", 0) + 1
        else:
            assert file_matches_name(world.base / rel, name), rel
            COUNTS["accepted segments"] = COUNTS.get("accepted segments", 0) + 1
    for rel in added:  # directories only as the parents of accepted files
        if after[rel][0] == "dir":
            assert any(k.startswith(rel + "/") and after[k][0] == "file" for k in added), \
                f"empty directory {rel} left by {raw[:200]!r}"
    world.snapshot = after


def fuzz_settings(n: int):
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("locked", [False, True], ids=["open", "locked"])
@pytest.mark.parametrize("examples", [EXAMPLES, pytest.param(15000, marks=pytest.mark.slow)])
def test_hostile_requests(worlds, locked, examples):
    fuzz(worlds[locked], hostile_request, examples)


def fuzz(world: World, requests, examples: int) -> None:
    """`examples` requests drawn from `requests(world)`, each checked; the agent lives
    and logged no traceback."""
    @fuzz_settings(examples)
    @given(st.data())
    def run(data):
        raw, mode = data.draw(requests(world))
        check_one(world, raw, mode)

    run()
    assert world.agent.alive(), world.agent.log_tail()
    assert "Traceback" not in world.agent.log_path.read_text(errors="replace"), \
        world.agent.log_tail(80)


TRAVERSALS = [
    b"/segments/%2e%2e/evil/{q}/{h}/{f}", b"/v1/segments/%2e%2e/evil/{q}/{h}/{f}",
    b"/segments/{c}/%2e%2e/%2e%2e/evil/{q}/{h}/{f}", b"/segments/{c}%2f..%2f..%2fevil/{q}/{h}/{f}",
    b"/segments/../evil/{q}/{h}/{f}", b"/segments/{c}/{q}/{h}/..%2f..%2f..%2f..%2fcanary.txt",
    b"/segments//evil/{q}/{h}/{f}", b"/segments/%2fevil/{q}/{h}/{f}",
    b"/files/%2e%2e/evil", b"/files/..%2fevil/{q}", b"/files/{c}/{q}/%2e%2e%2f%2e%2e",
    b"/v1/segments/{c}/{q}/{h}/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fcanary.txt",
    b"/segments/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    b"/segments/{c}/{q}/{h}/{f}%00.ts", b"/segments/{c}/{q}/{h}/{f}\x00",
]


def test_framed_hostile_requests_over_tls(worlds):
    """Bad messages, names, traversals and tokens inside TLS: the same guarantees."""
    fuzz(worlds["tls"], framed_request, max(50, EXAMPLES // 4))


@pytest.mark.parametrize("locked", [False, True, "tls"], ids=["open", "locked", "locked-tls"])
def test_traversal_corpus(worlds, locked):
    """The classic traversals, each with and without the token, GET and PUT."""
    world = worlds[locked]
    n = world.evil
    fields = {b"{c}": world.held.channel.encode(), b"{q}": n.quality.encode(),
              b"{h}": n.hour.encode(), b"{f}": n.filename.encode()}
    for template in TRAVERSALS:
        path = template
        for k, v in fields.items():
            path = path.replace(k, v)
        for method in (b"GET", b"PUT"):
            for auth in (b"", b"authorization: Bearer " + TOKEN.encode() + b"\r\n"):
                body = CANARY if method == b"PUT" else b""
                raw = (method + b" " + path + b" HTTP/1.1\r\nhost: x\r\n" + auth +
                       b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
                check_one(world, raw, "exact")
                data = exchange(world, raw, "exact")
                if data:
                    assert parse_response(data)[0] >= 400, raw


def test_bytes_after_connection_close_do_not_stop_the_agent(worlds):
    """hypercorn let one such request end the whole server (BusyResourceError)."""
    world = worlds[False]
    for i in range(100):
        raw = (b"GET /nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n" + b"x" * (i + 1))
        exchange(world, raw, "long")
    assert world.agent.alive(), world.agent.log_tail()
    check_one(world, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", "exact")

"""The sender dies mid-stream: the receiver discards the partial upload, nothing visible."""

from __future__ import annotations

import os
import random
import socket
import time

import httpx

from fault_helpers import AgentProcess, audit_archive
from helpers import hours_ago, make_name, replicable_state, write_segment_file


def wait_no_temp(agent: AgentProcess, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while audit_archive(agent.root).temps:
        assert time.monotonic() < deadline, f"temp files stay: {audit_archive(agent.root).temps}"
        time.sleep(0.02)


def partial_put(url: str, path: str, data: bytes, cut: int, linger: float = 0.0,
                rst: bool = False) -> None:
    """A PUT announcing len(data) bytes that sends only `cut` of them, then drops."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    try:
        s.sendall(f"PUT /v1/segments/{path} HTTP/1.1\r\nhost: x\r\n"
                  f"content-length: {len(data)}\r\n\r\n".encode() + data[:cut])
        time.sleep(linger)
        if rst:  # abortive close: RST instead of FIN
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    finally:
        s.close()


def client_gone_count(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("segsync_rejected_requests_total") and "client_gone" in line:
            return float(line.split()[-1])
    return 0.0


def wait_count_above(url: str, before: float, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while client_gone_count(url) <= before:
        assert time.monotonic() < deadline, "an abandoned upload was not counted as client_gone"
        time.sleep(0.01)


def test_partial_uploads_are_discarded(tmp_path):
    rng = random.Random(61)
    with AgentProcess(tmp_path / "r", tmp_path / "run") as receiver:
        receiver.start()
        data = rng.randbytes(3_000_000)
        name = make_name(data, hours_ago(2))
        cuts = [0, 1, 1000, len(data) // 2, len(data) - 1]
        for i, cut in enumerate(cuts):
            for rst in (False, True):
                before = client_gone_count(receiver.url)
                partial_put(receiver.url, name.path, data, cut, linger=0.05 * (i % 2), rst=rst)
                wait_no_temp(receiver)
                if not rst:
                    # a FIN always reaches the app, which must count the disconnect; an
                    # early RST can make the kernel drop the request before it is read
                    wait_count_above(receiver.url, before)
                assert not (receiver.root / name.path).exists()
        assert receiver.alive()
        assert replicable_state(receiver.root) == {}
        # and the same segment still goes through whole
        r = httpx.put(f"{receiver.url}/v1/segments/{name.path}", content=data)
        assert r.status_code == 200
        assert (receiver.root / name.path).read_bytes() == data


def test_kill9_sender_agent_mid_push(tmp_path):
    """A real sending agent killed while streaming large segments to a real receiver."""
    rng = random.Random(62)
    receiver = AgentProcess(tmp_path / "r", tmp_path / "run", backfill=False)
    sender = AgentProcess(tmp_path / "s", tmp_path / "run", peers=[receiver.url],
                          backfill=False)
    kills = mid_stream = 0
    try:
        receiver.start()
        for cycle in range(6):
            sender.start()
            data = rng.randbytes(rng.randrange(8_000_000, 16_000_000))
            name = make_name(data, hours_ago(1).replace(second=cycle))
            write_segment_file(sender.root, name, data)
            deadline = time.monotonic() + 5
            # kill as soon as the receiver is streaming it into a temp file
            while not audit_archive(receiver.root).temps and time.monotonic() < deadline:
                time.sleep(0.001)
            mid_stream += bool(audit_archive(receiver.root).temps)
            sender.kill()
            kills += 1
            wait_no_temp(receiver)
            audit = audit_archive(receiver.root)
            assert audit.bad == []
            assert receiver.alive()
        # whatever made it, made it whole; the rest is not visible at all
        for path, content in replicable_state(receiver.root).items():
            assert content == (sender.root / path).read_bytes()
    finally:
        sender.kill()
        receiver.kill()
    print(f"sender killed {kills} times, {mid_stream} of them mid-stream")
    assert mid_stream >= 1


def test_drip_fed_uploads_do_not_block_other_pushes(tmp_path):
    """Forty senders that announce a segment and drip it a byte at a time must not hold
    the receiver's upload slots: a real push still goes through."""
    import threading

    import httpx

    with AgentProcess(tmp_path / "r", tmp_path / "run", request_timeout=1.0) as receiver:
        receiver.start()
        stop = threading.Event()
        data = b"d" * 1000
        name = make_name(data, hours_ago(2))

        def drip():
            host, port = receiver.url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port))) as s:
                s.sendall(f"PUT /v1/segments/{name.path} HTTP/1.1\r\nhost: x\r\n"
                          f"content-length: {len(data)}\r\n\r\n".encode())
                try:
                    for b in data:
                        if stop.wait(0.3):
                            return
                        s.sendall(bytes([b]))
                except OSError:
                    return  # cut off by the receiver: what we want

        threads = [threading.Thread(target=drip, daemon=True) for _ in range(40)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            good = os.urandom(50_000)
            good_name = make_name(good, hours_ago(3))
            r = httpx.put(f"{receiver.url}/v1/segments/{good_name.path}", content=good,
                          timeout=30)
            assert r.status_code == 200, r.content
            assert (receiver.root / good_name.path).read_bytes() == good
        finally:
            stop.set()
        assert not (receiver.root / name.path).exists()
        wait_no_temp(receiver)
        assert receiver.alive()

"""A tombstone takes effect on its own node the moment it exists (issue 24).

Touch-then-request in a tight loop against a real agent process over real HTTP: after
`touch NAME.tombstone` returns, no endpoint serves or lists NAME.ts, whether or not the
watcher has reported the file yet. The same for a tombstone a peer sends, from the
moment its file is visible; and a push whose segment is tombstoned after its offer
sends not one byte of it.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time

import httpx

from conftest import wait_until
from fault_helpers import AgentProcess, env_int
from helpers import make_name, touch_tombstone, write_segment_file
from protocol import messages as m
from protocol.digests import hour_digest
from protocol.fetchstream import FetchStreamReader, ItemMissing
from protocol.names import Kind
from protocol.tombstone_freshness import RACY_MARGIN_NS

ITERATIONS = env_int("SEGSYNC_TOMBSTONE_ITERATIONS", 300)
HOURS = 60  # the loop goes round them: each hour's first touch meets a remembered stamp


def archive(root, count: int, hours: int):
    """`count` segments spread over `hours` old hours, in the order the loop takes
    them: round-robin over the hours."""
    base = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    names = []
    for i in range(count):
        hour, slot = i % hours, i // hours
        data = os.urandom(1000 + i)
        name = make_name(data, base - dt.timedelta(hours=10 + hour, seconds=-2 * slot))
        write_segment_file(root, name, data)
        names.append(name)
    return names


def wait_stamps_settled(root) -> None:
    """Until every hour directory's stamp is older than the racy margin: a listing then
    remembers it, and the loop's first touch in each hour meets a trusted stamp
    (the path that reads no directory)."""
    newest = 0
    for dirpath, _, _ in os.walk(root):
        st = os.stat(dirpath)
        newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
    while time.time_ns() <= newest + RACY_MARGIN_NS + 100_000_000:
        time.sleep(0.05)


class Probe:
    """Every way a node hands out a segment or its name, as a client does it."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10.0)

    def close(self) -> None:
        self.http.close()

    def leaks(self, name, order: int) -> list[str]:
        """What showed `name` (or a segment whose tombstone exists): empty is right.
        `order` rotates which endpoint asks first, so each one meets the fresh
        tombstone before the others have recorded it."""
        checks = [self.segments, self.v1_segments, self.files, self.v1_listing, self.fetch]
        shown = []
        for k in range(len(checks)):
            check = checks[(order + k) % len(checks)]
            what = check(name)
            if what:
                shown.append(what)
        return shown

    def segments(self, name) -> str | None:
        r = self.http.get(f"/segments/{name.path}")
        return None if r.status_code == 404 else f"/segments {r.status_code}"

    def v1_segments(self, name) -> str | None:
        r = self.http.get(f"/v1/segments/{name.path}")
        return None if r.status_code == 404 else f"/v1/segments {r.status_code}"

    def files(self, name) -> str | None:
        r = self.http.get(f"/files/{name.channel}/{name.quality}/{name.hour}")
        r.raise_for_status()
        return "/files" if name.filename in r.json() else None

    def listing(self, name) -> list[str]:
        r = self.http.post("/v1/listing", content=m.encode(
            m.ListingRequest(name.channel, name.quality, name.hour)))
        r.raise_for_status()
        return m.decode(r.content, m.Listing, 1 << 24).names

    def v1_listing(self, name) -> str | None:
        names = self.listing(name)
        if name.filename in names:
            return "/v1/listing"
        if name.tombstone_filename not in names:  # what hides it must be listed too
            return "/v1/listing without the tombstone"
        return None

    def fetch(self, name) -> str | None:
        r = self.http.post("/v1/fetch", content=m.encode(m.FetchRequest([name.path])))
        r.raise_for_status()
        events = FetchStreamReader([name.path]).feed(r.content)
        return None if isinstance(events[0], ItemMissing) else "/v1/fetch"

    def digest_matches_listing(self, name) -> bool:
        names = self.listing(name)
        r = self.http.post("/v1/hour-digests", content=m.encode(
            m.HourDigestsRequest(name.channel, name.quality, name.hour, name.hour)))
        r.raise_for_status()
        hours = m.decode(r.content, m.HourDigests, 1 << 20).hours
        return list(hours) == [(name.hour, hour_digest(names))]


def test_touched_tombstone_is_never_served_or_listed(tmp_path):
    names = archive(tmp_path / "a", ITERATIONS, HOURS)
    with AgentProcess(tmp_path / "a", tmp_path / "run", backfill=False) as agent:
        agent.start()
        probe = Probe(agent.url)
        try:
            wait_stamps_settled(agent.root)
            for name in names[:HOURS]:  # every hour listed once: its stamp remembered
                assert name.filename in probe.listing(name)
            leaks = []
            for i, name in enumerate(names):
                touch_tombstone(agent.root, name)
                shown = probe.leaks(name, i)
                if shown:
                    leaks.append((i, name.path, shown))
            assert leaks == [], f"{len(leaks)} of {len(names)} shown after the touch"
            # what the listings recorded, the digests say too
            for name in names[:HOURS]:
                assert probe.digest_matches_listing(name)
        finally:
            probe.close()


def test_tombstone_from_a_peer_is_never_served_or_listed_once_visible(tmp_path):
    """The test is the peer: it sends each tombstone while it watches the file; once
    the file exists, no endpoint may show the segment."""
    names = archive(tmp_path / "b", ITERATIONS, HOURS)
    with AgentProcess(tmp_path / "b", tmp_path / "run", backfill=False) as agent:
        agent.start()
        probe = Probe(agent.url)
        sender = httpx.Client(base_url=agent.url, timeout=10.0)
        try:
            for name in names[:HOURS]:
                assert name.filename in probe.listing(name)
            leaks = []
            for i, name in enumerate(names):
                path = agent.root / name.tombstone_path
                replies = []

                def send(name=name, replies=replies):
                    replies.append(sender.post("/v1/tombstone", content=m.encode(
                        m.Tombstone(name.tombstone_path))))

                thread = threading.Thread(target=send)
                thread.start()
                try:
                    while not path.exists():
                        if not thread.is_alive() and not path.exists():
                            raise AssertionError(f"tombstone not created: {replies}")
                    shown = probe.leaks(name, i)
                finally:
                    thread.join()
                assert replies[0].status_code == 200
                assert m.decode(replies[0].content, m.Ack).status == "stored"
                if shown:
                    leaks.append((i, name.path, shown))
            assert leaks == [], f"{len(leaks)} of {len(names)} shown after the tombstone"
            for name in names[:HOURS]:
                assert probe.digest_matches_listing(name)
        finally:
            sender.close()
            probe.close()


async def test_push_sends_no_byte_of_a_segment_tombstoned_after_its_offer(cluster_factory):
    """A's push offers each segment to B; B, while answering the offer, touches the
    segment's tombstone on A and says want. A's upload checks at its first byte: B
    receives none of them."""
    count = ITERATIONS
    async with cluster_factory(2) as c:
        a, b = c.nodes
        answer = b.app.answer_offer

        async def touching_first(name, *how):  # (accepts_later, sender)
            touch_tombstone(c.root(0), name)
            return await answer(name, *how)

        b.app.answer_offer = touching_first
        base = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=5)
        names = []
        for i in range(count):
            data = os.urandom(2000 + i)
            name = make_name(data, base + dt.timedelta(seconds=2 * i))
            write_segment_file(c.root(0), name, data)
            names.append(name)

        def pushes(outcome: str) -> float:
            total = 0.0
            for metric in a.metrics.pushes.collect():
                for sample in metric.samples:
                    labels = sample.labels
                    if (sample.name.endswith("_total") and labels.get("kind") == "segment"
                            and labels.get("outcome") == outcome):
                        total += sample.value
            return total

        await wait_until(lambda: pushes("skipped") >= count, timeout=60)
        for name in names:
            assert not (c.root(1) / name.path).exists(), name.path
        assert pushes("stored") == 0
        # and the tombstones reached B (they jump the queue)
        await wait_until(lambda: all((c.root(1) / n.tombstone_path).exists() for n in names),
                         timeout=30)
        for name in names[:5]:
            assert a.index.has(name, Kind.TOMBSTONE)

"""Bandwidth limits between real agents on loopback (agent/peers/bandwidth.py).

No timing assertion on the machine's speed: a limit is checked as the bound a correct
limiter guarantees, bytes moved <= rate * elapsed + burst, at every sample the test
takes (bytes counted by the receiver, time read by the test), plus a lower bound on
the average loose enough for a loaded machine. Priority is checked in bytes: while a
live segment is being sent, catch-up gets next to nothing.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os

import pytest
import trio

from agent.commands.cli import config_from_args, main, make_parser
from agent.commands.oneshot import run_oneshot
from agent.commands.status_view import render_status
from agent.config import ConfigError, build_config, load_toml, read_limits
from agent.peers.bandwidth import Bandwidth, BandwidthFile, Limiter
from conftest import peer_of, wait_until
from helpers import hours_ago, make_name, touch_tombstone, write_segment_file, write_segments
from protocol.bandwidth import MB, TransferClass, burst_for
from protocol.names import Kind

LIVE, CATCHUP = TransferClass.LIVE, TransferClass.CATCHUP
SEGMENT = 200_000  # bytes of one old segment


def pulled_bytes(node) -> float:
    """What the node stored from pulls (its own counter, per stored segment)."""
    return node.metrics.registry.get_sample_value(
        "segsync_bytes_total", {"direction": "pulled"}) or 0.0


def served_bytes(node) -> float:
    return node.metrics.registry.get_sample_value(
        "segsync_bytes_total", {"direction": "served"}) or 0.0


async def indexed(node, names, kind: Kind = Kind.SEGMENT) -> None:
    await wait_until(lambda: all(node.index.has(n, kind) for n in names))


async def archive_with_old_hours(c, count: int, **overrides):
    """Node 0 holding `count` segments of five hours ago, indexed before it has peers
    (nothing of it is pushed)."""
    a = await c.start_node(**{"backfill": False, **overrides})
    names = write_segments(c.root(0), count, hours_ago(5), size=SEGMENT)
    await indexed(a, names)
    return a, names


class Samples:
    """(time, bytes) taken every few milliseconds by the test itself."""

    def __init__(self, read) -> None:
        self.read = read
        self.points: list[tuple[float, float]] = []

    async def run(self) -> None:
        while True:
            self.points.append((trio.current_time(), self.read()))
            await trio.sleep(0.01)

    def check_bound(self, t0: float, rate: float) -> None:
        """Every sample within what a limit of `rate` lets through since `t0`."""
        burst = burst_for(rate)
        for t, moved in self.points:
            assert moved <= rate * (t - t0) + burst, (t - t0, moved, rate)


async def measured_catch_up(c, catching_up, source, rate: float, total: int,
                            read=pulled_bytes) -> Samples:
    """Run one round of `catching_up` from `source`, sampling `read` until `total`
    bytes arrived; check the limit's bound at every sample and a loose floor."""
    samples = Samples(lambda: read(catching_up) - base)
    base = read(catching_up)
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        nursery.start_soon(samples.run)
        (result,) = await catching_up.backfiller.round_all([source.url])
        await wait_until(lambda: read(catching_up) - base >= total, timeout=30)
        elapsed = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    assert result.ok, result.error
    samples.check_bound(t0, rate)
    moved = read(catching_up) - base
    assert moved <= rate * elapsed + burst_for(rate)
    # "within 10%": the bound above is the upper side (the burst is 2.5% of this run);
    # the lower side is left loose, for a machine shared with a CPU hog, and counted
    # from the first segment stored (not the round's digests and listings)
    t1, b1 = next((t, b) for t, b in samples.points if b > 0)
    average = (moved - b1) / (t0 + elapsed - t1)
    assert average >= 0.6 * rate, (average, rate)
    return samples


@pytest.mark.parametrize("limited", ["upload", "download"])
async def test_a_limit_holds_over_a_few_seconds_of_catch_up(cluster_factory, limited):
    rate = 2 * MB
    upload = {"max_upload_rate": 2.0} if limited == "upload" else {}
    async with cluster_factory(0) as c:
        a, names = await archive_with_old_hours(c, 35, push=False, **upload)  # 7 MB: 3.5 s
        download = {"max_download_rate": 2.0} if limited == "download" else {}
        b = await c.start_node(backfill=False, push=False, **download)
        await b.set_peers([peer_of(a)])
        await measured_catch_up(c, b, a, rate, 35 * SEGMENT + sum(range(35)))
        assert all(b.index.has(n, Kind.SEGMENT) for n in names)
        limiter = (a.bandwidth.upload if limited == "upload" else b.bandwidth.download)
        counters = limiter.scheduler.counters
        assert counters[CATCHUP].bytes >= 35 * SEGMENT and counters[CATCHUP].waited > 0
        assert counters[LIVE].bytes == 0  # five hours old: catch-up, all of it
        status = limiter.status()
        assert status.limit == rate and status.catchup_waited > 0


async def test_tombstone_and_live_segment_overtake_a_running_catch_up(cluster_factory):
    rate = 1 * MB
    async with cluster_factory(0) as c:
        a, old = await archive_with_old_hours(c, 40, max_upload_rate=1.0)  # 8 MB: 8 s
        b = await c.start_node(backfill=False)  # the archive node A pushes to
        catching_up = await c.start_node(backfill=False)  # a new node catching up from A
        await a.set_peers([peer_of(b)])
        await catching_up.set_peers([peer_of(a)])
        up = a.bandwidth.upload.scheduler.counters
        samples: list[tuple[float, float]] = []  # (live, catch-up) bytes A sent

        async def sample() -> None:
            while True:
                samples.append((up[LIVE].bytes, up[CATCHUP].bytes))
                await trio.sleep(0.005)

        round_done = trio.Event()

        async def catch_up() -> None:
            await catching_up.backfiller.round_all([a.url])
            round_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(catch_up)
            await wait_until(lambda: up[CATCHUP].bytes > 1 * MB, timeout=20)
            assert up[CATCHUP].waiting > 0  # the catch-up is held by the limit

            # a tombstone (of a segment the new node has not fetched yet) goes first
            touch_tombstone(c.root(0), old[0])
            await indexed(b, [old[0]], Kind.TOMBSTONE)
            assert not round_done.is_set()

            # a live segment, bigger than a second's worth of the limit
            live = make_name(data := os.urandom(2 * MB), dt.datetime.now(dt.timezone.utc))
            nursery.start_soon(sample)
            before = up[LIVE].bytes
            write_segment_file(c.root(0), live, data)
            await indexed(b, [live])
            assert not round_done.is_set()  # it overtook the catch-up
            nursery.cancel_scope.cancel()

        # while the live segment was sent (its first byte to its last), the catch-up
        # got only the slivers between its chunks; shared fairly it would get half
        sending = [(lv, cu) for lv, cu in samples if before < lv < before + len(data)]
        assert sending, "no sample while the live segment was sent"
        first = next(i for i, (lv, _) in enumerate(samples) if lv > before)
        last = max(i for i, (lv, _) in enumerate(samples) if lv < before + len(data))
        catch_up_meanwhile = samples[min(last + 1, len(samples) - 1)][1] - samples[first][1]
        print("catch-up bytes while the live segment was sent:", catch_up_meanwhile)
        assert catch_up_meanwhile <= 0.25 * len(data), catch_up_meanwhile
        assert up[LIVE].bytes - before >= len(data)
        assert a.bandwidth.upload.status().live_waited < up[CATCHUP].waited


async def test_limit_changed_in_the_config_file_takes_effect(cluster_factory, tmp_path,
                                                            caplog):
    conf = tmp_path / "segsync.toml"
    conf.write_text("max-upload-rate = 0.5\n")
    async with cluster_factory(0) as c:
        a, names = await archive_with_old_hours(
            c, 30, push=False, config_file=conf, **load_toml(conf))  # 6 MB: 12 s at 0.5 MB/s
        assert a.bandwidth.upload.rate == 0.5 * MB
        b = await c.start_node(backfill=False, push=False)
        await b.set_peers([peer_of(a)])

        conf.write_text("max-upload-rate = 4\n")  # no restart: the agent re-reads it
        await wait_until(lambda: a.bandwidth.upload.rate == 4 * MB, timeout=10)
        await measured_catch_up(c, b, a, 4 * MB, 30 * SEGMENT + sum(range(30)))

        # a bad value keeps the last good limit, says why in the log and the status
        with caplog.at_level(logging.ERROR):
            conf.write_text("max-upload-rate = -3\n")
            await wait_until(lambda: a.bandwidth.problem is not None, timeout=10)
        assert a.bandwidth.upload.rate == 4 * MB
        assert "max-upload-rate must be >= 0" in caplog.text
        status = await a.status.probe_and_report()
        assert status.bandwidth[0].limit == 4 * MB
        assert "max-upload-rate must be >= 0" in status.bandwidth[0].problem
        conf.write_text("max-download-rate = 3\nnot-a-key = 1\n")  # the whole file counts
        await wait_until(lambda: "not-a-key" in (a.bandwidth.problem or ""), timeout=10)
        assert a.bandwidth.upload.rate == 4 * MB and a.bandwidth.download.rate is None

        # the key taken out of the file: no limit
        conf.write_text("max-download-rate = 3\n")
        await wait_until(lambda: a.bandwidth.upload.rate is None, timeout=10)
        assert a.bandwidth.download.rate == 3 * MB and a.bandwidth.problem is None


async def test_a_limit_given_as_a_flag_stays(tmp_path):
    conf = tmp_path / "segsync.toml"
    conf.write_text("max-upload-rate = 1\nmax-download-rate = 1\n")
    bandwidth = Bandwidth(upload=5 * MB, download=1 * MB)
    watcher = BandwidthFile(conf, bandwidth, lambda: {"upload": 2 * MB, "download": 2 * MB},
                            fixed=frozenset({"upload"}))
    assert watcher.apply(watcher._read())
    assert bandwidth.upload.rate == 5 * MB and bandwidth.download.rate == 2 * MB


async def test_one_shot_backfill_takes_max_download_rate(cluster_factory, tmp_path):
    rate = 2 * MB
    async with cluster_factory(0) as c:
        a, names = await archive_with_old_hours(c, 25, push=False)  # 5 MB
        root = tmp_path / "fresh"
        root.mkdir()
        cfg = build_config(dict(root=root, peers=[a.url], backfill=False,
                                max_download_rate=2.0, recent_window=0))
        out = io.StringIO()
        t0 = trio.current_time()
        assert await run_oneshot(cfg, out, io.StringIO()) == 0, out.getvalue()
        elapsed = trio.current_time() - t0
        moved = sum(p.stat().st_size for p in root.rglob("*.ts"))
        assert moved >= 25 * SEGMENT
        assert moved <= rate * elapsed + burst_for(rate)  # the bound, end to end
        assert moved / elapsed >= 0.5 * rate  # loose: the round's set-up is in elapsed


# ---- the limiter in trio, on a mock clock (time moved, not slept) ----

async def test_limiter_waiters_are_served_live_first_and_cancellable(autojump_clock):
    limiter = Limiter("upload", 1 * MB)
    order: list[str] = []

    async def transfer(tag: str, cls: TransferClass, peer: str, nbytes: int) -> None:
        await limiter.take(nbytes, cls, peer)
        order.append(tag)

    await limiter.take(int(burst_for(MB)), CATCHUP, "c")  # empty the bucket
    async def given_up() -> None:  # 100 MB at 1 MB/s: cancelled long before
        with trio.move_on_after(2):
            await transfer("never", CATCHUP, "d", 100 * MB)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(transfer, f"catchup{i}", CATCHUP, "c", 100_000)
        nursery.start_soon(given_up)
        await trio.sleep(0.01)
        nursery.start_soon(transfer, "live", LIVE, "b", 300_000)
    assert order[0] == "live" and "never" not in order
    assert set(order) == {"live", "catchup0", "catchup1", "catchup2"}
    assert limiter.scheduler.counters[CATCHUP].waiting == 0
    assert not limiter._events


async def test_limiter_without_a_limit_never_waits(autojump_clock):
    limiter = Limiter("download", None)
    t0 = trio.current_time()
    for _ in range(1000):
        assert await limiter.take(1 * MB, CATCHUP, "c") == 0.0
    assert trio.current_time() == t0
    assert limiter.scheduler.counters[CATCHUP].bytes == 1000 * MB
    limiter.set_rate(1 * MB)
    await limiter.take(int(burst_for(MB)), LIVE, "b")
    waited = await limiter.take(500_000, LIVE, "b")
    assert waited == pytest.approx(0.5, rel=0.01)


# ---- configuration, flags, status ----

@pytest.mark.parametrize("values, message", [
    ({"max_upload_rate": -1}, "max-upload-rate must be >= 0"),
    ({"max_download_rate": "fast"}, "max-download-rate must be a number"),
    ({"max_upload_rate": 0.001}, "max-upload-rate must be at least"),
    ({"live_window": -5}, "live-window must be"),
])
def test_bad_limits_refused_at_start_up(tmp_path, values, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"root": tmp_path, **values})


def test_limits_from_flags_and_file(tmp_path):
    conf = tmp_path / "segsync.toml"
    conf.write_text(f'root = "{tmp_path}"\nmax-upload-rate = 20\nmax-download-rate = 5\n')
    args = make_parser().parse_args(["run", "--config", str(conf), "--max-download-rate", "8"])
    cfg = config_from_args(args)
    assert (cfg.max_upload_rate, cfg.max_download_rate) == (20, 8)
    assert cfg.config_file == conf and cfg.fixed_limits == frozenset({"download"})
    assert read_limits(conf) == {"upload": 20 * MB, "download": 5 * MB}
    args = make_parser().parse_args(["backfill", "--root", str(tmp_path), "--from",
                                     "http://127.0.0.1:1", "--max-download-rate", "2.5"])
    assert args.max_download_rate == 2.5
    assert main(["run", "--root", str(tmp_path), "--max-upload-rate", "-2"]) == 2


async def test_status_and_metrics_show_limits_rates_and_waits(cluster_factory):
    async with cluster_factory(0) as c:
        a, names = await archive_with_old_hours(c, 10, push=False, max_upload_rate=1.0)
        b = await c.start_node(backfill=False, push=False)
        await b.set_peers([peer_of(a)])
        await b.backfiller.round_all([a.url])
        status = await a.status.probe_and_report()
        up, down = status.bandwidth
        assert (up.direction, up.limit, down.direction, down.limit) == (
            "upload", 1 * MB, "download", None)
        assert up.catchup_bytes >= 10 * SEGMENT and up.catchup_waited > 0
        assert up.catchup_rate > 0 and up.live_bytes == 0
        text = render_status(status)
        assert "upload: limit 1.00 MB/s; live 0.00 MB/s (waited 0.0s), catch-up" in text
        assert "download: no limit" in text
        registry = a.metrics.registry
        assert registry.get_sample_value("segsync_bandwidth_limit_bytes_per_second",
                                         {"direction": "upload"}) == 1 * MB
        assert registry.get_sample_value(
            "segsync_bandwidth_bytes_total",
            {"direction": "upload", "class": "catchup"}) >= 10 * SEGMENT
        assert registry.get_sample_value(
            "segsync_bandwidth_wait_seconds_total",
            {"direction": "upload", "class": "catchup"}) > 0
        assert (await a.dashboard.state())["bandwidth"][0]["limit"] == 1 * MB


async def test_extras_files_take_from_the_limits(cluster_factory):
    """Files of the file sets count too: a file pushed is live on both sides, a file
    pulled back is catch-up."""
    async with cluster_factory(2, extras=["emotes", "media"]) as c:
        a, b = c.nodes
        data = os.urandom(3 * 2**20)  # streamed (a large file), not one body
        (c.root(0) / "media" / "ab").mkdir(parents=True)
        (c.root(0) / "media" / "ab" / "clip.mp4").write_bytes(data)
        (c.root(0) / "emotes").mkdir()
        (c.root(0) / "emotes" / "dark-1.0").write_bytes(b"png")  # small: one body
        await wait_until(lambda: (c.root(1) / "media/ab/clip.mp4").exists()
                         and (c.root(1) / "emotes/dark-1.0").exists())
        up, down = a.bandwidth.upload.scheduler.counters, b.bandwidth.download.scheduler.counters
        assert up[LIVE].bytes >= len(data) + 3 and down[LIVE].bytes >= len(data) + 3
        os.remove(c.root(1) / "media/ab/clip.mp4")
        await wait_until(lambda: not b.files.index.has("extras", "media", "ab/clip.mp4"))
        await b.backfiller.round_all([a.url])
        assert (c.root(1) / "media/ab/clip.mp4").read_bytes() == data
        assert b.bandwidth.download.scheduler.counters[CATCHUP].bytes >= len(data)
        assert a.bandwidth.upload.scheduler.counters[CATCHUP].bytes >= len(data)

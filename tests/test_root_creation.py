"""Bootstrapping a new node: `segsync backfill --root NEW` and `segsync run --root NEW`
create a root that does not exist yet (and say so); bad input still changes nothing."""

from __future__ import annotations

import signal
import subprocess
import sys

import trio

from fault_helpers import REPO
from helpers import free_port, hours_ago, replicable_state, wait_healthy, write_segments
from conftest import wait_until
from protocol.names import Kind

SEGSYNC = [sys.executable, "-m", "agent.commands.cli"]


async def segsync(*args: str) -> subprocess.CompletedProcess:
    return await trio.run_process(SEGSYNC + list(args), cwd=REPO, capture_stdout=True,
                                  capture_stderr=True, check=False)


async def test_backfill_into_a_missing_root_creates_it(cluster_factory, tmp_path):
    async with cluster_factory(1, connect=False, backfill=False) as c:
        a = c.nodes[0]
        names = write_segments(c.root(0), 3, hours_ago(3))
        await wait_until(lambda: all(a.index.has(n, Kind.SEGMENT) for n in names))
        new_root = tmp_path / "new-node" / "archive"  # its parent is missing too

        done = await segsync("backfill", "--root", str(new_root), "--from", a.url,
                             "--recent-window", "0")

        out, err = done.stdout.decode(), done.stderr.decode()
        assert done.returncode == 0, (out, err)
        assert f"segsync backfill: created the archive root {new_root}" in err
        assert "3 segments" in out and "no failures" in out
        assert replicable_state(new_root) == replicable_state(c.root(0))
        # the next time it exists: nothing said
        done = await segsync("backfill", "--root", str(new_root), "--from", a.url,
                             "--recent-window", "0")
        assert done.returncode == 0 and "created" not in done.stderr.decode()


async def test_a_missing_root_is_not_created_on_bad_input(tmp_path):
    new_root = tmp_path / "new"
    for bad in (["--max-concurrency", "0"], ["--token-file", str(tmp_path / "no-token")]):
        done = await segsync("backfill", "--root", str(new_root), "--from",
                             "http://127.0.0.1:9", *bad)
        assert done.returncode == 2, done.stderr
        assert not new_root.exists()
    # a file where the root should be is no root
    (tmp_path / "file").write_text("x")
    done = await segsync("backfill", "--root", str(tmp_path / "file"), "--from",
                         "http://127.0.0.1:9")
    assert done.returncode == 2 and "is not a directory" in done.stderr.decode()
    # a root that cannot be made: a clear error, no traceback
    done = await segsync("backfill", "--root", str(tmp_path / "file" / "sub"), "--from",
                         "http://127.0.0.1:9")
    err = done.stderr.decode()
    assert done.returncode == 2 and "cannot create root" in err and "Traceback" not in err


def test_run_creates_a_missing_root(tmp_path):
    new_root = tmp_path / "srv" / "archive"
    port = free_port()
    log = tmp_path / "agent.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(SEGSYNC + ["run", "--root", str(new_root),
                                           "--listen", f"127.0.0.1:{port}"],
                                cwd=REPO, stdout=logf, stderr=subprocess.STDOUT)
        try:
            wait_healthy(f"http://127.0.0.1:{port}", proc, log=log.read_text)
            assert new_root.is_dir()
            assert f"created the archive root {new_root} (it did not exist)" in log.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()

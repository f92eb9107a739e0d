"""wubloader's nodes database as a peer source, against a real PostgreSQL server,
and the node file's names in status and metrics."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
import trio

from agent.commands.cli import main
from agent.peers.peer_set import default_peer_name, normalize_peer_url
from agent.config import ConfigError, load_toml
from agent.peers.node_database import (
    NodeDatabase,
    NodeDatabaseError,
    parse_conninfo,
    redact,
    rows_to_entries,
)
from agent.commands.status_view import fetch_status, render_status
from conftest import node_config, wait_until
from helpers import free_port, write_segments
from pg_server import PASSWORD, NoServer, PostgresServer
from protocol.messages import PeerSourceStatus, StatusReply
from protocol.peerlist import PeerEntry, PeerListError

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


# ---- without a server ----

@pytest.mark.parametrize("text", [
    "postgresql://user:hunter2@db/x",
    "host=db password=hunter2 user=u",
    "host=db password = 'hunter2' user=u",
    "PASSWORD=hunter2",
])
def test_redact_masks_passwords_in_connection_strings(text):
    out = redact(f'connection to "{text}" failed')
    assert "hunter2" not in out and "***" in out


def test_redact_masks_a_known_secret_anywhere():
    assert redact("auth failed for hunter2 at db", ("hunter2",)) == "auth failed for *** at db"


@pytest.mark.parametrize("conninfo, why", [
    ("nonsense", 'missing "="'),
    ("host=db foo=bar password=hunter2", 'invalid connection option "foo"'),
    ("postgresql://u:hunter2@[::1/db", "IPv6"),
    ("postgresql://u:hunter2@db:http/x", "port 'http' is not a number"),
    ("   ", "empty connection string"),
])
def test_bad_connection_string_is_a_clear_error_without_the_password(conninfo, why):
    with pytest.raises(ValueError) as e:
        parse_conninfo(conninfo)
    assert why in str(e.value) and "hunter2" not in str(e.value)
    assert str(e.value).startswith("node database: ")


def test_rows_to_entries_names_the_bad_row():
    assert rows_to_entries([("b", "http://b:1/")], normalize_peer_url) == [
        PeerEntry("b", "http://b:1")]
    with pytest.raises(PeerListError, match="node 'c': peer URL 'c.example' must be http"):
        rows_to_entries([("b", "http://b:1"), ("c", "c.example")], normalize_peer_url)


def test_cli_refuses_a_bad_connection_string_at_start_up(tmp_path, capsys):
    conninfo_file = tmp_path / "db"
    conninfo_file.write_text("postgresql://u:hunter2@[::1/db\n")
    assert main(["run", "--root", str(tmp_path), "--node-database-file",
                 str(conninfo_file)]) == 2
    err = capsys.readouterr().err
    assert "segsync run: node database: bad connection string" in err and "hunter2" not in err
    assert main(["run", "--root", str(tmp_path), "--node-database", "x=1 password=hunter2"]) == 2
    err = capsys.readouterr().err
    assert 'invalid connection option "x"' in err and "hunter2" not in err
    assert main(["run", "--root", str(tmp_path), "--node-database", "host=db",
                 "--node-database-file", str(conninfo_file)]) == 2
    assert "not both" in capsys.readouterr().err


def test_config_reads_the_connection_string_from_its_file(tmp_path):
    conninfo_file = tmp_path / "db"
    conninfo_file.write_text("host=db password=hunter2\n")
    cfg = node_config(tmp_path, node_database_file=str(conninfo_file))
    assert cfg.node_database == "host=db password=hunter2"
    assert "hunter2" not in repr(cfg)
    config_file = tmp_path / "segsync.toml"
    config_file.write_text(f'node-database-file = "{conninfo_file}"\n')
    assert load_toml(config_file) == {"node_database_file": str(conninfo_file)}
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        node_config(tmp_path, node_database_file=str(tmp_path / "empty"))


def test_status_view_shows_each_peer_source():
    status = StatusReply("a", "http://a:1", 0, 100.0, 0, [], peer_sources=[
        PeerSourceStatus("file", where="/etc/peers", peers=3, ok=True, last_read=90.0),
        PeerSourceStatus("database", where="u@db:5432/w", peers=0),
        PeerSourceStatus("database", where="u@db:5432/w", peers=2, ok=False, error="refused",
                         failing_since=40.0, last_read=30.0),
    ])
    assert render_status(status).splitlines()[1:4] == [
        "peers file /etc/peers: 3 entries, ok, read 10s ago",
        "nodes database u@db:5432/w: 0 entries, not read yet",
        "nodes database u@db:5432/w: 2 entries, FAILING since 60s ago, keeping the last good "
        "list: refused",
    ]


# ---- with a real server ----

@pytest.fixture(scope="module")
def postgres():
    try:
        server = PostgresServer()
    except NoServer as e:
        pytest.skip(f"no PostgreSQL server for the node database tests: {e}")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def database(postgres):
    if postgres.proc is None:
        postgres.start()
    postgres.set_nodes([])
    return postgres


def hours_ago(hours: float) -> dt.datetime:
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=hours)).replace(tzinfo=None)


def has_all(node, names) -> bool:
    return all((node.config.root / n.path).exists() for n in names)


async def set_nodes(database: PostgresServer, rows) -> None:
    await trio.to_thread.run_sync(database.set_nodes, rows)


def urls(node) -> list[str]:
    return [p.url for p in node.peers]


def source(status: StatusReply, kind: str) -> PeerSourceStatus:
    (found,) = [s for s in status.peer_sources if s.source == kind]
    return found


async def test_reader_returns_the_nodes_to_backfill_from(database):
    await set_nodes(database, [("b", "http://b:1/", True), ("c", "http://c:1", False)])
    reader = NodeDatabase(database.conninfo, normalize_peer_url, timeout=5)
    assert reader.where == f"postgres@127.0.0.1:{database.port}/postgres"
    assert await reader.read() == [PeerEntry("b", "http://b:1")]
    wrong = NodeDatabase(database.conninfo.replace(PASSWORD, "wrong-Pa55"), normalize_peer_url,
                         timeout=5)
    with pytest.raises(NodeDatabaseError, match="password authentication failed") as e:
        await wrong.read()
    assert "wrong-Pa55" not in str(e.value)


async def test_nodes_added_and_removed_take_effect_next_round(tmp_path, database,
                                                               cluster_factory):
    async with cluster_factory(2, connect=False) as c:
        b, cc = c.nodes
        b_names = write_segments(c.root(0), 4, hours_ago(2))
        c_names = write_segments(c.root(1), 4, hours_ago(2), tag=1)
        # this node ("a") is in the table too, as in a wubloader cluster: it is skipped
        await set_nodes(database, [("a", "http://127.0.0.1:1", True), ("b", b.url, True),
                                   ("c", cc.url, False)])
        conninfo_file = tmp_path / "node-database"
        conninfo_file.write_text(database.conninfo)
        a = await c.start_node(node_name="a", node_database_file=str(conninfo_file),
                               backfill_interval=0.3)
        assert urls(a) == [b.url]  # read before the node reports started
        await wait_until(lambda: has_all(a, b_names), timeout=20)
        assert not any((a.config.root / n.path).exists() for n in c_names)

        await set_nodes(database, [("a", "http://127.0.0.1:1", True), ("c", cc.url, True)])
        await wait_until(lambda: urls(a) == [cc.url], timeout=10)
        await wait_until(lambda: has_all(a, c_names), timeout=20)
        later = write_segments(c.root(0), 2, hours_ago(1))
        status = await fetch_status(a.url, None)
        assert [(p.name, p.url) for p in status.peers] == [("c", cc.url)]
        assert source(status, "database").ok is True
        assert source(status, "database").peers == 2  # "a" is listed too
        await wait_until(lambda: 'segsync_last_backfill_round_timestamp_seconds{peer="c"}'
                         in a.metrics.render().decode(), timeout=10)  # the round's end
        assert not any((a.config.root / n.path).exists() for n in later)  # b is gone


async def test_database_outage_keeps_last_list_and_restart_picks_up_changes(
        tmp_path, database, cluster_factory, caplog):
    caplog.set_level(logging.DEBUG)  # psycopg's own debug lines too
    async with cluster_factory(2, connect=False) as c:
        b, cc = c.nodes
        await set_nodes(database, [("b", b.url, True)])
        a = await c.start_node(node_name="a", node_database=database.conninfo,
                               backfill_interval=0.3)
        assert urls(a) == [b.url]
        nodes_table = a.node_database

        await trio.to_thread.run_sync(database.stop)
        reads = nodes_table.reads
        await wait_until(lambda: nodes_table.reads >= reads + 4, timeout=20)
        assert nodes_table.health.error is not None
        assert urls(a) == [b.url]  # the last known list
        during = write_segments(c.root(0), 3, hours_ago(1))
        await wait_until(lambda: has_all(a, during), timeout=20)  # still syncing from b

        status = await fetch_status(a.url, None)
        database_status = source(status, "database")
        assert database_status.ok is False and database_status.peers == 1
        assert "127.0.0.1" in database_status.error
        shown = " ".join(render_status(status).split())  # lines wrap at 100 columns
        assert "nodes database postgres@127.0.0.1:" in shown
        assert "1 entries, FAILING since" in shown and "keeping the last good list" in shown
        outage_logs = [r for r in caplog.records
                       if r.levelno >= logging.ERROR and "nodes table" in r.getMessage()]
        assert len(outage_logs) == 1, [r.getMessage() for r in outage_logs]
        assert 'segsync_peer_source_failures_total{source="database"}' in (
            a.metrics.render().decode())

        await trio.to_thread.run_sync(database.start)
        await set_nodes(database, [("b", b.url, True), ("c", cc.url, True)])
        c_names = write_segments(c.root(1), 3, hours_ago(1), tag=1)
        await wait_until(lambda: urls(a) == [b.url, cc.url], timeout=20)
        await wait_until(lambda: has_all(a, c_names), timeout=20)
        assert nodes_table.health.error is None
        assert any("answers again" in r.getMessage() for r in caplog.records)

        status = await fetch_status(a.url, None)
        everything = caplog.text + repr(status) + render_status(status)
        assert PASSWORD not in everything
        assert PASSWORD not in a.metrics.render().decode()


async def test_node_file_names_peers_in_status_and_metrics(tmp_path, cluster_factory):
    async with cluster_factory(2, connect=False) as c:
        b, cc = c.nodes
        peers_file = tmp_path / "nodes"
        # wubloader's format: this node's own line is skipped by --node-name
        peers_file.write_text(f"# wubloader nodes\na http://127.0.0.1:1\nbee {b.url}\n{cc.url}\n")
        b_names = write_segments(c.root(0), 2, hours_ago(1))
        a = await c.start_node(node_name="a", peers_file=str(peers_file), backfill_interval=0.3)
        assert urls(a) == [b.url, cc.url]
        await wait_until(lambda: has_all(a, b_names), timeout=20)
        status = await fetch_status(a.url, None)
        cc_name = default_peer_name(cc.url)  # host:port
        assert [(p.name, p.url) for p in status.peers] == [("bee", b.url), (cc_name, cc.url)]
        shown = render_status(status)
        assert any(line.split()[:2] == ["bee", b.url] for line in shown.splitlines())
        assert f"peers file {peers_file}: 3 entries, ok" in " ".join(shown.split())
        metrics = a.metrics.render().decode()
        assert 'segsync_push_queue_depth{peer="bee"}' in metrics
        assert f'segsync_push_queue_depth{{peer="{cc_name}"}}' in metrics

        peers_file.write_text("bee http://x:1\ncee http://x:1\n")  # bad: the last list stays
        await wait_until(lambda: a.peers_file.health.error is not None, timeout=10)
        assert urls(a) == [b.url, cc.url]
        status = await fetch_status(a.url, None)
        assert source(status, "file").ok is False and "line 2" in source(status, "file").error
        assert 'segsync_peer_source_failures_total{source="file"} 1.0' in (
            a.metrics.render().decode())


async def test_database_down_at_start_up_the_node_runs_with_its_other_peers(cluster_factory,
                                                                             caplog):
    """No server needed: nothing listens on the port, so every read is refused."""
    conninfo = f"host=127.0.0.1 port={free_port()} user=u password={PASSWORD} dbname=d"
    async with cluster_factory(1, connect=False) as c:
        (b,) = c.nodes
        b_names = write_segments(c.root(0), 2, hours_ago(1))
        a = await c.start_node(node_name="a", peers=[b.url], node_database=conninfo,
                               backfill_interval=0.3)
        assert urls(a) == [b.url]
        await wait_until(lambda: has_all(a, b_names), timeout=20)
        status = await fetch_status(a.url, None)
        database_status = source(status, "database")
        assert database_status.ok is False and database_status.peers == 0
        assert "nodes database u@127.0.0.1:" in render_status(status)
        assert PASSWORD not in caplog.text + repr(status)

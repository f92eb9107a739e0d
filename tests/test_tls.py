"""TLS between nodes (issue 13): real agents on loopback over HTTPS, real certificates
(trustme, and `segsync tls init`)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
import ssl
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.commands.cli import main
from agent.peers.client import ClientFactory, PeerError
from agent.peers.tls import ClientTls, read_pair
from conftest import Cluster, peer_of, wait_until
from helpers import (hours_ago, make_name, push_state, replicable_state, write_segment_file,
                     write_segments)
from tls_helpers import issue, served_certificate

TOKEN = "tls-test-token"


@pytest.fixture
def ca():
    return trustme.CA()


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN)
    return path


@asynccontextmanager
async def cluster(tmp_path, *settings: dict):
    """One node per settings dict (node_config overrides), not yet peers."""
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, tmp_path / "nodes")
        c.base.mkdir(exist_ok=True)
        try:
            for s in settings:
                await c.start_node(**s)
            yield c
        finally:
            for node in c.nodes:
                if node is not None:
                    node.stop()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def test_https_cluster_converges_by_push_and_by_backfill(tmp_path, ca, token_file):
    files = [issue(ca, tmp_path / "tls", f"n{i}") for i in range(3)]
    async with cluster(tmp_path, *(f.settings(token_file=token_file) for f in files)) as c:
        assert all(node.url.startswith("https://127.0.0.1:") for node in c.nodes)
        # before the nodes know each other: only backfill can bring these over
        old = write_segments(c.root(0), 5, hours_ago(3))
        await wait_until(lambda: c.nodes[0].index.segment_count() == 5)
        await c.connect()
        results = await c.nodes[1].backfiller.round_all([c.nodes[0].url])
        assert results[0].ok, results[0].error
        assert results[0].total("downloaded") == 5
        for name in old:
            assert (c.root(1) / name.path).exists()
        # push: a new segment on node 2 reaches both others over https
        data = os.urandom(150_000)
        name = make_name(data, hours_ago(0))
        write_segment_file(c.root(2), name, data)
        for i in (0, 1):
            await wait_until(lambda: (c.root(i) / name.path).exists())
            assert (c.root(i) / name.path).read_bytes() == data
        tls = c.nodes[2].status.report().tls
        assert tls.reload_error is None and tls.problem is None
        assert "CN=n2" in tls.subject


async def test_peer_with_a_certificate_from_another_ca_is_refused(tmp_path, ca, token_file):
    other = trustme.CA()
    trusted = issue(ca, tmp_path / "tls", "good")
    stranger = issue(other, tmp_path / "tls", "stranger", trust=ca)  # trusts us, we don't it
    async with cluster(tmp_path, trusted.settings(token_file=token_file),
                       stranger.settings(token_file=token_file)) as c:
        good, bad = c.nodes
        write_segments(c.root(1), 3, hours_ago(2))  # the stranger offers segments to pull
        await wait_until(lambda: bad.index.segment_count() == 3)
        (result,) = await good.backfiller.round_all([bad.url])
        assert not result.ok and "CERTIFICATE_VERIFY_FAILED" in result.error
        # and pushes to it fail the same way: nothing written on either side
        await good.set_peers([peer_of(bad)])
        data = os.urandom(5000)
        write_segment_file(c.root(0), make_name(data, hours_ago(0)), data)
        await wait_until(lambda: push_state(good, bad.url).last_error is not None)
        assert "CERTIFICATE_VERIFY_FAILED" in push_state(good, bad.url).last_error
        assert len(replicable_state(c.root(0))) == 1
        assert len(replicable_state(c.root(1))) == 3


async def test_expired_certificate_is_refused(tmp_path, ca, token_file):
    now = dt.datetime.now(dt.timezone.utc)
    fresh = issue(ca, tmp_path / "tls", "fresh")
    expired = issue(ca, tmp_path / "tls", "expired", not_before=now - dt.timedelta(days=30),
                    not_after=now - dt.timedelta(days=1))
    async with cluster(tmp_path, fresh.settings(token_file=token_file),
                       expired.settings(token_file=token_file)) as c:
        good, old = c.nodes
        # the agent itself starts, and says what is wrong
        assert old.status.report().tls.problem.startswith("expired at ")
        write_segments(c.root(1), 2, hours_ago(2))
        await wait_until(lambda: old.index.segment_count() == 2)
        (result,) = await good.backfiller.round_all([old.url])
        assert not result.ok and "expired" in result.error
        assert replicable_state(c.root(0)) == {}


async def test_client_auth_gives_a_client_without_certificate_nothing(tmp_path, ca,
                                                                       token_file):
    guarded = issue(ca, tmp_path / "tls", "guarded")
    member = issue(ca, tmp_path / "tls", "member")
    async with cluster(tmp_path, guarded.settings(token_file=token_file,
                                                  tls_client_auth=True),
                       member.settings(token_file=token_file)) as c:
        node, peer = c.nodes
        data = os.urandom(4000)
        name = make_name(data, hours_ago(1))
        source = write_segment_file(tmp_path / "outside", name, data)
        # the right CA and the token, but no client certificate: not even /healthz
        clients = ClientFactory(TOKEN, tls=ClientTls(guarded.ca))
        async with clients.client(node.url) as anonymous:
            for attempt in (anonymous.ping(), anonymous.upload(name, source)):
                with pytest.raises(PeerError):
                    await attempt
        with pytest.raises(httpx.HTTPError):
            async with httpx.AsyncClient(verify=guarded.client_context()) as http:
                await http.get(f"{node.url}/healthz")
        assert not (c.root(0) / name.path).exists()
        # a member of the cluster presents its own certificate, and gets through
        await peer.set_peers([peer_of(node)])
        write_segment_file(c.root(1), name, data)
        await wait_until(lambda: (c.root(0) / name.path).exists())


async def test_renewed_certificate_is_picked_up_and_a_broken_one_is_not(tmp_path, ca):
    first = issue(ca, tmp_path / "tls", "node")
    async with cluster(tmp_path, first.settings(tls_reload_interval=0.05)) as c:
        node = c.nodes[0]
        port = port_of(node.url)
        before = await trio.to_thread.run_sync(served_certificate, port, first.ca)
        # renewal: the new pair replaces the files (each renamed into place)
        renewed = issue(ca, tmp_path / "renewed", "node")
        expected = x509.load_pem_x509_certificate(renewed.cert.read_bytes()).public_bytes(
            serialization.Encoding.DER)
        os.replace(renewed.key, first.key)
        os.replace(renewed.cert, first.cert)

        async def serves_new():
            return await trio.to_thread.run_sync(served_certificate, port, first.ca) == expected

        with trio.fail_after(10):
            while not await serves_new():
                await trio.sleep(0.05)
        assert expected != before
        assert node.status.report().tls.reload_error is None
        # a broken renewal (a key that is not the certificate's): the last good pair stays
        third = issue(ca, tmp_path / "third", "node")
        shutil.copy(third.key, first.key)
        await wait_until(lambda: node.status.report().tls.reload_error)
        assert "not a usable pair" in node.status.report().tls.reload_error
        assert await serves_new()
        # and fixing it clears the error
        shutil.copy(third.cert, first.cert)
        await wait_until(lambda: node.status.report().tls.reload_error is None)


async def test_handshakes_during_renewals_never_fail(tmp_path, ca):
    """A renewal loads the new pair into the live context: handshakes going on at that
    moment get the old pair or the new one, never a certificate with the wrong key."""
    first = issue(ca, tmp_path / "tls", "node")
    pairs = [issue(ca, tmp_path / f"pair{i}", "node") for i in range(2)]
    async with cluster(tmp_path, first.settings(tls_reload_interval=0.01)) as c:
        port = port_of(c.nodes[0].url)
        done = False
        handshakes = 0

        def shake() -> None:
            nonlocal handshakes
            while not done:
                served_certificate(port, first.ca)  # raises if a handshake fails
                handshakes += 1

        async with trio.open_nursery() as nursery:
            async def shaker() -> None:
                await trio.to_thread.run_sync(shake)
            nursery.start_soon(shaker)
            try:
                for i in range(12):
                    pair = pairs[i % 2]
                    shutil.copy(pair.key, first.key)
                    shutil.copy(pair.cert, first.cert)
                    served = x509.load_pem_x509_certificate(pair.cert.read_bytes()).public_bytes(
                        serialization.Encoding.DER)
                    with trio.fail_after(10):
                        while await trio.to_thread.run_sync(
                                served_certificate, port, first.ca) != served:
                            await trio.sleep(0.01)
            finally:
                done = True
        assert handshakes > 0


async def test_plain_http_to_a_tls_agent_fails_cleanly(tmp_path, ca, token_file):
    files = issue(ca, tmp_path / "tls", "node")
    async with cluster(tmp_path, files.settings(token_file=token_file),
                       {"token_file": token_file}) as c:
        node, plain = c.nodes
        plain_url = node.url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=5) as http:
                await http.get(f"{plain_url}/healthz")
        # a peer configured with http:// for it pushes nothing through
        await plain.set_peers([plain_url])
        data = os.urandom(4000)
        write_segment_file(c.root(1), make_name(data, hours_ago(0)), data)
        await wait_until(lambda: push_state(plain, plain_url).last_error is not None)
        assert replicable_state(c.root(0)) == {}
        # and the agent still serves https
        async with httpx.AsyncClient(verify=files.client_context()) as http:
            assert (await http.get(f"{node.url}/healthz")).status_code == 200


def test_tls_init_makes_a_ca_once_and_node_pairs(tmp_path, capsys):
    ca_dir, a_dir, b_dir = tmp_path / "ca", tmp_path / "a", tmp_path / "b"
    assert main(["tls", "init", "--out", str(a_dir), "--node", "a.example", "--ca", str(ca_dir),
                 "--ip", "127.0.0.1", "--dns", "localhost", "--days", "30"]) == 0
    ca_pem = (ca_dir / "ca.crt").read_bytes()
    assert main(["tls", "init", "--out", str(b_dir), "--node", "b.example", "--ca",
                 str(ca_dir)]) == 0
    assert (ca_dir / "ca.crt").read_bytes() == ca_pem  # the CA is made once
    assert (b_dir / "ca.crt").read_bytes() == ca_pem
    for key in (ca_dir / "ca.key", a_dir / "a.example.key", b_dir / "b.example.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((a_dir / "a.example.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["a.example", "localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert 29 <= (cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).days <= 30
    read_pair(a_dir / "a.example.crt", a_dir / "a.example.key")  # a usable pair
    # verifies against the CA as a server certificate for its names
    context = ssl.create_default_context(cafile=str(ca_dir / "ca.crt"))
    assert context.get_ca_certs()
    # refusals change nothing
    before = {p: p.read_bytes() for p in a_dir.iterdir()}
    capsys.readouterr()
    assert main(["tls", "init", "--out", str(a_dir), "--node", "a.example",
                 "--ca", str(ca_dir)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["tls", "init", "--out", str(a_dir), "--node", "c", "--ip", "10.0.0.300"]) == 2
    assert "not an IP address" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in a_dir.iterdir()} == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "ca.crt").write_text("junk")
    assert main(["tls", "init", "--out", str(tmp_path / "d"), "--node", "d",
                 "--ca", str(tmp_path / "junk")]) == 2
    assert not (tmp_path / "d").exists()


async def test_cluster_with_tls_init_certificates_and_client_auth(tmp_path, token_file):
    """`tls init` output, used as documented: mutual TLS, push both ways."""
    ca_dir = tmp_path / "ca"
    files = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert await trio.to_thread.run_sync(main, [
            "tls", "init", "--out", str(out), "--node", name, "--ca", str(ca_dir),
            "--ip", "127.0.0.1"]) == 0
        files.append({"tls_cert": out / f"{name}.crt", "tls_key": out / f"{name}.key",
                      "tls_ca": out / "ca.crt", "tls_client_auth": True,
                      "token_file": token_file})
    async with cluster(tmp_path, *files) as c:
        await c.connect()
        for i in (0, 1):
            data = os.urandom(20_000)
            name = make_name(data, hours_ago(0) - dt.timedelta(minutes=i))
            write_segment_file(c.root(i), name, data)
            await wait_until(lambda: (c.root(1 - i) / name.path).exists())


async def test_status_command_over_tls(tmp_path, ca, token_file, capsys):
    guarded = issue(ca, tmp_path / "tls", "guarded")
    async with cluster(tmp_path, guarded.settings(token_file=token_file,
                                                  tls_client_auth=True)) as c:
        url = c.nodes[0].url
        args = ["status", "--node", url, "--token-file", str(token_file)]
        assert await trio.to_thread.run_sync(main, args) == 1  # system bundle: not trusted
        assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err
        args += ["--tls-ca", str(guarded.ca)]
        assert await trio.to_thread.run_sync(main, args) == 1  # no client certificate
        capsys.readouterr()
        args += ["--tls-cert", str(guarded.cert), "--tls-key", str(guarded.key)]
        assert await trio.to_thread.run_sync(main, args) == 0
        shown = capsys.readouterr().out
        assert f"node node0 at {url}" in shown and "tls: CN=guarded" in shown
        assert await trio.to_thread.run_sync(main, args[:-2]) == 2  # a cert without its key
        assert "--tls-key is missing" in capsys.readouterr().err



async def test_one_shot_backfill_over_tls(tmp_path, ca, token_file, capsys):
    files = issue(ca, tmp_path / "tls", "source")
    async with cluster(tmp_path, files.settings(token_file=token_file)) as c:
        names = write_segments(c.root(0), 4, hours_ago(2))
        await wait_until(lambda: c.nodes[0].index.segment_count() == 4)
        dst = tmp_path / "new-node"
        dst.mkdir()
        args = ["backfill", "--root", str(dst), "--from", c.nodes[0].url,
                "--token-file", str(token_file), "--recent-window", "0"]
        assert await trio.to_thread.run_sync(main, args) == 1  # CA not trusted
        assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().out
        assert replicable_state(dst) == {}
        assert await trio.to_thread.run_sync(main, args + ["--tls-ca", str(files.ca)]) == 0
        assert all((dst / n.path).exists() for n in names)


async def test_peers_file_with_a_clear_text_peer_keeps_the_last_good_list(tmp_path, ca,
                                                                           token_file):
    files = issue(ca, tmp_path / "tls", "node")
    peers = tmp_path / "peers"
    peers.write_text("https://127.0.0.1:1\n")
    async with cluster(tmp_path, files.settings(token_file=token_file,
                                                peers_file=peers)) as c:
        node = c.nodes[0]

        def urls():
            return [p.url for p in node.peers]

        assert urls() == ["https://127.0.0.1:1"]
        peers.write_text("https://127.0.0.1:2\nhttp://192.0.2.1:8200\n")
        # refused: the token would go in clear
        assert not node.peers_file.apply(node.peers_file.read())
        assert urls() == ["https://127.0.0.1:1"]
        peers.write_text("https://127.0.0.1:2\n")
        assert node.peers_file.apply(node.peers_file.read())
        assert urls() == ["https://127.0.0.1:2"]


async def test_dashboard_login_cookie_is_secure_over_tls(tmp_path, ca, token_file):
    files = issue(ca, tmp_path / "tls", "node")
    async with cluster(tmp_path, files.settings(token_file=token_file,
                                                protect_reads=True)) as c:
        async with httpx.AsyncClient(verify=files.client_context()) as http:
            reply = await http.post(f"{c.nodes[0].url}/dashboard/login",
                                    data={"token": TOKEN})
        assert reply.status_code == 303
        cookie = reply.headers["set-cookie"]
        assert "segsync_dashboard=" in cookie and "; Secure" in cookie


async def test_nodes_table_naming_a_clear_text_peer_keeps_the_last_list(tmp_path, token_file):
    """The clear-text rule on the nodes-table source (the rule's wiring is tested; the
    table stands in for PostgreSQL, which test_node_database.py runs for real)."""
    from agent.config import build_config
    from agent.telemetry.metrics import Metrics
    from agent.peers.node_database import NodeDatabaseSource
    from agent.peers.peer_set import PeerSet
    from agent.peers.tls import peers_problem
    from protocol.peerlist import PeerEntry

    class Table:
        where = "segsync@db.example:5432/nodes"
        rows = [PeerEntry("a", "http://10.1.2.1:8200"), PeerEntry("b", "https://b.example:8200")]

        async def read(self):
            return list(self.rows)

    cfg = build_config({"root": tmp_path, "token_file": token_file, "node_name": "a"})
    table, peers = Table(), PeerSet(this_node="a")
    source = NodeDatabaseSource(table, peers, Metrics(), interval=60,
                                rule=lambda entries: peers_problem(entries, cfg))
    assert await source.refresh()  # this node's own http:// row is no peer
    assert [p.url for p in peers] == ["https://b.example:8200"]
    table.rows = [*table.rows, PeerEntry("c", "http://10.1.2.3:8200")]
    assert not await source.refresh()
    assert [p.url for p in peers] == ["https://b.example:8200"]
    assert "refusing peer http://10.1.2.3:8200" in source.status().error


async def test_one_shot_scrub_heals_from_a_tls_node(tmp_path, ca, token_file, capsys):
    files = issue(ca, tmp_path / "tls", "source")
    async with cluster(tmp_path, files.settings(token_file=token_file, scrub=False)) as c:
        root = tmp_path / "scrubbed"
        (name,) = write_segments(root, 1, hours_ago(3))
        good = (root / name.path).read_bytes()
        write_segment_file(c.root(0), name, good)
        await wait_until(lambda: c.nodes[0].index.segment_count() == 1)
        (root / name.path).write_bytes(bytes([good[0] ^ 1]) + good[1:])  # rot
        args = ["scrub", "--root", str(root), "--from", c.nodes[0].url,
                "--token-file", str(token_file)]
        assert await trio.to_thread.run_sync(main, args) == 1  # CA not trusted: not healed
        assert "rotten 1, healed 0, lost 1" in capsys.readouterr().out
        assert not (root / name.path).exists()  # quarantined
        (root / name.path).write_bytes(bytes([good[0] ^ 1]) + good[1:])  # rotten again
        assert await trio.to_thread.run_sync(main, args + ["--tls-ca", str(files.ca)]) == 0
        assert "healed 1" in capsys.readouterr().out
        assert (root / name.path).read_bytes() == good

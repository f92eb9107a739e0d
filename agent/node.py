"""One segsync agent: builds the parts from the configuration, connects them, and
runs them in one nursery. Nothing else receives the Node: each part is given the
collaborators it uses (see docs/ARCHITECTURE.md)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import trio

from protocol.backoff import StartupGrace

from .archive.filesets.archive import FileSetArchive
from .archive.disk_tombstones import DiskTombstones
from .archive.index import ArchiveIndex
from .archive.index_keeper import IndexKeeper
from .archive.ingest import Ingest
from .archive.local_files import LocalFiles
from .archive.scrub import Scrubber, ScrubSettings
from .archive.store import Store
from .archive.watcher import ArchiveWatcher
from .config import Config, read_limits
from .peers.bandwidth import Bandwidth, BandwidthFile
from .peers.client import ClientFactory
from .peers.kinds import PeerKinds
from .peers.node_database import NodeDatabase, NodeDatabaseSource
from .peers.peer_set import Peer, PeerSet, normalize_peer_url
from .peers.peers_file import PeersFile
from .peers.tls import NodeTls, peers_problem
from .pull.backfill import Backfiller, BackfillSettings
from .pull.downloads import Downloads
from .pull.fileset_puller import FileSetPuller
from .pull.heal import PeerHealer
from .push.fileset_pusher import FileSetPusher
from .push.hole_repair import HoleRepairer
from .push.pusher import Pusher, PushSettings
from .push.recording import DeferralSettings, DownloaderTracker
from .serve.dashboard import Dashboard
from .serve.fileset_server import FileSetServer
from .serve.server import App, ServerSettings
from .serve.status import StatusReport
from .telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.url: str | None = None
        self.store = Store(config.root, config.max_segment_bytes,
                           not_segments=config.extras)
        self.index = ArchiveIndex()
        self.metrics = Metrics()
        self.index_keeper = IndexKeeper(
            self.store, self.index, self.metrics.registry,
            flush_interval=config.index_flush_interval, max_hot_hours=config.max_hot_hours)
        self.ingest = Ingest(self.store, self.index, self.metrics)
        # what serves, lists and pushes checks the tombstones on disk; one it finds
        # first takes the watcher's path (indexed, announced)
        self.disk_tombstones = DiskTombstones(
            self.store, self.index, found=lambda name: self.local_files.found_tombstone(name))
        # chat batches and extras directories (agent/archive/filesets)
        self.files = FileSetArchive(config.root, config.extras, self.metrics.registry,
                                    config.max_segment_bytes)
        self.peers = PeerSet((Peer.from_url(url) for url in config.peers),
                             this_node=config.node_name, kinds=config.peer_kinds)
        self.tls = NodeTls.from_config(config)
        self.peers_file = (PeersFile(config.peers_file, self.peers, self.metrics,
                                     rule=self._peers_rule)
                           if config.peers_file else None)
        self.node_database = (
            NodeDatabaseSource(
                NodeDatabase(config.node_database, normalize_peer_url, config.request_timeout),
                self.peers, self.metrics, interval=config.backfill_interval,
                rule=self._peers_rule)
            if config.node_database else None)
        self.bandwidth = Bandwidth.from_config(config)
        self.metrics.registry.register(self.bandwidth)  # its collect(): read at scrape time
        self.bandwidth_file = (
            BandwidthFile(config.config_file, self.bandwidth,
                          lambda: read_limits(config.config_file), config.fixed_limits)
            if config.config_file else None)
        self.clients = ClientFactory.from_config(config, tls=self.tls.client,
                                                 bandwidth=self.bandwidth)
        self.kinds = PeerKinds.probing_with(self.peers, self.clients)
        self.scrubber = Scrubber(
            self.store, self.index, self.metrics,
            PeerHealer(self.peers, self.clients, self.kinds, self.ingest,
                       config.max_segment_bytes),
            ScrubSettings.from_config(config))
        # which failures to reach a peer are "not up yet" (INFO) rather than a WARNING
        self.grace = StartupGrace(config.startup_grace)
        self.pusher = Pusher(self.peers, self.clients, self.store, self.metrics,
                             PushSettings.from_config(config), self.kinds,
                             report_rot=self.scrubber.suspect,
                             disk_tombstones=self.disk_tombstones, grace=self.grace)
        self.downloader = DownloaderTracker(self.ingest, self.index, self.metrics,
                                            DeferralSettings.from_config(config))
        self.hole_repairer = HoleRepairer(self.peers, self.clients, self.kinds, self.ingest,
                                          self.metrics, config.max_segment_bytes)
        self.downloader.repair_holes_with(self.hole_repairer)
        self.local_files = LocalFiles(self.store, self.index, self.ingest, self.metrics,
                                      announce=self.pusher.push,
                                      rescan_interval=config.rescan_interval,
                                      observe=self.downloader.file_event,
                                      keeper=self.index_keeper)
        self.file_pusher = FileSetPusher(self.peers, self.clients, self.kinds,
                                         self.files.tree, self.files.metrics)
        if config.push:
            self.files.announce_to(self.file_pusher.push)
        self.file_puller = FileSetPuller(self.files.index, self.files.ingest,
                                         self.files.metrics, config.extras,
                                         config.max_concurrency)
        self.downloads = Downloads(self.ingest, self.store, self.index, self.metrics,
                                   config.max_concurrency, config.max_segment_bytes)
        self.backfiller = Backfiller(self.peers, self.clients, self.index, self.ingest,
                                     self.downloads, self.metrics,
                                     BackfillSettings.from_config(config), kinds=self.kinds,
                                     files=self.file_puller, grace=self.grace)
        self.status = StatusReport(
            config.node_name, self.peers, self.clients, self.index, self.pusher,
            self.backfiller, url=lambda: self.url, kinds=self.kinds,
            sources=[s.status for s in (self.peers_file, self.node_database) if s is not None],
            scrub=self.scrubber.status, downloader=self.downloader,
            tls=self.tls.status, files=self.files.counts,
            index_status=self.index_keeper.status, bandwidth=self.bandwidth.status)
        self.dashboard = Dashboard(self.index, self.status.probe_and_report,
                                   self.metrics.recent_push_latencies, self.peers, self.clients,
                                   config.token, config.protect_reads, kinds=self.kinds)
        self.app = App(self.ingest, self.index, self.store, self.metrics,
                       ServerSettings.from_config(config), self.status.probe_and_report,
                       answer_offer=self.downloader.offer_reply, dashboard=self.dashboard,
                       report_rot=self.scrubber.suspect, disk_tombstones=self.disk_tombstones,
                       files=FileSetServer(self.files.index, self.files.ingest,
                                           self.files.tree, self.files.metrics, config.extras,
                                           config.request_timeout, self.bandwidth),
                       bandwidth=self.bandwidth)
        self.watcher = ArchiveWatcher(Path(config.root))
        self.cancel_scope = trio.CancelScope()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with self.cancel_scope:
            async with trio.open_nursery() as nursery:
                if self.peers_file is not None:
                    self.peers_file.apply(await trio.to_thread.run_sync(self.peers_file.read))
                    nursery.start_soon(self.peers_file.watch)
                if self.node_database is not None:
                    # read before the node reports started: its nodes count at start-up
                    await self.node_database.refresh()
                    nursery.start_soon(self.node_database.watch)
                started = trio.current_time()
                for peer in self.peers:  # the peers known at start-up: their grace starts
                    self.grace.joined(peer.url, started)
                await self.index_keeper.start(remove_temp=True)
                self.metrics.indexed_segments.set(self.index.segment_count())
                await nursery.start(self.index_keeper.run)
                await self.files.local.rescan(announce_new=False, remove_temp=True)
                nursery.start_soon(self.dashboard.warm)
                binds = await nursery.start(self._serve)
                self.url = binds[0]
                # said as /healthz starts answering: whoever saw it answer finds the line
                log.info("segsync node %s serving %s on %s, peers: %s", self.config.node_name,
                         self.config.root, self.url,
                         ", ".join(p.url for p in self.peers) or "none")
                if self.config.push:  # before the watches: nothing they report is unpushed
                    await nursery.start(self.pusher.run)
                    await nursery.start(self.file_pusher.run)
                # The watches are set once the node serves, in the background: one
                # per hour directory, up to ~0.25 ms each (the kernel visits the
                # directory's cached entries), most of a warm start at 2,800 hours,
                # and beside the index's start they slowed its reads (the GIL). What
                # changed in a directory before its watch was set is found by the
                # sweep once they all are (below).
                watching = trio.Event()
                nursery.start_soon(self._watch, nursery, watching)
                await nursery.start(self.hole_repairer.run)
                await nursery.start(self.scrubber.run, self.config.scrub)
                nursery.start_soon(self.local_files.rescan_loop)
                nursery.start_soon(self.files.rescan_loop, self.config.rescan_interval)
                if self.config.backfill:
                    nursery.start_soon(self.backfiller.run)
                if self.tls.reloader is not None:
                    nursery.start_soon(self.tls.reloader.run)
                if self.bandwidth_file is not None:
                    nursery.start_soon(self.bandwidth_file.watch)
                await watching.wait()
                # what changed before the watches were set: segments (an mtime sweep),
                # chat and extras (their rescan, announcing what is new since the first)
                await self.local_files.sweep()
                await self.files.local.rescan(announce_new=True)
                log.info("segsync node %s ready: watching, swept and pushing",
                         self.config.node_name)
                task_status.started(self.url)

    async def _watch(self, nursery: trio.Nursery, watching: trio.Event) -> None:
        began = trio.current_time()
        await nursery.start(self.watcher.run, self._handle_batch)
        took = trio.current_time() - began
        self.index_keeper.metrics.start_phase.labels("watch").set(took)
        log.info("watching the archive for changes (watches set in %.2fs)", took)
        watching.set()

    async def _handle_batch(self, batch) -> None:
        """The watcher's events go to the segments' side and to chat and extras."""
        await self.local_files.handle_batch(batch)
        await self.files.handle_batch(batch)

    def stop(self) -> None:
        self.cancel_scope.cancel()

    async def _serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        # imported here: the one-shot backfill never serves, and hypercorn (with h2 and
        # wsproto) is a tenth of a second of its start-up
        from hypercorn.config import Config as HypercornConfig

        from .serve.httpserver import serve

        hc = HypercornConfig()
        host, port = self.config.listen_host_port
        hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        hc.accesslog = None
        hc.errorlog = logging.getLogger("hypercorn.error")
        hc.graceful_timeout = 2.0
        hc.keep_alive_timeout = 30.0
        hc.h11_max_incomplete_size = 16 * 1024
        hc.read_timeout = 30
        self.tls.configure_hypercorn(hc)
        await serve(self.app, hc, task_status=task_status)

    def _peers_rule(self, entries: list) -> str | None:
        """The clear-text peer rule for a re-read peers file or nodes table (agent/peers/tls.py)."""
        return peers_problem(entries, self.config)

    async def set_peers(self, peers: list[Peer | str]) -> None:
        """Replace the configured (static) peers, as flags would, and return once the
        pusher follows the new set."""
        self.peers.set_source("static", [p if isinstance(p, Peer) else Peer.from_url(p)
                                         for p in peers])
        with trio.move_on_after(5 if self.config.push and self.url else 0):
            while set(self.pusher.pushers) != {p for p in self.peers
                                               if self.pusher.pushed_to(p)}:
                await trio.sleep(0.001)


async def run_until_signalled(config: Config) -> None:
    """`segsync run`: run a node; SIGTERM or Ctrl-C stop it cleanly."""
    node = Node(config)
    async with trio.open_nursery() as nursery:
        async def watch_signals():
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("received %s, shutting down", signal.Signals(signum).name)
                    node.stop()
                    return

        nursery.start_soon(watch_signals)
        await node.run()
        nursery.cancel_scope.cancel()

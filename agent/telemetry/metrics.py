"""Prometheus metrics of one node, in a registry of its own (tests run several nodes).

Labels are bounded: peers (configured), outcomes, kinds and reasons (fixed sets).
No hour or segment ever becomes a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .latency_ring import LatencyRing

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROUND_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.pushes = Counter(
            "segsync_pushes", "Pushes to peers by outcome", ["peer", "kind", "outcome"], registry=r)
        self.pulls = Counter(
            "segsync_pulls", "Backfill fetches from peers by outcome",
            ["peer", "kind", "outcome"], registry=r)
        self.received = Counter(
            "segsync_received", "Segments and tombstones peers pushed to us, by outcome",
            ["kind", "outcome"], registry=r)
        self.bytes = Counter(
            "segsync_bytes", "Segment bytes moved", ["direction"], registry=r)
        self.hash_mismatches = Counter(
            "segsync_hash_mismatches", "Bytes that did not hash to their name",
            ["source"], registry=r)
        self.requests = Counter(
            "segsync_http_requests", "HTTP requests received, by endpoint", ["endpoint"],
            registry=r)
        self.rejected = Counter(
            "segsync_rejected_requests", "Requests refused, by reason", ["reason"], registry=r)
        self.queue_depth = Gauge(
            "segsync_push_queue_depth", "Items waiting to be pushed", ["peer"], registry=r)
        self.push_dropped = Counter(
            "segsync_push_dropped", "Pushes dropped because the peer's queue was full",
            ["peer"], registry=r)
        self.push_latency = Histogram(
            "segsync_push_latency_seconds", "From watcher event to peer acknowledged",
            ["kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.round_duration = Histogram(
            "segsync_backfill_round_seconds", "Duration of one backfill round with one peer",
            buckets=ROUND_BUCKETS, registry=r)
        self.last_push = Gauge(
            "segsync_last_push_success_timestamp_seconds",
            "Unix time of the last successful push to the peer", ["peer"], registry=r)
        self.last_round = Gauge(
            "segsync_last_backfill_round_timestamp_seconds",
            "Unix time of the last successful backfill round with the peer", ["peer"], registry=r)
        self.watcher_rescans = Counter(
            "segsync_watcher_rescans", "Full rescans after lost watcher events", ["reason"],
            registry=r)
        # downloader-aware push, receiving side (agent/push/recording.py)
        self.push_deferred = Counter(
            "segsync_push_deferred", "Offers answered 'later': our downloader was about "
            "to write the segment", registry=r)
        self.push_deferral_saved = Counter(
            "segsync_push_deferral_saved", "Deferred segments our downloader then wrote "
            "(bytes no peer had to send)", registry=r)
        self.push_holes_filled = Counter(
            "segsync_push_holes_filled", "Segments our downloader skipped that a push "
            "then filled", registry=r)
        self.push_holes_repaired = Counter(
            "segsync_push_holes_repaired", "Holes of our downloader in segments we had "
            "deferred, fetched at once from a node that offered them", registry=r)
        self.push_near_duplicates = Counter(
            "segsync_push_near_duplicates", "Offers refused as near-duplicates of a local "
            "segment (start within 1 ms, same duration, type and hash)", registry=r)
        self.indexed_segments = Gauge(
            "segsync_indexed_segments", "Segment files in the in-memory index", registry=r)
        self.peer_source_failures = Counter(
            "segsync_peer_source_failures", "Failed reads of a peer source (file, database); "
            "the last good list is kept", ["source"], registry=r)
        # not exported: the dashboard's sparkline of the last pushes
        self.recent_push_latencies = LatencyRing()

    def render(self) -> bytes:
        return generate_latest(self.registry)

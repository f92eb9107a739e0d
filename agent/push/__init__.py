"""The fast path out: per-peer push queues and workers, offers answered "later" and
re-offered, and the downloader tracker that answers peers' offers on this node.

Imports `peers`, `archive`, `telemetry`, `protocol`; never `pull` or `serve`."""

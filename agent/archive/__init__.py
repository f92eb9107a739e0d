"""The archive on this node's disk: the store (listings, atomic verified writes,
tombstones), the index, ingest (the one way a peer's file enters), the watcher and
local files (what appears here), the tombstones on disk checked before serving and
listing (disk tombstones), the scrub (rot found and quarantined).

Imports `telemetry` and `protocol`; knows nothing of peers (the scrub's healer is
passed in as a callable)."""

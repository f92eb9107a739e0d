"""The other nodes: the peer set and its sources (flags, node file, nodes database),
peer kinds, the clients (segsync `/v1` and wubloader's read API), the transport under
them, and TLS.

Imports `archive` (served-bytes checks), `telemetry` and `protocol`."""

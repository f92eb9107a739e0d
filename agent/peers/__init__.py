"""The other nodes: the peer set and its sources (flags, node file, nodes database),
peer kinds, the clients (segsync `/v1` and wubloader's read API), the transport under
them, TLS, and the node's bandwidth limits (taken by the clients and the server).

Imports `archive` (served-bytes checks), `telemetry` and `protocol`."""

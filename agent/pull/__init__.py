"""Anti-entropy: backfill rounds per peer (digests, listings, plans), downloads with
the node-wide limiter, the wubloader listing puller, round statistics, and the healer
that fetches a rotten segment again.

Imports `peers`, `archive`, `telemetry`, `protocol`; never `push` or `serve`."""

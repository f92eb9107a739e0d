"""The `segsync` command line: `run` (through `node`), and the one-shots: backfill,
scrub, status, tombstone, purge, dupes, coverage, tls init, demo.

The top of the import graph: may import anything in `agent`; nothing imports it."""

"""Chat batches and extras files on this node (protocol/filesets/): `tree` (the
disk, never through a symlink), `index` (paths, sizes, digests), `ingest` (verified
writes), `local` (what appears locally), `archive` (the four, built together). The
peers side is `agent.peers.fileset_client`, `agent.push.fileset_pusher`,
`agent.pull.fileset_puller` and `agent.serve.fileset_server`. Imports: the archive
package (recent sets), telemetry's registry, protocol.
"""

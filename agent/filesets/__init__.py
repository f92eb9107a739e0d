"""Chat batches and extras files: replicated beside the segments (protocol/filesets.py).

`tree` (the disk, no symlinks), `index` (paths, sizes, digests), `ingest` (verified
writes), `local` (what appears locally), `push`, `pull`, `client` and `serve`
(the HTTP side), wired by `FileSets` (`service`).
"""

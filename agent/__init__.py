"""segsync's I/O shell: the store, watcher, pusher, backfiller, server and CLI."""

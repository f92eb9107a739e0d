"""File sets: what a wubloader node replicates beside the segments. `chat` (chat batch
names and their hash rule), `extras` (extras paths: hostile ones refused), `sets`
(digests, buckets, plans, limits) and `batch` (the framed reply of a file batch)."""

"""The index's per-segment cost stays small and invisible to the cyclic GC."""

import gc
import os

from agent.archive.index import ArchiveIndex
from helpers import hours_ago, make_name
from protocol.names import Kind


def test_hour_names_are_not_tracked_by_the_cyclic_gc():
    """A full collection must not visit every indexed name (70 ms at 1M segments)."""
    index = ArchiveIndex()
    names = [make_name(os.urandom(8), hours_ago(h)) for h in (1, 1, 2) for _ in range(50)]
    for name in names:
        index.add(name, Kind.SEGMENT)
    index.add(names[0], Kind.TOMBSTONE)
    index.discard(names[1], Kind.SEGMENT)
    index.replace_all([(n.channel, n.quality, n.hour, [n.filename]) for n in names[:3]])
    index.add(names[5], Kind.SEGMENT)
    gc.collect()
    entries = [e for hours in index._pairs.values() for e in hours.values()]
    assert entries
    for entry in entries:
        assert not gc.is_tracked(entry.names)
    assert index.has(names[5], Kind.SEGMENT) and not index.has(names[1], Kind.SEGMENT)

"""A bounded set that forgets its oldest members: for echo and duplicate suppression."""

from __future__ import annotations

import collections


class RecentSet:
    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self._items: collections.OrderedDict[str, None] = collections.OrderedDict()

    def add(self, item: str) -> None:
        self._items[item] = None
        self._items.move_to_end(item)
        while len(self._items) > self.maxlen:
            self._items.popitem(last=False)

    def discard(self, item: str) -> None:
        self._items.pop(item, None)

    def __contains__(self, item: str) -> bool:
        return item in self._items

    def __len__(self) -> int:
        return len(self._items)

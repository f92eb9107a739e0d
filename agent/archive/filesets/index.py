"""In-memory index of the chat and extras file sets: paths and sizes, by bucket, with
cached digests, so an in-sync round reads no directory.

Kept apart from the segment index on purpose (a different shape: paths of any depth,
sizes, no segment names). A chat batch that goes away locally is remembered as
vanished (bounded): the chat merger replaced it with a newer batch holding its
messages, so pulling it back from a peer would only make the merger work again.
"""

from __future__ import annotations

from typing import Iterable

from protocol.filesets import sets as fs

from ..recent import RecentSet

VANISHED_MEMORY = 100_000


class FileSet:
    __slots__ = ("kind", "key", "buckets", "_digests", "_set_digests", "vanished")

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        self.buckets: dict[str, dict[str, int]] = {}
        self._digests: dict[str, bytes] = {}
        self._set_digests: dict[tuple[str, str], tuple[int, bytes]] = {}
        self.vanished = RecentSet(VANISHED_MEMORY) if kind == fs.CHAT else None

    def changed(self, bucket: str) -> None:
        self._digests.pop(bucket, None)
        self._set_digests.clear()

    def listed(self, bucket: str) -> list[str]:
        return fs.visible(self.kind, self.buckets.get(bucket, {}))

    def bucket_digest(self, bucket: str) -> bytes:
        d = self._digests.get(bucket)
        if d is None:
            d = self._digests[bucket] = fs.bucket_digest(self.listed(bucket))
        return d

    def bucket_digests(self, first: str, last: str) -> list[tuple[str, int, bytes]]:
        return sorted((b, len(self.buckets[b]), self.bucket_digest(b))
                      for b in self.buckets if fs.bucket_in_range(self.kind, b, first, last))

    def digest(self, first: str, last: str) -> tuple[int, bytes]:
        rng = (first, last) if self.kind == fs.CHAT else ("", "")
        cached = self._set_digests.get(rng)
        if cached is None:
            buckets = self.bucket_digests(first, last)
            cached = (sum(n for _, n, _ in buckets),
                      fs.set_digest((b, d) for b, _, d in buckets))
            if len(self._set_digests) > 8:
                self._set_digests.clear()
            self._set_digests[rng] = cached
        return cached

    def count(self) -> int:
        return sum(len(b) for b in self.buckets.values())


def _kind_of(kind: str, rel: str) -> str:
    """The count a file belongs to."""
    if kind != fs.CHAT:
        return "extras_files"
    return "chat_batches" if rel.endswith(".json") else "chat_tombstones"


class FileSetIndex:
    def __init__(self) -> None:
        self.sets: dict[tuple[str, str], FileSet] = {}
        self.version = 0
        self._counts = {"chat_batches": 0, "chat_tombstones": 0, "extras_files": 0}

    def _set(self, kind: str, key: str, create: bool) -> FileSet | None:
        s = self.sets.get((kind, key))
        if s is None and create:
            s = self.sets[(kind, key)] = FileSet(kind, key)
        return s

    def add(self, kind: str, key: str, rel: str, size: int) -> bool:
        """Record a file; True if it was new."""
        s = self._set(kind, key, True)
        assert s is not None
        bucket = fs.bucket_of(kind, rel)
        files = s.buckets.setdefault(bucket, {})
        if rel in files:
            return False
        files[rel] = size
        self._counts[_kind_of(kind, rel)] += 1
        s.changed(bucket)
        if s.vanished is not None:
            s.vanished.discard(rel)
        self.version += 1
        return True

    def discard(self, kind: str, key: str, rel: str) -> bool:
        """A file went away locally: forget it (a chat batch is remembered as vanished)."""
        s = self._set(kind, key, False)
        if s is None:
            return False
        bucket = fs.bucket_of(kind, rel)
        files = s.buckets.get(bucket)
        if not files or rel not in files:
            return False
        del files[rel]
        self._counts[_kind_of(kind, rel)] -= 1
        if not files:
            del s.buckets[bucket]
        s.changed(bucket)
        if s.vanished is not None and rel.endswith(".json"):
            s.vanished.add(rel)
        self.version += 1
        return True

    def replace_set(self, kind: str, key: str, files: dict[str, int]) -> list[str]:
        """Swap in a scan of one set; returns the paths that are new to the index."""
        s = self._set(kind, key, True)
        assert s is not None
        old = {rel for b in s.buckets.values() for rel in b}
        buckets: dict[str, dict[str, int]] = {}
        for rel, size in files.items():
            buckets.setdefault(fs.bucket_of(kind, rel), {})[rel] = size
        for bucket in set(buckets) | set(s.buckets):
            if buckets.get(bucket) != s.buckets.get(bucket):
                s.changed(bucket)
        if s.vanished is not None:
            for rel in old - files.keys():
                if rel.endswith(".json"):
                    s.vanished.add(rel)
        for rel in old:
            self._counts[_kind_of(kind, rel)] -= 1
        for rel in files:
            self._counts[_kind_of(kind, rel)] += 1
        s.buckets = buckets
        self.version += 1
        return [rel for rel in files if rel not in old]

    def has(self, kind: str, key: str, rel: str) -> bool:
        s = self.sets.get((kind, key))
        return s is not None and rel in s.buckets.get(fs.bucket_of(kind, rel), {})

    def size(self, kind: str, key: str, rel: str) -> int | None:
        s = self.sets.get((kind, key))
        return None if s is None else s.buckets.get(fs.bucket_of(kind, rel), {}).get(rel)

    def local(self, kind: str, key: str) -> "_LocalView":
        return _LocalView(self.sets.get((kind, key)), kind)

    def vanished(self, kind: str, key: str) -> RecentSet | None:
        s = self.sets.get((kind, key))
        return s.vanished if s is not None else None

    def set_digests(self, first: str, last: str, kinds: Iterable[str] = fs.KINDS
                    ) -> list[tuple[str, str, int, bytes]]:
        out = []
        for (kind, key), s in sorted(self.sets.items()):
            if kind not in kinds:
                continue
            count, digest = s.digest(first, last)
            if count:
                out.append((kind, key, count, digest))
        return out

    def bucket_digests(self, kind: str, key: str, first: str, last: str
                       ) -> list[tuple[str, int, bytes]]:
        s = self.sets.get((kind, key))
        return s.bucket_digests(first, last) if s else []

    def entries(self, kind: str, key: str, buckets: Iterable[str], after: str,
                max_entries: int = fs.MAX_ENTRIES, max_bytes: int = fs.MAX_ENTRIES_BYTES
                ) -> tuple[list[tuple[str, int]], bool]:
        """Listed entries of some buckets, sorted, after `after`; (entries, complete)."""
        s = self.sets.get((kind, key))
        if s is None:
            return [], True
        rels = sorted(r for b in set(buckets) for r in s.listed(b) if r > after)
        out: list[tuple[str, int]] = []
        used = 0
        for rel in rels:
            used += len(rel.encode("utf-8")) + 12
            if len(out) >= max_entries or used > max_bytes:
                return out, False
            out.append((rel, s.buckets[fs.bucket_of(kind, rel)][rel]))
        return out, True

    def listed_rels(self, kind: str, key: str) -> list[str]:
        s = self.sets.get((kind, key))
        if s is None:
            return []
        return [r for b in sorted(s.buckets) for r in s.listed(b)]

    def bucket_listed(self, kind: str, key: str, bucket: str) -> list[str]:
        s = self.sets.get((kind, key))
        return s.listed(bucket) if s else []

    def chat_hours(self, channel: str) -> list[str]:
        s = self.sets.get((fs.CHAT, channel))
        return sorted(s.buckets) if s else []

    def counts(self) -> dict[str, int]:
        """Files held of each kind: chat batches (tombstones apart) and extras files."""
        return dict(self._counts)


class _LocalView:
    """`in` over one set's paths (what plan_entries takes as `local`)."""

    __slots__ = ("s", "kind")

    def __init__(self, s: FileSet | None, kind: str) -> None:
        self.s = s
        self.kind = kind

    def __contains__(self, rel: object) -> bool:
        if self.s is None or not isinstance(rel, str):
            return False
        try:
            bucket = fs.bucket_of(self.kind, rel)
        except Exception:
            return False
        return rel in self.s.buckets.get(bucket, {})

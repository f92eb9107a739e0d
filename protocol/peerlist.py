"""Peer lists: wubloader's node file format, and a peer source's outage tracking.

Pure functions and data. A peer comes from `--peer` flags (a URL), a node file
(`NAME URL` or `URL` per line, wubloader's format and segsync's older one-URL-per-line
format alike) or wubloader's `nodes` table (name and URL). URL validation is passed in
(`check_url`), so this module stays free of HTTP libraries. The sources are merged
(one peer per URL, this node left out by name) by `agent.peers.peer_set.merge_sources`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .messages import PeerSourceStatus

MAX_NAME_CHARS = 100  # a name becomes a metric label and a status column
MAX_PEERS = 1000  # a node file or table this long is a mistake, not a cluster


class PeerListError(ValueError):
    """A peer source that cannot be used as it is; the message says where and why."""


@dataclass(frozen=True)
class PeerEntry:
    """One peer as a source names it; `name` None: known by its URL only."""

    name: str | None
    url: str

    @property
    def label(self) -> str:
        return self.name or self.url


def check_name(name: str) -> str:
    """A node name as it may appear in status and metrics: printable, no spaces."""
    if not name or len(name) > MAX_NAME_CHARS:
        raise PeerListError(f"node name must be 1 to {MAX_NAME_CHARS} characters")
    if not name.isprintable() or any(c.isspace() for c in name):
        raise PeerListError(f"node name {name!r} must be printable, without spaces")
    if "://" in name:
        raise PeerListError(f"node name {name!r} looks like a URL (expected 'NAME URL')")
    return name


def parse_node_file(text: str, check_url: Callable[[str], str]) -> list[PeerEntry]:
    """A node file: `NAME URL` or `URL` per line, `#` starts a comment, blank lines
    ignored. A URL listed twice is one peer; one name on two URLs, or two names on one
    URL, is an error. Any bad line raises `PeerListError` naming it."""
    entries: list[PeerEntry] = []
    index_of: dict[str, int] = {}  # url -> its entry
    line_of: dict[str, int] = {}  # url -> the line that listed it first
    owner: dict[str, str] = {}  # name -> url
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            if len(fields) > 2:
                raise PeerListError(f"expected 'NAME URL' or 'URL', got {len(fields)} fields")
            name = check_name(fields[0]) if len(fields) == 2 else None
            try:
                url = check_url(fields[-1])
            except ValueError as e:
                raise PeerListError(str(e)) from None
            if name is not None and owner.setdefault(name, url) != url:
                raise PeerListError(f"name {name!r} already names {owner[name]} "
                                    f"(line {line_of[owner[name]]})")
            if url in index_of:
                i = index_of[url]
                if name is not None and entries[i].name not in (None, name):
                    raise PeerListError(f"{url} is already named {entries[i].name!r} "
                                        f"(line {line_of[url]})")
                entries[i] = PeerEntry(entries[i].name or name, url)
                continue
            if len(entries) >= MAX_PEERS:
                raise PeerListError(f"more than {MAX_PEERS} peers")
        except PeerListError as e:
            raise PeerListError(f"line {number}: {e}") from None
        line_of[url] = number
        index_of[url] = len(entries)
        entries.append(PeerEntry(name, url))
    return entries


@dataclass
class SourceHealth:
    """Whether a peer source (the nodes database) answers, so that an outage is
    logged once, when it starts, and its end once too; times are passed in."""

    error: str | None = None
    failing_since: float | None = None
    last_success: float | None = None
    failures: int = 0

    def failed(self, error: str, now: float) -> bool:
        """Record a failure; True when it starts an outage (log it), False while the
        outage goes on (a different reason within one outage is not logged again)."""
        starts = self.failing_since is None
        if starts:
            self.failing_since = now
        self.error = error
        self.failures += 1
        return starts

    @property
    def ok(self) -> bool | None:
        """Whether the last read succeeded; None before the first."""
        if self.error is None and self.last_success is None:
            return None
        return self.error is None

    def report(self, source: str, where: str, peers: int) -> PeerSourceStatus:
        """The source's state as the status reply carries it."""
        return PeerSourceStatus(source=source, where=where, peers=peers, ok=self.ok,
                                error=self.error, failing_since=self.failing_since,
                                last_read=self.last_success)

    def succeeded(self, now: float) -> bool:
        """Record a success; True when it ends an outage (log the recovery)."""
        ended = self.failing_since is not None
        self.error = None
        self.failing_since = None
        self.last_success = now
        return ended

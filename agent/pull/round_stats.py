"""What a backfill round did: per (peer, channel, quality) counts and per-peer results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.replication import FetchPlan


@dataclass
class PairStats:
    """What one (peer, channel, quality) unit did in one round."""

    hours_compared: int = 0
    hours_listed: int = 0
    missing: int = 0
    downloaded: int = 0
    tombstones: int = 0
    skipped_recent: int = 0
    skipped_temp: int = 0
    skipped_tombstoned: int = 0
    hash_mismatch: int = 0
    failed: int = 0
    bytes: int = 0
    elsewhere: int = 0  # fetched from another peer meanwhile, or already here
    duration: float = 0.0
    error: str | None = None  # this unit failed; the next round retries it
    download_errors: int = 0  # broken exchanges in a row: a peer that stopped answering

    def add_plan(self, plan: FetchPlan) -> None:
        self.missing += len(plan.fetch)
        self.skipped_recent += plan.skipped_recent
        self.skipped_temp += plan.skipped_temp
        self.skipped_tombstoned += plan.skipped_tombstoned
        self.elsewhere += plan.skipped_near_duplicate  # the same bytes are here already


@dataclass
class RoundResult:
    peer: str  # the peer's URL
    name: str = ""  # and its name
    ok: bool = True
    error: str | None = None
    pairs_compared: int = 0
    pairs: dict[tuple[str, str], PairStats] = field(default_factory=dict)
    duration: float = 0.0
    files: Any = None  # chat and extras (agent.pull.fileset_puller.FileRoundStats)

    def total(self, attr: str) -> int:
        return sum(getattr(s, attr) for s in self.pairs.values())

    @property
    def failures(self) -> int:
        return (self.total("hash_mismatch") + self.total("failed") + (0 if self.ok else 1)
                + (self.files.failed if self.files is not None else 0))

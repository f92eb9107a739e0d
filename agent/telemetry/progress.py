"""The progress hook of long transfers (backfill downloads, the scrub's bytes); the
one-shot commands draw their bars from it."""

from __future__ import annotations


class Progress:
    """Receives download progress; the one-shot command shows it as a bar."""

    def planned(self, segments: int, nbytes: int | None) -> None: ...
    def fetched(self, nbytes: int) -> None: ...

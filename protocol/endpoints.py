"""Endpoint paths of the agent's HTTP API, declared once (TEMPORARY: replaced on merge)."""

OFFER = "/v1/offer"
TOMBSTONE = "/v1/tombstone"
FETCH = "/v1/fetch"
PAIR_DIGESTS = "/v1/pair-digests"
HOUR_DIGESTS = "/v1/hour-digests"
LISTING = "/v1/listing"
STATUS = "/v1/status"
SEGMENTS = "/v1/segments"
HEALTHZ = "/healthz"


def segment_path(path: str) -> str:
    return f"{SEGMENTS}/{path}"

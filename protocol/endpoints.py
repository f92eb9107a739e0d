"""Every HTTP endpoint path of an agent, declared once, and its bounded metric label.

The server routes on these names and the client calls them; nothing else spells a
path. Sans-I/O: pure strings and functions.
"""

from __future__ import annotations

import urllib.parse

V1 = "/v1"

# msgpack endpoints between agents (POST a message, get a message back)
OFFER = "/v1/offer"
# An offer carrying this header (value "1") comes from a pusher that understands the
# OfferLater reply; an offer without it (an older pusher) is never answered "later".
OFFER_LATER_HEADER = "x-segsync-offer-later"
TOMBSTONE = "/v1/tombstone"
PAIR_DIGESTS = "/v1/pair-digests"
HOUR_DIGESTS = "/v1/hour-digests"
LISTING = "/v1/listing"
STATUS = "/v1/status"
FETCH = "/v1/fetch"  # batch download: a framed stream of segments
SEGMENTS = "/v1/segments"  # GET or PUT SEGMENTS/<segment path>
# file sets: chat batches and extras files (protocol/filesets/)
SET_DIGESTS = "/v1/set-digests"
BUCKET_DIGESTS = "/v1/bucket-digests"
ENTRIES = "/v1/entries"
FILE_OFFER = "/v1/file-offer"
FILE_FETCH = "/v1/file-fetch"  # batch download of small files: a framed reply
FILE = "/v1/file"  # GET or PUT FILE/<kind>/<key>/<path within the set>
FILE_SHA256_HEADER = "x-segsync-sha256"  # the bytes' SHA-256, URL-safe base64, unpadded

# plain HTTP
HEALTHZ = "/healthz"
METRICS = "/metrics"
FILES = "/files"  # read-only listing for existing archive tooling: FILES/<channel>/...
LEGACY_SEGMENTS = "/segments"  # read-only segment bytes: LEGACY_SEGMENTS/<segment path>
EXTRAS = "/extras"  # wubloader's listing of an extras directory: EXTRAS/<dir>

DASHBOARD = "/dashboard"  # the browser dashboard's files and JSON: DASHBOARD/<name>

ALL = (OFFER, TOMBSTONE, PAIR_DIGESTS, HOUR_DIGESTS, LISTING, STATUS, FETCH, SEGMENTS,
       HEALTHZ, METRICS, FILES, LEGACY_SEGMENTS, DASHBOARD,
       SET_DIGESTS, BUCKET_DIGESTS, ENTRIES, FILE_OFFER, FILE_FETCH, FILE, EXTRAS)

PAGE = "/"  # the dashboard's page (not in ALL: its metric label is "other")


def segment_url(path: str) -> str:
    """The /v1 URL path of one segment (its `channel/quality/hour/file` path)."""
    return f"{SEGMENTS}/{path}"


def legacy_segment_url(path: str) -> str:
    """Where a wubloader node (and an agent, for archive tooling) serves one segment."""
    return f"{LEGACY_SEGMENTS}/{path}"


def files_url(*parts: str) -> str:
    """A listing of wubloader's read API: FILES/CHANNEL/QUALITY/HOUR, as far as given;
    each part percent-encoded (a channel name may hold any character but '/')."""
    return "/".join([FILES, *(urllib.parse.quote(p, safe="") for p in parts)])


def _quoted(path: str) -> str:
    return "/".join(urllib.parse.quote(p, safe="") for p in path.split("/"))


def file_url(kind: str, key: str, rel: str) -> str:
    """The /v1 URL path of one file of a set: each component percent-encoded."""
    return f"{FILE}/{_quoted(kind)}/{_quoted(key)}/{_quoted(rel)}"


def legacy_file_url(path: str) -> str:
    """Where a wubloader node serves a chat batch or extras file (`path` under ROOT)."""
    return f"{LEGACY_SEGMENTS}/{_quoted(path)}"


def extras_url(directory: str) -> str:
    return f"{EXTRAS}/{urllib.parse.quote(directory, safe='')}"


def split_endpoint(parts: list[str]) -> tuple[str, list[str]]:
    """A request path's parts (already split on '/') -> (the endpoint they name, the
    parts after it). The endpoint is '/v1/<op>' under /v1 and '/<first part>'
    otherwise ('' if the first part holds an encoded '/'); whether it is one of `ALL`
    is for the caller to check."""
    head = parts[0] if parts else ""
    if "/" in head:  # an encoded '/' ('%2f') in the first part never names an endpoint
        return "", parts[1:]
    if "/" + head == V1:
        return f"{V1}/{parts[1] if len(parts) > 1 else ''}", parts[2:]
    return "/" + head, parts[1:]


def is_v1(endpoint: str) -> bool:
    """Under /v1: the msgpack API between agents (token-protected)."""
    return endpoint.startswith(V1 + "/")


def label(endpoint: str) -> str:
    """'/v1/pair-digests' -> 'v1-pair-digests': the metric label of a declared endpoint."""
    return endpoint.lstrip("/").replace("/", "-")


ENDPOINT_LABELS = frozenset(label(e) for e in ALL)  # plus "other"


def endpoint_label(path: str) -> str:
    """The label of the endpoint a request path names; 'other' for anything else,
    so metric labels stay a fixed, bounded set whatever clients send."""
    endpoint, _ = split_endpoint(path.split("/")[1:])
    return label(endpoint) if endpoint in ALL else "other"

"""Hard limits on everything that crosses the wire, in one place."""

from .recording import MAX_DECLARED, MAX_PAIRS as _RECORDING_PAIRS

PROTOCOL_VERSION = 1

# Request bodies of /v1 control messages (offers, tombstones, digest queries).
MAX_REQUEST_BYTES = 64 * 1024
# Replies a peer sends back (hour listings are the largest).
MAX_REPLY_BYTES = 4 * 1024 * 1024
# Largest segment accepted from a peer (2-second video is a few MiB).
MAX_SEGMENT_BYTES = 256 * 1024 * 1024

MAX_STRING = 1024
MAX_BINARY = 64
# Keys of one map: room for the open status records to grow (PeerStatus has 11).
MAX_MAP = 32
# A listing of one hour: 1800 segments of 2 s, several versions each, plus tombstones.
MAX_ARRAY = 50_000
# Containers in one decoded message, so garbage cannot explode into objects.
MAX_CONTAINERS = 60_000
# Items (of every array, and every map's keys and values) in one message. The largest
# a node sends, a file set digest of MAX_HOUR_RANGE + 1 buckets, holds about 70k.
# msgpack gives each item an 8-byte slot as it reads the header: 4 MiB of nils in
# arrays of MAX_ARRAY would cost 33 MB and 2 s of framing checks before a refusal.
MAX_ITEMS = 200_000
# Nesting of arrays and maps (messages need 3: map -> array -> array).
MAX_DEPTH = 8
# Hours a single digest query may name (2 years).
MAX_HOUR_RANGE = 24 * 366 * 2
MAX_PAIRS = 10_000
# Segments one batch fetch may ask for (a catch-up pulls many in one response).
MAX_FETCH_PATHS = 64
# One frame header inside a batch fetch response (a path and a size, msgpack).
MAX_FRAME_HEADER = 2048
# Peers one status reply may list (a node has a handful; this bounds a hostile reply).
MAX_STATUS_PEERS = 1000
# Lost segments one status reply names (the count is exact; the list is a sample).
MAX_STATUS_LOST_PATHS = 50
# Peer list sources (peers file, nodes database, ...) one status reply may describe.
MAX_PEER_SOURCES = 16
# Recorded (channel, quality) pairs one status reply may list: those a node follows
# and those its operator declared (raising either bound raises this one too).
MAX_STATUS_RECORDED_PAIRS = _RECORDING_PAIRS + MAX_DECLARED

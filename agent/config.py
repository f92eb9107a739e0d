"""Agent configuration: defaults, TOML file, command-line flags; validated once.

Flags override the TOML file, which overrides the defaults. Every bad value is a
`ConfigError` naming the key and what is wrong.
"""

from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from protocol.bandwidth import DEFAULT_LIVE_WINDOW, RateError, parse_live_window, parse_rate
from protocol.errors import ConfigError, FileNameError
from protocol.filesets.extras import validate_extras_dir
from protocol.peerkind import PeerKind, parse_peer_kind
from protocol.recording import DECLARED_GRACE, parse_declared_pairs

from .peers.peer_set import normalize_peer_url
from .peers.peers_file import read_peers_file

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass
class Config:
    root: Path
    listen: str = "127.0.0.1:8200"
    peers: list[str] = field(default_factory=list)
    peers_file: Path | None = None
    node_database: str | None = field(default=None, repr=False)  # may hold a password
    node_database_file: Path | None = None
    token: str | None = None
    protect_reads: bool = False
    insecure: bool = False
    node_name: str = field(default_factory=socket.gethostname)
    recent_window: float = 120.0
    backfill_interval: float = 60.0
    backfill_hours: int = 336
    max_concurrency: int = 5
    # extras directories replicated beside the segments: ROOT/DIR/... (wubloader's --extras)
    extras: list[str] = field(default_factory=list)
    log_level: str = "INFO"
    log_format: str = "text"
    # tuning knobs (TOML only)
    push_concurrency: int = 4
    push_queue_size: int = 10_000
    request_timeout: float = 10.0
    backoff_cap: float = 30.0
    max_segment_bytes: int = 256 * 1024 * 1024
    rescan_interval: float = 3600.0
    # the persistent index (ROOT/.segsync/index.sqlite3): seconds between saves of
    # changed hours; hours beyond the current and previous whose names stay in memory
    index_flush_interval: float = 5.0
    max_hot_hours: int = 48
    backfill: bool = True
    push: bool = True
    peer_kinds: dict[str, PeerKind] = field(default_factory=dict)  # URL -> kind (TOML only)
    scrub: bool = True
    scrub_rate: float = 10.0  # MB/s (10^6 bytes) re-hashed by the periodic scrub
    scrub_interval: float = 86400.0  # seconds from the end of a full pass to the next
    scrub_start_delay: float = 60.0  # seconds after start-up before the first pass
    # a peer not up yet is logged at INFO for this long after it joined, then WARNING
    startup_grace: float = 60.0
    # downloader-aware push: answer "later" to a segment our own downloader is about to
    # write; a pair counts as recorded here while its files appeared this recently
    defer_push: bool = True
    recording_idle: float = 10.0
    # the pairs our own downloader records (CHANNEL/QUALITY): deferred from the start,
    # before its first file, until none of theirs appeared for `recording-grace` s
    records: frozenset[tuple[str, str]] = frozenset()
    recording_grace: float = DECLARED_GRACE
    # TLS (agent/peers/tls.py): serve HTTPS with cert+key, trust peers from ca
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_client_auth: bool = False
    tls_reload_interval: float = 5.0
    # bandwidth limits (agent/peers/bandwidth.py), MB/s for the whole node, 0: none;
    # re-read from the config file while the agent runs
    max_upload_rate: float = 0.0
    max_download_rate: float = 0.0
    live_window: float = DEFAULT_LIVE_WINDOW  # seconds: younger segments are live traffic
    # not settings: the TOML file this came from, and the limits flags fixed
    config_file: Path | None = None
    fixed_limits: frozenset[str] = frozenset()  # "upload", "download"

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)


# keys a TOML file may hold, with the flag name they mirror
TOML_KEYS = {f.name.replace("_", "-"): f.name for f in fields(Config)
             if f.name not in ("config_file", "fixed_limits")} | {
    "token-file": "token_file", "peer": "peers",
}
# the bandwidth limits' keys, by direction: what the running agent re-reads
LIMIT_KEYS = {"upload": "max-upload-rate", "download": "max-download-rate"}


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"listen {value!r} must be HOST:PORT")
    host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen {value!r}: port must be 0-65535")
    return host, int(port)


def parse_peer_kinds(value: object) -> dict[str, PeerKind]:
    """The `peer-kinds` table: peer URL -> auto | segsync | wubloader ("legacy" too)."""
    if not isinstance(value, dict):
        raise ConfigError('peer-kinds must be a table of URL = "auto|segsync|wubloader"')
    out = {}
    for url, kind in value.items():
        try:
            out[normalize_peer_url(str(url))] = parse_peer_kind(kind)
        except ValueError as e:
            raise ConfigError(f"peer-kinds: {url!r}: {e}") from None
    return out


def parse_extras(value: object) -> list[str]:
    """`--extras` (repeatable, each comma-separated) or TOML `extras = [...]`: the
    extras directory names, in order, without repeats."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError("extras must be a list of directory names")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise ConfigError("extras must be a list of directory names")
        for name in (part.strip() for part in item.split(",")):
            if not name:
                continue
            try:
                validate_extras_dir(name)
            except FileNameError as e:
                raise ConfigError(f"extras: {e}") from None
            if name not in out:
                out.append(name)
    return out


def read_secret_file(path: Path, what: str) -> str:
    """A secret kept in a file (so it never shows in `ps`), stripped; never empty."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path}: {e}") from None
    if not secret:
        raise ConfigError(f"{what} {path} is empty")
    return secret


def read_token_file(path: Path) -> str:
    token = read_secret_file(path, "token file")
    if any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in token):
        raise ConfigError(f"token file {path}: token must be printable ASCII without spaces")
    return token


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path}: {e}") from None
    out = {}
    for key, value in raw.items():
        if key not in TOML_KEYS:
            raise ConfigError(f"config {path}: unknown key {key!r}")
        out[TOML_KEYS[key]] = value
    return out


def read_limits(path: Path) -> dict[str, float | None]:
    """The bandwidth limits a config file holds now, by direction, in bytes per second
    (None: no limit; a key left out is no limit). A ConfigError if the file cannot be
    used (unreadable, not TOML, an unknown key, a bad limit)."""
    values = load_toml(path)
    try:
        return {direction: parse_rate(values.get(TOML_KEYS[key]), key)
                for direction, key in LIMIT_KEYS.items()}
    except RateError as e:
        raise ConfigError(f"config {path}: {e}") from None


def _positive(name: str, value: Any, kind: type, allow_zero: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number")
    if kind is int and not float(value).is_integer():
        raise ConfigError(f"{name} must be a whole number")
    value = kind(value)
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}")
    return value


def build_config(values: dict[str, Any], missing_root_ok: bool = False) -> Config:
    """Validate merged settings (TOML then flags) into a Config. `missing_root_ok`: a
    root that does not exist yet passes (the command then creates it: `make_root`)."""
    values = dict(values)
    if not values.get("root"):
        raise ConfigError("--root is required")
    root = Path(values.pop("root"))
    token_file = values.pop("token_file", None)
    if token_file:
        values["token"] = read_token_file(Path(token_file))
    peers = values.pop("peers", None) or []
    if isinstance(peers, str) or not isinstance(peers, list):
        raise ConfigError("peers must be a list of URLs")
    normalized = []
    for p in peers:
        try:
            url = normalize_peer_url(str(p))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if url not in normalized:
            normalized.append(url)
    for key in ("peers_file", "tls_cert", "tls_key", "tls_ca"):
        if values.get(key):
            values[key] = Path(values[key])
    cfg = Config(root=root, peers=normalized, **{k: v for k, v in values.items() if v is not None})
    parse_listen(cfg.listen)
    cfg.recent_window = _positive("recent-window", cfg.recent_window, float, allow_zero=True)
    cfg.backfill_interval = _positive("backfill-interval", cfg.backfill_interval, float)
    cfg.backfill_hours = _positive("backfill-hours", cfg.backfill_hours, int, allow_zero=True)
    cfg.max_concurrency = _positive("max-concurrency", cfg.max_concurrency, int)
    cfg.push_concurrency = _positive("push-concurrency", cfg.push_concurrency, int)
    cfg.push_queue_size = _positive("push-queue-size", cfg.push_queue_size, int)
    cfg.request_timeout = _positive("request-timeout", cfg.request_timeout, float)
    cfg.backoff_cap = _positive("backoff-cap", cfg.backoff_cap, float)
    cfg.max_segment_bytes = _positive("max-segment-bytes", cfg.max_segment_bytes, int)
    cfg.rescan_interval = _positive("rescan-interval", cfg.rescan_interval, float)
    cfg.index_flush_interval = _positive("index-flush-interval", cfg.index_flush_interval,
                                         float)
    cfg.max_hot_hours = _positive("max-hot-hours", cfg.max_hot_hours, int, allow_zero=True)
    cfg.scrub_rate = _positive("scrub-rate", cfg.scrub_rate, float)
    cfg.scrub_interval = _positive("scrub-interval", cfg.scrub_interval, float, allow_zero=True)
    cfg.scrub_start_delay = _positive("scrub-start-delay", cfg.scrub_start_delay, float,
                                      allow_zero=True)
    cfg.recording_idle = _positive("recording-idle", cfg.recording_idle, float)
    cfg.recording_grace = _positive("recording-grace", cfg.recording_grace, float)
    records = cfg.records
    if isinstance(records, (set, frozenset)):  # given as pairs (not from TOML)
        records = [f"{channel}/{quality}" for channel, quality in records]
    try:
        cfg.records = parse_declared_pairs(records)
    except ValueError as e:
        raise ConfigError(f"records: {e}") from None
    if not isinstance(cfg.defer_push, bool):
        raise ConfigError("defer-push must be true or false")
    if str(cfg.log_level).upper() not in LOG_LEVELS:
        raise ConfigError(f"log-level must be one of {', '.join(LOG_LEVELS)}")
    cfg.log_level = str(cfg.log_level).upper()
    if cfg.log_format not in ("text", "json"):
        raise ConfigError("log-format must be text or json")
    if missing_root_ok and not os.path.lexists(cfg.root):
        pass  # a new node's: created once everything else is valid
    elif not cfg.root.is_dir():
        raise ConfigError(f"root {cfg.root} is not a directory")
    elif not os.access(cfg.root, os.W_OK):
        raise ConfigError(f"root {cfg.root} is not writable")
    cfg.startup_grace = _positive("startup-grace", cfg.startup_grace, float, allow_zero=True)
    cfg.tls_reload_interval = _positive("tls-reload-interval", cfg.tls_reload_interval, float)
    try:
        for key in LIMIT_KEYS.values():
            parse_rate(getattr(cfg, TOML_KEYS[key]), key)
        cfg.live_window = parse_live_window(cfg.live_window)
    except RateError as e:
        raise ConfigError(str(e)) from None
    cfg.peer_kinds = parse_peer_kinds(cfg.peer_kinds)
    cfg.extras = parse_extras(cfg.extras)
    file_peers = []
    if cfg.peers_file is not None:
        file_peers = read_peers_file(cfg.peers_file)  # fail fast at start-up on a bad file
    check_node_database(cfg)
    from .peers.tls import config_problem
    problem = config_problem(cfg, file_peers)
    if problem:
        raise ConfigError(problem)
    return cfg


def make_root(root: Path) -> bool:
    """Create a missing archive root (bootstrapping a new node), parents included;
    True if it was created. ConfigError if it cannot be."""
    if root.is_dir():
        return False
    try:
        root.mkdir(parents=True)
    except FileExistsError:
        if root.is_dir():
            return False  # made meanwhile
        raise ConfigError(f"root {root} is not a directory") from None
    except OSError as e:
        raise ConfigError(f"cannot create root {root}: {e.strerror or e}") from None
    return True


def check_node_database(cfg: Config) -> None:
    """Read `--node-database-file` into `node_database`; refuse a connection string
    libpq would refuse (the error never shows the password)."""
    from .peers.node_database import parse_conninfo

    try:
        if cfg.node_database_file is not None:
            if cfg.node_database is not None:
                raise ValueError("give node-database or node-database-file, not both")
            cfg.node_database = read_secret_file(Path(cfg.node_database_file),
                                                 "node database file")
        if cfg.node_database is not None:
            parse_conninfo(cfg.node_database)
    except ValueError as e:
        raise ConfigError(str(e)) from None

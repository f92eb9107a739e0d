"""wubloader's nodes database: the peers listed in its `nodes` table.

`NodeDatabase.read()` runs `SELECT name, url FROM nodes WHERE backfill_from` on a
fresh connection (psycopg 3, in a worker thread, with connect and statement
timeouts) and returns the rows as peer entries. Every message it produces has the
password taken out: the connection string holds one, and libpq quotes connection
strings in some of its errors.

`NodeDatabaseSource` makes the table a source of the peer set: read at start-up and
once per backfill interval; a failed read keeps the last known list, and the outage is
logged once when it starts and once when it ends.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Callable

import trio

from protocol import messages as m
from protocol.peerlist import MAX_PEERS, PeerEntry, PeerListError, SourceHealth, check_name

from ..telemetry.metrics import Metrics
from .peer_set import Peer, PeerSet

log = logging.getLogger(__name__)

QUERY = "SELECT name, url FROM nodes WHERE backfill_from ORDER BY name LIMIT %s"
MIN_CONNECT_TIMEOUT = 2  # libpq's floor, whole seconds
# a read in progress holds up shutdown (its thread is waited for, not abandoned), so
# its timeouts stay short whatever request-timeout says
MAX_TIMEOUT = 5.0
MASK = "***"
# a password in a URI (scheme://user:PASSWORD@host) or in key=value form
_URI_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_KEY_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


class NodeDatabaseError(Exception):
    """The nodes table could not be read; the message holds no password."""


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with every password in it masked: the given ones, and any that looks
    like one in a connection string."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _URI_PASSWORD.sub(rf"\g<1>{MASK}@", text)
    return _KEY_PASSWORD.sub(rf"\g<1>{MASK}", text)


def parse_conninfo(conninfo: str) -> dict[str, str]:
    """The connection string's parameters; ValueError (password masked) if libpq
    would refuse it."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    if not conninfo.strip():
        raise ValueError("node database: empty connection string")
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(conninfo).items()}
    except ProgrammingError as e:
        raise ValueError(f"node database: bad connection string: "
                         f"{redact(str(e).strip(), (conninfo,))}") from None
    for port in params.get("port", "").split(","):
        if port and not port.isdigit():
            raise ValueError(f"node database: bad connection string: port {port!r} "
                             "is not a number")
    return params


def describe(params: dict[str, str]) -> str:
    """Where the database is, for logs and status: user@host:port/dbname, no secret."""
    user = params.get("user", "")
    host = params.get("host") or params.get("hostaddr") or "local socket"
    port = f":{params['port']}" if params.get("port") else ""
    return f"{user + '@' if user else ''}{host}{port}/{params.get('dbname', '')}"


def rows_to_entries(rows: list[tuple], check_url: Callable[[str], str]) -> list[PeerEntry]:
    """The table's rows as peers; a row that is not a usable (name, url) raises
    `PeerListError` naming it, and the whole read counts as failed."""
    if len(rows) > MAX_PEERS:
        raise PeerListError(f"more than {MAX_PEERS} nodes")
    entries = []
    for name, url in rows:
        try:
            if not isinstance(name, str) or not isinstance(url, str):
                raise PeerListError("name and url must be text")
            entries.append(PeerEntry(check_name(name), check_url(url)))
        except ValueError as e:
            raise PeerListError(f"node {name!r}: {e}") from None
    return entries


class NodeDatabase:
    """Reads the nodes table; `read()` raises NodeDatabaseError (password-free)."""

    def __init__(self, conninfo: str, check_url: Callable[[str], str],
                 timeout: float = 10.0) -> None:
        self._conninfo = conninfo
        params = parse_conninfo(conninfo)
        # the whole string too, when it may hold a password libpq could quote back
        quoted = conninfo if "@" in conninfo or "password" in conninfo.lower() else None
        self._secrets = tuple(s for s in (params.get("password"), quoted) if s)
        self.where = describe(params)
        self._check_url = check_url
        self._timeout = min(timeout, MAX_TIMEOUT)

    def _query(self) -> list[tuple]:
        import psycopg

        with psycopg.connect(self._conninfo, autocommit=True,
                             connect_timeout=max(MIN_CONNECT_TIMEOUT, round(self._timeout))
                             ) as conn:
            conn.execute("SELECT set_config('statement_timeout', %s, false)",
                         (f"{int(self._timeout * 1000)}ms",))
            return conn.execute(QUERY, (MAX_PEERS + 1,)).fetchall()

    async def read(self) -> list[PeerEntry]:
        """The nodes to backfill from, as the table lists them now."""
        import psycopg

        try:
            # not abandoned on cancel: the timeouts bound how long the thread runs
            rows = await trio.to_thread.run_sync(self._query)
            return rows_to_entries(rows, self._check_url)
        except (psycopg.Error, OSError, PeerListError) as e:
            why = " ".join(str(e).split()) or type(e).__name__
            raise NodeDatabaseError(redact(f"nodes table at {self.where}: {why}",
                                           self._secrets)) from None


SOURCE = "database"


class NodeDatabaseSource:
    """The nodes table as the peer set's "database" source."""

    def __init__(self, reader: NodeDatabase, peers: PeerSet, metrics: Metrics,
                 interval: float, clock: Callable[[], float] = time.time,
                 rule: Callable[[list[PeerEntry]], str | None] = lambda entries: None
                 ) -> None:
        self.reader = reader
        self.rule = rule  # what is wrong with a list of peers (the clear-text rule), or None
        self.peers = peers
        self.metrics = metrics
        self.interval = interval
        self.clock = clock
        self.entries: list[PeerEntry] = []  # the last good read, this node's row included
        self.health = SourceHealth()
        self.reads = 0  # attempts, failed ones included

    async def refresh(self) -> bool:
        """One read of the table; True if its list changed. On failure the last known
        list stays, and the outage is logged once, when it starts."""
        self.reads += 1
        try:
            entries = await self.reader.read()
            problem = self.rule(entries)
            if problem:
                raise NodeDatabaseError(f"nodes table at {self.reader.where}: {problem}")
        except NodeDatabaseError as e:
            self.metrics.peer_source_failures.labels(SOURCE).inc()
            if self.health.failed(str(e), self.clock()):
                log.error("%s; keeping the last known %d nodes until it answers again",
                          e, len(self.entries))
            return False
        if self.health.succeeded(self.clock()):
            log.info("nodes table at %s answers again", self.reader.where)
        if entries == self.entries:
            return False
        log.info("nodes table at %s: %s", self.reader.where,
                 ", ".join(f"{e.name} {e.url}" for e in entries) or "no nodes")
        self.entries = entries
        self.peers.set_source(SOURCE, [Peer.from_url(e.url, e.name) for e in entries])
        return True

    async def watch(self) -> None:
        """Read the table again every interval (a backfill round's)."""
        while True:
            await trio.sleep(self.interval)
            await self.refresh()

    def status(self) -> m.PeerSourceStatus:
        """The table's state for the status reply."""
        return self.health.report(SOURCE, self.reader.where, len(self.entries))

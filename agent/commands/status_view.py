"""`segsync status`: ask a running agent's /v1/status and show it as a table.

The node itself probes its peers when asked, so "reachable" is the node's view of
the network right now, not the operator's.
"""

from __future__ import annotations

import json
from typing import Any

from protocol.messages import (
    BandwidthStatus,
    PeerSourceStatus,
    PeerStatus,
    ScrubStatus,
    StatusReply,
)

from ..peers.client import ClientFactory
from ..peers.tls import ClientTls, status_lines
from .tables import (
    INDENT, WIDTH, Column, layout, shorten_end, shorten_hashes, shorten_url, wrap,
)

DEFAULT_NODE = "http://127.0.0.1:8200"


def format_age(then: float | None, now: float) -> str:
    """'12s ago', '5m ago', '3h ago', '2d ago'; 'never' for None."""
    if then is None:
        return "never"
    age = now - then
    if age < 0:
        return "in the future"
    if age < 120:
        return f"{age:.0f}s ago"
    if age < 2 * 3600:
        return f"{age / 60:.0f}m ago"
    if age < 48 * 3600:
        return f"{age / 3600:.0f}h ago"
    return f"{age / 86400:.0f}d ago"


def format_uptime(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def _reachable(peer: PeerStatus) -> str:
    value = peer.reachable
    return "unknown" if value is None else ("yes" if value else "NO")


def _round_result(peer: PeerStatus) -> str:
    ok = peer.round_ok
    if ok is None:
        return "-"
    return "ok" if ok else "FAILED"


def _count(value: Any) -> str:
    return "-" if value is None else str(value)


SOURCE_NAMES = {"file": "peers file", "database": "nodes database"}


def source_line(source: PeerSourceStatus, now: float) -> str:
    """A peer source (peers file, nodes database): where, how many entries, whether it
    fails (since when, why: the last good list is kept meanwhile)."""
    if source.ok is None:
        state = "not read yet"
    elif source.ok:
        state = f"ok, read {format_age(source.last_read, now)}"
    else:
        state = (f"FAILING since {format_age(source.failing_since, now)}, keeping the last "
                 f"good list: {source.error}")
    return (f"{SOURCE_NAMES.get(source.source, source.source)} {source.where or '-'}: "
            f"{_count(source.peers)} entries, {state}")


PEER_COLUMNS = [
    Column("peer", max_width=24), Column("url", max_width=36, shorten=shorten_url),
    Column("kind"), Column("reachable"), Column("last push"), Column("last round"),
    Column("result"), Column("queue", right=True), Column("missing", right=True),
]


def _node_line(status: StatusReply, now: float) -> list[str]:
    """The node, its uptime and counts; the chat and extras counts kept on one line."""
    head = (f"node {shorten_end(status.node, 40)} at {shorten_url(status.url, 50)}, "
            f"up {format_uptime(now - float(status.started_at))}, "
            f"{status.segments} segments")
    if status.chat_batches is None:
        return wrap(head)
    files = (f"{status.chat_batches} chat batches ({_count(status.chat_tombstones)} "
             f"tombstoned), {_count(status.extras_files)} extras files")
    if len(head) + 2 + len(files) <= WIDTH:
        return [f"{head}, {files}"]
    return [*wrap(head + ","), INDENT + files]


SHOWN_PAIRS = 8  # recorded pairs named on the status line; --json has them all


def recorded_pairs_line(pairs: list, now: float) -> str:
    """The pairs our downloader records (offers of them wait for it) and the declared
    ones it does not record now (their offers are taken at once)."""
    def one(p) -> str:
        last = "no local file yet" if p.last_local is None else \
            f"last local file {format_age(p.last_local, now)}"
        if p.declared and not p.recording:
            return f"{p.channel}/{p.quality} (declared, {last}: not waited for)"
        return f"{p.channel}/{p.quality} ({'declared, ' if p.declared else ''}{last})"
    shown = ", ".join(one(p) for p in pairs[:SHOWN_PAIRS])
    more = f" and {len(pairs) - SHOWN_PAIRS} more" if len(pairs) > SHOWN_PAIRS else ""
    return f"recorded here: {shown}{more}"


def render_status(status: StatusReply) -> str:
    """The table an operator reads, at most 100 columns: one row per peer (a long name
    or URL shortened, a row too wide continuing on an indented line), then the errors
    in full, wrapped at spaces. `--json` shows everything unshortened."""
    now = float(status.time)
    lines = [
        *_node_line(status, now),
        *(line for text in status_lines(status.tls) for line in wrap(text)),
        *(line for source in status.peer_sources or ()
          for line in wrap(source_line(source, now))),
    ]
    if status.index is not None:
        lines.extend(wrap(index_line(status.index)))
    if status.scrub is not None:
        lines.extend(scrub_lines(status.scrub, now))
    for limit in status.bandwidth or ():  # nodes before bandwidth limits lack these
        lines.append(bandwidth_line(limit))
    if status.bandwidth and status.bandwidth[0].problem:
        lines.append(f"  bandwidth limits: {status.bandwidth[0].problem}")
    if status.defer_push is not None:  # nodes before downloader-aware push lack these
        lines.extend(wrap(
            f"downloader-aware push {'on' if status.defer_push else 'off'}: "
            f"{_count(status.deferred_offers)} offers deferred, "
            f"{_count(status.deferral_saved)} saved by our downloader, "
            f"{_count(status.holes_filled_by_push)} holes filled by push"))
    if status.recorded_pairs:
        lines.extend(wrap(recorded_pairs_line(status.recorded_pairs, now)))
    peers = status.peers
    if not peers:
        lines.append("no peers configured")
        return "\n".join(lines) + "\n"
    rows = []
    for p in peers:
        rows.append([
            p.name or p.url, p.url, p.kind or "-", _reachable(p), format_age(p.last_push, now),
            format_age(p.last_round, now), _round_result(p),
            _count(p.queue_depth), _count(p.missing),
        ])
    lines.append("")
    lines.extend(layout(PEER_COLUMNS, rows))
    problems = []
    for p in peers:
        who = shorten_end(p.name or p.url, PEER_COLUMNS[0].max_width)  # as in the table
        for error, what in ((p.reach_error, "unreachable"), (p.push_error, "last push failed"),
                            (p.round_error, "last round failed")):
            if error:
                why = error.removeprefix(f"{p.url}: ")  # PeerError names the peer
                problems.extend(wrap(f"{who}: {what}: {why}", indent="  "))
        if p.push_dropped:
            problems.extend(wrap(f"{who}: {p.push_dropped} pushes dropped "
                                 "(queue full; backfill repairs them)", indent="  "))
    if problems:
        lines.append("")
        lines.extend(problems)
    return "\n".join(lines) + "\n"


def _mb(rate: float) -> str:
    return f"{rate / 1e6:.2f} MB/s"


def bandwidth_line(b: BandwidthStatus) -> str:
    """One direction: its limit, what each class moves now and has waited for it."""
    limit = "no limit" if b.limit is None else f"limit {_mb(b.limit)}"
    return (f"{b.direction}: {limit}; live {_mb(b.live_rate)} (waited "
            f"{b.live_waited:.1f}s), catch-up {_mb(b.catchup_rate)} (waited "
            f"{b.catchup_waited:.1f}s)")


def index_line(index) -> str:
    """The archive index's line for `segsync status`."""
    where = (f"saved ({index.bytes / 2**20:.1f} MiB on disk)" if index.persistent
             else f"in memory only ({index.problem or 'not saved'})")
    phases = ", ".join(f"{n} {float(s):.2f}s" for n, s in index.start_phases or ())
    return (f"index: {where}; {_count(index.hours)} hours, {_count(index.hot_hours)} hot, "
            f"{_count(index.cold_loads)} cold loads; last start {index.start or '-'}"
            + (f" ({phases})" if phases else ""))


def scrub_lines(scrub: ScrubStatus, now: float) -> list[str]:
    """The scrub's line and every lost segment (hash shortened) for `segsync status`."""
    where = (f"pass in progress at {shorten_hashes(scrub.position)}" if scrub.position
             else "pass in progress" if scrub.pass_started else "idle")
    lines = wrap(
        f"scrub: last full pass {format_age(scrub.last_full_pass, now)}, {where}; "
        f"since start {_count(scrub.checked)} checked, "
        f"{_count(scrub.rotten)} rotten, {_count(scrub.healed)} healed, "
        f"{_count(scrub.lost)} lost")
    if scrub.lost_paths:
        lines.append("  LOST (in quarantine, no peer had a good copy):")
        lines.extend(f"    {shorten_hashes(path)}" for path in scrub.lost_paths)
    return lines


def status_json(status: StatusReply) -> str:
    """`segsync status --json`: the node's reply as it came, nothing shortened."""
    return json.dumps(status.to_obj(), indent=2) + "\n"


async def fetch_status(url: str, token: str | None, timeout: float = 10.0,
                       tls: ClientTls | None = None) -> StatusReply:
    """The node's /v1/status reply; PeerError if it cannot be had."""
    clients = ClientFactory(token, "segsync-status", timeout=timeout, tls=tls)
    async with clients.client(url, concurrency=1) as client:
        return await client.status()

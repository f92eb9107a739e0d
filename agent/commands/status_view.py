"""`segsync status`: ask a running agent's /v1/status and show it as a table.

The node itself probes its peers when asked, so "reachable" is the node's view of
the network right now, not the operator's.
"""

from __future__ import annotations

from typing import Any

from protocol.messages import PeerSourceStatus, PeerStatus, ScrubStatus, StatusReply

from ..peers.client import ClientFactory
from ..peers.tls import ClientTls, status_lines

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


def table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
    return out


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


def render_status(status: StatusReply) -> str:
    """The table an operator reads: one row per peer, then the errors in full."""
    now = float(status.time)
    lines = [
        f"node {status.node} at {status.url}, "
        f"up {format_uptime(now - float(status.started_at))}, "
        f"{status.segments} segments"
        + (f", {status.chat_batches} chat batches ({_count(status.chat_tombstones)} "
           f"tombstoned), {_count(status.extras_files)} extras files"
           if status.chat_batches is not None else ""),
        *status_lines(status.tls),
        *(source_line(source, now) for source in status.peer_sources or ()),
    ]
    if status.scrub is not None:
        lines.extend(scrub_lines(status.scrub, now))
    if status.defer_push is not None:  # nodes before downloader-aware push lack these
        lines.append(
            f"downloader-aware push {'on' if status.defer_push else 'off'}: "
            f"{_count(status.deferred_offers)} offers deferred, "
            f"{_count(status.deferral_saved)} saved by our downloader, "
            f"{_count(status.holes_filled_by_push)} holes filled by push")
    peers = status.peers
    if not peers:
        lines.append("no peers configured")
        return "\n".join(lines) + "\n"
    rows = [["peer", "url", "kind", "reachable", "last push", "last round", "result", "queue",
             "missing"]]
    for p in peers:
        rows.append([
            p.name or p.url, p.url, p.kind or "-", _reachable(p), format_age(p.last_push, now),
            format_age(p.last_round, now), _round_result(p),
            _count(p.queue_depth), _count(p.missing),
        ])
    lines.append("")
    lines.extend(table(rows, right={7, 8}))
    problems = []
    for p in peers:
        for error, what in ((p.reach_error, "unreachable"), (p.push_error, "last push failed"),
                            (p.round_error, "last round failed")):
            if error:
                why = error.removeprefix(f"{p.url}: ")  # PeerError names the peer
                problems.append(f"  {p.name or p.url}: {what}: {why}")
        if p.push_dropped:
            problems.append(f"  {p.name or p.url}: {p.push_dropped} pushes dropped "
                            "(queue full; backfill repairs them)")
    if problems:
        lines.append("")
        lines.extend(problems)
    return "\n".join(lines) + "\n"


def scrub_lines(scrub: ScrubStatus, now: float) -> list[str]:
    """The scrub's line (and every lost segment) for `segsync status`."""
    where = (f"pass in progress at {scrub.position}" if scrub.position
             else "pass in progress" if scrub.pass_started else "idle")
    lines = [
        f"scrub: last full pass {format_age(scrub.last_full_pass, now)}, {where}; "
        f"since start {_count(scrub.checked)} checked, "
        f"{_count(scrub.rotten)} rotten, {_count(scrub.healed)} healed, "
        f"{_count(scrub.lost)} lost"
    ]
    for path in scrub.lost_paths or []:
        lines.append(f"  LOST (in quarantine, no peer had a good copy): {path}")
    return lines


async def fetch_status(url: str, token: str | None, timeout: float = 10.0,
                       tls: ClientTls | None = None) -> StatusReply:
    """The node's /v1/status reply; PeerError if it cannot be had."""
    clients = ClientFactory(token, "segsync-status", timeout=timeout, tls=tls)
    async with clients.client(url, concurrency=1) as client:
        return await client.status()

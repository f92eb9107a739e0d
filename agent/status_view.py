"""`segsync status`: ask a running agent's /v1/status and show it as a table.

The node itself probes its peers when asked, so "reachable" is the node's view of
the network right now, not the operator's.
"""

from __future__ import annotations

from typing import Any

from .client import PeerClient, PeerError

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


def _reachable(peer: dict) -> str:
    value = peer.get("reachable")
    return "unknown" if value is None else ("yes" if value else "NO")


def _round_result(peer: dict) -> str:
    ok = peer.get("round_ok")
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


def render_status(status: dict) -> str:
    """The table an operator reads: one row per peer, then the errors in full."""
    now = float(status.get("time") or 0)
    lines = [
        f"node {status.get('node')} at {status.get('url')}, "
        f"up {format_uptime(now - float(status.get('started_at') or now))}, "
        f"{status.get('segments')} segments",
    ]
    if "defer_push" in status:  # nodes before downloader-aware push lack these keys
        lines.append(
            f"downloader-aware push {'on' if status['defer_push'] else 'off'}: "
            f"{_count(status.get('deferred_offers'))} offers deferred, "
            f"{_count(status.get('deferral_saved'))} saved by our downloader, "
            f"{_count(status.get('holes_filled_by_push'))} holes filled by push")
    peers = status.get("peers") or []
    if not peers:
        lines.append("no peers configured")
        return "\n".join(lines) + "\n"
    rows = [["peer", "reachable", "last push", "last round", "result", "queue", "missing"]]
    for p in peers:
        rows.append([
            str(p.get("url")), _reachable(p), format_age(p.get("last_push"), now),
            format_age(p.get("last_round"), now), _round_result(p),
            _count(p.get("queue_depth")), _count(p.get("missing")),
        ])
    lines.append("")
    lines.extend(table(rows, right={5, 6}))
    problems = []
    for p in peers:
        for key, what in (("reach_error", "unreachable"), ("push_error", "last push failed"),
                          ("round_error", "last round failed")):
            if p.get(key):
                why = str(p[key]).removeprefix(f"{p.get('url')}: ")  # PeerError names the peer
                problems.append(f"  {p.get('url')}: {what}: {why}")
        if p.get("push_dropped"):
            problems.append(f"  {p.get('url')}: {p['push_dropped']} pushes dropped "
                            "(queue full; backfill repairs them)")
    if problems:
        lines.append("")
        lines.extend(problems)
    return "\n".join(lines) + "\n"


async def fetch_status(url: str, token: str | None, timeout: float = 10.0) -> dict:
    """The node's /v1/status reply; PeerError if it cannot be had."""
    client = PeerClient(url, token, "segsync-status", concurrency=1, timeout=timeout)
    try:
        status = await client.status()
    finally:
        await client.aclose()
    peers = status.get("peers", [])
    if not isinstance(peers, list) or not all(isinstance(p, dict) for p in peers):
        raise PeerError(url, "bad status reply: peers is not a list of maps")
    return status

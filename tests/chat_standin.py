"""A stand-in for wubloader's chat archiver: how it writes and merges chat batches.

CI has no network, so tests cannot import wubloader. This is our own code following
the rules of chat_archiver/chat_archiver/main.py (`write_batch`, `merge_all`,
`merge_batch_files`) and common/common/chat.py (`format_batch`, `merge_messages`),
checked by hand against the real code (the same inputs give byte-identical files):

- A batch is `PATH/HOUR/MM:SS-HASH.json`: its messages as compact JSON with sorted
  keys, ordered by (time, time_range, encoded line), joined by "\\n", plus a final
  "\\n"; HASH the unpadded url-safe base64 SHA-256 of those bytes. A batch that
  exists is not written again; a new one goes through `NAME.UUID.temp` and a rename.
- Merging is a CRDT union: messages with the same `tags.id` are one message (their
  `receivers` maps united, `time`/`time_range` narrowed to the overlap); messages
  without an id pair off with the first compatible one (equal but for receivers,
  time and time range; overlapping time ranges).
- A merge pass looks at every `*.json` in every hour directory; for each batch time
  with more than one file it merges the files of that time and of the minutes
  before and after, writes one batch per minute of the result and deletes the files
  it read (except one it just re-wrote). Like wubloader's, it fails on a plain file
  directly in PATH (it lists it as an hour directory) and on `*.json` names that are
  not `MM:SS-HASH.json`.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import json
import os
import time as time_module
import uuid
from datetime import datetime, timezone

BATCH_INTERVAL = 60


def format_batch(messages: list[dict]) -> str:
    encoded = [(msg, json.dumps(msg, separators=(",", ":"), sort_keys=True))
               for msg in messages]
    encoded.sort(key=lambda item: (item[0]["time"], item[0]["time_range"], item[1]))
    return "\n".join(line for _, line in encoded)


def _hour_and_time(batch_time: int) -> tuple[str, str]:
    when = datetime.fromtimestamp(batch_time, timezone.utc)
    return when.strftime("%Y-%m-%dT%H"), when.strftime("%M:%S")


def write_batch(path: str, batch_time: int, messages: list[dict]) -> str:
    output = (format_batch(messages) + "\n").encode("utf-8")
    digest = base64.b64encode(hashlib.sha256(output).digest(), b"-_").decode().rstrip("=")
    hour, minute = _hour_and_time(batch_time)
    filepath = os.path.join(path, hour, f"{minute}-{digest}.json")
    if not os.path.exists(filepath):
        temp = f"{filepath}.{uuid.uuid4()}.temp"
        os.makedirs(os.path.dirname(filepath), exist_ok=True)
        with open(temp, "wb") as f:
            f.write(output)
        try:
            os.rename(temp, filepath)
        except FileExistsError:
            os.remove(temp)
    return filepath


def _overlap(a: dict, b: dict):
    start = max(a["time"], b["time"])
    end = min(a["time"] + a["time_range"], b["time"] + b["time_range"])
    if end < start:
        return None
    return start, end - start


def _merge_one(a: dict, b: dict):
    o = _overlap(a, b)
    if not o:
        return None
    if any(a.get(k) != b.get(k) for k in set(a) | set(b)
           if k not in ("receivers", "time", "time_range")):
        return None
    receivers = a["receivers"] | b["receivers"]
    for k in receivers:
        for old in (a, b):
            if k in old and old[k] != receivers[k]:
                raise ValueError("two receipts of one receiver")
    return a | {"time": o[0], "time_range": o[1], "receivers": receivers}


def merge_messages(left: list[dict], right: list[dict]) -> list[dict]:
    if not left:
        return right
    if not right:
        return left
    by_id: dict[str, list[dict]] = {}
    unmatched: tuple[list[dict], list[dict]] = ([], [])
    for messages, u in zip((left, right), unmatched):
        for msg in messages:
            msg_id = (msg.get("tags") or {}).get("id")
            if msg_id:
                by_id.setdefault(msg_id, []).append(msg)
            else:
                u.append(msg)
    result = []
    for msg_id, messages in by_id.items():
        if len(messages) == 1:
            result.append(messages[0])
        else:
            merged = _merge_one(*messages)
            if merged is None:
                raise ValueError(f"two different messages with id {msg_id}")
            result.append(merged)
    left_u, right_u = unmatched
    for msg in left_u:
        for other in right_u:
            merged = _merge_one(msg, other)
            if merged:
                right_u.remove(other)
                result.append(merged)
                break
        else:
            result.append(msg)
    result.extend(right_u)
    return result


def get_batch_files(path: str, batch_time: int) -> list[str]:
    hour, minute = _hour_and_time(batch_time)
    hourdir = os.path.join(path, hour)
    try:
        names = os.listdir(hourdir)
    except FileNotFoundError:
        return []
    return [os.path.join(hourdir, n) for n in names
            if n.startswith(minute) and n.endswith(".json")]


def merge_batch_files(path: str, batch_time: int) -> None:
    messages: list[dict] = []
    batch_files = [f for t in (batch_time, batch_time - BATCH_INTERVAL,
                               batch_time + BATCH_INTERVAL)
                   for f in get_batch_files(path, t)]
    for batch_file in batch_files:
        with open(batch_file) as f:
            text = f.read()
        messages = merge_messages(messages, [json.loads(line)
                                             for line in text.strip().split("\n")])
    by_time: dict[int, list[dict]] = {}
    for msg in messages:
        by_time.setdefault(int(msg["time"] / BATCH_INTERVAL) * BATCH_INTERVAL, []).append(msg)
    written = [write_batch(path, t, batch) for t, batch in by_time.items()]
    for batch_file in batch_files:
        if batch_file not in written:
            os.remove(batch_file)


def merge_once(path: str) -> int:
    """One `merge_all(path)` pass until nothing has two files; returns merges done."""
    done = 0
    while True:
        by_time: dict[str, int] = {}
        try:
            hours = os.listdir(path)
        except FileNotFoundError:
            return done
        for hour in hours:
            for name in os.listdir(os.path.join(path, hour)):  # a plain file here fails
                if not name.endswith(".json"):
                    continue
                stamp = f"{hour}:{name.split('-')[0]}"
                by_time[stamp] = by_time.get(stamp, 0) + 1
        if not any(count > 1 for count in by_time.values()):
            return done
        for stamp, count in by_time.items():
            if count > 1:
                batch_time = calendar.timegm(time_module.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
                merge_batch_files(path, batch_time)
                done += 1


def message(text: str, when: float, receiver: str, msg_id: str | None = None,
            time_range: float = 0) -> dict:
    """A PRIVMSG as the archiver records it, received by `receiver` at `when`."""
    tags = {"id": msg_id} if msg_id else {}
    return {"command": "PRIVMSG", "params": ["#desertbus", text], "prefix": "u!u@u",
            "tags": tags, "time": when, "time_range": time_range,
            "receivers": {receiver: when}}


def received(chat: list[tuple[float, str, str | None]], receiver: str, offset: float
             ) -> list[dict]:
    """One receiver's copy of a chat (true time, text, id or None): each message seen
    `offset` seconds late, with a 1 s time range, so every receiver's copies overlap."""
    return [message(text, when + offset, receiver, msg_id, time_range=1)
            for when, text, msg_id in chat]


def write_minutes(path: str, messages: list[dict]) -> list[str]:
    """What the archiver does with a run of messages: one batch per minute."""
    by_minute: dict[int, list[dict]] = {}
    for msg in messages:
        by_minute.setdefault(int(msg["time"] // BATCH_INTERVAL) * BATCH_INTERVAL,
                             []).append(msg)
    return [write_batch(path, t, batch) for t, batch in sorted(by_minute.items())]

"""A stand-in for wubloader's restreamer read API, serving an archive directory.

Follows restreamer/restreamer/main.py and common/segments.py `list_segment_files`:
- `GET /files`, `/files/CHANNEL`, `/files/CHANNEL/QUALITY`: JSON list of the
  directory's non-hidden entries (files too), `[]` when it does not exist.
- `GET /files/CHANNEL/QUALITY/HOUR[?tombstones=true|false]`: JSON list of the
  non-hidden `.ts` (and chat `.json`) files without a `.tombstone` of the same
  stem, plus the tombstones themselves when `tombstones=true`; another value is
  `400`. Flask sends these lists as `text/html`.
- `GET /extras/DIR`: JSON list of every file under ROOT/DIR (`os.walk`: hidden and
  temp files too, symlinks to files listed, relative paths normalized), `[]` when
  it does not exist. `--extras-listing DIR=FILE` answers with FILE's bytes instead
  (a hostile node's listing).
- A path argument starting with `.` is `403`.
- `GET /segments/PATH`: the file (flask's static route), `404` HTML if absent.
- Any other path is flask's `404` HTML page; another method on a route is `405`.

A threaded `http.server` (HTTP/1.1 keep-alive) sending files with `sendfile`, so
it is a fair peer in benchmarks. Every request line is appended to `--log`.
Test-only faults: `--fault html|garbage|error500` answers every request (under `--fault-prefix`) so;
`--delete-on-list NAME` deletes that file right after an hour listing showed it.
Prints its port (`--port`, default any free one) on stdout once listening.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

NOT_FOUND = (b"<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n"
             b"<h1>Not Found</h1>\n<p>The requested URL was not found on the server.</p>\n")


def list_segment_files(path: str, include_tombstones: bool) -> list[str]:
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return []
    splits = [os.path.splitext(n) for n in names]
    tombstones = {n for n, ext in splits if ext == ".tombstone"}
    out = [n + ext for n, ext in splits
           if n not in tombstones and ext in (".ts", ".json") and not n.startswith(".")]
    if include_tombstones:
        out += [n + ".tombstone" for n in tombstones]
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "StandIn"

    def setup(self) -> None:
        super().setup()
        # as nginx (wubloader's front for /segments) and trio do: no Nagle delay on the
        # last partial packet of a response
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args) -> None:  # the request log is ours
        pass

    def send(self, status: int, body: bytes, ctype: str = "text/html; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def record(self) -> None:
        with self.server.log_lock:
            self.server.log.write(f"{self.command} {self.path}\n")
            self.server.log.flush()

    def do_POST(self) -> None:
        self.record()
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        parts = urlsplit(self.path).path.split("/")
        self.send(405 if len(parts) > 1 and parts[1] in ("files", "segments") else 404,
                  NOT_FOUND)

    do_PUT = do_POST

    def do_GET(self) -> None:
        self.record()
        fault = self.server.fault
        if not self.path.startswith(self.server.fault_prefix):
            fault = None
        if fault == "html":
            return self.send(200, b"<html><body>Please log in</body></html>")
        if fault == "garbage":
            return self.send(200, b"\x00\xff[\"not json")
        if fault == "error500":
            return self.send(500, b"<h1>Internal Server Error</h1>")
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        if parts and parts[-1] == "":
            parts.pop()
        if not parts or parts[0] not in ("files", "segments", "extras"):
            return self.send(404, NOT_FOUND)
        args = parts[1:]
        if parts[0] == "extras":
            return self.send_extras(args)
        if parts[0] == "segments":
            return self.send_segment(args)
        if len(args) > 4:
            return self.send(404, NOT_FOUND)
        for arg in args:
            if arg.startswith("."):
                return self.send(403, b"Bad arg: May not start with a period")
        path = os.path.join(self.server.root, *args)
        if len(args) < 3:
            try:
                names = [n for n in os.listdir(path) if not n.startswith(".")]
            except FileNotFoundError:
                names = []
            return self.send(200, json.dumps(names).encode())
        tombstones = parse_qs(url.query).get("tombstones", ["false"])[0].lower()
        if tombstones not in ("true", "false"):
            return self.send(400, b"tombstones must be one of: true, false")
        names = list_segment_files(path, tombstones == "true")
        self.send(200, json.dumps(names).encode())
        for name in self.server.delete_on_list & set(names):
            os.remove(os.path.join(path, name))

    def send_extras(self, args: list[str]) -> None:
        if len(args) != 1:
            return self.send(404, NOT_FOUND)
        if args[0].startswith("."):
            return self.send(403, b"Bad dir: May not start with a period")
        canned = self.server.extras_listings.get(args[0])
        if canned is not None:
            with open(canned, "rb") as f:
                return self.send(200, f.read())
        root = os.path.join(self.server.root, args[0])
        out = []
        for path, _, files in os.walk(root):
            rel = os.path.relpath(path, root)
            out.extend(os.path.normpath(os.path.join(rel, f)) for f in files)
        self.send(200, json.dumps(out).encode())

    def send_segment(self, args: list[str]) -> None:
        if not args or any(a in ("", ".", "..") for a in args):
            return self.send(404, NOT_FOUND)
        try:
            f = open(os.path.join(self.server.root, *args), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return self.send(404, NOT_FOUND)
        with f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.flush()
            self.connection.sendfile(f)


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: str, log, fault: str | None, delete_on_list: set[str],
                 port: int = 0, fault_prefix: str = "/",
                 extras_listings: dict[str, str] | None = None) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.root = root
        self.log = log
        self.log_lock = threading.Lock()
        self.fault = fault
        self.fault_prefix = fault_prefix
        self.delete_on_list = delete_on_list
        self.extras_listings = extras_listings or {}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log", default=os.devnull)
    p.add_argument("--fault", choices=("html", "garbage", "error500"))
    p.add_argument("--fault-prefix", default="/", help="only paths under it are faulty")
    p.add_argument("--delete-on-list", action="append", default=[])
    p.add_argument("--extras-listing", action="append", default=[],
                   help="DIR=FILE: answer GET /extras/DIR with FILE's bytes")
    args = p.parse_args()
    canned = dict(item.split("=", 1) for item in args.extras_listing)
    with open(args.log, "a") as log:
        server = StandIn(args.root, log, args.fault, set(args.delete_on_list), args.port,
                         args.fault_prefix, canned)
        print(server.server_address[1], flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    sys.exit(main())

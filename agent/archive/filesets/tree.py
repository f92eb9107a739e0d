"""Chat batches and extras files on disk, never through a symlink, never outside ROOT.

Every path is walked from the archive root one component at a time with
`O_NOFOLLOW`, so a symlink anywhere under ROOT (a directory or the file itself) is
refused, not followed. A file appears under its final name only complete and
verified: written to `.segsync-XXXX.tmp` in its directory (hidden, and not ending
in `.json`, so wubloader's chat merger ignores it), fsynced, then hard-linked to
its name (which fails if the name exists: a file is never replaced, the first copy
wins) and the temp name removed; the directory is fsynced. Nothing is ever written
directly in CHANNEL/chat/ (chat files go in an hour directory below it).

Blocking: called through `trio.to_thread.run_sync`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Iterable, Iterator

from protocol.filesets import chat as ch
from protocol.filesets import extras as ex
from protocol.filesets import sets as fs
from protocol.errors import FileNameError, SegmentNameError
from protocol.names import parse_hour

log = logging.getLogger(__name__)

TEMP_PREFIX = ".segsync-"
TEMP_SUFFIX = ".tmp"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_LOGGED = 10_000


class RefusedPath(Exception):
    """A path that must not be read or written (a symlink on the way, not a file)."""


class FileExists(Exception):
    """The final name exists already: a file is never replaced."""


def set_root_parts(kind: str, key: str) -> list[str]:
    """The directory of a set, as components under ROOT."""
    return [key, ch.CHAT_QUALITY] if kind == fs.CHAT else [key]


def entry_parts(kind: str, key: str, rel: str) -> list[str]:
    """The components of one entry's file under ROOT (rel checked by the caller)."""
    return set_root_parts(kind, key) + rel.split("/")


class SafeTree:
    """The archive root, for file sets."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._logged: set[str] = set()

    def log_once(self, path: str, why: str, level: int = logging.WARNING) -> None:
        if path in self._logged:
            return
        if len(self._logged) < MAX_LOGGED:
            self._logged.add(path)
        log.log(level, "%s: %s", path, why)

    # ---- walking without following symlinks ----

    def _open_dir(self, parts: list[str], create: bool, made: list[str] | None = None) -> int:
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for i, part in enumerate(parts):
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                        if made is not None:
                            made.append("/".join(parts[: i + 1]))
                    except FileExistsError:
                        pass
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    os.fsync(fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise RefusedPath(f"{'/'.join(parts[: i + 1])} is a symlink or "
                                          "not a directory") from None
                    raise
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def open_read(self, parts: list[str]):
        """Open a regular file for reading (binary); FileNotFoundError if absent,
        RefusedPath if a symlink or not a regular file."""
        dfd = self._open_dir(parts[:-1], create=False)
        try:
            try:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise RefusedPath(f"{'/'.join(parts)} is a symlink") from None
                raise
        finally:
            os.close(dfd)
        f = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            f.close()
            raise RefusedPath(f"{'/'.join(parts)} is not a regular file")
        return f

    def exists(self, parts: list[str]) -> bool:
        try:
            dfd = self._open_dir(parts[:-1], create=False)
        except (FileNotFoundError, NotADirectoryError, RefusedPath):
            return False
        try:
            os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(dfd)

    def read_all(self, parts: list[str], max_bytes: int) -> bytes:
        with self.open_read(parts) as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise RefusedPath(f"{'/'.join(parts)} is larger than {max_bytes} bytes")
        return data

    # ---- writing ----

    def write_new(self, parts: list[str], chunks: Iterable[bytes], sync_dir: bool = True) -> int:
        """Write a new file from its chunks: temp file, fsync, link to its name.
        Returns its size; FileExists if the name is taken (the temp file is gone).
        `sync_dir=False` leaves the directory's fsync to the caller (`sync_dirs`), who
        can then sync it once for many files."""
        new = self.begin_new(parts)
        try:
            new.write(chunks)
            return new.commit(sync_dir)
        finally:
            new.abort()

    def sync_dirs(self, dirs: Iterable[tuple[str, ...]]) -> None:
        """fsync each directory (components under ROOT): the links made in it last."""
        for d in sorted(set(dirs)):
            fd = self._open_dir(list(d), create=False)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def begin_new(self, parts: list[str]) -> "NewFile":
        """A new file under `parts`, written in steps (for large files)."""
        return NewFile(self._open_dir(parts[:-1], create=True), parts)

    def create_empty(self, parts: list[str]) -> bool:
        """Create an empty file (a chat tombstone); False if it existed."""
        dfd = self._open_dir(parts[:-1], create=True)
        try:
            try:
                fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o644, dir_fd=dfd)
            except FileExistsError:
                return False
            os.fsync(fd)
            os.close(fd)
            os.fsync(dfd)
            return True
        finally:
            os.close(dfd)

    # ---- scanning ----

    def chat_channels(self) -> list[str]:
        """Channels with a chat directory (CHANNEL/chat a real directory)."""
        out = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                fs.check_set(fs.CHAT, entry.name)
            except FileNameError:
                continue
            chat_dir = os.path.join(entry.path, ch.CHAT_QUALITY)
            try:
                if stat.S_ISDIR(os.lstat(chat_dir).st_mode):
                    out.append(entry.name)
            except FileNotFoundError:
                continue
        return sorted(out)

    def scan_chat(self, channel: str) -> dict[str, int]:
        """Every chat batch and tombstone of a channel: {HOUR/FILE: size}. Temp files
        and anything else are skipped quietly; symlinks are refused (logged)."""
        out: dict[str, int] = {}
        base = self.root / channel / ch.CHAT_QUALITY
        try:
            hours = list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return out
        for hour in hours:
            if hour.name.startswith("."):
                continue
            if hour.is_symlink():
                self.log_once(hour.path, "a symlink: not replicated")
                continue
            if not hour.is_dir(follow_symlinks=False):
                continue
            try:
                parse_hour(hour.name)
            except SegmentNameError:
                continue
            try:
                files = list(os.scandir(hour.path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for f in files:
                name = f.name
                if name.startswith(".") or ch.is_archiver_temp(name):
                    continue
                try:
                    ch.parse_chat_filename(channel, hour.name, name)
                except FileNameError:
                    continue
                if f.is_symlink():
                    self.log_once(f.path, "a symlink: not replicated")
                    continue
                try:
                    st = f.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    out[f"{hour.name}/{name}"] = st.st_size
        return out

    def scan_extras(self, directory: str) -> dict[str, int]:
        """Every replicable file under ROOT/DIR: {PATH: size}. Hidden and temp files
        are skipped; symlinks (and anything under one) are refused, logged once."""
        out: dict[str, int] = {}
        top = self.root / directory
        try:
            if stat.S_ISLNK(os.lstat(top).st_mode):
                self.log_once(str(top), "extras directory is a symlink: not replicated")
                return out
        except FileNotFoundError:
            return out
        stack = [("", str(top))]
        while stack:
            prefix, path = stack.pop()
            try:
                entries = list(os.scandir(path))
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            for entry in entries:
                rel = prefix + entry.name
                if entry.name.startswith("."):
                    continue
                if entry.is_symlink():
                    self.log_once(entry.path, "a symlink: not replicated")
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append((rel + "/", entry.path))
                    continue
                verdict, why = ex.classify_extras_path(rel)
                if verdict == "refused":
                    self.log_once(entry.path, f"not replicated: {why}")
                    continue
                if verdict == "ignored":
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    out[rel] = st.st_size
        return out

    def remove_temp_files(self, parts: list[str]) -> Iterator[str]:
        """Our own temp files left by a crash under a set's directory (start-up)."""
        base = self.root.joinpath(*parts)
        for dirpath, _, files in os.walk(base):
            for f in files:
                if f.startswith(TEMP_PREFIX) and f.endswith(TEMP_SUFFIX):
                    p = os.path.join(dirpath, f)
                    try:
                        os.unlink(p)
                        yield p
                    except FileNotFoundError:
                        pass


class NewFile:
    """A temp file in its final directory (held open by fd); `commit` links it to its
    name and never replaces one; `abort` (safe after commit) removes the temp file."""

    def __init__(self, dfd: int, parts: list[str]) -> None:
        self.dfd = dfd
        self.parts = parts
        self.temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
        self.size = 0
        self.done = False
        try:
            self.fd: int | None = os.open(
                self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644, dir_fd=dfd)
        except BaseException:
            os.close(dfd)
            self.done = True
            raise

    def write(self, chunks: Iterable[bytes]) -> None:
        assert self.fd is not None
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                n = os.write(self.fd, view)
                if n <= 0:
                    raise OSError(errno.EIO, "write made no progress")
                view = view[n:]
                self.size += n

    def commit(self, sync_dir: bool = True) -> int:
        assert self.fd is not None
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        try:
            os.link(self.temp, self.parts[-1], src_dir_fd=self.dfd, dst_dir_fd=self.dfd,
                    follow_symlinks=False)
        except FileExistsError:
            raise FileExists("/".join(self.parts)) from None
        self._unlink_temp()
        if sync_dir:
            os.fsync(self.dfd)
        return self.size

    def _unlink_temp(self) -> None:
        try:
            os.unlink(self.temp, dir_fd=self.dfd)
        except FileNotFoundError:
            pass

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            self._unlink_temp()
        finally:
            os.close(self.dfd)


def sha256_file(f, chunk: int = 1024 * 1024) -> tuple[bytes, int]:
    h = hashlib.sha256()
    size = 0
    while data := f.read(chunk):
        h.update(data)
        size += len(data)
    return h.digest(), size

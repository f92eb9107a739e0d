"""A real, throw-away PostgreSQL server for tests: wubloader's `nodes` table.

Binaries: the system's (`/usr/lib/postgresql/*/bin`, `pg_config --bindir`, or on
PATH) where present, else the ones the `pgserver` wheel ships (a test dependency,
so `make test` installs it). No system service, no root: the data directory is a
fresh temporary one; as root (CI), initdb and postgres refuse to run, so they run
as an unprivileged user (`nobody`) that owns the data directory.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from helpers import free_port

PASSWORD = "s3cr3t-Pa55-do-not-log"
# wubloader's postgres/schema.sql
NODES_SCHEMA = """
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    backfill_from BOOLEAN NOT NULL DEFAULT TRUE
)"""


class NoServer(Exception):
    """No PostgreSQL server can be had on this machine (the reason says why)."""


def find_bindir() -> Path:
    """SEGSYNC_TEST_PG_BINDIR if set (e.g. to try pgserver's binaries), else the
    newest system PostgreSQL, else pgserver's."""
    if os.environ.get("SEGSYNC_TEST_PG_BINDIR"):
        return Path(os.environ["SEGSYNC_TEST_PG_BINDIR"])
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit()
                        else 0, reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        candidates.append(out.stdout.strip())
    if shutil.which("postgres"):
        candidates.append(str(Path(shutil.which("postgres")).parent))
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(os.path.join(spec.submodule_search_locations[0], "pginstall", "bin"))
    for c in candidates:
        if c and os.access(os.path.join(c, "initdb"), os.X_OK) \
                and os.access(os.path.join(c, "postgres"), os.X_OK):
            return Path(c)
    raise NoServer("no PostgreSQL binaries: none under /usr/lib/postgresql, no pg_config or "
                   "postgres on PATH, and the pgserver package (test extra) is not installed")


def unprivileged() -> tuple[list[str], int, int]:
    """How to run a command as someone other than root: (prefix, uid, gid)."""
    if os.geteuid() != 0:
        return [], os.getuid(), os.getgid()
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        raise NoServer("running as root and there is no 'nobody' user to run postgres as")
    setpriv = shutil.which("setpriv")
    if setpriv:
        return ([setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                 "--clear-groups", "--"], user.pw_uid, user.pw_gid)
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "nobody", "--"], user.pw_uid, user.pw_gid
    raise NoServer("running as root and neither setpriv nor runuser is available")


class PostgresServer:
    """initdb into a temporary directory, then start, stop and restart `postgres` on a
    loopback port; TCP logins need the password (scram), like a real deployment."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.prefix, uid, gid = unprivileged()
        # as root, under /tmp: TMPDIR may be a directory the unprivileged user cannot enter
        self.dir = Path(tempfile.mkdtemp(prefix="segsync-pg-",
                                         dir="/tmp" if self.prefix else None))
        os.chown(self.dir, uid, gid)
        if self.prefix and not self._runs(self.bindir):
            self.bindir = self._copy_install(uid, gid)
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        os.chown(pwfile, uid, gid)
        result = subprocess.run(
            [*self.prefix, str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
             "-E", "UTF8", "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256",
             f"--pwfile={pwfile}"],
            capture_output=True, text=True, cwd=self.dir)
        if result.returncode != 0:
            self.cleanup()
            raise NoServer(f"initdb failed: {result.stderr or result.stdout}")
        self.start()
        with self.connect() as conn:
            conn.execute(NODES_SCHEMA)

    def _runs(self, bindir: Path) -> bool:
        """Can the unprivileged user run these binaries? (Not if they sit under a
        directory only root may enter, like a checkout in /root.)"""
        try:
            return all(subprocess.run([*self.prefix, str(bindir / tool), "--version"],
                                      capture_output=True, cwd=self.dir).returncode == 0
                       for tool in ("initdb", "postgres"))
        except OSError:
            return False

    def _copy_install(self, uid: int, gid: int) -> Path:
        """A copy of the installation (bin, lib, share: it is relocatable) where the
        unprivileged user can reach it, with the wheel's `*.libs` directory at the same
        place relative to it (pgserver's binaries find libpq through their RPATH,
        $ORIGIN/../../../pgserver.libs)."""
        install = self.bindir.parent
        target = self.dir / "install"
        shutil.copytree(install, target / install.parent.name / install.name, symlinks=True)
        for libs in install.parent.parent.glob("*.libs"):
            shutil.copytree(libs, target / libs.name, symlinks=True)
        for dirpath, dirnames, filenames in os.walk(target):
            for name in [*dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, name), uid, gid)
        os.lchown(target, uid, gid)
        if not self._runs(target / install.parent.name / install.name / "bin"):
            self.cleanup()
            raise NoServer(f"running as root, and user nobody cannot run {self.bindir}")
        return target / install.parent.name / install.name / "bin"

    @property
    def conninfo(self) -> str:
        return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, str(self.bindir / "postgres"), "-D", str(self.data),
                 "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"unix_socket_directories={self.dir}", "-c", "fsync=off",
                 "-c", "full_page_writes=off", "-c", "synchronous_commit=off"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.connect():
                    return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise NoServer(f"postgres did not start:\n{self.log.read_text()}")
                time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, the port closes."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def set_nodes(self, rows: list[tuple[str, str, bool]]) -> None:
        """Make the nodes table hold exactly these (name, url, backfill_from) rows."""
        with self.connect() as conn, conn.transaction():
            conn.execute("DELETE FROM nodes")
            for row in rows:
                conn.execute("INSERT INTO nodes (name, url, backfill_from) VALUES (%s, %s, %s)",
                             row)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

"""The container image, built and run here: `deploy/build_image.py` (what `make image`
runs) builds it once with buildah (vfs storage, chroot isolation: no Docker engine,
no daemon), and two containers from it run the image's own CMD on the host's loopback,
each with its own archive, token file and TLS files from `segsync tls init`, peers of
each other through their peers files. A segment written into one archive appears in
the other, a tombstone travels back, the image's HEALTHCHECK passes in a container
(and fails where no agent answers), the agent runs as the image's unprivileged user,
and the package in the image is this checkout's code.

Teardown stops each agent with SIGTERM to its own pid (a signal to `buildah run`
SIGKILLs what runs inside), removes the working containers and the test's image, and
prunes the intermediate images (vfs keeps a full copy of the tree per layer)."""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from protocol.names import downloader_temp_filename
from helpers import free_port, hours_ago, make_name

REPO = Path(__file__).resolve().parent.parent
TAG = f"localhost/segsync-test:{os.getpid()}"
# one image test at a time on a machine: another's teardown prune would take the
# intermediate images of a build in progress (buildah's store is machine-wide)
LOCK = Path("/var/tmp/segsync-image-test.lock")
UID = 10001  # the image's user
BUILDAH = ["buildah", "--storage-driver", "vfs"]
SEGSYNC = Path(sys.executable).parent / "segsync"  # the checkout's entry point
STARTUP = 120.0  # seconds: a busy 2-core machine, vfs containers
ARRIVAL = 60.0

_missing = [tool for tool in ("buildah", "mmdebstrap", "podman") if not shutil.which(tool)]
pytestmark = [
    pytest.mark.skipif(bool(_missing), reason=(
        f"{', '.join(_missing)} not installed: the image test builds with buildah and makes "
        f"its debian:13 base with mmdebstrap and podman (apt-get install buildah "
        f"mmdebstrap podman; .ci/run does)")),
    pytest.mark.skipif(os.geteuid() != 0, reason=(
        "buildah with the vfs driver runs as root here (rootless needs /etc/subuid "
        "ranges this test does not set up)")),
]


def buildah(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    got = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=timeout)
    if check and got.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args[:3])}... failed ({got.returncode}):\n"
                             f"{got.stdout}\n{got.stderr}")
    return got


def wait_for(predicate, timeout: float, what: str, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{log()}")
        time.sleep(0.1)


def package_hashes(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every module and static file of agent/ and protocol/
    under `root` (the checkout, or site-packages in the image)."""
    out = {}
    for package in ("agent", "protocol"):
        for path in sorted((root / package).rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and (path.suffix == ".py" or "static" in rel.parts) \
                    and "__pycache__" not in rel.parts:
                out[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# run inside the image: the same walk over where `agent` and `protocol` are installed
HASH_INSTALLED = "\n".join([
    "import hashlib, json, pathlib",
    "from pathlib import Path",
    inspect.getsource(package_hashes),
    "import agent, protocol",
    "root = Path(agent.__file__).parent.parent",
    "assert Path(protocol.__file__).parent.parent == root",
    "print(json.dumps({'root': str(root), 'files': package_hashes(root)}))",
])


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The image built from this checkout by the build script `make image` runs."""
    log = tmp_path_factory.mktemp("image-build") / "build.log"
    lock = open(LOCK, "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with open(log, "w") as out:
            got = subprocess.run([sys.executable, str(REPO / "deploy" / "build_image.py"),
                                  "--engine", "buildah", "--tag", TAG],
                                 stdout=out, stderr=subprocess.STDOUT, timeout=1500)
        assert got.returncode == 0, f"image build failed:\n{log.read_text()[-6000:]}"
        info = json.loads(buildah("inspect", "--type", "image", TAG).stdout)
        yield info
    finally:
        buildah("rmi", TAG, check=False, timeout=900)
        buildah("rmi", "--prune", check=False, timeout=900)  # vfs: a full tree per layer
        lock.close()


def agent_pid(parent: int, marker: str) -> int | None:
    """The pid of the agent process under `parent` (the `buildah run`), found by a
    marker in its command line."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    todo = list(children.get(parent, []))
    while todo:
        pid = todo.pop()
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in argv and any(a.endswith(b"segsync") for a in argv) \
                and b"buildah" not in argv[0]:
            return pid
        todo.extend(children.get(pid, []))
    return None


@dataclass
class Node:
    name: str
    base: Path
    port: int
    container: str = ""
    proc: subprocess.Popen | None = None
    pid: int | None = None
    log_path: Path = field(init=False)

    def __post_init__(self):
        self.archive = self.base / "archive"
        self.conf = self.base / "conf"  # mounted at /etc/segsync
        self.token = self.base / "token"
        self.log_path = self.base / "agent.log"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def mounts(self) -> list[str]:
        return ["-v", f"{self.archive}:/archive", "-v", f"{self.conf}:/etc/segsync:ro",
                "-v", f"{self.token}:/run/secrets/segsync_token:ro"]

    def log(self) -> str:
        return f"--- {self.name}'s log:\n" + (self.log_path.read_text()[-5000:]
                                            if self.log_path.exists() else "(none)")

    def run(self, *argv: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        """A one-off command in this node's container, with its mounts, as the image's
        user, beside the running agent."""
        envs = [f"--env={k}={v}" for k, v in (env or {}).items()]
        return subprocess.run([*BUILDAH, "run", "--isolation", "chroot", *envs, *self.mounts(),
                               self.container, "--", *argv],
                              capture_output=True, text=True, timeout=timeout)


def own(path: Path) -> None:
    os.chown(path, UID, UID)


def make_node_files(node: Node, ca: Path, token: str, peer: Node) -> None:
    """What an operator mounts: archive, token, TLS pair from `segsync tls init`,
    peers file; owned by the image's user, as the README says."""
    node.base.mkdir(parents=True)
    out = node.base / "tls-init"
    subprocess.run([str(SEGSYNC), "tls", "init", "--ca", str(ca), "--out", str(out),
                    "--node", node.name, "--ip", "127.0.0.1"], check=True,
                   capture_output=True)
    tls = node.conf / "tls"
    tls.mkdir(parents=True)
    for src, dst in ((f"{node.name}.crt", "node.crt"), (f"{node.name}.key", "node.key"),
                     ("ca.crt", "ca.crt")):
        shutil.copy(out / src, tls / dst)
    os.chmod(tls / "node.key", 0o600)
    (node.conf / "peers").write_text(f"{peer.name} https://127.0.0.1:{peer.port}\n")
    node.token.write_text(token + "\n")
    os.chmod(node.token, 0o400)
    node.archive.mkdir()
    for path in (node.archive, node.token, tls / "node.key"):
        own(path)


def start_agent(node: Node, cmd: list[str]) -> None:
    argv = list(cmd)
    argv[argv.index("--listen") + 1] = f"127.0.0.1:{node.port}"  # both on the host's loopback
    argv += ["--node-name", node.name]
    with open(node.log_path, "w") as log:
        node.proc = subprocess.Popen([*BUILDAH, "run", "--isolation", "chroot", *node.mounts(),
                                      node.container, "--", *argv],
                                     stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT)
    marker = f"127.0.0.1:{node.port}"
    node.pid = wait_for(lambda: agent_pid(node.proc.pid, marker), STARTUP,
                        f"{node.name}'s agent process", node.log)


def healthy(node: Node, ca: Path) -> bool:
    assert node.proc.poll() is None, f"{node.name}'s container exited\n{node.log()}"
    try:
        context = ssl.create_default_context(cafile=str(ca))
        return httpx.get(f"{node.url}/healthz", verify=context, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stop_agent(node: Node, timeout: float = 60) -> int | None:
    """SIGTERM to the agent itself; the exit status `buildah run` passes on."""
    if node.proc is None or node.proc.poll() is not None:
        return None if node.proc is None else node.proc.returncode
    if node.pid is None:  # it never started: nothing inside to stop cleanly
        node.proc.kill()
        node.proc.wait(30)
        return node.proc.returncode
    try:
        os.kill(node.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return node.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(node.pid, signal.SIGKILL)
        node.proc.wait(30)
        raise AssertionError(f"{node.name} did not stop on SIGTERM\n{node.log()}")


@pytest.fixture(scope="module")
def nodes(image, tmp_path_factory):
    base = tmp_path_factory.mktemp("image-nodes")
    ca = base / "cluster-ca"
    a, b = Node("a", base / "a", free_port()), Node("b", base / "b", free_port())
    token = secrets.token_hex(32)
    make_node_files(a, ca, token, b)
    make_node_files(b, ca, token, a)
    cmd = image["Docker"]["config"]["Cmd"]
    try:
        for node in (a, b):
            node.container = buildah("from", "--pull=never", "--name",
                                     f"segsync-test-{node.name}-{os.getpid()}",
                                     TAG).stdout.strip().splitlines()[-1]
            # `buildah run` mounts the image's VOLUME /archive (an anonymous volume) and
            # the -v mount at the same place, in no fixed order: a runtime (Docker,
            # podman, Kubernetes) puts the given mount there, buildah, a build tool,
            # only once the working container forgets the volume (the image keeps it)
            buildah("config", "--volume", "/archive-", node.container)
        for node in (a, b):
            start_agent(node, cmd)
        for node in (a, b):
            wait_for(lambda: healthy(node, ca / "ca.crt"), STARTUP,
                     f"{node.name} to answer /healthz over TLS", node.log)
        yield a, b
    finally:
        for node in (a, b):
            try:
                stop_agent(node)
            except AssertionError:
                pass
        for node in (a, b):
            if node.container:
                buildah("rm", node.container, check=False)


def write_as_downloader(root: Path, name, data: bytes) -> Path:
    """Temp name, then rename into place, like a downloader, owned by the image's user
    (in production the downloader and the agent share the volume)."""
    path = root / name.path
    directory = root
    for part in Path(name.path).parent.parts:
        directory = directory / part
        if not directory.exists():
            directory.mkdir()
            own(directory)
    tmp = path.parent / downloader_temp_filename(name, name.hash_text)
    tmp.write_bytes(data)
    own(tmp)
    os.rename(tmp, path)
    return path


def both_logs(a: Node, b: Node) -> str:
    return a.log() + "\n" + b.log()


def test_image_metadata(image):
    """What `buildah bud --format docker` kept: user, healthcheck, volume, labels."""
    config = image["Docker"]["config"]
    assert config["User"] == "segsync"
    assert config["Healthcheck"]["Test"][:2] == ["CMD", "python3"]
    assert "/archive" in config["Volumes"]
    assert "org.opencontainers.image.source" in config["Labels"]
    assert config["Cmd"][:2] == ["segsync", "run"]
    size = sum(layer["size"] for layer in json.loads(image["Manifest"])["layers"])
    assert size <= 300e6, f"image is {size / 1e6:.0f} MB"


def test_segment_and_tombstone_travel_between_containers(nodes):
    a, b = nodes
    data = os.urandom(50_000)
    name = make_name(data, hours_ago(1))
    write_as_downloader(a.archive, name, data)
    wait_for(lambda: (b.archive / name.path).exists(), ARRIVAL,
             "the segment written into a's archive to reach b", lambda: both_logs(a, b))
    assert (b.archive / name.path).read_bytes() == data
    assert (b.archive / name.path).stat().st_uid == UID  # written by b's agent

    tombstone = b.archive / name.tombstone_path
    tombstone.touch()
    own(tombstone)
    wait_for(lambda: (a.archive / name.tombstone_path).exists(), ARRIVAL,
             "b's tombstone to reach a", lambda: both_logs(a, b))
    context = ssl.create_default_context(cafile=str(a.conf / "tls" / "ca.crt"))
    got = httpx.get(f"{a.url}/segments/{name.path}", verify=context, timeout=10)
    assert got.status_code == 404  # a serves the tombstone, not the segment


def test_the_images_healthcheck_passes_inside_the_container(image, nodes):
    a, _ = nodes
    test = image["Docker"]["config"]["Healthcheck"]["Test"]
    assert test[0] == "CMD"
    here = a.run(*test[1:], env={"SEGSYNC_HEALTHZ": f"{a.url}/healthz"})
    assert here.returncode == 0, here.stdout + here.stderr
    dead = a.run(*test[1:], env={"SEGSYNC_HEALTHZ": f"https://127.0.0.1:{free_port()}/healthz"})
    assert dead.returncode != 0  # where no agent answers, the check fails


def test_the_agent_runs_as_the_unprivileged_user(nodes):
    for node in nodes:
        status = Path(f"/proc/{node.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        gids = next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1:]
        assert set(uids) == {str(UID)} and set(gids) == {str(UID)}, status
    who = nodes[0].run("id", "-un")
    assert who.stdout.strip() == "segsync", who.stderr


def test_the_installed_package_is_this_checkout(nodes):
    """Compared file by file against the working tree as it is now: a stale image
    (built before an edit) fails here."""
    got = nodes[0].run("python3", "-c", HASH_INSTALLED)
    assert got.returncode == 0, got.stderr
    installed = json.loads(got.stdout)
    assert installed["root"].startswith("/usr/local/lib/python3")  # not /src
    checkout = package_hashes(REPO)
    assert checkout and installed["files"] == checkout


def test_agents_stop_cleanly_on_sigterm(nodes):
    for node in nodes:
        assert stop_agent(node) == 0, node.log()
        assert "Traceback" not in node.log_path.read_text(), node.log()

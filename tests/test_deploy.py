"""Deployment files, checked by reading them: the Dockerfile's layer order, user,
labels, healthcheck and CMD; the systemd unit; the compose file; the Kubernetes
example. Every segsync command line in them must parse with the real argument parser.
(The image itself is built and run in test_image.py.)"""

from __future__ import annotations

import configparser
import http.server
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.commands import cli
from agent.commands import tools  # noqa: F401  (registers the sub-commands)
from agent.config import load_toml
from agent.peers.peer_set import normalize_peer_url
from protocol.peerlist import parse_node_file

REPO = Path(__file__).parent.parent


def yaml_module():
    """PyYAML, a test extra: a venv made before it was added lacks it until
    `pip install -e '.[test]'` (CI's fresh venv has it)."""
    return pytest.importorskip("yaml", reason="PyYAML (test extra) missing: "
                                              "pip install -e '.[test]'")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending
    return out


def build_script():
    """deploy/build_image.py (what `make image` runs), imported from its file."""
    spec = importlib.util.spec_from_file_location("build_image",
                                                  REPO / "deploy" / "build_image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_segsync(argv: list[str]):
    assert Path(argv[0]).name == "segsync", argv
    return cli.make_parser().parse_args(argv[1:])


def test_dockerfile_structure():
    ins = dockerfile_instructions()
    kinds = [k for k, _ in ins]
    assert kinds[0] == "FROM" and kinds.count("FROM") == 1
    assert ins[0][1] == "debian:13", ins[0][1]  # wubloader's base: already on their hosts
    # the name `make image` imports a locally made base as
    assert build_script().BASE == f"docker.io/library/{ins[0][1]}"

    def index(pred) -> int:
        return next(i for i, item in enumerate(ins) if pred(*item))

    copy_pyproject = index(lambda k, a: k == "COPY" and a.split()[0] == "pyproject.toml")
    deps = index(lambda k, a: k == "RUN" and "pip install -r" in a)
    copies = [i for i, (k, a) in enumerate(ins) if k == "COPY"]
    source = [i for i in copies if i != copy_pyproject]
    assert copy_pyproject < deps < min(source), "dependencies must be installed before the source"
    for i in source:
        assert ins[i][1].split()[0] in ("README.md", "protocol/", "agent/"), ins[i]
        assert not ins[i][1].startswith("."), "COPY . would bust the dependency layer"
    install = index(lambda k, a: k == "RUN" and "pip install --no-deps" in a)
    assert install > max(source)

    # python3 and pip from Debian, first, without recommended packages (gcc and friends)
    apt = index(lambda k, a: k == "RUN" and "apt-get install" in a)
    assert apt == 1 and copy_pyproject > apt
    assert re.search(r"apt-get install -y --no-install-recommends python3 python3-pip(\s|$)",
                     ins[apt][1]), ins[apt][1]
    assert "rm -rf /var/lib/apt/lists/*" in ins[apt][1]
    assert "EXTERNALLY-MANAGED" in ins[apt][1]  # pip may install into the system Python
    assert re.search(r"useradd [^&]*--uid 10001 [^&]*segsync", ins[apt][1])
    # Debian has no `python`: every command says python3
    for k, a in ins:
        assert not re.search(r"(^|[\s\"'\[])python(\s|\"|')", a), (k, a)
    # the CA bundle: a build secret for pip only, and the build works without it
    deps_run = ins[deps][1]
    assert deps_run.startswith("--mount=type=secret,id=ca ")
    assert "if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi" in deps_run
    assert all("type=secret" not in a for i, (k, a) in enumerate(ins) if i != deps)
    for i in source:  # each copied path exists
        assert (REPO / ins[i][1].split()[0]).exists()

    users = [a for k, a in ins if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    user_at = max(i for i, (k, _) in enumerate(ins) if k == "USER")
    assert all(k != "RUN" for k, _ in ins[user_at:]), "nothing runs as root after USER"

    labels = " ".join(a for k, a in ins if k == "LABEL")
    assert re.search(r"org\.opencontainers\.image\.source=\S+", labels)
    # metadata before the dependency layer: a source change redoes only the last steps
    for kind in ("LABEL", "VOLUME", "EXPOSE", "HEALTHCHECK", "CMD"):
        assert index(lambda k, a: k == kind) < copy_pyproject, kind

    health = [a for k, a in ins if k == "HEALTHCHECK"]
    assert len(health) == 1
    check = json.loads(health[0].split(" CMD ", 1)[1])
    assert check[:2] == ["python3", "-c"]
    assert "https://127.0.0.1:8200/healthz" in check[2] and "SEGSYNC_HEALTHZ" in check[2]
    compile(check[2], "HEALTHCHECK", "exec")

    cmds = [a for k, a in ins if k == "CMD"]
    assert len(cmds) == 1
    argv = json.loads(cmds[0])  # exec form: the agent is PID 1 and gets SIGTERM itself
    args = parse_segsync(argv)
    assert args.command == "run"
    assert args.root == "/archive" and args.token_file  # 0.0.0.0 needs a token and TLS
    assert args.tls_cert and args.tls_key and args.tls_ca and not args.insecure
    assert args.listen.endswith(":8200") and "8200" in " ".join(a for k, a in ins if k == "EXPOSE")


def test_dockerfile_dependency_list_matches_pyproject(tmp_path):
    """Run the dependency layer's own snippet against the real pyproject.toml."""
    ins = dockerfile_instructions()
    run = next(a for k, a in ins if k == "RUN" and "pip install -r" in a)
    snippet = re.search(r'python3 -c "(.*?)"\s*&&', run).group(1)
    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    subprocess.run([sys.executable, "-c", snippet.replace("/tmp/requirements.txt",
                                                          str(tmp_path / "req.txt"))],
                   cwd=tmp_path, check=True)
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = (tmp_path / "req.txt").read_text().split("\n")
    assert [x for x in listed if x] == (pyproject["build-system"]["requires"]
                                        + pyproject["project"]["dependencies"])


def test_dockerignore_keeps_the_context_small():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "tests"} <= ignored
    assert not ignored & {"agent", "protocol", "pyproject.toml", "README.md"}


def test_systemd_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(REPO / "deploy" / "segsync.service")
    service = unit["Service"]
    assert service["User"] not in ("root", "0")
    assert service["Restart"] in ("on-failure", "always")
    assert service["KillSignal"] == "SIGTERM"
    argv = shlex.split(service["ExecStart"])
    args = parse_segsync(argv)
    assert args.command == "run" and args.config
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    # the example config it points at is valid, and its root is the one the unit may write
    example = load_toml(REPO / "deploy" / "segsync.toml")
    assert example["root"] in service["ReadWritePaths"].split()
    assert example["token_file"] and example["peers_file"]
    assert example["tls_cert"] and example["tls_key"] and example["tls_ca"]


def test_compose_three_nodes():
    text = (REPO / "deploy" / "compose.yaml").read_text()
    services = dict(re.findall(r"^  (\w+):\n((?:    .*\n|\n)+)", text.split("\nservices:\n")[1],
                               re.M))
    services = {k: v for k, v in services.items() if "command:" in v}
    assert sorted(services) == ["a", "b", "c"]
    volumes, ports = set(), set()
    for name, body in services.items():
        argv = json.loads(re.search(r"^    command: (\[.*\])$", body, re.M).group(1))
        args = parse_segsync(argv)
        assert args.command == "run" and args.node_name == name
        assert sorted(args.peers) == sorted(f"http://{o}:8200" for o in services if o != name)
        assert args.token_file == "/run/secrets/segsync_token"
        assert args.insecure  # plain http between containers: said explicitly
        volumes.add(re.search(r"- (archive-\w+):/archive", body).group(1))
        ports.add(re.search(r'"127\.0\.0\.1:(\d+):8200"', body).group(1))
    assert len(volumes) == 3 and len(ports) == 3  # one archive and one host port each
    assert re.search(r"^secrets:\n  segsync_token:\n    file: \./token$", text, re.M)
    assert "deploy/token" in (REPO / ".gitignore").read_text().split()
    # the image as built: its own healthcheck, told to ask plain http like these nodes
    anchor = yaml_module().safe_load(text)["x-agent"]
    assert anchor["image"] == "segsync:latest" and "healthcheck" not in anchor
    assert anchor["environment"]["SEGSYNC_HEALTHZ"] == "http://127.0.0.1:8200/healthz"


def healthcheck_code() -> str:
    health = next(a for k, a in dockerfile_instructions() if k == "HEALTHCHECK")
    return json.loads(health.split(" CMD ", 1)[1])[2]


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_healthcheck_over_http(status, healthy):
    """The HEALTHCHECK's code, as compose runs it (SEGSYNC_HEALTHZ=http://...), against a
    server answering `status` (over https it is run in the image: test_image.py)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            env = dict(os.environ, SEGSYNC_HEALTHZ=f"http://127.0.0.1:{server.server_port}/healthz")
            got = subprocess.run([sys.executable, "-c", healthcheck_code()], env=env,
                                 capture_output=True, timeout=30)
        finally:
            server.shutdown()
    assert (got.returncode == 0) == healthy, got.stderr


def test_kubernetes_example():
    docs = {d["kind"]: d for d in yaml_module().safe_load_all((REPO / "deploy" / "kubernetes.yaml")
                                                     .read_text())}
    assert set(docs) == {"Service", "ConfigMap", "StatefulSet"}
    sts, service, peers_map = docs["StatefulSet"], docs["Service"], docs["ConfigMap"]
    assert service["spec"]["clusterIP"] == "None" and service["metadata"]["name"] == \
        sts["spec"]["serviceName"]
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"]
    assert pod["automountServiceAccountToken"] is False  # /var/run/secrets is /run/secrets

    # the image's CMD, plus the pod's name so that its own peers line is skipped
    cmd = json.loads(next(a for k, a in dockerfile_instructions() if k == "CMD"))
    argv = container["args"]
    assert argv[:len(cmd)] == cmd and argv[len(cmd):] == ["--node-name", "$(POD_NAME)"]
    args = parse_segsync(argv)
    assert container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"

    # every file the CMD reads comes from a volume, mounted whole (updates reach the pod)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert all("subPath" not in m for m in container["volumeMounts"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["/archive"] == "archive" == args.root[1:]
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["archive"]
    provided = set()
    for mount_path, name in mounts.items():
        volume = volumes.get(name)
        if volume is None:
            continue
        sources = volume["projected"]["sources"] if "projected" in volume else [volume]
        for source in sources:
            kind = source.get("configMap") or source.get("secret")
            provided |= {f"{mount_path}/{item['path']}" for item in kind["items"]}
    assert {args.token_file, args.tls_cert, args.tls_key, args.tls_ca, args.peers_file} \
        <= provided, provided

    # the peers file names every pod by its stable DNS name; the node itself is skipped
    entries = parse_node_file(peers_map["data"]["peers"], normalize_peer_url)
    pods = [f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])]
    assert [e.name for e in entries] == pods
    assert [e.url for e in entries] == [
        f"https://{p}.{service['metadata']['name']}:8200" for p in pods]

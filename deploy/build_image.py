#!/usr/bin/env python3
"""Build the segsync image (`make image`): with Docker where its engine answers, else
with buildah on the vfs storage driver (no daemon, no overlay mounts, no cgroups: what
a build machine or a CI runner without Docker has). Standard library only: it runs
before any venv exists.

Where no registry is reachable, the `debian:13` base is made locally first: a minimal
Debian 13 root from mmdebstrap, with the official image's apt clean-up settings,
imported under the official name, so the Dockerfile is the same everywhere. The
machine's CA bundle goes to the build as the secret `ca` (pip trusts it where TLS to
the package index is intercepted; it is in no layer). Prints the image's size and its
layers, bottom first: a rebuild after a source change shows the same first layers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE = "docker.io/library/debian:13"
SUITE = "trixie"  # Debian 13
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
VFS = ["--storage-driver", "vfs"]

# What the official debian images set in /etc/apt/apt.conf.d/ (docker-clean and
# friends): downloaded .debs and apt's binary caches never stay in a layer.
APT_CLEAN = """\
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""
APT_NO_LANGUAGES = 'Acquire::Languages "none";\n'
APT_AUTOREMOVE_SUGGESTS = 'Apt::AutoRemove::SuggestsImportant "false";\n'


class BuildError(Exception):
    pass


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(argv), flush=True)
    return subprocess.run(argv, check=True, **kw)


def source_url() -> str:
    """The OCI source label: SOURCE_URL, else the checkout's origin remote, else ''."""
    if "SOURCE_URL" in os.environ:
        return os.environ["SOURCE_URL"]
    got = subprocess.run(["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
                         capture_output=True, text=True)
    return got.stdout.strip() if got.returncode == 0 else ""


def docker_usable() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def secret_args(ca: str) -> list[str]:
    return ["--secret", f"id=ca,src={ca}"] if ca and os.path.getsize(ca) > 0 else []


# --- Docker -----------------------------------------------------------------------

def build_docker(tag: str, ca: str) -> None:
    env = dict(os.environ, DOCKER_BUILDKIT="1")  # RUN --mount needs BuildKit
    run(["docker", "build", *secret_args(ca), "--build-arg", f"SOURCE_URL={source_url()}",
         "-t", tag, str(REPO)], env=env)
    size = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", tag],
                          capture_output=True, text=True, check=True).stdout.strip()
    print(f"\nimage {tag}: {int(size) / 1e6:.1f} MB")
    print(subprocess.run(["docker", "history", tag], capture_output=True, text=True,
                         check=True).stdout)


# --- buildah ----------------------------------------------------------------------

def buildah(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", *VFS, *args], **kw)


def have_image(name: str) -> bool:
    return buildah("inspect", "--type", "image", name, capture_output=True).returncode == 0


def make_base_locally() -> None:
    """debian:13 from mmdebstrap (minbase: what the official image holds), imported
    with podman (buildah has no import) into the same vfs store."""
    missing = [t for t in ("mmdebstrap", "podman") if not shutil.which(t)]
    if missing:
        raise BuildError(f"no registry reachable for {BASE}, and {', '.join(missing)} "
                         f"missing to make it locally (apt-get install mmdebstrap podman)")
    with tempfile.TemporaryDirectory(prefix="segsync-base-") as tmp:
        conf = Path(tmp)
        for name, text in (("docker-clean", APT_CLEAN),
                           ("docker-no-languages", APT_NO_LANGUAGES),
                           ("docker-autoremove-suggests", APT_AUTOREMOVE_SUGGESTS)):
            (conf / name).write_text(text)
        tar = conf / "debian13.tar"
        hooks = [f"--customize-hook=upload {conf / n} /etc/apt/apt.conf.d/{n}"
                 for n in ("docker-clean", "docker-no-languages",
                           "docker-autoremove-suggests")]
        hooks.append('--customize-hook=rm -f "$1"/var/cache/apt/*.bin')
        started = time.monotonic()
        run(["mmdebstrap", "--variant=minbase", "--quiet", *hooks, SUITE, str(tar)])
        run(["podman", *VFS, "import", "--change", "CMD [\"bash\"]", str(tar), BASE],
            stdout=subprocess.DEVNULL)
        print(f"made {BASE} locally in {time.monotonic() - started:.0f} s")


def ensure_base() -> None:
    if have_image(BASE):
        return
    # no registry: the pull fails within a second (DNS or connect), nothing to wait for
    if buildah("pull", "--quiet", BASE, capture_output=True).returncode == 0:
        return
    print(f"{BASE}: no registry reachable, making it locally")
    make_base_locally()


def layer_list(tag: str) -> list[dict]:
    """The image's history, bottom first: instruction, layer digest, size in bytes
    (None for an instruction that makes no layer)."""
    got = buildah("inspect", "--type", "image", tag, capture_output=True, text=True,
                  check=True)
    info = json.loads(got.stdout)
    manifest = json.loads(info["Manifest"])
    layers = iter(zip(info["Docker"]["rootfs"]["diff_ids"], manifest["layers"]))
    out = []
    for step in info["Docker"]["history"]:
        entry = {"created_by": step.get("created_by", ""), "layer": None, "size": None}
        if not step.get("empty_layer"):
            diff_id, blob = next(layers)
            entry["layer"], entry["size"] = diff_id, blob["size"]
        out.append(entry)
    return out


def image_size(tag: str) -> int:
    """Bytes of its layers (uncompressed, as they sit on a host)."""
    got = buildah("inspect", "--type", "image", tag, capture_output=True, text=True,
                  check=True)
    return sum(layer["size"] for layer in json.loads(json.loads(got.stdout)["Manifest"])["layers"])


def print_layers(tag: str) -> None:
    print(f"\nimage {tag}: {image_size(tag) / 1e6:.1f} MB; layers, bottom first:")
    for step in layer_list(tag):
        size = "" if step["size"] is None else f"{step['size'] / 1e6:8.1f} MB"
        layer = (step["layer"] or "")[7:19]
        what = " ".join(step["created_by"].split())
        print(f"  {layer:12} {size:>11}  {what[:90]}")


def build_buildah(tag: str, ca: str) -> None:
    ensure_base()
    run(["buildah", *VFS, "bud", "--isolation", "chroot", "--format", "docker",
         "--layers", "--pull=false", *secret_args(ca),
         "--build-arg", f"SOURCE_URL={source_url()}", "-t", tag, str(REPO)])
    print_layers(tag)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="segsync:latest")
    parser.add_argument("--engine", choices=["auto", "docker", "buildah"], default="auto")
    parser.add_argument("--ca", default=CA_BUNDLE if os.path.exists(CA_BUNDLE) else "",
                        help=f"CA bundle passed as the build secret 'ca' (default {CA_BUNDLE})")
    args = parser.parse_args(argv)
    engine = args.engine
    if engine == "auto":
        engine = "docker" if docker_usable() else "buildah"
    if engine == "buildah" and not shutil.which("buildah"):
        print("neither a Docker engine nor buildah here (apt-get install buildah "
              "mmdebstrap podman)", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        (build_docker if engine == "docker" else build_buildah)(args.tag, args.ca)
    except (BuildError, subprocess.CalledProcessError) as e:
        print(f"image build failed: {e}", file=sys.stderr)
        return 1
    print(f"built {args.tag} with {engine} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

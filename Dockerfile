# segsync agent image: Debian 13 (the base wubloader's images share), Debian's python3
# and pip, the dependencies in a layer of their own, the source last, non-root.
#   docker build -t segsync .        (make image: the same with Docker or buildah)
#   docker run -v ARCHIVE:/archive -v CONF:/etc/segsync:ro \
#       -v TOKEN:/run/secrets/segsync_token:ro -p 8200:8200 segsync
# The agent listens on 0.0.0.0, so it needs a token at /run/secrets/segsync_token and
# TLS: /etc/segsync/tls/node.crt, node.key and the cluster's ca.crt (`segsync tls
# init`; re-read when renewed). It reads its peers (https:// URLs) from
# /etc/segsync/peers ('NAME URL' or 'URL' per line, re-read on change).
# Where TLS to the package index is intercepted, pass the CA bundle as a build secret:
#   docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt -t segsync .
# It is mounted only while pip runs and is in no layer; without it the build is the same.
FROM debian:13

# Layer 1: python3 and pip without recommended packages (those pull in gcc and
# build-essential; every dependency comes as a wheel), pip allowed to install into the
# system Python (this image is its only user), the unprivileged user, the archive
# directory (a new named volume takes its ownership) and an empty peers file to mount
# over. Nothing here depends on segsync, so every build shares it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip \
 && rm -rf /var/lib/apt/lists/* \
 && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \
 && groupadd --system --gid 10001 segsync \
 && useradd --system --no-create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin segsync \
 && mkdir -p /archive /etc/segsync \
 && touch /etc/segsync/peers \
 && chown segsync:segsync /archive

# OCI labels. The project has no public home yet, so the builder names it (make image
# passes the checkout's origin remote); a new SOURCE_URL rebuilds the layers below:
#   docker build --build-arg SOURCE_URL=https://... .
ARG SOURCE_URL=""
LABEL org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.title="segsync" \
      org.opencontainers.image.description="Keeps video segment archives identical across nodes" \
      org.opencontainers.image.base.name="docker.io/library/debian:13"

# The container's contract, declared before the dependencies and the source so that a
# rebuild after a source change redoes only the last steps.
VOLUME ["/archive"]
EXPOSE 8200

# GET /healthz as a client of this node: https with the node's own pair (also valid
# where --tls-client-auth is on). For a node run --insecure (deploy/compose.yaml) or
# on another port, set SEGSYNC_HEALTHZ (e.g. http://127.0.0.1:8200/healthz).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python3", "-c", "import os, ssl, urllib.request; u = os.environ.get('SEGSYNC_HEALTHZ') or 'https://127.0.0.1:8200/healthz'; t = '/etc/segsync/tls/'; c = ssl.create_default_context(cafile=t + 'ca.crt') if u.startswith('https:') else None; c and c.load_cert_chain(t + 'node.crt', t + 'node.key'); c and setattr(c, 'check_hostname', False); urllib.request.urlopen(u, timeout=3, context=c)"]

CMD ["segsync", "run", "--root", "/archive", "--listen", "0.0.0.0:8200", "--token-file", "/run/secrets/segsync_token", "--tls-cert", "/etc/segsync/tls/node.crt", "--tls-key", "/etc/segsync/tls/node.key", "--tls-ca", "/etc/segsync/tls/ca.crt", "--peers-file", "/etc/segsync/peers", "--log-format", "json"]

# Layer 2: the build backend and the runtime dependencies, read from pyproject.toml
# alone, so that a change to the source never reinstalls them.
COPY pyproject.toml /src/
RUN --mount=type=secret,id=ca if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
 && cd /src \
 && python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); open('/tmp/requirements.txt', 'w').write('\n'.join(p['build-system']['requires'] + p['project']['dependencies']) + '\n')" \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Layer 3: the source; installs segsync itself only (its dependencies are there).
COPY README.md /src/
COPY protocol/ /src/protocol/
COPY agent/ /src/agent/
RUN export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
 && cd /src \
 && pip install --no-deps --no-build-isolation . \
 && rm -rf /src/build /src/*.egg-info

USER segsync

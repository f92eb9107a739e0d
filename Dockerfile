# segsync agent image: Alpine Python, dependencies in their own layers, non-root.
#   docker build -t segsync .
#   docker run -v ARCHIVE:/archive -v CONF:/etc/segsync:ro -p 8200:8200 segsync
# The agent listens on 0.0.0.0, so it needs a token at /run/secrets/segsync_token and
# TLS: /etc/segsync/tls/node.crt, node.key and the cluster's ca.crt (`segsync tls
# init`; re-read when renewed). It reads its peers (https:// URLs) from
# /etc/segsync/peers ('NAME URL' or 'URL' per line, re-read on change).
FROM python:3.11-alpine

# where the source lives (OCI label): the project has no public home yet, so the
# builder names it: docker build --build-arg SOURCE_URL=https://... .
ARG SOURCE_URL=""
LABEL org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.title="segsync" \
      org.opencontainers.image.description="Keeps video segment archives identical across nodes"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Layer 1: the build backend and the runtime dependencies, read from pyproject.toml
# alone, so that a change to the source never reinstalls them.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); open('/tmp/requirements.txt', 'w').write('\n'.join(p['build-system']['requires'] + p['project']['dependencies']) + '\n')" \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Layer 2: the source; installs segsync itself only (dependencies are already there).
COPY README.md ./
COPY protocol/ protocol/
COPY agent/ agent/
RUN pip install --no-deps --no-build-isolation . \
 && rm -rf build *.egg-info

# Layer 3: an unprivileged user owning the archive volume (a new named volume takes
# the ownership of the image's directory), and an empty peers file to mount over.
RUN adduser -D -H -u 10001 segsync \
 && mkdir -p /archive /etc/segsync \
 && touch /etc/segsync/peers \
 && chown segsync:segsync /archive
USER segsync
WORKDIR /archive
VOLUME ["/archive"]
EXPOSE 8200

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import ssl, urllib.request; t = '/etc/segsync/tls/'; c = ssl.create_default_context(cafile=t + 'ca.crt'); c.check_hostname = False; c.load_cert_chain(t + 'node.crt', t + 'node.key'); urllib.request.urlopen('https://127.0.0.1:8200/healthz', timeout=3, context=c)"]

CMD ["segsync", "run", "--root", "/archive", "--listen", "0.0.0.0:8200", "--token-file", "/run/secrets/segsync_token", "--tls-cert", "/etc/segsync/tls/node.crt", "--tls-key", "/etc/segsync/tls/node.key", "--tls-ca", "/etc/segsync/tls/ca.crt", "--peers-file", "/etc/segsync/peers", "--log-format", "json"]

# codex-portal in a container. Inside, the portal listens on 0.0.0.0 (the container's own network,
# with --allow-remote); publish it on the host's loopback only, on the same port:
#
#   docker build -t codex-portal .
#   docker run -d --name codex-portal -p 127.0.0.1:1455:1455 -v codex-home:/data/codex codex-portal
#   docker logs codex-portal          # the one-time link: http://localhost:1455/?token=...
#
# The credentials live in the volume at /data/codex/config.toml (CODEX_HOME), owned by an
# unprivileged user. tests/test_docker.py checks this file statically and runs its command locally.

# ---- build: the wheel, from the files the package needs (see .dockerignore) ---------------------
FROM python:3.11.14-slim-bookworm AS build
WORKDIR /src
COPY constraints.txt ./
RUN pip install --no-cache-dir --disable-pip-version-check -c constraints.txt hatchling
COPY pyproject.toml README.md ./
COPY webapp/ webapp/
COPY templates/ templates/
COPY static/ static/
RUN pip wheel --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation -w /dist .

# ---- run: the installed wheel and nothing else --------------------------------------------------
FROM python:3.11.14-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY constraints.txt /tmp/constraints.txt
COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-cache-dir -c /tmp/constraints.txt /tmp/dist/*.whl \
    && rm -rf /tmp/dist /tmp/constraints.txt

# An unprivileged user owns /data; the volume is declared after its directory is set up, since a
# build step that changes a declared volume is discarded.
RUN groupadd --system --gid 10001 portal \
    && useradd --system --uid 10001 --gid portal --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin portal \
    && mkdir -p /data/codex \
    && chown -R portal:portal /data \
    && chmod 0700 /data /data/codex
ENV HOME=/data \
    CODEX_HOME=/data/codex
VOLUME ["/data/codex"]
WORKDIR /data
USER 10001:10001

EXPOSE 1455
# /static needs no session, and the Host 127.0.0.1:<port> is one the portal accepts.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.build_opener(r.ProxyHandler({})).open('http://127.0.0.1:%s/static/portal.css' % os.environ.get('CODEX_PORTAL_PORT', '1455'), timeout=4)"]
ENTRYPOINT ["codex-portal", "serve", "--no-browser", "--host", "0.0.0.0", "--allow-remote"]

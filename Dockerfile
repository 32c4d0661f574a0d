# syntax=docker/dockerfile:1
#
# shixin-check in a slim image that runs as a non-root user.
#
#   docker build -t shixin-check .
#   docker run --rm -p 127.0.0.1:50051:50051 -e SHIXIN_DEMO=1 -e SHIXIN_INSECURE=1 shixin-check
#   docker exec CONTAINER shixin-check health        # exit 0 only on SERVING
#
# Configure it with SHIXIN_* variables, one per flag (README "Running it"):
# SHIXIN_LIST or SHIXIN_REDIS, SHIXIN_KEY_SECRET_FILE, SHIXIN_KEYS_FILE, ...
# deploy/smoke.sh builds it, runs it and asks its health check.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: wheels of the project and of everything it depends on ---------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# A C compiler for loader/_rowcheck.c, the load's row checker (the runtime stage gets the
# compiled wheel, not the compiler; without one the wheel would check rows in Python).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# Only what the wheel is made of (.dockerignore keeps the rest out of the context).
COPY pyproject.toml setup.py README.md ./
COPY protos/ protos/
COPY shixin_check/ shixin_check/
COPY domain/ domain/
COPY loader/ loader/
COPY server/ server/
COPY clients/ clients/
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
    && python -c "import glob, sys, zipfile; (w,) = glob.glob('/wheels/shixin_check-*.whl'); \
sys.exit(not any('/_rowcheck.' in n and n.endswith('.so') for n in zipfile.ZipFile(w).namelist()))"

# --- runtime: the installed wheels, nothing else of the source ---------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 shixin \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin shixin \
    && install -d -o 10001 -g 10001 -m 0750 /var/log/shixin \
    && install -d -o 10001 -g 10001 -m 0755 /srv/shixin/feed

# Wheels only, from the build stage, offline: no compiler, no source tree, no pip cache.
# pip compiles the bytecode here, so a read-only root filesystem costs nothing at start.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels shixin-check

# Prometheus metrics of every replica on 9464 (--metrics-listen); hit and audit logs under
# /var/log/shixin: mount a volume there (Kubernetes: an emptyDir or a PVC).
# gRPC on 0.0.0.0:50051 by SHIXIN_LISTEN, not by a flag in CMD, so that another
# SHIXIN_LISTEN given to the container takes effect (a flag would beat it).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SHIXIN_LISTEN=0.0.0.0:50051 \
    SHIXIN_METRICS_LISTEN=0.0.0.0:9464 \
    SHIXIN_HIT_LOG=/var/log/shixin/hits.jsonl \
    SHIXIN_AUDIT_LOG=/var/log/shixin/audit.jsonl
# Not set here, on purpose:
# - SHIXIN_INSECURE. Inside a container the service must bind 0.0.0.0 to be reachable,
#   and the server refuses a non-loopback bind with authentication off (no keys file, no
#   client CA), or with API keys over plaintext, unless SHIXIN_INSECURE=1. Give it keys
#   and TLS (SHIXIN_KEYS_FILE, SHIXIN_TLS_CERT, SHIXIN_TLS_KEY), or set SHIXIN_INSECURE=1
#   only where the network around the container does the access control (compose's
#   private network with ports published on loopback; a mesh or NetworkPolicy).
# - The key secret. `serve --redis` and `load` refuse to start without one: mount it as a
#   file and point SHIXIN_KEY_SECRET_FILE at it (or SHIXIN_KEY_SECRET, less safe).

USER 10001:10001
WORKDIR /srv/shixin
EXPOSE 50051 9464

# Asks the `liveness` health service, which is SERVING while the process answers: a
# replica that waits for its list or has lost Redis is unhealthy by readiness only, and an
# orchestrator that restarts unhealthy containers must not restart it (a restart cannot
# fix a feed or Redis). It asks 127.0.0.1 on the port of SHIXIN_LISTEN, so a container
# given another SHIXIN_LISTEN is still probed where it listens; SHIXIN_TARGET, when set,
# is asked instead (a server bound to one address, not 0.0.0.0). No credentials needed;
# with TLS on, give it the CA too (SHIXIN_CA). Docker reserves exit status 2, which
# `shixin-check health` gives when it cannot reach the server: every failure is 1.
# Liveness answers while a first list still loads; the start period is only for the start.
HEALTHCHECK --interval=15s --timeout=6s --start-period=120s --retries=3 \
    CMD shixin-check health --service liveness --timeout 5 \
        --target "${SHIXIN_TARGET:-127.0.0.1:${SHIXIN_LISTEN##*:}}" || exit 1

ENTRYPOINT ["shixin-check"]
# Everything comes from SHIXIN_* variables (SHIXIN_LISTEN above); a flag given here
# would override them.
CMD ["serve"]

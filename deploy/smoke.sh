#!/usr/bin/env bash
# Smoke test of the container image, on a machine with a Docker daemon:
#
#   deploy/smoke.sh [IMAGE]        # default shixin-check:smoke
#
# Builds the image, runs it the way Kubernetes does (read-only root, non-root user, only
# /tmp and the log folder writable) on a generated demo list, then from inside the
# container: `shixin-check health` (exit 0 on SERVING), `status`, one check, and the
# metrics endpoint; and waits for Docker's own HEALTHCHECK to say healthy. Nothing is
# published on the host. Exit 0 when all of that holds. The test suite cannot run it
# (no Docker daemon in CI); run it before a release and after changing the Dockerfile.
set -euo pipefail

image=${1:-shixin-check:smoke}
name=shixin-smoke-$$
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'SMOKE FAILED: %s\n' "$*" >&2; docker logs "$name" >&2 || true; exit 1; }
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT

say "build $image"
docker build -t "$image" .

say "run (demo list, read-only root)"
# SHIXIN_INSECURE=1: the demo has no keys, and the container binds 0.0.0.0 (Dockerfile).
docker run -d --name "$name" --read-only \
    --tmpfs /tmp --tmpfs /var/log/shixin:uid=10001,gid=10001,mode=0750 \
    -e SHIXIN_DEMO=1 -e SHIXIN_DEMO_COUNT=500 -e SHIXIN_INSECURE=1 \
    "$image" >/dev/null

say "shixin-check health inside the container"
for _ in $(seq 60); do
    if docker exec "$name" shixin-check health >/dev/null 2>&1; then break; fi
    sleep 1
done
docker exec "$name" shixin-check health || fail "health is not SERVING after 60 s"
docker exec "$name" shixin-check health --service shixin.v1.ConsumptionCheck \
    || fail "the readiness probe's service is not SERVING"
docker exec "$name" shixin-check health --service liveness \
    || fail "the liveness probe's service is not SERVING"

say "runs as uid 10001"
[ "$(docker exec "$name" id -u)" = 10001 ] || fail "not running as uid 10001"

say "status and one check"
docker exec "$name" shixin-check status | grep -q "500 entries" || fail "status: no 500 entries"
unlisted=$(docker exec "$name" python -c \
    "from shixin_check.loader.synthetic import never_listed_id; print(never_listed_id())")
docker exec "$name" shixin-check check --channel AIRLINE --id "$unlisted" --name 张三 \
    | grep -q '^ALLOW' || fail "check did not answer ALLOW for an unlisted ID"

say "metrics on 9464"
docker exec "$name" python -c \
    "import urllib.request as u; b = u.urlopen('http://127.0.0.1:9464/metrics', timeout=5).read(); assert b'shixin_' in b" \
    || fail "no shixin_ metrics on 127.0.0.1:9464/metrics"

say "Docker HEALTHCHECK"
for _ in $(seq 90); do
    state=$(docker inspect -f '{{.State.Health.Status}}' "$name")
    [ "$state" = healthy ] && break
    sleep 2
done
[ "$state" = healthy ] || fail "docker health is $state"

say "SIGTERM drains and exits 0"
docker stop -t 20 "$name" >/dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' "$name")" = 0 ] || fail "exit code on SIGTERM is not 0"

say "smoke passed: $image"

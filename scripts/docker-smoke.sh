#!/usr/bin/env bash
# Docker smoke test: edge in a container, in front of the demo origin in another container.
#
# It needs a Docker engine, cargo and curl, and no container registry: it builds the image with
# scripts/docker-image.sh (edge built as the Dockerfile does, packed into a FROM scratch image
# laid out like the Dockerfile's). Then it proves: a miss is stored, the next request is a memory
# hit, the container turns healthy and does not run as root, `docker stop` (SIGTERM) exits 0, and
# after `docker start` the entry is a disk hit from the volume; and that a config with nothing but
# `origin.url` keeps its disk tier in the volume too. The origin sees one request per disk tier.
#
# Everything it creates (containers, network, volume, image tag, temp dir) has a random suffix
# and is removed on exit, whether the checks pass or not.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'docker-smoke: %s\n' "$*"; }
fail() {
  printf 'docker-smoke: FAILED: %s\n' "$*" >&2
  exit 1
}

for tool in docker cargo curl timeout; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done
timeout 20 docker info >/dev/null 2>&1 || fail "no Docker engine answers (docker info)"

id="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
prefix="edge-smoke-$id"
image="edge-smoke:$id"
containers=()
network=""
volume=""
image_built=""
work="$(mktemp -d)"

dump_logs() {
  local c
  for c in "${containers[@]}"; do
    printf -- '--- docker logs %s (last 40 lines)\n' "$(docker inspect -f '{{.Name}}' "$c" 2>/dev/null || echo "$c")" >&2
    docker logs --tail 40 "$c" 2>&1 | strip_ansi >&2 || true
  done
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ $status -ne 0 && ${#containers[@]} -gt 0 ]]; then
    dump_logs
  fi
  local c
  for c in "${containers[@]}"; do
    docker rm -f -v "$c" >/dev/null 2>&1 || true
  done
  [[ -n $network ]] && { docker network rm "$network" >/dev/null 2>&1 || true; }
  [[ -n $volume ]] && { docker volume rm "$volume" >/dev/null 2>&1 || true; }
  [[ -n $image_built ]] && { docker rmi "$image" >/dev/null 2>&1 || true; }
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

strip_ansi() { sed -e 's/\x1b\[[0-9;]*m//g'; }

started=$SECONDS

# --- the image ---------------------------------------------------------------------------------
say "scripts/docker-image.sh $image (edge built as the Dockerfile does, in a FROM scratch image)"
image_built=1
HEALTH_INTERVAL=2s bash scripts/docker-image.sh "$image" 2>"$work/docker-image.log" || {
  tail -n 40 "$work/docker-image.log" >&2
  fail "scripts/docker-image.sh failed"
}
sed 's/^/  /' "$work/docker-image.log"

# --- network, origin, edge --------------------------------------------------------------------
# The demo origin: `edge demo` serves /www at origin.url's address (and runs an edge node that
# nothing uses, on other ports, with its disk tier on a tmpfs).
cat >"$work/origin.yaml" <<'EOF'
listen: 127.0.0.1:18080
origin:
  url: http://0.0.0.0:9000
cache:
  disk:
    path: /tmp/edge-demo
admin:
  listen: 127.0.0.1:19090
EOF
chmod 0644 "$work/origin.yaml"

network="$(docker network create "$prefix-net")" || fail "docker network create"
volume="$(docker volume create "$prefix-cache")" || fail "docker volume create"

origin="$(docker create --name "$prefix-origin" --network "$network" --network-alias origin \
  --no-healthcheck --tmpfs /tmp \
  --mount "type=bind,src=$PWD/fixtures/www,dst=/www,readonly" \
  --mount "type=bind,src=$work/origin.yaml,dst=/etc/edge/origin.yaml,readonly" \
  "$image" demo --root /www --config /etc/edge/origin.yaml)" || fail "docker create (origin)"
containers+=("$origin")

edge="$(docker create --name "$prefix-edge" --network "$network" \
  --mount "type=volume,src=$volume,dst=/var/cache/edge" \
  -p 127.0.0.1::8080 \
  "$image")" || fail "docker create (edge)"
containers+=("$edge")

docker start "$origin" >/dev/null || fail "docker start (origin)"
docker start "$edge" >/dev/null || fail "docker start (edge)"

# --- helpers ----------------------------------------------------------------------------------
base=""
read_port() {
  local mapping
  mapping="$(docker port "$edge" 8080/tcp | head -n 1)"
  [[ $mapping =~ :([0-9]+)$ ]] || fail "docker port $edge 8080/tcp: '$mapping'"
  base="http://127.0.0.1:${BASH_REMATCH[1]}"
}

# Ready: edge answers / with 200, i.e. it is up and reaches the origin (/hello.txt is kept for
# the checks).
wait_ready() {
  local what=$1 deadline=$((SECONDS + 30)) code
  while :; do
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$base/" || true)"
    [[ $code == 200 ]] && break
    if [[ $(docker inspect -f '{{.State.Running}}' "$edge") != true ]]; then
      fail "$what: the edge container is not running (exit code $(docker inspect -f '{{.State.ExitCode}}' "$edge"))"
    fi
    ((SECONDS < deadline)) || fail "$what: edge did not answer GET / with 200 within 30 s (last: '$code')"
    sleep 0.5
  done
  say "$what: edge answers on $base"
}

# HEAD /hello.txt; prints the status line, age and cache-status; sets $cache_status.
cache_status=""
head_hello() {
  local label=$1 headers
  headers="$(curl -sSI --max-time 5 "$base/hello.txt" | tr -d '\r')" || fail "$label: curl -I $base/hello.txt failed"
  cache_status="$(grep -i '^cache-status:' <<<"$headers" | head -n 1 | cut -d: -f2- | sed 's/^ *//' || true)"
  say "$label: curl -I /hello.txt -> $(head -n 1 <<<"$headers") | age: $(grep -i '^age:' <<<"$headers" | cut -d: -f2- | tr -d ' ' | grep . || echo -) | cache-status: $cache_status"
  grep -q '^HTTP/[0-9.]* 200' <<<"$headers" || fail "$label: expected 200"
}

expect_status() {
  local label=$1 word
  shift
  for word in "$@"; do
    [[ $cache_status == *"$word"* ]] || fail "$label: Cache-Status '$cache_status' lacks '$word'"
  done
}

# --- checks -----------------------------------------------------------------------------------
read_port
wait_ready "start"

deadline=$((SECONDS + 40))
while :; do
  health="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$edge")"
  [[ $health == healthy ]] && break
  [[ $health == none ]] && fail "health: the image has no HEALTHCHECK"
  ((SECONDS < deadline)) || fail "health: still '$health' after 40 s: $(docker inspect -f '{{range .State.Health.Log}}{{.ExitCode}} {{.Output}}{{end}}' "$edge")"
  sleep 1
done
say "health: $health (HEALTHCHECK: $(docker inspect -f '{{join .Config.Healthcheck.Test " "}}' "$edge"))"

user="$(docker inspect -f '{{.Config.User}}' "$edge")"
[[ -n $user && $user != root && $user != 0 && $user != root:* && $user != 0:* ]] ||
  fail "user: the container runs as '${user:-root}'"
uids="$(docker top "$edge" -o pid,uid,comm | awk 'NR > 1 { print $2 }' | sort -u | xargs)"
[[ -n $uids && " $uids " != *" 0 "* ]] || fail "user: docker top shows processes with uid(s) '$uids'"
say "user: $user (docker top: uid $uids)"

head_hello "first"
expect_status "first" "fwd=uri-miss" "stored"
head_hello "second"
expect_status "second" "hit" "detail=memory"

stop_started=$SECONDS
docker stop -t 35 "$edge" >/dev/null || fail "docker stop"
exit_code="$(docker inspect -f '{{.State.ExitCode}}' "$edge")"
[[ $exit_code == 0 ]] || fail "stop: edge exited with $exit_code on SIGTERM (137 means it was killed)"
say "stop: exit code $exit_code after $((SECONDS - stop_started)) s"

docker start "$edge" >/dev/null || fail "docker start (restart)"
read_port
wait_ready "restart"
head_hello "after restart"
expect_status "after restart" "hit" "detail=disk"

# A config with nothing but origin.url (as a user's first one often is): its disk tier is the
# default ./var/edge, in the working directory, the volume; kept across a restart.
printf 'origin:\n  url: http://origin:9000\n' >"$work/minimal.yaml"
chmod 0644 "$work/minimal.yaml"
minimal="$(docker create --name "$prefix-minimal" --network "$network" \
  --mount "type=volume,src=$volume,dst=/var/cache/edge" \
  --mount "type=bind,src=$work/minimal.yaml,dst=/etc/edge/edge.yaml,readonly" \
  -p 127.0.0.1::8080 \
  "$image")" || fail "docker create (minimal)"
containers+=("$minimal")
docker stop -t 35 "$edge" >/dev/null || fail "docker stop (before the minimal config)"
edge=$minimal
docker start "$edge" >/dev/null || fail "docker start (minimal)"
read_port
wait_ready "minimal config"
head_hello "minimal config, first"
expect_status "minimal config, first" "fwd=uri-miss" "stored"
docker stop -t 35 "$edge" >/dev/null || fail "docker stop (minimal)"
docker start "$edge" >/dev/null || fail "docker start (minimal, restart)"
read_port
wait_ready "minimal config, restart"
head_hello "minimal config, after restart"
expect_status "minimal config, after restart" "hit" "detail=disk"

origin_log="$(docker logs "$origin" 2>&1 | strip_ansi)"
requests="$(grep 'demo origin request' <<<"$origin_log" | grep -c '/hello\.txt' || true)"
say "origin: $requests request(s) for /hello.txt in its log"
[[ $requests == 2 ]] || fail "origin: expected 2 requests for /hello.txt (one per disk tier), saw $requests:
$(grep 'demo origin request' <<<"$origin_log")"

say "all checks passed in $((SECONDS - started)) s"
say "ok"

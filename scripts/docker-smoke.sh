#!/usr/bin/env bash
# Docker smoke test: edge in a container, in front of the demo origin in another container.
#
# It needs a Docker engine, cargo and curl, and no container registry: it builds edge as the
# Dockerfile does (scripts/pgo-build.sh, which installs nginx and wrk from Debian and rustup's
# llvm-tools if missing) and packs target/pgo/release/edge with the shared libraries it needs
# (from ldd) into a FROM scratch image laid out like the Dockerfile's (non-root 65532:65532,
# /etc/edge/edge.yaml from docker/edge.yaml, volume /var/cache/edge, EXPOSE, HEALTHCHECK with
# `edge health`). Then it proves: a miss is stored, the next request is a memory hit, the
# container turns healthy and does not run as root, `docker stop` (SIGTERM) exits 0, and after
# `docker start` the entry is a disk hit from the volume; the origin saw one request in all.
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

for tool in docker cargo curl ldd timeout; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done
timeout 20 docker info >/dev/null 2>&1 || fail "no Docker engine answers (docker info)"

# `docker build` is buildx (BuildKit) when that plugin is installed; without it, the legacy
# builder is the only one that works (and DOCKER_BUILDKIT=1 would make docker build fail).
build_flags=(--quiet)
if docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=1
  build_flags+=(--load)
  builder="BuildKit (buildx)"
else
  export DOCKER_BUILDKIT=0
  builder="legacy builder (no buildx plugin)"
fi

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

# --- the binary and its libraries -------------------------------------------------------------
say "scripts/pgo-build.sh (the Dockerfile's build: instrumented, trained, built again)"
binary="$(bash scripts/pgo-build.sh 2>"$work/pgo-build.log")" || {
  tail -n 40 "$work/pgo-build.log" >&2
  fail "scripts/pgo-build.sh failed"
}
grep '^pgo-build.sh: trained:' "$work/pgo-build.log" | sed 's/^pgo-build.sh: /docker-smoke: /' ||
  fail "scripts/pgo-build.sh trained on nothing"
[[ -x $binary ]] || fail "$binary was not built"
"$binary" health --help >/dev/null 2>&1 || fail "$binary has no \`health\` subcommand (the HEALTHCHECK needs it)"
"$binary" check --config docker/edge.yaml >/dev/null || fail "docker/edge.yaml does not pass edge check"

rootfs="$work/context/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/edge" "$work/context/cache"
cp "$binary" "$rootfs/usr/local/bin/edge"
cp docker/edge.yaml "$rootfs/etc/edge/edge.yaml"
printf 'root:x:0:0:root:/root:/sbin/nologin\nedge:x:65532:65532:edge:/nonexistent:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nedge:x:65532:\n' >"$rootfs/etc/group"

# Every library ldd resolves, and the dynamic loader itself, at the same path in the image.
# (A statically linked edge needs none.)
ldd_out="$(ldd "$binary" 2>&1)" || [[ $ldd_out == *"not a dynamic executable"* ]] || fail "ldd $binary: $ldd_out"
[[ $ldd_out != *"not found"* ]] || fail "ldd $binary: a library is missing: $ldd_out"
libs=()
while read -r lib; do
  libs+=("$lib")
done < <(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' <<<"$ldd_out" | sort -u)
for lib in "${libs[@]}"; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
chmod -R u=rwX,go=rX "$rootfs"
chmod 0750 "$work/context/cache"

cat >"$work/context/Dockerfile" <<'EOF'
# Written by scripts/docker-smoke.sh: the Dockerfile's runtime layout, from a local binary.
FROM scratch
COPY rootfs/ /
COPY --chown=65532:65532 cache/ /var/cache/edge/
USER 65532:65532
VOLUME /var/cache/edge
EXPOSE 8080 9090
HEALTHCHECK --interval=2s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/edge", "health", "--config", "/etc/edge/edge.yaml"]
ENTRYPOINT ["/usr/local/bin/edge"]
CMD ["--config", "/etc/edge/edge.yaml"]
EOF

say "docker build (FROM scratch: edge + ${#libs[@]} libraries; $builder) -> $image"
build_log="$(docker build "${build_flags[@]}" -t "$image" "$work/context" 2>&1)" || {
  printf '%s\n' "$build_log" >&2
  fail "docker build failed"
}
image_built=1

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

origin_log="$(docker logs "$origin" 2>&1 | strip_ansi)"
requests="$(grep 'demo origin request' <<<"$origin_log" | grep -c '/hello\.txt' || true)"
say "origin: $requests request(s) for /hello.txt in its log"
[[ $requests == 1 ]] || fail "origin: expected exactly 1 request for /hello.txt, saw $requests:
$(grep 'demo origin request' <<<"$origin_log")"

say "all checks passed in $((SECONDS - started)) s"
say "ok"

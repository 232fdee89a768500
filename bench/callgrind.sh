#!/usr/bin/env bash
# Instructions per request of a server's own code (userspace), counted by valgrind's callgrind: the
# same binary and requests give the same count whatever else the machine is doing, so two builds
# (or edge and nginx) can be compared on a noisy host.
#
#   bash bench/callgrind.sh ORIGIN_URL PATH [PATH...]      e.g. http://127.0.0.1:9000 /obj/1k.bin /nostore/1k.bin
#
# For each PATH: starts the target under callgrind in front of ORIGIN_URL, sends WARM requests,
# zeroes the counters, sends N more over C kept-alive HTTP/1.1 connections (h2load --h1: requests
# as wrk sends them), dumps, and prints the count per request; the profile stays in OUT for
# callgrind_annotate.
# Env: TARGET=edge (EDGE_BIN, default target/release/edge), TARGET=nginx (the bench's nginx
#      proxy_cache, nginx-cache.conf.in, as one process) or TARGET=floor (bare-proxy/, hyper alone;
#      built if missing); for nginx and floor, ORIGIN_URL is http://127.0.0.1:PORT
#      N=2000 WARM=200 C=4 PORT=19300 (edge's admin PORT+1) OUT=bench/results/callgrind-<time>
#      MEMORY=1GiB (cache.memory.capacity; MEMORY=1KiB makes every hit a disk-tier hit)
#      CPU=1 (the CPU the target is pinned to, as in bench/run.sh)
#      CACHE=1 also simulates the CPU's caches and prints first-level data-cache misses (reads +
#      writes) and instruction-cache misses per request: new or evicted memory touched, and code
#      run that did not stay in the first-level instruction cache (sized as the CPU reports it), which
#      instruction counts do not show.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -ge 2 ] || { sed -n 6,6p "$0" | sed 's/^# *//'; exit 2; }
ORIGIN=$1; shift
TARGET=${TARGET:-edge}; N=${N:-2000}; WARM=${WARM:-200}; C=${C:-4}; CPU=${CPU:-1}
PORT=${PORT:-19300}; ADMIN=$((PORT + 1)); MEMORY=${MEMORY:-1GiB}; CACHE=${CACHE:-0}
OUT=${OUT:-$HERE/results/callgrind-$(date +%Y%m%d-%H%M%S)}
EDGE_BIN=${EDGE_BIN:-$HERE/../target/release/edge}
die() { echo "callgrind.sh: $*" >&2; exit 1; }

. "$HERE/common.sh"
debian_install valgrind:valgrind h2load:nghttp2-client curl:curl taskset:util-linux || die "apt-get install failed"
[ "$TARGET" = nginx ] && { debian_install nginx:nginx || die "apt-get install failed"; }
mkdir -p "$OUT" || die "cannot create $OUT"
curl -s -o /dev/null --max-time 2 "$ORIGIN/" || echo "note: $ORIGIN/ does not answer (continuing)"
VALGRIND=(valgrind --tool=callgrind)
[ "$CACHE" = 1 ] && VALGRIND+=(--cache-sim=yes)

# launch TAG COMMAND...: COMMAND under callgrind on CPU, in the background ($VG).
launch() {
  local tag=$1; shift
  taskset -c "$CPU" "${VALGRIND[@]}" --callgrind-out-file="$OUT/callgrind.$tag.%p" "$@" \
    > "$OUT/valgrind.$tag.log" 2>&1 &
  VG=$!
}
# start TAG: the target, launched; ready() says when it answers (edge: its admin health check).
ready() { curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/"; }
case $TARGET in
  edge)
    [ -x "$EDGE_BIN" ] || die "$EDGE_BIN not found: cargo build --release first, or set EDGE_BIN"
    cp "$EDGE_BIN" "$OUT/edge" || die "cannot copy $EDGE_BIN"
    start() {
      rm -rf "$OUT/disk"
      edge_yaml "$PORT" "$ADMIN" "$ORIGIN" "$MEMORY" "$OUT/disk" > "$OUT/edge.yaml"
      # On one CPU, as bench/run.sh runs it: edge then uses its current-thread runtime.
      launch "$1" "$OUT/edge" --config "$OUT/edge.yaml"
    }
    ready() { curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$ADMIN/healthz"; } ;;
  nginx)
    origin_port=${ORIGIN##*:}; origin_port=${origin_port%%/*}
    start() {
      rm -rf "$OUT/nginx" && mkdir -p "$OUT/nginx/logs" "$OUT/nginx/tmp"
      sed -e "s|@RUN@|$OUT/nginx|g" -e "s|@ORIGIN_PORT@|$origin_port|g" -e "s|@NGINX_PORT@|$PORT|g" \
        "$HERE/nginx-cache.conf.in" > "$OUT/nginx/nginx.conf"
      # One process, the worker, so that callgrind counts the one that serves.
      launch "$1" nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -g "daemon off; master_process off;"
    } ;;
  floor)
    FLOOR_BIN=$HERE/bare-proxy/target/release/bare-proxy
    [ -x "$FLOOR_BIN" ] || cargo build --release --manifest-path "$HERE/bare-proxy/Cargo.toml" ||
      die "cannot build bare-proxy"
    start() { launch "$1" "$FLOOR_BIN" "127.0.0.1:$PORT" "${ORIGIN#http://}"; } ;;
  *) die "TARGET is edge, nginx or floor, not $TARGET" ;;
esac

# stop: TERM, and KILL if it has not ended within 5 s.
stop() {
  [ -n "$VG" ] || return 0
  kill "$VG" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$VG" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$VG" 2>/dev/null; wait "$VG" 2>/dev/null; VG=""
}
VG=""
trap 'stop; rm -rf "$OUT/disk"' EXIT
for path in "$@"; do
  tag=$(echo "$path" | tr -c 'A-Za-z0-9.\n' '_')
  start "$tag"
  for _ in $(seq 100); do ready && break; sleep 0.3; done
  ready || die "$TARGET did not start (see $OUT/valgrind.$tag.log)"
  h2load --h1 -n "$WARM" -c "$C" "http://127.0.0.1:$PORT$path" > /dev/null
  callgrind_control -z "$VG" > /dev/null 2>&1
  ok=$(h2load --h1 -n "$N" -c "$C" "http://127.0.0.1:$PORT$path" | awk '/^requests:/{print $8}')
  callgrind_control -d "$VG" > /dev/null 2>&1
  sleep 1
  stop
  profile=$(ls "$OUT"/callgrind."$tag".*.1 2>/dev/null | head -1)
  [ -n "$profile" ] || die "no callgrind dump for $path"
  # PROGRAM TOTALS: Ir, and with the cache simulation Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw.
  read -r -a totals < <(callgrind_annotate "$profile" 2>/dev/null |
    awk '/PROGRAM TOTALS/{for (i = 1; i <= NF; i++) if ($i ~ /^[0-9,]+$/) {gsub(",", "", $i); printf "%s ", $i}}')
  misses=""
  [ "$CACHE" = 1 ] && misses=$(printf "  %5d L1d  %5d L1i misses/request" \
    $(((totals[4] + totals[5]) / N)) $((totals[3] / N)))
  printf "%-6s %-20s %8d instructions/request%s  (%d requests, %s succeeded; profile %s)\n" \
    "$TARGET" "$path" $((totals[0] / N)) "$misses" "$N" "${ok:-?}" "$profile"
done

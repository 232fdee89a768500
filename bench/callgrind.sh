#!/usr/bin/env bash
# Instructions per request of edge's own code (userspace), counted by valgrind's callgrind: the same
# binary and requests give the same count whatever else the machine is doing, so two builds can be
# compared on a noisy host.
#
#   bash bench/callgrind.sh ORIGIN_URL PATH [PATH...]      e.g. http://127.0.0.1:9000 /obj/1k.bin /nostore/1k.bin
#
# For each PATH: starts edge (EDGE_BIN, default target/release/edge) under callgrind in front of
# ORIGIN_URL, sends WARM keep-alive requests, zeroes the counters, sends N more with ab -k -c4,
# dumps, and prints the count per request; the profile stays in OUT for callgrind_annotate.
# Env: N=2000 WARM=200 PORT=19300 (admin PORT+1) OUT=bench/results/callgrind-<time>
#      MEMORY=1GiB (cache.memory.capacity; MEMORY=1KiB makes every hit a disk-tier hit)
#      CPU=1 (the CPU edge is pinned to, as in bench/run.sh)
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -ge 2 ] || { sed -n 5,6p "$0" | sed 's/^# *//'; exit 2; }
ORIGIN=$1; shift
N=${N:-2000}; WARM=${WARM:-200}; CPU=${CPU:-1}; PORT=${PORT:-19300}; ADMIN=$((PORT + 1)); MEMORY=${MEMORY:-1GiB}
OUT=${OUT:-$HERE/results/callgrind-$(date +%Y%m%d-%H%M%S)}
EDGE_BIN=${EDGE_BIN:-$HERE/../target/release/edge}
die() { echo "callgrind.sh: $*" >&2; exit 1; }

. "$HERE/common.sh"
debian_install valgrind:valgrind ab:apache2-utils curl:curl taskset:util-linux || die "apt-get install failed"
[ -x "$EDGE_BIN" ] || die "$EDGE_BIN not found: cargo build --release first, or set EDGE_BIN"
mkdir -p "$OUT" || die "cannot create $OUT"
cp "$EDGE_BIN" "$OUT/edge" || die "cannot copy $EDGE_BIN"
curl -s -o /dev/null --max-time 2 "$ORIGIN/" || echo "note: $ORIGIN/ does not answer (continuing)"

VG=""
trap '[ -n "$VG" ] && kill "$VG" 2>/dev/null; rm -rf "$OUT/disk"' EXIT
for path in "$@"; do
  tag=$(echo "$path" | tr -c 'A-Za-z0-9.\n' '_')
  rm -rf "$OUT/disk"
  edge_yaml "$PORT" "$ADMIN" "$ORIGIN" "$MEMORY" "$OUT/disk" > "$OUT/edge.yaml"
  # On one CPU, as bench/run.sh runs it: edge then uses its current-thread runtime.
  taskset -c "$CPU" valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$tag.%p" \
    "$OUT/edge" --config "$OUT/edge.yaml" > "$OUT/valgrind.$tag.log" 2>&1 &
  VG=$!
  for _ in $(seq 100); do curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$ADMIN/healthz" && break; sleep 0.3; done
  curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$ADMIN/healthz" || die "edge did not start (see $OUT/valgrind.$tag.log)"
  ab -q -k -n "$WARM" -c 4 "http://127.0.0.1:$PORT$path" > /dev/null
  callgrind_control -z "$VG" > /dev/null 2>&1
  failed=$(ab -q -k -n "$N" -c 4 "http://127.0.0.1:$PORT$path" | awk '/^Failed requests/{print $3}')
  callgrind_control -d "$VG" > /dev/null 2>&1
  sleep 1
  kill "$VG"; wait "$VG" 2>/dev/null; VG=""
  profile=$(ls "$OUT"/callgrind."$tag".*.1 2>/dev/null | head -1)
  [ -n "$profile" ] || die "no callgrind dump for $path"
  total=$(callgrind_annotate "$profile" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",", "", $1); print $1}')
  printf "%-24s %8d instructions/request  (%d requests, %s failed; profile %s)\n" \
    "$path" $((total / N)) "$N" "${failed:-?}" "$profile"
done

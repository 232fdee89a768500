#!/usr/bin/env bash
# A profile-guided (PGO) build of edge, to measure what it buys: builds edge instrumented, runs it
# in front of ORIGIN_URL under load for each PATH (memory-tier hits, then with a 1 KiB memory tier
# so that hits come from the disk tier, and misses), merges the profile, and builds edge again
# with it.
#
#   bash bench/pgo.sh ORIGIN_URL PATH [PATH...]   e.g. http://127.0.0.1:9000 /obj/1k.bin /obj/16k.bin /nostore/1k.bin
#
# Prints the binary's path (target/pgo/release/edge); measure it with EDGE_BIN=that bench/run.sh
# or bench/callgrind.sh. Env: DUR=4s (wrk per path and tier) PORT=19340 (admin PORT+1)
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
[ $# -ge 2 ] || { sed -n 7,7p "$0" | sed 's/^# *//'; exit 2; }
ORIGIN=$1; shift
DUR=${DUR:-4s}; PORT=${PORT:-19340}; ADMIN=$((PORT + 1))
WORK=$REPO/target/pgo-work
die() { echo "pgo.sh: $*" >&2; exit 1; }

. "$HERE/common.sh"
debian_install wrk:wrk curl:curl || die "apt-get install failed"
# llvm-profdata must read the profile format of rustc's own LLVM: rustup's llvm-tools has it.
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
if [ ! -x "$PROFDATA" ]; then
  rustup component add llvm-tools || die "rustup component add llvm-tools failed"
fi
[ -x "$PROFDATA" ] || die "$PROFDATA not found"
curl -s -o /dev/null --max-time 2 "$ORIGIN/" || die "$ORIGIN/ does not answer"

rm -rf "$WORK"; mkdir -p "$WORK/profiles" || die "cannot create $WORK"
echo "== instrumented build (target/pgo-gen)"
(cd "$REPO" && RUSTFLAGS="-Cprofile-generate=$WORK/profiles" CARGO_TARGET_DIR=target/pgo-gen \
  cargo build --release --locked) || die "instrumented build failed"
rm -rf "$WORK/profiles"/*                    # profiles of build scripts, not of edge

PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK/disk"' EXIT
train() { # MEMORY PATH...: run edge with that memory tier through every PATH, then stop it cleanly
  local memory=$1 path i; shift
  rm -rf "$WORK/disk"
  edge_yaml "$PORT" "$ADMIN" "$ORIGIN" "$memory" "$WORK/disk" > "$WORK/edge.yaml"
  "$REPO/target/pgo-gen/release/edge" --config "$WORK/edge.yaml" > "$WORK/edge.log" 2>&1 &
  PID=$!
  for _ in $(seq 50); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$ADMIN/healthz" && break; sleep 0.2; done
  curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$ADMIN/healthz" || die "edge did not start (see $WORK/edge.log)"
  for path in "$@"; do
    curl -s -o /dev/null "http://127.0.0.1:$PORT$path"
    printf "  memory %-6s %-20s " "$memory" "$path"
    wrk -t1 -c64 -d"$DUR" "http://127.0.0.1:$PORT$path" | awk '/Requests\/sec/{print $2 " req/s"}'
  done
  for i in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$PORT$1?pgo-miss=$i"; done   # misses
  kill -TERM "$PID"; wait "$PID" || die "edge did not exit cleanly (see $WORK/edge.log)"
  PID=""
}
echo "== training"
train 1GiB "$@"
train 1KiB "$@"
"$PROFDATA" merge -o "$WORK/edge.profdata" "$WORK/profiles"/*.profraw || die "llvm-profdata merge failed"

echo "== build with the profile (target/pgo)"
(cd "$REPO" && RUSTFLAGS="-Cprofile-use=$WORK/edge.profdata" CARGO_TARGET_DIR=target/pgo \
  cargo build --release --locked) || die "build with the profile failed"
echo "$REPO/target/pgo/release/edge"

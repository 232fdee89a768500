#!/usr/bin/env bash
# Two edge binaries compared at once: both run on the same CPU at the same time, each under its own
# wrk, so that whatever else the host is doing slows both alike and the ratio of their req/s holds
# still where sequential runs do not (see bench/README.md, "Comparing two builds").
#
#   bash bench/ab.sh BIN_A BIN_B [PATH...]      default PATHs: /nostore/1k.bin /obj/1k.bin
#
# Starts an nginx origin (nginx-origin.conf.in) and the two edges (memory tier 1GiB; MEMORY=1KiB
# for disk-tier hits) pinned to SRV_CPU, and two wrk -t1 -c64 pinned to GEN_CPU. For each PATH:
# a warm-up, then ROUNDS runs of DUR with both loaded at once; prints how the path was served
# (Cache-Status), each round's req/s and B/A, then the median B/A and its range. Which binary
# listens on which port alternates between rounds. Both get an equal share of the CPU while both
# are runnable, so B/A is the inverse ratio of their own CPU time per request (the origin's is
# the same for both): a 3% difference in edge's own cost shows as about 1.03. It compares builds
# of one program; between different servers it also measures how each batches its work under
# contention (nginx beside edge is not a fair race).
# Env: ROUNDS=8 DUR=4s MEMORY=1GiB SRV_CPU=1 GEN_CPU=0 PORT_BASE=19600 (uses .. +5)
#      BENCH_DIR=/dev/shm/edge-ab
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin
die() { echo "ab.sh: $*" >&2; exit 1; }
[ $# -ge 2 ] || { sed -n 6,6p "$0" | sed 's/^# *//'; exit 2; }
BIN_A=$(realpath "$1") || die "no $1"; BIN_B=$(realpath "$2") || die "no $2"; shift 2
PATHS=("$@"); [ ${#PATHS[@]} -gt 0 ] || PATHS=(/nostore/1k.bin /obj/1k.bin)
ROUNDS=${ROUNDS:-8}; DUR=${DUR:-4s}; MEMORY=${MEMORY:-1GiB}
SRV_CPU=${SRV_CPU:-1}; GEN_CPU=${GEN_CPU:-0}; PORT_BASE=${PORT_BASE:-19600}
BENCH_DIR=${BENCH_DIR:-/dev/shm/edge-ab}; BENCH_DIR=${BENCH_DIR%/}
ORIGIN_PORT=$PORT_BASE; STATUS_PORT=$((PORT_BASE + 1))
PORTS=($((PORT_BASE + 2)) $((PORT_BASE + 4)))   # edge ports; admin = port + 1

. "$HERE/common.sh"
debian_install nginx:nginx wrk:wrk curl:curl taskset:util-linux || die "apt-get install failed"
for b in "$BIN_A" "$BIN_B"; do [ -x "$b" ] || die "$b is not an executable"; done
for p in "$ORIGIN_PORT" "$STATUS_PORT" "${PORTS[@]}" $((PORTS[0] + 1)) $((PORTS[1] + 1)); do
  port_open "$p" && die "port $p is already in use (set PORT_BASE)"
done

# Only what this script makes in BENCH_DIR is removed, before and after.
OURS=("$BENCH_DIR"/{logs,tmp,www,disk0,disk1,origin.conf,origin.pid,edge0.yaml,edge1.yaml,wrk0.txt,wrk1.txt})
rm -rf "${OURS[@]}" && mkdir -p "$BENCH_DIR"/{logs,tmp,www/obj} || die "cannot create $BENCH_DIR"
origin_objects "$BENCH_DIR/www/obj" || die "cannot write the objects"
sed -e "s|@RUN@|$BENCH_DIR|g" -e "s|@ORIGIN_PORT@|$ORIGIN_PORT|g" -e "s|@STATUS_PORT@|$STATUS_PORT|g" \
  "$HERE/nginx-origin.conf.in" > "$BENCH_DIR/origin.conf"
ulimit -n "$(ulimit -Hn)" 2>/dev/null

ORIGIN_PID=""; EDGES=()   # exactly the processes this script started
stop_edges() {
  local p
  for p in "${EDGES[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${EDGES[@]}"; do wait "$p" 2>/dev/null; done
  EDGES=()
}
trap 'stop_edges; [ -n "$ORIGIN_PID" ] && kill "$ORIGIN_PID" 2>/dev/null; rm -rf "${OURS[@]}"; rmdir "$BENCH_DIR" 2>/dev/null' EXIT
trap 'exit 130' INT TERM
# daemon off, master_process off: the process started is the one that serves, and the PID to stop.
taskset -c "$SRV_CPU" nginx -p "$BENCH_DIR" -c "$BENCH_DIR/origin.conf" -g "daemon off; master_process off;" \
  > "$BENCH_DIR/logs/origin.out" 2>&1 &
ORIGIN_PID=$!
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$ORIGIN_PORT/" && break; sleep 0.1; done
curl -s -o /dev/null "http://127.0.0.1:$ORIGIN_PORT/" || die "the origin did not start"

# start_edges FIRST SECOND: FIRST on PORTS[0], SECOND on PORTS[1], fresh caches.
start_edges() {
  local i bin port
  for i in 0 1; do
    bin=$1; shift; port=${PORTS[$i]}
    rm -rf "$BENCH_DIR/disk$i"
    edge_yaml "$port" $((port + 1)) "http://127.0.0.1:$ORIGIN_PORT" "$MEMORY" "$BENCH_DIR/disk$i" \
      > "$BENCH_DIR/edge$i.yaml"
    taskset -c "$SRV_CPU" "$bin" --config "$BENCH_DIR/edge$i.yaml" > "$BENCH_DIR/logs/edge$i.out" 2>&1 &
    EDGES+=($!)
  done
  for port in "${PORTS[@]}"; do
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$((port + 1))/healthz" && break; sleep 0.1; done
    curl -s -o /dev/null "http://127.0.0.1:$((port + 1))/healthz" || die "an edge did not start (logs in $BENCH_DIR/logs)"
  done
}
# both PATH SECONDS: wrk on both edges at once; prints "req/s on PORTS[0]" "req/s on PORTS[1]".
both() {
  local i pids=()
  for i in 0 1; do
    taskset -c "$GEN_CPU" wrk -t1 -c64 -d"$2" "http://127.0.0.1:${PORTS[$i]}$1" > "$BENCH_DIR/wrk$i.txt" &
    pids+=($!)
  done
  wait "${pids[@]}"
  for i in 0 1; do awk '/Requests\/sec/{printf "%s ", $2}' "$BENCH_DIR/wrk$i.txt"; done
}

printf "A %s\nB %s\n%d rounds of %s, both at once; edges on CPU %s with the origin, wrk on CPU %s\n" \
  "$BIN_A" "$BIN_B" "$ROUNDS" "$DUR" "$SRV_CPU" "$GEN_CPU"
for path in "${PATHS[@]}"; do
  ratios=()
  for round in $(seq "$ROUNDS"); do
    # Odd rounds: A on the first port; even rounds: B there.
    if ((round % 2)); then start_edges "$BIN_A" "$BIN_B"; else start_edges "$BIN_B" "$BIN_A"; fi
    for port in "${PORTS[@]}"; do
      code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port$path")
      [ "$code" = 200 ] || die "$path answered $code on port $port"
    done
    both "$path" 2s > /dev/null
    # What the measured requests are: hits from memory or disk, or forwards.
    ((round == 1)) && printf "  %-18s served as: %s\n" "$path" "$(curl -s -D - -o /dev/null \
      "http://127.0.0.1:${PORTS[0]}$path" | tr -d '\r' | sed -n 's/^cache-status: //Ip')"
    read -r r0 r1 < <(both "$path" "$DUR")
    [ -n "${r1:-}" ] || die "wrk gave no result for $path"
    if ((round % 2)); then ra=$r0 rb=$r1; else ra=$r1 rb=$r0; fi
    ratio=$(awk -v a="$ra" -v b="$rb" 'BEGIN{printf "%.3f", b / a}')
    ratios+=("$ratio")
    printf "  %-18s round %2d  A %9.0f req/s  B %9.0f req/s  B/A %s\n" "$path" "$round" "$ra" "$rb" "$ratio"
    stop_edges
  done
  printf "%s\n" "${ratios[@]}" | sort -n | awk -v p="$path" '{v[NR] = $1}
    END {m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
         printf "%-18s B/A median %.3f (rounds %.3f-%.3f)\n", p, m, v[1], v[NR]}'
done

#!/usr/bin/env bash
# edge vs nginx proxy_cache, side by side in one run.   bash bench/run.sh    (see bench/README.md)
#
# Installs nginx/wrk from Debian if missing, builds edge as the image ships it (PGO), starts on 127.0.0.1 (servers pinned to SRV_CPU):
#   ceiling   the origin nginx serving the files itself (sendfile): the reference point
#   nginx     nginx proxy_cache in front of the origin
#   edge      edge, memory tier big enough for everything
#   edge_disk edge with a 1KiB memory tier: every hit is read from the disk tier
#             (the large and range rows leave edge_disk out: edge itself keeps a 32m object on disk
#             only, being over cache.memory.max_object_size)
#   floor     (pass rows only) bench/bare-proxy: hyper's server and client and nothing else, the
#             least any pass-through on edge's HTTP stack costs; FLOOR=0 leaves it out
#   edge_b    (EDGE_B_BIN=path only) a second edge binary, configured as edge, beside it in the
#             hit, rate, lat1 and pass rows: two builds compared in one run
# then measures with wrk (pinned to GEN_CPU), hit latency at a fixed request rate with oha (built
# with cargo install if missing), checks request collapsing and memory per object, and prints
# ratios. Everything it starts is stopped on exit.
#
# Env: DUR=10s WARMUP=2s SIZES="1k 16k 256k 1m" N=5000
#      TESTS="hit rate lat1 pass large collapse coldrange memory firsthit refresh restart mixed"
#      (large: hits of a 32 MiB object, whole and a 64 KiB Range of it)
#      RATES="1k=20000 16k=20000 256k=4000 1m=1000" (requests/s offered per size in the rate test)
#      ROUNDS=1 (each row measured ROUNDS times, interleaved; the report gives medians and ranges)
#      BENCH_DIR=/dev/shm/edge-bench (tmpfs: objects, caches, configs, logs)  OUT=bench/results/<time>
#      SRV_CPU=1 GEN_CPU=0 (empty = no pinning)  GEN_THREADS=<cores in GEN_CPU> (wrk -t)  PORT_BASE=19200  QUIET_MAX=15 QUIET_WAIT=10
#      EDGE_BIN=path (skip the build and measure that binary)  PGO=1 (0: a plain cargo build --release)
#      FLOOR=1 (0: no floor row in pass)
#      EDGE_B_BIN=path (add the edge_b target; bench/ab.sh compares two builds more precisely)
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

DUR=${DUR:-10s}; WARMUP=${WARMUP:-2s}; N=${N:-5000}; ROUNDS=${ROUNDS:-1}
SIZES=${SIZES:-"1k 16k 256k 1m"}; TESTS=${TESTS:-"hit rate lat1 pass large collapse coldrange memory firsthit refresh restart mixed"}
RATES=${RATES:-"1k=20000 16k=20000 256k=4000 1m=1000"}
BENCH_DIR=${BENCH_DIR:-/dev/shm/edge-bench}; BENCH_DIR=${BENCH_DIR%/}
OUT=${OUT:-$HERE/results/$(date +%Y%m%d-%H%M%S)}
SRV_CPU=${SRV_CPU-1}; GEN_CPU=${GEN_CPU-0}
QUIET_MAX=${QUIET_MAX:-15}; QUIET_WAIT=${QUIET_WAIT:-10}
PORT_BASE=${PORT_BASE:-19200}                      # uses PORT_BASE .. PORT_BASE+31
FLOOR=${FLOOR:-1}; [[ " $TESTS " == *" pass "* ]] || FLOOR=0

ORIGIN_PORT=$PORT_BASE; STATUS_PORT=$((PORT_BASE + 1))
declare -A PORT=([ceiling]=$ORIGIN_PORT [nginx]=$((PORT_BASE + 10)) [edge_b]=$((PORT_BASE + 15)) [edge]=$((PORT_BASE + 20)) [floor]=$((PORT_BASE + 25)) [edge_disk]=$((PORT_BASE + 30)))
declare -A ADMIN=([edge_b]=$((PORT_BASE + 16)) [edge]=$((PORT_BASE + 21)) [edge_disk]=$((PORT_BASE + 31)))
declare -A MEMORY=([edge]=1GiB [edge_b]=1GiB [edge_disk]=1KiB)
declare -A ROOTPID=()                                  # name -> pid of the process we started
declare -A COMMAND=()                                  # name -> its port and command, for restart
EDGE_B=""; [ -n "${EDGE_B_BIN:-}" ] && EDGE_B=edge_b
HIT_TARGETS="ceiling nginx edge $EDGE_B edge_disk"; OTHER_TARGETS="ceiling nginx edge $EDGE_B"
PASS_TARGETS="ceiling nginx $([ "$FLOOR" = 1 ] && echo floor) edge $EDGE_B"

die() { echo "run.sh: $*" >&2; exit 1; }
RANGE=1048576-1114111   # the range rows' Range: 64 KiB from 1 MiB on
# Prefixes, not functions: "${SRV_PIN[@]}" cmd & gives $! = the pid of cmd itself (taskset execs it).
SRV_PIN=(); [ -n "$SRV_CPU" ] && SRV_PIN=(taskset -c "$SRV_CPU")
GEN_PIN=(); [ -n "$GEN_CPU" ] && GEN_PIN=(taskset -c "$GEN_CPU")
# One wrk thread per load-generator core. Two threads sharing one saturated core take turns in
# scheduler slices of a few ms, and the connections of the thread that waits see that wait as
# latency: a p99 of 4-6 ms for whichever server is fast enough to saturate wrk's core.
GEN_THREADS=${GEN_THREADS:-$("${GEN_PIN[@]}" nproc 2>/dev/null || echo 1)}
owns_port() { # PID PORT: PID holds a listening socket on PORT (not some other program that got there first)
  local inode f
  for inode in $(awk -v p="$(printf ':%04X' "$2")" '$4 == "0A" && substr($2, length($2) - 4) == p {print $10}' /proc/net/tcp /proc/net/tcp6 2>/dev/null); do
    for f in /proc/"$1"/fd/*; do [ "$(readlink "$f" 2>/dev/null)" = "socket:[$inode]" ] && return 0; done
  done
  return 1
}
for s in $SIZES; do [[ " 1k 16k 256k 1m " == *" $s "* ]] || die "unknown size '$s' (1k 16k 256k 1m)"; done

# ---- 1. tools and the edge binary ----------------------------------------------------------------
. "$HERE/common.sh"
debian_install nginx:nginx wrk:wrk curl:curl || die "apt-get install failed"
command -v taskset >/dev/null || { [ -z "$SRV_CPU$GEN_CPU" ] || die "taskset not found (util-linux)"; }
# oha offers a fixed request rate (wrk2 is not in Debian); crates.io has it.
OHA_VERSION=1.16.0
if [[ " $TESTS " == *" rate "* ]] && ! command -v oha >/dev/null; then
  PATH=$PATH:${CARGO_HOME:-$HOME/.cargo}/bin
  command -v oha >/dev/null || { echo "building oha $OHA_VERSION: cargo install --locked oha@$OHA_VERSION (a few minutes, once)";
    cargo install --locked "oha@$OHA_VERSION" || die "cargo install oha failed"; }
fi

mkdir -p "$BENCH_DIR" "$OUT/raw" || die "cannot create $BENCH_DIR or $OUT"
if [ -z "${EDGE_BIN:-}" ]; then
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) and a C toolchain (build-essential)"
  if [ "${PGO:-1}" = 1 ]; then
    echo "building edge as the Docker image does: scripts/pgo-build.sh (PGO=0: cargo build --release)"
    EDGE_BIN=$(bash "$REPO/scripts/pgo-build.sh") || die "scripts/pgo-build.sh failed"
  else
    echo "building edge: cargo build --release --locked"
    (cd "$REPO" && cargo build --release --locked) || die "cargo build failed"
    EDGE_BIN=$REPO/target/release/edge
  fi
fi
# A private copy, so that a rebuild of target/release during the run doesn't change what is measured.
cp "$EDGE_BIN" "$BENCH_DIR/edge" || die "cannot copy $EDGE_BIN"
if [ -n "$EDGE_B" ]; then cp "$EDGE_B_BIN" "$BENCH_DIR/edge_b" || die "cannot copy $EDGE_B_BIN"; fi
if [ "$FLOOR" = 1 ]; then
  echo "building the hyper floor: cargo build --release --locked --manifest-path bench/bare-proxy/Cargo.toml"
  (cd "$HERE/bare-proxy" && cargo build --release --locked) || die "cargo build of bench/bare-proxy failed (FLOOR=0 skips it)"
  cp "$HERE/bare-proxy/target/release/bare-proxy" "$BENCH_DIR/bare-proxy" || die "cannot copy bare-proxy"
fi

# ---- 2. objects, configs -------------------------------------------------------------------------
for p in "$ORIGIN_PORT" "$STATUS_PORT" "${PORT[@]}" "${ADMIN[@]}"; do
  port_open "$p" && die "port $p is already in use (another run? set PORT_BASE)"
done
exec > >(tee "$OUT/run.log") 2>&1
rm -rf "$BENCH_DIR"/{conf,logs,tmp,nginx-cache,edge-disk,edge_disk-disk,edge_b-disk}
mkdir -p "$BENCH_DIR"/{conf,logs,tmp,www/obj}
origin_objects "$BENCH_DIR/www/obj" || die "cannot write the objects"
dd if="$BENCH_DIR/www/obj/32m.bin" of="$BENCH_DIR/tmp/range.bin" iflag=skip_bytes,count_bytes status=none \
  skip="${RANGE%-*}" count=$((${RANGE#*-} - ${RANGE%-*} + 1)) || die "cannot write the range's bytes"
ulimit -n "$(ulimit -Hn)" 2>/dev/null

render() { # TEMPLATE DEST [NAME]
  local n=${3:-}
  sed -e "s|@RUN@|$BENCH_DIR|g" -e "s|@ORIGIN_PORT@|$ORIGIN_PORT|g" -e "s|@STATUS_PORT@|$STATUS_PORT|g" \
      -e "s|@NGINX_PORT@|${PORT[nginx]}|g" -e "s|@NAME@|$n|g" -e "s|@PORT@|${n:+${PORT[$n]}}|g" \
      -e "s|@ADMIN_PORT@|${n:+${ADMIN[$n]-}}|g" -e "s|@MEMORY@|${n:+${MEMORY[$n]-}}|g" "$1" > "$2"
}
render "$HERE/nginx-origin.conf.in" "$BENCH_DIR/conf/origin.conf"
render "$HERE/nginx-cache.conf.in" "$BENCH_DIR/conf/nginx.conf"
for n in edge edge_disk $EDGE_B; do
  render "$HERE/edge.yaml.in" "$BENCH_DIR/conf/$n.yaml" "$n"
  "$BENCH_DIR/edge" check --config "$BENCH_DIR/conf/$n.yaml" >/dev/null || die "edge rejects $BENCH_DIR/conf/$n.yaml"
done
cp "$BENCH_DIR"/conf/* "$OUT/"

# ---- 3. start, pinned; stop exactly these PIDs on exit --------------------------------------------
STARTED=()
running() { local s; s=$(awk '{sub(/^.*\) /, ""); print $1}' "/proc/$1/stat" 2>/dev/null); [ -n "$s" ] && [ "$s" != Z ]; }
stop_all() { # TERM exactly the pids we started (an nginx master takes its worker along), KILL after 5 s
  local p i left
  for p in "${STARTED[@]}"; do kill "$p" 2>/dev/null; done
  for i in $(seq 50); do
    left=(); for p in "${STARTED[@]}"; do running "$p" && left+=("$p"); done
    [ ${#left[@]} -eq 0 ] && return 0
    sleep 0.1
  done
  echo "killing ${left[*]}" >&2; kill -9 "${left[@]}" 2>/dev/null
}
cleanup() { stop_all; rm -rf "$BENCH_DIR"/{nginx-cache,edge-disk,edge_disk-disk,edge_b-disk,www/obj/32m.bin,tmp/range.bin}; }   # the caches and the 32 MiB object hold RAM
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # NAME PORT CMD... : run CMD in the foreground of a background job, wait for PORT
  local name=$1 port=$2 i; shift 2
  "${SRV_PIN[@]}" "$@" >> "$BENCH_DIR/logs/$name.out" 2>&1 &
  STARTED+=($!); ROOTPID[$name]=$!; COMMAND[$name]=$(printf '%q ' "$port" "$@")
  for i in $(seq 100); do
    owns_port "$!" "$port" && { echo "started $name: pid $!, port $port${SRV_CPU:+, cpu $SRV_CPU}"; return 0; }
    kill -0 "$!" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 5 "$BENCH_DIR"/logs/* >&2; die "$name did not start (logs above, $BENCH_DIR/logs/)"
}
NGINX_RUN=(nginx -p "$BENCH_DIR/" -g "daemon off;")
start ceiling "$ORIGIN_PORT" "${NGINX_RUN[@]}" -e "$BENCH_DIR/logs/origin.error.log" -c "$BENCH_DIR/conf/origin.conf"
start nginx "${PORT[nginx]}" "${NGINX_RUN[@]}" -e "$BENCH_DIR/logs/nginx.error.log" -c "$BENCH_DIR/conf/nginx.conf"
for n in edge edge_disk; do start "$n" "${PORT[$n]}" "$BENCH_DIR/edge" --config "$BENCH_DIR/conf/$n.yaml"; done
if [ -n "$EDGE_B" ]; then start edge_b "${PORT[edge_b]}" "$BENCH_DIR/edge_b" --config "$BENCH_DIR/conf/edge_b.yaml"; fi
if [ "$FLOOR" = 1 ]; then start floor "${PORT[floor]}" "$BENCH_DIR/bare-proxy" "127.0.0.1:${PORT[floor]}" "127.0.0.1:$ORIGIN_PORT"; fi

# ---- helpers for measuring -----------------------------------------------------------------------
gen() { # run a load generator on GEN_CPU as a tracked background job, so a signal stops it at once
  local p rc
  "${GEN_PIN[@]}" "$@" & p=$!; STARTED+=("$p")
  wait "$p"; rc=$?; unset 'STARTED[-1]'; return $rc
}
origin_count() { curl -s --max-time 2 "http://127.0.0.1:$STATUS_PORT/status" | awk 'NR==3{print $3}'; }
metric() { # NAME METRIC: sum of that metric's samples on NAME's admin listener
  curl -s --max-time 2 "http://127.0.0.1:${ADMIN[$1]}/metrics" | awk -v m="$2" '$1==m || index($1, m"{")==1 {s+=$2} END{print s+0}'
}
tree_rss_kib() { # RSS of a pid plus its children (nginx master + worker)
  local root=$1 p t=0
  for p in $root $(awk -v r="$root" '{sub(/^.*\) /, ""); if ($2 == r) {f=FILENAME; gsub(/[^0-9]/, "", f); print f}}' /proc/[0-9]*/stat 2>/dev/null); do
    t=$((t + $(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo $t
}
tree_cpu_ticks() { # user + system CPU ticks of a pid plus its children
  local root=$1 p t=0
  for p in $root $(awk -v r="$root" '{sub(/^.*\) /, ""); if ($2 == r) {f=FILENAME; gsub(/[^0-9]/, "", f); print f}}' /proc/[0-9]*/stat 2>/dev/null); do
    t=$((t + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $t
}
gen_cpu_ticks() { # "busy total" ticks of the load generator's core (of all cores if it is not pinned to one)
  local line=cpu; [[ "$GEN_CPU" =~ ^[0-9]+$ ]] && line=cpu$GEN_CPU
  awk -v l="$line" '$1 == l {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat
}
CLK_TCK=$(getconf CLK_TCK)
busy_pct() { # whole-box CPU busy % over 0.5 s
  local a b; a=$(head -1 /proc/stat); sleep 0.5; b=$(head -1 /proc/stat)
  echo "$a $b" | awk '{n=NF/2; for (i=2;i<=n;i++) {d=$(i+n)-$i; t+=d; if (i!=5 && i!=6) u+=d}; print (t>0) ? int(100*u/t) : 0}'
}
wait_quiet() { # wait up to QUIET_WAIT s for the box to be idle (our servers are idle now: others are busy)
  local t0=$SECONDS b
  while b=$(busy_pct); [ "$b" -gt "$QUIET_MAX" ]; do
    [ $((SECONDS - t0)) -ge "$QUIET_WAIT" ] && { echo "busy${b}%"; return; }
  done
}
served_as() { # the cache's own word on a response: Cache-Status (edge) or X-Cache (nginx)
  tr -d '\r' < "$1" | awk 'tolower($1)=="cache-status:" || tolower($1)=="x-cache:" {sub(/^[^:]*: */, ""); print}' |
    sed -e 's/^edge; *//' -e 's/ttl=[0-9]*; *//' -e 's/; */;/g' -e 's/ /_/g' | grep . || echo -
}

FAILED=0
failed() { echo "!!! FAILED: $*" >&2; FAILED=$((FAILED + 1)); }   # a check that did not hold
TSV=$OUT/results.tsv
# srv_cpu_us: CPU time (user + system) of the server's processes per request during the measured run;
# gen_busy: how busy the load generator's core was meanwhile (near 100: wrk, not the server, was the limit).
printf "test\tsize\ttarget\tconns\trps\tp50_us\tp99_us\tmax_us\tsock_err\tstatus_err\torig_req\tserved\tnote\tround\tsrv_cpu_us\tgen_busy\n" > "$TSV"

measure() { # TEST SIZE TARGET
  local test=$1 size=$2 name=$3 path t=$GEN_THREADS c=64 hdr=() slow=() code=200 want=$BENCH_DIR/www/obj/$2.bin
  case $test in
    hit) path=/obj/$size.bin ;;
    large) path=/obj/$size.bin; slow=(--timeout 30s) ;;   # a 32 MiB response can take wrk's default 2 s
    lat1) path=/obj/$size.bin; t=1; c=1 ;;
    pass) path=/nostore/$size.bin ;;
    range) path=/obj/$size.bin; hdr=(-H "Range: bytes=$RANGE"); code=206; want=$BENCH_DIR/tmp/range.bin ;;
  esac
  local url="http://127.0.0.1:${PORT[$name]}$path" tag="$test-$size-$name-r$ROUND" got expect
  expect="$code $(stat -c %s "$want")"
  got=$(curl -s "${hdr[@]}" -o "$BENCH_DIR/tmp/body" -w '%{http_code} %{size_download}' --max-time 10 "$url")
  if [ "$got" != "$expect" ] || ! cmp -s "$BENCH_DIR/tmp/body" "$want"; then
    echo "!!! FAILED CHECK $name $url ${hdr[*]}: got '$got', want '$expect' and the origin's bytes" >&2
    printf "%s\t%s\t%s\t%s\t0\t0\t0\t0\t0\t0\t0\t-\tFAILED:%s\t%s\t-\t-\n" "$test" "$size" "$name" "$c" "${got// /_}" "$ROUND" >> "$TSV"
    FAILED=$((FAILED + 1)); return
  fi
  [ "$WARMUP" = 0 ] || gen wrk "${hdr[@]}" "${slow[@]}" -t"$t" -c"$c" -d"$WARMUP" "$url" > /dev/null 2>&1
  curl -s "${hdr[@]}" -o /dev/null -D "$OUT/raw/$tag.headers" --max-time 10 "$url"
  local served note o1 o2
  served=$(served_as "$OUT/raw/$tag.headers")
  note=$(wait_quiet)
  o1=$(origin_count)
  local cpu0 cpu1 gen0 gen1
  cpu0=$(tree_cpu_ticks "${ROOTPID[$name]}"); gen0=$(gen_cpu_ticks)
  gen wrk "${hdr[@]}" "${slow[@]}" -t"$t" -c"$c" -d"$DUR" --latency -s "$HERE/report.lua" "$url" > "$OUT/raw/$tag.txt" 2>&1
  cpu1=$(tree_cpu_ticks "${ROOTPID[$name]}"); gen1=$(gen_cpu_ticks)
  o2=$(origin_count)
  local line requests=0 duration_us=1 bytes=0 p50=0 p90=0 p99=0 p999=0 max=0 sock_err=0 status_err=0 kv orig
  line=$(sed -n 's/^WRKRESULT //p' "$OUT/raw/$tag.txt")
  [ -n "$line" ] || { echo "!!! wrk failed for $name $url, see $OUT/raw/$tag.txt" >&2; FAILED=$((FAILED + 1)); return; }
  for kv in $line; do printf -v "${kv%%=*}" '%s' "${kv#*=}"; done
  [ $((sock_err + status_err)) -gt 0 ] && note="${note:+$note,}errors"
  orig=$((o2 - o1 - 1)); [ "$name" = ceiling ] && orig=-          # the ceiling *is* the origin
  printf "%s\t%s\t%s\t%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$test" "$size" "$name" "$c" \
    "$(awk -v r="$requests" -v d="$duration_us" 'BEGIN{print r/(d/1e6)}')" "$p50" "$p99" "$max" \
    "$sock_err" "$status_err" "$orig" "$served" "${note:--}" "$ROUND" \
    "$(awk -v c=$((cpu1 - cpu0)) -v r="$requests" -v hz="$CLK_TCK" 'BEGIN{printf "%.1f", (r > 0) ? c / hz * 1e6 / r : 0}')" \
    "$(echo "$gen0 $gen1" | awk '{printf "%.0f", ($4 > $2) ? 100 * ($3 - $1) / ($4 - $2) : 0}')" >> "$TSV"
  tail -1 "$TSV" | awk -F'\t' '{printf "  %-5s %-5s %-10s %9d req/s  p50 %7.3f ms  p99 %8.3f ms  origin_reqs %-7s cpu %6.1f us/req  wrk core %3d%%  %s %s\n", $1, $2, $3, $5, $6/1000, $7/1000, $11, $15, $16, $12, ($13=="-") ? "" : $13}'
}

measure_rate() { # SIZE TARGET: hits at a fixed offered rate (RATES), 64 connections: latency at equal throughput
  local size=$1 name=$2 rate path=/obj/$1.bin
  rate=$(tr ' ' '\n' <<< "$RATES" | sed -n "s/^$size=//p"); [ -n "$rate" ] || return
  local url="http://127.0.0.1:${PORT[$name]}$path" tag="rate-$size-$name-r$ROUND"
  [ "$WARMUP" = 0 ] || gen wrk -t"$GEN_THREADS" -c64 -d"$WARMUP" "$url" > /dev/null 2>&1
  curl -s -o /dev/null -D "$OUT/raw/$tag.headers" --max-time 10 "$url"
  local served note o1 o2
  served=$(served_as "$OUT/raw/$tag.headers")
  note=$(wait_quiet)
  o1=$(origin_count)
  gen oha -z "$DUR" -c 64 -q "$rate" --latency-correction --no-tui "$url" > "$OUT/raw/$tag.txt" 2>&1
  o2=$(origin_count)
  # oha's text report: "Requests/sec: N", "50.00% in X ms", "[200] N responses", "[error] N ..." lines.
  local line
  line=$(awk '
    function us(v, unit) { return (unit ~ /^ms/) ? v * 1000 : (unit ~ /^(us|µs)/) ? v : (unit ~ /^ns/) ? v / 1000 : v * 1e6 }
    /Requests\/sec:/ { rps = $2 }
    $1 == "50.00%" && $2 == "in" { p50 = us($3, $4) }
    $1 == "99.00%" && $2 == "in" { p99 = us($3, $4) }
    /^  Slowest:/ { max = us($2, $3) }
    /^  \[[0-9]+\] [0-9]+ responses/ { code = substr($1, 2, length($1) - 2); if (code !~ /^2/) bad += $2 }
    /^Error distribution/ { errs = 1; next }
    errs && /^  \[[0-9]+\]/ && !/aborted due to deadline/ { sock += substr($1, 2, length($1) - 2) }
    END { if (rps == "") exit 1; printf "%.0f %d %d %d %d %d", rps, p50, p99, max, sock, bad }' "$OUT/raw/$tag.txt") ||
    { echo "!!! oha failed for $name $url, see $OUT/raw/$tag.txt" >&2; FAILED=$((FAILED + 1)); return; }
  local rps p50 p99 max sock_err status_err orig
  read -r rps p50 p99 max sock_err status_err <<< "$line"
  [ $((sock_err + status_err)) -gt 0 ] && note="${note:+$note,}errors"
  orig=$((o2 - o1 - 1)); [ "$name" = ceiling ] && orig=-
  printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t-\t-\n" rate "$size" "$name" 64 "$rps" "$p50" "$p99" "$max" \
    "$sock_err" "$status_err" "$orig" "$served" "${note:--}" "$ROUND" >> "$TSV"
  tail -1 "$TSV" | awk -F'\t' '{printf "  %-5s %-5s %-10s %9d req/s  p50 %7.3f ms  p99 %8.3f ms  origin_reqs %-7s %s %s\n", $1, $2, $3, $5, $6/1000, $7/1000, $11, $12, ($13=="-") ? "" : $13}'
}

# ---- 4. throughput and latency -------------------------------------------------------------------
echo "# $(date -Is)  $(nproc) cpus  edge $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo +dirty)  $(nginx -v 2>&1 | sed 's/.*: //')  wrk $(wrk -v 2>&1 | awk 'NR==1{print $2}')"
echo "# DUR=$DUR WARMUP=$WARMUP SIZES=\"$SIZES\" TESTS=\"$TESTS\" N=$N ROUNDS=$ROUNDS  servers on cpu ${SRV_CPU:-any}, wrk -t$GEN_THREADS on cpu ${GEN_CPU:-any}  out: $OUT"
for ROUND in $(seq "$ROUNDS"); do
  [ "$ROUNDS" = 1 ] || echo "# round $ROUND of $ROUNDS"
  for test in $TESTS; do
    case $test in
      hit)  for s in $SIZES; do for n in $HIT_TARGETS; do measure hit "$s" "$n"; done; done ;;
      rate) for s in $SIZES; do for n in $HIT_TARGETS; do measure_rate "$s" "$n"; done; done ;;
      lat1) for n in $OTHER_TARGETS; do measure lat1 1k "$n"; done ;;
      pass) for n in $PASS_TARGETS; do measure pass 1k "$n"; done ;;
      large) for t in large range; do for n in $OTHER_TARGETS; do measure "$t" 32m "$n"; done; done ;;
      collapse|coldrange|memory|firsthit|refresh|restart|mixed) ;;
      *) die "unknown test '$test' (hit rate lat1 pass large collapse coldrange memory firsthit refresh restart mixed)" ;;
    esac
  done
done

# ---- 5. request collapsing under load ------------------------------------------------------------
# 100 concurrent requests for one new key of /slow/ (the origin sends 256k in ~1 s) while
# wrk keeps 64 connections of hits on the same server. Origin requests for that key are counted in the
# origin's access log of /slow/.
collapse() { # TARGET
  local name=$1 key url cfg i wrk_pid c0 t0 ok orig ms
  key=$name-$RANDOM$RANDOM; url="http://127.0.0.1:${PORT[$name]}/slow/256k.bin?collapse=$key"
  cfg=$BENCH_DIR/tmp/collapse.curl
  for i in $(seq 100); do printf 'url = "%s"\noutput = "/dev/null"\n' "$url"; done > "$cfg"
  "${GEN_PIN[@]}" wrk -t"$GEN_THREADS" -c64 -d5s "http://127.0.0.1:${PORT[$name]}/obj/1k.bin" > /dev/null 2>&1 &
  wrk_pid=$!; STARTED+=($wrk_pid)
  sleep 1
  [ "$name" = nginx ] || c0=$(metric "$name" edge_collapsed_requests_total)
  t0=$(date +%s%N)
  ok=$("${GEN_PIN[@]}" curl -s --no-progress-meter --parallel --parallel-immediate --parallel-max 100 --max-time 30 \
         -w '%{http_code} %{size_download}\n' -K "$cfg" | grep -c '^200 262144$')
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  wait "$wrk_pid"; unset 'STARTED[-1]'
  orig=$(grep -c "collapse=$key" "$BENCH_DIR/logs/origin-slow.log")
  printf "  %-10s 100 concurrent misses -> %3d origin request(s); %3d/100 answered 200 with the full body, in %5d ms%s\n" \
    "$name" "$orig" "$ok" "$ms" "$([ "$name" = nginx ] && echo "  (proxy_cache_lock off)" ||
                                   echo "  (edge_collapsed_requests_total +$(( $(metric "$name" edge_collapsed_requests_total) - c0 )))")" |
    tee -a "$OUT/collapse.txt"
  [ "$ok" = 100 ] || failed "$name answered $ok/100 collapse requests correctly"
}

# 20 concurrent requests for the first MiB of one new 32 MiB key of /paced/ (the origin sends it
# at 8 MB/s, ~4 s): how soon each range starts and ends, whether it holds exactly those bytes, how
# many origin requests it took (the origin's log of /paced/), and how much the server's resident
# memory grew meanwhile (sampled every 50 ms): a player starting a video that is not cached yet.
coldrange() { # TARGET
  local name=$1 key url i t0 ms ok orig r0 peak r part p running curls=()
  key=$name-$RANDOM$RANDOM; url="http://127.0.0.1:${PORT[$name]}/paced/32m.bin?coldrange=$key"
  r0=$(tree_rss_kib "${ROOTPID[$name]}"); peak=$r0
  t0=$(date +%s%N)
  for i in $(seq 20); do
    "${GEN_PIN[@]}" curl -s --max-time 60 -r 0-1048575 -o "$BENCH_DIR/tmp/coldrange.$i" \
      -w '%{http_code} %{time_starttransfer} %{time_total}\n' "$url" &
    curls+=($!)
  done > "$BENCH_DIR/tmp/coldrange.times"
  STARTED+=("${curls[@]}")
  running=1
  while [ "$running" = 1 ]; do
    r=$(tree_rss_kib "${ROOTPID[$name]}"); [ "$r" -gt "$peak" ] && peak=$r
    running=0; for p in "${curls[@]}"; do kill -0 "$p" 2>/dev/null && running=1; done
    sleep 0.05
  done
  wait "${curls[@]}"; STARTED=("${STARTED[@]:0:${#STARTED[@]}-20}")
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  head -c 1048576 "$BENCH_DIR/www/obj/32m.bin" > "$BENCH_DIR/tmp/coldrange.want"
  ok=0
  for i in $(seq 20); do
    part=$BENCH_DIR/tmp/coldrange.$i
    cmp -s "$part" "$BENCH_DIR/tmp/coldrange.want" && ok=$((ok + 1)); rm -f "$part"
  done
  ok=$((ok - 20 + $(grep -c '^206 ' "$BENCH_DIR/tmp/coldrange.times")))
  # The origin logs a request when it has sent the whole object, seconds after the ranges: wait
  # for the count to settle (1.5 s without a new line), so that the next target starts on a
  # quiet origin too.
  orig=0
  for i in $(seq 300); do
    r=$(grep -c "coldrange=$key" "$BENCH_DIR/logs/origin-paced.log")
    [ "$r" != "$orig" ] && { orig=$r; p=$i; }
    [ "$orig" -gt 0 ] && [ $((i - p)) -ge 15 ] && break
    sleep 0.1
  done
  rm -f "$BENCH_DIR/tmp/coldrange.want"
  sort -k2 -n "$BENCH_DIR/tmp/coldrange.times" | awk -v n="$name" -v ok="$ok" -v o="$orig" -v ms="$ms" -v grew="$(( (peak - r0) / 1024 ))" '
    {first[NR] = $2} END {printf "  %-10s %2d/20 206 with the right bytes; first byte median %6.0f ms, max %6.0f; all done in %5d ms; %3d origin request(s); RSS +%d MiB\n",
      n, ok, 1000 * first[int(NR / 2) + 1], 1000 * first[NR], ms, o, grew}' | tee -a "$OUT/coldrange.txt"
  [ "$ok" = 20 ] || failed "$name answered $ok/20 cold ranges correctly"
}

# ---- 6. memory per cached object -----------------------------------------------------------------
fill() { # TARGET DIR: N distinct 16k keys, twice (stored, then hit); growth of RSS and of the cache dir on tmpfs
  local name=$1 dir=$2 cfg r0 r1 d0 d1 i
  cfg=$BENCH_DIR/tmp/fill.curl
  for i in $(seq "$N"); do printf 'url = "http://127.0.0.1:%s/obj/16k.bin?k=%d"\noutput = "/dev/null"\n' "${PORT[$name]}" "$i"; done > "$cfg"
  r0=$(tree_rss_kib "${ROOTPID[$name]}"); d0=$(du -sk "$dir" | cut -f1)
  curl -s -K "$cfg"; curl -s -K "$cfg"
  sleep 1
  r1=$(tree_rss_kib "${ROOTPID[$name]}"); d1=$(du -sk "$dir" | cut -f1)
  awk -v n="$name" -v N="$N" -v r0="$r0" -v r1="$r1" -v d0="$d0" -v d1="$d1" 'BEGIN{ r = (r1 - r0) * 1024 / N; d = (d1 - d0) * 1024 / N;
    printf "  %-10s %8.1f %8.1f %9.0f %+6.0f%% %10.1f %9.0f %+6.0f%%\n", n, r0/1024, r1/1024, r, 100*(r - 16384)/16384,
      (d1 - d0)/1024, d, 100*(d - 16384)/16384 }' | tee -a "$OUT/memory.txt"
}

if [[ " $TESTS " == *" collapse "* ]]; then
  { echo; echo "== collapse: 100 concurrent requests for one new key (origin ~1 s per response), under a 64-connection hit load"; } | tee -a "$OUT/collapse.txt"
  for n in nginx edge; do collapse "$n"; done
fi
if [[ " $TESTS " == *" memory "* ]]; then
  { echo; echo "== memory: $N distinct 16k objects, each requested twice; RSS growth of the serving processes"; } | tee -a "$OUT/memory.txt"
  printf "  %-10s %8s %8s %9s %7s %10s %9s %7s\n" target rss0_MiB rss1_MiB RSS_B/obj over% tmpfs_MiB tmpfs_B/obj over% | tee -a "$OUT/memory.txt"
  fill nginx "$BENCH_DIR/nginx-cache"; fill edge "$BENCH_DIR/edge-disk"
  { echo "  over% = per-object growth above the 16384-byte payload. tmpfs = growth of the cache directory (RAM, but not RSS):"
    echo "  nginx keeps bodies in files there, so its RSS growth is only the keys zone and metadata; edge holds bodies in"
    echo "  its memory tier (RSS) and writes them to its disk tier (tmpfs) as well."
    echo "  edge's own count: memory tier $(metric edge 'edge_cache_entries{tier="memory"}') entries, $(metric edge 'edge_cache_bytes{tier="memory"}') bytes"
  } | tee -a "$OUT/memory.txt"
fi
# After the memory check, so that what it leaves allocated does not change that baseline.
if [[ " $TESTS " == *" coldrange "* ]]; then
  { echo; echo "== coldrange: 20 concurrent requests for the first MiB (Range) of one new 32 MiB key (origin at 8 MB/s)"; } | tee -a "$OUT/coldrange.txt"
  for n in nginx edge; do coldrange "$n"; done
fi

# ---- 7. one object at a time: a first hit, revalidations, a restart --------------------------------
# Each on a new key of the 32 MiB object, which edge keeps on disk only (over
# cache.memory.max_object_size): the path of video and download objects.
restart() { # NAME: TERM the target, wait for it to end, start it again with the same command
  local name=$1 pid=${ROOTPID[$1]} i p keep=()
  kill "$pid" 2>/dev/null
  for i in $(seq 100); do running "$pid" || break; sleep 0.1; done
  running "$pid" && die "$name did not stop within 10 s"
  wait "$pid" 2>/dev/null
  for p in "${STARTED[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done; STARTED=("${keep[@]}")
  eval "start $name ${COMMAND[$name]}" > /dev/null
}
fetch() { # URL: one GET; prints "code size first_byte_ms total_ms ok", ok = 1 if the body is the 32 MiB object
  local line
  line=$(curl -s --max-time 60 -o "$BENCH_DIR/tmp/probe.body" -w '%{http_code} %{size_download} %{time_starttransfer} %{time_total}' "$1")
  echo "$line $(cmp -s "$BENCH_DIR/tmp/probe.body" "$BENCH_DIR/www/obj/32m.bin" && echo 1 || echo 0)" |
    awk '{printf "%s %s %.1f %.1f %s\n", $1, $2, $3 * 1000, $4 * 1000, $5}'
  rm -f "$BENCH_DIR/tmp/probe.body"
}

# A new key fetched three times: the miss, its first hit (1 s later, so that the stored copy has
# landed) and a later one. edge's first read of a body file it wrote itself skips the hash it
# gives a file found at start-up.
firsthit() { # TARGET
  local name=$1 url o1 miss first later
  url="http://127.0.0.1:${PORT[$name]}/obj/32m.bin?firsthit=$name-$RANDOM$RANDOM"
  o1=$(origin_count)
  miss=$(fetch "$url"); sleep 1; first=$(fetch "$url"); later=$(fetch "$url")
  echo "$miss $first $later $(( $(origin_count) - o1 - 1 ))" | awk -v n="$name" '{
    printf "  %-10s miss %6.1f ms first byte, %7.1f ms all; first hit %6.1f / %7.1f ms; later hit %6.1f / %7.1f ms; %d origin request(s)\n",
      n, $3, $4, $8, $9, $13, $14, $16 }' | tee -a "$OUT/probes.txt"
  for r in "$miss" "$first" "$later"; do
    case $r in "200 33554432 "*" 1") ;; *) failed "$name firsthit got '$r' from $url" ;; esac
  done
}

# A key with max-age=1 stored, then fetched 8 times, each once it has gone stale: 8 revalidations
# the origin answers with 304. Time per revalidating request (which also sends the 32 MiB), the
# origin's answers for that key (from its log) and the peak growth of the server's resident memory.
refresh() { # TARGET
  local name=$1 key url r0 peak r i c p line times=() ok=0
  key=$name-$RANDOM$RANDOM; url="http://127.0.0.1:${PORT[$name]}/short/32m.bin?refresh=$key"
  fetch "$url" > /dev/null
  r0=$(tree_rss_kib "${ROOTPID[$name]}"); peak=$r0
  for i in $(seq 8); do
    sleep 1.2
    fetch "$url" > "$BENCH_DIR/tmp/refresh.line" & p=$!; STARTED+=("$p")
    while kill -0 "$p" 2>/dev/null; do
      r=$(tree_rss_kib "${ROOTPID[$name]}"); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.02
    done
    wait "$p"; unset 'STARTED[-1]'
    line=$(cat "$BENCH_DIR/tmp/refresh.line"); times+=("$line")
    case $line in "200 33554432 "*" 1") ok=$((ok + 1)) ;; esac
  done
  sleep 0.2
  c=$(grep "refresh=$key" "$BENCH_DIR/logs/origin-short.log" | awk '{print $9}' | sort | uniq -c | awk '{printf "%s%d x %s", sep, $1, $2; sep=", "}')
  printf '%s\n' "${times[@]}" | awk '{print $4}' | sort -n | awk -v n="$name" -v ok="$ok" -v c="$c" -v grew="$(( (peak - r0) / 1024 ))" '
    {t[NR] = $1} END {printf "  %-10s %d/8 200 with the right bytes; each revalidating request median %6.1f ms, max %6.1f; origin answered %s; RSS peak +%d MiB\n",
      n, ok, t[int(NR / 2) + 1], t[NR], c, grew}' | tee -a "$OUT/probes.txt"
  [ "$ok" = 8 ] || failed "$name answered $ok/8 refresh requests correctly"
}

# A key stored, the server restarted (edge flushes its disk tier and opens it again; nginx finds
# its cache files), then 50 concurrent requests for it: how soon each starts and ends, whether
# each is the whole object, the origin requests (none wanted) and the server's CPU time meanwhile.
restart_herd() { # TARGET
  local name=$1 url i t0 ms cpu0 cpu1 o1 ok jobs=()
  url="http://127.0.0.1:${PORT[$name]}/obj/32m.bin?restart=$name-$RANDOM$RANDOM"
  fetch "$url" > /dev/null; sleep 1
  restart "$name"
  : > "$BENCH_DIR/tmp/herd.times"; : > "$BENCH_DIR/tmp/herd.ok"
  o1=$(origin_count); cpu0=$(tree_cpu_ticks "${ROOTPID[$name]}")
  t0=$(date +%s%N)
  for i in $(seq 50); do
    ( "${GEN_PIN[@]}" curl -s --max-time 60 -w '%{stderr}%{http_code} %{size_download} %{time_starttransfer} %{time_total}\n' "$url" |
        cmp -s - "$BENCH_DIR/www/obj/32m.bin" && echo 1 >> "$BENCH_DIR/tmp/herd.ok" ) 2>> "$BENCH_DIR/tmp/herd.times" &
    jobs+=($!)
  done
  STARTED+=("${jobs[@]}")
  wait "${jobs[@]}"; STARTED=("${STARTED[@]:0:${#STARTED[@]}-50}")
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  cpu1=$(tree_cpu_ticks "${ROOTPID[$name]}")
  ok=$(wc -l < "$BENCH_DIR/tmp/herd.ok")   # each one's body was the object's bytes
  sort -k3 -n "$BENCH_DIR/tmp/herd.times" | awk -v n="$name" -v ok="$ok" -v ms="$ms" -v o="$(( $(origin_count) - o1 - 1 ))" \
      -v cpu="$(( (cpu1 - cpu0) * 1000 / CLK_TCK ))" '
    {first[NR] = $3} END {printf "  %-10s %2d/50 200 with the right bytes; first byte median %6.0f ms, max %6.0f; all done in %5d ms; %d origin request(s); server CPU %d ms\n",
      n, ok, 1000 * first[int(NR / 2) + 1], 1000 * first[NR], ms, o, cpu}' | tee -a "$OUT/probes.txt"
  [ "$ok" = 50 ] || failed "$name answered $ok/50 requests after its restart correctly"
}

# While 20 connections download the 32 MiB object flat out, one connection's 1 KiB hits: the
# latency of small objects beside large ones. A server that sends one download until its socket
# buffers fill makes every other request wait that long.
mixed() { # TARGET
  local name=$1 big small line p50 p99 max rps kv
  big="http://127.0.0.1:${PORT[$name]}/obj/32m.bin"; small="http://127.0.0.1:${PORT[$name]}/obj/1k.bin"
  curl -s -o /dev/null "$big"; curl -s -o /dev/null "$small"
  "${GEN_PIN[@]}" wrk -t1 -c20 -d6s --timeout 30s -s "$HERE/report.lua" "$big" > "$OUT/raw/mixed-big-$name.txt" 2>&1 &
  local p=$!; STARTED+=("$p")
  sleep 1
  gen wrk -t1 -c1 -d4s --latency -s "$HERE/report.lua" "$small" > "$OUT/raw/mixed-small-$name.txt" 2>&1
  wait "$p"; unset 'STARTED[-1]'
  line=$(sed -n 's/^WRKRESULT //p' "$OUT/raw/mixed-small-$name.txt")
  for kv in $line; do case ${kv%%=*} in p50|p99|max) printf -v "${kv%%=*}" '%s' "${kv#*=}" ;; esac; done
  rps=$(sed -n 's/^WRKRESULT //p' "$OUT/raw/mixed-big-$name.txt" | tr ' ' '\n' |
        awk -F= '$1=="requests"{r=$2} $1=="duration_us"{d=$2} END{if (d > 0) printf "%.1f", r / (d / 1e6)}')
  [ -n "$line" ] && [ -n "$rps" ] || { failed "$name: wrk failed in mixed, see $OUT/raw/mixed-*-$name.txt"; return; }
  awk -v n="$name" -v p50="$p50" -v p99="$p99" -v max="$max" -v rps="$rps" 'BEGIN {
    printf "  %-10s 1 KiB hits p50 %7.3f ms, p99 %7.3f ms, max %7.3f ms; beside them %5.1f downloads/s of 32 MiB\n",
      n, p50 / 1000, p99 / 1000, max / 1000, rps }' | tee -a "$OUT/probes.txt"
}

for test in firsthit refresh restart mixed; do
  [[ " $TESTS " == *" $test "* ]] || continue
  case $test in
    firsthit) { echo; echo "== firsthit: a new 32 MiB key: the miss, its first hit 1 s later, a later hit (first byte / all)"; } | tee -a "$OUT/probes.txt"
              for n in nginx edge; do firsthit "$n"; done ;;
    refresh)  { echo; echo "== refresh: a 32 MiB key with max-age=1, fetched 8 times, each after it went stale (origin: 304)"; } | tee -a "$OUT/probes.txt"
              for n in nginx edge; do refresh "$n"; done ;;
    restart)  { echo; echo "== restart: a 32 MiB key stored, the server restarted, then 50 concurrent requests for it"; } | tee -a "$OUT/probes.txt"
              for n in nginx edge; do restart_herd "$n"; done ;;
    mixed)    { echo; echo "== mixed: 1 KiB hits on one connection while 20 others download the 32 MiB object"; } | tee -a "$OUT/probes.txt"
              for n in nginx edge; do mixed "$n"; done ;;
  esac
done

# ---- 8. report -----------------------------------------------------------------------------------
report() { # medians over the rounds of each row (and, with ROUNDS > 1, the range of req/s and of the ratios)
  awk -F'\t' -v dur="$DUR" -v rounds="$ROUNDS" '
    NR == 1 { next }
    { cell = $1 " " $2; if (!(cell in seen)) { seen[cell] = 1; cells[++nc] = cell; conns[cell] = $4 }
      key = cell SUBSEP $3
      if (!(key in n)) { order[cell] = order[cell] " " $3; n[key] = 0 }
      if ($13 != "-") note[key] = note[key] " " $13
      if ($13 ~ /^FAILED/) next                                # no measurement: not in the medians
      i = ++n[key]; rps[key, i] = $5; p50[key, i] = $6; p99[key, i] = $7; rnd[key, i] = $14; cpu[key, i] = $15; gen[key, i] = $16
      orig[key] = $11; served[key] = $12 }
    function median(arr, key, m,   i, j, t, v) {   # of arr[key, 1..m]
      for (i = 1; i <= m; i++) v[i] = arr[key, i] + 0
      for (i = 2; i <= m; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
      return (m % 2) ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2 }
    function ratio(a, b) { return (a > 0 && b > 0) ? sprintf("%.2f", a / b) : "-" }
    function med(arr, cell, t) { return ((cell SUBSEP t) in n) ? median(arr, cell SUBSEP t, n[cell SUBSEP t]) : 0 }
    function spread(a, b, cell,   i, j, lo, hi, r, m) {   # range of the ratios a/b of the rounds both measured
      if (rounds == 1) return ""
      for (i = 1; i <= n[cell SUBSEP a]; i++) for (j = 1; j <= n[cell SUBSEP b]; j++) {
        if (rnd[cell SUBSEP a, i] != rnd[cell SUBSEP b, j] || rps[cell SUBSEP b, j] <= 0) continue
        r = rps[cell SUBSEP a, i] / rps[cell SUBSEP b, j]; m++
        if (lo == "" || r < lo) lo = r; if (hi == "" || r > hi) hi = r }
      return (m < 2) ? "" : sprintf(" (rounds %.2f-%.2f)", lo, hi) }
    function us(x) { return (x > 0) ? sprintf("%.1f", x) : "-" }
    function pct(x) { return (x > 0) ? sprintf("%d%%", x) : "-" }
    function k(x) { return (x == "" || x == 0) ? "-" : (x >= 10000) ? sprintf("%.0fk", x / 1000) : (x >= 1000) ? sprintf("%.1fk", x / 1000) : x }
    END {
      print "\n== results (wrk -c64 or -c1, or oha -c64 at a fixed rate for the rate rows, for " dur ", p50/p99 in ms; " ((rounds > 1) ? "medians of " rounds " rounds; " : "") "origin_reqs during the measured run; served = the cache'"'"'s Cache-Status / X-Cache)"
      for (i = 1; i <= nc; i++) { c = cells[i]
        printf "\n%s  (%d connection%s)\n  %-10s %9s %9s %9s  %11s  %10s %8s  %-22s %s\n", c, conns[c], (conns[c] > 1) ? "s" : "", "target", "req/s", "p50", "p99", "origin_reqs", "cpu_us/req", "wrk_core", "served", "note"
        split(substr(order[c], 2), ts, " ")
        for (j = 1; j in ts; j++) { t = ts[j]; key = c SUBSEP t
          printf "  %-10s %9.0f %9.3f %9.3f  %11s  %10s %8s  %-22s %s\n", t, med(rps, c, t), med(p50, c, t) / 1000, med(p99, c, t) / 1000, orig[key], us(med(cpu, c, t)), pct(med(gen, c, t)), served[key], note[key] }
        printf "  -> edge/nginx req/s x%s%s, p99 x%s, server CPU per request x%s", ratio(med(rps, c, "edge"), med(rps, c, "nginx")), spread("edge", "nginx", c), ratio(med(p99, c, "edge"), med(p99, c, "nginx")), ratio(med(cpu, c, "edge"), med(cpu, c, "nginx"))
        if ((c SUBSEP "edge_disk") in n) printf ";  edge_disk/edge req/s x%s, p99 x%s", ratio(med(rps, c, "edge_disk"), med(rps, c, "edge")), ratio(med(p99, c, "edge_disk"), med(p99, c, "edge"))
        if ((c SUBSEP "floor") in n) printf ";  floor/nginx req/s x%s%s, edge/floor x%s%s", ratio(med(rps, c, "floor"), med(rps, c, "nginx")), spread("floor", "nginx", c), ratio(med(rps, c, "edge"), med(rps, c, "floor")), spread("edge", "floor", c)
        if ((c SUBSEP "edge_b") in n) printf ";  edge_b/edge req/s x%s%s, p99 x%s", ratio(med(rps, c, "edge_b"), med(rps, c, "edge")), spread("edge_b", "edge", c), ratio(med(p99, c, "edge_b"), med(p99, c, "edge"))
        printf "\n" }
      print "\n== summary: req/s; ratios of req/s (higher = first is faster) and of p99 (higher = first is slower)" ((rounds > 1) ? ", medians of " rounds " rounds" : "")
      printf "%-10s %8s %8s %8s %9s | %10s %10s %10s | %10s %10s | %10s %8s\n", "test", "ceiling", "nginx", "edge", "edge_disk",
             "edge/nginx", "p99 e/n", "cpu/req e/n", "disk/edge", "p99 d/e", "edge/ceil", "wrk_core"
      for (i = 1; i <= nc; i++) { c = cells[i]
        printf "%-10s %8s %8s %8s %9s | %10s %10s %10s | %10s %10s | %10s %8s\n", c, k(med(rps, c, "ceiling")), k(med(rps, c, "nginx")), k(med(rps, c, "edge")), k(med(rps, c, "edge_disk")),
          ratio(med(rps, c, "edge"), med(rps, c, "nginx")), ratio(med(p99, c, "edge"), med(p99, c, "nginx")), ratio(med(cpu, c, "edge"), med(cpu, c, "nginx")),
          ratio(med(rps, c, "edge_disk"), med(rps, c, "edge")), ratio(med(p99, c, "edge_disk"), med(p99, c, "edge")), ratio(med(rps, c, "edge"), med(rps, c, "ceiling")), pct(med(gen, c, "edge")) }
      for (i = 1; i <= nc; i++) { c = cells[i]; if ((c SUBSEP "floor") in n)
        printf "%-10s floor (hyper alone) %s req/s: floor/nginx %s, edge/floor %s\n", c, k(med(rps, c, "floor")),
          ratio(med(rps, c, "floor"), med(rps, c, "nginx")), ratio(med(rps, c, "edge"), med(rps, c, "floor")) }
      for (i = 1; i <= nc; i++) { c = cells[i]; if ((c SUBSEP "edge_b") in n)
        printf "%-10s edge_b %s req/s: edge_b/edge %s%s, edge_b/nginx %s, p99 edge_b/edge %s\n", c, k(med(rps, c, "edge_b")),
          ratio(med(rps, c, "edge_b"), med(rps, c, "edge")), spread("edge_b", "edge", c), ratio(med(rps, c, "edge_b"), med(rps, c, "nginx")),
          ratio(med(p99, c, "edge_b"), med(p99, c, "edge")) }
    }' "$TSV"
}
[ "$(wc -l < "$TSV")" -gt 1 ] && report | tee "$OUT/report.txt"
cat "$OUT/collapse.txt" "$OUT/memory.txt" "$OUT/coldrange.txt" "$OUT/probes.txt" >> "$OUT/report.txt" 2>/dev/null
echo
echo "results: $OUT (report.txt, results.tsv, run.log, raw/ wrk output and response headers, the configs used)"
[ "$FAILED" = 0 ] || die "$FAILED check(s) FAILED: see the !!! lines above"

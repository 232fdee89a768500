#!/usr/bin/env bash
# The release build of edge that the Docker image ships: profile-guided (PGO). It runs ~20% fewer
# instructions per request than a plain `cargo build --release` (README, Performance).
#
#   bash scripts/pgo-build.sh          prints the binary's path: target/pgo/release/edge
#
# 1. builds edge instrumented (target/pgo-gen);
# 2. starts an nginx origin on 127.0.0.1 serving 1 KiB / 16 KiB / 256 KiB objects, cacheable
#    under /obj/ and no-store under /nostore/ (bench/nginx-origin.conf.in);
# 3. runs the instrumented edge in front of it under wrk -c64 for DUR on each path, first with a
#    1 GiB memory tier (memory hits, pass-through), then with a 1 KiB one (disk-tier hits), plus
#    misses, and stops it cleanly so that it writes its profile;
# 4. merges the profile with rustup's llvm-profdata (component llvm-tools, added if missing: it
#    must read the format of rustc's own LLVM);
# 5. builds edge again with the profile into target/pgo.
#
# Installs nginx, wrk and curl from Debian if they are missing. Everything it starts is stopped on
# exit. Env: DUR=3s  PORT=19340 (uses PORT .. PORT+3)
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin
DUR=${DUR:-3s}; PORT=${PORT:-19340}; ADMIN=$((PORT + 1)); ORIGIN_PORT=$((PORT + 2)); STATUS_PORT=$((PORT + 3))
ORIGIN=http://127.0.0.1:$ORIGIN_PORT
WORK=$REPO/target/pgo-work
PATHS="/obj/1k.bin /obj/16k.bin /obj/256k.bin /nostore/1k.bin"
die() { echo "pgo-build.sh: $*" >&2; exit 1; }
say() { echo "pgo-build.sh: $*" >&2; }

. "$REPO/bench/common.sh"
debian_install nginx:nginx wrk:wrk curl:curl >&2 || die "apt-get install failed"
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
if [ ! -x "$PROFDATA" ]; then
  rustup component add llvm-tools >&2 || die "rustup component add llvm-tools failed"
fi
[ -x "$PROFDATA" ] || die "$PROFDATA not found"
for p in "$PORT" "$ADMIN" "$ORIGIN_PORT" "$STATUS_PORT"; do
  (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p is in use (set PORT)"
done

rm -rf "$WORK"; mkdir -p "$WORK"/{profiles,logs,tmp,www/obj} || die "cannot create $WORK"
say "instrumented build (target/pgo-gen)"
(cd "$REPO" && RUSTFLAGS="-Cprofile-generate=$WORK/profiles" CARGO_TARGET_DIR=target/pgo-gen \
  cargo build --release --locked >&2) || die "instrumented build failed"
rm -rf "$WORK/profiles"/*                    # profiles of build scripts, not of edge

head -c 1024 /dev/urandom > "$WORK/www/obj/1k.bin"
head -c 16384 /dev/urandom > "$WORK/www/obj/16k.bin"
head -c 262144 /dev/urandom > "$WORK/www/obj/256k.bin"
sed -e "s|@RUN@|$WORK|g" -e "s|@ORIGIN_PORT@|$ORIGIN_PORT|g" -e "s|@STATUS_PORT@|$STATUS_PORT|g" \
  "$REPO/bench/nginx-origin.conf.in" > "$WORK/origin.conf"
NGINX="" EDGE=""
trap '[ -n "$EDGE" ] && kill "$EDGE" 2>/dev/null; [ -n "$NGINX" ] && kill "$NGINX" 2>/dev/null; wait' EXIT
nginx -p "$WORK" -g "daemon off;" -c "$WORK/origin.conf" > "$WORK/logs/origin.out" 2>&1 &
NGINX=$!
for _ in $(seq 50); do curl -s -o /dev/null --max-time 1 "$ORIGIN/" && break; sleep 0.1; done
curl -s -o /dev/null --max-time 1 "$ORIGIN/" || die "the nginx origin did not start (see $WORK/logs)"

train() { # MEMORY: the instrumented edge with that memory tier, through every path, then stopped
  local memory=$1 path i
  rm -rf "$WORK/disk"
  edge_yaml "$PORT" "$ADMIN" "$ORIGIN" "$memory" "$WORK/disk" > "$WORK/edge.yaml"
  "$REPO/target/pgo-gen/release/edge" --config "$WORK/edge.yaml" > "$WORK/logs/edge.out" 2>&1 &
  EDGE=$!
  for _ in $(seq 50); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$ADMIN/healthz" && break; sleep 0.2; done
  curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$ADMIN/healthz" || die "edge did not start (see $WORK/logs/edge.out)"
  for path in $PATHS; do
    curl -s -o /dev/null "http://127.0.0.1:$PORT$path"
    wrk -t1 -c64 -d"$DUR" "http://127.0.0.1:$PORT$path" |
      awk -v m="$memory" -v p="$path" '/Requests\/sec/{printf "pgo-build.sh: trained: memory %-5s %-16s %s req/s\n", m, p, $2}' >&2
  done
  for i in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$PORT/obj/1k.bin?miss=$i"; done
  kill -TERM "$EDGE"; wait "$EDGE" || die "edge did not exit cleanly (see $WORK/logs/edge.out)"
  EDGE=""
}
train 1GiB
train 1KiB
kill "$NGINX"; wait "$NGINX"; NGINX=""
ls "$WORK/profiles"/*.profraw >/dev/null 2>&1 || die "the instrumented edge wrote no profile"
"$PROFDATA" merge -o "$WORK/edge.profdata" "$WORK/profiles"/*.profraw >&2 || die "llvm-profdata merge failed"

say "build with the profile (target/pgo)"
(cd "$REPO" && RUSTFLAGS="-Cprofile-use=$WORK/edge.profdata" CARGO_TARGET_DIR=target/pgo \
  cargo build --release --locked >&2) || die "build with the profile failed"
echo "$REPO/target/pgo/release/edge"

# Sourced by bench/ab.sh, bench/callgrind.sh, bench/run.sh and scripts/pgo-build.sh.

# debian_install COMMAND:PACKAGE...: installs from Debian the packages of the commands not on PATH.
debian_install() {
  local need=() pair
  for pair in "$@"; do command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}"); done
  [ ${#need[@]} -gt 0 ] || return 0
  echo "installing ${need[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${need[@]}" ||
    { apt-get update && apt-get install -y --no-install-recommends "${need[@]}"; }
}

# edge_yaml PORT ADMIN_PORT ORIGIN_URL MEMORY DISK_PATH: an edge.yaml for one measured instance on
# 127.0.0.1, logging warnings only and no access log.
edge_yaml() {
  cat <<EOF
listen: 127.0.0.1:$1
origin:
  url: $3
cache:
  memory:
    capacity: $4
  disk:
    path: $5
admin:
  listen: 127.0.0.1:$2
log:
  filter: warn
  access: false
EOF
}

# port_open PORT: something on 127.0.0.1 accepts connections on PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# origin_objects DIR: the origin's objects, random bytes: DIR/{1k,16k,256k,1m,32m}.bin.
origin_objects() {
  local s
  for s in 1k:1024 16k:16384 256k:262144 1m:1048576 32m:33554432; do
    head -c "${s#*:}" /dev/urandom > "$1/${s%%:*}.bin" || return 1
  done
}

# Sourced by bench/callgrind.sh, bench/run.sh and scripts/pgo-build.sh.

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

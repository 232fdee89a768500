#!/usr/bin/env bash
# Builds edge's container image from this checkout, with no container registry:
#
#   bash scripts/docker-image.sh [TAG]        (TAG defaults to edge)
#
# It builds edge as the Dockerfile does (scripts/pgo-build.sh, which installs nginx and wrk from
# Debian and rustup's llvm-tools if missing) and packs target/pgo/release/edge with the shared
# libraries it needs (from ldd) into a FROM scratch image laid out like the Dockerfile's:
# non-root 65532:65532, /etc/edge/edge.yaml from docker/edge.yaml, the volume /var/cache/edge as
# the working directory, EXPOSE 8080 9090, a HEALTHCHECK with `edge health` every
# HEALTH_INTERVAL (15s). It needs a Docker engine (no buildx plugin: the legacy builder is used),
# cargo and ldd. The Dockerfile itself needs its two base images from a registry.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:-edge}
interval=${HEALTH_INTERVAL:-15s}
say() { printf 'docker-image: %s\n' "$*" >&2; }
fail() {
  printf 'docker-image: FAILED: %s\n' "$*" >&2
  exit 1
}

for tool in docker cargo ldd timeout; do
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

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

say "scripts/pgo-build.sh (the Dockerfile's build: instrumented, trained, built again)"
binary="$(bash scripts/pgo-build.sh 2>"$work/pgo-build.log")" || {
  tail -n 40 "$work/pgo-build.log" >&2
  fail "scripts/pgo-build.sh failed"
}
grep '^pgo-build.sh: trained:' "$work/pgo-build.log" | sed 's/^pgo-build.sh: /docker-image: /' >&2 ||
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
# A /tmp for `request_buffering`'s temporary files (as the Dockerfile's Debian base has).
mkdir -p "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"

cat >"$work/context/Dockerfile" <<EOF
# Written by scripts/docker-image.sh: the Dockerfile's runtime layout, from a local binary.
FROM scratch
COPY rootfs/ /
COPY --chown=65532:65532 cache/ /var/cache/edge/
USER 65532:65532
VOLUME /var/cache/edge
WORKDIR /var/cache/edge
EXPOSE 8080 9090
HEALTHCHECK --interval=$interval --timeout=5s --start-period=10s --retries=3 \\
    CMD ["/usr/local/bin/edge", "health", "--config", "/etc/edge/edge.yaml"]
ENTRYPOINT ["/usr/local/bin/edge"]
CMD ["--config", "/etc/edge/edge.yaml"]
EOF

say "docker build (FROM scratch: edge + ${#libs[@]} libraries; $builder) -> $tag"
build_log="$(docker build "${build_flags[@]}" -t "$tag" "$work/context" 2>&1)" || {
  printf '%s\n' "$build_log" >&2
  fail "docker build failed"
}
say "built $tag"

# edge as a container image: a profile-guided build in the official Rust image, run on Debian slim.
# Its base images come from a registry; without one, scripts/docker-image.sh builds the same
# layout FROM scratch around a local build.
#
#   docker build -t edge .
#   docker run -d --name edge --stop-timeout 35 -p 8080:8080 -p 127.0.0.1:9090:9090 \
#     -v edge-cache:/var/cache/edge -v ./my-edge.yaml:/etc/edge/edge.yaml:ro edge
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts below.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY benches benches
COPY src src
COPY scripts/pgo-build.sh scripts/
COPY bench/common.sh bench/nginx-origin.conf.in bench/
# A profile-guided build (scripts/pgo-build.sh): edge is built instrumented, run for ~30 s in front
# of a local nginx origin under wrk (both from Debian, installed in this stage only), and built
# again with that profile: ~20% fewer instructions per request than `cargo build --release`.
# The cargo registry and target/ persist between builds in BuildKit cache mounts, so a source
# change recompiles edge only; the binary is copied out of the mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    bash scripts/pgo-build.sh \
    && install -m 0755 target/pgo/release/edge /usr/local/bin/edge

FROM debian:bookworm-slim
# A fixed numeric user, so that runAsNonRoot-style checks can verify it without /etc/passwd.
RUN groupadd --system --gid 65532 edge \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin edge \
    && install -d -o 65532 -g 65532 -m 0750 /var/cache/edge
COPY --from=build /usr/local/bin/edge /usr/local/bin/edge
COPY docker/edge.yaml /etc/edge/edge.yaml
USER 65532:65532
# The disk tier; a named volume keeps it across container restarts and upgrades.
VOLUME /var/cache/edge
# The working directory, so that a config without cache.disk.path keeps its disk tier
# (./var/edge by default) in the volume.
WORKDIR /var/cache/edge
# Client traffic, admin API (publish the admin port on 127.0.0.1 only).
EXPOSE 8080 9090
# `edge health` asks the admin listener for /healthz (0.0.0.0 means loopback): no curl needed.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/edge", "health", "--config", "/etc/edge/edge.yaml"]
ENTRYPOINT ["/usr/local/bin/edge"]
CMD ["--config", "/etc/edge/edge.yaml"]

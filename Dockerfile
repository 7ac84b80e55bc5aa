# syntax=docker/dockerfile:1
# tts-worker's production image: the stripped, LTO-built worker on
# distroless/static (CA certificates, tzdata, a nonroot user; no shell, no
# package manager) plus exactly the shared libraries the binary links (glibc,
# libm, libgcc_s: ~3 MiB, copied by what `ldd` names). No simulator.
# Expected size ≈ 2 MiB base + 3 MiB libraries + 17 MiB binary ≈ 22 MiB.
# Build from the repository root:
#
#   docker build -t tts-worker .
#   docker build --target simulator -t tts-worker-sim .   # the Segmind simulator, for deploy/compose
#
# Dependencies build in their own layer from the manifests alone, so a source
# change rebuilds only the project's own crates.

FROM rust:1.95-bookworm AS deps
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# cmake builds the Opus encoder's bundled libopus (crate `opus`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake=3.25.1-1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY segmind-sim/Cargo.toml segmind-sim/Cargo.toml
COPY true-peak true-peak
# Stand-in sources: enough for cargo to resolve and build every dependency.
RUN mkdir -p src benches segmind-sim/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs segmind-sim/src/lib.rs \
 && echo 'fn main() {}' > benches/fleet.rs \
 && echo 'fn main() {}' > segmind-sim/src/main.rs \
 && cargo build --locked --profile image -p tts-worker --bin tts-worker

FROM deps AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY config config
COPY src src
COPY segmind-sim segmind-sim
# Touch the real sources so cargo does not trust the stand-ins' timestamps.
RUN touch src/main.rs src/lib.rs segmind-sim/src/lib.rs segmind-sim/src/main.rs \
 && cargo build --locked --profile image -p tts-worker --bin tts-worker \
 && mkdir -p /out/usr/local/bin \
 && cp target/image/tts-worker /out/usr/local/bin/ \
 && ldd target/image/tts-worker | grep -o '/[^ ]*' | xargs -I{} cp --parents -L {} /out

# The simulator's dependencies in their own cached layer, so that building
# the production image (the default target) never compiles them.
FROM deps AS simulator-deps
RUN cargo build --locked --release -p segmind-sim

FROM simulator-deps AS simulator-build
COPY segmind-sim segmind-sim
RUN touch segmind-sim/src/lib.rs segmind-sim/src/main.rs \
 && cargo build --locked --release -p segmind-sim

# The simulator (tests, demo, deploy/compose only; never in production).
FROM gcr.io/distroless/cc-debian12:nonroot AS simulator
COPY --from=simulator-build /src/target/release/segmind-sim /usr/local/bin/segmind-sim
EXPOSE 8090
ENTRYPOINT ["/usr/local/bin/segmind-sim"]

FROM gcr.io/distroless/static-debian12:nonroot AS runtime
COPY --from=build /out/ /
USER 65532:65532
EXPOSE 9090
ENV TTS__TELEMETRY__LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/tts-worker"]
CMD ["run"]

# Build: docker build -t tts-worker .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY config config
COPY src src
# A workspace member (the Segmind simulator, a dev-dependency): cargo needs its
# manifest to resolve the workspace; it is not built into the image.
COPY segmind-sim segmind-sim
RUN cargo build --release --locked -p tts-worker --bin tts-worker

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home tts
COPY --from=build /src/target/release/tts-worker /usr/local/bin/tts-worker
USER 10001
EXPOSE 9090
ENV TTS__TELEMETRY__LOG_FORMAT=json
ENTRYPOINT ["tts-worker"]
CMD ["run"]

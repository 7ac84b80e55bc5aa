# Build: docker build -t tts-worker .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY config config
COPY src src
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home tts
COPY --from=build /src/target/release/tts-worker /usr/local/bin/tts-worker
COPY --from=build /src/target/release/segmind-sim /usr/local/bin/segmind-sim
USER 10001
EXPOSE 9090
ENV TTS__TELEMETRY__LOG_FORMAT=json
ENTRYPOINT ["tts-worker"]
CMD ["run"]

# pullthrough: build stage, then a slim runtime with curl for health checks.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin pullthrough

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/pullthrough /usr/local/bin/pullthrough
EXPOSE 5000
VOLUME /var/cache/pullthrough
ENV PULLTHROUGH_DATA_DIR=/var/cache/pullthrough
HEALTHCHECK CMD curl -fsS http://127.0.0.1:5000/healthz || exit 1
ENTRYPOINT ["pullthrough"]
CMD ["serve"]

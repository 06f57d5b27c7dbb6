# syntax=docker/dockerfile:1
# Build: docker build -t troupe .
# Run:   docker run -p 8317:8317 troupe      (serves the demo pool)

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock clippy.toml build.rs ./
# mimalloc's page size and page headers (see the file).
COPY .cargo ./.cargo
COPY src ./src
RUN cargo build --profile dist --locked && strip target/dist/troupe

FROM debian:bookworm-slim
# TLS roots are built into the binary; ca-certificates is for private CAs an
# operator adds. Unpinned on purpose: the security updates are the point.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/troupe --create-home troupe
COPY --from=build /src/target/dist/troupe /usr/local/bin/troupe
COPY config/troupe.toml /etc/troupe/troupe.toml
# 0.0.0.0 is the container's own interface; keyless use stays the
# operator's choice of where to publish the port (README, Container).
ENV TROUPE_CONFIG=/etc/troupe/troupe.toml \
    TROUPE__SERVER__LISTEN=0.0.0.0:8317 \
    TROUPE__SERVER__ALLOW_KEYLESS_REMOTE=true \
    TROUPE__SERVER__DATA_DIR=/var/lib/troupe
USER 10001:10001
WORKDIR /var/lib/troupe
VOLUME ["/var/lib/troupe"]
EXPOSE 8317
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["troupe", "probe", "--url", "http://127.0.0.1:8317/healthz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["troupe"]
CMD ["serve"]

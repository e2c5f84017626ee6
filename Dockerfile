# Multi-stage build: compile in the Rust image, run as a non-root user in a slim image.
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: it is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every edit of src/. Every target the manifest names (the library,
# the binary, the bench) gets an empty stand-in for this step.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/hot_path.rs \
 && cargo build --release --locked --bin tokengate \
 && rm -rf src benches
COPY src ./src
COPY benches ./benches
COPY config ./config
# The stand-ins' build outputs are older than the real sources: touch so cargo rebuilds ours.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin tokengate

FROM debian:bookworm-slim
# ca-certificates: https:// upstreams and webhook endpoints are verified against the system's
# roots. curl: the HEALTHCHECK below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /var/lib/tokengate --create-home tokengate \
 && mkdir -p /var/lib/tokengate/data \
 && chown tokengate:tokengate /var/lib/tokengate/data \
 && chmod 0700 /var/lib/tokengate/data
COPY --from=build /src/target/release/tokengate /usr/local/bin/tokengate
COPY config/tokengate.toml /etc/tokengate/tokengate.toml
WORKDIR /var/lib/tokengate
USER tokengate
# State (SQLite database, generated admin key) lives in /var/lib/tokengate/data, created above
# and owned by the tokengate user, so that a new named volume mounted there starts out with
# that owner and mode; mount your own config at /etc/tokengate/tokengate.toml.
VOLUME ["/var/lib/tokengate/data"]
# Inside a container the listeners must bind beyond loopback; the admin API then needs TLS
# or an explicit opt-in (only do this on a private network).
ENV TOKENGATE_PROXY__LISTEN=0.0.0.0:8080 \
    TOKENGATE_ADMIN__LISTEN=0.0.0.0:9090 \
    TOKENGATE_ADMIN__ALLOW_PLAINTEXT=true
EXPOSE 8080 9090
# /healthz needs no admin key (with admin TLS on, point this at https:// and your CA).
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS -o /dev/null http://127.0.0.1:9090/healthz || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["tokengate", "--config", "/etc/tokengate/tokengate.toml"]
CMD ["serve"]

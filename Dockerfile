# Multi-stage build: compile in the Rust image, run as a non-root user in a slim image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY config ./config
RUN cargo build --release --locked --bin tokengate

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/tokengate --create-home tokengate
COPY --from=build /src/target/release/tokengate /usr/local/bin/tokengate
COPY config/tokengate.toml /etc/tokengate/tokengate.toml
WORKDIR /var/lib/tokengate
USER tokengate
# State (SQLite database, generated admin key) lives in /var/lib/tokengate/data;
# mount a volume there, and your own config at /etc/tokengate/tokengate.toml.
VOLUME ["/var/lib/tokengate/data"]
# Inside a container the listeners must bind beyond loopback; the admin API then needs TLS
# or an explicit opt-in (only do this on a private network).
ENV TOKENGATE_PROXY__LISTEN=0.0.0.0:8080 \
    TOKENGATE_ADMIN__LISTEN=0.0.0.0:9090 \
    TOKENGATE_ADMIN__ALLOW_PLAINTEXT=true
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["tokengate", "--config", "/etc/tokengate/tokengate.toml"]
CMD ["serve"]

# syntax=docker/dockerfile:1
# `bitnet serve` image. Build from the repository root (BuildKit):
#   docker build -t bitnet .
# Run with a model directory (or .gguf) mounted at /models/model and keys in /data:
#   docker run -p 8080:8080 -v $PWD/tests/fixtures/gqa4-bitlinear-untied:/models/model:ro \
#     -v bitnet-data:/data bitnet
# API keys are required (BITNET_AUTH=true); make the first admin key on the same volume:
#   docker run --rm -v bitnet-data:/data bitnet admin tenant create acme
#   docker run --rm -v bitnet-data:/data bitnet admin key create --tenant acme --role admin

ARG RUST_VERSION=1.95

# --- build ---------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Registry and target dir live in BuildKit caches: a source change rebuilds incrementally.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p bitnet-cli \
    && install -D -m 0755 target/release/bitnet /out/bitnet

# --- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 bitnet \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin bitnet \
    && mkdir -p /data /models \
    && chown 10001:10001 /data
COPY --from=build /out/bitnet /usr/local/bin/bitnet

# Defaults for `bitnet serve` and `bitnet admin`; flags or `docker run -e` override them.
ENV BITNET_MODEL=/models/model \
    BITNET_DATA_DIR=/data \
    BITNET_AUTH=true
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080

# No curl in the slim image: bash's /dev/tcp sends the request, the status line is checked.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /health HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["bitnet"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]

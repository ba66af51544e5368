# dicom-cache-warmer container image.
#
#   docker build -t dicom-cache-warmer:0.1.0 .
#
# Stage 1 compiles with the same command CI runs:
#   cargo build --release --locked --bin dicom-cache-warmer
# Stage 2 is distroless (glibc, libgcc, CA certificates for rediss:// and TLS
# PostgreSQL; no shell, no package manager) holding only the binary and its config.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build

# 1. Dependencies only, cached until Cargo.toml or Cargo.lock change. Placeholder
#    sources stand in for the crate (the manifest also names tests/it/main.rs; tests
#    are not built, nor is src/bin/dcw-bench.rs, the benchmark).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/it \
 && echo 'fn main() {}' > src/main.rs \
 && echo '//! placeholder for the dependency layer' > src/lib.rs \
 && : > tests/it/main.rs \
 && cargo build --release --locked --bin dicom-cache-warmer \
 && rm -rf src target/release/dicom-cache-warmer* target/release/deps/dicom_cache_warmer* \
           target/release/.fingerprint/dicom-cache-warmer-*

# 2. The daemon. migrations/ is embedded at compile time (sqlx::migrate!), so it is
#    needed here and not at run time. touch: COPY keeps the sources' old mtimes.
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin dicom-cache-warmer \
 && ./target/release/dicom-cache-warmer --help > /dev/null

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /build/target/release/dicom-cache-warmer /usr/local/bin/dicom-cache-warmer
# config/default.toml is read relative to the working directory.
COPY config/default.toml /etc/dicom-cache-warmer/config/default.toml
WORKDIR /etc/dicom-cache-warmer
# Logs to standard error, without ANSI colours (set DCW__LOG__FORMAT=json for collectors).
ENV NO_COLOR=1
# Non-root, numeric so that Kubernetes' runAsNonRoot can check it (the :nonroot base
# would be 65532; 10001 is the uid the manifests and the runbook use). Pin the base by
# digest (cc-debian12:nonroot@sha256:...) in your registry mirror for reproducible images.
USER 10001:10001
EXPOSE 9464
# The daemon handles SIGTERM itself (graceful stop within shutdown.grace_secs) and is
# fine as PID 1. No HEALTHCHECK: the image has no shell or curl, and Kubernetes uses its
# own probes on /healthz and /readyz (see deploy/kubernetes/deployment.yaml).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/dicom-cache-warmer"]

# syntax=docker/dockerfile:1
# dicom-cache-warmer container image (BuildKit: the RUN steps use cache mounts).
#
#   docker build -t REGISTRY/dicom-cache-warmer:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg SOURCE=https://git.example.org/dicom/dicom-cache-warmer .
#
# Stage 1 compiles with the same command CI runs:
#   cargo build --release --locked --bin dicom-cache-warmer
# Stage 2 is distroless (glibc, libgcc, CA certificates for rediss:// and TLS
# PostgreSQL; no shell, no package manager) holding only the stripped binary and its
# config.
#
# The build context is an allow-list (.dockerignore). scripts/check-image-build.sh
# builds exactly that context with this file's builder-stage steps (CI runs it), so a
# file the build needs but the context lacks fails CI. Keep builder-stage paths
# relative to WORKDIR (that script runs the steps outside Docker, in a scratch folder).

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build

# 1. Dependencies only: this layer is rebuilt when a manifest or Cargo.lock changes.
#    Loading the workspace needs every member's manifest and a file for every target
#    the manifests declare, so stand-ins are written for them: the daemon (src/main.rs,
#    src/lib.rs), its integration tests (tests/it/main.rs) and benches
#    (benches/*.rs, declared in Cargo.toml), and the members' sources (dcw-testkit, a
#    dev-dependency, and dcw-bench, the benchmark tool; neither is built here).
#    The cargo registry and target/ are BuildKit cache mounts, kept between builds: a
#    changed manifest recompiles only the dependencies that changed. The daemon's own
#    artifacts from the stand-ins are removed so they can never be mistaken for the
#    real ones.
COPY Cargo.toml Cargo.lock ./
COPY crates/dcw-testkit/Cargo.toml crates/dcw-testkit/
COPY crates/dcw-bench/Cargo.toml crates/dcw-bench/
RUN --mount=type=cache,id=dcw-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=dcw-target,target=/build/target,sharing=locked \
    mkdir -p src tests/it benches crates/dcw-testkit/src crates/dcw-bench/src \
 && printf '//! stand-in\nfn main() {}\n' > src/main.rs \
 && printf '//! stand-in\n' > src/lib.rs \
 && : > tests/it/main.rs \
 && : > benches/hot_paths.rs \
 && : > benches/series_files.rs \
 && printf '//! stand-in\n' > crates/dcw-testkit/src/lib.rs \
 && printf '//! stand-in\nfn main() {}\n' > crates/dcw-bench/src/main.rs \
 && cargo build --release --locked --bin dicom-cache-warmer \
 && rm -rf src target/release/dicom-cache-warmer* target/release/deps/dicom_cache_warmer* \
           target/release/.fingerprint/dicom-cache-warmer-*

# 2. The daemon. migrations/ is embedded at compile time (sqlx::migrate!), so it is
#    needed here and not at run time. touch: COPY keeps the sources' old mtimes, and
#    the cached target/ may hold an older build. target/ is a cache mount, absent from
#    the image: the binary is copied out of it (and stripped) in the same step.
#    build.rs names the build in dcw_build_info: the commit comes from REVISION (the
#    context has no .git).
COPY build.rs ./
COPY src ./src
COPY migrations ./migrations
ARG REVISION=unknown
RUN --mount=type=cache,id=dcw-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=dcw-target,target=/build/target,sharing=locked \
    touch src/main.rs src/lib.rs \
 && DCW_GIT_COMMIT="$REVISION" cargo build --release --locked --bin dicom-cache-warmer \
 && mkdir -p out \
 && cp target/release/dicom-cache-warmer out/dicom-cache-warmer \
 && strip out/dicom-cache-warmer \
 && out/dicom-cache-warmer --help > /dev/null

FROM gcr.io/distroless/cc-debian12:nonroot
# OCI annotations: pass the real values with --build-arg (see the top of this file).
# VERSION's default is the package version in Cargo.toml (scripts/lint-deploy.sh checks).
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="dicom-cache-warmer" \
      org.opencontainers.image.description="Keeps a DICOMweb server's Redis study cache and series metadata warm from ingest events" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
COPY --from=builder /build/out/dicom-cache-warmer /usr/local/bin/dicom-cache-warmer
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

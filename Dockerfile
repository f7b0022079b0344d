# Container images for roundhouse: one Dockerfile, one target per component.
#
#   docker build --target backend -t roundhouse/backend:0.1.0 .
#   docker build --target lb      -t roundhouse/lb:0.1.0      .
#
# Where the binaries come from is chosen by BIN_SOURCE:
#
#   BIN_SOURCE=builder  (default) a normal multi-stage build: the `build-*`
#                       stages compile static binaries from source in the
#                       official Rust image (RUST_IMAGE).
#   BIN_SOURCE=prebuilt copies static binaries that were already built on the
#                       host (scripts/build-images.sh does this) from
#                       target/$TARGET_TRIPLE/release/ in the build context
#                       (build-images.sh passes the triple of the machine:
#                       x86_64- or aarch64-unknown-linux-gnu). Needs BuildKit (DOCKER_BUILDKIT=1 or
#                       `docker buildx build`): BuildKit only resolves the
#                       stages a target really uses, so the Rust base image is
#                       then never pulled and the build works offline.
#
# Both paths end in the same runtime stages below; only the stage the binary
# is copied from differs. No `# syntax=` line on purpose: the built-in
# Dockerfile frontend is enough and nothing has to be pulled for it.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG BIN_SOURCE=builder
ARG VERSION=0.1.0
ARG TARGET_TRIPLE=x86_64-unknown-linux-gnu

# ---------------------------------------------------------------------------
# builder: compile the static binaries from source, with the same commands as
# scripts/build-images.sh. The lb is compiled in a layer on top of the
# backend's, so it reuses the dependencies compiled there, while a backend-only
# build never compiles the lb. The lb is built without the `demo` feature, so
# the production binary carries no in-process backends. The target triple
# follows the platform being built (Docker's TARGETARCH): the Rust image of
# that platform compiles natively, on amd64 and on arm64 hosts alike.
FROM ${RUST_IMAGE} AS build-backend
ARG TARGETARCH
WORKDIR /src
# Symbols are stripped from the image's binaries (panic messages keep their
# file and line; backtraces show addresses): 2 MB less per image. Profiling
# builds (target/release) keep them.
ENV CARGO_TERM_COLOR=never \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    RUSTFLAGS="-C target-feature=+crt-static"
COPY . .
RUN case "${TARGETARCH:-$(uname -m)}" in \
      amd64 | x86_64) echo x86_64-unknown-linux-gnu ;; \
      arm64 | aarch64) echo aarch64-unknown-linux-gnu ;; \
      *) echo "unsupported TARGETARCH ${TARGETARCH}: amd64 and arm64 only" >&2; exit 1 ;; \
    esac >/triple \
 && cargo build --release --locked --target "$(cat /triple)" -p backend \
 && mkdir -p /out \
 && cp "target/$(cat /triple)/release/backend" /out/

FROM build-backend AS build-lb
RUN cargo build --release --locked --target "$(cat /triple)" -p lb --no-default-features \
 && cp "target/$(cat /triple)/release/lb" /out/

FROM scratch AS builder-backend
COPY --from=build-backend /out/backend /backend

FROM scratch AS builder-lb
COPY --from=build-lb /out/lb /lb

# ---------------------------------------------------------------------------
# prebuilt: take static binaries from the build context (see .dockerignore).
FROM scratch AS prebuilt-backend
ARG TARGET_TRIPLE
COPY target/${TARGET_TRIPLE}/release/backend /backend

FROM scratch AS prebuilt-lb
ARG TARGET_TRIPLE
COPY target/${TARGET_TRIPLE}/release/lb /lb

# ---------------------------------------------------------------------------
# The binary source selected by BIN_SOURCE.
FROM ${BIN_SOURCE}-backend AS backend-bin
FROM ${BIN_SOURCE}-lb AS lb-bin

# ---------------------------------------------------------------------------
# Runtime images: the static binary only, no shell, non-root.
FROM scratch AS backend
ARG VERSION
LABEL org.opencontainers.image.title="roundhouse-backend" \
      org.opencontainers.image.description="The service roundhouse balances: answers /host and /date, with health endpoints and a readiness drain." \
      org.opencontainers.image.source="https://github.com/roundhouse-lb/roundhouse" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=backend-bin /backend /backend
USER 65532:65532
EXPOSE 5000
ENTRYPOINT ["/backend"]
CMD ["--listen", "0.0.0.0:5000"]

FROM scratch AS lb
ARG VERSION
LABEL org.opencontainers.image.title="roundhouse-lb" \
      org.opencontainers.image.description="roundhouse: an exact round-robin HTTP load balancer with static and Kubernetes discovery." \
      org.opencontainers.image.source="https://github.com/roundhouse-lb/roundhouse" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=lb-bin /lb /lb
USER 65532:65532
# 8080: proxied traffic; 9090: admin (/healthz, /readyz, /metrics, /endpoints).
EXPOSE 8080 9090
# Exec form: the image has no shell; `lb probe URL` exits 0 iff URL answers 2xx.
HEALTHCHECK --interval=5s --timeout=3s --start-period=2s --retries=3 \
    CMD ["/lb", "probe", "http://127.0.0.1:9090/readyz"]
ENTRYPOINT ["/lb"]
CMD ["serve"]

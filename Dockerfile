# jobpipe's container image: the jobpipe binary as the entrypoint, with the
# example Python handler as the default handler.
#
#   docker build -t jobpipe .
#   docker run --rm jobpipe --test-input '{"input": {"name": "x"}}'
#
# The binary is linked against glibc 2.17 (cargo-zigbuild with zig as the
# linker), so it also runs when copied into older handler images:
#   COPY --from=jobpipe /usr/local/bin/jobpipe /usr/local/bin/jobpipe
# (see examples/add-to-image/Dockerfile).

# zig and cargo-zigbuild, from their Python wheels.
FROM docker.io/library/python:3.11-slim-bookworm AS zigbuild
RUN pip install --no-cache-dir --target /opt/zigbuild ziglang==0.17.1 cargo-zigbuild==0.24.0

FROM docker.io/library/rust:1-bookworm AS build
COPY --from=zigbuild /opt/zigbuild /opt/zigbuild
RUN ln -s /opt/zigbuild/ziglang/zig /usr/local/bin/zig \
    && ln -s /opt/zigbuild/bin/cargo-zigbuild /usr/local/bin/cargo-zigbuild
WORKDIR /src
COPY . .
# The release-image profile is the release build, stripped. The caches keep
# downloaded crates and compiled dependencies between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-gnu" \
    && cargo zigbuild --locked --profile release-image --bin jobpipe --target "$target.2.17" \
    && install -D "target/$target/release-image/jobpipe" /out/jobpipe

FROM docker.io/library/debian:bookworm-slim
LABEL org.opencontainers.image.title="jobpipe" \
      org.opencontainers.image.description="A worker daemon that supervises a handler process and feeds it jobs from RunPod serverless or local sources" \
      org.opencontainers.image.licenses="MIT"
# Python for the example handler and the health check; nothing else.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.11.2-1+b1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin jobpipe
COPY --from=build /out/jobpipe /usr/local/bin/jobpipe
COPY handlers/python/ /usr/local/share/jobpipe/handlers/python/
COPY container/healthcheck.py /usr/local/share/jobpipe/healthcheck.py
WORKDIR /app
USER 10001:10001
# The handler is an environment default rather than a command, so both
# `docker run IMAGE -- python3 /app/handler.py` and JOBPIPE_HANDLER replace
# it, and `docker run IMAGE --test-input ...` still has a handler.
ENV JOBPIPE_HANDLER="python3 /usr/local/share/jobpipe/handlers/python/echo.py"
# Asks jobpipe's /health when JOBPIPE_METRICS_ADDR is set; healthy otherwise.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "/usr/local/share/jobpipe/healthcheck.py"]
ENTRYPOINT ["jobpipe"]

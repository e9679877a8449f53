# fastsvd: one image for the API and the GPU worker; the command chooses.
#   docker build -t fastsvd .
#   docker run ... fastsvd                 the API (fastsvd serve, no workers in it)
#   docker run --gpus 1 ... fastsvd worker one GPU worker
# Weights are never in the image: HF_HOME and the compile cache live on the /data volume.
# Not built on the machines this project is developed on (no container engine runs there):
# tests/test_image.py parses this file and runs its command as a process (docs/deploy.md).

ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# --- build: the virtual environment, by the install script `make install` and CI run ---
FROM ${CUDA_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY scripts/ scripts/
COPY src/ src/
# no GPU during a build: say which torch to install
ENV FASTSVD_TORCH=cuda
RUN ./scripts/install /opt/fastsvd/.venv runtime

# --- runtime: the environment, the health check, a non-root user, nothing else ---
FROM ${CUDA_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/fastsvd fastsvd \
    && mkdir -p /data \
    && chown fastsvd:fastsvd /data
COPY --from=build /opt/fastsvd/.venv /opt/fastsvd/.venv
COPY scripts/healthcheck /opt/fastsvd/scripts/healthcheck
ENV PATH=/opt/fastsvd/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FASTSVD_DATA_DIR=/data \
    HF_HOME=/data/huggingface \
    FASTSVD_HOST=0.0.0.0 \
    FASTSVD_PORT=8000 \
    FASTSVD_WORKERS=0
USER fastsvd
WORKDIR /home/fastsvd
# the database (SQLite, one-machine layout), files, first-key, Hugging Face cache and the
# compiled-kernel cache (FASTSVD_DATA_DIR/compile-cache)
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/opt/fastsvd/scripts/healthcheck"]
# SIGTERM: the API stops taking requests; a worker stops claiming, finishes its job, exits
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/fastsvd/.venv/bin/fastsvd"]
CMD ["serve"]

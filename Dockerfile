# syntax=docker/dockerfile:1.7
# The segmentation appliance: one container per hospital (see docs/container.md).
#
#   docker build -t seg-appliance .
#   docker run --gpus all -p 11112:11112 -v appliance-data:/var/lib/appliance \
#       -v appliance-models:/var/lib/appliance-models seg-appliance
#
# This is the ONE place the CUDA build of torch is installed; everywhere else (make install,
# CI) uses the CPU wheel. TORCH_CUDA must name a wheel variant published for torch 2.13.0
# on the PyTorch index, matching the CUDA major version of the base image.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
ARG APP_UID=10001

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    APPLIANCE_CONFIG=/etc/appliance/appliance.toml \
    OMP_WAIT_POLICY=PASSIVE
# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning. Inference and a
# federated training process share the CPUs; with spinning threads a CPU inference took
# 27.5 s of CPU instead of 5.1 s on an oversubscribed 2-core machine.

# Python 3.11 (Ubuntu 22.04 ships it in universe); nothing else from apt.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

WORKDIR /opt/appliance/src

# torch first, from the CUDA index, pinned; then the project under the same constraints,
# so that pip keeps this torch (2.13.0+cuXXX satisfies torch==2.13.0) and fetches no other.
COPY constraints.txt ./
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" \
        "torch==${TORCH_VERSION}" \
    && python -c "import torch; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__"

COPY pyproject.toml README.md ./
COPY appliance ./appliance
COPY dicom_bridge ./dicom_bridge
COPY models ./models
# the federated benchmark's configs (appliance federate simulate --config full)
COPY benchmarks/federation /opt/appliance/benchmarks/federation
ENV APPLIANCE_BENCHMARK_DIR=/opt/appliance/benchmarks/federation
RUN pip install -c constraints.txt . \
    && python -c "import torch; assert torch.version.cuda, 'the CPU torch replaced the CUDA build'"

# The default configuration; mount your own over it (or set APPLIANCE_CONFIG).
COPY <<'EOF_CONFIG' /etc/appliance/appliance.toml
[dicom]
ae_title = "SEGAPPLIANCE"
port = 11112
bind = "0.0.0.0"

[storage]
root = "/var/lib/appliance"

[models]
root = "/var/lib/appliance-models"
device = "auto"

# /healthz and /metrics, inside the container only (publish the port to scrape /metrics)
[http]
enabled = true
bind = "127.0.0.1"
port = 8080
EOF_CONFIG

# A non-root user owns the state; the image's code stays read-only to it.
RUN useradd --system --uid "${APP_UID}" --user-group --home-dir /var/lib/appliance \
        --shell /usr/sbin/nologin appliance \
    && mkdir -p /var/lib/appliance /var/lib/appliance-models \
    && chown -R appliance:appliance /var/lib/appliance /var/lib/appliance-models
USER appliance
WORKDIR /var/lib/appliance

# Spool, SQLite store, results and previews; the site's model registry.
VOLUME ["/var/lib/appliance", "/var/lib/appliance-models"]

# DICOM (C-ECHO, C-STORE SCP).
EXPOSE 11112

# Healthy when /healthz says so: listener, worker, database, disk above the watermark and
# the active models loaded (config from APPLIANCE_CONFIG; see appliance/ops/health.py).
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD ["appliance", "healthcheck", "--quiet", "--timeout", "10"]

# SIGTERM stops it gracefully (docker stop).
STOPSIGNAL SIGTERM
ENTRYPOINT ["appliance"]
CMD ["serve", "--config", "/etc/appliance/appliance.toml"]

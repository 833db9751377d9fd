# kpvid: one image for the edge receiver (the default command) and the sender (kpvid-send).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, in its own layer: it is by far the largest dependency and changes least.
# PyPI's Linux x86-64 wheel is a CUDA build (it also runs on the CPU). For an image that only
# ever runs on the CPU, a much smaller CPU-only build can be used instead:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
# For a GPU, the host needs the NVIDIA driver and container toolkit (see docker-compose.yml).
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0

WORKDIR /src
COPY pyproject.toml README.md ./
COPY models models
COPY protocol protocol
COPY receiver receiver
COPY sender sender
COPY synthetic synthetic
COPY training training
COPY demo demo
COPY bench bench
RUN pip install . && rm -rf /src

RUN useradd --create-home --uid 1000 kpvid \
    && mkdir -p /recordings /state \
    && chown kpvid:kpvid /recordings /state
USER kpvid
WORKDIR /home/kpvid

EXPOSE 8443
CMD ["kpvid-receive", "--host", "0.0.0.0", "--port", "8443", "--state-dir", "/state"]

# One image for the API, the workers, the migration job and Flower (compose.yaml).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY clearmark clearmark
COPY models models
COPY engine_build engine_build
COPY pipeline pipeline
COPY workers workers
COPY migrations migrations
# Every version from constraints.txt (scripts/lock.sh). Its torch pin is the +cpu build,
# which only PyTorch's CPU index has: PyPI's CUDA build cannot satisfy it.
RUN pip install --no-cache-dir -c constraints.txt \
        --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0 ".[ops,s3]"
ENV CLEARMARK_DATA_DIR=/data
ENTRYPOINT ["clearmark"]

# One image for the API, the workers, the migration job and Flower (compose.yaml).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY clearmark clearmark
COPY models models
COPY engine_build engine_build
COPY workers workers
COPY migrations migrations
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir ".[ops,s3]"
ENV CLEARMARK_DATA_DIR=/data
ENTRYPOINT ["clearmark"]

# One image for every role: `wmq api`, `wmq worker`, `wmq migrate` (k8s/, docs/deploy.md).
#
#   docker build -t wmq .
#   docker run --rm -e DATABASE_URL=postgresql://… -p 8000:8000 wmq            # the API
#   docker run --rm -e DATABASE_URL=postgresql://… wmq wmq worker              # a worker
#
# Stage 1 builds wheels of the service and of everything it needs (compilers stay here);
# stage 2 installs only those wheels on a slim base and runs as an unprivileged user. The SQL,
# templates and assets are package data: the image holds no source tree.

FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# NEONIZE_BOT_TAG=off: neonize would otherwise label every one-to-one message as sent by a bot
# (read by its Go library from the environment the process starts with: docs/decisions.md).
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 NEONIZE_BOT_TAG=off \
    HOST=0.0.0.0 PORT=8000 DATA_DIR=/var/lib/wmq WORKER_METRICS_PORT=9100
# The system libraries the wheels load but do not bundle (tests/fast/test_image_libraries.py lists
# them from what importing the service loads, `make image-check` loads them in the built image):
# libmagic1 for python-magic, which neonize imports (with it comes libmagic-mgc, its database).
# Everything else is in the wheels (Pillow's and psycopg's *.libs, neonize's Go library,
# imageio-ffmpeg's static ffmpeg) or in this base (glibc, libstdc++, zlib, OpenSSL, libffi).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libmagic1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 wmq && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/wmq --create-home wmq
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels whatsapp-message-queue && rm -rf /wheels
USER 10001:10001
WORKDIR /var/lib/wmq
EXPOSE 8000 9100
# The API answers /healthz; a worker's heartbeat thread went round lately (`wmq healthcheck`).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["wmq", "healthcheck"]
CMD ["wmq", "api"]

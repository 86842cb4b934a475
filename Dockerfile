# One image for every role: `wmq api`, `wmq worker`, `wmq migrate` (see k8s/).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT=8000
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
COPY sql ./sql
RUN pip install --no-cache-dir . && useradd --system --uid 10001 wmq
USER wmq
EXPOSE 8000
CMD ["wmq", "api"]

# imagegate: slim, non-root image of the gateway.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IMAGEGATE_DATA_DIR=/data \
    IMAGEGATE_CONFIG=/app/config/gateway.yaml
RUN groupadd --system --gid 10001 imagegate \
 && useradd --system --uid 10001 --gid imagegate --home-dir /data --no-create-home imagegate \
 && mkdir -p /data /app/config && chown imagegate:imagegate /data
COPY --from=build /install /usr/local
COPY config/gateway.yaml /app/config/gateway.yaml
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["imagegate", "serve", "--host", "0.0.0.0", "--port", "8000"]

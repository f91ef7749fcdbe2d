# syntax=docker/dockerfile:1
# Tollway: build the compiled kernels in one stage, run as a non-root user in a slim one.

FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libsqlite3-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY core ./core
COPY ext ./ext
COPY gateway ./gateway
# A wheel with the Cython kernels compiled (setup.py says "ACCELERATED" in the log).
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Fake vLLM replicas for the two-tier compose example (deploy/compose): the same wheel plus
# tests/fakes. Build it with `--target fakes`; the default target is `runtime` below.
FROM python:3.11-slim AS fakes
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl aiohttp && rm -rf /wheels
COPY tests /app/tests
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["python", "-m", "tests.fakes.vllm_replica"]

FROM python:3.11-slim AS runtime
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin tollway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# The price table, built once here as root: each worker reads it at start instead of building it
# in a child process (tollway.gateway.price_source; the container has no home to cache it in).
ENV TOLLWAY_CACHE_DIR=/usr/local/share/tollway
RUN python -m tollway.gateway.price_source --build
COPY examples/demo.yaml /etc/tollway/config.yaml
# The demo's SQLite ledger goes to a directory the gateway's user may write (mount a volume
# there to keep it); a real deployment points store: at PostgreSQL (docs/ledger.md).
RUN sed -i 's|path: tollway.db|path: /var/lib/tollway/tollway.db|' /etc/tollway/config.yaml \
 && mkdir -p /var/lib/tollway && chown 10001:10001 /var/lib/tollway
VOLUME /var/lib/tollway
USER 10001:10001
EXPOSE 8080
# Mount your own config over /etc/tollway/config.yaml (e.g. a Kubernetes ConfigMap).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["tollway"]
CMD ["serve", "--config", "/etc/tollway/config.yaml", "--host", "0.0.0.0", "--port", "8080"]

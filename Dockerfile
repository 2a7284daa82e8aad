# The maintenance service: `celery -A maintenance.worker worker|beat`. See docker-compose.yml.
# Build stage: wheels of the package and its dependencies (no compiler needed: all have wheels).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY maintenance ./maintenance
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime: the installed package only, no sources, no build tools, a non-root user.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MAINTENANCE_CONFIG=/app/config/maintenance.toml
RUN groupadd --system --gid 10001 maintenance \
    && useradd --system --uid 10001 --gid maintenance --home-dir /app --shell /usr/sbin/nologin maintenance
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels /wheels/task_maintenance-*.whl \
    && rm -rf /wheels \
    && mkdir -p /app/config /app/logs /app/run \
    && chown maintenance:maintenance /app/logs /app/run
WORKDIR /app
# The demo app (docker compose --profile demo): outside the wheel, read-only, run from /app.
COPY examples ./examples
USER 10001:10001
VOLUME ["/app/logs"]
# The worker answers a ping to its own node name (maintenance@<container hostname>).
HEALTHCHECK --interval=60s --timeout=30s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "celery -A maintenance.worker inspect ping -d \"maintenance@$HOSTNAME\" --timeout 10 || exit 1"]
CMD ["celery", "-A", "maintenance.worker", "worker", "-Q", "maintenance", "-n", "maintenance@%h", "-c", "1", "-l", "INFO"]

# One image recipe for every app: APP=api (audit-api, listens on 8000), APP=consumer
# (audit-consumer, probes on 8001; also runs `audit-setup` and `audit-dlq`, so the image carries
# migrations/), APP=query (audit-query, listens on 8080), APP=verify (audit-verify, the
# auditor's read-only check: no writer or sealing code in it; metrics on 9102 with --every) or
# APP=retention (audit-retention: archives to /archive, then removes old partitions; it checks
# archives with audit-verify's code, so that is copied in too).
# Only that workspace member and its locked dependencies are installed.
# Build from the repository root (classic builder and BuildKit both work: no RUN --mount):
#   docker build --build-arg APP=api -t audit-api .
#   docker build --build-arg APP=consumer -t audit-consumer .
#   docker build --build-arg APP=query --build-arg PORT=8080 -t audit-query .
#   docker build --build-arg APP=verify --build-arg PORT=9102 -t audit-verify .
#   docker build --build-arg APP=retention -t audit-retention .
FROM python:3.13-slim AS build
ARG APP=api
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
RUN pip install --no-cache-dir --disable-pip-version-check uv==0.13.9
WORKDIR /src
# Dependencies first (a layer that survives code changes); every member's pyproject is
# needed for uv to resolve the workspace, but only this one's dependencies are installed.
COPY pyproject.toml uv.lock ./
COPY apps/api/pyproject.toml apps/api/
COPY apps/consumer/pyproject.toml apps/consumer/
COPY apps/query/pyproject.toml apps/query/
COPY apps/verify/pyproject.toml apps/verify/
COPY apps/retention/pyproject.toml apps/retention/
COPY libs/events/pyproject.toml libs/events/
COPY libs/devservers/pyproject.toml libs/devservers/
COPY libs/web/pyproject.toml libs/web/
RUN uv sync --frozen --no-dev --no-install-workspace --package "audit-${APP}"
COPY libs/events libs/events
COPY libs/web libs/web
COPY apps/verify apps/verify
COPY apps/${APP} apps/${APP}
RUN uv sync --frozen --no-dev --no-editable --package "audit-${APP}" \
    && ln -s "audit-${APP}" /app/.venv/bin/audit-app

FROM python:3.13-slim
ARG APP=api
ARG PORT=8000
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY migrations /app/migrations
# /archive: where audit-retention writes (a volume mounted there starts owned by the app's user)
RUN mkdir /archive && chown 10001:10001 /archive
ENV PATH=/app/.venv/bin:$PATH \
    AUDIT_MIGRATIONS_DIR=/app/migrations \
    AUDIT_PROBE_PORT=${PORT} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE ${PORT}
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"AUDIT_PROBE_PORT\"]}/healthz', timeout=2)"]
# audit-app is audit-api, audit-consumer, audit-query, audit-verify or audit-retention: whichever
# APP it was built for.
CMD ["audit-app"]

# One image for every Floodwatch process; docker-compose.yml picks the command
# (python -m ingest | api | notify | simulators).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The registry's built-in default is resolved next to the package's source directory, which a
# regular install moves into site-packages; name the shipped file outright instead.
ENV FLOODWATCH_REGISTRY=/app/sensors.geojson \
    FLOODWATCH_OUTBOX=/var/lib/floodwatch/ingest-outbox.sqlite \
    FLOODWATCH_SCENARIOS=/app/scenarios

WORKDIR /app
COPY pyproject.toml constraints.txt README.md sensors.geojson ./
COPY floodwatch/ floodwatch/
COPY ingest/ ingest/
COPY api/ api/
COPY alerts/ alerts/
COPY simulators/ simulators/
COPY notify/ notify/
COPY config/ config/
COPY scenarios/ scenarios/
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin floodwatch \
    && mkdir -p /var/lib/floodwatch && chown floodwatch /var/lib/floodwatch

USER floodwatch
EXPOSE 8000
CMD ["python", "-m", "api", "--host", "0.0.0.0", "--port", "8000"]

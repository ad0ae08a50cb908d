# syntax=docker/dockerfile:1
#
# The platform's image: daphne (through platform_core.server) serving the
# Django Channels application. docker-compose.yml runs it next to PostgreSQL,
# Redis, Prometheus and Grafana; see there for the environment it expects.

# -- the dashboard's browser libraries, from npm --------------------------------
FROM node:22-bookworm-slim AS frontend
WORKDIR /src/frontend
COPY frontend/package.json frontend/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

# -- the platform -------------------------------------------------------------
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    KERAS_BACKEND=tensorflow \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PLATFORM_DATA_DIR=/var/lib/platform \
    DJANGO_STATIC_ROOT=/app/staticfiles

RUN groupadd --system --gid 10001 platform \
    && useradd --system --uid 10001 --gid platform --home-dir /var/lib/platform --no-create-home platform \
    && python -m venv /opt/venv

WORKDIR /app

# The dependencies first, from pyproject.toml alone, so that a change to the
# code does not reinstall TensorFlow.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --upgrade pip \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .
COPY --from=frontend /src/frontend/node_modules/chart.js/dist frontend/node_modules/chart.js/dist

# Static files for a reverse proxy to serve. Production settings refuse to
# load without a secret key and allowed hosts; these exist for this step only.
RUN DJANGO_SECRET_KEY="collectstatic-only-$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    DJANGO_ALLOWED_HOSTS=localhost \
    python manage.py collectstatic --no-input -v0 \
    && mkdir -p /var/lib/platform \
    && chown -R platform:platform /var/lib/platform

# Migrate, train and register the demo models (once: it is idempotent), then
# serve. The multiprocess metrics directory must be empty when the first
# server process starts: the management commands leave their own files there.
RUN cat > /usr/local/bin/platform-serve <<'EOF'
#!/bin/sh
set -eu
python manage.py migrate --no-input
python manage.py load_demo_models
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete
fi
exec python -m platform_core.server -b 0.0.0.0 -p 8000 platform_core.asgi:application
EOF
RUN chmod 0755 /usr/local/bin/platform-serve

USER platform
VOLUME ["/var/lib/platform"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]

CMD ["platform-serve"]

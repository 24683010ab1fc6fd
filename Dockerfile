# syntax=docker/dockerfile:1
# churnwatch: one image for the four services (ingest, scoring, alerting, outreach),
# the SMS gateway stand-in and the `churnwatch` CLI. Each container picks what it runs
# by its command:
#   python -m services.ingest | services.scoring | services.alerting | services.outreach
#   churnwatch migrate | churnwatch sms-gateway
# No secrets are baked in: every setting comes from the environment at run time.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install churnwatch and its runtime dependencies into a virtualenv -------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# .dockerignore lets only the package sources and pyproject.toml through.
COPY . .
# `pip install .`, not `.[dev]`: no test or lint tooling in the runtime image.
RUN pip install --upgrade pip \
    && pip install . \
    && python -m compileall -q /opt/venv/lib

# --- runtime -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="churnwatch" \
      org.opencontainers.image.description="Event-driven churn early-warning microservices for telecom operators"

# A fixed, non-root uid/gid (10001); the Kubernetes manifests run as the same ids.
RUN groupadd --system --gid 10001 churnwatch \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin churnwatch

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0

WORKDIR /app
USER 10001:10001

# ingest, scoring, alerting, outreach, sms-gateway (defaults of the *_PORT settings).
EXPOSE 8081 8082 8083 8084 8085

CMD ["churnwatch", "--help"]

# syntax=docker/dockerfile:1
#
# model-service as a container image: Gunicorn serving service.wsgi:app on 8000, and the
# same image runs the gRPC server (8001) and `modelctl store-sync` (deploy/k8s).
#
#   docker build -t model-service:0.1.0 .
#   docker run --rm -p 8000:8000 -v "$PWD/model_store:/var/lib/model-service/store:ro" \
#       model-service:0.1.0
#
# Two stages: the builder turns the project and every dependency into wheels (pinned by
# constraints.txt, the versions the test suite passes with); the runtime stage installs
# from those wheels alone, so it needs no compiler, no index and no build tools.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: the project wheel and a wheelhouse of its dependencies ----------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The source, less what .dockerignore leaves out (local state, models, tests).
COPY . .
# The cache mount keeps downloaded wheels between builds without putting them in a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheelhouse -c constraints.txt .

# --- runtime --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="model-service" \
      org.opencontainers.image.description="A production server for scikit-learn models" \
      org.opencontainers.image.licenses="MIT"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# `modelctl store-sync` reaches an ssh:// store with OpenSSH's client, as on the hosts.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-client \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid and gid, so Kubernetes' runAsUser / fsGroup and volume ownership on any
# host agree with the image. ssh also needs the uid to have a passwd entry.
RUN groupadd --system --gid 10001 model-service \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/model-service --shell /usr/sbin/nologin model-service \
    && install -d -o model-service -g model-service -m 0755 \
        /var/lib/model-service /var/lib/model-service/store /var/lib/model-service/state

# The wheelhouse is bind-mounted from the builder rather than copied, so no layer of this
# image holds it. --no-index: nothing comes from anywhere but the builder's wheels. The
# modules are byte-compiled here, once, since the root filesystem may be read-only later.
RUN --mount=type=bind,from=builder,source=/wheelhouse,target=/wheelhouse \
    python -m venv /opt/model-service \
    && /opt/model-service/bin/pip install --no-index --find-links /wheelhouse model-service

ENV PATH=/opt/model-service/bin:$PATH \
    MODEL_SERVICE_BIND=0.0.0.0:8000 \
    MODEL_SERVICE_STORE=/var/lib/model-service/store \
    MODEL_SERVICE_STATE_DIR=/var/lib/model-service/state

USER model-service:model-service
WORKDIR /var/lib/model-service

# 8000: HTTP (Gunicorn). 8001: gRPC, when the container runs
# `python -m service.grpc --bind 0.0.0.0:8001`.
EXPOSE 8000 8001

# /healthz answers once Gunicorn listens, which is after the models are loaded
# (preload_app), hence the start period. The slim image has no curl; urlopen raises (exit
# status 1) on a refused connection, a timeout or any non-2xx answer. Docker only:
# Kubernetes ignores HEALTHCHECK and uses the probes in deploy/k8s/deployment.yaml.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('MODEL_SERVICE_BIND', '0.0.0.0:8000').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

# The workers share their metrics through PROMETHEUS_MULTIPROC_DIR, which must be empty
# when Gunicorn starts: files left by a previous run would be summed into /metrics. It is
# set here, in the start command, and not as an image-wide ENV, so that other commands run
# from this image (modelctl, the gRPC server) do not write metric files into a directory
# that does not exist. gunicorn.conf.py is the one packaged with the installed release.
CMD ["sh", "-c", "export PROMETHEUS_MULTIPROC_DIR=/tmp/model-service-metrics && rm -rf \"$PROMETHEUS_MULTIPROC_DIR\" && mkdir -p \"$PROMETHEUS_MULTIPROC_DIR\" && exec gunicorn -c \"$(modelctl deploy-path gunicorn.conf.py)\" service.wsgi:app"]

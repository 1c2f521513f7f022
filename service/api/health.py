"""/healthz (the process answers) and /readyz (the served models are loaded)."""

from __future__ import annotations

from flask import Blueprint

from service.api import json_response, state

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz():
    ready, models = state().registry.readiness()
    body = {"status": "ready" if ready else "not ready", "models": models}
    return json_response(body, status=200 if ready else 503)

"""/healthz (the process answers) and /readyz (the served models are loaded)."""

from __future__ import annotations

import time

from flask import Blueprint

from service.api import json_response, state
from service.store import mirror

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz():
    service = state()
    ready, models = service.registry.readiness()
    body = {"status": "ready" if ready else "not ready", "models": models}
    if service.settings.store_remote:
        # A host cut off from the authoritative store still serves what it verified, so
        # this does not make it unready; it says so, for people and for the balancer's logs.
        body["store_sync"] = mirror.describe(
            mirror.read_status(service.settings.store),
            service.settings.store_sync_interval,
            time.time(),
        )
    return json_response(body, status=200 if ready else 503)

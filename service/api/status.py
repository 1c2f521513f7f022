"""The status page: GET / and GET /status (HTML), and GET /v1/status (the JSON it polls).

/v1/status answers facts only, gathered by ``service.monitoring.status``: what is served,
the *cumulative* traffic figures of every served model as Prometheus counts them, live
quality, drift, and the report of the experiment a model runs. This module renders them.

Windows ("over the last minutes") are computed by the page, not here. The counters are
cumulative, so a rate needs two readings: the page keeps the snapshots it polled over the
last five minutes and computes each figure from the difference between the oldest and the
newest reading in that window — a request rate is Δcount / Δt (server clock), an error rate
Δerrors / Δrequests, a percentile is read from the Δ of the histogram's buckets and
interpolated linearly within its bucket. The server keeps no history because under Gunicorn
each poll may land on another worker: a per-process ring of snapshots would hold a different
subset of readings in each worker, while the counters themselves are the same everywhere
(scrape() aggregates every worker), so the browser's own series is the consistent one.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, render_template

from service.api import json_response, state
from service.api.monitoring import app_monitoring
from service.monitoring.status import StatusView

bp = Blueprint("status", __name__)

# How often the page polls /v1/status, and how much history it keeps to compute windows.
REFRESH_SECONDS = 3
WINDOW_SECONDS = 300

# The page loads nothing from anywhere: its script and style are inline, it draws with
# inline SVG, and it may only talk back to this origin.
STATUS_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

EXTENSION = "model_service.status"


def view() -> StatusView:
    """The running app's status figures (built at the first request: it keeps the scores
    of the versions it has read)."""
    found = current_app.extensions.get(EXTENSION)
    if found is None:
        service = state()
        found = current_app.extensions.setdefault(
            EXTENSION,
            StatusView(service.settings, service.store, service.registry, app_monitoring()),
        )
    return found


@bp.get("/")
@bp.get("/status")
def status_page():
    html = render_template(
        "status.html",
        models=view().models(),
        refresh_seconds=REFRESH_SECONDS,
        window_seconds=WINDOW_SECONDS,
    )
    return Response(html, mimetype="text/html", headers=STATUS_HEADERS)


@bp.get("/v1/status")
def status_json():
    body = view().snapshot(refresh_seconds=REFRESH_SECONDS, window_seconds=WINDOW_SECONDS)
    return json_response(body, headers={"Cache-Control": "no-store"})

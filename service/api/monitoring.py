"""Feedback, live quality and drift:

- ``POST /v1/models/<name>/feedback``: labels for served predictions, joined by request id
  and the row's index in the request;
- ``GET /v1/models/<name>/performance``: live accuracy / class recall or MAE per version,
  next to the test score in metadata.yaml;
- ``GET /v1/models/<name>/drift``: population stability index and chi-square p-value of
  every feature per version, its status ("too few rows (n of N)" until it has
  drift_min_rows values, then stable or drifted), with the live and training distributions.

The work is in ``service.monitoring.live``, in the app's own monitoring
(``service.monitoring.hub``); figures are those of every worker of this host.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, request

from service.api import json_response, state
from service.api.predict import require_json
from service.errors import BadRequest, ModelNotFound
from service.monitoring import live
from service.monitoring.hub import Monitoring
from service.protocols import native
from service.store.layout import check_name

bp = Blueprint("monitoring", __name__)

EXTENSION = "model_service.monitoring"
MAX_REQUEST_ID = 128


def init_app(app: Flask, monitoring: Monitoring) -> None:
    """Keep the app's monitoring where every blueprint finds it (``app_monitoring``)."""
    app.extensions[EXTENSION] = monitoring


def app_monitoring() -> Monitoring:
    """The monitoring of the running app."""
    return current_app.extensions[EXTENSION]


def monitor() -> live.Monitor:
    return app_monitoring().live


def _served_name(name: str) -> str:
    check_name(name)
    service = state()
    if name not in service.registry.served_names():
        raise ModelNotFound(f"no model named {name!r} is served", details={"model": name})
    return name


@bp.post("/v1/models/<name>/feedback")
def feedback(name: str):
    _served_name(name)
    require_json()
    payload = native.parse_json(request.get_data(cache=False))
    items = _feedback_items(payload)
    recorded = monitor().record_feedback(name, items)
    return json_response({"model": name, "accepted": len(recorded), "feedback": recorded})


@bp.get("/v1/models/<name>/performance")
def performance(name: str):
    return json_response(monitor().performance(_served_name(name)))


@bp.get("/v1/models/<name>/drift")
def drift(name: str):
    return json_response(monitor().drift(_served_name(name)))


def _feedback_items(payload: Any) -> list[tuple[str, int, Any]]:
    entries = payload if isinstance(payload, list) else [payload]
    if not entries:
        raise BadRequest("no feedback: send an object or a non-empty list of objects")
    if len(entries) > live.MAX_FEEDBACK_ITEMS:
        raise BadRequest(f"at most {live.MAX_FEEDBACK_ITEMS} feedback items per request")
    items = []
    for i, entry in enumerate(entries):
        where = f"item {i}" if isinstance(payload, list) else "the body"
        if not isinstance(entry, dict):
            raise BadRequest(
                f'{where}: expected an object {{"request_id", "index", "label"}}',
                details={"item": i},
            )
        unknown = sorted(set(entry) - {"request_id", "index", "label"})
        if unknown:
            raise BadRequest(f"{where}: unknown fields {unknown}", details={"item": i})
        request_id = entry.get("request_id")
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
            raise BadRequest(
                f"{where}: request_id must be the request id of the prediction (a string)",
                details={"item": i},
            )
        index = entry.get("index", 0)
        if isinstance(index, float) and index.is_integer():
            index = int(index)  # 3.0 is the JSON number 3, as the documented schema says
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise BadRequest(
                f"{where}: index must be the row's position in the request (0 or more)",
                details={"item": i},
            )
        if "label" not in entry:
            raise BadRequest(f"{where}: label is missing", details={"item": i})
        items.append((request_id, index, entry["label"]))
    return items

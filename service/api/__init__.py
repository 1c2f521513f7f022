"""The HTTP layer: thin blueprints that parse, call the runtime, and encode."""

from __future__ import annotations

import orjson
from flask import Response, current_app

from service import safejson

STATUS_OK = 200
# The key of the ServiceState in app.extensions (service.app stores it there).
EXTENSION = "model_service"


def state():
    """The ServiceState of the running app."""
    return current_app.extensions[EXTENSION]


def json_response(body, status: int = STATUS_OK, headers=None) -> Response:
    return Response(
        # Never fails: a client's lone surrogate in an echoed name is escaped (safejson).
        safejson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS),
        status=status,
        mimetype="application/json",
        headers=headers,
    )

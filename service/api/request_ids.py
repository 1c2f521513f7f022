"""X-Request-ID: keep a sane incoming id (Nginx sets one), else make one; echo it back.
X-Served-By: which instance (host of a fleet) answered."""

from __future__ import annotations

import re
import uuid
from typing import Any

from flask import Flask, g, request

from service.runtime import hooks

HEADER = "X-Request-ID"
SERVED_BY_HEADER = "X-Served-By"
_ACCEPTABLE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def current() -> str:
    return of(g._get_current_object())  # type: ignore[attr-defined]


def of(context: Any) -> str:
    """The request id kept on a request's ``g`` (the object itself, past Flask's proxy)."""
    return getattr(context, "request_id", None) or "-"


def init_app(app: Flask, served_by: str) -> None:
    @app.before_request
    def assign_request_id() -> None:
        incoming = request.headers.get(HEADER, "")
        request_id = incoming if _ACCEPTABLE.match(incoming) else uuid.uuid4().hex
        g.request_id = request_id
        hooks.request_id.set(request_id)

    @app.after_request
    def echo_request_id(response):
        headers = response.headers
        headers[HEADER] = current()
        headers[SERVED_BY_HEADER] = served_by
        return response

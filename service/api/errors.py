"""The one place errors become HTTP responses: ``{"error": {code, message, details}}``.

Client mistakes keep their 4xx status and say what was wrong; anything
unexpected is logged with its traceback and answered with a JSON 500 that
carries the request id, never the traceback or the request payload.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import Flask, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from service.api import json_response, request_ids
from service.errors import ServiceError


def error_body(code: str, message: str, details=None) -> dict:
    error = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    error["request_id"] = request_ids.current()
    return {"error": error}


# A protocol that has its own error shape (Open Inference Protocol: {"error": "..."};
# MLflow: {"error_code": ..., "message": ...}) registers a formatter for its blueprint,
# and for its path prefix so that unknown routes under it answer in the same shape.
ErrorFormatter = Callable[[str, str, Any], dict]
_BLUEPRINT_FORMATS: dict[str, ErrorFormatter] = {}
_PATH_FORMATS: list[tuple[str, ErrorFormatter]] = []


def register_format(
    formatter: ErrorFormatter, *, blueprint: str, path_prefixes: tuple[str, ...] = ()
) -> None:
    _BLUEPRINT_FORMATS[blueprint] = formatter
    for prefix in path_prefixes:
        if (prefix, formatter) not in _PATH_FORMATS:
            _PATH_FORMATS.append((prefix, formatter))


def _render(code: str, message: str, details=None) -> dict:
    formatter = _BLUEPRINT_FORMATS.get(request.blueprint or "")
    if formatter is None:
        path = request.path
        formatter = next(
            (f for prefix, f in _PATH_FORMATS if path == prefix or path.startswith(prefix + "/")),
            error_body,
        )
    return formatter(code, message, details)


def init_app(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError):
        if exc.status >= 500:
            app.logger.error("request %s: %s: %s", request_ids.current(), exc.code, exc.message)
        return json_response(_render(exc.code, exc.message, exc.details), status=exc.status)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return json_response(
            _render(
                "body_too_large",
                f"the request body is larger than the limit of {limit} bytes",
                {"max_body_bytes": limit},
            ),
            status=413,
        )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = re.sub(r"[^a-z0-9]+", "_", (exc.name or "error").lower()).strip("_")
        message = exc.description or exc.name
        if exc.code == 404:
            message = f"no route {request.path}"
        elif exc.code == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        # Keep the headers Werkzeug set for this error (Allow on a 405, for one).
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return json_response(_render(code, message), status=exc.code or 500, headers=headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        app.logger.exception("request %s: unexpected error", request_ids.current())
        return json_response(
            _render(
                "internal_error",
                "the server failed to handle this request; quote the request id when reporting it",
            ),
            status=500,
        )

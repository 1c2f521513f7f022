"""The one place errors become HTTP responses: ``{"error": {code, message, details}}``.

Client mistakes keep their 4xx status and say what was wrong; anything
unexpected is logged with its traceback and answered with a JSON 500 that
carries the request id, never the traceback or the request payload.
"""

from __future__ import annotations

import re

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


def init_app(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError):
        if exc.status >= 500:
            app.logger.error("request %s: %s: %s", request_ids.current(), exc.code, exc.message)
        return json_response(error_body(exc.code, exc.message, exc.details), status=exc.status)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return json_response(
            error_body(
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
        return json_response(error_body(code, message), status=exc.code or 500, headers=headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        app.logger.exception("request %s: unexpected error", request_ids.current())
        return json_response(
            error_body(
                "internal_error",
                "the server failed to handle this request; quote the request id when reporting it",
            ),
            status=500,
        )

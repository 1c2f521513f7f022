"""Request-level monitoring: Prometheus request metrics and the one-JSON-line request log.

A before_request hook notes the time; the prediction observer notes which model and
version served and how many instances; after_request counts the request (route = the
URL rule, never the raw path, so label values stay bounded), times it, counts a refused
body by its error code, and writes the log line. Feature values are never logged.
"""

from __future__ import annotations

import contextvars
import time
from http import HTTPStatus
from typing import Any

from flask import Flask, Request, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from service.api import request_ids
from service.config import Settings
from service.errors import ServiceError
from service.monitoring import logs
from service.monitoring.metrics import NO_LABEL, Metrics
from service.runtime import hooks
from service.runtime.registry import ModelRegistry

UNMATCHED_ROUTE = "<unmatched>"
# Statuses of a request refused for its body: counted as validation failures.
VALIDATION_STATUSES = frozenset(
    {
        HTTPStatus.BAD_REQUEST,
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        HTTPStatus.UNPROCESSABLE_ENTITY,
    }
)
# View arguments that name a model: the native and MLflow routes, and v2's.
MODEL_ARGS = ("model_ref", "name")

# (model name, version, instances) of the prediction served for the current request.
_served: contextvars.ContextVar[tuple[str, int, int] | None] = contextvars.ContextVar(
    "model_service_served", default=None
)


def note_prediction(event: hooks.PredictionEvent) -> None:
    _served.set((event.model.name, event.model.version, len(event.prediction.predictions)))


def init_app(
    app: Flask, settings: Settings, registry: ModelRegistry, metrics: Metrics | None
) -> None:
    """Register the hooks the settings ask for (none when metrics, the app's own or None
    when they are off, and the request log are both off)."""
    count = metrics is not None
    write_log = settings.request_log
    if not (count or write_log):
        return
    registry.observers.add(note_prediction)
    request_log = logs.RequestLog()

    @app.before_request
    def start_observing() -> None:
        g.model_service_started = time.perf_counter()
        _served.set(None)

    # Every exception a view raises passes through here before its error handler renders
    # it: keep it so after_request can count a refused body by its error code.
    handle_user_exception = app.handle_user_exception

    def note_exception(exc: Exception):
        g.model_service_error = exc
        return handle_user_exception(exc)

    app.handle_user_exception = note_exception  # type: ignore[method-assign]

    @app.after_request
    def finish_observing(response):
        # The real objects behind Flask's proxies, once: each proxy access costs a lookup.
        context = g._get_current_object()  # type: ignore[attr-defined]
        started = getattr(context, "model_service_started", None)
        if started is None:
            return response
        seconds = time.perf_counter() - started
        current = request._get_current_object()  # type: ignore[attr-defined]
        rule = current.url_rule
        route = rule.rule if rule is not None else UNMATCHED_ROUTE
        status = response.status_code
        served = _served.get()
        if served is not None:
            model, version, instances = served[0], str(served[1]), served[2]
        else:
            model, version, instances = _named_model(current, registry), NO_LABEL, 0
        if metrics is not None:
            metrics.observe_request(route, model, version, status, seconds)
            if status in VALIDATION_STATUSES:
                error = getattr(context, "model_service_error", None)
                metrics.observe_validation_failure(model, failure_reason(error, status))
        if write_log:
            method = current.method
            fields = {
                "request_id": request_ids.of(context),
                "method": method,
                "route": route,
                "path": current.path,
                "model": model,
                "version": version,
                "status": status,
                "instances": instances,
                "latency_ms": round(seconds * 1000.0, 3),
            }
            # Who asked: the name of the key that was accepted (never the key itself).
            key_name = getattr(context, "api_key_name", None)
            if key_name is not None:
                fields["key"] = key_name
            request_log.write(f"{method} {route} {status}", fields)
        return response


def _named_model(current: Request, registry: ModelRegistry) -> str:
    """The model a request's URL names, when it is one this process has loaded (an
    arbitrary name from a client never becomes a label value)."""
    args = current.view_args
    if not args:
        return NO_LABEL
    for key in MODEL_ARGS:
        value = args.get(key)
        if isinstance(value, str):
            name = value.split("@", 1)[0]
            if any(model.name == name for model in registry.loaded()):
                return name
            return NO_LABEL
    return NO_LABEL


# The first problem of an invalid_input error, as a short fixed kind: its message is for
# people and may quote a value, so only these words ever reach a label.
_PROBLEM_KINDS = (
    ("is null", "missing_value"),
    ("is NaN", "missing_value"),
    ("expected a number", "not_a_number"),
    ("expected an integer", "not_an_integer"),
    ("number is out of range", "out_of_range"),
    ("is Infinity", "out_of_range"),
    ("expected a category", "not_a_category"),
    ("category not seen", "unknown_category"),
    ("mixes objects and lists", "shape"),
    ("has ", "shape"),
    ("is ", "shape"),
)


def problem_kind(details: Any) -> str | None:
    if not isinstance(details, list) or not details or not isinstance(details[0], dict):
        return None
    first = details[0]
    if first.get("missing"):
        return "missing_feature"
    if first.get("unknown"):
        return "unknown_feature"
    text = str(first.get("problem", ""))
    for prefix, kind in _PROBLEM_KINDS:
        if text.startswith(prefix):
            return kind
    return "other"


def failure_reason(exc: BaseException | None, status: int) -> str:
    if isinstance(exc, ServiceError):
        kind = problem_kind(exc.details) if exc.code == "invalid_input" else None
        return f"{exc.code}:{kind}" if kind else exc.code
    if isinstance(exc, RequestEntityTooLarge):
        return "body_too_large"
    if isinstance(exc, HTTPException):
        return f"http_{exc.code}"
    return f"http_{status}"

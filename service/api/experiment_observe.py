"""Recording the answers of an experiment's variants over HTTP (native, v2, MLflow).

Before each request the clock starts; a view that routes the request into an experiment
sets ``hooks.assignment`` (service.api.routing). After the answer, the request's status
(and error code) says whether the variant answered, failed (5xx, non-finite outputs) or
the client made a mistake (any other 4xx: not counted), and
``service.monitoring.experiments.record`` takes it from there, off the request path.
"""

from __future__ import annotations

import time

from flask import Flask, g, request

from service.api import request_ids, state
from service.api.observe import MODEL_ARGS
from service.errors import ServiceError
from service.monitoring import experiments
from service.runtime import hooks


def init_app(app: Flask) -> None:
    # Live quality per variant, at scrape time, from the feedback joined to its requests.
    experiments.install_collector()

    @app.before_request
    def start_clock() -> None:
        g.experiment_started = time.perf_counter()

    # The error a view raised, before its handler renders it: its code tells non-finite
    # outputs (the variant's failure) from bad input (the client's), both 422.
    handle_user_exception = app.handle_user_exception

    def note_error(exc: Exception):
        if hooks.assignment.get() is not None:
            g.experiment_error = exc
        return handle_user_exception(exc)

    app.handle_user_exception = note_error  # type: ignore[method-assign]

    @app.after_request
    def record_answer(response):
        assignment = hooks.assignment.get()
        if assignment is None:
            return response
        context = g._get_current_object()  # type: ignore[attr-defined]
        started = getattr(context, "experiment_started", None)
        model = _model_of(request.view_args) or _model_running(assignment.experiment)
        if started is None or model is None:
            return response
        error = getattr(context, "experiment_error", None)
        code = error.code if isinstance(error, ServiceError) else None
        experiments.record(
            model,
            request_ids.of(context),
            experiments.failed(response.status_code, code),
            time.perf_counter() - started,
        )
        return response


def _model_of(args: dict | None) -> str | None:
    """The model the URL names (the routed one: an experiment only routes a model's name)."""
    for key in MODEL_ARGS:
        value = (args or {}).get(key)
        if isinstance(value, str):
            return value.split("@", 1)[0]
    return None


def _model_running(experiment_id: str) -> str | None:
    """The model whose experiment this is, for a route that names no model (MLflow's
    /invocations serves the default one)."""
    registry = state().registry
    for name in registry.served_names():
        running = registry.experiment(name)
        if running is not None and running.id == experiment_id:
            return name
    return None

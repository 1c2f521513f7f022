"""Recording the answers of an experiment's variants over HTTP (native, v2, MLflow).

Before each request the clock starts; a view that routes the request into an experiment
sets ``hooks.assignment`` (service.api.routing). After the answer, the request's status
(and error code) says whether the variant answered, failed (5xx, non-finite outputs) or
the client made a mistake (any other 4xx: not counted), and
the app's monitoring (``Monitoring.record_experiment``) takes it from there, off the
request path.
"""

from __future__ import annotations

import time

from flask import Flask, g

from service.api import request_ids
from service.errors import ServiceError
from service.monitoring import experiments
from service.monitoring.hub import Monitoring
from service.runtime import hooks


def init_app(app: Flask, monitoring: Monitoring) -> None:
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
        # The model the request was routed to (service.api.routing), whichever route it
        # came by: MLflow's /invocations names none.
        routed = getattr(context, "model_service_routed", None)
        if started is None or routed is None:
            return response
        model = routed[0]
        error = getattr(context, "experiment_error", None)
        code = error.code if isinstance(error, ServiceError) else None
        monitoring.record_experiment(
            model,
            request_ids.of(context),
            experiments.failed(response.status_code, code),
            time.perf_counter() - started,
        )
        return response

"""Routing a prediction request over HTTP: the registry picks the model (an experiment's
variant for a request that names no version), with the client key from the header the
experiment names or the body field a view reads; every answer then names the version that
served it (``X-Model-Version``) and, in an experiment, its variant and the experiment
(``X-Model-Variant``, ``X-Experiment-Id``): the success and the errors after routing alike.
"""

from __future__ import annotations

from flask import Flask, g, request

from service.api import state
from service.protocols import routing
from service.protocols.routing import Reader
from service.runtime import hooks
from service.runtime.model import LoadedModel
from service.store import ModelRef


def route(
    ref: ModelRef, field: Reader | None = None
) -> tuple[LoadedModel, hooks.Assignment | None]:
    """The model for ``ref`` and its assignment; ``field`` reads a body field by name
    (called only when an experiment takes client keys from one and no header gave one)."""

    def client_key(experiment) -> str | None:
        return routing.client_key(experiment, request.headers.get, field)

    model, assignment = state().registry.route(ref, client_key)
    note_routed(model, assignment)
    return model, assignment


def note_routed(model: LoadedModel, assignment: hooks.Assignment | None) -> None:
    """Keep what serves the request, for its answer's headers (the errors after this point
    too) and the experiment's record of it."""
    g.model_service_routed = (model.name, model.version, assignment)


def init_app(app: Flask) -> None:
    @app.before_request
    def forget_assignment() -> None:
        # A worker's thread serves one request after another: a request routes anew.
        hooks.assignment.set(None)

    @app.after_request
    def name_what_served(response):
        routed = getattr(g, "model_service_routed", None)
        if routed is not None:
            _, version, assignment = routed
            response.headers.update(routing.headers(version, assignment))
        return response

"""MLflow's scoring server routes, over the same runtime as the native API.

- ``POST /invocations``: the default model (setting ``default_model``; when unset and
  exactly one model is served, that one);
- ``POST /v1/models/<name[@version|@alias]>/invocations``: any served model;
- ``GET /ping`` and ``GET /health``: 200 ``{"status": "ready"}`` when ready, 503 with the
  reason otherwise (MLflow's clients look at the status only).

Bodies are MLflow's (see service/protocols/mlflow.py), answers ``{"predictions": [...]}``,
errors MLflow's ``{"error_code": ..., "message": ...}`` with our HTTP statuses. While the
model runs an experiment, a request that names no version is served by the variant
assigned to it (client key: the experiment's key header, or its key field in ``params``).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from service.api import errors, json_response, request_ids, routing, state
from service.errors import Conflict, ModelNotReady, NotFound, ServiceError
from service.protocols import mlflow as codec
from service.protocols.native import parse_json
from service.protocols.routing import field_of
from service.runtime.schema import InputSchema
from service.store import ModelRef, parse_ref

bp = Blueprint("mlflow", __name__)

ERROR_PATHS = ("/invocations", "/ping", "/health")


def format_error(code: str, message: str, details=None) -> dict:
    return codec.error_body(code, message, details, request_ids.current())


# Once the blueprint is registered on an app, its errors (and those of unknown routes under
# its paths) are rendered in MLflow's shape.
bp.record_once(
    lambda _setup: errors.register_format(
        format_error, blueprint=bp.name, path_prefixes=ERROR_PATHS
    )
)


def default_model_ref() -> ModelRef:
    """The model /invocations serves."""
    service = state()
    if service.settings.default_model:
        return parse_ref(service.settings.default_model)
    names = service.registry.served_names()
    if len(names) == 1:
        return ModelRef(names[0])
    if not names:
        raise NotFound(
            "no model is served, so /invocations has nothing to serve",
            code="no_model_served",
        )
    raise Conflict(
        f"{len(names)} models are served ({', '.join(names)}) and no default model is set: "
        "set MODEL_SERVICE_DEFAULT_MODEL to the one /invocations serves (e.g. "
        f"{names[0]} or {names[0]}@production), or POST to /v1/models/<name>/invocations",
        details={"models": names},
        code="default_model_not_set",
    )


class ScoringBody:
    """The request's body, read (and JSON parsed) once: while routing when an experiment
    takes client keys from a ``params`` entry, else after (so an unknown model is a 404
    whatever the body)."""

    __slots__ = ("mimetype", "payload", "raw")

    def __init__(self, mimetype: str) -> None:
        self.mimetype = mimetype
        self.raw: bytes | None = None
        self.payload: Any = None

    def read(self) -> bytes:
        if self.raw is None:
            raw = request.get_data(cache=False)
            if self.mimetype == codec.CONTENT_TYPE_JSON:
                self.payload = parse_json(raw)
            self.raw = raw
        return self.raw

    def param(self, name: str) -> Any:
        """A ``params`` entry of a JSON body (a CSV has none)."""
        if self.mimetype != codec.CONTENT_TYPE_JSON:
            return None
        self.read()
        return field_of(field_of(self.payload, codec.PARAMS), name)

    def scoring(
        self, schema: InputSchema, max_instances: int, key_fields: frozenset[str]
    ) -> codec.ScoringRequest:
        raw = self.read()
        if self.mimetype == codec.CONTENT_TYPE_JSON:
            return codec.parse_json_request(self.payload, schema, max_instances, key_fields)
        return codec.parse_request(raw, self.mimetype, schema, max_instances)


def _invoke(ref: ModelRef) -> Response:
    service = state()
    mimetype = codec.check_content_type(request.mimetype, dict(request.mimetype_params))
    body = ScoringBody(mimetype)
    model, assignment = routing.route(ref, body.param)
    scoring = body.scoring(
        model.schema, service.settings.max_instances, service.registry.key_fields(model.name)
    )
    return json_response(codec.predict(model, scoring, assignment))


@bp.post("/invocations")
def invocations():
    return _invoke(default_model_ref())


@bp.post("/v1/models/<model_ref>/invocations")
def model_invocations(model_ref: str):
    return _invoke(parse_ref(model_ref))


@bp.get("/ping")
@bp.get("/health")
def ping():
    """Ready when every served model's default alias is loaded and /invocations' model
    can be served. With several models and no default set, /invocations answers 409 but
    the per-model routes serve, so the service counts as ready."""
    service = state()
    ready, models = service.registry.readiness()
    if not ready:
        waiting = sorted(name for name, entry in models.items() if not entry["ready"])
        raise ModelNotReady(
            f"not ready: waiting for {', '.join(waiting) or 'the first look at the store'}",
            details={"models": models},
            code="not_ready",
        )
    try:
        ref = default_model_ref()
    except Conflict:
        ref = None
    except NotFound as exc:
        raise ModelNotReady(exc.message, code="not_ready") from None
    if ref is not None:
        try:
            service.registry.get(ref)
        except ServiceError as exc:
            raise ModelNotReady(
                f"not ready: /invocations cannot serve {ref}: {exc.message}",
                details={"model": str(ref)},
                code="not_ready",
            ) from None
    # MLflow's own server answers a bare newline labelled application/json; clients look at
    # the status only, so this answers JSON that is what its Content-Type says.
    return json_response({"status": "ready"})

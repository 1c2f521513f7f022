"""POST /v1/models/<name[@version|@alias]>/predict"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from service.api import json_response, request_ids, routing, state
from service.errors import UnsupportedMediaType
from service.protocols import native
from service.protocols.routing import field_of
from service.store import parse_ref

bp = Blueprint("predict", __name__)

JSON_MIMETYPES = frozenset({"application/json"})
# Content-Type headers as clients send them, accepted as they are; any other is parsed.
PLAIN_JSON_CONTENT_TYPES = frozenset(
    {"application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"}
)


def require_json() -> None:
    if request.environ.get("CONTENT_TYPE") in PLAIN_JSON_CONTENT_TYPES:
        return
    if request.mimetype not in JSON_MIMETYPES:
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {request.mimetype or 'none'!r}",
            details={"content_type": request.content_type},
        )
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in {"utf-8", "utf8"}:
        raise UnsupportedMediaType(f"charset must be utf-8, got {charset!r}")


class JsonBody:
    """The request's JSON body, read and parsed once: while routing when an experiment takes
    client keys from a body field, else after (so an unknown model is a 404 whatever the
    body)."""

    __slots__ = ("payload", "raw")

    def __init__(self) -> None:
        self.raw: bytes | None = None
        self.payload: Any = None

    def read(self) -> tuple[bytes, Any]:
        if self.raw is None:
            require_json()
            raw = request.get_data(cache=False)
            self.payload = native.parse_json(raw)
            self.raw = raw
        return self.raw, self.payload

    def field(self, name: str) -> Any:
        return field_of(self.read()[1], name)


@bp.post("/v1/models/<model_ref>/predict")
def predict(model_ref: str):
    service = state()
    json_body = JsonBody()
    model, assignment = routing.route(parse_ref(model_ref), json_body.field)
    body, payload = json_body.read()
    instances = native.instances_from(
        payload, service.settings.max_instances, service.registry.key_fields(model.name)
    )
    prediction = model.predict(
        instances,
        may_hold_booleans=native.may_hold_booleans(body),
        may_hold_text=native.may_hold_text(body),
    )
    return json_response(
        native.encode_prediction(model, prediction, request_ids.current(), assignment)
    )

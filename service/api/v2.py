"""The Open Inference Protocol v2 over HTTP (KServe, Triton and MLServer clients).

GET  /v2                                              server metadata
GET  /v2/health/live, /v2/health/ready                200, or 503 when a served model is not loaded
GET  /v2/models/<name>[/versions/<v>]                 model metadata
GET  /v2/models/<name>[/versions/<v>]/ready           200, or 503 when it cannot serve
POST /v2/models/<name>[/versions/<v>]/infer           JSON, or JSON + binary tensor data

Without a version the default alias serves, as on the native API (or, while the model
runs an experiment, the variant it assigns: the client key is the experiment's key header
or an entry of the request's ``parameters`` named by its key field); a version is a
number or an alias. Errors answer ``{"error": "<message>"}`` with the status the
native API would use. The codec lives in ``service.protocols.v2``.
"""

from __future__ import annotations

import functools
import re

from flask import Blueprint, Response, request

from service.api import errors, json_response, routing, state
from service.errors import BadRequest, ModelNotReady, UnsupportedMediaType
from service.protocols import v2
from service.runtime.model import LoadedModel
from service.store import ModelRef
from service.store.layout import check_alias, check_name, check_version

bp = Blueprint("v2", __name__, url_prefix="/v2")

errors.register_format(
    lambda code, message, details: {"error": message}, blueprint="v2", path_prefixes=("/v2",)
)

# tritonclient sends its requests without a Content-Type; JSON bodies and the binary
# tensor data extension (application/octet-stream) are the two formats.
BODY_MIMETYPES = frozenset({"", "application/json", "application/octet-stream"})
STATUS_NOT_READY = 503
HEADER_LENGTH_PATTERN = re.compile(r"[0-9]{1,19}")


@bp.get("")
def server_metadata():
    return json_response(v2.server_metadata())


@bp.get("/health/live")
def live():
    return json_response({"live": True})


@bp.get("/health/ready")
def ready():
    is_ready, _ = state().registry.readiness()
    return json_response({"ready": is_ready}, status=200 if is_ready else STATUS_NOT_READY)


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    model = _model(name, version)
    return json_response(v2.model_metadata(model, state().store.versions(model.name)))


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    try:
        _model(name, version)
    except ModelNotReady:
        return json_response({"name": name, "ready": False}, status=STATUS_NOT_READY)
    return json_response({"name": name, "ready": True})


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    body = _body()
    header_length = _header_length()
    # Parsed while routing when an experiment keys clients on a parameter, else after (an
    # unknown model is a 404 whatever the body).
    parse = functools.cache(lambda: v2.parse_infer_request(body, header_length))
    model, assignment = routing.route(
        _ref(name, version), lambda field: parse().parameters.get(field)
    )
    inference = parse()
    names = v2.requested_output_names(model, inference.output_names())
    rows = v2.decode_inputs(model, inference.inputs, max_instances=state().settings.max_instances)
    prediction = model.predict(rows, with_proba=v2.OUTPUT_PROBA in names)
    parameters = {"backend": prediction.backend}
    if assignment is not None:
        parameters.update(experiment=assignment.experiment, variant=assignment.variant)
    payload, json_length = v2.encode_infer_response(
        model,
        v2.output_tensors(model, prediction, names),
        binary=inference.binary_names(names),
        request_id=inference.id,
        parameters=parameters,
    )
    if json_length is None:
        return Response(payload, mimetype="application/json")
    return Response(
        payload,
        mimetype="application/octet-stream",
        headers={v2.HEADER_LENGTH: str(json_length)},
    )


def _model(name: str, version: str | None) -> LoadedModel:
    return state().registry.get(_ref(name, version))


def _ref(name: str, version: str | None) -> ModelRef:
    check_name(name)
    if version is None:
        return ModelRef(name)
    if version.isdigit():
        return ModelRef(name, version=check_version(version))
    return ModelRef(name, alias=check_alias(version))


def _body() -> bytes:
    if request.mimetype not in BODY_MIMETYPES:
        raise UnsupportedMediaType(
            "Content-Type must be application/json (or application/octet-stream with "
            f"binary tensor data), got {request.mimetype!r}",
            details={"content_type": request.content_type},
        )
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in {"utf-8", "utf8"}:
        raise UnsupportedMediaType(f"charset must be utf-8, got {charset!r}")
    # Compressed bodies (tritonclient's request_compression_algorithm) arrive decoded:
    # service.api.content_encoding does it for every route, within max_body_bytes.
    return request.get_data(cache=False)


def _header_length() -> int | None:
    value = request.headers.get(v2.HEADER_LENGTH)
    if value is None:
        return None
    # ASCII digits only (str.isdigit takes "²", which int() refuses), and few enough that
    # int() takes them (it refuses more than 4300).
    if not HEADER_LENGTH_PATTERN.fullmatch(value.strip()):
        raise BadRequest(
            f"{v2.HEADER_LENGTH} must be the length of the JSON header in bytes, got {value!r}",
            code="invalid_header_length",
        )
    return int(value)

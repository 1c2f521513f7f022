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
native API would use. Only HTTP is done here: the steps of each call are the data plane's
(``service.protocols.v2.dataplane``), shared with the gRPC server; the body's format is
``service.protocols.v2.rest``.
"""

from __future__ import annotations

import functools
import re

from flask import Blueprint, Response, request

from service.api import errors, json_response, routing, state
from service.errors import BadRequest, UnsupportedMediaType
from service.protocols import v2
from service.protocols.v2 import rest
from service.protocols.v2.dataplane import DataPlane
from service.store.layout import model_ref

bp = Blueprint("v2", __name__, url_prefix="/v2")

errors.register_format(rest.error_body, blueprint="v2", path_prefixes=("/v2",))

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
    is_ready = _plane().ready()
    return json_response({"ready": is_ready}, status=200 if is_ready else STATUS_NOT_READY)


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    return json_response(_plane().model_metadata(model_ref(name, version)))


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    if not _plane().model_ready(model_ref(name, version)):
        return json_response({"name": name, "ready": False}, status=STATUS_NOT_READY)
    return json_response({"name": name, "ready": True})


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    body = _body()
    header_length = _header_length()
    # Parsed while routing when an experiment keys clients on a parameter, else after.
    parse = functools.cache(lambda: rest.parse_infer_request(body, header_length))
    answer = _plane().infer(
        model_ref(name, version),
        parse,
        header=request.headers.get,
        parameter=lambda field: parse().parameters.get(field),
        routed=routing.note_routed,
    )
    inference = parse()
    payload, json_length = rest.encode_infer_response(
        answer.model,
        answer.outputs,
        binary=inference.binary_names([tensor.name for tensor in answer.outputs]),
        request_id=inference.id,
        parameters=answer.parameters,
    )
    if json_length is None:
        return Response(payload, mimetype="application/json")
    return Response(
        payload,
        mimetype="application/octet-stream",
        headers={rest.HEADER_LENGTH: str(json_length)},
    )


def _plane() -> DataPlane:
    service = state()
    return DataPlane(service.registry, service.settings)


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
    value = request.headers.get(rest.HEADER_LENGTH)
    if value is None:
        return None
    # ASCII digits only (str.isdigit takes "²", which int() refuses), and few enough that
    # int() takes them (it refuses more than 4300).
    if not HEADER_LENGTH_PATTERN.fullmatch(value.strip()):
        raise BadRequest(
            f"{rest.HEADER_LENGTH} must be the length of the JSON header in bytes, got {value!r}",
            code="invalid_header_length",
        )
    return int(value)

"""``inference.GRPCInferenceService``: the protobuf messages to and from the Open Inference
Protocol's data plane (``service.protocols.v2.dataplane``), which the HTTP routes share.

Errors are gRPC statuses: a client mistake (400, 413, 422) is INVALID_ARGUMENT, an unknown
model, version or alias NOT_FOUND, a model that cannot be loaded UNAVAILABLE, a conflict
FAILED_PRECONDITION, anything else INTERNAL (with the traceback in the log only). The
error's code goes in the ``error-code`` trailing metadata.

While a model runs an experiment, a request that names no version is served by the variant
assigned to it (client key: the metadata named by the experiment's key header, in lower
case, or the request parameter named by its key field). Every answer says what served it:
``model_version``, and the ``x-model-version`` initial metadata; in an experiment also the
``experiment`` and ``variant`` response parameters and the ``x-experiment-id`` and
``x-model-variant`` metadata.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import grpc

from service import safejson
from service.config import Settings
from service.errors import BadRequest, ServiceError
from service.monitoring import experiments
from service.protocols import routing, v2
from service.protocols.grpc import open_inference_pb2 as pb
from service.protocols.grpc import open_inference_pb2_grpc as pb_grpc
from service.protocols.grpc import tensors
from service.protocols.v2.dataplane import DataPlane
from service.runtime import hooks
from service.runtime.registry import ModelRegistry
from service.store import ModelRef, parse_ref
from service.store.layout import model_ref as named_ref

log = logging.getLogger("service.grpc")

STATUS_CODES = {
    HTTPStatus.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.UNPROCESSABLE_ENTITY: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    HTTPStatus.SERVICE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    HTTPStatus.CONFLICT: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_code(error: ServiceError) -> grpc.StatusCode:
    return STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)


def model_ref(name: str, version: str) -> ModelRef:
    """``name`` with ``version`` empty (the default alias), a version number or an alias;
    ``name@3`` / ``name@staging`` work too when ``version`` is empty."""
    if "@" not in name:
        return named_ref(name, version or None)
    if version:
        raise BadRequest(
            "give the version in model_version or after '@' in the name, not both",
            code="invalid_model_name",
        )
    return parse_ref(name)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, registry: ModelRegistry, settings: Settings):
        self.plane = DataPlane(registry, settings)

    # -- health and metadata ---------------------------------------------------

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _call(context, lambda: pb.ServerReadyResponse(ready=self.plane.ready()))

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        def ready() -> Any:
            # The protocol has no error here: an unknown model is not ready either.
            try:
                is_ready = self.plane.model_ready(model_ref(request.name, request.version))
            except ServiceError:
                is_ready = False
            return pb.ModelReadyResponse(ready=is_ready)

        return _call(context, ready)

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _call(context, lambda: pb.ServerMetadataResponse(**v2.server_metadata()))

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        def metadata() -> Any:
            meta = self.plane.model_metadata(model_ref(request.name, request.version))
            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=[_tensor_metadata(t) for t in meta["inputs"]],
                outputs=[_tensor_metadata(t) for t in meta["outputs"]],
            )

        return _call(context, metadata)

    # -- inference -------------------------------------------------------------

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        # The request's id (echoed in the answer) joins feedback to these predictions, as
        # X-Request-ID does over HTTP. Reset after: the pool's threads serve other calls.
        token = hooks.request_id.set(request.id or None)
        assigned = hooks.assignment.set(None)
        try:
            # Inside an experiment the answer counts for its variant (ok, or failed).
            return _call(
                context,
                lambda: experiments.observed_call(
                    request.model_name.split("@", 1)[0],
                    request.id or None,
                    lambda: self._infer(request, context),
                ),
            )
        finally:
            hooks.assignment.reset(assigned)
            hooks.request_id.reset(token)

    def _infer(self, request: Any, context: grpc.ServicerContext) -> Any:
        def routed(model: Any, assignment: hooks.Assignment | None) -> None:
            # Errors after this point carry it too, as HTTP answers carry their headers.
            context.send_initial_metadata(routing.grpc_metadata(model.version, assignment))

        answer = self.plane.infer(
            model_ref(request.model_name, request.model_version),
            lambda: _inference_request(request),
            header=lambda name: _metadata_value(context, name.lower()),
            parameter=lambda name: _parameter_value(request.parameters, name),
            routed=routed,
        )
        response = pb.ModelInferResponse(
            model_name=answer.model.name, model_version=str(answer.model.version), id=request.id
        )
        for name, value in answer.parameters.items():
            response.parameters[name].string_param = value
        for tensor in answer.outputs:
            response.outputs.add(
                name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape)
            )
            response.raw_output_contents.append(tensors.encode_raw(tensor))
        return response


def _inference_request(request: Any) -> v2.InferenceRequest:
    """The codec's request: the tensors (the protocol's ``parameters`` are read one by one
    by the data plane, and only while an experiment takes client keys from one)."""
    return v2.InferenceRequest(
        inputs=tensors.decode_request_tensors(request),
        outputs=[v2.RequestedOutput(output.name) for output in request.outputs] or None,
        id=request.id or None,
    )


def _metadata_value(context: grpc.ServicerContext, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            return item.value if isinstance(item.value, str) else None
    return None


def _parameter_value(parameters: Any, name: str) -> Any:
    """An InferParameter's value (a string, an integer, a bool, a double), or None."""
    if name not in parameters:
        return None
    parameter = parameters[name]
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def _tensor_metadata(tensor: dict[str, Any]) -> Any:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=tensor["name"], datatype=tensor["datatype"], shape=list(tensor["shape"])
    )


def _call(context: grpc.ServicerContext, handler: Any) -> Any:
    """Run one RPC: a ServiceError becomes its gRPC status, anything else INTERNAL."""
    try:
        return handler()
    except ServiceError as exc:
        code, message, error_code = status_code(exc), exc.message, exc.code
        if code is grpc.StatusCode.INTERNAL:
            log.error("%s: %s", exc.code, exc.message)
    except Exception:
        log.exception("unexpected error in a gRPC call")
        code, message, error_code = (
            grpc.StatusCode.INTERNAL,
            "internal error; the server log has the details",
            "internal_error",
        )
    # Outside the except blocks: abort raises, and the handled error is no cause of it.
    context.set_trailing_metadata((("error-code", error_code),))
    # grpcio sends the message as UTF-8: a lone surrogate would fail the call as INTERNAL.
    context.abort(code, safejson.text(message))

"""The Open Inference Protocol (v2) over gRPC, next to the WSGI stack.

``python -m service.grpc_server [--port 8081] [--bind HOST:PORT] [--threads N]``
serves ``inference.GRPCInferenceService`` (ServerLive, ServerReady, ModelReady,
ServerMetadata, ModelMetadata, ModelInfer) from the same store, with the same
settings, registry and validation as the HTTP API: Triton's and KServe's gRPC
clients work against it. One process, a pool of threads; the registry's watcher
thread follows alias changes as it does in each Gunicorn worker.

Errors are gRPC statuses: a client mistake (400, 413, 422) is INVALID_ARGUMENT,
an unknown model, version or alias NOT_FOUND, a model that cannot be loaded
UNAVAILABLE, a conflict FAILED_PRECONDITION, anything else INTERNAL (with the
traceback in the log only). The error's code goes in the ``error-code`` trailing
metadata.

While a model runs an experiment, a request that names no version is served by the
variant assigned to it (client key: the metadata named by the experiment's key header,
in lower case, or the request parameter named by its key field). Every answer says what
served it: ``model_version``, and the ``x-model-version`` initial metadata; in an
experiment also the ``experiment`` and ``variant`` response parameters and the
``x-experiment-id`` and ``x-model-variant`` metadata.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent import futures
from http import HTTPStatus
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from service import safejson
from service.config import Settings
from service.errors import BadRequest, ServiceError
from service.grpc_auth import KeyInterceptor
from service.monitoring import experiments, logs, metrics, shadow_record
from service.monitoring import live as monitoring
from service.protocols import routing, v2
from service.protocols.grpc import open_inference_pb2 as pb
from service.protocols.grpc import open_inference_pb2_grpc as pb_grpc
from service.protocols.grpc import tensors
from service.runtime import hooks, shadow
from service.runtime.registry import ModelRegistry
from service.store import ModelRef, ModelStore, parse_ref

log = logging.getLogger("service.grpc")

DEFAULT_PORT = 8081
# Seconds in-flight calls get to finish after SIGTERM.
STOP_GRACE_SECONDS = 10.0

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
    if version:
        if "@" in name:
            raise BadRequest(
                "give the version in model_version or after '@' in the name, not both",
                code="invalid_model_name",
            )
        return parse_ref(f"{name}@{version}")
    return parse_ref(name)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, registry: ModelRegistry, settings: Settings):
        self.registry = registry
        self.settings = settings

    # -- health and metadata ---------------------------------------------------

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _call(context, lambda: pb.ServerReadyResponse(ready=self.registry.readiness()[0]))

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        def ready() -> Any:
            try:
                self.registry.get(model_ref(request.name, request.version))
            except ServiceError:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return _call(context, ready)

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _call(context, lambda: pb.ServerMetadataResponse(**v2.server_metadata()))

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        def metadata() -> Any:
            model = self.registry.get(model_ref(request.name, request.version))
            versions = self.registry.store.versions(model.name)
            meta = v2.model_metadata(model, versions)
            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=[str(v) for v in meta["versions"]],
                platform=meta.get("platform", ""),
                inputs=[_tensor_metadata(t) for t in meta.get("inputs", [])],
                outputs=[_tensor_metadata(t) for t in meta.get("outputs", [])],
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
        def client_key(experiment: Any) -> str | None:
            return routing.client_key(
                experiment,
                lambda name: _metadata_value(context, name.lower()),
                lambda name: _parameter_value(request.parameters, name),
            )

        ref = model_ref(request.model_name, request.model_version)
        model, assignment = self.registry.route(ref, client_key)
        # Errors after this point carry it too, as HTTP answers carry their headers.
        context.send_initial_metadata(routing.grpc_metadata(model.version, assignment))
        rows = v2.decode_inputs(
            model,
            tensors.decode_request_tensors(request),
            max_instances=self.settings.max_instances,
        )
        requested = [output.name for output in request.outputs] or None
        names = v2.requested_output_names(model, requested)
        prediction = model.predict(rows, with_proba=v2.OUTPUT_PROBA in names)
        response = pb.ModelInferResponse(
            model_name=model.name, model_version=str(model.version), id=request.id
        )
        response.parameters["backend"].string_param = prediction.backend
        if assignment is not None:
            response.parameters["experiment"].string_param = assignment.experiment
            response.parameters["variant"].string_param = assignment.variant
        for tensor in v2.output_tensors(model, prediction, names):
            response.outputs.add(
                name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape)
            )
            response.raw_output_contents.append(tensors.encode_raw(tensor))
        return response


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


# -- registration ------------------------------------------------------------------

SERVICE = "inference.GRPCInferenceService"


class _Undecodable:
    """What bytes that are no message of a method's request type parse to."""

    def __init__(self, problem: str):
        self.problem = problem


def add_servicer(servicer: InferenceServicer, server: grpc.Server) -> None:
    """Register the servicer as the generated ``add_GRPCInferenceServiceServicer_to_server``
    does, except that a request that does not parse is INVALID_ARGUMENT (``error-code``
    invalid_message), where grpcio answers INTERNAL and logs a traceback."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _refusing_undecodable(getattr(servicer, method.name), method.input_type.full_name),
            request_deserializer=_lenient(request_type.FromString),
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def _lenient(parse: Any) -> Any:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return deserialize


def _refusing_undecodable(handler: Any, type_name: str) -> Any:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            context.set_trailing_metadata((("error-code", "invalid_message"),))
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid {type_name} message: {request.problem}",
            )
        return handler(request, context)

    return handle


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


# -- the process ---------------------------------------------------------------


def create_server(
    settings: Settings, *, address: str, threads: int | None = None
) -> tuple[grpc.Server, ModelRegistry, int]:
    """A started-but-not-yet-serving server: the registry loaded, the port bound."""
    registry = ModelRegistry(ModelStore.from_settings(settings), settings)
    registry.refresh()
    # Served predictions join feedback, count for drift and reach the prediction log,
    # in the same state as the HTTP workers'.
    monitoring.install(settings, registry.store)
    # Experiments' shadow traffic, as the HTTP workers run and record it.
    shadow.install(registry)
    shadow_record.install(settings)
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=threads or os.cpu_count() or 1, thread_name_prefix="grpc"
        ),
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.so_reuseport", 0),
        ],
        # The API keys (service.grpc_auth), checked before any method runs.
        interceptors=[KeyInterceptor(settings)],
    )
    add_servicer(InferenceServicer(registry, settings), server)
    port = server.add_insecure_port(address)
    return server, registry, port


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.grpc_server",
        description="Serve the Open Inference Protocol over gRPC from the model store.",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="on 127.0.0.1")
    parser.add_argument("--bind", help="HOST:PORT to listen on instead (e.g. 0.0.0.0:8081)")
    parser.add_argument("--store", type=Path, help="default: the MODEL_SERVICE_STORE setting")
    parser.add_argument("--threads", type=int, help="calls served at once (default: CPU count)")
    args = parser.parse_args(argv)
    logs.configure()  # JSON lines on stderr, as the Gunicorn workers write them
    address = args.bind or f"127.0.0.1:{args.port}"
    try:
        settings = Settings.load(overrides={"store": args.store} if args.store else None)
        server, registry, port = create_server(settings, address=address, threads=args.threads)
    except (ValueError, OSError, RuntimeError, ServiceError) as exc:
        log.error("cannot start the gRPC server on %s: %s", address, exc)
        return 1
    if metrics.multiprocess():
        # Next to Gunicorn (same PROMETHEUS_MULTIPROC_DIR): its predictions are counted in
        # the same sums /metrics shows. It writes no live gauges, so nothing to mark dead.
        metrics.init_process(settings, registry)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    server.start()
    ready, _ = registry.readiness()  # also starts the watcher thread
    host = address.rsplit(":", 1)[0]
    log.info(
        "gRPC (Open Inference Protocol) listening on %s:%d, store %s, %s",
        host,
        port,
        Path(settings.store).resolve(),
        "every model loaded" if ready else "not ready yet",
    )
    stopping.wait()
    log.info("stopping: in-flight calls get %.0fs", STOP_GRACE_SECONDS)
    server.stop(STOP_GRACE_SECONDS).wait()
    registry.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

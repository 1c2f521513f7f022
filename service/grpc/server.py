"""The gRPC server's process: the Open Inference Protocol (v2) next to the WSGI stack.

``python -m service.grpc [--port 8081] [--bind HOST:PORT] [--threads N]`` serves
``inference.GRPCInferenceService`` (ServerLive, ServerReady, ModelReady, ServerMetadata,
ModelMetadata, ModelInfer; ``service.grpc.servicer``) from the same store, with the same
settings, registry and validation as the HTTP API: Triton's and KServe's gRPC clients work
against it. One process, a pool of threads; the registry's watcher thread follows alias
changes as it does in each Gunicorn worker. The API keys are checked before any method runs
(``service.grpc.auth``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from service.config import Settings
from service.errors import ServiceError
from service.grpc.auth import KeyInterceptor
from service.grpc.servicer import InferenceServicer
from service.monitoring import live as monitoring
from service.monitoring import logs, metrics, shadow_record
from service.protocols.grpc import open_inference_pb2 as pb
from service.runtime import shadow
from service.runtime.registry import ModelRegistry
from service.store import ModelStore

log = logging.getLogger("service.grpc")

DEFAULT_PORT = 8081
# Seconds in-flight calls get to finish after SIGTERM.
STOP_GRACE_SECONDS = 10.0


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
        # The API keys (service.grpc.auth), checked before any method runs.
        interceptors=[KeyInterceptor(settings)],
    )
    add_servicer(InferenceServicer(registry, settings), server)
    port = server.add_insecure_port(address)
    return server, registry, port


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.grpc",
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

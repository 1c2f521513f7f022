"""The API keys on the gRPC server: the same keys and scopes as over HTTP (service.api.auth),
sent as ``authorization: Bearer <key>`` metadata. No key, or an unknown or expired one, is
UNAUTHENTICATED; a valid key without the method's scope PERMISSION_DENIED; the error's code
goes in the ``error-code`` trailing metadata as for every other error."""

from __future__ import annotations

from typing import Any

import grpc

from service.config import Settings
from service.errors import Forbidden, ServiceError, Unauthorized
from service.keys import verifier_for

# Liveness and readiness stay public, as /healthz and /readyz do; a method not listed here
# (one added later) needs the narrowest grant there is until it is.
METHOD_SCOPES: dict[str, str | None] = {
    "ServerLive": None,
    "ServerReady": None,
    "ModelReady": "read",
    "ServerMetadata": "read",
    "ModelMetadata": "read",
    "ModelInfer": "predict",
}
UNMAPPED_SCOPE = "admin"


class KeyInterceptor(grpc.ServerInterceptor):
    def __init__(self, settings: Settings):
        self.verifier = verifier_for(settings)
        self.open_scopes = frozenset(settings.open_scopes)

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        method = details.method.rsplit("/", 1)[-1]
        scope = METHOD_SCOPES.get(method, UNMAPPED_SCOPE)
        if scope is None or scope in self.open_scopes:
            return continuation(details)
        try:
            self.verifier.authorize(_bearer(details.invocation_metadata or ()), scope)
        except Unauthorized as exc:
            return _refusal(grpc.StatusCode.UNAUTHENTICATED, exc)
        except Forbidden as exc:
            return _refusal(grpc.StatusCode.PERMISSION_DENIED, exc)
        return continuation(details)


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            scheme, _, token = str(value).strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("send the key as 'authorization: Bearer <key>' metadata")
            return token.strip()
    return None


def _refusal(code: grpc.StatusCode, error: ServiceError) -> Any:
    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.set_trailing_metadata((("error-code", error.code),))
        context.abort(code, error.message)

    return grpc.unary_unary_rpc_method_handler(refuse)

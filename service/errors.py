"""One error hierarchy for the whole service.

Each error carries the HTTP status it maps to, a stable machine-readable code
and a message for people. The core (store, runtime, training) raises these
without knowing about HTTP frameworks; the web layer renders them in one place.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class ServiceError(Exception):
    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    code: str = "internal_error"

    def __init__(self, message: str, details: Any = None, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


# --- client mistakes -------------------------------------------------------


class BadRequest(ServiceError):
    status = HTTPStatus.BAD_REQUEST
    code = "bad_request"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class InvalidInput(ServiceError):
    """The body parsed, but its instances do not fit the model's input schema."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "invalid_input"


class NonFiniteOutput(InvalidInput):
    """The model cannot score these instances: its output for them is NaN or infinite
    (their values are too large for its arithmetic). Refused, never served."""

    code = "non_finite_output"


class TooManyInstances(InvalidInput):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "too_many_instances"


class UnsupportedMediaType(ServiceError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_media_type"


class NotFound(ServiceError):
    status = HTTPStatus.NOT_FOUND
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class VersionNotFound(NotFound):
    code = "version_not_found"


class AliasNotFound(NotFound):
    code = "alias_not_found"


class Unauthorized(ServiceError):
    status = HTTPStatus.UNAUTHORIZED
    code = "unauthorized"


class Forbidden(ServiceError):
    status = HTTPStatus.FORBIDDEN
    code = "forbidden"


class Conflict(ServiceError):
    status = HTTPStatus.CONFLICT
    code = "conflict"


class PromotionRefused(Conflict):
    """The promotion gate refused: the version scores worse than the alias's current one,
    or the two cannot be compared. ``reason`` is the gate's verdict; ``message`` adds how
    to override it, which differs between the command line and the HTTP API."""

    code = "promotion_refused"

    def __init__(
        self,
        reason: str,
        details: Any = None,
        *,
        override: str = "promote with --force to override",
    ):
        super().__init__(f"{reason}; {override}", details)
        self.reason = reason


# --- the store and the runtime ----------------------------------------------


class StoreError(ServiceError):
    """The store is missing, unreadable or would be left inconsistent."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    code = "store_error"


class InvalidMetadata(StoreError):
    status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "invalid_metadata"


class IntegrityError(StoreError):
    """An artifact does not match the checksum its metadata records."""

    code = "integrity_error"


class SignatureRefused(IntegrityError):
    """A version whose signature does not verify against any trusted key (or that has
    none) while trusted keys are configured: it is never unpickled."""

    code = "signature_refused"

    def __init__(self, message: str, *, reason: str, details: Any = None):
        super().__init__(message, details)
        # unsigned | untrusted_key | mismatch | invalid: the metric's label.
        self.reason = reason


class StoreUnreachable(StoreError):
    """The authoritative store (a remote one) cannot be reached or did not answer."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "store_unreachable"


class RemoteStoreError(ServiceError):
    """An error the authoritative store's host reported, with the status and code it gave."""

    def __init__(self, status: int, code: str, message: str, details: Any = None):
        super().__init__(message, details, code=code)
        try:
            self.status = HTTPStatus(status)
        except ValueError:
            self.status = HTTPStatus.BAD_GATEWAY


class ModelLoadError(StoreError):
    """A model could not be loaded, or failed one of the checks made at load."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "model_load_error"


class ModelNotReady(ServiceError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "model_not_ready"


class ExtraNotInstalled(ServiceError):
    """What was asked needs a package of an optional extra that this install lacks: a
    server-only install (``pip install model-service``) serves and publishes, and training
    needs ``pip install 'model-service[training]'``."""

    status = HTTPStatus.NOT_IMPLEMENTED
    code = "extra_not_installed"

    def __init__(self, extra: str, missing: str | None, needed_for: str):
        super().__init__(
            f"{needed_for} needs the {extra} extra, and {missing} is not installed here: "
            f"pip install 'model-service[{extra}]'",
            details={"extra": extra, "missing": missing},
        )


# --- training -----------------------------------------------------------------


class TrainingError(ServiceError):
    """A training run cannot go on: the spec, the data or the result is not acceptable."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "training_error"

    def __init__(self, message: str, details: Any = None, *, field: str | None = None):
        super().__init__(message, details)
        self.field = field


class InvalidSpec(TrainingError):
    """The training spec has a mistake; ``field`` names where."""

    code = "invalid_spec"


class InvalidData(TrainingError):
    code = "invalid_data"


class BaselineNotBeaten(TrainingError):
    """The candidate does not beat the baseline by the spec's margin: not published."""

    code = "baseline_not_beaten"

"""A small Python client for the native HTTP API.

    from service.client import ModelClient

    client = ModelClient("http://127.0.0.1:8080")
    client.predict("iris-classifier", [[5.1, 3.5, 1.4, 0.2]])        # ['setosa']
    client.predict_proba("iris-classifier@2", [{"sepal_length_cm": 5.1, ...}])

Connection errors, timeouts and the 502/503/504 a proxy answers while workers restart are
retried with exponential backoff (predictions are safe to repeat); a 4xx never is. Every
error answer raises a :class:`ClientError` subclass carrying the server's JSON error.

Needs ``requests`` (and neither Flask nor the rest of the service).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import requests

RETRY_STATUSES = frozenset({502, 503, 504})


class ClientError(Exception):
    """An error answer (or none at all). ``status`` is the HTTP status (None without an
    answer); ``code``, ``message`` and ``details`` come from the server's JSON error;
    ``body`` is the whole decoded answer (or its text when it is not JSON)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: Any = None,
        body: Any = None,
    ):
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.body = body


class BadRequestError(ClientError):
    """400: the body's structure is wrong (not JSON, no instances, a bad model name)."""


class AuthenticationError(ClientError):
    """401 or 403: no valid key for this endpoint."""


class ModelNotFoundError(ClientError):
    """404: no such model, version or alias."""


class ConflictError(ClientError):
    """409: e.g. a promotion the gate refused."""


class PayloadTooLargeError(ClientError):
    """413: too many instances, or a body over the size limit."""


class UnsupportedMediaTypeError(ClientError):
    """415: the content type is not one the endpoint takes."""


class InvalidInputError(ClientError):
    """422: instances that do not fit the model; ``details`` names instance and feature."""


class ServerUnavailableError(ClientError):
    """502, 503 or 504 still answered after every retry (e.g. a model that cannot load)."""


class ProbabilitiesUnavailable(ClientError):
    """The model gives no probabilities (a regressor, or a classifier without them)."""


class ConnectionFailed(ClientError):
    """No answer at all after every attempt; ``attempts`` says how many were made."""

    def __init__(self, message: str, *, attempts: int):
        super().__init__(message)
        self.attempts = attempts


ERRORS_BY_STATUS: dict[int, type[ClientError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: ModelNotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: InvalidInputError,
    502: ServerUnavailableError,
    503: ServerUnavailableError,
    504: ServerUnavailableError,
}


class ModelClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
    ):
        """``retries`` is how many times a failed attempt is repeated (so at most
        ``retries + 1`` attempts); the n-th repeat waits ``backoff * 2**(n-1)`` seconds."""
        if retries < 0 or backoff < 0 or timeout <= 0:
            raise ValueError("retries and backoff must be at least 0, timeout more than 0")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json"
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    # -- the API -----------------------------------------------------------------------

    def predict(self, model_ref: str, instances: Any) -> list[Any]:
        """Predictions for instances: lists in feature order or objects keyed by feature
        name (a numpy array or anything with ``tolist()`` is sent as its lists)."""
        return self._predict(model_ref, instances)["predictions"]

    def predict_proba(self, model_ref: str, instances: Any) -> list[list[float]]:
        """Class probabilities, one list per instance, in the order of the model's classes
        (``model(name)["classes"]``)."""
        answer = self._predict(model_ref, instances)
        if "probabilities" not in answer:
            raise ProbabilitiesUnavailable(
                f"{answer.get('model', model_ref)}@{answer.get('version')} gives no probabilities",
                code="no_probabilities",
                body=answer,
            )
        return answer["probabilities"]

    def models(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/models")["models"]

    def model(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/models/{quote(name, safe='@')}")

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- HTTP ----------------------------------------------------------------------------

    def _predict(self, model_ref: str, instances: Any) -> dict[str, Any]:
        if hasattr(instances, "tolist"):
            instances = instances.tolist()
        path = f"/v1/models/{quote(model_ref, safe='@')}/predict"
        return self._request("POST", path, json={"instances": instances})

    def _request(self, method: str, path: str, json: Any = None) -> Any:
        url = self.base_url + path
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                response = self.session.request(method, url, json=json, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == attempts:
                    raise ConnectionFailed(
                        f"no answer from {url} after {attempts} "
                        f"attempt{'s' if attempts > 1 else ''}: {exc}",
                        attempts=attempts,
                    ) from exc
            else:
                if response.status_code < 400:
                    return response.json()
                if response.status_code not in RETRY_STATUSES or attempt == attempts:
                    raise _error(response)
            time.sleep(self.backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable")


def _error(response: requests.Response) -> ClientError:
    """The typed error for an error answer, from our JSON error shape
    (``{"error": {code, message, details}}``), MLflow's (``{"error_code", "message"}``) or
    Open Inference Protocol's (``{"error": "message"}``)."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = response.text
    code, message, details = None, None, None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code, message, details = error.get("code"), error.get("message"), error.get("details")
        elif isinstance(error, str):
            message = error
        elif "error_code" in body:
            code, message, details = body["error_code"], body.get("message"), body.get("details")
    if message is None:
        message = (response.text or response.reason or "").strip()[:500] or f"HTTP {status}"
    kind = ERRORS_BY_STATUS.get(status, ClientError)
    return kind(message, status=status, code=code, details=details, body=body)

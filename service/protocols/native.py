"""The native JSON protocol: ``{"instances": [...]}`` in, predictions out.

Pure functions over bytes and Python objects, so every check runs before the
model is touched and no web framework is needed to test or reuse them.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from service.errors import BadRequest, InvalidJSON, TooManyInstances
from service.runtime.model import LoadedModel, Prediction

INSTANCES_KEY = "instances"


def parse_json(body: bytes) -> Any:
    """Parse a JSON body. NaN and Infinity (not JSON, but sent by Python and JavaScript
    clients) parse to floats so that validation can say which feature carried them."""
    if not body:
        raise InvalidJSON("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as fast_error:
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise InvalidJSON(f"the request body is not valid JSON: {fast_error}") from None


def may_hold_booleans(body: bytes) -> bool:
    """Whether a value parsed from this JSON text can be a boolean: not when neither
    literal appears anywhere in it, which spares validation a look at every value's type."""
    # A search for one byte runs at memory speed, one for a word at a tenth of it: true
    # needs a "u" and false an "l", and a body of numbers in lists has neither.
    if b"u" not in body and b"l" not in body:
        return False
    return b"true" in body or b"false" in body


def instances_from(payload: Any, max_instances: int) -> list[Any]:
    if not isinstance(payload, dict):
        raise BadRequest(
            'the body must be a JSON object like {"instances": [...]}',
            code="invalid_payload",
        )
    if INSTANCES_KEY not in payload:
        raise BadRequest(
            'the body has no "instances" key; send {"instances": [...]}',
            details={"keys": sorted(map(str, payload))[:20]},
            code="missing_instances",
        )
    unexpected = sorted(set(payload) - {INSTANCES_KEY})
    if unexpected:
        raise BadRequest(
            f'unexpected keys {unexpected[:20]} next to "instances"',
            details={"unexpected": unexpected[:20]},
            code="unexpected_keys",
        )
    instances = payload[INSTANCES_KEY]
    if not isinstance(instances, list):
        raise BadRequest('"instances" must be a list', code="instances_not_a_list")
    if not instances:
        raise BadRequest('"instances" is empty; send at least one instance', code="no_instances")
    if len(instances) > max_instances:
        raise TooManyInstances(
            f"{len(instances)} instances in one request; at most {max_instances} are allowed",
            details={"instances": len(instances), "max_instances": max_instances},
        )
    return instances


def encode_prediction(
    model: LoadedModel, prediction: Prediction, request_id: str
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model.name,
        "version": model.version,
        "predictions": prediction.predictions,
    }
    if prediction.probabilities is not None:
        body["probabilities"] = prediction.probabilities
        body["classes"] = model.classes
    body["backend"] = prediction.backend
    body["request_id"] = request_id
    return body

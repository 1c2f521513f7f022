"""The native JSON protocol: ``{"instances": [...]}`` in, predictions out.

Pure functions over bytes and Python objects, so every check runs before the
model is touched and no web framework is needed to test or reuse them.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

import numpy as np
import orjson

from service import safejson
from service.errors import BadRequest, InvalidJSON, TooManyInstances
from service.protocols.routing import experiment_fields
from service.runtime.hooks import Assignment
from service.runtime.model import LoadedModel, Prediction

INSTANCES_KEY = "instances"


def parse_json(body: bytes) -> Any:
    """Parse a JSON body. NaN and Infinity (not JSON, but sent by Python and JavaScript
    clients) parse to floats so that validation can say which feature carried them.

    Refused with InvalidJSON, saying where: text that is not UTF-8 (or starts with a
    byte order mark, which RFC 8259 forbids), a number beyond the range of a 64-bit
    float (it would otherwise become an infinity nobody sent), and an object that
    repeats a key (JSON parsers disagree on which value wins)."""
    if not body:
        raise InvalidJSON("the request body is empty; send a JSON object")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as fast_error:
        return _parse_leniently(body, fast_error)
    if not _keys_surely_unique(body, payload):
        _parse_leniently(body, None)  # raises when a key is repeated
    return payload


UTF8_BOM = b"\xef\xbb\xbf"
_CONTAINERS = (dict, list)
FEW_COLONS = 16
_MAX_FLOAT_DIGITS = len(str(int(sys.float_info.max)))
_NUMBER = re.compile(r"-?[0-9][0-9.eE+-]*")
_NUMBER_AFTER = r"(?![0-9.eE+-])"
_NUMBER_BEFORE = r"(?<![0-9.eE+-])"


class NumberOutOfRange(ValueError):
    """A number literal beyond the range of a 64-bit float (JSON here, CSV in mlflow)."""

    def __init__(self, literal: str):
        super().__init__(literal)
        self.literal = literal


class _Repeated:
    """What an object that repeats a key parses to, so its place can be found."""

    def __init__(self, key: str):
        self.key = key


def _parse_leniently(body: bytes, fast_error: orjson.JSONDecodeError | None) -> Any:
    """What orjson refused, parsed by the standard library (which takes NaN and
    Infinity), or checked for repeated keys (``fast_error`` None)."""
    if body.startswith(UTF8_BOM):
        raise InvalidJSON(
            "the request body starts with a UTF-8 byte order mark (bytes EF BB BF); "
            "send the JSON without it",
            code="invalid_encoding",
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJSON(
            f"the request body is not valid UTF-8: {exc.reason} at byte {exc.start}",
            details={"byte": exc.start},
            code="invalid_encoding",
        ) from None
    if fast_error is not None and fast_error.msg.startswith("number is infinity"):
        number = _NUMBER.match(text, fast_error.pos)
        if number:
            raise _out_of_range(number.group(), fast_error.pos, text)
    repeated: list[_Repeated] = []

    def unique_keys(pairs: list[tuple[str, Any]]) -> Any:
        result = dict(pairs)
        if len(result) == len(pairs):
            return result
        seen: set[str] = set()
        marker = _Repeated(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
        repeated.append(marker)
        return marker

    try:
        payload = json.loads(
            text, parse_float=finite_float, parse_int=int_in_range, object_pairs_hook=unique_keys
        )
    except NumberOutOfRange as exc:
        found = re.search(_NUMBER_BEFORE + re.escape(exc.literal) + _NUMBER_AFTER, text)
        raise _out_of_range(exc.literal, found.start() if found else None, text) from None
    except (ValueError, RecursionError) as slow_error:
        raise InvalidJSON(
            f"the request body is not valid JSON: {fast_error or slow_error}"
        ) from None
    if repeated:
        key = repeated[0].key
        raise InvalidJSON(
            f"the key {safejson.text(key)[:64]!r} appears more than once in the object at "
            f"{_path_to(payload, repeated[0])}; a JSON object must not repeat a key",
            code="duplicate_key",
        )
    return payload


def finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise NumberOutOfRange(literal)
    return value


def int_in_range(literal: str) -> int:
    # More digits than the largest float has: out of range, before int() works on it
    # (it refuses more than 4300 digits with a ValueError of its own). A CSV may sign it.
    if len(literal.lstrip("+-")) > _MAX_FLOAT_DIGITS:
        raise NumberOutOfRange(literal)
    value = int(literal)
    try:
        float(value)
    except OverflowError:
        raise NumberOutOfRange(literal) from None
    return value


def _out_of_range(literal: str, position: int | None, text: str) -> InvalidJSON:
    shown = literal if len(literal) <= 32 else literal[:16] + "..." + literal[-8:]
    where = ""
    if position is not None:
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        where = f" at line {line} column {column}"
    return InvalidJSON(
        f"the number {shown}{where} is beyond the range of a 64-bit float "
        f"(about ±{sys.float_info.max:.4g})",
        code="number_out_of_range",
    )


def _keys_surely_unique(body: bytes, payload: Any) -> bool:
    """Whether no object in the body repeats a key, decided without a second parse in
    the usual case: every member of an object has a colon, so when the colons in the text
    are as many as the members of the parsed objects, none were merged. A colon inside a
    string, or members this quick count skips, leave it undecided (False)."""
    members = _members_at_least(payload, deep=False)
    if _colons(body, members) == members:
        return True
    deeper = _members_at_least(payload, deep=True)
    return deeper != members and _colons(body, deeper) == deeper


def _colons(body: bytes, expected: int) -> int:
    """The colons in ``body``, or (when few are expected) as many as ``expected`` + 1:
    a few searches for the next one skip a body of numbers at memchr's speed, several
    times faster than counting every byte."""
    if expected > FEW_COLONS:
        return body.count(b":")
    count, at = 0, body.find(b":")
    while at != -1 and count <= expected:
        count += 1
        at = body.find(b":", at + 1)
    return count


def _members_at_least(payload: Any, *, deep: bool) -> int:
    """How many members the objects of ``payload`` have, at least: those of the outer
    object and of the objects right under it (records) unless ``deep``. A list is looked
    into only when it holds objects, or lists that start with a list or an object, so a
    matrix of numbers costs nothing. Counting less is safe (the exact check runs); more
    never happens."""
    if type(payload) is not dict:
        return 0
    total = len(payload)
    if not deep:
        for value in payload.values():
            if type(value) is dict:
                total += len(value)
            elif (
                type(value) is list
                and value
                and type(value[0]) is dict
                and set(map(type, value)) == {dict}
            ):
                total += sum(map(len, value))  # in C: a thousand records in microseconds
        return total
    stack = [v for v in payload.values() if type(v) in _CONTAINERS]
    while stack:
        value = stack.pop()
        if type(value) is dict:
            total += len(value)
            stack.extend(v for v in value.values() if type(v) in _CONTAINERS)
        elif type(value) is list and value and _holds_containers(value):
            stack.extend(v for v in value if type(v) in _CONTAINERS)
    return total


def _holds_containers(items: list[Any]) -> bool:
    first = items[0]
    if type(first) is dict:
        return True
    return type(first) is list and bool(first) and type(first[0]) in _CONTAINERS


def _path_to(payload: Any, target: Any) -> str:
    """Where ``target`` sits in ``payload``, as a JSONPath (``$.instances[3]``)."""
    stack: list[tuple[Any, str]] = [(payload, "$")]
    while stack:
        value, path = stack.pop()
        if value is target:
            return path
        if type(value) is dict:
            stack.extend((v, f"{path}.{safejson.text(str(k))[:64]}") for k, v in value.items())
        elif type(value) is list:
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
    return "$"


def may_hold_booleans(body: bytes) -> bool:
    """Whether a value parsed from this JSON text can be a boolean: not when neither
    literal appears anywhere in it, which spares validation a look at every value's type."""
    # A search for one byte runs at memory speed, one for a word at a tenth of it: true
    # needs a "u" and false an "l", and a body of numbers in lists has neither.
    if b"u" not in body and b"l" not in body:
        return False
    return b"true" in body or b"false" in body


def may_hold_text(body: bytes) -> bool:
    """Whether a value inside an array of this JSON text can be a string (or an object,
    whose keys are strings): not when no quote follows its first "[", as in a body of
    numbers in lists, whose only string is the key before them."""
    start = body.find(b"[")
    return start != -1 and body.find(b'"', start) != -1


def instances_from(
    payload: Any, max_instances: int, key_fields: frozenset[str] = frozenset()
) -> list[Any]:
    """The instances of a body; ``key_fields``: the fields that may carry a client key
    next to them (see service.protocols.routing)."""
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
    unexpected = sorted(set(payload) - {INSTANCES_KEY} - key_fields)
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
    model: LoadedModel,
    prediction: Prediction,
    request_id: str,
    assignment: Assignment | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model.name, "version": model.version}
    if assignment is not None:
        body["experiment"] = experiment_fields(assignment)
    body["predictions"] = prediction.predictions
    if prediction.probability_array is not None:
        body["probabilities"] = json_probabilities(prediction)
        body["classes"] = model.classes
    body["backend"] = prediction.backend
    body["request_id"] = request_id
    return body


def json_probabilities(prediction: Prediction) -> Any:
    """The probabilities for the JSON answer: the backend's own array where orjson writes
    it directly (a C-contiguous float32 or float64 matrix; float32 with the digits a
    float32 holds), else the lists."""
    array = prediction.probability_array
    if array.dtype in _JSON_FLOATS and array.flags.c_contiguous:
        return array
    return prediction.probabilities


_JSON_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

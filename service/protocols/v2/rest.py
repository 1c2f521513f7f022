"""The Open Inference Protocol's HTTP body: a JSON inference request, optionally followed
by Triton's binary tensor data extension, and the answer in the same two forms.

With the extension, the body is a JSON header of ``Inference-Header-Content-Length``
bytes, then each binary input's bytes in the order of ``inputs`` (``binary_data_size``
says how many are its): little-endian, row-major, ``BYTES`` elements as a 4-byte
little-endian length then the bytes. Outputs asked for with ``binary_data`` (or every
output, with the request's ``binary_data_output``) come back the same way.

Pure functions over bytes, so the wire format is checked without a web framework; what the
tensors mean for a model is the codec's (``service.protocols.v2``).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import numpy as np
import orjson

from service import safejson
from service.errors import BadRequest, InvalidJSON
from service.protocols.native import parse_json
from service.protocols.v2 import (
    FLOAT_DATATYPES,
    OUTPUT_PROBA,
    InferenceRequest,
    RequestedOutput,
    Tensor,
    distinct_of,
    element_count,
    tensor_dtype,
    tensor_from_bytes,
    tensor_to_bytes,
)
from service.runtime.model import LoadedModel

# Parameters of Triton's binary tensor data extension.
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"
HEADER_LENGTH = "Inference-Header-Content-Length"

_REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})
# Sent by some clients (Triton's own examples put model_name in the body); the path decides.
_IGNORED_REQUEST_KEYS = frozenset({"model_name", "model_version"})


def error_body(code: str, message: str, details: Any = None) -> dict[str, str]:
    """An error as v2 clients read it: ``{"error": "<message>"}`` (no code, no details)."""
    return {"error": message}


def tensor_from_json(name: str, datatype: str, shape: list[int], data: Any) -> Tensor:
    """A tensor from JSON ``data`` (flat or nested, row-major)."""
    dtype = tensor_dtype(name, datatype)
    count = element_count(name, shape)
    flat = _flatten(data) if isinstance(data, list) else [data]
    if len(flat) != count:
        raise BadRequest(
            f"input tensor {name!r} has shape {shape}, which holds {count} elements, "
            f"but its data has {len(flat)}",
            code="invalid_shape",
        )
    kinds = {type(v) for v in flat}
    if datatype == "BYTES":
        allowed: set[type] = {str, type(None)}
        expected = "strings"
    elif datatype == "BOOL":
        allowed, expected = {bool}, "true or false"
    elif datatype in FLOAT_DATATYPES:
        # null stands for a missing value, as in the native API (NaN to the schema)
        allowed, expected = {int, float, type(None)}, "numbers"
    else:
        allowed, expected = {int}, "integers"
    if not kinds <= allowed:
        wrong = sorted(k.__name__ for k in kinds - allowed)
        raise BadRequest(
            f"input tensor {name!r} is {datatype}, so its data must hold {expected}, "
            f"not {_kind_names(wrong)}",
            code="invalid_data",
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = [v.encode("utf-8") if isinstance(v, str) else v for v in flat]
    else:
        try:
            array = np.array(
                [math.nan if v is None else v for v in flat] if type(None) in kinds else flat,
                dtype=dtype,
            )
        except (OverflowError, ValueError, TypeError):
            raise BadRequest(
                f"input tensor {name!r} holds values out of the range of {datatype}",
                code="invalid_data",
            ) from None
    return Tensor(name, datatype, list(shape), array.reshape(shape))


def tensor_to_json(tensor: Tensor) -> list[Any]:
    items = tensor.data.reshape(-1).tolist()
    if tensor.datatype == "BYTES":
        distinct = distinct_of(items, bytes)
        if distinct is None:
            return [v.decode("utf-8") if isinstance(v, bytes) else v for v in items]
        # Labels repeat: each distinct one decoded once, the rows looked up in C.
        texts = {item: item.decode("utf-8") for item in distinct}
        return list(map(texts.__getitem__, items))
    return items


def _flatten(data: list[Any]) -> list[Any]:
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _kind_names(names: list[str]) -> str:
    words = {
        "str": "strings",
        "int": "integers",
        "float": "numbers with a fraction",
        "bool": "booleans",
        "NoneType": "nulls",
        "dict": "objects",
    }
    return ", ".join(words.get(n, n) for n in names)


def parse_infer_request(body: bytes, header_length: int | None = None) -> InferenceRequest:
    """An inference request from its HTTP body: JSON, or (``header_length`` given) a
    JSON header of that many bytes followed by the inputs' binary data in order."""
    if header_length is None:
        header, binary = body, b""
    else:
        if header_length < 0 or header_length > len(body):
            raise BadRequest(
                f"{HEADER_LENGTH} is {header_length}, but the body has {len(body)} bytes",
                code="invalid_header_length",
            )
        header, binary = body[:header_length], body[header_length:]
    try:
        payload = parse_json(header)
    except InvalidJSON as exc:
        if header_length is None and exc.code == "invalid_encoding":
            # Most likely binary tensor data after JSON sent without saying where it ends.
            exc.message += f"; a body with binary tensor data needs the {HEADER_LENGTH} header"
            exc.args = (exc.message,)
        raise
    if not isinstance(payload, dict):
        raise BadRequest(
            'the body must be a JSON object like {"inputs": [...]}', code="invalid_payload"
        )
    unexpected = sorted(set(payload) - _REQUEST_KEYS - _IGNORED_REQUEST_KEYS)
    if unexpected:
        raise BadRequest(
            f"unexpected keys {unexpected[:20]}; an inference request has "
            '"id", "parameters", "inputs" and "outputs"',
            code="unexpected_keys",
        )
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest('"id" must be a string', code="invalid_payload")
    if request_id is not None and safejson.text(request_id) is not request_id:
        # The answer echoes it, and no UTF-8 text can hold a lone surrogate.
        raise BadRequest('"id" holds a lone surrogate (\\ud800-\\udfff)', code="invalid_payload")
    parameters = _parameters(payload.get("parameters"), "the request")
    binary_output = parameters.get(BINARY_DATA_OUTPUT, False)
    if not isinstance(binary_output, bool):
        raise BadRequest(f'"{BINARY_DATA_OUTPUT}" must be true or false', code="invalid_payload")
    inputs_json = payload.get("inputs")
    if not isinstance(inputs_json, list) or not inputs_json:
        raise BadRequest('"inputs" must be a non-empty list of tensors', code="no_inputs")
    inputs, offset = [], 0
    for index, entry in enumerate(inputs_json):
        tensor, used = _input_tensor(index, entry, binary, offset, header_length is not None)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise BadRequest(
            f"the body has {len(binary) - offset} bytes after the JSON header that no input "
            f"claims with {BINARY_DATA_SIZE}",
            code="invalid_binary_data",
        )
    return InferenceRequest(
        inputs=inputs,
        outputs=_requested_outputs(payload.get("outputs")),
        id=request_id,
        binary_output=binary_output,
        parameters=parameters,
    )


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f'"parameters" of {where} must be an object', code="invalid_payload")
    if "shared_memory_region" in value:
        raise BadRequest(
            f"{where} names a shared memory region; this server does not support the "
            "shared memory extension",
            code="unsupported_extension",
        )
    return value


def _input_tensor(
    index: int, entry: Any, binary: bytes, offset: int, has_header: bool
) -> tuple[Tensor, int]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise BadRequest(
            f'input {index} must be an object with "name", "shape", "datatype" and "data"',
            code="invalid_inputs",
        )
    name = entry["name"]
    for key in ("shape", "datatype"):
        if key not in entry:
            raise BadRequest(f'input tensor {name!r} has no "{key}"', code="invalid_inputs")
    parameters = _parameters(entry.get("parameters"), f"input tensor {name!r}")
    size = parameters.get(BINARY_DATA_SIZE)
    if size is None:
        if "data" not in entry:
            raise BadRequest(
                f'input tensor {name!r} has neither "data" nor a {BINARY_DATA_SIZE} parameter',
                code="invalid_inputs",
            )
        return tensor_from_json(name, entry["datatype"], entry["shape"], entry["data"]), 0
    if "data" in entry:
        raise BadRequest(
            f'input tensor {name!r} has both "data" and {BINARY_DATA_SIZE}; send one',
            code="invalid_inputs",
        )
    if type(size) is not int or size < 0:
        raise BadRequest(
            f"input tensor {name!r}: {BINARY_DATA_SIZE} must be a non-negative integer",
            code="invalid_binary_data",
        )
    if not has_header:
        raise BadRequest(
            f"input tensor {name!r} has {BINARY_DATA_SIZE}, but the request has no "
            f"{HEADER_LENGTH} header to say where the JSON ends",
            code="invalid_binary_data",
        )
    if offset + size > len(binary):
        raise BadRequest(
            f"input tensor {name!r} claims {size} bytes of binary data, but only "
            f"{len(binary) - offset} are left in the body",
            code="invalid_binary_data",
        )
    raw = binary[offset : offset + size]
    return tensor_from_bytes(name, entry["datatype"], entry["shape"], raw), size


def _requested_outputs(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRequest('"outputs" must be a list', code="invalid_outputs")
    outputs = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BadRequest(
                f'output {index} must be an object with a "name"', code="invalid_outputs"
            )
        parameters = _parameters(entry.get("parameters"), f"output {entry['name']!r}")
        if parameters.get("classification"):
            raise BadRequest(
                f"output {entry['name']!r} asks for the classification extension, which this "
                f"server does not support; request {OUTPUT_PROBA!r} for class probabilities",
                code="unsupported_extension",
            )
        binary = parameters.get(BINARY_DATA)
        if binary is not None and not isinstance(binary, bool):
            raise BadRequest(
                f'output {entry["name"]!r}: "{BINARY_DATA}" must be true or false',
                code="invalid_outputs",
            )
        outputs.append(RequestedOutput(entry["name"], binary))
    return outputs


def encode_infer_response(
    model: LoadedModel,
    tensors: list[Tensor],
    *,
    binary: Collection[str] = (),
    request_id: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON header when outputs in
    ``binary`` follow it as raw bytes (None: the body is all JSON). ``parameters``:
    the response's own (e.g. which backend computed it)."""
    outputs, chunks = [], []
    for tensor in tensors:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if tensor.name in binary:
            raw = tensor_to_bytes(tensor)
            entry["parameters"] = {BINARY_DATA_SIZE: len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = tensor_to_json(tensor)
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version)}
    if request_id is not None:
        body["id"] = request_id
    if parameters:
        body["parameters"] = parameters
    body["outputs"] = outputs
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)

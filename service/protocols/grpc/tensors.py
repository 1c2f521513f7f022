"""Tensors between the gRPC messages and numpy: pure functions, no server, no model.

A request carries each input's elements either in the ``InferTensorContents``
field of its datatype or, for every input at once, in ``raw_input_contents``
(what tritonclient sends): the elements flattened in row-major order,
little-endian, a BYTES element being a 4-byte little-endian length and its
bytes. Answers put every output in ``raw_output_contents``, as Triton does.
What the tensors mean for a model is the shared v2 codec's business
(``service.protocols.v2``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.errors import BadRequest
from service.protocols import v2

# The InferTensorContents field that carries each datatype's elements.
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_request_tensors(request: Any) -> list[v2.Tensor]:
    """The input tensors of a ``ModelInferRequest``. Raises BadRequest."""
    raw = list(request.raw_input_contents)
    inputs = list(request.inputs)
    if not inputs:
        raise BadRequest("the request has no inputs", code="no_inputs")
    if raw and len(raw) != len(inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; "
            "send one per input, in the order of inputs",
            code="invalid_tensor",
        )
    tensors = []
    seen = set()
    for index, tensor in enumerate(inputs):
        if tensor.name in seen:
            raise BadRequest(f"input {tensor.name!r} is sent twice", code="invalid_tensor")
        seen.add(tensor.name)
        if raw and tensor.HasField("contents"):
            raise BadRequest(
                f"input {tensor.name!r} has contents and the request has raw_input_contents; "
                "use one or the other",
                code="invalid_tensor",
            )
        shape = _shape(tensor.name, tensor.shape)
        datatype = tensor.datatype.upper()
        if raw:
            # Every element takes at least a byte: a shape bigger than that is a lie, and
            # must not make the codec allocate for it.
            if math.prod(shape) > len(raw[index]):
                raise BadRequest(
                    f"input {tensor.name!r}: shape {shape} holds more elements than its "
                    f"{len(raw[index])} raw bytes can",
                    code="invalid_tensor",
                )
            tensors.append(v2.tensor_from_bytes(tensor.name, datatype, shape, raw[index]))
        else:
            data = decode_contents(tensor.name, datatype, shape, tensor.contents)
            tensors.append(v2.Tensor(name=tensor.name, datatype=datatype, shape=shape, data=data))
    return tensors


def decode_contents(name: str, datatype: str, shape: list[int], contents: Any) -> np.ndarray:
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        v2.numpy_dtype(datatype)  # an unknown datatype is said so by the codec
        raise BadRequest(
            f"input {name!r}: {datatype} elements can only be sent in raw_input_contents",
            code="invalid_tensor",
        )
    for other in set(CONTENTS_FIELDS.values()) - {field}:
        if len(getattr(contents, other)):
            raise BadRequest(
                f"input {name!r} is {datatype} but has elements in {other} (expected {field})",
                code="invalid_tensor",
            )
    values = getattr(contents, field)
    if datatype == "BYTES":
        data = np.empty(len(values), dtype=object)
        data[:] = list(values)
    else:
        try:
            data = np.array(values, dtype=v2.numpy_dtype(datatype))
        except OverflowError:
            raise BadRequest(
                f"input {name!r}: an element does not fit in {datatype}", code="invalid_tensor"
            ) from None
    return _reshape(name, data, shape, math.prod(shape))


def encode_raw(tensor: v2.Tensor) -> bytes:
    """The tensor's elements as ``raw_output_contents`` carries them."""
    return v2.tensor_to_bytes(tensor)


def _shape(name: str, dims: Sequence[int]) -> list[int]:
    shape = [int(d) for d in dims]
    if not shape:
        raise BadRequest(f"input {name!r} has no shape", code="invalid_tensor")
    if len(shape) > v2.MAX_DIMS:
        raise BadRequest(
            f"input {name!r} has {len(shape)} dimensions; at most {v2.MAX_DIMS} are taken",
            code="invalid_tensor",
        )
    if any(d < 0 for d in shape):
        raise BadRequest(
            f"input {name!r}: shape {shape} has a negative dimension", code="invalid_tensor"
        )
    if v2.too_large(shape):
        raise BadRequest(
            f"input {name!r}: shape {shape} is larger than any tensor can be (at most "
            f"{v2.MAX_ELEMENTS} elements, zero dimensions left out)",
            code="invalid_tensor",
        )
    return shape


def _reshape(name: str, data: np.ndarray, shape: list[int], count: int) -> np.ndarray:
    if data.size != count:
        raise BadRequest(
            f"input {name!r}: shape {shape} needs {count} elements, the request has {data.size}",
            code="invalid_tensor",
        )
    return data.reshape(shape)

"""The Open Inference Protocol v2 (KServe, Triton, MLServer) as a codec over the runtime.

Framework-free and shared by the HTTP blueprint and the gRPC server. A request's
tensors become plain rows in feature order and go through ``LoadedModel.predict``,
so every value is validated by the same ``InputSchema`` as the native API (NaN,
missing values and unknown categories follow the same rules and get the same 422);
what is checked here is the tensors' structure: names, datatypes and shapes, with
a 400 that names the tensor.

Inputs come in one of two forms:

- one tensor per feature, named exactly as the feature, of shape ``[N]`` or
  ``[N, 1]``: a numeric datatype for a numeric feature, ``BYTES`` (or an integer
  datatype) for a categorical one. Model metadata lists this form.
- one ``[N, F]`` tensor of any name holding every feature in metadata order:
  a numeric datatype, or ``BYTES`` when the model has categorical features (its
  numeric features are then parsed from text).

Outputs: ``predict`` (shape ``[N]``; ``BYTES`` for string labels, ``INT64`` for
integer labels, ``FP64`` for regression) and, for classifiers with probabilities,
``predict_proba`` (``FP64``, shape ``[N, n_classes]``, columns in the order of the
model's classes).

The wire formats around this codec: ``rest`` (the HTTP body: JSON, and Triton's binary
tensor data extension) and ``service.protocols.grpc`` (the protobuf messages). The steps
of a call, from the model's name to its outputs, are ``dataplane``'s, for both front ends.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import struct
from typing import Any

import numpy as np

import service
from service.errors import BadRequest, TooManyInstances
from service.runtime.model import LoadedModel, Prediction

SERVER_NAME = "model-service"
PLATFORM = "sklearn"
EXTENSIONS = ["binary_tensor_data"]

OUTPUT_PREDICT = "predict"
OUTPUT_PROBA = "predict_proba"

# Wire datatypes and their little-endian numpy dtypes (BYTES: an object array of bytes).
_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
DATATYPES = tuple(_DTYPES)
INTEGER_DATATYPES = frozenset(d for d in DATATYPES if d.startswith(("INT", "UINT")))
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
NUMERIC_DATATYPES = INTEGER_DATATYPES | FLOAT_DATATYPES
_FEATURE_DATATYPES = {"float64": "FP64", "int64": "INT64", "category": "BYTES"}
_LENGTH = struct.Struct("<I")
# Bounds of a tensor's shape, far beyond any body's size (which bounds the real ones).
MAX_DIMS = 32
MAX_ELEMENTS = 2**40


@dataclasses.dataclass
class Tensor:
    name: str
    datatype: str  # "BOOL", "UINT8".."UINT64", "INT8".."INT64", "FP16", "FP32", "FP64", "BYTES"
    shape: list[int]
    data: np.ndarray  # already reshaped to `shape`; BYTES as an object array of bytes


@dataclasses.dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: the request-level binary_data_output decides


@dataclasses.dataclass
class InferenceRequest:
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None  # None: every output of the model
    id: str | None = None
    binary_output: bool = False
    # The request's "parameters" (a client key for an experiment may be one of them).
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)

    def output_names(self) -> list[str] | None:
        return [o.name for o in self.outputs] if self.outputs else None

    def binary_names(self, names: list[str]) -> set[str]:
        """Which of the outputs to return as binary data."""
        chosen = {o.name: o.binary for o in self.outputs or ()}
        return {
            n for n in names if (chosen.get(n) if chosen.get(n) is not None else self.binary_output)
        }


# -- datatypes ------------------------------------------------------------------


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a wire datatype (little-endian; BYTES: object). Raises BadRequest."""
    try:
        return _DTYPES[datatype]
    except (KeyError, TypeError):
        raise BadRequest(
            f"unsupported datatype {shown(datatype)}; supported: {list(DATATYPES)}",
            code="unsupported_datatype",
        ) from None


def v2_datatype(array: np.ndarray) -> str:
    """The wire datatype of a numpy array. Raises ValueError for dtypes with none."""
    dtype = array.dtype
    if dtype.kind == "b":
        return "BOOL"
    if dtype.kind in "iu" and dtype.itemsize in (1, 2, 4, 8):
        return f"{'UINT' if dtype.kind == 'u' else 'INT'}{dtype.itemsize * 8}"
    if dtype.kind == "f" and dtype.itemsize in (2, 4, 8):
        return f"FP{dtype.itemsize * 8}"
    if dtype.kind in "OSU":
        return "BYTES"
    raise ValueError(f"no Open Inference Protocol datatype for numpy dtype {dtype}")


# -- metadata -------------------------------------------------------------------


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": service.__version__, "extensions": list(EXTENSIONS)}


def model_metadata(model: LoadedModel, versions: list[int]) -> dict[str, Any]:
    """Model metadata: one input tensor per feature, ``[-1, 1]`` each (a single
    ``[-1, F]`` tensor with every feature in this order is accepted too), and the
    outputs; ``predict_proba``'s parameters give the class of each column."""
    inputs = []
    for feature in model.schema.features:
        entry: dict[str, Any] = {
            "name": feature.name,
            "datatype": _FEATURE_DATATYPES.get(feature.dtype, "FP64"),
            "shape": [-1, 1],
        }
        if not feature.is_numeric and feature.categories:
            entry["parameters"] = {"categories": [_plain(c) for c in feature.categories]}
        inputs.append(entry)
    outputs: list[dict[str, Any]] = [
        {"name": OUTPUT_PREDICT, "datatype": _predict_datatype(model), "shape": [-1]}
    ]
    if model.has_proba:
        outputs.append(
            {
                "name": OUTPUT_PROBA,
                "datatype": "FP64",
                "shape": [-1, len(model.classes or ())],
                "parameters": {"classes": [_plain(c) for c in model.classes or ()]},
            }
        )
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": outputs,
    }


def output_names(model: LoadedModel) -> list[str]:
    return [OUTPUT_PREDICT, OUTPUT_PROBA] if model.has_proba else [OUTPUT_PREDICT]


def _predict_datatype(model: LoadedModel) -> str:
    if model.task != "classification" or not model.classes:
        return "FP64"
    classes = model.classes
    if all(isinstance(c, str) for c in classes):
        return "BYTES"
    if all(isinstance(c, (bool, np.bool_)) for c in classes):
        return "BOOL"
    if all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in classes):
        return "INT64"
    return "FP64"


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# -- inputs -------------------------------------------------------------------


def decode_inputs(
    model: LoadedModel, tensors: list[Tensor], *, max_instances: int | None = None
) -> list[list[Any]] | np.ndarray:
    """Rows in feature order for ``model.predict(rows)``, from one tensor per feature
    or one ``[N, F]`` tensor (a numeric one is passed on as the array). Structural
    problems raise BadRequest naming the tensor; values are left for the model's
    InputSchema. More than ``max_instances`` rows raise TooManyInstances."""
    if not tensors:
        raise BadRequest(
            "the request has no inputs; send one tensor per feature "
            f"{list(model.schema.names)} or one [N, {model.schema.width}] tensor",
            code="no_inputs",
        )
    names = [t.name for t in tensors]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BadRequest(f"input tensors {repeated} appear more than once", code="invalid_inputs")
    schema = model.schema
    # A single tensor that is not a feature is the [N, F] form, unless it is 1-D:
    # then it is most likely a feature tensor under a wrong name.
    single = tensors[0] if len(tensors) == 1 else None
    if single is not None and single.name not in schema.name_set and single.data.ndim != 1:
        rows = _matrix_rows(model, single, max_instances)
    else:
        rows = _feature_rows(model, tensors, max_instances)
    return rows


def _feature_rows(
    model: LoadedModel, tensors: list[Tensor], max_instances: int | None
) -> list[list[Any]]:
    schema = model.schema
    by_name = {t.name: t for t in tensors}
    unknown = [t.name for t in tensors if t.name not in schema.name_set]
    if unknown:
        hints = {n: difflib.get_close_matches(n, schema.names, n=1) for n in unknown}
        suggestions = "".join(
            f"; did you mean {hint[0]!r} for {name!r}" for name, hint in hints.items() if hint
        )
        raise BadRequest(
            f"unknown input tensors {unknown}{suggestions}; send one tensor per feature "
            f"{list(schema.names)} or a single [N, {schema.width}] tensor",
            code="invalid_inputs",
        )
    missing = [n for n in schema.names if n not in by_name]
    if missing:
        raise BadRequest(f"missing input tensors for features {missing}", code="invalid_inputs")
    sizes: dict[str, int] = {}
    for tensor in tensors:
        shape = list(tensor.data.shape)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise BadRequest(
                f"input tensor {tensor.name!r} has shape {shape}; "
                "a feature tensor is [N] or [N, 1]",
                code="invalid_shape",
            )
        sizes[tensor.name] = shape[0]
    if len(set(sizes.values())) > 1:
        raise BadRequest(
            f"input tensors hold different numbers of rows: {sizes}", code="invalid_shape"
        )
    _check_rows(next(iter(sizes.values())), max_instances)
    columns = []
    for feature in schema.features:
        tensor = by_name[feature.name]
        allowed = NUMERIC_DATATYPES if feature.is_numeric else INTEGER_DATATYPES | {"BYTES"}
        if tensor.datatype not in allowed:
            kind = f"numeric ({feature.dtype})" if feature.is_numeric else "categorical"
            expected = _FEATURE_DATATYPES.get(feature.dtype, "FP64")
            raise BadRequest(
                f"input tensor {tensor.name!r} is {tensor.datatype}, but feature "
                f"{feature.name!r} is {kind}; send {expected}",
                code="invalid_datatype",
            )
        values = tensor.data.reshape(-1)
        if tensor.datatype == "BYTES":
            columns.append([_text(tensor.name, v) for v in values])
        else:
            columns.append(values.tolist())
    return [list(row) for row in zip(*columns, strict=True)]


def _matrix_rows(
    model: LoadedModel, tensor: Tensor, max_instances: int | None
) -> list[list[Any]] | np.ndarray:
    schema = model.schema
    shape = list(tensor.data.shape)
    if len(shape) != 2 or shape[1] != schema.width:
        raise BadRequest(
            f"input tensor {tensor.name!r} has shape {shape}; a single input tensor must be "
            f"[N, {schema.width}] with the features {list(schema.names)} in this order "
            "(or send one tensor per feature, named as the features)",
            code="invalid_shape",
        )
    _check_rows(shape[0], max_instances)
    if tensor.datatype == "BYTES":
        if schema.all_numeric:
            raise BadRequest(
                f"input tensor {tensor.name!r} is BYTES, but every feature of this model "
                "is numeric; send FP64 (or another numeric datatype)",
                code="invalid_datatype",
            )
        numeric = [f.is_numeric for f in schema.features]
        return [
            [
                _number(tensor.name, v) if is_number else _text(tensor.name, v)
                for v, is_number in zip(row, numeric, strict=True)
            ]
            for row in tensor.data
        ]
    if tensor.datatype not in NUMERIC_DATATYPES:
        raise BadRequest(
            f"input tensor {tensor.name!r} is {tensor.datatype}; features take numeric "
            "datatypes (FP64, INT64, ...)" + ("" if schema.all_numeric else " or BYTES"),
            code="invalid_datatype",
        )
    # The array itself: the model's schema checks a numeric matrix as a whole.
    return tensor.data


def _check_rows(rows: int, max_instances: int | None) -> None:
    if rows == 0:
        raise BadRequest("the input tensors hold no rows; send at least one", code="no_instances")
    if max_instances is not None and rows > max_instances:
        raise TooManyInstances(
            f"{rows} rows in one request; at most {max_instances} are allowed",
            details={"instances": rows, "max_instances": max_instances},
        )


def _text(tensor: str, value: Any) -> Any:
    """A BYTES element as the string the schema checks (utf-8); other values unchanged."""
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(
                f"input tensor {tensor!r} holds bytes that are not valid UTF-8",
                code="invalid_data",
            ) from None
    return value


def _number(tensor: str, value: Any) -> Any:
    """A BYTES element for a numeric feature: the number it spells, else the text
    (which the schema then refuses, naming the row and the feature)."""
    value = _text(tensor, value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        if number.is_integer() and not math.isinf(number) and value.strip().lstrip("+-").isdigit():
            return int(value)
        return number
    return value


# -- outputs ------------------------------------------------------------------


def requested_output_names(model: LoadedModel, names: list[str] | None) -> list[str]:
    """The outputs to compute, in the order asked; None or [] means every output."""
    available = output_names(model)
    if not names:
        return available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise BadRequest(
            f"unknown outputs {unknown}; model {model.name!r} has outputs {available}",
            code="invalid_outputs",
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BadRequest(f"outputs {repeated} are requested more than once", code="invalid_outputs")
    return list(names)


def output_tensors(model: LoadedModel, prediction: Prediction, names: list[str]) -> list[Tensor]:
    tensors = []
    for name in names:
        if name == OUTPUT_PREDICT:
            datatype = _predict_datatype(model)
            values = prediction.predictions
            if datatype == "BYTES":
                data = np.empty(len(values), dtype=object)
                data[:] = _utf8_texts(values)
            else:
                data = np.asarray(values, dtype=_DTYPES[datatype])
            tensors.append(Tensor(name, datatype, [len(values)], data))
        elif name == OUTPUT_PROBA:
            if prediction.probability_array is None:
                raise ValueError(f"{model.name}: the prediction carries no probabilities")
            data = prediction.probability_array.astype(np.float64, copy=False)
            tensors.append(Tensor(name, "FP64", list(data.shape), data))
        else:
            raise ValueError(f"{model.name}: no output named {name!r}")
    return tensors


# -- tensors as raw bytes (the binary extension over HTTP, raw contents over gRPC) --


def tensor_from_bytes(name: str, datatype: str, shape: list[int], raw: bytes) -> Tensor:
    """A tensor from raw bytes: little-endian, row-major; BYTES elements as a
    4-byte little-endian length then the bytes."""
    dtype = tensor_dtype(name, datatype)
    count = element_count(name, shape)
    if datatype == "BYTES":
        # Each element takes at least its 4-byte length: check before allocating, so a
        # huge shape on a small body is a 400, not a memory error.
        if count * _LENGTH.size > len(raw):
            raise BadRequest(
                f"input tensor {name!r} has shape {shape} of BYTES, which takes at least "
                f"{count * _LENGTH.size} bytes, but {len(raw)} bytes were sent",
                code="invalid_shape",
            )
        array = np.empty(count, dtype=object)
        array[:] = _split_bytes(name, raw, count)
    else:
        if len(raw) != count * dtype.itemsize:
            raise BadRequest(
                f"input tensor {name!r} has shape {shape} of {datatype}, which takes "
                f"{count * dtype.itemsize} bytes, but {len(raw)} bytes were sent",
                code="invalid_shape",
            )
        array = np.frombuffer(raw, dtype=dtype)
    return Tensor(name, datatype, list(shape), array.reshape(shape))


def _utf8_texts(values: list[Any]) -> list[bytes]:
    """Each value's text in UTF-8. A classifier's labels are a few classes repeated row
    after row: each distinct one is encoded once and the rows are looked up in C
    (``map``), rather than encoded one by one in Python."""
    distinct = distinct_of(values, str)
    if distinct is None:
        return [str(v).encode("utf-8") for v in values]
    encoded = {text: text.encode("utf-8") for text in distinct}
    return list(map(encoded.__getitem__, values))


def distinct_of(items: list[Any], *kinds: type) -> set[Any] | None:
    """The distinct items, when every item is of one of ``kinds`` (text or bytes: each
    equal only to the same value of its own type, so a lookup by item is exact); None
    otherwise (an int and a bool, say, are equal and would share one entry)."""
    try:
        distinct = set(items)
    except TypeError:  # unhashable
        return None
    # Equal items share an entry, but only with items of their own kind here: every item
    # is of ``kinds`` exactly when every distinct one is.
    return distinct if all(type(item) in kinds for item in distinct) else None


def _framed(item: Any) -> bytes:
    """One BYTES element on the wire: its 4-byte little-endian length, then its bytes."""
    raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
    return _LENGTH.pack(len(raw)) + raw


def tensor_to_bytes(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        items = tensor.data.reshape(-1).tolist()
        # Labels repeat: each distinct element framed once, the rows looked up in C.
        distinct = distinct_of(items, bytes, str)
        if distinct is None:
            return b"".join(map(_framed, items))
        framed = {item: _framed(item) for item in distinct}
        return b"".join(map(framed.__getitem__, items))
    return np.ascontiguousarray(tensor.data, dtype=_DTYPES[tensor.datatype]).tobytes()


def tensor_dtype(name: str, datatype: Any) -> np.dtype:
    """:func:`numpy_dtype`, with the error naming the input tensor."""
    try:
        return numpy_dtype(datatype)
    except BadRequest as exc:
        raise BadRequest(f"input tensor {name!r}: {exc.message}", code=exc.code) from None


def element_count(name: str, shape: Any) -> int:
    """The number of elements of a client's ``shape``, checked. Raises BadRequest."""
    if (
        not isinstance(shape, list)
        or not shape
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise BadRequest(
            f"input tensor {name!r} has shape {shown(shape)}; a shape is a list of "
            "non-negative integers",
            code="invalid_shape",
        )
    if len(shape) > MAX_DIMS:
        raise BadRequest(
            f"input tensor {name!r} has {len(shape)} dimensions; at most {MAX_DIMS} are taken",
            code="invalid_shape",
        )
    if too_large(shape):
        raise BadRequest(
            f"input tensor {name!r} has shape {shown(shape)}, larger than any tensor "
            f"can be (at most {MAX_ELEMENTS} elements, zero dimensions left out)",
            code="invalid_shape",
        )
    return math.prod(shape)


def too_large(shape: list[int]) -> bool:
    """Whether numpy could not even make an empty array of this shape: it refuses one
    whose non-zero dimensions multiply past its index range, even with a zero among them."""
    return math.prod(d for d in shape if d) > MAX_ELEMENTS


def shown(value: Any) -> str:
    """A client's value as an error message may quote it: short, and never its nesting
    (repr of a deeply nested list fails, and the payload is not echoed back)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value)
    elif isinstance(value, list) and all(type(v) is int for v in value[: MAX_DIMS + 1]):
        text = repr(value[: MAX_DIMS + 1])
    else:
        return f"of type {type(value).__name__}"
    return text if len(text) <= 80 else text[:60] + "..." + text[-12:]


def _split_bytes(name: str, raw: bytes, count: int) -> list[bytes]:
    items, offset, size = [], 0, len(raw)
    view = memoryview(raw)
    while offset < size:
        if offset + 4 > size:
            break
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > size:
            raise BadRequest(
                f"input tensor {name!r}: an element claims {length} bytes past the end of "
                "its binary data",
                code="invalid_data",
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != size or len(items) != count:
        raise BadRequest(
            f"input tensor {name!r}: its binary data holds {len(items)} length-prefixed "
            f"elements, but its shape holds {count}",
            code="invalid_shape",
        )
    return items

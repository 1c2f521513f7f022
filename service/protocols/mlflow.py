"""MLflow's scoring formats: the bodies ``mlflow models serve`` accepts on /invocations.

Pure functions, like the native codec: a body and its content type in, instances out
(rows in the model's feature order, or objects keyed by feature name), validated
afterwards by the same :class:`~service.runtime.schema.InputSchema` as the native API.

The formats are those of MLflow's scoring server (``mlflow/pyfunc/scoring_server``):

- ``application/json`` with exactly one of
  ``dataframe_split`` (``{"columns": [...], "data": [[...], ...], "index": [...]}``),
  ``dataframe_records`` (``[{column: value}, ...]``),
  ``instances`` or ``inputs`` (rows, or a dict of columns ``{column: [values]}``),
  and optionally ``params``;
- ``text/csv`` with a header row, as ``DataFrame.to_csv(index=False)`` writes it.

Like MLflow, the charset must be UTF-8 and no other content-type parameter is accepted
(MLflow 1.x's ``format=pandas-split`` is refused with a hint, as MLflow 2 does).
``params`` is accepted and ignored: scikit-learn models take none, and MLflow ignores
params (with a warning) for a model whose signature defines no params schema. One entry
may carry a client key for an experiment (the experiment's key field).

An answer is MLflow's ``{"predictions": [...]}``; in an experiment it also has
``"experiment": {"id", "variant", "version"}``, as MLflow's own scoring server puts
metadata next to ``predictions`` (``predictions_to_json(..., metadata)``) and its client
(``PredictionsResponse.from_json``) needs only that key.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import re
from typing import Any

from service.errors import BadRequest, TooManyInstances, UnsupportedMediaType
from service.protocols.native import NumberOutOfRange, finite_float, int_in_range, parse_json
from service.protocols.routing import experiment_fields
from service.runtime.hooks import Assignment
from service.runtime.model import LoadedModel, Prediction
from service.runtime.schema import InputSchema

log = logging.getLogger(__name__)

CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_CSV = "text/csv"
CONTENT_TYPES = (CONTENT_TYPE_JSON, CONTENT_TYPE_CSV)

DF_SPLIT = "dataframe_split"
DF_RECORDS = "dataframe_records"
INSTANCES = "instances"
INPUTS = "inputs"
FORMATS = (DF_SPLIT, DF_RECORDS, INSTANCES, INPUTS)
PARAMS = "params"
SPLIT_KEYS = frozenset({"columns", "data", "index"})

REQUIRED_FORMAT = (
    "the body must be a JSON object with exactly one of the input fields "
    f"{', '.join(repr(f) for f in FORMATS)} (and optionally {PARAMS!r})"
)

# A number as pandas.DataFrame.to_csv writes one; NaN and Infinity by the names Python
# and pandas write them, so that validation can name the feature carrying them.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_NON_FINITE = {"nan": math.nan, "-nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_NON_FINITE.update({"+inf": math.inf, "infinity": math.inf, "-infinity": -math.inf})


@dataclasses.dataclass
class ScoringRequest:
    instances: list[Any]
    # What the body carried under "params": accepted and not used (sklearn takes none).
    params: dict[str, Any] | None = None


def check_content_type(mimetype: str, params: dict[str, str]) -> str:
    """The content type's essence if it is one MLflow accepts, else 415."""
    charset = params.get("charset", "utf-8").lower()
    if charset not in {"utf-8", "utf8"}:
        raise UnsupportedMediaType(
            f"charset must be utf-8, got {charset!r}", details={"charset": charset}
        )
    unexpected = sorted(set(params) - {"charset"})
    if unexpected:
        raise UnsupportedMediaType(
            f"unrecognized content type parameters: {', '.join(unexpected)}; the MLflow "
            "2 scoring protocol puts the format in the body, e.g. "
            '{"dataframe_split": {...}}',
            details={"parameters": unexpected},
        )
    if mimetype not in CONTENT_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type must be one of {list(CONTENT_TYPES)}, got {mimetype or 'none'!r}",
            details={"content_type": mimetype or None, "supported": list(CONTENT_TYPES)},
        )
    return mimetype


def parse_request(
    body: bytes, mimetype: str, schema: InputSchema, max_instances: int
) -> ScoringRequest:
    """Parse a scoring request of an accepted content type (see check_content_type)."""
    if mimetype == CONTENT_TYPE_CSV:
        return ScoringRequest(instances_from_csv(body, schema, max_instances))
    return parse_json_request(parse_json(body), schema, max_instances)


# -- JSON ------------------------------------------------------------------------------


def parse_json_request(
    payload: Any,
    schema: InputSchema,
    max_instances: int,
    key_fields: frozenset[str] = frozenset(),
) -> ScoringRequest:
    """A JSON scoring request; ``key_fields``: params that carry a client key (used)."""
    if not isinstance(payload, dict):
        kind = "a list" if isinstance(payload, list) else "not an object"
        raise BadRequest(f"{REQUIRED_FORMAT}; received {kind}", code="invalid_payload")
    present = [key for key in FORMATS if key in payload]
    unexpected = sorted(str(k) for k in payload if k not in FORMATS and k != PARAMS)
    if len(present) != 1:
        raise BadRequest(
            f"{REQUIRED_FORMAT}; received the fields {sorted(map(str, payload))[:20]}",
            details={"formats": present},
            code="missing_format" if not present else "several_formats",
        )
    if unexpected:
        raise BadRequest(
            f"unexpected fields {unexpected[:20]} next to {present[0]!r}; {REQUIRED_FORMAT}",
            details={"unexpected": unexpected[:20]},
            code="unexpected_keys",
        )
    params = payload.get(PARAMS)
    ignored = set(map(str, params)) - key_fields if isinstance(params, dict) else params
    if ignored:
        # MLflow ignores params for a model without a params schema, and logs that it did.
        names = sorted(ignored) if isinstance(params, dict) else "(not an object)"
        log.warning("params are not used by scikit-learn models; ignored: %s", names)
    data = payload[present[0]]
    if present[0] == DF_SPLIT:
        instances = _from_split(data, schema, max_instances)
    elif present[0] == DF_RECORDS:
        instances = _from_records(data, max_instances)
    else:
        instances = _from_tensor_input(present[0], data, schema, max_instances)
    return ScoringRequest(instances, params if isinstance(params, dict) else None)


def _from_split(data: Any, schema: InputSchema, max_instances: int) -> list[Any]:
    where = f'"{DF_SPLIT}"'
    if not isinstance(data, dict):
        raise BadRequest(
            f'{where} must be an object like {{"columns": [...], "data": [[...], ...]}}',
            code="invalid_payload",
        )
    unexpected = sorted(map(str, set(data) - SPLIT_KEYS))
    if unexpected:
        raise BadRequest(
            f"{where} has unexpected fields {unexpected[:20]}; it takes columns, data and index",
            details={"unexpected": unexpected[:20]},
            code="unexpected_keys",
        )
    if "data" not in data:
        raise BadRequest(f'{where} has no "data"', code="missing_instances")
    rows = data["data"]
    if not isinstance(rows, list) or not all(type(row) is list for row in rows):
        raise BadRequest(f'{where}: "data" must be a list of rows (lists)', code="invalid_payload")
    _check_count(len(rows), max_instances)
    index = data.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(rows)):
        raise BadRequest(
            f'{where}: "index" must be a list with one entry per row of "data"',
            code="invalid_payload",
        )
    columns = data.get("columns")
    if columns is None:
        return rows  # positional: values in the model's feature order
    if not isinstance(columns, list) or not all(isinstance(c, str | int) for c in columns):
        raise BadRequest(f'{where}: "columns" must be a list of names', code="invalid_payload")
    if len(set(columns)) != len(columns):
        duplicated = sorted({str(c) for c in columns if columns.count(c) > 1})
        raise BadRequest(
            f"{where}: duplicated columns {duplicated[:20]}",
            details={"duplicated": duplicated[:20]},
            code="duplicated_columns",
        )
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise BadRequest(
                f"{where}: row {i} has {len(row)} values for {len(columns)} columns",
                details={"row": i, "values": len(row), "columns": len(columns)},
                code="invalid_payload",
            )
    return _rows_in_feature_order(columns, rows, schema)


def _rows_in_feature_order(columns: list[Any], rows: list[list[Any]], schema: InputSchema):
    """Rows reordered into feature order when the columns are exactly the features;
    otherwise objects keyed by column, so that validation names what is missing or extra."""
    if tuple(columns) == schema.names:
        return rows
    if set(columns) == schema.name_set:
        order = [columns.index(name) for name in schema.names]
        return [[row[j] for j in order] for row in rows]
    return [dict(zip(columns, row, strict=True)) for row in rows]


def _from_records(data: Any, max_instances: int) -> list[Any]:
    if not isinstance(data, list) or not all(isinstance(record, dict) for record in data):
        raise BadRequest(
            f'"{DF_RECORDS}" must be a list of objects like [{{"column": value, ...}}, ...]',
            code="invalid_payload",
        )
    _check_count(len(data), max_instances)
    return data


def _from_tensor_input(key: str, data: Any, schema: InputSchema, max_instances: int) -> list[Any]:
    """``instances`` / ``inputs``: rows (lists in feature order or objects), or a dict of
    columns ``{name: [values]}`` (or ``{name: value}`` for a single row)."""
    if isinstance(data, list):
        _check_count(len(data), max_instances)
        return data
    if not isinstance(data, dict):
        raise BadRequest(
            f'"{key}" must be a list of rows or an object of columns', code="invalid_payload"
        )
    if not data:
        raise BadRequest(f'"{key}" is empty; send at least one instance', code="no_instances")
    values = list(data.values())
    if all(not isinstance(v, list | dict) for v in values):
        return [dict(data)]  # one row given as {column: value}
    if not all(isinstance(v, list) for v in values):
        raise BadRequest(
            f'"{key}" as an object must map every column to a list of values '
            "(or every column to one value)",
            code="invalid_payload",
        )
    lengths = {len(v) for v in values}
    if len(lengths) != 1:
        raise BadRequest(
            f'"{key}": the length of values for each column is not the same',
            details={"lengths": {str(k): len(v) for k, v in list(data.items())[:20]}},
            code="invalid_payload",
        )
    count = lengths.pop()
    _check_count(count, max_instances)
    columns = list(data)
    rows = [[data[c][i] for c in columns] for i in range(count)]
    return _rows_in_feature_order(columns, rows, schema)


def _check_count(count: int, max_instances: int) -> None:
    if count == 0:
        raise BadRequest("no instances; send at least one", code="no_instances")
    if count > max_instances:
        raise TooManyInstances(
            f"{count} instances in one request; at most {max_instances} are allowed",
            details={"instances": count, "max_instances": max_instances},
        )


# -- CSV -------------------------------------------------------------------------------


def instances_from_csv(body: bytes, schema: InputSchema, max_instances: int) -> list[Any]:
    """Rows of a CSV with a header row. Numbers parse as numbers for numeric features; an
    empty field is a missing value; a categorical feature keeps its text as it is."""
    if not body:
        raise BadRequest("the request body is empty; send a CSV with a header row", code="no_csv")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"the CSV is not valid UTF-8: {exc.reason} at byte {exc.start}",
            details={"byte": exc.start},
            code="invalid_csv",
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        records = [row for row in reader if row]
    except csv.Error as exc:
        raise BadRequest(
            f"the CSV cannot be read at line {reader.line_num}: {exc}",
            details={"line": reader.line_num},
            code="invalid_csv",
        ) from None
    if not header or not any(name.strip() for name in header):
        raise BadRequest("the CSV has no header row naming the columns", code="missing_header")
    header = [name.strip() for name in header]
    if all(_NUMBER.fullmatch(name) or name.lower() in _NON_FINITE for name in header):
        raise BadRequest(
            "the first line of the CSV must be a header naming the columns "
            f"(e.g. {', '.join(schema.names[:4])}); it holds only numbers",
            details={"expected_columns": list(schema.names)},
            code="missing_header",
        )
    if len(set(header)) != len(header):
        duplicated = sorted({c for c in header if header.count(c) > 1})
        raise BadRequest(
            f"the CSV header has duplicated columns {duplicated[:20]}",
            details={"duplicated": duplicated[:20]},
            code="duplicated_columns",
        )
    _check_count(len(records), max_instances)
    numeric = {f.name: f.is_numeric for f in schema.features}
    parsers = [_number if numeric.get(name, True) else _text for name in header]
    rows = []
    for i, record in enumerate(records):
        if len(record) != len(header):
            raise BadRequest(
                f"CSV row {i} (line {i + 2}) has {len(record)} fields, the header {len(header)}",
                details={"row": i, "fields": len(record), "columns": len(header)},
                code="invalid_csv",
            )
        try:
            rows.append([parse(value) for parse, value in zip(parsers, record, strict=True)])
        except NumberOutOfRange as exc:
            column = header[next(j for j, v in enumerate(record) if v.strip() == exc.literal)]
            raise BadRequest(
                f"CSV row {i} (line {i + 2}), column {column!r}: the number "
                f"{_shown(exc.literal)} is beyond the range of a 64-bit float",
                details={"row": i, "column": column},
                code="number_out_of_range",
            ) from None
    return _rows_in_feature_order(header, rows, schema)


def _number(text: str) -> Any:
    """A field for a numeric feature: int, float, None (empty), or the text as it was
    (for validation to refuse as 'expected a number'). A number beyond the range of a
    float raises NumberOutOfRange, as in a JSON body (it would otherwise become an
    infinity nobody wrote)."""
    stripped = text.strip()
    if not stripped:
        return None
    if _INTEGER.fullmatch(stripped):
        return int_in_range(stripped)
    if _NUMBER.fullmatch(stripped):
        return finite_float(stripped)
    return _NON_FINITE.get(stripped.lower(), text)


def _shown(literal: str) -> str:
    return (
        literal
        if len(literal) <= 32
        else f"{literal[:16]}...{literal[-8:]} ({len(literal)} characters)"
    )


def _text(text: str) -> Any:
    return text if text != "" else None


# -- answers and errors ----------------------------------------------------------------


def encode_prediction(
    prediction: Prediction, assignment: Assignment | None = None
) -> dict[str, Any]:
    """What MLflow's scoring server answers for a scikit-learn model: the output of
    ``predict`` (class labels for classifiers, numbers for regressors); in an experiment,
    which variant and version served it."""
    body: dict[str, Any] = {"predictions": prediction.predictions}
    if assignment is not None:
        body["experiment"] = {**experiment_fields(assignment), "version": assignment.version}
    return body


def predict(
    model: LoadedModel, request: ScoringRequest, assignment: Assignment | None = None
) -> dict[str, Any]:
    return encode_prediction(model.predict(request.instances, with_proba=False), assignment)


# MLflow's error codes (mlflow/protos/databricks_pb2, as mlflow/exceptions.py maps them to
# HTTP statuses) for our codes; the HTTP status stays ours (422 for values, 413, 415 ...).
_MLFLOW_CODES = {
    "invalid_input": "INVALID_PARAMETER_VALUE",
    "non_finite_output": "INVALID_PARAMETER_VALUE",
    "too_many_instances": "INVALID_PARAMETER_VALUE",
    "body_too_large": "INVALID_PARAMETER_VALUE",
    "model_not_found": "RESOURCE_DOES_NOT_EXIST",
    "version_not_found": "RESOURCE_DOES_NOT_EXIST",
    "alias_not_found": "RESOURCE_DOES_NOT_EXIST",
    "no_model_served": "RESOURCE_DOES_NOT_EXIST",
    "not_found": "ENDPOINT_NOT_FOUND",
    "default_model_not_set": "RESOURCE_CONFLICT",
    "conflict": "RESOURCE_CONFLICT",
    "unauthorized": "UNAUTHENTICATED",
    "forbidden": "PERMISSION_DENIED",
    "model_not_ready": "TEMPORARILY_UNAVAILABLE",
    "model_load_error": "TEMPORARILY_UNAVAILABLE",
    "not_ready": "TEMPORARILY_UNAVAILABLE",
    "internal_error": "INTERNAL_ERROR",
    "store_error": "INTERNAL_ERROR",
    "integrity_error": "INTERNAL_ERROR",
}


def mlflow_error_code(code: str) -> str:
    """Every other client mistake (structure, JSON, CSV, content type) is a BAD_REQUEST."""
    return _MLFLOW_CODES.get(code, "BAD_REQUEST")


def error_body(code: str, message: str, details: Any = None, request_id: str | None = None):
    """MLflow's error shape (``MlflowException.serialize_as_json``): ``error_code`` and
    ``message``, with extra fields next to them: ours are ``details`` and ``request_id``."""
    body: dict[str, Any] = {"error_code": mlflow_error_code(code), "message": message}
    if details is not None:
        body["details"] = details
    if request_id is not None:
        body["request_id"] = request_id
    return body

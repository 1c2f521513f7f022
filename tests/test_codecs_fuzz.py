"""Whatever the bytes, every codec answers: a 2xx, or a 4xx in its protocol's error shape,
never an exception, a 5xx or a gRPC INTERNAL.

Property-based (hypothesis) over the native JSON API, the Open Inference Protocol v2 over
HTTP (JSON and the binary tensor data extension) and over gRPC, and MLflow's scoring
formats (JSON and CSV): arbitrary bytes, arbitrary JSON (NaN, numbers beyond float range,
huge integers, lone surrogates, NUL, repeated keys, deep nesting), and bodies shaped like
each protocol's with hostile values, shapes, datatypes and lengths. The Flask app and the
gRPC server run in this process over a copy of the trained demo store.

The runs are derandomized (the same examples every time, nothing flaky) and bounded by
``MODEL_SERVICE_CODEC_EXAMPLES`` examples per test (default below), so the module takes
about a minute on two shared cores.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import struct
from pathlib import Path

import grpc
import orjson
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from service import create_app
from service.config import Settings
from service.grpc.server import create_server
from service.protocols import v2
from service.protocols.grpc import open_inference_pb2 as pb
from service.protocols.grpc import open_inference_pb2_grpc as pb_grpc
from service.protocols.v2 import rest
from service.store import ModelStore
from tests.support import DEMO_MODELS, IRIS_ROW

EXAMPLES = int(os.environ.get("MODEL_SERVICE_CODEC_EXAMPLES", "80"))
settings.register_profile(
    "codecs",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=EXAMPLES,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings(settings.get_profile("codecs"))

# The demo models, and the cars example: categories, integers and missing values allowed.
MODELS = (*DEMO_MODELS, "car-mpg")
CARS_SPEC = Path(__file__).resolve().parents[1] / "examples" / "cars" / "spec.yaml"
# Statuses a client mistake may get; anything else (above all a 5xx) fails the property.
CLIENT_STATUSES = {400, 401, 403, 404, 405, 409, 413, 415, 422}
GRPC_CLIENT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}


# -- fixtures --------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_store(trained_store_dir, tmp_path_factory):
    from service.training import spec as specs
    from service.training import trainer

    root = tmp_path_factory.mktemp("codecs-fuzz")
    shutil.copytree(trained_store_dir, root / "model_store")
    raw = yaml.safe_load(CARS_SPEC.read_text())
    raw["estimator"]["params"] = {"n_estimators": 30, "max_depth": 2, "random_state": 0}
    raw["evaluation"] = {"seed": 0, "primary_metric": "rmse", "margin": 0}
    spec = specs.parse(raw, base_dir=CARS_SPEC.parent)
    trainer.train(spec, ModelStore(root / "model_store"), aliases=("production",))
    return root


@pytest.fixture(scope="module")
def http(fuzz_store):
    app = create_app(
        {
            "store": fuzz_store / "model_store",
            "state_dir": fuzz_store / "monitoring",
            "request_log": True,
            "prediction_log": True,
        }
    )
    client = app.test_client()
    # Not a vacuous run: a good request through each codec is answered 200.
    model = MODELS[0]
    good = [
        client.post(f"/v1/models/{model}/predict", json={"instances": [IRIS_ROW]}),
        client.post(f"/v1/models/{model}/invocations", json={"instances": [IRIS_ROW]}),
        client.post(
            f"/v2/models/{model}/infer",
            json={"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": IRIS_ROW}]},
        ),
    ]
    assert [response.status_code for response in good] == [200, 200, 200]
    yield client
    app.extensions["model_service"].registry.stop()


class Feature(str):
    """A feature's name, with the strategy of the valid values it takes."""

    values: st.SearchStrategy
    is_category: bool

    def __deepcopy__(self, memo: dict) -> str:
        return str(self)  # in a body, only the name


def feature(entry: dict) -> Feature:
    name = Feature(entry["name"])
    name.is_category = entry["dtype"] == "category"
    if name.is_category:
        values = st.sampled_from(entry["categories"])
    elif entry["dtype"] == "int64":
        values = st.integers(-5, 100)
    else:
        values = st.floats(min_value=-1e3, max_value=1e3)
    name.values = values | st.none() if entry.get("missing") == "allow" else values
    return name


@pytest.fixture(scope="module")
def features(fuzz_store):
    store = ModelStore(fuzz_store / "model_store")
    return {
        name: [feature(entry) for entry in store.metadata(name, 1)["input"]["features"]]
        for name in MODELS
    }


@pytest.fixture(scope="module")
def grpc_channel(fuzz_store):
    server, registry, port = create_server(
        Settings.from_mapping({"store": fuzz_store / "model_store"}),
        address="127.0.0.1:0",
        threads=2,
    )
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel
    channel.close()
    server.stop(None)
    registry.stop()


# -- hostile values --------------------------------------------------------------


class Raw(str):
    """JSON text written as it is: number literals no encoder writes (1e400, 400 digits)."""


class Obj(list):
    """A JSON object as its (key, value) pairs, so a key may appear twice."""


def dump(value, ascii_only: bool = True) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Obj):
        members = (f"{dump(str(k), ascii_only)}:{dump(v, ascii_only)}" for k, v in value)
        return "{" + ",".join(members) + "}"
    if isinstance(value, dict):
        return dump(Obj(value.items()), ascii_only)
    if isinstance(value, list):
        return "[" + ",".join(dump(v, ascii_only) for v in value) + "]"
    # NaN and Infinity as Python writes them; a lone surrogate as its \\u escape.
    return json.dumps(value, ensure_ascii=ascii_only)


def to_bytes(value, raw_utf8: bool = False) -> bytes:
    """The JSON text's bytes. ``raw_utf8``: text as UTF-8 rather than \\u escapes, a lone
    surrogate as the (invalid UTF-8) bytes of its code point."""
    return dump(value, ascii_only=not raw_utf8).encode("utf-8", "surrogatepass")


TEXT = st.text(
    st.characters(codec=None, exclude_categories=[])
    | st.characters(categories=["Cs"])
    | st.sampled_from(["\x00", "\ufeff", ":", '"', "\\", ",", "\n", "\r", "é"]),
    max_size=10,
)
EXTREMES = st.sampled_from(
    [
        1.7976931348623157e308,
        -1.7976931348623157e308,
        3.4028235e38,
        3.5e38,
        1e39,
        -1e300,
        5e-324,
        2**63,
        2**64,
        -(2**63) - 1,
        10**30,
        Raw("1e400"),
        Raw("-1e400"),
        Raw("1" + "0" * 400),
        Raw("1e-400"),
        Raw("-0"),
        Raw("NaN"),
        Raw("Infinity"),
        Raw("-Infinity"),
    ]
)
FINITE = st.floats(min_value=-1e3, max_value=1e3) | st.integers(-5, 100)
NUMBERS = st.one_of(FINITE, FINITE, EXTREMES, st.floats(), st.integers())
SCALARS = st.one_of(NUMBERS, st.booleans(), st.none(), TEXT)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(
            st.tuples(TEXT | st.sampled_from(["instances", "inputs", "data"]), inner), max_size=4
        ).map(Obj)
    ),
    max_leaves=12,
)
DEEP = (
    st.integers(1, 3000)
    .flatmap(
        lambda depth: st.sampled_from(
            [
                "[" * depth + "]" * depth,
                '{"instances":' + "[" * depth + "1" + "]" * depth + "}",
                '{"a":' * depth + "1" + "}" * depth,
            ]
        )
    )
    .map(str.encode)
)
ANY_BYTES = st.binary(max_size=512) | DEEP


def rows_for(names: list[str]):
    """Instances near the model's: right or wrong width, lists or objects, with hostile
    values, unknown and repeated feature names."""
    width = len(names)
    row = st.lists(NUMBERS, min_size=width, max_size=width)
    near = st.lists(SCALARS, min_size=max(0, width - 1), max_size=width + 1)
    record = st.lists(NUMBERS, min_size=width, max_size=width).map(
        lambda values: Obj(zip(names, values, strict=True))
    )
    odd_record = st.lists(
        st.tuples(st.sampled_from(names) | TEXT, SCALARS), min_size=1, max_size=width + 2
    ).map(Obj)
    return st.one_of(row, row, near, record, record, odd_record, JSON)


HOSTILE = st.one_of(
    JSON,
    EXTREMES,
    TEXT,
    st.integers(0, 3000).map(lambda n: [1] * n),  # long lists (shapes of many dimensions)
    st.integers(1, 1100).map(lambda depth: Raw("[" * depth + "]" * depth)),
)


def _positions(value, found=None):
    """Every (container, index) of a tree of Obj and lists."""
    found = [] if found is None else found
    if isinstance(value, (Obj, list)):
        for index in range(len(value)):
            found.append((value, index))
            child = value[index][1] if isinstance(value, Obj) else value[index]
            _positions(child, found)
    return found


@st.composite
def mutated(draw, valid):
    """A valid body with a few hostile changes: a value replaced, a key or element
    repeated, dropped or added. Mostly valid bodies reach the model, so its outputs and
    every check on the way are exercised, not only the first check a body fails."""
    value = copy.deepcopy(valid)
    for _ in range(draw(st.integers(0, 3))):
        positions = _positions(value)
        if not positions:
            break
        container, index = draw(st.sampled_from(positions))
        action = draw(st.sampled_from(["replace", "replace", "repeat", "drop", "add"]))
        is_object = isinstance(container, Obj)
        if action == "replace":
            hostile = draw(HOSTILE)
            container[index] = (container[index][0], hostile) if is_object else hostile
        elif action == "repeat":
            container.insert(index, copy.deepcopy(container[index]))
        elif action == "drop":
            del container[index]
        else:
            key = draw(TEXT | st.sampled_from(["id", "parameters", "data", "params", "index"]))
            container.append((key, draw(HOSTILE)) if is_object else draw(HOSTILE))
    return value


def valid_rows(names: list[Feature], as_records: bool):
    rows = st.lists(st.tuples(*(name.values for name in names)).map(list), min_size=1, max_size=3)
    if as_records:
        return rows.map(lambda rows: [Obj(zip(names, row, strict=True)) for row in rows])
    return rows


# -- what an answer must look like ---------------------------------------------


def assert_answered(response, error_shape) -> dict | None:
    """A 2xx or a client status, never a 5xx; the body strict JSON (orjson reads it: no
    NaN, no lone surrogate escape); an error in the protocol's shape. The body, if JSON."""
    status = response.status_code
    event(f"HTTP {status}")  # the spread of answers: pytest --hypothesis-show-statistics
    assert status < 500, response.get_data()[:2000]
    assert status < 300 or status in CLIENT_STATUSES, (status, response.get_data()[:500])
    if response.mimetype != "application/json":
        assert status < 300 and response.mimetype == "application/octet-stream"
        return None
    body = orjson.loads(response.get_data())
    if status >= 400:
        error_shape(body)
    return body


def native_error(body) -> None:
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def v2_error(body) -> None:
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]


def mlflow_error(body) -> None:
    assert isinstance(body["error_code"], str) and body["error_code"]
    assert isinstance(body["message"], str) and body["message"]


def all_finite(values) -> bool:
    """No null (orjson's NaN) or infinity among the numbers of an answer."""
    stack = [values]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif value is None or (isinstance(value, float) and not math.isfinite(value)):
            return False
    return True


CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=UTF-16",
        "application/json; charset=latin-1",
        "application/json; format=pandas-split",
        "application/octet-stream",
        "text/csv",
        "text/plain",
        "multipart/form-data; boundary=x",
        "",
    ]
)


# -- native --------------------------------------------------------------------


@FUZZ
@given(model=st.sampled_from(MODELS), body=ANY_BYTES, content_type=CONTENT_TYPES)
def test_native_any_bytes(http, model, body, content_type):
    response = http.post(f"/v1/models/{model}/predict", data=body, content_type=content_type)
    assert_answered(response, native_error)


@FUZZ
@given(data=st.data(), model=st.sampled_from(MODELS), raw_utf8=st.booleans())
def test_native_hostile_instances(http, features, data, model, raw_utf8):
    instances = data.draw(st.lists(rows_for(features[model]), max_size=4) | JSON)
    extra = data.draw(st.lists(st.tuples(TEXT | st.just("instances"), JSON), max_size=2))
    body = to_bytes(Obj([("instances", instances), *extra]), raw_utf8)
    response = http.post(f"/v1/models/{model}/predict", data=body, content_type="application/json")
    answer = assert_answered(response, native_error)
    if response.status_code == 200:
        assert all_finite(answer["predictions"])
        assert all_finite(answer.get("probabilities", []))


# -- Open Inference Protocol v2 over HTTP -----------------------------------------

DATATYPES = st.sampled_from([*v2.DATATYPES, "FP128", "fp64", "", "STRING"]) | TEXT
SHAPES = st.lists(st.integers(-2, 6) | st.sampled_from([2**40, 2**63 - 1]), max_size=3) | JSON


def v2_tensor(names: list[str]):
    return st.builds(
        lambda name, datatype, shape, data: Obj(
            [("name", name), ("datatype", datatype), ("shape", shape), ("data", data)]
        ),
        st.sampled_from([*names, "input", "instances"]) | TEXT,
        DATATYPES,
        SHAPES,
        st.lists(NUMBERS | TEXT, max_size=12) | st.lists(rows_for(names), max_size=3) | JSON,
    )


def v2_request(names: list[str]):
    matrix = st.lists(
        st.lists(NUMBERS, min_size=len(names), max_size=len(names)), min_size=1, max_size=3
    ).map(
        lambda rows: Obj(
            [
                ("name", "input"),
                ("datatype", "FP64"),
                ("shape", [len(rows), len(names)]),
                ("data", rows),
            ]
        )
    )
    outputs = st.lists(
        st.builds(
            lambda name, parameters: Obj([("name", name), ("parameters", parameters)]),
            st.sampled_from([v2.OUTPUT_PREDICT, v2.OUTPUT_PROBA]) | TEXT,
            JSON,
        ),
        max_size=2,
    )
    return st.builds(
        lambda inputs, outputs, request_id, parameters: Obj(
            [
                ("inputs", inputs),
                ("outputs", outputs),
                ("id", request_id),
                ("parameters", parameters),
            ]
        ),
        st.lists(v2_tensor(names) | matrix, max_size=3) | JSON,
        outputs | JSON,
        TEXT | JSON,
        st.just(Obj()) | JSON,
    )


@FUZZ
@given(
    model=st.sampled_from(MODELS),
    body=ANY_BYTES,
    content_type=CONTENT_TYPES,
    header=st.none() | TEXT.filter(lambda text: "\n" not in text and "\r" not in text),
)
def test_v2_any_bytes(http, model, body, content_type, header):
    headers = (
        {}
        if header is None
        else {rest.HEADER_LENGTH: header.encode("utf-8", "surrogatepass").decode("latin-1")}
    )
    response = http.post(
        f"/v2/models/{model}/infer", data=body, content_type=content_type, headers=headers
    )
    assert_answered(response, v2_error)


@FUZZ
@given(data=st.data(), model=st.sampled_from(MODELS), raw_utf8=st.booleans())
def test_v2_hostile_json_requests(http, features, data, model, raw_utf8):
    body = to_bytes(data.draw(v2_request(features[model])), raw_utf8)
    response = http.post(f"/v2/models/{model}/infer", data=body, content_type="application/json")
    answer = assert_answered(response, v2_error)
    if response.status_code == 200 and answer is not None:
        assert all(all_finite(output.get("data")) for output in answer["outputs"])


BINARY_DATATYPES = st.sampled_from(v2.DATATYPES) | DATATYPES


@FUZZ
@given(
    data=st.data(),
    model=st.sampled_from(MODELS),
    tensors=st.lists(
        st.tuples(
            st.booleans(), BINARY_DATATYPES, SHAPES, st.binary(max_size=96), st.integers(-1, 120)
        ),
        min_size=1,
        max_size=3,
    ),
    trailing=st.binary(max_size=8),
    length_offset=st.sampled_from([0, 0, 0, -1, 1, 10**6]) | st.integers(-50, 50),
)
def test_v2_hostile_binary_requests(http, features, data, model, tensors, trailing, length_offset):
    names = features[model]
    inputs, chunks = [], []
    for index, (named_as_feature, datatype, shape, raw, claimed) in enumerate(tensors):
        name = names[index % len(names)] if named_as_feature else "input"
        size = len(raw) if claimed < 0 else claimed
        inputs.append(
            Obj(
                [
                    ("name", name),
                    ("datatype", datatype),
                    ("shape", shape),
                    ("parameters", Obj([(rest.BINARY_DATA_SIZE, size)])),
                ]
            )
        )
        chunks.append(raw)
    outputs = data.draw(
        st.just(Obj([("binary_data_output", True)]))
        | st.just(Obj())
        | st.builds(Obj, st.lists(st.tuples(TEXT, JSON), max_size=2))
    )
    header = to_bytes(Obj([("inputs", inputs), ("parameters", outputs)]))
    body = header + b"".join(chunks) + trailing
    response = http.post(
        f"/v2/models/{model}/infer",
        data=body,
        content_type="application/octet-stream",
        headers={rest.HEADER_LENGTH: str(len(header) + length_offset)},
    )
    assert_answered(response, v2_error)


@FUZZ
@given(
    model=st.sampled_from(MODELS),
    rows=st.integers(1, 3),
    datatype=st.sampled_from(["FP64", "FP32", "FP16", "INT64", "UINT64", "INT8"]),
    raw=st.data(),
)
def test_v2_binary_matrix_of_any_bits(http, features, model, rows, datatype, raw):
    """Every bit pattern of a well-formed [N, F] tensor (NaN, infinities, subnormals,
    values beyond float32): a prediction with finite outputs, or a 422."""
    width = len(features[model])
    itemsize = v2.numpy_dtype(datatype).itemsize
    payload = raw.draw(
        st.binary(min_size=rows * width * itemsize, max_size=rows * width * itemsize)
    )
    header = to_bytes(
        Obj(
            [
                (
                    "inputs",
                    [
                        Obj(
                            [
                                ("name", "input"),
                                ("datatype", datatype),
                                ("shape", [rows, width]),
                                ("parameters", Obj([(rest.BINARY_DATA_SIZE, len(payload))])),
                            ]
                        )
                    ],
                ),
                ("parameters", Obj([("binary_data_output", False)])),
            ]
        )
    )
    response = http.post(
        f"/v2/models/{model}/infer",
        data=header + payload,
        content_type="application/octet-stream",
        headers={rest.HEADER_LENGTH: str(len(header))},
    )
    answer = assert_answered(response, v2_error)
    assert response.status_code in (200, 422), answer
    if response.status_code == 200:
        assert all(all_finite(output["data"]) for output in answer["outputs"])


# -- MLflow -----------------------------------------------------------------------


def mlflow_body(names: list[str]):
    rows = st.lists(rows_for(names), max_size=3)
    columns = (
        st.lists(st.sampled_from(names) | TEXT, max_size=len(names) + 1) | st.just(names) | JSON
    )
    split = st.builds(
        lambda columns, data, index: Obj([("columns", columns), ("data", data), ("index", index)]),
        columns,
        rows | JSON,
        st.none() | st.lists(st.integers(), max_size=3) | JSON,
    )
    column_dict = st.lists(
        st.tuples(st.sampled_from(names) | TEXT, st.lists(NUMBERS, max_size=3) | NUMBERS),
        max_size=len(names) + 1,
    ).map(Obj)
    payload = st.one_of(
        split.map(lambda v: Obj([("dataframe_split", v)])),
        (rows | JSON).map(lambda v: Obj([("dataframe_records", v)])),
        (rows | column_dict | JSON).map(lambda v: Obj([("instances", v)])),
        (rows | column_dict | JSON).map(lambda v: Obj([("inputs", v)])),
        JSON,
    )
    return st.builds(
        lambda body, extra: Obj([*body, *extra]) if isinstance(body, Obj) else body,
        payload,
        st.lists(
            st.tuples(st.sampled_from(["params", "instances", "inputs"]) | TEXT, JSON), max_size=2
        ),
    )


@FUZZ
@given(body=ANY_BYTES, content_type=CONTENT_TYPES, model=st.sampled_from(MODELS))
def test_mlflow_any_bytes(http, body, content_type, model):
    response = http.post(f"/v1/models/{model}/invocations", data=body, content_type=content_type)
    assert_answered(response, mlflow_error)


@FUZZ
@given(data=st.data(), model=st.sampled_from(MODELS), raw_utf8=st.booleans())
def test_mlflow_hostile_json(http, features, data, model, raw_utf8):
    body = to_bytes(data.draw(mlflow_body(features[model])), raw_utf8)
    response = http.post(
        f"/v1/models/{model}/invocations", data=body, content_type="application/json"
    )
    answer = assert_answered(response, mlflow_error)
    if response.status_code == 200:
        assert all_finite(answer["predictions"])


CSV_CELLS = st.one_of(
    FINITE.map(str),
    EXTREMES.map(str),
    st.sampled_from(
        ["", "nan", "-inf", "Infinity", "1e400", "1" * 5000, "0x10", " 1 ", '"1"', "1,2", "\x00"]
    ),
    TEXT,
)


@FUZZ
@given(data=st.data(), model=st.sampled_from(MODELS), bom=st.booleans())
def test_mlflow_hostile_csv(http, features, data, model, bom):
    names = features[model]
    header = data.draw(
        st.just(names) | st.lists(st.sampled_from(names) | TEXT, max_size=len(names) + 1)
    )
    lines = data.draw(
        st.lists(
            st.lists(CSV_CELLS, min_size=len(header), max_size=len(header))
            | st.lists(CSV_CELLS, max_size=4),
            max_size=3,
        )
    )
    text = "\n".join(",".join(line) for line in [header, *lines])
    body = (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8", "surrogatepass")
    response = http.post(f"/v1/models/{model}/invocations", data=body, content_type="text/csv")
    answer = assert_answered(response, mlflow_error)
    if response.status_code == 200:
        assert all_finite(answer["predictions"])


# -- valid bodies, a few hostile changes ----------------------------------------------


@FUZZ
@given(data=st.data(), model=st.sampled_from(MODELS), records=st.booleans(), raw_utf8=st.booleans())
def test_native_mutated(http, features, data, model, records, raw_utf8):
    valid = Obj([("instances", data.draw(valid_rows(features[model], records)))])
    body = to_bytes(data.draw(mutated(valid)), raw_utf8)
    response = http.post(f"/v1/models/{model}/predict", data=body, content_type="application/json")
    answer = assert_answered(response, native_error)
    if response.status_code == 200:
        assert all_finite(answer["predictions"])
        assert all_finite(answer.get("probabilities", []))


def valid_v2_request(names: list[str]):
    any_category = any(name.is_category for name in names)

    def build(rows, per_feature, request_id, outputs, binary_output):
        if per_feature:
            inputs = [
                Obj(
                    [
                        ("name", name),
                        ("datatype", "BYTES" if name.is_category else "FP64"),
                        ("shape", [len(rows), 1]),
                        ("data", [row[index] for row in rows]),
                    ]
                )
                for index, name in enumerate(names)
            ]
        else:
            # With a category among them, every feature as text in one BYTES tensor.
            data = [[v if v is None else str(v) for v in row] for row in rows]
            inputs = [
                Obj(
                    [
                        ("name", "input"),
                        ("datatype", "BYTES" if any_category else "FP64"),
                        ("shape", [len(rows), len(names)]),
                        ("data", data if any_category else rows),
                    ]
                )
            ]
        return Obj(
            [
                ("id", request_id),
                ("inputs", inputs),
                ("outputs", [Obj([("name", name)]) for name in outputs]),
                ("parameters", Obj([("binary_data_output", binary_output)])),
            ]
        )

    return st.builds(
        build,
        valid_rows(names, False),
        st.booleans(),
        st.text(max_size=8),
        st.sampled_from([[], [v2.OUTPUT_PREDICT], [v2.OUTPUT_PREDICT, v2.OUTPUT_PROBA]]),
        st.booleans(),
    )


@FUZZ
@given(data=st.data(), model=st.sampled_from(MODELS), raw_utf8=st.booleans())
def test_v2_mutated(http, features, data, model, raw_utf8):
    body = to_bytes(data.draw(mutated(data.draw(valid_v2_request(features[model])))), raw_utf8)
    response = http.post(f"/v2/models/{model}/infer", data=body, content_type="application/json")
    answer = assert_answered(response, v2_error)
    if response.status_code == 200 and answer is not None:
        assert all(all_finite(output.get("data", [])) for output in answer["outputs"])


def valid_mlflow_body(names: list[str]):
    def build(rows, form):
        if form == "dataframe_split":
            return Obj([(form, Obj([("columns", list(names)), ("data", rows)]))])
        if form == "dataframe_records":
            return Obj([(form, [Obj(zip(names, row, strict=True)) for row in rows])])
        if form == "columns":
            columns = [(name, [row[i] for row in rows]) for i, name in enumerate(names)]
            return Obj([("inputs", Obj(columns))])
        return Obj([(form, rows), ("params", Obj())])

    return st.builds(
        build,
        valid_rows(names, False),
        st.sampled_from(["dataframe_split", "dataframe_records", "instances", "inputs", "columns"]),
    )


@FUZZ
@given(data=st.data(), model=st.sampled_from(MODELS), raw_utf8=st.booleans())
def test_mlflow_mutated(http, features, data, model, raw_utf8):
    body = to_bytes(data.draw(mutated(data.draw(valid_mlflow_body(features[model])))), raw_utf8)
    response = http.post(
        f"/v1/models/{model}/invocations", data=body, content_type="application/json"
    )
    answer = assert_answered(response, mlflow_error)
    if response.status_code == 200:
        assert all_finite(answer["predictions"])


# -- Open Inference Protocol over gRPC -----------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
DOUBLES = st.floats(width=64)
CONTENTS = st.fixed_dictionaries(
    {},
    optional={
        "bool_contents": st.lists(st.booleans(), max_size=8),
        "int_contents": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8),
        "int64_contents": st.lists(INT64, max_size=8),
        "uint_contents": st.lists(st.integers(0, 2**32 - 1), max_size=8),
        "uint64_contents": st.lists(UINT64, max_size=8),
        "fp32_contents": st.lists(st.floats(width=32), max_size=8),
        "fp64_contents": st.lists(
            DOUBLES | EXTREMES.filter(lambda v: isinstance(v, float)), max_size=30
        ),
        "bytes_contents": st.lists(st.binary(max_size=8), max_size=8),
    },
)
PROTO_TEXT = st.text(max_size=12)  # protobuf strings are valid UTF-8 by definition


def grpc_request(names: list[str]):
    tensor = st.builds(
        lambda name, datatype, shape, contents: pb.ModelInferRequest.InferInputTensor(
            name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents)
        ),
        st.sampled_from([*names, "input", "instances"]) | PROTO_TEXT,
        st.sampled_from([*v2.DATATYPES, "fp64", "FP128", ""]) | PROTO_TEXT,
        st.lists(st.integers(-1, 6) | st.sampled_from([2**40, 2**63 - 1]), max_size=3),
        CONTENTS,
    )
    return st.builds(
        lambda model_name, version, request_id, inputs, raw, outputs: pb.ModelInferRequest(
            model_name=model_name,
            model_version=version,
            id=request_id,
            inputs=inputs,
            raw_input_contents=raw,
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs],
        ),
        st.sampled_from(MODELS) | PROTO_TEXT,
        st.sampled_from(["", "1", "production", "0", "99"]) | PROTO_TEXT,
        PROTO_TEXT,
        st.lists(tensor, max_size=3),
        st.just([]) | st.lists(st.binary(max_size=64), max_size=3),
        st.lists(st.sampled_from([v2.OUTPUT_PREDICT, v2.OUTPUT_PROBA]) | PROTO_TEXT, max_size=2),
    )


def assert_grpc_answered(call) -> None:
    try:
        response = call()
    except grpc.RpcError as error:
        event(f"gRPC {error.code().name}")
        assert error.code() in GRPC_CLIENT_CODES, (error.code(), error.details())
        return
    event("gRPC OK")
    for raw, output in zip(response.raw_output_contents, response.outputs, strict=True):
        if output.datatype in ("FP64", "FP32"):
            width = 8 if output.datatype == "FP64" else 4
            values = struct.unpack(f"<{len(raw) // width}{'d' if width == 8 else 'f'}", raw)
            assert all(map(math.isfinite, values)), output.name


@FUZZ
@given(data=st.data(), model=st.sampled_from(MODELS))
def test_grpc_hostile_requests(grpc_channel, features, data, model):
    stub = pb_grpc.GRPCInferenceServiceStub(grpc_channel)
    request = data.draw(grpc_request(features[model]))
    assert_grpc_answered(lambda: stub.ModelInfer(request, timeout=10))


GRPC_CHANGES = (
    "model_name",
    "model_version",
    "name",
    "datatype",
    "shape",
    "value",
    "raw",
    "extra_raw",
    "drop_input",
    "repeat_input",
    "other_contents",
    "output",
)


@st.composite
def mutated_grpc_request(draw, model: str, names: list[str]):
    """A valid ModelInferRequest (one [N, F] tensor in raw_input_contents, or one typed
    tensor per feature) with a few hostile changes."""
    rows = draw(valid_rows(names, False))
    request = pb.ModelInferRequest(model_name=model, id=draw(PROTO_TEXT))
    rows = [[math.nan if v is None else v for v in row] for row in rows]
    if draw(st.booleans()) and not any(name.is_category for name in names):
        request.inputs.add(name="input", datatype="FP64", shape=[len(rows), len(names)])
        request.raw_input_contents.append(
            struct.pack(f"<{len(rows) * len(names)}d", *[value for row in rows for value in row])
        )
    else:
        for index, name in enumerate(names):
            column = [row[index] for row in rows]
            if name.is_category:
                tensor = request.inputs.add(name=name, datatype="BYTES", shape=[len(rows), 1])
                tensor.contents.bytes_contents.extend(
                    b"" if v != v else str(v).encode() for v in column
                )
            else:
                tensor = request.inputs.add(name=name, datatype="FP64", shape=[len(rows), 1])
                tensor.contents.fp64_contents.extend(column)
    for output in draw(st.sampled_from([[], [v2.OUTPUT_PREDICT], [v2.OUTPUT_PROBA]])):
        request.outputs.add(name=output)
    for change in draw(st.lists(st.sampled_from(GRPC_CHANGES), max_size=3)):
        tensor = (
            request.inputs[draw(st.integers(0, len(request.inputs) - 1))]
            if request.inputs
            else None
        )
        if change == "model_name":
            request.model_name = draw(PROTO_TEXT)
        elif change == "model_version":
            request.model_version = draw(
                st.sampled_from(["1", "0", "2", "production", "1.0"]) | PROTO_TEXT
            )
        elif change == "output":
            request.outputs.add(name=draw(PROTO_TEXT))
        elif change == "extra_raw":
            request.raw_input_contents.append(draw(st.binary(max_size=16)))
        elif tensor is None:
            continue
        elif change == "name":
            tensor.name = draw(st.sampled_from(names) | PROTO_TEXT)
        elif change == "datatype":
            tensor.datatype = draw(st.sampled_from([*v2.DATATYPES, "fp64", ""]) | PROTO_TEXT)
        elif change == "shape":
            del tensor.shape[:]
            tensor.shape.extend(
                draw(
                    st.lists(st.integers(-2, 4) | st.sampled_from([2**62, 2**63 - 1]), max_size=40)
                )
            )
        elif change == "value":
            value = draw(
                st.floats() | st.sampled_from([1.7976931348623157e308, -1e308, 3.5e38, 1e39])
            )
            if request.raw_input_contents:
                raw = bytearray(request.raw_input_contents[0])
                at = draw(st.integers(0, max(0, len(raw) // 8 - 1))) * 8
                raw[at : at + 8] = struct.pack("<d", value)
                request.raw_input_contents[0] = bytes(raw)
            elif tensor.contents.fp64_contents:
                tensor.contents.fp64_contents[0] = value
        elif change == "raw" and request.raw_input_contents:
            request.raw_input_contents[0] = draw(st.binary(max_size=64))
        elif change == "drop_input":
            del request.inputs[0]
        elif change == "repeat_input":
            request.inputs.append(tensor)
        elif change == "other_contents":
            tensor.contents.MergeFrom(pb.InferTensorContents(**draw(CONTENTS)))
    return request


@FUZZ
@given(data=st.data(), model=st.sampled_from(MODELS))
def test_grpc_mutated(grpc_channel, features, data, model):
    stub = pb_grpc.GRPCInferenceServiceStub(grpc_channel)
    request = data.draw(mutated_grpc_request(model, features[model]))
    assert_grpc_answered(lambda: stub.ModelInfer(request, timeout=10))


@FUZZ
@given(
    model=st.sampled_from(MODELS),
    rows=st.integers(1, 3),
    datatype=st.sampled_from(["FP64", "FP32", "FP16", "INT64", "UINT8"]),
    data=st.data(),
)
def test_grpc_matrix_of_any_bits(grpc_channel, features, model, rows, datatype, data):
    stub = pb_grpc.GRPCInferenceServiceStub(grpc_channel)
    width = len(features[model])
    size = rows * width * v2.numpy_dtype(datatype).itemsize
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype=datatype, shape=[rows, width])
    request.raw_input_contents.append(data.draw(st.binary(min_size=size, max_size=size)))
    assert_grpc_answered(lambda: stub.ModelInfer(request, timeout=10))


@FUZZ
@given(body=st.binary(max_size=256))
def test_grpc_any_bytes(grpc_channel, body):
    """Bytes that may not even be a ModelInferRequest."""
    call = grpc_channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    assert_grpc_answered(lambda: call(body, timeout=10))

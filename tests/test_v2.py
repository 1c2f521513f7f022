"""The Open Inference Protocol v2 over HTTP through Flask's test client: every route,
the same predictions as the native API in each input form, JSON and binary tensor
data both ways (the binary format built and parsed by hand here), and every client
mistake answered {"error": "..."} with the status the native API would use."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from service import create_app
from service.protocols import v2
from service.protocols.v2 import rest
from service.runtime.model import Prediction
from service.store import ModelStore
from tests.support import DEMO_MODELS, IRIS, IRIS_FEATURES, IRIS_ROW

HEADER = "Inference-Header-Content-Length"
CARS_SPEC = Path(__file__).resolve().parents[1] / "examples" / "cars" / "spec.yaml"


def post(client, path, body, content_type="application/json", headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, data=data, content_type=content_type, headers=headers or {})


def infer(client, name, body, **kwargs):
    return post(client, f"/v2/models/{name}/infer", body, **kwargs)


def matrix_input(rows, datatype="FP64", name="input"):
    rows = np.asarray(rows)
    return {"name": name, "shape": list(rows.shape), "datatype": datatype, "data": rows.tolist()}


def native(client, name, rows):
    response = post(client, f"/v1/models/{name}/predict", {"instances": rows})
    assert response.status_code == 200, response.json
    return response.json


def outputs_by_name(body):
    return {o["name"]: o for o in body["outputs"]}


def demo_rows(store_dir, name):
    """The golden rows and perturbed copies (integer features kept integral)."""
    store = ModelStore(store_dir)
    metadata = store.metadata(name, 1)
    rows = np.asarray(metadata["golden"]["instances"], dtype=np.float64)
    rng = np.random.default_rng(1)
    rows = np.vstack([rows, rows * rng.uniform(0.9, 1.1, size=rows.shape)])
    features = metadata["input"]["features"]
    ints = [i for i, f in enumerate(features) if f["dtype"] == "int64"]
    rows[:, ints] = np.round(rows[:, ints])
    return rows, [f["name"] for f in features]


def binary_body(header: dict, chunks: list[bytes]) -> tuple[bytes, dict]:
    """A request in the binary tensor data extension: JSON, then the raw tensors."""
    text = json.dumps(header).encode()
    return text + b"".join(chunks), {HEADER: str(len(text))}


def bytes_elements(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def split_binary_response(response):
    """Parse a binary response by hand: the JSON header, then each output's bytes."""
    assert response.mimetype == "application/octet-stream"
    raw = response.get_data()
    length = int(response.headers[HEADER])
    header = json.loads(raw[:length])
    tail, offset, arrays = raw[length:], 0, {}
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            continue
        chunk = tail[offset : offset + size]
        offset += size
        if output["datatype"] == "BYTES":
            items, at = [], 0
            while at < len(chunk):
                (n,) = struct.unpack_from("<I", chunk, at)
                items.append(chunk[at + 4 : at + 4 + n].decode())
                at += 4 + n
            arrays[output["name"]] = np.array(items, dtype=object).reshape(output["shape"])
        else:
            dtype = {"FP64": "<f8", "INT64": "<i8"}[output["datatype"]]
            arrays[output["name"]] = np.frombuffer(chunk, dtype=dtype).reshape(output["shape"])
    assert offset == len(tail)
    return header, arrays


# -- server and model routes -------------------------------------------------


def test_server_metadata_liveness_and_readiness(client):
    metadata = client.get("/v2")
    assert metadata.status_code == 200
    assert metadata.json == {
        "name": "model-service",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    live = client.get("/v2/health/live")
    assert (live.status_code, live.json) == (200, {"live": True})
    ready = client.get("/v2/health/ready")
    assert (ready.status_code, ready.json) == (200, {"ready": True})


def test_not_ready_when_a_served_model_cannot_load(store_dir):
    (store_dir / IRIS / "1" / "model.pkl").write_bytes(b"tampered")
    app = create_app({"store": store_dir})
    try:
        client = app.test_client()
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/v2/health/ready").json == {"ready": False}
        model = client.get(f"/v2/models/{IRIS}/ready")
        assert (model.status_code, model.json) == (503, {"name": IRIS, "ready": False})
        assert client.get("/v2/models/diabetes-regressor/ready").status_code == 200
        failed = infer(client, IRIS, {"inputs": [matrix_input([IRIS_ROW])]})
        assert failed.status_code == 503
        assert "sha256" in failed.json["error"]
    finally:
        app.extensions["model_service"].registry.stop()


def test_model_metadata(client):
    body = client.get(f"/v2/models/{IRIS}").json
    assert body["name"] == IRIS
    assert body["versions"] == ["1"]
    assert body["platform"] == "sklearn"
    assert body["inputs"] == [
        {"name": name, "datatype": "FP64", "shape": [-1, 1]} for name in IRIS_FEATURES
    ]
    assert body["outputs"] == [
        {"name": "predict", "datatype": "BYTES", "shape": [-1]},
        {
            "name": "predict_proba",
            "datatype": "FP64",
            "shape": [-1, 3],
            "parameters": {"classes": ["setosa", "versicolor", "virginica"]},
        },
    ]
    cancer = client.get("/v2/models/breast-cancer-classifier").json
    assert cancer["outputs"][0]["datatype"] == "BYTES"
    assert cancer["outputs"][1]["shape"] == [-1, 2]
    assert cancer["outputs"][1]["parameters"] == {"classes": ["benign", "malignant"]}
    assert len(cancer["inputs"]) == 30
    diabetes = client.get("/v2/models/diabetes-regressor").json
    assert diabetes["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
    datatypes = {i["name"]: i["datatype"] for i in diabetes["inputs"]}
    assert datatypes["age"] == datatypes["sex"] == "INT64"
    assert datatypes["bmi"] == "FP64"


def test_versions_and_aliases_in_the_path(client, store):
    store.promote(IRIS, 1, alias="staging")
    assert client.get(f"/v2/models/{IRIS}/versions/1").json["name"] == IRIS
    assert client.get(f"/v2/models/{IRIS}/versions/staging").status_code == 200
    ready = client.get(f"/v2/models/{IRIS}/versions/1/ready")
    assert (ready.status_code, ready.json) == (200, {"name": IRIS, "ready": True})
    body = {"inputs": [matrix_input([IRIS_ROW])]}
    answer = post(client, f"/v2/models/{IRIS}/versions/1/infer", body)
    assert answer.status_code == 200
    assert answer.json["model_version"] == "1"
    missing = client.get(f"/v2/models/{IRIS}/versions/7")
    assert missing.status_code == 404
    assert missing.json == {"error": f"model {IRIS!r} has no version 7"}
    assert client.get(f"/v2/models/{IRIS}/versions/7/ready").status_code == 404
    assert client.get("/v2/models/no-such-model/ready").status_code == 404


# -- inference -----------------------------------------------------------------


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_matrix_input_gives_the_native_predictions(client, store_dir, name):
    rows, _ = demo_rows(store_dir, name)
    expected = native(client, name, rows.tolist())

    response = infer(client, name, {"inputs": [matrix_input(rows)]})

    assert response.status_code == 200, response.json
    assert response.mimetype == "application/json"
    body = response.json
    assert body["model_name"] == name and body["model_version"] == "1"
    assert "id" not in body
    outputs = outputs_by_name(body)
    predict = outputs["predict"]
    assert predict["shape"] == [len(rows)]
    assert predict["data"] == expected["predictions"]
    if "probabilities" in expected:
        proba = outputs["predict_proba"]
        assert proba["datatype"] == "FP64"
        assert proba["shape"] == [len(rows), len(expected["classes"])]
        assert np.reshape(proba["data"], proba["shape"]).tolist() == expected["probabilities"]
    else:
        assert list(outputs) == ["predict"]


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_one_tensor_per_feature_gives_the_same_answer(client, store_dir, name):
    rows, features = demo_rows(store_dir, name)
    expected = native(client, name, rows.tolist())
    metadata = client.get(f"/v2/models/{name}").json
    datatypes = {i["name"]: i["datatype"] for i in metadata["inputs"]}
    inputs = []
    for j, feature in enumerate(features):
        column = rows[:, j]
        if datatypes[feature] == "INT64":
            column = column.astype(np.int64)
        # [N, 1] nested for half the features, flat [N] for the others: both are accepted.
        nested = j % 2 == 0
        inputs.append(
            {
                "name": feature,
                "datatype": datatypes[feature],
                "shape": [len(rows), 1] if nested else [len(rows)],
                "data": [[v] for v in column.tolist()] if nested else column.tolist(),
            }
        )
    inputs.reverse()  # tensors are matched by name, not by position

    body = infer(client, name, {"inputs": inputs}).json

    assert outputs_by_name(body)["predict"]["data"] == expected["predictions"]
    if "probabilities" in expected:
        proba = outputs_by_name(body)["predict_proba"]["data"]
        assert np.reshape(proba, (len(rows), -1)).tolist() == expected["probabilities"]


def test_requested_outputs_and_request_id(client):
    body = {
        "id": "request-42",
        "inputs": [matrix_input([IRIS_ROW, [6.7, 3.0, 5.2, 2.3]])],
        "outputs": [{"name": "predict_proba"}],
    }
    answer = infer(client, IRIS, body).json
    assert answer["id"] == "request-42"
    assert [o["name"] for o in answer["outputs"]] == ["predict_proba"]
    only_predict = infer(client, IRIS, {**body, "outputs": [{"name": "predict"}]}).json
    assert only_predict["outputs"] == [
        {"name": "predict", "datatype": "BYTES", "shape": [2], "data": ["setosa", "virginica"]}
    ]
    both = infer(
        client, IRIS, {**body, "outputs": [{"name": "predict_proba"}, {"name": "predict"}]}
    )
    assert [o["name"] for o in both.json["outputs"]] == ["predict_proba", "predict"]


def test_binary_request_and_binary_response(client):
    rows = np.array([IRIS_ROW, [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype="<f8")
    expected = native(client, IRIS, rows.tolist())
    raw = rows.tobytes()
    header = {
        "id": "binary-1",
        "inputs": [
            {
                "name": "input",
                "shape": [3, 4],
                "datatype": "FP64",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "outputs": [
            {"name": "predict", "parameters": {"binary_data": True}},
            {"name": "predict_proba", "parameters": {"binary_data": True}},
        ],
    }
    body, headers = binary_body(header, [raw])

    response = infer(client, IRIS, body, content_type="application/octet-stream", headers=headers)

    assert response.status_code == 200, response.get_data()
    parsed, arrays = split_binary_response(response)
    assert parsed["id"] == "binary-1"
    assert all("data" not in o for o in parsed["outputs"])
    assert arrays["predict"].tolist() == expected["predictions"]
    assert arrays["predict_proba"].tolist() == expected["probabilities"]


def test_binary_per_feature_tensors_of_other_datatypes(client, store_dir):
    rows, features = demo_rows(store_dir, "diabetes-regressor")
    expected = native(client, "diabetes-regressor", rows.tolist())
    inputs, chunks = [], []
    for j, feature in enumerate(features):
        dtype = "<i4" if feature in ("age", "sex") else "<f8"
        raw = rows[:, j].astype(dtype).tobytes()
        chunks.append(raw)
        inputs.append(
            {
                "name": feature,
                "shape": [len(rows), 1],
                "datatype": "INT32" if dtype == "<i4" else "FP64",
                "parameters": {"binary_data_size": len(raw)},
            }
        )
    body, headers = binary_body({"inputs": inputs}, chunks)

    # No Content-Type at all, as tritonclient sends it; no outputs listed and
    # binary_data_output unset: JSON back.
    response = infer(client, "diabetes-regressor", body, content_type=None, headers=headers)

    assert response.status_code == 200, response.get_data()
    assert response.mimetype == "application/json"
    assert HEADER not in response.headers
    assert outputs_by_name(response.json)["predict"]["data"] == expected["predictions"]


def test_binary_data_output_with_a_json_override(client):
    body = {
        "parameters": {"binary_data_output": True},
        "inputs": [matrix_input([IRIS_ROW])],
        "outputs": [
            {"name": "predict", "parameters": {"binary_data": False}},
            {"name": "predict_proba"},
        ],
    }
    response = infer(client, IRIS, body)
    parsed, arrays = split_binary_response(response)
    outputs = outputs_by_name(parsed)
    assert outputs["predict"]["data"] == ["setosa"]
    assert list(arrays) == ["predict_proba"]
    assert arrays["predict_proba"].shape == (1, 3)
    assert outputs["predict_proba"]["parameters"] == {"binary_data_size": 24}


def test_a_gzip_body_is_accepted(client):
    body = gzip.compress(json.dumps({"inputs": [matrix_input([IRIS_ROW])]}).encode())
    response = infer(client, IRIS, body, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.json
    assert outputs_by_name(response.json)["predict"]["data"] == ["setosa"]


# -- a model with a categorical feature -----------------------------------------


@pytest.fixture(scope="module")
def cars_store(tmp_path_factory):
    """The cars example (numbers, a category, missing values allowed), trained small."""
    from service.training import spec as specs
    from service.training import trainer

    raw = yaml.safe_load(CARS_SPEC.read_text())
    raw["estimator"]["params"] = {"n_estimators": 30, "max_depth": 2, "random_state": 0}
    raw["evaluation"] = {"seed": 0, "primary_metric": "rmse", "margin": 0}
    root = tmp_path_factory.mktemp("cars") / "model_store"
    spec = specs.parse(raw, base_dir=CARS_SPEC.parent)
    trainer.train(spec, ModelStore(root), aliases=("production",))
    return root


@pytest.fixture
def cars_client(cars_store, tmp_path):
    store = tmp_path / "model_store"
    shutil.copytree(cars_store, store)
    app = create_app({"store": store})
    yield app.test_client()
    app.extensions["model_service"].registry.stop()


CARS_ROWS = [
    [8, 351.0, 153.0, 4129, 13.0, 1972, "USA"],
    [4, 97.0, None, 2130, 14.5, 1971, "Japan"],
    [4, 121.0, 112.0, 2933, 14.5, 1977, "Europe"],
]


def test_categorical_features_as_bytes_tensors(cars_client):
    expected = native(cars_client, "car-mpg", CARS_ROWS)["predictions"]
    metadata = cars_client.get("/v2/models/car-mpg").json
    origin = next(i for i in metadata["inputs"] if i["name"] == "Origin")
    assert origin["datatype"] == "BYTES"
    assert origin["parameters"] == {"categories": ["Europe", "Japan", "USA"]}
    names = [i["name"] for i in metadata["inputs"]]
    datatypes = [i["datatype"] for i in metadata["inputs"]]

    columns = list(zip(*CARS_ROWS, strict=True))
    per_feature = [
        {"name": n, "datatype": d, "shape": [3], "data": list(c)}
        for n, d, c in zip(names, datatypes, columns, strict=True)
    ]
    by_feature = infer(cars_client, "car-mpg", {"inputs": per_feature})
    assert by_feature.status_code == 200, by_feature.json
    assert by_feature.json["outputs"][0]["data"] == expected

    # The same, with Origin in binary: 4-byte little-endian lengths, then the bytes.
    raw = bytes_elements(list(columns[-1]))
    binary_inputs = [
        *per_feature[:-1],
        {
            "name": "Origin",
            "datatype": "BYTES",
            "shape": [3, 1],
            "parameters": {"binary_data_size": len(raw)},
        },
    ]
    body, headers = binary_body({"inputs": binary_inputs}, [raw])
    binary = infer(cars_client, "car-mpg", body, content_type=None, headers=headers)
    assert binary.status_code == 200, binary.json
    assert binary.json["outputs"][0]["data"] == expected

    # One [N, F] BYTES tensor: numbers parsed from text, missing as null.
    text_rows = [[None if v is None else str(v) for v in row] for row in CARS_ROWS]
    matrix = infer(cars_client, "car-mpg", {"inputs": [matrix_input(text_rows, "BYTES")]})
    assert matrix.status_code == 200, matrix.json
    assert matrix.json["outputs"][0]["data"] == expected


def test_values_in_text_are_checked_like_the_native_api(cars_client):
    for value, problem in [
        (8.5, "feature 'Cylinders': expected an integer"),
        ("eight", "feature 'Cylinders': expected a number, got a string"),
    ]:
        row = [value, 351.0, 153.0, 4129, 13.0, 1972, "USA"]
        v1 = post(cars_client, "/v1/models/car-mpg/predict", {"instances": [row]})
        text_row = [str(v) for v in row]
        bad = infer(cars_client, "car-mpg", {"inputs": [matrix_input([text_row], "BYTES")]})
        assert v1.status_code == bad.status_code == 422
        assert bad.json == {"error": v1.json["error"]["message"]}
        assert problem in bad.json["error"]


# -- errors ----------------------------------------------------------------------


def iris_inputs(**changes):
    tensor = {**matrix_input([IRIS_ROW]), **changes}
    return {"inputs": [tensor]}


def per_feature(values=None, **overrides):
    values = values or dict(zip(IRIS_FEATURES, IRIS_ROW, strict=True))
    inputs = [{"name": k, "shape": [1], "datatype": "FP64", "data": [v]} for k, v in values.items()]
    for tensor in inputs:
        tensor.update(overrides.get(tensor["name"], {}))
    return {"inputs": inputs}


def binary_request(header_length_delta=0, extra=b"", size_delta=0, with_header=True):
    raw = np.array([IRIS_ROW], dtype="<f8").tobytes()
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 4],
                "datatype": "FP64",
                "parameters": {"binary_data_size": len(raw) + size_delta},
            }
        ]
    }
    body, headers = binary_body(header, [raw + extra])
    headers[HEADER] = str(int(headers[HEADER]) + header_length_delta)
    return body, "application/octet-stream", headers if with_header else {}


ERRORS = [
    # (path, body, content type, headers, status, message fragment)
    (IRIS, b"{not json", "application/json", {}, 400, "not valid JSON"),
    (IRIS, b"", "application/json", {}, 400, "the request body is empty"),
    (IRIS, [IRIS_ROW], "application/json", {}, 400, "must be a JSON object"),
    (IRIS, {"instances": [IRIS_ROW]}, "application/json", {}, 400, "unexpected keys ['instances']"),
    (IRIS, {"inputs": []}, "application/json", {}, 400, '"inputs" must be a non-empty list'),
    (IRIS, {"id": 7, **iris_inputs()}, "application/json", {}, 400, '"id" must be a string'),
    ("no-such-model", iris_inputs(), "application/json", {}, 404, "no model named"),
    (f"{IRIS}/versions/9", iris_inputs(), "application/json", {}, 404, "has no version 9"),
    (f"{IRIS}/versions/0", iris_inputs(), "application/json", {}, 400, "invalid version '0'"),
    (
        IRIS,
        {
            "inputs": [
                *per_feature()["inputs"][:3],
                {**per_feature()["inputs"][3], "name": "petal_widht_cm"},
            ]
        },
        "application/json",
        {},
        400,
        "unknown input tensors ['petal_widht_cm']; did you mean 'petal_width_cm'",
    ),
    (
        IRIS,
        {"inputs": [{"name": "petal_widht_cm", "shape": [1], "datatype": "FP64", "data": [0.2]}]},
        "application/json",
        {},
        400,
        "unknown input tensors ['petal_widht_cm']; did you mean 'petal_width_cm'",
    ),
    (
        IRIS,
        {"inputs": per_feature()["inputs"][:3]},
        "application/json",
        {},
        400,
        "missing input tensors for features ['petal_width_cm']",
    ),
    (
        IRIS,
        iris_inputs(shape=[2, 4]),
        "application/json",
        {},
        400,
        "input tensor 'input' has shape [2, 4], which holds 8 elements, but its data has 4",
    ),
    (
        IRIS,
        iris_inputs(shape=[1, 2, 2]),
        "application/json",
        {},
        400,
        "input tensor 'input' has shape [1, 2, 2]; a single input tensor must be [N, 4]",
    ),
    (
        IRIS,
        {"inputs": [matrix_input([IRIS_ROW[:3]])]},
        "application/json",
        {},
        400,
        "a single input tensor must be [N, 4]",
    ),
    (
        IRIS,
        per_feature(sepal_length_cm={"shape": [1, 2], "data": [5.1, 5.2]}),
        "application/json",
        {},
        400,
        "input tensor 'sepal_length_cm' has shape [1, 2]; a feature tensor is [N] or [N, 1]",
    ),
    (
        IRIS,
        per_feature(sepal_length_cm={"shape": [2], "data": [5.1, 5.2]}),
        "application/json",
        {},
        400,
        "input tensors hold different numbers of rows",
    ),
    (
        IRIS,
        per_feature(petal_length_cm={"datatype": "BOOL", "data": [True]}),
        "application/json",
        {},
        400,
        "input tensor 'petal_length_cm' is BOOL, but feature 'petal_length_cm' is numeric",
    ),
    (
        IRIS,
        {"inputs": [matrix_input([[str(v) for v in IRIS_ROW]], "BYTES")]},
        "application/json",
        {},
        400,
        "input tensor 'input' is BYTES, but every feature of this model is numeric",
    ),
    (IRIS, iris_inputs(datatype="FP8"), "application/json", {}, 400, "unsupported datatype 'FP8'"),
    (
        IRIS,
        iris_inputs(data=[["5.1", 3.5, 1.4, 0.2]]),
        "application/json",
        {},
        400,
        "input tensor 'input' is FP64, so its data must hold numbers, not strings",
    ),
    (
        IRIS,
        iris_inputs(datatype="INT64", data=[[5.1, 3, 1, 0]]),
        "application/json",
        {},
        400,
        "is INT64, so its data must hold integers, not numbers with a fraction",
    ),
    (
        IRIS,
        b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", '
        b'"data": [5.1, 3.5, 1.4, NaN]}]}',
        "application/json",
        {},
        422,
        "instance 0, feature 'petal_width_cm': is NaN, but this feature does not allow missing",
    ),
    (
        IRIS,
        iris_inputs(data=[[5.1, 3.5, 1.4, None]]),
        "application/json",
        {},
        422,
        "feature 'petal_width_cm': is NaN",
    ),
    (
        IRIS,
        {"inputs": [matrix_input([IRIS_ROW] * 10_001)]},
        "application/json",
        {},
        413,
        "10001 rows in one request; at most 10000 are allowed",
    ),
    (
        IRIS,
        {**iris_inputs(), "outputs": [{"name": "probabilities"}]},
        "application/json",
        {},
        400,
        "unknown outputs ['probabilities']; model 'iris-classifier' has outputs",
    ),
    (
        "diabetes-regressor",
        {
            "inputs": [matrix_input([[50, 1, 0.3, 90.0, 150.0, 90.0, 40.0, 4.0, 4.5, 90.0]])],
            "outputs": [{"name": "predict_proba"}],
        },
        "application/json",
        {},
        400,
        "unknown outputs ['predict_proba']; model 'diabetes-regressor' has outputs ['predict']",
    ),
    (
        IRIS,
        {**iris_inputs(), "outputs": [{"name": "predict", "parameters": {"classification": 2}}]},
        "application/json",
        {},
        400,
        "classification extension",
    ),
    (
        IRIS,
        iris_inputs(parameters={"shared_memory_region": "r0"}),
        "application/json",
        {},
        400,
        "shared memory extension",
    ),
    (
        IRIS,
        *binary_request(extra=b"\0" * 8),
        400,
        "the body has 8 bytes after the JSON header that no input claims",
    ),
    (IRIS, *binary_request(size_delta=8), 400, "claims 40 bytes of binary data, but only 32"),
    (IRIS, *binary_request(extra=b"\0" * 8, size_delta=8), 400, "which takes 32 bytes, but 40"),
    (
        IRIS,
        *binary_request(with_header=False),
        400,
        "not valid UTF-8: invalid start byte at byte 130; a body with binary tensor data needs "
        "the Inference-Header-Content-Length header",
    ),
    (
        IRIS,
        *binary_request(header_length_delta=10_000),
        400,
        "Inference-Header-Content-Length is",
    ),
    (IRIS, iris_inputs(), "application/json", {HEADER: "many"}, 400, "must be the length"),
    (
        IRIS,
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 4],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": 32},
                }
            ]
        },
        "application/json",
        {},
        400,
        "has binary_data_size, but the request has no Inference-Header-Content-Length",
    ),
    (IRIS, iris_inputs(), "text/plain", {}, 415, "Content-Type must be application/json"),
    (
        IRIS,
        iris_inputs(),
        "application/x-www-form-urlencoded",
        {},
        415,
        "Content-Type must be application/json",
    ),
    (IRIS, iris_inputs(), "application/json; charset=latin-1", {}, 415, "charset"),
    (IRIS, iris_inputs(), "application/json", {"Content-Encoding": "br"}, 415, "'br'"),
    (IRIS, b"not gzip", "application/json", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
    # Hostile bytes and values: each a 4xx saying what and where, none a 500.
    (IRIS, iris_inputs(), "application/json", {HEADER: "\u00b2"}, 400, "must be the length"),
    (IRIS, iris_inputs(), "application/json", {HEADER: "9" * 5000}, 400, "must be the length"),
    (
        IRIS,
        b'{"id": "\\ud800", ' + json.dumps(iris_inputs()).encode()[1:],
        "application/json",
        {},
        400,
        '"id" holds a lone surrogate',
    ),
    (IRIS, iris_inputs(shape=[1] * 40), "application/json", {}, 400, "has 40 dimensions"),
    (
        IRIS,
        iris_inputs(shape=[2**63 - 1, 2**63 - 1, 0], data=[]),
        "application/json",
        {},
        400,
        "larger than any tensor can be",
    ),
    (
        IRIS,
        b'{"inputs": [{"name": "x", "datatype": "FP64", "data": [1], "shape": '
        + b"[" * 900
        + b"]" * 900
        + b"}]}",
        "application/json",
        {},
        400,
        "has shape of type list; a shape is a list of non-negative integers",
    ),
    (
        IRIS,
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], '
        b'"data": [1, 2, 3, 1e400]}]}',
        "application/json",
        {},
        400,
        "the number 1e400 at line 1 column 82 is beyond the range of a 64-bit float",
    ),
    (
        IRIS,
        b'{"inputs": [], "inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4]}]}',
        "application/json",
        {},
        400,
        "the key 'inputs' appears more than once in the object at $",
    ),
    (
        IRIS,
        b"\xef\xbb\xbf" + json.dumps(iris_inputs()).encode(),
        "application/json",
        {},
        400,
        "starts with a UTF-8 byte order mark",
    ),
    (
        IRIS,
        json.dumps(iris_inputs(datatype="BYTES", data=["\xff"] * 4))
        .encode()
        .replace(b"\\u00ff", b"\xff"),
        "application/json",
        {},
        400,
        "not valid UTF-8: invalid start byte at byte",
    ),
]


@pytest.mark.parametrize(("model", "body", "content_type", "headers", "status", "message"), ERRORS)
def test_errors_answer_in_the_protocol_shape(
    client, model, body, content_type, headers, status, message
):
    response = post(client, f"/v2/models/{model}/infer", body, content_type, headers)
    assert response.status_code == status, response.get_data()
    assert response.is_json
    assert set(response.json) == {"error"}
    assert message in response.json["error"]
    # A worker that answered a bad request still answers good ones.
    assert infer(client, IRIS, iris_inputs()).status_code == 200


def test_value_errors_carry_the_native_status_and_message(client):
    v1 = post(client, f"/v1/models/{IRIS}/predict", b'{"instances": [[5.1, 3.5, 1.4, Infinity]]}')
    body = (
        b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", '
        b'"data": [5.1, 3.5, 1.4, Infinity]}]}'
    )
    oip = post(client, f"/v2/models/{IRIS}/infer", body)
    assert v1.status_code == oip.status_code == 422
    assert oip.json == {"error": v1.json["error"]["message"]}


def test_unknown_routes_and_methods_under_v2_answer_in_the_protocol_shape(client):
    missing = client.get("/v2/models/iris-classifier/config")
    assert missing.status_code == 404
    assert missing.json == {"error": "no route /v2/models/iris-classifier/config"}
    wrong_method = client.get(f"/v2/models/{IRIS}/infer")
    assert wrong_method.status_code == 405
    assert set(wrong_method.json) == {"error"}
    # The native API keeps its own shape.
    assert client.get("/v1/nothing").json["error"]["code"] == "not_found"


def test_body_over_the_limit_gets_413_even_when_compressed(store_dir):
    app = create_app({"store": store_dir, "max_body_bytes": 2000})
    try:
        client = app.test_client()
        big = {"inputs": [matrix_input([IRIS_ROW] * 100)]}
        plain = infer(client, IRIS, big)
        assert plain.status_code == 413
        packed = gzip.compress(json.dumps(big).encode())
        assert len(packed) < 2000
        compressed = infer(client, IRIS, packed, headers={"Content-Encoding": "gzip"})
        assert compressed.status_code == 413
        assert "larger than the limit of 2000 bytes" in compressed.json["error"]
    finally:
        app.extensions["model_service"].registry.stop()


# -- the codec on its own ----------------------------------------------------------


def test_datatypes_round_trip():
    for datatype in v2.DATATYPES:
        if datatype == "BYTES":
            continue
        array = np.zeros(3, dtype=v2.numpy_dtype(datatype))
        assert v2.v2_datatype(array) == datatype
    assert v2.v2_datatype(np.array([b"a"], dtype=object)) == "BYTES"
    tensor = v2.tensor_from_bytes("t", "BYTES", [2, 1], bytes_elements(["ab", "é"]))
    assert tensor.data.tolist() == [[b"ab"], ["é".encode()]]
    assert v2.tensor_to_bytes(tensor) == bytes_elements(["ab", "é"])
    nested = rest.tensor_from_json("t", "INT32", [2, 2], [[1, 2], [3, 4]])
    assert nested.data.dtype == np.dtype("<i4") and nested.data.tolist() == [[1, 2], [3, 4]]


def test_repeated_bytes_elements_are_written_as_one_by_one():
    """BYTES elements are framed and decoded once per distinct value: the wire and the
    JSON are those of each element on its own, whatever the mix of values."""
    labels = ["setosa", "é", "setosa", "virginica", "é", "setosa"]
    tensor = v2.Tensor("t", "BYTES", [3, 2], np.array([v.encode() for v in labels], dtype=object))
    assert v2.tensor_to_bytes(tensor) == bytes_elements(labels)
    assert rest.tensor_to_json(tensor) == labels
    # Text and bytes of the same letters, and an int and a bool that are equal (1 == True)
    # but written differently: each element keeps its own form.
    mixed = v2.Tensor("t", "BYTES", [5], np.array(["a", b"a", 1, True, 1], dtype=object))
    assert v2.tensor_to_bytes(mixed) == bytes_elements(["a", "a", "1", "True", "1"])
    assert rest.tensor_to_json(mixed) == ["a", "a", 1, True, 1]
    unhashable = v2.Tensor("t", "BYTES", [2], np.array([b"x", None], dtype=object))
    unhashable.data[1] = [1]
    assert v2.tensor_to_bytes(unhashable) == bytes_elements(["x", "[1]"])


def test_label_datatypes_follow_the_classes():
    def fake(task, classes):
        return SimpleNamespace(name="m", task=task, classes=classes, has_proba=False)

    integers = v2.output_tensors(fake("classification", [0, 1]), Prediction([1, 0]), ["predict"])
    assert integers[0].datatype == "INT64"
    assert integers[0].data.dtype == np.dtype("<i8") and integers[0].data.tolist() == [1, 0]
    labels = v2.output_tensors(fake("classification", ["a", "b"]), Prediction(["b"]), ["predict"])
    assert labels[0].datatype == "BYTES" and labels[0].data.tolist() == [b"b"]
    many = v2.output_tensors(
        fake("classification", ["a", "é"]), Prediction(["é", "a", "é"]), ["predict"]
    )
    assert many[0].data.tolist() == [b"\xc3\xa9", b"a", b"\xc3\xa9"]
    # Labels of another type than text (a mix that compares equal: 1 == True) are written
    # each as its own text.
    mixed = v2.output_tensors(fake("classification", ["x"]), Prediction([1, True]), ["predict"])
    assert mixed[0].data.tolist() == [b"1", b"True"]
    values = v2.output_tensors(fake("regression", None), Prediction([1.5, 2.0]), ["predict"])
    assert values[0].datatype == "FP64" and values[0].shape == [2]


def test_a_huge_bytes_shape_on_a_small_body_is_refused_before_allocating():
    from service.errors import BadRequest

    raw = struct.pack("<I", 1) + b"a"
    with pytest.raises(BadRequest, match="takes at least 4000000000000 bytes, but 5 bytes"):
        v2.tensor_from_bytes("sex", "BYTES", [10**12], raw)


def test_non_finite_outputs_are_refused_in_json_and_binary(client):
    huge = 1.7976931348623157e308
    rows = [IRIS_ROW, [huge, 3.5, 1.3, 0.2]]
    by_json = infer(client, IRIS, {"inputs": [matrix_input(rows)]})
    raw = np.array(rows, dtype="<f8").tobytes()
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": [2, 4],
                "datatype": "FP64",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    body, headers = binary_body(header, [raw])
    by_binary = post(client, f"/v2/models/{IRIS}/infer", body, "application/octet-stream", headers)
    for response in (by_json, by_binary):
        assert response.status_code == 422
        assert response.json == {
            "error": "instance 1: the model cannot score it: its output is not a finite number "
            "(NaN or infinity); its values are too large for the model's arithmetic"
        }

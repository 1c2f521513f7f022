"""The Open Inference Protocol through Nginx and Gunicorn, driven by Triton's own HTTP
client: health, metadata, and inference in JSON and in binary tensor data, giving the
same answers as the native API on the same rows."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from service.store import ModelStore
from tests.support import DEMO_MODELS, IRIS, IRIS_OBJECT, IRIS_ROW

pytestmark = pytest.mark.integration


@pytest.fixture
def triton(stack):
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{stack.port}")
    yield client
    client.close()


def rows_for(stack, name) -> np.ndarray:
    metadata = ModelStore(stack.store).metadata(name, 1)
    rows = np.asarray(metadata["golden"]["instances"], dtype=np.float64)
    rng = np.random.default_rng(2)
    rows = np.vstack([rows, rows * rng.uniform(0.9, 1.1, size=rows.shape)])
    ints = [i for i, f in enumerate(metadata["input"]["features"]) if f["dtype"] == "int64"]
    rows[:, ints] = np.round(rows[:, ints])
    return rows


def native(stack, http, name, rows: np.ndarray) -> dict:
    response = http.post(f"{stack.url}/v1/models/{name}/predict", json={"instances": rows.tolist()})
    assert response.status_code == 200, response.text
    return response.json()


def labels(array: np.ndarray) -> list:
    return [v.decode() if isinstance(v, bytes) else v for v in array.tolist()]


def test_health_and_metadata(stack, triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.get_server_metadata() == {
        "name": "model-service",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    assert triton.is_model_ready(IRIS)
    assert triton.is_model_ready(IRIS, "1")
    assert not triton.is_model_ready(IRIS, "9")
    assert not triton.is_model_ready("no-such-model")
    metadata = triton.get_model_metadata(IRIS)
    assert metadata["name"] == IRIS and metadata["versions"] == ["1"]
    assert [i["name"] for i in metadata["inputs"]] == list(IRIS_OBJECT)
    assert [o["name"] for o in metadata["outputs"]] == ["predict", "predict_proba"]
    assert triton.get_model_metadata(IRIS, "1") == metadata


@pytest.mark.parametrize("binary_in", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("binary_out", [False, True], ids=["json-out", "binary-out"])
@pytest.mark.parametrize("name", DEMO_MODELS)
def test_infer_equals_native_predict(stack, http, triton, name, binary_in, binary_out):
    rows = rows_for(stack, name)
    expected = native(stack, http, name, rows)
    tensor = httpclient.InferInput("input", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows, binary_data=binary_in)
    wanted = ["predict", "predict_proba"] if "probabilities" in expected else ["predict"]
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in wanted]

    result = triton.infer(name, [tensor], outputs=outputs, request_id=f"{name}-1")

    response = result.get_response()
    assert response["model_name"] == name and response["model_version"] == "1"
    assert response["id"] == f"{name}-1"
    for output in response["outputs"]:
        assert ("parameters" in output) is binary_out
        assert ("data" in output) is not binary_out
    assert labels(result.as_numpy("predict")) == expected["predictions"]
    if "probabilities" in expected:
        probabilities = result.as_numpy("predict_proba")
        assert probabilities.shape == (len(rows), len(expected["classes"]))
        np.testing.assert_allclose(probabilities, expected["probabilities"], rtol=1e-12)
    else:
        assert result.as_numpy("predict_proba") is None


def test_one_tensor_per_feature_and_all_outputs_by_default(stack, http, triton):
    name = "diabetes-regressor"
    rows = rows_for(stack, name)
    expected = native(stack, http, name, rows)
    inputs = []
    for j, spec in enumerate(triton.get_model_metadata(name)["inputs"]):
        dtype = np.int64 if spec["datatype"] == "INT64" else np.float64
        column = rows[:, j : j + 1].astype(dtype)
        tensor = httpclient.InferInput(spec["name"], list(column.shape), spec["datatype"])
        inputs.append(tensor.set_data_from_numpy(column, binary_data=j % 2 == 0))

    # Without outputs the client asks for every output in binary (binary_data_output).
    result = triton.infer(name, inputs)

    output = result.get_output("predict")
    assert output["parameters"]["binary_data_size"] == 8 * len(rows)
    np.testing.assert_allclose(result.as_numpy("predict"), expected["predictions"], rtol=1e-12)


def test_versions_and_compression(stack, http, triton):
    rows = np.array([IRIS_ROW] * 40, dtype=np.float64)
    tensor = httpclient.InferInput("input", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows, binary_data=False)
    outputs = [httpclient.InferRequestedOutput("predict", binary_data=False)]

    result = triton.infer(
        IRIS,
        [tensor],
        model_version="1",
        outputs=outputs,
        request_compression_algorithm="gzip",
        response_compression_algorithm="gzip",
    )

    assert result.get_response()["model_version"] == "1"
    assert labels(result.as_numpy("predict")) == ["setosa"] * 40
    with pytest.raises(InferenceServerException) as missing:
        triton.infer(IRIS, [tensor], model_version="9")
    assert missing.value.status() == "404"
    assert f"model {IRIS!r} has no version 9" in missing.value.message()


def test_errors_reach_the_client_with_their_message(triton):
    wrong = httpclient.InferInput("petal_widht_cm", [1], "FP64")
    wrong.set_data_from_numpy(np.array([0.2]), binary_data=True)
    with pytest.raises(InferenceServerException) as unknown:
        triton.infer(IRIS, [wrong])
    assert unknown.value.status() == "400"
    assert "unknown input tensors ['petal_widht_cm']" in unknown.value.message()

    nan = httpclient.InferInput("input", [1, 4], "FP64")
    nan.set_data_from_numpy(np.array([[5.1, 3.5, np.nan, 0.2]]), binary_data=True)
    with pytest.raises(InferenceServerException) as invalid:
        triton.infer(IRIS, [nan])
    assert invalid.value.status() == "422"
    assert "feature 'petal_length_cm': is NaN" in invalid.value.message()

    with pytest.raises(InferenceServerException) as no_model:
        triton.get_model_metadata("no-such-model")
    assert no_model.value.status() == "404"
    assert "no model named 'no-such-model'" in no_model.value.message()

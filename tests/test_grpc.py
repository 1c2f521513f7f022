"""The Open Inference Protocol over gRPC, driven by Triton's own client (tritonclient.grpc)
against the server in this process, over a copy of the demo store."""

from __future__ import annotations

import shutil

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as triton_pb2
from tritonclient.utils import InferenceServerException

from service.config import Settings
from service.grpc.server import create_server
from service.protocols import v2
from service.protocols.grpc import open_inference_pb2 as pb
from service.protocols.grpc import open_inference_pb2_grpc as pb_grpc
from service.runtime import model as model_runtime
from service.store import ModelStore, parse_ref
from tests.support import CANCER, DEMO_MODELS, DIABETES, IRIS, eventually

RPCS = ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"]


def start_server(store_path, **settings):
    server, registry, port = create_server(
        Settings.from_mapping({"store": store_path, "reload_interval": 0.1, **settings}),
        address="127.0.0.1:0",
        threads=4,
    )
    server.start()
    return server, registry, port


@pytest.fixture(scope="module")
def grpc_store(trained_store_dir, tmp_path_factory):
    target = tmp_path_factory.mktemp("grpc") / "model_store"
    shutil.copytree(trained_store_dir, target)
    return ModelStore(target)


@pytest.fixture(scope="module")
def address(grpc_store):
    server, registry, port = start_server(grpc_store.root)
    yield f"127.0.0.1:{port}"
    server.stop(None)
    registry.stop()


@pytest.fixture(scope="module")
def client(address):
    client = triton.InferenceServerClient(address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(address):
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def loaded(store: ModelStore, name: str) -> model_runtime.LoadedModel:
    return model_runtime.load(store, name, store.resolve(parse_ref(name)))


def rows_for(model: model_runtime.LoadedModel) -> list[list[float]]:
    """The golden rows, then each feature's training minimum and maximum."""
    features = model.metadata["input"]["features"]
    rows = [list(map(float, row)) for row in model.metadata["golden"]["instances"]]
    for stat in ("min", "max"):
        rows.append([float(f["stats"][stat]) for f in features])
    return rows


def matrix_input(rows, name="instances", datatype="FP64"):
    array = np.array(rows, dtype=v2.numpy_dtype(datatype))
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def feature_inputs(model: model_runtime.LoadedModel, rows):
    """One [N, 1] tensor per feature, typed as the model's metadata says."""
    inputs = []
    for index, entry in enumerate(v2.model_metadata(model, [model.version])["inputs"]):
        column = np.array([[row[index]] for row in rows], dtype=v2.numpy_dtype(entry["datatype"]))
        tensor = triton.InferInput(entry["name"], list(column.shape), entry["datatype"])
        tensor.set_data_from_numpy(column)
        inputs.append(tensor)
    return inputs


def outputs_of(model: model_runtime.LoadedModel) -> list[str]:
    return [v2.OUTPUT_PREDICT, v2.OUTPUT_PROBA] if model.has_proba else [v2.OUTPUT_PREDICT]


def assert_same_as_in_process(result, model: model_runtime.LoadedModel, rows) -> None:
    expected = model.predict(rows)
    got = result.as_numpy(v2.OUTPUT_PREDICT)
    if got.dtype == object:
        assert [value.decode() for value in got] == expected.predictions
    else:
        assert got.tolist() == expected.predictions
    if model.has_proba:
        proba = result.as_numpy(v2.OUTPUT_PROBA)
        assert proba.shape == (len(rows), len(model.classes))
        assert proba.tolist() == expected.probabilities


# -- the service definition ---------------------------------------------------


def _fields(descriptor):
    return {
        f.name: (
            f.number,
            f.type,
            f.is_repeated,
            f.message_type.full_name if f.message_type else None,
        )
        for f in descriptor.fields
    }


def _messages(descriptor, seen=None):
    """Every message a descriptor reaches, by full name, with its fields."""
    seen = {} if seen is None else seen
    if descriptor.full_name in seen:
        return seen
    seen[descriptor.full_name] = _fields(descriptor)
    for field in descriptor.fields:
        if field.message_type is not None:
            _messages(field.message_type, seen)
    return seen


def test_the_service_matches_tritons_on_the_wire():
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    assert [m.name for m in ours.methods] == RPCS
    for name in RPCS:
        mine, triton_method = ours.methods_by_name[name], theirs.methods_by_name[name]
        for side in ("input_type", "output_type"):
            assert getattr(mine, side).full_name == getattr(triton_method, side).full_name
            assert _messages(getattr(mine, side)) == _messages(getattr(triton_method, side))


# -- health and metadata ----------------------------------------------------


def test_server_live_and_ready(client):
    assert client.is_server_live() is True
    assert client.is_server_ready() is True


def test_server_metadata(client):
    assert client.get_server_metadata(as_json=True) == v2.server_metadata()


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_model_metadata(client, grpc_store, name):
    model = loaded(grpc_store, name)
    meta = client.get_model_metadata(name, as_json=True)
    expected = v2.model_metadata(model, grpc_store.versions(name))
    assert meta["name"] == name
    assert meta["versions"] == ["1"]
    assert meta["platform"] == expected["platform"]
    # int64 shapes come back as strings from protobuf's JSON form.
    for side in ("inputs", "outputs"):
        got = [{**t, "shape": [int(d) for d in t["shape"]]} for t in meta[side]]
        assert got == [
            {"name": t["name"], "datatype": t["datatype"], "shape": t["shape"]}
            for t in expected[side]
        ]
    assert [t["name"] for t in meta["inputs"]] == list(model.schema.names)
    assert [t["name"] for t in meta["outputs"]] == outputs_of(model)


@pytest.mark.parametrize(
    ("name", "version", "ready"),
    [
        (IRIS, "", True),
        (IRIS, "1", True),
        (IRIS, "production", True),
        (DIABETES, "", True),
        (IRIS, "99", False),
        (IRIS, "no-such-alias", False),
        ("no-such-model", "", False),
        ("Not A Name", "", False),
    ],
)
def test_model_ready(client, name, version, ready):
    assert client.is_model_ready(name, version) is ready


# -- inference ----------------------------------------------------------------


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_infer_one_matrix_input(client, grpc_store, name):
    model = loaded(grpc_store, name)
    rows = rows_for(model)
    result = client.infer(
        name,
        [matrix_input(rows)],
        outputs=[triton.InferRequestedOutput(o) for o in outputs_of(model)],
        request_id=f"matrix-{name}",
    )
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (
        name,
        "1",
        f"matrix-{name}",
    )
    assert [o.name for o in response.outputs] == outputs_of(model)
    assert_same_as_in_process(result, model, rows)


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_infer_one_input_per_feature(client, grpc_store, name):
    model = loaded(grpc_store, name)
    rows = rows_for(model)
    inputs = feature_inputs(model, rows)
    if name == DIABETES:
        assert [t.datatype() for t in inputs[:2]] == ["INT64", "INT64"]  # age, sex
    result = client.infer(
        name,
        inputs,
        model_version="1",
        outputs=[triton.InferRequestedOutput(o) for o in reversed(outputs_of(model))],
    )
    response = result.get_response()
    assert [o.name for o in response.outputs] == list(reversed(outputs_of(model)))
    assert_same_as_in_process(result, model, rows)


def test_infer_without_requested_outputs_gives_every_output(client, grpc_store):
    model = loaded(grpc_store, CANCER)
    rows = rows_for(model)
    result = client.infer(CANCER, [matrix_input(rows)])
    assert [o.name for o in result.get_response().outputs] == [v2.OUTPUT_PREDICT, v2.OUTPUT_PROBA]
    assert_same_as_in_process(result, model, rows)


def test_infer_only_predict(client, grpc_store):
    model = loaded(grpc_store, IRIS)
    rows = rows_for(model)
    result = client.infer(
        IRIS, [matrix_input(rows)], outputs=[triton.InferRequestedOutput(v2.OUTPUT_PREDICT)]
    )
    assert result.as_numpy(v2.OUTPUT_PROBA) is None
    assert [v.decode() for v in result.as_numpy(v2.OUTPUT_PREDICT)] == model.predict(
        rows
    ).predictions


def test_infer_with_typed_contents_instead_of_raw(stub, grpc_store):
    """Clients other than tritonclient may send elements in InferTensorContents."""
    model = loaded(grpc_store, DIABETES)
    rows = rows_for(model)
    request = pb.ModelInferRequest(model_name=DIABETES, id="typed")
    for index, name in enumerate(model.schema.names):
        tensor = request.inputs.add(name=name, shape=[len(rows)])
        if name in ("age", "sex"):
            tensor.datatype = "INT64"
            tensor.contents.int64_contents.extend(int(row[index]) for row in rows)
        else:
            tensor.datatype = "FP64"
            tensor.contents.fp64_contents.extend(row[index] for row in rows)
    response = stub.ModelInfer(request, timeout=10)
    assert response.id == "typed"
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        (v2.OUTPUT_PREDICT, "FP64", [len(rows)])
    ]
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f8").tolist()
    assert got == model.predict(rows).predictions


def test_a_promotion_reaches_the_grpc_server(client, grpc_store):
    """The registry's watcher follows aliases: point `staging` at version 1, ask by alias."""
    assert client.is_model_ready(IRIS, "staging") is False
    grpc_store.promote(IRIS, 1, alias="staging", reason="test")
    try:
        eventually(lambda: client.is_model_ready(IRIS, "staging"), 5, 0.05, "staging ready")
        result = client.infer(IRIS, [matrix_input([[5.5, 3.5, 1.3, 0.2]])], model_version="staging")
        assert result.get_response().model_version == "1"
        assert result.as_numpy(v2.OUTPUT_PREDICT).tolist() == [b"setosa"]
    finally:
        grpc_store.remove_alias(IRIS, "staging")


# -- errors -------------------------------------------------------------------

IRIS_ROWS = [[5.5, 3.5, 1.3, 0.2], [5.7, 2.8, 4.5, 1.3]]


def _iris_features(names):
    inputs = []
    for index, name in enumerate(names):
        column = np.array([[row[index]] for row in IRIS_ROWS])
        tensor = triton.InferInput(name, list(column.shape), "FP64")
        tensor.set_data_from_numpy(column)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize(
    ("model", "inputs", "outputs", "version", "status", "message"),
    [
        (
            "no-such-model",
            lambda: [matrix_input(IRIS_ROWS)],
            None,
            "",
            "StatusCode.NOT_FOUND",
            "no model named 'no-such-model' is served",
        ),
        (IRIS, lambda: [matrix_input(IRIS_ROWS)], None, "99", "StatusCode.NOT_FOUND", "99"),
        (
            "Bad Name!",
            lambda: [matrix_input(IRIS_ROWS)],
            None,
            "",
            "StatusCode.INVALID_ARGUMENT",
            "Bad Name!",
        ),
        (
            IRIS,
            lambda: _iris_features(
                ["sepal_lenght_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
            ),
            None,
            "",
            "StatusCode.INVALID_ARGUMENT",
            "unknown input tensors ['sepal_lenght_cm']; did you mean 'sepal_length_cm'",
        ),
        (
            IRIS,
            lambda: [matrix_input([[5.5, 3.5, 1.3], [5.7, 2.8, 4.5]])],
            None,
            "",
            "StatusCode.INVALID_ARGUMENT",
            "has shape [2, 3]; a single input tensor must be [N, 4]",
        ),
        (
            IRIS,
            lambda: [matrix_input([[5.5, 3.5, 1.3, 0.2], [float("nan"), 2.8, 4.5, 1.3]])],
            None,
            "",
            "StatusCode.INVALID_ARGUMENT",
            "instance 1, feature 'sepal_length_cm': is NaN",
        ),
        (
            IRIS,
            lambda: [matrix_input(IRIS_ROWS, datatype="BYTES")],
            None,
            "",
            "StatusCode.INVALID_ARGUMENT",
            "is BYTES, but every feature of this model is numeric",
        ),
        (
            DIABETES,
            lambda: [matrix_input([[54.0, 2.0, 36.1, 115.0, 163.0, 98.4, 43.0, 4.0, 4.6, 101.0]])],
            ["predict_proba"],
            "",
            "StatusCode.INVALID_ARGUMENT",
            "unknown outputs ['predict_proba']",
        ),
    ],
    ids=[
        "unknown-model",
        "unknown-version",
        "malformed-name",
        "misspelled-input",
        "wrong-width",
        "nan",
        "bytes-for-numbers",
        "proba-of-a-regressor",
    ],
)
def test_infer_errors(client, model, inputs, outputs, version, status, message):
    requested = [triton.InferRequestedOutput(o) for o in outputs] if outputs else None
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, inputs(), model_version=version, outputs=requested)
    assert caught.value.status() == status
    assert message in caught.value.message()
    # Error messages never echo the submitted values.
    assert "5.7" not in caught.value.message()


def _raw_request(**changes):
    request = pb.ModelInferRequest(model_name=IRIS)
    request.inputs.add(name="instances", datatype="FP64", shape=[2, 4])
    request.raw_input_contents.append(np.array(IRIS_ROWS, dtype="<f8").tobytes())
    for key, value in changes.items():
        if key == "shape":
            del request.inputs[0].shape[:]
            request.inputs[0].shape.extend(value)
        elif key == "datatype":
            request.inputs[0].datatype = value
        elif key == "raw":
            del request.raw_input_contents[:]
            request.raw_input_contents.extend(value)
        elif key == "contents":
            request.inputs[0].contents.fp64_contents.extend(value)
    return request


@pytest.mark.parametrize(
    ("request_changes", "message"),
    [
        ({"shape": [2, 5]}, "[2, 5]"),
        ({"shape": [-1, 4]}, "negative dimension"),
        ({"shape": [10**6, 10**5]}, "holds more elements than its 64 raw bytes can"),
        ({"shape": [10**12, 10**6]}, "is larger than any tensor can be"),
        ({"shape": [2**63 - 1, 2**63 - 1, 0]}, "is larger than any tensor can be"),
        ({"shape": [1] * 40}, "has 40 dimensions; at most 32"),
        ({"shape": []}, "has no shape"),
        ({"datatype": "FP128"}, "unsupported datatype 'FP128'"),
        ({"raw": [b"\x00" * 64, b"\x00" * 8]}, "raw_input_contents has 2 entries for 1 inputs"),
        ({"raw": [b"\x00" * 63]}, "63 bytes were sent"),
        ({"contents": [1.0] * 8}, "has contents and the request has raw_input_contents"),
    ],
)
def test_malformed_tensors_are_invalid_arguments(stub, request_changes, message):
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(_raw_request(**request_changes), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live is True


def test_errors_carry_the_error_code(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(pb.ModelInferRequest(model_name="no-such-model"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert ("error-code", "model_not_found") in tuple(caught.value.trailing_metadata())


def test_a_request_with_no_inputs(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(pb.ModelInferRequest(model_name=IRIS), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no inputs" in caught.value.details()


def test_messages_over_the_body_limit_are_refused(grpc_store):
    server, registry, port = start_server(grpc_store.root, max_body_bytes=4096)
    try:
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
            small = client.infer(IRIS, [matrix_input(IRIS_ROWS)])
            assert small.as_numpy(v2.OUTPUT_PREDICT).tolist() == [b"setosa", b"versicolor"]
            with pytest.raises(InferenceServerException) as caught:
                client.infer(IRIS, [matrix_input(IRIS_ROWS * 300)])
            assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    finally:
        server.stop(None)
        registry.stop()


def test_too_many_instances(grpc_store):
    server, registry, port = start_server(grpc_store.root, max_instances=3)
    try:
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
            with pytest.raises(InferenceServerException) as caught:
                client.infer(IRIS, [matrix_input(IRIS_ROWS * 2)])
            assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert "4 rows in one request; at most 3" in caught.value.message()
    finally:
        server.stop(None)
        registry.stop()


def test_bytes_that_are_no_request_are_invalid_arguments(stub, address):
    # grpcio itself answers INTERNAL ("Exception deserializing request!") for these.
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\x0a\xff\xff", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest message" in caught.value.details()
    assert ("error-code", "invalid_message") in tuple(caught.value.trailing_metadata())
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live is True


def test_non_finite_outputs_are_invalid_arguments(stub):
    huge = 1.7976931348623157e308
    request = _raw_request(raw=[np.array([IRIS_ROWS[0], [huge, 3.5, 1.3, 0.2]], "<f8").tobytes()])
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("instance 1: the model cannot score it")
    assert ("error-code", "non_finite_output") in tuple(caught.value.trailing_metadata())

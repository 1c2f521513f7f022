"""Routing requests through an experiment: the split by weight (inside binomial 99.9 %
intervals), sticky client keys on every protocol, few clients moved by a weight change,
explicit versions bypassing it, every answer naming its variant and version, variants
loaded before the experiment applies, and the default alias when it cannot."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections import Counter

import grpc
import pytest
from scipy.stats import binom

from service import create_app
from service.config import Settings
from service.grpc.server import create_server
from service.protocols.grpc import open_inference_pb2 as pb
from service.protocols.grpc import open_inference_pb2_grpc as pb_grpc
from service.runtime import hooks
from service.runtime import registry as registry_module
from service.store import ModelRef, ModelStore
from service.store import experiments as experiments_module
from service.store.experiments import Shadow, parse_variants
from tests.support import IRIS, IRIS_ROW

EXPERIMENT_ID = "iris-classifier-routing-test"
KEY_HEADER = "X-Client-ID"
KEY_FIELD = "client_id"
CONFIDENCE = 0.999
V2_BODY = {"inputs": [{"name": "instances", "shape": [1, 4], "datatype": "FP64", "data": IRIS_ROW}]}


def publish_copy(store: ModelStore, aliases: tuple[str, ...] = ()) -> int:
    """A new version of iris with version 1's estimator (and ONNX form): told apart by its
    number only."""
    meta = store.metadata(IRIS, 1)
    for key in ("version", "artifact", "created_at"):
        del meta[key]
    directory = store.layout.version_dir(IRIS, 1)
    return store.publish(
        IRIS,
        (directory / "model.pkl").read_bytes(),
        meta,
        aliases=aliases,
        extra_files={"model.onnx": (directory / "model.onnx").read_bytes()},
    )


@pytest.fixture(scope="module")
def store(trained_store_dir, tmp_path_factory) -> ModelStore:
    root = tmp_path_factory.mktemp("routing") / "model_store"
    shutil.copytree(trained_store_dir, root)
    store = ModelStore(root)
    assert publish_copy(store, aliases=("staging",)) == 2
    assert publish_copy(store) == 3
    return store


@pytest.fixture(scope="module")
def app(store, tmp_path_factory):
    # The watcher looks once at start; the tests refresh when they changed the store.
    app = create_app(
        {
            "store": store.root,
            "reload_interval": 3600,
            "models": [IRIS],
            "state_dir": tmp_path_factory.mktemp("routing-state"),
        }
    )
    yield app
    app.extensions["model_service"].registry.stop()


@pytest.fixture(scope="module")
def registry(app):
    return app.extensions["model_service"].registry


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def experiment(store, registry, monkeypatch):
    """Start an experiment (with a fixed id, so sticky assignments are reproducible) and
    apply it; stopped and unapplied after the test."""
    monkeypatch.setattr(experiments_module, "new_id", lambda model: EXPERIMENT_ID)

    def start(variants: str, **options):
        started = store.start_experiment(IRIS, parse_variants(variants), **options)
        registry.refresh()
        assert registry.experiment(IRIS) == started
        return started

    yield start
    if store.experiment(IRIS) is not None:
        store.stop_experiment(IRIS)
    registry.refresh()
    assert registry.experiment(IRIS) is None


def interval(n: int, weight: float) -> tuple[float, float]:
    return tuple(binom.interval(CONFIDENCE, n, weight / 100))


def post(client, path, body, headers=None):
    return client.post(
        path, data=json.dumps(body), content_type="application/json", headers=headers
    )


# -- the split ------------------------------------------------------------------------


def test_keyless_requests_split_by_weight(registry, experiment):
    experiment("production=60,staging=30,3=10")
    random.seed(20261206)
    counts = Counter()
    for _ in range(10_000):
        model, assignment = registry.route(ModelRef(IRIS))
        assert assignment is not None and assignment.version == model.version
        counts[(assignment.variant, model.version)] += 1
    # Each variant serves its own version: the alias through the registry's aliases.
    weights = {("production", 1): 60, ("staging", 2): 30, ("3", 3): 10}
    assert set(counts) == set(weights)
    for served, weight in weights.items():
        low, high = interval(10_000, weight)
        assert low <= counts[served] <= high, (served, counts)


def test_keyed_requests_split_by_weight_and_stick(registry, experiment):
    experiment("production=60,staging=30,3=10", key_header=KEY_HEADER)
    keys = [f"client-{i}" for i in range(10_000)]
    first = {key: registry.route(ModelRef(IRIS), key)[1].variant for key in keys}
    counts = Counter(first.values())
    for variant, weight in (("production", 60), ("staging", 30), ("3", 10)):
        low, high = interval(len(keys), weight)
        assert low <= counts[variant] <= high, counts
    again = {key: registry.route(ModelRef(IRIS), key)[1].variant for key in keys[:500]}
    assert again == {key: first[key] for key in keys[:500]}


def test_a_weight_change_moves_few_clients(store, registry, experiment):
    experiment("production=90,2=10", key_header=KEY_HEADER)
    keys = [f"user-{i}" for i in range(2_000)]
    before = {key: registry.route(ModelRef(IRIS), key)[1].variant for key in keys}
    store.set_experiment_weights(IRIS, {"production": 80, "2": 20})
    registry.refresh()
    after = {key: registry.route(ModelRef(IRIS), key)[1].variant for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    # Only towards the variant whose weight rose, and about the 10 % of clients its share
    # grew by (a rehash of every key would move some 26 %).
    assert {(before[key], after[key]) for key in moved} == {("production", "2")}
    low, high = interval(len(keys), 10)
    assert low <= len(moved) <= high, len(moved)


def test_route_sets_the_assignment_of_the_request(registry, experiment):
    started = experiment("production=0,3=100")
    model, assignment = registry.route(ModelRef(IRIS))
    assert model.version == 3
    assert hooks.assignment.get() == assignment == hooks.Assignment(started.id, "3", 3, None)
    registry.route(ModelRef(IRIS, version=1))
    assert hooks.assignment.get() is None


# -- what answers say -----------------------------------------------------------------


def variant_of(response) -> tuple[str | None, str | None, str]:
    headers = response.headers
    return (
        headers.get("X-Experiment-Id"),
        headers.get("X-Model-Variant"),
        headers["X-Model-Version"],
    )


def test_answers_name_the_variant_and_version_on_every_http_protocol(client, experiment):
    started = experiment("production=0,3=100")
    native = post(client, f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW]})
    v2 = post(client, f"/v2/models/{IRIS}/infer", V2_BODY)
    mlflow = post(client, f"/v1/models/{IRIS}/invocations", {"inputs": [IRIS_ROW]})
    for response in (native, v2, mlflow):
        assert response.status_code == 200, response.json
        assert variant_of(response) == (started.id, "3", "3")
    assert native.json["version"] == 3
    assert native.json["experiment"] == {"id": started.id, "variant": "3"}
    assert v2.json["model_version"] == "3"
    assert v2.json["parameters"]["experiment"] == started.id
    assert v2.json["parameters"]["variant"] == "3"
    assert mlflow.json == {
        "predictions": ["setosa"],
        "experiment": {"id": started.id, "variant": "3", "version": 3},
    }


def test_an_explicit_version_or_alias_bypasses_the_experiment(client, experiment):
    experiment("production=0,3=100")
    answers = {
        "native @1": post(client, f"/v1/models/{IRIS}@1/predict", {"instances": [IRIS_ROW]}),
        "native @production": post(
            client, f"/v1/models/{IRIS}@production/predict", {"instances": [IRIS_ROW]}
        ),
        "v2 versions/1": post(client, f"/v2/models/{IRIS}/versions/1/infer", V2_BODY),
        "v2 versions/production": post(
            client, f"/v2/models/{IRIS}/versions/production/infer", V2_BODY
        ),
        "mlflow @1": post(client, f"/v1/models/{IRIS}@1/invocations", {"inputs": [IRIS_ROW]}),
    }
    for what, response in answers.items():
        assert response.status_code == 200, (what, response.json)
        assert variant_of(response) == (None, None, "1"), what
        assert "experiment" not in response.json, what
    assert "experiment" not in answers["v2 versions/1"].json["parameters"]


def test_outside_an_experiment_answers_name_their_version(client):
    answers = [
        post(client, f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW]}),
        post(client, f"/v2/models/{IRIS}/infer", V2_BODY),
        post(client, f"/v1/models/{IRIS}/invocations", {"inputs": [IRIS_ROW]}),
        post(client, "/invocations", {"inputs": [IRIS_ROW]}),
    ]
    for response in answers:
        assert response.status_code == 200, response.json
        assert variant_of(response) == (None, None, "1")
        assert "experiment" not in response.json
    # An error after routing names the version that refused it, too.
    refused = post(client, f"/v1/models/{IRIS}/predict", {"instances": [[1, 2]]})
    assert refused.status_code == 422 and refused.headers["X-Model-Version"] == "1"


def test_a_client_key_picks_the_same_variant_on_every_protocol(client, experiment):
    started = experiment("production=50,staging=50", key_header=KEY_HEADER, key_field=KEY_FIELD)
    keys = [f"customer-{i}" for i in range(24)]
    expected = {key: started.assign(key).name for key in keys}
    assert set(expected.values()) == {"production", "staging"}  # both are exercised
    version = {"production": "1", "staging": "2"}
    for key in keys:
        header = {KEY_HEADER: key}
        answers = [
            post(client, f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW]}, header),
            post(client, f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW], KEY_FIELD: key}),
            post(client, f"/v2/models/{IRIS}/infer", V2_BODY, header),
            post(
                client,
                f"/v2/models/{IRIS}/infer",
                {**V2_BODY, "parameters": {KEY_FIELD: key}},
            ),
            post(client, f"/v1/models/{IRIS}/invocations", {"inputs": [IRIS_ROW]}, header),
            post(
                client,
                f"/v1/models/{IRIS}/invocations",
                {"inputs": [IRIS_ROW], "params": {KEY_FIELD: key}},
            ),
        ]
        for response in answers:
            assert response.status_code == 200, response.json
            assert variant_of(response) == (started.id, expected[key], version[expected[key]])
    # The header wins over the body field when both are sent.
    key, other = keys[0], next(k for k in keys if expected[k] != expected[keys[0]])
    both = post(
        client,
        f"/v1/models/{IRIS}/predict",
        {"instances": [IRIS_ROW], KEY_FIELD: other},
        {KEY_HEADER: key},
    )
    assert both.headers["X-Model-Variant"] == expected[key]


@pytest.mark.parametrize(
    ("path", "body", "headers", "message"),
    [
        (
            f"/v1/models/{IRIS}/predict",
            {"instances": [IRIS_ROW], KEY_FIELD: {"id": 1}},
            None,
            "dict",
        ),
        (f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW], KEY_FIELD: True}, None, "bool"),
        (f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW]}, {KEY_HEADER: "k" * 300}, "300"),
        (f"/v2/models/{IRIS}/infer", {**V2_BODY, "parameters": {KEY_FIELD: [1]}}, None, "list"),
        (
            f"/v1/models/{IRIS}/invocations",
            {"inputs": [IRIS_ROW], "params": {KEY_FIELD: 1.5}},
            None,
            "float",
        ),
    ],
)
def test_a_malformed_client_key_is_the_clients_mistake(
    client, experiment, path, body, headers, message
):
    experiment("production=50,staging=50", key_header=KEY_HEADER, key_field=KEY_FIELD)
    response = post(client, path, body, headers)
    assert response.status_code == 400
    text = json.dumps(response.json)
    assert "client key" in text and message in text
    if path.startswith("/v1/models/iris-classifier/predict"):
        assert response.json["error"]["code"] == "invalid_client_key"


def test_a_key_field_is_still_accepted_after_its_experiment(client, store, registry, experiment):
    experiment("production=50,staging=50", key_field=KEY_FIELD)
    store.stop_experiment(IRIS)
    registry.refresh()
    kept = post(client, f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW], KEY_FIELD: "c-1"})
    assert kept.status_code == 200 and "experiment" not in kept.json
    other = post(client, f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW], "user": "c-1"})
    assert other.status_code == 400 and other.json["error"]["code"] == "unexpected_keys"


def test_grpc_answers_name_the_variant_and_take_the_client_key(store, experiment):
    server, grpc_registry, port = create_server(
        Settings.from_mapping({"store": store.root, "reload_interval": 3600, "models": [IRIS]}),
        address="127.0.0.1:0",
        threads=2,
    )
    server.start()
    try:
        started = experiment("production=50,staging=50", key_header=KEY_HEADER, key_field=KEY_FIELD)
        grpc_registry.refresh()
        keys = [f"device-{i}" for i in range(12)]
        expected = {key: started.assign(key).name for key in keys}
        assert set(expected.values()) == {"production", "staging"}
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for key in keys:
                by_metadata = infer(stub, metadata=((KEY_HEADER.lower(), key),))
                by_parameter = infer(stub, parameters={KEY_FIELD: key})
                for response, metadata in (by_metadata, by_parameter):
                    version = {"production": "1", "staging": "2"}[expected[key]]
                    assert response.model_version == version
                    assert response.parameters["experiment"].string_param == started.id
                    assert response.parameters["variant"].string_param == expected[key]
                    assert metadata["x-model-version"] == version
                    assert metadata["x-model-variant"] == expected[key]
                    assert metadata["x-experiment-id"] == started.id
            explicit, metadata = infer(stub, version="1", metadata=((KEY_HEADER.lower(), keys[0]),))
            assert explicit.model_version == "1" and "variant" not in explicit.parameters
            assert metadata["x-model-version"] == "1" and "x-model-variant" not in metadata
            with pytest.raises(grpc.RpcError) as refused:
                infer(stub, parameters={KEY_FIELD: 2.5})
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "client key" in refused.value.details()
    finally:
        server.stop(None)
        grpc_registry.stop()


def infer(stub, *, version: str = "", metadata=(), parameters=None):
    request = pb.ModelInferRequest(model_name=IRIS, model_version=version)
    tensor = request.inputs.add(name="instances", datatype="FP64", shape=[1, 4])
    tensor.contents.fp64_contents.extend(IRIS_ROW)
    for name, value in (parameters or {}).items():
        if isinstance(value, str):
            request.parameters[name].string_param = value
        else:
            request.parameters[name].double_param = value
    response, call = stub.ModelInfer.with_call(request, metadata=metadata, timeout=30)
    return response, dict(call.initial_metadata())


# -- applying an experiment -------------------------------------------------------------


def test_variants_load_before_it_applies_and_stay_while_it_runs_the_shadow_not_here(
    store, registry, experiment, monkeypatch
):
    monkeypatch.setattr(registry_module, "IDLE_VERSION_SECONDS", 0.0)
    registry.refresh()
    loaded = lambda: {m.version for m in registry.loaded() if m.name == IRIS}  # noqa: E731
    assert 3 not in loaded()  # no alias names it: dropped as idle
    experiment("production=50,staging=50", shadow=Shadow("3", 1.0))
    # The variants are loaded by the refresh that applied the experiment: no request waits
    # for them. The shadow's candidate is not: the shadow process loads it, and a worker
    # that started meanwhile spends nothing on it.
    assert loaded() >= {1, 2} and 3 not in loaded()
    _, assignment = registry.route(ModelRef(IRIS))
    assert assignment is not None and assignment.shadow == "3"
    store.stop_experiment(IRIS)
    experiment("production=50,3=50")
    registry.refresh(force=True)  # idle versions are dropped; the experiment's are kept
    assert 3 in loaded()


def test_an_invalid_experiment_file_serves_the_default_alias(store, registry, caplog):
    path = experiments_module.file_path(store, IRIS)
    active = {"id": "x", "variants": [{"name": "production", "weight": 50}]}  # adds up to 50
    path.write_text(json.dumps({"active": active, "history": []}))
    try:
        with caplog.at_level(logging.ERROR, logger="service.runtime.registry"):
            registry.refresh()
        assert registry.experiment(IRIS) is None
        assert "not valid" in registry.experiment_problems()[IRIS]
        assert "alias production serves every request" in caplog.text
        model, assignment = registry.route(ModelRef(IRIS))
        assert (model.version, assignment) == (1, None)
    finally:
        path.unlink()
        registry.refresh()
    assert IRIS not in registry.experiment_problems()


def test_a_variant_that_does_not_load_leaves_the_experiment_unapplied(
    store, registry, experiment, caplog
):
    broken = publish_copy(store)
    pickle = store.layout.version_dir(IRIS, broken) / "model.pkl"
    pickle.write_bytes(pickle.read_bytes() + b"tampered")  # its sha256 no longer matches
    with caplog.at_level(logging.ERROR, logger="service.runtime.registry"):
        store.start_experiment(IRIS, parse_variants(f"production=50,{broken}=50"))
        registry.refresh()
    assert registry.experiment(IRIS) is None
    assert "cannot run" in registry.experiment_problems()[IRIS]
    assert f"{IRIS}@{broken}" in caplog.text
    versions = Counter(registry.route(ModelRef(IRIS))[0].version for _ in range(200))
    assert versions == {1: 200}
    assert hooks.assignment.get() is None


def test_the_registry_knows_its_process_after_a_fork():
    # Gunicorn forks workers from a master that loaded the models: each starts its watcher.
    child = os.fork()
    if child == 0:
        os._exit(0 if registry_module._pid == os.getpid() else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0

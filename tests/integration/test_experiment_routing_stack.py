"""An experiment through the real stack: Nginx -> two Gunicorn instances of one worker
each, and the gRPC server, over one store. Started in the store, it reaches every process;
a client key gets the same variant from each of them (and through Nginx, whose answers
keep the headers); keyless requests split by weight; stopped, answers name no variant."""

from __future__ import annotations

from collections import Counter

import grpc
import pytest
import requests
from scipy.stats import binom

from service.localstack import free_port
from service.protocols.grpc import open_inference_pb2 as pb
from service.protocols.grpc import open_inference_pb2_grpc as pb_grpc
from service.store import ModelStore
from service.store.experiments import parse_variants
from tests.support import IRIS, IRIS_ROW, eventually, running_stack
from tests.test_experiment_routing import publish_copy

pytestmark = pytest.mark.integration

KEY_HEADER = "X-Client-ID"
VERSIONS = {"production": "1", "staging": "2"}
KEYLESS_REQUESTS = 2_000


@pytest.fixture(scope="module")
def stack(trained_store_dir, tmp_path_factory):
    with running_stack(
        tmp_path_factory.mktemp("experiment-routing"),
        store_from=trained_store_dir,
        env={"MODEL_SERVICE_RELOAD_INTERVAL": "0.2"},
        grpc_port=free_port(),
        before_start=lambda stack: publish_copy(ModelStore(stack.store), aliases=("staging",)),
    ) as started:
        yield started


def served_by_http(http: requests.Session, url: str, key: str | None = None) -> tuple:
    response = http.post(
        f"{url}/v1/models/{IRIS}/predict",
        json={"instances": [IRIS_ROW]},
        headers={KEY_HEADER: key} if key else {},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    headers = response.headers
    experiment = response.json().get("experiment") or {}
    # Body and headers agree.
    assert experiment.get("variant") == headers.get("X-Model-Variant")
    assert str(response.json()["version"]) == headers["X-Model-Version"]
    return (
        headers.get("X-Experiment-Id"),
        headers.get("X-Model-Variant"),
        headers["X-Model-Version"],
    )


def served_by_grpc(stub, key: str | None = None) -> tuple:
    request = pb.ModelInferRequest(model_name=IRIS)
    tensor = request.inputs.add(name="instances", datatype="FP64", shape=[1, 4])
    tensor.contents.fp64_contents.extend(IRIS_ROW)
    metadata = ((KEY_HEADER.lower(), key),) if key else ()
    response, call = stub.ModelInfer.with_call(request, metadata=metadata, timeout=10)
    sent = dict(call.initial_metadata())
    assert sent["x-model-version"] == response.model_version
    return sent.get("x-experiment-id"), sent.get("x-model-variant"), response.model_version


def test_an_experiment_reaches_every_process_sticks_splits_and_ends(stack):
    # Each Gunicorn URL is one worker, so asking each URL asks each worker.
    assert set(stack.instance_workers().values()) == {1}
    store = ModelStore(stack.store)
    with (
        requests.Session() as http,
        grpc.insecure_channel(str(stack.grpc_address)) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def experiment_everywhere() -> set:
            """The experiment ids the workers and the gRPC server answer with."""
            ids = {served_by_http(http, url)[0] for url in stack.gunicorn_urls}
            return ids | {served_by_grpc(stub)[0]}

        assert experiment_everywhere() == {None}
        experiment = store.start_experiment(
            IRIS, parse_variants("production=50,staging=50"), key_header=KEY_HEADER
        )
        eventually(lambda: experiment_everywhere() == {experiment.id}, message="routed everywhere")

        keys = [f"client-{i}" for i in range(20)]
        expected = {key: experiment.assign(key).name for key in keys}
        assert set(expected.values()) == set(VERSIONS)
        for key in keys:
            answers = {served_by_http(http, url, key) for url in [stack.url, *stack.gunicorn_urls]}
            answers.add(served_by_grpc(stub, key))
            assert answers == {(experiment.id, expected[key], VERSIONS[expected[key]])}, key

        split = Counter(served_by_http(http, stack.url)[1:] for _ in range(KEYLESS_REQUESTS))
        assert set(split) == set(VERSIONS.items())
        low, high = binom.interval(0.999, KEYLESS_REQUESTS, 0.5)
        assert all(low <= count <= high for count in split.values()), split

        store.stop_experiment(IRIS)
        eventually(lambda: experiment_everywhere() == {None}, message="stopped everywhere")
        assert served_by_http(http, stack.url, keys[0]) == (None, None, "1")
        assert served_by_grpc(stub, keys[0]) == (None, None, "1")

"""Experiment evidence end to end in one process: answers recorded per variant through the
Flask app (errors told from client mistakes), feedback joined by request id, the report
and the metrics; and modelctl experiment report / conclude over a host's evidence,
promoting through the promotion gate and refusing while nothing is significant."""

from __future__ import annotations

import collections
import hashlib
import json
import random

import grpc
import numpy as np
import pytest
from jsonschema import Draft202012Validator
from prometheus_client.parser import text_string_to_metric_families

from service import create_app
from service.cli import main
from service.config import Settings
from service.grpc.server import create_server
from service.keys import KeyRing, digest
from service.monitoring import live
from service.monitoring.state import StateStore
from service.protocols.grpc import open_inference_pb2 as pb
from service.protocols.grpc import open_inference_pb2_grpc as pb_grpc
from service.store.experiments import parse_variants
from tests.support import DIABETES, IRIS, IRIS_FEATURES
from tests.test_monitoring import IRIS_LABELS, IRIS_PREDICTED, IRIS_ROWS
from tests.test_promotion import publish_copy, scored

ADMIN_KEY = "experiment-report-admin-key"
FEEDBACK_KEY = "msk_experiment-report-feedback-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
LABELLER = {"Authorization": f"Bearer {FEEDBACK_KEY}"}
REQUESTS = 40


@pytest.fixture(autouse=True)
def short_feedback_wait(monkeypatch):
    monkeypatch.setattr(live, "FEEDBACK_WAIT", 0.1)


@pytest.fixture
def experiment(store):
    """iris-classifier: production (version 1) against staging (version 2, the same
    pickle), half and half."""
    publish_copy(store, aliases=("staging",))
    return store.start_experiment(IRIS, parse_variants("production=50,staging=50"))


@pytest.fixture
def client(store, experiment, tmp_path):
    KeyRing(store.root).add("labeller", ["feedback"], digest(FEEDBACK_KEY))
    app = create_app(
        {
            "store": store.root,
            "state_dir": tmp_path / "state",
            "admin_key_hashes": (hashlib.sha256(ADMIN_KEY.encode()).hexdigest(),),
            "default_model": IRIS,  # what MLflow's /invocations serves
        }
    )
    yield app.test_client()
    app.extensions["model_service.monitoring"].stop()
    app.extensions["model_service"].registry.stop()


def samples(client) -> dict[str, dict[tuple[str, ...], float]]:
    text = client.get("/metrics").get_data(as_text=True)
    found: dict[str, dict[tuple[str, ...], float]] = collections.defaultdict(dict)
    for family in text_string_to_metric_families(text):
        if "experiment" not in family.name:
            continue
        for sample in family.samples:
            labels = sample.labels
            key = (labels.get("variant", ""), labels.get("version", ""), labels.get("le", ""))
            found[sample.name][key] = sample.value
    return found


def test_answers_and_feedback_are_recorded_per_variant(client, experiment, tmp_path):
    # Without a client key each request draws its variant at random. Two copies of one
    # model must compare as "no significant difference", but a draw that sends all six
    # failing requests below to one variant makes its error rate differ: the draws are
    # seeded, so that this test asks the same question on every run.
    random.seed(REQUESTS)
    served = collections.Counter()
    correct = collections.Counter()
    for i in range(REQUESTS):
        row = i % len(IRIS_ROWS)
        answer = client.post(
            f"/v1/models/{IRIS}/predict",
            json={"instances": [IRIS_ROWS[row]]},
            headers={"X-Request-ID": f"q{i}"},
        )
        assert answer.status_code == 200
        variant = answer.headers["X-Model-Variant"]
        served[variant] += 1
        correct[variant] += IRIS_PREDICTED[row] == IRIS_LABELS[row]
        labelled = client.post(
            f"/v1/models/{IRIS}/feedback",
            json={"request_id": f"q{i}", "index": 0, "label": IRIS_LABELS[row]},
            headers=LABELLER,
        )
        assert labelled.status_code == 200, labelled.json
    assert set(served) == {"production", "staging"}

    # Outputs too large for the model: the variant failed (422 non_finite_output). A body
    # that is not valid input is the client's mistake: not counted for any variant.
    failed = collections.Counter()
    for _ in range(6):
        answer = client.post(f"/v1/models/{IRIS}/predict", json={"instances": [[1e308] * 4]})
        assert answer.status_code == 422 and answer.json["error"]["code"] == "non_finite_output"
        failed[answer.headers["X-Model-Variant"]] += 1
    bad = client.post(f"/v1/models/{IRIS}/predict", json={"instances": [["a", 1, 2, 3]]})
    assert bad.status_code == 422 and bad.json["error"]["code"] == "invalid_input"
    # Over the other protocols the answers count the same way (unlabelled here).
    unlabelled = collections.Counter()
    v2 = client.post(
        f"/v2/models/{IRIS}/infer",
        json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5, 3, 1, 0]}]},
    )
    assert v2.status_code == 200
    unlabelled[v2.json["parameters"]["variant"]] += 1
    mlflow = client.post(
        "/invocations",
        json={"dataframe_split": {"columns": IRIS_FEATURES, "data": [IRIS_ROWS[0]]}},
    )
    assert mlflow.status_code == 200, mlflow.json
    unlabelled[mlflow.headers["X-Model-Variant"]] += 1
    served.update(unlabelled)

    report = client.get(f"/v1/admin/experiments/{IRIS}/report", headers=ADMIN)
    assert report.status_code == 200, report.json
    built = report.json
    assert built["experiment"] == experiment.id and built["metric"] == "accuracy"
    variants = {v["name"]: v for v in built["variants"]}
    for name, version in (("production", "1"), ("staging", "2")):
        figures = variants[name]
        assert figures["requests"] == served[name] + failed[name]
        assert figures["versions"] == {version: served[name] + failed[name]}
        assert figures["errors"]["count"] == failed[name]
        assert figures["latency"]["p50"] > 0
        assert figures["quality"]["labelled"] == served[name] - unlabelled[name]
        assert figures["quality"]["count"] == correct[name]
    comparison = built["comparisons"][0]
    assert comparison["control"] == "production" and comparison["variant"] == "staging"
    assert comparison["verdict"] == "no significant difference"
    assert comparison["still_needed"]["control"] > 0

    # One row per answer in the host's state: its variant, version, outcome and latency.
    rows = (
        StateStore(tmp_path / "state")
        .connection()
        .execute(
            "SELECT variant, version, ok, seconds FROM experiment_requests WHERE experiment = ?",
            (experiment.id,),
        )
        .fetchall()
    )
    assert collections.Counter((v, ok) for v, _, ok, _ in rows) == {
        **{(name, 1): n for name, n in served.items()},
        **{(name, 0): n for name, n in failed.items()},
    }
    assert all(seconds > 0 for *_, seconds in rows)

    schemas = client.get("/openapi.json").json["components"]["schemas"]
    Draft202012Validator(schemas["ExperimentReport"]).validate(built)

    # The same evidence as the totals a fleet adds up.
    totals = client.get(f"/v1/admin/experiments/{IRIS}/totals", headers=ADMIN).json
    Draft202012Validator(schemas["ExperimentTotals"]).validate(totals)
    assert totals["experiment"] == experiment.id and totals["latency_buckets"][-1] == "+Inf"
    by_name = {t["variant"]: t for t in totals["variants"]}
    assert by_name["staging"]["errors"] == failed["staging"]
    assert sum(by_name["production"]["latency_counts"]) == served["production"]

    # On the status page, as the report says.
    status = client.get("/v1/status").json
    shown = next(m for m in status["models"] if m["name"] == IRIS)["experiment"]
    assert shown["experiment"] == experiment.id
    assert [v["requests"] for v in shown["variants"]] == [v["requests"] for v in built["variants"]]
    assert next(m for m in status["models"] if m["name"] != IRIS)["experiment"] is None
    assert 'data-panel="experiment"' in client.get("/status").get_data(as_text=True)

    # And in /metrics, by model, experiment, variant and version.
    found = samples(client)
    requests = found["model_service_experiment_requests_total"]
    errors = found["model_service_experiment_errors_total"]
    accuracy = found["model_service_experiment_live_accuracy"]
    for name, version in (("production", "1"), ("staging", "2")):
        assert requests[(name, version, "")] == served[name] + failed[name]
        assert errors.get((name, version, ""), 0) == failed[name]
        latency = found["model_service_experiment_latency_seconds_count"]
        assert latency[(name, version, "")] == served[name]
        assert accuracy[(name, version, "")] == pytest.approx(
            variants[name]["quality"]["value"], abs=1e-6
        )


def test_a_regressors_variants_get_their_mean_absolute_error(client, store):
    publish_copy(store, DIABETES, aliases=("staging",))
    store.start_experiment(DIABETES, parse_variants("production=50,staging=50"))
    client.post("/v1/admin/reload", headers=ADMIN)
    rows = [[50, 1, 25.0, 80.0, 180.0, 100.0, 50.0, 4.0, 4.5, 90.0]] * 2
    for i in range(10):
        answer = client.post(
            f"/v1/models/{DIABETES}/predict",
            json={"instances": rows},
            headers={"X-Request-ID": f"d{i}"},
        )
        assert answer.status_code == 200 and answer.headers["X-Model-Variant"]
        off = [p + 10.0 * (1 if i % 2 else -1) for p in answer.json["predictions"]]  # |error| 10
        labels = [{"request_id": f"d{i}", "index": k, "label": v} for k, v in enumerate(off)]
        assert (
            client.post(
                f"/v1/models/{DIABETES}/feedback", json=labels, headers=LABELLER
            ).status_code
            == 200
        )
    built = client.get(f"/v1/admin/experiments/{DIABETES}/report", headers=ADMIN).json
    assert built["metric"] == "mae"
    assert sum(v["quality"]["labelled"] for v in built["variants"]) == 20
    for variant in built["variants"]:
        if variant["quality"]["labelled"]:
            assert variant["quality"]["value"] == pytest.approx(10.0)
            assert variant["quality"]["sd"] == pytest.approx(0.0, abs=1e-6)


def test_grpc_answers_count_for_their_variant(client, store, tmp_path):
    server, registry, port = create_server(
        Settings.from_mapping({"store": store.root, "state_dir": tmp_path / "state"}),
        address="127.0.0.1:0",
        threads=2,
    )
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for i, rows in enumerate([IRIS_ROWS[:2], IRIS_ROWS[2:3], [[1e308] * 4]]):
                request = pb.ModelInferRequest(model_name=IRIS, id=f"g{i}")
                request.inputs.add(name="instances", datatype="FP64", shape=[len(rows), 4])
                request.raw_input_contents.append(np.array(rows, dtype="<f8").tobytes())
                try:
                    stub.ModelInfer(request, timeout=10)
                except grpc.RpcError as exc:  # the variant's failure: outputs not finite
                    assert dict(exc.trailing_metadata())["error-code"] == "non_finite_output"
            # A request of the wrong shape is the client's mistake: not counted.
            request = pb.ModelInferRequest(model_name=IRIS, id="g-bad")
            request.inputs.add(name="instances", datatype="FP64", shape=[1, 3])
            request.raw_input_contents.append(np.zeros(3, dtype="<f8").tobytes())
            with pytest.raises(grpc.RpcError):
                stub.ModelInfer(request, timeout=10)
    finally:
        server.stop(None)
        registry.stop()
    totals = client.get(f"/v1/admin/experiments/{IRIS}/totals", headers=ADMIN).json["variants"]
    assert sum(t["requests"] for t in totals) == 3
    assert sum(t["errors"] for t in totals) == 1


def test_the_report_routes_need_the_admin_key_and_a_known_experiment(client):
    assert client.get(f"/v1/admin/experiments/{IRIS}/report").status_code == 401
    unknown = client.get(f"/v1/admin/experiments/{IRIS}/report?experiment=nope", headers=ADMIN)
    assert unknown.status_code == 404 and unknown.json["error"]["code"] == "experiment_not_found"
    missing = client.get("/v1/admin/experiments/no-such-model/totals", headers=ADMIN)
    assert missing.status_code == 404 and missing.json["error"]["code"] == "model_not_found"


# -- modelctl experiment report / conclude over a host's evidence ---------------------------


def record(state_dir, experiment, variant: str, version: int, *, requests, labelled, correct):
    """Evidence as the recorder writes it: answers per latency bucket, the requests they
    served, and feedback joined to them."""
    state = StateStore(state_dir)
    ids = [f"{variant}-{i}" for i in range(labelled)]
    state.write_experiments(
        {(experiment.id, IRIS, variant, version, 4): (requests, 0)},
        [(IRIS, rid, experiment.id, variant, version, True, 0.002, 0.0) for rid in ids],
    )
    state.record_feedback(
        IRIS,
        [
            (rid, 0, version, "setosa", "setosa" if i < correct else "versicolor")
            for i, rid in enumerate(ids)
        ],
    )
    state.close()


@pytest.fixture
def host_state(tmp_path, monkeypatch):
    state_dir = tmp_path / "host-state"
    monkeypatch.setenv("MODEL_SERVICE_STATE_DIR", str(state_dir))
    return state_dir


def conclude(store, *options: str) -> int:
    return main(["experiment", "conclude", IRIS, *options, "--store", str(store.root)])


def history(store) -> list[dict]:
    return store.experiment_state(IRIS)["history"]


def test_conclude_refuses_while_nothing_is_significant(store, experiment, host_state, capsys):
    record(host_state, experiment, "production", 1, requests=200, labelled=100, correct=90)
    record(host_state, experiment, "staging", 2, requests=200, labelled=100, correct=92)
    assert conclude(store) == 1
    err = capsys.readouterr().err
    assert "nothing is significant yet" in err and "--winner" in err
    assert store.experiment(IRIS) is not None  # still running
    assert store.aliases(IRIS)["production"] == 1

    assert main(["experiment", "report", IRIS, "--json", "--store", str(store.root)]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["winner"] is None and built["comparisons"][0]["still_needed"]["variant"] > 0


def test_conclude_promotes_the_significantly_better_variant(store, experiment, host_state, capsys):
    record(host_state, experiment, "production", 1, requests=1500, labelled=1000, correct=880)
    record(host_state, experiment, "staging", 2, requests=1500, labelled=1000, correct=950)
    assert main(["experiment", "report", IRIS, "--store", str(store.root)]) == 0
    text = capsys.readouterr().out
    assert "staging vs production: better" in text and "winner: staging" in text

    assert conclude(store) == 0
    assert "production -> 2" in capsys.readouterr().out
    assert store.aliases(IRIS)["production"] == 2
    assert store.experiment(IRIS) is None
    entry = history(store)[-1]
    assert entry["action"] == "conclude" and entry["id"] == experiment.id
    assert entry["winner"] == "staging" and entry["version"] == 2
    assert entry["report"]["variants"]["staging"]["accuracy"] == 0.95
    assert entry["report"]["comparisons"]["staging"]["verdict"] == "better"


def test_conclude_goes_through_the_promotion_gate(store, host_state, capsys):
    worse_offline = publish_copy(store, change=scored(f1_macro=0.5))
    experiment = store.start_experiment(IRIS, parse_variants(f"production=50,{worse_offline}=50"))
    record(host_state, experiment, "production", 1, requests=10, labelled=10, correct=9)
    record(
        host_state,
        experiment,
        str(worse_offline),
        worse_offline,
        requests=10,
        labelled=10,
        correct=9,
    )
    assert conclude(store, "--winner", str(worse_offline)) == 1
    err = capsys.readouterr().err
    assert "scores f1_macro 0.5 on its test set" in err and "--force" in err
    assert store.aliases(IRIS)["production"] == 1
    assert store.experiment(IRIS) is not None  # a refused promotion stops nothing

    assert conclude(store, "--winner", "production") == 0
    assert "production already at 1" in capsys.readouterr().out
    assert history(store)[-1]["chosen_by"] == "named"


# -- the same over the admin API ---------------------------------------------------------------


@pytest.fixture
def evidence_client(store, tmp_path):
    """An app whose monitoring state is the host state of ``record``."""
    app = create_app(
        {
            "store": store.root,
            "state_dir": tmp_path / "host-state",
            "admin_key_hashes": (hashlib.sha256(ADMIN_KEY.encode()).hexdigest(),),
        }
    )
    yield app.test_client()
    app.extensions["model_service.monitoring"].stop()
    app.extensions["model_service"].registry.stop()


def test_the_admin_api_concludes_as_the_command_does(store, experiment, tmp_path, evidence_client):
    url = f"/v1/admin/experiments/{IRIS}/conclude"
    record(
        tmp_path / "host-state", experiment, "production", 1, requests=50, labelled=50, correct=45
    )
    record(tmp_path / "host-state", experiment, "staging", 2, requests=50, labelled=50, correct=46)
    refused = evidence_client.post(url, headers=ADMIN)
    assert refused.status_code == 409, refused.json
    assert refused.json["error"]["code"] == "nothing_significant"
    assert '{"winner": VARIANT}' in refused.json["error"]["message"]
    assert store.experiment(IRIS) is not None

    done = evidence_client.post(
        url, json={"winner": "staging", "reason": "v2 it is"}, headers=ADMIN
    )
    assert done.status_code == 200, done.json
    assert done.json["winner"] == "staging" and done.json["version"] == 2
    assert done.json["promoted"] is True and done.json["previous"] == 1
    assert store.aliases(IRIS)["production"] == 2 and store.experiment(IRIS) is None
    assert history(store)[-1]["reason"] == "v2 it is"
    assert evidence_client.post(url, headers=ADMIN).status_code == 404  # nothing runs now


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], "the body must be a JSON object"),
        ({"winner": "staging", "extra": 1}, "unknown field(s) extra"),
        ({"force": "yes"}, '"force" must be true or false'),
        ({"alias": "Not An Alias"}, "invalid alias"),
        ({"winner": "no such variant!"}, "neither a version number nor an alias"),
        ({"winner": "canary"}, "has no variant 'canary'"),
    ],
)
def test_a_bad_conclude_request_is_a_400_that_changes_nothing(
    store, experiment, evidence_client, body, message
):
    answer = evidence_client.post(
        f"/v1/admin/experiments/{IRIS}/conclude", json=body, headers=ADMIN
    )
    assert answer.status_code == 400, answer.json
    assert message in answer.json["error"]["message"]
    assert store.experiment(IRIS) == experiment

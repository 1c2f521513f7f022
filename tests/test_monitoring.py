"""Feedback joined to served predictions, live quality, the prediction log and drift,
through the Flask client over a copy of the demo store and a private state directory."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

from service import create_app
from service.cli import main as modelctl
from service.config import Settings
from service.grpc.server import create_server
from service.keys import KeyRing, digest
from service.monitoring import drift, live, predlog, state
from service.protocols.grpc import open_inference_pb2 as pb
from service.protocols.grpc import open_inference_pb2_grpc as pb_grpc
from service.training.demo import demo_specs
from service.training.split import prepare
from tests.support import DIABETES, IRIS

FEEDBACK_KEY = "msk_feedback-key-of-the-monitoring-tests"

# Two clear examples of each iris species, and what the demo model predicts for them.
IRIS_ROWS = [
    [5.1, 3.5, 1.4, 0.2],
    [4.9, 3.0, 1.4, 0.2],
    [6.4, 3.2, 4.5, 1.5],
    [5.7, 2.8, 4.5, 1.3],
    [7.7, 3.8, 6.7, 2.2],
    [6.3, 3.3, 6.0, 2.5],
]
IRIS_PREDICTED = ["setosa", "setosa", "versicolor", "versicolor", "virginica", "virginica"]
# Labels: rows 3 and 5 predicted wrong.
IRIS_LABELS = ["setosa", "setosa", "versicolor", "virginica", "virginica", "versicolor"]


@pytest.fixture(autouse=True)
def short_feedback_wait(monkeypatch):
    # An unknown prediction is looked for again for FEEDBACK_WAIT seconds (another worker
    # may not have written it yet); one process here, so a short wait is enough.
    monkeypatch.setattr(live, "FEEDBACK_WAIT", 0.1)


@pytest.fixture
def make_app(store_dir, tmp_path):
    apps = []

    # Feedback needs a key with scope feedback (it moves live quality).
    KeyRing(store_dir).add("labeller", ["feedback"], digest(FEEDBACK_KEY))

    def make(**settings):
        config = {"store": store_dir, "state_dir": tmp_path / "state", "reload_interval": 0.1}
        config.update(settings)
        app = create_app(config)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["model_service.monitoring"].stop()
        app.extensions["model_service"].registry.stop()


@pytest.fixture
def client(make_app):
    return make_app().test_client()


def predict(client, model: str, rows, request_id: str) -> list:
    answer = client.post(
        f"/v1/models/{model}/predict",
        json={"instances": rows},
        headers={"X-Request-ID": request_id},
    )
    assert answer.status_code == 200, answer.json
    assert answer.json["request_id"] == request_id
    return answer.json["predictions"]


def feedback(client, model: str, body):
    return client.post(
        f"/v1/models/{model}/feedback",
        json=body,
        headers={"Authorization": f"Bearer {FEEDBACK_KEY}"},
    )


def performance(client, model: str, version: int = 1) -> dict:
    answer = client.get(f"/v1/models/{model}/performance")
    assert answer.status_code == 200
    return next(v for v in answer.json["versions"] if v["version"] == version)


def labelled(request_id: str, labels) -> list[dict]:
    return [
        {"request_id": request_id, "index": i, "label": label} for i, label in enumerate(labels)
    ]


# -- feedback and live quality --------------------------------------------------------


def test_feedback_joins_and_gives_live_accuracy_and_recall(client):
    assert predict(client, IRIS, IRIS_ROWS, "r1") == IRIS_PREDICTED
    answer = feedback(client, IRIS, labelled("r1", IRIS_LABELS))
    assert answer.status_code == 200, answer.json
    assert answer.json["accepted"] == 6
    assert [f["prediction"] for f in answer.json["feedback"]] == IRIS_PREDICTED
    assert {f["version"] for f in answer.json["feedback"]} == {1}

    report = performance(client, IRIS)
    assert report["count"] == 6
    assert report["feedback_total"] == 6
    assert report["metric"] == "accuracy"
    assert report["live"]["accuracy"] == round(4 / 6, 6)
    assert report["live"]["class_recall"] == {"setosa": 1.0, "versicolor": 0.5, "virginica": 0.5}
    assert report["test"]["accuracy"] == pytest.approx(0.966667)
    assert report["aliases"] == ["production"]
    # 0.667 is more than 5 % under the test accuracy.
    assert report["below_test_score"] is True


def test_a_second_label_replaces_the_first(client):
    predict(client, IRIS, IRIS_ROWS, "r1")
    feedback(client, IRIS, labelled("r1", IRIS_LABELS))
    answer = feedback(client, IRIS, {"request_id": "r1", "index": 3, "label": "versicolor"})
    assert answer.status_code == 200
    assert answer.json["feedback"][0]["replaced"] is True
    report = performance(client, IRIS)
    assert report["count"] == 6  # the same six predictions
    assert report["feedback_total"] == 7  # labels received
    assert report["live"]["accuracy"] == round(5 / 6, 6)


def test_live_quality_within_tolerance_is_not_flagged(client):
    predict(client, IRIS, IRIS_ROWS, "r1")
    feedback(client, IRIS, labelled("r1", IRIS_PREDICTED))
    report = performance(client, IRIS)
    assert report["live"]["accuracy"] == 1.0
    assert report["below_test_score"] is False


def test_live_quality_looks_at_the_newest_labels_only(make_app):
    client = make_app(quality_window=4).test_client()
    predict(client, IRIS, IRIS_ROWS, "r1")
    feedback(client, IRIS, labelled("r1", IRIS_LABELS))
    report = performance(client, IRIS)
    # The newest four labels: rows 2-5, two of them wrong.
    assert (report["count"], report["live"]["accuracy"]) == (4, 0.5)
    assert report["live"]["class_recall"]["setosa"] is None


def test_live_mae_and_its_flag_both_ways(client):
    rows = [[50, 1, 25.0, 80.0, 180.0, 100.0, 50.0, 4.0, 4.5, 90.0]] * 3
    predicted = predict(client, DIABETES, rows, "d1")
    offsets = [10.0, -20.0, 30.0]
    labels = [p + o for p, o in zip(predicted, offsets, strict=True)]
    assert feedback(client, DIABETES, labelled("d1", labels)).status_code == 200
    report = performance(client, DIABETES)
    assert report["metric"] == "mae"
    assert report["live"]["mae"] == pytest.approx(20.0, abs=1e-6)
    assert report["test"]["mae"] == pytest.approx(45.691847)
    assert report["below_test_score"] is False

    predicted = predict(client, DIABETES, rows, "d2")
    feedback(client, DIABETES, labelled("d2", [p + 100.0 for p in predicted]))
    report = performance(client, DIABETES)
    # Six labels: errors 10, 20, 30 and three of 100.
    assert report["live"]["mae"] == pytest.approx(360 / 6, abs=1e-6)
    assert report["threshold"] == pytest.approx(45.691847 * 1.05, abs=1e-5)
    assert report["below_test_score"] is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"request_id": "nope", "index": 0, "label": "setosa"}, "request id 'nope'"),
        ({"request_id": "r1", "index": 6, "label": "setosa"}, "index 6"),
        (
            [
                {"request_id": "r1", "index": 0, "label": "setosa"},
                {"request_id": "r2", "index": 0, "label": "setosa"},
            ],
            "item 1",
        ),
    ],
)
def test_unknown_predictions_are_404(client, body, message):
    predict(client, IRIS, IRIS_ROWS, "r1")
    answer = feedback(client, IRIS, body)
    assert answer.status_code == 404
    assert answer.json["error"]["code"] == "prediction_not_found"
    assert message in answer.json["error"]["message"]
    # All or nothing: the good item of a batch is not stored either.
    assert performance(client, IRIS)["feedback_total"] == 0


def test_feedback_joins_within_the_model_name(client):
    predict(client, IRIS, IRIS_ROWS, "r1")
    answer = feedback(client, DIABETES, {"request_id": "r1", "index": 0, "label": 1.0})
    assert answer.status_code == 404


def test_expired_predictions_are_404(make_app):
    client = make_app(prediction_retention=3).test_client()
    for i in range(4):
        predict(client, IRIS, IRIS_ROWS[:1], f"r{i}")
    assert feedback(client, IRIS, {"request_id": "r0", "label": "setosa"}).status_code == 404
    assert feedback(client, IRIS, {"request_id": "r3", "label": "setosa"}).status_code == 200


def test_retention_counts_rows_and_keeps_requests_whole(make_app):
    """One stored record per request; retention counts their rows: a request goes once
    all its rows are older than the newest prediction_retention rows."""
    client = make_app(prediction_retention=3).test_client()
    predict(client, IRIS, IRIS_ROWS[:2], "two-a")
    predict(client, IRIS, IRIS_ROWS[:2], "two-b")
    # Rows 1-2 and 3-4: the newest three (2-4) still reach into "two-a".
    assert (
        feedback(client, IRIS, {"request_id": "two-a", "index": 1, "label": "setosa"}).status_code
        == 200
    )
    assert (
        feedback(client, IRIS, {"request_id": "two-b", "index": 2, "label": "setosa"}).status_code
        == 404
    )
    predict(client, IRIS, IRIS_ROWS[:1], "one")
    assert (
        feedback(client, IRIS, {"request_id": "two-a", "index": 0, "label": "setosa"}).status_code
        == 404
    )
    assert (
        feedback(client, IRIS, {"request_id": "two-b", "index": 0, "label": "setosa"}).status_code
        == 200
    )


def test_requests_of_many_rows_and_of_few_are_stored_alike(tmp_path):
    """Long outputs take a statement step of their own: the join and the retention see
    them as they see short ones, in the order they were served, NaN as null."""
    long = state.OWN_STEP_ROWS
    store = state.StateStore(tmp_path, prediction_retention=long + 2)
    outputs = {
        "short-1": [1.5],
        "long": [float(i) for i in range(long - 1)] + [math.nan],
        "short-2": ["setosa", "virginica"],
    }
    store.write_batch(
        [("m", request_id, 3, values, 100.0) for request_id, values in outputs.items()], {}
    )
    keys = [("short-1", 0), ("long", 0), ("long", long - 2), ("long", long - 1), ("short-2", 1)]
    # Retention: the newest long + 2 rows reach into "long"; "short-1" is gone.
    assert store.served("m", keys) == {
        ("long", 0): (3, 0.0),
        ("long", long - 2): (3, float(long - 2)),
        ("long", long - 1): (3, None),
        ("short-2", 1): (3, "virginica"),
    }


@pytest.mark.parametrize(
    ("model", "label"),
    [(IRIS, "rose"), (IRIS, 1), (IRIS, None), (DIABETES, "12"), (DIABETES, True)],
)
def test_a_label_that_does_not_fit_the_model_is_422(client, model, label):
    row = IRIS_ROWS[0] if model == IRIS else [50, 1, 25.0, 80.0, 180.0, 100.0, 50.0, 4.0, 4.5, 90.0]
    predict(client, model, [row], "r1")
    answer = feedback(client, model, {"request_id": "r1", "index": 0, "label": label})
    assert answer.status_code == 422
    assert answer.json["error"]["code"] == "invalid_label"
    assert performance(client, model)["feedback_total"] == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"index": 0, "label": "setosa"}, "request_id"),
        ({"request_id": "r1", "index": -1, "label": "setosa"}, "index"),
        ({"request_id": "r1", "index": 0}, "label is missing"),
        ({"request_id": "r1", "label": "setosa", "extra": 1}, "unknown fields"),
        ([], "no feedback"),
        (["r1"], "item 0"),
    ],
)
def test_malformed_feedback_is_400(client, body, message):
    answer = feedback(client, IRIS, body)
    assert answer.status_code == 400
    assert message in answer.json["error"]["message"]


def test_feedback_for_a_model_not_served_is_404(client):
    answer = feedback(client, "no-such-model", {"request_id": "r1", "label": 1})
    assert answer.status_code == 404
    assert answer.json["error"]["code"] == "model_not_found"


def test_live_quality_at_scrape_time(client):
    predict(client, IRIS, IRIS_ROWS, "r1")
    feedback(client, IRIS, labelled("r1", IRIS_LABELS))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for collector in client.application.extensions["model_service.monitoring"].collectors
        for family in collector()
        for s in family.samples
    }
    key = (("model", IRIS), ("version", "1"))
    assert samples[("model_service_live_accuracy", key)] == round(4 / 6, 6)
    assert samples[("model_service_feedback_total", key)] == 6
    assert samples[("model_service_live_quality_below_test", key)] == 1.0
    recall_key = (("class", "versicolor"), *key)
    assert samples[("model_service_live_class_recall", recall_key)] == 0.5
    # Six rows are too few to judge drift on: no PSI or p-value, no flag, "too few rows".
    for feature in ("sepal_length_cm", "petal_width_cm"):
        feature_key = (("feature", feature), *key)
        assert samples[("model_service_feature_drift_flagged", feature_key)] == 0.0
        assert samples[("model_service_feature_drift_too_few_rows", feature_key)] == 1.0
    assert not any(
        name in ("model_service_feature_drift_psi", "model_service_feature_drift_p_value")
        for name, _ in samples
    )


def test_grpc_predictions_join_feedback_too(make_app, store_dir, tmp_path):
    client = make_app().test_client()
    server, registry, port = create_server(
        Settings.from_mapping({"store": store_dir, "state_dir": tmp_path / "state"}),
        address="127.0.0.1:0",
        threads=2,
    )
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = pb.ModelInferRequest(model_name=IRIS, id="grpc-1")
            request.inputs.add(name="instances", datatype="FP64", shape=[2, 4])
            request.raw_input_contents.append(np.array(IRIS_ROWS[:2], dtype="<f8").tobytes())
            answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
            assert answer.id == "grpc-1"
        live.active().flush()
        body = labelled("grpc-1", ["setosa", "versicolor"])
        joined = feedback(client, IRIS, body)
        assert joined.status_code == 200, joined.json
        assert [f["prediction"] for f in joined.json["feedback"]] == ["setosa", "setosa"]
    finally:
        server.stop(None)
        registry.stop()


# -- the prediction log ---------------------------------------------------------------


def log_lines(state_dir: Path) -> list[dict]:
    return [json.loads(line) for path in predlog.log_files(state_dir) for line in open(path)]


def test_the_prediction_log_is_off_by_default(client, tmp_path):
    predict(client, IRIS, IRIS_ROWS, "r1")
    client.get(f"/v1/models/{IRIS}/performance")  # flushes
    assert predlog.log_files(tmp_path / "state") == []


def test_prediction_log_lines(make_app, tmp_path):
    client = make_app(prediction_log=True).test_client()
    predict(client, IRIS, IRIS_ROWS[:2], "r1")
    predict(client, IRIS, IRIS_ROWS[2:5], "r2")
    client.get(f"/v1/models/{IRIS}/performance")
    files = predlog.log_files(tmp_path / "state")
    assert [f.name for f in files] == [f"predictions-{os.getpid()}.jsonl"]
    lines = log_lines(tmp_path / "state")
    assert [(line["request_id"], line["outputs"]["prediction"]) for line in lines] == [
        ("r1", "setosa"),
        ("r1", "setosa"),
        ("r2", "versicolor"),
        ("r2", "versicolor"),
        ("r2", "virginica"),
    ]
    first = lines[0]
    assert first["model"] == IRIS and first["version"] == 1
    assert first["inputs"] == {
        "sepal_length_cm": 5.1,
        "sepal_width_cm": 3.5,
        "petal_length_cm": 1.4,
        "petal_width_cm": 0.2,
    }
    probabilities = first["outputs"]["probabilities"]
    assert list(probabilities) == ["setosa", "versicolor", "virginica"]
    assert math.isclose(sum(probabilities.values()), 1.0)
    assert predlog.parse_time(first["time"]).tzinfo is not None


def test_prediction_log_sampling(make_app, tmp_path):
    client = make_app(prediction_log=True, prediction_log_sample_rate=0.0001).test_client()
    for i in range(500):
        predict(client, IRIS, IRIS_ROWS[:1], f"r{i}")
    client.get(f"/v1/models/{IRIS}/performance")
    # 500 requests at 1 in 10,000: more than 2 lines has a chance of about 2 in 100,000.
    assert len(log_lines(tmp_path / "state")) <= 2


def test_prediction_log_rotates(make_app, tmp_path):
    client = make_app(
        prediction_log=True, prediction_log_max_bytes=2000, prediction_log_backups=2
    ).test_client()
    for i in range(40):
        predict(client, IRIS, IRIS_ROWS[:2], f"r{i:02d}")
        client.get(f"/v1/models/{IRIS}/performance")
    names = sorted(p.name for p in predlog.log_files(tmp_path / "state"))
    pid = os.getpid()
    assert names == [
        f"predictions-{pid}.jsonl",
        f"predictions-{pid}.jsonl.1",
        f"predictions-{pid}.jsonl.2",
    ]
    assert all(p.stat().st_size <= 2000 for p in predlog.log_files(tmp_path / "state"))
    lines = log_lines(tmp_path / "state")
    assert 0 < len(lines) < 80  # the oldest were rotated away
    assert {line["request_id"] for line in lines} >= {"r39"}

    output = tmp_path / "export.csv"
    assert (
        modelctl(["export-log", "--state-dir", str(tmp_path / "state"), "--output", str(output)])
        == 0
    )
    with open(output, newline="") as handle:
        exported = list(csv.DictReader(handle))
    assert len(exported) == len(lines)  # every kept file, rotated ones too
    assert exported[-1]["request_id"] == "r39"


def write_log(path: Path, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def line(when: str, request_id: str, model: str = IRIS, prediction="setosa") -> dict:
    return {
        "time": when,
        "request_id": request_id,
        "model": model,
        "version": 1,
        "inputs": {"a": 1.5, "b": None},
        "outputs": {"prediction": prediction, "probabilities": {"setosa": 0.75, "virginica": 0.25}},
    }


def test_export_log_merges_every_worker_in_time_order(tmp_path):
    state = tmp_path / "state"
    folder = predlog.log_dir(state)
    write_log(
        folder / "predictions-111.jsonl",
        [line("2024-05-01T10:00:03+00:00", "w1-b"), line("2024-05-01T10:00:05+00:00", "w1-c")],
    )
    write_log(folder / "predictions-111.jsonl.1", [line("2024-05-01T10:00:00+00:00", "w1-a")])
    write_log(
        folder / "predictions-222.jsonl",
        [
            line("2024-05-01T10:00:01+00:00", "w2-a"),
            line("2024-05-01T10:00:04+00:00", "w2-b", model=DIABETES, prediction=151.5),
        ],
    )
    output = tmp_path / "out" / "log.csv"
    assert modelctl(["export-log", "--state-dir", str(state), "--output", str(output)]) == 0
    with open(output, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == [
        "time",
        "request_id",
        "model",
        "version",
        "a",
        "b",
        "prediction",
        "probability_setosa",
        "probability_virginica",
    ]
    assert [row[1] for row in rows[1:]] == ["w1-a", "w2-a", "w1-b", "w2-b", "w1-c"]
    assert rows[1][4:] == ["1.5", "", "setosa", "0.75", "0.25"]

    args = ["export-log", "--state-dir", str(state), "--output", str(output), "--model", IRIS]
    assert modelctl([*args, "--since", "2024-05-01T10:00:01"]) == 0
    with open(output, newline="") as handle:
        assert [row[1] for row in list(csv.reader(handle))[1:]] == ["w2-a", "w1-b", "w1-c"]


def test_export_log_without_a_log_fails(tmp_path, capsys):
    assert modelctl(["export-log", "--state-dir", str(tmp_path), "--output", "x.csv"]) == 1
    assert "no prediction log" in capsys.readouterr().err


# -- drift ------------------------------------------------------------------------------


def training_rows(model: str) -> pd.DataFrame:
    spec = next(s for s in demo_specs() if s.name == model)
    _, split = prepare(spec)
    return split.X_rest


def sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return frame.iloc[rng.integers(0, len(frame), n)].reset_index(drop=True)


def records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))


def drift_report(client, model: str) -> dict:
    answer = client.get(f"/v1/models/{model}/drift")
    assert answer.status_code == 200
    return next(v for v in answer.json["versions"] if v["version"] == 1)


@pytest.mark.parametrize(
    ("model", "shifted"),
    [(IRIS, ("sepal_width_cm", "petal_length_cm")), (DIABETES, ("bmi", "s5"))],
)
def test_drift_of_real_data(make_app, store, tmp_path, model, shifted):
    training = training_rows(model)
    metadata = store.metadata(model, 1)
    features = [f["name"] for f in metadata["input"]["features"]]
    assert list(training.columns) == features

    # Rows drawn from the training distribution: no feature drifts.
    same = make_app(state_dir=tmp_path / "same").test_client()
    rows = sample(training, 3000, seed=1)
    predict(same, model, records(rows), "same")
    report = drift_report(same, model)
    assert report["rows"] == 3000
    assert report["flagged"] == []
    for name in features:
        assert report["features"][name]["count"] == 3000
        assert report["features"][name]["psi"] < 0.1, name

    # The same rows with two features moved by three training standard deviations.
    moved = make_app(state_dir=tmp_path / "moved").test_client()
    stds = {f["name"]: f["stats"]["std"] for f in metadata["input"]["features"]}
    changed = rows.copy()
    for name in shifted:
        changed[name] = changed[name] + 3 * stds[name]
    predict(moved, model, records(changed), "moved")
    report = drift_report(moved, model)
    assert report["flagged"] == sorted(shifted)
    for name in features:
        entry = report["features"][name]
        if name in shifted:
            assert entry["psi"] > 0.2 and entry["flagged"], name
        else:
            assert entry["psi"] < 0.1 and not entry["flagged"], name
    entry = report["features"][shifted[0]]
    assert len(entry["live"]) == len(entry["training"]) == len(entry["bins"]) == 10
    assert sum(entry["live_counts"]) == 3000


def test_drift_is_per_window(make_app, tmp_path):
    client = make_app().test_client()
    predict(client, IRIS, IRIS_ROWS, "r1")
    assert drift_report(client, IRIS)["rows"] == 6
    # Counts older than the window are left out.
    monitor = client.application.extensions["model_service.monitoring"].live
    conn = monitor.state.connection()
    conn.execute("UPDATE drift_counts SET minute = minute - 61")
    assert drift_report(client, IRIS)["rows"] == 0


# Drift is judged on evidence: a minimum of values per feature, then PSI above the
# threshold and a chi-square p-value below alpha (divided among the features).
DRIFT_RULE = {"threshold": 0.2, "alpha": 0.01, "min_rows": 100}


def regressor_drift(trained_store_dir, rows: pd.DataFrame, **rule) -> dict:
    """The drift report of the demo regressor (10 numeric features) on these rows."""
    from service.store import ModelStore

    profiles = drift.profiles(ModelStore(trained_store_dir).metadata(DIABETES, 1))
    counts = {profile.name: drift.count_bins(profile, [rows]) for profile in profiles}
    return drift.version_report(profiles, counts, **{**DRIFT_RULE, **rule})


@pytest.mark.parametrize("n", [2, 20, 2000])
def test_rows_from_the_training_distribution_raise_no_flag(trained_store_dir, n):
    report = regressor_drift(trained_store_dir, sample(training_rows(DIABETES), n, seed=n))
    assert report["rows"] == n
    assert len(report["features"]) == 10
    assert report["flagged"] == []
    judged = n >= DRIFT_RULE["min_rows"]
    assert report["too_few_rows"] == ([] if judged else sorted(report["features"]))
    for name, entry in report["features"].items():
        assert (entry["count"], entry["min_rows"], entry["flagged"]) == (n, 100, False)
        assert entry["alpha"] == pytest.approx(0.01 / 10)  # Bonferroni over 10 features
        if judged:
            assert (entry["status"], entry["message"]) == ("stable", "stable"), name
            assert entry["psi"] < 0.05 and entry["p_value"] > 0.01, name
        else:
            assert entry["status"] == "too_few_rows"
            assert entry["message"] == f"too few rows ({n} of 100)"
            assert entry["psi"] is None and entry["p_value"] is None


@pytest.mark.parametrize("n", [2, 20])
def test_few_rows_are_not_flagged_even_without_a_minimum(trained_store_dir, n):
    """What a minimum of 1 would show: PSI above the threshold on most features from
    sampling alone (the bins a few rows leave empty), which the p-value sees as noise."""
    rows = sample(training_rows(DIABETES), n, seed=n)
    report = regressor_drift(trained_store_dir, rows, min_rows=1)
    assert report["flagged"] == []
    above = [name for name, entry in report["features"].items() if entry["psi"] > 0.2]
    assert len(above) > len(report["features"]) // 2, above
    for name, entry in report["features"].items():
        assert entry["status"] == "stable", name
        if name in above:
            assert entry["message"].startswith("stable: PSI "), name
            assert "within sampling noise" in entry["message"], name


def test_one_shifted_feature_is_flagged_alone(trained_store_dir, store):
    rows = sample(training_rows(DIABETES), 2000, seed=7)
    std = next(f for f in store.metadata(DIABETES, 1)["input"]["features"] if f["name"] == "bmi")
    rows["bmi"] = rows["bmi"] + 0.5 * std["stats"]["std"]
    report = regressor_drift(trained_store_dir, rows)
    assert report["flagged"] == ["bmi"]
    assert report["too_few_rows"] == []
    bmi = report["features"]["bmi"]
    assert bmi["status"] == "drifted" and bmi["flagged"] is True
    assert bmi["psi"] > 0.2 and bmi["p_value"] < 1e-6
    assert bmi["message"] == f"drifted (PSI {bmi['psi']:.3f}, p {bmi['p_value']:.2g})"
    for name, entry in report["features"].items():
        if name != "bmi":
            assert entry["status"] == "stable" and entry["psi"] < 0.05, name


def test_sparse_bins_are_merged_until_each_expects_five():
    from scipy import stats

    shares = np.array([0.01, 0.02, 0.47, 0.45, 0.05])  # 100 rows expect 1, 2, 47, 45, 5
    counts = np.array([6, 4, 35, 45, 10])
    # Merged in order: [1 + 2 + 47], [45], [5] expected; [6 + 4 + 35], [45], [10] seen.
    merged = stats.chisquare([45, 45, 10], [50, 45, 5]).pvalue
    assert drift.chi_square_p_value(shares, counts) == pytest.approx(merged)
    # A short tail joins the group before it: [1 + 2 + 47], [46 + 4].
    assert drift.chi_square_p_value(
        np.array([0.01, 0.02, 0.47, 0.46, 0.04]), counts
    ) == pytest.approx(stats.chisquare([45, 55], [50, 50]).pvalue)
    # Fewer than two groups: nothing to test.
    assert drift.chi_square_p_value(shares, np.array([1, 0, 2, 1, 0])) is None


def numeric_profile() -> drift.FeatureProfile:
    return drift.FeatureProfile(
        "x",
        0,
        numeric=True,
        edges=np.array([0.0, 1.0, 2.0, 3.0]),
        counts=np.array([1.0, 2.0, 1.0]),
    )


def test_numeric_values_go_into_the_training_bins():
    values = np.array([[-5.0], [0.0], [0.5], [1.0], [2.999], [3.0], [40.0], [np.nan]])
    assert drift.count_bins(numeric_profile(), [values]) == {"0": 3, "1": 1, "2": 3, "missing": 1}


def test_a_batch_of_inputs_is_counted_as_one():
    """The flusher bins a minute's single-row inputs together: same counts as one matrix."""
    rows = [np.array([[value]]) for value in (-5.0, 0.0, 0.5, 1.0, 2.999, 3.0, 40.0, np.nan)]
    assert drift.count_bins(numeric_profile(), rows) == {"0": 3, "1": 1, "2": 3, "missing": 1}


def test_small_matrices_are_stacked_before_binning_and_large_ones_are_not():
    small = [np.array([[value]]) for value in (-5.0, 0.0, 0.5, np.nan)]
    large = np.full((1000, 1), 2.5)
    columns = [np.array([1.5, 1.5])]  # one array per feature: a model that takes categories
    inputs = [small[0], large, small[1], columns, small[2], small[3]]
    combined = drift.combined(inputs)
    assert len(combined) == 3
    assert combined[0].shape == (4, 1)
    assert combined[1] is large and combined[2] is columns
    expected = {"0": 3, "1": 2, "2": 1000, "missing": 1}
    assert drift.count_bins(numeric_profile(), combined) == expected
    assert drift.count_bins(numeric_profile(), inputs) == expected


def test_the_binner_counts_what_count_bins_counts_feature_by_feature():
    """The flusher bins every numeric feature of a matrix at once: the same counts as one
    feature at a time, with edges hit exactly, missing values, features of fewer bins, and
    inputs that are not matrices (one array per feature) mixed in."""
    rng = np.random.default_rng(7)
    profiles = []
    for index in range(6):
        edges = np.sort(rng.normal(size=int(rng.integers(2, 13))))
        profiles.append(
            drift.FeatureProfile(
                f"x{index}", index, numeric=True, edges=edges, counts=np.ones(len(edges) - 1)
            )
        )
    binner = drift.Binner(profiles)
    for _ in range(20):
        inputs: list = []
        for _ in range(int(rng.integers(1, 5))):
            matrix = rng.normal(scale=2.0, size=(int(rng.integers(1, 150)), 6))
            matrix[rng.random(matrix.shape) < 0.05] = np.nan
            matrix[0] = [p.edges[rng.integers(0, len(p.edges))] for p in profiles]
            inputs.append(list(matrix.T) if rng.random() < 0.3 else matrix)
        expected = {p.name: drift.count_bins(p, inputs) for p in profiles}
        assert binner.count(inputs) == {name: c for name, c in expected.items() if c}


def test_the_binner_counts_categories_one_feature_at_a_time():
    colour = drift.FeatureProfile("colour", 1, numeric=False, shares={"red": 0.5, "blue": 0.5})
    size = numeric_profile()
    columns = [np.array([0.5, 2.5, np.nan]), np.array(["red", "green", None], dtype=object)]
    assert drift.Binner([size, colour]).count([columns]) == {
        "x": {"0": 1, "2": 1, "missing": 1},
        "colour": {"c:red": 1, "unseen": 1, "missing": 1},
    }


def test_category_shares_and_unseen_categories():
    profile = drift.FeatureProfile(
        "colour", 1, numeric=False, shares={"red": 0.5, "blue": 0.5}, fill_value="missing"
    )
    frame = pd.DataFrame({"colour": ["red", "red", "red", "green", "missing", None]})
    counts = drift.count_bins(profile, [frame.iloc[:2], frame.iloc[2:]])
    assert counts == {"c:red": 3, "unseen": 1, "missing": 2}
    report = drift.feature_report(profile, counts, threshold=0.2, alpha=0.01, min_rows=4)
    expected = (0.75 - 0.5) * math.log(0.75 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    expected += (0.25 - 1e-4) * math.log(0.25 / 1e-4)
    assert report["psi"] == pytest.approx(expected, abs=1e-6)
    assert report["bins"] == ["red", "blue", "unseen"]
    assert report["live"] == [0.75, 0.0, 0.25]
    # A category training never saw cannot be sampling noise: p = 0.
    assert report["p_value"] == 0.0
    assert (report["count"], report["missing"], report["flagged"]) == (6, 2, True)
    # Missing values are left out of the comparison, and out of the minimum.
    report = drift.feature_report(profile, counts, threshold=0.2, alpha=0.01, min_rows=5)
    assert (report["status"], report["message"]) == ("too_few_rows", "too few rows (4 of 5)")
    assert (report["psi"], report["p_value"], report["flagged"]) == (None, None, False)


def test_psi_of_identical_shares_is_zero():
    shares = np.array([0.25, 0.5, 0.25, 0.0])
    assert drift.psi(shares, shares) == 0.0
    assert drift.psi(shares, np.array([0.5, 0.25, 0.25, 0.0])) == pytest.approx(
        0.25 * math.log(2) * 2
    )


def test_a_model_with_categories_is_logged_and_binned_from_its_columns(tmp_path):
    """A model that takes categories is validated into one array per feature: drift and
    the prediction log read those columns (a missing category as its fill value)."""
    from service.store import ModelStore
    from service.training import spec as training_spec
    from service.training.trainer import train

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "colour": rng.choice(["red", "green", "blue"], 120),
            "size": rng.normal(10.0, 2.0, 120).round(2),
        }
    )
    frame["big"] = np.where(frame["size"] > 10.0, "yes", "no")
    frame.to_csv(tmp_path / "shapes.csv", index=False)
    raw = {
        "name": "shapes",
        "task": "classification",
        "target": "big",
        "data": {"path": "shapes.csv"},
        "features": {"categorical": {"impute": "constant", "handle_unknown": "ignore"}},
        "estimator": {"class": "sklearn.linear_model.LogisticRegression"},
        "evaluation": {"margin": 0.0},
    }
    store_dir = tmp_path / "store"
    train(
        training_spec.parse(raw, base_dir=tmp_path), ModelStore(store_dir), aliases=("production",)
    )
    app = create_app({"store": store_dir, "state_dir": tmp_path / "state", "prediction_log": True})
    try:
        rows = [{"colour": "red", "size": 12.5}, {"colour": None, "size": 8.0}]
        answer = app.test_client().post(
            "/v1/models/shapes/predict", json={"instances": rows}, headers={"X-Request-ID": "c1"}
        )
        assert answer.status_code == 200, answer.json
        monitor = app.extensions["model_service.monitoring"].live
        monitor.flush()
        counts = monitor.state.drift_counts(0, "shapes")[("shapes", 1)]
        assert counts["colour"] == {"c:red": 1, "missing": 1}
        assert sum(counts["size"].values()) == 2
        inputs = [line["inputs"] for line in log_lines(tmp_path / "state")]
        assert inputs == [{"colour": "red", "size": 12.5}, {"colour": "missing", "size": 8.0}]
    finally:
        app.extensions["model_service.monitoring"].stop()
        app.extensions["model_service"].registry.stop()

"""Prometheus metrics and the JSON request log, in one process through Flask's test client:
every counter moves by exactly what was sent, nothing moves when metrics are off, and no
log line carries a feature value."""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
import pytest
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from service import create_app
from service.monitoring import logs, metrics
from service.runtime.model import load
from service.store import ModelStore
from tests.support import DIABETES, IRIS, IRIS_OBJECT, IRIS_ROW, eventually
from tests.test_api import post
from tests.test_flusher import run_in_child
from tests.test_v2 import matrix_input

PREDICT = "/v1/models/<model_ref>/predict"
EXPECTED_FAMILIES = {
    "model_service_requests": "counter",
    "model_service_request_duration_seconds": "histogram",
    "model_service_instances_per_request": "histogram",
    "model_service_validation_failures": "counter",
    "model_service_model_load_seconds": "histogram",
    "model_service_model_info": "gauge",
    "model_service_predictions": "counter",
    "model_service_prediction_value": "histogram",
    "model_service_worker_starts": "counter",
}


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}


def value(families: dict, sample: str, **labels) -> float:
    """The sample's value (0 when absent); labels not given are summed over."""
    total = 0.0
    for family in families.values():
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@pytest.fixture
def small_app(store_dir):
    app = create_app({"store": store_dir, "reload_interval": 0.1, "max_instances": 5})
    yield app
    app.extensions["model_service"].registry.stop()


def test_request_prediction_and_failure_counts_move_exactly(small_app):
    client = small_app.test_client()
    before = scrape(client)
    rows = [IRIS_ROW, [6.7, 3.0, 5.2, 2.3]]
    labels = []
    for _ in range(3):
        answer = post(client, f"/v1/models/{IRIS}/predict", {"instances": rows})
        assert answer.status_code == 200
        labels += answer.json["predictions"]
    bad_number = {**IRIS_OBJECT, "sepal_width_cm": "wide"}
    for _ in range(2):
        assert (
            post(client, f"/v1/models/{IRIS}/predict", {"instances": [bad_number]}).status_code
            == 422
        )
    assert post(client, f"/v1/models/{IRIS}/predict", b"{not json").status_code == 400
    assert (
        post(client, f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW] * 6}).status_code == 413
    )
    after = scrape(client)

    def moved(sample, **labels):
        return value(after, sample, **labels) - value(before, sample, **labels)

    iris = {"route": PREDICT, "model": IRIS}
    assert moved("model_service_requests_total", **iris, version="1", status="200") == 3
    assert moved("model_service_requests_total", **iris, version="", status="422") == 2
    assert moved("model_service_requests_total", **iris, version="", status="400") == 1
    assert moved("model_service_requests_total", **iris, version="", status="413") == 1
    assert moved("model_service_request_duration_seconds_count", **iris) == 7
    assert moved("model_service_request_duration_seconds_sum", **iris) > 0
    failures = "model_service_validation_failures_total"
    assert moved(failures, model=IRIS, reason="invalid_input:not_a_number") == 2
    assert moved(failures, model=IRIS, reason="invalid_json") == 1
    assert moved(failures, model=IRIS, reason="too_many_instances") == 1
    assert moved(failures, model=IRIS) == 4
    assert moved("model_service_instances_per_request_count", model=IRIS) == 3
    assert moved("model_service_instances_per_request_sum", model=IRIS) == 6
    assert set(labels) == {"setosa", "virginica"}
    for label in ("setosa", "versicolor", "virginica"):
        assert moved(
            "model_service_predictions_total", model=IRIS, version="1", **{"class": label}
        ) == labels.count(label)


@pytest.mark.parametrize(
    ("instance", "reason"),
    [
        ({**IRIS_OBJECT, "sepal_width_cm": None}, "invalid_input:missing_value"),
        ({**IRIS_OBJECT, "sepal_width_cm": "wide"}, "invalid_input:not_a_number"),
        ({**IRIS_OBJECT, "sepal_width_cm": 1e999}, "invalid_input:out_of_range"),
        (
            {k: v for k, v in IRIS_OBJECT.items() if k != "sepal_width_cm"},
            "invalid_input:missing_feature",
        ),
        ({**IRIS_OBJECT, "petal_colour": "blue"}, "invalid_input:unknown_feature"),
        ([1.0, 2.0], "invalid_input:shape"),
    ],
)
def test_validation_failure_reason_is_the_code_and_the_first_problem(client, instance, reason):
    before = scrape(client)
    # 1e999 as Infinity, the token Python writes: a number literal beyond float range is
    # refused by the parser (400 number_out_of_range), before validation.
    body = json.dumps({"instances": [instance]})
    response = post(client, f"/v1/models/{IRIS}/predict", body)
    assert response.status_code == 422
    after = scrape(client)
    name = "model_service_validation_failures_total"
    assert (
        value(after, name, model=IRIS, reason=reason)
        - value(before, name, model=IRIS, reason=reason)
        == 1
    )
    assert value(after, name) - value(before, name) == 1


def test_regression_values_histogram_uses_the_test_target_range(client, store_dir):
    model = load(ModelStore(store_dir), DIABETES, 1)
    rows = model.metadata["golden"]["instances"]
    bounds = metrics.value_buckets(model.metadata)
    actual = model.metadata["scores"]["test"]["points"]["actual"]
    assert bounds != metrics.DEFAULT_VALUE_BUCKETS
    assert bounds[0] == pytest.approx(min(actual), rel=1e-3)
    assert bounds[-1] == pytest.approx(max(actual), rel=1e-3)

    before = scrape(client)
    answer = post(client, f"/v1/models/{DIABETES}/predict", {"instances": rows})
    assert answer.status_code == 200
    predicted = np.asarray(answer.json["predictions"])
    after = scrape(client)
    name = "model_service_prediction_value"
    labels = {"model": DIABETES, "version": "1"}

    def moved(sample, **more):
        return value(after, sample, **labels, **more) - value(before, sample, **labels, **more)

    assert moved(f"{name}_count") == len(rows)
    assert moved(f"{name}_sum") == pytest.approx(predicted.sum())
    family = after[name]
    les = sorted(
        {
            float(s.labels["le"])
            for s in family.samples
            if s.name.endswith("_bucket") and s.labels["model"] == DIABETES
        }
    )
    assert les == [*bounds, float("inf")]
    for bound in bounds:
        assert moved(f"{name}_bucket", le=str(bound)) == int((predicted <= bound).sum())
    # A regressor's values are not class counts.
    assert moved("model_service_predictions_total") == 0


def test_every_protocol_counts_its_predictions(client):
    before = scrape(client)
    assert post(client, f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW]}).status_code == 200
    v2 = post(client, f"/v2/models/{IRIS}/infer", {"inputs": [matrix_input([IRIS_ROW, IRIS_ROW])]})
    assert v2.status_code == 200
    mlflow = post(client, f"/v1/models/{IRIS}/invocations", {"instances": [IRIS_ROW] * 3})
    assert mlflow.status_code == 200
    after = scrape(client)
    name = "model_service_predictions_total"
    assert value(after, name, model=IRIS) - value(before, name, model=IRIS) == 6
    count = "model_service_instances_per_request_count"
    assert value(after, count, model=IRIS) - value(before, count, model=IRIS) == 3
    routes = {"/v2/models/<name>/infer", "/v1/models/<model_ref>/invocations", PREDICT}
    for route in routes:
        moved = value(after, "model_service_requests_total", route=route, model=IRIS) - value(
            before, "model_service_requests_total", route=route, model=IRIS
        )
        assert moved == 1, route


def test_unknown_routes_and_models_never_become_label_values(client):
    before = scrape(client)
    assert client.get("/no/such/route").status_code == 404
    assert (
        post(client, "/v1/models/made-up-model/predict", {"instances": [IRIS_ROW]}).status_code
        == 404
    )
    after = scrape(client)
    requests = "model_service_requests_total"
    unmatched = {"route": "<unmatched>", "model": "", "status": "404"}
    assert value(after, requests, **unmatched) - value(before, requests, **unmatched) == 1
    unknown = {"route": PREDICT, "model": "", "status": "404"}
    assert value(after, requests, **unknown) - value(before, requests, **unknown) == 1
    text = client.get("/metrics").get_data(as_text=True)
    assert "made-up-model" not in text and "/no/such/route" not in text


def test_model_info_load_times_and_naming_conventions(store_dir):
    load_count = "model_service_model_load_seconds_count"
    app = create_app({"store": store_dir})
    try:
        client = app.test_client()
        # A regressor's answer: its values are a histogram of their own.
        rows = load(ModelStore(store_dir), DIABETES, 1).metadata["golden"]["instances"][:1]
        answer = post(client, f"/v1/models/{DIABETES}/predict", {"instances": rows})
        assert answer.status_code == 200
        families = scrape(client)
        # The app's own metrics: its loads, none of another app's in this process.
        for name in (IRIS, DIABETES):
            assert value(families, load_count, model=name, version="1") == 1
        info = families["model_service_model_info"]
        served = {s.labels["model"]: s for s in info.samples}
        assert set(served) == {IRIS, DIABETES, "breast-cancer-classifier"}
        model = load(ModelStore(store_dir), IRIS, 1)
        assert served[IRIS].labels == {
            "model": IRIS,
            "version": "1",
            "sklearn_version": model.metadata["environment"]["scikit-learn"],
            "backend": "onnxruntime",  # the demo models' ONNX forms serve them
        }
        assert served[IRIS].value == 1
    finally:
        app.extensions["model_service"].registry.stop()

    # In one process prometheus_client also shows <name>_created series, as families of
    # their own in the text format; scrape-time figures of other parts of monitoring may
    # be there too.
    ours = {name: families[name] for name in EXPECTED_FAMILIES if name in families}
    assert {name: f.type for name, f in ours.items()} == EXPECTED_FAMILIES
    for name, family in ours.items():
        assert re.fullmatch(r"model_service_[a-z_]+", name)
        assert family.documentation
        if family.type == "counter":
            assert {s.name for s in family.samples} <= {f"{name}_total", f"{name}_created"}
        if "duration" in name or "load" in name:
            assert name.endswith("_seconds")
        if family.type == "histogram":
            assert not name.endswith("_total")


def test_scrape_collectors_are_added_and_a_failing_one_is_left_out(client):
    def figures():
        family = GaugeMetricFamily("model_service_test_figure", "A figure computed at scrape time.")
        family.add_metric([], 42.0)
        yield family

    def broken():
        raise RuntimeError("cannot compute")

    monitoring = client.application.extensions["model_service.monitoring"]
    monitoring.add_collector(broken)
    monitoring.add_collector(figures)
    families = scrape(client)
    assert value(families, "model_service_test_figure") == 42
    assert "model_service_test_figure" in {f.name for f in monitoring.scrape()}
    # Figures computed at scrape time only: not among what the processes counted.
    assert "model_service_test_figure" not in {f.name for f in monitoring.scrape(computed=False)}


def test_openmetrics_when_the_scraper_asks(client):
    response = client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).rstrip().endswith("# EOF")


def test_worker_starts_are_counted_in_post_fork(client):
    before = value(scrape(client), "model_service_worker_starts_total")
    metrics.worker_started()
    assert value(scrape(client), "model_service_worker_starts_total") == before + 1


def test_metrics_off_records_nothing_and_answers_404(store_dir, client):
    app = create_app({"store": store_dir, "metrics": False})
    try:
        monitoring = app.extensions["model_service.monitoring"]
        assert monitoring.metrics is None
        observers = app.extensions["model_service"].registry.observers
        assert not any(isinstance(getattr(o, "__self__", None), metrics.Metrics) for o in observers)
        # Another app of this process (metrics on) counts none of this one's requests.
        before = scrape(client)
        off = app.test_client()
        assert post(off, f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW]}).status_code == 200
        assert post(off, f"/v1/models/{IRIS}/predict", b"[").status_code == 400
        after = scrape(client)
        for sample in ("model_service_requests_total", "model_service_predictions_total"):
            assert value(after, sample, model=IRIS) == value(before, sample, model=IRIS)
        response = off.get("/metrics")
        assert response.status_code == 404
        assert response.json["error"]["code"] == "metrics_disabled"
        assert monitoring.scrape() == []
    finally:
        app.extensions["model_service.monitoring"].stop()
        app.extensions["model_service"].registry.stop()


# -- the JSON request log ------------------------------------------------------------


def json_lines(caplog) -> list[dict]:
    formatter = logs.JsonFormatter()
    return [json.loads(formatter.format(record)) for record in caplog.records]


def test_one_json_line_per_request_without_feature_values(client, caplog):
    caplog.set_level(logging.INFO)
    secret_value, secret_category = 5.123456789, "very-private-text"
    row = {**IRIS_OBJECT, "sepal_length_cm": secret_value}
    response = post(
        client,
        f"/v1/models/{IRIS}/predict",
        {"instances": [row, row]},
        headers={"X-Request-ID": "log-1"},
    )
    assert response.status_code == 200
    refused = post(
        client,
        f"/v1/models/{IRIS}/predict",
        {"instances": [{**IRIS_OBJECT, "sepal_width_cm": secret_category}]},
        headers={"X-Request-ID": "log-2"},
    )
    assert refused.status_code == 422

    lines = json_lines(caplog)
    requests = [line for line in lines if line["logger"] == logs.REQUEST_LOGGER]
    assert [line["request_id"] for line in requests] == ["log-1", "log-2"]
    served, failed = requests
    assert {
        k: served[k] for k in ("method", "route", "model", "version", "status", "instances")
    } == {
        "method": "POST",
        "route": PREDICT,
        "model": IRIS,
        "version": "1",
        "status": 200,
        "instances": 2,
    }
    assert (failed["status"], failed["version"], failed["instances"]) == (422, "", 0)
    for line in requests:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"])
        assert isinstance(line["latency_ms"], float) and line["latency_ms"] > 0
        assert isinstance(line["pid"], int)
        assert line["level"] == "INFO"
    text = "\n".join(logs.JsonFormatter().format(r) for r in caplog.records)
    assert str(secret_value) not in text and secret_category not in text


def test_request_log_off(store_dir, caplog):
    caplog.set_level(logging.INFO)
    app = create_app({"store": store_dir, "request_log": False})
    try:
        client = app.test_client()
        assert (
            post(client, f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW]}).status_code == 200
        )
        assert not [r for r in caplog.records if r.name == logs.REQUEST_LOGGER]
        # Metrics are still on.
        assert client.get("/metrics").status_code == 200
    finally:
        app.extensions["model_service"].registry.stop()


def test_application_logs_are_json_too(caplog):
    caplog.set_level(logging.INFO)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("service.test").exception("went wrong for %s", "x")
    (line,) = json_lines(caplog)
    assert line["logger"] == "service.test"
    assert line["level"] == "ERROR"
    assert line["message"] == "went wrong for x"
    assert "ValueError: boom" in line["exc_info"]


@pytest.mark.parametrize(
    "seconds",
    [0.0, 1.5, 1_764_762_123.000001, 1_764_762_123.999999, 1_764_762_124.25, 4_102_444_799.5],
)
def test_request_log_timestamps_match_the_formatters(seconds):
    stamp = logs._SecondStamp()
    # The same second twice (the cached prefix), then the formatter's own rendering.
    stamp(float(int(seconds)))
    fast, slow = stamp(seconds), logs._timestamp(seconds)
    assert fast[:20] == slow[:20]  # date, time and the dot
    assert abs(int(fast[20:26]) - int(slow[20:26])) <= 1  # truncated vs rounded microseconds
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", fast)


@pytest.fixture
def file_request_log(tmp_path, request):
    """Makes a request log whose logger ends in a plain JSON file handler (the fast path),
    and the file it writes; stopped and detached afterwards. Made when the test calls it,
    not in the fixture's setup: a logger made during setup came to the test with pytest's
    capture handlers on it, which take the request log off its fast path."""
    made = []

    def make():
        path = tmp_path / "requests.log"
        logger = logging.getLogger(f"service.requests.{request.node.name}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        handler = logging.FileHandler(path)
        handler.setFormatter(logs.JsonFormatter())
        logger.addHandler(handler)
        request_log = logs.RequestLog(logger)
        made.append((request_log, logger, handler))
        return request_log, path

    yield make
    for request_log, logger, handler in made:
        request_log.stop()
        logger.removeHandler(handler)
        handler.close()


def _lines(path):
    return [json.loads(text) for text in path.read_text().splitlines()]


def test_request_lines_are_written_whole_a_buffer_at_a_time_and_by_the_timer(file_request_log):
    request_log, path = file_request_log()
    sent = 40
    for number in range(sent):
        request_log.write("POST /x 200", {"request_id": f"r{number}", "status": 200})
    # Full buffers went out as the lines came; the rest waits for the timer.
    written = _lines(path)
    assert 0 < len(written) < sent

    def every_line_written() -> list[dict] | None:
        lines = _lines(path)
        return lines if len(lines) >= sent else None

    written = eventually(every_line_written, 10 * logs.FLUSH_INTERVAL, 0.05)
    assert [line["request_id"] for line in written] == [f"r{n}" for n in range(sent)]
    assert {line["pid"] for line in written} == {os.getpid()}
    assert all(
        line["logger"] == request_log.logger.name and line["status"] == 200 for line in written
    )


def test_stopping_the_request_log_writes_what_it_holds(file_request_log):
    request_log, path = file_request_log()
    request_log.write("POST /x 200", {"request_id": "last", "status": 200})
    request_log.stop()
    assert [line["request_id"] for line in _lines(path)] == ["last"]


def test_a_lone_surrogate_never_costs_a_log_line(file_request_log):
    # A client's JSON may spell one as \ud800 and orjson refuses it: written as that text.
    record = logging.makeLogRecord(
        {"name": "service.x", "levelname": "WARNING", "msg": "unknown name %s", "args": ("\ud800",)}
    )
    assert json.loads(logs.JsonFormatter().format(record))["message"] == "unknown name \\ud800"
    request_log, path = file_request_log()
    request_log.write("POST /x 422", {"request_id": "r", "path": "/\udc80"})
    request_log.stop()
    assert _lines(path)[0]["path"] == "/\\udc80"


def test_a_forked_child_writes_only_its_own_lines_even_if_the_lock_was_held(file_request_log):
    request_log, path = file_request_log()
    request_log.write("POST /x 200", {"request_id": "parent", "status": 200})

    def in_child():
        request_log.write("POST /x 200", {"request_id": "child", "status": 200})
        request_log.flush()

    # The parent's timer may hold the lock at the very moment of a fork.
    with request_log._lock:
        assert run_in_child(in_child) == 0
    request_log.stop()
    assert sorted(line["request_id"] for line in _lines(path)) == ["child", "parent"]

"""The status page (GET / and /status) and the JSON it polls (GET /v1/status)."""

from __future__ import annotations

import re

import pytest

from service.keys import KeyRing
from service.store import ModelStore
from tests.support import DEMO_MODELS, IRIS, IRIS_OBJECT

SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def status(client) -> dict:
    response = client.get("/v1/status")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()


def model(body: dict, name: str) -> dict:
    (found,) = [m for m in body["models"] if m["name"] == name]
    return found


@pytest.mark.parametrize("path", ["/", "/status"])
def test_page_shows_every_served_model(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    for name in DEMO_MODELS:
        assert f'data-model="{name}"' in html
    # Scores from metadata.yaml are in the page itself, before any script runs.
    assert "f1_macro" in html and "roc_auc" in html and "r2" in html
    assert 'data-field="requests-total"' in html


def test_page_policy_allows_only_inline_code_and_this_origin(client):
    response = client.get("/status")
    policy = response.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'unsafe-inline'"
    assert directives["style-src"] == "'unsafe-inline'"
    assert directives["connect-src"] == "'self'"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_page_loads_nothing_from_elsewhere(client):
    html = client.get("/").get_data(as_text=True)
    references = re.findall(r"""(?:src|href|action)\s*=\s*["']?([^"'\s>]+)""", html)
    assert [r for r in references if re.match(r"(?:[a-z]+:)?//", r, re.I)] == []
    assert "@import" not in html and "url(" not in html
    # The only absolute URL is the SVG namespace the script creates elements in.
    assert set(re.findall(r"[a-z]+://[^\s\"'<>)]+", html, re.I)) == {SVG_NAMESPACE}
    # The script polls this origin only.
    assert re.findall(r"""fetch\(\s*["']([^"']+)""", html) == ["/v1/status"]


def test_page_escapes_what_metadata_says(store_dir, tmp_path):
    import yaml

    from service import create_app

    path = store_dir / "iris-classifier" / "1" / "metadata.yaml"
    metadata = yaml.safe_load(path.read_text())
    metadata["description"] = "<script>alert(1)</script> & more"
    path.write_text(yaml.safe_dump(metadata, sort_keys=False))
    # metadata.yaml is not part of the pickle's checksum, and the models load from the
    # registry; the page reads the description from the loaded model's metadata.
    app = create_app({"store": store_dir, "state_dir": tmp_path / "monitoring"})
    try:
        html = app.test_client().get("/").get_data(as_text=True)
    finally:
        app.extensions["model_service"].registry.stop()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html
    assert "<script>alert(1)" not in html


def test_status_json_describes_the_demo_models(client, store_dir):
    body = status(client)
    assert body["traffic_available"] is True
    assert body["traffic_error"] is None
    assert body["refresh_seconds"] > 0 and body["window_seconds"] >= 60
    assert body["drift_threshold"] == pytest.approx(0.2)
    assert isinstance(body["server_timestamp"], float)
    assert body["server_time"].endswith("+00:00")
    assert sorted(m["name"] for m in body["models"]) == sorted(DEMO_MODELS)
    store = ModelStore(store_dir)
    expected_metric = {
        "iris-classifier": "f1_macro",
        "breast-cancer-classifier": "roc_auc",
        "diabetes-regressor": "r2",
    }
    for name in DEMO_MODELS:
        m = model(body, name)
        scores = store.metadata(name, 1)["scores"]
        assert m["aliases"] == {"production": 1}
        assert m["serving_version"] == 1
        assert m["served_versions"] == [1]
        assert m["default_alias"] == "production"
        assert m["primary_metric"] == expected_metric[name]
        assert m["test_score"] == pytest.approx(scores["test"]["model"][m["primary_metric"]])
        assert m["baseline_score"] == pytest.approx(scores["test"]["baseline"][m["primary_metric"]])
        assert m["test_score"] > m["baseline_score"]
        assert m["description"] == store.metadata(name, 1)["description"]
        assert m["task"] == ("regression" if name == "diabetes-regressor" else "classification")
        assert [v["version"] for v in m["versions"]] == [1]
        assert m["versions"][0]["aliases"] == ["production"]
        traffic = m["traffic"]
        assert set(traffic["requests"]) >= {"total", "2xx", "4xx", "5xx"}
        assert set(traffic["latency"]) == {"buckets", "count", "sum"}
        assert m["quality"] is not None and m["drift"] is not None
    iris = model(body, "iris-classifier")
    assert iris["test_score"] == pytest.approx(0.967, abs=0.001)
    assert iris["baseline_score"] == pytest.approx(0.227, abs=0.001)


def test_traffic_figures_count_the_requests_sent(client):
    before = status(client)
    for _ in range(3):
        response = client.post(f"/v1/models/{IRIS}/predict", json={"instances": [IRIS_OBJECT]})
        assert response.status_code == 200
    bad = client.post(f"/v1/models/{IRIS}/predict", json={"instances": [{"nope": 1}]})
    assert bad.status_code == 422
    # A model's card or metadata is not prediction traffic.
    assert client.get("/v1/models/iris-classifier").status_code == 200
    after = status(client)
    assert after["server_timestamp"] > before["server_timestamp"]

    old = model(before, "iris-classifier")["traffic"]
    new = model(after, "iris-classifier")["traffic"]
    assert new["requests"]["total"] - old["requests"]["total"] == 4
    assert new["requests"]["2xx"] - old["requests"]["2xx"] == 3
    assert new["requests"]["4xx"] - old["requests"]["4xx"] == 1
    assert new["requests"]["5xx"] == old["requests"]["5xx"]
    # Counters are cumulative for the process (other tests may have sent traffic before):
    # compare what changed, route by route.
    changed = {
        route: count - old["routes"].get(route, 0)
        for route, count in new["routes"].items()
        if count != old["routes"].get(route, 0)
    }
    assert changed == {"/v1/models/<model_ref>/predict": 4}
    assert new["latency"]["count"] - old["latency"]["count"] == 4
    assert new["latency"]["sum"] > old["latency"]["sum"]
    buckets = new["latency"]["buckets"]
    bounds = [b for b, _ in buckets]
    assert bounds[-1] is None  # +Inf
    assert bounds[:-1] == sorted(bounds[:-1])
    counts = [c for _, c in buckets]
    assert counts == sorted(counts)  # cumulative
    assert counts[-1] == new["latency"]["count"]
    assert sum(new["predictions"].values()) - sum(old["predictions"].values()) == 3
    assert new["predictions"]["setosa"] - old["predictions"].get("setosa", 0) == 3

    # The other models saw none of it.
    for name in ("breast-cancer-classifier", "diabetes-regressor"):
        assert (
            model(after, name)["traffic"]["requests"] == model(before, name)["traffic"]["requests"]
        )


def test_live_quality_and_drift_follow_feedback_and_rows(client, store_dir):
    shifted = dict(IRIS_OBJECT, petal_length_cm=30.0, petal_width_cm=20.0)
    response = client.post(f"/v1/models/{IRIS}/predict", json={"instances": [shifted] * 20})
    assert response.status_code == 200
    request_id = response.get_json()["request_id"]
    feedback = [{"request_id": request_id, "index": i, "label": "setosa"} for i in range(20)]
    key = KeyRing(store_dir).create("labeller", ["feedback"])
    answer = client.post(
        f"/v1/models/{IRIS}/feedback",
        json=feedback,
        headers={"Authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 200

    iris = model(status(client), "iris-classifier")
    (quality,) = iris["quality"]["versions"]
    assert quality["version"] == 1
    assert quality["metric"] == "accuracy"
    assert quality["count"] == 20
    assert quality["value"] == pytest.approx(0.0)  # every shifted row is predicted virginica
    assert quality["below_test_score"] is True
    assert quality["test_score"] > 0.9

    # 20 rows, however far off, are too few to judge drift on (drift_min_rows, 100): the
    # status and the drift API say so instead of a PSI.
    assert iris["drift"]["min_rows"] == 100
    (drift,) = iris["drift"]["versions"]
    assert drift["rows"] == 20
    assert drift["flagged"] == []
    assert drift["too_few_rows"] == sorted(IRIS_OBJECT)
    features = {f["name"]: f for f in drift["features"]}
    assert list(features) == list(IRIS_OBJECT)
    for feature in features.values():
        assert feature["status"] == "too_few_rows"
        assert feature["message"] == "too few rows (20 of 100)"
        assert (feature["flagged"], feature["psi"], feature["p_value"]) == (False, None, None)
    assert len(features["petal_length_cm"]["live"]) == len(features["petal_length_cm"]["training"])
    api = client.get(f"/v1/models/{IRIS}/drift").get_json()
    (version,) = api["versions"]
    assert version["features"]["petal_length_cm"]["message"] == "too few rows (20 of 100)"
    assert (api["min_rows"], api["alpha"]) == (100, 0.01)

    # 100 more: enough rows, and the shift is far beyond sampling noise.
    more = client.post(f"/v1/models/{IRIS}/predict", json={"instances": [shifted] * 100})
    assert more.status_code == 200
    (drift,) = model(status(client), "iris-classifier")["drift"]["versions"]
    features = {f["name"]: f for f in drift["features"]}
    assert drift["rows"] == 120 and drift["too_few_rows"] == []
    assert {"petal_length_cm", "petal_width_cm"} <= set(drift["flagged"])
    petal = features["petal_length_cm"]
    assert (petal["status"], petal["flagged"]) == ("drifted", True)
    assert petal["psi"] > 0.2 and petal["p_value"] < 0.01 / 4


def test_without_metrics_the_page_still_shows_models_and_scores(store_dir, tmp_path):
    from service import create_app

    app = create_app({"store": store_dir, "state_dir": tmp_path / "monitoring", "metrics": False})
    try:
        client = app.test_client()
        body = status(client)
        page = client.get("/").get_data(as_text=True)
    finally:
        app.extensions["model_service"].registry.stop()
    assert body["traffic_available"] is False
    assert "metrics are turned off" in body["traffic_error"]
    assert sorted(m["name"] for m in body["models"]) == sorted(DEMO_MODELS)
    assert all(m["traffic"] is None for m in body["models"])
    assert model(body, "iris-classifier")["test_score"] == pytest.approx(0.967, abs=0.001)
    assert "no traffic data" in page
    for name in DEMO_MODELS:
        assert f'data-model="{name}"' in page


def test_a_failing_scrape_never_fails_the_status(client, monkeypatch):
    from service.monitoring import metrics

    def broken(self, collectors=(), **options):
        raise RuntimeError("the metrics directory is gone")

    monkeypatch.setattr(metrics.Metrics, "scrape", broken)
    body = status(client)
    assert body["traffic_available"] is False
    assert body["traffic_error"] == "cannot read the metrics: RuntimeError"
    assert sorted(m["name"] for m in body["models"]) == sorted(DEMO_MODELS)


def test_status_answer_fits_its_documented_schema(client):
    import jsonschema

    client.post(f"/v1/models/{IRIS}/predict", json={"instances": [IRIS_OBJECT]})
    document = client.get("/openapi.json").get_json()
    operation = document["paths"]["/v1/status"]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator(schema).validate(status(client))
    operation = document["paths"]["/v1/models/{name}/drift"]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    drift = client.get(f"/v1/models/{IRIS}/drift").get_json()
    assert drift["versions"][0]["features"]["sepal_width_cm"]["status"] == "too_few_rows"
    jsonschema.Draft202012Validator(schema).validate(drift)
    for path in ("/", "/status"):
        assert "text/html" in document["paths"][path]["get"]["responses"]["200"]["content"]

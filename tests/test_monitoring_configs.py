"""deploy/monitoring: the Prometheus config, the alert rules (and their unit tests) and the
Grafana dashboard are valid, and every PromQL expression in them names only metrics the
service exports, so renaming a metric fails here instead of on an operator's dashboard.

promtool comes with Debian's ``prometheus`` package; without it the promtool checks skip,
except in CI (``CI`` or ``MODEL_SERVICE_REQUIRE_NGINX`` set), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from service.runtime.model import load
from service.store import ModelStore
from service.training.demo import demo_specs

REPO_ROOT = Path(__file__).resolve().parent.parent
MONITORING = REPO_ROOT / "deploy" / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMTOOL_TIMEOUT_S = 60

# What /metrics exports (service/monitoring/metrics.py and live.py), and Prometheus's own
# `up`. Histograms are queried through their _bucket, _sum and _count series.
HISTOGRAMS = {
    "model_service_request_duration_seconds",
    "model_service_instances_per_request",
    "model_service_model_load_seconds",
    "model_service_prediction_value",
}
SERIES = {
    "model_service_requests_total",
    "model_service_validation_failures_total",
    "model_service_model_info",
    "model_service_predictions_total",
    "model_service_worker_starts_total",
    "model_service_live_accuracy",
    "model_service_live_class_recall",
    "model_service_live_mae",
    "model_service_feedback_total",
    "model_service_live_quality_below_test",
    "model_service_feature_drift_psi",
    "model_service_feature_drift_p_value",
    "model_service_feature_drift_flagged",
    "model_service_feature_drift_too_few_rows",
    "up",
}
KNOWN_METRICS = SERIES | {
    f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
}

# Words of PromQL that are neither functions (followed by "(") nor metric names.
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
}
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()")
# Grafana variables replaced with something PromQL accepts, to check panels with promtool.
GRAFANA_SUBSTITUTES = {"$__rate_interval": "5m", "$__interval": "1m", "$model": ".+"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label
    matchers, ranges, grouping clauses, Grafana variables, function names and keywords
    are taken out."""
    text = STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = GROUPING.sub(" ", text)
    text = GRAFANA_VARIABLE.sub(" ", text)
    return {name for name in IDENTIFIER.findall(text) if name.lower() not in PROMQL_KEYWORDS}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "histogram_quantile(0.99, sum by (le, model) (rate("
            'model_service_request_duration_seconds_bucket{model=~"$model"}[$__rate_interval])))',
            {"model_service_request_duration_seconds_bucket"},
        ),
        (
            'sum by (instance) (rate(model_service_requests_total{status=~"5.."}[5m])) / '
            "sum by (instance) (rate(model_service_requests_total[5m])) > 0.05 "
            "and on (instance) up offset 1h",
            {"model_service_requests_total", "up"},
        ),
        ("model_service_feature_drift_flaged == 1", {"model_service_feature_drift_flaged"}),
        ("label_values(model_service_model_info, model)", {"model_service_model_info", "model"}),
        ("1e3 * vector(1) > bool 2", set()),
    ],
)
def test_metric_names_finds_every_selected_metric(expr, names):
    assert metric_names(expr) == names


def test_known_metrics_are_what_the_service_exports(client, store_dir):
    """The list above against a real scrape: every name in it (but Prometheus's `up`) is a
    series family /metrics declares, so renaming a metric in the code fails here too."""
    store = ModelStore(store_dir)
    for spec in demo_specs():
        # One prediction per demo model: the regressor's value histogram appears with it.
        rows = load(store, spec.name, 1).metadata["golden"]["instances"]
        answer = client.post(f"/v1/models/{spec.name}/predict", json={"instances": rows})
        assert answer.status_code == 200, answer.get_data(as_text=True)
    text = client.get("/metrics").get_data(as_text=True)
    exported = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
        exported |= {name + suffix for suffix in suffixes}
    assert KNOWN_METRICS - {"up"} <= exported, sorted(KNOWN_METRICS - {"up"} - exported)


def check_known(where: str, expr: str) -> set[str]:
    names = metric_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    unknown = names - KNOWN_METRICS
    assert not unknown, f"{where}: unknown metric(s) {sorted(unknown)} in {expr!r}"
    return names


# -- the Grafana dashboard -------------------------------------------------------------


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.extend(panel.get("panels", []) if panel["type"] == "row" else [panel])
    return panels


def dashboard_exprs() -> list[tuple[str, str]]:
    return [
        (f"panel {panel['title']!r} target {target['refId']}", target["expr"])
        for panel in dashboard_panels(load_dashboard())
        for target in panel["targets"]
    ]


def test_dashboard_has_datasource_and_model_variables():
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query"
    assert model["datasource"]["uid"] == "${datasource}"
    query = model["query"]["query"] if isinstance(model["query"], dict) else model["query"]
    assert query.startswith("label_values(")
    assert check_known("variable model", query.removeprefix("label_values(").split(",")[0])


def test_dashboard_panels_query_known_metrics_through_the_datasource_variable():
    dashboard = load_dashboard()
    panels = dashboard_panels(dashboard)
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    used: set[str] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            used |= check_known(f"panel {panel['title']!r}", target["expr"])
    # What the panels are for: traffic, errors, latency, batch sizes, refusals, classes,
    # regression values, the loaded models, live quality, drift and worker starts.
    assert {
        "model_service_requests_total",
        "model_service_request_duration_seconds_bucket",
        "model_service_instances_per_request_bucket",
        "model_service_validation_failures_total",
        "model_service_predictions_total",
        "model_service_prediction_value_bucket",
        "model_service_model_info",
        "model_service_live_accuracy",
        "model_service_live_mae",
        "model_service_feature_drift_psi",
        "model_service_worker_starts_total",
    } <= used


# -- the alert rules -------------------------------------------------------------------

EXPECTED_ALERTS = {
    "ModelServiceHighErrorRate",
    "ModelServiceClientErrorSpike",
    "ModelServiceHighLatencyP99",
    "ModelServiceFeatureDrift",
    "ModelServiceLiveQualityBelowTest",
    "ModelServiceWorkerRestartStorm",
    "ModelServiceTargetDown",
}


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_are_complete_and_query_known_metrics():
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        where = f"alert {rule['alert']}"
        assert rule.get("for"), f"{where}: no 'for'"
        assert rule["labels"]["severity"] in {"critical", "warning"}, where
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], where
        check_known(where, rule["expr"])


def test_prometheus_config_scrapes_metrics_and_loads_the_alerts():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert config["global"]["scrape_interval"] == "15s"
    assert any(r.get("target_label") == "instance" for r in job["relabel_configs"])


# -- promtool --------------------------------------------------------------------------


def promtool_required() -> bool:
    return bool(os.environ.get("MODEL_SERVICE_REQUIRE_NGINX") or os.environ.get("CI"))


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        message = "promtool is not installed (apt-get install -y prometheus)"
        if promtool_required():
            pytest.fail(f"{message}, and CI requires it")
        pytest.skip(message)
    return binary


def run_promtool(promtool: str, *args: str) -> str:
    done = subprocess.run(
        [promtool, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_promtool_accepts_the_alert_rules(promtool):
    output = run_promtool(promtool, "check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in output


def test_promtool_accepts_the_prometheus_config(promtool):
    output = run_promtool(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert "is valid prometheus config file syntax" in output
    assert "1 rule files found" in output


def test_promtool_alert_unit_tests_pass(promtool):
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", str(ALERTS_TEST))


def test_promtool_parses_every_dashboard_expression(promtool, tmp_path):
    """Each panel's query, with Grafana's variables filled in, as a recording rule: promtool
    parses every expression and fails on a PromQL syntax error."""
    rules = []
    for index, (_, expr) in enumerate(dashboard_exprs()):
        for variable, value in GRAFANA_SUBSTITUTES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:panel_{index}", "expr": expr})
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    output = run_promtool(promtool, "check", "rules", str(rules_file))
    assert f"SUCCESS: {len(rules)} rules found" in output

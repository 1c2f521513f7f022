"""The status page: GET / and GET /status (HTML), and GET /v1/status (the JSON it polls).

/v1/status answers facts only: what is served (names, aliases, versions, the scores in
metadata.yaml next to the baseline), the *cumulative* traffic figures of every served model
as Prometheus counts them (requests by status class, the latency histogram's buckets, count
and sum, predictions by class), live quality, drift, and the report of the experiment a
model runs (GET /v1/admin/experiments/<name>/report, from this host's evidence).

Windows ("over the last minutes") are computed by the page, not here. The counters are
cumulative, so a rate needs two readings: the page keeps the snapshots it polled over the
last five minutes and computes each figure from the difference between the oldest and the
newest reading in that window — a request rate is Δcount / Δt (server clock), an error rate
Δerrors / Δrequests, a percentile is read from the Δ of the histogram's buckets and
interpolated linearly within its bucket. The server keeps no history because under Gunicorn
each poll may land on another worker: a per-process ring of snapshots would hold a different
subset of readings in each worker, while the counters themselves are the same everywhere
(scrape() aggregates every worker), so the browser's own series is the consistent one.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

from flask import Blueprint, Response, current_app, render_template

from service.api import json_response, state
from service.experiments import evidence, report

log = logging.getLogger(__name__)

bp = Blueprint("status", __name__)

# How often the page polls /v1/status, and how much history it keeps to compute windows.
REFRESH_SECONDS = 3
WINDOW_SECONDS = 300

# The page loads nothing from anywhere: its script and style are inline, it draws with
# inline SVG, and it may only talk back to this origin.
STATUS_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

SCORES_EXTENSION = "model_service.status_scores"

REQUESTS_TOTAL = "model_service_requests_total"
DURATION = "model_service_request_duration_seconds"
PREDICTIONS_TOTAL = "model_service_predictions_total"
# The traffic figures are those of the prediction routes (native, MLflow, v2; the route
# label is the URL rule): a model's card or metadata page is not what its latency means.
PREDICTION_ROUTE_ENDINGS = ("/predict", "/invocations", "/infer")


@bp.get("/")
@bp.get("/status")
def status_page():
    models = [_model_static(name) for name in state().registry.served_names()]
    html = render_template(
        "status.html",
        models=models,
        refresh_seconds=REFRESH_SECONDS,
        window_seconds=WINDOW_SECONDS,
    )
    return Response(html, mimetype="text/html", headers=STATUS_HEADERS)


@bp.get("/v1/status")
def status_json():
    service = state()
    names = service.registry.served_names()
    traffic, traffic_error = _traffic(names)
    now = time.time()
    body: dict[str, Any] = {
        "server_time": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="milliseconds"),
        "server_timestamp": now,
        "refresh_seconds": REFRESH_SECONDS,
        "window_seconds": WINDOW_SECONDS,
        "drift_threshold": service.settings.drift_threshold,
        "quality_tolerance": service.settings.quality_tolerance,
        "traffic_available": traffic is not None,
        "traffic_error": traffic_error,
        "models": [],
    }
    for name in names:
        model = _model_static(name)
        model["traffic"] = traffic.get(name, _empty_traffic()) if traffic is not None else None
        model["quality"] = _quality(name)
        model["drift"] = _drift(name)
        model["experiment"] = _experiment(name)
        body["models"].append(model)
    return json_response(body, headers={"Cache-Control": "no-store"})


# -- what is served ---------------------------------------------------------------------


def _model_static(name: str) -> dict[str, Any]:
    """Name, aliases, versions and the metadata scores of each version."""
    service = state()
    default_alias = service.settings.default_alias
    try:
        aliases = service.store.aliases(name)
        versions = service.store.versions(name)
    except Exception as exc:  # a model removed between served_names() and now
        log.warning("status: cannot read %s: %s", name, exc)
        aliases, versions = {}, []
    serving = service.registry.aliases(name)
    loaded = {m.version for m in service.registry.loaded() if m.name == name}
    default_version = serving.get(default_alias, aliases.get(default_alias))
    rows = []
    for version in versions:
        scores = _version_scores(name, version)
        rows.append(
            {
                "version": version,
                "aliases": sorted(a for a, v in aliases.items() if v == version),
                "loaded": version in loaded,
                **scores,
            }
        )
    served_versions = sorted(set(aliases.values()) | loaded)
    default = next((r for r in rows if r["version"] == default_version), None)
    return {
        "name": name,
        "description": default["description"] if default else None,
        "task": default["task"] if default else None,
        "default_alias": default_alias,
        "serving_version": default_version,
        "aliases": aliases,
        "served_versions": served_versions,
        "primary_metric": default["primary_metric"] if default else None,
        "test_score": default["test_score"] if default else None,
        "baseline_score": default["baseline_score"] if default else None,
        "versions": [r for r in rows if r["version"] in served_versions],
    }


def _version_scores(name: str, version: int) -> dict[str, Any]:
    """The parts of a version's metadata the page shows. A published version never
    changes, so each is read once per process."""
    cache: dict[tuple[str, int], dict[str, Any]] = current_app.extensions.setdefault(
        SCORES_EXTENSION, {}
    )
    key = (name, version)
    found = cache.get(key)
    if found is not None:
        return found
    loaded = next(
        (m for m in state().registry.loaded() if m.name == name and m.version == version), None
    )
    try:
        metadata = loaded.metadata if loaded else state().store.metadata(name, version)
    except Exception as exc:
        log.warning("status: cannot read metadata of %s@%s: %s", name, version, exc)
        return {
            "description": None,
            "task": None,
            "created_at": None,
            "primary_metric": None,
            "test_score": None,
            "baseline_score": None,
        }
    scores = metadata.get("scores") or {}
    primary = scores.get("primary_metric")
    test = scores.get("test") or {}
    found = {
        "description": metadata.get("description"),
        "task": metadata.get("task"),
        "created_at": metadata.get("created_at"),
        "primary_metric": primary,
        "test_score": _number((test.get("model") or {}).get(primary)),
        "baseline_score": _number((test.get("baseline") or {}).get(primary)),
    }
    cache[key] = found
    return found


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# -- traffic: the cumulative Prometheus figures --------------------------------------------


def _empty_traffic() -> dict[str, Any]:
    return {
        "requests": {"total": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0},
        "by_version": {},
        "routes": {},
        "latency": {"buckets": [], "count": 0, "sum": 0.0},
        "predictions": {},
    }


def _traffic(names: list[str]) -> tuple[dict[str, dict[str, Any]] | None, str | None]:
    """Per served model, over its prediction routes: requests by status class (and by
    version, and by route), the latency histogram summed over those routes (cumulative
    counts by upper bound), and predictions by class."""
    if not state().settings.metrics:
        return None, "metrics are turned off (setting metrics)"
    try:
        from service.monitoring import metrics
    except ImportError:
        return None, "the metrics module is not installed"
    try:
        # Counted traffic only: live quality and drift are read below, once.
        families = list(metrics.scrape(computed=False))
    except Exception as exc:  # monitoring never fails the page
        log.warning("status: cannot read the metrics: %s", exc)
        return None, f"cannot read the metrics: {type(exc).__name__}"
    served = set(names)
    out = {name: _empty_traffic() for name in names}
    buckets: dict[str, dict[float, float]] = {name: {} for name in names}
    for family in families:
        for sample in family.samples:
            labels = sample.labels
            model = labels.get("model")
            if model not in served:
                continue
            route = labels.get("route")
            if route is not None and not route.endswith(PREDICTION_ROUTE_ENDINGS):
                continue
            if route is not None and sample.name == REQUESTS_TOTAL:
                out[model]["routes"][route] = out[model]["routes"].get(route, 0) + int(sample.value)
            entry = out[model]
            if sample.name == REQUESTS_TOTAL:
                status_class = _status_class(labels.get("status", ""))
                count = int(sample.value)
                entry["requests"]["total"] += count
                entry["requests"][status_class] = entry["requests"].get(status_class, 0) + count
                version = labels.get("version") or "none"
                per_version = entry["by_version"].setdefault(version, {"total": 0})
                per_version["total"] += count
                per_version[status_class] = per_version.get(status_class, 0) + count
            elif sample.name == DURATION + "_bucket":
                bound = float(labels.get("le", "inf"))
                buckets[model][bound] = buckets[model].get(bound, 0) + sample.value
            elif sample.name == DURATION + "_count":
                entry["latency"]["count"] += int(sample.value)
            elif sample.name == DURATION + "_sum":
                entry["latency"]["sum"] += sample.value
            elif sample.name == PREDICTIONS_TOTAL:
                label = str(labels.get("class", ""))
                entry["predictions"][label] = entry["predictions"].get(label, 0) + int(sample.value)
    for name in names:
        # Upper bounds ascending, +Inf last (as null: JSON has no infinity).
        out[name]["latency"]["buckets"] = [
            [None if bound == float("inf") else bound, int(count)]
            for bound, count in sorted(buckets[name].items())
        ]
    return out, None


def _status_class(status: str) -> str:
    status = str(status)
    return f"{status[0]}xx" if len(status) == 3 and status[0] in "12345" else "other"


# -- live quality and drift -----------------------------------------------------------------

_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(what: str, exc: BaseException) -> None:
    with _warned_lock:
        if what in _warned:
            return
        _warned.add(what)
    log.warning("status: %s unavailable: %s", what, exc)


# Where service.api.monitoring keeps this app's monitor (feedback joins, drift counts).
MONITOR_EXTENSION = "model_service.monitoring"


def _monitor():
    monitor = current_app.extensions.get(MONITOR_EXTENSION)
    if monitor is not None:
        return monitor
    try:
        from service.monitoring import live
    except ImportError:
        return None
    return live.active()


def _quality(name: str) -> dict[str, Any] | None:
    """Live quality per version (GET /v1/models/<name>/performance), one figure each."""
    monitor = _monitor()
    if monitor is None:
        return None
    try:
        report = monitor.performance(name)
    except Exception as exc:  # monitoring never fails the page
        _warn_once("live quality", exc)
        return None
    versions = []
    for entry in report.get("versions", []):
        metric = entry.get("metric")
        live = entry.get("live") or {}
        test = entry.get("test") or {}
        versions.append(
            {
                "version": entry.get("version"),
                "aliases": entry.get("aliases", []),
                "metric": metric,
                "value": live.get(metric),
                "test_score": test.get(metric),
                "threshold": entry.get("threshold"),
                "count": entry.get("count", 0),
                "feedback_total": entry.get("feedback_total", 0),
                "below_test_score": bool(entry.get("below_test_score")),
                "class_recall": live.get("class_recall"),
            }
        )
    return {"window": report.get("window"), "versions": versions}


def _drift(name: str) -> dict[str, Any] | None:
    """Drift per version and feature (GET /v1/models/<name>/drift): PSI, the p-value, the
    verdict ("too few rows (n of N)" until a feature has enough values), and both
    distributions over the same bins."""
    monitor = _monitor()
    if monitor is None:
        return None
    try:
        report = monitor.drift(name)
    except Exception as exc:
        _warn_once("drift", exc)
        return None
    versions = []
    for entry in report.get("versions", []):
        features = [
            {
                "name": feature,
                "psi": figures.get("psi"),
                "p_value": figures.get("p_value"),
                "status": figures.get("status"),
                "message": figures.get("message"),
                "flagged": bool(figures.get("flagged")),
                "count": figures.get("count", 0),
                "min_rows": figures.get("min_rows"),
                "bins": figures.get("bins", []),
                "live": figures.get("live", []),
                "training": figures.get("training", []),
            }
            for feature, figures in (entry.get("features") or {}).items()
        ]
        versions.append(
            {
                "version": entry.get("version"),
                "aliases": entry.get("aliases", []),
                "rows": entry.get("rows", 0),
                "flagged": entry.get("flagged", []),
                "too_few_rows": entry.get("too_few_rows", []),
                "features": features,
            }
        )
    return {
        "window_minutes": report.get("window_minutes"),
        "threshold": report.get("threshold"),
        "alpha": report.get("alpha"),
        "min_rows": report.get("min_rows"),
        "versions": versions,
    }


def _experiment(name: str) -> dict[str, Any] | None:
    """The report of the experiment this process applies to ``name`` (None without one),
    from this host's evidence: GET /v1/admin/experiments/<name>/report."""
    service = state()
    experiment = service.registry.experiment(name)
    if experiment is None:
        return None
    try:
        totals = evidence.local_totals(service.settings, name, experiment.id)
        task = report.task_of(service.store, name, totals)
        return report.build(
            experiment, totals, task, evidence.local_shadow(service.settings, experiment)
        )
    except Exception as exc:  # the page never fails for a figure
        _warn_once("experiment report", exc)
        return None

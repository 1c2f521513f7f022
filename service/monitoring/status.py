"""What the status page shows, gathered: what is served, traffic, live quality, drift and
the report of the experiment a model runs (``service.api.status`` only renders it).

The figures are facts only: what is served (names, aliases, versions, the scores in
metadata.yaml next to the baseline), the *cumulative* traffic figures of every served
model as Prometheus counts them (requests by status class, the latency histogram's
buckets, count and sum, predictions by class), live quality, drift, and the experiment's
report (from this host's evidence). Windows ("over the last minutes") are the page's to
compute from the snapshots it polls (see ``service.api.status``).

A figure that cannot be read is None (and logged once), never a failed page.

Nothing here imports Flask.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from service.experiments import evidence, report

if TYPE_CHECKING:
    from service.config import Settings
    from service.monitoring.hub import Monitoring
    from service.runtime.registry import ModelRegistry
    from service.store import ModelStore

log = logging.getLogger(__name__)

REQUESTS_TOTAL = "model_service_requests_total"
DURATION = "model_service_request_duration_seconds"
PREDICTIONS_TOTAL = "model_service_predictions_total"
# The traffic figures are those of the prediction routes (native, MLflow, v2; the route
# label is the URL rule): a model's card or metadata page is not what its latency means.
PREDICTION_ROUTE_ENDINGS = ("/predict", "/invocations", "/infer")

_NO_SCORES = {
    "description": None,
    "task": None,
    "created_at": None,
    "primary_metric": None,
    "test_score": None,
    "baseline_score": None,
}


class StatusView:
    """The status figures of one app: its settings, store, registry and monitoring."""

    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        registry: ModelRegistry,
        monitoring: Monitoring,
    ):
        self.settings = settings
        self.store = store
        self.registry = registry
        self.monitoring = monitoring
        # A published version never changes: its scores are read once per app.
        self._scores: dict[tuple[str, int], dict[str, Any]] = {}
        self._warned: set[str] = set()
        self._warned_lock = threading.Lock()

    # -- the page and its poll -----------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """What is served, for the page's first render."""
        return [self.model(name) for name in self.registry.served_names()]

    def snapshot(self, *, refresh_seconds: float, window_seconds: float) -> dict[str, Any]:
        """The body of GET /v1/status."""
        names = self.registry.served_names()
        traffic, traffic_error = self.traffic(names)
        now = time.time()
        body: dict[str, Any] = {
            "server_time": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "server_timestamp": now,
            "refresh_seconds": refresh_seconds,
            "window_seconds": window_seconds,
            "drift_threshold": self.settings.drift_threshold,
            "quality_tolerance": self.settings.quality_tolerance,
            "traffic_available": traffic is not None,
            "traffic_error": traffic_error,
            "models": [],
        }
        for name in names:
            model = self.model(name)
            model["traffic"] = traffic.get(name, empty_traffic()) if traffic is not None else None
            model["quality"] = self.quality(name)
            model["drift"] = self.drift(name)
            model["experiment"] = self.experiment(name)
            body["models"].append(model)
        return body

    # -- what is served -------------------------------------------------------------------

    def model(self, name: str) -> dict[str, Any]:
        """Name, aliases, versions and the metadata scores of each version."""
        default_alias = self.settings.default_alias
        try:
            aliases = self.store.aliases(name)
            versions = self.store.versions(name)
        except Exception as exc:  # a model removed between served_names() and now
            log.warning("status: cannot read %s: %s", name, exc)
            aliases, versions = {}, []
        serving = self.registry.aliases(name)
        loaded = {m.version for m in self.registry.loaded() if m.name == name}
        default_version = serving.get(default_alias, aliases.get(default_alias))
        rows = []
        for version in versions:
            rows.append(
                {
                    "version": version,
                    "aliases": sorted(a for a, v in aliases.items() if v == version),
                    "loaded": version in loaded,
                    **self.version_scores(name, version),
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

    def version_scores(self, name: str, version: int) -> dict[str, Any]:
        """The parts of a version's metadata the page shows."""
        key = (name, version)
        found = self._scores.get(key)
        if found is not None:
            return found
        loaded = next(
            (m for m in self.registry.loaded() if m.name == name and m.version == version), None
        )
        try:
            metadata = loaded.metadata if loaded else self.store.metadata(name, version)
        except Exception as exc:
            log.warning("status: cannot read metadata of %s@%s: %s", name, version, exc)
            return dict(_NO_SCORES)
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
        self._scores[key] = found
        return found

    # -- traffic: the cumulative Prometheus figures ----------------------------------------

    def traffic(self, names: list[str]) -> tuple[dict[str, dict[str, Any]] | None, str | None]:
        """Per served model, over its prediction routes: requests by status class (and by
        version, and by route), the latency histogram summed over those routes
        (cumulative counts by upper bound), and predictions by class; or None and why."""
        if self.monitoring.metrics is None:
            return None, "metrics are turned off (setting metrics)"
        try:
            # Counted traffic only: live quality and drift are read below, once.
            families = self.monitoring.scrape(computed=False)
        except Exception as exc:  # monitoring never fails the page
            log.warning("status: cannot read the metrics: %s", exc)
            return None, f"cannot read the metrics: {type(exc).__name__}"
        return traffic_of(families, names), None

    # -- live quality, drift, the experiment -------------------------------------------------

    def quality(self, name: str) -> dict[str, Any] | None:
        """Live quality per version (GET /v1/models/<name>/performance), one figure each."""
        try:
            found = self.monitoring.live.performance(name)
        except Exception as exc:  # monitoring never fails the page
            self._warn_once("live quality", exc)
            return None
        versions = []
        for entry in found.get("versions", []):
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
        return {"window": found.get("window"), "versions": versions}

    def drift(self, name: str) -> dict[str, Any] | None:
        """Drift per version and feature (GET /v1/models/<name>/drift): PSI, the p-value,
        the verdict ("too few rows (n of N)" until a feature has enough values), and both
        distributions over the same bins."""
        try:
            found = self.monitoring.live.drift(name)
        except Exception as exc:
            self._warn_once("drift", exc)
            return None
        versions = []
        for entry in found.get("versions", []):
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
            "window_minutes": found.get("window_minutes"),
            "threshold": found.get("threshold"),
            "alpha": found.get("alpha"),
            "min_rows": found.get("min_rows"),
            "versions": versions,
        }

    def experiment(self, name: str) -> dict[str, Any] | None:
        """The report of the experiment this app applies to ``name`` (None without one),
        from this host's evidence: GET /v1/admin/experiments/<name>/report."""
        experiment = self.registry.experiment(name)
        if experiment is None:
            return None
        try:
            totals = evidence.local_totals(
                self.settings, name, experiment.id, recorder=self.monitoring.experiments
            )
            task = report.task_of(self.store, name, totals)
            shadow = evidence.local_shadow(
                self.settings, experiment, recorder=self.monitoring.shadow
            )
            return report.build(experiment, totals, task, shadow)
        except Exception as exc:  # the page never fails for a figure
            self._warn_once("experiment report", exc)
            return None

    def _warn_once(self, what: str, exc: BaseException) -> None:
        with self._warned_lock:
            if what in self._warned:
                return
            self._warned.add(what)
        log.warning("status: %s unavailable: %s", what, exc)


def empty_traffic() -> dict[str, Any]:
    return {
        "requests": {"total": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0},
        "by_version": {},
        "routes": {},
        "latency": {"buckets": [], "count": 0, "sum": 0.0},
        "predictions": {},
    }


def traffic_of(families: list[Any], names: list[str]) -> dict[str, dict[str, Any]]:
    """The traffic figures of ``names`` in scraped metric families."""
    served = set(names)
    out = {name: empty_traffic() for name in names}
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
    return out


def _status_class(status: str) -> str:
    status = str(status)
    return f"{status[0]}xx" if len(status) == 3 and status[0] in "12345" else "other"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

"""The model card's view: one version's metadata.yaml as the plain values its page shows.

``card_view(metadata)`` turns the metadata into dicts and lists (every optional part either
present or ``None``) and ``render_page(view)`` renders ``templates/card.html`` from them with
autoescaping. The plots are drawn by ``service.card.plots``; this module needs neither
matplotlib nor Flask.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jinja2

from service import pages
from service.formatting import (
    format_bytes,
    format_duration,
    format_number,
    format_percent,
    format_signed,
    is_number,
)
from service.store.promotion import higher_is_better

METRIC_LABELS = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1",
    "precision_macro": "Precision (macro)",
    "recall_macro": "Recall (macro)",
    "f1_macro": "F1 (macro)",
    "precision_weighted": "Precision (weighted)",
    "recall_weighted": "Recall (weighted)",
    "f1_weighted": "F1 (weighted)",
    "roc_auc": "ROC-AUC",
    "roc_auc_ovr": "ROC-AUC (one-vs-rest)",
    "average_precision": "Average precision",
    "log_loss": "Log loss",
    "false_positive_rate": "False-positive rate",
    "false_negative_rate": "False-negative rate",
    "false_positive_rate_macro": "False-positive rate (macro)",
    "false_negative_rate_macro": "False-negative rate (macro)",
    "support": "Support",
    "mae": "MAE",
    "mse": "MSE",
    "rmse": "RMSE",
    "mape": "MAPE",
    "r2": "R²",
}

PER_CLASS_ORDER = (
    "precision",
    "recall",
    "f1",
    "support",
    "false_positive_rate",
    "false_negative_rate",
)


# -- the view: metadata → plain values the template shows ---------------------------------


def card_view(metadata: Mapping[str, Any], *, aliases: dict[str, int] | None = None) -> dict:
    """Everything the template shows, minus the plots; optional parts are ``None``."""
    version = metadata.get("version")
    pointing = None
    if aliases is not None:
        pointing = sorted(str(a) for a, v in aliases.items() if _same_version(v, version))
    scores = as_mapping(metadata.get("scores"))
    return {
        "name": _text(metadata.get("name")) or "unnamed model",
        "version": version,
        "created_at": metadata.get("created_at"),
        "description": metadata.get("description"),
        "tags": [str(t) for t in as_list(metadata.get("tags"))],
        "task": metadata.get("task"),
        "target": metadata.get("target"),
        "classes": [scalar_text(c) for c in as_list(metadata.get("classes"))],
        "aliases": pointing,
        "algorithm": _value_view(metadata["algorithm"]) if metadata.get("algorithm") else None,
        "data": _data_view(metadata.get("data")),
        "scores": _scores_view(scores),
        "features": [
            _feature_view(f) for f in as_list(as_mapping(metadata.get("input")).get("features"))
        ],
        "training": _training_view(metadata.get("training")),
        "environment": _pairs(metadata.get("environment")),
        "artifact": _artifact_view(metadata.get("artifact")),
        "golden": _golden_view(metadata.get("golden")),
    }


def _same_version(value: Any, version: Any) -> bool:
    try:
        return int(value) == int(version)
    except (TypeError, ValueError):
        return False


def _scores_view(scores: Mapping[str, Any]) -> dict[str, Any]:
    primary = scores.get("primary_metric")
    columns = [
        ("validation", "model"),
        ("validation", "baseline"),
        ("test", "model"),
        ("test", "baseline"),
    ]
    tables = [as_mapping(as_mapping(scores.get(split)).get(who)) for split, who in columns]
    names: list[str] = []
    for table in tables:
        names.extend(k for k, v in table.items() if is_number(v) and k not in names)
    if primary in names:
        names.remove(primary)
        names.insert(0, primary)
    rows = []
    for key in names:
        values = [t.get(key) if is_number(t.get(key)) else None for t in tables]
        rows.append(
            {
                "key": key,
                "label": metric_label(key),
                "primary": key == primary,
                "higher_is_better": higher_is_better(key),
                "values": values,
                "delta": _delta(key, values[2], values[3]),
            }
        )
    test_model = tables[2]
    baseline = as_mapping(scores.get("baseline"))
    return {
        "primary": primary,
        "primary_label": metric_label(primary) if primary else None,
        "headline": {
            "test": test_model.get(primary),
            "test_baseline": tables[3].get(primary),
            "validation": tables[0].get(primary),
            "validation_baseline": tables[1].get(primary),
            "delta": _delta(primary, test_model.get(primary), tables[3].get(primary))
            if primary
            else None,
        },
        "method": scores.get("method"),
        "baseline": _value_view(baseline) if baseline else None,
        "rows": rows,
        "per_class": _per_class_view(test_model.get("per_class")),
        "gate": _gate_view(scores.get("gate")),
    }


def _delta(metric: str, model: Any, baseline: Any) -> dict[str, Any] | None:
    if not (is_number(model) and is_number(baseline)):
        return None
    difference = model - baseline
    if difference == 0:
        verdict = "same"
    else:
        verdict = "better" if (difference > 0) == higher_is_better(metric) else "worse"
    return {"value": difference, "verdict": verdict}


def _per_class_view(per_class: Any) -> dict[str, Any] | None:
    if not isinstance(per_class, Mapping) or not per_class:
        return None
    present: list[str] = []
    for entry in per_class.values():
        present.extend(k for k, v in as_mapping(entry).items() if is_number(v) and k not in present)
    keys = [k for k in PER_CLASS_ORDER if k in present] + [
        k for k in present if k not in PER_CLASS_ORDER
    ]
    return {
        "columns": [{"key": k, "label": metric_label(k), "integer": k == "support"} for k in keys],
        "rows": [
            {"label": scalar_text(label), "values": [as_mapping(entry).get(k) for k in keys]}
            for label, entry in per_class.items()
        ],
    }


def _gate_view(gate: Any) -> dict[str, Any] | None:
    if not isinstance(gate, Mapping):
        return None
    metric = gate.get("metric")
    direction = gate.get("higher_is_better")
    if direction is None and isinstance(metric, str):
        direction = higher_is_better(metric)
    return {
        "metric": metric,
        "metric_label": metric_label(metric) if isinstance(metric, str) else None,
        "higher_is_better": direction,
        "model": gate.get("model"),
        "baseline": gate.get("baseline"),
        "baseline_strategy": _text(gate.get("baseline_strategy")),
        "baseline_chosen_by": _text(gate.get("baseline_chosen_by")),
        "baselines": [
            {"strategy": str(strategy), "score": score}
            for strategy, score in as_mapping(gate.get("baselines")).items()
        ],
        "improvement": gate.get("improvement"),
        "margin": gate.get("margin"),
        "alpha": gate.get("alpha"),
        "significance": _significance_view(gate.get("significance")),
        "passed": gate.get("passed"),
        "forced": gate.get("forced"),
        "reason": gate.get("reason"),
    }


def _significance_view(tested: Any) -> dict[str, Any] | None:
    """The paired bootstrap of the gate: its p-value and the interval of the lead."""
    if not isinstance(tested, Mapping):
        return None
    interval = as_mapping(tested.get("interval"))
    low, high, level = interval.get("low"), interval.get("high"), interval.get("level")
    return {
        "p_value": tested.get("p_value") if is_number(tested.get("p_value")) else None,
        "interval": [low, high] if is_number(low) and is_number(high) else None,
        "level": format_percent(level) if is_number(level) else None,
        "method": _text(tested.get("method")),
        "resamples": tested.get("resamples"),
        "rows": tested.get("rows"),
        "rows_from": _text(tested.get("rows_from")),
    }


def _data_view(data: Any) -> dict[str, Any] | None:
    if not isinstance(data, Mapping):
        return None
    files = []
    for entry in as_list(data.get("files")):
        if isinstance(entry, Mapping):
            files.append({"file": entry.get("file"), "sha256": entry.get("sha256")})
        else:
            files.append({"file": entry, "sha256": None})
    rows = as_mapping(data.get("rows"))
    row_order = ("total", "dropped_missing_target", "train", "validation", "test")
    row_keys = [k for k in row_order if k in rows] + [k for k in rows if k not in row_order]
    split = as_mapping(data.get("split"))
    fractions = [(str(k), v) for k, v in as_mapping(split.get("fractions")).items()]
    known_split = {"method", "fractions", "seed", "final_fit", "folds"}
    known = {"source", "sha256", "files", "rows", "split"}
    return {
        "source": data.get("source"),
        "sha256": data.get("sha256"),
        "files": files,
        "rows": [(k.replace("_", " "), rows[k]) for k in row_keys],
        "split": {
            "method": split.get("method"),
            "fractions": fractions,
            "seed": split.get("seed"),
            "final_fit": split.get("final_fit"),
            "folds": split.get("folds"),
            "other": [(k, _value_view(v)) for k, v in split.items() if k not in known_split],
        }
        if split
        else None,
        "other": [(k, _value_view(v)) for k, v in data.items() if k not in known],
    }


def _feature_view(feature: Any) -> dict[str, Any]:
    feature = as_mapping(feature)
    stats = as_mapping(feature.get("stats"))
    categorical = feature.get("dtype") == "category"
    summary: list[tuple[str, str]] = []
    if categorical:
        categories = as_list(feature.get("categories"))
        summary.append(("categories", str(len(categories))))
        if feature.get("unknown_category"):
            summary.append(("unknown", str(feature["unknown_category"])))
    else:
        for key in ("min", "max", "mean", "std"):
            if is_number(stats.get(key)):
                summary.append((key, format_number(stats[key])))
    if is_number(stats.get("missing_rate")):
        summary.append(("missing", format_percent(stats["missing_rate"])))
    return {
        "name": _text(feature.get("name")) or "?",
        "dtype": feature.get("dtype"),
        "missing": feature.get("missing"),
        "description": feature.get("description"),
        "categorical": categorical,
        "summary": summary,
        "plot": None,
    }


def _training_view(training: Any) -> dict[str, Any] | None:
    if not isinstance(training, Mapping):
        return None
    search = training.get("search")
    search_view = None
    if isinstance(search, Mapping):
        search_view = {
            "kind": search.get("kind"),
            "folds": search.get("folds"),
            "candidates": search.get("candidates"),
            "scoring": search.get("scoring"),
            "best_score": search.get("best_score"),
            "best_params": [
                (str(k), _value_view(v)) for k, v in as_mapping(search.get("best_params")).items()
            ],
        }
    forced = training.get("forced")
    dropped = []
    for entry in as_list(training.get("dropped_columns")):
        entry = entry if isinstance(entry, Mapping) else {"column": entry}
        dropped.append({"column": entry.get("column"), "reason": entry.get("reason")})
    duration = training.get("duration_seconds")
    return {
        "duration": format_duration(duration) if is_number(duration) else None,
        "warnings": [str(w) for w in as_list(training.get("warnings"))],
        "dropped_columns": dropped,
        "search_recorded": "search" in training,
        "search": search_view,
        "forced": (as_mapping(forced).get("reason") or "no reason given") if forced else None,
    }


def _artifact_view(artifact: Any) -> dict[str, Any] | None:
    if not isinstance(artifact, Mapping):
        return None
    size = artifact.get("size")
    return {
        "file": artifact.get("file"),
        "format": artifact.get("format"),
        "sha256": artifact.get("sha256"),
        "size": format_bytes(size) if is_number(size) else None,
    }


def _golden_view(golden: Any) -> dict[str, Any] | None:
    if not isinstance(golden, Mapping):
        return None
    tolerance = as_mapping(golden.get("tolerance"))
    return {
        "rows": len(as_list(golden.get("instances"))),
        "probabilities": bool(golden.get("probabilities")),
        "rtol": tolerance.get("rtol"),
        "atol": tolerance.get("atol"),
    }


def _value_view(value: Any, depth: int = 0) -> dict[str, Any]:
    """Any YAML value as a tree the template renders: estimator, mapping, list or scalar."""
    if depth > 24:
        return {"kind": "scalar", "text": "…"}
    if isinstance(value, Mapping):
        if isinstance(value.get("class"), str):
            class_path = value["class"]
            steps = [s for s in as_list(value.get("steps")) if isinstance(s, Mapping)]
            known = {"name", "class", "params", "steps"}
            return {
                "kind": "estimator",
                "name": value.get("name"),
                "class_path": class_path,
                "short": class_path.rsplit(".", 1)[-1],
                "params": [
                    (str(k), _value_view(v, depth + 1))
                    for k, v in as_mapping(value.get("params")).items()
                ],
                "extra": [
                    (str(k), _value_view(v, depth + 1)) for k, v in value.items() if k not in known
                ],
                "steps": [_value_view(s, depth + 1) for s in steps],
            }
        return {
            "kind": "mapping",
            "items": [(str(k), _value_view(v, depth + 1)) for k, v in value.items()],
        }
    if isinstance(value, list | tuple):
        if all(_is_scalar(v) for v in value):
            return {"kind": "scalar", "text": "[" + ", ".join(map(_param_text, value)) + "]"}
        if _is_named_estimator(value):
            # (name, estimator[, columns]): a ColumnTransformer's or FeatureUnion's part.
            view = _value_view(value[1], depth + 1)
            extra = [("columns", _value_view(value[2], depth + 1))] if len(value) == 3 else []
            return {**view, "name": value[0], "extra": extra + view["extra"]}
        items = [_value_view(v, depth + 1) for v in value]
        return {
            "kind": "list",
            "items": items,
            "estimators": all(item["kind"] == "estimator" for item in items),
        }
    return {"kind": "scalar", "text": _param_text(value)}


def _is_named_estimator(value: list | tuple) -> bool:
    return (
        len(value) in (2, 3)
        and isinstance(value[0], str)
        and isinstance(value[1], Mapping)
        and isinstance(value[1].get("class"), str)
    )


# -- text ---------------------------------------------------------------------------------


def metric_label(key: str) -> str:
    return METRIC_LABELS.get(key, str(key).replace("_", " "))


def format_metric(value: Any) -> str:
    """Metric values: four decimals, so a column of them lines up."""
    return format_number(value, decimals=4)


def _param_text(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    return str(value)


def scalar_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _pairs(value: Any) -> list[tuple[str, str]] | None:
    if not isinstance(value, Mapping):
        return None
    return [(str(k), scalar_text(v)) for k, v in value.items()]


def render_page(view: Mapping[str, Any]) -> str:
    """The card's HTML from its view (plots included, when drawn)."""
    return _template().render(card=view)


@functools.cache
def _template() -> jinja2.Template:
    env = pages.environment()
    env.filters.update(
        metric=format_metric,
        number=format_number,
        signed=format_signed,
        percent=format_percent,
    )
    return env.get_template("card.html")

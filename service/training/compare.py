"""What differs between two versions of a model, from their metadata alone.

Pure functions over two metadata dicts (A and B) that return plain data: rows of
scores side by side, and lists of differences in the algorithm, the data, the
input features and the environment. ``modelctl compare`` renders them as text
or prints them as JSON.
"""

from __future__ import annotations

import math
from typing import Any

from service.formatting import format_number
from service.store.promotion import higher_is_better

SPLITS = ("validation", "test")
# What ``gate_rows`` shows of scores.gate, in this order.
GATE_FIELDS = (
    "passed",
    "forced",
    "metric",
    "baseline_strategy",
    "model",
    "baseline",
    "improvement",
    "margin",
    "p_value",
    "alpha",
    "interval",
    "level",
    "method",
    "resamples",
    "rows",
)
# Score entries that are not one number per metric: curves and their points.
NOT_METRICS = frozenset({"curves", "points"})
# Fields of an input feature that define what the model accepts (stats only describe data).
FEATURE_FIELDS = ("dtype", "missing", "categories", "unknown_category")
# Keys that name the items of a list of mappings (pipeline steps, data files).
ITEM_KEYS = ("name", "file")


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Everything ``modelctl compare`` shows, as plain data (JSON-ready)."""
    return {
        "a": _identity(a),
        "b": _identity(b),
        "primary_metric": {"a": primary_metric(a), "b": primary_metric(b)},
        "scores": {
            split: {"rows": score_rows(a, b, split), "baseline": baseline_rows(a, b, split)}
            for split in SPLITS
        },
        "gate": gate_rows(a, b),
        "algorithm": algorithm_differences(a, b),
        "data": data_differences(a, b),
        "features": feature_differences(a, b),
        "environment": environment_differences(a, b),
    }


# -- scores ------------------------------------------------------------------------


def primary_metric(meta: dict[str, Any]) -> str | None:
    metric = (meta.get("scores") or {}).get("primary_metric")
    return metric if isinstance(metric, str) else None


def primary_metrics(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """A's primary metric, then B's when it is another one."""
    return list(dict.fromkeys(m for m in (primary_metric(a), primary_metric(b)) if m))


def metrics_of(meta: dict[str, Any], split: str, side: str = "model") -> dict[str, float]:
    """The scalar metrics of one split: per-class tables, confusion matrices and curves
    are left out."""
    scores = ((meta.get("scores") or {}).get(split) or {}).get(side) or {}
    return {
        metric: value
        for metric, value in scores.items()
        if metric not in NOT_METRICS and _is_number(value)
    }


def score_rows(a: dict[str, Any], b: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """One row per metric present in either version's scores of ``split``: primary first.

    ``better`` is "a", "b", "=" (equal), or None when one side lacks the metric.
    """
    a_scores, b_scores = metrics_of(a, split), metrics_of(b, split)
    primaries = primary_metrics(a, b)
    names = list(dict.fromkeys([*primaries, *a_scores, *b_scores]))
    rows = []
    for metric in names:
        if metric not in a_scores and metric not in b_scores:
            continue
        a_value, b_value = a_scores.get(metric), b_scores.get(metric)
        rows.append(
            {
                "metric": metric,
                "primary": metric in primaries,
                "higher_is_better": higher_is_better(metric),
                "a": a_value,
                "b": b_value,
                "delta": _delta(a_value, b_value),
                "better": better_side(metric, a_value, b_value),
            }
        )
    return rows


def baseline_rows(a: dict[str, Any], b: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """The baseline's score on the primary metric(s), for each version."""
    a_scores, b_scores = metrics_of(a, split, "baseline"), metrics_of(b, split, "baseline")
    rows = []
    for metric in primary_metrics(a, b):
        a_value, b_value = a_scores.get(metric), b_scores.get(metric)
        rows.append(
            {"metric": metric, "a": a_value, "b": b_value, "delta": _delta(a_value, b_value)}
        )
    return rows


def gate_rows(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """What the training gate of each version decided, and on what evidence: the baseline
    strategy, the lead over it on validation, its p-value and interval (None where a
    version does not record it, e.g. one trained before the significance test)."""
    a_gate, b_gate = _gate(a), _gate(b)
    return [
        {"field": field, "a": a_gate.get(field), "b": b_gate.get(field)}
        for field in GATE_FIELDS
        if a_gate.get(field) is not None or b_gate.get(field) is not None
    ]


def gate_text(rows: list[dict[str, Any]]) -> list[str]:
    """``gate_rows`` as the lines of ``modelctl compare``."""
    table = [["gate (validation)", "A", "B"]]
    for row in rows:
        table.append([f"  {row['field']}", _gate_value(row["a"]), _gate_value(row["b"])])
    widths = [max(len(line[i]) for line in table) for i in range(3)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]


def better_side(metric: str, a: float | None, b: float | None) -> str | None:
    if a is None or b is None:
        return None
    if a == b:
        return "="
    b_wins = b > a if higher_is_better(metric) else b < a
    return "b" if b_wins else "a"


# -- differences -------------------------------------------------------------------


def algorithm_differences(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Class and parameter paths whose values differ, e.g. ``steps.model.params.C``."""
    return differences(flatten(a.get("algorithm") or {}), flatten(b.get("algorithm") or {}))


def data_differences(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Source, checksums, row counts and split: the paths whose values differ."""
    return differences(flatten(a.get("data") or {}), flatten(b.get("data") or {}))


def environment_differences(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Python, scikit-learn and numpy versions that differ."""
    return differences(flatten(a.get("environment") or {}), flatten(b.get("environment") or {}))


def feature_differences(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Features added (only in B), removed (only in A), changed (dtype, missing policy,
    categories), and a change of order when both have the same features."""
    a_features, b_features = _features(a), _features(b)
    found: list[dict[str, Any]] = []
    for name, feature in a_features.items():
        if name not in b_features:
            found.append({"feature": name, "change": "removed", "dtype": feature.get("dtype")})
    for name, feature in b_features.items():
        if name not in a_features:
            found.append({"feature": name, "change": "added", "dtype": feature.get("dtype")})
    for name, a_feature in a_features.items():
        b_feature = b_features.get(name)
        if b_feature is None:
            continue
        for field in FEATURE_FIELDS:
            a_value, b_value = a_feature.get(field), b_feature.get(field)
            if a_value == b_value:
                continue
            change = {
                "feature": name,
                "change": "changed",
                "field": field,
                "a": a_value,
                "b": b_value,
            }
            if field == "categories":
                a_set, b_set = set(a_value or []), set(b_value or [])
                change["added"] = [c for c in b_value or [] if c not in a_set]
                change["removed"] = [c for c in a_value or [] if c not in b_set]
            found.append(change)
    shared_a = [n for n in a_features if n in b_features]
    shared_b = [n for n in b_features if n in a_features]
    if shared_a != shared_b:
        found.append({"feature": None, "change": "reordered", "a": shared_a, "b": shared_b})
    return found


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Paths of two flattened mappings whose values differ, in A's order then B's.

    ``change`` is "changed", "removed" (only in A) or "added" (only in B); the
    value of the side that lacks the path is None.
    """
    found = []
    for path, value in a.items():
        if path not in b:
            found.append({"path": path, "change": "removed", "a": value, "b": None})
        elif not _same(value, b[path]):
            found.append({"path": path, "change": "changed", "a": value, "b": b[path]})
    for path, value in b.items():
        if path not in a:
            found.append({"path": path, "change": "added", "a": None, "b": value})
    return found


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as {dotted path: leaf value}.

    Lists of named mappings (pipeline steps, data files) are keyed by their name,
    not their position, so inserting a step does not shift every path after it;
    lists of ``(name, estimator, ...)`` (ColumnTransformer, FeatureUnion, voting
    ensembles) likewise. Other lists are leaves, compared whole.
    """
    flat: dict[str, Any] = {}
    _flatten_into(flat, value, prefix)
    return flat


def _flatten_into(flat: dict[str, Any], value: Any, path: str) -> None:
    if isinstance(value, dict):  # an empty mapping has no leaves
        for key, item in value.items():
            _flatten_into(flat, item, _join(path, str(key)))
        return
    if isinstance(value, list):
        named = _named_items(value)
        if named is not None:
            for name, item in named.items():
                _flatten_into(flat, item, _join(path, name))
            return
    if path:
        flat[path] = value


def _named_items(items: list[Any]) -> dict[str, Any] | None:
    """A list keyed by its items' names, or None when its items are not all named."""
    if not items:
        return None
    for key in ITEM_KEYS:
        if all(isinstance(item, dict) and isinstance(item.get(key), str) for item in items):
            named = {item[key]: {k: v for k, v in item.items() if k != key} for item in items}
            if len(named) == len(items):
                return named
    if all(
        isinstance(item, list)
        and len(item) >= 2
        and isinstance(item[0], str)
        and isinstance(item[1], dict)
        and "class" in item[1]
        for item in items
    ):
        named = {}
        for name, estimator, *rest in items:
            entry = dict(estimator)
            if len(rest) == 1:
                entry["columns"] = rest[0]
            else:
                entry.update({f"[{i}]": extra for i, extra in enumerate(rest, start=2)})
            named[name] = entry
        if len(named) == len(items):
            return named
    return None


# -- helpers -----------------------------------------------------------------------


def _identity(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": meta.get("name"),
        "version": meta.get("version"),
        "created_at": meta.get("created_at"),
    }


def _gate(meta: dict[str, Any]) -> dict[str, Any]:
    """scores.gate with its significance fields lifted up; {} when not recorded."""
    gate = (meta.get("scores") or {}).get("gate")
    if not isinstance(gate, dict):
        return {}
    tested = gate.get("significance") if isinstance(gate.get("significance"), dict) else {}
    interval = tested.get("interval") if isinstance(tested.get("interval"), dict) else {}
    flat = {k: v for k, v in gate.items() if k != "significance"}
    flat.update({k: tested.get(k) for k in ("p_value", "method", "resamples", "rows")})
    if interval.get("low") is not None and interval.get("high") is not None:
        flat["interval"] = [interval["low"], interval["high"]]
        flat["level"] = interval.get("level")
    return flat


def _gate_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return "[" + ", ".join(_gate_value(v) for v in value) + "]"
    return format_number(value)


def _features(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    features = (meta.get("input") or {}).get("features") or []
    return {f["name"]: f for f in features if isinstance(f, dict) and "name" in f}


def _is_number(value: Any) -> bool:
    """A finite int or float (NaN and infinities count as no score)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _delta(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    # 12 significant digits: scores are recorded with 6 decimals, and 0.9 - 1.0 should
    # read -0.1, not -0.09999999999999998.
    return float(f"{b - a:.12g}")


def _same(a: Any, b: Any) -> bool:
    """Equal values; 1 and 1.0 are the same, but True and 1 are not."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return bool(a == b)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key

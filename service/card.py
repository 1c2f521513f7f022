"""The model card: one version's metadata.yaml as a self-contained HTML page.

``render_card(metadata, aliases=...)`` turns the metadata into a view (plain
dicts and lists, every optional part either present or ``None``), draws the
plots with matplotlib into inline SVG, and renders ``templates/card.html``
with autoescaping. The page loads nothing from anywhere: inline CSS and
inline SVG only.

Nothing here imports Flask, and matplotlib is imported only when a card is
drawn, so importing this module is cheap. Figures are made with
``matplotlib.figure.Figure`` (no pyplot, no global figure registry); the
``rcParams`` a card needs are set through ``rc_context`` under a lock, because
rcParams are process-global. The output is deterministic: fixed SVG hash
salt, no dates, ids prefixed per plot so they stay unique on the page.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

import jinja2
from markupsafe import Markup, escape

from service import pages
from service.store.promotion import higher_is_better

# Points beyond these are thinned (evenly, endpoints kept) so each SVG stays small.
MAX_CURVE_POINTS = 400
MAX_SCATTER_POINTS = 1000
MAX_CATEGORIES_SHOWN = 12
# Figure sizes in inches: a plot fills a ~300 px grid cell and a feature plot a ~210 px one,
# so matplotlib's 8–10 pt text shows at roughly 10–12 px.
PLOT_SIZE = (3.5, 3.2)
FEATURE_SIZE = (2.4, 1.35)

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

_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "model-card",
    "text.parse_math": False,
    "path.simplify": True,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 8.5,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#9aa0a6",
    "axes.labelcolor": "#333333",
    "axes.titlecolor": "#222222",
    "xtick.color": "#555555",
    "ytick.color": "#555555",
    "text.color": "#222222",
}
_PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777")
BAR_COLOR = "#5b7fbf"
_PLOT_LOCK = threading.Lock()


def render_card(metadata: dict[str, Any], *, aliases: dict[str, int] | None = None) -> str:
    """The complete HTML page documenting one model version."""
    if not isinstance(metadata, Mapping):
        raise TypeError("metadata must be a mapping")
    view = card_view(metadata, aliases=aliases)
    plots, feature_plots = draw_plots(metadata)
    view["plots"] = plots
    for feature, plot in zip(view["features"], feature_plots, strict=True):
        feature["plot"] = plot
    return _template().render(card=view)


# -- the view: metadata → plain values the template shows ---------------------------------


def card_view(metadata: Mapping[str, Any], *, aliases: dict[str, int] | None = None) -> dict:
    """Everything the template shows, minus the plots; optional parts are ``None``."""
    version = metadata.get("version")
    pointing = None
    if aliases is not None:
        pointing = sorted(str(a) for a, v in aliases.items() if _same_version(v, version))
    scores = _mapping(metadata.get("scores"))
    return {
        "name": _text(metadata.get("name")) or "unnamed model",
        "version": version,
        "created_at": metadata.get("created_at"),
        "description": metadata.get("description"),
        "tags": [str(t) for t in _list(metadata.get("tags"))],
        "task": metadata.get("task"),
        "target": metadata.get("target"),
        "classes": [_scalar_text(c) for c in _list(metadata.get("classes"))],
        "aliases": pointing,
        "algorithm": _value_view(metadata["algorithm"]) if metadata.get("algorithm") else None,
        "data": _data_view(metadata.get("data")),
        "scores": _scores_view(scores),
        "features": [
            _feature_view(f) for f in _list(_mapping(metadata.get("input")).get("features"))
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
    tables = [_mapping(_mapping(scores.get(split)).get(who)) for split, who in columns]
    names: list[str] = []
    for table in tables:
        names.extend(k for k, v in table.items() if _is_number(v) and k not in names)
    if primary in names:
        names.remove(primary)
        names.insert(0, primary)
    rows = []
    for key in names:
        values = [t.get(key) if _is_number(t.get(key)) else None for t in tables]
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
    baseline = _mapping(scores.get("baseline"))
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
    if not (_is_number(model) and _is_number(baseline)):
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
        present.extend(k for k, v in _mapping(entry).items() if _is_number(v) and k not in present)
    keys = [k for k in PER_CLASS_ORDER if k in present] + [
        k for k in present if k not in PER_CLASS_ORDER
    ]
    return {
        "columns": [{"key": k, "label": metric_label(k), "integer": k == "support"} for k in keys],
        "rows": [
            {"label": _scalar_text(label), "values": [_mapping(entry).get(k) for k in keys]}
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
            for strategy, score in _mapping(gate.get("baselines")).items()
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
    interval = _mapping(tested.get("interval"))
    low, high, level = interval.get("low"), interval.get("high"), interval.get("level")
    return {
        "p_value": tested.get("p_value") if _is_number(tested.get("p_value")) else None,
        "interval": [low, high] if _is_number(low) and _is_number(high) else None,
        "level": format_percent(level) if _is_number(level) else None,
        "method": _text(tested.get("method")),
        "resamples": tested.get("resamples"),
        "rows": tested.get("rows"),
        "rows_from": _text(tested.get("rows_from")),
    }


def _data_view(data: Any) -> dict[str, Any] | None:
    if not isinstance(data, Mapping):
        return None
    files = []
    for entry in _list(data.get("files")):
        if isinstance(entry, Mapping):
            files.append({"file": entry.get("file"), "sha256": entry.get("sha256")})
        else:
            files.append({"file": entry, "sha256": None})
    rows = _mapping(data.get("rows"))
    row_order = ("total", "dropped_missing_target", "train", "validation", "test")
    row_keys = [k for k in row_order if k in rows] + [k for k in rows if k not in row_order]
    split = _mapping(data.get("split"))
    fractions = [(str(k), v) for k, v in _mapping(split.get("fractions")).items()]
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
    feature = _mapping(feature)
    stats = _mapping(feature.get("stats"))
    categorical = feature.get("dtype") == "category"
    summary: list[tuple[str, str]] = []
    if categorical:
        categories = _list(feature.get("categories"))
        summary.append(("categories", str(len(categories))))
        if feature.get("unknown_category"):
            summary.append(("unknown", str(feature["unknown_category"])))
    else:
        for key in ("min", "max", "mean", "std"):
            if _is_number(stats.get(key)):
                summary.append((key, format_number(stats[key])))
    if _is_number(stats.get("missing_rate")):
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
                (str(k), _value_view(v)) for k, v in _mapping(search.get("best_params")).items()
            ],
        }
    forced = training.get("forced")
    dropped = []
    for entry in _list(training.get("dropped_columns")):
        entry = entry if isinstance(entry, Mapping) else {"column": entry}
        dropped.append({"column": entry.get("column"), "reason": entry.get("reason")})
    duration = training.get("duration_seconds")
    return {
        "duration": format_duration(duration) if _is_number(duration) else None,
        "warnings": [str(w) for w in _list(training.get("warnings"))],
        "dropped_columns": dropped,
        "search_recorded": "search" in training,
        "search": search_view,
        "forced": (_mapping(forced).get("reason") or "no reason given") if forced else None,
    }


def _artifact_view(artifact: Any) -> dict[str, Any] | None:
    if not isinstance(artifact, Mapping):
        return None
    size = artifact.get("size")
    return {
        "file": artifact.get("file"),
        "format": artifact.get("format"),
        "sha256": artifact.get("sha256"),
        "size": format_bytes(size) if _is_number(size) else None,
    }


def _golden_view(golden: Any) -> dict[str, Any] | None:
    if not isinstance(golden, Mapping):
        return None
    tolerance = _mapping(golden.get("tolerance"))
    return {
        "rows": len(_list(golden.get("instances"))),
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
            steps = [s for s in _list(value.get("steps")) if isinstance(s, Mapping)]
            known = {"name", "class", "params", "steps"}
            return {
                "kind": "estimator",
                "name": value.get("name"),
                "class_path": class_path,
                "short": class_path.rsplit(".", 1)[-1],
                "params": [
                    (str(k), _value_view(v, depth + 1))
                    for k, v in _mapping(value.get("params")).items()
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


# -- formatting ---------------------------------------------------------------------------


def metric_label(key: str) -> str:
    return METRIC_LABELS.get(key, str(key).replace("_", " "))


def format_metric(value: Any) -> str:
    """Metric values: four decimals, so a column of them lines up."""
    if not _is_number(value):
        return "—" if value is None else str(value)
    if math.isnan(value):
        return "NaN"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4f}"


def format_number(value: Any) -> str:
    """Statistics and counts: compact, four significant digits."""
    if not _is_number(value):
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def format_signed(value: Any) -> str:
    if not _is_number(value):
        return "—"
    return ("+" if value > 0 else "−" if value < 0 else "±") + format_metric(abs(value))


def format_percent(value: Any) -> str:
    if not _is_number(value):
        return "—"
    percent = value * 100
    return f"{percent:.0f}%" if percent == int(percent) else f"{percent:.1f}%"


def format_bytes(size: float) -> str:
    size = int(size)
    if size < 1024:
        return f"{size:,} bytes"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit} ({size:,} bytes)"


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _param_text(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _scalar_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _pairs(value: Any) -> list[tuple[str, str]] | None:
    if not isinstance(value, Mapping):
        return None
    return [(str(k), _scalar_text(v)) for k, v in value.items()]


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


# -- plots --------------------------------------------------------------------------------


def draw_plots(metadata: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
    """The model plots and one plot per feature, each {id, title, svg, caption, note}:
    ``svg`` is None and ``note`` says why when a part is missing or malformed."""
    import matplotlib

    scores = _mapping(metadata.get("scores"))
    test_model = _mapping(_mapping(scores.get("test")).get("model"))
    curves = _mapping(_mapping(scores.get("test")).get("curves"))
    points = _mapping(_mapping(scores.get("test")).get("points"))
    features = _list(_mapping(metadata.get("input")).get("features"))
    regression = metadata.get("task") == "regression"

    with _PLOT_LOCK, matplotlib.rc_context(_RC):
        if regression:
            specs = [
                ("predicted-vs-actual", "Predicted vs actual (test)", _draw_scatter, points),
                ("residuals", "Residuals vs predicted (test)", _draw_residuals, points),
                ("residual-histogram", "Residual distribution (test)", _draw_residual_hist, points),
            ]
        else:
            specs = [
                (
                    "confusion-matrix",
                    "Confusion matrix (test)",
                    _draw_confusion,
                    test_model.get("confusion_matrix"),
                ),
                ("roc", "ROC curves (test)", _draw_roc, curves.get("roc")),
                (
                    "precision-recall",
                    "Precision–recall curves (test)",
                    _draw_precision_recall,
                    curves.get("precision_recall"),
                ),
            ]
        plots = [_plot(*spec) for spec in specs]
        feature_plots = [
            _plot(
                f"feature-{index}",
                f"Training distribution of {_mapping(feature).get('name')}",
                _draw_feature,
                feature,
            )
            for index, feature in enumerate(features)
        ]
    return plots, feature_plots


def _plot(plot_id: str, title: str, draw: Callable, data: Any) -> dict[str, Any]:
    """Draw DATA with DRAW into an inline SVG; a missing or malformed part becomes a note."""
    from matplotlib.figure import Figure

    entry: dict[str, Any] = {
        "id": plot_id,
        "title": title,
        "svg": None,
        "caption": None,
        "note": None,
    }
    if not data:
        entry["note"] = "not recorded"
        return entry
    try:
        figure = draw(Figure, data)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError) as exc:
        entry["note"] = f"could not be drawn: {type(exc).__name__}"
        return entry
    if figure is None:
        entry["note"] = "not recorded"
        return entry
    figure, caption = figure if isinstance(figure, tuple) else (figure, None)
    entry["svg"] = _svg(figure, plot_id, title)
    entry["caption"] = caption
    return entry


def _svg(figure, prefix: str, label: str) -> Markup:
    """The figure as compact inline SVG. Matplotlib escapes every text it writes."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    figure.clear()
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r"<defs>\s*<style[^>]*>.*?</style>\s*</defs>", "", text, flags=re.S)
    # Text inherits the page's font stack instead of naming DejaVu Sans on every label.
    text = re.sub(r"font-family: [^;\"]*;? ?", "", text)
    # Ids on a page holding many SVGs: drop those nothing refers to (matplotlib names every
    # group), and prefix the rest and the references to them so they stay unique.
    referenced = set(re.findall(r'href="#([^"]+)"', text))
    referenced |= set(re.findall(r"url\(#([^)]+)\)", text))
    text = re.sub(
        r' id="([^"]+)"',
        lambda m: f' id="{prefix}-{m[1]}"' if m[1] in referenced else "",
        text,
    )
    text = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", text)
    text = re.sub(r" ?\n\s*", " ", text)
    text = re.sub(r">\s+<", "><", text).strip()
    text = re.sub(
        r"<svg ([^>]*)>", rf'<svg role="img" \1><title>{escape(label)}</title>', text, count=1
    )
    return Markup(text)


def _thin(values: list, limit: int) -> list:
    if len(values) <= limit:
        return list(values)
    step = (len(values) - 1) / (limit - 1)
    return [values[round(i * step)] for i in range(limit)]


def _numbers(values: Any) -> list[float]:
    result = [float(v) for v in _list(values)]
    if not result:
        raise ValueError("no values")
    return result


def _draw_confusion(Figure, confusion: Mapping[str, Any]):
    labels = [_short(_scalar_text(label), 14) for label in _list(confusion.get("labels"))]
    matrix = [[int(v) for v in row] for row in _list(confusion.get("matrix"))]
    n = len(matrix)
    if n == 0 or len(labels) != n or any(len(row) != n for row in matrix):
        raise ValueError("confusion matrix is not square or labels do not match")
    side = min(max(PLOT_SIZE[1], 0.45 * n + 1.6), 8.0)
    figure = Figure(figsize=(side + 0.4, side), layout="constrained")
    ax = figure.add_subplot()
    shares = [[v / max(sum(row), 1) for v in row] for row in matrix]
    ax.pcolormesh(shares, cmap="Blues", vmin=0.0, vmax=1.0, edgecolors="white", linewidth=1)
    ax.set_xlim(0, n)
    ax.set_ylim(n, 0)
    ax.set_aspect("equal")
    size = 9 if n <= 6 else 7 if n <= 12 else 5
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            color = "white" if shares[i][j] > 0.55 else "#222222"
            ax.text(j + 0.5, i + 0.5, str(count), ha="center", va="center", color=color, size=size)
    ticks = [k + 0.5 for k in range(n)]
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    if max((len(label) for label in labels), default=0) * n > 30:
        for tick in ax.get_xticklabels():
            tick.set_rotation(35)
            tick.set_ha("right")
            tick.set_rotation_mode("anchor")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    return figure, "Counts; shading is the share of each actual class (row)."


def _draw_roc(Figure, curves: list):
    return _draw_curves(
        Figure,
        curves,
        x=("fpr", "false-positive rate"),
        y=("tpr", "true-positive rate"),
        score=("auc", "AUC"),
        legend="lower right",
        chance_line=True,
    )


def _draw_precision_recall(Figure, curves: list):
    return _draw_curves(
        Figure,
        curves,
        x=("recall", "recall"),
        y=("precision", "precision"),
        score=("average_precision", "AP"),
        legend="lower left",
        chance_line=False,
    )


def _draw_curves(
    Figure,
    curves: list,
    *,
    x: tuple[str, str],
    y: tuple[str, str],
    score: tuple[str, str],
    legend: str,
    chance_line: bool,
):
    """One line per class: (key, axis label) for x and y, (key, legend name) for the
    curve's summary score."""
    curves = [c for c in _list(curves) if isinstance(c, Mapping)]
    if not curves:
        return None
    figure = Figure(figsize=PLOT_SIZE, layout="constrained")
    ax = figure.add_subplot()
    if chance_line:
        ax.plot([0, 1], [0, 1], linestyle="--", color="#9aa0a6", linewidth=0.8, label="chance")
    thinned = False
    for index, curve in enumerate(curves):
        xs, ys = _numbers(curve[x[0]]), _numbers(curve[y[0]])
        if len(xs) != len(ys):
            raise ValueError(f"{x[0]} and {y[0]} differ in length")
        thinned |= len(xs) > MAX_CURVE_POINTS
        value = curve.get(score[0])
        label = _short(_scalar_text(curve.get("label", index)), 18)
        if _is_number(value):
            label += f" ({score[1]} {value:.3f})"
        ax.plot(
            _thin(xs, MAX_CURVE_POINTS),
            _thin(ys, MAX_CURVE_POINTS),
            color=_PALETTE[index % len(_PALETTE)],
            linewidth=1.4,
            label=label,
        )
    _unit_axes(ax, x[1], y[1])
    ax.legend(loc=legend)
    return figure, _thinned_note(thinned)


def _unit_axes(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="#e5e7eb", linewidth=0.6)
    ax.set_axisbelow(True)


def _thinned_note(thinned: bool) -> str | None:
    return f"Curves thinned to {MAX_CURVE_POINTS} points each." if thinned else None


def _regression_points(points: Mapping[str, Any]) -> tuple[list[float], list[float], str | None]:
    actual, predicted = _numbers(points["actual"]), _numbers(points["predicted"])
    if len(actual) != len(predicted):
        raise ValueError("actual and predicted differ in length")
    caption = None
    if len(actual) > MAX_SCATTER_POINTS:
        caption = f"{MAX_SCATTER_POINTS:,} of {len(actual):,} test rows shown."
        actual = _thin(actual, MAX_SCATTER_POINTS)
        predicted = _thin(predicted, MAX_SCATTER_POINTS)
    return actual, predicted, caption


def _draw_scatter(Figure, points: Mapping[str, Any]):
    actual, predicted, caption = _regression_points(points)
    figure = Figure(figsize=PLOT_SIZE, layout="constrained")
    ax = figure.add_subplot()
    low, high = min(*actual, *predicted), max(*actual, *predicted)
    pad = (high - low) * 0.04 or 1.0
    ax.plot([low - pad, high + pad], [low - pad, high + pad], "--", color="#9aa0a6", linewidth=0.8)
    ax.scatter(actual, predicted, s=10, color=_PALETTE[0], alpha=0.6, linewidths=0)
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal")
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.grid(True, color="#e5e7eb", linewidth=0.6)
    ax.set_axisbelow(True)
    return figure, caption or "Dashed: predicted = actual."


def _draw_residuals(Figure, points: Mapping[str, Any]):
    actual, predicted, caption = _regression_points(points)
    residuals = [p - a for a, p in zip(actual, predicted, strict=True)]
    figure = Figure(figsize=PLOT_SIZE, layout="constrained")
    ax = figure.add_subplot()
    ax.axhline(0.0, linestyle="--", color="#9aa0a6", linewidth=0.8)
    ax.scatter(predicted, residuals, s=10, color=_PALETTE[0], alpha=0.6, linewidths=0)
    ax.set_xlabel("predicted")
    ax.set_ylabel("predicted − actual")
    ax.grid(True, color="#e5e7eb", linewidth=0.6)
    ax.set_axisbelow(True)
    return figure, caption or "Above zero: over-predicted; below: under-predicted."


def _draw_residual_hist(Figure, points: Mapping[str, Any]):
    actual, predicted = _numbers(points["actual"]), _numbers(points["predicted"])
    if len(actual) != len(predicted):
        raise ValueError("actual and predicted differ in length")
    residuals = [p - a for a, p in zip(actual, predicted, strict=True)]
    figure = Figure(figsize=PLOT_SIZE, layout="constrained")
    ax = figure.add_subplot()
    ax.hist(
        residuals, bins=min(30, max(5, len(residuals) // 5)), color=BAR_COLOR, edgecolor="white"
    )
    ax.axvline(0.0, linestyle="--", color="#333333", linewidth=0.9)
    ax.set_xlabel("predicted − actual")
    ax.set_ylabel("test rows")
    mean = sum(residuals) / len(residuals)
    return figure, f"Mean residual {format_number(mean)} over {len(residuals):,} rows."


def _draw_feature(Figure, feature: Mapping[str, Any]):
    stats = _mapping(feature.get("stats"))
    if feature.get("dtype") == "category":
        return _draw_category_shares(Figure, feature, stats)
    histogram = _mapping(stats.get("histogram"))
    if not histogram:
        return None
    from matplotlib.ticker import MaxNLocator

    edges, counts = _numbers(histogram["edges"]), _numbers(histogram["counts"])
    if len(edges) != len(counts) + 1:
        raise ValueError("a histogram needs one more edge than counts")
    figure = Figure(figsize=FEATURE_SIZE, layout="constrained")
    ax = figure.add_subplot()
    widths = [b - a for a, b in itertools.pairwise(edges)]
    ax.bar(
        edges[:-1], counts, widths, align="edge", color=BAR_COLOR, edgecolor="white", linewidth=0.5
    )
    mean = stats.get("mean")
    if _is_number(mean):
        ax.axvline(mean, color=_PALETTE[1], linewidth=1.0)
    _small_axes(ax)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
    return figure


def _draw_category_shares(Figure, feature: Mapping[str, Any], stats: Mapping[str, Any]):
    shares = _mapping(stats.get("category_shares"))
    if not shares:
        return None
    ordered = sorted(shares.items(), key=lambda item: -float(item[1]))
    shown = ordered[:MAX_CATEGORIES_SHOWN]
    labels = [_short(_scalar_text(k), 16) for k, _ in shown]
    values = [float(v) for _, v in shown]
    height = min(0.5 + 0.19 * len(shown), 3.0)
    figure = Figure(figsize=(FEATURE_SIZE[0], max(height, FEATURE_SIZE[1])), layout="constrained")
    ax = figure.add_subplot()
    positions = list(range(len(shown)))
    ax.barh(positions, values, color=BAR_COLOR, height=0.7)
    ax.set_yticks(positions, labels)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(lambda x, _pos: f"{x * 100:.0f}%")
    _small_axes(ax)
    ax.tick_params(axis="y", length=0)
    caption = None
    if len(ordered) > len(shown):
        caption = f"{len(ordered) - len(shown)} more categories not shown."
    return figure, caption


def _small_axes(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.tick_params(labelsize=8, length=2)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

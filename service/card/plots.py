"""The model card's plots: matplotlib figures as inline SVG.

Imported only when a card is drawn (``service.card.render_card``), so serving and the CLI
never load matplotlib otherwise. Figures are made with ``matplotlib.figure.Figure`` (no
pyplot, no global figure registry); the ``rcParams`` a card needs are set through
``rc_context`` under a lock, because rcParams are process-global. The output is
deterministic: fixed SVG hash salt, no dates, ids prefixed per plot so they stay unique on
the page.
"""

from __future__ import annotations

import io
import itertools
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

import matplotlib
from markupsafe import Markup, escape
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from service.card.view import as_list, as_mapping, scalar_text
from service.formatting import format_number, format_percent, is_number

# Points beyond these are thinned (evenly, endpoints kept) so each SVG stays small.
MAX_CURVE_POINTS = 400
MAX_SCATTER_POINTS = 1000
MAX_CATEGORIES_SHOWN = 12
# Figure sizes in inches: a plot fills a ~300 px grid cell and a feature plot a ~210 px one,
# so matplotlib's 8–10 pt text shows at roughly 10–12 px.
PLOT_SIZE = (3.5, 3.2)
FEATURE_SIZE = (2.4, 1.35)
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


def draw_plots(metadata: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
    """The model plots and one plot per feature, each {id, title, svg, caption, note}:
    ``svg`` is None and ``note`` says why when a part is missing or malformed."""
    scores = as_mapping(metadata.get("scores"))
    test_model = as_mapping(as_mapping(scores.get("test")).get("model"))
    curves = as_mapping(as_mapping(scores.get("test")).get("curves"))
    points = as_mapping(as_mapping(scores.get("test")).get("points"))
    features = as_list(as_mapping(metadata.get("input")).get("features"))
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
                f"Training distribution of {as_mapping(feature).get('name')}",
                _draw_feature,
                feature,
            )
            for index, feature in enumerate(features)
        ]
    return plots, feature_plots


def _plot(plot_id: str, title: str, draw: Callable, data: Any) -> dict[str, Any]:
    """Draw DATA with DRAW into an inline SVG; a missing or malformed part becomes a note."""
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
        figure = draw(data)
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
    result = [float(v) for v in as_list(values)]
    if not result:
        raise ValueError("no values")
    return result


def _draw_confusion(confusion: Mapping[str, Any]):
    labels = [_short(scalar_text(label), 14) for label in as_list(confusion.get("labels"))]
    matrix = [[int(v) for v in row] for row in as_list(confusion.get("matrix"))]
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


def _draw_roc(curves: list):
    return _draw_curves(
        curves,
        x=("fpr", "false-positive rate"),
        y=("tpr", "true-positive rate"),
        score=("auc", "AUC"),
        legend="lower right",
        chance_line=True,
    )


def _draw_precision_recall(curves: list):
    return _draw_curves(
        curves,
        x=("recall", "recall"),
        y=("precision", "precision"),
        score=("average_precision", "AP"),
        legend="lower left",
        chance_line=False,
    )


def _draw_curves(
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
    curves = [c for c in as_list(curves) if isinstance(c, Mapping)]
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
        label = _short(scalar_text(curve.get("label", index)), 18)
        if is_number(value):
            label += f" ({score[1]} {format_number(value, decimals=3)})"
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


def _draw_scatter(points: Mapping[str, Any]):
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


def _draw_residuals(points: Mapping[str, Any]):
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


def _draw_residual_hist(points: Mapping[str, Any]):
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


def _draw_feature(feature: Mapping[str, Any]):
    stats = as_mapping(feature.get("stats"))
    if feature.get("dtype") == "category":
        return _draw_category_shares(feature, stats)
    histogram = as_mapping(stats.get("histogram"))
    if not histogram:
        return None
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
    if is_number(mean):
        ax.axvline(mean, color=_PALETTE[1], linewidth=1.0)
    _small_axes(ax)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
    return figure


def _draw_category_shares(feature: Mapping[str, Any], stats: Mapping[str, Any]):
    shares = as_mapping(stats.get("category_shares"))
    if not shares:
        return None
    ordered = sorted(shares.items(), key=lambda item: -float(item[1]))
    shown = ordered[:MAX_CATEGORIES_SHOWN]
    labels = [_short(scalar_text(k), 16) for k, _ in shown]
    values = [float(v) for _, v in shown]
    height = min(0.5 + 0.19 * len(shown), 3.0)
    figure = Figure(figsize=(FEATURE_SIZE[0], max(height, FEATURE_SIZE[1])), layout="constrained")
    ax = figure.add_subplot()
    positions = list(range(len(shown)))
    ax.barh(positions, values, color=BAR_COLOR, height=0.7)
    ax.set_yticks(positions, labels)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(lambda x, _pos: format_percent(x, decimals=0))
    _small_axes(ax)
    ax.tick_params(axis="y", length=0)
    caption = None
    if len(ordered) > len(shown):
        caption = f"{len(ordered) - len(shown)} more categories not shown."
    return figure, caption


def _small_axes(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.tick_params(labelsize=8, length=2)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

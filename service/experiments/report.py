"""An experiment's report: per variant its figures, per comparison with the control (the
first variant) a verdict, from the variants' totals (``service.experiments.evidence``).

Per variant: requests; the error rate with its Wilson interval; latency p50 and p99 (from
the bucket counts); live quality from feedback with its interval: accuracy (Wilson) for a
classifier, mean absolute error (t interval) for a regressor.

Per comparison: for the error rate and for live quality, the difference (variant minus
control), its interval, the p-value (score test of two proportions; Welch's t-test for
the MAE), whether it is significant, and the sample still needed to detect
``min_effect`` with 80 % power. ``min_effect`` is an absolute difference for rates
(0.02: two points of accuracy or of error rate) and a relative one for the MAE (0.02:
2 % of the control's MAE), so one default means something for any regressor's units.

Shadow. When the experiment has one, the report also says what its candidate did on
the shadowed requests (``service.monitoring.shadow_record``'s sums, added up over the
hosts like the variants' totals): runs, dropped work, errors by kind, and how its
answers compare with the primary's: agreement with its Wilson interval for a classifier,
the distribution of the differences (candidate - primary: mean with its t interval, sd,
mean and largest absolute difference) for a regressor. No verdict rests on it: the
candidate answers nobody.

Significance. A verdict rests on several tests: two metrics, for each variant other than
the control. Each test is run at ``alpha / tests`` (Bonferroni), so the chance that
identical variants get any "better" or "worse" verdict is at most ``alpha``. The tests
are fixed-sample tests: read the verdict once the sample still needed is 0; looking
every minute and stopping at the first significant look would find differences that
are not there more often than ``alpha`` says.

Nothing here imports Flask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from service.experiments import stats
from service.experiments.evidence import LATENCY_BUCKETS, VariantTotals
from service.formatting import format_number
from service.monitoring import quality, shadow_record
from service.store.experiments import Experiment, NoExperiment

METRICS = ("errors", "quality")
BETTER, WORSE, NO_DIFFERENCE, TOO_LITTLE_DATA = (
    "better",
    "worse",
    "no significant difference",
    "too little data",
)


def quality_metric(task: str) -> str:
    return quality.metric_of(task)


def _variant_figures(
    experiment: Experiment, totals: VariantTotals, task: str, alpha: float
) -> dict[str, Any]:
    variant = experiment.variant(totals.variant) if _has(experiment, totals.variant) else None
    figures: dict[str, Any] = {
        "name": totals.variant,
        "weight": variant.weight if variant is not None else None,
        "versions": {str(v): n for v, n in totals.versions.items()},
        "requests": totals.requests,
        "errors": stats.rate(totals.errors, totals.requests, alpha),
        "latency": {
            "answers": sum(totals.latency_counts),
            "p50": _ms(stats.quantile(totals.latency_counts, LATENCY_BUCKETS, 0.5)),
            "p99": _ms(stats.quantile(totals.latency_counts, LATENCY_BUCKETS, 0.99)),
            "unit": "ms",
        },
    }
    metric = quality_metric(task)
    if metric == quality.ACCURACY:
        live = stats.rate(totals.correct, totals.labelled, alpha)
    else:
        live = stats.mean(totals.abs_error_sum, totals.abs_error_sq_sum, totals.labelled, alpha)
    figures["quality"] = {"metric": metric, "labelled": totals.labelled, **live}
    return figures


def _has(experiment: Experiment, name: str) -> bool:
    return any(v.name == name for v in experiment.variants)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _ratio(have_variant: int, have_control: int, weights: tuple[float, float]) -> float:
    """The variant's rows per control row: as observed, else as the weights split them."""
    if have_variant > 0 and have_control > 0:
        return have_variant / have_control
    control_weight, variant_weight = weights
    return variant_weight / control_weight if control_weight > 0 else 0.0


def _compare_errors(
    control: VariantTotals,
    variant: VariantTotals,
    alpha: float,
    min_effect: float,
    weights: tuple[float, float],
) -> dict[str, Any]:
    result = stats.compare_rates(
        (control.errors, control.requests), (variant.errors, variant.requests), alpha
    )
    ratio = _ratio(variant.requests, control.requests, weights)
    base = control.errors / control.requests if control.requests else 0.0
    needed = stats.rate_sample_needed(base, min_effect, alpha, ratio)
    result["still_needed"] = stats.still_needed(needed, ratio, control.requests, variant.requests)
    result["unit"] = "requests"
    # A lower error rate is better.
    result["better"] = _direction(result, lower_is_better=True)
    return result


def _compare_quality(
    control: VariantTotals,
    variant: VariantTotals,
    task: str,
    alpha: float,
    min_effect: float,
    weights: tuple[float, float],
) -> dict[str, Any]:
    ratio = _ratio(variant.labelled, control.labelled, weights)
    if quality_metric(task) == quality.ACCURACY:
        result = stats.compare_rates(
            (control.correct, control.labelled), (variant.correct, variant.labelled), alpha
        )
        base = control.correct / control.labelled if control.labelled else 0.5
        needed = stats.rate_sample_needed(base, min_effect, alpha, ratio)
        lower_is_better = False
    else:
        result = stats.compare_means(
            (control.abs_error_sum, control.abs_error_sq_sum, control.labelled),
            (variant.abs_error_sum, variant.abs_error_sq_sum, variant.labelled),
            alpha,
        )
        mae, sd = stats.mean_and_sd(
            control.abs_error_sum, control.abs_error_sq_sum, control.labelled
        )
        if sd is None:
            mae, sd = stats.mean_and_sd(
                variant.abs_error_sum, variant.abs_error_sq_sum, variant.labelled
            )
        needed = stats.mean_sample_needed(sd, min_effect * mae, alpha, ratio) if mae else None
        lower_is_better = True
    result["still_needed"] = stats.still_needed(needed, ratio, control.labelled, variant.labelled)
    result["unit"] = "labelled rows"
    result["better"] = _direction(result, lower_is_better=lower_is_better)
    return result


def _direction(result: dict[str, Any], *, lower_is_better: bool) -> bool | None:
    """True when the variant is significantly better, False significantly worse, else None."""
    difference = result["difference"]
    if not result["significant"] or difference is None or difference == 0:
        return None
    return (difference < 0) == lower_is_better


def _verdict(errors: dict[str, Any], live: dict[str, Any]) -> str:
    directions = [errors["better"], live["better"]]
    if False in directions:
        return WORSE
    if True in directions:
        return BETTER
    if errors["p_value"] is None and live["p_value"] is None:
        return TOO_LITTLE_DATA
    return NO_DIFFERENCE


def build(
    experiment: Experiment,
    totals: Mapping[str, VariantTotals],
    task: str,
    shadow: list[dict[str, Any]] | None = None,
) -> dict:
    """The report of ``experiment`` from its variants' ``totals`` (variants without any are
    reported empty); ``task``: classification or regression; ``shadow``: the shadow
    candidate's sums (``evidence.local_shadow`` / ``remote_shadow``), None when not read."""
    names = [v.name for v in experiment.variants]
    names += sorted(set(totals) - set(names))  # a variant dropped since (hand-edited file)
    by_name = {n: totals.get(n) or VariantTotals.empty(n) for n in names}
    comparisons_count = max(len(names) - 1, 1)
    tests = comparisons_count * len(METRICS)
    alpha_per_test = experiment.alpha / tests
    control = by_name[names[0]]
    weights = {v.name: v.weight for v in experiment.variants}

    comparisons = []
    for name in names[1:]:
        variant = by_name[name]
        pair = (weights.get(control.variant, 0.0), weights.get(name, 0.0))
        errors = _compare_errors(control, variant, alpha_per_test, experiment.min_effect, pair)
        live = _compare_quality(control, variant, task, alpha_per_test, experiment.min_effect, pair)
        verdict = _verdict(errors, live)
        comparisons.append(
            {
                "variant": name,
                "control": control.variant,
                "verdict": verdict,
                "significant": verdict in (BETTER, WORSE),
                "errors": errors,
                "quality": live,
                "still_needed": _most_needed(errors, live),
            }
        )

    variants = [_variant_figures(experiment, by_name[n], task, experiment.alpha) for n in names]
    winner = _winner(control.variant, comparisons, variants)
    return {
        "model": experiment.model,
        "experiment": experiment.id,
        "kind": experiment.kind,
        "started_at": experiment.started_at,
        "task": task,
        "metric": quality_metric(task),
        "alpha": experiment.alpha,
        "alpha_per_test": round(alpha_per_test, 8),
        "tests": tests,
        "min_effect": experiment.min_effect,
        "power": stats.POWER,
        "control": control.variant,
        "variants": variants,
        "comparisons": comparisons,
        "winner": winner,
        "significant": winner is not None,
        "shadow": shadow_section(experiment, shadow or [], task),
    }


def shadow_section(
    experiment: Experiment, rows: list[dict[str, Any]], task: str
) -> dict[str, Any] | None:
    """What the shadow candidate did, per candidate (None when the experiment has none).
    The target is reported with zero runs until its first shadowed request is recorded."""
    if experiment.shadow is None:
        return None
    rows = [r for r in rows if r["experiment"] == experiment.id]
    if not any(r["candidate"] == experiment.shadow.target for r in rows):
        rows.append(_no_runs(experiment, task))
    return {
        "target": experiment.shadow.target,
        "share": experiment.shadow.share,
        "candidates": [_shadow_figures(row, experiment.alpha) for row in rows],
    }


def _no_runs(experiment: Experiment, task: str) -> dict[str, Any]:
    assert experiment.shadow is not None
    row: dict[str, Any] = dict.fromkeys(shadow_record.SUMMED, 0)
    row.update(
        experiment=experiment.id,
        candidate=experiment.shadow.target,
        candidate_version=None,
        task=task,
        abs_difference_max=0.0,
    )
    return row


def _shadow_figures(row: dict[str, Any], alpha: float) -> dict[str, Any]:
    """shadow_record.figures' numbers, with the report's intervals (at ``alpha``)."""
    found = shadow_record.figures(row)
    rows = row["rows"]
    figures: dict[str, Any] = {
        "candidate": found["candidate"],
        "candidate_version": found["candidate_version"],
        "runs": found["runs"],
        "dropped": found["dropped"],
        "errors": found["errors"],
        "error_rate": stats.rate(sum(found["errors"].values()), found["runs"], alpha),
        "rows": rows,
        "mean_ms": _ms(found["mean_seconds"]),
    }
    if found["task"] == "classification":
        figures["agreement"] = stats.rate(row["agreed"], rows, alpha)
    else:
        spread = found["difference"]
        figures["difference"] = {
            **stats.mean(row["difference_sum"], row["difference_sq_sum"], rows, alpha),
            "mean_abs": _rounded(spread["mean_abs"]),
            "max_abs": _rounded(spread["max_abs"]),
        }
    return figures


def _rounded(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")


def _most_needed(*results: dict[str, Any]) -> dict[str, Any] | None:
    """The larger of the samples still needed, in the unit it is counted in."""
    found = [(r["still_needed"], r["unit"]) for r in results if r["still_needed"] is not None]
    if not found:
        return None
    needed, unit = max(found, key=lambda item: max(item[0]["control"], item[0]["variant"]))
    return {**needed, "unit": unit}


def _winner(
    control: str, comparisons: list[dict[str, Any]], variants: list[dict[str, Any]]
) -> str | None:
    """The variant significantly better than the control (the best of several, by live
    quality then error rate); the control when every other variant is significantly
    worse; else None: nothing is significant yet."""
    better = [c["variant"] for c in comparisons if c["verdict"] == BETTER]
    if better:
        figures = {v["name"]: v for v in variants}

        def rank(name: str) -> tuple[float, float]:
            live = figures[name]["quality"]
            value = live["value"]
            if value is None:
                score = -math.inf
            else:
                score = value if live["metric"] == quality.ACCURACY else -value
            error_rate = figures[name]["errors"]["value"] or 0.0
            return (score, -error_rate)

        return max(better, key=rank)
    if comparisons and all(c["verdict"] == WORSE for c in comparisons):
        return control
    return None


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers a history entry keeps of a report: short, YAML-friendly."""
    return {
        "variants": {
            v["name"]: {
                "requests": v["requests"],
                "error_rate": v["errors"]["value"],
                report["metric"]: v["quality"]["value"],
                "labelled": v["quality"]["labelled"],
            }
            for v in report["variants"]
        },
        "comparisons": {
            c["variant"]: {
                "verdict": c["verdict"],
                "errors_p": c["errors"]["p_value"],
                "quality_p": c["quality"]["p_value"],
            }
            for c in report["comparisons"]
        },
        "alpha": report["alpha"],
    }


def text(report: dict[str, Any]) -> str:
    """The report for people (``modelctl experiment report``)."""
    metric = report["metric"]
    lines = [
        f"{report['model']}: experiment {report['experiment']} ({report['kind']}, started "
        f"{report['started_at'] or '?'})",
        f"  alpha {report['alpha']:g} ({report['tests']} tests at {report['alpha_per_test']:g} "
        f"each), min_effect {report['min_effect']:g}, power {report['power']:g}",
        "",
        f"  {'variant':<14}{'versions':<12}{'requests':>9}  {'error rate':<26}"
        f"{'p50 ms':>8}{'p99 ms':>9}  {metric} (labelled)",
    ]
    for v in report["variants"]:
        versions = ",".join(v["versions"]) or "-"
        live = v["quality"]
        lines.append(
            f"  {v['name']:<14}{versions:<12}{v['requests']:>9}  "
            f"{_value_interval(v['errors']):<26}{_number(v['latency']['p50']):>8}"
            f"{_number(v['latency']['p99']):>9}  {_value_interval(live)} ({live['labelled']})"
        )
    lines.append("")
    for c in report["comparisons"]:
        lines.append(f"  {c['variant']} vs {c['control']}: {c['verdict']}")
        for key, label in (("errors", "error rate"), ("quality", metric)):
            r = c[key]
            significant = "significant" if r["significant"] else "not significant"
            difference = " ".join(
                filter(None, [_number(r["difference"]), _interval(r["interval"])])
            )
            lines.append(
                f"    {label}: difference {difference}, p = {_number(r['p_value'])} ({significant})"
            )
        needed = c["still_needed"]
        if needed is None:
            lines.append("    sample still needed: unknown until both variants have data")
        elif needed["control"] or needed["variant"]:
            lines.append(
                f"    sample still needed: {needed['control']} {needed['unit']} on "
                f"{c['control']}, {needed['variant']} on {c['variant']}"
            )
        else:
            lines.append("    sample still needed: none (the planned sample is reached)")
    winner = report["winner"]
    lines.append("")
    lines.append(f"  winner: {winner}" if winner else "  winner: none yet (nothing is significant)")
    if report.get("shadow"):
        lines.append("")
        lines.extend(shadow_lines(report["shadow"]))
    return "\n".join(lines)


def shadow_lines(section: dict[str, Any]) -> list[str]:
    """The shadow's lines of the text report (the status page says the same)."""
    lines = [f"  shadow: {section['target']} on {section['share']:.0%} of the requests"]
    for c in section["candidates"]:
        version = c["candidate_version"]
        errors = ", ".join(f"{kind} {n}" for kind, n in c["errors"].items() if n) or "none"
        lines.append(
            f"    {c['candidate']}"
            + (f" (version {version})" if version is not None else "")
            + f": {c['runs']} runs, {c['dropped']} dropped, errors {errors}"
            + (f" ({_value_interval(c['error_rate'])})" if c["error_rate"]["value"] else "")
        )
        if "agreement" in c:
            lines.append(
                f"    agreement with the primary: {_value_interval(c['agreement'])} "
                f"over {c['rows']} rows"
            )
        else:
            d = c["difference"]
            lines.append(
                f"    difference candidate - primary: mean {_value_interval(d)}, sd "
                f"{_number(d['sd'])}, mean |d| {_number(d['mean_abs'])}, max |d| "
                f"{_number(d['max_abs'])} over {c['rows']} rows"
            )
    return lines


def _number(value: Any) -> str:
    return format_number(value, missing="-")


def _interval(interval: list[float | None] | None) -> str:
    if not interval or interval[0] is None or interval[1] is None:
        return ""
    return f"[{format_number(interval[0])}, {format_number(interval[1])}]"


def _value_interval(figure: dict[str, Any]) -> str:
    if figure.get("value") is None:
        return "-"
    return f"{format_number(figure['value'])} {_interval(figure.get('interval'))}".strip()


# -- which experiment, and its model's task -------------------------------------------


def find(store: Any, name: str, experiment_id: str | None = None) -> Experiment:
    """The experiment ``experiment_id`` of model ``name`` (default: the running one, else
    the last one started), rebuilt from experiment.yaml's history once it has ended."""
    state = store.experiment_state(name)
    active = state.get("active")
    if active is not None and experiment_id in (None, active.get("id")):
        return Experiment.from_dict(name, active)
    for entry in reversed(state.get("history") or []):
        if entry.get("action") == "start" and experiment_id in (None, entry.get("id")):
            return Experiment.from_dict(name, entry)
    wanted = f"experiment {experiment_id}" if experiment_id else "any experiment"
    raise NoExperiment(
        f"model {name!r} has not run {wanted}",
        details={"model": name, "experiment": experiment_id},
    )


def task_of(store: Any, name: str, totals: Mapping[str, VariantTotals]) -> str:
    """The model's task, from the metadata of a version the experiment served (else the
    newest version): a model's versions all share it."""
    served = [v for t in totals.values() for v in t.versions]
    version = served[0] if served else store.versions(name)[-1]
    return str(store.metadata(name, version).get("task", "classification"))

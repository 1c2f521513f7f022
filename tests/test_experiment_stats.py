"""The statistics of experiment reports: A/A simulations keep false differences at the
significance level, real differences are found, the figures agree with independent
computations, totals add up across hosts, and a report has the figures it promises."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from service.experiments import report, stats
from service.experiments.evidence import LATENCY_BUCKETS, EvidenceUnavailable, VariantTotals
from service.store.experiments import Experiment, Variant

RUNS = 400
ALPHA = 0.05
# The most false positives RUNS tests at ALPHA may show by chance (binomial, 99.9 %): a
# higher count means the test is not at its level.
MOST_FALSE = scipy_stats.binom.ppf(0.999, RUNS, ALPHA)


def experiment(*variants: tuple[str, float], alpha=ALPHA, min_effect=0.02) -> Experiment:
    return Experiment(
        id="iris-classifier-20261206T203000Z-5f3a",
        model="iris-classifier",
        variants=tuple(Variant(name, weight) for name, weight in variants),
        alpha=alpha,
        min_effect=min_effect,
    )


def classifier_totals(name, requests, errors, labelled, correct) -> VariantTotals:
    totals = VariantTotals.empty(name)
    totals.versions = {1: requests}
    totals.requests, totals.errors = requests, errors
    totals.latency_counts[4] = requests - errors
    totals.labelled, totals.correct = labelled, correct
    return totals


def regressor_totals(name, errors_of_rows: np.ndarray) -> VariantTotals:
    totals = VariantTotals.empty(name)
    totals.requests = totals.labelled = len(errors_of_rows)
    totals.abs_error_sum = float(np.abs(errors_of_rows).sum())
    totals.abs_error_sq_sum = float((errors_of_rows**2).sum())
    return totals


# -- A/A: identical variants -------------------------------------------------------------


def test_identical_error_rates_differ_at_most_at_alpha():
    rng = np.random.default_rng(20261206)
    n0, n1 = 3000, 1000  # an uneven split, as 75/25
    x0 = rng.binomial(n0, 0.03, RUNS)
    x1 = rng.binomial(n1, 0.03, RUNS)
    found = sum(
        stats.compare_rates((int(a), n0), (int(b), n1), ALPHA)["significant"]
        for a, b in zip(x0, x1, strict=True)
    )
    assert found <= MOST_FALSE


def test_identical_accuracies_differ_at_most_at_alpha():
    rng = np.random.default_rng(7)
    x0 = rng.binomial(800, 0.93, RUNS)
    x1 = rng.binomial(800, 0.93, RUNS)
    found = sum(
        stats.compare_rates((int(a), 800), (int(b), 800), ALPHA)["significant"]
        for a, b in zip(x0, x1, strict=True)
    )
    assert found <= MOST_FALSE


def test_identical_mean_absolute_errors_differ_at_most_at_alpha():
    rng = np.random.default_rng(11)
    found = 0
    for _ in range(RUNS):
        a = np.abs(rng.normal(0, 40, 300))
        b = np.abs(rng.normal(0, 40, 200))
        control = (float(a.sum()), float((a**2).sum()), len(a))
        variant = (float(b.sum()), float((b**2).sum()), len(b))
        found += stats.compare_means(control, variant, ALPHA)["significant"]
    assert found <= MOST_FALSE


def test_a_report_of_identical_variants_names_a_winner_at_most_at_alpha():
    # The verdict rests on two tests (errors, accuracy): each at alpha / 2, together alpha.
    rng = np.random.default_rng(3)
    plan = experiment(("production", 50), ("staging", 50))
    runs = RUNS // 2  # a whole report each: power analysis included
    winners = 0
    for _ in range(runs):
        both = {
            name: classifier_totals(
                name, 2000, int(rng.binomial(2000, 0.02)), 600, int(rng.binomial(600, 0.9))
            )
            for name in ("production", "staging")
        }
        built = report.build(plan, both, "classification")
        winners += built["significant"]
    assert winners <= scipy_stats.binom.ppf(0.999, runs, ALPHA)


# -- real differences ---------------------------------------------------------------------


def test_a_real_difference_in_error_rate_is_found():
    rng = np.random.default_rng(5)
    found = sum(
        stats.compare_rates(
            (int(rng.binomial(2000, 0.02)), 2000), (int(rng.binomial(2000, 0.05)), 2000), ALPHA
        )["significant"]
        for _ in range(100)
    )
    assert found >= 95


def test_a_worse_variant_loses_and_a_better_one_wins():
    plan = experiment(("production", 50), ("staging", 50))
    control = classifier_totals("production", 3000, 15, 1000, 900)
    worse = classifier_totals("staging", 3000, 90, 1000, 900)
    built = report.build(plan, {"production": control, "staging": worse}, "classification")
    comparison = built["comparisons"][0]
    assert comparison["verdict"] == report.WORSE
    assert comparison["errors"]["better"] is False
    assert built["winner"] == "production"

    better = classifier_totals("staging", 3000, 15, 1000, 950)
    built = report.build(plan, {"production": control, "staging": better}, "classification")
    assert built["comparisons"][0]["verdict"] == report.BETTER
    assert built["comparisons"][0]["quality"]["difference"] == pytest.approx(0.05)
    assert built["winner"] == "staging"


def test_a_lower_mean_absolute_error_wins():
    rng = np.random.default_rng(8)
    plan = experiment(("production", 50), ("4", 50))
    both = {
        "production": regressor_totals("production", rng.normal(0, 50, 800)),
        "4": regressor_totals("4", rng.normal(0, 40, 800)),
    }
    built = report.build(plan, both, "regression")
    assert built["metric"] == "mae"
    assert built["comparisons"][0]["quality"]["difference"] < 0
    assert built["winner"] == "4"


def test_the_sample_size_gives_its_power():
    # At the sample the report asks for, a difference of min_effect is found about 80 % of
    # the time (binomial 99.9 % band around 0.8 over RUNS simulated experiments).
    needed = stats.rate_sample_needed(0.90, 0.02, ALPHA, 1.0)
    assert 3000 < needed < 4500
    rng = np.random.default_rng(13)
    found = sum(
        stats.compare_rates(
            (int(rng.binomial(needed, 0.90)), needed),
            (int(rng.binomial(needed, 0.88)), needed),
            ALPHA,
        )["significant"]
        for _ in range(RUNS)
    )
    low, high = scipy_stats.binom.ppf([0.0005, 0.9995], RUNS, stats.POWER)
    assert low <= found <= high


def test_the_sample_still_needed_counts_down_to_zero():
    needed = stats.rate_sample_needed(0.05, 0.02, ALPHA, 0.5)
    early = stats.still_needed(needed, 0.5, 100, 50)
    assert early["control"] == needed - 100
    assert early["variant"] == math.ceil(needed * 0.5) - 50
    assert stats.still_needed(needed, 0.5, needed, needed) == {
        "control": 0,
        "variant": 0,
        "needed_control": needed,
        "needed_variant": math.ceil(needed * 0.5),
    }


# -- the figures against independent computations -------------------------------------------


def test_wilson_interval_is_the_textbook_formula():
    x, n, z = 17, 230, scipy_stats.norm.isf(ALPHA / 2)
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = stats.wilson(x, n, ALPHA)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert stats.wilson(0, 0, ALPHA) is None


def test_two_rates_agree_with_pearsons_chi_square():
    # The score test of two proportions is Pearson's chi-square of the 2x2 table, up to
    # Miettinen-Nurminen's n / (n - 1).
    table = np.array([[45, 955], [70, 930]])
    chi2 = scipy_stats.chi2_contingency(table, correction=False)
    result = stats.compare_rates((45, 1000), (70, 1000), ALPHA)
    assert result["p_value"] == pytest.approx(chi2.pvalue, rel=0.02)
    assert result["difference"] == pytest.approx(0.025)
    assert result["interval"][0] < 0.025 < result["interval"][1]


def test_both_rates_zero_are_no_difference():
    result = stats.compare_rates((0, 500), (0, 80), ALPHA)
    assert result["p_value"] == 1.0
    assert result["significant"] is False
    assert stats.compare_rates((0, 0), (3, 10), ALPHA)["p_value"] is None


def test_welch_from_sums_is_welch_on_the_rows():
    rng = np.random.default_rng(1)
    a, b = np.abs(rng.normal(0, 3, 120)), np.abs(rng.normal(0.5, 5, 90))
    result = stats.compare_means(
        (a.sum(), (a**2).sum(), len(a)), (b.sum(), (b**2).sum(), len(b)), ALPHA
    )
    reference = scipy_stats.ttest_ind(b, a, equal_var=False)
    assert result["p_value"] == pytest.approx(reference.pvalue, rel=1e-6)
    assert result["difference"] == pytest.approx(b.mean() - a.mean(), abs=1e-6)
    interval = reference.confidence_interval(1 - ALPHA)
    assert result["interval"] == pytest.approx([interval.low, interval.high], abs=1e-5)
    mean = stats.mean(a.sum(), (a**2).sum(), len(a), ALPHA)
    assert mean["sd"] == pytest.approx(a.std(ddof=1), rel=1e-5)


def test_latency_quantiles_interpolate_inside_their_bucket():
    counts = [0] * len(LATENCY_BUCKETS)
    one_ms = LATENCY_BUCKETS.index(0.001)
    counts[one_ms] = 90  # (0.5 ms, 1 ms]
    counts[LATENCY_BUCKETS.index(0.01)] = 10  # (7.5 ms, 10 ms]
    assert stats.quantile(counts, LATENCY_BUCKETS, 0.5) == pytest.approx(0.0005 + 0.0005 * 50 / 90)
    assert stats.quantile(counts, LATENCY_BUCKETS, 0.99) == pytest.approx(0.0075 + 0.0025 * 0.9)
    counts[-1] = 1000  # beyond the last bound: the last finite bound is all one can say
    assert stats.quantile(counts, LATENCY_BUCKETS, 0.99) == LATENCY_BUCKETS[-2]
    assert stats.quantile([0] * len(LATENCY_BUCKETS), LATENCY_BUCKETS, 0.5) is None


# -- totals ---------------------------------------------------------------------------------


def test_totals_add_up_across_hosts():
    a = classifier_totals("staging", 100, 2, 40, 30)
    a.versions = {4: 100}
    b = classifier_totals("staging", 50, 1, 10, 9)
    b.versions = {4: 20, 5: 30}
    b.abs_error_sum, b.abs_error_sq_sum = 1.5, 2.25
    merged = a.merge(b)
    assert merged.versions == {4: 120, 5: 30}
    assert (merged.requests, merged.errors, merged.labelled, merged.correct) == (150, 3, 50, 39)
    assert merged.latency_counts[4] == 98 + 49
    assert (merged.abs_error_sum, merged.abs_error_sq_sum) == (1.5, 2.25)
    assert VariantTotals.from_dict(merged.to_dict()) == merged
    with pytest.raises(ValueError, match="cannot add variant"):
        a.merge(VariantTotals.empty("production"))


def test_totals_from_a_host_are_checked():
    broken = classifier_totals("staging", 1, 0, 0, 0).to_dict()
    broken["latency_counts"] = [1, 2]
    with pytest.raises(EvidenceUnavailable, match="latency buckets"):
        VariantTotals.from_dict(broken)


# -- the report's shape ----------------------------------------------------------------------


def test_a_report_has_every_figure_per_variant_and_comparison():
    plan = experiment(("production", 80), ("staging", 10), ("7", 10))
    built = report.build(
        plan,
        {
            "production": classifier_totals("production", 800, 4, 300, 280),
            "staging": classifier_totals("staging", 100, 1, 40, 36),
        },
        "classification",
    )
    assert [v["name"] for v in built["variants"]] == ["production", "staging", "7"]
    assert built["tests"] == 4 and built["alpha_per_test"] == pytest.approx(ALPHA / 4)
    production = built["variants"][0]
    assert production["weight"] == 80 and production["requests"] == 800
    assert production["errors"]["value"] == 0.005 and len(production["errors"]["interval"]) == 2
    assert production["latency"]["p50"] is not None and production["latency"]["unit"] == "ms"
    assert production["quality"] == {
        "metric": "accuracy",
        "labelled": 300,
        "value": pytest.approx(280 / 300),
        "count": 280,
        "of": 300,
        "interval": [pytest.approx(v) for v in stats.wilson(280, 300, ALPHA)],
    }
    empty = built["variants"][2]
    assert empty["requests"] == 0 and empty["errors"]["value"] is None
    first, second = built["comparisons"]
    assert first["control"] == "production" and first["variant"] == "staging"
    for key in ("difference", "interval", "p_value", "significant", "still_needed"):
        assert key in first["errors"] and key in first["quality"]
    assert first["still_needed"]["variant"] > 0
    assert second["verdict"] == report.TOO_LITTLE_DATA
    # With no data the split comes from the weights: the variant needs an eighth of the rows.
    assert second["errors"]["still_needed"]["needed_variant"] == math.ceil(
        second["errors"]["still_needed"]["needed_control"] / 8
    )
    assert built["winner"] is None and built["significant"] is False
    assert "winner: none yet" in report.text(built)

"""The statistics of an experiment's report, from sufficient statistics (counts and sums).

Every distribution comes from scipy.stats or statsmodels; this module only feeds them the
counts, handles the cases they are not defined for (no data, both rates 0 or 1), and
returns plain JSON-ready dicts.

- A rate (error rate, accuracy): its Wilson score interval, which keeps its coverage near
  0 and 1 and on small samples, where the normal ("Wald") interval does not.
- Two rates: the score test of their difference (Miettinen-Nurminen, statsmodels
  ``test_proportions_2indep``), and Newcombe's interval of the difference, built from the
  two Wilson intervals (it stays defined when both rates are 0).
- Two means (a regressor's mean absolute error): Welch's t-test from the means, standard
  deviations and counts (scipy ``ttest_ind_from_stats``, unequal variances: a new model's
  errors need not spread like the old one's), and the t interval of each mean.
- The sample still needed: the rows per variant at which a difference of ``min_effect``
  would be found at ``alpha`` with ``POWER`` (statsmodels ``NormalIndPower`` on Cohen's h
  for rates, ``TTestIndPower`` for means), at the variants' current split.
- Latency quantiles from histogram bucket counts, interpolated inside the bucket as
  Prometheus' ``histogram_quantile`` does.

Nothing here imports Flask.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    test_proportions_2indep,
)

# The power a report sizes its sample for: the usual 80 %.
POWER = 0.8


def _quiet(function, *args, **kwargs):
    """statsmodels warns (divide by zero) on degenerate counts we check for ourselves."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _round(value: float | None, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _p(value: float) -> float | None:
    """A p-value to 6 significant digits: a tiny one keeps its size."""
    return float(f"{value:.6g}") if math.isfinite(value) else None


# -- one rate ------------------------------------------------------------------------


def wilson(successes: int, n: int, alpha: float) -> tuple[float, float] | None:
    """The Wilson score interval of successes / n at confidence 1 - alpha; None when n is 0."""
    if n <= 0:
        return None
    low, high = _quiet(proportion_confint, successes, n, alpha=alpha, method="wilson")
    return float(low), float(high)


def rate(successes: int, n: int, alpha: float) -> dict[str, Any]:
    interval = wilson(successes, n, alpha)
    return {
        "value": _round(successes / n) if n > 0 else None,
        "count": int(successes),
        "of": int(n),
        "interval": [_round(interval[0]), _round(interval[1])] if interval else None,
    }


# -- two rates ------------------------------------------------------------------------


def compare_rates(
    control: tuple[int, int], variant: tuple[int, int], alpha: float
) -> dict[str, Any]:
    """(successes, n) of control and variant: the difference variant - control, its
    interval, the score test's p-value and whether it is below alpha."""
    (x0, n0), (x1, n1) = control, variant
    if n0 <= 0 or n1 <= 0:
        return {"difference": None, "interval": None, "p_value": None, "significant": False}
    difference = x1 / n1 - x0 / n0
    low, high = _quiet(
        confint_proportions_2indep, x1, n1, x0, n0, method="newcomb", compare="diff", alpha=alpha
    )
    if (x0 == 0 and x1 == 0) or (x0 == n0 and x1 == n1):
        # Both 0 % or both 100 %: the test is undefined and there is no evidence of a
        # difference at all.
        p_value = 1.0
    else:
        result = _quiet(test_proportions_2indep, x1, n1, x0, n0, method="score", compare="diff")
        p_value = float(result.pvalue)
    return {
        "difference": _round(difference),
        "interval": [_round(low), _round(high)],
        "p_value": _p(p_value),
        "significant": bool(math.isfinite(p_value) and p_value < alpha),
    }


def rate_sample_needed(
    control_rate: float, min_effect: float, alpha: float, ratio: float
) -> int | None:
    """Rows the control needs (the variant: ``ratio`` times as many) to find a difference
    of ``min_effect`` from ``control_rate`` with POWER: Cohen's h against the rate moved
    towards 1/2, where a difference is hardest to see."""
    if not ratio > 0 or not min_effect > 0:
        return None
    shifted = control_rate + min_effect if control_rate <= 0.5 else control_rate - min_effect
    shifted = min(max(shifted, 0.0), 1.0)
    effect = abs(float(proportion_effectsize(shifted, control_rate)))
    if not effect > 0:
        return None
    return _control_rows(NormalIndPower(), effect, alpha, ratio)


def _control_rows(analysis: Any, effect_size: float, alpha: float, ratio: float) -> int | None:
    """Rows the control needs (the variant: ``ratio`` times as many) for ``analysis``, a
    statsmodels power analysis, to find ``effect_size`` with POWER; None if it cannot."""
    n = _quiet(
        analysis.solve_power,
        effect_size=effect_size,
        nobs1=None,
        alpha=alpha,
        power=POWER,
        ratio=ratio,
        alternative="two-sided",
    )
    return math.ceil(float(n)) if math.isfinite(float(n)) else None


# -- means (from sums) --------------------------------------------------------------


def mean_and_sd(total: float, squares: float, n: int) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation from n, sum x and sum x^2."""
    if n <= 0:
        return None, None
    mean = total / n
    if n < 2:
        return mean, None
    variance = max((squares - n * mean * mean) / (n - 1), 0.0)
    return mean, math.sqrt(variance)


def mean(total: float, squares: float, n: int, alpha: float) -> dict[str, Any]:
    """A mean with its t interval at confidence 1 - alpha."""
    value, sd = mean_and_sd(total, squares, n)
    interval = None
    if value is not None and sd is not None:
        if sd == 0:
            interval = [_round(value), _round(value)]
        else:
            low, high = scipy_stats.t.interval(1 - alpha, n - 1, loc=value, scale=sd / math.sqrt(n))
            interval = [_round(low), _round(high)]
    return {"value": _round(value), "sd": _round(sd), "of": int(n), "interval": interval}


def compare_means(
    control: tuple[float, float, int], variant: tuple[float, float, int], alpha: float
) -> dict[str, Any]:
    """(sum, sum of squares, n) of control and variant: the difference of the means
    (variant - control), Welch's t-test p-value and its interval."""
    m0, s0 = mean_and_sd(*control)
    m1, s1 = mean_and_sd(*variant)
    n0, n1 = control[2], variant[2]
    if m0 is None or m1 is None or s0 is None or s1 is None:
        difference = None if m0 is None or m1 is None else _round(m1 - m0)
        return {"difference": difference, "interval": None, "p_value": None, "significant": False}
    difference = m1 - m0
    if s0 == 0 and s1 == 0:
        p_value = 1.0 if difference == 0 else 0.0
        interval = [_round(difference), _round(difference)]
    else:
        result = _quiet(scipy_stats.ttest_ind_from_stats, m1, s1, n1, m0, s0, n0, equal_var=False)
        p_value = float(result.pvalue)
        # Welch-Satterthwaite degrees of freedom, as the test used.
        v0, v1 = s0 * s0 / n0, s1 * s1 / n1
        scale = math.sqrt(v0 + v1)
        dof = (v0 + v1) ** 2 / (v0 * v0 / (n0 - 1) + v1 * v1 / (n1 - 1))
        low, high = scipy_stats.t.interval(1 - alpha, dof, loc=difference, scale=scale)
        interval = [_round(low), _round(high)]
    return {
        "difference": _round(difference),
        "interval": interval,
        "p_value": _p(p_value),
        "significant": bool(math.isfinite(p_value) and p_value < alpha),
    }


def mean_sample_needed(
    sd: float | None, min_difference: float, alpha: float, ratio: float
) -> int | None:
    """Rows the control needs (the variant: ``ratio`` times as many) for Welch's test to
    find a difference of ``min_difference`` with POWER, given the spread ``sd``."""
    if sd is None or not sd > 0 or not min_difference > 0 or not ratio > 0:
        return None
    return _control_rows(TTestIndPower(), min_difference / sd, alpha, ratio)


def still_needed(
    needed_control: int | None, ratio: float, have_control: int, have_variant: int
) -> dict[str, int] | None:
    """Rows still to collect per arm for a sample size of ``needed_control`` (and
    ``ratio`` times that for the variant)."""
    if needed_control is None:
        return None
    needed_variant = math.ceil(needed_control * ratio)
    return {
        "control": max(needed_control - have_control, 0),
        "variant": max(needed_variant - have_variant, 0),
        "needed_control": needed_control,
        "needed_variant": needed_variant,
    }


# -- latency ------------------------------------------------------------------------


def quantile(counts: Sequence[int], bounds: Sequence[float], q: float) -> float | None:
    """The q-quantile of values counted per bucket (``bounds``: upper bounds, the last
    +inf), linear inside the bucket like Prometheus' histogram_quantile; the highest
    finite bound when it falls in the +inf bucket; None without values."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cumulative = np.cumsum(counts)
    index = int(np.searchsorted(cumulative, rank, side="left"))
    index = min(index, len(counts) - 1)
    upper = bounds[index]
    if math.isinf(upper):
        finite = [b for b in bounds if not math.isinf(b)]
        return float(finite[-1]) if finite else None
    lower = bounds[index - 1] if index > 0 else 0.0
    below = float(cumulative[index - 1]) if index > 0 else 0.0
    inside = counts[index]
    if inside <= 0:
        return float(upper)
    return float(lower + (upper - lower) * (rank - below) / inside)

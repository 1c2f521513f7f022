"""Canary releases: a new version takes a growing share of a model's traffic, and is rolled
back on its own as soon as the numbers show it is worse than production.

``Canary(store, name, version, policy, totals).run()`` starts an experiment of kind
``canary`` with two variants, the default alias (``production``) and the version, and ramps
the version's weight through ``policy.steps`` (5, 25, 50, 100 by default), holding each step
``policy.step_seconds``. At the end of every step it compares the canary with production on
the experiment's requests so far (cumulative: the experiment id stays the same while the
weights change) and writes the verdict with its numbers into the experiment's history:

- **errors**: the share of requests the variant failed;
- **latency**: the share of requests slower than production's p99 (the upper bound of the
  latency bucket that holds it), so a slower canary shows as a larger tail;
- **quality**: from feedback, the share of labelled predictions that were wrong
  (classification) or the mean absolute error (regression).

Each comparison is a one-sided test of "the canary is worse than production by more than
the metric's margin": for shares, an Agresti-Caffo adjusted Wald test of the difference of
two proportions (it keeps its level with zero counts, where the plain Wald test does not);
for the mean absolute error, Welch's t-test. A step's verdict only counts once both
variants have ``min_samples`` requests (and ``min_labels`` labelled ones for quality); until
then the controller waits, up to ``max_wait`` seconds, and ends the canary without
promoting if the traffic never comes.

Repeated looks. The data are looked at once per step, on accumulating data, and the canary
stops at the first look that shows harm. Each test runs at level ``alpha / (looks x
metrics)``: by the union bound the chance that *any* test of *any* look fires when the
canary is in truth no worse is at most ``alpha``, whatever the correlation between looks and
at whichever look the canary stops (Bonferroni over the planned looks). It costs some power
against a group-sequential boundary, but it needs no assumption on how much data each look
sees, which a canary whose traffic varies by hour cannot promise. Waiting for the minimum
sample only counts requests; it never looks at the difference, so it adds no look.

Nothing here imports Flask; the evidence comes from ``totals(experiment_id)``:
``service.experiments.evidence.local_totals`` or ``remote_totals``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from scipy import stats as scipy_stats

from service.errors import BadRequest, Conflict, NotFound, PromotionRefused, ServiceError
from service.experiments import stats
from service.experiments.evidence import LATENCY_BUCKETS, EvidenceUnavailable, VariantTotals
from service.formatting import format_number
from service.store.experiments import Variant

log = logging.getLogger(__name__)

DEFAULT_ALIAS = "production"
DEFAULT_STEPS = (5.0, 25.0, 50.0, 100.0)
KIND = "canary"
_NORMAL = statistics.NormalDist()

# How a canary ends, and the history action that records it.
PROMOTED = "promoted"  # every step passed and the gate let the version into production
ROLLED_BACK = "rolled_back"  # a step showed the canary worse: all traffic back to production
NO_EVIDENCE = "no_evidence"  # too few requests or labels within max_wait: nothing promoted
REFUSED = "refused"  # every step passed, but the promotion gate refused the version
INTERRUPTED = "interrupted"  # a signal or an error: all traffic back to production
ACTIONS = {
    PROMOTED: "promote",
    ROLLED_BACK: "rollback",
    NO_EVIDENCE: "abort",
    REFUSED: "abort",
    INTERRUPTED: "abort",
}

# A step's verdict.
PASS = "pass"
WORSE = "worse"
WAIT = "wait"


class InvalidCanary(BadRequest):
    code = "invalid_canary"


@dataclasses.dataclass(frozen=True)
class Policy:
    """How a canary ramps and what counts as worse. Margins are how much worse the canary
    may be before it counts: error and latency in shares of requests (0.01 = 1 point),
    quality in accuracy points for a classifier and as a fraction of production's mean
    absolute error for a regressor."""

    steps: tuple[float, ...] = DEFAULT_STEPS
    step_seconds: float = 300.0
    min_samples: int = 200
    min_labels: int = 200  # 0: no quality comparison (no feedback arrives for this model)
    alpha: float = 0.05
    error_margin: float = 0.0
    latency_margin: float = 0.01
    quality_margin: float = 0.02
    max_wait: float = 900.0
    poll_seconds: float = 5.0

    def __post_init__(self) -> None:
        steps = tuple(float(s) for s in self.steps)
        object.__setattr__(self, "steps", steps)
        if not steps:
            raise InvalidCanary("a canary needs at least one step")
        if any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
            raise InvalidCanary(
                "canary steps must rise strictly, each a share in (0, 100]; "
                f"got {', '.join(f'{s:g}' for s in steps)}"
            )
        if not 0 < self.alpha <= 0.5:
            raise InvalidCanary(f"alpha must be in (0, 0.5], got {self.alpha:g}")
        if self.min_samples < 1 or self.min_labels < 0:
            raise InvalidCanary("min_samples must be 1 or more, min_labels 0 or more")
        for name in ("error_margin", "latency_margin", "quality_margin"):
            if not 0 <= getattr(self, name) < 1:
                raise InvalidCanary(f"{name} must be in [0, 1), got {getattr(self, name):g}")
        for name in ("step_seconds", "max_wait", "poll_seconds"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise InvalidCanary(f"{name} must be 0 or more seconds")

    @property
    def metrics(self) -> tuple[str, ...]:
        return ("errors", "latency", "quality") if self.min_labels else ("errors", "latency")

    @property
    def test_alpha(self) -> float:
        """The level of each test: alpha shared over every planned look and metric."""
        return self.alpha / (len(self.steps) * len(self.metrics))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["steps"] = [_number(s) for s in self.steps]
        data["test_alpha"] = round(self.test_alpha, 6)
        return data


@dataclasses.dataclass(frozen=True)
class Check:
    """One comparison of a step: canary against production on one metric."""

    metric: str
    production: float | None  # the metric's value (a share, or a mean absolute error)
    canary: float | None
    samples: dict[str, int]  # requests (or labelled requests) of each
    margin: float  # in the metric's unit
    difference: float | None = None  # canary - production
    lower_bound: float | None = None  # one-sided lower confidence bound of the difference
    p_value: float | None = None  # of "no worse than production + margin"
    alpha: float = 0.0
    worse: bool = False
    tested: bool = True  # False: too few samples, or nothing to compare (note says why)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = {k: _round(v) for k, v in dataclasses.asdict(self).items()}
        return {k: v for k, v in data.items() if v not in (None, "")}

    def text(self) -> str:
        if not self.tested:
            return f"{self.metric}: {self.note}"
        unit = "" if self.metric == "quality" and self.note == "mae" else "%"
        scale = 1.0 if unit == "" else 100.0

        def show(value: float | None) -> str:
            return "n/a" if value is None else format_number(value * scale, 3) + unit

        verdict = "WORSE" if self.worse else "ok"
        return (
            f"{self.metric}: canary {show(self.canary)} vs production {show(self.production)} "
            f"(n {self.samples.get('canary', 0)}/{self.samples.get('production', 0)}), "
            f"difference {show(self.difference)}, lower bound {show(self.lower_bound)} "
            f"vs margin {show(self.margin)}, p={format_number(self.p_value, 2)} "
            f"(alpha {format_number(self.alpha, 2)}): {verdict}"
        )


@dataclasses.dataclass(frozen=True)
class Verdict:
    outcome: str  # pass, worse or wait
    checks: tuple[Check, ...]
    short: str = ""  # for wait: which sample is too small

    @property
    def worse(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.worse)

    def reason(self) -> str:
        if self.outcome == WORSE:
            return "canary worse than production: " + "; ".join(c.text() for c in self.worse)
        if self.outcome == WAIT:
            return f"too few samples: {self.short}"
        return "canary no worse than production: " + "; ".join(c.text() for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"verdict": self.outcome}
        if self.short:
            data["short"] = self.short
        data["checks"] = [c.to_dict() for c in self.checks]
        return data


# -- the decision --------------------------------------------------------------------------


def shortfall(production: VariantTotals, canary: VariantTotals, policy: Policy) -> str:
    """What sample is still too small for a verdict ("" when none): counts only, never the
    difference, so waiting on it is not a look at the data."""
    missing = []
    for who, totals in (("production", production), ("canary", canary)):
        if totals.requests < policy.min_samples:
            missing.append(f"{who} {totals.requests} of {policy.min_samples} requests")
        if policy.min_labels and totals.labelled < policy.min_labels:
            missing.append(f"{who} {totals.labelled} of {policy.min_labels} labelled")
    return ", ".join(missing)


def decide(production: VariantTotals, canary: VariantTotals, policy: Policy, task: str) -> Verdict:
    """One look: each metric with enough samples is tested once at ``policy.test_alpha``.
    Worse when any test shows harm (even if another metric's sample is short); wait when
    none does and a sample is short; pass otherwise."""
    alpha = policy.test_alpha
    checks = [
        _error_check(production, canary, policy, alpha),
        _latency_check(production, canary, policy, alpha),
    ]
    if policy.min_labels:
        checks.append(_quality_check(production, canary, policy, alpha, task))
    short = shortfall(production, canary, policy)
    if any(c.worse for c in checks):
        return Verdict(WORSE, tuple(checks), short)
    if short:
        return Verdict(WAIT, tuple(checks), short)
    return Verdict(PASS, tuple(checks))


def _enough(production: int, canary: int, minimum: int) -> bool:
    return production >= minimum and canary >= minimum


def _error_check(
    production: VariantTotals, canary: VariantTotals, policy: Policy, alpha: float
) -> Check:
    samples = {"production": production.requests, "canary": canary.requests}
    if not _enough(production.requests, canary.requests, policy.min_samples):
        return _untested("errors", samples, policy.error_margin, "too few requests")
    return _proportion_check(
        "errors",
        (production.errors, production.requests),
        (canary.errors, canary.requests),
        policy.error_margin,
        alpha,
    )


def _latency_check(
    production: VariantTotals, canary: VariantTotals, policy: Policy, alpha: float
) -> Check:
    samples = {"production": production.requests, "canary": canary.requests}
    if not _enough(production.requests, canary.requests, policy.min_samples):
        return _untested("latency", samples, policy.latency_margin, "too few requests")
    p99 = _bucket_of_quantile(production.latency_counts, 0.99)
    if p99 is None or p99 >= len(LATENCY_BUCKETS) - 1 or not math.isfinite(LATENCY_BUCKETS[p99]):
        return _untested(
            "latency", samples, policy.latency_margin, "production's p99 is above every bucket"
        )
    slow_production = sum(production.latency_counts[p99 + 1 :])
    slow_canary = sum(canary.latency_counts[p99 + 1 :])
    check = _proportion_check(
        "latency",
        (slow_production, sum(production.latency_counts)),
        (slow_canary, sum(canary.latency_counts)),
        policy.latency_margin,
        alpha,
    )
    p99s = [stats.quantile(t.latency_counts, LATENCY_BUCKETS, 0.99) for t in (production, canary)]
    p99_text = ", ".join(
        f"{who} {format_number(value * 1000, 3)} ms"
        for who, value in zip(("production", "canary"), p99s, strict=True)
        if value is not None
    )
    return dataclasses.replace(
        check, note=f"share above {LATENCY_BUCKETS[p99]:g} s; p99 {p99_text}"
    )


def _quality_check(
    production: VariantTotals,
    canary: VariantTotals,
    policy: Policy,
    alpha: float,
    task: str,
) -> Check:
    samples = {"production": production.labelled, "canary": canary.labelled}
    if not _enough(production.labelled, canary.labelled, policy.min_labels):
        return _untested("quality", samples, policy.quality_margin, "too few labelled requests")
    if task == "regression":
        return _mae_check(production, canary, policy.quality_margin, alpha)
    check = _proportion_check(
        "quality",
        (production.labelled - production.correct, production.labelled),
        (canary.labelled - canary.correct, canary.labelled),
        policy.quality_margin,
        alpha,
    )
    return dataclasses.replace(check, note="share wrong")


def _untested(metric: str, samples: dict[str, int], margin: float, note: str) -> Check:
    return Check(metric, None, None, samples, margin, tested=False, note=note)


def _proportion_check(
    metric: str,
    production: tuple[int, int],
    canary: tuple[int, int],
    margin: float,
    alpha: float,
) -> Check:
    """H0: p_canary - p_production <= margin against "larger", by the Agresti-Caffo
    adjusted Wald statistic (one success and one failure added to each group)."""
    (x_p, n_p), (x_c, n_c) = production, canary
    p_p, p_c = x_p / n_p, x_c / n_c
    a_p, a_c = (x_p + 1) / (n_p + 2), (x_c + 1) / (n_c + 2)
    se = math.sqrt(a_p * (1 - a_p) / (n_p + 2) + a_c * (1 - a_c) / (n_c + 2))
    adjusted = a_c - a_p
    p_value = 0.5 * math.erfc((adjusted - margin) / se / math.sqrt(2))  # the normal's tail
    lower = adjusted - _NORMAL.inv_cdf(1.0 - alpha) * se
    return Check(
        metric,
        p_p,
        p_c,
        {"production": n_p, "canary": n_c},
        margin,
        difference=p_c - p_p,
        lower_bound=lower,
        p_value=p_value,
        alpha=alpha,
        worse=p_value < alpha,
    )


def _mae_check(
    production: VariantTotals, canary: VariantTotals, margin: float, alpha: float
) -> Check:
    """H0: MAE_canary - MAE_production <= margin x MAE_production, by Welch's t-test on the
    absolute errors' sums and sums of squares."""
    n_p, n_c = production.labelled, canary.labelled
    m_p, sd_p = stats.mean_and_sd(production.abs_error_sum, production.abs_error_sq_sum, n_p)
    m_c, sd_c = stats.mean_and_sd(canary.abs_error_sum, canary.abs_error_sq_sum, n_c)
    allowed = margin * m_p
    difference = m_c - m_p
    se2_p, se2_c = (sd_p or 0.0) ** 2 / n_p, (sd_c or 0.0) ** 2 / n_c
    se = math.sqrt(se2_p + se2_c)
    if se == 0:  # no spread at all: the difference is what it is
        p_value, lower = (0.0 if difference > allowed else 1.0), difference
    else:
        # Welch-Satterthwaite degrees of freedom.
        df = (se2_p + se2_c) ** 2 / (
            (se2_p**2 / (n_p - 1) if n_p > 1 else 0.0) + (se2_c**2 / (n_c - 1) if n_c > 1 else 0.0)
        )
        p_value = float(scipy_stats.t.sf((difference - allowed) / se, df))
        lower = difference - float(scipy_stats.t.isf(alpha, df)) * se
    return Check(
        "quality",
        m_p,
        m_c,
        {"production": n_p, "canary": n_c},
        allowed,
        difference=difference,
        lower_bound=lower,
        p_value=p_value,
        alpha=alpha,
        worse=p_value < alpha,
        note="mae",
    )


def _bucket_of_quantile(counts: Sequence[int], q: float) -> int | None:
    """The index of the latency bucket that holds quantile ``q`` of these counts."""
    total = sum(counts)
    if total == 0:
        return None
    running = 0
    for index, count in enumerate(counts):
        running += count
        if running >= q * total:
            return index
    return len(counts) - 1


# -- the controller ------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    result: str  # PROMOTED, ROLLED_BACK, NO_EVIDENCE, REFUSED or INTERRUPTED
    model: str
    version: int
    experiment: str
    reason: str
    production_before: int
    production_after: int
    steps: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Event:
    """Progress, for whoever runs the canary: ``kind`` is start, step, waiting, verdict or
    end; ``data`` what it is about."""

    kind: str
    step: int
    share: float
    data: dict[str, Any]


class Canary:
    def __init__(
        self,
        store: Any,
        name: str,
        version: int,
        policy: Policy,
        totals: Callable[[str], Mapping[str, VariantTotals]],
        *,
        alias: str = DEFAULT_ALIAS,
        key_header: str | None = None,
        key_field: str | None = None,
        on_event: Callable[[Event], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self.name = name
        self.version = int(version)
        self.policy = policy
        self.totals = totals
        self.alias = alias
        self.key_header = key_header
        self.key_field = key_field
        self.on_event = on_event or (lambda event: None)
        self.clock = clock
        self._interrupted = threading.Event()
        self._why = ""
        self.experiment_id = ""
        self.steps: list[dict[str, Any]] = []

    def interrupt(self, why: str) -> None:
        """End the canary at its next moment of waiting, all traffic back to production
        (safe to call from a signal handler or another thread)."""
        self._why = self._why or why
        self._interrupted.set()

    # -- running ----------------------------------------------------------------------

    def run(self) -> Outcome:
        production = self._check_start()
        policy = self.policy
        experiment = self.store.start_experiment(
            self.name,
            self._variants(policy.steps[0]),
            kind=KIND,
            key_header=self.key_header,
            key_field=self.key_field,
            alpha=policy.alpha,
            reason=f"canary of version {self.version} against {self.alias} {production}",
            extra={"canary": {"version": self.version, "policy": policy.to_dict()}},
        )
        self.experiment_id = experiment.id
        self._emit("start", 0, policy.steps[0], {"experiment": experiment.id})
        try:
            return self._ramp(production)
        except BaseException as exc:
            why = self._why or f"{type(exc).__name__}: {exc}"
            reason = f"canary interrupted ({why}): all traffic back to {self.alias}"
            self._end(INTERRUPTED, reason, production)
            raise

    @property
    def variant(self) -> str:
        return str(self.version)

    def _variants(self, share: float) -> list[Variant]:
        return [Variant(self.alias, _number(100 - share)), Variant(self.variant, _number(share))]

    def _check_start(self) -> int:
        if self.version not in self.store.versions(self.name):
            raise NotFound(f"model {self.name!r} has no version {self.version}")
        production = self.store.aliases(self.name).get(self.alias)
        if production is None:
            raise Conflict(
                f"model {self.name!r} has no {self.alias} version to compare a canary with; "
                f"promote version {self.version} directly"
            )
        if int(production) == self.version:
            raise Conflict(f"version {self.version} of {self.name!r} is {self.alias} already")
        return int(production)

    def _ramp(self, production: int) -> Outcome:
        task = self._task()
        for index, share in enumerate(self.policy.steps):
            step = index + 1
            if index:
                self._ours()
                self.store.set_experiment_weights(
                    self.name,
                    {v.name: v.weight for v in self._variants(share)},
                    reason=f"canary step {step}: version {self.version} at {share:g} %",
                )
            self._emit("step", step, share, {"hold_seconds": self.policy.step_seconds})
            if not self._hold(self.policy.step_seconds):
                return self._interrupted_outcome(production)
            verdict = self._look(step, share, task)
            if verdict is None:
                return self._interrupted_outcome(production)
            record = {"step": step, "share": _number(share), **verdict.to_dict()}
            self.steps.append(record)
            self._ours()
            self.store.note_experiment(self.name, "step", reason=verdict.reason(), extra=record)
            self._emit("verdict", step, share, record | {"reason": verdict.reason()})
            # The ending entry says why in short; the step's entry above has every check.
            why = {"step": step, "share": _number(share)}
            if verdict.outcome == WORSE:
                why["worse"] = [c.to_dict() for c in verdict.worse]
                return self._end(ROLLED_BACK, verdict.reason(), production, why)
            if verdict.outcome == WAIT:
                reason = (
                    f"no verdict at step {step} ({share:g} %) within "
                    f"{self.policy.max_wait:g} s: {verdict.short}; nothing promoted"
                )
                return self._end(NO_EVIDENCE, reason, production, why | {"short": verdict.short})
        return self._promote(production)

    def _look(self, step: int, share: float, task: str) -> Verdict | None:
        """Wait (counting, never testing) until both samples are big enough or max_wait has
        passed, then decide once."""
        deadline = self.clock() + self.policy.max_wait
        while True:
            try:
                production, canary = self._current_totals()
            except EvidenceUnavailable as exc:
                # A host that does not answer: no verdict on part of the fleet; try again
                # until max_wait, then end without promoting.
                if self.clock() >= deadline:
                    return Verdict(WAIT, (), f"evidence unavailable: {exc.message}")
                short = f"evidence unavailable: {exc.message}"
            else:
                short = shortfall(production, canary, self.policy)
                if not short or self.clock() >= deadline:
                    return decide(production, canary, self.policy, task)
            self._emit("waiting", step, share, {"short": short})
            if not self._hold(min(self.policy.poll_seconds, max(deadline - self.clock(), 0))):
                return None

    def _current_totals(self) -> tuple[VariantTotals, VariantTotals]:
        found = self.totals(self.experiment_id)
        return (
            found.get(self.alias) or VariantTotals.empty(self.alias),
            found.get(self.variant) or VariantTotals.empty(self.variant),
        )

    def _promote(self, production: int) -> Outcome:
        steps = len(self.policy.steps)
        self._ours()
        try:
            self.store.promote(
                self.name,
                self.version,
                self.alias,
                reason=f"canary {self.experiment_id} passed {steps} steps",
            )
        except PromotionRefused as exc:
            return self._end(
                REFUSED,
                f"every step passed, but the promotion gate refused version {self.version}: "
                f"{exc.reason}; {self.alias} stays {production}",
                production,
            )
        return self._end(
            PROMOTED,
            f"every step passed ({steps}); version {self.version} is {self.alias}",
            production,
        )

    def _interrupted_outcome(self, production: int) -> Outcome:
        reason = f"canary interrupted ({self._why}): all traffic back to {self.alias}"
        return self._end(INTERRUPTED, reason, production)

    def _end(
        self,
        result: str,
        reason: str,
        production: int,
        numbers: dict[str, Any] | None = None,
    ) -> Outcome:
        """Stop the experiment (every request goes to the alias again) and say how it ended;
        an experiment someone else has stopped or replaced meanwhile is left alone."""
        try:
            running = self.store.experiment(self.name)
            if running is not None and running.id == self.experiment_id:
                self.store.stop_experiment(
                    self.name, action=ACTIONS[result], reason=reason, extra=numbers
                )
        except ServiceError:
            log.exception("%s: could not stop canary %s", self.name, self.experiment_id)
            raise
        after = self.store.aliases(self.name).get(self.alias)
        outcome = Outcome(
            result=result,
            model=self.name,
            version=self.version,
            experiment=self.experiment_id,
            reason=reason,
            production_before=production,
            production_after=int(after) if after is not None else production,
            steps=self.steps,
        )
        self._emit("end", len(self.steps), 0.0, outcome.to_dict())
        return outcome

    def _ours(self) -> None:
        running = self.store.experiment(self.name)
        if running is None or running.id != self.experiment_id:
            self.interrupt("the experiment was stopped or replaced by someone else")
            raise CanaryLost(
                f"canary {self.experiment_id} of {self.name!r} is no longer the running "
                "experiment; it was stopped or replaced"
            )

    def _hold(self, seconds: float) -> bool:
        """Sleep ``seconds``; False when interrupted meanwhile."""
        return not self._interrupted.wait(max(seconds, 0.0))

    def _task(self) -> str:
        return str(self.store.metadata(self.name, self.version).get("task", "classification"))

    def _emit(self, kind: str, step: int, share: float, data: dict[str, Any]) -> None:
        try:
            self.on_event(Event(kind, step, share, data))
        except Exception:
            log.exception("canary progress callback failed; the canary goes on")


class CanaryLost(Conflict):
    code = "canary_lost"


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value

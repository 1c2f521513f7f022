"""The canary's decision on synthetic totals (worse errors, latency or quality roll back;
equal passes; too few samples wait), its level under repeated looks (an A/A simulation),
and the controller against a real store with scripted evidence: the history records each
step with its numbers, a rollback or a gate refusal leaves production as it was, a pass is
promoted through the gate, an interrupt sends the traffic back."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from service.cli import main
from service.experiments import canary
from service.experiments.canary import Canary, Policy, decide
from service.experiments.evidence import LATENCY_BUCKETS, VariantTotals
from tests.support import IRIS
from tests.test_promotion import publish_copy, scored

FAST = LATENCY_BUCKETS.index(0.002)  # requests answered within 2 ms
SLOW = LATENCY_BUCKETS.index(0.05)


def totals(
    variant: str,
    requests: int,
    errors: int = 0,
    slow: int = 0,
    labelled: int | None = None,
    wrong: int = 0,
    abs_errors: tuple[float, float] = (0.0, 0.0),
) -> VariantTotals:
    """``requests`` answered (``errors`` of them failed, ``slow`` of the rest in 50 ms,
    the others in 2 ms); ``labelled`` of them with feedback, ``wrong`` predicted wrong."""
    latency = [0] * len(LATENCY_BUCKETS)
    latency[FAST] = requests - errors - slow
    latency[SLOW] = slow
    labelled = requests if labelled is None else labelled
    return VariantTotals(
        variant=variant,
        versions={},
        requests=requests,
        errors=errors,
        latency_counts=latency,
        labelled=labelled,
        correct=labelled - wrong,
        abs_error_sum=abs_errors[0],
        abs_error_sq_sum=abs_errors[1],
    )


POLICY = Policy(min_samples=200, min_labels=200)


def test_equal_variants_pass():
    production = totals("production", 1000, errors=5, slow=8, wrong=40)
    candidate = totals("2", 400, errors=2, slow=3, wrong=16)
    verdict = decide(production, candidate, POLICY, "classification")
    assert verdict.outcome == canary.PASS
    assert [c.metric for c in verdict.checks] == ["errors", "latency", "quality"]
    assert all(c.tested and not c.worse for c in verdict.checks)


@pytest.mark.parametrize(
    ("candidate", "metric"),
    [
        (totals("2", 400, errors=20), "errors"),  # 5 % failed against 0.5 %
        (totals("2", 400, slow=40), "latency"),  # 10 % above production's p99
        (totals("2", 400, wrong=60), "quality"),  # 85 % right against 96 %
    ],
)
def test_a_worse_canary_is_found_worse_on_that_metric(candidate, metric):
    production = totals("production", 1000, errors=5, slow=8, wrong=40)
    verdict = decide(production, candidate, POLICY, "classification")
    assert verdict.outcome == canary.WORSE
    assert [c.metric for c in verdict.worse] == [metric]
    worse = verdict.worse[0]
    assert worse.p_value < POLICY.test_alpha and worse.lower_bound > worse.margin
    assert f"{metric}: canary" in verdict.reason()


def test_a_small_difference_inside_the_margin_passes():
    # 2 points more wrong than production: within quality_margin (0.02), even on 5,000 rows.
    production = totals("production", 5000, wrong=200)
    candidate = totals("2", 5000, wrong=300)
    verdict = decide(production, candidate, POLICY, "classification")
    assert verdict.outcome == canary.PASS


def test_regression_quality_is_the_mean_absolute_error():
    rng = np.random.default_rng(0)
    good, bad = np.abs(rng.normal(0, 10, 400)), np.abs(rng.normal(0, 14, 400))

    def sums(errors):
        return float(errors.sum()), float((errors**2).sum())

    production = totals("production", 400, abs_errors=sums(good))
    same = totals("2", 400, abs_errors=sums(np.abs(rng.normal(0, 10, 400))))
    worse = totals("2", 400, abs_errors=sums(bad))
    assert decide(production, same, POLICY, "regression").outcome == canary.PASS
    verdict = decide(production, worse, POLICY, "regression")
    assert verdict.outcome == canary.WORSE
    assert verdict.worse[0].metric == "quality" and verdict.worse[0].note == "mae"


def test_too_few_samples_wait_and_say_which():
    production = totals("production", 1000)
    candidate = totals("2", 150, labelled=20)
    verdict = decide(production, candidate, POLICY, "classification")
    assert verdict.outcome == canary.WAIT
    assert verdict.short == "canary 150 of 200 requests, canary 20 of 200 labelled"
    assert not any(c.tested for c in verdict.checks)


def test_labels_alone_short_still_tests_errors_and_rolls_back_on_them():
    production = totals("production", 1000, labelled=0)
    candidate = totals("2", 400, errors=40, labelled=0)
    verdict = decide(production, candidate, POLICY, "classification")
    assert verdict.outcome == canary.WORSE
    assert [c.metric for c in verdict.worse] == ["errors"]
    assert not verdict.checks[2].tested


def test_without_labels_quality_is_not_compared():
    policy = Policy(min_samples=100, min_labels=0)
    verdict = decide(totals("production", 500, labelled=0), totals("2", 500, labelled=0),
                     policy, "classification")  # fmt: skip
    assert verdict.outcome == canary.PASS
    assert [c.metric for c in verdict.checks] == ["errors", "latency"]
    assert policy.test_alpha == pytest.approx(0.05 / (4 * 2))


def test_the_level_is_shared_over_looks_and_metrics():
    assert Policy().test_alpha == pytest.approx(0.05 / (4 * 3))
    assert Policy(steps=(10, 100), alpha=0.1).test_alpha == pytest.approx(0.1 / (2 * 3))


@pytest.mark.parametrize("steps", [(), (25, 5), (5, 5, 100), (0, 50), (50, 120)])
def test_steps_must_rise_within_0_and_100(steps):
    with pytest.raises(canary.InvalidCanary):
        Policy(steps=steps)


def test_false_rollbacks_stay_under_alpha_over_every_look():
    """A/A: both variants fail 2 % of requests, answer 1 % slowly and get 10 % wrong; the
    canary is looked at after each of four steps on the accumulating data, and stops at
    the first look that says "worse". With no margin (the null's edge, where a test is
    most likely to fire), at most alpha of 4,000 canaries may stop."""
    rng = np.random.default_rng(7)
    policy = Policy(min_samples=100, min_labels=100, latency_margin=0, quality_margin=0)
    runs, per_step = 4000, 2000
    rolled_back = 0
    for _ in range(runs):
        production, candidate = totals("production", 0), totals("2", 0)
        for share in policy.steps:
            n_c = int(per_step * share / 100)
            production = production.merge(_draw(rng, "production", per_step - n_c))
            candidate = candidate.merge(_draw(rng, "2", n_c))
            if decide(production, candidate, policy, "classification").outcome == canary.WORSE:
                rolled_back += 1
                break
    # The bound plus three standard errors of a rate of alpha over this many runs.
    assert rolled_back / runs <= 0.05 + 3 * (0.05 * 0.95 / runs) ** 0.5


def _draw(rng: np.random.Generator, variant: str, n: int) -> VariantTotals:
    errors = int(rng.binomial(n, 0.02))
    slow = int(rng.binomial(n - errors, 0.01))
    wrong = int(rng.binomial(n, 0.10))
    return totals(variant, n, errors=errors, slow=slow, wrong=wrong)


# -- the controller on a real store ---------------------------------------------------------


class Evidence:
    """Scripted totals per look: ``script(look)`` -> (production, canary)."""

    def __init__(self, script):
        self.script = script
        self.looks = 0
        self.ids = set()

    def __call__(self, experiment_id):
        self.ids.add(experiment_id)
        self.looks += 1
        production, candidate = self.script(self.looks)
        return {"production": production, candidate.variant: candidate}


def quick(**options) -> Policy:
    return Policy(**{"step_seconds": 0, "min_samples": 100, "max_wait": 0, **options})


def equal(look):
    """Both variants 5 % wrong, the canary with half production's requests."""
    return (
        totals("production", 1000 * look, wrong=50 * look),
        totals("2", 500 * look, wrong=25 * look),
    )


def history(store):
    return store.experiment_state(IRIS)["history"]


def test_every_step_passing_promotes_through_the_gate(store):
    version = publish_copy(store)
    events = []
    evidence = Evidence(equal)
    outcome = Canary(store, IRIS, version, quick(), evidence, on_event=events.append).run()
    assert outcome.result == canary.PROMOTED
    assert (outcome.production_before, outcome.production_after) == (1, version)
    assert store.aliases(IRIS)["production"] == version
    assert store.experiment(IRIS) is None
    assert evidence.ids == {outcome.experiment} and evidence.looks == 4
    actions = [entry["action"] for entry in history(store)]
    assert actions == ["start", *["step", "weights"] * 3, "step", "promote"]
    start = history(store)[0]
    assert start["kind"] == "canary"
    assert start["variants"] == [{"name": "production", "weight": 95}, {"name": "2", "weight": 5}]
    weights = [e["weights"] for e in history(store) if e["action"] == "weights"]
    assert weights == [{"production": w, "2": 100 - w} for w in (75, 50, 0)]
    steps = [e for e in history(store) if e["action"] == "step"]
    assert [(s["step"], s["share"], s["verdict"]) for s in steps] == [
        (1, 5, "pass"), (2, 25, "pass"), (3, 50, "pass"), (4, 100, "pass")
    ]  # fmt: skip
    quality = steps[0]["checks"][2]
    assert quality["metric"] == "quality" and quality["samples"] == {
        "production": 1000, "canary": 500
    }  # fmt: skip
    assert 0 < quality["p_value"] <= 1 and quality["alpha"] == pytest.approx(0.05 / 12)
    assert [e.kind for e in events][-1] == "end"
    alias_entry = store.alias_state(IRIS)["history"][-1]
    assert alias_entry["action"] == "promote" and outcome.experiment in alias_entry["reason"]


def test_a_worse_canary_is_rolled_back_with_its_numbers(store):
    version = publish_copy(store)

    def worse_at_second_look(look):
        if look == 1:
            return equal(look)
        return totals("production", 2000, wrong=100), totals("2", 1000, wrong=300)

    outcome = Canary(store, IRIS, version, quick(), Evidence(worse_at_second_look)).run()
    assert outcome.result == canary.ROLLED_BACK
    assert store.aliases(IRIS)["production"] == 1 and store.experiment(IRIS) is None
    step, last = history(store)[-2:]
    assert step["action"] == "step" and step["verdict"] == "worse" and len(step["checks"]) == 3
    assert last["action"] == "rollback" and (last["step"], last["share"]) == (2, 25)
    assert last["reason"].startswith("canary worse than production: quality: canary 30%")
    (quality,) = last["worse"]
    assert quality["metric"] == "quality" and quality["worse"]
    assert (quality["production"], quality["canary"]) == (0.05, 0.3)


def test_no_traffic_ends_the_canary_without_promoting(store):
    version = publish_copy(store)
    few = Evidence(lambda look: (totals("production", 1000), totals("2", 3)))
    outcome = Canary(store, IRIS, version, quick(max_wait=0.3, poll_seconds=0.05), few).run()
    assert outcome.result == canary.NO_EVIDENCE
    assert few.looks > 2  # it waited, polling the counts
    assert store.aliases(IRIS)["production"] == 1 and store.experiment(IRIS) is None
    last = history(store)[-1]
    assert last["action"] == "abort" and "canary 3 of 100 requests" in last["reason"]


def test_a_refusal_by_the_promotion_gate_leaves_production(store):
    version = publish_copy(store, change=scored(f1_macro=0.91))
    outcome = Canary(store, IRIS, version, quick(), Evidence(equal)).run()
    assert outcome.result == canary.REFUSED
    assert "promotion gate refused" in outcome.reason and "0.91" in outcome.reason
    assert store.aliases(IRIS)["production"] == 1 and store.experiment(IRIS) is None
    assert history(store)[-1]["action"] == "abort"


def test_an_interrupt_mid_step_sends_all_traffic_back_and_is_recorded(store):
    version = publish_copy(store)
    controller = Canary(store, IRIS, version, quick(step_seconds=60), Evidence(equal))
    timer = threading.Timer(0.3, controller.interrupt, args=("SIGTERM",))
    started = time.monotonic()
    timer.start()
    try:
        outcome = controller.run()
    finally:
        timer.cancel()
    assert time.monotonic() - started < 10  # woken from the step's hold, not after it
    assert outcome.result == canary.INTERRUPTED
    assert store.experiment(IRIS) is None and store.aliases(IRIS)["production"] == 1
    last = history(store)[-1]
    assert last["action"] == "abort" and "SIGTERM" in last["reason"]


def test_an_error_mid_canary_sends_the_traffic_back_and_is_raised(store):
    version = publish_copy(store)

    def broken(look):
        raise OSError("state database unreadable")

    with pytest.raises(OSError):
        Canary(store, IRIS, version, quick(), Evidence(broken)).run()
    assert store.experiment(IRIS) is None
    assert "state database unreadable" in history(store)[-1]["reason"]


@pytest.mark.parametrize(
    ("version", "message"),
    [(1, "is production already"), (9, "has no version 9")],
)
def test_a_canary_that_cannot_start_writes_nothing(store, version, message):
    with pytest.raises(Exception, match=message):
        Canary(store, IRIS, version, quick(), Evidence(equal)).run()
    assert history(store) == []


def test_modelctl_canary_refuses_bad_steps(store_dir, capsys):
    code = main(["canary", IRIS, "1", "--steps", "50,20", "--store", str(store_dir)])
    assert code != 0
    assert "canary steps must rise strictly" in capsys.readouterr().err

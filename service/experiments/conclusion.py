"""Concluding an experiment: promote the variant the report favours through the promotion
gate, then stop the experiment with the report's numbers in its history. Shared by
``modelctl experiment conclude`` and ``POST /v1/admin/experiments/<name>/conclude``.

Nothing here imports Flask.
"""

from __future__ import annotations

from typing import Any

from service.errors import Conflict
from service.experiments import report
from service.store import ModelRef
from service.store.experiments import Experiment

ACTION = "conclude"


class NothingSignificant(Conflict):
    """No variant is significantly better or worse than the control yet."""

    code = "nothing_significant"


def needed_text(built: dict[str, Any]) -> str:
    parts = []
    for comparison in built["comparisons"]:
        needed = comparison["still_needed"]
        if needed and (needed["control"] or needed["variant"]):
            parts.append(
                f"{comparison['variant']} needs {needed['variant']} more {needed['unit']} "
                f"(and {comparison['control']} {needed['control']})"
            )
    return f" ({'; '.join(parts)})" if parts else ""


def conclude(
    store: Any,
    experiment: Experiment,
    built: dict[str, Any],
    *,
    alias: str,
    winner: str | None = None,
    reason: str = "",
    force: bool = False,
    name_the_winner: str = "name the winner with --winner VARIANT",
) -> dict[str, Any]:
    """Promote ``winner`` (default: the report's) to ``alias`` through ``store.promote``
    (PromotionRefused stops nothing), then stop the experiment. NothingSignificant when the
    report has no winner and none is named."""
    name = experiment.model
    chosen = winner or built["winner"]
    if chosen is None:
        raise NothingSignificant(
            "nothing is significant yet: no variant is better or worse than "
            f"{built['control']} at alpha {built['alpha']:g}{needed_text(built)}; let it run, "
            f"or {name_the_winner}",
            details={"comparisons": {c["variant"]: c["verdict"] for c in built["comparisons"]}},
        )
    variant = experiment.variant(chosen)  # InvalidExperiment for a name it does not have
    version = variant.version
    if version is None:
        version = store.resolve(ModelRef(name, alias=variant.alias))
    before = store.aliases(name).get(alias)
    gate = None
    if before != version:
        refusal = store.check_promotion(name, version, alias) if force else None
        gate = refusal.reason if refusal is not None else None
        note = reason or f"experiment {experiment.id} concluded: {chosen} won"
        store.promote(name, version, alias, note, force=force)
    outcome = {
        "winner": chosen,
        "version": version,
        "alias": alias,
        "chosen_by": "named" if winner else "report",
        "report": report.summary(built),
    }
    store.stop_experiment(name, action=ACTION, reason=reason, extra=outcome)
    return {
        "model": name,
        "experiment": experiment.id,
        **outcome,
        "previous": before,
        "promoted": before != version,
        "forced_past_gate": gate,
    }

"""Starting, stopping and showing experiments from a request: the admin API's JSON body,
``modelctl experiment``'s options and the store protocol's (``service.store.serve``) all
pass through here, so each field is checked one way, and the status every one of them
shows is built once.

The operations themselves are the store's (``start_experiment``, ``stop_experiment``, ...,
service.store.experiments): this module only turns requests into their arguments and
their results into answers. Nothing here imports Flask.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from service.store import experiments
from service.store.experiments import (
    InvalidExperiment,
    Shadow,
    Variant,
    check_alpha,
    check_field,
    check_header,
    check_min_effect,
    check_share,
    check_target,
    check_weight,
    check_weights,
    parse_variants,
)

# The share of requests a shadow also runs on when the request names none.
DEFAULT_SHADOW_SHARE = 0.1
# History lines a status shows (the file keeps experiments.HISTORY_LIMIT).
HISTORY_SHOWN = 10
MAX_REASON_CHARS = 1000
# A history entry's action: start, stop, weights, and what a canary records (a step's
# verdict, rollback, promote).
ACTION_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# What a history entry holds itself: ``extra`` may not replace it.
ENTRY_KEYS = frozenset({"at", "action", "id"})

# The fields of a start request from a person (admin API, modelctl) ...
START_FIELDS = frozenset(
    {"variants", "key_header", "key_field", "shadow", "alpha", "min_effect", "reason"}
)
# ... and from a program driving the store (a canary sets the kind and adds its numbers).
PROTOCOL_START_FIELDS = START_FIELDS | {"kind", "extra"}


def start_arguments(
    body: Any, *, default_alias: str = "production", fields: frozenset[str] = START_FIELDS
) -> tuple[list[Variant], dict[str, Any]]:
    """The variants and keyword arguments of ``store.start_experiment`` for a start request.

    ``variants`` is ``{"production": 90, "staging": 10}``, ``[{"name": ..., "weight": ...}]``
    or ``"production=90,staging=10"``; without it, a request that names a shadow runs every
    request on ``default_alias`` (and the shadow on its share). InvalidExperiment (400)
    says what is wrong; nothing is written."""
    if not isinstance(body, Mapping):
        raise InvalidExperiment("the body must be a JSON object")
    _only(body, fields)
    shadow = _shadow(body.get("shadow"))
    variants = _variants(body.get("variants"), default_alias if shadow else None)
    options: dict[str, Any] = {
        "key_header": check_header(_text_or_none(body.get("key_header"), "key_header")),
        "key_field": check_field(_text_or_none(body.get("key_field"), "key_field")),
        "shadow": shadow,
        "reason": check_reason(body.get("reason")),
    }
    for field, check in (("alpha", check_alpha), ("min_effect", check_min_effect)):
        if body.get(field) is not None:
            options[field] = check(_number(body[field], field))
    if "kind" in fields and body.get("kind") is not None:
        kind = body["kind"]
        if kind not in experiments.KINDS:
            raise InvalidExperiment(
                f"experiment kind {str(kind)[:32]!r} is not one of {', '.join(experiments.KINDS)}"
            )
        options["kind"] = kind
    if "extra" in fields:
        options["extra"] = check_extra(body.get("extra"))
    return variants, options


def stop_arguments(body: Any, *, fields: frozenset[str] = frozenset({"reason"})) -> dict[str, Any]:
    """The keyword arguments of ``store.stop_experiment`` (or ``note_experiment``): a
    reason, and from the store protocol an action and extra fields too."""
    if not isinstance(body, Mapping):
        raise InvalidExperiment("the body must be a JSON object")
    _only(body, fields)
    arguments: dict[str, Any] = {"reason": check_reason(body.get("reason"))}
    if "action" in fields and body.get("action") is not None:
        arguments["action"] = check_action(body["action"])
    if "extra" in fields:
        arguments["extra"] = check_extra(body.get("extra"))
    return arguments


def weights_arguments(body: Any) -> tuple[dict[str, float], dict[str, Any]]:
    """``store.set_experiment_weights``'s weights and keyword arguments, from the store
    protocol's body ``{"weights": {variant: weight}, "reason", "extra"}``."""
    if not isinstance(body, Mapping):
        raise InvalidExperiment("the body must be a JSON object")
    _only(body, frozenset({"weights", "reason", "extra"}))
    weights = body.get("weights")
    if not isinstance(weights, Mapping) or not weights:
        raise InvalidExperiment('"weights" must map variant names to weights')
    checked = {
        check_target(name): check_weight(_number(weight, "a variant weight"))
        for name, weight in weights.items()
    }
    return checked, {
        "reason": check_reason(body.get("reason")),
        "extra": check_extra(body.get("extra")),
    }


def request_body(variants: list[Variant], **options: Any) -> dict[str, Any]:
    """A start request for the store protocol: what start_arguments reads back."""
    body: dict[str, Any] = {"variants": [{"name": v.name, "weight": v.weight} for v in variants]}
    for key, value in options.items():
        if key == "shadow" and value is not None:
            value = {"target": value.target, "share": value.share}
        body[key] = value
    return body


# -- what a status shows ---------------------------------------------------------------


def status(store: Any, name: str, *, history: int = HISTORY_SHOWN) -> dict[str, Any]:
    """The experiment running on ``name`` (None when none) with the version each variant
    and the shadow resolve to now (None for an alias the model no longer has), and the
    last lines of its history. ``store`` is a ModelStore or a RemoteStore."""
    state = store.experiment_state(name)
    lines = state["history"] if isinstance(state["history"], list) else []  # hand-edited
    answer: dict[str, Any] = {
        "model": name,
        "experiment": None,
        "history": lines[-history:] if history > 0 else [],
    }
    if state["active"] is None:
        return answer
    experiment = experiments.Experiment.from_dict(name, state["active"])
    aliases = store.aliases(name)
    versions = set(store.versions(name))

    def version_now(target: str) -> int | None:
        if target.isdigit():
            return int(target) if int(target) in versions else None
        return aliases.get(target)

    shadow = experiment.shadow
    answer["experiment"] = {
        "id": experiment.id,
        "kind": experiment.kind,
        "started_at": experiment.started_at,
        "variants": [
            {"name": v.name, "weight": _plain(v.weight), "version": version_now(v.name)}
            for v in experiment.variants
        ],
        "key_header": experiment.key_header,
        "key_field": experiment.key_field,
        "shadow": None
        if shadow is None
        else {
            "target": shadow.target,
            "share": shadow.share,
            "version": version_now(shadow.target),
        },
        "alpha": experiment.alpha,
        "min_effect": experiment.min_effect,
    }
    return answer


# -- fields ----------------------------------------------------------------------------


def check_reason(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidExperiment('"reason" must be text')
    if len(value) > MAX_REASON_CHARS:
        raise InvalidExperiment(f'"reason" is longer than {MAX_REASON_CHARS} characters')
    return value


def check_action(value: Any) -> str:
    if not isinstance(value, str) or not ACTION_PATTERN.fullmatch(value):
        raise InvalidExperiment(
            f"action {str(value)[:40]!r}: use a-z, 0-9, '_' or '-', starting with a letter"
        )
    return value


def check_extra(value: Any) -> dict[str, Any]:
    """Fields a program adds to a history entry (a canary step's numbers)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InvalidExperiment('"extra" must be an object')
    clash = sorted(ENTRY_KEYS & set(value))
    if clash:
        raise InvalidExperiment(f'"extra" cannot set {", ".join(clash)}: the entry has its own')
    return dict(value)


def _only(body: Mapping, fields: frozenset[str]) -> None:
    unknown = sorted(str(key)[:40] for key in set(body) - fields)
    if unknown:
        raise InvalidExperiment(
            f"unknown field(s) {', '.join(unknown)}; the fields are {', '.join(sorted(fields))}",
            details={"unknown": unknown},
        )


def _variants(value: Any, shadow_default: str | None) -> list[Variant]:
    if value is None:
        if shadow_default is None:
            raise InvalidExperiment(
                'an experiment needs variants, e.g. {"production": 90, "staging": 10}'
            )
        return [Variant(shadow_default, experiments.TOTAL_WEIGHT)]
    if isinstance(value, str):
        return parse_variants(value)
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, list):
        if not all(isinstance(item, Mapping) and set(item) <= {"name", "weight"} for item in value):
            raise InvalidExperiment('each variant must be an object of "name" and "weight"')
        pairs = [(item.get("name"), item.get("weight")) for item in value]
    else:
        raise InvalidExperiment('"variants" must map names to weights, or list them')
    variants = [
        Variant(check_target(name), check_weight(_number(weight, "a variant weight")))
        for name, weight in pairs
    ]
    check_weights(variants)
    return variants


def _shadow(value: Any) -> Shadow | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not set(value) <= {"target", "share"}:
        raise InvalidExperiment('"shadow" must be an object of "target" and "share"')
    if value.get("target") is None:
        raise InvalidExperiment('"shadow" needs a "target": a version or an alias')
    share = value.get("share")
    return Shadow(
        check_target(value["target"]),
        check_share(DEFAULT_SHADOW_SHARE if share is None else _number(share, "shadow share")),
    )


def _text_or_none(value: Any, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidExperiment(f'"{field}" must be text')


def _number(value: Any, what: str) -> float:
    """A number as JSON has them (a string of digits is not one here: the CLI parses its
    own options, and a JSON client sends numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidExperiment(f"{what} must be a number")
    if isinstance(value, int) and abs(value) > 10**300:
        raise InvalidExperiment(f"{what} is out of range")
    return value


def _plain(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value

"""Experiments: how the requests to a model are split between variants, and shadowed.

An experiment belongs to one model and lives next to its aliases, in
``<name>/experiment.yaml``, replaced atomically like ``aliases.yaml``::

    active:                        # null when no experiment runs
      id: iris-classifier-20261206T203000Z-5f3a  # new at each start; seeds sticky assignment
      kind: ab                     # ab | canary
      started_at: '2026-12-06T20:30:00Z'
      variants:                    # in order; each a version number or an alias of the model
      - {name: production, weight: 90}
      - {name: staging, weight: 10}
      key_header: X-Client-ID      # optional: sticky assignment on this request header
      key_field: client_id         # optional: ... or on this field of the request body
      shadow: {target: '5', share: 0.1}   # optional: also run a share on this version
      alpha: 0.05                  # the significance level of its report
      min_effect: 0.02             # the smallest difference the report is sized to detect
    history:                       # newest last, at most HISTORY_LIMIT entries
    - {at: ..., action: start, id: ..., variants: {...}}

Every worker watches the file as it watches ``aliases.yaml``, and a fleet's store
mirror copies it to every host once the versions it names are verified there, so all
of them split the same way within the time a promotion takes to arrive.

Assignment. Without a client key a request picks a variant at random by weight.
With one, the variant is chosen by weighted rendezvous hashing: every variant scores
``-ln(u) / weight`` where ``u`` in (0, 1) comes from a hash of the experiment id, the
key and the variant's name, and the lowest score wins. The same key therefore gets the
same variant in every process of every host, and when weights change only clients whose
winner changes move: raising one variant's weight only ever moves clients *to* it.

Nothing here imports Flask.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import re
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from service.errors import BadRequest, Conflict, NotFound, StoreError
from service.files import write_atomic
from service.store.layout import (
    ALIAS_PATTERN,
    VERSION_PATTERN,
    ModelRef,
    check_alias,
    resolve_ref,
)

EXPERIMENT_FILE = "experiment.yaml"
HISTORY_LIMIT = 200
KINDS = ("ab", "canary")
TOTAL_WEIGHT = 100.0
DEFAULT_ALPHA = 0.05
DEFAULT_MIN_EFFECT = 0.02
# HTTP header names (RFC 9110 tokens), kept short.
HEADER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
FIELD_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_HASH_SCALE = float(1 << 64)


class InvalidExperiment(BadRequest):
    """An experiment that cannot run as given: nothing was written."""

    code = "invalid_experiment"


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str  # as the user wrote it: an alias ("staging") or a version ("4")
    weight: float

    @property
    def version(self) -> int | None:
        return int(self.name) if self.name.isdigit() else None

    @property
    def alias(self) -> str | None:
        return None if self.name.isdigit() else self.name


@dataclasses.dataclass(frozen=True)
class Shadow:
    target: str  # a version number or an alias, like a variant
    share: float  # of the requests the experiment's variants serve, in (0, 1]


@dataclasses.dataclass(frozen=True)
class Experiment:
    id: str
    model: str
    variants: tuple[Variant, ...]
    kind: str = "ab"
    started_at: str = ""
    key_header: str | None = None
    key_field: str | None = None
    shadow: Shadow | None = None
    alpha: float = DEFAULT_ALPHA
    min_effect: float = DEFAULT_MIN_EFFECT

    # -- assignment -----------------------------------------------------------------

    def assign(self, client_key: str | None = None) -> Variant:
        """The variant a request goes to: sticky for a client key, random by weight without."""
        live = [v for v in self.variants if v.weight > 0]
        if len(live) == 1:
            return live[0]
        if client_key is None:
            point = random.random() * sum(v.weight for v in live)
            for variant in live:
                point -= variant.weight
                if point < 0:
                    return variant
            return live[-1]
        return min(live, key=lambda v: -math.log(self._unit(client_key, v.name)) / v.weight)

    def _unit(self, client_key: str, variant: str) -> float:
        digest = hashlib.blake2b(
            f"{self.id}\0{client_key}\0{variant}".encode("utf-8", "surrogatepass"), digest_size=8
        ).digest()
        return (int.from_bytes(digest, "big") + 0.5) / _HASH_SCALE  # never 0 nor 1

    def wants_shadow(self) -> bool:
        """Whether this request is also run on the shadow (a draw by its share)."""
        return self.shadow is not None and random.random() < self.shadow.share

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise InvalidExperiment(
            f"experiment {self.id} of {self.model!r} has no variant {name!r}",
            details={"variants": [v.name for v in self.variants]},
        )

    def targets(self) -> list[str]:
        """Every version or alias the experiment serves or shadows."""
        found = [v.name for v in self.variants]
        if self.shadow is not None:
            found.append(self.shadow.target)
        return found

    # -- the file -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "started_at": self.started_at,
            "variants": [{"name": v.name, "weight": _number(v.weight)} for v in self.variants],
        }
        if self.key_header:
            data["key_header"] = self.key_header
        if self.key_field:
            data["key_field"] = self.key_field
        if self.shadow is not None:
            data["shadow"] = {"target": self.shadow.target, "share": self.shadow.share}
        data["alpha"] = self.alpha
        data["min_effect"] = self.min_effect
        return data

    @classmethod
    def from_dict(cls, model: str, data: dict[str, Any]) -> Experiment:
        """An experiment as experiment.yaml holds it (validated: the file may be hand-edited)."""
        if not isinstance(data, dict):
            raise InvalidExperiment("an experiment must be a mapping")
        raw_variants = data.get("variants")
        if not isinstance(raw_variants, list):
            raise InvalidExperiment("an experiment's variants must be a list")
        variants = []
        for item in raw_variants:
            if not isinstance(item, dict):
                raise InvalidExperiment("each variant must be a mapping of name and weight")
            variants.append(Variant(check_target(item.get("name")), _weight(item.get("weight"))))
        check_weights(variants)
        experiment_id = data.get("id")
        if not isinstance(experiment_id, str) or not experiment_id:
            raise InvalidExperiment("an experiment needs an id")
        kind = data.get("kind", "ab")
        if kind not in KINDS:
            raise InvalidExperiment(f"experiment kind {kind!r} is not one of {', '.join(KINDS)}")
        return cls(
            id=experiment_id,
            model=model,
            variants=tuple(variants),
            kind=kind,
            started_at=str(data.get("started_at") or ""),
            key_header=check_header(data.get("key_header")),
            key_field=check_field(data.get("key_field")),
            shadow=_shadow(data.get("shadow")),
            alpha=check_alpha(data.get("alpha", DEFAULT_ALPHA)),
            min_effect=check_min_effect(data.get("min_effect", DEFAULT_MIN_EFFECT)),
        )


class NoExperiment(NotFound):
    code = "experiment_not_found"


class ExperimentRunning(Conflict):
    code = "experiment_running"


# -- the file in a store ------------------------------------------------------------
# ``store`` is a ModelStore (service.store.store): these functions use its layout, its
# writers' lock and its versions and aliases, and write through its atomic write.


def file_path(store: Any, name: str) -> Path:
    return store.layout.model_dir(name) / EXPERIMENT_FILE


def read_state(store: Any, name: str) -> dict[str, Any]:
    """experiment.yaml as a mapping: ``active`` (a mapping or None) and ``history``."""
    path = file_path(store, name)
    try:
        state = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        if not store.has_model(name):
            store.versions(name)  # raises ModelNotFound
        state = {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(state, dict):
        raise StoreError(f"{path}: not a mapping")
    state.setdefault("active", None)
    state.setdefault("history", [])
    return state


def active(store: Any, name: str) -> Experiment | None:
    """The experiment running on ``name``, or None."""
    data = read_state(store, name)["active"]
    return None if data is None else Experiment.from_dict(name, data)


def signature(store: Any, name: str) -> tuple[int, int, int] | None:
    """Changes whenever experiment.yaml is replaced: cheap enough to poll."""
    try:
        st = file_path(store, name).stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def start(
    store: Any,
    name: str,
    variants: list[Variant],
    *,
    kind: str = "ab",
    key_header: str | None = None,
    key_field: str | None = None,
    shadow: Shadow | None = None,
    alpha: float = DEFAULT_ALPHA,
    min_effect: float = DEFAULT_MIN_EFFECT,
    reason: str = "",
    extra: dict[str, Any] | None = None,
) -> Experiment:
    """Start an experiment on ``name``; refused (nothing written) when one runs already, or
    when a variant names a version or alias the model does not have."""
    check_weights(list(variants))
    if kind not in KINDS:
        raise InvalidExperiment(f"experiment kind {kind!r} is not one of {', '.join(KINDS)}")
    experiment = Experiment(
        id=new_id(name),
        model=name,
        variants=tuple(variants),
        kind=kind,
        started_at=_now(),
        key_header=check_header(key_header),
        key_field=check_field(key_field),
        shadow=shadow,
        alpha=check_alpha(alpha),
        min_effect=check_min_effect(min_effect),
    )
    with store.locked_models([name]):
        state = read_state(store, name)
        if state["active"] is not None:
            running = state["active"].get("id")
            raise ExperimentRunning(
                f"model {name!r} already runs experiment {running}; stop it first",
                details={"model": name, "experiment": running},
            )
        check_targets(store, name, experiment.targets())
        state["active"] = experiment.to_dict()
        _append(state, "start", experiment, reason, {**experiment.to_dict(), **(extra or {})})
        _write(store, name, state)
    return experiment


def set_weights(
    store: Any,
    name: str,
    weights: dict[str, float],
    *,
    reason: str = "",
    extra: dict[str, Any] | None = None,
) -> Experiment:
    """New weights for the running experiment's variants (same id: sticky clients stay
    where they are unless the weights move them)."""
    with store.locked_models([name]):
        state = read_state(store, name)
        experiment = _running(name, state)
        unknown = sorted(set(weights) - {v.name for v in experiment.variants})
        if unknown:
            raise InvalidExperiment(
                f"experiment {experiment.id} has no variant {', '.join(unknown)}",
                details={"variants": [v.name for v in experiment.variants]},
            )
        variants = [
            Variant(v.name, _weight(weights.get(v.name, v.weight))) for v in experiment.variants
        ]
        check_weights(variants)
        experiment = dataclasses.replace(experiment, variants=tuple(variants))
        state["active"] = experiment.to_dict()
        details = {"weights": {v.name: _number(v.weight) for v in variants}, **(extra or {})}
        _append(state, "weights", experiment, reason, details)
        _write(store, name, state)
    return experiment


def stop(
    store: Any,
    name: str,
    *,
    action: str = "stop",
    reason: str = "",
    extra: dict[str, Any] | None = None,
) -> Experiment:
    """End the running experiment: every request goes to the default alias again."""
    with store.locked_models([name]):
        state = read_state(store, name)
        experiment = _running(name, state)
        state["active"] = None
        _append(state, action, experiment, reason, extra)
        _write(store, name, state)
    return experiment


def note(
    store: Any, name: str, action: str, *, reason: str = "", extra: dict[str, Any] | None = None
) -> None:
    """Add a line to the history without changing the experiment (e.g. a canary step's
    verdict with its numbers)."""
    with store.locked_models([name]):
        state = read_state(store, name)
        experiment = _running(name, state)
        _append(state, action, experiment, reason, extra)
        _write(store, name, state)


def check_targets(store: Any, name: str, targets: Iterable[str]) -> dict[str, int]:
    """Each target's version now; VersionNotFound / AliasNotFound (404) for one the model
    does not have."""
    found = {}
    for target in targets:
        ref = (
            ModelRef(name, version=int(target))
            if target.isdigit()
            else ModelRef(name, alias=target)
        )
        found[target] = resolve_ref(store, ref)
    return found


def _running(name: str, state: dict[str, Any]) -> Experiment:
    if state["active"] is None:
        raise NoExperiment(f"model {name!r} runs no experiment", details={"model": name})
    return Experiment.from_dict(name, state["active"])


def _append(
    state: dict[str, Any],
    action: str,
    experiment: Experiment,
    reason: str,
    extra: dict[str, Any] | None,
) -> None:
    entry: dict[str, Any] = {"at": _now(), "action": action, "id": experiment.id}
    if reason:
        entry["reason"] = reason
    entry.update(extra or {})
    state["history"] = [*state["history"], entry][-HISTORY_LIMIT:]


def _write(store: Any, name: str, state: dict[str, Any]) -> None:
    text = yaml.safe_dump({"active": state["active"], "history": state["history"]}, sort_keys=False)
    write_atomic(file_path(store, name), text)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_id(model: str) -> str:
    """A fresh experiment id: readable, and unique (a restart re-shuffles sticky clients)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{model}-{stamp}-{secrets.token_hex(2)}"


def parse_variants(text: str | Iterable[str]) -> list[Variant]:
    """``production=90,staging=10`` (or its comma-separated parts) into variants."""
    parts = text.split(",") if isinstance(text, str) else [p for t in text for p in t.split(",")]
    variants = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        name, sep, weight = part.partition("=")
        if not sep:
            raise InvalidExperiment(
                f"variant {part!r} needs a weight: write it as NAME=WEIGHT, e.g. production=90"
            )
        variants.append(Variant(check_target(name.strip()), _weight(weight.strip())))
    check_weights(variants)
    return variants


def check_weights(variants: list[Variant]) -> None:
    if not variants:
        raise InvalidExperiment("an experiment needs at least one variant")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise InvalidExperiment(f"variants must differ; got {', '.join(names)}")
    total = sum(v.weight for v in variants)
    if abs(total - TOTAL_WEIGHT) > 1e-9:
        raise InvalidExperiment(
            f"variant weights must add up to {TOTAL_WEIGHT:g}; these add up to {total:g}",
            details={"weights": {v.name: _number(v.weight) for v in variants}},
        )


def check_target(value: Any) -> str:
    """A variant or shadow: a version number or an alias of the model."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(text, str) and VERSION_PATTERN.fullmatch(text):
        return text
    if isinstance(text, str) and ALIAS_PATTERN.fullmatch(text):
        return check_alias(text)
    raise InvalidExperiment(
        f"variant {value!r} is neither a version number nor an alias",
        details={"variant": str(value)[:64]},
    )


def check_header(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not HEADER_PATTERN.fullmatch(value):
        raise InvalidExperiment(f"key header {str(value)[:64]!r} is not an HTTP header name")
    return value


def check_field(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not FIELD_PATTERN.fullmatch(value):
        raise InvalidExperiment(
            f"key field {str(value)[:64]!r}: use letters, digits, '_', '.' or '-'"
        )
    return value


def check_weight(value: Any) -> float:
    """A variant's weight: a finite number, not negative."""
    return _weight(value)


def check_share(value: Any) -> float:
    share = _finite(value, "shadow share")
    if not 0 < share <= 1:
        raise InvalidExperiment(f"shadow share must be in (0, 1], got {share:g}")
    return share


def check_alpha(value: Any) -> float:
    alpha = _finite(value, "alpha")
    if not 0 < alpha <= 0.5:
        raise InvalidExperiment(f"alpha must be in (0, 0.5], got {alpha:g}")
    return alpha


def check_min_effect(value: Any) -> float:
    effect = _finite(value, "min_effect")
    if not effect > 0:
        raise InvalidExperiment(f"min_effect must be above 0, got {effect:g}")
    return effect


def _shadow(value: Any) -> Shadow | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidExperiment("an experiment's shadow must be a mapping of target and share")
    return Shadow(check_target(value.get("target")), check_share(value.get("share")))


def _weight(value: Any) -> float:
    weight = _finite(value, "variant weight")
    if weight < 0:
        raise InvalidExperiment(f"a variant weight cannot be negative, got {weight:g}")
    return weight


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidExperiment(f"{what} {str(value)[:32]!r} is not a number") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise InvalidExperiment(f"{what} {str(value)[:32]!r} is not a finite number")
    return number


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value

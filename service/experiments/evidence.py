"""The evidence of an experiment: per variant, sufficient statistics that add up across
hosts (counts and sums, never rates or means), read from a host's monitoring state.

``local_totals`` reads this host's state (every worker's answers, within the flush
interval); ``remote_totals`` asks each host of a fleet (``GET
/v1/admin/experiments/<name>/totals``, admin scope) and adds their totals up. The report
(``service.experiments.report``) and the canary turn them into figures and verdicts.
``local_shadow`` and ``remote_shadow`` do the same for what an experiment's shadow
candidate did (``service.monitoring.shadow_record``; ``GET .../<name>/shadow``).

Nothing here imports Flask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote

from service.config import Settings
from service.errors import ServiceError
from service.monitoring import experiments as recording
from service.monitoring import shadow_record
from service.monitoring.state import StateStore

# Upper bounds in seconds of the latency buckets, the last +inf.
LATENCY_BUCKETS = recording.LATENCY_BUCKETS
REMOTE_TIMEOUT = 10.0


class EvidenceUnavailable(ServiceError):
    """A host's totals could not be read: no verdict may rest on part of the fleet."""

    status = HTTPStatus.BAD_GATEWAY
    code = "evidence_unavailable"


@dataclasses.dataclass
class VariantTotals:
    """Sufficient statistics of one variant: they add up across hosts."""

    variant: str
    versions: dict[int, int]  # version -> requests (an alias variant may move)
    requests: int  # answered or failed by the variant (client mistakes not counted)
    errors: int  # answers the variant failed (5xx, non-finite output), not client 4xx
    latency_counts: list[int]  # successful answers per bucket of LATENCY_BUCKETS
    labelled: int  # rows of its requests with feedback
    correct: int  # classification: labelled rows predicted right
    abs_error_sum: float  # regression: sum |prediction - label|
    abs_error_sq_sum: float  # regression: sum (prediction - label)^2

    @classmethod
    def empty(cls, variant: str) -> VariantTotals:
        return cls(variant, {}, 0, 0, [0] * len(LATENCY_BUCKETS), 0, 0, 0.0, 0.0)

    def merge(self, other: VariantTotals) -> VariantTotals:
        if other.variant != self.variant:
            raise ValueError(f"cannot add variant {other.variant!r} to {self.variant!r}")
        versions = dict(self.versions)
        for version, n in other.versions.items():
            versions[version] = versions.get(version, 0) + n
        return VariantTotals(
            self.variant,
            dict(sorted(versions.items())),
            self.requests + other.requests,
            self.errors + other.errors,
            [a + b for a, b in zip(self.latency_counts, other.latency_counts, strict=True)],
            self.labelled + other.labelled,
            self.correct + other.correct,
            self.abs_error_sum + other.abs_error_sum,
            self.abs_error_sq_sum + other.abs_error_sq_sum,
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["versions"] = {str(v): n for v, n in self.versions.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VariantTotals:
        """As to_dict wrote it (a host's answer): checked, since it crossed a network."""
        try:
            counts = [int(n) for n in data["latency_counts"]]
            if len(counts) != len(LATENCY_BUCKETS):
                raise ValueError(f"{len(counts)} latency buckets, expected {len(LATENCY_BUCKETS)}")
            return cls(
                variant=str(data["variant"]),
                versions={int(v): int(n) for v, n in dict(data["versions"]).items()},
                requests=int(data["requests"]),
                errors=int(data["errors"]),
                latency_counts=counts,
                labelled=int(data["labelled"]),
                correct=int(data["correct"]),
                abs_error_sum=float(data["abs_error_sum"]),
                abs_error_sq_sum=float(data["abs_error_sq_sum"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EvidenceUnavailable(f"variant totals not understood: {exc}") from None


def merge_all(parts: Iterable[Mapping[str, VariantTotals]]) -> dict[str, VariantTotals]:
    """Totals of several hosts (or processes), added per variant."""
    merged: dict[str, VariantTotals] = {}
    for part in parts:
        for variant, totals in part.items():
            merged[variant] = merged[variant].merge(totals) if variant in merged else totals
    return merged


def totals_from_state(state: StateStore, experiment_id: str) -> dict[str, VariantTotals]:
    found: dict[str, VariantTotals] = {}
    for variant, version, bucket, requests, errors in state.experiment_counts(experiment_id):
        totals = found.setdefault(variant, VariantTotals.empty(variant))
        totals.versions[version] = totals.versions.get(version, 0) + requests
        totals.requests += requests
        totals.errors += errors
        if 0 <= bucket < len(LATENCY_BUCKETS):
            totals.latency_counts[bucket] += requests - errors
    for _, _, variant, _, n, correct, abs_sum, sq_sum in state.experiment_quality(experiment_id):
        totals = found.setdefault(variant, VariantTotals.empty(variant))
        totals.labelled += n
        totals.correct += correct
        totals.abs_error_sum += abs_sum
        totals.abs_error_sq_sum += sq_sum
    for totals in found.values():
        totals.versions = dict(sorted(totals.versions.items()))
    return found


# One StateStore per state directory: it keeps a connection per thread, so a status page
# polled every few seconds does not open (and set up) a database connection each time.
_states: dict[Path, StateStore] = {}


def local_totals(
    settings: Settings,
    name: str,
    experiment_id: str,
    *,
    recorder: recording.ExperimentRecorder | None = None,
) -> dict[str, VariantTotals]:
    """This host's totals of one experiment of model ``name``, per variant name (variants
    that answered nothing yet are absent). What this process buffered for the state is
    written first: ``recorder``'s (an app's) and the gRPC server's (``recording.record``)."""
    if recorder is not None:
        recorder.flush()
    recording.flush(settings.state_dir)
    path = Path(settings.state_dir)
    state = _states.get(path)
    if state is None:
        state = _states.setdefault(
            path, StateStore(path, prediction_retention=settings.prediction_retention)
        )
    return totals_from_state(state, experiment_id)


def totals_path(name: str, experiment_id: str | None = None, what: str = "totals") -> str:
    path = f"/v1/admin/experiments/{quote(name, safe='')}/{what}"
    if experiment_id:
        path += f"?experiment={quote(experiment_id, safe='')}"
    return path


def remote_totals(
    urls: Iterable[str], key: str | None, name: str, experiment_id: str
) -> dict[str, VariantTotals]:
    """Every host's totals (``urls``: each host's base URL), added up. A host that does
    not answer raises EvidenceUnavailable: a verdict never rests on part of the fleet."""
    parts = []
    for url, response in _answers(urls, key, name, experiment_id, "totals"):
        try:
            body = response.json()
            variants = body["variants"]
            if body.get("experiment") != experiment_id:
                raise ValueError(f"totals of experiment {body.get('experiment')!r}")
            parts.append({v["variant"]: VariantTotals.from_dict(v) for v in variants})
        except (ValueError, KeyError, TypeError) as exc:
            raise EvidenceUnavailable(
                f"{url}: totals of {name!r} not understood: {exc}", details={"url": url}
            ) from None
    return merge_all(parts)


def local_shadow(
    settings: Settings,
    experiment: Any,
    *,
    recorder: shadow_record.ShadowRecorder | None = None,
) -> list[dict[str, Any]] | None:
    """This host's sums of what ``experiment``'s shadow candidate did (one row per
    candidate); None when the experiment has no shadow. What ``recorder`` (an app's) and
    this process's own recorder, if any, counted is written first."""
    if experiment.shadow is None:
        return None
    return shadow_record.totals(settings, experiment.model, experiment.id, recorder=recorder)


def remote_shadow(urls: Iterable[str], key: str | None, experiment: Any) -> list[dict] | None:
    """Every host's shadow sums of ``experiment``, added up per candidate; None when the
    experiment has no shadow. A host that does not answer raises EvidenceUnavailable."""
    if experiment.shadow is None:
        return None
    name = experiment.model
    hosts = []
    for url, response in _answers(urls, key, name, experiment.id, "shadow"):
        try:
            body = response.json()
            if body.get("experiment") != experiment.id:
                raise ValueError(f"shadow totals of experiment {body.get('experiment')!r}")
            hosts.append([shadow_record.checked(row) for row in body["totals"]])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EvidenceUnavailable(
                f"{url}: shadow totals of {name!r} not understood: {exc}", details={"url": url}
            ) from None
    return shadow_record.merge(*hosts)


def _answers(
    urls: Iterable[str], key: str | None, name: str, experiment_id: str, what: str
) -> Iterator[tuple[str, Any]]:
    """Each host's 200 answer to ``GET .../<name>/<what>``; EvidenceUnavailable for the
    first host that gives none."""
    import requests  # only the fleet-wide path needs it

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for url in urls:
        target = url.rstrip("/") + totals_path(name, experiment_id, what)
        try:
            response = requests.get(target, headers=headers, timeout=REMOTE_TIMEOUT)
        except requests.RequestException as exc:
            raise EvidenceUnavailable(
                f"{url}: no {what} of {name!r}: {type(exc).__name__}",
                details={"url": url},
            ) from None
        if response.status_code != 200:
            problem = f"HTTP {response.status_code}{_error_text(response)}"
            raise EvidenceUnavailable(
                f"{url}: no {what} of {name!r}: {problem}",
                details={"url": url, "status": response.status_code},
            )
        yield url, response


def _error_text(response: Any) -> str:
    """The error's code and message when the host answered in the service's JSON shape."""
    try:
        error = response.json()["error"]
        return f" ({error['code']}: {error['message']})"
    except (ValueError, KeyError, TypeError):
        return ""

"""GET /v1/admin/experiments/<name>/report and .../totals (admin scope): an experiment's
report from this host's evidence (with its shadow candidate's figures when it has one:
``.../shadow`` gives their sums), and the evidence itself (the variants' totals, which
``modelctl experiment report --url ...`` adds up over the hosts of a fleet). Both take
``?experiment=ID`` for an experiment that has ended (default: the running one, else the
last one started).

POST /v1/admin/experiments/<name>/conclude: promote the winner of the running experiment
(by this host's evidence, or the ``winner`` named) through the promotion gate, then stop
it, as ``modelctl experiment conclude`` does.
"""

from __future__ import annotations

import math

from flask import Blueprint, request

from service.api import json_response, state
from service.api.monitoring import app_monitoring
from service.errors import BadRequest, PromotionRefused
from service.experiments import conclusion, evidence, report
from service.protocols.native import parse_json
from service.store.experiments import NoExperiment, check_target
from service.store.layout import check_alias, check_name

bp = Blueprint("experiment_report", __name__, url_prefix="/v1/admin/experiments")
MAX_ID_LENGTH = 200
CONCLUDE_FIELDS = frozenset({"winner", "alias", "reason", "force"})
MAX_REASON_CHARS = 1000


def _experiment(name: str):
    service = state()
    wanted = request.args.get("experiment") or None
    if wanted is not None and len(wanted) > MAX_ID_LENGTH:
        raise BadRequest(f"an experiment id has at most {MAX_ID_LENGTH} characters")
    return report.find(service.store, check_name(name), wanted)


@bp.get("/<name>/totals")
def totals(name: str):
    experiment = _experiment(name)
    found = evidence.local_totals(
        state().settings, experiment.model, experiment.id, recorder=app_monitoring().experiments
    )
    return json_response(
        {
            "model": experiment.model,
            "experiment": experiment.id,
            "latency_buckets": [
                b if math.isfinite(b) else "+Inf" for b in evidence.LATENCY_BUCKETS
            ],
            "variants": [t.to_dict() for t in found.values()],
        }
    )


@bp.get("/<name>/report")
def experiment_report(name: str):
    service = state()
    experiment = _experiment(name)
    monitoring = app_monitoring()
    found = evidence.local_totals(
        service.settings, experiment.model, experiment.id, recorder=monitoring.experiments
    )
    task = report.task_of(service.store, experiment.model, found)
    shadow = evidence.local_shadow(service.settings, experiment, recorder=monitoring.shadow)
    return json_response(report.build(experiment, found, task, shadow))


@bp.post("/<name>/conclude")
def conclude(name: str):
    service = state()
    name = check_name(name)
    body = _conclude_body()
    running = service.authority.experiment(name)
    if running is None:
        raise NoExperiment(f"model {name!r} runs no experiment", details={"model": name})
    found = evidence.local_totals(
        service.settings, name, running.id, recorder=app_monitoring().experiments
    )
    built = report.build(running, found, report.task_of(service.store, name, found))
    try:
        done = conclusion.conclude(
            service.authority,
            running,
            built,
            alias=body.get("alias") or service.settings.default_alias,
            winner=body.get("winner"),
            reason=body.get("reason", ""),
            force=body.get("force", False),
            name_the_winner='send {"winner": VARIANT} to choose one',
        )
    except PromotionRefused as exc:
        raise PromotionRefused(
            exc.reason, exc.details, override='send "force": true to override'
        ) from None
    service.registry.refresh()
    return json_response(done)


def _conclude_body() -> dict:
    data = request.get_data(cache=False)
    body = parse_json(data) if data else {}
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(str(k)[:40] for k in set(body) - CONCLUDE_FIELDS)
    if unknown:
        raise BadRequest(
            f"unknown field(s) {', '.join(unknown)}; the fields are "
            f"{', '.join(sorted(CONCLUDE_FIELDS))}"
        )
    checked: dict = {}
    if body.get("winner") is not None:
        checked["winner"] = check_target(body["winner"])
    if body.get("alias") is not None:
        checked["alias"] = check_alias(body["alias"])
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise BadRequest(f'"reason" must be text of at most {MAX_REASON_CHARS} characters')
    checked["reason"] = reason
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadRequest('"force" must be true or false', details={"field": "force"})
    checked["force"] = force
    return checked

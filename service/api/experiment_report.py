"""GET /v1/admin/experiments/<name>/report and .../totals (admin scope): an experiment's
report from this host's evidence, and the evidence itself (the variants' totals, which
``modelctl experiment report --url ...`` adds up over the hosts of a fleet).

Both take ``?experiment=ID`` for an experiment that has ended (default: the running one,
else the last one started).
"""

from __future__ import annotations

import math

from flask import Blueprint, request

from service.api import json_response, state
from service.errors import BadRequest
from service.experiments import evidence, report
from service.store.layout import check_name

bp = Blueprint("experiment_report", __name__, url_prefix="/v1/admin/experiments")
MAX_ID_LENGTH = 200


def _experiment(name: str):
    service = state()
    wanted = request.args.get("experiment") or None
    if wanted is not None and len(wanted) > MAX_ID_LENGTH:
        raise BadRequest(f"an experiment id has at most {MAX_ID_LENGTH} characters")
    return report.find(service.store, check_name(name), wanted)


@bp.get("/<name>/totals")
def totals(name: str):
    experiment = _experiment(name)
    found = evidence.local_totals(state().settings, experiment.model, experiment.id)
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
    found = evidence.local_totals(service.settings, experiment.model, experiment.id)
    task = report.task_of(service.store, experiment.model, found)
    return json_response(report.build(experiment, found, task))

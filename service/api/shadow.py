"""GET /v1/admin/experiments/<name>/shadow (admin scope): what an experiment's shadow
candidate did on this host (service.monitoring.shadow_record): per candidate its runs,
drops, errors by kind, and agreement (classifiers) or differences (regressors); with the
sums behind them, which add up over the hosts of a fleet.

``?experiment=ID`` for an experiment that has ended (default: the running one, else the
last one started).
"""

from __future__ import annotations

from flask import Blueprint, request

from service.api import json_response, state
from service.api.monitoring import app_monitoring
from service.errors import BadRequest
from service.experiments import report
from service.monitoring import shadow_record
from service.store.layout import check_name

bp = Blueprint("experiment_shadow", __name__, url_prefix="/v1/admin/experiments")
MAX_ID_LENGTH = 200


@bp.get("/<name>/shadow")
def shadow(name: str):
    service = state()
    wanted = request.args.get("experiment") or None
    if wanted is not None and len(wanted) > MAX_ID_LENGTH:
        raise BadRequest(f"an experiment id has at most {MAX_ID_LENGTH} characters")
    experiment = report.find(service.store, check_name(name), wanted)
    totals = app_monitoring().shadow_totals(experiment.model, experiment.id)
    return json_response(
        {
            "model": experiment.model,
            "experiment": experiment.id,
            "candidates": [shadow_record.figures(row) for row in totals],
            "totals": totals,
        }
    )

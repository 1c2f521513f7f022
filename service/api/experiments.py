"""Admin endpoints of experiments: start, status, stop (scope admin, as promote).

In a fleet they act on the authoritative store, as promote does (``ServiceState.authority``);
every host, this one too, applies the change when its store mirror has copied it.
"""

from __future__ import annotations

from flask import Blueprint, request

from service.api import json_response, state
from service.errors import BadRequest
from service.protocols.native import parse_json
from service.store import experiment_control
from service.store.layout import check_name

bp = Blueprint("experiments", __name__, url_prefix="/v1/admin/experiments")


def _body(required: bool) -> object:
    data = request.get_data(cache=False)
    if not data and not required:
        return {}
    if not data:
        raise BadRequest(
            'send the experiment as JSON, e.g. {"variants": {"production": 90, "staging": 10}}'
        )
    return parse_json(data)


@bp.get("/<name>")
def status(name: str):
    return json_response(experiment_control.status(state().authority, check_name(name)))


@bp.post("/<name>")
def start(name: str):
    service = state()
    name = check_name(name)
    variants, options = experiment_control.start_arguments(
        _body(required=True), default_alias=service.settings.default_alias
    )
    service.authority.start_experiment(name, variants, **options)
    service.registry.refresh()
    return json_response(experiment_control.status(service.authority, name))


@bp.post("/<name>/stop")
def stop(name: str):
    service = state()
    name = check_name(name)
    service.authority.stop_experiment(name, **experiment_control.stop_arguments(_body(False)))
    service.registry.refresh()
    return json_response(experiment_control.status(service.authority, name))

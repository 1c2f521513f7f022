"""Admin endpoints (promote, roll back, reload): a key with scope admin (service.api.auth;
``modelctl keys create NAME --scopes admin``, or a digest in the setting admin_key_hashes)."""

from __future__ import annotations

from flask import Blueprint, request

from service.api import json_response, state
from service.errors import BadRequest, PromotionRefused
from service.protocols.native import parse_json
from service.store.layout import check_alias, check_name, check_version

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")


def _body() -> dict:
    data = request.get_data(cache=False)
    if not data:
        return {}
    body = parse_json(data)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


@bp.post("/models/<name>/promote")
def promote(name: str):
    service = state()
    body = _body()
    if "version" not in body:
        raise BadRequest('send {"version": N} (and optionally "alias", "reason" and "force")')
    version = body["version"]
    if isinstance(version, float) and version.is_integer():
        version = int(version)  # 3.0 is the JSON number 3, as the documented schema says
    version = check_version(version)
    alias = check_alias(body.get("alias", service.settings.default_alias))
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadRequest('"force" must be true or false', details={"field": "force"})
    name = check_name(name)
    # With force, what the gate would have said is reported back (and kept in the history).
    overridden = service.authority.check_promotion(name, version, alias) if force else None
    try:
        previous = service.authority.promote(
            name, version, alias, str(body.get("reason", "")), force=force
        )
    except PromotionRefused as exc:
        raise PromotionRefused(
            exc.reason, exc.details, override='send "force": true to override'
        ) from None
    service.registry.refresh()
    answer = {"model": name, "alias": alias, "version": version, "previous": previous}
    if force:
        answer["forced"] = overridden is not None
        answer["gate"] = overridden.reason if overridden else None
    return json_response(answer)


@bp.post("/models/<name>/rollback")
def rollback(name: str):
    service = state()
    body = _body()
    alias = check_alias(body.get("alias", service.settings.default_alias))
    before, after = service.authority.rollback(check_name(name), alias, str(body.get("reason", "")))
    service.registry.refresh()
    return json_response({"model": name, "alias": alias, "version": after, "previous": before})


@bp.post("/reload")
def reload():
    service = state()
    service.registry.reload()
    ready, models = service.registry.readiness()
    return json_response({"ready": ready, "models": models})

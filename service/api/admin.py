"""Admin endpoints (promote, roll back, reload), behind an admin key.

Keys are never stored: settings hold their sha256 digests
(``modelctl hash-key``), and requests present the key as a bearer token.
"""

from __future__ import annotations

import hashlib
import hmac

from flask import Blueprint, request

from service.api import json_response, state
from service.errors import BadRequest, Forbidden, PromotionRefused, Unauthorized
from service.protocols.native import parse_json
from service.store.layout import check_alias, check_name, check_version

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")


@bp.before_request
def require_admin_key() -> None:
    hashes = state().settings.admin_key_hashes
    if not hashes:
        raise Forbidden(
            "the admin API is disabled: no admin key is configured "
            "(set MODEL_SERVICE_ADMIN_KEY_HASHES to the output of 'modelctl hash-key')"
        )
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("send the admin key as 'Authorization: Bearer <key>'")
    presented = hashlib.sha256(key.strip().encode()).hexdigest()
    # Compare against every configured digest, in constant time for each.
    if not any(hmac.compare_digest(presented, known.lower()) for known in hashes):
        raise Unauthorized("the admin key is not valid")


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
    version = check_version(body["version"])
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

"""Which key each route needs, checked in one place before any view runs.

Every endpoint has a scope (``service.keys.SCOPES``) or is public; a scope in the
``open_scopes`` setting needs no key. A request for a scope that is not open must carry a
key granting it as ``Authorization: Bearer <key>`` (or as the password of HTTP Basic, for
the browser pages): none or an unknown or expired key is 401 ``unauthorized`` with
``WWW-Authenticate``, a valid key without the scope 403 ``forbidden``, each in the
protocol's error shape (the error handlers render them per blueprint).

Public, whatever the settings: the health routes. Balancers, orchestrators and the
rolling upgrade probe them without credentials, and they say only whether this process
answers and its models are loaded.
"""

from __future__ import annotations

import base64
import binascii
import logging

from flask import Flask, g, request

from service.config import Settings
from service.errors import Forbidden, Unauthorized
from service.keys import KeyVerifier, verifier_for

log = logging.getLogger(__name__)

EXTENSION = "model_service.keys"
REALM = "model-service"

# Reached without a key: liveness and readiness (native, Open Inference Protocol, MLflow).
PUBLIC_ENDPOINTS = frozenset(
    {"health.healthz", "health.readyz", "v2.live", "v2.ready", "mlflow.ping"}
)
# The scope of every endpoint of a blueprint, unless ENDPOINT_SCOPES says otherwise.
BLUEPRINT_SCOPES = {
    "predict": "predict",
    "admin": "admin",
    "experiments": "admin",
    "experiment_report": "admin",
    "experiment_shadow": "admin",
    "models": "read",
    "status": "read",
    "docs": "read",
    "metrics": "read",
    "v2": "read",
    "mlflow": "predict",
    "monitoring": "read",
}
ENDPOINT_SCOPES = {
    "v2.infer": "predict",
    "monitoring.feedback": "feedback",
}
# A route nobody gave a scope needs the narrowest grant there is: a new route is closed
# until it is put in the tables above.
UNMAPPED_SCOPE = "admin"
# Pages a person opens in a browser: a 401 there also offers HTTP Basic, so the browser
# asks for the key (as the password) and sends it with the page's own requests too.
BROWSER_ENDPOINTS = frozenset(
    {"status.status_page", "docs.docs", "models.version_card", "models.model_card"}
)


def scope_of(endpoint: str | None) -> str | None:
    """The scope ``endpoint`` needs; None for a public one (or no route at all: a 404)."""
    if endpoint is None or endpoint in PUBLIC_ENDPOINTS or endpoint == "static":
        return None
    if endpoint in ENDPOINT_SCOPES:
        return ENDPOINT_SCOPES[endpoint]
    return BLUEPRINT_SCOPES.get(endpoint.partition(".")[0], UNMAPPED_SCOPE)


def unmapped_endpoints(app: Flask) -> list[str]:
    known = set(ENDPOINT_SCOPES) | PUBLIC_ENDPOINTS | {"static"}
    return sorted(
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if rule.endpoint not in known and rule.endpoint.partition(".")[0] not in BLUEPRINT_SCOPES
    )


def presented_key() -> str | None:
    """The key in the Authorization header: Bearer, or Basic with the key as password."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            _, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            password = ""
        if password:
            return password
    raise Unauthorized("send the key as 'Authorization: Bearer <key>'")


def init_app(app: Flask, settings: Settings) -> KeyVerifier:
    """Check every request against the keys; call after every blueprint is registered."""
    keys = verifier_for(settings)
    app.extensions[EXTENSION] = keys
    open_scopes = frozenset(settings.open_scopes)
    missing = unmapped_endpoints(app)
    if missing:
        log.warning("routes without a scope need an admin key: %s", ", ".join(missing))

    @app.before_request
    def require_key() -> None:
        scope = scope_of(request.endpoint)
        if scope is None or scope in open_scopes:
            return
        token = presented_key()
        if scope == "admin" and not any("admin" in key.scopes for key in keys.known()):
            raise Forbidden(
                "the admin API is disabled: no admin key is configured (modelctl keys create "
                "NAME --scopes admin, or the setting admin_key_hashes)"
            )
        g.api_key_name = keys.authorize(token, scope).name

    @app.after_request
    def challenge(response):
        if response.status_code == 401:
            response.headers["WWW-Authenticate"] = f'Bearer realm="{REALM}"'
            if request.endpoint in BROWSER_ENDPOINTS:
                response.headers.add("WWW-Authenticate", f'Basic realm="{REALM}"')
        return response

    return keys

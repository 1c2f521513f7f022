"""GET /openapi.json (OpenAPI 3.1) and GET /docs (the same document as an HTML page).

Both describe what this worker serves: the model each served name's default alias
points at, when it is loaded here. The document is built once per set of served
(name, version) pairs and kept; the page once per set and base URL.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request

import service
from service import openapi
from service.api import auth, state
from service.api.cache import LRUCache, app_cache

bp = Blueprint("docs", __name__)

CACHE_EXTENSION = "model_service.openapi"
# Methods Werkzeug answers for every route; the document leaves them out.
IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})
CACHE_SIZE = 32
# The page loads nothing: inline styles only, no scripts, no frames, no forms.
DOCS_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}


@bp.get("/openapi.json")
def openapi_json():
    key, served = _served()
    cache = _cache()
    body = cache.get(("json", key))
    if body is None:
        body = orjson.dumps(_document(key, served))
        cache.put(("json", key), body)
    return Response(body, mimetype="application/json")


@bp.get("/docs")
def docs():
    key, served = _served()
    base_url = request.host_url
    cache = _cache()
    html = cache.get(("html", key, base_url))
    if html is None:
        html = openapi.render_html(_document(key, served), served, base_url=base_url)
        cache.put(("html", key, base_url), html)
    return Response(html, mimetype="text/html", headers=DOCS_HEADERS)


def _served() -> tuple[tuple, list[Any]]:
    """The loaded model each served name's default alias points at, and a cache key."""
    service_state = state()
    registry = service_state.registry
    alias = service_state.settings.default_alias
    loaded = {(m.name, m.version): m for m in registry.loaded()}
    served = []
    for name in registry.served_names():
        version = registry.aliases(name).get(alias)
        model = loaded.get((name, version)) if version is not None else None
        if model is not None:
            served.append(model)
    pairs = tuple(sorted((m.name, m.version) for m in served))
    return (service.__version__, service_state.settings.max_instances, pairs), served


def _document(key: tuple, served: list[Any]) -> dict[str, Any]:
    cache = _cache()
    document = cache.get(("document", key))
    if document is None:
        document = openapi.build_document(
            served,
            version=service.__version__,
            max_instances=state().settings.max_instances,
            scopes=_scopes(),
        )
        cache.put(("document", key), document)
    return document


def _scopes() -> dict[tuple[str, str], str]:
    """The scope of each operation that needs a key as this service is configured: the
    one service.api.auth asks for, unless the settings leave it open."""
    open_scopes = set(state().settings.open_scopes)
    scopes = {}
    for rule in current_app.url_map.iter_rules():
        scope = auth.scope_of(rule.endpoint)
        if scope is None or scope in open_scopes:
            continue
        for method in sorted(rule.methods - IMPLICIT_METHODS):
            scopes[(openapi.path_template(rule.rule), method.lower())] = scope
    return scopes


def _cache() -> LRUCache:
    return app_cache(CACHE_EXTENSION, CACHE_SIZE)

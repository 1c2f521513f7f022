"""What is served: GET /v1/models, /v1/models/<name>, /v1/models/<name>/versions/<v>,
and the model card of a version as HTML: /v1/models/<name>/versions/<v>/card."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from service.api import json_response, state
from service.api.cache import app_cache
from service.errors import ModelNotFound
from service.runtime.model import LoadedModel
from service.store import parse_ref
from service.store.layout import check_name, check_version

bp = Blueprint("models", __name__)

CARD_CACHE_EXTENSION = "model_service.cards"
CARD_CACHE_SIZE = 16
# The card loads nothing: this policy lets its inline CSS and SVG through and nothing else.
CARD_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}


@bp.get("/v1/models")
def list_models():
    service = state()
    return json_response({"models": [_summary(name) for name in service.registry.served_names()]})


@bp.get("/v1/models/<name>")
def show_model(name: str):
    service = state()
    _check_served(name)
    summary = _summary(name)
    loaded = _loaded(name)
    metadata = {v: service.store.metadata(name, v) for v in summary["versions"]}
    summary["versions"] = [_version_summary(name, v, m, loaded) for v, m in metadata.items()]
    summary["alias_history"] = service.store.alias_state(name)["history"][-20:]
    default = summary["aliases"].get(service.settings.default_alias)
    summary["metadata"] = metadata.get(default)
    return json_response(summary)


@bp.get("/v1/models/<name>/versions/<version>")
def show_version(name: str, version: str):
    service = state()
    _check_served(name)
    number = check_version(version)
    metadata = service.store.metadata(name, number)
    body = _version_summary(name, number, metadata, _loaded(name))
    body["metadata"] = metadata
    return json_response(body)


@bp.get("/v1/models/<name>/versions/<int:version>/card")
def version_card(name: str, version: int):
    check_name(name)
    return _card_response(name, check_version(version))


@bp.get("/v1/models/<model_ref>/card")
def model_card(model_ref: str):
    """The card of NAME's default alias, or of NAME@VERSION / NAME@ALIAS."""
    service = state()
    ref = parse_ref(model_ref)
    return _card_response(ref.name, service.store.resolve(ref, service.settings.default_alias))


def _card_response(name: str, version: int) -> Response:
    """The card as HTML, rendered once per version and set of aliases pointing at it."""
    store = state().store
    aliases = store.aliases(name)  # ModelNotFound (404) for an unknown model
    key = (name, version, tuple(sorted(a for a, v in aliases.items() if v == version)))
    # A published version never changes: a card is named exactly by the key above.
    cache = app_cache(CARD_CACHE_EXTENSION, CARD_CACHE_SIZE)
    html = cache.get(key)
    if html is None:
        from service import card  # matplotlib only in workers that serve a card

        metadata = store.metadata(name, version)  # VersionNotFound (404)
        html = card.render_card(metadata, aliases=aliases)
        cache.put(key, html)
    return Response(html, mimetype="text/html", headers=CARD_HEADERS)


def _check_served(name: str) -> None:
    check_name(name)
    if name not in state().registry.served_names():
        raise ModelNotFound(f"no model named {name!r} is served", details={"model": name})


def _summary(name: str) -> dict[str, Any]:
    service = state()
    aliases = service.store.aliases(name)
    default_alias = service.settings.default_alias
    served = service.registry.aliases(name).get(default_alias)
    loaded = _loaded(name)
    default_model = loaded.get(served) if served is not None else None
    failures = {
        key: message
        for key, message in service.registry.failures().items()
        if key.startswith(f"{name}@")
    }
    return {
        "name": name,
        "default_alias": default_alias,
        "serving_version": served,
        "aliases": aliases,
        "versions": service.store.versions(name),
        "loaded_versions": sorted(loaded),
        "task": default_model.task if default_model else None,
        "features": list(default_model.schema.names) if default_model else None,
        "classes": default_model.classes if default_model else None,
        "backend": default_model.backend.name if default_model else None,
        "warnings": {str(v): m.warnings for v, m in loaded.items() if m.warnings},
        "load_errors": failures,
    }


def _loaded(name: str) -> dict[int, LoadedModel]:
    """The versions of NAME loaded in this worker."""
    return {m.version: m for m in state().registry.loaded() if m.name == name}


def _version_summary(
    name: str, version: int, metadata: dict[str, Any], loaded: dict[int, LoadedModel]
) -> dict[str, Any]:
    scores = metadata.get("scores", {})
    primary = scores.get("primary_metric")
    test = scores.get("test", {})
    return {
        "name": name,
        "version": version,
        "created_at": metadata.get("created_at"),
        "description": metadata.get("description"),
        "algorithm": metadata.get("algorithm", {}).get("class"),
        "primary_metric": primary,
        "test_score": test.get("model", {}).get(primary),
        "baseline_test_score": test.get("baseline", {}).get(primary),
        "loaded": version in loaded,
        "backend": loaded[version].backend.name if version in loaded else None,
        "warnings": loaded[version].warnings if version in loaded else [],
    }

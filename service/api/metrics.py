"""GET /metrics: the Prometheus exposition of every worker's metrics (or OpenMetrics
when the scraper asks for it); 404 when the ``metrics`` setting is off."""

from __future__ import annotations

from flask import Blueprint, Response, request
from prometheus_client.exposition import choose_encoder

from service.api import state
from service.api.monitoring import app_monitoring
from service.errors import NotFound
from service.monitoring.metrics import Exposition

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape():
    if not state().settings.metrics:
        raise NotFound(
            "metrics are turned off (setting metrics, MODEL_SERVICE_METRICS)",
            code="metrics_disabled",
        )
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    families = app_monitoring().scrape()
    return Response(encode(Exposition(families)), headers={"Content-Type": content_type})

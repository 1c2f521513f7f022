"""Monitoring: Prometheus metrics, logs, the prediction log, feedback and drift.

Nothing here is on the request path unless turned on in the settings, and none of it
can fail a request: observers of predictions are registered through
``service.runtime.hooks``, which logs and skips an observer that raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.metrics_core import Metric

# Collectors of figures computed at scrape time (live quality, drift) that /metrics adds
# to what the workers counted. Each returns metric families, like a prometheus_client
# custom collector's collect().
ScrapeCollector = Callable[[], Iterable[Metric]]
SCRAPE_COLLECTORS: list[ScrapeCollector] = []


def add_scrape_collector(collector: ScrapeCollector) -> None:
    if collector not in SCRAPE_COLLECTORS:
        SCRAPE_COLLECTORS.append(collector)

"""Monitoring: Prometheus metrics, logs, the prediction log, feedback and drift.

Nothing here is on the request path unless turned on in the settings, and none of it
can fail a request: observers of predictions are added to the app's model registry
(``service.runtime.hooks.Observers``), which logs and skips an observer that raises.
What one app monitors with is one object, ``hub.Monitoring``, that its factory builds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.metrics_core import Metric

# Figures computed at scrape time (live quality, drift) that /metrics adds to what the
# workers counted; each app's Monitoring (service.monitoring.hub) holds its own. Each
# returns metric families, like a prometheus_client custom collector's collect().
ScrapeCollector = Callable[[], Iterable[Metric]]

"""The mirror of a fleet's authoritative store, as Prometheus sees it: whether this host
reaches the store, and how old its last good pass is (computed at scrape time from the
status file ``modelctl store-sync`` writes, so it is right in every worker)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from service.config import Settings
from service.store import mirror

REACHABLE = "model_service_store_reachable"
SINCE_SYNC = "model_service_store_seconds_since_sync"


class StoreSyncCollector:
    def __init__(self, settings: Settings):
        self.settings = settings

    def __call__(self) -> Iterable[Metric]:
        view = mirror.describe(
            mirror.read_status(self.settings.store), self.settings.store_sync_interval, time.time()
        )
        reachable = GaugeMetricFamily(
            REACHABLE,
            "1 when the last pass of store-sync reached the authoritative store, else 0 "
            "(the host then serves its last verified versions).",
        )
        reachable.add_metric([], 1.0 if view["reachable"] else 0.0)
        yield reachable
        since = view.get("seconds_since_sync")
        if since is not None:
            family = GaugeMetricFamily(
                SINCE_SYNC, "Seconds since this host was last in step with the authoritative store."
            )
            family.add_metric([], float(since))
            yield family

    def __eq__(self, other: object) -> bool:  # one per settings' store, however often added
        return isinstance(other, StoreSyncCollector) and other.settings.store == self.settings.store

    __hash__ = None  # type: ignore[assignment]

"""Observers of served predictions.

Monitoring (metrics, the prediction log, drift) adds observers to the registry's
``Observers`` (each app's monitoring to its own registry's); the runtime calls them after
each prediction it serves and knows nothing about what they do. An observer that fails
is logged and skipped: it never fails a request.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.runtime.model import LoadedModel, Prediction

log = logging.getLogger(__name__)

# The id of the request being served, set by whichever front end took it (HTTP, gRPC),
# so observers can join feedback to the prediction later.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "model_service_request_id", default=None
)


@dataclasses.dataclass(frozen=True)
class Assignment:
    """Which variant of a running experiment serves the request (see
    service.store.experiments): set by the registry when it routes a request that named
    no version, read by the front ends (the answer names it), metrics and the shadow."""

    experiment: str  # the experiment's id
    variant: str  # the variant's name: an alias or a version number, as started
    version: int  # the version the variant resolved to for this request
    shadow: str | None = None  # the shadow target when this request is also shadowed


# The assignment of the request being served, or None outside an experiment.
assignment: contextvars.ContextVar[Assignment | None] = contextvars.ContextVar(
    "model_service_assignment", default=None
)


@dataclasses.dataclass(frozen=True)
class PredictionEvent:
    model: LoadedModel
    # The validated input, in feature order: a float matrix, or one array per feature when
    # the model takes categories (a DataFrame from callers that have one).
    model_input: Any
    prediction: Prediction
    request_id: str | None
    seconds: float  # validation + prediction


PredictionObserver = Callable[[PredictionEvent], None]


class Observers:
    """Observers of the predictions one registry's models serve (each app builds its own
    registry, so two apps in one process never see each other's predictions)."""

    def __init__(self) -> None:
        self._observers: tuple[PredictionObserver, ...] = ()

    def add(self, observer: PredictionObserver) -> None:
        if observer not in self._observers:
            # A new tuple, never one changed in place: notify needs no lock.
            self._observers = (*self._observers, observer)

    def remove(self, observer: PredictionObserver) -> None:
        self._observers = tuple(o for o in self._observers if o != observer)

    def __contains__(self, observer: object) -> bool:
        return observer in self._observers

    def __iter__(self) -> Iterator[PredictionObserver]:
        return iter(self._observers)

    def __bool__(self) -> bool:
        return bool(self._observers)

    def notify(self, event: PredictionEvent) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                log.exception(
                    "prediction observer %r failed; the request is not affected", observer
                )


# Observers of every prediction served in this process, whichever registry loaded the
# model: for a front end that is a process of its own and builds no app (the gRPC
# server's monitor, service.monitoring.live.install).
_process = Observers()


def add_observer(observer: PredictionObserver) -> None:
    _process.add(observer)


def remove_observer(observer: PredictionObserver) -> None:
    _process.remove(observer)


def observed() -> bool:
    return bool(_process)


def notify(event: PredictionEvent) -> None:
    _process.notify(event)

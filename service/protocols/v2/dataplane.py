"""The steps of every Open Inference Protocol call, written once for both front ends (HTTP:
``service.api.v2``; gRPC: ``service.grpc``).

A front end turns its wire format into the codec's ``InferenceRequest`` (``rest`` for the
HTTP body, ``service.protocols.grpc.tensors`` for the protobuf message), hands it here with
how to read its headers (gRPC metadata) and request parameters, and turns the answer back
into its wire format; a ``ServiceError`` raised on the way becomes its protocol's error.
What happens in between is the same for both: the model and version that serve the call
(the variant an experiment assigns when the call names no version), the tensors checked and
turned into rows, the prediction, and its output tensors.

Observation is not repeated here: every prediction ``LoadedModel.predict`` serves reaches the
observers (prediction log, drift, per-model metrics) and the experiment's shadow, whichever
front end asked; what is per request (HTTP's request metrics and log, an experiment
variant's outcome) is each transport's, around the call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from service.config import Settings
from service.errors import ModelNotReady
from service.protocols import routing, v2
from service.protocols.routing import Reader
from service.runtime.hooks import Assignment
from service.runtime.model import LoadedModel
from service.runtime.registry import ModelRegistry
from service.store import ModelRef

# Told which model and variant serve a call as soon as that is known, so a front end can
# say so in its answer's headers (metadata) even when a later step fails.
Routed = Callable[[LoadedModel, Assignment | None], None]


@dataclasses.dataclass(frozen=True)
class InferenceResponse:
    model: LoadedModel
    assignment: Assignment | None
    outputs: list[v2.Tensor]  # in the order the request asked for them
    # The answer's own parameters: the backend that computed it; in an experiment, the
    # experiment and the variant.
    parameters: dict[str, str]


class DataPlane:
    def __init__(self, registry: ModelRegistry, settings: Settings):
        self.registry = registry
        self.settings = settings

    def ready(self) -> bool:
        """Whether every served model is loaded."""
        return self.registry.readiness()[0]

    def model_ready(self, ref: ModelRef) -> bool:
        """Whether ``ref`` can serve now. An unknown model or a bad name raises."""
        try:
            self.registry.get(ref)
        except ModelNotReady:
            return False
        return True

    def model_metadata(self, ref: ModelRef) -> dict[str, Any]:
        model = self.registry.get(ref)
        return v2.model_metadata(model, self.registry.store.versions(model.name))

    def infer(
        self,
        ref: ModelRef,
        request: Callable[[], v2.InferenceRequest],
        *,
        header: Reader,
        parameter: Reader,
        routed: Routed,
    ) -> InferenceResponse:
        """Serve one inference call. ``request`` is called once the model is known (an
        unknown model is NOT_FOUND whatever the body); ``header`` and ``parameter`` read the
        client key an experiment names, only while one runs."""

        def client_key(experiment: Any) -> str | None:
            return routing.client_key(experiment, header, parameter)

        model, assignment = self.registry.route(ref, client_key)
        routed(model, assignment)
        inference = request()
        names = v2.requested_output_names(model, inference.output_names())
        rows = v2.decode_inputs(model, inference.inputs, max_instances=self.settings.max_instances)
        prediction = model.predict(rows, with_proba=v2.OUTPUT_PROBA in names)
        parameters = {"backend": prediction.backend}
        if assignment is not None:
            parameters.update(experiment=assignment.experiment, variant=assignment.variant)
        return InferenceResponse(
            model, assignment, v2.output_tensors(model, prediction, names), parameters
        )

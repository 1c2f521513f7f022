"""What every protocol says about routing: where a request carries its client key, and how
an answer names the version (and, in an experiment, the variant) that served it.

The key of a client, for sticky assignment, comes from the header the experiment names
(``key_header``; gRPC metadata of the same name in lower case) or else from the body
field it names (``key_field``): a top-level field of a native body, an entry of a v2
request's ``parameters``, an entry of an MLflow body's ``params``. A request without
either is assigned at random by weight.

Pure functions: the front ends (Flask views, the gRPC servicer) hand in how to read a
header and a field. Nothing here imports Flask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.errors import BadRequest
from service.runtime.hooks import Assignment
from service.store.experiments import Experiment

VERSION_HEADER = "X-Model-Version"
VARIANT_HEADER = "X-Model-Variant"
EXPERIMENT_HEADER = "X-Experiment-Id"
# Longer keys are refused: a key identifies a client, it is no payload.
MAX_KEY_LENGTH = 256

Reader = Callable[[str], Any]


def client_key(experiment: Experiment, header: Reader, field: Reader | None = None) -> str | None:
    """The client key of a request for ``experiment``: its key header when the request has
    one, else its key field where the protocol carries one (``field``), else None."""
    if experiment.key_header:
        value = header(experiment.key_header)
        if value:
            return check_key(value, f"header {experiment.key_header}")
    if experiment.key_field and field is not None:
        value = field(experiment.key_field)
        if value is not None:
            return check_key(value, f"field {experiment.key_field!r}")
    return None


def check_key(value: Any, where: str) -> str | None:
    """A client key as text: a string or an integer, at most MAX_KEY_LENGTH characters
    (an empty string is no key). Anything else is the client's mistake (400)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest(
            f"the client key in {where} must be a string or an integer, not {type(value).__name__}",
            code="invalid_client_key",
        )
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_KEY_LENGTH:
        raise BadRequest(
            f"the client key in {where} has {len(text)} characters; at most "
            f"{MAX_KEY_LENGTH} are allowed",
            code="invalid_client_key",
        )
    return text or None


def field_of(mapping: Any, name: str) -> Any:
    """``mapping[name]`` when ``mapping`` is a JSON object that has it, else None (its
    shape is the codec's to judge)."""
    return mapping.get(name) if isinstance(mapping, dict) else None


def headers(version: int, assignment: Assignment | None) -> dict[str, str]:
    """The headers of an answer: its version always; its experiment and variant in one."""
    named = {VERSION_HEADER: str(version)}
    if assignment is not None:
        named[VARIANT_HEADER] = assignment.variant
        named[EXPERIMENT_HEADER] = assignment.experiment
    return named


def grpc_metadata(version: int, assignment: Assignment | None) -> tuple[tuple[str, str], ...]:
    """The same as gRPC metadata (whose keys are lower case)."""
    return tuple((key.lower(), value) for key, value in headers(version, assignment).items())


def experiment_fields(assignment: Assignment) -> dict[str, str]:
    """How a JSON body names the experiment and variant that served it."""
    return {"id": assignment.experiment, "variant": assignment.variant}

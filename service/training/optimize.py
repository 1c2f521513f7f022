"""The compiled fast path: a model converted to ONNX, checked against its pickle, recorded.

At publish the trainer converts the fitted estimator (``onnx_convert``) in double precision,
else in float32, runs the result through the serving backend (``runtime.backends``) on the
validation rows and the golden rows, and keeps it only when it gives the pickle's labels
exactly and its probabilities or values within a tolerance. Either way metadata.yaml says
what happened under ``backends.onnx``; a model that cannot be converted, or does not match,
is served by its pickle as before.

``optimize_version`` does the same for a version already in the store (``modelctl
optimize``): its parity rows are the validation rows re-created from the recorded spec
and data when that data can still be read and has the recorded sha256, else the golden
rows of the metadata. The file and the new metadata are added through ``ModelStore.amend``.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import Conflict
from service.formatting import format_number
from service.runtime.backends import OnnxBackend, Prediction, SklearnBackend
from service.runtime.schema import InputSchema
from service.store import ModelStore
from service.store.metadata import onnx_backend
from service.store.store import now_iso, sha256_of
from service.training import data as data_io
from service.training import onnx_convert
from service.training import plan as planning
from service.training import spec as specs
from service.training.split import held_out_instances, split_rows

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
# Probabilities may differ from the pickle's by this much (float32 gives ~1e-7, double ~1e-16).
PROBABILITY_ATOL = 1e-5
# Regression values: this fraction of the largest |value| the pickle gives on the parity rows.
REGRESSION_RTOL = 1e-5


@dataclasses.dataclass
class Compiled:
    entry: dict[str, Any]  # metadata.yaml's backends.onnx
    data: bytes | None  # model.onnx, when it may serve

    @property
    def available(self) -> bool:
        return self.data is not None

    def files(self) -> dict[str, bytes]:
        return {ONNX_FILE: self.data} if self.data is not None else {}


def compile_model(
    estimator: Any, metadata: dict[str, Any], instances: list[list[Any]], *, source: str
) -> Compiled:
    """Convert and check; never raises for a model that cannot be compiled."""
    try:
        return _compile(estimator, metadata, instances, source)
    except Exception as exc:  # the fast path must never stop a publish
        log.exception("%s: the ONNX conversion failed", metadata.get("name"))
        return _unavailable(f"the parity check could not run: {_short(exc)}", [])


def _compile(
    estimator: Any, metadata: dict[str, Any], instances: list[list[Any]], source: str
) -> Compiled:
    task = metadata["task"]
    schema = InputSchema.from_metadata(metadata)
    values = schema.to_array(schema.rows(instances))
    classes = list(estimator.classes_) if hasattr(estimator, "classes_") else None
    has_proba = task == "classification" and hasattr(estimator, "predict_proba")
    reference = SklearnBackend(estimator, schema.names).run(values, has_proba)
    failed: list[dict[str, str]] = []
    for precision in onnx_convert.PRECISIONS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                converted = onnx_convert.convert(
                    estimator, metadata["input"]["features"], precision
                )
        except Exception as exc:
            failed.append(
                {"precision": precision, "error": f"skl2onnx cannot convert it: {_short(exc)}"}
            )
            continue
        try:
            backend = OnnxBackend(
                converted.data, schema.names, task=task, classes=classes, has_proba=has_proba
            )
            got = backend.run(values, has_proba)
        except Exception as exc:
            failed.append(
                {"precision": precision, "error": f"onnxruntime cannot run it: {_short(exc)}"}
            )
            continue
        parity = check_parity(task, reference, got, rows=len(instances), source=source)
        if not parity["passed"]:
            failed.append({"precision": precision, "error": "parity failed: " + _why(parity)})
            continue
        entry: dict[str, Any] = {
            "available": True,
            "file": ONNX_FILE,
            "format": "onnx",
            "sha256": sha256_of(converted.data),
            "size": len(converted.data),
            "precision": precision,
            "inputs": converted.layout,
            "opset": converted.opset,
            "converter": onnx_convert.versions(),
            "converted_at": now_iso(),
            "parity": parity,
        }
        if failed:
            entry["failed_attempts"] = failed
        return Compiled(entry, converted.data)
    return _unavailable("; ".join(f"{f['precision']}: {f['error']}" for f in failed), failed)


def _unavailable(reason: str, failed: list[dict[str, str]]) -> Compiled:
    entry: dict[str, Any] = {
        "available": False,
        "reason": reason,
        "converter": onnx_convert.versions(),
        "converted_at": now_iso(),
    }
    if failed:
        entry["failed_attempts"] = failed
    return Compiled(entry, None)


def check_parity(
    task: str, reference: Prediction, got: Prediction, *, rows: int, source: str
) -> dict[str, Any]:
    """How the compiled outputs compare with the pickle's on the same rows."""
    parity: dict[str, Any] = {"rows": rows, "source": source}
    if task == "classification":
        mismatches = sum(
            a != b or type(a) is not type(b)
            for a, b in zip(reference.predictions, got.predictions, strict=True)
        )
        parity["labels_identical"] = mismatches == 0
        parity["label_mismatches"] = mismatches
        passed = mismatches == 0
        tolerance = {"atol": 0.0}
        if reference.probabilities is not None:
            if got.probabilities is None:
                diff = float("inf")
            else:
                diff = _max_abs_diff(reference.probabilities, got.probabilities)
            parity["max_abs_diff"] = {"probabilities": diff}
            tolerance = {"atol": PROBABILITY_ATOL}
            passed = passed and diff <= PROBABILITY_ATOL
    else:
        expected = np.asarray(reference.predictions, dtype=np.float64)
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
        scale = scale if np.isfinite(scale) and scale > 0 else 1.0
        atol = REGRESSION_RTOL * scale
        diff = _max_abs_diff(reference.predictions, got.predictions)
        parity["max_abs_diff"] = {"predictions": diff}
        tolerance = {"atol": atol, "rtol_of_scale": REGRESSION_RTOL, "scale": scale}
        passed = diff <= atol
    parity["tolerance"] = tolerance
    parity["passed"] = bool(passed)
    return parity


def _max_abs_diff(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    diff = np.abs(a - b)
    return float("inf") if np.isnan(diff).any() else float(diff.max())


def _why(parity: dict[str, Any]) -> str:
    parts = []
    if parity.get("label_mismatches"):
        parts.append(f"{parity['label_mismatches']} of {parity['rows']} labels differ")
    for what, diff in (parity.get("max_abs_diff") or {}).items():
        atol = parity["tolerance"]["atol"]
        if not diff <= atol:
            parts.append(
                f"{what} differ by up to {format_number(diff, 3)} "
                f"(tolerance {format_number(atol, 3)})"
            )
    return ", ".join(parts) or "outputs differ"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__


# -- an existing version ---------------------------------------------------------------


def optimize_version(
    store: ModelStore, name: str, version: int, *, spec_path: Path | None = None
) -> Compiled:
    """Convert a published version and add model.onnx and backends.onnx to it (or
    backends.onnx saying why not). Raises Conflict when it has an ONNX form already."""
    meta = store.metadata(name, version)
    _refuse_if_compiled(meta)
    artifact = store.load_artifact(name, version)
    instances, source, note = parity_rows(meta, spec_path)
    compiled = compile_model(artifact.estimator, artifact.metadata, instances, source=source)
    if note:
        compiled.entry.get("parity", compiled.entry)["source_note"] = note

    def update(current: dict[str, Any]) -> dict[str, Any]:
        _refuse_if_compiled(current)  # under the lock: another optimize may have won
        current.setdefault("backends", {})["onnx"] = compiled.entry
        return current

    store.amend(name, version, compiled.files(), update)
    return compiled


def _refuse_if_compiled(meta: dict[str, Any]) -> None:
    entry = onnx_backend(meta)
    if entry.get("available"):
        raise Conflict(
            f"{meta['name']}@{meta['version']} already has an ONNX form ({entry['file']}, "
            f"{entry['precision']}, converted {entry.get('converted_at', '?')}); nothing to do"
        )


def parity_rows(
    meta: dict[str, Any], spec_path: Path | None = None
) -> tuple[list[list[Any]], str, str | None]:
    """(instances, source, note): the held-out rows the training run had, re-created from
    the recorded spec and data, then the golden rows; only the golden rows when the data
    cannot be read or is not the data the model was trained on (the note says why)."""
    golden = list((meta.get("golden") or {}).get("instances") or [])
    try:
        rows, split_name = _held_out_rows(meta, spec_path)
    except Exception as exc:  # unreadable, moved or changed data: the golden rows remain
        note = f"the training data could not be used: {_short(exc)}"
        if not golden:
            raise Conflict(
                f"{meta['name']}@{meta['version']}: no rows to check parity on: {note}"
            ) from None
        return golden, "golden", note
    return rows + golden, f"{split_name}+golden", None


def _held_out_rows(meta: dict[str, Any], spec_path: Path | None) -> tuple[list[list[Any]], str]:
    training = meta.get("training") or {}
    if spec_path is not None:
        spec = specs.load(spec_path)
    elif training.get("spec"):
        # A data path in the spec is relative to the spec file: the current directory here.
        spec = specs.parse(training["spec"], base_dir=Path.cwd())
    else:
        raise ValueError("the metadata records no training spec")
    dataset = data_io.read(spec)
    recorded = meta["data"].get("sha256")
    if recorded is None or dataset.sha256 != recorded:
        raise ValueError(
            f"{dataset.source} has sha256 {dataset.sha256}, the model was trained on {recorded}"
        )
    plan = planning.make(spec, dataset.frame)
    return held_out_instances(plan, split_rows(spec, plan))

"""Reading the training data a spec names: a CSV, a Parquet file, or a dataset bundled
with scikit-learn, with the sha256 of every file it came from."""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
from typing import Any

import pandas as pd
from sklearn import datasets

from service.errors import InvalidData, InvalidSpec
from service.training.describe import file_sha256
from service.training.spec import TrainingSpec


@dataclasses.dataclass
class Dataset:
    frame: pd.DataFrame
    source: str
    sha256: str
    files: list[dict[str, str]]


def read(spec: TrainingSpec) -> Dataset:
    if "sklearn" in spec.data:
        return _bundled(spec)
    return _file(spec)


def feature_name(raw: str) -> str:
    """'mean radius' -> 'mean_radius', 'sepal length (cm)' -> 'sepal_length_cm'."""
    return re.sub(r"[^a-z0-9]+", "_", raw.lower()).strip("_")


def _file(spec: TrainingSpec) -> Dataset:
    path = spec.data_path
    assert path is not None
    written = spec.data["path"]
    if not path.is_file():
        raise InvalidSpec(
            f"spec field data.path: {written!r} is not a file (looked for {path})",
            field="data.path",
        )
    kind = spec.data.get("format") or ("parquet" if path.suffix in (".parquet", ".pq") else "csv")
    try:
        if kind == "parquet":
            frame = _read_parquet(path)
        else:
            frame = pd.read_csv(
                path,
                sep=spec.data.get("separator", ","),
                na_values=spec.data.get("na_values"),
                skipinitialspace=True,
            )
    except pd.errors.EmptyDataError:
        raise InvalidData(f"{written}: the file is empty", field="data.path") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidData(
            f"{written}: cannot read it as {kind}: {exc}", field="data.path"
        ) from None
    if frame.empty:
        raise InvalidData(f"{written}: no data rows (only a header?)", field="data.path")
    digest = file_sha256(path)
    return Dataset(
        frame=frame,
        source=written,
        sha256=digest,
        files=[{"file": path.name, "sha256": digest}],
    )


def _read_parquet(path) -> pd.DataFrame:
    try:
        import pyarrow  # noqa: F401  (pandas reads Parquet through it)
    except ImportError:
        raise InvalidSpec(
            "spec field data.path: reading Parquet needs pyarrow (pip install pyarrow)",
            field="data.path",
        ) from None
    return pd.read_parquet(path)


def _bundled(spec: TrainingSpec) -> Dataset:
    """A dataset that ships inside scikit-learn: no download, and the files have a sha256."""
    dataset = spec.data["sklearn"]
    loader = getattr(datasets, f"load_{dataset}")
    options: dict[str, Any] = dict(spec.data.get("options") or {})
    try:
        bunch = loader(as_frame=True, **options)
    except TypeError as exc:
        raise InvalidSpec(f"spec field data.options: {exc}", field="data.options") from None
    frame = bunch.frame.rename(columns=feature_name)
    target = frame.pop("target")
    if spec.classification and "target_names" in bunch:
        target = pd.Series(bunch.target_names[target.to_numpy()], index=frame.index)
    frame[spec.target] = target
    # Bunches name their files differently: iris has "filename", diabetes two of its own.
    names = [bunch[key] for key in ("filename", "data_filename", "target_filename") if key in bunch]
    files = [
        {
            "file": f"{bunch.data_module}/{name}",
            "sha256": file_sha256(importlib.resources.files(bunch.data_module) / name),
        }
        for name in names
    ]
    call = ", ".join(f"{k}={v!r}" for k, v in options.items())
    return Dataset(
        frame=frame,
        source=f"scikit-learn bundled dataset: sklearn.datasets.load_{dataset}({call})",
        sha256=files[0]["sha256"],
        files=files,
    )

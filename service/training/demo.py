"""The demo models: trained by ``modelctl train`` from specs that ship with the package,
on data bundled with scikit-learn (no downloads)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from tqdm import tqdm

from service.store import ModelStore
from service.training import spec as specs
from service.training.trainer import train

PRODUCTION = "production"


def demo_spec_files() -> list[Path]:
    folder = importlib.resources.files("service.training") / "demo_specs"
    return sorted(Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def demo_specs() -> list[specs.TrainingSpec]:
    return [specs.load(path) for path in demo_spec_files()]


def train_demo_models(store: ModelStore, *, progress: bool = True) -> list[tuple[str, int]]:
    """Train each demo spec into the store; the new versions serve as production at once
    (a demo has no candidate to stage)."""
    published = []
    for spec in tqdm(demo_specs(), desc="training demo models", unit="model", disable=not progress):
        result = train(spec, store, aliases=(PRODUCTION,))
        assert result.version is not None
        published.append((result.name, result.version))
    return published

"""The demo models: trained from data that ships inside scikit-learn, no downloads.

Each is split once (train / validation / test), scored on validation next to a
Dummy baseline, refitted on train+validation, scored once on test, and
published with a complete metadata.yaml.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import pickle
import re
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn import datasets
from sklearn.base import clone
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from service.runtime.model import LoadedModel
from service.store import ModelStore
from service.training import evaluation
from service.training.describe import estimator_description, file_sha256, golden_example
from service.training.profile import numeric_feature

SEED = 0
SPLIT = {"train": 0.6, "validation": 0.2, "test": 0.2}
GOLDEN_ROWS = 5


@dataclasses.dataclass(frozen=True)
class DemoModel:
    name: str
    description: str
    task: str
    target: str
    source: str
    loader: Callable[..., Any]
    make_estimator: Callable[[], Any]
    primary_metric: str
    integer_features: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


DEMO_MODELS = (
    DemoModel(
        name="iris-classifier",
        description="Iris species from sepal and petal measurements (Fisher's iris data, "
        "150 flowers, 3 species).",
        task="classification",
        target="species",
        source="sklearn.datasets.load_iris()",
        loader=datasets.load_iris,
        make_estimator=lambda: Pipeline(
            [("scale", StandardScaler()), ("model", LogisticRegression(max_iter=1000))]
        ),
        primary_metric="f1_macro",
        tags=("demo", "multiclass", "linear"),
    ),
    DemoModel(
        name="breast-cancer-classifier",
        description="Malignant or benign breast mass from 30 measurements of cell nuclei "
        "(Wisconsin diagnostic breast cancer data, 569 cases).",
        task="classification",
        target="diagnosis",
        source="sklearn.datasets.load_breast_cancer()",
        loader=datasets.load_breast_cancer,
        make_estimator=lambda: RandomForestClassifier(
            n_estimators=100, max_depth=10, random_state=SEED, n_jobs=1
        ),
        primary_metric="roc_auc",
        tags=("demo", "binary", "forest"),
    ),
    DemoModel(
        name="diabetes-regressor",
        description="Disease progression one year after baseline from age, sex, BMI, blood "
        "pressure and six blood serum measurements (diabetes data, 442 patients).",
        task="regression",
        target="progression",
        source="sklearn.datasets.load_diabetes(scaled=False)",
        loader=lambda: datasets.load_diabetes(scaled=False),
        # Shallow trees and a small learning rate: with 442 rows, deeper boosting overfits.
        make_estimator=lambda: GradientBoostingRegressor(
            n_estimators=150, max_depth=2, learning_rate=0.05, random_state=SEED
        ),
        primary_metric="r2",
        integer_features=("age", "sex"),
        tags=("demo", "regression", "boosting"),
    ),
)


def feature_name(raw: str) -> str:
    """'mean radius' -> 'mean_radius', 'sepal length (cm)' -> 'sepal_length_cm'."""
    return re.sub(r"[^a-z0-9]+", "_", raw.lower()).strip("_")


def train_demo_models(store: ModelStore, *, progress: bool = True) -> list[tuple[str, int]]:
    published = []
    for demo in tqdm(DEMO_MODELS, desc="training demo models", unit="model", disable=not progress):
        artifact, metadata = build(demo)
        version = store.publish(
            # LoadedModel raises if the schema, classes or golden example disagree.
            demo.name,
            artifact,
            metadata,
            aliases=("production",),
            verify=LoadedModel,
        )
        published.append((demo.name, version))
    return published


def build(demo: DemoModel) -> tuple[bytes, dict[str, Any]]:
    """Train and evaluate one demo model: its pickle and its metadata."""
    bunch = demo.loader()
    X = np.asarray(bunch.data, dtype=np.float64)
    names = [feature_name(n) for n in bunch.feature_names]
    classification = demo.task == "classification"
    y = np.asarray(bunch.target_names)[bunch.target] if classification else bunch.target

    stratify = y if classification else None
    X_trval, X_test, y_trval, y_test = train_test_split(
        X, y, test_size=SPLIT["test"], random_state=SEED, stratify=stratify
    )
    X_train, X_val, y_train, y_val = train_test_split(
        X_trval,
        y_trval,
        test_size=SPLIT["validation"] / (SPLIT["train"] + SPLIT["validation"]),
        random_state=SEED,
        stratify=y_trval if classification else None,
    )

    candidate = demo.make_estimator().fit(X_train, y_train)
    baseline = evaluation.make_baseline(demo.task).fit(X_train, y_train)
    validation = {
        "model": evaluation.score(demo.task, candidate, X_val, y_val),
        "baseline": evaluation.score(demo.task, baseline, X_val, y_val),
    }
    final = clone(candidate).fit(X_trval, y_trval)
    final_baseline = evaluation.make_baseline(demo.task).fit(X_trval, y_trval)
    test = {
        "model": evaluation.score(demo.task, final, X_test, y_test),
        "baseline": evaluation.score(demo.task, final_baseline, X_test, y_test),
    }

    features = [
        numeric_feature(
            name, X_trval[:, i], dtype="int64" if name in demo.integer_features else "float64"
        )
        for i, name in enumerate(names)
    ]
    # Bunches name their files differently: iris has "filename", diabetes two of its own.
    files = [bunch[key] for key in ("filename", "data_filename", "target_filename") if key in bunch]
    data_files = [
        {
            "file": f"{bunch.data_module}/{f}",
            "sha256": file_sha256(importlib.resources.files(bunch.data_module) / f),
        }
        for f in files
    ]
    metadata: dict[str, Any] = {
        "schema_version": 1,
        "description": demo.description,
        "tags": list(demo.tags),
        "task": demo.task,
        "target": demo.target,
        "algorithm": estimator_description(final),
        "data": {
            "source": f"scikit-learn bundled dataset: {demo.source}",
            "sha256": data_files[0]["sha256"],
            "files": data_files,
            "rows": {
                "total": len(X),
                "train": len(X_train),
                "validation": len(X_val),
                "test": len(X_test),
                "dropped_missing_target": 0,
            },
            "split": {
                "method": "stratified holdout" if classification else "random holdout",
                "fractions": dict(SPLIT),
                "seed": SEED,
                "final_fit": "train+validation",
            },
        },
        "input": {"features": features},
        "scores": {
            "primary_metric": demo.primary_metric,
            "baseline": evaluation.describe_baseline(demo.task),
            "validation": validation,
            "test": test,
        },
        "golden": golden_example(final, X_test[:GOLDEN_ROWS], demo.task),
    }
    if classification:
        metadata["classes"] = [str(c) for c in final.classes_]
    return pickle.dumps(final, protocol=pickle.HIGHEST_PROTOCOL), metadata

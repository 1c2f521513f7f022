"""Comparing two versions: the pure functions of service.training.compare over two
metadata dicts, and `modelctl compare` (text and --json)."""

from __future__ import annotations

import copy
import json

import pytest

from service.cli import main
from service.training.compare import (
    algorithm_differences,
    baseline_rows,
    compare,
    data_differences,
    environment_differences,
    feature_differences,
    flatten,
    score_rows,
)
from tests.support import IRIS

PIPELINE = {
    "class": "sklearn.pipeline.Pipeline",
    "params": {},
    "steps": [
        {
            "name": "scale",
            "class": "sklearn.preprocessing.StandardScaler",
            "params": {"with_mean": True},
        },
        {
            "name": "model",
            "class": "sklearn.linear_model.LogisticRegression",
            "params": {"C": 1.0, "max_iter": 1000, "class_weight": None},
        },
    ],
}


def metadata(**changes):
    """A small but complete-enough metadata dict (version 1)."""
    meta = {
        "name": "m",
        "version": 1,
        "created_at": "2026-01-01T00:00:00Z",
        "algorithm": copy.deepcopy(PIPELINE),
        "data": {
            "source": "iris.csv",
            "sha256": "aaa",
            "files": [{"file": "iris.csv", "sha256": "aaa"}],
            "rows": {"total": 150, "train": 90, "validation": 30, "test": 30},
            "split": {"method": "stratified holdout", "seed": 0},
        },
        "input": {
            "features": [
                {"name": "x", "dtype": "float64", "missing": "reject", "stats": {"mean": 1.0}},
                {
                    "name": "colour",
                    "dtype": "category",
                    "missing": "reject",
                    "categories": ["red", "green"],
                    "unknown_category": "reject",
                },
            ]
        },
        "scores": {
            "primary_metric": "f1_macro",
            "validation": {
                "model": {"accuracy": 0.9, "f1_macro": 0.8, "per_class": {"a": {"f1": 1.0}}},
                "baseline": {"accuracy": 0.33, "f1_macro": 0.17},
            },
            "test": {
                "model": {
                    "accuracy": 0.95,
                    "f1_macro": 0.9,
                    "log_loss": 0.2,
                    "confusion_matrix": {"labels": ["a"], "matrix": [[1]]},
                    "curves": {"roc": {"points": [[0, 0], [1, 1]]}},
                    "points": 200,
                },
                "baseline": {"accuracy": 0.33, "f1_macro": 0.17},
            },
        },
        "environment": {"python": "3.11.7", "scikit-learn": "1.9.1", "numpy": "2.4.6"},
    }
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = meta
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[last] = value
    return meta


# -- flatten -------------------------------------------------------------------------


def test_flatten_names_pipeline_steps_by_name():
    assert flatten(PIPELINE) == {
        "class": "sklearn.pipeline.Pipeline",
        "steps.scale.class": "sklearn.preprocessing.StandardScaler",
        "steps.scale.params.with_mean": True,
        "steps.model.class": "sklearn.linear_model.LogisticRegression",
        "steps.model.params.C": 1.0,
        "steps.model.params.max_iter": 1000,
        "steps.model.params.class_weight": None,
    }


def test_flatten_nested_estimators_named_tuples_and_plain_lists():
    described = {
        "class": "sklearn.compose.ColumnTransformer",
        "params": {
            "transformers": [
                ["num", {"class": "StandardScaler", "params": {"copy": True}}, ["x", "y"]],
                ["cat", {"class": "OneHotEncoder", "params": {}}, ["colour"]],
            ],
            "hidden_layer_sizes": [100, 50],
            "categories": [["red", "green"], ["s", "m"]],
            "estimator": {"class": "Ridge", "params": {"alpha": 1.0}},
        },
    }
    assert flatten(described) == {
        "class": "sklearn.compose.ColumnTransformer",
        "params.transformers.num.class": "StandardScaler",
        "params.transformers.num.params.copy": True,
        "params.transformers.num.columns": ["x", "y"],
        "params.transformers.cat.class": "OneHotEncoder",
        "params.transformers.cat.columns": ["colour"],
        "params.hidden_layer_sizes": [100, 50],
        "params.categories": [["red", "green"], ["s", "m"]],
        "params.estimator.class": "Ridge",
        "params.estimator.params.alpha": 1.0,
    }


def test_flatten_keys_data_files_by_file():
    assert flatten(metadata()["data"])["files.iris.csv.sha256"] == "aaa"


# -- scores --------------------------------------------------------------------------


def test_score_rows_primary_first_scalars_only():
    a = metadata()
    b = metadata(scores__test__model__f1_macro=0.93, scores__test__model__log_loss=0.25)
    b["scores"]["test"]["model"]["roc_auc_ovr"] = 0.99
    del b["scores"]["test"]["model"]["accuracy"]
    rows = score_rows(a, b, "test")
    assert [row["metric"] for row in rows] == ["f1_macro", "accuracy", "log_loss", "roc_auc_ovr"]
    by_metric = {row["metric"]: row for row in rows}
    assert by_metric["f1_macro"] == {
        "metric": "f1_macro",
        "primary": True,
        "higher_is_better": True,
        "a": 0.9,
        "b": 0.93,
        "delta": 0.03,
        "better": "b",
    }
    # log_loss went up: worse, so A is better.
    assert (by_metric["log_loss"]["delta"], by_metric["log_loss"]["better"]) == (0.05, "a")
    assert by_metric["log_loss"]["higher_is_better"] is False
    assert by_metric["log_loss"]["primary"] is False
    assert by_metric["accuracy"] == {
        "metric": "accuracy",
        "primary": False,
        "higher_is_better": True,
        "a": 0.95,
        "b": None,
        "delta": None,
        "better": None,
    }
    assert (by_metric["roc_auc_ovr"]["a"], by_metric["roc_auc_ovr"]["b"]) == (None, 0.99)
    assert "points" not in by_metric and "curves" not in by_metric


def test_score_rows_equal_and_lower_is_better():
    a = metadata(scores__validation__model__accuracy=0.9)
    b = metadata(scores__validation__model__accuracy=0.9, scores__validation__model__f1_macro=0.7)
    rows = {row["metric"]: row for row in score_rows(a, b, "validation")}
    assert rows["accuracy"]["better"] == "="
    assert rows["accuracy"]["delta"] == 0
    assert rows["f1_macro"]["better"] == "a"
    assert "per_class" not in rows

    a = metadata(scores__test__model__rmse=10.0)
    b = metadata(scores__test__model__rmse=8.0)
    rows = {row["metric"]: row for row in score_rows(a, b, "test")}
    assert (rows["rmse"]["delta"], rows["rmse"]["better"]) == (-2.0, "b")


def test_score_rows_mark_both_primary_metrics_when_they_differ():
    a = metadata()
    b = metadata(scores__primary_metric="accuracy")
    rows = score_rows(a, b, "test")
    assert [(row["metric"], row["primary"]) for row in rows[:3]] == [
        ("f1_macro", True),
        ("accuracy", True),
        ("log_loss", False),
    ]


def test_non_finite_scores_count_as_missing():
    a = metadata(scores__test__model__f1_macro=float("nan"))
    rows = {row["metric"]: row for row in score_rows(a, metadata(), "test")}
    assert (rows["f1_macro"]["a"], rows["f1_macro"]["better"]) == (None, None)


def test_baseline_rows():
    b = metadata(scores__test__baseline__f1_macro=0.2)
    assert baseline_rows(metadata(), b, "test") == [
        {"metric": "f1_macro", "a": 0.17, "b": 0.2, "delta": 0.03}
    ]


# -- differences -----------------------------------------------------------------------


def test_algorithm_differences_by_step_name():
    b = metadata()
    steps = b["algorithm"]["steps"]
    steps[1]["params"]["C"] = 0.5
    del steps[1]["params"]["max_iter"]
    steps[1]["params"]["l1_ratio"] = 0.1
    # A new first step: the model's paths do not move.
    steps.insert(0, {"name": "impute", "class": "SimpleImputer", "params": {"strategy": "mean"}})
    assert algorithm_differences(metadata(), b) == [
        {"path": "steps.model.params.C", "change": "changed", "a": 1.0, "b": 0.5},
        {"path": "steps.model.params.max_iter", "change": "removed", "a": 1000, "b": None},
        {"path": "steps.impute.class", "change": "added", "a": None, "b": "SimpleImputer"},
        {"path": "steps.impute.params.strategy", "change": "added", "a": None, "b": "mean"},
        {"path": "steps.model.params.l1_ratio", "change": "added", "a": None, "b": 0.1},
    ]


def test_same_values_are_no_difference():
    a = metadata()
    assert algorithm_differences(a, metadata()) == []
    assert data_differences(a, metadata()) == []
    assert feature_differences(a, metadata()) == []
    assert environment_differences(a, metadata()) == []
    # 1 and 1.0 are the same value; True and 1 are not.
    b = metadata()
    b["algorithm"]["steps"][1]["params"]["C"] = 1
    b["algorithm"]["steps"][0]["params"]["with_mean"] = 1
    assert algorithm_differences(a, b) == [
        {"path": "steps.scale.params.with_mean", "change": "changed", "a": True, "b": 1}
    ]


def test_data_differences():
    b = metadata(data__sha256="bbb", data__rows__train=91, data__split__seed=1)
    b["data"]["files"][0]["sha256"] = "bbb"
    assert data_differences(metadata(), b) == [
        {"path": "sha256", "change": "changed", "a": "aaa", "b": "bbb"},
        {"path": "files.iris.csv.sha256", "change": "changed", "a": "aaa", "b": "bbb"},
        {"path": "rows.train", "change": "changed", "a": 90, "b": 91},
        {"path": "split.seed", "change": "changed", "a": 0, "b": 1},
    ]


def test_environment_differences():
    b = metadata(environment__numpy="2.5.0")
    assert environment_differences(metadata(), b) == [
        {"path": "numpy", "change": "changed", "a": "2.4.6", "b": "2.5.0"}
    ]


def test_feature_differences():
    b = metadata()
    features = b["input"]["features"]
    features[0]["dtype"] = "int64"
    features[0]["stats"] = {"mean": 2.0}  # statistics are not part of the input contract
    features[1]["categories"] = ["red", "blue"]
    features.append({"name": "z", "dtype": "float64", "missing": "allow"})
    a = metadata()
    a["input"]["features"].append({"name": "w", "dtype": "int64", "missing": "reject"})
    assert feature_differences(a, b) == [
        {"feature": "w", "change": "removed", "dtype": "int64"},
        {"feature": "z", "change": "added", "dtype": "float64"},
        {"feature": "x", "change": "changed", "field": "dtype", "a": "float64", "b": "int64"},
        {
            "feature": "colour",
            "change": "changed",
            "field": "categories",
            "a": ["red", "green"],
            "b": ["red", "blue"],
            "added": ["blue"],
            "removed": ["green"],
        },
    ]


def test_feature_order_matters():
    b = metadata()
    b["input"]["features"].reverse()
    assert feature_differences(metadata(), b) == [
        {"feature": None, "change": "reordered", "a": ["x", "colour"], "b": ["colour", "x"]}
    ]


def test_compare_gathers_everything():
    b = metadata(version=2, environment__numpy="2.5.0")
    result = compare(metadata(), b)
    assert result["a"] == {"name": "m", "version": 1, "created_at": "2026-01-01T00:00:00Z"}
    assert result["b"]["version"] == 2
    assert result["primary_metric"] == {"a": "f1_macro", "b": "f1_macro"}
    assert set(result["scores"]) == {"validation", "test"}
    assert result["scores"]["test"]["rows"] == score_rows(metadata(), b, "test")
    assert result["scores"]["test"]["baseline"] == baseline_rows(metadata(), b, "test")
    assert result["environment"] == environment_differences(metadata(), b)
    assert (result["algorithm"], result["data"], result["features"]) == ([], [], [])
    json.dumps(result, allow_nan=False)  # plain data, valid JSON


# -- modelctl compare ------------------------------------------------------------------


@pytest.fixture
def two_versions(store):
    """iris-classifier@1 (production) and @2 (staging): worse f1, C halved, another numpy,
    one more training row."""
    meta = store.metadata(IRIS, 1)
    for key in ("version", "artifact", "created_at"):
        del meta[key]
    meta["scores"]["test"]["model"]["f1_macro"] = 0.91
    meta["scores"]["test"]["model"]["balanced_accuracy"] += 0.0123
    meta["scores"]["primary_metric"] = "f1_macro"
    model_step = next(s for s in meta["algorithm"]["steps"] if s["name"] == "model")
    model_step["params"]["C"] = 0.5
    meta["environment"]["numpy"] = "0.0.1"
    meta["data"]["rows"]["train"] += 1
    pickle_bytes = (store.layout.version_dir(IRIS, 1) / "model.pkl").read_bytes()
    version = store.publish(IRIS, pickle_bytes, meta, aliases=("staging",))
    assert version == 2
    return store.metadata(IRIS, 1), store.metadata(IRIS, 2)


def run(store_dir, capsys, *args):
    code = main([*args, "--store", str(store_dir)])
    out, err = capsys.readouterr()
    return code, out, err


def test_modelctl_compare_text(store_dir, capsys, two_versions):
    a, b = two_versions
    code, out, err = run(store_dir, capsys, "compare", IRIS, "production", "staging")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"A: iris-classifier@1 (production), {a['created_at']}"
    assert lines[1] == f"B: iris-classifier@2 (staging), {b['created_at']}"

    test_start = next(i for i, line in enumerate(lines) if line.startswith("test "))
    header, first = lines[test_start], lines[test_start + 1]
    assert header.split() == ["test", "A", "B", "delta", "better"]
    f1 = a["scores"]["test"]["model"]["f1_macro"]
    assert first.split() == ["*", "f1_macro", f"{f1:.4f}", "0.91", f"{0.91 - f1:.4f}", "A"]
    # Numbers are right-aligned under their headers.
    for column in ("A", "B", "delta"):
        end = header.index(f" {column} ") + 1 + len(column)
        assert first[end - 1] != " " and first[end] == " ", column
    accuracy = next(line for line in lines[test_start:] if line.split()[0] == "accuracy")
    assert accuracy.split()[-1] == "="
    balanced = next(line for line in lines[test_start:] if line.split()[0] == "balanced_accuracy")
    assert balanced.split()[-2:] == ["+0.0123", "B"]
    assert "per_class" not in out and "confusion_matrix" not in out
    baseline = a["scores"]["test"]["baseline"]["f1_macro"]
    assert any(line.split()[:3] == ["baseline", "f1_macro", f"{baseline:.4f}"] for line in lines)

    sections = out.rstrip("\n").split("\n\n")
    assert "algorithm:\n  steps.model.params.C  1.0 -> 0.5" in sections
    train_rows = a["data"]["rows"]["train"]
    assert f"data:\n  rows.train  {train_rows} -> {train_rows + 1}" in sections
    assert "input features: same" in sections
    assert f"environment:\n  numpy  {a['environment']['numpy']} -> 0.0.1" in sections


def test_modelctl_compare_versions_by_number_and_the_same_version(store_dir, capsys, two_versions):
    code, out, _ = run(store_dir, capsys, "compare", IRIS, "1", "1")
    assert code == 0
    for title in ("algorithm", "data", "input features", "environment"):
        assert f"\n{title}: same" in out
    lines = out.splitlines()
    metric_rows = [
        line.split()
        for line in lines[
            2 : lines.index("(* primary metric; better: the side that scores better, = when equal)")
        ]
        if line.startswith("  ") and not line.startswith("  baseline")
    ]
    assert len(metric_rows) > 4
    assert {row[-1] for row in metric_rows} == {"="}


def test_modelctl_compare_json(store_dir, capsys, two_versions):
    a, b = two_versions
    code, out, err = run(store_dir, capsys, "compare", IRIS, "1", "staging", "--json")
    assert (code, err) == (0, "")
    expected = compare(a, b)
    expected["a"]["aliases"] = ["production"]
    expected["b"]["aliases"] = ["staging"]
    assert json.loads(out) == expected
    assert json.loads(out)["algorithm"] == [
        {"path": "steps.model.params.C", "change": "changed", "a": 1.0, "b": 0.5}
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((IRIS, "1", "canary"), "modelctl: model 'iris-classifier' has no alias 'canary'"),
        ((IRIS, "9", "1"), "modelctl: model 'iris-classifier' has no version 9"),
        (("no-such-model", "1", "2"), "modelctl: no model named 'no-such-model' in the store"),
        (("Iris", "1", "2"), "modelctl: invalid model name 'Iris'"),
    ],
)
def test_modelctl_compare_failures(store_dir, capsys, args, message):
    code, out, err = run(store_dir, capsys, "compare", *args)
    assert (code, out) == (1, "")
    assert err.startswith(message)
    assert len(err.splitlines()) == 1

"""The compiled fast path: conversion to ONNX and parity at publish, the onnxruntime backend
and its fall-backs to the pickle, ``modelctl optimize`` and the registry switching to it,
and how answers say which backend served them."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression

from service import create_app
from service.cli import main
from service.config import Settings
from service.errors import Conflict, IntegrityError, StoreError
from service.protocols import v2
from service.protocols.v2 import rest
from service.runtime import model as model_runtime
from service.runtime.backends import OnnxBackend, SklearnBackend
from service.runtime.registry import ModelRegistry
from service.store import ModelRef, ModelStore
from service.store.store import sha256_of
from service.training import onnx_convert, optimize
from service.training import spec as specs
from service.training.demo import demo_specs
from service.training.split import held_out_instances, prepare
from service.training.trainer import train
from tests.outputs import same_as
from tests.support import CANCER, DIABETES, IRIS, IRIS_ROW
from tests.test_api import post

DEMO = {spec.name: spec for spec in demo_specs()}
PENGUINS_DIR = Path(__file__).resolve().parents[1] / "examples" / "penguins"
PENGUINS = "penguins"
PENGUINS_UNKNOWN = "penguins-unknown"
FOREST_REGRESSOR = "forest-regressor"
KERNEL_RIDGE = "kernel-ridge"


def penguins_spec(name: str, handle_unknown: str, data_dir: Path = PENGUINS_DIR):
    """examples/penguins without its grid search: a small forest over numbers with missing
    values (imputed, scaled) and categories (one-hot encoded)."""
    return specs.parse(
        {
            "name": name,
            "task": "classification",
            "target": "species",
            "data": {"path": "penguins.csv"},
            "drop": ["year"],
            "features": {
                "numeric": {"impute": "median", "scale": "standard"},
                "categorical": {"impute": "constant", "handle_unknown": handle_unknown},
            },
            "estimator": {
                "class": "sklearn.ensemble.RandomForestClassifier",
                "params": {"n_estimators": 25, "max_depth": 6, "n_jobs": 1},
            },
            "evaluation": {"seed": 0, "primary_metric": "f1_macro"},
        },
        base_dir=data_dir,
    )


def diabetes_spec(name: str, estimator: dict):
    raw = dict(DEMO[DIABETES].source_text, name=name, estimator=estimator)
    return specs.parse(raw, base_dir=Path.cwd())


@pytest.fixture(scope="module")
def extra_store_dir(tmp_path_factory) -> Path:
    """Models besides the demos: a pipeline with categories and missing values (two ways of
    treating unseen categories), a random forest regressor, and a model skl2onnx cannot
    convert (KernelRidge)."""
    root = tmp_path_factory.mktemp("onnx-store") / "model_store"
    store = ModelStore(root)
    for spec in (
        penguins_spec(PENGUINS, "ignore"),
        penguins_spec(PENGUINS_UNKNOWN, "infrequent_if_exist"),
        diabetes_spec(
            FOREST_REGRESSOR,
            {
                "class": "sklearn.ensemble.RandomForestRegressor",
                "params": {"n_estimators": 30, "max_depth": 6, "n_jobs": 1},
            },
        ),
    ):
        train(spec, store, aliases=("production",))
    kernel = diabetes_spec(KERNEL_RIDGE, {"class": "sklearn.kernel_ridge.KernelRidge"})
    train(kernel, store, aliases=("production",), force_reason="no baseline needed here")
    return root


@pytest.fixture
def extra_store(extra_store_dir, tmp_path) -> ModelStore:
    target = tmp_path / "onnx_store"
    shutil.copytree(extra_store_dir, target)
    return ModelStore(target)


def onnx_entry(store: ModelStore, name: str, version: int = 1) -> dict:
    return store.metadata(name, version)["backends"]["onnx"]


def onnx_path(store: ModelStore, name: str, version: int = 1) -> Path:
    return store.root / name / str(version) / "model.onnx"


# -- conversion and parity at publish -----------------------------------------------------


@pytest.mark.parametrize("name", [IRIS, CANCER, DIABETES])
def test_demo_models_are_published_with_a_double_precision_onnx_form(store, name):
    entry = onnx_entry(store, name)
    data = onnx_path(store, name).read_bytes()
    assert entry["available"] is True
    assert (entry["file"], entry["format"], entry["inputs"]) == ("model.onnx", "onnx", "matrix")
    assert (entry["sha256"], entry["size"]) == (sha256_of(data), len(data))
    assert entry["precision"] == "double"
    assert entry["converter"] == onnx_convert.versions()
    parity = entry["parity"]
    meta = store.metadata(name, 1)
    assert parity["source"] == "validation+golden"
    assert parity["rows"] == meta["data"]["rows"]["validation"] + len(meta["golden"]["instances"])
    assert parity["passed"] is True
    if meta["task"] == "classification":
        assert parity["labels_identical"] is True and parity["label_mismatches"] == 0
        assert parity["tolerance"] == {"atol": optimize.PROBABILITY_ATOL}
        assert parity["max_abs_diff"]["probabilities"] < 1e-12
    else:
        tolerance = parity["tolerance"]
        assert tolerance["atol"] == pytest.approx(optimize.REGRESSION_RTOL * tolerance["scale"])
        assert parity["max_abs_diff"]["predictions"] < 1e-12 * tolerance["scale"]


def test_a_pipeline_with_categories_takes_one_input_per_column(extra_store):
    entry = onnx_entry(extra_store, PENGUINS)
    assert entry["available"] and entry["inputs"] == "columns"
    assert entry["precision"] == "double"
    assert entry["parity"]["labels_identical"] and entry["parity"]["passed"]
    loaded = model_runtime.load(extra_store, PENGUINS, 1)
    assert isinstance(loaded.backend, OnnxBackend)
    assert loaded.backend._input_names == list(loaded.schema.names)


@pytest.mark.parametrize(
    ("store_name", "name"),
    [("demo", DIABETES), ("extra", FOREST_REGRESSOR), ("extra", PENGUINS)],
    ids=["gradient-boosting", "random-forest-regressor", "penguins-pipeline"],
)
def test_double_precision_closes_the_float32_gap(store, extra_store, store_name, name):
    """float32 trees add leaf values in float32, and a scaler before a forest rounds its
    outputs differently from scikit-learn's float64 → float32 cast, which can flip a split
    (examples/penguins' 200 trees: probabilities 5e-3 apart in float32, 1e-15 in double)."""
    source = store if store_name == "demo" else extra_store
    artifact = source.load_artifact(name, 1)
    meta = artifact.metadata
    spec = DEMO[name] if name in DEMO else _spec_of(name)
    plan, split = prepare(spec)
    instances, _ = held_out_instances(plan, split)
    values = model_runtime.LoadedModel(artifact, backend="sklearn").validate(instances)
    has_proba = meta["task"] == "classification"
    reference = SklearnBackend(artifact.estimator, tuple(plan.names)).run(values, has_proba)
    parity = {}
    for precision in ("double", "float32"):
        converted = onnx_convert.convert(artifact.estimator, meta["input"]["features"], precision)
        backend = OnnxBackend(
            converted.data,
            tuple(plan.names),
            task=meta["task"],
            classes=meta.get("classes"),
            has_proba=has_proba,
        )
        got = backend.run(values, has_proba)
        parity[precision] = optimize.check_parity(
            meta["task"], reference, got, rows=len(instances), source="validation"
        )
    (what,) = parity["double"]["max_abs_diff"]
    double, single = (parity[p]["max_abs_diff"][what] for p in ("double", "float32"))
    assert parity["double"]["passed"]
    assert double < 1e-12 * parity["double"]["tolerance"].get("scale", 1.0)
    assert single > 1000 * max(double, 1e-16)


def _spec_of(name: str):
    if name == FOREST_REGRESSOR:
        return diabetes_spec(
            FOREST_REGRESSOR,
            {
                "class": "sklearn.ensemble.RandomForestRegressor",
                "params": {"n_estimators": 30, "max_depth": 6, "n_jobs": 1},
            },
        )
    return penguins_spec(name, "ignore" if name == PENGUINS else "infrequent_if_exist")


def test_a_model_skl2onnx_cannot_convert_is_served_by_its_pickle(extra_store):
    entry = onnx_entry(extra_store, KERNEL_RIDGE)
    assert entry["available"] is False
    assert "KernelRidge" in entry["reason"]
    assert entry["reason"].startswith("double: skl2onnx cannot convert it")
    assert "; float32: skl2onnx cannot convert it" in entry["reason"]
    assert [a["precision"] for a in entry["failed_attempts"]] == ["double", "float32"]
    assert not onnx_path(extra_store, KERNEL_RIDGE).exists()
    loaded = model_runtime.load(extra_store, KERNEL_RIDGE, 1)
    assert loaded.backend.name == "sklearn"
    assert not any("onnx" in w for w in loaded.warnings)
    row = extra_store.metadata(KERNEL_RIDGE, 1)["golden"]["instances"][0]
    assert loaded.predict([row]).backend == "sklearn"


def test_a_conversion_that_computes_something_else_fails_parity(store, tmp_path, monkeypatch):
    """Whatever goes wrong in a conversion, parity refuses it: here a graph of another
    model (fitted on shuffled labels) stands in for the real one."""
    real_convert = onnx_convert.convert

    def other_model(estimator, features, precision):
        X = np.random.default_rng(0).normal(size=(60, 4))
        labels = np.array(["setosa", "versicolor", "virginica"] * 20)
        impostor = LogisticRegression().fit(X, np.random.default_rng(1).permutation(labels))
        return real_convert(impostor, features, precision)

    monkeypatch.setattr(onnx_convert, "convert", other_model)
    target = ModelStore(tmp_path / "parity_store")
    result = train(DEMO[IRIS], target)
    entry = result.metadata["backends"]["onnx"]
    assert entry["available"] is False
    assert "double: parity failed:" in entry["reason"]
    assert "float32: parity failed:" in entry["reason"]
    assert "labels differ" in entry["reason"]
    assert "model.onnx" not in {p.name for p in (target.root / IRIS / "1").iterdir()}
    assert model_runtime.load(target, IRIS, 1).backend.name == "sklearn"


def test_train_without_onnx_publishes_the_pickle_only(tmp_path):
    target = ModelStore(tmp_path / "plain")
    result = train(DEMO[IRIS], target, onnx=False)
    assert "backends" not in result.metadata
    assert sorted(p.name for p in (target.root / IRIS / "1").iterdir()) == [
        "metadata.yaml",
        "model.pkl",
    ]
    assert model_runtime.load(target, IRIS, 1).backend.name == "sklearn"


# -- serving ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [IRIS, CANCER, DIABETES])
def test_onnxruntime_answers_like_the_pickle(store, name):
    _, split = prepare(DEMO[name])
    rows = split.X_test.to_numpy(dtype=np.float64).tolist()
    compiled = model_runtime.load(store, name, 1)
    pickled = model_runtime.load(store, name, 1, backend="sklearn")
    got, expected = compiled.predict(rows), pickled.predict(rows)
    assert (got.backend, expected.backend) == ("onnxruntime", "sklearn")
    assert got.predictions == same_as(expected.predictions)
    assert [type(p) for p in got.predictions] == [type(p) for p in expected.predictions]
    if expected.probabilities is not None:
        assert got.probabilities == same_as(expected.probabilities)
    one = compiled.predict(rows[:1])
    assert one.predictions == same_as(expected.predictions[:1])


def test_missing_values_and_unseen_categories_answer_like_the_pickle(extra_store):
    compiled = model_runtime.load(extra_store, PENGUINS, 1)
    pickled = model_runtime.load(extra_store, PENGUINS, 1, backend="sklearn")
    rows = [
        {
            "island": "Biscoe",
            "bill_length_mm": None,
            "bill_depth_mm": 15.0,
            "flipper_length_mm": 220,
            "body_mass_g": None,
            "sex": None,
        },
        {
            "island": "Atlantis",  # not an island of the training data
            "bill_length_mm": 39.0,
            "bill_depth_mm": 18.5,
            "flipper_length_mm": 190,
            "body_mass_g": 3700,
            "sex": "female",
        },
        {
            "island": "Dream",
            "bill_length_mm": 48.0,
            "bill_depth_mm": None,
            "flipper_length_mm": None,
            "body_mass_g": 3800,
            "sex": "unknown-sex",
        },
    ]
    got, expected = compiled.predict(rows), pickled.predict(rows)
    assert got.backend == "onnxruntime"
    assert got.predictions == expected.predictions
    assert got.probabilities == same_as(expected.probabilities)
    assert compiled.fallbacks == 0


def test_an_onnxruntime_error_is_answered_by_the_pickle(extra_store, caplog):
    """OneHotEncoder(handle_unknown="infrequent_if_exist") with no infrequent categories
    becomes an ONNX encoder that refuses an unseen category ("Unknown Category"):
    scikit-learn encodes it as zeros. That request is answered by the pickle."""
    compiled = model_runtime.load(extra_store, PENGUINS_UNKNOWN, 1)
    pickled = model_runtime.load(extra_store, PENGUINS_UNKNOWN, 1, backend="sklearn")
    assert compiled.backend.name == "onnxruntime"
    known = [["Biscoe", 46.0, 14.5, 215, 5000, "female"]]
    unseen = [["Atlantis", 46.0, 14.5, 215, 5000, "female"]]
    assert compiled.predict(known).backend == "onnxruntime"
    with caplog.at_level(logging.WARNING, logger="service.runtime.model"):
        got = compiled.predict(unseen)
    assert got.backend == "sklearn"
    assert got.predictions == pickled.predict(unseen).predictions
    assert got.probabilities == pickled.predict(unseen).probabilities
    assert compiled.fallbacks == 1
    assert "onnxruntime could not serve a request" in caplog.text
    assert compiled.backend.name == "onnxruntime"  # one request, not the model, falls back


def test_an_onnxruntime_error_is_never_a_500(extra_store_dir, tmp_path):
    app = create_app(
        {
            "store": extra_store_dir,
            "models": (PENGUINS_UNKNOWN,),
            "state_dir": tmp_path / "monitoring",
        }
    )
    try:
        client = app.test_client()
        row = {
            "island": "Atlantis",
            "bill_length_mm": 46.0,
            "bill_depth_mm": 14.5,
            "flipper_length_mm": 215,
            "body_mass_g": 5000,
            "sex": "female",
        }
        response = post(client, f"/v1/models/{PENGUINS_UNKNOWN}/predict", {"instances": [row]})
        assert response.status_code == 200, response.json
        assert response.json["backend"] == "sklearn"
        row["island"] = "Dream"
        response = post(client, f"/v1/models/{PENGUINS_UNKNOWN}/predict", {"instances": [row]})
        assert response.json["backend"] == "onnxruntime"
    finally:
        app.extensions["model_service"].registry.stop()


def test_a_tampered_onnx_file_is_served_by_the_pickle_with_a_warning(store_dir, tmp_path):
    path = store_dir / IRIS / "1" / "model.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    loaded = model_runtime.load(ModelStore(store_dir), IRIS, 1)
    assert loaded.backend.name == "sklearn"
    (warning,) = loaded.warnings
    assert "model.onnx has sha256" in warning and "served by the pickle" in warning
    assert loaded.predict([IRIS_ROW]).predictions == ["setosa"]

    app = create_app({"store": store_dir, "state_dir": tmp_path / "monitoring"})
    try:
        client = app.test_client()
        answer = post(client, f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW]}).json
        assert answer["backend"] == "sklearn"
        listing = {m["name"]: m for m in client.get("/v1/models").json["models"]}
        assert listing[IRIS]["backend"] == "sklearn"
        assert listing[IRIS]["warnings"] == {"1": [warning]}
        assert listing[CANCER]["backend"] == "onnxruntime"
    finally:
        app.extensions["model_service"].registry.stop()


def test_an_onnx_file_that_onnxruntime_cannot_read_is_served_by_the_pickle(store):
    """Right sha256 (recorded after the damage), but not an ONNX graph."""
    garbage = b"not an onnx graph"
    onnx_path(store, IRIS).write_bytes(garbage)
    _edit_onnx_entry(store, IRIS, sha256=sha256_of(garbage), size=len(garbage))
    loaded = model_runtime.load(store, IRIS, 1)
    assert loaded.backend.name == "sklearn"
    assert any(w.startswith("onnxruntime cannot load model.onnx") for w in loaded.warnings)


def test_a_golden_mismatch_through_onnxruntime_drops_to_the_pickle(store, tmp_path):
    """A version whose model.onnx (with its true sha256) computes another model: the golden
    replay at load catches it."""
    X = np.random.default_rng(0).normal(size=(60, 4))
    other = LogisticRegression().fit(X, np.array(["setosa", "versicolor", "virginica"] * 20))
    features = store.metadata(IRIS, 1)["input"]["features"]
    data = onnx_convert.convert(other, features, "double").data
    onnx_path(store, IRIS).write_bytes(data)
    _edit_onnx_entry(store, IRIS, sha256=sha256_of(data), size=len(data))
    loaded = model_runtime.load(store, IRIS, 1)
    assert loaded.backend.name == "sklearn"
    (warning,) = loaded.warnings
    assert warning.startswith("the golden example through onnxruntime: gives other outputs")


def _edit_onnx_entry(store, name, **changes):
    path = store.root / name / "1" / "metadata.yaml"
    meta = yaml.safe_load(path.read_text())
    meta["backends"]["onnx"].update(changes)
    path.write_text(yaml.safe_dump(meta, sort_keys=False))


# -- the backend setting and what answers say --------------------------------------------


def test_the_backend_setting():
    assert Settings.load(environ={}).backend == "auto"
    assert Settings.load(environ={"MODEL_SERVICE_BACKEND": "sklearn"}).backend == "sklearn"
    with pytest.raises(ValueError, match="setting backend: 'onnx' is not auto or sklearn"):
        Settings.load(environ={"MODEL_SERVICE_BACKEND": "onnx"})


@pytest.mark.parametrize("backend", ["auto", "sklearn"])
def test_answers_and_listings_say_which_backend_serves(store_dir, tmp_path, backend):
    expected = "onnxruntime" if backend == "auto" else "sklearn"
    app = create_app({"store": store_dir, "state_dir": tmp_path / "monitoring", "backend": backend})
    try:
        client = app.test_client()
        answer = post(client, f"/v1/models/{IRIS}/predict", {"instances": [IRIS_ROW]}).json
        assert list(answer) == [
            "model",
            "version",
            "predictions",
            "probabilities",
            "classes",
            "backend",
            "request_id",
        ]
        assert answer["backend"] == expected
        listing = client.get("/v1/models").json["models"]
        assert {m["name"]: m["backend"] for m in listing} == {
            IRIS: expected,
            CANCER: expected,
            DIABETES: expected,
        }
        detail = client.get(f"/v1/models/{DIABETES}").json
        assert detail["backend"] == expected
        assert [(v["version"], v["backend"]) for v in detail["versions"]] == [(1, expected)]
        v2_answer = post(
            client,
            f"/v2/models/{DIABETES}/infer",
            {"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP64", "data": [0] * 10}]},
        )
        assert v2_answer.json["parameters"] == {"backend": expected}
        loaded = app.extensions["model_service"].registry.get(ModelRef(IRIS))
        assert loaded.describe()["backend"] == expected
    finally:
        app.extensions["model_service"].registry.stop()


def test_v2_encoding_leaves_parameters_out_unless_given(store):
    model = model_runtime.load(store, IRIS, 1)
    prediction = model.predict([IRIS_ROW])
    tensors = v2.output_tensors(model, prediction, [v2.OUTPUT_PREDICT])
    plain, _ = rest.encode_infer_response(model, tensors)
    assert "parameters" not in json.loads(plain)
    given, _ = rest.encode_infer_response(model, tensors, parameters={"backend": "onnxruntime"})
    assert json.loads(given)["parameters"] == {"backend": "onnxruntime"}


# -- modelctl optimize and the registry -------------------------------------------------


def run_modelctl(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_optimize_adds_the_onnx_form_and_the_registry_switches(tmp_path, capsys):
    root = tmp_path / "store"
    store = ModelStore(root)
    train(DEMO[IRIS], store, aliases=("production",), onnx=False)
    registry = ModelRegistry(store, Settings.from_mapping({"store": root}))
    registry.refresh()
    before = registry.get(ModelRef(IRIS))
    assert before.backend.name == "sklearn"

    code, out, err = run_modelctl(capsys, "optimize", f"{IRIS}@production", "--store", root)
    assert (code, err) == (0, "")
    assert out.startswith(f"{IRIS}@1: onnx: model.onnx (double), parity on ")
    assert "validation+golden rows: labels identical" in out
    entry = onnx_entry(store, IRIS)
    data = onnx_path(store, IRIS).read_bytes()
    assert entry["available"] and entry["sha256"] == sha256_of(data)
    assert entry["parity"]["source"] == "validation+golden"
    assert not [p for p in (root / IRIS / "1").iterdir() if p.name.startswith(".tmp-")]

    registry.refresh()  # what the watcher does each reload interval
    after = registry.get(ModelRef(IRIS))
    assert after is not before
    assert after.backend.name == "onnxruntime"
    assert after.predict([IRIS_ROW]).predictions == ["setosa"]

    code, out, err = run_modelctl(capsys, "optimize", f"{IRIS}@1", "--store", root)
    assert code == 1
    assert "iris-classifier@1 already has an ONNX form (model.onnx, double" in err
    registry.stop()


def test_optimize_checks_parity_on_the_golden_rows_when_the_data_changed(tmp_path, capsys):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copyfile(PENGUINS_DIR / "penguins.csv", data_dir / "penguins.csv")
    (data_dir / "spec.yaml").write_text(yaml.safe_dump(penguins_spec("p", "ignore").source_text))
    store = ModelStore(tmp_path / "store")
    train(specs.load(data_dir / "spec.yaml"), store, onnx=False)

    # Unchanged data: the validation split again.
    held_out = optimize.parity_rows(store.metadata("p", 1), data_dir / "spec.yaml")
    assert held_out[1:] == ("validation+golden", None)

    with open(data_dir / "penguins.csv", "a", encoding="utf-8") as handle:
        handle.write("Adelie,Torgersen,40.0,18.0,190,3700,male,2009\n")
    code, out, err = run_modelctl(
        capsys, "optimize", "p@1", "--spec", data_dir / "spec.yaml", "--store", store.root
    )
    assert (code, err) == (0, "")
    parity = onnx_entry(store, "p")["parity"]
    assert parity["source"] == "golden"
    assert parity["rows"] == len(store.metadata("p", 1)["golden"]["instances"])
    assert "the model was trained on" in parity["source_note"]
    assert "parity rows: golden only;" in out


def test_optimize_records_why_a_model_cannot_be_compiled(extra_store):
    meta_path = extra_store.root / KERNEL_RIDGE / "1" / "metadata.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    del meta["backends"]
    meta_path.write_text(yaml.safe_dump(meta, sort_keys=False))
    compiled = optimize.optimize_version(extra_store, KERNEL_RIDGE, 1)
    assert not compiled.available
    entry = onnx_entry(extra_store, KERNEL_RIDGE)
    assert entry["available"] is False and "KernelRidge" in entry["reason"]
    assert not onnx_path(extra_store, KERNEL_RIDGE).exists()


# -- the store's part -----------------------------------------------------------------


def test_publish_refuses_extra_files_that_are_not_plain_new_names(store):
    meta = store.metadata(IRIS, 1)
    pickle_bytes = (store.root / IRIS / "1" / "model.pkl").read_bytes()
    for name in ("model.pkl", "metadata.yaml", "../x.onnx", ".hidden"):
        with pytest.raises(StoreError, match="cannot be added to a version"):
            store.publish(IRIS, pickle_bytes, meta, extra_files={name: b"x"})
    assert store.versions(IRIS) == [1]


def test_amend_cannot_change_what_identifies_a_version(store):
    def swap_pickle(meta):
        meta["artifact"]["sha256"] = "0" * 64
        return meta

    with pytest.raises(IntegrityError, match="an amendment cannot change 'artifact'"):
        store.amend(IRIS, 1, {}, swap_pickle)
    with pytest.raises(Conflict, match="already has an ONNX form"):
        optimize.optimize_version(store, IRIS, 1)


def test_a_forest_regressor_is_served_by_onnxruntime(extra_store):
    loaded = model_runtime.load(extra_store, FOREST_REGRESSOR, 1)
    assert loaded.backend.name == "onnxruntime"
    estimator = extra_store.load_artifact(FOREST_REGRESSOR, 1).estimator
    assert isinstance(estimator.steps[-1][1], RandomForestRegressor)
    rows = extra_store.metadata(FOREST_REGRESSOR, 1)["golden"]["instances"]
    got = loaded.predict(rows)
    assert got.predictions == same_as(estimator.predict(np.asarray(rows, dtype=float)))

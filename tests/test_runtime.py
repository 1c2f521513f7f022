"""LoadedModel (load-time checks, exact predictions) and ModelRegistry (the in-process
cache that follows the store's aliases)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import yaml
from sklearn import metrics
from sklearn.linear_model import LogisticRegression

from service.config import Settings
from service.errors import (
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    VersionNotFound,
)
from service.runtime import model as model_runtime
from service.runtime.registry import ModelRegistry
from service.store import ModelRef
from service.training.demo import demo_specs
from service.training.split import prepare
from tests.support import CANCER, DIABETES, IRIS, IRIS_FEATURES, IRIS_ROW, IRIS_ROWS


def edit_metadata(store, name, version, change):
    path = store.root / name / str(version) / "metadata.yaml"
    meta = yaml.safe_load(path.read_text())
    change(meta)
    path.write_text(yaml.safe_dump(meta, sort_keys=False))


def republish(store, name=IRIS, **kwargs) -> int:
    directory = store.root / name / "1"
    meta = yaml.safe_load((directory / "metadata.yaml").read_text())
    for key in ("version", "artifact", "created_at"):
        meta.pop(key)
    return store.publish(name, (directory / "model.pkl").read_bytes(), meta, **kwargs)


DEMO_MODELS = demo_specs()
DEMO = {spec.name: spec for spec in DEMO_MODELS}


def held_out_rows(demo):
    """The held-out test rows of a demo model, split exactly as training split them."""
    _, split = prepare(demo)
    return split.X_test.to_numpy(dtype=np.float64), split.y_test.to_numpy()


# -- LoadedModel -------------------------------------------------------------------------


@pytest.mark.parametrize("demo", DEMO_MODELS, ids=lambda d: d.name)
def test_predictions_equal_the_estimator_exactly(store, demo):
    X_test, _ = held_out_rows(demo)
    # The pickle's path; the compiled one is held to its parity tolerance (test_backends.py).
    loaded = model_runtime.load(store, demo.name, 1, backend="sklearn")
    # An independent copy of the estimator, straight from the verified pickle.
    estimator = pickle.loads((store.root / demo.name / "1" / "model.pkl").read_bytes())

    got = loaded.predict(X_test.tolist())

    assert got.predictions == estimator.predict(X_test).tolist()
    assert len(got.predictions) == len(X_test)
    if demo.task == "classification":
        assert loaded.has_proba
        assert got.probabilities == estimator.predict_proba(X_test).tolist()
        assert loaded.classes == list(estimator.classes_)
    else:
        assert not loaded.has_proba
        assert got.probabilities is None
        assert loaded.classes is None


@pytest.mark.parametrize("demo", DEMO_MODELS, ids=lambda d: d.name)
def test_served_predictions_reproduce_the_recorded_test_score(store, demo):
    X_test, y_test = held_out_rows(demo)
    loaded = model_runtime.load(store, demo.name, 1)
    predictions = loaded.predict(X_test.tolist()).predictions
    recorded = store.metadata(demo.name, 1)["scores"]["test"]["model"]
    if demo.task == "classification":
        assert metrics.accuracy_score(y_test, predictions) == pytest.approx(
            recorded["accuracy"], abs=1e-6
        )
    else:
        assert metrics.r2_score(y_test, predictions) == pytest.approx(recorded["r2"], abs=1e-6)


def test_objects_keyed_by_name_predict_like_lists(store):
    loaded = model_runtime.load(store, IRIS, 1)
    X_test, _ = held_out_rows(DEMO[IRIS])
    names = list(loaded.schema.names)
    objects = [dict(reversed(list(zip(names, row, strict=True)))) for row in X_test.tolist()]
    assert loaded.predict(objects) == loaded.predict(X_test.tolist())


def test_with_proba_false_skips_probabilities(store):
    loaded = model_runtime.load(store, CANCER, 1)
    X_test, _ = held_out_rows(DEMO[CANCER])
    got = loaded.predict(X_test[:3].tolist(), with_proba=False)
    assert got.probabilities is None
    assert got.predictions == loaded.estimator.predict(X_test[:3]).tolist()


def test_describe(store):
    loaded = model_runtime.load(store, DIABETES, 1)
    described = loaded.describe()
    assert described["name"] == DIABETES
    assert described["version"] == 1
    assert described["task"] == "regression"
    assert described["classes"] is None
    assert described["features"] == [
        f["name"] for f in store.metadata(DIABETES, 1)["input"]["features"]
    ]
    assert described["warnings"] == []


def _shift_regression_golden(meta):
    meta["golden"]["predictions"] = [p + 1.0 for p in meta["golden"]["predictions"]]


def _swap_first_golden_label(meta):
    other = next(c for c in meta["classes"] if c != meta["golden"]["predictions"][0])
    meta["golden"]["predictions"][0] = other


def _nudge_golden_probability(meta):
    meta["golden"]["probabilities"][0][0] += 0.01


@pytest.mark.parametrize(
    ("name", "change", "code", "message"),
    [
        pytest.param(
            DIABETES,
            _shift_regression_golden,
            "golden_mismatch",
            "diabetes-regressor@1: the golden example gives other outputs than at training time",
            id="regressor-golden-predictions",
        ),
        pytest.param(
            IRIS,
            _swap_first_golden_label,
            "golden_mismatch",
            "iris-classifier@1: the golden example gives other outputs than at training time",
            id="classifier-golden-labels",
        ),
        pytest.param(
            CANCER,
            _nudge_golden_probability,
            "golden_mismatch",
            "breast-cancer-classifier@1: the golden example gives other outputs",
            id="classifier-golden-probabilities",
        ),
        pytest.param(
            IRIS,
            lambda m: m["golden"]["instances"][0].append(1.0),
            "model_load_error",
            "iris-classifier@1: the golden example no longer runs: instance 0: has 5 values",
            id="golden-instances-of-another-shape",
        ),
        pytest.param(
            IRIS,
            lambda m: m.update(classes=["setosa", "versicolor", "virginica-x"]),
            "model_load_error",
            "iris-classifier@1: the estimator's classes ['setosa', 'versicolor', 'virginica'] "
            "differ from the metadata's ['setosa', 'versicolor', 'virginica-x']",
            id="classes",
        ),
        pytest.param(
            CANCER,
            lambda m: m.update(classes=["malignant"]),
            "model_load_error",
            "breast-cancer-classifier@1: the estimator's classes ['benign', 'malignant'] differ",
            id="classes-missing-one",
        ),
        pytest.param(
            IRIS,
            lambda m: m["input"]["features"].pop(),
            "model_load_error",
            "iris-classifier@1: the estimator takes 4 features, the metadata lists 3",
            id="feature-count",
        ),
    ],
)
def test_load_time_checks(store, name, change, code, message):
    model_runtime.load(store, name, 1)  # loads before the edit
    edit_metadata(store, name, 1, change)
    with pytest.raises(ModelLoadError) as caught:
        model_runtime.load(store, name, 1)
    assert caught.value.code == code
    assert caught.value.message.startswith(message)


def test_missing_golden_example_is_a_warning(store):
    edit_metadata(store, IRIS, 1, lambda m: m.pop("golden"))
    loaded = model_runtime.load(store, IRIS, 1)
    assert loaded.warnings == ["no golden example in the metadata: outputs were not replayed"]


@pytest.mark.parametrize(
    ("artifact", "message"),
    [
        (
            {"coef": [1.0, 2.0]},
            "iris-classifier@2: the artifact is a dict, not an estimator with predict()",
        ),
        (LogisticRegression(), "iris-classifier@2: the estimator is not fitted"),
    ],
    ids=["dict", "unfitted-estimator"],
)
def test_a_pickle_that_is_not_a_fitted_estimator_is_refused(store, artifact, message):
    meta = store.metadata(IRIS, 1)
    version = store.publish(IRIS, pickle.dumps(artifact), meta, verify=None)
    assert version == 2
    assert store.load_artifact(IRIS, 2).estimator.__class__ is type(artifact)
    with pytest.raises(ModelLoadError) as caught:
        model_runtime.load(store, IRIS, 2)
    assert caught.value.code == "model_load_error"
    assert caught.value.message == message


def test_version_mismatch_is_carried_into_the_loaded_model(store):
    edit_metadata(store, IRIS, 1, lambda m: m["environment"].update({"scikit-learn": "0.0.1"}))
    assert (
        model_runtime.load(store, IRIS, 1).warnings[0].startswith("pickled with scikit-learn 0.0.1")
    )
    with pytest.raises(ModelLoadError) as caught:
        model_runtime.load(store, IRIS, 1, refuse_version_mismatch=True)
    assert caught.value.code == "version_mismatch"


# -- ModelRegistry -----------------------------------------------------------------------


@pytest.fixture
def make_registry(store):
    made = []

    def make(**settings):
        # A watcher that never fires during a test: every refresh here is explicit.
        registry = ModelRegistry(
            store, Settings(store=store.root, reload_interval=3600, **settings)
        )
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.stop()


def loaded_keys(registry):
    return sorted((m.name, m.version) for m in registry.loaded())


def test_registry_loads_every_aliased_version(make_registry):
    registry = make_registry()
    registry.refresh()
    assert loaded_keys(registry) == [(CANCER, 1), (DIABETES, 1), (IRIS, 1)]
    assert registry.aliases(IRIS) == {"production": 1}
    assert registry.failures() == {}
    assert registry.readiness() == (
        True,
        {
            name: {"alias": "production", "version": 1, "ready": True}
            for name in (CANCER, DIABETES, IRIS)
        },
    )


def test_get_resolves_the_default_alias(make_registry):
    registry = make_registry()
    model = registry.get(ModelRef(IRIS))
    assert (model.name, model.version) == (IRIS, 1)
    assert registry.get(ModelRef(IRIS, alias="production")) is model
    assert registry.get(ModelRef(IRIS, version=1)) is model


def test_get_loads_an_explicit_version_on_demand(store, make_registry):
    assert republish(store) == 2  # no alias points at it
    registry = make_registry()
    registry.refresh()
    assert (IRIS, 2) not in loaded_keys(registry)
    model = registry.get(ModelRef(IRIS, version=2))
    assert (model.name, model.version) == (IRIS, 2)
    assert (IRIS, 2) in loaded_keys(registry)
    assert registry.get(ModelRef(IRIS, version=2)) is model  # cached
    assert registry.get(ModelRef(IRIS)).version == 1


@pytest.mark.parametrize(
    ("ref", "error", "message"),
    [
        (ModelRef("no-such-model"), ModelNotFound, "no model named 'no-such-model' is served"),
        (ModelRef(IRIS, version=9), VersionNotFound, "model 'iris-classifier' has no version 9"),
        (ModelRef(DIABETES), ModelNotFound, "no model named 'diabetes-regressor' is served"),
    ],
)
def test_get_unknown(make_registry, ref, error, message):
    registry = make_registry(models=(IRIS, CANCER))
    with pytest.raises(error) as caught:
        registry.get(ref)
    assert caught.value.message == message
    assert caught.value.status == 404


def test_refresh_follows_a_promote(store, make_registry):
    registry = make_registry()
    first = registry.get(ModelRef(IRIS))
    assert first.version == 1
    republish(store)
    store.promote(IRIS, 2)
    assert registry.get(ModelRef(IRIS)).version == 1  # nothing changes before a refresh
    registry.refresh()
    assert registry.aliases(IRIS) == {"production": 2}
    assert registry.get(ModelRef(IRIS)).version == 2
    assert registry.readiness()[0] is True

    store.rollback(IRIS)
    registry.refresh()
    assert registry.get(ModelRef(IRIS)) is first


def test_a_version_that_fails_to_load_does_not_replace_the_serving_one(store, make_registry):
    registry = make_registry()
    registry.refresh()
    assert republish(store) == 2
    edit_metadata(store, IRIS, 2, lambda m: m.update(classes=["a", "b", "c"]))
    store.promote(IRIS, 2)

    registry.refresh()

    assert registry.aliases(IRIS) == {"production": 1}
    assert registry.get(ModelRef(IRIS)).version == 1
    failures = registry.failures()
    assert list(failures) == ["iris-classifier@2"]
    assert "differ from the metadata's ['a', 'b', 'c']" in failures["iris-classifier@2"]
    ready, models = registry.readiness()
    assert ready is False
    assert models[IRIS] == {
        "alias": "production",
        "version": 1,
        "ready": False,
        "wanted": 2,
        "error": failures["iris-classifier@2"],
    }
    assert models[CANCER]["ready"] is True

    # Once the store points back at a version that loads, the process is ready again.
    store.rollback(IRIS)
    registry.refresh()
    assert registry.readiness()[0] is True


def test_not_ready_when_the_production_version_cannot_load(store, make_registry):
    path = store.root / DIABETES / "1" / "model.pkl"
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    registry = make_registry()
    ready, models = registry.readiness()
    assert ready is False
    assert models[DIABETES]["ready"] is False
    assert models[DIABETES]["version"] is None
    assert models[DIABETES]["wanted"] == 1
    assert "refusing to unpickle it" in models[DIABETES]["error"]
    assert models[IRIS]["ready"] is True
    assert "diabetes-regressor@1" in registry.failures()
    with pytest.raises(ModelNotReady) as caught:
        registry.get(ModelRef(DIABETES))
    assert caught.value.status == 503
    assert caught.value.message.startswith("diabetes-regressor@1 cannot be served: ")
    assert "refusing to unpickle it" in caught.value.message


def test_reload_retries_a_version_that_failed(store, make_registry):
    path = store.root / IRIS / "1" / "model.pkl"
    good = path.read_bytes()
    path.write_bytes(good + b"\x00")
    registry = make_registry()
    registry.refresh()
    assert "iris-classifier@1" in registry.failures()
    path.write_bytes(good)
    registry.reload()
    assert registry.failures() == {}
    assert registry.get(ModelRef(IRIS)).version == 1


def test_predict_accepts_a_two_dimensional_array(store):
    model = model_runtime.load(store, IRIS, 1)
    rows = np.asarray(model.metadata["golden"]["instances"])
    assert model.predict(rows).predictions == model.estimator.predict(rows).tolist()
    with pytest.raises(InvalidInput, match="has 3 values"):
        model.predict(rows[:, :3])


# -- prediction observers -------------------------------------------------------------


def test_observers_see_served_predictions_but_not_load_time_checks(store):
    from service.runtime import hooks

    events = []
    hooks.add_observer(events.append)
    try:
        loaded = model_runtime.load(store, IRIS, 1)  # replays the golden rows
        assert events == []
        token = hooks.request_id.set("req-42")
        try:
            got = loaded.predict(IRIS_ROWS)
        finally:
            hooks.request_id.reset(token)
    finally:
        hooks.remove_observer(events.append)
    (event,) = events
    assert event.model is loaded and event.request_id == "req-42"
    assert event.prediction == got
    assert np.asarray(event.model_input).shape == (len(IRIS_ROWS), len(IRIS_FEATURES))
    assert event.seconds > 0


def test_a_failing_observer_never_fails_the_prediction(store, caplog):
    from service.runtime import hooks

    def broken(event):
        raise RuntimeError("observer bug")

    loaded = model_runtime.load(store, IRIS, 1)
    hooks.add_observer(broken)
    try:
        got = loaded.predict([IRIS_ROW])
    finally:
        hooks.remove_observer(broken)
    assert got.predictions == ["setosa"]
    assert "prediction observer" in caplog.text and "observer bug" in caplog.text

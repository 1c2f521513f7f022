"""modelctl train: spec checks, the baseline gate, reproducibility, the metadata it writes,
and how the trained pipeline treats unseen categories and missing values when served."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from service import create_app
from service.cli import main
from service.errors import BaselineNotBeaten, InvalidData, InvalidSpec
from service.runtime import model as model_runtime
from service.store import ModelStore
from service.training import spec as specs
from service.training.trainer import train

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PENGUINS_CSV = EXAMPLES / "penguins" / "penguins.csv"
CARS_CSV = EXAMPLES / "cars" / "cars.csv"

# Small and fast: the tests are about the workflow, not the forest.
PENGUINS = {
    "name": "penguin-species",
    "task": "classification",
    "target": "species",
    "data": {"path": "penguins.csv"},
    "drop": ["year"],
    "estimator": {
        "class": "sklearn.ensemble.RandomForestClassifier",
        "params": {"n_estimators": 20, "max_depth": 5},
    },
    "evaluation": {"primary_metric": "f1_macro", "seed": 0},
}
CARS = {
    "name": "car-mpg",
    "task": "regression",
    "target": "Miles_per_Gallon",
    "data": {"path": "cars.csv"},
    "estimator": {"class": "sklearn.linear_model.Ridge", "params": {"alpha": 1.0}},
    "evaluation": {"primary_metric": "rmse", "seed": 0},
}


def write_spec(folder: Path, spec: dict, data: Path = PENGUINS_CSV) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / data.name).exists():
        shutil.copy(data, folder / data.name)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def changed(base: dict, **changes) -> dict:
    """A deep copy of a spec with dotted keys replaced ("evaluation.seed": 1); None removes."""
    spec = yaml.safe_load(yaml.safe_dump(base))
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return spec


@pytest.fixture(scope="module")
def penguin_store(tmp_path_factory) -> ModelStore:
    """penguin-species@1, trained once from the small spec."""
    folder = tmp_path_factory.mktemp("penguins")
    store = ModelStore(folder / "store")
    train(specs.load(write_spec(folder, PENGUINS)), store)
    return store


# -- the spec validation table ------------------------------------------------------


def csv_variant(folder: Path, edit) -> None:
    frame = pd.read_csv(PENGUINS_CSV)
    folder.mkdir(parents=True, exist_ok=True)
    edit(frame).to_csv(folder / "penguins.csv", index=False)


BAD_SPECS = [
    (
        {"target": "speces"},
        InvalidSpec,
        "spec field target: the data has no column 'speces'; did you mean 'species'?",
    ),
    ({"drop": ["id"]}, InvalidSpec, "spec field drop: the data has no column 'id'"),
    (
        {"features.numeric": ["bill_length", "body_mass_g"]},
        InvalidSpec,
        "spec field features.numeric: the data has no column 'bill_length'; "
        "did you mean 'bill_length_mm'?",
    ),
    (
        {"features.numeric": ["island"]},
        InvalidData,
        "spec field features.numeric: column 'island' is not numeric",
    ),
    (
        {"estimator.class": "sklearn.ensemble.RandomForestClassifer"},
        InvalidSpec,
        "spec field estimator.class: sklearn.ensemble has no 'RandomForestClassifer'; "
        "did you mean 'RandomForestClassifier'?",
    ),
    (
        {"estimator.class": "sklearn.ensembles.RandomForestClassifier"},
        InvalidSpec,
        "spec field estimator.class: no module 'sklearn.ensembles'",
    ),
    (
        {"estimator.class": "os.path.join"},
        InvalidSpec,
        "spec field estimator.class: os.path.join is not an estimator class",
    ),
    (
        {"estimator.class": "sklearn.ensemble.RandomForestRegressor"},
        InvalidSpec,
        "spec field estimator.class: sklearn.ensemble.RandomForestRegressor is a regressor, "
        "but the task is classification",
    ),
    (
        {"estimator.params": {"n_estimator": 5}},
        InvalidSpec,
        "spec field estimator.params.n_estimator: not a parameter of RandomForestClassifier; "
        "did you mean 'n_estimators'?",
    ),
    (
        {"estimator.params": {"n_estimators": -3}},
        InvalidSpec,
        "spec field estimator.params: The 'n_estimators' parameter of RandomForestClassifier",
    ),
    (
        {"estimator.search": {"params": {"max_dept": [2, 3]}}},
        InvalidSpec,
        "spec field estimator.search.params.max_dept: not a parameter of the pipeline; "
        "did you mean 'max_depth'?",
    ),
    (
        {"estimator.search": {"params": {"max_depth": []}}},
        InvalidSpec,
        "spec field estimator.search.params.max_depth: give a non-empty list of values",
    ),
    (
        {"evaluation.primary_metric": "r2"},
        InvalidSpec,
        "spec field evaluation.primary_metric: 'r2' does not fit a classification task "
        "(that is a regression metric)",
    ),
    (
        {"evaluation.primary_metric": "auc"},
        InvalidSpec,
        "spec field evaluation.primary_metric: 'auc' does not fit a classification task; "
        "choose one of accuracy",
    ),
    (
        {"evaluation.baseline": "mean"},
        InvalidSpec,
        "spec field evaluation.baseline: 'mean' is not a classification baseline",
    ),
    (
        {"evaluation.test_size": 0.5, "evaluation.validation_size": 0.45},
        InvalidSpec,
        "spec field evaluation.validation_size: test_size + validation_size must leave",
    ),
    ({"evaluation.test_size": 1.5}, InvalidSpec, "spec field evaluation.test_size: 1.5 is greater"),
    ({"task": "clustering"}, InvalidSpec, "spec field task: 'clustering' is not one of"),
    ({"name": "Penguins!"}, InvalidSpec, "name: "),
    (
        {"estimator": None},
        InvalidSpec,
        "spec field (top level): 'estimator' is a required property",
    ),
    ({"colour": "blue"}, InvalidSpec, "spec field (top level): unknown field(s) ('colour' was"),
    (
        {"data": {"path": "nowhere.csv"}},
        InvalidSpec,
        "spec field data.path: 'nowhere.csv' is not a file",
    ),
    (
        {"features.numeric": {"impute": "none"}},
        InvalidData,
        "spec field features.columns.bill_length_mm.impute: column 'bill_length_mm' has 2 "
        "missing values but imputation is 'none'",
    ),
    (
        {"features.columns": {"year": {"scale": "none"}}},
        InvalidSpec,
        "spec field features.columns.year: the column is not a feature",
    ),
]


@pytest.mark.parametrize(
    ("changes", "error", "message"), BAD_SPECS, ids=[str(c) for c, _, _ in BAD_SPECS]
)
def test_a_bad_spec_is_refused_before_training(tmp_path, changes, error, message):
    store = ModelStore(tmp_path / "store")
    path = write_spec(tmp_path / "spec", changed(PENGUINS, **changes))
    with pytest.raises(error) as caught:
        train(specs.load(path), store)
    assert caught.value.message.startswith(message), caught.value.message
    assert not store.root.exists() or store.names() == []


BAD_DATA = [
    (
        lambda f: f.assign(species="Adelie"),
        "spec field target: 'species' has 1 class (only 'Adelie')",
    ),
    (
        lambda f: pd.concat([f[f.species != "Chinstrap"], f[f.species == "Chinstrap"].head(3)]),
        "spec field target: too few rows for class 'Chinstrap' (3); each class needs at least 7",
    ),
    (lambda f: f.head(0), "penguins.csv: no data rows (only a header?)"),
    (lambda f: f.assign(species=None), "spec field target: 'species' has 0 class"),
]


@pytest.mark.parametrize(("edit", "message"), BAD_DATA)
def test_bad_data_is_refused_before_training(tmp_path, edit, message):
    folder = tmp_path / "spec"
    csv_variant(folder, edit)
    path = write_spec(folder, PENGUINS)
    with pytest.raises(InvalidData) as caught:
        train(specs.load(path), ModelStore(tmp_path / "store"))
    assert caught.value.message.startswith(message), caught.value.message


def test_an_empty_file_is_refused(tmp_path):
    folder = tmp_path / "spec"
    folder.mkdir()
    (folder / "penguins.csv").write_text("")
    with pytest.raises(InvalidData, match=re.escape("penguins.csv: the file is empty")):
        train(specs.load(write_spec(folder, PENGUINS)), ModelStore(tmp_path / "store"))


def test_a_regression_target_must_be_numeric(tmp_path):
    path = write_spec(tmp_path, changed(CARS, target="Origin"), data=CARS_CSV)
    with pytest.raises(InvalidData, match="'Origin' is not numeric"):
        train(specs.load(path), ModelStore(tmp_path / "store"))


def test_the_cli_names_the_field_and_exits_non_zero(tmp_path, capsys):
    path = write_spec(tmp_path, changed(PENGUINS, target="speces"))
    assert main(["train", str(path), "--store", str(tmp_path / "store")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("modelctl: spec field target: the data has no column 'speces'")
    assert len(err.strip().splitlines()) == 1


# -- the minimal spec and what a run writes ---------------------------------------------


def test_the_minimal_spec_trains_publishes_and_stages(tmp_path, capsys):
    folder = tmp_path / "spec"
    # An id column, and rows without a target: dropped before splitting, and counted.
    csv_variant(
        folder,
        lambda f: f.assign(id=range(len(f))).pipe(
            lambda g: g.assign(species=g.species.where(g.id % 50 != 7))
        ),
    )
    minimal = (
        "name: penguin-species\n"
        "task: classification\n"
        "target: species\n"
        "data: {path: penguins.csv}\n"
        "drop: [id]\n"
        "estimator:\n"
        "  class: sklearn.ensemble.RandomForestClassifier\n"
        "  params: {n_estimators: 30, random_state: 0}\n"
    )
    (folder / "spec.yaml").write_text(minimal)
    store_dir = tmp_path / "store"

    assert main(["train", str(folder / "spec.yaml"), "--store", str(store_dir)]) == 0

    out = capsys.readouterr().out
    assert "published penguin-species@1 (staging)" in out
    store = ModelStore(store_dir)
    assert store.aliases("penguin-species") == {"staging": 1}
    meta = store.metadata("penguin-species", 1)
    rows = meta["data"]["rows"]
    assert rows["dropped_missing_target"] == 7
    assert rows["total"] == 344
    assert rows["train"] + rows["validation"] + rows["test"] == 344 - 7
    assert meta["data"]["split"]["method"] == "stratified holdout"
    features = {f["name"]: f for f in meta["input"]["features"]}
    assert list(features) == [
        "island",
        "bill_length_mm",
        "bill_depth_mm",
        "flipper_length_mm",
        "body_mass_g",
        "sex",
        "year",
    ]
    assert features["island"]["categories"] == ["Biscoe", "Dream", "Torgersen"]
    assert features["sex"]["fill_value"] == "missing"
    assert features["sex"]["stats"]["missing_rate"] > 0
    assert features["bill_length_mm"]["missing"] == "allow"
    assert features["year"]["dtype"] == "int64"
    # Defaults: median imputation and scaling for numbers, one-hot for categories.
    steps = {s["name"]: s for s in meta["algorithm"]["steps"]}
    assert steps["model"]["params"]["n_estimators"] == 30
    described = yaml.safe_dump(steps["preprocess"])
    assert "SimpleImputer" in described and "StandardScaler" in described
    assert "OneHotEncoder" in described


def test_metadata_documents_the_run(penguin_store):
    meta = penguin_store.metadata("penguin-species", 1)
    assert meta["data"]["sha256"] == hashlib.sha256(PENGUINS_CSV.read_bytes()).hexdigest()
    scores = meta["scores"]
    for split in ("validation", "test"):
        for side in ("model", "baseline"):
            got = scores[split][side]
            for metric in (
                "accuracy",
                "balanced_accuracy",
                "precision_macro",
                "recall_macro",
                "f1_macro",
                "false_positive_rate_macro",
                "false_negative_rate_macro",
                "roc_auc_ovr",
            ):
                assert 0 <= got[metric] <= 1, (split, side, metric)
            assert set(got["per_class"]) == {"Adelie", "Chinstrap", "Gentoo"}
            assert {"precision", "recall", "f1", "support"} <= set(got["per_class"]["Gentoo"])
            matrix = np.array(got["confusion_matrix"]["matrix"])
            assert matrix.sum() == meta["data"]["rows"][split]
    assert scores["test"]["model"]["f1_macro"] > scores["test"]["baseline"]["f1_macro"] + 0.3
    assert [c["label"] for c in scores["test"]["curves"]["roc"]] == [
        "Adelie",
        "Chinstrap",
        "Gentoo",
    ]
    assert scores["gate"]["passed"] is True and scores["gate"]["metric"] == "f1_macro"
    assert scores["baseline"]["class"] == "sklearn.dummy.DummyClassifier"
    assert meta["training"]["duration_seconds"] > 0
    assert meta["training"]["spec"]["name"] == "penguin-species"
    assert meta["training"]["dropped_columns"] == [
        {"column": "year", "reason": "dropped by the spec"}
    ]
    assert set(meta["environment"]) >= {"python", "scikit-learn", "numpy"}
    assert meta["classes"] == ["Adelie", "Chinstrap", "Gentoo"]


def test_a_regression_run_with_cross_validation(tmp_path):
    spec = changed(
        CARS,
        **{"evaluation.method": "cross_validation", "evaluation.folds": 4},
    )
    result = train(
        specs.load(write_spec(tmp_path, spec, data=CARS_CSV)), ModelStore(tmp_path / "s")
    )
    meta = result.metadata
    assert meta["data"]["rows"]["dropped_missing_target"] == 8
    # The name column is free text: dropped, with a warning that says how to keep it.
    assert result.warnings and "'Name' dropped: looks like free text" in result.warnings[0]
    assert {"column": "Name", "reason": result.warnings[0].split("dropped: ")[1]} in meta[
        "training"
    ]["dropped_columns"]
    validation = meta["scores"]["validation"]
    assert validation["folds"] == 4 and set(validation["std"]["model"]) >= {"rmse", "r2"}
    assert "folds" not in validation["model"]  # the metric tables hold metrics only
    test = meta["scores"]["test"]
    for metric in ("mae", "mse", "rmse", "r2", "mape"):
        assert metric in test["model"] and metric in test["baseline"]
    assert test["model"]["rmse"] < test["baseline"]["rmse"]
    assert len(test["points"]["actual"]) == meta["data"]["rows"]["test"]
    assert "cross-validation" in meta["data"]["split"]["method"]


def test_free_text_is_kept_when_the_spec_says_so(tmp_path):
    spec = changed(CARS, **{"features.text": "categorical"})
    result = train(
        specs.load(write_spec(tmp_path, spec, data=CARS_CSV)),
        ModelStore(tmp_path / "s"),
        publish=False,
    )
    names = [f["name"] for f in result.metadata["input"]["features"]]
    assert "Name" in names and result.warnings == []


def test_a_search_picks_parameters_and_records_them(tmp_path):
    spec = changed(
        PENGUINS,
        **{"estimator.search": {"kind": "grid", "params": {"max_depth": [1, 6]}, "folds": 3}},
    )
    result = train(
        specs.load(write_spec(tmp_path, spec)), ModelStore(tmp_path / "s"), publish=False
    )
    search = result.metadata["training"]["search"]
    assert search["candidates"] == 2 and search["folds"] == 3
    assert search["best_params"] == {"max_depth": 6}  # depth 1 cannot separate three species
    model = next(s for s in result.metadata["algorithm"]["steps"] if s["name"] == "model")
    assert model["params"]["max_depth"] == 6


# -- the baseline gate --------------------------------------------------------------------


def shuffled_labels(folder: Path) -> None:
    rng = np.random.default_rng(1)
    csv_variant(folder, lambda f: f.assign(species=rng.permutation(f.species.to_numpy())))


def test_a_model_trained_on_shuffled_labels_is_not_published(tmp_path):
    folder = tmp_path / "spec"
    shuffled_labels(folder)
    spec = changed(PENGUINS, **{"evaluation.primary_metric": "accuracy"})
    store = ModelStore(tmp_path / "store")
    with pytest.raises(BaselineNotBeaten) as caught:
        train(specs.load(write_spec(folder, spec)), store)
    gate = caught.value.details
    assert gate["passed"] is False and gate["model"] <= gate["baseline"]
    assert "does not beat the baseline's" in caught.value.message
    assert not store.root.exists() or store.names() == []


def test_the_margin_refuses_a_chance_level_model_under_a_macro_metric(tmp_path):
    folder = tmp_path / "spec"
    shuffled_labels(folder)
    spec = changed(PENGUINS, **{"evaluation.baseline": "stratified", "evaluation.margin": 0.1})
    with pytest.raises(BaselineNotBeaten, match=re.escape("by more than the margin 0.1")):
        train(specs.load(write_spec(folder, spec)), ModelStore(tmp_path / "store"))


def test_force_publishes_a_refused_model_and_records_why(tmp_path, capsys):
    folder = tmp_path / "spec"
    shuffled_labels(folder)
    spec_path = write_spec(folder, changed(PENGUINS, **{"evaluation.primary_metric": "accuracy"}))
    store_dir = tmp_path / "store"

    assert main(["train", str(spec_path), "--store", str(store_dir)]) == 1
    assert "not published (use --force REASON" in capsys.readouterr().err
    assert (
        main(["train", str(spec_path), "--store", str(store_dir), "--force", "labels under audit"])
        == 0
    )

    assert "FORCED: labels under audit" in capsys.readouterr().out
    meta = ModelStore(store_dir).metadata("penguin-species", 1)
    assert meta["scores"]["gate"]["forced"] is True
    assert meta["training"]["forced"] == {"reason": "labels under audit"}


# -- reproducibility ------------------------------------------------------------------------


def test_the_same_spec_and_data_give_the_same_scores(tmp_path):
    path = write_spec(tmp_path, PENGUINS)
    runs = [train(specs.load(path), ModelStore(tmp_path / "s"), publish=False) for _ in range(2)]
    first, second = (run.metadata for run in runs)
    assert first["scores"]["validation"] == second["scores"]["validation"]
    assert first["scores"]["test"] == second["scores"]["test"]
    assert first["golden"] == second["golden"]
    other = train(
        specs.load(write_spec(tmp_path / "seed", changed(PENGUINS, **{"evaluation.seed": 7}))),
        ModelStore(tmp_path / "s"),
        publish=False,
    )
    # A different seed splits differently: the runs above agree because of the seed.
    assert other.metadata["scores"]["test"] != first["scores"]["test"]


# -- serving what was trained ---------------------------------------------------------------


def serve(store: ModelStore):
    app = create_app({"store": store.root, "reload_interval": 0.1})
    return app, app.test_client()


ROW = {
    "island": "Biscoe",
    "bill_length_mm": 47.5,
    "bill_depth_mm": 15.0,
    "flipper_length_mm": 218,
    "body_mass_g": 4950,
    "sex": "female",
}


def predict(client, name, instances):
    return client.post(f"/v1/models/{name}@staging/predict", json={"instances": instances})


def test_missing_values_are_imputed_when_served(penguin_store):
    app, client = serve(penguin_store)
    try:
        full = predict(client, "penguin-species", [ROW])
        missing_number = predict(client, "penguin-species", [{**ROW, "bill_depth_mm": None}])
        missing_sex = predict(client, "penguin-species", [{**ROW, "sex": None}])
        as_missing_category = predict(client, "penguin-species", [{**ROW, "sex": "missing"}])
    finally:
        app.extensions["model_service"].registry.stop()
    assert full.status_code == 200, full.json
    assert full.json["predictions"] == ["Gentoo"]
    assert missing_number.status_code == 200, missing_number.json
    assert missing_sex.status_code == 200, missing_sex.json
    # A missing category is the category "missing", as in training.
    assert missing_sex.json["probabilities"] == as_missing_category.json["probabilities"]
    # A missing number is the training median, as SimpleImputer learned it.
    loaded = model_runtime.load(penguin_store, "penguin-species", 1)
    imputer = loaded.estimator.named_steps["preprocess"].named_transformers_["numeric"]["impute"]
    median = float(imputer.statistics_[1])  # bill_depth_mm is the second numeric column
    imputed = loaded.predict([{**ROW, "bill_depth_mm": median}])
    assert missing_number.json["probabilities"][0] == pytest.approx(imputed.probabilities[0])


@pytest.mark.parametrize(
    ("handle_unknown", "status"), [("ignore", 200), ("infrequent_if_exist", 200), ("error", 422)]
)
def test_unseen_categories_are_handled_as_the_spec_says(tmp_path, handle_unknown, status):
    spec = changed(PENGUINS, **{"features.categorical": {"handle_unknown": handle_unknown}})
    store = ModelStore(tmp_path / "store")
    train(specs.load(write_spec(tmp_path, spec)), store)
    app, client = serve(store)
    try:
        response = predict(client, "penguin-species", [ROW, {**ROW, "island": "Atlantis"}])
    finally:
        app.extensions["model_service"].registry.stop()
    assert response.status_code == status, response.json
    if status == 422:
        detail = response.json["error"]["details"][0]
        assert (detail["instance"], detail["feature"]) == (1, "island")
        assert "category not seen in training" in detail["problem"]
    else:
        assert len(response.json["predictions"]) == 2
        meta = store.metadata("penguin-species", 1)
        island = next(f for f in meta["input"]["features"] if f["name"] == "island")
        assert island["unknown_category"] == "allow"
        assert island["handle_unknown"] == handle_unknown


def test_a_feature_without_imputation_rejects_missing_values(tmp_path):
    spec = changed(PENGUINS, **{"features.columns": {"island": {"impute": "none"}}})
    store = ModelStore(tmp_path / "store")
    train(specs.load(write_spec(tmp_path, spec)), store)
    app, client = serve(store)
    try:
        response = predict(client, "penguin-species", [{**ROW, "island": None}])
    finally:
        app.extensions["model_service"].registry.stop()
    assert response.status_code == 422
    assert response.json["error"]["details"][0]["feature"] == "island"


def test_numbers_sent_for_a_text_category_mean_that_category(tmp_path):
    spec = changed(CARS, **{"features.categorical": ["Origin", "Cylinders"]})
    spec["features"]["numeric"] = ["Displacement", "Horsepower", "Weight_in_lbs"]
    store = ModelStore(tmp_path / "store")
    train(specs.load(write_spec(tmp_path, spec, data=CARS_CSV)), store)
    loaded = model_runtime.load(store, "car-mpg", 1)
    cylinders = next(f for f in loaded.metadata["input"]["features"] if f["name"] == "Cylinders")
    assert "8" in cylinders["categories"]
    row = {"Origin": "USA", "Displacement": 350.0, "Horsepower": 165, "Weight_in_lbs": 3693}
    assert loaded.predict([{**row, "Cylinders": 8}]) == loaded.predict([{**row, "Cylinders": "8"}])


def test_a_randomized_search_draws_from_distributions(tmp_path):
    spec = changed(
        CARS,
        **{
            "estimator.search": {
                "kind": "randomized",
                "params": {"alpha": {"distribution": "loguniform", "low": 0.01, "high": 100}},
                "n_iter": 4,
                "folds": 3,
            }
        },
    )
    result = train(
        specs.load(write_spec(tmp_path, spec, data=CARS_CSV)),
        ModelStore(tmp_path / "s"),
        publish=False,
    )
    search = result.metadata["training"]["search"]
    assert search["kind"] == "randomized" and search["candidates"] == 4
    assert 0.01 <= search["best_params"]["alpha"] <= 100
    assert search["best_score"] > 0  # RMSE, reported as a positive error


def test_parquet_data(tmp_path):
    """Parquet is read where pyarrow is installed; elsewhere the spec says what is missing."""
    folder = tmp_path / "spec"
    folder.mkdir()
    spec = changed(PENGUINS, **{"data.path": "penguins.parquet"})
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (folder / "penguins.parquet").write_bytes(b"PAR1")
        with pytest.raises(InvalidSpec, match="reading Parquet needs pyarrow"):
            train(specs.load(write_spec(folder, spec)), ModelStore(tmp_path / "s"))
        return
    pd.read_csv(PENGUINS_CSV).to_parquet(folder / "penguins.parquet")
    result = train(specs.load(write_spec(folder, spec)), ModelStore(tmp_path / "s"), publish=False)
    assert result.metadata["data"]["rows"]["total"] == 344

"""modelctl, called in-process through service.cli.main: list, show, publish, promote,
rollback, batch predict and hash-key."""

from __future__ import annotations

import csv
import hashlib

import pytest
import yaml
from sklearn import datasets

from service.cli import main
from service.runtime import model as model_runtime
from tests.support import IRIS


@pytest.fixture
def modelctl(store_dir, capsys):
    """Run modelctl against the test's store: (exit code, stdout, stderr)."""

    def run(*args: str, store: bool = True):
        argv = [*map(str, args), *(["--store", str(store_dir)] if store else [])]
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    return run


# -- list, show ---------------------------------------------------------------------------


def test_list(modelctl):
    code, out, err = modelctl("list")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "breast-cancer-classifier\tversions: 1\taliases: production=1",
        "diabetes-regressor\tversions: 1\taliases: production=1",
        "iris-classifier\tversions: 1\taliases: production=1",
    ]


def test_list_shows_new_versions_and_aliases(store, modelctl):
    data = (store.root / IRIS / "1" / "model.pkl").read_bytes()
    store.publish(IRIS, data, store.metadata(IRIS, 1), aliases=("staging",))
    code, out, _ = modelctl("list")
    assert code == 0
    assert "iris-classifier\tversions: 1, 2\taliases: production=1, staging=2" in out.splitlines()


def test_list_an_empty_store(tmp_path, modelctl):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, _ = modelctl("list", "--store", empty, store=False)
    assert code == 0
    assert out == f"no models in {empty}\n"


def test_show(store, modelctl):
    meta = store.metadata(IRIS, 1)
    code, out, err = modelctl("show", IRIS)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "iris-classifier@1  (production)"
    assert lines[1] == f"  {meta['description']}"
    assert "  features:  sepal_length_cm, sepal_width_cm, petal_length_cm, petal_width_cm" in lines
    assert f"  artifact:  model.pkl sha256 {meta['artifact']['sha256']}" in lines
    f1 = meta["scores"]["test"]["model"]["f1_macro"]
    assert any(line.startswith(f"  f1_macro: test {f1} ") for line in lines)


def test_show_full_prints_the_metadata(store, modelctl):
    code, out, _ = modelctl("show", f"{IRIS}@1", "--full")
    assert code == 0
    assert yaml.safe_load(out) == store.metadata(IRIS, 1)


# -- publish, promote, rollback -------------------------------------------------------------


def publish_files(store, tmp_path, change=None):
    """model.pkl and metadata.yaml of version 1, as a person would hand them to publish."""
    meta = store.metadata(IRIS, 1)
    del meta["artifact"], meta["version"]
    if change:
        change(meta)
    model_path = tmp_path / "model.pkl"
    model_path.write_bytes((store.root / IRIS / "1" / "model.pkl").read_bytes())
    meta_path = tmp_path / "metadata.yaml"
    meta_path.write_text(yaml.safe_dump(meta))
    return model_path, meta_path


def test_publish_creates_the_next_version(store, tmp_path, modelctl):
    model_path, meta_path = publish_files(store, tmp_path)
    code, out, err = modelctl(
        "publish", IRIS, "--model", model_path, "--metadata", meta_path, "--alias", "staging"
    )
    assert (code, out, err) == (0, "published iris-classifier@2 (staging)\n", "")
    assert store.versions(IRIS) == [1, 2]
    assert store.aliases(IRIS) == {"production": 1, "staging": 2}
    assert (
        store.metadata(IRIS, 2)["artifact"]["sha256"]
        == hashlib.sha256(model_path.read_bytes()).hexdigest()
    )

    code, out, _ = modelctl("publish", IRIS, "--model", model_path, "--metadata", meta_path)
    assert (code, out) == (0, "published iris-classifier@3\n")


def test_publish_refuses_a_model_that_fails_its_checks(store, tmp_path, modelctl):
    def wrong_golden(meta):
        meta["golden"]["predictions"] = ["setosa"] * len(meta["golden"]["predictions"])

    model_path, meta_path = publish_files(store, tmp_path, wrong_golden)
    code, out, err = modelctl("publish", IRIS, "--model", model_path, "--metadata", meta_path)
    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(
        "modelctl: iris-classifier@2: the golden example gives other outputs than at training time"
    )
    assert store.versions(IRIS) == [1]


def test_promote_and_rollback(store, modelctl):
    data = (store.root / IRIS / "1" / "model.pkl").read_bytes()
    store.publish(IRIS, data, store.metadata(IRIS, 1))

    assert modelctl("promote", IRIS, "2", "--reason", "better") == (
        0,
        "iris-classifier: production -> 2 (was 1)\n",
        "",
    )
    assert store.aliases(IRIS) == {"production": 2}
    assert store.alias_state(IRIS)["history"][-1]["reason"] == "better"

    assert modelctl("promote", IRIS, "1", "--alias", "staging") == (
        0,
        "iris-classifier: staging -> 1 (was None)\n",
        "",
    )

    assert modelctl("rollback", IRIS, "--reason", "errors") == (
        0,
        "iris-classifier: production -> 1 (was 2)\n",
        "",
    )
    assert store.aliases(IRIS) == {"production": 1, "staging": 1}
    assert store.alias_state(IRIS)["history"][-1]["action"] == "rollback"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "no-such-model"), "modelctl: no model named 'no-such-model' in the store"),
        (("show", "iris-classifier@9"), "modelctl: model 'iris-classifier' has no version 9"),
        (
            ("show", "iris-classifier@staging"),
            "modelctl: model 'iris-classifier' has no alias 'staging'",
        ),
        (
            ("show", "iris-classifier@0"),
            "modelctl: invalid version '0': versions are positive integers",
        ),
        (
            ("show", "Iris"),
            "modelctl: invalid model name 'Iris': use lowercase letters, digits and '-' "
            "(at most 64)",
        ),
        (("promote", "iris-classifier", "9"), "modelctl: model 'iris-classifier' has no version 9"),
        (
            ("promote", "no-such-model", "1"),
            "modelctl: no model named 'no-such-model' in the store",
        ),
        (
            ("rollback", "iris-classifier"),
            "modelctl: model 'iris-classifier': alias 'production' has no earlier version to "
            "roll back to",
        ),
        (
            ("rollback", "iris-classifier", "--alias", "canary"),
            "modelctl: model 'iris-classifier' has no alias 'canary'",
        ),
    ],
)
def test_failures_exit_non_zero_with_one_line(store, modelctl, args, message):
    aliases = store.aliases(IRIS)
    code, out, err = modelctl(*args)
    assert code == 1
    assert out == ""
    assert err == message + "\n"
    assert store.aliases(IRIS) == aliases


def test_a_missing_store_is_reported(tmp_path, modelctl):
    code, _, err = modelctl("list", "--store", tmp_path / "absent", store=False)
    assert code == 1
    assert err == f"modelctl: the model store {tmp_path / 'absent'} does not exist\n"


def test_a_bad_argument_is_a_usage_error(modelctl):
    code, out, err = modelctl("promote", IRIS, "two")
    assert code == 2
    assert out == ""
    assert (
        err.splitlines()[-1] == "Error: Invalid value for 'VERSION': 'two' is not a valid integer."
    )


# -- batch predict ---------------------------------------------------------------------------


@pytest.fixture
def iris_rows():
    return datasets.load_iris().data.tolist()


@pytest.fixture
def feature_names(store):
    return [f["name"] for f in store.metadata(IRIS, 1)["input"]["features"]]


def write_csv(path, feature_names, rows, edit=None):
    """Rows under a header that puts the features in another order, with an id column
    in the middle: batch prediction finds the features by name."""
    header = [feature_names[2], "id", feature_names[0], feature_names[3], feature_names[1]]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i, row in enumerate(rows):
            cells = [row[2], f"row-{i}", row[0], row[3], row[1]]
            if edit and i in edit:
                cells = edit[i](cells)
            writer.writerow(cells)
    return header


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def expected_output(store, rows, skip=()):
    # modelctl predict computes through the pickle unless told --backend auto.
    model = model_runtime.load(store, IRIS, 1, backend="sklearn")
    kept = [i for i in range(len(rows)) if i not in skip]
    prediction = model.predict([rows[i] for i in kept])
    return [
        ["line", "id", "prediction", *(f"probability_{c}" for c in model.classes)],
        *(
            [str(i + 2), f"row-{i}", label, *map(repr, proba)]
            for i, label, proba in zip(
                kept, prediction.predictions, prediction.probabilities, strict=True
            )
        ),
    ]


def test_predict_csv_equals_in_process_predictions(
    store, tmp_path, modelctl, iris_rows, feature_names
):
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    write_csv(source, feature_names, iris_rows)
    code, out, err = modelctl("predict", IRIS, "--input", source, "--output", target)
    assert (code, err) == (0, "")
    assert out == "150 of 150 rows predicted by iris-classifier@1\n"
    assert read_csv(target) == expected_output(store, iris_rows)


def test_predict_csv_in_chunks_gives_the_same_file(
    store, tmp_path, modelctl, iris_rows, feature_names
):
    source = tmp_path / "in.csv"
    write_csv(source, feature_names, iris_rows)
    whole, chunked = tmp_path / "whole.csv", tmp_path / "chunked.csv"
    assert modelctl("predict", f"{IRIS}@1", "--input", source, "--output", whole)[0] == 0
    code, out, _ = modelctl(
        "predict", f"{IRIS}@production", "--input", source, "--output", chunked, "--chunk-rows", "7"
    )
    assert (code, out) == (0, "150 of 150 rows predicted by iris-classifier@1\n")
    assert chunked.read_bytes() == whole.read_bytes()
    assert read_csv(chunked) == expected_output(store, iris_rows)


def test_a_bad_row_stops_with_its_line_number(tmp_path, modelctl, iris_rows, feature_names):
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    # Row 10 is on line 12 (the header is line 1), in the second chunk of 7 rows.
    write_csv(source, feature_names, iris_rows, edit={10: lambda c: ["wide", *c[1:]]})
    code, out, err = modelctl(
        "predict", IRIS, "--input", source, "--output", target, "--chunk-rows", "7"
    )
    assert code == 1
    assert out == ""
    assert err == (
        f"modelctl: {source}: line 12: feature 'petal_length_cm': expected a number, got a "
        "string; use --skip-bad-rows to write bad rows to a reject file\n"
    )
    assert not target.exists()


def test_skip_bad_rows_writes_the_reject_file(store, tmp_path, modelctl, iris_rows, feature_names):
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    bad = {
        5: lambda c: ["wide", *c[1:]],  # line 7
        6: lambda c: c[:3],  # line 8, the last row of the first chunk
        7: lambda c: [*c[:2], "", *c[3:]],  # line 9, the first row of the second chunk
        100: lambda c: [*c[:4], "inf"],  # line 102
    }
    header = write_csv(source, feature_names, iris_rows, edit=bad)
    code, out, err = modelctl(
        "predict",
        IRIS,
        "--input",
        source,
        "--output",
        target,
        "--skip-bad-rows",
        "--chunk-rows",
        "7",
    )
    rejects = tmp_path / "out.rejects.csv"
    assert (code, err) == (0, "")
    assert (
        out == f"146 of 150 rows predicted by iris-classifier@1; 4 bad rows written to {rejects}\n"
    )
    assert read_csv(target) == expected_output(store, iris_rows, skip=bad)

    rows = read_csv(rejects)
    assert rows[0] == ["line", "error", *header]
    assert [(r[0], r[1]) for r in rows[1:]] == [
        ("7", "feature 'petal_length_cm': expected a number, got a string"),
        ("8", "has 3 cells, the header has 5"),
        ("9", "feature 'sepal_length_cm': is null, but this feature does not allow missing values"),
        ("102", "feature 'sepal_width_cm': is Infinity; only finite numbers are allowed"),
    ]
    assert rows[1][2:] == ["wide", "row-5", *map(str, [iris_rows[5][i] for i in (0, 3, 1)])]


def test_skip_bad_rows_with_a_named_reject_file(tmp_path, modelctl, iris_rows, feature_names):
    source, target, rejects = tmp_path / "in.csv", tmp_path / "out.csv", tmp_path / "bad.csv"
    write_csv(source, feature_names, iris_rows[:3], edit={1: lambda c: c[:4]})
    code, out, _ = modelctl(
        "predict",
        IRIS,
        "--input",
        source,
        "--output",
        target,
        "--skip-bad-rows",
        "--rejects",
        rejects,
    )
    assert code == 0
    assert out == f"2 of 3 rows predicted by iris-classifier@1; 1 bad rows written to {rejects}\n"
    assert [r[:2] for r in read_csv(rejects)[1:]] == [["3", "has 4 cells, the header has 5"]]
    assert [r[0] for r in read_csv(target)[1:]] == ["2", "4"]


def test_a_header_without_the_features_is_refused(tmp_path, modelctl):
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    source.write_text("a,b\n1,2\n")
    code, out, err = modelctl("predict", IRIS, "--input", source, "--output", target)
    assert (code, out) == (1, "")
    assert err == (
        f"modelctl: {source}: the header lacks the model's features ['sepal_length_cm', "
        "'sepal_width_cm', 'petal_length_cm', 'petal_width_cm']\n"
    )
    assert not target.exists()


# -- hash-key ---------------------------------------------------------------------------------


def test_hash_key_of_a_given_key(modelctl):
    digest = hashlib.sha256(b"s3cret").hexdigest()
    code, out, err = modelctl("hash-key", "--key", "s3cret", store=False)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "key:    s3cret",
        f"sha256: {digest}",
        f"serve with MODEL_SERVICE_ADMIN_KEY_HASHES={digest}",
    ]


def test_hash_key_makes_a_new_key(modelctl):
    code, first, _ = modelctl("hash-key", store=False)
    assert code == 0
    key = first.splitlines()[0].removeprefix("key:    ")
    assert len(key) >= 32
    assert first.splitlines()[1] == f"sha256: {hashlib.sha256(key.encode()).hexdigest()}"
    assert modelctl("hash-key", store=False)[1] != first  # a fresh key every time


# -- known bugs -------------------------------------------------------------------------------


def test_a_failed_batch_leaves_no_partial_file(tmp_path, modelctl, iris_rows, feature_names):
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    write_csv(source, feature_names, iris_rows, edit={10: lambda c: ["wide", *c[1:]]})
    code, _, _ = modelctl("predict", IRIS, "--input", source, "--output", target)
    assert code == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["in.csv"]

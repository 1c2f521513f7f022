"""ModelStore, its layout and metadata: listing, resolving, verified loading, atomic
publishing, promote and rollback."""

from __future__ import annotations

import hashlib
import pathlib
import pickle
import shutil

import pytest
import sklearn
import yaml

from service.errors import (
    AliasNotFound,
    BadRequest,
    Conflict,
    IntegrityError,
    InvalidMetadata,
    ModelLoadError,
    ModelNotFound,
    StoreError,
    VersionNotFound,
)
from service.store import ModelRef, ModelStore, parse_ref
from service.store.layout import check_alias, check_name
from tests.support import CANCER, DEMO_MODELS, DIABETES, IRIS

DEMO_NAMES = sorted(DEMO_MODELS)


# -- helpers -------------------------------------------------------------------


def version_files(store: ModelStore, name: str, version: int) -> tuple[bytes, dict]:
    """The pickle bytes and metadata of a stored version, ready to publish again."""
    directory = store.root / name / str(version)
    meta = yaml.safe_load((directory / "metadata.yaml").read_text())
    for key in ("version", "artifact", "created_at"):
        meta.pop(key)
    return (directory / "model.pkl").read_bytes(), meta


def edit_metadata(store: ModelStore, name: str, version: int, change) -> None:
    path = store.root / name / str(version) / "metadata.yaml"
    meta = yaml.safe_load(path.read_text())
    change(meta)
    path.write_text(yaml.safe_dump(meta, sort_keys=False))


def republish(store: ModelStore, name: str = IRIS, **kwargs) -> int:
    data, meta = version_files(store, name, 1)
    return store.publish(name, data, meta, **kwargs)


def temp_dirs(store: ModelStore, name: str) -> list[str]:
    return [p.name for p in (store.root / name).iterdir() if p.name.startswith(".tmp-")]


class TouchOnUnpickle:
    """Unpickling this creates ``path``: proof of whether a pickle was ever loaded."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


# -- listing and resolving -------------------------------------------------------


def test_names_versions_and_aliases(store):
    assert store.names() == DEMO_NAMES
    for name in DEMO_NAMES:
        assert store.has_model(name)
        assert store.versions(name) == [1]
        assert store.aliases(name) == {"production": 1}
    assert not store.has_model("no-such-model")


def test_names_skip_entries_that_are_not_models(store, store_dir):
    (store_dir / ".tmp-leftover").mkdir()
    (store_dir / "Not-A-Model").mkdir()
    (store_dir / "stray-file").write_text("x")
    (store_dir / IRIS / "17-not-a-version").mkdir()
    assert store.names() == DEMO_NAMES
    assert store.versions(IRIS) == [1]


def test_versions_are_sorted_numerically(store):
    for _ in range(10):
        republish(store)
    assert store.versions(IRIS) == list(range(1, 12))


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("iris-classifier", ModelRef("iris-classifier")),
        ("iris-classifier@3", ModelRef("iris-classifier", version=3)),
        ("iris-classifier@production", ModelRef("iris-classifier", alias="production")),
        ("m2@staging_b-1", ModelRef("m2", alias="staging_b-1")),
        ("a@999999999", ModelRef("a", version=999_999_999)),
    ],
)
def test_parse_ref(text, ref):
    assert parse_ref(text) == ref
    assert str(parse_ref(text)) == text


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        ("..", "invalid_model_name", "invalid model name '..'"),
        ("Foo", "invalid_model_name", "invalid model name 'Foo'"),
        ("a/b", "invalid_model_name", "invalid model name 'a/b'"),
        ("../iris-classifier", "invalid_model_name", "invalid model name '../iris-classifier'"),
        ("", "invalid_model_name", "invalid model name ''"),
        ("-iris", "invalid_model_name", "invalid model name '-iris'"),
        ("iris-", "invalid_model_name", "invalid model name 'iris-'"),
        ("iris_classifier", "invalid_model_name", "invalid model name 'iris_classifier'"),
        ("a" * 65, "invalid_model_name", "invalid model name 'aaaa"),
        ("iris@0", "invalid_version", "invalid version '0': versions are positive integers"),
        ("iris@007", "invalid_version", "invalid version '007'"),
        ("iris@1234567890", "invalid_version", "invalid version '1234567890'"),
        ("iris@Production", "invalid_alias", "invalid alias 'Production'"),
        ("iris@", "invalid_alias", "invalid alias ''"),
        ("iris@-1", "invalid_alias", "invalid alias '-1'"),
        ("iris@1.5", "invalid_alias", "invalid alias '1.5'"),
        ("iris@prod@1", "invalid_alias", "invalid alias 'prod@1'"),
    ],
)
def test_parse_ref_refuses(text, code, message):
    with pytest.raises(BadRequest) as caught:
        parse_ref(text)
    assert caught.value.code == code
    assert caught.value.status == 400
    assert caught.value.message.startswith(message)


@pytest.mark.parametrize("name", ["..", "Foo", "a/b", "../outside", "/etc", "."])
@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda s, n: s.versions(n), id="versions"),
        pytest.param(lambda s, n: s.aliases(n), id="aliases"),
        pytest.param(lambda s, n: s.has_model(n), id="has_model"),
        pytest.param(lambda s, n: s.resolve(ModelRef(n)), id="resolve"),
        pytest.param(lambda s, n: s.metadata(n, 1), id="metadata"),
        pytest.param(lambda s, n: s.load_artifact(n, 1), id="load_artifact"),
        pytest.param(lambda s, n: s.promote(n, 1), id="promote"),
        pytest.param(lambda s, n: s.rollback(n), id="rollback"),
        pytest.param(lambda s, n: s.publish(n, b"x", {}), id="publish"),
    ],
)
def test_store_refuses_invalid_names(store, tmp_path, name, operation):
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BadRequest) as caught:
        operation(store, name)
    assert caught.value.code == "invalid_model_name"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_resolve(store):
    v2 = republish(store, aliases=("staging",))
    assert v2 == 2
    assert store.resolve(parse_ref(IRIS)) == 1
    assert store.resolve(parse_ref(f"{IRIS}@production")) == 1
    assert store.resolve(parse_ref(f"{IRIS}@staging")) == 2
    assert store.resolve(parse_ref(f"{IRIS}@1")) == 1
    assert store.resolve(parse_ref(f"{IRIS}@2")) == 2
    assert store.resolve(parse_ref(IRIS), default_alias="staging") == 2


@pytest.mark.parametrize(
    ("text", "error", "code", "message", "details"),
    [
        (
            "no-such-model",
            ModelNotFound,
            "model_not_found",
            "no model named 'no-such-model' in the store",
            {"model": "no-such-model"},
        ),
        (
            "no-such-model@1",
            ModelNotFound,
            "model_not_found",
            "no model named 'no-such-model' in the store",
            {"model": "no-such-model"},
        ),
        (
            "no-such-model@production",
            ModelNotFound,
            "model_not_found",
            "no model named 'no-such-model' in the store",
            {"model": "no-such-model"},
        ),
        (
            "iris-classifier@7",
            VersionNotFound,
            "version_not_found",
            "model 'iris-classifier' has no version 7",
            {"model": "iris-classifier", "versions": [1]},
        ),
        (
            "iris-classifier@staging",
            AliasNotFound,
            "alias_not_found",
            "model 'iris-classifier' has no alias 'staging'",
            {"model": "iris-classifier", "aliases": ["production"]},
        ),
    ],
)
def test_resolve_unknown(store, text, error, code, message, details):
    with pytest.raises(error) as caught:
        store.resolve(parse_ref(text))
    assert caught.value.code == code
    assert caught.value.status == 404
    assert caught.value.message == message
    assert caught.value.details == details


def test_metadata_of_unknown_model_or_version(store):
    with pytest.raises(ModelNotFound):
        store.metadata("no-such-model", 1)
    with pytest.raises(VersionNotFound) as caught:
        store.metadata(IRIS, 4)
    assert caught.value.message == "model 'iris-classifier' has no version 4"
    with pytest.raises(VersionNotFound):
        store.load_artifact(IRIS, 4)


def test_metadata_documents_the_version(store):
    meta = store.metadata(IRIS, 1)
    data = (store.root / IRIS / "1" / "model.pkl").read_bytes()
    assert (meta["name"], meta["version"], meta["task"]) == (IRIS, 1, "classification")
    assert meta["artifact"] == {
        "file": "model.pkl",
        "format": "pickle",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    assert meta["environment"]["scikit-learn"] == sklearn.__version__
    assert meta["created_at"].endswith("Z")


# -- loading -----------------------------------------------------------------------


def test_load_artifact(store):
    artifact = store.load_artifact(IRIS, 1)
    assert artifact.metadata == store.metadata(IRIS, 1)
    assert artifact.warnings == []
    assert list(artifact.estimator.classes_) == ["setosa", "versicolor", "virginica"]


def test_load_refuses_a_modified_pickle(store):
    path = store.root / IRIS / "1" / "model.pkl"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as caught:
        store.load_artifact(IRIS, 1)
    assert caught.value.code == "integrity_error"
    assert "refusing to unpickle it" in caught.value.message
    assert store.metadata(IRIS, 1)["artifact"]["sha256"] in caught.value.message


def test_load_checks_sha256_before_unpickling(store, tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(TouchOnUnpickle(marker))
    (store.root / IRIS / "1" / "model.pkl").write_bytes(payload)
    # Only the size is brought in line: the sha256 still records the real model.
    edit_metadata(store, IRIS, 1, lambda m: m["artifact"].update(size=len(payload)))

    with pytest.raises(IntegrityError) as caught:
        store.load_artifact(IRIS, 1)
    assert f"has sha256 {hashlib.sha256(payload).hexdigest()}" in caught.value.message
    assert not marker.exists()

    pickle.loads(payload)  # the probe works: had the store unpickled it, the marker would exist
    assert marker.exists()


def test_load_refuses_an_artifact_outside_the_store(store, tmp_path):
    path = store.root / IRIS / "1" / "model.pkl"
    outside = tmp_path / "outside.pkl"
    shutil.copyfile(path, outside)  # the very same bytes: the checksum would pass
    path.unlink()
    path.symlink_to(outside)
    with pytest.raises(IntegrityError) as caught:
        store.load_artifact(IRIS, 1)
    assert "resolves outside the model store" in caught.value.message


def test_load_refuses_an_artifact_from_another_version(store):
    assert republish(store) == 2
    path = store.root / IRIS / "2" / "model.pkl"
    path.unlink()
    path.symlink_to(store.root / IRIS / "1" / "model.pkl")  # inside the store, same bytes
    with pytest.raises(IntegrityError) as caught:
        store.load_artifact(IRIS, 2)
    assert caught.value.message == "iris-classifier@2: artifact 'model.pkl' is outside its version"


def test_load_refuses_an_artifact_path_in_metadata(store):
    edit_metadata(store, IRIS, 1, lambda m: m["artifact"].update(file="../../outside.pkl"))
    with pytest.raises(InvalidMetadata) as caught:
        store.load_artifact(IRIS, 1)
    assert [d["field"] for d in caught.value.details] == ["artifact/file"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda m: m.update(name=CANCER),
            "iris-classifier@1: metadata says breast-cancer-classifier@1; refusing to load",
        ),
        (
            lambda m: m.update(version=2),
            "iris-classifier@1: metadata says iris-classifier@2; refusing to load",
        ),
    ],
)
def test_load_refuses_metadata_of_another_version(store, change, message):
    edit_metadata(store, IRIS, 1, change)
    with pytest.raises(IntegrityError) as caught:
        store.load_artifact(IRIS, 1)
    assert caught.value.message == message


def test_load_refuses_a_version_directory_copied_by_hand(store):
    shutil.copytree(store.root / IRIS / "1", store.root / IRIS / "5")
    assert store.versions(IRIS) == [1, 5]
    with pytest.raises(IntegrityError) as caught:
        store.load_artifact(IRIS, 5)
    assert "metadata says iris-classifier@1" in caught.value.message


def test_load_refuses_invalid_metadata(store):
    edit_metadata(store, IRIS, 1, lambda m: m.update(task="clustering"))
    with pytest.raises(InvalidMetadata) as caught:
        store.load_artifact(IRIS, 1)
    assert caught.value.message.startswith("metadata is invalid: task: ")
    assert caught.value.details[0]["field"] == "task"


def test_scikit_learn_version_mismatch_warns_or_refuses(store):
    # metadata.yaml is not covered by the sha256, so the pickle still verifies.
    edit_metadata(store, IRIS, 1, lambda m: m["environment"].update({"scikit-learn": "0.0.1"}))

    artifact = store.load_artifact(IRIS, 1)
    assert artifact.warnings == [
        f"pickled with scikit-learn 0.0.1, running {sklearn.__version__}: predictions may "
        "differ (retrain, or pin the recorded version)"
    ]
    assert hasattr(artifact.estimator, "predict")

    with pytest.raises(ModelLoadError) as caught:
        store.load_artifact(IRIS, 1, refuse_version_mismatch=True)
    assert caught.value.code == "version_mismatch"
    assert caught.value.message.startswith("iris-classifier@1: pickled with scikit-learn 0.0.1")


# -- publishing ----------------------------------------------------------------------


def test_publish_adds_the_next_version(store):
    data, meta = version_files(store, IRIS, 1)
    seen = []
    version = store.publish(IRIS, data, meta, aliases=("staging",), verify=seen.append)
    assert version == 2
    assert store.versions(IRIS) == [1, 2]
    assert store.aliases(IRIS) == {"production": 1, "staging": 2}
    assert [a.metadata["version"] for a in seen] == [2]  # verify saw the loaded version
    stored = store.metadata(IRIS, 2)
    assert (stored["name"], stored["version"]) == (IRIS, 2)
    assert stored["artifact"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert (store.root / IRIS / "2" / "model.pkl").read_bytes() == data
    assert store.load_artifact(IRIS, 2).metadata == stored
    assert temp_dirs(store, IRIS) == []


def test_publish_a_new_model(store):
    data, meta = version_files(store, IRIS, 1)
    assert store.publish("iris-copy", data, meta, aliases=("production",)) == 1
    assert store.names() == [CANCER, DIABETES, IRIS, "iris-copy"]
    assert store.metadata("iris-copy", 1)["name"] == "iris-copy"
    assert store.resolve(parse_ref("iris-copy")) == 1


def _fail(artifact):
    raise RuntimeError("verification failed")


def _with_old_scikit_learn(meta):
    return {**meta, "environment": {**meta["environment"], "scikit-learn": "0.0.1"}}


@pytest.mark.parametrize(
    ("data", "change_meta", "verify", "error", "message"),
    [
        (None, None, _fail, RuntimeError, "verification failed"),
        (b"not a pickle", None, None, ModelLoadError, "cannot unpickle model.pkl"),
        (None, lambda m: {**m, "task": "clustering"}, None, InvalidMetadata, "task"),
        (None, _with_old_scikit_learn, None, ModelLoadError, "pickled with scikit-learn 0.0.1"),
    ],
    ids=["verify-raises", "not-a-pickle", "invalid-metadata", "other-scikit-learn"],
)
def test_publish_is_atomic(store, data, change_meta, verify, error, message):
    model_dir = store.root / IRIS
    aliases_before = (model_dir / "aliases.yaml").read_bytes()
    inode_before = (model_dir / "aliases.yaml").stat().st_ino
    counter_before = (model_dir / ".last_version").read_text()
    good_data, meta = version_files(store, IRIS, 1)
    meta = change_meta(meta) if change_meta else meta

    with pytest.raises(error) as caught:
        store.publish(
            IRIS, data or good_data, meta, aliases=("production", "staging"), verify=verify
        )
    assert message in str(caught.value)

    assert store.versions(IRIS) == [1]
    assert sorted(p.name for p in model_dir.iterdir()) == [
        ".last_version",
        ".lock",
        "1",
        "aliases.yaml",
    ]
    assert (model_dir / ".last_version").read_text() == counter_before
    assert (model_dir / "aliases.yaml").read_bytes() == aliases_before
    assert (model_dir / "aliases.yaml").stat().st_ino == inode_before
    assert republish(store) == 2  # the failed attempt used up no version number


def test_version_numbers_are_never_reused(store):
    assert republish(store) == 2
    shutil.rmtree(store.root / IRIS / "2")
    assert store.versions(IRIS) == [1]
    assert republish(store) == 3
    assert store.versions(IRIS) == [1, 3]


def test_version_numbers_follow_directories_made_without_the_counter(store):
    (store.root / IRIS / ".last_version").unlink()
    assert republish(store) == 2


# -- aliases: promote and rollback ------------------------------------------------------


def history(store, name=IRIS):
    return [
        (h["action"], h["alias"], h["from"], h["to"], h.get("reason"))
        for h in store.alias_state(name)["history"]
    ]


def test_promote_and_rollback(store):
    assert republish(store) == 2
    assert republish(store) == 3
    assert store.aliases(IRIS) == {"production": 1}

    assert store.promote(IRIS, 2, reason="better f1") == 1
    assert store.aliases(IRIS) == {"production": 2}
    assert store.promote(IRIS, 3, reason="even better") == 2
    assert store.aliases(IRIS) == {"production": 3}

    assert store.rollback(IRIS, reason="errors up") == (3, 2)
    assert store.aliases(IRIS) == {"production": 2}
    assert store.rollback(IRIS) == (2, 1)  # twice in a row walks further back
    assert store.aliases(IRIS) == {"production": 1}

    with pytest.raises(Conflict) as caught:
        store.rollback(IRIS)
    assert caught.value.status == 409
    assert caught.value.message == (
        "model 'iris-classifier': alias 'production' has no earlier version to roll back to"
    )
    assert store.aliases(IRIS) == {"production": 1}

    assert history(store) == [
        ("publish", "production", None, 1, "published"),
        ("promote", "production", 1, 2, "better f1"),
        ("promote", "production", 2, 3, "even better"),
        ("rollback", "production", 3, 2, "errors up"),
        ("rollback", "production", 2, 1, None),
    ]
    assert all(h["at"].endswith("Z") for h in store.alias_state(IRIS)["history"])


def test_rollback_undoes_only_the_last_promote_of_that_alias(store):
    republish(store)
    republish(store)
    store.promote(IRIS, 2)
    store.promote(IRIS, 3, alias="staging")
    assert store.rollback(IRIS) == (2, 1)
    assert store.aliases(IRIS) == {"production": 1, "staging": 3}
    with pytest.raises(Conflict):
        store.rollback(IRIS, alias="staging")  # staging had no earlier version


def test_rollback_with_no_history(store):
    with pytest.raises(Conflict) as caught:
        store.rollback(IRIS)
    assert caught.value.code == "conflict"
    assert store.aliases(IRIS) == {"production": 1}


def test_promote_to_the_current_version_changes_nothing(store):
    before = (store.root / IRIS / "aliases.yaml").read_bytes()
    assert store.promote(IRIS, 1) == 1
    assert (store.root / IRIS / "aliases.yaml").read_bytes() == before


def test_promote_a_new_alias(store):
    assert store.promote(IRIS, 1, alias="canary") is None
    assert store.aliases(IRIS) == {"production": 1, "canary": 1}
    assert history(store)[-1] == ("promote", "canary", None, 1, None)


@pytest.mark.parametrize(
    ("call", "error", "code"),
    [
        (lambda s: s.promote(IRIS, 9), VersionNotFound, "version_not_found"),
        (lambda s: s.promote(IRIS, 0), BadRequest, "invalid_version"),
        (lambda s: s.promote(IRIS, 1, alias="Prod"), BadRequest, "invalid_alias"),
        (lambda s: s.promote("no-such-model", 1), ModelNotFound, "model_not_found"),
        (lambda s: s.rollback(IRIS, alias="staging"), AliasNotFound, "alias_not_found"),
        (lambda s: s.rollback("no-such-model"), ModelNotFound, "model_not_found"),
        (lambda s: s.remove_alias(IRIS, "staging"), AliasNotFound, "alias_not_found"),
    ],
)
def test_alias_changes_refused(store, call, error, code):
    before = (store.root / IRIS / "aliases.yaml").read_bytes()
    with pytest.raises(error) as caught:
        call(store)
    assert caught.value.code == code
    assert (store.root / IRIS / "aliases.yaml").read_bytes() == before
    assert not (store.root / "no-such-model").exists()


def test_remove_alias(store):
    store.promote(IRIS, 1, alias="staging")
    store.remove_alias(IRIS, "staging")
    assert store.aliases(IRIS) == {"production": 1}
    assert history(store)[-1] == ("remove", "staging", 1, None, None)


def test_aliases_file_is_replaced_not_edited(store):
    path = store.root / IRIS / "aliases.yaml"
    republish(store)
    before = path.stat()
    signature = store.aliases_signature(IRIS)
    store.promote(IRIS, 2)
    after = path.stat()
    assert after.st_ino != before.st_ino
    assert store.aliases_signature(IRIS) != signature
    assert oct(after.st_mode & 0o777) == "0o644"
    assert temp_dirs(store, IRIS) == []
    assert yaml.safe_load(path.read_text())["aliases"] == {"production": 2}


def test_aliases_file_keeps_its_inode_when_reading(store):
    path = store.root / IRIS / "aliases.yaml"
    inode = path.stat().st_ino
    store.aliases(IRIS)
    store.resolve(parse_ref(IRIS))
    assert path.stat().st_ino == inode


@pytest.mark.parametrize(
    ("path", "text", "call", "error", "message"),
    [
        (
            "aliases.yaml",
            "aliases: {production: [1\n",
            lambda s: s.aliases(IRIS),
            StoreError,
            "aliases.yaml: not valid YAML",
        ),
        (
            "1/metadata.yaml",
            "name: [iris\n",
            lambda s: s.metadata(IRIS, 1),
            InvalidMetadata,
            "metadata.yaml: not valid YAML",
        ),
        (
            ".last_version",
            "seven\n",
            lambda s: republish(s),
            StoreError,
            ".last_version: not a version number",
        ),
    ],
    ids=["aliases", "metadata", "counter"],
)
def test_unreadable_store_files_are_store_errors(store, path, text, call, error, message):
    (store.root / IRIS / path).write_text(text)
    with pytest.raises(error) as caught:
        call(store)
    assert message in caught.value.message
    assert store.versions(IRIS) == [1]


# -- known bugs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "check",
    [
        pytest.param(lambda: check_name("iris-classifier\n"), id="name"),
        pytest.param(lambda: check_alias("production\n"), id="alias"),
        pytest.param(lambda: parse_ref("iris-classifier\n"), id="parse_ref"),
    ],
)
def test_names_with_a_trailing_newline_are_refused(check):
    with pytest.raises(BadRequest):
        check()


def test_failed_first_publish_of_a_new_model_leaves_no_model(store):
    data, meta = version_files(store, IRIS, 1)
    with pytest.raises(RuntimeError):
        store.publish("brand-new", data, meta, verify=_fail)
    assert store.names() == DEMO_NAMES
    assert not (store.root / "brand-new").exists()

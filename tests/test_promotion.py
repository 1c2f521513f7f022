"""The promotion gate: a promote may not make an alias serve a version that scores worse on
its test set, by its primary metric, than the version it serves now. In the store, so the
command line and the admin API share it."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from service import create_app
from service.cli import main
from service.errors import Conflict, PromotionRefused
from service.formatting import format_pair
from service.store.promotion import GateRefusal, check_promotion, higher_is_better
from tests.support import DIABETES, IRIS, IRIS_ROW
from tests.test_admin import ADMIN_KEY, bearer

# iris-classifier@1 scores f1_macro 0.966583 on its test set (written as 0.967).
WORSE = (
    "iris-classifier@2 scores f1_macro 0.91 on its test set, worse than 0.967 of "
    "iris-classifier@1 (production now)"
)


def publish_copy(store, name=IRIS, change=None, aliases=()):
    """A new version with version 1's pickle and its metadata, edited by ``change``."""
    meta = store.metadata(name, 1)
    for key in ("version", "artifact", "created_at"):
        del meta[key]
    if change is not None:
        change(meta)
    pickle_bytes = (store.layout.version_dir(name, 1) / "model.pkl").read_bytes()
    return store.publish(name, pickle_bytes, meta, aliases=aliases)


def scored(**scores):
    """Set test scores of the model (None removes the metric)."""

    def change(meta):
        model = meta["scores"]["test"]["model"]
        for metric, value in scores.items():
            if value is None:
                model.pop(metric, None)
            else:
                model[metric] = value

    return change


def primary(metric, **scores):
    def change(meta):
        meta["scores"]["primary_metric"] = metric
        scored(**scores)(meta)

    return change


def edit_stored_metadata(store, name, version, change):
    """Edit a published metadata.yaml in place (only the pickle is checksummed)."""
    path = store.layout.metadata_file(name, version)
    meta = yaml.safe_load(path.read_text())
    change(meta)
    path.write_text(yaml.safe_dump(meta, sort_keys=False))


@pytest.fixture(autouse=True)
def known_scores(store):
    """Version 1's test scores, pinned so that the cases below do not hang on training."""

    def iris(meta):
        meta["scores"]["primary_metric"] = "f1_macro"
        meta["scores"]["test"]["model"] = {"f1_macro": 0.966583, "accuracy": 0.966667}

    def diabetes(meta):
        meta["scores"]["primary_metric"] = "r2"
        meta["scores"]["test"]["model"] = {"r2": 0.316689, "rmse": 59.194334}

    edit_stored_metadata(store, IRIS, 1, iris)
    edit_stored_metadata(store, DIABETES, 1, diabetes)


# -- the store ---------------------------------------------------------------------


def test_a_worse_version_is_refused(store):
    version = publish_copy(store, change=scored(f1_macro=0.91))
    state = store.alias_state(IRIS)

    with pytest.raises(PromotionRefused) as caught:
        store.promote(IRIS, version, reason="try it")

    error = caught.value
    assert isinstance(error, Conflict)
    assert (error.status, error.code) == (409, "promotion_refused")
    assert error.reason == WORSE
    assert error.message == WORSE + "; promote with --force to override"
    assert error.details == {
        "metric": "f1_macro",
        "higher_is_better": True,
        "candidate": {"version": 2, "score": 0.91},
        "current": {"version": 1, "score": 0.966583},
    }
    assert store.alias_state(IRIS) == state  # nothing changed, nothing recorded


@pytest.mark.parametrize("score", [0.97, 0.966583], ids=["better", "equal"])
def test_a_better_or_equal_version_is_promoted(store, score):
    version = publish_copy(store, change=scored(f1_macro=score))
    assert store.promote(IRIS, version, reason="as good") == 1
    assert store.aliases(IRIS)["production"] == version
    entry = store.alias_state(IRIS)["history"][-1]
    assert (entry["action"], entry["from"], entry["to"], entry["reason"]) == (
        "promote",
        1,
        version,
        "as good",
    )
    assert "forced" not in entry and "gate" not in entry


def test_the_gate_compares_with_what_the_alias_serves_now(store):
    better = publish_copy(store, change=scored(f1_macro=0.99))
    between = publish_copy(store, change=scored(f1_macro=0.98))
    store.promote(IRIS, better)
    # 0.98 beats version 1, but production serves 0.99 now.
    with pytest.raises(PromotionRefused) as caught:
        store.promote(IRIS, between)
    assert caught.value.reason == (
        f"iris-classifier@{between} scores f1_macro 0.98 on its test set, worse than 0.99 of "
        f"iris-classifier@{better} (production now)"
    )
    assert caught.value.details["current"] == {"version": better, "score": 0.99}
    assert store.aliases(IRIS)["production"] == better


def test_force_promotes_and_the_history_records_it(store):
    version = publish_copy(store, change=scored(f1_macro=0.91))
    assert store.promote(IRIS, version, reason="hotfix for a data bug", force=True) == 1
    assert store.aliases(IRIS)["production"] == version
    state = store.alias_state(IRIS)
    assert state["previous"]["production"] == [1]
    entry = state["history"][-1]
    del entry["at"]
    assert entry == {
        "alias": "production",
        "from": 1,
        "to": version,
        "action": "promote",
        "reason": "hotfix for a data bug",
        "forced": True,
        "gate": WORSE,
    }
    # A forced promote is rolled back like any other.
    assert store.rollback(IRIS) == (version, 1)


def test_force_without_a_reason_still_records_the_gate(store):
    version = publish_copy(store, change=scored(f1_macro=0.91))
    store.promote(IRIS, version, force=True)
    entry = store.alias_state(IRIS)["history"][-1]
    assert "reason" not in entry
    assert (entry["forced"], entry["gate"]) == (True, WORSE)


def test_force_on_a_promotion_the_gate_allows_records_nothing_forced(store):
    version = publish_copy(store, change=scored(f1_macro=0.99))
    store.promote(IRIS, version, force=True)
    entry = store.alias_state(IRIS)["history"][-1]
    assert entry["to"] == version
    assert "forced" not in entry and "gate" not in entry


@pytest.mark.parametrize(
    ("change", "reason", "candidate_score", "current_score"),
    [
        pytest.param(
            scored(f1_macro=None),
            "iris-classifier@2 cannot be compared with iris-classifier@1 (production now) on "
            "f1_macro: iris-classifier@2 has no test score for it",
            None,
            0.966583,
            id="candidate-lacks-its-metric",
        ),
        pytest.param(
            scored(f1_macro="high"),
            "iris-classifier@2 cannot be compared with iris-classifier@1 (production now) on "
            "f1_macro: iris-classifier@2 has no test score for it",
            None,
            0.966583,
            id="score-not-a-number",
        ),
        pytest.param(
            primary("log_loss", log_loss=0.1),
            "iris-classifier@2 cannot be compared with iris-classifier@1 (production now) on "
            "log_loss: iris-classifier@1 (whose primary metric is f1_macro) has no test score "
            "for it",
            0.1,
            None,
            id="current-lacks-the-candidates-metric",
        ),
    ],
)
def test_versions_that_cannot_be_compared_are_refused_unless_forced(
    store, change, reason, candidate_score, current_score
):
    version = publish_copy(store, change=change)
    with pytest.raises(PromotionRefused) as caught:
        store.promote(IRIS, version)
    assert caught.value.reason == reason
    assert caught.value.details["candidate"] == {"version": version, "score": candidate_score}
    assert caught.value.details["current"] == {"version": 1, "score": current_score}
    assert store.aliases(IRIS)["production"] == 1

    store.promote(IRIS, version, force=True)
    assert store.aliases(IRIS)["production"] == version
    assert store.alias_state(IRIS)["history"][-1]["gate"] == reason


@pytest.mark.parametrize(
    ("accuracy", "allowed"),
    [(0.966667, True), (0.9, False)],
    ids=["same-accuracy", "worse-accuracy"],
)
def test_another_primary_metric_is_compared_on_the_candidates_metric(store, accuracy, allowed):
    version = publish_copy(store, change=primary("accuracy", accuracy=accuracy))
    if allowed:
        store.promote(IRIS, version)
        assert store.aliases(IRIS)["production"] == version
        return
    with pytest.raises(PromotionRefused) as caught:
        store.promote(IRIS, version)
    assert caught.value.details["metric"] == "accuracy"
    assert caught.value.details["current"]["score"] == 0.966667


@pytest.mark.parametrize(
    ("rmse", "allowed"),
    [(50.0, True), (59.194334, True), (61.5, False)],
    ids=["lower-is-better", "equal", "higher-is-worse"],
)
def test_a_lower_is_better_metric_is_compared_the_right_way_round(store, rmse, allowed):
    edit_stored_metadata(store, DIABETES, 1, primary("rmse"))
    version = publish_copy(store, DIABETES, change=primary("rmse", rmse=rmse))
    if allowed:
        assert store.promote(DIABETES, version) == 1
        assert store.aliases(DIABETES)["production"] == version
        return
    with pytest.raises(PromotionRefused) as caught:
        store.promote(DIABETES, version)
    assert caught.value.reason == (
        "diabetes-regressor@2 scores rmse 61.5 on its test set, worse than 59.2 of "
        "diabetes-regressor@1 (production now)"
    )
    assert caught.value.details["higher_is_better"] is False
    assert store.aliases(DIABETES)["production"] == 1


def test_the_first_promotion_of_an_alias_is_not_gated(store):
    version = publish_copy(store, change=scored(f1_macro=0.5))
    assert store.promote(IRIS, version, alias="canary") is None
    aliases = store.aliases(IRIS)
    assert (aliases["production"], aliases["canary"]) == (1, version)


def test_promoting_the_version_the_alias_points_at_is_allowed(store):
    version = publish_copy(store, change=scored(f1_macro=0.5), aliases=("staging",))
    assert store.promote(IRIS, version, alias="staging") == version
    assert store.promote(IRIS, 1) == 1


def test_publishing_with_aliases_is_not_gated(store):
    version = publish_copy(store, change=scored(f1_macro=0.5), aliases=("production",))
    assert store.aliases(IRIS)["production"] == version


def test_rollback_is_not_gated(store):
    better = publish_copy(store, change=scored(f1_macro=0.99))
    store.promote(IRIS, better)
    # Version 1 scores worse than what production serves: rolling back to it still works.
    assert store.rollback(IRIS, reason="errors in production") == (better, 1)
    assert store.aliases(IRIS)["production"] == 1


def test_check_promotion_says_what_the_gate_would_do_and_changes_nothing(store):
    worse = publish_copy(store, change=scored(f1_macro=0.91))
    better = publish_copy(store, change=scored(f1_macro=0.99))
    state = store.alias_state(IRIS)
    refusal = store.check_promotion(IRIS, worse)
    assert isinstance(refusal, GateRefusal)
    assert refusal.reason == WORSE
    assert store.check_promotion(IRIS, better) is None
    assert store.check_promotion(IRIS, worse, alias="canary") is None
    assert store.alias_state(IRIS) == state


# -- the pure gate -------------------------------------------------------------------


def meta(version, metric="f1_macro", **scores):
    return {
        "name": "m",
        "version": version,
        "scores": {"primary_metric": metric, "test": {"model": scores, "baseline": {}}},
    }


@pytest.mark.parametrize(
    ("metric", "candidate", "current", "refused"),
    [
        ("f1_macro", 0.8, 0.9, True),
        ("f1_macro", 0.9, 0.8, False),
        ("f1_macro", 0.9, 0.9, False),
        ("rmse", 12.0, 10.0, True),
        ("rmse", 10.0, 12.0, False),
        ("false_negative_rate", 0.2, 0.1, True),
        ("r2", -0.5, 0.1, True),
        ("r2", 1, 0.5, False),
    ],
)
def test_check_promotion_direction(metric, candidate, current, refused):
    verdict = check_promotion(
        meta(2, metric, **{metric: candidate}), meta(1, metric, **{metric: current}), "prod"
    )
    assert (verdict is not None) == refused
    if refused:
        assert verdict.details == {
            "metric": metric,
            "higher_is_better": higher_is_better(metric),
            "candidate": {"version": 2, "score": candidate},
            "current": {"version": 1, "score": current},
        }
        assert verdict.reason.endswith("of m@1 (prod now)")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, None, [0.9]])
def test_check_promotion_refuses_scores_that_are_not_numbers(bad):
    verdict = check_promotion(meta(2, f1_macro=bad), meta(1, f1_macro=0.5), "prod")
    assert verdict is not None
    assert verdict.reason == (
        "m@2 cannot be compared with m@1 (prod now) on f1_macro: m@2 has no test score for it"
    )


def test_check_promotion_when_both_lack_the_metric():
    verdict = check_promotion(meta(2), meta(1, "accuracy"), "prod")
    assert verdict.reason == (
        "m@2 cannot be compared with m@1 (prod now) on f1_macro: m@2 and m@1 (whose primary "
        "metric is accuracy) have no test score for it"
    )


def test_check_promotion_without_a_primary_metric():
    candidate = meta(2, f1_macro=0.9)
    del candidate["scores"]["primary_metric"]
    verdict = check_promotion(candidate, meta(1, f1_macro=0.5), "prod")
    assert (
        verdict.reason == "m@2 cannot be compared with m@1 (prod now): m@2 names no primary metric"
    )


@pytest.mark.parametrize(
    ("a", "b", "texts"),
    [
        (0.91, 0.966583, ("0.91", "0.967")),
        (0.9666, 0.9667, ("0.9666", "0.9667")),
        (0.96658301, 0.96658302, ("0.96658301", "0.96658302")),
        (61.5, 59.194334, ("61.5", "59.2")),
        (0.5, 0.5, ("0.5", "0.5")),
    ],
)
def test_format_pair_keeps_the_digits_that_tell_scores_apart(a, b, texts):
    assert format_pair(a, b) == texts


# -- modelctl promote ------------------------------------------------------------------


def test_modelctl_promote_refuses_with_one_line(store, store_dir, capsys):
    version = publish_copy(store, change=scored(f1_macro=0.91))
    assert main(["promote", IRIS, str(version), "--store", str(store_dir)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"modelctl: {WORSE}; promote with --force to override\n"
    assert store.aliases(IRIS)["production"] == 1


def test_modelctl_promote_force(store, store_dir, capsys):
    version = publish_copy(store, change=scored(f1_macro=0.91))
    argv = ["promote", IRIS, str(version), "--force", "--reason", "hotfix"]
    assert main([*argv, "--store", str(store_dir)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        f"iris-classifier: production -> {version} (was 1)",
        f"forced past the promotion gate: {WORSE}",
    ]
    entry = store.alias_state(IRIS)["history"][-1]
    assert (entry["forced"], entry["reason"]) == (True, "hotfix")


def test_modelctl_promote_force_when_the_gate_allows(store, store_dir, capsys):
    version = publish_copy(store, change=scored(f1_macro=0.99))
    assert main(["promote", IRIS, str(version), "--force", "--store", str(store_dir)]) == 0
    assert capsys.readouterr().out == f"iris-classifier: production -> {version} (was 1)\n"


# -- the admin API -------------------------------------------------------------------


@pytest.fixture
def admin(store_dir):
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    app = create_app({"store": store_dir, "admin_key_hashes": (digest,)})
    yield app.test_client()
    app.extensions["model_service"].registry.stop()


def promote_over_http(admin, body):
    return admin.post(f"/v1/admin/models/{IRIS}/promote", json=body, headers=bearer(ADMIN_KEY))


def test_admin_promote_refused_is_a_409_with_details(store, admin):
    version = publish_copy(store, change=scored(f1_macro=0.91))
    response = promote_over_http(admin, {"version": version})
    assert response.status_code == 409
    error = response.json["error"]
    assert error["code"] == "promotion_refused"
    assert error["message"] == f'{WORSE}; send "force": true to override'
    assert error["details"] == {
        "metric": "f1_macro",
        "higher_is_better": True,
        "candidate": {"version": version, "score": 0.91},
        "current": {"version": 1, "score": 0.966583},
    }
    assert store.aliases(IRIS)["production"] == 1


def test_admin_promote_force(store, admin):
    version = publish_copy(store, change=scored(f1_macro=0.91))
    response = promote_over_http(admin, {"version": version, "force": True, "reason": "hotfix"})
    assert response.status_code == 200
    assert response.json == {
        "model": IRIS,
        "alias": "production",
        "version": version,
        "previous": 1,
        "forced": True,
        "gate": WORSE,
    }
    entry = store.alias_state(IRIS)["history"][-1]
    assert (entry["forced"], entry["gate"], entry["reason"]) == (True, WORSE, "hotfix")
    served = admin.post(
        f"/v1/models/{IRIS}/predict",
        json={"instances": [IRIS_ROW]},
    )
    assert served.json["version"] == version


def test_admin_promote_force_when_the_gate_allows(store, admin):
    version = publish_copy(store, change=scored(f1_macro=0.99))
    response = promote_over_http(admin, {"version": version, "force": True})
    assert response.status_code == 200
    assert (response.json["forced"], response.json["gate"]) == (False, None)
    assert "forced" not in store.alias_state(IRIS)["history"][-1]


@pytest.mark.parametrize("force", ["true", 1, 0, None, "yes", [True]])
def test_admin_force_must_be_a_json_boolean(store, admin, force):
    version = publish_copy(store, change=scored(f1_macro=0.91))
    response = promote_over_http(admin, {"version": version, "force": force})
    assert response.status_code == 400
    error = response.json["error"]
    assert error["code"] == "bad_request"
    assert error["message"] == '"force" must be true or false'
    assert error["details"] == {"field": "force"}
    assert store.aliases(IRIS)["production"] == 1

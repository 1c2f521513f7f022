"""experiment.yaml in a store: start, weights, stop and notes, written atomically with a
history; refused changes leave the file byte for byte; a hand-edited file is checked; and
the requests (admin API, modelctl, store protocol) read by service.store.experiment_control."""

from __future__ import annotations

import threading

import pytest
import yaml

from service.errors import AliasNotFound, ModelNotFound, VersionNotFound
from service.store import experiment_control
from service.store.experiments import (
    EXPERIMENT_FILE,
    Experiment,
    ExperimentRunning,
    InvalidExperiment,
    NoExperiment,
    Shadow,
    Variant,
    parse_variants,
)
from tests.support import IRIS


@pytest.fixture
def staged(store):
    """The demo store with iris version 2 published as staging."""
    data = (store.layout.version_dir(IRIS, 1) / "model.pkl").read_bytes()
    store.publish(IRIS, data, store.metadata(IRIS, 1), aliases=("staging",))
    return store


def experiment_file(store):
    return store.layout.model_dir(IRIS) / EXPERIMENT_FILE


def test_no_file_means_no_experiment(store):
    assert store.experiment(IRIS) is None
    assert store.experiment_state(IRIS) == {"active": None, "history": []}
    assert store.experiment_signature(IRIS) is None
    with pytest.raises(ModelNotFound):
        store.experiment_state("no-such-model")


def test_start_weights_stop_keep_a_history(staged):
    started = staged.start_experiment(
        IRIS,
        parse_variants("production=90,staging=10"),
        key_header="X-Client-ID",
        shadow=Shadow("2", 0.25),
        reason="try v2",
    )
    assert started.id.startswith(f"{IRIS}-") and started.kind == "ab"
    assert staged.experiment(IRIS) == started
    on_disk = yaml.safe_load(experiment_file(staged).read_text())
    assert on_disk["active"]["variants"] == [
        {"name": "production", "weight": 90},
        {"name": "staging", "weight": 10},
    ]
    assert on_disk["active"]["shadow"] == {"target": "2", "share": 0.25}

    moved = staged.set_experiment_weights(IRIS, {"staging": 50, "production": 50}, reason="more")
    assert moved.id == started.id  # the same experiment: sticky clients keep their hash seed
    assert [v.weight for v in moved.variants] == [50, 50]

    staged.note_experiment(IRIS, "step", reason="looks fine", extra={"p_value": 0.4})
    stopped = staged.stop_experiment(IRIS, reason="done")
    assert stopped.id == started.id
    assert staged.experiment(IRIS) is None
    history = staged.experiment_state(IRIS)["history"]
    assert [e["action"] for e in history] == ["start", "weights", "step", "stop"]
    assert {e["id"] for e in history} == {started.id}
    assert history[0]["reason"] == "try v2" and history[1]["weights"] == {
        "production": 50,
        "staging": 50,
    }
    assert history[2]["p_value"] == 0.4 and history[3]["reason"] == "done"

    again = staged.start_experiment(IRIS, [Variant("1", 100)])
    assert again.id != started.id  # a new start re-seeds the assignment


def test_every_write_replaces_the_file_whole(staged):
    """Readers (every worker polls the file) only ever see a whole file: each change is a
    new file renamed into place, and no temporary file is left behind."""
    stop = threading.Event()
    seen: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                text = experiment_file(staged).read_text()
            except FileNotFoundError:
                continue
            state = yaml.safe_load(text)
            seen.append("active" if state["active"] else "none")

    reader = threading.Thread(target=read)
    reader.start()
    signatures = set()
    try:
        for _ in range(15):
            staged.start_experiment(IRIS, parse_variants("production=50,staging=50"))
            signatures.add(staged.experiment_signature(IRIS))
            staged.stop_experiment(IRIS)
            signatures.add(staged.experiment_signature(IRIS))
    finally:
        stop.set()
        reader.join(30)
    assert len(signatures) == 30  # a new inode (or mtime) at every write
    assert {"active", "none"} <= set(seen)
    leftovers = [p.name for p in staged.layout.model_dir(IRIS).iterdir() if p.name[0] == "."]
    assert all(not name.startswith(".tmp-") for name in leftovers)


@pytest.mark.parametrize(
    ("variants", "options", "error", "message"),
    [
        ("production=90,staging=20", {}, InvalidExperiment, "add up to 100; these add up to 110"),
        ("production=90,7=10", {}, VersionNotFound, "has no version 7"),
        ("production=90,canary=10", {}, AliasNotFound, "has no alias 'canary'"),
        ("production=100", {"shadow": Shadow("9", 0.1)}, VersionNotFound, "no version 9"),
        ("production=100", {"key_header": "X Client"}, InvalidExperiment, "not an HTTP header"),
        ("production=100", {"alpha": 0.9}, InvalidExperiment, "alpha must be in (0, 0.5]"),
        ("production=100", {"kind": "bandit"}, InvalidExperiment, "is not one of ab, canary"),
    ],
)
def test_a_refused_start_leaves_the_file_byte_for_byte(staged, variants, options, error, message):
    staged.start_experiment(IRIS, parse_variants("production=100"))
    staged.stop_experiment(IRIS)
    before = experiment_file(staged).read_bytes()
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        staged.start_experiment(IRIS, parse_variants(variants), **options)
    assert experiment_file(staged).read_bytes() == before


def test_refused_changes_of_a_running_experiment_change_nothing(staged):
    staged.start_experiment(IRIS, parse_variants("production=90,staging=10"))
    before = experiment_file(staged).read_bytes()
    with pytest.raises(ExperimentRunning, match="already runs experiment"):
        staged.start_experiment(IRIS, parse_variants("production=100"))
    with pytest.raises(InvalidExperiment, match="add up to 100"):
        staged.set_experiment_weights(IRIS, {"staging": 20})
    with pytest.raises(InvalidExperiment, match="has no variant canary"):
        staged.set_experiment_weights(IRIS, {"canary": 10, "production": 80})
    assert experiment_file(staged).read_bytes() == before
    staged.stop_experiment(IRIS)
    stopped = experiment_file(staged).read_bytes()
    for change in (
        lambda: staged.stop_experiment(IRIS),
        lambda: staged.set_experiment_weights(IRIS, {"production": 100}),
        lambda: staged.note_experiment(IRIS, "step"),
    ):
        with pytest.raises(NoExperiment):
            change()
    assert experiment_file(staged).read_bytes() == stopped


GOOD = {
    "id": "iris-classifier-20261206T203000Z-5f3a",
    "kind": "ab",
    "started_at": "2026-12-06T20:30:00Z",
    "variants": [{"name": "production", "weight": 90}, {"name": 2, "weight": 10}],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variants": "production=100"}, "variants must be a list"),
        ({"variants": [["production", 100]]}, "each variant must be a mapping"),
        ({"variants": [{"name": "production", "weight": 100}] * 2}, "variants must differ"),
        ({"variants": [{"name": "Prod!", "weight": 100}]}, "neither a version number nor"),
        ({"variants": [{"name": "production", "weight": "lots"}]}, "is not a number"),
        ({"variants": [{"name": "production", "weight": float("nan")}]}, "not a finite"),
        (
            {"variants": [{"name": "production", "weight": 101}, {"name": "2", "weight": -1}]},
            "cannot be negative",
        ),
        ({"variants": []}, "at least one variant"),
        ({"id": ""}, "needs an id"),
        ({"kind": "bandit"}, "kind 'bandit'"),
        ({"shadow": "2"}, "shadow must be a mapping"),
        ({"shadow": {"target": "2", "share": 0}}, "share must be in (0, 1]"),
        ({"key_field": "a b"}, "key field"),
        ({"min_effect": -1}, "min_effect must be above 0"),
    ],
)
def test_from_dict_refuses_a_hand_edited_experiment(change, message):
    assert Experiment.from_dict(IRIS, GOOD).variants[1] == Variant("2", 10)
    with pytest.raises(InvalidExperiment) as caught:
        Experiment.from_dict(IRIS, {**GOOD, **change})
    assert message in caught.value.message


def test_a_hand_edited_file_is_refused_when_read(staged):
    experiment_file(staged).write_text("active:\n  variants: [1, 2]\n")
    with pytest.raises(InvalidExperiment):
        staged.experiment(IRIS)
    experiment_file(staged).write_text("active: null\nhistory: null\n")
    assert experiment_control.status(staged, IRIS)["history"] == []
    experiment_file(staged).write_text("active: [unclosed\n")
    with pytest.raises(Exception, match="not valid YAML"):
        staged.experiment_state(IRIS)


# -- requests (service.store.experiment_control) -----------------------------------------


@pytest.mark.parametrize(
    ("body", "variants", "options"),
    [
        ({"variants": {"production": 90, "staging": 10}}, "production=90,staging=10", {}),
        ({"variants": [{"name": 3, "weight": 100.0}]}, "3=100", {}),
        (
            {"variants": "production=50,staging=50", "key_field": "user.id"},
            "production=50,staging=50",
            {"key_field": "user.id"},
        ),
        (
            {"shadow": {"target": "staging"}},
            "production=100",
            {"shadow": Shadow("staging", experiment_control.DEFAULT_SHADOW_SHARE)},
        ),
        (
            {"variants": {"1": 100}, "alpha": 0.01, "min_effect": 0.1, "key_header": ""},
            "1=100",
            {"alpha": 0.01, "min_effect": 0.1, "key_header": None},
        ),
    ],
)
def test_start_requests_are_read_as_the_store_takes_them(body, variants, options):
    got_variants, got_options = experiment_control.start_arguments(body)
    assert got_variants == parse_variants(variants)
    for key, value in options.items():
        assert got_options[key] == value


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "must be a JSON object"),
        ({}, "needs variants"),
        ({"variants": {"production": "90", "staging": 10}}, "weight must be a number"),
        ({"variants": {"production": True}}, "weight must be a number"),
        ({"variants": {"production": 10**400}}, "out of range"),
        ({"variants": 5}, "must map names to weights"),
        ({"variants": [{"name": "production"}, "staging"]}, "object of"),
        ({"variants": {"production": 100}, "kind": "canary"}, "unknown field(s) kind"),
        ({"variants": {"production": 100}, "shadow": "staging"}, '"shadow" must be an object'),
        ({"variants": {"production": 100}, "shadow": {"share": 0.5}}, 'needs a "target"'),
        ({"variants": {"production": 100}, "alpha": "0.05"}, "alpha must be a number"),
        ({"variants": {"production": 100}, "key_header": 7}, '"key_header" must be text'),
        ({"variants": {"production": 100}, "reason": ["x"]}, '"reason" must be text'),
        ({"variants": {"production": 100}, "reason": "x" * 1001}, "longer than 1000"),
    ],
)
def test_bad_start_requests_say_what_is_wrong(body, message):
    with pytest.raises(InvalidExperiment) as caught:
        experiment_control.start_arguments(body)
    assert message in caught.value.message


def test_the_store_protocol_reads_back_what_a_remote_store_sends():
    variants = parse_variants("production=80,2=20")
    options = {
        "kind": "canary",
        "key_header": "X-Client-ID",
        "key_field": None,
        "shadow": Shadow("staging", 0.5),
        "alpha": 0.01,
        "min_effect": 0.05,
        "reason": "canary",
        "extra": {"steps": [5, 25, 100]},
    }
    body = experiment_control.request_body(variants, **options)
    read_variants, read_options = experiment_control.start_arguments(
        body, fields=experiment_control.PROTOCOL_START_FIELDS
    )
    assert read_variants == variants and read_options == options
    with pytest.raises(InvalidExperiment, match="cannot set at, id"):
        experiment_control.stop_arguments(
            {"extra": {"id": "x", "at": "y"}}, fields=frozenset({"extra"})
        )
    with pytest.raises(InvalidExperiment, match="action 'Stop now'"):
        experiment_control.stop_arguments({"action": "Stop now"}, fields=frozenset({"action"}))


def test_status_resolves_each_variant_now(staged):
    staged.start_experiment(
        IRIS, parse_variants("production=70,staging=20,1=10"), shadow=Shadow("staging", 0.5)
    )
    answer = experiment_control.status(staged, IRIS)
    assert [(v["name"], v["weight"], v["version"]) for v in answer["experiment"]["variants"]] == [
        ("production", 70, 1),
        ("staging", 20, 2),
        ("1", 10, 1),
    ]
    assert answer["experiment"]["shadow"] == {"target": "staging", "share": 0.5, "version": 2}
    staged.remove_alias(IRIS, "staging")
    moved = experiment_control.status(staged, IRIS)["experiment"]
    assert moved["variants"][1]["version"] is None  # the alias is gone: shown, not an error
    assert [e["action"] for e in experiment_control.status(staged, IRIS)["history"]] == ["start"]
    assert experiment_control.status(staged, IRIS, history=0)["history"] == []

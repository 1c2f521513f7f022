"""The offline baseline gate of `modelctl train` under its default settings.

With no ``evaluation`` block, a candidate is judged against the strongest Dummy strategy
on its primary metric, and its lead must be significant (a paired bootstrap on the
validation rows, p below alpha 0.05). Models trained on shuffled labels are refused;
real signal passes with a small p-value; the demo and example specs still pass; the
p-value is in metadata.yaml, `modelctl compare` and the model card.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn import metrics

from service.cli import main
from service.errors import BaselineNotBeaten, InvalidSpec
from service.store import ModelStore
from service.store import metadata as metadata_io
from service.training import significance
from service.training import spec as specs
from service.training.demo import demo_spec_files
from service.training.evaluation import BASELINE_STRATEGIES
from service.training.trainer import train

EXAMPLE_SPECS = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*/spec.yaml"))
FIVE_CLASSES = [0.5, 0.2, 0.15, 0.1, 0.05]


def table(
    rows: int, task: str, shares: list[float] | None = None, *, shuffled: bool
) -> pd.DataFrame:
    """Five numbers and a category; the label follows three of the numbers (plus noise),
    or, shuffled, follows nothing."""
    rng = np.random.default_rng(0)
    numbers = rng.normal(size=(rows, 5))
    frame = pd.DataFrame(numbers, columns=[f"x{i}" for i in range(5)])
    frame["region"] = rng.choice(["north", "south", "east"], rows)
    signal = numbers @ np.array([1.5, -1.0, 0.8, 0.0, 0.5]) + 0.5 * rng.normal(size=rows)
    if task == "classification":
        edges = np.quantile(signal, np.cumsum(shares)[:-1])
        label = np.array([f"c{i}" for i in range(len(shares))])[np.searchsorted(edges, signal)]
    else:
        label = 10 + 3 * signal
    frame["label"] = rng.permutation(label) if shuffled else label
    return frame


def write_spec(
    folder: Path,
    frame: pd.DataFrame,
    task: str,
    estimator: str,
    params: dict | None = None,
    evaluation: dict | None = None,
    name: str = "noise",
) -> Path:
    """A spec as a new user writes it: name, task, target, data and an estimator."""
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "table.csv", index=False)
    spec = {
        "name": name,
        "task": task,
        "target": "label",
        "data": {"path": "table.csv"},
        "estimator": {"class": estimator, "params": params or {}},
    }
    if evaluation:
        spec["evaluation"] = evaluation
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# -- noise is refused ---------------------------------------------------------------------

# fmt: off
NOISE = [
    pytest.param(
        "classification", 600, [1 / 3] * 3, "sklearn.ensemble.RandomForestClassifier",
        {"n_estimators": 30}, None, id="balanced-3-classes-forest",
    ),
    pytest.param(
        "classification", 1000, FIVE_CLASSES, "sklearn.tree.DecisionTreeClassifier",
        None, None, id="imbalanced-5-classes-deep-tree",
    ),
    pytest.param(
        "classification", 500, [0.7, 0.3], "sklearn.ensemble.RandomForestClassifier",
        {"n_estimators": 30, "max_depth": None}, None, id="binary-deep-forest",
    ),
    pytest.param(
        "classification", 500, [0.6, 0.3, 0.1], "sklearn.neighbors.KNeighborsClassifier",
        {"n_neighbors": 1}, None, id="one-nearest-neighbour",
    ),
    pytest.param(
        "classification", 500, [0.8, 0.2], "sklearn.ensemble.GradientBoostingClassifier",
        {"n_estimators": 30}, {"primary_metric": "roc_auc"}, id="binary-roc-auc-boosting",
    ),
    pytest.param(
        "classification", 400, [0.5, 0.3, 0.2], "sklearn.linear_model.LogisticRegression",
        None, {"method": "cross_validation", "folds": 3}, id="cross-validated-logistic",
    ),
    pytest.param(
        "regression", 600, None, "sklearn.tree.DecisionTreeRegressor",
        None, None, id="deep-tree-regressor",
    ),
    pytest.param("regression", 600, None, "sklearn.linear_model.Ridge", None, None, id="ridge"),
    pytest.param(
        "regression", 600, None, "sklearn.linear_model.Ridge",
        None, {"primary_metric": "mae"}, id="ridge-mae",
    ),
    pytest.param(
        "regression", 400, None, "sklearn.ensemble.RandomForestRegressor",
        {"n_estimators": 20}, {"method": "cross_validation", "folds": 3},
        id="cross-validated-forest-regressor",
    ),
]
# fmt: on


@pytest.mark.parametrize(("task", "rows", "shares", "estimator", "params", "evaluation"), NOISE)
def test_a_model_of_shuffled_labels_is_refused(
    tmp_path, task, rows, shares, estimator, params, evaluation
):
    frame = table(rows, task, shares, shuffled=True)
    path = write_spec(tmp_path, frame, task, estimator, params, evaluation)
    store = ModelStore(tmp_path / "store")

    with pytest.raises(BaselineNotBeaten) as caught:
        train(specs.load(path), store)

    gate = caught.value.details
    assert gate["passed"] is False and gate["forced"] is False
    # Every strategy was scored, and the strongest is the baseline.
    assert set(gate["baselines"]) == set(BASELINE_STRATEGIES[task])
    scores = [s for s in gate["baselines"].values() if s is not None]
    strongest = max(scores) if gate["higher_is_better"] else min(scores)
    assert gate["baseline"] == gate["baselines"][gate["baseline_strategy"]] == strongest
    tested = gate["significance"]
    assert gate["alpha"] == 0.05 and gate["margin"] == 0
    assert gate["improvement"] <= gate["margin"] or tested["p_value"] >= gate["alpha"]
    assert tested["resamples"] == significance.RESAMPLES and tested["rows"] > 0
    assert "not published (use --force REASON" in caught.value.message
    assert not store.root.exists() or store.names() == []


def test_the_imbalanced_five_class_tree_of_shuffled_labels_is_refused_by_the_cli(tmp_path, capsys):
    """The case that was published before: under F1 macro a tree on noise beats the
    most_frequent baseline by chance, but not the strongest baseline, significantly."""
    frame = table(1000, "classification", FIVE_CLASSES, shuffled=True)
    path = write_spec(tmp_path, frame, "classification", "sklearn.tree.DecisionTreeClassifier")
    store_dir = tmp_path / "store"

    assert main(["train", str(path), "--store", str(store_dir)]) == 1

    err = capsys.readouterr().err
    assert "validation f1_macro" in err and "not published" in err
    assert "p = " in err
    with pytest.raises(BaselineNotBeaten) as caught:
        train(specs.load(path), ModelStore(store_dir), publish=False)
    gate = caught.value.details
    assert gate["model"] > gate["baselines"]["most_frequent"]  # what the old default allowed
    assert gate["baseline_strategy"] != "most_frequent"


def test_force_still_publishes_a_refused_model_with_its_evidence(tmp_path):
    frame = table(1000, "classification", FIVE_CLASSES, shuffled=True)
    path = write_spec(tmp_path, frame, "classification", "sklearn.tree.DecisionTreeClassifier")
    store = ModelStore(tmp_path / "store")

    result = train(specs.load(path), store, force_reason="a known-noise control model")

    meta = store.metadata("noise", result.version)
    gate = meta["scores"]["gate"]
    assert gate["passed"] is False and gate["forced"] is True
    assert gate["reason"] == "a known-noise control model"
    assert gate["significance"]["p_value"] > 0
    assert meta["training"]["forced"] == {"reason": "a known-noise control model"}


# -- signal passes, and the evidence is recorded and shown ------------------------------


def test_real_signal_passes_with_a_small_p_value_shown_everywhere(tmp_path, capsys):
    frame = table(600, "classification", FIVE_CLASSES, shuffled=False)
    store_dir = tmp_path / "store"
    for seed in (0, 1):
        path = write_spec(
            tmp_path / f"seed-{seed}",
            frame,
            "classification",
            "sklearn.linear_model.LogisticRegression",
            evaluation={"seed": seed},
            name="signal",
        )
        assert main(["train", str(path), "--store", str(store_dir), "--no-onnx"]) == 0
        out = capsys.readouterr().out
        assert f"published signal@{seed + 1}" in out
        assert ", p 0.000999 (alpha 0.05) (passed)" in out

    store = ModelStore(store_dir)
    meta = store.metadata("signal", 1)
    metadata_io.validate(meta)
    gate = meta["scores"]["gate"]
    tested = gate["significance"]
    assert gate["passed"] is True and tested["p_value"] < 0.01
    assert tested["interval"]["low"] > gate["margin"] and tested["interval"]["level"] == 0.9
    assert tested["rows_from"] == "validation" and tested["rows"] == 120
    assert meta["scores"]["baseline"]["strategy"] == gate["baseline_strategy"]
    assert meta["scores"]["baseline"]["params"]["strategy"] == gate["baseline_strategy"]

    assert main(["compare", "signal", "1", "2", "--store", str(store_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    p_row = next(line for line in lines if line.split()[:1] == ["p_value"])
    second = store.metadata("signal", 2)["scores"]["gate"]["significance"]["p_value"]
    assert p_row.split() == ["p_value", f"{tested['p_value']:.4g}", f"{second:.4g}"]
    strategy_row = next(line for line in lines if line.split()[:1] == ["baseline_strategy"])
    assert strategy_row.split()[1] == gate["baseline_strategy"]

    card = tmp_path / "card.html"
    assert main(["card", "signal@1", "--output", str(card), "--store", str(store_dir)]) == 0
    html = card.read_text()
    gate_html = html.split("<h3>Promotion gate</h3>")[1].split("</section>")[0]
    assert f"<dt>p-value</dt><dd>{tested['p_value']:.4g}" in gate_html
    assert "must be below alpha 0.05" in gate_html
    assert f"{significance.RESAMPLES:,} resamples of 120 validation rows" in gate_html
    for strategy in BASELINE_STRATEGIES["classification"]:
        assert f"<code>{strategy}</code>" in gate_html


def test_a_regression_with_signal_passes(tmp_path):
    frame = table(400, "regression", shuffled=False)
    path = write_spec(tmp_path, frame, "regression", "sklearn.linear_model.Ridge")
    result = train(specs.load(path), ModelStore(tmp_path / "store"), publish=False)
    assert result.gate["passed"] is True
    assert result.gate["significance"]["p_value"] < 0.01
    assert set(result.gate["baselines"]) == {"mean", "median"}


def test_the_spec_still_chooses_baseline_margin_and_alpha(tmp_path):
    frame = table(400, "regression", shuffled=False)
    chosen = {"baseline": "median", "margin": 0.3, "alpha": 0.01}
    path = write_spec(tmp_path, frame, "regression", "sklearn.linear_model.Ridge", None, chosen)
    result = train(specs.load(path), ModelStore(tmp_path / "store"), publish=False)
    gate = result.gate
    assert list(gate["baselines"]) == ["median"] and gate["baseline_strategy"] == "median"
    assert gate["baseline_chosen_by"] == "the spec"
    assert (gate["margin"], gate["alpha"]) == (0.3, 0.01)

    path = write_spec(
        tmp_path, frame, "regression", "sklearn.linear_model.Ridge", None, {"margin": 5.0}
    )
    with pytest.raises(BaselineNotBeaten, match="by more than the margin 5"):
        train(specs.load(path), ModelStore(tmp_path / "store"), publish=False)


@pytest.mark.parametrize(
    ("alpha", "accepted"), [(0.05, True), (0.5, True), (0, False), (0.6, False), ("x", False)]
)
def test_alpha_is_a_number_in_zero_to_one_half(tmp_path, alpha, accepted):
    raw = {
        "name": "m",
        "task": "regression",
        "target": "y",
        "data": {"path": "t.csv"},
        "estimator": {"class": "sklearn.linear_model.Ridge"},
        "evaluation": {"alpha": alpha},
    }
    if accepted:
        assert specs.parse(raw, base_dir=tmp_path).evaluation.alpha == alpha
    else:
        with pytest.raises(InvalidSpec, match=r"evaluation\.alpha"):
            specs.parse(raw, base_dir=tmp_path)


# -- the shipped specs still pass -------------------------------------------------------


@pytest.mark.parametrize(
    "path", [*demo_spec_files(), *EXAMPLE_SPECS], ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_the_demo_and_example_specs_pass(tmp_path, path):
    result = train(specs.load(path), ModelStore(tmp_path / "store"), publish=False)
    gate = result.gate
    assert gate["passed"] is True, gate["message"]
    assert gate["significance"]["p_value"] < 0.01


# -- the test itself -----------------------------------------------------------------------


def test_weighted_scores_are_the_metrics_of_the_resampled_rows():
    rng = np.random.default_rng(3)
    n = 300
    y = rng.choice(np.array(["a", "b", "c"]), n, p=[0.6, 0.3, 0.1])
    predicted = rng.choice(np.array(["a", "b", "c", "d"]), n)
    probabilities = rng.dirichlet([1, 1, 1], n)
    probabilities[:10] = probabilities[10]  # ties
    counts = np.bincount(rng.integers(0, n, n), minlength=n)
    rows = np.repeat(np.arange(n), counts)
    classes = np.array(["a", "b", "c"])

    def ours(metric, outputs, truth=y, task="classification", labels=None):
        return significance.weighted_scores(task, metric, truth, outputs, counts, labels)[0]

    expected = {
        "accuracy": metrics.accuracy_score(y[rows], predicted[rows]),
        "balanced_accuracy": metrics.balanced_accuracy_score(y[rows], predicted[rows]),
    }
    for name, score in [
        ("f1_macro", metrics.f1_score),
        ("precision_macro", metrics.precision_score),
        ("recall_macro", metrics.recall_score),
    ]:
        expected[name] = score(y[rows], predicted[rows], average="macro", zero_division=0)
    for metric, value in expected.items():
        assert ours(metric, predicted) == pytest.approx(value, abs=1e-12), metric
    assert ours("roc_auc_ovr", probabilities, labels=classes) == pytest.approx(
        metrics.roc_auc_score(y[rows], probabilities[rows], multi_class="ovr", labels=classes)
    )
    assert ours("log_loss", probabilities, labels=classes) == pytest.approx(
        metrics.log_loss(y[rows], probabilities[rows], labels=classes)
    )
    binary = np.where(y == "a", "no", "yes")
    assert ours("roc_auc", probabilities[:, :2], binary, labels=np.array(["no", "yes"])) == (
        pytest.approx(metrics.roc_auc_score(binary[rows], probabilities[rows, 1]))
    )
    actual = rng.normal(5, 2, n)
    guess = actual + rng.normal(0, 1, n)
    for metric, score in [
        ("mae", metrics.mean_absolute_error),
        ("mse", metrics.mean_squared_error),
        ("rmse", metrics.root_mean_squared_error),
        ("r2", metrics.r2_score),
        ("mape", metrics.mean_absolute_percentage_error),
    ]:
        got = ours(metric, guess, actual, "regression")
        assert got == pytest.approx(score(actual[rows], guess[rows])), metric


def test_the_bootstrap_is_seeded_and_bounded():
    rng = np.random.default_rng(0)
    rows, cap = 6000, 2000
    y = rng.choice(np.array(["a", "b", "c", "d", "e"]), rows, p=FIVE_CLASSES)
    model = np.where(rng.random(rows) < 0.3, y, "a")
    baseline = rng.choice(np.array(["a", "b", "c", "d", "e"]), rows, p=FIVE_CLASSES)

    def run(seed):
        return significance.paired_bootstrap(
            "classification", "f1_macro", y, model, baseline, seed=seed, max_rows=cap
        )

    first = run(0)
    assert first == run(0) and first["interval"] != run(1)["interval"]
    assert first["rows"] == cap and first["resamples"] == 1000
    assert first["p_value"] == pytest.approx(1 / 1001)
    assert 0 < first["interval"]["low"] < first["interval"]["high"]

"""The model card: service.card.render_card, GET /v1/models/<name>/versions/<v>/card and
`modelctl card`.

The demo metadata may lack the optional parts (curves, points, training, gate, full
per-class scores), so the full cards here are built from it plus those parts computed
on small real models."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from sklearn import datasets, metrics
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from service import card as card_module
from service.card import plots as card_plots
from service.card import render_card
from service.cli import main
from service.training.describe import estimator_description
from tests.support import CANCER, DIABETES, IRIS

SECTIONS = (
    "purpose",
    "algorithm",
    "data",
    "scores",
    "plots",
    "features",
    "training",
    "environment",
)
EVIL = "<script>alert('x')</script>"
CATEGORICAL = {
    "name": "colour",
    "dtype": "category",
    "missing": "allow",
    "categories": ["red", "green", "blue"],
    "unknown_category": "reject",
    "stats": {"missing_rate": 0.02, "category_shares": {"red": 0.5, "green": 0.3, "blue": 0.18}},
}


# -- metadata with every optional part ----------------------------------------------------


def classification_curves(dataset, positive_only: bool) -> tuple[dict, dict]:
    """ROC and precision-recall curves and per-class scores of a small fitted model."""
    X_train, X_test, y_train, y_test = train_test_split(
        dataset.data, dataset.target, test_size=0.3, random_state=0, stratify=dataset.target
    )
    model = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=500))])
    model.fit(X_train, y_train)
    probabilities = model.predict_proba(X_test)
    labels = [str(n) for n in dataset.target_names]
    roc, pr = [], []
    for i in [1] if positive_only else range(len(labels)):
        truth = (y_test == i).astype(int)
        fpr, tpr, _ = metrics.roc_curve(truth, probabilities[:, i])
        precision, recall, _ = metrics.precision_recall_curve(truth, probabilities[:, i])
        roc.append(
            {
                "label": labels[i],
                "auc": float(metrics.roc_auc_score(truth, probabilities[:, i])),
                "fpr": fpr.tolist(),
                "tpr": tpr.tolist(),
            }
        )
        pr.append(
            {
                "label": labels[i],
                "average_precision": float(
                    metrics.average_precision_score(truth, probabilities[:, i])
                ),
                "precision": precision.tolist(),
                "recall": recall.tolist(),
            }
        )
    p, r, f, s = metrics.precision_recall_fscore_support(y_test, model.predict(X_test))
    per_class = {
        label: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
            "false_positive_rate": 0.01 * i,
            "false_negative_rate": 0.02 * i,
        }
        for i, label in enumerate(labels)
    }
    return {"roc": roc, "precision_recall": pr}, per_class


def add_optional_parts(meta: dict) -> dict:
    primary = meta["scores"]["primary_metric"]
    test = meta["scores"]["test"]
    meta["scores"]["method"] = "holdout"
    meta["scores"]["gate"] = {
        "metric": primary,
        "higher_is_better": True,
        "model": test["model"][primary],
        "baseline": test["baseline"][primary],
        "baseline_strategy": "stratified",
        "baseline_chosen_by": "strongest on the validation rows",
        "baselines": {"most_frequent": 0.1667, "stratified": test["baseline"][primary]},
        "improvement": test["model"][primary] - test["baseline"][primary],
        "margin": 0.05,
        "alpha": 0.05,
        "significance": {
            "method": "paired bootstrap, stratified by class",
            "p_value": 0.000999,
            "interval": {"low": 0.41, "high": 0.62, "level": 0.9},
            "resamples": 1000,
            "rows": 30,
            "rows_from": "validation",
            "seed": 0,
        },
        "passed": True,
        "forced": False,
        "reason": "beats the baseline by more than the margin",
    }
    meta["training"] = {
        "duration_seconds": 12.5,
        "warnings": ["ConvergenceWarning: lbfgs failed to converge"],
        "dropped_columns": [{"column": "row_id", "reason": "unique per row"}],
        "search": {
            "kind": "grid",
            "folds": 5,
            "candidates": 6,
            "best_params": {"model__C": 0.5},
            "best_score": 0.9512,
            "scoring": primary,
        },
        "forced": None,
    }
    meta["input"]["features"].append(copy.deepcopy(CATEGORICAL))
    return meta


@pytest.fixture
def iris_full(store) -> dict:
    meta = copy.deepcopy(store.metadata(IRIS, 1))
    curves, per_class = classification_curves(datasets.load_iris(), positive_only=False)
    meta["scores"]["test"]["curves"] = curves
    meta["scores"]["test"]["model"]["per_class"] = per_class
    return add_optional_parts(meta)


@pytest.fixture
def cancer_full(store) -> dict:
    meta = copy.deepcopy(store.metadata(CANCER, 1))
    curves, per_class = classification_curves(datasets.load_breast_cancer(), positive_only=True)
    meta["scores"]["test"]["curves"] = curves
    meta["scores"]["test"]["model"]["per_class"] = per_class
    return add_optional_parts(meta)


@pytest.fixture
def diabetes_full(store) -> dict:
    meta = copy.deepcopy(store.metadata(DIABETES, 1))
    data = datasets.load_diabetes()
    X_train, X_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.2, random_state=0
    )
    predicted = Ridge().fit(X_train, y_train).predict(X_test)
    meta["scores"]["test"]["points"] = {"actual": y_test.tolist(), "predicted": predicted.tolist()}
    return add_optional_parts(meta)


def old_metadata(meta: dict) -> dict:
    """Metadata as older versions wrote it: no curves, points, training, gate, per-class."""
    meta = copy.deepcopy(meta)
    for key in ("training",):
        meta.pop(key, None)
    meta["scores"].pop("gate", None)
    meta["scores"].pop("method", None)
    for split in ("validation", "test"):
        for side in ("model", "baseline"):
            meta["scores"][split][side].pop("per_class", None)
        meta["scores"][split].pop("curves", None)
        meta["scores"][split].pop("points", None)
    return meta


def section(html: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', html, flags=re.S)
    assert match, f"no section {section_id}"
    return match[1]


def figure(html: str, figure_id: str) -> str:
    match = re.search(rf'<figure id="{figure_id}"[^>]*>(.*?)</figure>', html, flags=re.S)
    assert match, f"no figure {figure_id}"
    return match[1]


def svg_titles(html: str) -> list[str]:
    return re.findall(r"<svg[^>]*><title>([^<]*)</title>", html)


def svg_texts(fragment: str) -> list[str]:
    return [t for t in re.findall(r"<text[^>]*>([^<]*)</text>", fragment)]


# -- the page -----------------------------------------------------------------------------


@pytest.mark.parametrize("meta_fixture", ["iris_full", "cancer_full", "diabetes_full"])
def test_every_section_is_present(meta_fixture, request):
    meta = request.getfixturevalue(meta_fixture)
    html = render_card(meta, aliases={"production": 1})
    assert html.startswith("<!doctype html>")
    assert '<meta name="viewport"' in html
    assert f"<title>{meta['name']}@1 · model card</title>" in html
    for section_id in SECTIONS:
        assert f'<section id="{section_id}">' in html
    assert html.rstrip().endswith("</html>")
    assert "not recorded" not in html


def test_classifier_plots(iris_full):
    html = render_card(iris_full)
    features = len(iris_full["input"]["features"])
    assert html.count("<svg") == 3 + features
    titles = svg_titles(html)
    assert titles[:3] == [
        "Confusion matrix (test)",
        "ROC curves (test)",
        "Precision–recall curves (test)",
    ]
    assert titles[3:] == [
        f"Training distribution of {f['name']}" for f in iris_full["input"]["features"]
    ]
    roc_texts = svg_texts(figure(html, "plot-roc"))
    for curve in iris_full["scores"]["test"]["curves"]["roc"]:
        assert f"{curve['label']} (AUC {curve['auc']:.3f})" in roc_texts
    pr_texts = svg_texts(figure(html, "plot-precision-recall"))
    for curve in iris_full["scores"]["test"]["curves"]["precision_recall"]:
        assert f"{curve['label']} (AP {curve['average_precision']:.3f})" in pr_texts
    # The confusion matrix writes every count in its cell.
    confusion = iris_full["scores"]["test"]["model"]["confusion_matrix"]
    cells = svg_texts(figure(html, "plot-confusion-matrix"))
    counts = [str(v) for row in confusion["matrix"] for v in row]
    assert [t for t in cells if t.isdigit()] == counts
    assert "Predicted vs actual (test)" not in titles


def test_binary_classifier_has_one_curve(cancer_full):
    html = render_card(cancer_full)
    roc_texts = svg_texts(figure(html, "plot-roc"))
    legend = [t for t in roc_texts if "(AUC" in t]
    assert legend == [
        f"benign (AUC {cancer_full['scores']['test']['curves']['roc'][0]['auc']:.3f})"
    ]


def test_regressor_plots(diabetes_full):
    html = render_card(diabetes_full)
    features = len(diabetes_full["input"]["features"])
    assert html.count("<svg") == 3 + features
    assert svg_titles(html)[:3] == [
        "Predicted vs actual (test)",
        "Residuals vs predicted (test)",
        "Residual distribution (test)",
    ]
    scatter = figure(html, "plot-predicted-vs-actual")
    # One marker per test row.
    assert scatter.count("<use ") >= len(diabetes_full["scores"]["test"]["points"]["actual"])
    assert "Confusion matrix" not in html
    assert "Per class" not in html


def test_feature_plots(iris_full):
    html = render_card(iris_full)
    features = section(html, "features")
    assert features.count('class="feature"') == len(iris_full["input"]["features"])
    colour = figure(html, "feature-4")
    assert "colour" in colour
    assert {"red", "green", "blue"} <= set(svg_texts(colour))
    assert "categories <b>3</b>" in colour
    assert "missing <b>2%</b>" in colour
    sepal = figure(html, "feature-0")
    stats = iris_full["input"]["features"][0]["stats"]
    assert f"min <b>{stats['min']:.4g}</b>" in sepal
    assert f"mean <b>{stats['mean']:.4g}</b>" in sepal
    # A histogram: one bar per count.
    assert sepal.count(f"fill: {card_plots.BAR_COLOR}") == len(stats["histogram"]["counts"])


def test_no_external_resources(iris_full, diabetes_full):
    for meta in (iris_full, diabetes_full):
        html = render_card(meta)
        lowered = html.lower()
        for pattern in ('src="http', 'href="http', "url(http", "@import", "<script", "<link"):
            assert pattern not in lowered, pattern
        assert not re.search(r"\bsrc=", lowered)
        assert "<img" not in lowered


def test_ids_are_unique(iris_full):
    html = render_card(iris_full)
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    references = set(re.findall(r'href="#([^"]+)"', html))
    references |= set(re.findall(r"url\(#([^)]+)\)", html))
    assert references <= set(ids)


def test_every_metadata_string_is_escaped(iris_full):
    meta = copy.deepcopy(iris_full)
    meta["description"] = EVIL
    meta["tags"] = [EVIL]
    meta["target"] = EVIL
    meta["data"]["source"] = EVIL
    meta["algorithm"]["steps"][1]["params"]["solver"] = EVIL
    meta["training"]["warnings"] = [EVIL]
    meta["scores"]["gate"]["reason"] = EVIL
    meta["input"]["features"][0]["name"] = EVIL
    meta["input"]["features"][-1]["stats"]["category_shares"] = {EVIL: 1.0}
    meta["scores"]["test"]["curves"]["roc"][0]["label"] = EVIL
    meta["environment"]["python"] = EVIL
    html = render_card(meta, aliases={EVIL: 1})
    assert "<script" not in html.lower()
    assert "&lt;script&gt;" in section(html, "purpose")
    assert "&lt;script&gt;" in section(html, "algorithm")
    assert "&lt;script&gt;" in section(html, "training")
    assert "&lt;script&gt;" in section(html, "environment")
    # Inside the SVGs too: a legend entry and a category label.
    assert "&lt;script&gt;alert" in figure(html, "plot-roc")
    assert "&lt;script&gt;alert" in figure(html, "feature-4")


def test_text_with_dollar_signs_is_not_mathtext(iris_full):
    meta = copy.deepcopy(iris_full)
    meta["input"]["features"][-1]["stats"]["category_shares"] = {"$x$ and $": 1.0}
    html = render_card(meta)
    assert "$x$ and $" in svg_texts(figure(html, "feature-4"))


def test_older_metadata_says_not_recorded(iris_full, diabetes_full):
    html = render_card(old_metadata(iris_full))
    assert "not recorded" in figure(html, "plot-roc")
    assert "not recorded" in figure(html, "plot-precision-recall")
    assert "not recorded" not in figure(html, "plot-confusion-matrix")
    assert "Training details: not recorded." in section(html, "training")
    assert "Gate result: not recorded." in section(html, "scores")
    assert "Per-class scores: not recorded." in section(html, "scores")
    assert html.count("<svg") == 1 + len(iris_full["input"]["features"])

    html = render_card(old_metadata(diabetes_full))
    for plot in ("predicted-vs-actual", "residuals", "residual-histogram"):
        assert "not recorded" in figure(html, f"plot-{plot}")
    assert html.count("<svg") == len(diabetes_full["input"]["features"])


def test_bare_metadata_renders(store):
    """Only a name: every section still renders, each part saying it was not recorded."""
    html = render_card({"name": "bare", "version": 3})
    for section_id in SECTIONS:
        assert f'<section id="{section_id}">' in html
    assert "Algorithm: not recorded." in html
    assert "Data: not recorded." in html
    assert "Input features: not recorded." in html
    assert "Artifact: not recorded." in html
    assert "<svg" not in section(html, "features")


def test_malformed_plot_data_becomes_a_note(iris_full):
    meta = copy.deepcopy(iris_full)
    meta["scores"]["test"]["curves"]["roc"][0]["tpr"] = [0.0, 1.0]  # fpr is longer
    meta["input"]["features"][0]["stats"]["histogram"]["counts"] = [1, 2]  # 11 edges
    html = render_card(meta)
    assert "could not be drawn" in figure(html, "plot-roc")
    assert "<svg" not in figure(html, "plot-roc")
    assert "could not be drawn" in figure(html, "feature-0")
    assert "<svg" in figure(html, "plot-precision-recall")


def test_long_curves_are_thinned(cancer_full):
    meta = copy.deepcopy(cancer_full)
    n = 20_000
    grid = np.linspace(0.0, 1.0, n)
    meta["scores"]["test"]["curves"]["roc"][0].update(fpr=grid.tolist(), tpr=np.sqrt(grid).tolist())
    html = render_card(meta)
    roc = figure(html, "plot-roc")
    assert len(roc) < 40_000
    assert f"thinned to {card_plots.MAX_CURVE_POINTS} points" in roc


def test_scores_table(iris_full):
    html = render_card(iris_full)
    scores = section(html, "scores")
    rows = re.findall(r"<tr( class=\"primary\")?>(.*?)</tr>", scores.split("<tbody>")[1], re.S)
    primary_rows = [row for marker, row in rows if marker]
    assert len(primary_rows) == 1
    cells = re.findall(r'<td class="num">(.*?)</td>', primary_rows[0])
    test = iris_full["scores"]["test"]
    validation = iris_full["scores"]["validation"]
    expected = [
        validation["model"]["f1_macro"],
        validation["baseline"]["f1_macro"],
        test["model"]["f1_macro"],
        test["baseline"]["f1_macro"],
    ]
    assert cells[:4] == [f"{v:.4f}" for v in expected]
    assert "F1 (macro)" in primary_rows[0]
    assert "better" in cells[4]
    # Every scalar metric has a row; nested ones (per_class, confusion_matrix) do not.
    scalar = [k for k, v in test["model"].items() if isinstance(v, int | float)]
    for key in scalar:
        assert f"<code>{key}</code>" in scores
    assert "<code>confusion_matrix</code>" not in scores
    # The headline shows the primary test score next to its baseline.
    header = html.split("<nav")[0]
    assert f'<div class="value">{test["model"]["f1_macro"]:.4f}</div>' in header
    assert f"baseline {test['baseline']['f1_macro']:.4f}" in header


def test_per_class_table_shows_the_columns_recorded(iris_full):
    html = render_card(iris_full)
    scores = section(html, "scores")
    for label in ("Precision", "Recall", "F1", "Support", "False-positive rate"):
        assert f'<th class="num">{label}</th>' in scores
    # Older metadata recorded only the error rates per class.
    meta = copy.deepcopy(iris_full)
    for entry in meta["scores"]["test"]["model"]["per_class"].values():
        for key in ("precision", "recall", "f1", "support"):
            del entry[key]
    html = render_card(meta)
    scores = section(html, "scores")
    per_class = scores.split("Per class")[1].split("Promotion gate")[0]
    assert '<th class="num">False-positive rate</th>' in per_class
    assert '<th class="num">Precision</th>' not in per_class


def test_gate_result(iris_full):
    html = render_card(iris_full)
    assert '<span class="badge pass">passed</span>' in section(html, "scores")
    meta = copy.deepcopy(iris_full)
    meta["scores"]["gate"].update(passed=False, forced=True, reason="ship it anyway")
    html = render_card(meta)
    gate = section(html, "scores").split("Promotion gate")[1]
    assert '<span class="badge fail">failed</span>' in gate
    assert '<span class="badge forced">forced</span>' in gate
    assert "ship it anyway" in gate


def test_training_and_environment(iris_full):
    html = render_card(iris_full)
    training = section(html, "training")
    assert "12.5 s" in training
    assert "ConvergenceWarning: lbfgs failed to converge" in training
    assert "<code>row_id</code>: unique per row" in training
    assert "model__C" in training
    environment = section(html, "environment")
    assert iris_full["artifact"]["sha256"] in environment
    assert f"<code>{iris_full['environment']['scikit-learn']}</code>" in environment
    data = section(html, "data")
    assert iris_full["data"]["sha256"] in data
    assert "train 60% · validation 20% · test 20%" in data


def test_aliases_pointing_at_the_version(iris_full):
    html = render_card(iris_full, aliases={"production": 1, "staging": 2, "canary": 1})
    purpose = section(html, "purpose")
    assert '<span class="chip alias">canary</span>' in purpose
    assert '<span class="chip alias">production</span>' in purpose
    assert "staging" not in html
    html = render_card(iris_full, aliases={"staging": 2})
    assert "no alias points at this version" in section(html, "purpose")


def test_nested_algorithm():
    pipeline = Pipeline(
        [
            (
                "prepare",
                ColumnTransformer(
                    [
                        ("numbers", StandardScaler(), ["age"]),
                        ("categories", OneHotEncoder(handle_unknown="ignore"), ["colour"]),
                    ]
                ),
            ),
            ("model", LogisticRegression(C=0.25)),
        ]
    )
    meta = {"name": "nested", "version": 1, "algorithm": estimator_description(pipeline)}
    algorithm = section(render_card(meta), "algorithm")
    for class_name in ("Pipeline", "ColumnTransformer", "StandardScaler", "OneHotEncoder"):
        assert f"<strong>{class_name}</strong>" in algorithm
    assert '<span class="step-name">prepare</span>' in algorithm
    # A ColumnTransformer's parts show by name, with their columns.
    assert '<span class="step-name">categories</span>' in algorithm
    assert "<dt>columns</dt><dd><code>[&#39;colour&#39;]</code></dd>" in algorithm
    assert "&#39;ignore&#39;" in algorithm  # a string parameter, quoted
    assert "<dt>C</dt><dd><code>0.25</code></dd>" in algorithm


def test_rendering_is_deterministic(iris_full):
    assert render_card(iris_full) == render_card(copy.deepcopy(iris_full))


def test_importing_the_card_or_the_app_does_not_import_matplotlib():
    code = "import sys, service.card; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]
    code = "import sys, service.app, service.api.models; print('service.card' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def test_without_matplotlib_the_card_renders_and_says_why_plots_are_missing(iris_full, tmp_path):
    """An install without the training extra has no matplotlib: the card still renders."""
    metadata = tmp_path / "metadata.yaml"
    metadata.write_text(yaml.safe_dump(iris_full))
    code = (
        "import sys, yaml; sys.modules['matplotlib'] = None; from service.card import "
        f"render_card; print(render_card(yaml.safe_load(open({str(metadata)!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    html = out.stdout
    assert "<svg" not in html
    assert html.count(card_module.NO_MATPLOTLIB) == 1 + len(iris_full["input"]["features"])
    assert "iris-classifier" in html


# -- the route ----------------------------------------------------------------------------


@pytest.fixture
def render_calls(monkeypatch):
    calls = []
    real = card_module.render_card

    def counting(metadata, *, aliases=None):
        calls.append((metadata["name"], metadata["version"]))
        return real(metadata, aliases=aliases)

    monkeypatch.setattr(card_module, "render_card", counting)
    return calls


def test_route_serves_the_card(client, render_calls):
    response = client.get(f"/v1/models/{IRIS}/versions/1/card")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    html = response.get_data(as_text=True)
    assert '<h1>iris-classifier<span class="at">@1</span></h1>' in html
    for section_id in SECTIONS:
        assert f'<section id="{section_id}">' in html
    assert '<span class="chip alias">production</span>' in html
    assert render_calls == [(IRIS, 1)]


def test_route_caches_until_the_aliases_change(client, store, render_calls):
    first = client.get(f"/v1/models/{IRIS}/versions/1/card")
    second = client.get(f"/v1/models/{IRIS}/versions/1/card")
    assert second.status_code == 200
    assert second.get_data() == first.get_data()
    assert render_calls == [(IRIS, 1)]
    store.promote(IRIS, 1, alias="staging")
    third = client.get(f"/v1/models/{IRIS}/versions/1/card")
    assert render_calls == [(IRIS, 1), (IRIS, 1)]
    assert '<span class="chip alias">staging</span>' in third.get_data(as_text=True)
    assert "staging" not in first.get_data(as_text=True)


def test_card_cache_is_bounded():
    from service.api.cache import LRUCache

    cache = LRUCache(2)
    cache.put(("a",), "A")
    cache.put(("b",), "B")
    assert cache.get(("a",)) == "A"  # now the most recently used
    cache.put(("c",), "C")
    assert len(cache) == 2
    assert cache.get(("b",)) is None
    assert cache.get(("a",)) == "A"
    assert cache.get(("c",)) == "C"


def test_route_by_alias_and_default(client, render_calls):
    response = client.get(f"/v1/models/{IRIS}/card")
    assert response.status_code == 200
    assert "<title>iris-classifier@1 · model card</title>" in response.get_data(as_text=True)
    assert client.get(f"/v1/models/{IRIS}@production/card").status_code == 200
    assert client.get(f"/v1/models/{IRIS}@1/card").status_code == 200
    assert render_calls == [(IRIS, 1)]  # the same card each time


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/models/no-such-model/versions/1/card", 404, "model_not_found"),
        (f"/v1/models/{IRIS}/versions/9/card", 404, "version_not_found"),
        ("/v1/models/no-such-model/card", 404, "model_not_found"),
        (f"/v1/models/{IRIS}@staging/card", 404, "alias_not_found"),
        (f"/v1/models/{IRIS}@9/card", 404, "version_not_found"),
        ("/v1/models/Bad_Name/versions/1/card", 400, "invalid_model_name"),
        (f"/v1/models/{IRIS}/versions/0/card", 400, "invalid_version"),
        (f"/v1/models/{IRIS}/versions/one/card", 404, "not_found"),
    ],
)
def test_route_errors_are_json(client, render_calls, path, status, code):
    response = client.get(path)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert response.json["error"]["code"] == code
    assert render_calls == []


# -- the command line ---------------------------------------------------------------------


def test_cli_writes_the_card(store, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    path = tmp_path / "out" / "card.html"
    code = main(["card", f"{IRIS}@1", "--output", str(path), "--store", str(store.root)])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out == f"wrote {path} ({IRIS}@1)\n"
    html = path.read_text(encoding="utf-8")
    assert "<title>iris-classifier@1 · model card</title>" in html
    assert '<span class="chip alias">production</span>' in html
    assert [p.name for p in path.parent.iterdir()] == ["card.html"]  # no temporary left


def test_cli_resolves_aliases(store, tmp_path, capsys):
    path = tmp_path / "card.html"
    code = main(["card", DIABETES, "--output", str(path), "--store", str(store.root)])
    assert code == 0
    assert capsys.readouterr().out == f"wrote {path} ({DIABETES}@1)\n"
    assert "Predicted vs actual (test)" in path.read_text(encoding="utf-8")


def test_cli_unknown_version_writes_nothing(store, tmp_path, capsys):
    path = tmp_path / "card.html"
    code = main(["card", f"{IRIS}@7", "--output", str(path), "--store", str(store.root)])
    assert code == 1
    assert "has no version 7" in capsys.readouterr().err
    assert not path.exists()

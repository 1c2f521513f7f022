"""One training run: spec and data in, a published, documented, baseline-checked version out.

Read and check the data; split train / validation / test once with the seed; fit on
train (searching hyperparameters if the spec asks); score validation for the candidate
and the Dummy baselines, the spec's or the strongest of them; refuse a candidate that
does not beat the baseline by more than the margin, significantly (a paired bootstrap,
``significance``); refit on train+validation; score the test set once; convert the model
to ONNX and check it against the pickle on the validation rows (``optimize``); publish
with complete metadata (and model.onnx when it matched) and point ``staging`` at the new
version.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import time
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.preprocessing import OneHotEncoder
from tqdm import tqdm

from service.errors import BaselineNotBeaten, IntegrityError
from service.formatting import format_number
from service.runtime.model import LoadedModel
from service.store import ModelStore
from service.store.promotion import higher_is_better
from service.training import data as data_io
from service.training import evaluation, optimize, significance
from service.training import pipeline as pipelines
from service.training import plan as planning
from service.training import split as splits
from service.training.describe import estimator_description, plain
from service.training.profile import categorical_feature, numeric_feature
from service.training.spec import TrainingSpec
from service.training.split import Split, held_out_instances, split_rows

log = logging.getLogger(__name__)

STAGING = "staging"
GOLDEN_ROWS = 5


@dataclasses.dataclass
class TrainingResult:
    name: str
    version: int | None
    metadata: dict[str, Any]
    gate: dict[str, Any]
    warnings: list[str]


@dataclasses.dataclass
class Validation:
    """The candidate and the baseline on the same held-out rows (the validation rows, or
    each row out of its cross-validation fold)."""

    scores: dict[str, Any]  # scores.validation of the metadata
    baselines: dict[str, float | None]  # each strategy tried: its primary metric
    strategy: str  # the baseline's: the spec's, or the strongest of ``baselines``
    chosen_by: str
    y: pd.Series
    model_output: np.ndarray | None  # what the primary metric is computed from
    baseline_output: np.ndarray | None
    classes: np.ndarray | None
    rows: str  # which rows: "validation" or "out-of-fold"


def train(
    spec: TrainingSpec,
    store: ModelStore,
    *,
    force_reason: str | None = None,
    aliases: tuple[str, ...] = (STAGING,),
    progress: bool = False,
    publish: bool = True,
    onnx: bool = True,
) -> TrainingResult:
    """Run the spec; publish unless ``publish`` is false. ``force_reason`` publishes a
    candidate that does not beat the baseline, recording why. ``onnx``: publish an ONNX
    form next to the pickle where it matches it (metadata ``backends.onnx`` says)."""
    started = time.perf_counter()
    stages = [
        "read data",
        "check spec",
        "split",
        "fit",
        "validate",
        "refit",
        "test",
        "compile",
        "publish",
    ]
    bar = tqdm(total=len(stages), desc=spec.name, unit="step", disable=not progress, leave=False)

    def stage(index: int, text: str = "") -> None:
        bar.n = index
        bar.set_postfix_str(text or stages[index], refresh=True)

    try:
        stage(0)
        dataset = data_io.read(spec)
        stage(1)
        plan = planning.make(spec, dataset.frame)
        unfitted = pipelines.build(spec, plan)
        candidate = pipelines.with_search(spec, unfitted)
        stage(2)
        split = split_rows(spec, plan)
        stage(3, _fit_text(candidate))
        fit_started = time.perf_counter()
        candidate.fit(pipelines.model_input(unfitted, split.X_train), split.y_train)
        fit_seconds = time.perf_counter() - fit_started
        best = candidate.best_estimator_ if spec.search else candidate
        stage(4)
        validation = _validate(spec, best, split)
        gate = _gate(spec, validation, force_reason)
        if not gate["passed"] and not gate["forced"]:
            raise BaselineNotBeaten(gate["message"], details=gate)
        stage(5)
        final = clone(best).fit(pipelines.model_input(unfitted, split.X_rest), split.y_rest)
        final_baseline = _baseline(spec, validation.strategy).fit(split.X_rest, split.y_rest)
        stage(6)
        test_input = pipelines.model_input(unfitted, split.X_test)
        test = {
            "model": evaluation.score(spec.task, final, test_input, split.y_test),
            "baseline": evaluation.score(spec.task, final_baseline, split.X_test, split.y_test),
        }
        if spec.classification:
            curves = evaluation.curves(final, test_input, split.y_test)
            if curves is not None:
                test["curves"] = curves
        else:
            test["points"] = evaluation.residual_points(
                final, test_input, split.y_test, spec.evaluation.seed
            )
        metadata = _metadata(
            spec,
            dataset,
            plan,
            split,
            final,
            unfitted,
            validation=validation.scores,
            test=test,
            gate=gate,
            search=_search_summary(spec, candidate),
            fit_seconds=fit_seconds,
            duration=time.perf_counter() - started,
        )
        version = None
        if publish:
            files: dict[str, bytes] = {}
            if onnx:
                stage(7)
                instances, split_name = held_out_instances(plan, split)
                compiled = optimize.compile_model(
                    final,
                    metadata,
                    instances + metadata["golden"]["instances"],
                    source=f"{split_name}+golden",
                )
                metadata["backends"] = {"onnx": compiled.entry}
                files = compiled.files()
            stage(8)
            artifact = pickle.dumps(final, protocol=pickle.HIGHEST_PROTOCOL)
            # LoadedModel replays the golden rows through the serving path: if the
            # training and serving preparation of inputs ever disagree, nothing is published.
            version = store.publish(
                spec.name,
                artifact,
                metadata,
                aliases=aliases,
                verify=verify_loaded,
                extra_files=files,
            )
            metadata = store.metadata(spec.name, version)
        bar.n = len(stages)
        bar.refresh()
    finally:
        bar.close()
    return TrainingResult(spec.name, version, metadata, gate, plan.warnings)


def verify_loaded(artifact) -> None:
    """What publish checks in the version's temporary directory: it loads and replays its
    golden rows, through onnxruntime when the metadata says the ONNX form matched."""
    loaded = LoadedModel(artifact)
    onnx_entry = (artifact.metadata.get("backends") or {}).get("onnx") or {}
    if onnx_entry.get("available") and loaded.backend.name != "onnxruntime":
        raise IntegrityError(
            f"{loaded.name}: the ONNX form checked at publish does not serve: "
            + "; ".join(loaded.warnings)
        )


def _baseline(spec: TrainingSpec, strategy: str):
    return evaluation.make_baseline(spec.task, strategy, spec.evaluation.seed)


def _validate(spec: TrainingSpec, best, split: Split) -> Validation:
    """Validation scores of the candidate and of each baseline strategy, on the same rows;
    the baseline is the spec's strategy, or the strongest on the primary metric."""
    task, metric = spec.task, spec.evaluation.primary_metric
    strategies = evaluation.baseline_strategies(task, spec.evaluation.baseline)
    classes = np.unique(split.y_rest) if spec.classification else None
    if spec.evaluation.method == "cross_validation":
        folds = _folds(spec)
        model, model_std, model_output = evaluation.cross_validated_scores(
            task,
            clone(best),
            pipelines.model_input(best, split.X_rest),
            split.y_rest,
            folds,
            metric,
        )
        runs = {
            strategy: evaluation.cross_validated_scores(
                task, _baseline(spec, strategy), split.X_rest, split.y_rest, folds, metric
            )
            for strategy in strategies
        }
        tables = {strategy: run[0] for strategy, run in runs.items()}
        strategy = _strongest(metric, strategies, tables)
        baseline, baseline_std, baseline_output = runs[strategy]
        # Means over the folds; their spread next to them, outside the metric tables.
        scores = {
            "model": model,
            "baseline": baseline,
            "folds": folds.get_n_splits(),
            "std": {"model": model_std, "baseline": baseline_std},
        }
        y, rows = split.y_rest, "out-of-fold"
    else:
        fitted = {
            strategy: _baseline(spec, strategy).fit(split.X_train, split.y_train)
            for strategy in strategies
        }
        tables = {
            strategy: evaluation.score(task, baseline, split.X_validation, split.y_validation)
            for strategy, baseline in fitted.items()
        }
        strategy = _strongest(metric, strategies, tables)
        model_input = pipelines.model_input(best, split.X_validation)
        scores = {
            "model": evaluation.score(task, best, model_input, split.y_validation),
            "baseline": tables[strategy],
        }
        model_output = evaluation.outputs(metric, best, model_input, classes)
        baseline_output = evaluation.outputs(metric, fitted[strategy], split.X_validation, classes)
        y, rows = split.y_validation, "validation"
    chosen_by = (
        "the spec"
        if spec.evaluation.baseline
        else f"strongest {metric} on the {rows} rows of " + ", ".join(strategies)
    )
    return Validation(
        scores=scores,
        baselines={strategy: table.get(metric) for strategy, table in tables.items()},
        strategy=strategy,
        chosen_by=chosen_by,
        y=y,
        model_output=model_output,
        baseline_output=baseline_output,
        classes=classes,
        rows=rows,
    )


def _strongest(metric: str, strategies: tuple[str, ...], tables: dict[str, dict]) -> str:
    scores = {strategy: tables[strategy].get(metric) for strategy in strategies}
    return evaluation.strongest(metric, scores) or strategies[0]


def _folds(spec: TrainingSpec):
    seed, folds = spec.evaluation.seed, spec.evaluation.folds
    if spec.classification and spec.evaluation.stratify:
        return StratifiedKFold(folds, shuffle=True, random_state=seed)
    return KFold(folds, shuffle=True, random_state=seed)


def _gate(spec: TrainingSpec, validation: Validation, force_reason: str | None) -> dict[str, Any]:
    """Pass when the candidate beats the baseline by more than the margin on the primary
    metric and a paired bootstrap of that lead has a p-value below alpha."""
    evaluation_spec = spec.evaluation
    metric, margin, alpha = (
        evaluation_spec.primary_metric,
        evaluation_spec.margin,
        evaluation_spec.alpha,
    )
    model_score = validation.scores["model"].get(metric)
    baseline_score = validation.scores["baseline"].get(metric)
    outputs = (validation.model_output, validation.baseline_output)
    tested = None
    if model_score is None or baseline_score is None or any(o is None for o in outputs):
        passed, gained = False, None
        message = (
            f"{spec.name}: no validation {metric} to compare with the baseline "
            "(does the estimator give probabilities?)"
        )
    else:
        gained = evaluation.improvement(metric, model_score, baseline_score)
        tested = significance.paired_bootstrap(
            spec.task,
            metric,
            validation.y,
            *outputs,
            classes=validation.classes,
            margin=margin,
            alpha=alpha,
            seed=evaluation_spec.seed,
        )
        tested["rows_from"] = validation.rows
        beats, significant = gained > margin, tested["p_value"] < alpha
        passed = beats and significant
        against = f"the baseline's {format_number(baseline_score)} ({validation.strategy})"
        score = format_number(model_score)
        evidence = (
            f"p = {format_number(tested['p_value'], 3)}, {tested['method']}, {tested['resamples']} "
            f"resamples of {tested['rows']} {validation.rows} rows"
        )
        if not beats:
            message = (
                f"{spec.name}: validation {metric} {score} does not beat {against} "
                f"by more than the margin {format_number(margin)} ({evidence})"
            )
        elif not significant:
            message = (
                f"{spec.name}: validation {metric} {score} beats {against} by "
                f"{format_number(gained)}, more than the margin {format_number(margin)}, but not "
                f"significantly: {evidence}; not below alpha {format_number(alpha)}"
            )
        else:
            message = (
                f"{spec.name}: validation {metric} {score} beats {against} by more than the "
                f"margin {format_number(margin)}, significantly ({evidence} < alpha "
                f"{format_number(alpha)})"
            )
        if not passed:
            message += "; not published (use --force REASON to publish anyway)"
    return {
        "metric": metric,
        "higher_is_better": higher_is_better(metric),
        "model": model_score,
        "baseline": baseline_score,
        "baseline_strategy": validation.strategy,
        "baseline_chosen_by": validation.chosen_by,
        "baselines": validation.baselines,
        "improvement": None if gained is None else round(gained, 6),
        "margin": margin,
        "alpha": alpha,
        "significance": tested,
        "passed": passed,
        "forced": not passed and force_reason is not None,
        "reason": force_reason if not passed else None,
        "message": message,
    }


def _search_summary(spec: TrainingSpec, candidate) -> dict[str, Any] | None:
    if spec.search is None:
        return None
    best_score = float(candidate.best_score_)
    if evaluation.scorer_name(spec.task, spec.evaluation.primary_metric).startswith("neg_"):
        best_score = -best_score
    return {
        "kind": spec.search.kind,
        "folds": spec.search.folds,
        "candidates": len(candidate.cv_results_["params"]),
        "scoring": spec.evaluation.primary_metric,
        "best_score": round(best_score, 6),
        "best_params": {
            key.removeprefix(f"{pipelines.MODEL_STEP}__"): plain(value)
            for key, value in candidate.best_params_.items()
        },
    }


def _fit_text(candidate) -> str:
    if hasattr(candidate, "param_grid") or hasattr(candidate, "param_distributions"):
        return f"search ({type(candidate).__name__}, {candidate.cv.get_n_splits()} folds)"
    return "fit"


def _metadata(
    spec: TrainingSpec,
    dataset: data_io.Dataset,
    plan: planning.Plan,
    split: Split,
    final,
    unfitted,
    *,
    validation: dict[str, Any],
    test: dict[str, Any],
    gate: dict[str, Any],
    search: dict[str, Any] | None,
    fit_seconds: float,
    duration: float,
) -> dict[str, Any]:
    evaluation_spec = spec.evaluation
    holdout = evaluation_spec.method == "holdout"
    stratified = spec.classification and evaluation_spec.stratify
    rows = {
        "total": plan.rows_total,
        "dropped_missing_target": plan.dropped_missing_target,
        "train": len(split.X_train),
        "validation": len(split.X_validation) if holdout else 0,
        "test": len(split.X_test),
    }
    if holdout:
        split_text = {
            "method": "stratified holdout" if stratified else "random holdout",
            "fractions": {
                "train": round(1 - evaluation_spec.test_size - evaluation_spec.validation_size, 6),
                "validation": evaluation_spec.validation_size,
                "test": evaluation_spec.test_size,
            },
        }
    else:
        split_text = {
            "method": ("stratified " if stratified else "")
            + f"{evaluation_spec.folds}-fold cross-validation, then a held-out test set",
            "folds": evaluation_spec.folds,
            "fractions": {
                "cross_validated": 1 - evaluation_spec.test_size,
                "test": evaluation_spec.test_size,
            },
        }
    description = spec.description or (
        f"{spec.task.capitalize()} of {spec.target} from {dataset.source}."
    )
    metadata: dict[str, Any] = {
        "schema_version": 1,
        "name": spec.name,
        "description": description,
        "tags": list(spec.tags),
        "task": spec.task,
        "target": spec.target,
        "algorithm": estimator_description(final),
        "data": {
            "source": dataset.source,
            "sha256": dataset.sha256,
            "files": dataset.files,
            "rows": rows,
            "split": {**split_text, "seed": evaluation_spec.seed, "final_fit": "train+validation"},
        },
        "input": {"features": _features(plan, split, final)},
        "scores": {
            "primary_metric": evaluation_spec.primary_metric,
            "method": evaluation_spec.method,
            "baseline": evaluation.describe_baseline(
                spec.task,
                gate["baseline_strategy"],
                evaluation_spec.seed,
                chosen_by=gate["baseline_chosen_by"],
            ),
            "gate": gate,
            "validation": validation,
            "test": test,
        },
        "golden": _golden(plan, split, final, unfitted, spec.task),
        "training": {
            "spec": spec.source_text,
            "spec_file": spec.spec_file.name if spec.spec_file else None,
            "duration_seconds": round(duration, 3),
            "fit_seconds": round(fit_seconds, 3),
            "warnings": list(plan.warnings),
            "dropped_columns": plan.dropped_columns,
            "search": search,
            "forced": {"reason": gate["reason"]} if gate["forced"] else None,
        },
    }
    if spec.classification:
        metadata["classes"] = [plain(c) for c in final.classes_]
    return metadata


def _features(plan: planning.Plan, split: Split, final) -> list[dict[str, Any]]:
    """The input schema, with statistics of the rows the final model learned from."""
    infrequent = _infrequent_categories(final)
    missing = plan.missing.loc[split.X_rest.index]
    entries = []
    for feature in plan.features:
        values = split.X_rest[feature.name].to_numpy()
        if feature.kind == "numeric":
            entry = numeric_feature(
                feature.name, values, dtype=feature.dtype, missing=feature.missing
            )
            entry["imputation"] = (
                feature.impute
                if feature.impute != "constant"
                else f"constant {feature.fill_value:g}"
            )
            entries.append(entry)
            continue
        present = pd.Series(values).dropna().astype(str)
        entry = {
            "name": feature.name,
            "dtype": "category",
            "missing": feature.missing,
            "categories": sorted(present.unique().tolist()),
            "unknown_category": "reject" if feature.handle_unknown == "error" else "allow",
            "handle_unknown": feature.handle_unknown,
        }
        if feature.impute != "none":
            entry["fill_value"] = feature.fill_value
            entry["imputation"] = feature.impute
        if infrequent.get(feature.name):
            entry["infrequent_categories"] = infrequent[feature.name]
        entry["stats"] = categorical_feature(
            feature.name, present.to_numpy(), missing_values=int(missing[feature.name].sum())
        )
        entries.append(entry)
    return entries


def _infrequent_categories(final) -> dict[str, list[str]]:
    preprocess = final.steps[0][1]
    if not isinstance(preprocess, ColumnTransformer):
        return {}
    found: dict[str, list[str]] = {}
    for _, transformer, columns in preprocess.transformers_:
        if not isinstance(transformer, OneHotEncoder):
            continue
        try:
            per_column = transformer.infrequent_categories_
        except AttributeError:  # no min_frequency / max_categories: nothing is infrequent
            continue
        for column, rare in zip(columns, per_column, strict=True):
            if rare is not None and len(rare):
                found[column] = [str(c) for c in rare]
    return found


def _golden(plan: planning.Plan, split: Split, final, unfitted, task: str) -> dict[str, Any]:
    """A few test rows and the outputs they give now, replayed whenever the model loads."""
    rows = split.X_test.iloc[:GOLDEN_ROWS]
    model_input = pipelines.model_input(unfitted, rows)
    instances = splits.instances(rows, plan)
    golden: dict[str, Any] = {
        "instances": instances,
        "predictions": [plain(v) for v in final.predict(model_input)],
        "probabilities": None,
        "tolerance": {"rtol": 1e-6, "atol": 1e-9},
    }
    if task == "classification" and hasattr(final, "predict_proba"):
        golden["probabilities"] = np.asarray(final.predict_proba(model_input)).tolist()
    return golden

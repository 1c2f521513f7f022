"""A fitted estimator or Pipeline as an ONNX graph, through skl2onnx.

Inputs follow what the runtime's ``InputSchema`` produces: one ``[N, F]`` tensor named
``X`` when the pipeline takes a plain matrix, else one ``[N, 1]`` tensor per feature,
named after it (strings for categories), which a ColumnTransformer picks by name.

skl2onnx converts in float32 or, with double inputs, in float64 where its converters
allow it. Two of them do not, and are replaced here for the double conversion only:

- SimpleImputer becomes ONNX's ``Imputer``, which onnxruntime runs on floats only: here it
  is ``Where(IsNaN(X), statistics, X)`` in double.
- Tree ensembles (forests, single trees, gradient boosting regression) become
  ``TreeEnsembleRegressor``/``TreeEnsembleClassifier`` of ai.onnx.ml opset 1, whose
  outputs are float32 (and skl2onnx rounds the classifier's thresholds to float32 too):
  here they are ai.onnx.ml opset 5 ``TreeEnsemble`` nodes with double thresholds, leaf
  values and outputs. scikit-learn compares ``float32(x) <= threshold``; each threshold is
  moved to the double ``w`` with ``float32(x) <= threshold  <=>  x <= w`` (skl2onnx's own
  ``sklearn_threshold``), so every split decides as in scikit-learn.

Nothing here knows the store or the service: bytes in, bytes out.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnxruntime
from sklearn.base import is_classifier
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.tree import (
    DecisionTreeClassifier,
    DecisionTreeRegressor,
    ExtraTreeClassifier,
    ExtraTreeRegressor,
)

from service.errors import ExtraNotInstalled

# The converter is training's (the `training` extra): a server-only install serves the
# ONNX form with onnxruntime and never imports this module, so it lacks both.
try:
    import onnx
    import skl2onnx
    from onnx import TensorProto, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import (
        DoubleTensorType,
        FloatTensorType,
        StringTensorType,
        guess_numpy_type,
    )
    from skl2onnx.common.tree_ensemble import sklearn_threshold
    from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer
except ModuleNotFoundError as missing:
    raise ExtraNotInstalled(
        "training", missing.name, "Training a model or converting it to ONNX"
    ) from missing

MATRIX_INPUT = "X"
PRECISIONS = ("double", "float32")
_TENSOR_TYPES = {"double": DoubleTensorType, "float32": FloatTensorType}
# skl2onnx 1.20 writes ai.onnx.ml up to opset 3; a graph holding the TreeEnsemble nodes
# written here declares opset 5, where TreeEnsemble is defined (see convert()).
TARGET_OPSET = {"": 21, "ai.onnx.ml": 3}
TREE_ENSEMBLE_OPSET = 5
_ML = "ai.onnx.ml"
_AVERAGE, _SUM = 0, 1


@dataclasses.dataclass
class Converted:
    data: bytes
    precision: str  # double | float32
    layout: str  # matrix | columns
    opset: dict[str, int]


def versions() -> dict[str, str]:
    return {
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def layout_of(estimator: Any) -> str:
    """``columns`` for a pipeline that picks its columns by name, else ``matrix``."""
    if getattr(estimator, "feature_names_in_", None) is not None:
        return "columns"
    first = estimator.steps[0][1] if isinstance(estimator, Pipeline) else estimator
    return "columns" if isinstance(first, ColumnTransformer) else "matrix"


def convert(estimator: Any, features: list[dict[str, Any]], precision: str) -> Converted:
    """The estimator as ONNX bytes with inputs of this precision. Raises whatever the
    converter raises for what it cannot convert."""
    tensor = _TENSOR_TYPES[precision]
    layout = layout_of(estimator)
    if layout == "matrix":
        initial_types = [(MATRIX_INPUT, tensor([None, len(features)]))]
    else:
        initial_types = [
            (f["name"], (StringTensorType if f["dtype"] == "category" else tensor)([None, 1]))
            for f in features
        ]
    options = {}
    classifier = _final_step(estimator)
    if is_classifier(classifier):
        # Probabilities as one [N, n_classes] tensor, not a list of {class: p} maps.
        options[id(classifier)] = {"zipmap": False}
    double = precision == "double"
    model = convert_sklearn(
        estimator,
        initial_types=initial_types,
        options=options,
        target_opset=TARGET_OPSET,
        custom_conversion_functions=_DOUBLE_CONVERTERS if double else None,
        custom_shape_calculators=_DOUBLE_SHAPES if double else None,
    )
    if any(node.op_type == "TreeEnsemble" and node.domain == _ML for node in model.graph.node):
        for entry in model.opset_import:
            if entry.domain == _ML:
                entry.version = max(entry.version, TREE_ENSEMBLE_OPSET)
    opset = {entry.domain or "ai.onnx": int(entry.version) for entry in model.opset_import}
    return Converted(model.SerializeToString(), precision, layout, opset)


def _final_step(estimator: Any) -> Any:
    while isinstance(estimator, Pipeline):
        estimator = estimator.steps[-1][1]
    return estimator


# -- double-precision converters ------------------------------------------------------


def _convert_imputer(scope, operator, container) -> None:
    imputer = operator.raw_operator
    statistics = np.asarray(imputer.statistics_, dtype=np.float64)
    plain = (
        guess_numpy_type(operator.inputs[0].type) == np.float64
        and not imputer.add_indicator
        and _is_nan(imputer.missing_values)
        and not np.isnan(statistics).any()  # all-missing columns scikit-learn drops
    )
    if not plain:
        convert_sklearn_imputer(scope, operator, container)
        return
    names = [variable.full_name for variable in operator.inputs]
    source = names[0]
    if len(names) > 1:
        source = scope.get_unique_variable_name("imputer_input")
        container.add_node("Concat", names, [source], axis=1)
    fill = scope.get_unique_variable_name("imputed_values")
    container.add_initializer(fill, TensorProto.DOUBLE, [len(statistics)], statistics.tolist())
    missing = scope.get_unique_variable_name("missing")
    container.add_node("IsNaN", [source], [missing])
    container.add_node("Where", [missing, fill, source], [operator.outputs[0].full_name])


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def _trees(model: Any) -> tuple[list[Any], int]:
    """The fitted trees and how their outputs combine (average or sum)."""
    if isinstance(model, (DecisionTreeClassifier, DecisionTreeRegressor)):
        return [model.tree_], _SUM
    if isinstance(model, GradientBoostingRegressor):
        return [stage[0].tree_ for stage in model.estimators_], _SUM
    return [tree.tree_ for tree in model.estimators_], _AVERAGE


class _Ensemble:
    """The attributes of one ai.onnx.ml TreeEnsemble node, built tree by tree."""

    def __init__(self) -> None:
        self.roots: list[int] = []
        self.features: list[int] = []
        self.splits: list[float] = []
        self.true_ids: list[int] = []
        self.true_leafs: list[int] = []
        self.false_ids: list[int] = []
        self.false_leafs: list[int] = []
        self.missing_true: list[int] = []
        self.leaf_targets: list[int] = []
        self.leaf_weights: list[float] = []

    def add(self, tree: Any, target: int, leaf_value) -> None:
        left, right = tree.children_left, tree.children_right
        go_left = getattr(tree, "missing_go_to_left", None)
        interior, leaves = {}, {}
        for node in range(tree.node_count):
            if left[node] == -1:
                leaves[node] = len(self.leaf_targets) + len(leaves)
            else:
                interior[node] = len(self.features) + len(interior)
        if not interior:  # a tree that is one leaf: a split whose both sides are that leaf
            self.roots.append(len(self.features))
            self._split(0, 0.0, (leaves[0], 1), (leaves[0], 1), 0)
        else:
            self.roots.append(interior[0])
            for node in interior:
                self._split(
                    int(tree.feature[node]),
                    float(sklearn_threshold(tree.threshold[node], np.float64, "BRANCH_LEQ")),
                    (leaves[left[node]], 1) if left[node] in leaves else (interior[left[node]], 0),
                    (leaves[right[node]], 1)
                    if right[node] in leaves
                    else (interior[right[node]], 0),
                    int(go_left[node]) if go_left is not None else 0,
                )
        for node in leaves:
            self.leaf_targets.append(target)
            self.leaf_weights.append(float(leaf_value(node)))

    def _split(self, feature, split, true, false, missing_true) -> None:
        self.features.append(feature)
        self.splits.append(split)
        self.true_ids.append(true[0])
        self.true_leafs.append(true[1])
        self.false_ids.append(false[0])
        self.false_leafs.append(false[1])
        self.missing_true.append(missing_true)

    def node(self, scope, container, source: str, output: str, n_targets: int, mode: int):
        count = len(self.features)
        container.add_node(
            "TreeEnsemble",
            [source],
            [output],
            op_domain=_ML,
            op_version=TARGET_OPSET[_ML],  # declared as opset 5 once converted
            name=scope.get_unique_operator_name("TreeEnsemble"),
            n_targets=n_targets,
            aggregate_function=mode,
            post_transform=0,
            tree_roots=self.roots,
            nodes_modes=helper.make_tensor(
                "nodes_modes", TensorProto.UINT8, [count], np.zeros(count, np.uint8)
            ),
            nodes_featureids=self.features,
            nodes_splits=helper.make_tensor(
                "nodes_splits", TensorProto.DOUBLE, [count], np.array(self.splits)
            ),
            nodes_truenodeids=self.true_ids,
            nodes_trueleafs=self.true_leafs,
            nodes_falsenodeids=self.false_ids,
            nodes_falseleafs=self.false_leafs,
            nodes_missing_value_tracks_true=self.missing_true,
            leaf_targetids=self.leaf_targets,
            leaf_weights=helper.make_tensor(
                "leaf_weights",
                TensorProto.DOUBLE,
                [len(self.leaf_weights)],
                np.array(self.leaf_weights),
            ),
        )


def _double_input(scope, operator, container, fallback) -> str | None:
    """The input's name when it is one double tensor; else converts with ``fallback``."""
    if len(operator.inputs) != 1 or guess_numpy_type(operator.inputs[0].type) != np.float64:
        fallback(scope, operator, container)
        return None
    return operator.inputs[0].full_name


def _convert_tree_regressor(scope, operator, container) -> None:
    from skl2onnx.operator_converters.gradient_boosting import (
        convert_sklearn_gradient_boosting_regressor,
    )
    from skl2onnx.operator_converters.random_forest import (
        convert_sklearn_random_forest_regressor_converter,
    )

    model = operator.raw_operator
    fallback = (
        convert_sklearn_gradient_boosting_regressor
        if isinstance(model, GradientBoostingRegressor)
        else convert_sklearn_random_forest_regressor_converter
    )
    source = _double_input(scope, operator, container, fallback)
    if source is None:
        return
    if getattr(model, "n_outputs_", 1) != 1 or len(operator.outputs) != 1:
        raise NotImplementedError("multi-output tree regressors are not converted")
    trees, mode = _trees(model)
    scale, offset = 1.0, 0.0
    if isinstance(model, GradientBoostingRegressor):
        scale = float(model.learning_rate)
        if model.init == "zero":
            offset = 0.0
        elif hasattr(model.init_, "constant_"):
            offset = float(np.ravel(model.init_.constant_)[0])
        else:
            raise NotImplementedError("gradient boosting with an init estimator")
    ensemble = _Ensemble()
    for tree in trees:
        values = tree.value[:, 0, 0]
        ensemble.add(tree, 0, lambda node, values=values: scale * values[node])
    output = operator.outputs[0].full_name
    summed = scope.get_unique_variable_name("tree_sum") if offset else output
    ensemble.node(scope, container, source, summed, 1, mode)
    if offset:
        base = scope.get_unique_variable_name("init")
        container.add_initializer(base, TensorProto.DOUBLE, [1], [offset])
        container.add_node("Add", [summed, base], [output])


def _convert_tree_classifier(scope, operator, container) -> None:
    from skl2onnx.operator_converters.decision_tree import (
        convert_sklearn_decision_tree_classifier,
    )
    from skl2onnx.operator_converters.random_forest import (
        convert_sklearn_random_forest_classifier,
    )

    model = operator.raw_operator
    fallback = (
        convert_sklearn_decision_tree_classifier
        if isinstance(model, (DecisionTreeClassifier, ExtraTreeClassifier))
        else convert_sklearn_random_forest_classifier
    )
    source = _double_input(scope, operator, container, fallback)
    if source is None:
        return
    if getattr(model, "n_outputs_", 1) != 1 or len(operator.outputs) != 2:
        raise NotImplementedError("multi-output tree classifiers are not converted")
    classes = np.asarray(model.classes_)
    trees, _ = _trees(model)
    ensemble = _Ensemble()
    # One copy of each tree per class (a TreeEnsemble leaf feeds one target), so the mean
    # over trees is a sum of weights divided by the number of trees. A tree's probabilities
    # are its leaf's class weights over their sum, as in predict_proba.
    for tree in trees:
        values = tree.value[:, 0, :]
        totals = values.sum(axis=1)
        totals[totals == 0] = 1.0
        totals *= len(trees)
        for index in range(len(classes)):
            ensemble.add(
                tree,
                index,
                lambda node, v=values, t=totals, i=index: v[node, i] / t[node],
            )
    label, probabilities = (variable.full_name for variable in operator.outputs)
    proba = scope.get_unique_variable_name("proba")
    ensemble.node(scope, container, source, proba, len(classes), _SUM)
    container.add_node("Identity", [proba], [probabilities])
    # predict is classes_[argmax(predict_proba)]: the first of equal maxima, as numpy.
    index = scope.get_unique_variable_name("class_index")
    container.add_node("ArgMax", [proba], [index], axis=1, keepdims=0, select_last_index=0)
    table = scope.get_unique_variable_name("classes")
    if classes.dtype.kind in "iub":
        container.add_initializer(
            table, TensorProto.INT64, [len(classes)], classes.astype(np.int64).tolist()
        )
    else:
        container.add_initializer(
            table, TensorProto.STRING, [len(classes)], [str(c).encode() for c in classes]
        )
    container.add_node("Gather", [table, index], [label], axis=0)


def _tree_classifier_shapes(operator) -> None:
    """skl2onnx's shapes, with probabilities in double as the TreeEnsemble gives them."""
    from skl2onnx.shape_calculators.ensemble_shapes import calculate_tree_classifier_output_shapes

    calculate_tree_classifier_output_shapes(operator)
    if len(operator.inputs) == 1 and isinstance(operator.inputs[0].type, DoubleTensorType):
        probabilities = operator.outputs[1]
        probabilities.type = DoubleTensorType(probabilities.type.shape)


_DOUBLE_CONVERTERS = {
    SimpleImputer: _convert_imputer,
    DecisionTreeRegressor: _convert_tree_regressor,
    ExtraTreeRegressor: _convert_tree_regressor,
    RandomForestRegressor: _convert_tree_regressor,
    ExtraTreesRegressor: _convert_tree_regressor,
    GradientBoostingRegressor: _convert_tree_regressor,
    DecisionTreeClassifier: _convert_tree_classifier,
    ExtraTreeClassifier: _convert_tree_classifier,
    RandomForestClassifier: _convert_tree_classifier,
    ExtraTreesClassifier: _convert_tree_classifier,
}
_DOUBLE_SHAPES = {
    model: _tree_classifier_shapes
    for model, converter in _DOUBLE_CONVERTERS.items()
    if converter is _convert_tree_classifier
}

"""InputSchema: request instances in, the model's input (or an InvalidInput naming the
instance and the feature) out."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.errors import InvalidInput
from service.runtime.schema import MAX_REPORTED_PROBLEMS, FeatureSpec, InputSchema

# Two floats and an integer feature: every numeric rule in one small schema.
NUMERIC = InputSchema(
    [
        FeatureSpec("sepal_length", "float64"),
        FeatureSpec("sepal_width", "float64"),
        FeatureSpec("petals", "int64"),
    ]
)

# A category that rejects unknown values, a number that allows missing values, and a
# category that allows both unknown and missing values.
MIXED = InputSchema(
    [
        FeatureSpec("colour", "category", categories=("red", "green", "blue")),
        FeatureSpec("size", "float64", missing="allow"),
        FeatureSpec(
            "shape",
            "category",
            missing="allow",
            categories=("round", "square"),
            unknown_category="allow",
        ),
    ]
)

SHAPE_HINT = "each instance is an object keyed by feature name or a list of values in feature order"
FULL = {"sepal_length": 5.1, "sepal_width": 3.5, "petals": 2}


def validate(schema: InputSchema, instances):
    return schema.to_array(schema.rows(instances))


def problem(instance, feature, text, **extra):
    return {"instance": instance, "feature": feature, "problem": text, **extra}


@pytest.mark.parametrize(
    ("instances", "message", "details"),
    [
        pytest.param(
            [[5.1, 3.5]],
            "instance 0: has 2 values, the model takes 3",
            [problem(0, None, "has 2 values, the model takes 3")],
            id="too-few-values",
        ),
        pytest.param(
            [[5.1, 3.5, 2], [5.1, 3.5, 2, 7.0]],
            "instance 1: has 4 values, the model takes 3",
            [problem(1, None, "has 4 values, the model takes 3")],
            id="too-many-values-in-second-instance",
        ),
        pytest.param(
            [{"sepal_length": 5.1}],
            "instance 0: missing features ['sepal_width', 'petals']",
            [
                problem(
                    0,
                    None,
                    "missing features ['sepal_width', 'petals']",
                    missing=["sepal_width", "petals"],
                )
            ],
            id="missing-names-listed",
        ),
        pytest.param(
            [{"sepal_length": 5.1, "sepal_widht": 3.5, "petals": 2}],
            "instance 0: missing features ['sepal_width'] (1 more problem in details)",
            [
                problem(0, None, "missing features ['sepal_width']", missing=["sepal_width"]),
                problem(
                    0,
                    None,
                    "unknown features ['sepal_widht']; did you mean 'sepal_width' for "
                    "'sepal_widht'",
                    unknown=["sepal_widht"],
                ),
            ],
            id="misspelled-name-with-suggestion",
        ),
        pytest.param(
            [{**FULL, "colour": "red"}],
            "instance 0: unknown features ['colour']",
            [problem(0, None, "unknown features ['colour']", unknown=["colour"])],
            id="extra-unknown-name-without-suggestion",
        ),
        pytest.param(
            [[5.1, "3.5", 2]],
            "instance 0, feature 'sepal_width': expected a number, got a string",
            [problem(0, "sepal_width", "expected a number, got a string")],
            id="string-for-number",
        ),
        pytest.param(
            [{**FULL, "sepal_length": True}],
            "instance 0, feature 'sepal_length': expected a number, got a boolean",
            [problem(0, "sepal_length", "expected a number, got a boolean")],
            id="boolean-for-number",
        ),
        pytest.param(
            [[5.1, 3.5, [2]]],
            "instance 0, feature 'petals': expected a number, got a list",
            [problem(0, "petals", "expected a number, got a list")],
            id="list-for-number",
        ),
        pytest.param(
            [[5.1, 3.5, 2], [None, 3.5, 2]],
            "instance 1, feature 'sepal_length': is null, but this feature does not allow "
            "missing values",
            [problem(1, "sepal_length", "is null, but this feature does not allow missing values")],
            id="null-not-allowed",
        ),
        pytest.param(
            [[5.1, math.nan, 2]],
            "instance 0, feature 'sepal_width': is NaN, but this feature does not allow "
            "missing values",
            [problem(0, "sepal_width", "is NaN, but this feature does not allow missing values")],
            id="nan-not-allowed",
        ),
        pytest.param(
            [[5.1, math.inf, 2]],
            "instance 0, feature 'sepal_width': is Infinity; only finite numbers are allowed",
            [problem(0, "sepal_width", "is Infinity; only finite numbers are allowed")],
            id="infinity",
        ),
        pytest.param(
            [[-math.inf, 3.5, 2]],
            "instance 0, feature 'sepal_length': is Infinity; only finite numbers are allowed",
            [problem(0, "sepal_length", "is Infinity; only finite numbers are allowed")],
            id="minus-infinity",
        ),
        pytest.param(
            [[10**400, 3.5, 2]],
            "instance 0, feature 'sepal_length': number is out of range",
            [problem(0, "sepal_length", "number is out of range")],
            id="integer-too-large-for-float",
        ),
        pytest.param(
            [[5.1, 3.5, 2.5]],
            "instance 0, feature 'petals': expected an integer",
            [problem(0, "petals", "expected an integer")],
            id="non-integral-int64",
        ),
        pytest.param(
            [[5.1, 3.5, 2], FULL],
            "instance 1: mixes objects and lists in one request",
            [problem(1, None, "mixes objects and lists in one request")],
            id="list-then-object",
        ),
        pytest.param(
            [FULL, [5.1, 3.5, 2]],
            "instance 1: mixes objects and lists in one request",
            [problem(1, None, "mixes objects and lists in one request")],
            id="object-then-list",
        ),
        pytest.param(
            [5.1],
            f"instance 0: is a number; {SHAPE_HINT}",
            [problem(0, None, f"is a number; {SHAPE_HINT}")],
            id="instance-is-a-number",
        ),
        pytest.param(
            [FULL, 7],
            f"instance 1: is a number; {SHAPE_HINT}",
            [problem(1, None, f"is a number; {SHAPE_HINT}")],
            id="second-instance-is-a-number",
        ),
        pytest.param(
            ["5.1,3.5,2"],
            f"instance 0: is a string; {SHAPE_HINT}",
            [problem(0, None, f"is a string; {SHAPE_HINT}")],
            id="instance-is-a-string",
        ),
        pytest.param(
            [None],
            f"instance 0: is null; {SHAPE_HINT}",
            [problem(0, None, f"is null; {SHAPE_HINT}")],
            id="instance-is-null",
        ),
        pytest.param(
            [[5.1, "wide", 2], [None, 3.5, 2]],
            "instance 0, feature 'sepal_width': expected a number, got a string "
            "(1 more problem in details)",
            [
                problem(0, "sepal_width", "expected a number, got a string"),
                problem(
                    1, "sepal_length", "is null, but this feature does not allow missing values"
                ),
            ],
            id="every-problem-in-details",
        ),
    ],
)
def test_numeric_schema_rejects(instances, message, details):
    with pytest.raises(InvalidInput) as caught:
        validate(NUMERIC, instances)
    assert caught.value.code == "invalid_input"
    assert caught.value.status == 422
    assert caught.value.message == message
    assert caught.value.details == details


def test_problems_reported_are_capped():
    instances = [[5.1, 3.5, "two"]] * (MAX_REPORTED_PROBLEMS + 5)
    with pytest.raises(InvalidInput) as caught:
        validate(NUMERIC, instances)
    details = caught.value.details
    assert len(details) == MAX_REPORTED_PROBLEMS
    assert [d["instance"] for d in details] == list(range(MAX_REPORTED_PROBLEMS))
    assert caught.value.message.endswith(f"({MAX_REPORTED_PROBLEMS - 1} more problems in details)")


@pytest.mark.parametrize(
    ("instances", "message", "instance", "feature"),
    [
        pytest.param(
            [["purple", 1.0, "round"]],
            "instance 0, feature 'colour': category not seen in training; "
            "allowed: ['blue', 'green', 'red']",
            0,
            "colour",
            id="unknown-category-rejected-with-allowed-list",
        ),
        pytest.param(
            [["red", 1.0, "round"], [1, 1.0, "round"]],
            "instance 1, feature 'colour': category not seen in training; "
            "allowed: ['blue', 'green', 'red']",
            1,
            "colour",
            id="number-is-not-one-of-the-string-categories",
        ),
        pytest.param(
            [[True, 1.0, "round"]],
            "instance 0, feature 'colour': expected a category (string), got a boolean",
            0,
            "colour",
            id="boolean-for-category",
        ),
        pytest.param(
            [[2.5, 1.0, "round"]],
            "instance 0, feature 'colour': expected a category (string), got a number",
            0,
            "colour",
            id="float-for-category",
        ),
        pytest.param(
            [[None, 1.0, "round"]],
            "instance 0, feature 'colour': is null, but this feature does not allow missing values",
            0,
            "colour",
            id="missing-category-not-allowed",
        ),
        pytest.param(
            [["red", "big", "round"]],
            "instance 0, feature 'size': expected a number, got a string",
            0,
            "size",
            id="string-for-number-next-to-categories",
        ),
        pytest.param(
            [["red", math.inf, "round"]],
            "instance 0, feature 'size': is Infinity; only finite numbers are allowed",
            0,
            "size",
            id="infinity-even-where-missing-allowed",
        ),
    ],
)
def test_categorical_schema_rejects(instances, message, instance, feature):
    with pytest.raises(InvalidInput) as caught:
        validate(MIXED, instances)
    assert caught.value.message == message
    assert caught.value.details == [problem(instance, feature, message.split(": ", 1)[1])]


def test_categories_become_object_columns_and_unknown_allowed_passes():
    columns = validate(MIXED, [["red", 1.5, "round"], ["blue", 2.0, "hexagon"]])
    assert isinstance(columns, list) and len(columns) == 3
    colour, size, shape = columns
    assert colour.dtype == object and colour.tolist() == ["red", "blue"]
    assert size.dtype == np.float64 and size.tolist() == [1.5, 2.0]
    # "hexagon" is not a training category, but the feature says unknown_category: allow.
    assert shape.dtype == object and shape.tolist() == ["round", "hexagon"]


def test_missing_allowed_features_accept_null():
    colour, size, shape = validate(MIXED, [["green", None, None]])
    assert colour.tolist() == ["green"]
    assert np.isnan(size[0])
    # A missing category is NaN, the marker scikit-learn's imputers and encoders recognise.
    assert len(shape) == 1 and shape[0] != shape[0]


def test_objects_keyed_by_name_are_put_in_feature_order_with_categories():
    colour, size, shape = validate(MIXED, [{"shape": "square", "size": 3, "colour": "green"}])
    assert (colour.tolist(), size.tolist(), shape.tolist()) == (["green"], [3.0], ["square"])


def test_missing_allowed_gives_nan_in_the_matrix():
    schema = InputSchema(
        [FeatureSpec("a", "float64", missing="allow"), FeatureSpec("b", "int64", missing="allow")]
    )
    matrix = validate(schema, [[None, 1], [2.5, None], [math.nan, 3]])
    assert matrix.dtype == np.float64
    np.testing.assert_array_equal(
        matrix, np.array([[np.nan, 1.0], [2.5, np.nan], [np.nan, 3.0]]), strict=True
    )


def test_missing_allowed_in_one_column_only():
    schema = InputSchema(
        [FeatureSpec("a", "float64", missing="allow"), FeatureSpec("b", "float64")]
    )
    assert np.isnan(validate(schema, [[None, 1.0]])[0, 0])
    with pytest.raises(InvalidInput) as caught:
        validate(schema, [[1.0, None]])
    assert caught.value.message == (
        "instance 0, feature 'b': is null, but this feature does not allow missing values"
    )


def test_valid_numeric_lists_give_an_equal_float64_matrix():
    instances = [[5.1, 3.5, 2], [4.9, 3, 0], [-1e300, 0.0, 12]]
    matrix = validate(NUMERIC, instances)
    assert isinstance(matrix, np.ndarray)
    assert matrix.dtype == np.float64
    assert matrix.shape == (3, 3)
    assert matrix.tolist() == [[5.1, 3.5, 2.0], [4.9, 3.0, 0.0], [-1e300, 0.0, 12.0]]


def test_int64_feature_accepts_integral_floats():
    assert validate(NUMERIC, [[5.1, 3.5, 2.0]]).tolist() == [[5.1, 3.5, 2.0]]


def test_objects_keyed_by_name_are_reordered_into_feature_order():
    instances = [
        {"petals": 2, "sepal_width": 3.5, "sepal_length": 5.1},
        {"sepal_width": 3.0, "sepal_length": 4.9, "petals": 0},
    ]
    assert [list(row) for row in NUMERIC.rows(instances)] == [[5.1, 3.5, 2], [4.9, 3.0, 0]]
    assert validate(NUMERIC, instances).tolist() == [[5.1, 3.5, 2.0], [4.9, 3.0, 0.0]]


def test_schema_from_metadata_keeps_feature_order_and_policies():
    schema = InputSchema.from_metadata(
        {
            "input": {
                "features": [
                    {"name": "b", "dtype": "float64", "missing": "allow"},
                    {
                        "name": "a",
                        "dtype": "category",
                        "missing": "reject",
                        "categories": ["x", "y"],
                        "unknown_category": "allow",
                    },
                ]
            }
        }
    )
    assert schema.names == ("b", "a")
    assert schema.features[0] == FeatureSpec("b", "float64", missing="allow")
    assert schema.features[1] == FeatureSpec(
        "a", "category", categories=("x", "y"), unknown_category="allow"
    )
    assert not schema.all_numeric


# -- a 2-D array (a v2 binary tensor) is checked as a whole -----------------------------


def test_a_numeric_matrix_passes_as_an_equal_float64_matrix():
    matrix = np.array([[5.1, 3.5, 2.0], [6.0, 2.9, 4.0]])
    checked = NUMERIC.from_matrix(matrix)
    assert checked.dtype == np.float64 and np.array_equal(checked, matrix)
    assert np.array_equal(NUMERIC.from_matrix(matrix.astype(np.int32)), matrix.astype(int))


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.array([[5.1, np.nan, 2.0]]), "instance 0, feature 'sepal_width': is NaN"),
        (np.array([[5.1, 3.5, np.inf]]), "instance 0, feature 'petals': is Infinity"),
        (np.array([[5.1, 3.5, 2.5]]), "instance 0, feature 'petals': expected an integer"),
        (np.array([[True, False, True]]), "instance 0, feature 'sepal_length': expected a number"),
    ],
    ids=["nan", "inf", "fraction-in-int", "booleans"],
)
def test_a_bad_matrix_is_reported_like_the_same_rows(matrix, message):
    with pytest.raises(InvalidInput) as from_matrix:
        NUMERIC.from_matrix(matrix)
    with pytest.raises(InvalidInput) as from_rows:
        NUMERIC.to_array(NUMERIC.rows(matrix.tolist()))
    assert from_matrix.value.message.startswith(message)
    assert from_matrix.value.details == from_rows.value.details


def test_a_matrix_of_the_wrong_width_is_reported_by_instance():
    with pytest.raises(InvalidInput, match="instance 0: has 2 values, the model takes 3"):
        NUMERIC.from_matrix(np.array([[1.0, 2.0]]))


@pytest.mark.parametrize(
    "bad, problem",
    [
        ("1.5", "expected a number, got a string"),
        (None, "does not allow missing values"),
        ([1.0], "expected a number"),
        ({"a": 1}, "expected a number"),
        (10**400, "out of range"),
    ],
)
def test_numbers_checked_without_a_look_at_each_type_still_reject_what_is_not_a_number(
    bad, problem
):
    # may_hold_booleans=False takes the fast check (a sum in C): every other kind of
    # value must still be refused, with the same message as on the exact path.
    rows = [[5.1, 3.5, 2], [4.9, bad, 0]]
    for may_hold_booleans in (True, False):
        with pytest.raises(InvalidInput) as caught:
            NUMERIC.to_array(rows, may_hold_booleans=may_hold_booleans)
        assert caught.value.details[0]["instance"] == 1
        assert caught.value.details[0]["feature"] == "sepal_width"
        assert problem in caught.value.details[0]["problem"]


def test_booleans_are_refused_when_the_caller_says_they_may_be_there():
    with pytest.raises(InvalidInput, match="a boolean"):
        NUMERIC.to_array([[5.1, True, 2]], may_hold_booleans=True)


FLOATS = InputSchema([FeatureSpec("a", "float64"), FeatureSpec("b", "float64", missing="allow")])


@pytest.mark.parametrize(
    "rows, problem",
    [
        ([[1.0, 2.0], [math.inf, 0.0]], "is Infinity"),
        ([[1.0, 2.0], [-math.inf, 0.0]], "is Infinity"),
        ([[1.0, 2.0], [math.nan, 0.0]], "is NaN"),
        ([[1.0, 2.0], [3.0, math.inf], [5.0, -math.inf]], "is Infinity"),  # the sum is NaN
        ([[1.0, 2.0], [3.0, None]], None),  # null where missing values are allowed
        ([[1e308, 1e308], [1e308, 1e308]], None),  # the sum overflows; every value is fine
        ([[1, 2], [3, 4]], None),  # ints for floats: their sum is an int
    ],
)
def test_a_float_matrix_is_accepted_on_a_finite_sum_and_otherwise_checked_whole(rows, problem):
    for may_hold_booleans in (True, False):
        if problem is None:
            matrix = FLOATS.to_array(rows, may_hold_booleans=may_hold_booleans)
            expected = [[math.nan if v is None else float(v) for v in row] for row in rows]
            np.testing.assert_array_equal(matrix, np.array(expected))
            continue
        with pytest.raises(InvalidInput) as caught:
            FLOATS.to_array(rows, may_hold_booleans=may_hold_booleans)
        assert caught.value.details[0]["instance"] == 1
        assert problem in caught.value.details[0]["problem"]


def test_lists_of_numbers_become_a_matrix_in_one_numpy_call():
    rows = [[5.1, 3.5, 2], [4, 3, 0]]
    np.testing.assert_array_equal(
        NUMERIC.from_number_lists(rows), np.array([[5.1, 3.5, 2.0], [4.0, 3.0, 0.0]])
    )
    assert FLOATS.from_number_lists([[1.0, 2.0]]).dtype == np.float64


@pytest.mark.parametrize(
    "rows",
    [
        [[5.1, "3.5", 2]],
        [[5.1, None, 2]],
        [[5.1, [3.5], 2]],
        [[5.1, {"a": 1}, 2]],
        [[5.1, 10**400, 2]],
        [[5.1, 3.5, 2], [5.1, 3.5]],
        [[5.1, 3.5]],
        [[5.1, 3.5, 2, 1]],
        [[5.1, math.inf, 2]],
        [[5.1, math.nan, 2]],
        [[5.1, 3.5, 2.5]],  # petals is an integer feature
        [[5.1, 3.5, 2], {"sepal_length": 5.1, "sepal_width": 3.5, "petals": 2}],
        [{"sepal_length": 5.1, "sepal_width": 3.5, "petals": 2}],
        [[[5.1, 3.5, 2]]],
        [],
    ],
)
def test_anything_but_lists_of_valid_numbers_is_left_to_the_checks_that_name_it(rows):
    """None sends the instances to the checks that say which instance and feature is
    wrong; a matrix here would serve them."""
    assert NUMERIC.from_number_lists(rows) is None


# Enough rows for the flat read (schema._FLAT_READ_VALUES values), the bad one among them.
MANY_GOOD_ROWS = [[5.1, 3.5, 2], [4, 3, 0]] * 40


def test_many_rows_without_text_read_flat_give_the_same_matrix():
    flat = NUMERIC.from_number_lists(MANY_GOOD_ROWS, may_hold_text=False)
    np.testing.assert_array_equal(flat, NUMERIC.from_number_lists(MANY_GOOD_ROWS))
    assert flat.dtype == np.float64 and flat.shape == (80, 3)


@pytest.mark.parametrize(
    "bad_row",
    [
        [5.1, None, 2],
        [5.1, [3.5], 2],
        [5.1, 10**400, 2],
        [5.1, 3.5],
        [5.1, 3.5, 2, 1],
        [5.1, math.inf, 2],
        [5.1, math.nan, 2],
        [5.1, 3.5, 2.5],  # petals is an integer feature
        [[5.1, 3.5, 2]],
        5.1,
    ],
)
def test_the_flat_read_leaves_every_bad_row_to_the_checks_that_name_it(bad_row):
    # What a body with no quote after its first bracket can hold, besides good numbers.
    rows = [*MANY_GOOD_ROWS[:41], bad_row, *MANY_GOOD_ROWS[41:]]
    assert NUMERIC.from_number_lists(rows, may_hold_text=False) is None


def test_ragged_rows_adding_up_to_whole_rows_are_not_read_flat():
    # Two short rows and one long one hold as many values as three good ones; all floats,
    # so no integer feature would catch the values shifted into the wrong columns.
    floats = InputSchema([FeatureSpec(name, "float64") for name in "abc"])
    rows = [*MANY_GOOD_ROWS, [5.1, 3.5], [5.1, 3.5], [5.1, 3.5, 2, 1, 0]]
    assert floats.from_number_lists(rows, may_hold_text=False) is None


def test_a_model_of_categories_takes_no_matrix():
    assert MIXED.from_number_lists([[1.0, 2.0, 3.0]]) is None

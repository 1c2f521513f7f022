"""Input validation from metadata: turn request instances into the model's input.

The common case (every value a number, every instance complete) is checked in
one pass over the values and converted by numpy in one call; when the caller
knows the values hold no booleans (their JSON text has no true or false), that
pass is a sum in C rather than a look at each value's type, and when it knows
they hold no text either, many rows are read by numpy as one flat run of numbers.
Only when that fails does a slower pass walk the instances to say exactly which
instance and which feature is wrong, so good requests never pay for error reporting.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.errors import InvalidInput

MAX_REPORTED_PROBLEMS = 20
# From about this many values (16 rows of 8 features), numpy reads numbers from one flat
# iterator faster than from a list of lists, whose shape and types it must discover
# first; below it, the discovery costs less than the row-length check that replaces it.
_FLAT_READ_VALUES = 128
_NUMBER_TYPES = frozenset({int, float})
_NUMBER_OR_NONE_TYPES = frozenset({int, float, type(None)})


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    name: str
    dtype: str  # float64 | int64 | category
    missing: str = "reject"  # reject | allow
    categories: tuple[Any, ...] = ()
    unknown_category: str = "reject"  # reject | allow
    # What a missing category becomes before the model sees it (a category of its own,
    # recorded at training); None: NaN, for pipelines that impute categories themselves.
    fill_value: str | None = None

    @classmethod
    def from_metadata(cls, entry: dict[str, Any]) -> FeatureSpec:
        return cls(
            name=entry["name"],
            dtype=entry["dtype"],
            missing=entry.get("missing", "reject"),
            categories=tuple(entry.get("categories", ())),
            unknown_category=entry.get("unknown_category", "reject"),
            fill_value=entry.get("fill_value"),
        )

    @property
    def text_categories(self) -> bool:
        """Categories recorded as strings: a client's 2 means the category '2'."""
        return bool(self.categories) and all(isinstance(c, str) for c in self.categories)

    @property
    def is_numeric(self) -> bool:
        return self.dtype != "category"


class InputSchema:
    """The features a model takes, in order, and how to check values for them."""

    def __init__(self, features: Sequence[FeatureSpec]):
        self.features = tuple(features)
        self.names = tuple(f.name for f in self.features)
        self.name_set = frozenset(self.names)
        self.width = len(self.features)
        self.all_numeric = all(f.is_numeric for f in self.features)
        self._missing_allowed = np.array([f.missing == "allow" for f in self.features])
        self._any_missing_allowed = bool(self._missing_allowed.any())
        self._int_columns = [i for i, f in enumerate(self.features) if f.dtype == "int64"]
        self._category_sets = {
            i: frozenset(f.categories) for i, f in enumerate(self.features) if not f.is_numeric
        }
        # Values of an object in feature order in one C call (a 1-tuple is still a row).
        self._in_order = (
            operator.itemgetter(*self.names)
            if self.width > 1
            else lambda instance: (instance[self.names[0]],)
        )

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> InputSchema:
        return cls([FeatureSpec.from_metadata(f) for f in metadata["input"]["features"]])

    # -- public --------------------------------------------------------------

    def rows(self, instances: list[Any]) -> list[Sequence[Any]]:
        """Instances as rows in feature order, from objects keyed by name or from lists."""
        first = instances[0]
        if isinstance(first, dict):
            try:
                rows = list(map(self._in_order, instances))
            except (KeyError, TypeError):
                self._raise(self._structure_problems(instances))
            if any(len(instance) != self.width for instance in instances):
                self._raise(self._structure_problems(instances))
            return rows
        if isinstance(first, list):
            width = self.width
            for instance in instances:
                if type(instance) is not list or len(instance) != width:
                    self._raise(self._structure_problems(instances))
            return instances
        self._raise(self._structure_problems(instances))
        raise AssertionError("unreachable")

    def to_array(
        self, rows: list[Sequence[Any]], *, may_hold_booleans: bool = True
    ) -> np.ndarray | list[np.ndarray]:
        """Validated model input: a float64 matrix when every feature is numeric,
        otherwise one array per column (numbers as float64, categories as objects).

        ``may_hold_booleans=False``: the caller knows no value is a boolean (true and
        false appear nowhere in the JSON they came from), which lets the check that
        every value is a number run in C."""
        if self.all_numeric:
            return self._numeric_matrix(rows, may_hold_booleans)
        return self._columns(rows)

    def from_matrix(self, matrix: np.ndarray) -> np.ndarray | list[np.ndarray]:
        """Validated model input from a 2-D array (a binary tensor): a numeric matrix is
        checked as a whole (finite, missing only where allowed, integral where the
        feature is an integer), with no pass over its values one by one; anything else
        is checked like rows, so its problems are reported the same way."""
        if (
            self.all_numeric
            and matrix.ndim == 2
            and matrix.shape[1] == self.width
            and matrix.dtype.kind in "fiu"
        ):
            values = matrix.astype(np.float64, copy=False)
            if self._valid_matrix(values):
                return values
        return self.to_array(self.rows(matrix.tolist()))

    def from_number_lists(
        self, instances: list[Any], *, may_hold_text: bool = True
    ) -> np.ndarray | None:
        """The float matrix of instances given as lists of numbers, when numpy alone
        shows them valid; None for anything else, which the checks that name each problem
        then look at. For JSON with no true or false in it (a boolean would be taken for
        a number here): numpy's own look at the values' types is the check, a matrix of
        numbers comes out only when every instance is a list of as many numbers.

        ``may_hold_text=False``: the caller knows no value is a string either (no quote
        follows the JSON text's first bracket), so a many-row request is read as one flat
        run of numbers (``_read_flat``), which would take "1.5" for 1.5."""
        if not self.all_numeric or not instances or type(instances[0]) is not list:
            return None
        if not may_hold_text and len(instances) * self.width >= _FLAT_READ_VALUES:
            values = self._read_flat(instances)
        else:
            values = self._read_typed(instances)
        return values if values is not None and self._valid_matrix(values) else None

    def _read_typed(self, instances: list[Any]) -> np.ndarray | None:
        """Instances holding no booleans, as a float matrix, when numpy, discovering the
        values' types and the rows' shape, finds only numbers in rows of the model's
        width. None otherwise."""
        try:
            matrix = np.array(instances)
        except (ValueError, TypeError, OverflowError):
            return None  # ragged, or values numpy cannot take
        if matrix.ndim != 2 or matrix.shape[1] != self.width or matrix.dtype.kind not in "fi":
            return None  # text, null, objects or nested lists among the values
        return matrix.astype(np.float64, copy=False)

    def _read_flat(self, instances: list[Any]) -> np.ndarray | None:
        """Instances holding neither text nor booleans, as a float matrix: every value
        goes through float() as numpy reads them in one flat run, which refuses null,
        lists, objects and ints beyond a float's range. A flat read cannot see where a
        row ends, so every row's length is checked first. None when any of it fails."""
        width = self.width
        try:
            # An instance that is a number has no len(): the TypeError below.
            if set(map(len, instances)) != {width}:
                return None  # ragged
            flat = np.fromiter(
                itertools.chain.from_iterable(instances),
                dtype=np.float64,
                count=len(instances) * width,
            )
        except (TypeError, ValueError, OverflowError):
            return None
        return flat.reshape(len(instances), width)

    # -- numeric fast path ---------------------------------------------------

    def _numeric_matrix(self, rows: list[Sequence[Any]], may_hold_booleans: bool) -> np.ndarray:
        total = self._numbers_only(rows, may_hold_booleans)
        if total is not None:
            try:
                matrix = np.array(rows, dtype=np.float64)
            except OverflowError:
                self._raise(self._value_problems(rows))
            # A finite sum of numbers has no NaN or infinity among its terms: the whole
            # matrix need not be looked at again unless a feature must hold integers.
            finite = type(total) is float and math.isfinite(total)
            if (finite and not self._int_columns) or self._valid_matrix(matrix):
                return matrix
        self._raise(self._value_problems(rows))
        raise AssertionError("unreachable")

    def _numbers_only(self, rows: list[Sequence[Any]], may_hold_booleans: bool) -> Any:
        """Every value an int or a float (or null where missing values are allowed): their
        sum when it was taken, else True; None when some value is not a number.
        numpy itself would take "1.5", true and null for numbers, so this comes first."""
        if not may_hold_booleans:
            try:
                # Adding up fails on text, null, lists and objects, and runs in C; it cannot
                # tell a boolean from an int, which the caller has ruled out.
                return sum(itertools.chain.from_iterable(rows))
            except (TypeError, OverflowError):
                pass  # null where allowed, or a bad value: the look at each type says which
        kinds = {type(value) for row in rows for value in row}
        if kinds <= _NUMBER_TYPES or (self._any_missing_allowed and kinds <= _NUMBER_OR_NONE_TYPES):
            return True
        return None

    def _valid_matrix(self, matrix: np.ndarray) -> bool:
        """Finite, NaN only where missing values are allowed, integral where the feature
        is an integer: the checks of a float matrix as a whole."""
        finite = np.isfinite(matrix)
        values_ok = finite.all() or self._only_allowed_missing(matrix, finite)
        return bool(values_ok and (not self._int_columns or self._integral(matrix)))

    def _only_allowed_missing(self, matrix: np.ndarray, finite: np.ndarray) -> bool:
        if not self._any_missing_allowed:
            return False
        bad = ~finite
        # NaN stands for a missing value only where missing values are allowed; inf never.
        return not (bad & ~self._missing_allowed).any() and not np.isinf(matrix).any()

    def _integral(self, matrix: np.ndarray) -> bool:
        block = matrix[:, self._int_columns]
        block = block[np.isfinite(block)]
        return bool((block == np.floor(block)).all())

    # -- mixed numbers and categories ----------------------------------------

    def _columns(self, rows: list[Sequence[Any]]) -> list[np.ndarray]:
        problems = self._value_problems(rows)
        if problems:
            self._raise(problems)
        columns = []
        for index, feature in enumerate(self.features):
            values = [row[index] for row in rows]
            if feature.is_numeric:
                columns.append(np.array(values, dtype=np.float64))
            else:
                columns.append(_category_column(feature, values))
        return columns

    # -- error reporting (slow path: only for bad requests) -------------------

    def _structure_problems(self, instances: list[Any]) -> list[dict[str, Any]]:
        problems: list[dict[str, Any]] = []
        expected_kind = dict if isinstance(instances[0], dict) else list
        for i, instance in enumerate(instances):
            if isinstance(instance, dict):
                if expected_kind is not dict:
                    problems.append(_problem(i, None, "mixes objects and lists in one request"))
                    continue
                missing = [n for n in self.names if n not in instance]
                unknown = [k for k in instance if k not in self.name_set]
                if missing:
                    problems.append(
                        _problem(i, None, f"missing features {missing}", missing=missing)
                    )
                if unknown:
                    hints = {k: difflib.get_close_matches(str(k), self.names, n=1) for k in unknown}
                    suggestions = {k: v[0] for k, v in hints.items() if v}
                    text = f"unknown features {unknown}"
                    if suggestions:
                        text += "; did you mean " + ", ".join(
                            f"{v!r} for {k!r}" for k, v in suggestions.items()
                        )
                    problems.append(_problem(i, None, text, unknown=unknown))
            elif isinstance(instance, list):
                if expected_kind is not list:
                    problems.append(_problem(i, None, "mixes objects and lists in one request"))
                elif len(instance) != self.width:
                    problems.append(
                        _problem(
                            i, None, f"has {len(instance)} values, the model takes {self.width}"
                        )
                    )
            else:
                problems.append(
                    _problem(
                        i,
                        None,
                        f"is {_json_kind(instance)}; each instance is an object keyed by feature "
                        "name or a list of values in feature order",
                    )
                )
            if len(problems) >= MAX_REPORTED_PROBLEMS:
                break
        return problems

    def _value_problems(self, rows: list[Sequence[Any]]) -> list[dict[str, Any]]:
        problems: list[dict[str, Any]] = []
        for i, row in enumerate(rows):
            for j, feature in enumerate(self.features):
                problem = self._check_value(feature, j, row[j])
                if problem:
                    problems.append(_problem(i, feature.name, problem))
                    if len(problems) >= MAX_REPORTED_PROBLEMS:
                        return problems
        return problems

    def _check_value(self, feature: FeatureSpec, index: int, value: Any) -> str | None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if feature.missing == "allow":
                return None
            what = "null" if value is None else "NaN"
            return f"is {what}, but this feature does not allow missing values"
        if feature.is_numeric:
            if type(value) not in _NUMBER_TYPES:
                return f"expected a number, got {_json_kind(value)}"
            try:
                number = float(value)
            except OverflowError:
                return "number is out of range"
            if math.isinf(number):
                return "is Infinity; only finite numbers are allowed"
            if feature.dtype == "int64" and not number.is_integer():
                return "expected an integer"
            return None
        allowed = self._category_sets[index]
        if type(value) not in (str, int) or isinstance(value, bool):
            return f"expected a category (string), got {_json_kind(value)}"
        if type(value) is int and feature.text_categories:
            value = str(value)
        if (
            value not in allowed
            and value != feature.fill_value
            and feature.unknown_category == "reject"
        ):
            shown = sorted(map(str, allowed))[:20]
            return f"category not seen in training; allowed: {shown}"
        return None

    def _raise(self, problems: list[dict[str, Any]]) -> None:
        first = problems[0] if problems else _problem(0, None, "is not valid")
        where = f"instance {first['instance']}"
        if first.get("feature") is not None:
            where += f", feature {first['feature']!r}"
        extra = len(problems) - 1
        more = (
            f" ({extra} more {'problem' if extra == 1 else 'problems'} in details)" if extra else ""
        )
        raise InvalidInput(f"{where}: {first['problem']}{more}", details=problems)


def _category_column(feature: FeatureSpec, values: list[Any]) -> np.ndarray:
    column = np.array(values, dtype=object)
    if feature.text_categories:
        column = np.array([str(v) if type(v) is int else v for v in values], dtype=object)
    # One marker for a missing category, whether the client sent null or NaN: the training
    # fill value when there is one, else NaN (scikit-learn's imputers know NaN, not None).
    missing = [v is None or v != v for v in values]
    column[missing] = np.nan if feature.fill_value is None else feature.fill_value
    return column


def _problem(instance: int, feature: str | None, problem: str, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"instance": instance, "feature": feature, "problem": problem}
    entry.update(extra)
    return entry


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__

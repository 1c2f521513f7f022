"""Comparing what the service answers with what the pickled estimator gives in process.

The demo models are served by onnxruntime from an ONNX form converted in double precision
and checked against the pickle at publish: labels are the same values, probabilities and
regression values agree to about 1e-15 (the order of floating-point sums differs), far
inside the 1e-5 parity tolerance the metadata records. ``same_as`` asks for 1e-12.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

RTOL = ATOL = 1e-12


def same_as(expected: Any) -> Any:
    """``expected`` itself for labels; a 1e-12 approximation of it for numbers."""
    values = np.asarray(expected)
    if values.dtype.kind == "f":
        return pytest.approx(values, rel=RTOL, abs=ATOL)
    return expected.tolist() if isinstance(expected, np.ndarray) else expected

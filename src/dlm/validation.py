"""Type checks shared by config parsing and sampler options (annotations read as strings)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy


def type_problem(value: Any, kind: str) -> str | None:
    """What ``value`` must be to fit the annotation ``kind`` ("int", "float | None", ...), or None if it fits.

    Integers and finite reals include numpy scalars; booleans are never numbers.
    """
    is_bool = isinstance(value, (bool, numpy.bool_))
    if kind.startswith("int"):
        return None if isinstance(value, numbers.Integral) and not is_bool else "an integer"
    if kind.startswith("float"):
        ok = isinstance(value, numbers.Real) and not is_bool and math.isfinite(value)
        return None if ok else "a finite number"
    if kind.startswith("bool"):
        return None if is_bool else "true or false"
    if kind.startswith("str"):
        return None if isinstance(value, str) else "a string"
    return None

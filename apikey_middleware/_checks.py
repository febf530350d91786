"""Checks of numeric arguments, with the one error message each gets."""

from __future__ import annotations


def integer(name: str, value: object, *, low: int = 1, high: int | None = None) -> int:
    """``value`` if it is an integer from ``low`` to ``high``, else a
    ``ValueError`` naming ``name`` (``True`` is not an integer here)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        if high is not None:
            span = f"an integer from {low} to {high}"
        elif low == 1:
            span = "a positive integer"
        elif low == 0:
            span = "a non-negative integer"
        else:
            span = f"an integer of {low} or more"
        raise ValueError(f"{name} must be {span}, not {value!r}")
    return value


def number(name: str, value: object, *, zero: bool = False) -> float:
    """``value`` as a float if it is a number above zero (or zero, with
    ``zero``), else a ``ValueError`` naming ``name``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < 0
        or (value == 0 and not zero)
    ):
        span = "a number of zero or more" if zero else "a positive number"
        raise ValueError(f"{name} must be {span}, not {value!r}")
    return float(value)

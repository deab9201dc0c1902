"""Checks for arguments, one place for the whole package: each returns the checked value or
raises ``TypeError`` (wrong kind) / ``ValueError`` (wrong value) with a message naming it.

The ``argparse`` types at the end turn the same checks into one-line command-line errors.
"""

from __future__ import annotations

import argparse
import functools
import math
import numbers
from collections.abc import Callable

import numpy as np


def check_number(name: str, value, *, minimum: float = 0.0, strict: bool = False) -> float:
    """Return ``value`` as a float if it is a finite real number >= (or >) ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum}, got {value!r}")
    return value


def check_positive_int(name: str, value) -> int:
    """Return ``value`` as an int if it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_count(name: str, value, *, minimum: int = 0) -> int:
    """Return ``value`` as an int if it is an integer >= ``minimum``; any other value, of
    whatever kind, is a ``ValueError`` saying what is expected."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_flag(name: str, value) -> bool:
    """Return ``value`` if it is ``True`` or ``False`` (not merely truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


# -- argparse types -------------------------------------------------------------------------

def argument_type(convert: Callable[[str], object]) -> Callable[[str], object]:
    """Wrap ``convert`` so that its TypeError/ValueError becomes argparse's one-line error."""
    @functools.wraps(convert)
    def parse(text: str):
        try:
            return convert(text)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def parse_float(text: str) -> float:
    """``float(text)`` with a message that quotes the text."""
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None


def parse_int(text: str) -> int:
    """``int(text)`` with a message that quotes the text."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


@argument_type
def positive_float(text: str) -> float:
    """A finite number > 0."""
    return check_number("value", parse_float(text), strict=True)


@argument_type
def positive_int(text: str) -> int:
    """An integer >= 1."""
    return check_positive_int("value", parse_int(text))

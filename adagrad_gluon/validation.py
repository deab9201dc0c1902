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
from pathlib import Path

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


def check_leak(name: str, value) -> float:
    """Return ``value`` as a float if it is a leak (RMSProp's ``gamma``): finite, in [0, 1)."""
    value = check_number(name, value)
    if value >= 1:
        raise ValueError(f"{name} must be < 1, got {value!r}")
    return value


# The chapter trains in float32: a learning rate outside its normal range becomes inf or 0 there
LR_MIN, LR_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)


def check_learning_rate(name: str, value) -> float:
    """``value`` if it is a learning rate the float32 training can use: in float32's normal
    range (:data:`LR_MIN` .. :data:`LR_MAX`), where it is neither rounded to 0 or a
    subnormal nor overflows to inf."""
    value = check_number(name, value, strict=True)
    if not LR_MIN <= value <= LR_MAX:
        raise ValueError(f"{name} must be between {LR_MIN:.3g} and {LR_MAX:.3g} (the training "
                         f"runs in float32), got {value!r}")
    return value


# -- argparse types -------------------------------------------------------------------------

def argument_type(convert: Callable[[str], object]) -> Callable[[str], object]:
    """Wrap ``convert`` so that its TypeError/ValueError (or the OSError of a path the system
    refuses, e.g. a name too long) becomes argparse's one-line error."""
    @functools.wraps(convert)
    def parse(text: str):
        try:
            return convert(text)
        except (TypeError, ValueError, OSError) as exc:
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


@argument_type
def seed(text: str) -> int:
    """An integer in 0 .. 2**32 - 1 (numpy's seed range)."""
    value = parse_int(text)
    if not 0 <= value < 2**32:
        raise ValueError(f"value must be in 0 .. 2**32 - 1, got {value}")
    return value


@argument_type
def leak(text: str) -> float:
    """A number in [0, 1): the leaky accumulator's gamma."""
    return check_leak("value", parse_float(text))


@argument_type
def learning_rate(text: str) -> float:
    """A learning rate: a number in float32's normal range, see :func:`check_learning_rate`."""
    return check_learning_rate("value", parse_float(text))


@argument_type
def learning_rates(text: str) -> list[float]:
    """A comma-separated list of distinct learning rates, e.g. ``0.01,0.1,1``."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ValueError(f"expected comma-separated numbers, got {text!r}")
    rates = [check_learning_rate(f"learning rate {item!r}", parse_float(item))
             for item in items]
    if len(set(rates)) != len(rates):
        raise ValueError(f"learning rates must be distinct, got {text!r}")
    return rates


@argument_type
def existing_dir(text: str) -> Path:
    """A directory that exists."""
    path = Path(text)
    if not path.is_dir():
        raise ValueError(f"{text} is not an existing directory")
    return path


@argument_type
def output_dir(text: str) -> Path:
    """A directory to write into: it may not exist yet, but must not be a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{text} exists and is not a directory")
    return path

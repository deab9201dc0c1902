"""Checks of the arrays one update is given: storage types, shapes, dtypes, the rows of a
``row_sparse`` gradient. Each raises ``TypeError``/``ValueError`` naming the parameter instead
of letting MXNet broadcast, crash or hang."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from mxnet import nd

from .quantized import BLOCK, QuantizedAcc

# a parameter's state: its accumulator, or (float32 master weight, accumulator); an
# accumulator is an NDArray, or a QuantizedAcc under state_bits=8
State = nd.NDArray | QuantizedAcc | tuple[nd.NDArray, nd.NDArray | QuantizedAcc]


def split_state(state: State) -> tuple[nd.NDArray | None, nd.NDArray]:
    """``(master weight or None, accumulator)`` of an ``adagrad_scratch`` state."""
    return (state[0], state[1]) if isinstance(state, (tuple, list)) else (None, state)

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


class Checked(NamedTuple):
    """One parameter's arrays as last checked, and whether its gradient is ``row_sparse``."""

    weight: nd.NDArray
    grad: nd.NDArray
    acc: nd.NDArray
    master: nd.NDArray | None
    row_sparse: bool


def accumulator_dtype(weight_dtype) -> type:
    """The accumulator's dtype for a weight of ``weight_dtype``: float64 for float64 weights,
    float32 otherwise (float16 weights included)."""
    return np.float64 if np.dtype(weight_dtype) == np.float64 else np.float32


def checked_arrays(cache: dict, index, weight: nd.NDArray, grad: nd.NDArray, state,
                   name_of: Callable[[object], str]) -> Checked:
    """Check one parameter's arrays (``state``: the accumulator, or ``(master, accumulator)``)
    and return them as a :class:`Checked`. The checks run again only when the arrays are other
    objects than those ``cache`` holds for ``index`` (an NDArray's shape, dtype and storage
    type cannot change): they cost ~10 us a parameter. A row_sparse gradient's rows change
    every step, so they are checked every time. ``name_of(index)`` names it in messages."""
    master, acc = split_state(state)
    known = cache.get(index)
    if known is None or not (known.weight is weight and known.grad is grad
                             and known.acc is acc and known.master is master):
        check_arrays(name_of(index), weight, grad, acc, master)
        known = cache[index] = Checked(weight, grad, acc, master, grad.stype == "row_sparse")
    if known.row_sparse:
        check_rows(name_of(index), grad, weight)
    return known


def check_dense_weight(name: str, weight) -> None:
    """Refuse a weight that is not a dense float16/32/64 NDArray."""
    if not isinstance(weight, nd.NDArray):
        raise TypeError(f"weight of parameter {name} must be an mxnet NDArray, "
                        f"got {type(weight).__name__}")
    if weight.stype != "default":
        raise TypeError(
            f"parameter {name}: adagrad_scratch updates dense weights (row_sparse gradients "
            f"are fine); got a {weight.stype} weight"
        )
    if weight.dtype not in FLOAT_DTYPES:
        raise TypeError(f"parameter {name}: weight must be float16, float32 or float64, "
                        f"got {weight.dtype}")


def check_storage(name: str, weight, grad) -> None:
    """Refuse a weight that is not dense, or a gradient neither dense nor row_sparse."""
    check_dense_weight(name, weight)
    if not isinstance(grad, nd.NDArray):
        raise TypeError(f"gradient of parameter {name} must be an NDArray, got {type(grad)}")
    if grad.stype not in ("default", "row_sparse"):
        raise TypeError(f"parameter {name}: adagrad_scratch takes dense or row_sparse "
                        f"gradients; got a {grad.stype} gradient")


def check_arrays(name: str, weight, grad, acc, master) -> None:
    """Refuse mismatched shapes or types instead of letting MXNet broadcast them."""
    check_storage(name, weight, grad)
    if grad.shape != weight.shape:
        raise ValueError(
            f"parameter {name}: gradient shape {grad.shape} does not match "
            f"weight shape {weight.shape}"
        )
    if grad.dtype != weight.dtype:
        raise TypeError(f"parameter {name}: gradient dtype {np.dtype(grad.dtype).name} does not "
                        f"match weight dtype {np.dtype(weight.dtype).name}")
    for what, array, dtype in (("accumulator", acc, accumulator_dtype(weight.dtype)),
                               ("master weight", master, np.float32)):
        if isinstance(array, QuantizedAcc):
            _check_quantized(name, array, weight)
        elif array is not None:
            _check_state_array(name, what, array, dtype, weight)


def _check_quantized(name: str, acc: QuantizedAcc, weight) -> None:
    """An 8-bit accumulator: uint8 codes of the weight's shape, a float32 scale per block."""
    _check_state_array(name, "accumulator codes", acc.codes, np.uint8, weight)
    if weight.dtype == np.float64:
        raise TypeError(f"parameter {name}: a float64 weight keeps a float64 accumulator, "
                        f"not an 8-bit one")
    blocks = (-(-weight.size // BLOCK),)
    if not isinstance(acc.scales, nd.NDArray) or acc.scales.shape != blocks \
            or acc.scales.dtype != np.float32:
        raise ValueError(f"parameter {name}: the 8-bit accumulator's scales must be a float32 "
                         f"NDArray of shape {blocks} (one per block of {BLOCK} elements)")


def _check_state_array(name: str, what: str, array, dtype, weight) -> None:
    if not isinstance(array, nd.NDArray):
        raise TypeError(f"parameter {name}: {what} must be an NDArray, got {type(array)}")
    if array.shape != weight.shape:
        raise ValueError(
            f"parameter {name}: {what} (optimizer state) shape {array.shape} does not "
            f"match weight shape {weight.shape}"
        )
    if array.dtype != dtype:
        raise TypeError(f"parameter {name}: {what} (optimizer state) dtype "
                        f"{np.dtype(array.dtype).name} should be {np.dtype(dtype).name} "
                        f"for a {np.dtype(weight.dtype).name} weight")


def check_rows(name: str, grad: nd.NDArray, weight: nd.NDArray) -> None:
    """A row_sparse gradient's rows must be strictly increasing and inside the weight (one
    host sync; MXNet itself would apply duplicates once, or fail or hang out of range)."""
    rows = grad.indices.asnumpy()
    if rows.size and (rows[0] < 0 or rows[-1] >= weight.shape[0]
                      or (np.diff(rows) <= 0).any()):
        raise ValueError(f"parameter {name}: the row_sparse gradient's row indices must be "
                         f"strictly increasing and in [0, {weight.shape[0]}); got "
                         f"{np.array2string(rows, threshold=10)}")

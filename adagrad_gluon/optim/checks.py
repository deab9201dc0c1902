"""Checks of the arrays one update is given: storage types, shapes, dtypes, the rows of a
``row_sparse`` gradient. Each raises ``TypeError``/``ValueError`` naming the parameter instead
of letting MXNet broadcast, crash or hang."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from mxnet import nd

from .quantized import BLOCK, ROWWISE_REFUSAL, QuantizedAcc, num_blocks

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
                   name_of: Callable[[object], str], *, rowwise: bool = False) -> Checked:
    """Check one parameter's arrays (``state``: the accumulator, or ``(master, accumulator)``)
    and return them as a :class:`Checked`. The checks run again only when the arrays are other
    objects than those ``cache`` holds for ``(index, rowwise)`` (an NDArray's shape, dtype and
    storage type cannot change): they cost ~10 us a parameter; a new gradient of the arrays
    last checked (as a parameter server hands over, or a caller cycling gradient arrays) gets
    only its own checks (:func:`check_gradient`, ~4 us). A row_sparse gradient's rows change
    every step: :func:`check_rows` is the caller's (it costs a host sync).
    ``name_of(index)`` names it in messages; ``rowwise``: the accumulator is ``(rows,)`` (see
    :func:`accumulator_shape`)."""
    master, acc = split_state(state)
    known = cache.get((index, rowwise))  # rowwise changes what the accumulator's shape must be
    if known is not None and known.weight is weight and known.acc is acc \
            and known.master is master:
        if known.grad is grad:
            return known
        check_gradient(name_of(index), weight, grad)
    else:
        check_arrays(name_of(index), weight, grad, acc, master, rowwise=rowwise)
    known = cache[(index, rowwise)] = Checked(weight, grad, acc, master,
                                              grad.stype == "row_sparse")
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


def check_kvstore_row_sparse(name: str, weight: nd.NDArray, grad, acc, master, *,
                             rowwise: bool = False) -> None:
    """Refuse arrays a kvstore's update of a ``row_sparse`` weight cannot have.

    A kvstore (a parameter server, or the local one of ``gluon.Trainer``) keeps the weight of a
    ``Parameter(stype='row_sparse')`` as a float32/64 ``row_sparse`` NDArray holding every row
    (on a server: every row of its shard) and hands the optimizer ``row_sparse`` gradients of
    that shape. The accumulator is dense, of :func:`accumulator_shape` (a master weight is
    refused: the servers keep float32 weights)."""
    if weight.dtype not in (np.float32, np.float64):
        raise TypeError(f"parameter {name}: a row_sparse weight must be float32 or float64, "
                        f"got {np.dtype(weight.dtype).name}")
    if weight.indices.shape[0] != weight.shape[0]:
        raise ValueError(f"parameter {name}: a row_sparse weight must hold every row, as a "
                         f"kvstore keeps it; got {weight.indices.shape[0]} of {weight.shape[0]}")
    if not isinstance(grad, nd.NDArray) or grad.stype != "row_sparse":
        raise TypeError(f"parameter {name}: a row_sparse weight needs a row_sparse gradient, "
                        f"got {getattr(grad, 'stype', type(grad).__name__)}")
    if master is not None:
        raise TypeError(f"parameter {name}: a row_sparse weight has no master weight")
    check_gradient_matches(name, weight, grad)
    check_rows(name, grad, weight)
    if isinstance(acc, nd.NDArray) and acc.stype != "default":
        raise TypeError(f"parameter {name}: the accumulator (optimizer state) must be a dense "
                        f"NDArray, got a {acc.stype} one")
    _check_state_array(name, "accumulator", acc, accumulator_dtype(weight.dtype),
                       accumulator_shape(name, weight.shape, rowwise), weight)


def check_gradient(name: str, weight, grad) -> None:
    """Refuse a gradient that is not a dense or row_sparse NDArray of its (checked) weight's
    shape and dtype."""
    if not isinstance(grad, nd.NDArray):
        raise TypeError(f"gradient of parameter {name} must be an NDArray, got {type(grad)}")
    if grad.stype not in ("default", "row_sparse"):
        raise TypeError(f"parameter {name}: adagrad_scratch takes dense or row_sparse "
                        f"gradients; got a {grad.stype} gradient")
    check_gradient_matches(name, weight, grad)


def accumulator_shape(name: str, weight_shape: tuple, rowwise: bool) -> tuple:
    """The accumulator's shape for a weight of ``weight_shape``: the same, or ``(rows,)`` with
    ``rowwise`` (``ValueError`` naming parameter ``name`` for fewer than two dimensions)."""
    if not rowwise:
        return tuple(weight_shape)
    if len(weight_shape) < 2:
        raise ValueError(f"parameter {name}: rowwise=True keeps one accumulator per row of a "
                         f"weight of two or more dimensions (an embedding table); this weight "
                         f"has shape {tuple(weight_shape)}: use rowwise=False for it")
    return (weight_shape[0],)


def check_arrays(name: str, weight, grad, acc, master, *, rowwise: bool = False) -> None:
    """Refuse mismatched shapes or types instead of letting MXNet broadcast them (the
    accumulator's shape as :func:`accumulator_shape` gives it)."""
    check_dense_weight(name, weight)
    check_gradient(name, weight, grad)
    acc_shape = accumulator_shape(name, weight.shape, rowwise)
    for what, array, dtype, shape in (
            ("accumulator", acc, accumulator_dtype(weight.dtype), acc_shape),
            ("master weight", master, np.float32, weight.shape)):
        if isinstance(array, QuantizedAcc):
            _check_quantized(name, array, weight, rowwise)
        elif array is not None:
            _check_state_array(name, what, array, dtype, shape, weight)


def check_gradient_matches(name: str, weight, grad) -> None:
    """Refuse a gradient of another shape or dtype than its weight."""
    if grad.shape != weight.shape:
        raise ValueError(
            f"parameter {name}: gradient shape {grad.shape} does not match "
            f"weight shape {weight.shape}"
        )
    if grad.dtype != weight.dtype:
        raise TypeError(f"parameter {name}: gradient dtype {np.dtype(grad.dtype).name} does not "
                        f"match weight dtype {np.dtype(weight.dtype).name}")


def _check_quantized(name: str, acc: QuantizedAcc, weight, rowwise: bool) -> None:
    """An 8-bit accumulator: uint8 codes of the weight's shape, a float32 scale per block;
    never row-wise (a row-wise accumulator has one float per row: nothing to save)."""
    if rowwise:
        raise ValueError(f"parameter {name}: {ROWWISE_REFUSAL}")
    _check_state_array(name, "accumulator codes", acc.codes, np.uint8, weight.shape, weight)
    if weight.dtype == np.float64:
        raise TypeError(f"parameter {name}: a float64 weight keeps a float64 accumulator, "
                        f"not an 8-bit one")
    blocks = (num_blocks(weight.size),)
    if not isinstance(acc.scales, nd.NDArray) or acc.scales.shape != blocks \
            or acc.scales.dtype != np.float32:
        raise ValueError(f"parameter {name}: the 8-bit accumulator's scales must be a float32 "
                         f"NDArray of shape {blocks} (one per block of {BLOCK} elements)")


def _check_state_array(name: str, what: str, array, dtype, shape, weight) -> None:
    if not isinstance(array, nd.NDArray):
        raise TypeError(f"parameter {name}: {what} must be an NDArray, got {type(array)}")
    if array.shape != shape:
        raise ValueError(
            f"parameter {name}: {what} (optimizer state) shape {array.shape} should be "
            f"{shape} for weight shape {weight.shape}"
        )
    if array.dtype != dtype:
        raise TypeError(f"parameter {name}: {what} (optimizer state) dtype "
                        f"{np.dtype(array.dtype).name} should be {np.dtype(dtype).name} "
                        f"for a {np.dtype(weight.dtype).name} weight")


def check_rows(name: str, grad: nd.NDArray, weight: nd.NDArray) -> None:
    """A row_sparse gradient's rows must be strictly increasing and inside the weight (MXNet
    itself would apply duplicates once, or fail or hang out of range). One host sync: reading
    the rows waits for the engine to finish the work queued before (the gradient's backward
    and, on MXNet's one CPU worker thread, every earlier operation)."""
    rows = grad.indices.asnumpy()
    if rows.size and (rows[0] < 0 or rows[-1] >= weight.shape[0]
                      or (rows[1:] <= rows[:-1]).any()):
        raise ValueError(f"parameter {name}: the row_sparse gradient's row indices must be "
                         f"strictly increasing and in [0, {weight.shape[0]}); got "
                         f"{np.array2string(rows, threshold=10)}")

"""Exact lazy weight decay for ``row_sparse`` gradients.

In the dense update a row whose gradient is 0 still decays: with ``weight_decay_mode``
``'decoupled'`` (or ``'step'``, the same map in exact arithmetic) its weight becomes
``w * (1 - lr_k * wd_k)`` at every update ``k`` of its parameter, its accumulator unchanged.
The lazy update touches only the gradient's rows, so each parameter (on each device) keeps a
:class:`RowDecay`:

* ``log_sum``: a float64 running sum of ``log1p(-lr_k * wd_k)`` over the parameter's updates;
* ``marks``: float64, one per row: the ``log_sum`` up to which that row's decay is applied.

When a row is touched again, :func:`catch_up` first multiplies it by
``exp(log_sum - mark) = prod_k (1 - lr_k * wd_k)`` over exactly the updates it skipped (each
with its own rate: schedulers, ``lr_decay``, changes of ``lr`` or ``wd`` between updates), in
float64 and rounded once; then the normal lazy step applies the current update's decay, and
:func:`mark` records the new ``log_sum`` for the touched rows. Rows never touched lag until
:func:`catch_up` runs on all of them (``AdagradScratch.apply_pending_decay``). A float16 weight
with a float32 master copy decays in its master. The same NDArray code runs before either
update path (fused or reference), so both stay bit-identical.

``'l2'`` mode is refused: its decay enters the accumulator, which no lazy update can repeat.
``lr * wd >= 1`` is refused too: the factor ``1 - lr * wd`` would be 0 or negative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from mxnet import nd


@dataclass
class RowDecay:
    """Where the weight decay of one parameter, on one device, stands (see the module)."""

    log_sum: float
    marks: nd.NDArray  # float64, (rows,)

    @classmethod
    def fresh(cls, weight: nd.NDArray) -> RowDecay:
        """Every row of ``weight`` up to date."""
        return cls(0.0, nd.zeros(weight.shape[:1], weight.context, dtype=np.float64))

    @classmethod
    def from_numpy(cls, log_sum: float, marks: np.ndarray) -> RowDecay:
        """A saved one (see :meth:`to_numpy`); its marks move to the weight's device when used."""
        return cls(float(log_sum), nd.array(marks, dtype=np.float64))

    def to_numpy(self) -> tuple[float, np.ndarray]:
        """``(log_sum, marks)``, the marks as a numpy array."""
        return self.log_sum, self.marks.asnumpy()


def check_lazy_decay(name: str, weight_decay_mode: str, lr: float, wd: float) -> None:
    """``ValueError`` unless an update of rate ``lr`` and decay ``wd`` can be made lazily."""
    if weight_decay_mode == "l2":
        raise ValueError(
            f"parameter {name}: a row_sparse gradient gets a lazy update, and "
            f"weight_decay_mode='l2' adds wd * w to the gradient of every row, which enters the "
            f"accumulator: no lazy update can be exact. Use weight_decay_mode='decoupled' (or "
            f"'step'), wd=0 (or wd_mult=0 for this parameter), or a dense gradient (got wd={wd})")
    if lr * wd >= 1:
        raise ValueError(
            f"parameter {name}: lr * wd = {lr * wd!r} must be below 1 for the lazy weight decay "
            f"of a row_sparse gradient (each update multiplies a row by 1 - lr * wd); "
            f"got lr={lr!r}, wd={wd!r}")


def row_ids(name: str, rows, num_rows: int) -> nd.NDArray:
    """``rows`` (integers, any order, repeats allowed: e.g. a batch's token ids) as sorted
    distinct int64 row ids on the CPU; ``TypeError``/``ValueError`` naming parameter ``name``
    unless they are integers in ``[0, num_rows)``."""
    ids = rows.asnumpy() if isinstance(rows, nd.NDArray) else np.asarray(rows)
    if ids.dtype.kind == "f" and ids.size and (ids == np.round(ids)).all():
        ids = ids.astype(np.int64)  # Gluon's token batches are float arrays of integers
    if ids.dtype.kind not in "iu" and ids.size:
        raise TypeError(f"parameter {name}: row ids must be integers, got {ids.dtype.name} "
                        f"{np.array2string(ids.ravel(), threshold=10)}")
    ids = np.unique(ids.astype(np.int64).ravel())
    if ids.size and (ids[0] < 0 or ids[-1] >= num_rows):
        raise ValueError(f"parameter {name}: row ids must be in [0, {num_rows}); got "
                         f"{np.array2string(ids, threshold=10)}")
    return nd.array(ids, dtype=np.int64)


def catch_up(decay: RowDecay, work: nd.NDArray, rows: nd.NDArray | None = None) -> None:
    """Multiply ``rows`` of ``work`` (all of them if None; the weight, or its master copy) by
    the decay they have pending, ``exp(log_sum - mark)``, in float64, rounded once. The marks
    stay as they are (:func:`mark` sets them)."""
    marks = decay.marks = decay.marks.as_in_context(work.context)
    if rows is None:
        nd.cast(_decayed(work, decay.log_sum - marks), dtype=work.dtype, out=work)
    elif rows.shape[0]:
        work[rows] = _decayed(nd.take(work, rows), decay.log_sum - nd.take(marks, rows)).astype(
            work.dtype)


def _decayed(rows: nd.NDArray, log_factors: nd.NDArray) -> nd.NDArray:
    """``rows`` (float64) times ``exp(log_factors)``, one factor per row."""
    factors = nd.exp(log_factors).reshape((-1,) + (1,) * (rows.ndim - 1))
    return nd.broadcast_mul(rows.astype(np.float64), factors)


def advance(decay: RowDecay, lr: float, wd: float) -> None:
    """Count one update of rate ``lr`` and decay ``wd`` (``lr * wd < 1``)."""
    if wd and lr:
        decay.log_sum += math.log1p(-lr * wd)


def mark(decay: RowDecay, rows: nd.NDArray | None = None) -> None:
    """Record ``rows`` (all if None) as decayed up to the current ``log_sum``."""
    if rows is None:
        decay.marks[:] = decay.log_sum
    elif rows.shape[0]:
        decay.marks[rows] = decay.log_sum


__all__ = ["RowDecay", "advance", "catch_up", "check_lazy_decay", "mark", "row_ids"]

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

from .checks import State, split_state


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


def catch_up_all(pending: list[tuple]) -> None:
    """Before an update: each pending ``(decay, work, rows, lr, wd)``'s rows catch up."""
    for decay, work, rows, _, _ in pending:
        catch_up(decay, work, rows)


def advance_all(pending: list[tuple]) -> None:
    """After an update: count it in each decay and mark its rows as up to date."""
    for decay, _, rows, lr, wd in pending:
        advance(decay, lr, wd)
        mark(decay, rows)


class LazyDecayMixin:
    """The optimizer's side of the exact lazy weight decay (mixed into
    :class:`~adagrad_gluon.optim.optimizer.AdagradScratch`, which keeps ``_row_decay``:
    ``(index, device id) -> RowDecay``, and provides ``_count_and_lrs`` and ``_name``)."""

    def _lrs_and_pending_decay(self, indices, checked, wds,
                               weight_decay_mode: str) -> tuple[list[float], list[tuple]]:
        """The rates of this update (counting it, as ``_count_and_lrs`` does) and the pending
        decays to catch up before it and advance after it (see :func:`catch_up_all`); with
        ``wd == 0`` and no decay kept, just the rates."""
        decays = self._lazy_decays(indices, checked, wds)
        if decays is None:
            return self._count_and_lrs(indices), []
        lrs = self._checked_lazy_lrs(indices, decays, wds, weight_decay_mode)
        return lrs, self._keep_decays(indices, checked, decays, lrs, wds)

    def _lazy_decays(self, indices, checked, wds) -> list[RowDecay | None] | None:
        """Each parameter's :class:`~.lazy_decay.RowDecay` (a new one for a row_sparse
        gradient with ``wd > 0``; None where none is kept), or None if none is (wd == 0)."""
        if not self._row_decay and not any(
                c.row_sparse and wd for c, wd in zip(checked, wds, strict=True)):
            return None
        decays = []
        for i, c, wd in zip(indices, checked, wds, strict=True):
            decay = self._row_decay.get((i, c.weight.context.device_id))
            if decay is None and c.row_sparse and wd:
                decay = RowDecay.fresh(c.weight)
            decays.append(decay)
        return decays

    def _checked_lazy_lrs(self, indices, decays, wds, weight_decay_mode: str) -> list[float]:
        """:meth:`_count_and_lrs`, refusing (``ValueError``, nothing counted) an update whose
        lazy decay cannot be exact."""
        counts, num_update = dict(self._index_update_count), self.num_update
        lrs = self._count_and_lrs(indices)
        try:
            for i, decay, lr, wd in zip(indices, decays, lrs, wds, strict=True):
                if decay is not None and wd:
                    check_lazy_decay(self._name(i), weight_decay_mode, lr, wd)
        except ValueError:
            self._index_update_count.clear()
            self._index_update_count.update(counts)
            self.num_update = num_update
            raise
        return lrs

    def _keep_decays(self, indices, checked, decays, lrs, wds) -> list[tuple]:
        """Keep ``decays`` (a new one from now on); ``(decay, the array that decays, the rows
        updated or None for all, lr, wd)`` of each parameter that has one."""
        pending = []
        for i, c, decay, lr, wd in zip(indices, checked, decays, lrs, wds, strict=True):
            if decay is not None:
                self._row_decay[(i, c.weight.context.device_id)] = decay
                pending.append((decay, c.weight if c.master is None else c.master,
                                c.grad.indices if c.row_sparse else None, lr, wd))
        return pending

    def apply_pending_decay(self, index: int, weight: nd.NDArray, state: State,
                            rows=None) -> None:
        """Bring ``rows`` (all if None; any integers, e.g. a batch's token ids) of parameter
        ``index``'s ``weight`` (with its ``state``) up to date with the weight decay the lazy
        ``row_sparse`` update has not applied yet (see the class docstring).

        A row the gradients skip lags until its next update. The forward pass reads it as it
        is, so call this for the rows a batch looks up before its forward pass (or
        :func:`adagrad_gluon.apply_pending_decay` for a whole ``gluon.Trainer``), and for all
        rows before evaluating, exporting or averaging the weights. A parameter without
        pending decay is left as it is.
        """
        if rows is not None:
            rows = row_ids(self._name(index), rows, weight.shape[0]).as_in_context(
                weight.context)
        decay = self._row_decay.get((index, weight.context.device_id))
        if decay is None:
            return
        master, _ = split_state(state)
        catch_up(decay, weight if master is None else master, rows)
        mark(decay, rows)
        if master is None:
            return
        if rows is None:
            nd.cast(master, dtype=weight.dtype, out=weight)
        elif rows.shape[0]:
            weight[rows] = nd.take(master, rows).astype(weight.dtype)

    def lazy_decay_marks(self) -> dict[int, tuple[float, np.ndarray]]:
        """``{index: (log_sum, marks)}`` of the parameters with lazy weight decay (see
        :mod:`.lazy_decay`), as saved with the states: those of the lowest device id, whose
        states and update counts the state files hold too."""
        marks = {}
        for index, device_id in sorted(self._row_decay, reverse=True):  # the lowest id wins
            marks[index] = self._row_decay[(index, device_id)].to_numpy()
        return marks

    def restore_lazy_decay_marks(self, index: int, device_ids, saved) -> None:
        """Give parameter ``index`` on ``device_ids`` the saved ``(log_sum, marks)`` of
        :meth:`lazy_decay_marks`, or no pending decay at all if ``saved`` is None."""
        for device_id in device_ids:
            if saved is None:
                self._row_decay.pop((index, device_id), None)
            else:
                self._row_decay[(index, device_id)] = RowDecay.from_numpy(*saved)


__all__ = ["LazyDecayMixin", "RowDecay", "advance", "advance_all", "catch_up", "catch_up_all",
           "check_lazy_decay", "mark", "row_ids"]

"""The Adagrad update as plain functions on NDArrays: the readable reference.

Everything else in the package (the optimizer class, the fused kernels) is tested against
:func:`adagrad_update`. :func:`reference_steps` runs it on a list of :class:`Step` records
with an :class:`~adagrad_gluon.optim.options.AdagradOptions`, the very signature of the fast
path, :func:`adagrad_gluon.optim.kernels.fused_steps`. One step, for a weight ``w``, its
gradient ``g`` and its accumulator ``s``, all of one shape::

    g = clip(rescale_grad * g, -clip_gradient, clip_gradient)    # clip only if given
    g = -g                                                       # maximize only
    g = g + wd * w                                               # weight_decay_mode 'l2' only
    s = s + g * g
    d = g / sqrt(s + eps)            # eps_placement 'inside'  (MXNet 1.x, d2l, Keras, Optax)
    d = g / (sqrt(s) + eps)          # eps_placement 'outside' (PyTorch, MXNet 2.0)
    d = g where sqrt(s) + eps == 0   # eps = 0 and s == 0: never 0/0 (see below)
    w = w - lr * (d + wd * w)        # weight_decay_mode 'step' (MXNet 1.x)
    w = w - lr * d                   # weight_decay_mode 'l2'
    w = (w - lr * wd * w) - lr * d   # weight_decay_mode 'decoupled' (Keras)

Row-wise (``rowwise=True``, :func:`rowwise_adagrad_update`): one accumulator per row (axis 0;
a row of an N-D weight is everything after axis 0), of shape ``(rows,)``. Per row ``r``, ``g`` as
prepared above (rescale, clip, maximize, l2)::

    s_r = s_r + mean_j(g_rj * g_rj)
    u_rj = (lr * g_rj) / denominator(s_r)        # as above, eps inside or outside
    w = w - u                        # weight_decay_mode 'l2', or wd == 0
    w = w - (u + w * wd * lr)        # weight_decay_mode 'step'
    w = (w - w * wd * lr) - u        # weight_decay_mode 'decoupled'

The mean is rounded as MXNet 1.9.1's ``mx.optimizer.contrib.GroupAdaGrad`` rounds it, so
that the ``'groupadagrad'`` preset is that optimizer bit for bit: for a dense gradient as
``nd.mean`` (a left-to-right Kahan-compensated sum of the squares, then divided by the row
length), for a ``row_sparse`` one as its sparse kernel (a plain left-to-right sum, then
divided). ``lr * g`` is multiplied before the division, as GroupAdaGrad does.

A ``row_sparse`` gradient updates only its rows (:func:`adagrad_update_row_sparse`). A
skipped row ``r`` of a dense update would only decay, ``w_r = w_r * (1 - lr_k * wd_k)``
('decoupled' and 'step'; 'l2' would also grow its accumulator), so the lazy update, before a
row's step, multiplies it by the product of those factors over the updates ``k`` it skipped::

    w_r = w_r * exp(sum_k log1p(-lr_k * wd_k))   # in float64, rounded once (lazy_decay.py)

Reference: J. Duchi, E. Hazan, Y. Singer, "Adaptive Subgradient Methods for Online Learning
and Stochastic Optimization", JMLR 12 (2011) 2121-2159.

'step' and 'decoupled' are the same map in exact arithmetic (the adaptive step does not depend
on ``w``); they differ only in the order of rounding, and each matches its framework bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from mxnet import nd

from .options import EPS_PLACEMENTS, WEIGHT_DECAY_MODES, AdagradOptions

__all__ = ["EPS_PLACEMENTS", "WEIGHT_DECAY_MODES", "Step", "adagrad_update",
           "adagrad_update_row_sparse", "denominator", "prepared_gradient", "reference_steps",
           "row_mean_square", "rowwise_adagrad_update", "rowwise_adagrad_update_row_sparse"]


class Step(NamedTuple):
    """One parameter's update, as :func:`reference_steps` and
    :func:`~adagrad_gluon.optim.kernels.fused_steps` take it."""

    weight: nd.NDArray
    grad: nd.NDArray  # dense or row_sparse, the weight's shape and dtype
    acc: nd.NDArray  # the accumulator: float32, float64 for float64 weights; (rows,) if rowwise
    master: nd.NDArray | None  # the float32 copy of a float16 weight, if kept
    lr: float
    wd: float
    row_sparse: bool  # whether ``grad`` is row_sparse


def denominator(acc, eps: float, eps_placement: str = "inside"):
    """What the gradient is divided by: ``sqrt(s + eps)`` (``'inside'``) or ``sqrt(s) + eps``
    (``'outside'``), for an accumulator ``acc`` (an NDArray, or a numpy array)."""
    sqrt = nd.sqrt if isinstance(acc, nd.NDArray) else np.sqrt
    return sqrt(acc + eps) if eps_placement == "inside" else sqrt(acc) + eps


def _update_denominator(state: nd.NDArray, eps: float, eps_placement: str) -> nd.NDArray:
    """:func:`denominator` as the update divides by it: with ``eps == 0`` a zero denominator is
    replaced by 1. It is 0 only where ``s == 0``, so ``g * g == 0`` there: ``g`` is 0 (or so
    small that its square underflows), and the update is 0 (or negligible), never 0/0."""
    denom = denominator(state, eps, eps_placement)
    return denom + (denom == 0) if eps == 0 else denom


def adagrad_update(
    weight: nd.NDArray,
    grad: nd.NDArray,
    state: nd.NDArray,
    *,
    lr: float,
    wd: float = 0.0,
    eps: float = 1e-6,
    rescale_grad: float = 1.0,
    clip_gradient: float | None = None,
    eps_placement: str = "inside",
    weight_decay_mode: str = "step",
    maximize: bool = False,
) -> None:
    """One Adagrad step on a dense ``weight`` and ``state`` (the accumulator), in place.

    ``weight``, ``grad`` and ``state`` must have one shape and one dtype; the caller checks.
    The operations and their order follow MXNet 1.9.1's ``AdaGrad.update`` for the default
    options, so with equal ``eps`` the results are bit-identical to the built-in.
    """
    g = prepared_gradient(weight, grad, wd=wd, rescale_grad=rescale_grad,
                          clip_gradient=clip_gradient, weight_decay_mode=weight_decay_mode,
                          maximize=maximize)
    state += nd.square(g)  # in place (``state[:] +=`` is the same op, plus a self-copy)
    div = g / _update_denominator(state, eps, eps_placement)
    if weight_decay_mode == "step" and wd:
        weight += (div + weight * wd) * -lr
    elif weight_decay_mode == "decoupled" and wd:
        weight -= weight * wd * lr
        weight -= div * lr
    else:
        weight += div * -lr


def prepared_gradient(
    weight: nd.NDArray | None,
    grad: nd.NDArray,
    *,
    wd: float = 0.0,
    rescale_grad: float = 1.0,
    clip_gradient: float | None = None,
    weight_decay_mode: str = "step",
    maximize: bool = False,
) -> nd.NDArray:
    """The gradient the step accumulates (a new array): rescaled, clipped, negated under
    ``maximize``, plus ``wd * weight`` under ``weight_decay_mode='l2'`` (``weight`` may be
    None otherwise); the first lines of :func:`adagrad_update`, with the same rounding."""
    g = grad * rescale_grad
    if clip_gradient is not None:
        g = nd.clip(g, -clip_gradient, clip_gradient)
    if maximize:
        g = -g
    if weight_decay_mode == "l2" and wd:
        g = g + weight * wd
    return g


def adagrad_update_row_sparse(
    weight: nd.NDArray, grad: nd.NDArray, state: nd.NDArray, **options
) -> None:
    """The lazy Adagrad step for a ``row_sparse`` gradient: only the rows it holds change.

    The rows of ``weight`` and ``state`` named by ``grad.indices`` go through
    :func:`adagrad_update` with ``grad.data``; every other row, and its accumulator, is left
    untouched. ``options`` are those of :func:`adagrad_update`.
    """
    rows = grad.indices
    if rows.shape[0] == 0:
        return
    w_rows = nd.take(weight, rows)
    s_rows = nd.take(state, rows)
    adagrad_update(w_rows, grad.data, s_rows, **options)
    weight[rows] = w_rows
    state[rows] = s_rows


def row_mean_square(g: nd.NDArray, *, compensated: bool = True) -> nd.NDArray:
    """``mean_j(g_rj * g_rj)`` of each row ``r`` of ``g`` (shape ``(rows,)``; ``g`` has a row
    length >= 1): the squares summed left to right with Kahan's compensation as ``nd.mean``
    does (``compensated``), or plainly (as GroupAdaGrad's sparse kernel), then divided by the
    row length."""
    squares = nd.square(g).reshape((g.shape[0], -1))
    if compensated:
        return nd.mean(squares, axis=1)
    total = squares[:, 0]
    for j in range(1, squares.shape[1]):
        total = total + squares[:, j]
    return total / squares.shape[1]


def rowwise_adagrad_update(
    weight: nd.NDArray,
    grad: nd.NDArray,
    state: nd.NDArray,
    *,
    lr: float,
    wd: float = 0.0,
    eps: float = 1e-6,
    rescale_grad: float = 1.0,
    clip_gradient: float | None = None,
    eps_placement: str = "inside",
    weight_decay_mode: str = "step",
    maximize: bool = False,
    compensated: bool = True,
) -> None:
    """One row-wise Adagrad step (see the module docstring) on a dense ``weight`` of at least
    two dimensions, its gradient and its ``(rows,)`` accumulator ``state``, in place.
    ``compensated``: how the row means are summed (see :func:`row_mean_square`). A weight
    with rows of length 0 is left as it is."""
    if weight.size == 0:
        return
    g = prepared_gradient(weight, grad, wd=wd, rescale_grad=rescale_grad,
                          clip_gradient=clip_gradient, weight_decay_mode=weight_decay_mode,
                          maximize=maximize)
    state += row_mean_square(g, compensated=compensated)
    denom = _update_denominator(state, eps, eps_placement)
    step = nd.broadcast_div(g * lr, denom.reshape((-1,) + (1,) * (g.ndim - 1)))
    if weight_decay_mode == "step" and wd:
        weight -= step + weight * wd * lr
    elif weight_decay_mode == "decoupled" and wd:
        weight -= weight * wd * lr
        weight -= step
    else:
        weight -= step


def rowwise_adagrad_update_row_sparse(
    weight: nd.NDArray, grad: nd.NDArray, state: nd.NDArray, **options
) -> None:
    """The lazy row-wise step for a ``row_sparse`` gradient: the rows it holds go through
    :func:`rowwise_adagrad_update` (their means summed plainly, as GroupAdaGrad's sparse
    kernel sums them); every other row and its accumulator are left untouched."""
    rows = grad.indices
    if rows.shape[0] == 0:
        return
    w_rows = nd.take(weight, rows)
    s_rows = nd.take(state, rows)
    rowwise_adagrad_update(w_rows, grad.data, s_rows, compensated=False, **options)
    weight[rows] = w_rows
    state[rows] = s_rows


def reference_steps(steps: Sequence[Step], options: AdagradOptions) -> None:
    """Run ``steps`` one after the other through :func:`adagrad_update` (a ``row_sparse`` one
    through :func:`adagrad_update_row_sparse`; with ``options.rowwise``, their row-wise
    variants), in place. A float16 weight steps in its
    accumulator's precision, from its ``master`` copy if it has one, and is rounded back."""
    shared = dict(eps=options.eps, rescale_grad=options.rescale_grad,
                  clip_gradient=options.clip_gradient, eps_placement=options.eps_placement,
                  weight_decay_mode=options.weight_decay_mode, maximize=options.maximize)
    dense, lazy = ((rowwise_adagrad_update, rowwise_adagrad_update_row_sparse) if options.rowwise
                   else (adagrad_update, adagrad_update_row_sparse))
    for step in steps:
        update = lazy if step.row_sparse else dense
        weight, acc, master = step.weight, step.acc, step.master
        if weight.dtype == acc.dtype:
            update(weight, step.grad, acc, lr=step.lr, wd=step.wd, **shared)
            continue
        work = master if master is not None else weight.astype(acc.dtype)
        update(work, step.grad.astype(acc.dtype), acc, lr=step.lr, wd=step.wd, **shared)
        nd.cast(work, dtype=weight.dtype, out=weight)

"""The Adagrad update as plain functions on NDArrays: the readable reference.

Everything else in the package (the optimizer class, the fused kernels) is tested against
:func:`adagrad_update`. One step, for a weight ``w``, its gradient ``g`` and its accumulator
``s``, all of one shape::

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

Reference: J. Duchi, E. Hazan, Y. Singer, "Adaptive Subgradient Methods for Online Learning
and Stochastic Optimization", JMLR 12 (2011) 2121-2159.

'step' and 'decoupled' are the same map in exact arithmetic (the adaptive step does not depend
on ``w``); they differ only in the order of rounding, and each matches its framework bit for bit.
"""

from __future__ import annotations

from mxnet import nd

EPS_PLACEMENTS = ("inside", "outside")
WEIGHT_DECAY_MODES = ("step", "l2", "decoupled")


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
    if eps_placement == "inside":
        denom = nd.sqrt(state + eps)
    else:
        denom = nd.sqrt(state) + eps
    if eps == 0:
        # denom == 0 only where s == 0, so g * g == 0 there: g is 0 (or so small that its
        # square underflows); dividing it by 1 makes the update 0 (or negligible), never 0/0.
        denom = denom + (denom == 0)
    div = g / denom
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

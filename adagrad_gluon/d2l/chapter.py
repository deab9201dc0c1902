"""The Adagrad chapter of *Dive into Deep Learning*, named as the book names things.

The 2-D example on ``f(x) = 0.1 * x1**2 + 2 * x2**2`` and the from-scratch update of the
linear-regression parameters. The data and the training loops live in :mod:`adagrad_gluon.d2l.data`
and :mod:`adagrad_gluon.d2l.training`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from mxnet import nd

from ..validation import check_count, check_leak

Point2D = tuple[float, float, float, float]  # (x1, x2, s1, s2)


def f_2d(x1: float, x2: float) -> float:
    """The chapter's objective, ``0.1 * x1**2 + 2 * x2**2``."""
    return 0.1 * x1**2 + 2 * x2**2


def adagrad_2d(
    x1: float, x2: float, s1: float, s2: float, eta: float = 0.4, eps: float = 1e-6
) -> Point2D:
    """One Adagrad step on :func:`f_2d` from ``(x1, x2)`` with accumulators ``(s1, s2)``."""
    g1, g2 = 0.2 * x1, 4 * x2
    s1 += g1**2
    s2 += g2**2
    x1 -= eta / math.sqrt(s1 + eps) * g1
    x2 -= eta / math.sqrt(s2 + eps) * g2
    return x1, x2, s1, s2


def train_2d(
    trainer: Callable[[float, float, float, float], Point2D],
    steps: int = 20,
    start: tuple[float, float] = (-5.0, -2.0),
) -> list[Point2D]:
    """Run ``trainer`` (e.g. :func:`adagrad_2d`) for ``steps`` steps from ``start``.

    Returns the path, ``steps + 1`` tuples ``(x1, x2, s1, s2)``, the start point first.
    """
    steps = check_count("steps", steps)
    x1, x2 = (float(v) for v in start)
    path: list[Point2D] = [(x1, x2, 0.0, 0.0)]
    for _ in range(steps):
        path.append(tuple(float(v) for v in trainer(*path[-1])))
    return path


def format_2d(path: Sequence[Point2D]) -> str:
    """The line the book prints after :func:`train_2d`: ``epoch 20, x1 -2.382563, x2 -0.158591``."""
    x1, x2 = path[-1][:2]
    return f"epoch {len(path) - 1}, x1 {x1:f}, x2 {x2:f}"


def init_adagrad_states(feature_dim: int) -> tuple[nd.NDArray, nd.NDArray]:
    """Zero accumulators for the weight ``(feature_dim, 1)`` and the bias ``(1,)``."""
    return nd.zeros((feature_dim, 1)), nd.zeros(1)


def adagrad(
    params: Sequence[nd.NDArray], states: Sequence[nd.NDArray], hyperparams: dict
) -> None:
    """The chapter's from-scratch Adagrad: ``s += g**2; p -= lr * g / sqrt(s + eps)``."""
    eps = 1e-6
    for p, s in zip(params, states, strict=True):
        s[:] += nd.square(p.grad)
        p[:] -= hyperparams["lr"] * p.grad / nd.sqrt(s + eps)


def init_rmsprop_states(feature_dim: int) -> tuple[nd.NDArray, nd.NDArray]:
    """Zero leaky accumulators for :func:`rmsprop`, shaped as :func:`init_adagrad_states`'s."""
    return init_adagrad_states(feature_dim)


def rmsprop(
    params: Sequence[nd.NDArray], states: Sequence[nd.NDArray], hyperparams: dict
) -> None:
    """The remedy for Adagrad's decaying rate, from the book's RMSProp chapter (Tieleman and
    Hinton, 2012): a leaky average instead of a sum of squared gradients,
    ``s = gamma * s + (1 - gamma) * g**2; p -= lr * g / sqrt(s + eps)``, with
    ``hyperparams = {'lr': ..., 'gamma': ...}`` and ``0 <= gamma < 1``.

    The accumulator forgets old gradients, so the step size ``lr / sqrt(s + eps)`` settles
    instead of shrinking like ``1 / sqrt(t)``.
    """
    gamma, eps = check_leak("hyperparams['gamma']", hyperparams["gamma"]), 1e-6
    for p, s in zip(params, states, strict=True):
        s[:] = gamma * s + (1 - gamma) * nd.square(p.grad)
        p[:] -= hyperparams["lr"] * p.grad / nd.sqrt(s + eps)

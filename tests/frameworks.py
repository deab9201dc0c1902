"""Adagrad as each framework publishes it, in float64 numpy, one function per framework.

Written from each framework's documented update (not from adagrad_gluon's code), so that
``compat=`` presets are tested against an independent statement of the formula. Each takes
``(w, g, s, t)`` with ``t`` the 1-based step and returns the new ``(w, s)``.
"""

from __future__ import annotations

import numpy as np


def d2l(w, g, s, t, *, lr, eps=1e-6, wd=0.0):
    """d2l's adagrad (MXNet 1.x form; weight decay as MXNet 1.x adds it to the step)."""
    s = s + g**2
    return w - lr * (g / np.sqrt(s + eps) + wd * w), s


def mxnet1(w, g, s, t, *, lr, eps=1e-7, wd=0.0):
    """MXNet 1.9 ``AdaGrad.update``:
    ``weight += (grad / sqrt(history + eps) + weight * wd) * -lr``."""
    s = s + g**2
    return w + (g / np.sqrt(s + eps) + w * wd) * -lr, s


def mxnet2(w, g, s, t, *, lr, eps=1e-6, wd=0.0):
    """MXNet 2.0 ``AdaGrad.step``: ``grad += wd * weight; history += grad**2;
    weight -= lr * grad / (sqrt(history) + epsilon)``."""
    g = g + wd * w
    s = s + g**2
    return w - lr * g / (np.sqrt(s) + eps), s


def pytorch(w, g, s, t, *, lr, eps=1e-10, wd=0.0, lr_decay=0.0, maximize=False):
    """``torch.optim.Adagrad`` (its documented algorithm): ``g = -g`` if maximize;
    ``g += wd * theta``; ``clr = lr / (1 + (t - 1) * lr_decay)``; ``sum += g**2``;
    ``theta -= clr * g / (sqrt(sum) + eps)``."""
    if maximize:
        g = -g
    g = g + wd * w
    clr = lr / (1 + (t - 1) * lr_decay)
    s = s + g**2
    return w - clr * g / (np.sqrt(s) + eps), s


def keras(w, g, s, t, *, lr, eps=1e-7, wd=0.0):
    """Keras 3 ``Adagrad`` with ``weight_decay``: ``w -= w * wd * lr`` first (decoupled), then
    ``acc += g**2; w -= lr * g / sqrt(acc + epsilon)``; ``acc`` starts at 0.1."""
    w = w - w * wd * lr
    s = s + g**2
    return w - lr * g / np.sqrt(s + eps), s


def optax(w, g, s, t, *, lr, eps=1e-7, wd=0.0):
    """``optax.chain(add_decayed_weights(wd), adagrad(lr))``: ``g += wd * w``; ``scale_by_rss``:
    ``s += g**2``, ``u = where(s > 0, g * rsqrt(s + eps), 0)``; ``w -= lr * u``; ``s`` starts
    at 0.1."""
    g = g + wd * w
    s = s + g**2
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(s > 0, g / np.sqrt(s + eps), 0.0)
    return w - lr * u, s


def _row_mean(x):
    """The mean over everything after axis 0, kept as a column for broadcasting."""
    return x.reshape(x.shape[0], -1).mean(axis=1).reshape((-1,) + (1,) * (x.ndim - 1))


def groupadagrad(w, g, s, t, *, lr, eps=1e-5):
    """MXNet 1.9 ``mx.optimizer.contrib.GroupAdaGrad`` (no weight decay; ``s`` per row):
    ``history += mean(square(grad), axis=1, keepdims=True);
    weight -= lr * grad / sqrt(history + float_stable_eps)``."""
    s = s + _row_mean(g**2).reshape(s.shape)
    return w - lr * g / np.sqrt(s + eps).reshape(_row_mean(g).shape), s


def fbgemm(w, g, s, t, *, lr, eps=1e-8, wd=0.0, weight_decay_mode="l2"):
    """FBGEMM ``EXACT_ROWWISE_ADAGRAD`` (``s`` per row, ``momentum1``): with
    ``WeightDecayMode.L2`` ``g += wd * w`` enters the sum of squares; ``s += sum(g**2) / D``;
    ``multiplier = lr / (sqrt(s) + eps)``; ``correction = 1 - multiplier * wd`` (L2) or
    ``1 - lr * wd`` (DECOUPLED); ``w = correction * w - multiplier * grad``."""
    sq_source = g + wd * w if weight_decay_mode == "l2" else g
    s = s + _row_mean(sq_source**2).reshape(s.shape)
    multiplier = (lr / (np.sqrt(s) + eps)).reshape(_row_mean(g).shape)
    correction = 1 - multiplier * wd if weight_decay_mode == "l2" else 1 - lr * wd
    return correction * w - multiplier * g, s


FRAMEWORKS = {"d2l": d2l, "mxnet1": mxnet1, "mxnet2": mxnet2, "pytorch": pytorch,
              "keras": keras, "optax": optax, "groupadagrad": groupadagrad, "fbgemm": fbgemm}
INITIAL_ACCUMULATOR = {"keras": 0.1, "optax": 0.1}
ROWWISE = ("groupadagrad", "fbgemm")  # one accumulator per row

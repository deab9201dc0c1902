"""A plain float64 numpy Adagrad, written from the formulas, to test every path against."""

from __future__ import annotations

import numpy as np


def adagrad_reference(w, g, s, *, lr, wd=0.0, eps=1e-6, rescale_grad=1.0, clip_gradient=None,
                      eps_placement="inside", weight_decay_mode="step", maximize=False):
    """One step in float64; returns the new ``(w, s)`` and leaves the inputs alone."""
    w, g, s = (np.asarray(a, dtype=np.float64) for a in (w, g, s))
    g = g * rescale_grad
    if clip_gradient is not None:
        g = np.clip(g, -clip_gradient, clip_gradient)
    if maximize:
        g = -g
    if weight_decay_mode == "l2":
        g = g + wd * w
    s = s + g * g
    denom = np.sqrt(s + eps) if eps_placement == "inside" else np.sqrt(s) + eps
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(s > 0, g / denom, 0.0)
    if weight_decay_mode == "step":
        w = w - lr * (d + wd * w)
    elif weight_decay_mode == "decoupled":
        w = w - lr * wd * w - lr * d
    else:
        w = w - lr * d
    return w, s


def rowwise_adagrad_reference(w, g, s, *, lr, wd=0.0, eps=1e-6, rescale_grad=1.0,
                              clip_gradient=None, eps_placement="inside",
                              weight_decay_mode="step", maximize=False):
    """One row-wise step in float64 (``s`` of shape ``(rows,)``: ``s_r += mean_j(g_rj^2)``,
    every coordinate of row ``r`` divided by its row's denominator); returns ``(w, s)``."""
    w, g, s = (np.asarray(a, dtype=np.float64) for a in (w, g, s))
    g = g * rescale_grad
    if clip_gradient is not None:
        g = np.clip(g, -clip_gradient, clip_gradient)
    if maximize:
        g = -g
    if weight_decay_mode == "l2":
        g = g + wd * w
    s = s + (g * g).reshape(len(s), -1).mean(axis=1)
    column = (-1,) + (1,) * (w.ndim - 1)
    denom = (np.sqrt(s + eps) if eps_placement == "inside" else np.sqrt(s) + eps).reshape(column)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(s.reshape(column) > 0, g / denom, 0.0)
    if weight_decay_mode == "step":
        w = w - lr * (d + wd * w)
    elif weight_decay_mode == "decoupled":
        w = w - lr * wd * w - lr * d
    else:
        w = w - lr * d
    return w, s


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|: the error relative to the tensor's scale."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.size == 0:
        return 0.0
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def error_at_scale(actual, expected, scale: float) -> float:
    """max |actual - expected| / scale. In float32, ``a - b`` is exact only to a relative
    2**-24 of max(|a|, |b|): a weight that a few steps take from 1 to 0.001 is compared at the
    scale of the values it passed through, not at its own."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.size == 0:
        return 0.0
    return float(np.max(np.abs(actual - expected)) / max(scale, 1e-30))

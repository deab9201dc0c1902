"""The chapter's pictures, drawn on plain matplotlib Figures.

Every function returns a :class:`matplotlib.figure.Figure` backed by the Agg canvas and never
touches pyplot, so it works without a display and leaves the user's backend and pyplot's list
of open figures alone. Save one with :func:`save_figure`; a notebook shows it when it is the
value of a cell (after ``%matplotlib inline``). Functions that draw one panel also take an
``ax=`` to draw into an existing figure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

if TYPE_CHECKING:
    from .diagnostics import EffectiveLRRecorder
    from .training import TrainResult

DPI = 100
BOOK_BOX = ((-5.5, 1.0), (-3.0, 1.0))  # the x1 and x2 ranges the book's 2-D plots show
_LINESTYLES = ("-", "--", ":", "-.")


def new_figure(ncols: int = 1, *,
               panel_size: tuple[float, float] = (6.0, 4.0)) -> tuple[Figure, list[Axes]]:
    """A Figure on the Agg canvas with ``ncols`` panels side by side, and their Axes."""
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1]), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Write ``fig`` to ``path`` (the format from its suffix, e.g. ``.png``); returns the path."""
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path


def _axes(ax: Axes | None) -> tuple[Figure, Axes]:
    if ax is None:
        fig, (ax,) = new_figure()
        return fig, ax
    return ax.figure, ax


def _short_names(names: Sequence[str]) -> list[str]:
    """Drop the Gluon block prefix all names share (``dense0_weight``, ``dense0_bias`` ->
    ``weight``, ``bias``): the common start up to its last underscore."""
    prefix = os.path.commonprefix(list(names)) if len(names) > 1 else ""
    prefix = prefix[:prefix.rfind("_") + 1]
    return [name[len(prefix):] or name for name in names]


def _log_scale(ax: Axes, which: str) -> None:
    """Put the ``'x'`` or ``'y'`` axis of ``ax`` on a log scale labelled with plain numbers
    at 1, 2 and 5 times the powers of ten."""
    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def _use_log_scale(values: np.ndarray) -> bool:
    """Log scale helps when the positive values span more than a factor of 3."""
    values = values[np.isfinite(values)]
    return values.size > 0 and values.min() > 0 and values.max() / values.min() > 3


def show_trace_2d(f: Callable, path: Sequence[Sequence[float]], *, ax: Axes | None = None,
                  title: str | None = None) -> Figure:
    """Contours of ``f(x1, x2)`` with the iterates ``path`` drawn over them, as the book does.

    ``f`` must accept numpy arrays (e.g. :func:`adagrad_gluon.d2l.chapter.f_2d`); ``path`` holds
    points whose first two entries are ``x1, x2`` (e.g. from
    :func:`adagrad_gluon.d2l.chapter.train_2d`). The view is the book's box, widened to hold the
    whole path.
    """
    points = np.array([tuple(p)[:2] for p in path], dtype=np.float64)
    if points.ndim != 2 or points.shape[0] == 0 or points.shape[1] != 2:
        raise ValueError("path must be a non-empty sequence of points (x1, x2, ...)")
    if not np.isfinite(points).all():
        raise ValueError("path contains non-finite coordinates")
    fig, ax = _axes(ax)
    (lo1, hi1), (lo2, hi2) = BOOK_BOX
    lo1, hi1 = min(lo1, points[:, 0].min() - 0.5), max(hi1, points[:, 0].max() + 0.5)
    lo2, hi2 = min(lo2, points[:, 1].min() - 0.5), max(hi2, points[:, 1].max() + 0.5)
    x1, x2 = np.meshgrid(np.linspace(lo1, hi1, 300), np.linspace(lo2, hi2, 300))
    z = np.asarray(f(x1, x2), dtype=np.float64)
    if z.min() >= 0:  # e.g. a quadratic: even steps in sqrt(f) give evenly spaced ellipses
        levels = np.linspace(0, math.sqrt(z.max()), 14) ** 2
    else:
        levels = np.linspace(z.min(), z.max(), 14)
    ax.contourf(x1, x2, z, levels=levels, cmap="Blues", alpha=0.45)
    ax.contour(x1, x2, z, levels=levels[1:], colors="#1f77b4", linewidths=0.8)
    ax.plot(points[:, 0], points[:, 1], "-o", color="#ff7f0e", markersize=4, linewidth=1.5,
            label=f"iterates ({len(points) - 1} steps)")
    ax.plot(*points[0], "s", color="#d62728", markersize=8, label="start")
    ax.plot(*points[-1], "*", color="#2ca02c", markersize=14,
            label=f"end ({points[-1, 0]:.3f}, {points[-1, 1]:.3f})")
    ax.set_xlim(lo1, hi1)
    ax.set_ylim(lo2, hi2)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(title or f"{len(points) - 1} steps")
    ax.legend(loc="lower right", fontsize="small", framealpha=0.9)
    return fig


def plot_losses(results: Sequence[TrainResult], *, ax: Axes | None = None,
                title: str = "Training loss", log_y: bool | None = None) -> Figure:
    """The recorded full-data loss against epochs, one line per result.

    Lines get distinct styles and decreasing widths so that runs that coincide (as the three
    of ``adagrad-gluon compare`` do) all stay visible. ``log_y=None`` picks a log scale when
    the losses span more than a factor of 3.
    """
    if not results:
        raise ValueError("results must hold at least one training result")
    fig, ax = _axes(ax)
    all_losses = []
    for i, result in enumerate(results):
        epochs, losses = np.array(result.losses, dtype=np.float64).reshape(-1, 2).T
        losses[~np.isfinite(losses)] = np.nan
        all_losses.append(losses)
        ax.plot(epochs, losses, linestyle=_LINESTYLES[i % len(_LINESTYLES)],
                linewidth=max(3.5 - 1.0 * i, 1.2), marker="o" if len(epochs) <= 30 else None,
                markersize=max(6 - 1.5 * i, 2),
                label=f"{result.name}: final {result.final_loss:.4f}")
    if log_y is None:
        log_y = _use_log_scale(np.concatenate(all_losses))
    if log_y:
        _log_scale(ax, "y")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss on all examples")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_effective_lr(recorder: EffectiveLRRecorder, *, ax: Axes | None = None,
                      title: str = "Effective learning rate per coordinate",
                      guide: bool = True) -> Figure:
    """Each coordinate's effective learning rate ``lr / sqrt(s + eps)`` over training.

    ``recorder`` is an :class:`~adagrad_gluon.d2l.diagnostics.EffectiveLRRecorder` that watched a
    run. Log-log axes, where Adagrad's ``1 / sqrt(t)`` decay is a straight line; ``guide``
    draws that slope, from the median first rate, for reference.
    """
    series = recorder.series()
    if not series:
        raise ValueError("the recorder holds no records; pass it as on_record= to a training")
    fig, ax = _axes(ax)
    epochs = np.asarray(recorder.epochs, dtype=np.float64)
    names = sorted(series)  # one order (and colours) whatever order the parameters came in
    for name, label in zip(names, _short_names(names), strict=True):
        rates = series[name]
        for j in range(rates.shape[1]):
            suffix = f"[{j}]" if rates.shape[1] > 1 else ""
            ax.plot(epochs, rates[:, j], linewidth=1.6, label=f"{label}{suffix}")
    start = float(np.median(np.concatenate([r[0] for r in series.values()])))
    if guide and math.isfinite(start) and start > 0:  # a diverged run has NaN rates
        ax.plot(epochs, start * np.sqrt(epochs[0] / epochs), "k--", linewidth=1,
                label=r"$\propto 1/\sqrt{t}$")
    _log_scale(ax, "x")
    rates = np.concatenate([r.reshape(-1) for r in series.values()])
    if (np.isfinite(rates) & (rates > 0)).any():  # else matplotlib refuses a log axis
        _log_scale(ax, "y")
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"$\eta / \sqrt{s + \epsilon}$")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return fig


def plot_sweep(results: Sequence[TrainResult], lrs: Sequence[float], *,
               title: str = "Initial learning rate") -> Figure:
    """Two panels: the loss curves of runs with learning rates ``lrs``, and the final loss
    against the learning rate (log scale), the best one marked."""
    if not results or len(results) != len(lrs):
        raise ValueError(f"need one result per learning rate, got {len(results)} results "
                         f"for {len(lrs)} learning rates")
    fig, (left, right) = new_figure(2, panel_size=(5.5, 4.0))
    plot_losses(results, ax=left, title="Loss during training")
    final = np.array([r.final_loss for r in results], dtype=np.float64)
    right.plot(lrs, final, "o-", color="#1f77b4")
    if np.isfinite(final).any():
        best = int(np.nanargmin(np.where(np.isfinite(final), final, np.nan)))
        right.plot(lrs[best], final[best], "*", color="#d62728", markersize=16,
                   label=f"best: lr {lrs[best]:g}, loss {final[best]:.4f}")
        right.legend(fontsize="small")
    _log_scale(right, "x")
    if _use_log_scale(final):
        _log_scale(right, "y")
    right.set_xlabel("learning rate $\\eta$")
    right.set_ylabel("final loss")
    right.set_title("Final loss")
    right.grid(True, which="both", alpha=0.3)
    fig.suptitle(title)
    return fig


def plot_remedy(results: Sequence[TrainResult], recorders: Sequence[EffectiveLRRecorder], *,
                title: str = "Adagrad and a leaky accumulator on the same data") -> Figure:
    """Runs side by side: their losses in the first panel, then each run's effective learning
    rates (shared log scale), e.g. Adagrad against the RMSProp-style remedy."""
    if not results or len(results) != len(recorders):
        raise ValueError(f"need one recorder per result, got {len(recorders)} recorders for "
                         f"{len(results)} results")
    fig, axes = new_figure(len(results) + 1, panel_size=(4.3, 3.7))
    plot_losses(results, ax=axes[0], title="Loss")
    for ax, result, recorder in zip(axes[1:], results, recorders, strict=True):
        plot_effective_lr(recorder, ax=ax, title=f"{result.name}: effective rate")
    limits = np.array([ax.get_ylim() for ax in axes[1:]])
    limits = limits[np.isfinite(limits).all(axis=1) & (limits > 0).all(axis=1)]
    if limits.size:  # one scale for all rates, so that they compare at a glance
        for ax in axes[1:]:
            ax.set_ylim(limits[:, 0].min(), limits[:, 1].max())
    fig.suptitle(title)
    return fig

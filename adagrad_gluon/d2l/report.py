"""The results of :mod:`.experiments` as text tables, JSON documents and figures.

``*_table(result)`` gives the text the command line prints (a title line and a table);
``write_*(result, out, options)`` saves the figures into the directory ``out``, then the JSON
document ``<command>.json``, and returns their paths (the JSON first). ``out`` must exist.

Every JSON document is ``{"command": ..., <the experiment's content>, "figures": [...],
"options": {...}, "versions": {...}}``, strict JSON: a non-finite number (a diverged run)
is written as ``null``.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import mxnet as mx
import numpy as np
from matplotlib.figure import Figure

from .. import __version__
from . import chapter, plotting
from .diagnostics import EffectiveLRRecorder
from .experiments import OURS, AirfoilData, Comparison, Remedy, Sweep, Trajectory
from .training import TrainResult


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells):
        return "  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                         for i, (cell, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(headers), line("-" * w for w in widths), *map(line, rows)])


# -- JSON ------------------------------------------------------------------------------------

def json_safe(value):
    """``value`` with every non-finite float (from a diverged run) replaced by ``None``, so
    that it is valid JSON (``null``)."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_record(result: TrainResult) -> dict:
    """A training run as JSON-ready data: name, final loss, timing, losses and parameters."""
    return {
        "name": result.name,
        "final_loss": result.final_loss,
        "sec_per_epoch": result.sec_per_epoch,
        "losses": [list(pair) for pair in result.losses],
        "params": {name: np.asarray(value, dtype=np.float64).tolist()
                   for name, value in result.params.items()},
    }


def _run_records(runs: Sequence[TrainResult], **columns: Sequence) -> list[dict]:
    """:func:`run_record` of each run, with ``columns[key][i]`` added to run ``i``'s."""
    return [{**run_record(run), **dict(zip(columns, values, strict=True))}
            for run, *values in zip(runs, *columns.values(), strict=True)]


def data_record(data: AirfoilData) -> dict:
    """Which data an experiment trained on: the file, its SHA-1 and the batching."""
    return {"file": data.file, "sha1": data.sha1, "examples": data.examples,
            "feature_dim": data.feature_dim, "batch_size": data.batch_size}


def versions() -> dict[str, str]:
    """The versions of this package, MXNet, numpy and Python."""
    return {"adagrad_gluon": __version__, "mxnet": mx.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def write_json(path: Path, command: str, content: Mapping, options: Mapping) -> Path:
    """Write ``{"command": command, **content, "options": options, "versions": ...}`` to
    ``path`` as strict JSON (see :func:`json_safe`); returns ``path``."""
    document = {"command": command, **content, "options": dict(options), "versions": versions()}
    path.write_text(json.dumps(json_safe(document), indent=1, allow_nan=False) + "\n")
    return path


def save_figure(fig: Figure, path: Path) -> Path:
    """:func:`~adagrad_gluon.d2l.plotting.save_figure`, with the file named in a
    ``ValueError`` of matplotlib's (which refuses, e.g., the data of a diverged run)."""
    try:
        return plotting.save_figure(fig, path)
    except ValueError as exc:
        raise ValueError(f"cannot draw {path.name}: {exc}") from exc


def _write(out: Path, command: str, content: Mapping, figures: Mapping[str, Figure],
           options: Mapping) -> list[Path]:
    """Save ``figures`` (by file name) into ``out``, then ``<command>.json`` with ``content``
    and the figures' names; the paths, the JSON first."""
    saved = [save_figure(fig, out / name) for name, fig in figures.items()]
    content = {**content, "figures": [path.name for path in saved]}
    return [write_json(out / f"{command}.json", command, content, options), *saved]


# -- the experiments -------------------------------------------------------------------------

def comparison_table(result: Comparison) -> str:
    """The title line and one row per run: final loss, time and the difference from the
    reference run."""
    data = result.data
    title = (f"Adagrad on the airfoil data ({data.examples} examples, batch {data.batch_size}): "
             f"lr {result.lr:g}, eps {result.eps:g}, {result.epochs} epoch(s), "
             f"seed {result.seed}")
    rows = [[run.name, f"{run.final_loss:.6f}", f"{run.sec_per_epoch:.3f}",
             "(reference)" if run.name == result.reference else f"{diff:.2e}"]
            for run, diff in zip(result.runs, result.diffs, strict=True)]
    headers = ["run", "final loss", "sec/epoch", f"max |Δparam| vs {result.reference}"]
    return f"{title}\n{format_table(headers, rows)}"


def write_comparison(result: Comparison, out: Path, options: Mapping) -> list[Path]:
    """``loss_curves.png``, ``effective_lr.png`` and ``compare.json`` in ``out``."""
    figures = {
        "loss_curves.png": plotting.plot_losses(
            result.runs,
            title=f"Adagrad on the airfoil data, lr {result.lr:g}: three implementations"),
        "effective_lr.png": plotting.plot_effective_lr(
            result.recorder, title=f"{OURS}, lr {result.lr:g}: effective learning rates"),
    }
    diffs = {f"max_abs_param_diff_vs_{result.reference}": result.diffs}
    content = {
        "runs": _run_records(result.runs, **diffs),
        "reference": result.reference, "eps": result.eps, "data": data_record(result.data),
        "effective_lr": {"run": OURS, **result.recorder.to_dict()},
    }
    return _write(out, "compare", content, figures, options)


def sweep_table(result: Sweep) -> str:
    """The title line and one row per learning rate, the best one starred."""
    data = result.data
    title = (f"{OURS} on the airfoil data ({data.examples} examples, batch {data.batch_size}): "
             f"{result.epochs} epoch(s), seed {result.seed}")
    rows = [[f"{lr:g}", f"{run.final_loss:.6f}", f"{run.sec_per_epoch:.3f}",
             "*" if i == result.best else ""]
            for i, (lr, run) in enumerate(zip(result.lrs, result.runs, strict=True))]
    return f"{title}\n{format_table(['lr', 'final loss', 'sec/epoch', 'best'], rows)}"


def write_sweep(result: Sweep, out: Path, options: Mapping) -> list[Path]:
    """``sweep.png`` and ``sweep.json`` in ``out``."""
    figures = {"sweep.png": plotting.plot_sweep(
        result.runs, result.lrs,
        title=f"{OURS} on the airfoil data, {result.epochs} epoch(s)")}
    content = {"runs": _run_records(result.runs, lr=result.lrs), "best_lr": result.best_lr,
               "data": data_record(result.data)}
    return _write(out, "sweep", content, figures, options)


def _rate_range(recorder: EffectiveLRRecorder, record: int) -> str:
    """The smallest and largest effective rate of one record, e.g. ``0.043..0.14``."""
    rates = np.concatenate([series[record] for series in recorder.series().values()])
    return f"{rates.min():.2g}..{rates.max():.2g}"


def remedy_table(result: Remedy) -> str:
    """The title line and one row per run: its hyperparameters, final loss and the range of
    its effective rates at the first and at the last record."""
    data = result.data
    title = (f"From scratch on the airfoil data ({data.examples} examples, "
             f"batch {data.batch_size}): {result.epochs} epoch(s), seed {result.seed}")
    rows = [[run.name, ", ".join(f"{k} {v:g}" for k, v in hyperparams.items()),
             f"{run.final_loss:.6f}", _rate_range(recorder, 0), _rate_range(recorder, -1)]
            for run, recorder, hyperparams
            in zip(result.runs, result.recorders, result.hyperparameters, strict=True)]
    headers = ["run", "hyperparameters", "final loss", "first eff. lr", "last eff. lr"]
    return f"{title}\n{format_table(headers, rows)}"


def write_remedy(result: Remedy, out: Path, options: Mapping) -> list[Path]:
    """``remedy.png`` and ``remedy.json`` in ``out``."""
    figures = {"remedy.png": plotting.plot_remedy(
        result.runs, result.recorders,
        title=f"Adagrad (sum of g²) and RMSProp (leaky average of g²), {result.epochs} epochs")}
    runs = _run_records(result.runs, hyperparameters=result.hyperparameters,
                        effective_lr=[recorder.to_dict() for recorder in result.recorders])
    content = {"runs": runs, "eps": result.eps, "data": data_record(result.data)}
    return _write(out, "remedy", content, figures, options)


def trajectory_line(result: Trajectory) -> str:
    """The line the book prints: ``epoch 20, x1 -2.382563, x2 -0.158591``."""
    return chapter.format_2d(result.path)


def write_trajectory(result: Trajectory, out: Path) -> list[Path]:
    """``trajectory_eta<eta>.png`` in ``out``: the iterates over the contours."""
    fig = plotting.show_trace_2d(
        chapter.f_2d, result.path,
        title=rf"Adagrad on $f = 0.1x_1^2 + 2x_2^2$, $\eta$ = {result.eta:g}, "
              rf"{result.steps} steps")
    return [save_figure(fig, out / f"trajectory_eta{result.eta:g}.png")]

"""The chapter's experiments, as functions that return their results: no printing, no files.

The command line (:mod:`adagrad_gluon.cli`) and the notebook both call them, and
:mod:`.report` turns their results into tables, JSON documents and figures.

* :func:`compare`: the from-scratch function, ``adagrad_scratch`` and MXNet's built-in
  ``adagrad`` on the same data with one seed;
* :func:`sweep`: ``adagrad_scratch`` once per initial learning rate (an exercise);
* :func:`remedy`: Adagrad and an RMSProp-style leaky accumulator side by side (an exercise);
* :func:`trajectory`: the 2-D example.

Each airfoil experiment takes the data of :func:`load_data`, so that a caller can check the
data file before any training. ``progress``, if given, is called as
``progress(name, total_batches)`` once per training run and must return a context manager
whose value has ``update(1)`` (a ``tqdm`` bar fits; its value may also be ``None``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np

from ..validation import check_leak, check_number, check_positive_int
from . import chapter
from .data import ArrayLoader, airfoil_path, get_data_ch10, sha1_of
from .diagnostics import CHAPTER_EPS, EffectiveLRRecorder
from .training import TrainResult, train_ch10, train_concise_ch10

OURS = "adagrad_scratch"  # the package's optimizer, as Gluon knows it
REFERENCE_RUN = "adagrad"  # compare measures parameter differences against the built-in

Progress = Callable[[str, int], AbstractContextManager]


@dataclass(frozen=True)
class AirfoilData:
    """The airfoil mini-batches an experiment trains on, and where they came from."""

    data_iter: ArrayLoader = field(repr=False)
    file: str
    sha1: str
    examples: int
    feature_dim: int
    batch_size: int


def load_data(batch_size: int = 10, n: int = 1500,
              data_dir: str | os.PathLike | None = None) -> AirfoilData:
    """The first ``n`` airfoil examples in mini-batches of ``batch_size``, from ``data_dir``
    (default: as :func:`~adagrad_gluon.d2l.data.airfoil_path` finds the file). Raises
    :class:`~adagrad_gluon.d2l.data.DataFileError` for a missing or corrupt file."""
    path = airfoil_path(data_dir)
    data_iter, feature_dim = get_data_ch10(batch_size, n, data_dir=path.parent)
    return AirfoilData(data_iter, str(path), sha1_of(path), n, feature_dim, batch_size)


def _check_run(data: AirfoilData, epochs: int) -> int:
    """``epochs``, checked, for a training run on ``data``."""
    if not isinstance(data, AirfoilData):
        raise TypeError(f"data must be an AirfoilData (see load_data), got {data!r}")
    return check_positive_int("epochs", epochs)


def _check_lr(name: str, value: float) -> float:
    return check_number(name, value, strict=True)


def _bar(progress: Progress | None, name: str, data: AirfoilData,
         epochs: int) -> AbstractContextManager:
    if progress is None:
        return contextlib.nullcontext()
    return progress(name, epochs * len(data.data_iter))


def max_param_diff(result: TrainResult, reference: TrainResult) -> float:
    """``max |p - p_ref|`` over every trained parameter entry."""
    return max(float(np.max(np.abs(np.asarray(result.params[k]) - reference.params[k])))
               for k in reference.params)


# -- compare ---------------------------------------------------------------------------------

@dataclass
class Comparison:
    """Three implementations of Adagrad trained alike: ``runs`` are ``scratch``,
    ``adagrad_scratch`` and the built-in ``adagrad`` (the reference); ``diffs[i]`` is
    :func:`max_param_diff` of ``runs[i]`` against the reference (0.0 for the reference);
    ``recorder`` holds the effective learning rates of the ``adagrad_scratch`` run."""

    runs: list[TrainResult]
    diffs: list[float]
    recorder: EffectiveLRRecorder
    data: AirfoilData
    lr: float
    epochs: int
    seed: int
    reference: str = REFERENCE_RUN
    eps: float = CHAPTER_EPS


def compare(data: AirfoilData, lr: float = 0.1, epochs: int = 2, seed: int = 0,
            progress: Progress | None = None) -> Comparison:
    """Train the chapter's linear regression on ``data`` with the from-scratch function,
    ``adagrad_scratch`` through ``gluon.Trainer`` and MXNet's ``adagrad``: one seed (same
    initial weights, same batches) and the chapter's eps for all three."""
    epochs, lr = _check_run(data, epochs), _check_lr("lr", lr)
    recorder = EffectiveLRRecorder()
    common = {"num_epochs": epochs, "seed": seed}
    concise = {"learning_rate": lr, "eps": CHAPTER_EPS}
    with _bar(progress, "scratch", data, epochs) as bar:
        scratch = train_ch10(chapter.adagrad, chapter.init_adagrad_states(data.feature_dim),
                             {"lr": lr}, data.data_iter, data.feature_dim, name="scratch",
                             progress=bar, **common)
    with _bar(progress, OURS, data, epochs) as bar:
        ours = train_concise_ch10(OURS, concise, data.data_iter, name=OURS, progress=bar,
                                  on_record=recorder, **common)
    with _bar(progress, REFERENCE_RUN, data, epochs) as bar:
        reference = train_concise_ch10(REFERENCE_RUN, concise, data.data_iter,
                                       name=REFERENCE_RUN, progress=bar, **common)
    runs = [scratch, ours, reference]
    diffs = [max_param_diff(run, reference) for run in runs]
    return Comparison(runs, diffs, recorder, data, lr, epochs, seed)


# -- sweep -----------------------------------------------------------------------------------

@dataclass
class Sweep:
    """``adagrad_scratch`` once per learning rate: ``runs[i]`` was trained with ``lrs[i]``;
    ``best`` is the index of the lowest final loss (a diverged run, NaN or inf, never wins)."""

    runs: list[TrainResult]
    lrs: list[float]
    best: int
    data: AirfoilData
    epochs: int
    seed: int

    @property
    def best_lr(self) -> float:
        """The learning rate of the best run."""
        return self.lrs[self.best]


def sweep(data: AirfoilData, lrs: Sequence[float] = (0.01, 0.1, 0.4, 1.0, 2.0),
          epochs: int = 2, seed: int = 0, progress: Progress | None = None) -> Sweep:
    """Train ``adagrad_scratch`` on ``data`` once per learning rate in ``lrs``, each run from
    the same ``seed``; runs are named ``lr=<lr>``."""
    epochs = _check_run(data, epochs)
    lrs = [_check_lr(f"lrs[{i}]", lr) for i, lr in enumerate(lrs)]
    if not lrs:
        raise ValueError("lrs must hold at least one learning rate")
    runs = []
    for lr in lrs:
        name = f"lr={lr:g}"
        with _bar(progress, name, data, epochs) as bar:
            runs.append(train_concise_ch10(OURS, {"learning_rate": lr},
                                           data.data_iter, epochs, seed=seed, name=name,
                                           progress=bar))
    finite = [run.final_loss if math.isfinite(run.final_loss) else math.inf for run in runs]
    return Sweep(runs, lrs, int(np.argmin(finite)), data, epochs, seed)


# -- remedy ----------------------------------------------------------------------------------

@dataclass
class Remedy:
    """The from-scratch ``adagrad`` and ``rmsprop`` trained alike: ``runs[i]`` with
    ``hyperparameters[i]``, its effective learning rates in ``recorders[i]``."""

    runs: list[TrainResult]
    recorders: list[EffectiveLRRecorder]
    hyperparameters: list[dict[str, float]]
    data: AirfoilData
    epochs: int
    seed: int
    eps: float = CHAPTER_EPS


def remedy(data: AirfoilData, lr: float = 0.1, rmsprop_lr: float = 0.01, gamma: float = 0.9,
           epochs: int = 10, seed: int = 0, progress: Progress | None = None) -> Remedy:
    """Train the chapter's from-scratch ``adagrad`` (learning rate ``lr``) and ``rmsprop``
    (``rmsprop_lr``, leak ``gamma``) on ``data`` from one seed, recording their effective
    learning rates whenever a loss is recorded."""
    epochs = _check_run(data, epochs)
    lr, rmsprop_lr = _check_lr("lr", lr), _check_lr("rmsprop_lr", rmsprop_lr)
    check_leak("gamma", gamma)
    setups = [
        ("adagrad", chapter.adagrad, chapter.init_adagrad_states, {"lr": lr}),
        ("rmsprop", chapter.rmsprop, chapter.init_rmsprop_states,
         {"lr": rmsprop_lr, "gamma": gamma}),
    ]
    result = Remedy([], [], [], data, epochs, seed)
    for name, step, init_states, hyperparams in setups:
        recorder = EffectiveLRRecorder(lr=hyperparams["lr"])
        with _bar(progress, name, data, epochs) as bar:
            result.runs.append(train_ch10(
                step, init_states(data.feature_dim), hyperparams, data.data_iter,
                data.feature_dim, epochs, seed=seed, name=name, progress=bar,
                on_record=recorder))
        result.recorders.append(recorder)
        result.hyperparameters.append(hyperparams)
    return result


# -- trajectory ------------------------------------------------------------------------------

@dataclass
class Trajectory:
    """The 2-D example's iterates ``path`` (``(x1, x2, s1, s2)`` from the start on)."""

    eta: float
    steps: int
    path: list[chapter.Point2D]


def trajectory(eta: float = 0.4, steps: int = 20) -> Trajectory:
    """Adagrad with learning rate ``eta`` on the chapter's ``f_2d`` for ``steps`` steps from
    ``(-5, -2)``."""
    eta = _check_lr("eta", eta)
    path = chapter.train_2d(functools.partial(chapter.adagrad_2d, eta=eta), steps)
    return Trajectory(eta, steps, path)

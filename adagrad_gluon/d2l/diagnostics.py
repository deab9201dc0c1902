"""Effective learning rates: the step size Adagrad gives each coordinate, read during training.

Adagrad scales the global rate ``lr`` per coordinate by the accumulated squared gradients::

    s = s + g * g
    effective_lr = lr / sqrt(s + eps)        # the step is  w -= effective_lr * g  (default)
    effective_lr = lr / (sqrt(s) + eps)      # with eps_placement='outside' (PyTorch, MXNet 2)

(the divisor is :func:`adagrad_gluon.optim.functional.denominator`).

``s`` only grows, so every effective rate only shrinks (like ``1 / sqrt(t)`` when gradients
are stationary): the chapter's warning that the rate may decay too fast. These helpers read
that quantity from a ``gluon.Trainer`` that uses ``adagrad_scratch``
(:func:`effective_learning_rates`), from the chapter's from-scratch states
(:func:`accumulator_learning_rates`), and record it over training (:class:`EffectiveLRRecorder`,
a callback for ``on_record=`` of :func:`~adagrad_gluon.d2l.training.train_ch10` and
:func:`~adagrad_gluon.d2l.training.train_concise_ch10`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mxnet import gluon, nd

from ..optim._gluon import trainer_params, trainer_updaters
from ..optim.functional import denominator
from ..validation import check_number

CHAPTER_EPS = 1e-6  # the eps of the chapter's from-scratch adagrad and rmsprop


def effective_learning_rates(trainer: gluon.Trainer) -> dict[str, np.ndarray]:
    """Every coordinate's current Adagrad step size, by parameter name.

    For each parameter of ``trainer`` that gets updates, ``lr / sqrt(s + eps)``, or
    ``lr / (sqrt(s) + eps)`` under ``eps_placement='outside'`` (see
    :meth:`AdagradScratch.effective_lr`, which also applies ``lr_mult`` and the scheduler),
    as a numpy array of the parameter's shape. ``s`` is the accumulator
    the trainer keeps; before the first step it is the initial one (zeros by default).

    Raises ``TypeError`` unless ``trainer`` is a ``gluon.Trainer`` whose optimizer is
    :class:`~adagrad_gluon.AdagradScratch` (``'adagrad_scratch'``).
    """
    optimizer, updaters = trainer_updaters(trainer)
    states = updaters[0].states  # every device holds the same states
    rates = {}
    for index, param in enumerate(trainer_params(trainer)):
        if param.grad_req == "null":
            continue
        state = states.get(index)
        if state is None:  # no step yet
            state = optimizer.create_state_multi_precision(index, param.list_data()[0])
        rates[param.name] = optimizer.effective_lr(index, state).asnumpy()
    return rates


def accumulator_learning_rates(
    states: Sequence[nd.NDArray], lr: float, eps: float = CHAPTER_EPS,
    names: Sequence[str] = ("weight", "bias"),
) -> dict[str, np.ndarray]:
    """``lr / sqrt(s + eps)`` for from-scratch accumulators ``states``, by name.

    For the chapter's :func:`~adagrad_gluon.d2l.chapter.adagrad` and
    :func:`~adagrad_gluon.d2l.chapter.rmsprop` the states *are* the accumulators ``s``, so this is
    their effective rate. ``names`` labels the states (the linear model's weight and bias).
    """
    lr = check_number("lr", lr)
    eps = check_number("eps", eps)
    if len(names) != len(states):
        raise ValueError(f"names has {len(names)} entries for {len(states)} states")
    return {
        name: (lr / denominator(s.asnumpy().astype(np.float64), eps)).reshape(s.shape)
        for name, s in zip(names, states, strict=True)
    }


class EffectiveLRRecorder:
    """Records effective learning rates whenever the training loop records a loss.

    Pass it as ``on_record=`` to :func:`~adagrad_gluon.d2l.training.train_concise_ch10` (it reads
    the ``gluon.Trainer`` with :func:`effective_learning_rates`) or to
    :func:`~adagrad_gluon.d2l.training.train_ch10` (it reads the from-scratch states with
    :func:`accumulator_learning_rates`, which needs ``lr``)::

        recorder = EffectiveLRRecorder()
        train_concise_ch10('adagrad_scratch', {'learning_rate': 0.1}, data_iter,
                           on_record=recorder)
        recorder.epochs, recorder.series()   # (records,), {name: (records, coordinates)}
    """

    def __init__(self, lr: float | None = None, eps: float = CHAPTER_EPS,
                 names: Sequence[str] = ("weight", "bias")):
        self.lr = None if lr is None else check_number("lr", lr)
        self.eps = check_number("eps", eps)
        self.names = tuple(names)
        self.epochs: list[float] = []
        self.rates: list[dict[str, np.ndarray]] = []

    def __call__(self, epoch_fraction: float, holder: gluon.Trainer | Sequence[nd.NDArray]):
        """Record the rates of ``holder`` (a Trainer, or from-scratch states) at this epoch."""
        if isinstance(holder, gluon.Trainer):
            rates = effective_learning_rates(holder)
        elif self.lr is None:
            raise ValueError("EffectiveLRRecorder needs lr= to read from-scratch states")
        else:
            rates = accumulator_learning_rates(holder, self.lr, self.eps, self.names)
        self.epochs.append(float(epoch_fraction))
        self.rates.append(rates)

    def series(self) -> dict[str, np.ndarray]:
        """``{name: array (records, coordinates)}``: each coordinate's rate over training."""
        if not self.rates:
            return {}
        return {name: np.stack([r[name].reshape(-1) for r in self.rates])
                for name in self.rates[0]}

    def to_dict(self) -> dict:
        """A JSON-ready copy: ``{"epoch_fraction": [...], "rates": {name: [[...], ...]}}``."""
        return {"epoch_fraction": list(self.epochs),
                "rates": {name: values.tolist() for name, values in self.series().items()}}

"""The chapter's training loops: linear regression on the airfoil data (``train_ch10``,
``train_concise_ch10``), as d2l writes them, returning the numbers instead of drawing them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, init, nd

from ..validation import check_positive_int

RECORD_EVERY = 200  # examples between two evaluations of the full-data loss, as in d2l


class LossRecord(NamedTuple):
    """One recorded loss: after ``epoch`` epochs (a fraction), the mean ``loss`` over the data."""

    epoch: float
    loss: float


@dataclass
class TrainResult:
    """What a training run produced.

    ``losses`` holds :class:`LossRecord` pairs ``(epoch_fraction, loss)``: the mean loss over
    the whole data set, recorded every 200 examples and after the last batch.
    ``sec_per_epoch`` counts training only, not those evaluations. ``params`` holds the trained
    ``weight`` (``(feature_dim,)``) and ``bias`` (``(1,)``) as numpy arrays.
    """

    name: str
    final_loss: float
    losses: list[LossRecord]
    sec_per_epoch: float
    params: dict[str, np.ndarray] = field(repr=False)


def linreg(X: nd.NDArray, w: nd.NDArray, b: nd.NDArray) -> nd.NDArray:
    """The linear regression model ``X w + b``."""
    return nd.dot(X, w) + b


def squared_loss(y_hat: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
    """Per-example squared loss ``(y_hat - y)**2 / 2``."""
    return (y_hat - y.reshape(y_hat.shape)) ** 2 / 2


def evaluate_loss(net: Callable, data_iter: Iterable, loss: Callable = squared_loss) -> float:
    """The mean of ``loss`` over every example of ``data_iter``."""
    if hasattr(data_iter, "full_batch"):  # an ArrayLoader: one forward pass over everything
        X, y = data_iter.full_batch()
        return float(loss(net(X), y).mean().asscalar())
    total, count = 0.0, 0
    for X, y in data_iter:
        total += float(loss(net(X), y).sum().asscalar())
        count += y.shape[0]
    return total / count


def _seed(seed: int | None) -> None:
    if seed is not None:
        np.random.seed(seed)  # batch order
        mx.random.seed(seed)  # initial weights


def _train(name: str, batch_step: Callable[[nd.NDArray, nd.NDArray], None], net: Callable,
           params: Callable[[], dict[str, np.ndarray]], data_iter: Iterable,
           num_epochs: int, progress=None,
           on_record: Callable[[float], None] | None = None) -> TrainResult:
    """Run ``batch_step(X, y)`` over ``num_epochs`` passes of ``data_iter``, recording the
    full-data loss every ``RECORD_EVERY`` examples and at the end. ``progress``, if given, is
    told of every batch with ``progress.update(1)`` (a ``tqdm`` bar fits); ``on_record``, if
    given, is called with the epoch fraction after every recorded loss (outside the timing)."""
    num_batches = len(data_iter)
    losses: list[LossRecord] = []
    seen, batches, train_seconds = 0, 0, 0.0

    def record() -> None:
        losses.append(LossRecord(batches / num_batches, evaluate_loss(net, data_iter)))
        if on_record is not None:
            on_record(losses[-1].epoch)

    start = time.perf_counter()
    for _ in range(num_epochs):
        for X, y in data_iter:
            batch_step(X, y)
            batches += 1
            if progress is not None:
                progress.update(1)
            size = y.shape[0]  # one query: each costs a call into MXNet
            crossed = (seen + size) // RECORD_EVERY > seen // RECORD_EVERY
            seen += size
            if crossed:
                nd.waitall()
                train_seconds += time.perf_counter() - start
                record()
                start = time.perf_counter()
    nd.waitall()
    train_seconds += time.perf_counter() - start
    if not losses or losses[-1].epoch != batches / num_batches:
        record()
    return TrainResult(name, losses[-1].loss, losses, train_seconds / num_epochs, params())


def _bind(on_record: Callable[[float, object], None] | None,
          holder: object) -> Callable[[float], None] | None:
    """``on_record(epoch_fraction, holder)`` as the one-argument hook ``_train`` calls."""
    return None if on_record is None else (lambda epoch: on_record(epoch, holder))


def train_ch10(trainer_fn: Callable, states: Sequence[nd.NDArray], hyperparams: dict,
               data_iter: Iterable, feature_dim: int, num_epochs: int = 2,
               seed: int | None = None, name: str | None = None, progress=None,
               on_record: Callable[[float, Sequence[nd.NDArray]], None] | None = None,
               ) -> TrainResult:
    """Train linear regression with a from-scratch optimizer ``trainer_fn(params, states,
    hyperparams)``, e.g. :func:`adagrad_gluon.d2l.chapter.adagrad`.

    Weights start ~ N(0, 0.01²), the bias at 0; the loss is the batch mean of
    :func:`squared_loss`. ``seed`` seeds numpy's and MXNet's global RNGs, so runs with one
    seed start from the same weights and see the same batches as :func:`train_concise_ch10`.
    ``name`` labels the result (default: the function's name); ``progress`` gets
    ``update(1)`` after every batch; ``on_record(epoch_fraction, states)`` is called whenever
    a loss is recorded (e.g. :class:`adagrad_gluon.d2l.diagnostics.EffectiveLRRecorder`).
    """
    num_epochs = check_positive_int("num_epochs", num_epochs)
    _seed(seed)
    w = nd.random.normal(scale=0.01, shape=(feature_dim, 1))
    b = nd.zeros(1)
    w.attach_grad()
    b.attach_grad()

    def net(X):
        return linreg(X, w, b)

    def batch_step(X, y):
        with autograd.record():
            loss = squared_loss(net(X), y).mean()
        loss.backward()
        trainer_fn([w, b], states, hyperparams)

    def params():
        return {"weight": w.asnumpy().reshape(-1), "bias": b.asnumpy()}

    name = name or getattr(trainer_fn, "__name__", "scratch")
    return _train(name, batch_step, net, params, data_iter, num_epochs, progress,
                  _bind(on_record, states))


class _Objective(gluon.HybridBlock):
    """``loss(net(X), y)`` as one block: hybridized, a batch's forward pass is one cached
    graph instead of one for the network and ~5 operator calls for the loss."""

    def __init__(self, net: gluon.HybridBlock, loss: gluon.HybridBlock):
        super().__init__()
        self.net, self.loss = net, loss

    def hybrid_forward(self, F, X, y):
        return self.loss(self.net(X), y)


def train_concise_ch10(trainer_name: str | mx.optimizer.Optimizer, hyperparams: dict,
                       data_iter: Iterable, num_epochs: int = 2,
                       seed: int | None = None, name: str | None = None, progress=None,
                       on_record: Callable[[float, gluon.Trainer], None] | None = None,
                       ) -> TrainResult:
    """Train linear regression with ``gluon.Trainer(params, trainer_name, hyperparams)``.

    A hybridized ``nn.Dense(1)``, initialized ~ N(0, 0.01²), with ``gluon.loss.L2Loss``; the
    same seed gives the same initial weights and batches as :func:`train_ch10`. ``name``
    labels the result (default: the optimizer's name); ``progress`` as in :func:`train_ch10`;
    ``on_record(epoch_fraction, trainer)`` is called with the ``gluon.Trainer`` whenever a
    loss is recorded.
    """
    num_epochs = check_positive_int("num_epochs", num_epochs)
    _seed(seed)
    net = gluon.nn.Dense(1)
    net.initialize(init.Normal(sigma=0.01))
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), trainer_name, hyperparams)
    objective = _Objective(net, gluon.loss.L2Loss())
    objective.hybridize(static_alloc=True, static_shape=True)

    def batch_step(X, y):
        with autograd.record():
            l_batch = objective(X, y)
        l_batch.backward()
        trainer.step(X.shape[0])

    def params():
        return {"weight": net.weight.data().asnumpy().reshape(-1),
                "bias": net.bias.data().asnumpy()}

    if name is None:
        name = trainer_name if isinstance(trainer_name, str) else type(trainer_name).__name__
    return _train(name, batch_step, net, params, data_iter, num_epochs, progress,
                  _bind(on_record, trainer))

"""Quality of ``state_bits=8``: final losses of float32 vs 8-bit accumulators, seed by seed.

Two tasks, each run under ``state_bits=32`` and ``state_bits=8`` with the same seeds:

* the chapter's airfoil run (:func:`adagrad_gluon.d2l.training.train_concise_ch10`: linear
  regression, batch 10, lr 0.1, 2 epochs);
* a synthetic sparse task: an ``Embedding(sparse_grad=True)`` of Zipf-distributed ids (so most
  rows are rare and their gradients row_sparse) and a dense head, regressing a hidden linear
  function of a hidden embedding.

Prints each seed's final losses and their relative difference; ``tests/test_state8.py`` runs a
cheap version and asserts the difference is within 1%::

    python benchmarks/quality_state8.py [--seeds 5]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from adagrad_gluon.d2l.data import get_data_ch10
from adagrad_gluon.d2l.training import train_concise_ch10

STATE_BITS = (32, 8)


def airfoil_loss(state_bits: int, seed: int, epochs: int = 2, lr: float = 0.1) -> float:
    """The chapter's concise airfoil run's final loss under ``state_bits``."""
    data_iter, _ = get_data_ch10(batch_size=10)
    result = train_concise_ch10("adagrad_scratch", {"learning_rate": lr,
                                                    "state_bits": state_bits},
                                data_iter, num_epochs=epochs, seed=seed)
    return result.final_loss


def sparse_loss(state_bits: int, seed: int, steps: int = 300, vocab: int = 2000,
                dim: int = 16, batch: int = 64, lr: float = 0.1) -> float:
    """The synthetic sparse task's final loss (mean squared error over a fixed evaluation set
    of 2048 examples) under ``state_bits``. The data depend on ``seed`` only."""
    rng = np.random.default_rng(seed)
    true_embedding = rng.standard_normal((vocab, dim)).astype(np.float32)
    true_head = rng.standard_normal(dim).astype(np.float32)
    ranks = np.arange(1, vocab + 1)
    probabilities = (1.0 / ranks) / (1.0 / ranks).sum()  # Zipf: a few rows are most of them

    def examples(n: int) -> tuple[nd.NDArray, nd.NDArray]:
        ids = rng.choice(vocab, size=n, p=probabilities)
        return nd.array(ids), nd.array(true_embedding[ids] @ true_head)

    batches = [examples(batch) for _ in range(steps)]
    eval_x, eval_y = examples(2048)
    mx.random.seed(seed)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Embedding(vocab, dim, sparse_grad=True), gluon.nn.Dense(1, flatten=False))
    net.initialize(mx.init.Normal(0.1))
    trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch",
                            {"learning_rate": lr, "state_bits": state_bits})
    for x, y in batches:
        with autograd.record():
            loss = ((net(x).reshape((-1,)) - y) ** 2).mean()
        loss.backward()
        trainer.step(1)
    return float(((net(eval_x).reshape((-1,)) - eval_y) ** 2).mean().asscalar())


def compare(task, seeds: Sequence[int], **kwargs) -> list[tuple[int, float, float, float]]:
    """``(seed, float32 loss, 8-bit loss, relative difference)`` per seed for ``task``."""
    rows = []
    for seed in seeds:
        full, eight = (task(bits, seed, **kwargs) for bits in STATE_BITS)
        rows.append((seed, full, eight, abs(eight - full) / full))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    args = parser.parse_args(argv)
    for name, task in (("airfoil (chapter, 2 epochs)", airfoil_loss),
                       ("sparse embedding (Zipf ids, row_sparse)", sparse_loss)):
        print(f"{name}:")
        print(f"  {'seed':>4}  {'float32':>12}  {'8-bit':>12}  {'rel. diff':>9}")
        rows = compare(task, range(args.seeds))
        for seed, full, eight, diff in rows:
            print(f"  {seed:>4}  {full:>12.6g}  {eight:>12.6g}  {diff:>9.3%}")
        print(f"  largest relative difference: {max(r[3] for r in rows):.3%}")


if __name__ == "__main__":
    main()

"""How fast does the chapter's training run? The package's loop against a plain d2l-style loop.

Both train d2l's concise linear regression on the airfoil data (2 epochs, batch 10, the same
seed, so the same initial weights and the same batches) with ``adagrad_scratch`` and record
the full-data loss every 200 examples, as the chapter does:

* the package: :func:`adagrad_gluon.d2l.training.train_concise_ch10`;
* d2l-style: a Gluon ``DataLoader`` over an ``ArrayDataset``, ``autograd`` and a
  ``gluon.Trainer``, an un-hybridized ``nn.Sequential``, the loss evaluated batch by batch,
  written here as d2l writes it; except that the loss is evaluated over an unshuffled loader
  (d2l reuses the shuffling one, whose extra draws from numpy's RNG would change the later
  batch order and so the final loss), so that both loops train on the same batches.

Runs alternate (interleaved repeats); the minimum seconds per epoch are reported, training
only (the loss evaluations excluded, as d2l's timer does) and in total, with the ratios and the
final losses, on the airfoil data that ships with the package.

    python benchmarks/bench_training.py [--repeats 5] [--kernel auto]

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, init, nd

from adagrad_gluon.d2l.data import get_data_ch10
from adagrad_gluon.d2l.training import RECORD_EVERY, train_concise_ch10

BATCH_SIZE, NUM_EPOCHS, SEED = 10, 2, 0


def d2l_style(features: np.ndarray, labels: np.ndarray, hyperparams: dict) -> dict:
    """d2l's ``train_concise_ch10`` with d2l's ``load_array`` and ``evaluate_loss``."""
    np.random.seed(SEED)
    mx.random.seed(SEED)
    dataset = gluon.data.ArrayDataset(nd.array(features), nd.array(labels))
    data_iter = gluon.data.DataLoader(dataset, BATCH_SIZE, shuffle=True)
    eval_iter = gluon.data.DataLoader(dataset, BATCH_SIZE, shuffle=False)
    net = gluon.nn.Sequential()
    net.add(gluon.nn.Dense(1))
    net.initialize(init.Normal(sigma=0.01))
    trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch", hyperparams)
    loss = gluon.loss.L2Loss()

    def evaluate_loss() -> float:
        total, count = 0.0, 0
        for X, y in eval_iter:
            batch_loss = loss(net(X), y)
            total += batch_loss.sum().asscalar()
            count += batch_loss.size
        return total / count

    n, train_seconds, losses = 0, 0.0, []
    wall = time.perf_counter()
    start = wall
    for _ in range(NUM_EPOCHS):
        for X, y in data_iter:
            with autograd.record():
                batch_loss = loss(net(X), y)
            batch_loss.backward()
            trainer.step(X.shape[0])
            n += X.shape[0]
            if n % RECORD_EVERY == 0:
                nd.waitall()
                train_seconds += time.perf_counter() - start
                losses.append(evaluate_loss())
                start = time.perf_counter()
    nd.waitall()
    train_seconds += time.perf_counter() - start
    return dict(train=train_seconds / NUM_EPOCHS,
                total=(time.perf_counter() - wall) / NUM_EPOCHS, loss=losses[-1])


def package(data_iter, hyperparams: dict) -> dict:
    wall = time.perf_counter()
    result = train_concise_ch10("adagrad_scratch", hyperparams, data_iter,
                                num_epochs=NUM_EPOCHS, seed=SEED)
    return dict(train=result.sec_per_epoch, total=(time.perf_counter() - wall) / NUM_EPOCHS,
                loss=result.final_loss)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kernel", default="auto", choices=("auto", "fused", "reference"),
                        help="adagrad_scratch's update, in both loops")
    args = parser.parse_args(argv)
    data_iter, _ = get_data_ch10(BATCH_SIZE)
    features, labels = data_iter.features.asnumpy(), data_iter.labels.asnumpy()
    hyperparams = {"learning_rate": 0.1, "kernel": args.kernel}
    runs = {"package train_concise_ch10": lambda: package(data_iter, hyperparams),
            "d2l-style loop": lambda: d2l_style(features, labels, hyperparams)}
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for run in runs.values():  # warm up
        run()
    for _ in range(args.repeats):
        for name, run in runs.items():
            results[name].append(run())
    kernel = mx.optimizer.create("adagrad_scratch", kernel=args.kernel).kernel
    print(f"airfoil, {NUM_EPOCHS} epochs, batch {BATCH_SIZE}, adagrad_scratch lr 0.1 "
          f"({kernel} update), loss recorded every {RECORD_EVERY} examples; "
          f"min of {args.repeats} repeats")
    print(f"  {'loop':28} {'s/epoch train':>14} {'s/epoch total':>14} {'final loss':>11}")
    best = {}
    for name, rs in results.items():
        best[name] = {key: min(r[key] for r in rs) for key in ("train", "total")}
        print(f"  {name:28} {best[name]['train']:14.4f} {best[name]['total']:14.4f} "
              f"{rs[-1]['loss']:11.6f}")
    ours, theirs = best["package train_concise_ch10"], best["d2l-style loop"]
    print(f"  speed-up, training only: {theirs['train'] / ours['train']:.2f}x; "
          f"in total: {theirs['total'] / ours['total']:.2f}x")


if __name__ == "__main__":
    main()

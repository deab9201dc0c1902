"""Matrix factorization with sparse embedding tables, trained by ``adagrad_scratch`` on the
parameter servers, each table sharded over the servers.

On MXNet's parameter server (two workers, two servers, on this host)::

    adagrad-gluon launch -n 2 -s 2 -- python examples/distributed_embeddings.py --epochs 2

The same updates in one process, on the combined batches (to compare with)::

    python examples/distributed_embeddings.py --local --workers 2 --epochs 2

The model predicts a rating as the dot product of a user's and an item's embedding, and the
two tables are ``gluon.contrib.nn.SparseEmbedding`` s: weights of storage type
``row_sparse`` with ``row_sparse`` gradients. They live on the servers; a worker pulls only the
rows of its batch (``row_sparse_pull``, through ``weight.row_sparse_data``) and pushes only
their gradients, and the servers run the optimizer (``update_on_kvstore``, the only mode MXNet
allows for sparse weights). MXNet splits a table of more than ``MXNET_KVSTORE_BIGARRAY_BOUND``
elements (default 1e6) by rows over the servers: the default tables (70,000 x 16) are.

The interactions are synthetic, from ``--seed``: users and items drawn from a power law (a few
are very frequent, most rare, as in real rating data) and ratings from hidden rank-4 factors
plus noise. Each epoch shuffles them with a seed shared by every worker; a step takes the next
``batch_size * workers`` of that order (the global batch) and worker ``r`` trains on its
``r``-th slice, so in ``dist_sync`` the servers apply the very updates of the ``--local`` run.
``--save DIR`` checkpoints the run at its end (worker 0 writes the tables, the servers their
Adagrad accumulators) and ``--resume DIR`` continues it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from adagrad_gluon.distributed import create_kvstore, prepare_trainer

OPTIMIZER = "adagrad_scratch"
HIDDEN_RANK = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local", action="store_true",
                        help="one process, on the global batches of --workers workers")
    parser.add_argument("--workers", type=int, default=2,
                        help="with --local: how many workers' batches make a global batch")
    parser.add_argument("--users", type=int, default=70_000)
    parser.add_argument("--items", type=int, default=70_000)
    parser.add_argument("--dim", type=int, default=16, help="embedding width")
    parser.add_argument("--interactions", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=100,
                        help="interactions per worker and step")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--wd", type=float, default=0.0)
    parser.add_argument("--rowwise", action="store_true",
                        help="row-wise Adagrad: one accumulator per embedding row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, help="checkpoint directory to write at the end")
    parser.add_argument("--resume", type=Path, help="checkpoint directory to continue from")
    parser.add_argument("--output-dir", type=Path,
                        help="write the final loss and tables to worker-RANK.npz (local.npz) here")
    args = parser.parse_args(argv)
    if args.wd:
        # the servers (and gluon's local kvstore, which would drop the error) update a sparse
        # table lazily: only the rows of a step's gradients, so no decay of the others
        parser.error("--wd: the lazy update of a sparse table cannot apply weight decay to "
                     "the rows it skips; use --wd 0")
    return args


def power_law_ids(rng: np.random.RandomState, count: int, size: int) -> np.ndarray:
    """``size`` ids in ``[0, count)``, id ``k`` drawn with probability ~ ``1 / (k + 1)``."""
    weights = 1.0 / np.arange(1, count + 1)
    return rng.choice(count, size=size, p=weights / weights.sum())


def interactions(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(users, items, ratings)``: the synthetic data of ``--seed``."""
    rng = np.random.RandomState(args.seed)
    users = power_law_ids(rng, args.users, args.interactions)
    items = power_law_ids(rng, args.items, args.interactions)
    user_factors = rng.normal(0, 1, (args.users, HIDDEN_RANK)) / HIDDEN_RANK ** 0.5
    item_factors = rng.normal(0, 1, (args.items, HIDDEN_RANK))
    ratings = ((user_factors[users] * item_factors[items]).sum(axis=1)
               + rng.normal(0, 0.1, args.interactions))
    return users, items, ratings.astype(np.float32)


class MatrixFactorization(gluon.Block):
    """``rating(u, i) = <user_embedding[u], item_embedding[i]>``, with sparse tables."""

    def __init__(self, users: int, items: int, dim: int):
        super().__init__()
        with self.name_scope():
            self.user = gluon.contrib.nn.SparseEmbedding(users, dim)
            self.item = gluon.contrib.nn.SparseEmbedding(items, dim)

    def forward(self, users: nd.NDArray, items: nd.NDArray) -> nd.NDArray:
        return (self.user(users) * self.item(items)).sum(axis=1)


def global_batches(count: int, global_batch: int, epoch: int, seed: int) -> list[np.ndarray]:
    """The indices of every global batch of ``epoch``: a shuffle seeded by ``seed`` and
    ``epoch``, cut into ``global_batch`` interactions (the last, smaller batch dropped)."""
    order = np.random.RandomState([seed, epoch]).permutation(count)
    return [order[start:start + global_batch]
            for start in range(0, count - global_batch + 1, global_batch)]


def mean_loss(net: MatrixFactorization, data, chunk: int = 5000) -> float:
    """The mean squared-error loss (``L2Loss``) over all interactions."""
    loss, total = gluon.loss.L2Loss(), 0.0
    users, items, ratings = data
    for start in range(0, len(ratings), chunk):
        part = slice(start, start + chunk)
        total += loss(net(nd.array(users[part]), nd.array(items[part])),
                      nd.array(ratings[part])).sum().asscalar()
    return total / len(ratings)


def setup(args: argparse.Namespace, net: MatrixFactorization):
    """``(rank, num_workers, trainer, step)`` for the mode the options ask for; ``step()``
    applies one update from this process's gradients."""
    hyperparams = {"learning_rate": args.lr, "wd": args.wd}
    if args.rowwise:
        hyperparams["rowwise"] = True
    if args.local:
        # gluon's local kvstore holds the row_sparse tables and runs the optimizer
        trainer = gluon.Trainer(net.collect_params(), OPTIMIZER, hyperparams)
        if args.resume:
            trainer.load_states(str(args.resume / "trainer.states"))
        # the gradient is summed over the global batch
        return 0, args.workers, trainer, lambda: trainer.step(args.batch_size * args.workers)
    kvstore = create_kvstore()
    trainer = prepare_trainer(
        gluon.Trainer(net.collect_params(), OPTIMIZER, hyperparams, kvstore=kvstore),
        args.batch_size)
    if args.resume:
        trainer.load_states(args.resume)
    return kvstore.rank, kvstore.num_workers, trainer, trainer.step


def save(args: argparse.Namespace, net: MatrixFactorization, trainer, rank: int,
         epochs: int) -> None:
    """Checkpoint the run (``--save``): worker 0 the tables and progress, the servers (or the
    local process) the optimizer states."""
    if rank == 0:
        args.save.mkdir(parents=True, exist_ok=True)
        net.save_parameters(str(args.save / "model.params"))  # pulls every row
        (args.save / "progress.json").write_text(json.dumps({"epoch": epochs}))
    if args.local:
        trainer.save_states(str(args.save / "trainer.states"))
    else:
        trainer.save_states(args.save)


def write_output(args: argparse.Namespace, net: MatrixFactorization, rank: int,
                 loss: float) -> None:
    """``--output-dir``: the final loss and both tables (all rows, pulled)."""
    args.output_dir.mkdir(parents=True, exist_ok=True)
    name = "local.npz" if args.local else f"worker-{rank}.npz"
    tables = {table: getattr(net, table).weight.row_sparse_data(
                  nd.arange(getattr(args, f"{table}s"), dtype=np.int64)).asnumpy()
              for table in ("user", "item")}
    np.savez(args.output_dir / name, loss=loss, **tables)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = interactions(args)
    mx.random.seed(args.seed)
    net = MatrixFactorization(args.users, args.items, args.dim)
    net.initialize(mx.init.Normal(sigma=0.1))
    start_epoch = 0
    if args.resume:
        net.load_parameters(str(args.resume / "model.params"))
        start_epoch = json.loads((args.resume / "progress.json").read_text())["epoch"]
    rank, num_workers, trainer, step = setup(args, net)

    size = args.batch_size
    mine = slice(None) if args.local else slice(rank * size, (rank + 1) * size)
    users, items, ratings = data
    loss_fn, loss = gluon.loss.L2Loss(), float("nan")
    for epoch in range(start_epoch, args.epochs):
        for batch in global_batches(len(ratings), size * num_workers, epoch, args.seed):
            batch = batch[mine]
            with autograd.record():
                batch_loss = loss_fn(net(nd.array(users[batch]), nd.array(items[batch])),
                                     nd.array(ratings[batch]))
            batch_loss.backward()
            step()
        loss = mean_loss(net, data)
        if rank == 0:
            print(f"epoch {epoch + 1}, loss {loss:.8f}", flush=True)

    if args.save:
        save(args, net, trainer, rank, args.epochs)
    if args.output_dir:
        write_output(args, net, rank, loss)


if __name__ == "__main__":
    main()

"""The chapter's airfoil linear regression with ``adagrad_scratch``, data-parallel.

On MXNet's parameter server (two workers, one server, on this host)::

    adagrad-gluon launch -n 2 -s 1 -- python examples/distributed_airfoil.py --epochs 2

The same updates in one process, on the combined batches (to compare with)::

    python examples/distributed_airfoil.py --single --workers 2 --epochs 2

With Horovod, where it is installed (``pip install "adagrad-gluon[horovod]"``)::

    horovodrun --gloo -np 2 -H localhost:2 python examples/distributed_airfoil.py --horovod

The data are the chapter's (``get_data_ch10``: 1500 standardized rows, five features). Each
epoch shuffles the rows with a seed shared by every worker; a step takes the next
``batch_size * workers`` rows of that order (the global batch), and worker ``r`` trains on its
``r``-th slice of ``batch_size`` rows, so the workers together see each row once per epoch.
``--save DIR`` checkpoints the run at its end (worker 0 writes the weights, the servers their
Adagrad accumulators) and ``--resume DIR`` continues it, bit for bit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, init, nd

from adagrad_gluon.d2l.data import get_data_ch10
from adagrad_gluon.d2l.training import evaluate_loss
from adagrad_gluon.distributed import create_kvstore, prepare_trainer

OPTIMIZER = "adagrad_scratch"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--single", action="store_true",
                      help="one process, on the global batches of --workers workers")
    mode.add_argument("--horovod", action="store_true", help="run under horovodrun")
    parser.add_argument("--workers", type=int, default=2,
                        help="with --single: how many workers' batches make a global batch")
    parser.add_argument("--batch-size", type=int, default=10, help="rows per worker and step")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--update-on-kvstore", action=argparse.BooleanOptionalAction,
                        default=True, help="update on the servers (default) or the workers")
    parser.add_argument("--save", type=Path, help="checkpoint directory to write at the end")
    parser.add_argument("--resume", type=Path, help="checkpoint directory to continue from")
    parser.add_argument("--output-dir", type=Path,
                        help="write the final weights to worker-RANK.npz (single.npz) here")
    args = parser.parse_args(argv)
    if args.horovod and (args.save or args.resume):
        parser.error("--save and --resume work with the parameter server or --single")
    return args


def global_batches(num_rows: int, global_batch: int, epoch: int, seed: int) -> list[np.ndarray]:
    """The row indices of every global batch of ``epoch``: a shuffle seeded by ``seed`` and
    ``epoch``, cut into ``global_batch`` rows (the last, smaller batch dropped)."""
    order = np.random.RandomState([seed, epoch]).permutation(num_rows)
    return [order[start:start + global_batch]
            for start in range(0, num_rows - global_batch + 1, global_batch)]


def setup(args: argparse.Namespace, net: gluon.Block):
    """``(rank, num_workers, trainer, step)`` for the mode the options ask for; ``step()``
    applies one update from this process's gradients."""
    hyperparams = {"learning_rate": args.lr}
    if args.single:
        trainer = gluon.Trainer(net.collect_params(), OPTIMIZER, hyperparams)
        if args.resume:
            trainer.load_states(str(args.resume / "trainer.states"))
        # the gradient is summed over the global batch
        return 0, args.workers, trainer, lambda: trainer.step(args.batch_size * args.workers)
    if args.horovod:
        import horovod.mxnet as hvd

        hvd.init()
        hvd.broadcast_parameters(net.collect_params(), root_rank=0)
        trainer = hvd.DistributedTrainer(net.collect_params(), OPTIMIZER, hyperparams)
        # horovod averages the gradients over the workers
        return hvd.rank(), hvd.size(), trainer, lambda: trainer.step(args.batch_size)
    kvstore = create_kvstore()
    trainer = prepare_trainer(
        gluon.Trainer(net.collect_params(), OPTIMIZER, hyperparams, kvstore=kvstore,
                      update_on_kvstore=args.update_on_kvstore),
        args.batch_size,
    )
    if args.resume:
        trainer.load_states(args.resume)
    return kvstore.rank, kvstore.num_workers, trainer, trainer.step


def save(args: argparse.Namespace, net: gluon.Block, trainer, rank: int) -> None:
    """Checkpoint the run (``--save``): worker 0 the weights and progress, every process the
    optimizer states (the servers write theirs)."""
    if rank == 0:
        args.save.mkdir(parents=True, exist_ok=True)
        net.save_parameters(str(args.save / "model.params"))
        (args.save / "progress.json").write_text(json.dumps({"epoch": args.epochs}))
    if args.single:
        trainer.save_states(str(args.save / "trainer.states"))
    elif not args.horovod:
        trainer.save_states(args.save)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    loader, feature_dim = get_data_ch10(batch_size=args.batch_size)
    features, labels = loader.full_batch()

    mx.random.seed(args.seed)
    net = gluon.nn.Dense(1, in_units=feature_dim)
    net.initialize(init.Normal(sigma=0.01))
    start_epoch = 0
    if args.resume:
        net.load_parameters(str(args.resume / "model.params"))
        start_epoch = json.loads((args.resume / "progress.json").read_text())["epoch"]
    rank, num_workers, trainer, step = setup(args, net)

    size = args.batch_size
    mine = slice(None) if args.single else slice(rank * size, (rank + 1) * size)
    loss = gluon.loss.L2Loss()
    for epoch in range(start_epoch, args.epochs):
        for rows in global_batches(len(labels), args.batch_size * num_workers, epoch, args.seed):
            index = nd.array(rows[mine], dtype=np.int64)
            with autograd.record():
                batch_loss = loss(net(nd.take(features, index)), nd.take(labels, index))
            batch_loss.backward()
            step()
        if rank == 0:
            print(f"epoch {epoch + 1}, loss {evaluate_loss(net, loader):.6f}", flush=True)

    if args.save:
        save(args, net, trainer, rank)
    if args.output_dir:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        name = "single.npz" if args.single else f"worker-{rank}.npz"
        np.savez(args.output_dir / name, weight=net.weight.data().asnumpy(),
                 bias=net.bias.data().asnumpy(), loss=evaluate_loss(net, loader))


if __name__ == "__main__":
    main()

"""How fast is one Adagrad step? ``adagrad_scratch`` against every Adagrad a Gluon or PyTorch
user can pick, side by side in one run.

For each parameter set (1x10M, 10x1M, 1000x1k, 1000x10 float32 elements) and each method, the
optimizer steps on fixed random gradients; the methods take turns (interleaved repeats, so a
noisy machine hurts them alike) and the minimum and median time per step over the repeats are
reported with elements/s, then the ratios. MXNet optimizers run through
``mx.optimizer.get_updater``, called as ``gluon.Trainer.step`` calls it (one list of every
parameter); time ends when ``nd.waitall()`` returns. Torch rows need ``torch`` installed
(``pip install adagrad-gluon[torch]``); they use as many threads as the fused kernels,
and torch's fused Adagrad runs once more on one thread (on small tensors that is faster).

    python benchmarks/bench_update.py [--repeats 7] [--cases 1x10M,1000x1k] [--threads N]

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import mxnet as mx
import numpy as np
from mxnet import nd

import adagrad_gluon  # noqa: F401  (registers adagrad_scratch)
from adagrad_gluon.optim import kernels

CASES = {"1x10M": (1, 10_000_000), "10x1M": (10, 1_000_000), "1000x1k": (1000, 1000),
         "1000x10": (1000, 10)}
LR = 0.01
FUSED = "adagrad_scratch fused multi-tensor"

Step = Callable[[], None]


def _arrays(count: int, size: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(size, dtype=np.float32) for _ in range(count)]
    grads = [rng.standard_normal(size, dtype=np.float32) for _ in range(count)]
    return weights, grads


def mxnet_step(optimizer: mx.optimizer.Optimizer, count: int, size: int) -> Step:
    """One step of ``optimizer`` on ``count`` parameters, as ``gluon.Trainer`` runs it."""
    weights, grads = _arrays(count, size)
    weights = [nd.array(w) for w in weights]
    grads = [nd.array(g) for g in grads]
    updater = mx.optimizer.get_updater(optimizer)
    indices = list(range(count))

    def step() -> None:
        updater(indices, grads, weights)

    return step


def scratch(kernel: str, multi_tensor: bool = True) -> Callable[[int, int], Step]:
    def make(count: int, size: int) -> Step:
        optimizer = mx.optimizer.create("adagrad_scratch", learning_rate=LR, kernel=kernel)
        if not multi_tensor:
            optimizer.aggregate_num = 0  # one operator call per parameter
        return mxnet_step(optimizer, count, size)

    return make


def builtin(name: str) -> Callable[[int, int], Step]:
    def make(count: int, size: int) -> Step:
        return mxnet_step(mx.optimizer.create(name, learning_rate=LR), count, size)

    return make


def torch_adagrad(threads: int, **options) -> Callable[[int, int], Step]:
    def make(count: int, size: int) -> Step:
        import torch

        weights, grads = _arrays(count, size)
        params = [torch.nn.Parameter(torch.from_numpy(w)) for w in weights]
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.from_numpy(g)
        optimizer = torch.optim.Adagrad(params, lr=LR, eps=1e-6, **options)

        def step() -> None:
            torch.set_num_threads(threads)
            optimizer.step()

        return step

    return make


def methods(torch_threads: int | None) -> dict[str, Callable[[int, int], Step]]:
    """The methods to compare; torch ones with ``torch_threads`` (and 1) threads, if given."""
    chosen = {
        FUSED: scratch("fused"),
        "adagrad_scratch fused per tensor": scratch("fused", multi_tensor=False),
        "adagrad_scratch reference": scratch("reference"),
        "mxnet adagrad (built-in)": builtin("adagrad"),
        "mxnet sgd (built-in)": builtin("sgd"),
    }
    if torch_threads:
        chosen["torch Adagrad fused=True"] = torch_adagrad(torch_threads, fused=True)
        if torch_threads > 1:
            chosen["torch Adagrad fused=True, 1 thread"] = torch_adagrad(1, fused=True)
        chosen["torch Adagrad foreach=False"] = torch_adagrad(torch_threads, foreach=False)
    return chosen


def measure(steps: dict[str, Step], repeats: int, target_seconds: float) -> dict[str, list]:
    """Seconds per step of each method, one list entry per repeat, methods interleaved."""
    per_repeat = {}
    for name, step in steps.items():  # warm up, and size each repeat to ~target_seconds
        step()
        nd.waitall()
        start = time.perf_counter()
        step()
        nd.waitall()
        per_repeat[name] = max(1, min(50, int(target_seconds / (time.perf_counter() - start))))
    times: dict[str, list] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            n = per_repeat[name]
            start = time.perf_counter()
            for _ in range(n):
                step()
            nd.waitall()
            times[name].append((time.perf_counter() - start) / n)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--threads", type=int, default=None,
                        help="OpenMP threads of the fused kernels (and of torch); "
                             "default: kernels.num_threads()")
    parser.add_argument("--seconds", type=float, default=0.15,
                        help="target duration of one repeat of one method")
    args = parser.parse_args(argv)
    kernels.load()
    if args.threads:
        kernels.set_num_threads(args.threads)
    threads = kernels.num_threads()
    try:
        import torch

        torch_threads, torch_version = threads, torch.__version__
    except ImportError:
        torch_threads, torch_version = None, "not installed"
    print(f"mxnet {mx.__version__}; fused kernels: {threads} OpenMP threads (torch rows: "
          f"{threads} unless said); torch {torch_version}")
    for case in args.cases.split(","):
        count, size = CASES[case]
        steps = {name: make(count, size) for name, make in methods(torch_threads).items()}
        times = measure(steps, args.repeats, args.seconds)
        print(f"\n{case}: {count} float32 parameters of {size} elements, "
              f"min / median of {args.repeats} repeats")
        print(f"  {'method':38} {'ms/step':>9} {'median':>9} {'elements/s':>11}")
        best = {name: min(t) for name, t in times.items()}
        for name, t in times.items():
            print(f"  {name:38} {best[name] * 1e3:9.2f} {statistics.median(t) * 1e3:9.2f} "
                  f"{count * size / best[name]:11.3g}")
        fused = best[FUSED]
        print(f"  speed-up of {FUSED} (time of the other / its time):")
        for other in best:
            if other != FUSED:
                print(f"    over {other:36} {best[other] / fused:8.2f}x")
        del steps


if __name__ == "__main__":
    main()

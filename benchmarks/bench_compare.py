"""How long does the chapter's full comparison train? ``compare`` warm, against a 1 s budget.

Runs :func:`adagrad_gluon.d2l.experiments.compare` (from scratch, ``adagrad_scratch`` and
MXNet's built-in ``adagrad``: three training runs) with the command line's defaults (lr 0.1,
2 epochs, batch 10, the first 1500 airfoil examples, seed 0). The fused kernels' library is
made ready first (built if this machine has no build yet, or, with ``--fresh-build``, built
anew in a temporary cache so that the build's time is measured) and its time reported once; one
warm-up comparison follows, then ``--repeats`` timed ones. Reported, minimum over the repeats:
the training time (the three runs' ``sec_per_epoch * epochs``: training only, the loss
evaluations excluded, as d2l's timer does), each run's, and the wall time of the whole call;
with the machine's thread count and the fused kernels'.

    python benchmarks/bench_compare.py [--repeats 5] [--threads N] [--fresh-build]

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import mxnet as mx

from adagrad_gluon.cache import CACHE_DIR_ENV
from adagrad_gluon.d2l.experiments import AirfoilData, Comparison, compare, load_data
from adagrad_gluon.optim import kernels
from adagrad_gluon.optim.kernels import build_module

LR, EPOCHS, BATCH_SIZE, N, SEED = 0.1, 2, 10, 1500, 0
BUDGET_SECONDS = 1.0


def ready_kernels(threads: int | None, cache: str | None) -> None:
    """Load (and, if needed, build) the fused kernels, in ``cache`` if given (as
    ``$ADAGRAD_GLUON_CACHE_DIR``); print how long it took, once."""
    if cache:
        os.environ[CACHE_DIR_ENV] = cache
    built = build_module.library_path().exists()
    start = time.perf_counter()
    kernels.load()
    seconds = time.perf_counter() - start
    if threads:
        kernels.set_num_threads(threads)
    what = "loaded (already built)" if built else "built and loaded"
    print(f"fused kernels {what} in {seconds:.2f} s (not counted below)")


def training_seconds(comparison: Comparison) -> dict[str, float]:
    """The training time of each run of ``comparison``, by name (evaluations excluded)."""
    return {run.name: run.sec_per_epoch * comparison.epochs for run in comparison.runs}


def timed_compare(data: AirfoilData) -> tuple[float, dict[str, float]]:
    """One full comparison: its wall time and each run's training time."""
    start = time.perf_counter()
    comparison = compare(data, LR, EPOCHS, SEED)
    return time.perf_counter() - start, training_seconds(comparison)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="OpenMP threads of the fused kernels; default: "
                             "kernels.num_threads()")
    parser.add_argument("--fresh-build", action="store_true",
                        help="build the kernels anew in a temporary cache (to time the build)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        run(args.repeats, args.threads, cache if args.fresh_build else None)


def run(repeats: int, threads: int | None, cache: str | None) -> None:
    """Ready the kernels, warm up, then time ``repeats`` comparisons and print the minima."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"mxnet {mx.__version__}; machine: {os.cpu_count()} logical CPUs, {usable} usable "
          f"by this process")
    ready_kernels(threads, cache)
    print(f"fused kernels: {kernels.num_threads()} OpenMP threads")
    data = load_data(BATCH_SIZE, N)
    wall, runs = timed_compare(data)
    print(f"warm-up compare: wall {wall:.3f} s, training {sum(runs.values()):.3f} s")
    walls, trainings, per_run = [], [], []
    for _ in range(repeats):
        wall, runs = timed_compare(data)
        walls.append(wall)
        trainings.append(sum(runs.values()))
        per_run.append(runs)
    print(f"\ncompare (lr {LR}, {EPOCHS} epochs, batch {BATCH_SIZE}, n {N}, seed {SEED}), "
          f"min of {repeats} repeats:")
    for name in per_run[0]:
        print(f"  training {name:24} {min(runs[name] for runs in per_run):7.3f} s")
    print(f"  training, three runs             {min(trainings):7.3f} s "
          f"(median {statistics.median(trainings):.3f} s)")
    print(f"  wall, whole compare call         {min(walls):7.3f} s")
    verdict = "under" if min(trainings) < BUDGET_SECONDS else "NOT under"
    print(f"training time {verdict} the {BUDGET_SECONDS:g} s budget")


if __name__ == "__main__":
    main()

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
``adagrad_scratch fused, flat buffer`` is what the optimizer steps under the opt-in flat
layout: one parameter of all the elements (the layout's checks of its members are part of
``gluon.Trainer.step``, timed in the ``trainer`` regime). Each case ends with the fastest of
ours (list call or flat buffer) against the fastest torch fused (either thread count), and the
README table has that ratio with the paths it compares.

The physical bound runs in the same interleaved loop: ``stream_bound.cc`` beside this file, a
plain streaming loop over the same total number of elements (one flat array) with the fused
float32 update's traffic, read w, g, s and write w, s (20 B/element), and the cheapest body that
needs all five accesses (``s += g*g; w -= c*g*s``), built with the kernels' compiler and flags
(``adagrad_gluon.optim.kernels.build_module``) and run on as many OpenMP threads (one below
65536 elements, as they do). Every method is reported in GB/s at those 20 B/element and as a
fraction of the bound's bandwidth (its time / the method's time), with the thread counts.

    python benchmarks/bench_update.py [--repeats 7] [--cases 1x10M,1000x1k] [--threads N]
    python benchmarks/bench_update.py --readme    # ... and write its table into README.md

Two more regimes, each in its own interleaved loop (``--regimes``, default all three):

* ``trainer``: a whole ``gluon.Trainer.step`` on 1000x1k and on 1x1M (the same 1M elements),
  ``adagrad_scratch`` fused (as is, and with :func:`adagrad_gluon.flatten_parameters`) and the
  built-in ``adagrad``; printed with the ratio 1000x1k / 1x1M of each. Marking the gradients
  fresh (what ``backward`` does) runs before each step, outside the time.
* ``perkey``: the calls a parameter server makes, one ``updater(key, grad, weight)`` per key
  (no lists), on 1000x1k and 1000x10: ``adagrad_scratch`` fused against the built-in.

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import gluon, nd
from readme_tables import README, markdown_table, provenance, write_section

import adagrad_gluon  # registers adagrad_scratch
from adagrad_gluon.optim import kernels
from adagrad_gluon.optim.kernels import build_module
from adagrad_gluon.validation import positive_float, positive_int

CASES = {"1x10M": (1, 10_000_000), "10x1M": (10, 1_000_000), "1000x1k": (1000, 1000),
         "1000x10": (1000, 10)}
LR = 0.01
FUSED = "adagrad_scratch fused multi-tensor"
FLAT = "adagrad_scratch fused, flat buffer"
TORCH_FUSED = ("torch Adagrad fused=True", "torch Adagrad fused=True, 1 thread")
BOUND = "streaming bound (read w,g,s; write w,s)"
BOUND_SOURCE = Path(__file__).resolve().parent / "stream_bound.cc"
TRAINER_CASES = {"1000x1k": (1000, 1000), "1x1M": (1, 1_000_000)}
PERKEY_CASES = {"1000x1k": (1000, 1000), "1000x10": (1000, 10)}
REGIMES = ("update", "trainer", "perkey")
IDLE_SECONDS = 0.002
BYTES_PER_ELEMENT = 20  # fused float32 Adagrad: read w, g, s; write w, s (4 B each)

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


def flat_buffer(count: int, size: int) -> Step:
    """What the optimizer steps under the flat layout (:func:`adagrad_gluon.flatten_parameters`):
    one parameter of ``count * size`` elements (the layout's per-step checks of its members
    happen in ``gluon.Trainer``'s reads, see the ``trainer`` regime)."""
    return scratch("fused")(1, count * size)


def builtin(name: str) -> Callable[[int, int], Step]:
    def make(count: int, size: int) -> Step:
        return mxnet_step(mx.optimizer.create(name, learning_rate=LR), count, size)

    return make


def per_key(name: str, **options) -> Callable[[int, int], Step]:
    """``name`` stepped as a parameter server steps it: one ``updater(key, grad, weight)``
    call per key, with ``aggregate_num = 0`` (no lists)."""
    def make(count: int, size: int) -> Step:
        optimizer = mx.optimizer.create(name, learning_rate=LR, **options)
        optimizer.aggregate_num = 0
        weights, grads = ([nd.array(a) for a in arrays] for arrays in _arrays(count, size))
        updater = mx.optimizer.get_updater(optimizer)
        keys = list(zip(range(count), grads, weights, strict=True))

        def step() -> None:
            for key, grad, weight in keys:
                updater(key, grad, weight)

        return step

    return make


def trainer(name: str, flat: bool = False, **options) -> Callable[[int, int], Step]:
    """One ``gluon.Trainer.step`` of ``name`` on ``count`` parameters (``flat``: laid out by
    :func:`adagrad_gluon.flatten_parameters`). Its ``prepare`` (untimed) marks every gradient
    fresh, as ``backward`` would."""
    def make(count: int, size: int) -> Step:
        weights, grads = _arrays(count, size)
        params = gluon.ParameterDict()
        for i, (w, g) in enumerate(zip(weights, grads, strict=True)):
            param = params.get(f"p{i}", shape=(size,))
            param.initialize(mx.init.Constant(nd.array(w)))
            param.grad()[:] = g
        members = list(params.values())
        if flat:
            params = adagrad_gluon.flatten_parameters(params).params
        trainer = gluon.Trainer(params, name, {"learning_rate": LR, **options})
        weights = [param.data() for param in members]  # after flattening: the views

        def step() -> None:
            trainer.step(1)

        def prepare() -> None:
            for weight in weights:
                weight._fresh_grad = True

        step.prepare = prepare
        return step

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


def compile_library(source: Path, directory: str) -> ctypes.CDLL:
    """Compile ``source`` into ``directory`` with the fused kernels' compiler and flags;
    return the library, loaded with ctypes."""
    output = Path(directory) / f"lib{source.stem}.so"
    command = [*shlex.split(build_module.compiler()), *build_module.CXXFLAGS, str(source),
               "-o", str(output)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stderr}")
    return ctypes.CDLL(str(output))


def build_bound(directory: str) -> Callable:
    """Compile ``stream_bound.cc`` into ``directory`` (see :func:`compile_library`); return
    its ``stream_bound`` function."""
    function = compile_library(BOUND_SOURCE, directory).stream_bound
    pointer = ctypes.POINTER(ctypes.c_float)
    function.argtypes = [pointer, pointer, pointer, ctypes.c_int64, ctypes.c_float, ctypes.c_int]
    function.restype = None
    return function


def streaming(function: Callable, threads: int) -> Callable[[int, int], Step]:
    """The bound: ``function`` over one flat array of ``count * size`` elements."""
    def make(count: int, size: int) -> Step:
        weights, grads = _arrays(1, count * size)
        arrays = (weights[0], grads[0], np.zeros_like(weights[0]))
        pointers = [a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) for a in arrays]

        def step() -> None:
            function(*pointers, arrays[0].size, LR, threads)

        return step

    return make


def methods(torch_threads: int | None) -> dict[str, Callable[[int, int], Step]]:
    """The methods to compare; torch ones with ``torch_threads`` (and 1) threads, if given."""
    chosen = {
        FUSED: scratch("fused"),
        FLAT: flat_buffer,
        "adagrad_scratch fused per tensor": scratch("fused", multi_tensor=False),
        "adagrad_scratch reference": scratch("reference"),
        "mxnet adagrad (built-in)": builtin("adagrad"),
        "mxnet sgd (built-in)": builtin("sgd"),
    }
    if torch_threads:
        chosen[TORCH_FUSED[0]] = torch_adagrad(torch_threads, fused=True)
        if torch_threads > 1:
            chosen[TORCH_FUSED[1]] = torch_adagrad(1, fused=True)
        chosen["torch Adagrad foreach=False"] = torch_adagrad(torch_threads, foreach=False)
    return chosen


def measure(steps: dict[str, Step], repeats: int, target_seconds: float) -> dict[str, list]:
    """Seconds per step of each method, one list entry per repeat, methods interleaved."""
    per_repeat = {}
    for name, step in steps.items():  # warm up, and size each repeat to ~target_seconds
        _seconds_per_step(step, 1)
        per_repeat[name] = max(1, min(50, int(target_seconds / _seconds_per_step(step, 1))))
    times: dict[str, list] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(_seconds_per_step(step, per_repeat[name]))
    return times


def _seconds_per_step(step: Step, n: int) -> float:
    """The mean time of ``n`` calls of ``step``; a step with a ``prepare`` runs it (untimed)
    before each call, then pauses ``IDLE_SECONDS``: whatever ``prepare`` costs, every step
    starts from the same idle engine and OpenMP threads, as after a backward pass."""
    prepare = getattr(step, "prepare", None)
    if prepare is None:
        start = time.perf_counter()
        for _ in range(n):
            step()
        nd.waitall()
        return (time.perf_counter() - start) / n
    elapsed = 0.0
    for _ in range(n):
        prepare()
        nd.waitall()
        time.sleep(IDLE_SECONDS)
        start = time.perf_counter()
        step()
        nd.waitall()
        elapsed += time.perf_counter() - start
    return elapsed / n


def timing_arguments(description: str, cases: dict | None = None) -> argparse.ArgumentParser:
    """A parser with the flags every update benchmark takes: --repeats, --cases (names of
    ``cases``, if given), --threads, --seconds and --readme."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=positive_int, default=7)
    if cases:
        parser.add_argument("--cases", default=",".join(cases),
                            help=f"comma-separated, from {', '.join(cases)}")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="OpenMP threads of the fused kernels (and of the bounds and the "
                             "other frameworks' CPU kernels); default: kernels.num_threads()")
    parser.add_argument("--seconds", type=positive_float, default=0.15,
                        help="target duration of one repeat of one method")
    parser.add_argument("--readme", nargs="?", const=README, type=Path,
                        help="write the table into this README (default: the repository's)")
    return parser


def kernel_threads(threads: int | None) -> int:
    """Load the kernels, give them ``threads`` OpenMP threads if set; the count they use."""
    kernels.load()
    if threads:
        kernels.set_num_threads(threads)
    return kernels.num_threads()


def main(argv: list[str] | None = None) -> None:
    parser = timing_arguments(__doc__.split("\n\n")[0], CASES)
    parser.add_argument("--regimes", default=",".join(REGIMES),
                        help=f"comma-separated, from {', '.join(REGIMES)}")
    args = parser.parse_args(argv)
    threads = kernel_threads(args.threads)
    try:
        import torch

        torch_threads, torch_version = threads, torch.__version__
    except ImportError:
        torch_threads, torch_version = None, "not installed"
    print(f"mxnet {mx.__version__}; fused kernels: {threads} OpenMP threads (torch rows: "
          f"{threads} unless said); torch {torch_version}")
    with tempfile.TemporaryDirectory() as directory:
        bound = streaming(build_bound(directory), threads)
    print(f"machine: {os.cpu_count()} logical CPUs, {_usable_cpus()} usable by this process; "
          f"bound: {BOUND_SOURCE.name} built with "
          f"{shlex.join([build_module.compiler(), *build_module.CXXFLAGS])}, {threads} threads")
    regimes = args.regimes.split(",")
    tables = []
    if "update" in regimes:
        results = {}
        for case in args.cases.split(","):
            count, size = CASES[case]
            makers = {**methods(torch_threads), BOUND: bound}
            steps = {name: make(count, size) for name, make in makers.items()}
            results[case] = report(case, measure(steps, args.repeats, args.seconds),
                                   args.repeats)
            del steps
        tables.append(readme_table(results))
    for regime, (cases, chosen, baseline) in SIDE_BY_SIDE.items():
        if regime in regimes:
            best = side_by_side(regime, cases, chosen, baseline, args.repeats, args.seconds)
            tables.append(side_by_side_table(regime, cases, best, baseline))
    if args.readme:
        command = shlex.join(["python", "benchmarks/bench_update.py",
                              *(sys.argv[1:] if argv is None else argv)])
        write_section("benchmarks/bench_update.py", "\n\n".join(
            [*tables, provenance(command, threads)]), args.readme)
        print(f"\nwrote the tables into {args.readme}")


# regime: its cases, its methods, and the method the others are compared with
SIDE_BY_SIDE = {
    "trainer": (TRAINER_CASES, {
        "adagrad_scratch fused": trainer("adagrad_scratch", kernel="fused"),
        "adagrad_scratch fused, flat layout": trainer("adagrad_scratch", flat=True,
                                                      kernel="fused"),
        "mxnet adagrad (built-in)": trainer("adagrad")}, "adagrad_scratch fused"),
    "perkey": (PERKEY_CASES, {
        "adagrad_scratch fused": per_key("adagrad_scratch", kernel="fused"),
        "mxnet adagrad (built-in)": per_key("adagrad")}, "adagrad_scratch fused"),
}
REGIME_TITLES = {"trainer": "one gluon.Trainer.step",
                 "perkey": "per-key updater calls (as a parameter server makes them)"}


def side_by_side(regime: str, cases: dict, chosen: dict, baseline: str, repeats: int,
                 seconds: float) -> dict[tuple[str, str], float]:
    """Every (case, method) of ``regime`` in one interleaved loop; print each one's min and
    median time per step, then per method the ratio of each case to the first one and per
    case each method's ratio to ``baseline``. Return the minimum times."""
    steps = {(case, name): make(*shape) for case, shape in cases.items()
             for name, make in chosen.items()}
    times = measure(steps, repeats, seconds)
    best = {key: min(t) for key, t in times.items()}
    print(f"\n{REGIME_TITLES[regime]}, min / median of {repeats} repeats")
    for (case, name), t in times.items():
        print(f"  {case:8} {name:38} {best[case, name] * 1e3:9.3f} "
              f"{statistics.median(t) * 1e3:9.3f} ms")
    first, *others = cases
    for name in chosen:
        for case in others:
            print(f"  {name}: {first} takes {best[first, name] / best[case, name]:.2f}x "
                  f"the time of {case}")
    for case in cases:
        for name in chosen:
            if name != baseline:
                print(f"  {case}: {name} / {baseline} = "
                      f"{best[case, name] / best[case, baseline]:.2f}x")
    return best


def side_by_side_table(regime: str, cases: dict, best: dict, baseline: str) -> str:
    """A README table of one side-by-side regime: per case, each method's time and its ratio
    to ``baseline`` (>1: slower)."""
    names = list(dict.fromkeys(name for _, name in best))
    rows = [[case.replace("x", "×"),
             *[f"{best[case, n] * 1e3:.2f} ms ({best[case, n] / best[case, baseline]:.2f}×)"
               for n in names]] for case in cases]
    first, *others = [case.replace("x", "×") for case in cases]
    keys = list(cases)
    rows += [[f"{first} / {other}", *[f"{best[keys[0], n] / best[case, n]:.2f}×" for n in names]]
             for other, case in zip(others, keys[1:], strict=True)]
    return f"{REGIME_TITLES[regime]}:\n\n" + markdown_table(["parameters", *names], rows)


# the README's columns: its heading, the method
README_COLUMNS = (("built-in `adagrad`", "mxnet adagrad (built-in)"),
                  ("torch `Adagrad(fused=True)`", "torch Adagrad fused=True"),
                  ("torch fused, 1 thread", "torch Adagrad fused=True, 1 thread"))


def readme_table(results: dict[str, dict[str, float]]) -> str:
    """The README's table: per case, the fused update's time and fraction of the streaming
    bound, and each other method's time with its ratio to the fused one (>1: slower)."""
    header = ["parameters", "`adagrad_scratch` fused", "of the bound", "flat buffer",
              *[heading for heading, _ in README_COLUMNS],
              "torch fused (best threads) / ours (best path)"]
    rows = []
    for case, best in results.items():
        fused = best[FUSED]
        row = [case.replace("x", "×"), f"{fused * 1e3:.2f} ms", f"{best[BOUND] / fused:.0%}",
               f"{best[FLAT] * 1e3:.2f} ms ({best[FLAT] / fused:.2f}×)"]
        row += [f"{best[m] * 1e3:.2f} ms ({best[m] / fused:.2f}×)" if m in best else "n/a"
                for _, m in README_COLUMNS]
        ours, theirs = best_of(best, (FUSED, FLAT)), best_of(best, TORCH_FUSED)
        row.append("n/a" if theirs is None else
                   f"{best[theirs] / best[ours]:.2f}× ({_short(theirs)} / {_short(ours)})")
        rows.append(row)
    return markdown_table(header, rows)


def best_of(best: dict[str, float], names: tuple[str, ...]) -> str | None:
    """The fastest of ``names`` that was measured (None if none was)."""
    measured = [name for name in names if name in best]
    return min(measured, key=best.__getitem__) if measured else None


SHORT_NAMES = {FUSED: "list call", FLAT: "flat buffer", TORCH_FUSED[0]: "torch, all threads",
               TORCH_FUSED[1]: "torch, 1 thread"}


def _short(name: str) -> str:
    return SHORT_NAMES[name]


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def report(case: str, times: dict[str, list], repeats: int) -> dict[str, float]:
    """Print one case: per method the min and median time per step, elements/s, GB/s at 20
    B/element and the fraction of the bound's bandwidth; then the fused update's speed-ups.
    Return the minimum seconds per step of each method."""
    count, size = CASES[case]
    elements = count * size
    print(f"\n{case}: {count} float32 parameters of {size} elements, "
          f"min / median of {repeats} repeats")
    print(f"  {'method':38} {'ms/step':>9} {'median':>9} {'elements/s':>11} {'GB/s':>7} "
          f"{'of bound':>8}")
    best = {name: min(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"  {name:38} {best[name] * 1e3:9.3f} {statistics.median(t) * 1e3:9.3f} "
              f"{elements / best[name]:11.3g} "
              f"{elements * BYTES_PER_ELEMENT / best[name] / 1e9:7.2f} "
              f"{best[BOUND] / best[name]:8.1%}")
    fused = best[FUSED]
    ours, theirs = best_of(best, (FUSED, FLAT)), best_of(best, TORCH_FUSED)
    if theirs is not None:
        print(f"  fastest of ours: {ours} {best[ours] * 1e3:.3f} ms; fastest torch fused: "
              f"{theirs} {best[theirs] * 1e3:.3f} ms; torch / ours = "
              f"{best[theirs] / best[ours]:.2f}x (target >= 1)")
    print(f"  {FUSED} at {best[BOUND] / fused:.1%} of the streaming bound "
          f"({elements * BYTES_PER_ELEMENT / best[BOUND] / 1e9:.2f} GB/s)")
    print(f"  speed-up of {FUSED} (time of the other / its time):")
    for other in best:
        if other not in (FUSED, BOUND):
            print(f"    over {other:36} {best[other] / fused:8.2f}x")
    return best

if __name__ == "__main__":
    main()

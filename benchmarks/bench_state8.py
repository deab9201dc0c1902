"""How fast is an 8-bit accumulator step, and how small is its state? ``adagrad_scratch``'s
fused update with ``state_bits=32`` and ``state_bits=8`` side by side in one run, with
bitsandbytes' ``Adagrad8bit`` (CPU) and ``torch.optim.Adagrad`` where they install.

For each parameter set (1x10M and 1x50M: larger than the caches; 1000x1k, 1000x10) the
methods step on fixed random float32 gradients, taking turns (interleaved repeats,
:func:`bench_update.measure`);
the minimum time per step is reported with the ratio float32 / 8-bit (> 1: the 8-bit step is
faster) and the accumulator's bytes per element, read from the states the step created. The
float32 fused update moves 20 B/element (read w, g, s; write w, s), the 8-bit one ~14 (s is 1
byte, plus a 4-byte scale per 256 elements), so a memory-bound step may be up to 1.4x faster.
Two streaming loops with exactly that traffic and no arithmetic to speak of run in the same
interleaved loop (``stream_bound.cc``, ``stream_bound8.cc``, built with the kernels' compiler
and flags, on as many threads): each update's time as a fraction of its own bound's. For 1x10M
and 1x50M both updates also step tensors that stay in the L3 cache (see ``CACHED``), from
which their arithmetic for the case is derived, fixed costs cancelled. A step is memory-bound
only where its arithmetic takes well under its traffic bound; the float32 step's time over the
larger of the two (the "8-bit floor") is what perfect overlap of arithmetic and memory traffic
would give in this run (not a bound: a step can run faster than its streaming loop).

    python benchmarks/bench_state8.py [--repeats 7] [--cases 1x10M,1000x1k] [--threads N]
    python benchmarks/bench_state8.py --readme    # ... and write its table into README.md

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import ctypes
import tempfile
from collections.abc import Callable
from pathlib import Path

import mxnet as mx
import numpy as np
from bench_update import (
    LR,
    _arrays,
    build_bound,
    compile_library,
    kernel_threads,
    measure,
    streaming,
    timing_arguments,
)
from mxnet import nd
from readme_tables import markdown_table, provenance, write_section

import adagrad_gluon  # noqa: F401  (registers adagrad_scratch)
from adagrad_gluon.optim.checks import split_state

CASES = {"1x10M": (1, 10_000_000), "1x50M": (1, 50_000_000), "1000x1k": (1000, 1000),
         "1000x10": (1000, 10)}
FLOAT32 = "adagrad_scratch fused, state_bits=32"
EIGHT = "adagrad_scratch fused, state_bits=8"
BNB = "bitsandbytes Adagrad8bit (CPU)"
TORCH = "torch Adagrad fused=True"
BOUND32 = "streaming bound, float32 traffic (20 B/element)"
BOUND8 = "streaming bound, 8-bit traffic (14 B/element)"
BOUND8_SOURCE = Path(__file__).resolve().parent / "stream_bound8.cc"
BOUNDS = {FLOAT32: BOUND32, EIGHT: BOUND8}  # each update's own bound
# The same updates on tensors whose arrays stay in the L3 cache (32 MB here; 1x1M takes 12 MB
# for float32, 9 MB for 8 bits) but not in one core's L2 (1 MB; 1x500k on two threads is over
# 2 MB a thread): a 1x1M and a 1x500k tensor, each stepped as many times as it takes the 1x1M
# one to update as many elements as the case. A call's fixed cost (Python, MXNet, the thread
# team) is the same at both sizes, so the difference of the two times is the arithmetic of 500k
# elements per call; doubled, that of the case's step (assuming the same cost per element at
# both sizes: both stream from L3).
CACHED_SIZES = (1_000_000, 500_000)
CACHED = {(name, n): f"{name.split(', ')[1]} on a cached 1x{n / 1e6:g}M, as many calls"
          for name in (FLOAT32, EIGHT) for n in CACHED_SIZES}
ARITHMETIC = {FLOAT32: "state_bits=32 arithmetic (from the cached steps)",
              EIGHT: "state_bits=8 arithmetic (from the cached steps)"}

Step = Callable[[], None]
Made = tuple[Step, Callable[[], int]]  # the step, and the accumulators' bytes after it ran


def scratch(state_bits: int) -> Callable[[int, int], Made]:
    def make(count: int, size: int) -> Made:
        optimizer = mx.optimizer.create("adagrad_scratch", learning_rate=LR, kernel="fused",
                                        state_bits=state_bits)
        weights, grads = ([nd.array(a) for a in arrays] for arrays in _arrays(count, size))
        updater = mx.optimizer.get_updater(optimizer)
        indices = list(range(count))

        def step() -> None:
            updater(indices, grads, weights)

        def state_bytes() -> int:
            accs = [split_state(state)[1] for state in updater.states.values()]
            return sum(acc.nbytes if hasattr(acc, "codes") else acc.size * 4 for acc in accs)

        return step, state_bytes

    return make


def cached_calls(count: int, size: int) -> int:
    """How many steps of the larger cached tensor update as many elements as the case."""
    return count * size // CACHED_SIZES[0]


def cached(state_bits: int, elements: int) -> Callable[[int, int], Made]:
    """The update of :func:`scratch` on one cache-resident tensor of ``elements``, stepped
    :func:`cached_calls` times (see ``CACHED``)."""
    def make(count: int, size: int) -> Made:
        step, _ = scratch(state_bits)(1, elements)
        calls = cached_calls(count, size)

        def steps() -> None:
            for _ in range(calls):
                step()

        return steps, lambda: 0

    return make


def arithmetic(best: dict[str, float]) -> dict[str, float]:
    """``best`` with each update's arithmetic for the case (see ``CACHED``): the difference of
    its two cached runs, whose fixed costs cancel, scaled to the larger tensor's elements."""
    large, small = CACHED_SIZES
    return {**best, **{label: (best[CACHED[name, large]] - best[CACHED[name, small]])
                       * large / (large - small) for name, label in ARITHMETIC.items()}}


def build_bound8(directory: str) -> Callable:
    """Compile ``stream_bound8.cc`` into ``directory``; return its ``stream_bound8``."""
    function = compile_library(BOUND8_SOURCE, directory).stream_bound8
    floats = ctypes.POINTER(ctypes.c_float)
    function.argtypes = [floats, floats, ctypes.POINTER(ctypes.c_uint8), floats, ctypes.c_int64,
                         ctypes.c_float, ctypes.c_int]
    function.restype = None
    return function


def streaming8(function: Callable, threads: int) -> Callable[[int, int], Made]:
    """The 8-bit bound: ``function`` over one flat array of ``count * size`` elements."""
    def make(count: int, size: int) -> Made:
        weights, grads = _arrays(1, count * size)
        n = weights[0].size
        codes, scales = np.zeros(n, np.uint8), np.ones(-(-n // 256), np.float32)
        arrays = (weights[0], grads[0], codes, scales)

        def step() -> None:
            function(*[a.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8 if a is codes
                                                       else ctypes.c_float)) for a in arrays],
                     n, 1.0, threads)

        return step, lambda: 0

    return make


def torch_optimizer(factory: Callable, threads: int) -> Callable[[int, int], Made]:
    def make(count: int, size: int) -> Made:
        import torch

        weights, grads = _arrays(count, size)
        params = [torch.nn.Parameter(torch.from_numpy(w)) for w in weights]
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.from_numpy(g)
        optimizer = factory(params)

        def step() -> None:
            torch.set_num_threads(threads)
            optimizer.step()

        def state_bytes() -> int:  # every tensor of the state but the step count
            return sum(v.numel() * v.element_size() for state in optimizer.state.values()
                       for k, v in state.items() if torch.is_tensor(v) and k != "step")

        return step, state_bytes

    return make


def optional_methods(threads: int) -> tuple[dict[str, Callable], list[str]]:
    """The torch and bitsandbytes methods that install here, and notes on those that do not."""
    chosen, notes = {}, []
    try:
        import torch
    except ImportError:
        return chosen, ["torch: not installed (pip install torch==2.13.0)"]
    chosen[TORCH] = torch_optimizer(
        lambda params: torch.optim.Adagrad(params, lr=LR, eps=1e-6, fused=True), threads)
    try:
        import bitsandbytes as bnb

        probe = torch.nn.Parameter(torch.zeros(512))
        probe.grad = torch.ones(512)
        bnb.optim.Adagrad8bit([probe], lr=LR, min_8bit_size=0).step()
    except Exception as exc:  # noqa: BLE001  (any failure means: not on this machine)
        notes.append(f"bitsandbytes Adagrad8bit: unavailable on CPU here "
                     f"({type(exc).__name__}: {str(exc)[:120]})")
        return chosen, notes
    notes.append(f"bitsandbytes {bnb.__version__}, torch {torch.__version__}")
    chosen[BNB] = torch_optimizer(lambda params: bnb.optim.Adagrad8bit(
        params, lr=LR, eps=1e-6, min_8bit_size=0), threads)
    return chosen, notes


def main(argv: list[str] | None = None) -> None:
    args = timing_arguments(__doc__.split("\n\n")[0], CASES).parse_args(argv)
    threads = kernel_threads(args.threads)
    extra, notes = optional_methods(threads)
    print(f"mxnet {mx.__version__}; {threads} threads (kernels and torch)")
    for note in notes:
        print(note)
    results = {}
    directory = tempfile.TemporaryDirectory()
    bound32 = streaming(build_bound(directory.name), threads)
    bounds = {BOUND32: lambda count, size: (bound32(count, size), lambda: 0),
              BOUND8: streaming8(build_bound8(directory.name), threads)}
    for case in args.cases.split(","):
        count, size = CASES[case]
        large = count == 1 and size % CACHED_SIZES[0] == 0
        floors = ({label: cached(32 if name == FLOAT32 else 8, n)
                   for (name, n), label in CACHED.items()} if large else {})
        made = {name: make(count, size) for name, make in
                {FLOAT32: scratch(32), EIGHT: scratch(8), **extra, **bounds,
                 **floors}.items()}
        times = measure({name: step for name, (step, _) in made.items()}, args.repeats,
                        args.seconds)
        best = {name: min(t) for name, t in times.items()}
        if large:
            best = arithmetic(best)
        per_element = {name: state_bytes() / (count * size)
                       for name, (_, state_bytes) in made.items()}
        results[case] = (best, per_element)
        report(case, best, per_element, threads)
        del made
    if args.readme:
        command = "python benchmarks/bench_state8.py --readme"
        write_section("benchmarks/bench_state8.py", "\n\n".join(
            [readme_table(results, notes), provenance(command, threads)]), args.readme)
        print(f"\nwrote the table into {args.readme}")


def report(case: str, best: dict[str, float], per_element: dict[str, float],
           threads: int) -> None:
    """Print one case: per method the minimum time per step, accumulator bytes per element,
    and the ratio to the 8-bit fused update (> 1: slower than it)."""
    print(f"\n{case} float32 elements, {threads} threads, min of interleaved repeats")
    for name, seconds in best.items():
        if name in [*ARITHMETIC.values(), *CACHED.values()]:
            print(f"  {name:<48} {seconds * 1e3:9.3f} ms"
                  + ("  (derived)" if name in ARITHMETIC.values() else ""))
            continue
        state = "" if name in BOUNDS.values() else f"{per_element[name]:6.3f} B/element  "
        print(f"  {name:<48} {seconds * 1e3:9.3f} ms  {state}"
              f"{seconds / best[EIGHT]:5.2f}x the 8-bit step")
    print(f"  float32 / 8-bit fused: {best[FLOAT32] / best[EIGHT]:.2f}x; of its traffic bound: "
          + ", ".join(f"{name.split(', ')[1]} {best[bound] / best[name]:.0%}"
                      for name, bound in BOUNDS.items()))
    if ARITHMETIC[EIGHT] in best:
        print(f"  the 8-bit step's arithmetic {best[ARITHMETIC[EIGHT]] * 1e3:.3f} ms, its "
              f"streaming loop {best[BOUND8] * 1e3:.3f} ms: the float32 step / the larger, "
              f"{floor_ratio(best):.2f}x, is what perfect overlap of the two would give (not a "
              "bound: a step can outrun its loop)")


def floor_ratio(best: dict[str, float]) -> float:
    """The float32 step's time over the larger of the 8-bit step's arithmetic (from the cached
    steps) and its streaming loop: the ratio perfect overlap of the two would give."""
    return best[FLOAT32] / max(best[ARITHMETIC[EIGHT]], best[BOUND8])


def readme_table(results: dict, notes: list[str]) -> str:
    """The README's table: per case, the 8-bit and float32 fused steps, their ratio, and the
    accumulator's bytes per element; bitsandbytes' step and bytes where it ran."""
    header = ["parameters", "`state_bits=32`", "`state_bits=8`", "float32 / 8-bit",
              "of its traffic bound (32 / 8)", "arithmetic (32 / 8), from cached steps",
              "float32 / 8-bit floor", "accumulator B/element (32 / 8)",
              "bitsandbytes `Adagrad8bit` (B/element)"]
    rows = []
    for case, (best, per_element) in results.items():
        bnb = (f"{best[BNB] * 1e3:.2f} ms ({per_element[BNB]:.3f})" if BNB in best else "n/a")
        rows.append([case.replace("x", "×"), f"{best[FLOAT32] * 1e3:.2f} ms",
                     f"{best[EIGHT] * 1e3:.2f} ms", f"{best[FLOAT32] / best[EIGHT]:.2f}×",
                     " / ".join(f"{best[bound] / best[name]:.0%}"
                                for name, bound in BOUNDS.items()),
                     " / ".join(f"{best[label] * 1e3:.2f} ms" for label in ARITHMETIC.values())
                     if ARITHMETIC[EIGHT] in best else "n/a",
                     f"{floor_ratio(best):.2f}×" if ARITHMETIC[EIGHT] in best else "n/a",
                     f"{per_element[FLOAT32]:.2f} / {per_element[EIGHT]:.3f}", bnb])
    return markdown_table(header, rows) + "".join(f"\n\n{note}." for note in notes)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

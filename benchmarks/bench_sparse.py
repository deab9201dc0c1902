"""How fast is one lazy (row_sparse) Adagrad step on an embedding table? ``adagrad_scratch``
against MXNet's, PyTorch's and FBGEMM's sparse Adagrads, side by side in one run.

The table is ``--table`` x ``--width`` float32 (default 1M x 64); each step updates
``--rows`` (10k) unique rows drawn from a power law (Zipf, exponent ``--alpha``, weighted
sampling without replacement; the popular ids are scattered over the table by a fixed
permutation, as hashed ids are), sorted, with fixed random gradients. ``--batches`` such row
sets are made up front and the steps cycle through them (each method in the same order), so
the rows are not the same cache-hot ones every step. Methods (wd = 0, lr 0.01, eps 1e-6; each
on its own copy of the table):

* ``adagrad_scratch`` elementwise and row-wise (``rowwise=True``), fused kernels, through
  ``mx.optimizer.get_updater`` as ``gluon.Trainer`` calls it, with a row_sparse gradient whose
  rows only the kernel checks (``host_row_check=False``: what ``gluon.Trainer`` does with a
  parameter's own gradient); the elementwise one also with the rows checked on the host first
  (``host_row_check=True``: the default for arrays handed to ``update``, one host sync), and
  without huge pages (``huge_pages=False``);
* MXNet's built-in ``adagrad`` (its sparse update) and ``contrib.GroupAdaGrad`` (row-wise),
  the same way; the built-in also with its tables on huge pages (informational: users run it
  without);
* ``torch.optim.Adagrad`` with the gradient as ``nn.Embedding(sparse=True)`` makes it (an
  uncoalesced ``torch.sparse_coo_tensor``), ``optimizer.step()`` timed;
* FBGEMM's CPU ``EXACT_ROWWISE_ADAGRAD`` (``fbgemm-gpu-cpu``, where it imports beside torch):
  its TBE op fuses the update into the backward of the lookup, so a bag-size-1 lookup of the
  step's rows is timed forward alone and forward + backward (fixed output gradient); the
  update is reported as their difference (minimum minus minimum).

Time per step is the minimum (and median) over interleaved repeats (``bench_update.measure``),
after one warm-up cycle of the row sets; ``OMP_WAIT_POLICY`` is ``PASSIVE`` unless set (so
one runtime's idle threads do not spin on the cores the next method needs).
Each method is reported in rows/s and in GB/s at the bytes its update must move per row:
elementwise float32 reads w, g, s and writes w, s (20 B per element) plus the 8 B index;
row-wise reads w, g and writes w (12 B per element) plus the row's accumulator (read and
written, 8 B) and the index (8 B). The bound for each is ``gather_bound.cc`` beside this file,
a plain loop gathering the same rows with that traffic, measured in the same run; "of bound"
is the bound's time / the method's time.

Pages: ``adagrad_scratch`` backs a table of at least 64 MiB (and its accumulator) by
transparent huge pages at its first row_sparse update (``huge_pages=None``, as users run it;
:mod:`adagrad_gluon.optim.pages`), which makes the scattered rows miss the TLB less. So the
bounds run twice, on 4 KiB pages and with the same advice on their arrays ("huge pages"), and
each method's fraction is of the bound on its own pages (the "pages" column): like with like.
The other frameworks run as their users run them, on 4 KiB pages. (numpy advises its own large
arrays as ``MADV_HUGEPAGE``: the 4 KiB bound's arrays are allocated with that turned off.)

    python benchmarks/bench_sparse.py [--repeats 7] [--rows 10000] [--width 64]
                                      [--table 1000000] [--threads N]

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import os
import shlex
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

# Three OpenMP runtimes take turns here (MXNet's, the kernels' and the bounds' libgomp, torch's
# own): threads that spin after their loop (the default) steal the cores of the next method on
# a small machine, so they sleep instead, unless the caller says otherwise. Set before MXNet
# and torch load their runtimes, which read it once.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import nd  # noqa: E402
from numpy.core.multiarray import _set_madvise_hugepage  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_update import (  # noqa: E402
    _usable_cpus,
    compile_library,
    kernel_threads,
    measure,
    timing_arguments,
)
from readme_tables import markdown_table, provenance, write_section  # noqa: E402

import adagrad_gluon  # noqa: E402, F401  (registers adagrad_scratch)
from adagrad_gluon.optim import kernels, pages  # noqa: E402
from adagrad_gluon.optim.functional import Step as UpdateStep  # noqa: E402
from adagrad_gluon.optim.options import AdagradOptions  # noqa: E402
from adagrad_gluon.validation import positive_float, positive_int  # noqa: E402

LR, EPS = 0.01, 1e-6
BOUND_SOURCE = Path(__file__).resolve().parent / "gather_bound.cc"
ELEMENTWISE, ROWWISE = "elementwise", "row-wise"
FUSED = "adagrad_scratch fused"
FUSED_HOST = "adagrad_scratch fused, host row check"
FUSED_SMALL_PAGES = "adagrad_scratch fused, huge_pages=False"
FUSED_ROWWISE = "adagrad_scratch fused rowwise=True"
OPERATOR = "adagrad_scratch operator alone"
BUILTIN = "mxnet adagrad (built-in, sparse)"
BUILTIN_HUGE = "mxnet adagrad (built-in), tables on huge pages"
GROUP = "mxnet contrib.GroupAdaGrad"
TORCH = "torch Adagrad, sparse grad"
FBGEMM = "fbgemm EXACT_ROWWISE_ADAGRAD (bwd)"
FBGEMM_FWD, FBGEMM_BOTH = "fbgemm TBE forward only", "fbgemm TBE forward+backward"
BOUNDS = {ELEMENTWISE: "gather bound elementwise", ROWWISE: "gather bound row-wise"}
HUGE_BOUNDS = {kind: f"{name}, huge pages" for kind, name in BOUNDS.items()}
# the traffic (and bound) each method is measured against
KIND = {**dict.fromkeys((FUSED, FUSED_HOST, FUSED_SMALL_PAGES, OPERATOR, BUILTIN, BUILTIN_HUGE,
                         TORCH, BOUNDS[ELEMENTWISE], HUGE_BOUNDS[ELEMENTWISE]), ELEMENTWISE),
        **dict.fromkeys((FUSED_ROWWISE, GROUP, FBGEMM, FBGEMM_FWD, FBGEMM_BOTH, BOUNDS[ROWWISE],
                         HUGE_BOUNDS[ROWWISE]), ROWWISE)}
SCRATCH = (FUSED, FUSED_HOST, OPERATOR, FUSED_ROWWISE)  # adagrad_scratch's own methods

Step = Callable[[], None]


class Case:
    """The table, the row sets (each sorted, unique) and their gradients, as numpy arrays."""

    def __init__(self, table: int, width: int, rows: int, batches: int, alpha: float,
                 seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.table, self.width = table, width
        self.weight = rng.standard_normal((table, width), dtype=np.float32)
        self.rows = [power_law_rows(rng, table, rows, alpha) for _ in range(batches)]
        self.grads = [rng.standard_normal((rows, width), dtype=np.float32)
                      for _ in range(batches)]


def power_law_rows(rng: np.random.Generator, table: int, count: int,
                   alpha: float) -> np.ndarray:
    """``count`` unique row ids of ``[0, table)``, sorted, drawn without replacement with
    probability ~ rank**-alpha (Efraimidis-Spirakis keys), ranks scattered over the table by a
    permutation fixed for ``table``."""
    if not 0 < count <= table:
        raise ValueError(f"rows must be in [1, table={table}], got {count}")
    keys = rng.exponential(size=table) * np.arange(1, table + 1, dtype=np.float64) ** alpha
    ranks = np.argpartition(keys, count - 1)[:count]
    scatter = np.random.default_rng(table).permutation(table)
    return np.sort(scatter[ranks]).astype(np.int64)


def cycling(items: list) -> Callable[[], object]:
    """The items one after the other, round and round."""
    return itertools.cycle(items).__next__


def row_sparse_grads(case: Case) -> list[nd.NDArray]:
    """The case's gradients as MXNet row_sparse arrays."""
    return [nd.sparse.row_sparse_array((nd.array(g), nd.array(r, dtype="int64")),
                                       shape=case.weight.shape)
            for g, r in zip(case.grads, case.rows, strict=True)]


def scratch_on_huge_pages(case: Case) -> bool:
    """Whether ``adagrad_scratch`` (``huge_pages=None``) backs this case's tables by huge
    pages: a table of at least 64 MiB, where the advice applies."""
    return pages.available() and pages.advised(None, case.weight.nbytes)


def huge_page_methods(case: Case) -> frozenset[str]:
    """The methods whose tables are on huge pages: the bounds and the built-in so named, and
    ``adagrad_scratch``'s where it advises this table itself."""
    return frozenset((BUILTIN_HUGE, *HUGE_BOUNDS.values(),
                      *(SCRATCH if scratch_on_huge_pages(case) else ())))


def mxnet_step(case: Case, optimizer: mx.optimizer.Optimizer, huge_pages: bool = False) -> Step:
    """One update by ``optimizer`` with a row_sparse gradient, as ``gluon.Trainer`` runs it;
    with ``huge_pages``, its weight and state advised as :mod:`adagrad_gluon.optim.pages`
    advises ``adagrad_scratch``'s (after a first step, which creates the state)."""
    weight = nd.array(case.weight)
    updater, grad = mx.optimizer.get_updater(optimizer), cycling(row_sparse_grads(case))

    def step() -> None:
        updater([0], [grad()], [weight])

    if huge_pages:
        step()
        pages.advise([weight, updater.states[0]])
    return step


def fused_operator(case: Case) -> Step:
    """The fused row_sparse operator alone (``kernels.fused_steps``), without the optimizer's
    per-call work: its array checks, update counts and learning rates."""
    weight, acc = nd.array(case.weight), nd.zeros(case.weight.shape)
    grad, options = cycling(row_sparse_grads(case)), AdagradOptions(eps=EPS)
    if scratch_on_huge_pages(case):  # as the optimizer's first update would
        pages.advise([weight, acc])

    def step() -> None:
        kernels.fused_steps([UpdateStep(weight, grad(), acc, None, LR, 0.0, True)], options)

    return step


def mxnet_method(name: str, huge_pages: bool = False, **options) -> Callable[[Case], Step]:
    def make(case: Case) -> Step:
        return mxnet_step(case, mx.optimizer.create(name, learning_rate=LR, **options),
                          huge_pages)

    return make


def torch_table(case: Case):
    """The case's table as a torch tensor in torch's own memory, as torch users have it (a
    numpy copy would be on huge pages: numpy advises its large arrays ``MADV_HUGEPAGE``)."""
    import torch

    return torch.from_numpy(case.weight).clone()


def torch_sparse(threads: int) -> Callable[[Case], Step]:
    def make(case: Case) -> Step:
        import torch

        param = torch.nn.Parameter(torch_table(case))
        optimizer = torch.optim.Adagrad([param], lr=LR, eps=EPS)
        grads = [torch.sparse_coo_tensor(torch.from_numpy(r)[None], torch.from_numpy(g),
                                         case.weight.shape, check_invariants=False)
                 for g, r in zip(case.grads, case.rows, strict=True)]
        grad = cycling(grads)

        def step() -> None:
            torch.set_num_threads(threads)
            param.grad = grad()
            optimizer.step()

        return step

    return make


def fbgemm_steps(threads: int) -> dict[str, Callable[[Case], Step]]:
    """FBGEMM's TBE lookup forward only, and forward + backward (the update runs in the
    backward); raises ImportError if fbgemm_gpu does not import."""
    import torch
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        EmbeddingLocation,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    def make(backward: bool) -> Callable[[Case], Step]:
        def build(case: Case) -> Step:
            tbe = SplitTableBatchedEmbeddingBagsCodegen(
                [(case.table, case.width, EmbeddingLocation.HOST, ComputeDevice.CPU)],
                optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, learning_rate=LR, eps=EPS,
                pooling_mode=PoolingMode.SUM)
            with torch.no_grad():
                tbe.split_embedding_weights()[0].copy_(torch.from_numpy(case.weight))
            offsets = torch.arange(len(case.rows[0]) + 1, dtype=torch.int64)
            batches = cycling([(torch.from_numpy(r), torch.from_numpy(g))
                               for r, g in zip(case.rows, case.grads, strict=True)])

            def step() -> None:
                torch.set_num_threads(threads)
                rows, grad = batches()
                if backward:
                    tbe(rows, offsets).backward(grad)
                else:
                    with torch.no_grad():
                        tbe(rows, offsets)

            return step

        return build

    return {FBGEMM_FWD: make(False), FBGEMM_BOTH: make(True)}


def bound_arrays(case: Case, kind: str, huge_pages: bool) -> tuple[np.ndarray, np.ndarray]:
    """The bound's own table and accumulator (one per row for ``ROWWISE``), on the pages
    MXNet's and torch's arrays get (numpy's own ``MADV_HUGEPAGE`` of large arrays turned off
    while they are allocated), or with ``huge_pages`` advised as
    :mod:`adagrad_gluon.optim.pages` advises ``adagrad_scratch``'s."""
    previous = _set_madvise_hugepage(huge_pages)
    try:
        weight = case.weight.copy()
        # filled, not np.zeros: its pages are mapped now, as MXNet's and torch's states are
        acc = np.full(case.weight.shape if kind == ELEMENTWISE else case.table, 0.0, np.float32)
    finally:
        _set_madvise_hugepage(previous)
    for array in (weight, acc) if huge_pages else ():
        pages.advise_memory(array.ctypes.data, array.nbytes)
    return weight, acc


def bound_step(function: Callable, kind: str, threads: int,
               huge_pages: bool) -> Callable[[Case], Step]:
    """The gather bound ``function`` of traffic ``kind`` on the case's rows, on its own
    :func:`bound_arrays`."""
    def make(case: Case) -> Step:
        weight, acc = bound_arrays(case, kind, huge_pages)
        batches = cycling(list(zip(case.rows, case.grads, strict=True)))

        def step() -> None:
            rows, grad = batches()
            function(weight.ctypes.data, grad.ctypes.data, acc.ctypes.data, rows.ctypes.data,
                     len(rows), case.width, LR, threads)

        return step

    return make


def load_bounds(directory: str) -> dict[str, Callable]:
    """The two loops of ``gather_bound.cc``, compiled as the fused kernels are."""
    library = compile_library(BOUND_SOURCE, directory)
    functions = {}
    for kind, symbol in ((ELEMENTWISE, "gather_bound"), (ROWWISE, "gather_bound_rowwise")):
        function = getattr(library, symbol)
        function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_int64,
                                                     ctypes.c_float, ctypes.c_int]
        function.restype = None
        functions[kind] = function
    return functions


def methods(threads: int, notes: list[str]) -> dict[str, Callable[[Case], Step]]:
    """Every method that can run here; what cannot is said in ``notes``."""
    fused = {"kernel": "fused", "eps": EPS}
    chosen = {FUSED: mxnet_method("adagrad_scratch", **fused, host_row_check=False),
              FUSED_HOST: mxnet_method("adagrad_scratch", **fused, host_row_check=True),
              FUSED_SMALL_PAGES: mxnet_method("adagrad_scratch", **fused, host_row_check=False,
                                              huge_pages=False),
              OPERATOR: fused_operator,
              FUSED_ROWWISE: mxnet_method("adagrad_scratch", **fused, rowwise=True,
                                          host_row_check=False)}
    chosen[BUILTIN] = mxnet_method("adagrad", eps=EPS)
    chosen[BUILTIN_HUGE] = mxnet_method("adagrad", huge_pages=True, eps=EPS)
    chosen[GROUP] = lambda case: mxnet_step(case, mx.optimizer.contrib.GroupAdaGrad(
        learning_rate=LR, eps=EPS))
    try:
        import torch
    except ImportError:
        notes.append("torch: not installed (pip install adagrad-gluon[torch])")
        return chosen
    chosen[TORCH] = torch_sparse(threads)
    try:
        import fbgemm_gpu

        chosen.update(fbgemm_steps(threads))
        notes.append(f"fbgemm_gpu {fbgemm_gpu.__version__} beside torch {torch.__version__}")
    except (ImportError, OSError) as exc:
        notes.append(f"fbgemm: does not import beside torch {torch.__version__} "
                     f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
    return chosen


def bytes_per_row(kind: str, width: int) -> int:
    """Bytes one updated float32 row must move, its 8-byte index included."""
    return 20 * width + 8 if kind == ELEMENTWISE else 12 * width + 8 + 8


def main(argv: list[str] | None = None) -> None:
    raw_argv = sys.argv[1:] if argv is None else argv
    parser = timing_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=positive_int, default=10_000,
                        help="unique rows per step")
    parser.add_argument("--width", type=positive_int, default=64)
    parser.add_argument("--table", type=positive_int, default=1_000_000,
                        help="rows of the table")
    parser.add_argument("--batches", type=positive_int, default=8, help="row sets cycled through")
    parser.add_argument("--alpha", type=positive_float, default=1.05, help="power-law exponent")
    args = parser.parse_args(argv)
    if args.rows > args.table:
        parser.error(f"--rows {args.rows} exceeds --table {args.table}")
    threads = kernel_threads(args.threads)
    case = Case(args.table, args.width, args.rows, args.batches, args.alpha)
    notes: list[str] = []
    makers = methods(threads, notes)
    with tempfile.TemporaryDirectory() as directory:
        bounds = load_bounds(directory)
    for kind, function in bounds.items():
        makers[BOUNDS[kind]] = bound_step(function, kind, threads, huge_pages=False)
        makers[HUGE_BOUNDS[kind]] = bound_step(function, kind, threads, huge_pages=True)
    print(f"mxnet {mx.__version__}; machine: {os.cpu_count()} logical CPUs, {_usable_cpus()} "
          f"usable; threads: fused kernels, bounds, torch and fbgemm {threads}; MXNet built-ins "
          f"MXNet's own (MXNET_OMP_MAX_THREADS={os.environ.get('MXNET_OMP_MAX_THREADS')}); "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    if not pages.available():
        notes.append("transparent huge pages are unavailable here (not Linux, or 'never'): "
                     "the 'huge pages' rows run on 4 KiB pages")
    for note in notes:
        print(f"note: {note}")
    steps = {name: make(case) for name, make in makers.items()}
    for step in steps.values():  # one cycle of the row sets: every row a method touches
        for _ in range(args.batches):
            step()
        nd.waitall()
    times = measure(steps, args.repeats, args.seconds)
    del steps
    huge = huge_page_methods(case)
    best = report(args, times, huge)
    if args.readme:
        write_section("benchmarks/bench_sparse.py", "\n\n".join(
            [readme_table(args, best, huge),
             provenance(shlex.join(["python", "benchmarks/bench_sparse.py", *raw_argv]),
                        threads)]), args.readme)
        print(f"\nwrote the table into {args.readme}")


def report(args: argparse.Namespace, times: dict[str, list],
           huge: frozenset[str]) -> dict[str, float]:
    """Print per method ms/step (min, median), rows/s, bytes per row, GB/s, the pages its tables
    are on and the fraction of its bound on those pages (``huge``: the methods on huge pages);
    then the issue's targets. Return each method's minimum seconds per step."""
    best = {name: min(t) for name, t in times.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    if FBGEMM_BOTH in best and best[FBGEMM_BOTH] > best[FBGEMM_FWD]:
        best[FBGEMM] = best[FBGEMM_BOTH] - best[FBGEMM_FWD]
        median[FBGEMM] = max(median[FBGEMM_BOTH] - median[FBGEMM_FWD], 0.0)
    elif FBGEMM_BOTH in best:
        print("note: fbgemm's update could not be timed (its forward+backward was not slower "
              "than its forward alone in this run)")
    print(f"\n{args.table} x {args.width} float32 table, {args.rows} unique power-law rows "
          f"(alpha {args.alpha}) per step, {args.batches} row sets cycled; min / median of "
          f"{args.repeats} repeats; 'of bound': of the gather bound on the method's pages")
    print(f"  {'method':46} {'ms/step':>8} {'median':>8} {'rows/s':>9} {'B/row':>6} "
          f"{'GB/s':>6} {'pages':>6} {'of bound':>8}")
    for name in best:
        traffic = [f"{v:>{w}}" for v, w in zip(_traffic(args, best, name, huge), (6, 6, 6, 8),
                                                strict=True)]
        print(f"  {name:46} {best[name] * 1e3:8.3f} {median[name] * 1e3:8.3f} "
              f"{args.rows / best[name]:9.3g} {' '.join(traffic)}")
    print("  targets:")
    for text, ratio, goal in targets(best, huge):
        print(f"    {text:58} {ratio:7.2f}  {'holds' if ratio >= goal else 'MISSED'} "
              f"(>= {goal:g})")
    print(f"  the most any method moving the elementwise bytes can gain over the built-in "
          f"(built-in / elementwise bound): {best[BUILTIN] / best[BOUNDS[ELEMENTWISE]]:.2f}x on "
          f"4 KiB pages, {best[BUILTIN] / best[HUGE_BOUNDS[ELEMENTWISE]]:.2f}x on huge pages")
    return best


def bound_of(name: str, huge: frozenset[str]) -> str:
    """The bound method ``name`` is measured against: of its traffic, on its pages."""
    return (HUGE_BOUNDS if name in huge else BOUNDS)[KIND[name]]


def _traffic(args: argparse.Namespace, best: dict[str, float], name: str,
             huge: frozenset[str]) -> tuple[str, ...]:
    """Bytes per row, GB/s, pages (2 MiB or 4 KiB) and fraction of the bound on those pages of
    method ``name``; dashes for FBGEMM's lookups, which are no update."""
    if name in (FBGEMM_FWD, FBGEMM_BOTH):
        return "-", "-", "4 KiB", "-"
    size = bytes_per_row(KIND[name], args.width)
    return (str(size), f"{args.rows * size / best[name] / 1e9:.2f}",
            "2 MiB" if name in huge else "4 KiB", f"{best[bound_of(name, huge)] / best[name]:.1%}")


def readme_table(args: argparse.Namespace, best: dict[str, float],
                 huge: frozenset[str]) -> str:
    """The README's table: per method ms/step, rows/s, GB/s, its pages, the fraction of its
    bound on those pages and its time relative to adagrad_scratch fused (elementwise)."""
    rows = []
    for name in best:
        _, gbs, on, fraction = _traffic(args, best, name, huge)
        rows.append([name, f"{best[name] * 1e3:.3f}", f"{args.rows / best[name]:.3g}", gbs,
                     on, fraction, f"{best[name] / best[FUSED]:.2f}×"])
    caption = (f"{args.table:,} × {args.width} float32 table, {args.rows:,} unique power-law "
               f"rows per step (min of {args.repeats} interleaved repeats); \"of its bound\" "
               f"is of the gather bound on the same pages as the method's tables:")
    header = ["method", "ms/step", "rows/s", "GB/s", "pages", "of its bound", "time / fused"]
    return caption + "\n\n" + markdown_table(header, rows)


def targets(best: dict[str, float], huge: frozenset[str]) -> list[tuple[str, float, float]]:
    """The issue's targets that the measured methods allow: (what, ratio, goal); fractions of
    the bound on the method's pages (``huge``: the methods on huge pages)."""
    fused = best[FUSED]
    found = [(f"{BUILTIN} / {FUSED}", best[BUILTIN] / fused, 10.0),
             ("fraction of the elementwise bound", best[bound_of(FUSED, huge)] / fused, 0.5)]
    if TORCH in best:
        found.append((f"{TORCH} / {FUSED}", best[TORCH] / fused, 1.0))
    if FBGEMM in best:
        found.append((f"{FBGEMM[:24]} / {FUSED} (2x)", 2 * best[FBGEMM] / fused, 1.0))
        if FUSED_ROWWISE in best:
            found.append((f"{FBGEMM[:24]} / rowwise (2x)", 2 * best[FBGEMM] / best[FUSED_ROWWISE],
                          1.0))
    if FUSED_ROWWISE in best:
        found.append(("fraction of the row-wise bound",
                      best[bound_of(FUSED_ROWWISE, huge)] / best[FUSED_ROWWISE], 0.5))
    return found


if __name__ == "__main__":
    main()

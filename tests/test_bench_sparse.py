"""benchmarks/bench_sparse.py: its row sets, its bound loops and one small run (correctness of
what it measures, never its speed)."""

import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
with mock.patch.dict(os.environ):  # the OMP_WAIT_POLICY it sets is for its own runs
    import bench_sparse  # noqa: E402
import readme_tables  # noqa: E402

from .pagemaps import anon_huge_kb, record_madvise, thp_mode  # noqa: E402


def test_power_law_rows_are_unique_sorted_in_range_and_skewed():
    rng = np.random.default_rng(0)
    sets = [bench_sparse.power_law_rows(rng, 50_000, 2_000, 1.05) for _ in range(20)]
    for rows in sets:
        assert rows.dtype == np.int64 and rows.shape == (2_000,)
        assert (np.diff(rows) > 0).all() and rows[0] >= 0 and rows[-1] < 50_000
    # the most popular id (rank 1, scattered to the same row every time) is in nearly every
    # set, while a uniform draw would put a given row in 4% of them
    counts = np.bincount(np.concatenate(sets), minlength=50_000)
    assert counts.max() == 20
    assert (counts >= 15).sum() > 100


@pytest.mark.parametrize("count", [0, -1, 11])
def test_power_law_rows_refuse_a_count_outside_the_table(count):
    with pytest.raises(ValueError, match=r"rows must be in \[1, table=10\]"):
        bench_sparse.power_law_rows(np.random.default_rng(0), 10, count, 1.0)


@pytest.mark.parametrize("kind", [bench_sparse.ELEMENTWISE, bench_sparse.ROWWISE])
def test_the_bound_loops_update_exactly_the_given_rows(kind):
    """The bound moves the traffic it claims: each given row (and only those) is read and
    written with its own gradient row."""
    case = bench_sparse.Case(table=3000, width=20, rows=1200, batches=1, alpha=1.0)
    rows, grad = case.rows[0], case.grads[0]
    with tempfile.TemporaryDirectory() as directory:
        function = bench_sparse.load_bounds(directory)[kind]
    weight = case.weight.copy()
    acc = np.zeros(weight.shape if kind == bench_sparse.ELEMENTWISE else len(weight),
                   np.float32)
    function(weight.ctypes.data, grad.ctypes.data, acc.ctypes.data, rows.ctypes.data,
             len(rows), case.width, 0.5, 2)
    square = grad * grad
    if kind == bench_sparse.ELEMENTWISE:
        expected_acc = np.zeros_like(weight)
        expected_acc[rows] = square
        step = 0.5 * grad * square
    else:
        expected_acc = np.zeros(len(weight), np.float32)
        expected_acc[rows] = square.sum(axis=1)
        step = 0.5 * expected_acc[rows][:, None] * grad
    expected = case.weight.copy()
    expected[rows] -= step
    np.testing.assert_allclose(acc, expected_acc, rtol=1e-5)
    np.testing.assert_allclose(weight, expected, rtol=1e-5, atol=1e-6)
    untouched = np.setdiff1d(np.arange(len(weight)), rows)
    np.testing.assert_array_equal(weight[untouched], case.weight[untouched])


def test_a_small_run_reports_every_method_and_the_targets(capsys, tmp_path):
    readme = tmp_path / "README.md"
    begin, end = readme_tables.markers("benchmarks/bench_sparse.py")
    readme.write_text(f"{begin}\nold\n{end}\n")
    bench_sparse.main(["--table", "2000", "--rows", "300", "--width", "16", "--repeats", "1",
                       "--batches", "2", "--seconds", "0.01", "--readme", str(readme)])
    out = capsys.readouterr().out
    for name in (bench_sparse.FUSED, bench_sparse.FUSED_HOST, bench_sparse.OPERATOR,
                 bench_sparse.FUSED_SMALL_PAGES,
                 bench_sparse.BUILTIN, bench_sparse.BUILTIN_HUGE, bench_sparse.GROUP,
                 bench_sparse.FUSED_ROWWISE, *bench_sparse.BOUNDS.values(),
                 *bench_sparse.HUGE_BOUNDS.values()):
        assert f"  {name} " in out
        assert f"| {name} |" in readme.read_text()
    assert "targets:" in out and "fraction of the elementwise bound" in out
    assert "fraction of the row-wise bound" in out and "built-in / elementwise bound" in out
    assert "x on 4 KiB pages" in out and "x on huge pages" in out
    # a 2000-row table is below the 64 MiB from which adagrad_scratch uses huge pages: its
    # fractions are of the 4 KiB bound, the huge-page rows' of the huge-page bound
    table = readme.read_text()
    assert "of the gather bound on the same pages" in table
    for name, pages in ((bench_sparse.FUSED, "4 KiB"), (bench_sparse.BUILTIN, "4 KiB"),
                        (bench_sparse.BUILTIN_HUGE, "2 MiB")):
        assert f"| {name} | " in table
        assert f" | {pages} | " in next(line for line in table.splitlines()
                                         if line.startswith(f"| {name} | "))
    # bytes per updated row: 20 B per element + the index, or 12 B + accumulator + index
    assert f" {20 * 16 + 8} " in out and f" {12 * 16 + 16} " in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--rows", "0"], "--rows: value must be >= 1, got 0"),
    (["--width", "x"], "--width: expected an integer, got 'x'"),
    (["--alpha", "-1"], "--alpha: value must be > 0"),
    (["--table", "10", "--rows", "11"], "--rows 11 exceeds --table 10"),
])
def test_bad_flags_are_refused_before_anything_runs(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        bench_sparse.main(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_the_fractions_compare_like_with_like(monkeypatch):
    """adagrad_scratch's methods are measured against the huge-page bound exactly where it
    backs the table by huge pages itself (64 MiB and up, where the advice applies)."""
    monkeypatch.setattr(bench_sparse.pages, "available", lambda: True)
    small = SimpleNamespace(weight=SimpleNamespace(nbytes=bench_sparse.pages.LARGE_TABLE_BYTES - 1))
    large = SimpleNamespace(weight=SimpleNamespace(nbytes=bench_sparse.pages.LARGE_TABLE_BYTES))
    for case, scratch_bound in ((small, bench_sparse.BOUNDS), (large, bench_sparse.HUGE_BOUNDS)):
        huge = bench_sparse.huge_page_methods(case)
        for name in bench_sparse.SCRATCH:
            assert bench_sparse.bound_of(name, huge) == scratch_bound[bench_sparse.KIND[name]]
        for name in (bench_sparse.BUILTIN, bench_sparse.GROUP, bench_sparse.TORCH,
                     bench_sparse.FUSED_SMALL_PAGES):
            assert bench_sparse.bound_of(name, huge) == bench_sparse.BOUNDS[bench_sparse.KIND[name]]
        assert bench_sparse.bound_of(bench_sparse.BUILTIN_HUGE, huge) \
            == bench_sparse.HUGE_BOUNDS[bench_sparse.ELEMENTWISE]
    monkeypatch.setattr(bench_sparse.pages, "available", lambda: False)
    assert not bench_sparse.huge_page_methods(large) & set(bench_sparse.SCRATCH)


BOTH_ADVICE = [bench_sparse.pages.MADV_HUGEPAGE, bench_sparse.pages.MADV_COLLAPSE]


def _advice(calls: list) -> list:
    """The advice of each recorded madvise call, in order."""
    return [advice for _, _, advice in calls]


def test_the_huge_page_methods_advise_their_tables_and_the_others_do_not(monkeypatch):
    calls = record_madvise(monkeypatch)  # bench_sparse.pages is the package's pages module
    case = bench_sparse.Case(table=150_000, width=64, rows=100, batches=1, alpha=1.0)  # 38.4 MB
    default = bench_sparse.bound_arrays(case, bench_sparse.ELEMENTWISE, huge_pages=False)
    bench_sparse.mxnet_method("adagrad")(case)()
    assert _advice(calls) == []
    huge = bench_sparse.bound_arrays(case, bench_sparse.ELEMENTWISE, huge_pages=True)
    assert _advice(calls) == BOTH_ADVICE * 2
    calls.clear()
    bench_sparse.mxnet_method("adagrad", huge_pages=True)(case)()  # weight and its history
    assert _advice(calls) == BOTH_ADVICE * 2
    if thp_mode() == "madvise":  # what the kernel maps ('always' maps huge pages everywhere)
        for array in default:  # numpy's own MADV_HUGEPAGE of large arrays was turned off
            assert anon_huge_kb(array.ctypes.data, array.nbytes) == 0
        for array in huge:
            assert anon_huge_kb(array.ctypes.data, array.nbytes) > 0


def test_torchs_table_is_in_torchs_own_memory():
    """Not a numpy copy's: numpy advises its large arrays as MADV_HUGEPAGE, so torch's
    weight was on huge pages while its state and the "4 KiB" bound it was compared with
    were not."""
    torch = pytest.importorskip("torch")
    case = bench_sparse.Case(table=150_000, width=64, rows=100, batches=1, alpha=1.0)
    table = bench_sparse.torch_table(case)
    assert isinstance(table, torch.Tensor)
    np.testing.assert_array_equal(table.numpy(), case.weight)
    assert table.data_ptr() != case.weight.ctypes.data
    if thp_mode() == "madvise":
        assert anon_huge_kb(table.data_ptr(), case.weight.nbytes) == 0

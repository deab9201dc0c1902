"""``huge_pages``: the tables that row_sparse gradients update are backed by transparent huge
pages (``madvise`` ``MADV_HUGEPAGE`` + ``MADV_COLLAPSE``), once per array, large ones by
default; advice that never changes what an update computes."""

import ctypes
import errno

import mxnet as mx
import numpy as np
import pytest
from mxnet import nd

from adagrad_gluon import AdagradScratch
from adagrad_gluon.optim import pages

from .pagemaps import anon_huge_kb, record_madvise, thp_mode

WIDTH = 64
needs_thp = pytest.mark.skipif(
    thp_mode() == "never",
    reason="transparent huge pages are 'never' here: the kernel backs nothing by huge pages, "
           "so there is nothing to observe (the advice is skipped, which other tests check)")


@pytest.fixture
def calls(monkeypatch) -> list:
    """``(start, length, advice)`` of every madvise call, passed on to the real one."""
    return record_madvise(monkeypatch)


def _row_sparse(rows, table, step=0):
    rng = np.random.default_rng(step)
    data = rng.standard_normal((len(rows), WIDTH)).astype(np.float32)
    return nd.sparse.row_sparse_array((nd.array(data), nd.array(rows, dtype="int64")),
                                      shape=(table, WIDTH))


def _rows(table, step, count=50):
    return np.sort(np.random.default_rng(100 + step).choice(table, count, replace=False))


def _run(table, steps=3, **options):
    """``steps`` row_sparse updates of a ``table`` x 64 float32 weight; the optimizer, weight
    and accumulator."""
    opt = AdagradScratch(learning_rate=0.1, **options)
    weight = nd.array(np.random.default_rng(0).standard_normal((table, WIDTH), np.float32))
    state = opt.create_state(0, weight)
    for step in range(steps):
        opt.update(0, weight, _row_sparse(_rows(table, step), table, step), state)
    return opt, weight, state


def _advised(calls, array) -> set:
    """The advice given for the huge pages inside ``array``."""
    interior = pages.huge_page_interior(pages.data_address(array), pages.nbytes(array))
    return {advice for start, length, advice in calls if (start, length) == interior}


@needs_thp
def test_a_large_row_sparse_table_is_backed_by_huge_pages_once(calls):
    """A 64 MiB table (the default threshold) and its accumulator: advised and collapsed at
    the first update, never again; the kernel really maps them with 2 MiB pages."""
    table = pages.LARGE_TABLE_BYTES // (4 * WIDTH)
    opt, weight, acc = _run(table, steps=3)
    nd.waitall()
    for array in (weight, acc):
        assert _advised(calls, array) == {pages.MADV_HUGEPAGE, pages.MADV_COLLAPSE}
        assert anon_huge_kb(pages.data_address(array), pages.nbytes(array)) > 0
    assert len(calls) == 4  # two arrays, two advices each, over three updates


@pytest.mark.parametrize("kernel", ["fused", "reference"])
def test_updates_are_bit_identical_with_and_without_huge_pages(kernel, calls):
    table = 8 * pages.HUGE_PAGE // (4 * WIDTH)  # 16 MiB, so True has whole pages to advise
    results = {flag: _run(table, steps=4, kernel=kernel, huge_pages=flag)[1:]
               for flag in (False, True)}
    assert calls  # True did advise
    for on, off in zip(results[True], results[False], strict=True):
        np.testing.assert_array_equal(on.asnumpy(), off.asnumpy())


def test_a_failing_madvise_changes_nothing(monkeypatch):
    """EINVAL (an older kernel), EAGAIN, ENOMEM: ignored, the update as without advice."""
    table = 4 * pages.HUGE_PAGE // (4 * WIDTH)
    expected = _run(table, huge_pages=False)[1:]
    failed = []

    def failing(start, length, advice):
        failed.append(advice)
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(pages, "_madvise", lambda: failing)
    got = _run(table, huge_pages=True)[1:]
    assert failed
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


def test_small_tables_dense_gradients_and_huge_pages_false_are_not_advised(calls):
    _run(1000)  # 256 KB: below the default threshold
    _run(pages.LARGE_TABLE_BYTES // (4 * WIDTH), huge_pages=False)
    opt = AdagradScratch(huge_pages=True)
    weight = nd.ones((8 * pages.HUGE_PAGE // (4 * WIDTH), WIDTH))
    opt.update(0, weight, nd.ones(weight.shape), opt.create_state(0, weight))
    assert calls == []


def test_new_arrays_and_each_contexts_copy_are_advised_once(calls):
    """A Trainer on two contexts hands the same index each context's arrays in turn; new
    state arrays (e.g. loaded states) are advised again."""
    table = 4 * pages.HUGE_PAGE // (4 * WIDTH)
    opt = AdagradScratch(huge_pages=True)
    weights = [nd.ones((table, WIDTH), ctx=mx.cpu(i)) for i in (0, 1)]
    states = [opt.create_state(0, w) for w in weights]
    for step in range(3):
        for weight, state in zip(weights, states, strict=True):
            opt.update(0, weight, _row_sparse(_rows(table, step), table).copyto(weight.context),
                       state)
    assert len(calls) == 2 * 2 * 2  # two contexts, two arrays, two advices
    states[0] = opt.create_state(0, weights[0])
    opt.update(0, weights[0], _row_sparse(_rows(table, 0), table), states[0])
    assert _advised(calls[8:], states[0]) == {pages.MADV_HUGEPAGE, pages.MADV_COLLAPSE}
    assert len(calls) == 8 + 4  # the new accumulator, and the weight again with it


def test_a_master_copy_is_advised_with_the_table(calls):
    table = 4 * pages.HUGE_PAGE // (2 * WIDTH)
    opt = AdagradScratch(huge_pages=True, multi_precision=True)
    weight = nd.ones((table, WIDTH), dtype=np.float16)
    state = opt.create_state_multi_precision(0, weight)
    grad = _row_sparse(_rows(table, 0), table).astype(np.float16)
    opt.update_multi_precision(0, weight, grad, state)
    for array in (weight, *state):
        assert _advised(calls, array) == {pages.MADV_HUGEPAGE, pages.MADV_COLLAPSE}


def test_nothing_is_advised_where_transparent_huge_pages_are_never(monkeypatch, tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always madvise [never]\n")
    monkeypatch.setattr(pages, "THP_ENABLED", setting)
    pages._madvise.cache_clear()
    try:
        assert pages._madvise() is None
        setting.write_text("always [madvise] never\n")
        pages._madvise.cache_clear()
        assert pages._madvise() is not None
    finally:
        pages._madvise.cache_clear()


@pytest.mark.parametrize(("address", "size", "interior"), [
    (2 * pages.HUGE_PAGE + 64, 4 * pages.HUGE_PAGE, (3 * pages.HUGE_PAGE, 3 * pages.HUGE_PAGE)),
    (pages.HUGE_PAGE, 2 * pages.HUGE_PAGE, (pages.HUGE_PAGE, 2 * pages.HUGE_PAGE)),
    (pages.HUGE_PAGE + 4096, pages.HUGE_PAGE, (2 * pages.HUGE_PAGE, 0)),
])
def test_only_whole_huge_pages_inside_an_array_are_advised(address, size, interior):
    assert pages.huge_page_interior(address, size) == interior


@needs_thp
def test_huge_pages_set_after_updates_takes_effect_and_no_array_is_held(calls):
    """``huge_pages=True`` set on an optimizer that has already updated a small table advises
    it at the next update; what the optimizer remembers of advised arrays keeps none alive."""
    table = 4 * pages.HUGE_PAGE // (4 * WIDTH)  # 8 MiB: below the default threshold
    opt, weight, state = _run(table, steps=1)
    assert calls == []
    opt.huge_pages = True
    opt.update(0, weight, _row_sparse(_rows(table, 1), table, 1), state)
    assert _advised(calls, weight) == {pages.MADV_HUGEPAGE, pages.MADV_COLLAPSE}
    remembered = [*opt._paged.values(), *opt._paged_last.values()]
    assert remembered and not any(isinstance(x, nd.NDArray) for v in remembered for x in v)

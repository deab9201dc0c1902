"""The fused row_sparse update at the sizes where its row loop parallelises, prefetches and cuts
long rows into pieces: bit-identical to the reference; bad rows refused on both paths."""

import ctypes

import mxnet as mx
import numpy as np
import pytest
from mxnet import nd

from adagrad_gluon import AdagradScratch, kernels
from adagrad_gluon.functional import Step, reference_steps
from adagrad_gluon.optim import pages
from adagrad_gluon.optim.options import AdagradOptions

from .test_kernels import assert_bits_equal


@pytest.fixture(scope="module", autouse=True)
def library():
    return kernels.load()


def _grad(rows, width, num_rows, dtype, seed):
    data = np.random.default_rng(seed).normal(scale=1.5, size=(len(rows), width))
    return nd.sparse.row_sparse_array(
        (nd.array(data.astype(dtype), dtype=dtype), nd.array(rows, dtype="int64")),
        shape=(num_rows, width))


def _run(update, shape, dtype, batches, options, multi_precision=False):
    """Weight, accumulator (and master) after ``update`` of the row sets ``batches``."""
    weight = nd.array(np.random.default_rng(7).normal(size=shape).astype(dtype), dtype=dtype)
    acc_dtype = np.float64 if dtype == np.float64 else np.float32
    acc = nd.zeros(shape[:1] if options.rowwise else shape, dtype=acc_dtype)
    master = weight.astype(np.float32) if multi_precision else None
    for t, rows in enumerate(batches):
        grad = _grad(rows, shape[1], shape[0], dtype, seed=t)
        update([Step(weight, grad, acc, master, 0.05 * (t + 1), 0.01, True)], options)
    arrays = [weight, acc] + ([master] if multi_precision else [])
    return [a.asnumpy() for a in arrays]


@pytest.mark.parametrize("rowwise", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("dtype", "multi_precision"),
                         [(np.float32, False), (np.float64, False), (np.float16, True),
                          (np.float16, False)])
def test_many_rows_in_parallel_are_bit_identical_to_the_reference(dtype, multi_precision,
                                                                  threads, rowwise):
    """2500 rows of 64 (over the parallel threshold), power-law-ish clustered and scattered,
    each step a new set: every row updated exactly once per step, in any thread; row-wise,
    blocks of 16 rows summed side by side and a last partial block."""
    rng = np.random.default_rng(3)
    batches = [np.unique(np.concatenate([np.arange(0, 2000, 2), rng.choice(20000, 1500)]))
               for _ in range(3)]
    options = AdagradOptions(weight_decay_mode="decoupled", clip_gradient=2.0, rowwise=rowwise)
    previous = kernels.num_threads()
    kernels.set_num_threads(threads)
    try:
        fused = _run(kernels.fused_steps, (20000, 64), dtype, batches, options, multi_precision)
    finally:
        kernels.set_num_threads(previous)
    expected = _run(reference_steps, (20000, 64), dtype, batches, options, multi_precision)
    for actual, wanted in zip(fused, expected, strict=True):
        assert_bits_equal(actual, wanted)


def test_rows_longer_than_a_piece_are_bit_identical_to_the_reference():
    """Rows of 70000 elements are cut into pieces of 32768 (three per row)."""
    batches = [[0, 2, 3], [1, 3]]
    options = AdagradOptions()
    fused = _run(kernels.fused_steps, (4, 70000), np.float32, batches, options)
    expected = _run(reference_steps, (4, 70000), np.float32, batches, options)
    for actual, wanted in zip(fused, expected, strict=True):
        assert_bits_equal(actual, wanted)


@pytest.mark.parametrize("rows", [[3, 1], [2, 2], [1, 5], [-1, 2]], ids=str)
def test_the_kernel_refuses_bad_rows_before_writing(rows):
    """Unsorted, duplicate, out of range, negative: the operator itself refuses them (for
    callers that bypass the optimizer's checks), and writes nothing."""
    w, s = nd.ones((5, 4)), nd.zeros((5, 4))
    with pytest.raises(mx.base.MXNetError, match=r"row indices must be strictly increasing "
                                                 r"\(sorted, no repeats\) and within \[0, 5\)"):
        kernels.fused_steps([Step(w, _grad(rows, 4, 5, np.float32, 0), s, None, 0.1, 0.0,
                                  True)], AdagradOptions())
        nd.waitall()
    # both arrays carry the failure (reading them raises it again): read their memory
    np.testing.assert_array_equal(_memory(w), 1.0)
    np.testing.assert_array_equal(_memory(s), 0.0)


def _memory(array: nd.NDArray) -> np.ndarray:
    """A copy of a float32 array's memory, read without waiting on (or raising) its engine
    variable: the operator that failed on it has finished."""
    buffer = (ctypes.c_float * array.size).from_address(pages.data_address(array))
    return np.frombuffer(buffer, dtype=np.float32).reshape(array.shape).copy()


@pytest.mark.parametrize("kernel", ["reference", "fused"])
@pytest.mark.parametrize("rows", [[7, 3], [4, 4], [0, 100], [-3, 1]], ids=str)
def test_bad_rows_of_a_large_table_give_a_value_error_naming_the_parameter(kernel, rows):
    opt = AdagradScratch(kernel=kernel, learning_rate=0.1)
    opt.idx2name = {0: "embedding0_weight"}
    w = nd.ones((100, 8))
    grad = _grad(rows, 8, 100, np.float32, 0)
    with pytest.raises(ValueError, match=r"parameter 'embedding0_weight': the row_sparse "
                                         r"gradient's row indices must be strictly increasing "
                                         r"and in \[0, 100\)"):
        opt.update(0, w, grad, opt.create_state(0, w))
    np.testing.assert_array_equal(w.asnumpy(), 1.0)

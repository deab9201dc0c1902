"""The fused kernels (:mod:`adagrad_gluon.kernels`) against the reference NDArray update: bit for
bit over the option grid, directly, in multi-tensor calls and through ``gluon.Trainer``; then
choosing the path, falling back without a compiler, building once and loading once."""

import dataclasses
import itertools
import os
import subprocess
import sys
import textwrap
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from adagrad_gluon import AdagradScratch, kernels
from adagrad_gluon.data import CACHE_DIR_ENV
from adagrad_gluon.functional import Step, reference_steps
from adagrad_gluon.optim.options import AdagradOptions

OPTION_GRID = [
    dict(wd=wd, rescale_grad=rescale, clip_gradient=clip, eps=eps, eps_placement=placement,
         weight_decay_mode=mode, maximize=maximize)
    for wd, rescale, clip, eps, placement, mode, maximize in itertools.product(
        (0.0, 0.02), (1.0, 0.25), (None, 0.3), (1e-6, 0.0), ("inside", "outside"),
        ("step", "l2", "decoupled"), (False, True))
]
BITS = {np.dtype(np.float16): np.uint16, np.dtype(np.float32): np.uint32,
        np.dtype(np.float64): np.uint64}


@pytest.fixture(scope="module", autouse=True)
def library():
    """The tests below need the kernels: build and load them once."""
    return kernels.load()


def assert_bits_equal(actual, expected):
    """Equal bit for bit (so also in the sign of zeros and in NaNs)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    differ = actual.view(BITS[actual.dtype]) != expected.view(BITS[expected.dtype])
    assert not differ.any(), (
        f"{differ.sum()} of {differ.size} elements differ, e.g. {actual[differ][:3]} "
        f"instead of {expected[differ][:3]}"
    )


def _gradients(shape, steps, seed, dtype):
    """Gradients with exact zeros (so some accumulators stay 0) and values beyond 0.3."""
    rng = np.random.default_rng(seed)
    grads = []
    for _ in range(steps):
        g = rng.normal(scale=1.5, size=shape)
        g[..., :2] = 0.0
        grads.append(g.astype(dtype))
    return grads


def _split(options):
    """``(wd, AdagradOptions)`` from one dict of the grid."""
    options = dict(options)
    return options.pop("wd", 0.0), AdagradOptions(**options)


def _run(update, dtype, shape=(9, 7), steps=4, seed=0, lr=0.3, **options):
    """``steps`` updates of one weight by ``update([Step], AdagradOptions(**options))`` (the
    reference's or the kernels' shared signature); returns ``(w, s)``."""
    wd, options = _split(options)
    w = nd.array(np.random.default_rng(seed + 100).normal(size=shape), dtype=dtype)
    s = nd.zeros(shape[:1] if options.rowwise else shape, dtype=dtype)
    for g in _gradients(shape, steps, seed, dtype):
        update([Step(w, nd.array(g, dtype=dtype), s, None, lr, wd, False)], options)
    return w.asnumpy(), s.asnumpy()


# -- the kernels alone ----------------------------------------------------------------------

@pytest.mark.parametrize("rowwise", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", OPTION_GRID, ids=str)
def test_fused_update_is_bit_identical_to_the_reference(options, dtype, rowwise):
    expected = _run(reference_steps, dtype, lr=0.3, rowwise=rowwise, **options)
    actual = _run(kernels.fused_steps, dtype, lr=0.3, rowwise=rowwise, **options)
    for a, e in zip(actual, expected, strict=True):
        assert_bits_equal(a, e)


def test_zero_accumulator_with_eps_zero_gives_no_nan():
    w, s = _run(kernels.fused_steps, np.float32, lr=0.3, eps=0.0, eps_placement="outside")
    assert np.isfinite(w).all()
    assert (s[:, :2] == 0).all()  # the columns whose gradient is always 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", [OPTION_GRID[0], OPTION_GRID[-1], OPTION_GRID[77]], ids=str)
def test_multi_tensor_update_equals_one_reference_update_per_tensor(options, dtype):
    """Shapes from one element to above the size at which the kernels go parallel, each with
    its own lr and wd."""
    shapes = [(1,), (3, 5), (257,), (300, 301), (2, 3, 4)]
    lrs = [0.1, 0.2, 0.05, 0.3, 0.0]
    wds = [0.0, 0.01, 0.1, 0.02, 0.05]
    _, options = _split(options)
    rng = np.random.default_rng(7)
    w0 = [rng.normal(size=shape).astype(dtype) for shape in shapes]
    grads = [_gradients(shape, 3, i, dtype) for i, shape in enumerate(shapes)]
    fused = [nd.array(w, dtype=dtype) for w in w0]
    reference = [nd.array(w, dtype=dtype) for w in w0]
    s_fused = [nd.zeros(shape, dtype=dtype) for shape in shapes]
    s_reference = [nd.zeros(shape, dtype=dtype) for shape in shapes]
    for t in range(3):
        g = [nd.array(grads[i][t], dtype=dtype) for i in range(len(shapes))]
        kernels.fused_steps([Step(*arrays, None, lr, wd, False) for *arrays, lr, wd in
                             zip(fused, g, s_fused, lrs, wds, strict=True)], options)
        for i in range(len(shapes)):
            reference_steps([Step(reference[i], g[i], s_reference[i], None, lrs[i], wds[i],
                                  False)], options)
    for i in range(len(shapes)):
        assert_bits_equal(fused[i].asnumpy(), reference[i].asnumpy())
        assert_bits_equal(s_fused[i].asnumpy(), s_reference[i].asnumpy())


def _mixed_steps(t, lr):
    """Step ``t`` of six parameters of every kind the optimizer creates: dense float32 and
    float64, float16 with and without a float32 master, row_sparse float32 and float64."""
    kinds = [(np.float32, False, False), (np.float64, False, False), (np.float16, True, False),
             (np.float16, False, False), (np.float32, False, True), (np.float64, False, True)]
    return [(dtype, master, row_sparse, lr * (1 + k), 0.0 if row_sparse else 0.01 * k)
            for k, (dtype, master, row_sparse) in enumerate(kinds)]


@pytest.mark.parametrize("rowwise", [False, True])
@pytest.mark.parametrize("options", OPTION_GRID, ids=str)
def test_one_call_of_mixed_steps_is_bit_identical_on_every_combination(options, rowwise):
    """The shared signature: the same list of steps (every dtype, with and without masters,
    dense and row_sparse, each its own lr and wd) and the same options, given once to the
    reference and once to the kernels, give the same bits; elementwise and row-wise."""
    _, options = _split(options)
    options = dataclasses.replace(options, rowwise=rowwise)
    shape, results = (6, 5), []
    for update in (reference_steps, kernels.fused_steps):
        rng = np.random.default_rng(4)
        arrays = []
        for dtype, master, _, _, _ in _mixed_steps(0, 0.3):
            w = nd.array(rng.normal(size=shape), dtype=dtype)
            acc = nd.zeros(shape[:1] if rowwise else shape,
                           dtype=np.float64 if dtype == np.float64 else np.float32)
            arrays.append((w, acc, w.astype(np.float32) if master else None))
        for t in range(3):
            steps = []
            for k, ((w, acc, master), (dtype, _, row_sparse, lr, wd)) in enumerate(
                    zip(arrays, _mixed_steps(t, 0.3), strict=True)):
                grad = (_row_sparse([0, 2 + t], 5, 6, dtype, seed=t + k) if row_sparse
                        else nd.array(_gradients(shape, 1, t + k, dtype)[0], dtype=dtype))
                steps.append(Step(w, grad, acc, master, lr, wd, row_sparse))
            update(steps, options)
        results.append([a.asnumpy() for group in arrays for a in group if a is not None])
    for actual, expected in zip(results[1], results[0], strict=True):
        assert_bits_equal(actual, expected)


def test_a_step_names_every_array_and_number_so_lists_cannot_disagree():
    """One record per tensor (no parallel lists whose lengths could differ): a step missing a
    field is refused when it is made."""
    w = nd.ones(3)
    with pytest.raises(TypeError, match="missing"):
        Step(w, w, nd.zeros(3), None, 0.1)
    assert Step(w, w, w, None, 0.1, 0.0, False)._fields == (
        "weight", "grad", "acc", "master", "lr", "wd", "row_sparse")


def test_bad_options_raise_value_error_naming_them():
    with pytest.raises(ValueError, match="eps_placement"):
        AdagradOptions(eps_placement="middle")
    with pytest.raises(ValueError, match="weight_decay_mode"):
        AdagradOptions(weight_decay_mode="l1")


def test_mismatched_arrays_raise_instead_of_crashing():
    options = AdagradOptions()
    with pytest.raises(mx.base.MXNetError, match="grad shape does not match"):
        kernels.fused_steps([Step(nd.ones((3, 4)), nd.ones((4, 3)), nd.zeros((3, 4)), None,
                                  0.1, 0.0, False)], options)
    with pytest.raises(mx.base.MXNetError, match="accumulator"):
        kernels.fused_steps([Step(nd.ones(3), nd.ones(3), nd.zeros(3, dtype="float64"), None,
                                  0.1, 0.0, False)], options)


def _row_sparse(rows, width, num_rows, dtype, seed=0):
    data = np.random.default_rng(seed).normal(size=(len(rows), width)).astype(dtype)
    return nd.sparse.row_sparse_array(
        (nd.array(data, dtype=dtype), nd.array(rows, dtype="int64")), shape=(num_rows, width)
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", OPTION_GRID[::7], ids=str)
def test_row_sparse_update_is_bit_identical_to_the_reference(options, dtype):
    w0 = np.random.default_rng(1).normal(size=(8, 5)).astype(dtype)
    results = []
    wd, options = _split(options)
    for update in (reference_steps, kernels.fused_steps):
        w, s = nd.array(w0, dtype=dtype), nd.zeros((8, 5), dtype=dtype)
        for t, rows in enumerate(([0, 3, 4], [3, 7], [1, 2, 3, 4, 5, 6])):
            update([Step(w, _row_sparse(rows, 5, 8, dtype, seed=t), s, None, 0.3, wd, True)],
                   options)
        results.append((w.asnumpy(), s.asnumpy()))
    for actual, expected in zip(results[1], results[0], strict=True):
        assert_bits_equal(actual, expected)


@pytest.mark.parametrize("row_sparse", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", OPTION_GRID[::7], ids=str)
def test_rowwise_long_rows_are_bit_identical_to_the_reference(options, dtype, row_sparse):
    """Rows of 1000 elements of magnitudes from 1e-4 to 1e4, where the order and compensation
    of the row sums show, on a table large enough for several threads."""
    shape = (90, 1000)
    rng = np.random.default_rng(11)
    w0 = rng.normal(size=shape).astype(dtype)
    wd, options = _split(options)
    options = dataclasses.replace(options, rowwise=True)
    results = []
    for update in (reference_steps, kernels.fused_steps):
        w, s = nd.array(w0, dtype=dtype), nd.zeros(shape[:1], dtype=dtype)
        for t in range(3):
            g = (np.random.default_rng(t).normal(size=shape)
                 * 10.0 ** np.random.default_rng(t + 9).uniform(-4, 4, size=shape))
            rows = np.arange(t, 90, 2)
            grad = (nd.sparse.row_sparse_array((g[rows].astype(dtype), rows), shape=shape,
                                               dtype=dtype)
                    if row_sparse else nd.array(g, dtype=dtype))
            update([Step(w, grad, s, None, 0.3, wd, row_sparse)], options)
        results.append((w.asnumpy(), s.asnumpy()))
    for actual, expected in zip(results[1], results[0], strict=True):
        assert_bits_equal(actual, expected)


def test_row_sparse_update_without_rows_changes_nothing():
    w0 = np.arange(12, dtype=np.float32).reshape(4, 3)
    w, s = nd.array(w0), nd.zeros((4, 3))
    kernels.fused_steps([Step(w, nd.sparse.zeros("row_sparse", (4, 3)), s, None, 0.3, 0.0,
                              True)], AdagradOptions())
    assert_bits_equal(w.asnumpy(), w0)


@pytest.mark.parametrize("rows", [[3, 1], [1, 9], [2, 2]], ids=str)
def test_row_sparse_rows_out_of_order_or_range_are_refused(rows):
    """MXNet does not check a row_sparse array's indices; the kernel does, before writing."""
    w, s = nd.ones((5, 4)), nd.zeros((5, 4))
    with pytest.raises(mx.base.MXNetError, match="row indices must be increasing"):
        kernels.fused_steps([Step(w, _row_sparse(rows, 4, 5, np.float32), s, None, 0.1, 0.0,
                                  True)], AdagradOptions())
        nd.waitall()


def test_results_do_not_depend_on_the_thread_count():
    results = []
    try:
        for n in (1, 2, 3):
            kernels.set_num_threads(n)
            results.append(_run(kernels.fused_steps, np.float32, shape=(400, 501), steps=2,
                                lr=0.1, wd=0.01))
    finally:
        kernels.set_num_threads(kernels._default_num_threads())
    for other in results[1:]:
        assert_bits_equal(other[0], results[0][0])


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_set_num_threads_is_validated(n):
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        kernels.set_num_threads(n)


def test_thread_count_from_the_environment(monkeypatch):
    monkeypatch.setenv(kernels.NUM_THREADS_ENV, "3")
    assert kernels._default_num_threads() == 3
    monkeypatch.setenv(kernels.NUM_THREADS_ENV, "many")
    with pytest.raises(ValueError, match=kernels.NUM_THREADS_ENV):
        kernels._default_num_threads()


# -- through the optimizer and gluon.Trainer ------------------------------------------------

@pytest.mark.parametrize("multi_precision", [False, True])
@pytest.mark.parametrize("options", [{}, dict(wd=0.01, clip_gradient=0.5, rescale_grad=0.5),
                                     dict(wd=0.01, weight_decay_mode="l2", eps=0.0,
                                          eps_placement="outside", maximize=True)], ids=str)
def test_float16_weights_are_bit_identical_to_the_reference(options, multi_precision):
    """float16 weights, float32 accumulators, with and without float32 master weights; a lazy
    row_sparse step among the dense ones."""
    results = []
    for kernel in ("reference", "fused"):
        opt = AdagradScratch(learning_rate=0.2, multi_precision=multi_precision, kernel=kernel,
                             **options)
        w = nd.array(np.random.default_rng(2).normal(size=(6, 33)), dtype="float16")
        state = opt.create_state_multi_precision(0, w)
        for g in _gradients((6, 33), 4, 3, np.float16):
            opt.update_multi_precision(0, w, nd.array(g, dtype="float16"), state)
        if not options.get("wd"):
            opt.update_multi_precision(0, w, _row_sparse([1, 4], 33, 6, np.float16), state)
        results.append([w.asnumpy()] + [a.asnumpy() for a in
                                        (state if multi_precision else [state])])
    for actual, expected in zip(results[1], results[0], strict=True):
        assert_bits_equal(actual, expected)


SHAPES = [(16, 3), (16,), (8, 16), (8,), (1, 8), (1,)]
MULTS = [dict(lr_mult=2.0), dict(wd_mult=0.0), dict(lr_mult=0.5), dict(wd_mult=3.0), {}, {}]


def _params(seed, dtype="float32"):
    """Six parameters, some with lr_mult/wd_mult (float16 dense layers need CuDNN, so the
    model below is elementwise)."""
    mx.random.seed(seed)
    params = gluon.ParameterDict()
    for i, (shape, mults) in enumerate(zip(SHAPES, MULTS, strict=True)):
        params.get(f"p{i}", shape=shape, dtype=dtype, **mults)
    params.initialize(mx.init.Normal(0.5))
    return params


def _loss(params, inputs):
    return sum(((nd.tanh(p.data() * x) - 0.3) ** 2).sum()
               for p, x in zip(params.values(), inputs, strict=True))


def _train(kernel, options, dtype="float32", steps=12):
    params = _params(seed=7, dtype=dtype)
    options = dict(options)
    if options.pop("scheduled", False):
        options["lr_scheduler"] = mx.lr_scheduler.FactorScheduler(step=3, factor=0.7)
    trainer = gluon.Trainer(params, "adagrad_scratch",
                            {"learning_rate": 0.05, "kernel": kernel, **options})
    assert trainer._optimizer.kernel == kernel
    rng = np.random.default_rng(3)
    for i in range(steps):
        inputs = [nd.array(rng.normal(size=shape), dtype=dtype) for shape in SHAPES]
        with autograd.record():
            loss = _loss(params, inputs)
        loss.backward()
        trainer.step(16 if i % 2 else 8)  # rescale_grad changes between steps
    return [p.data().asnumpy() for p in params.values()]


TRAINER_GRID = [
    dict(wd=0.01),
    dict(wd=0.01, clip_gradient=0.1, scheduled=True),
    dict(wd=0.02, weight_decay_mode="l2", eps_placement="outside", lr_decay=0.1),
    dict(wd=0.02, weight_decay_mode="decoupled", maximize=True, eps=0.0),
    dict(compat="pytorch", wd=0.01, scheduled=True),
]


@pytest.mark.parametrize("options", TRAINER_GRID, ids=str)
def test_trainer_fused_is_bit_identical_to_reference(options):
    for fused, reference in zip(_train("fused", options), _train("reference", options),
                                strict=True):
        assert_bits_equal(fused, reference)


@pytest.mark.parametrize("multi_precision", [False, True])
def test_trainer_float16_fused_is_bit_identical_to_reference(multi_precision):
    options = dict(wd=0.01, multi_precision=multi_precision, scheduled=True)
    for fused, reference in zip(_train("fused", options, "float16"),
                                _train("reference", options, "float16"), strict=True):
        assert_bits_equal(fused, reference)


def test_trainer_hands_the_fused_optimizer_lists(monkeypatch):
    opt = AdagradScratch(kernel="fused")
    assert opt.aggregate_num == kernels.AGGREGATE_NUM
    calls = []
    operator = kernels._library.ops["adagrad_gluon_multi_update"]

    def spy(*arrays, **attrs):
        calls.append((len(arrays), attrs["num_tensors"]))
        operator(*arrays, **attrs)

    params = _params(seed=1)
    trainer = gluon.Trainer(params, opt)
    with autograd.record():
        loss = _loss(params, [nd.ones(shape) for shape in SHAPES])
    loss.backward()
    monkeypatch.setitem(kernels._library.ops, "adagrad_gluon_multi_update", spy)
    trainer.step(4)
    assert calls == [(18, "6")]  # the six parameters in one call


def test_parameters_updated_unequally_often_get_their_own_scheduled_rate():
    """When some parameters have been updated more often than others, the scheduler's rate may
    change in the middle of a list; the fused path follows the one-at-a-time order."""
    results = []
    for kernel in ("fused", "reference"):
        opt = AdagradScratch(learning_rate=0.5, kernel=kernel,
                             lr_scheduler=mx.lr_scheduler.FactorScheduler(step=2, factor=0.5))
        ws = [nd.ones(4) for _ in range(3)]
        states = [opt.create_state(i, w) for i, w in enumerate(ws)]
        g = nd.array([0.5, -1.0, 2.0, 0.0])
        for _ in range(3):
            opt.update_multi_precision(0, ws[0], g, states[0])  # index 0 runs ahead
        for _ in range(2):
            opt.update_multi_precision([1, 0, 2], [ws[1], ws[0], ws[2]], [g, g, g],
                                       [states[1], states[0], states[2]])
        results.append([w.asnumpy() for w in ws])
    for fused, reference in zip(*results, strict=True):
        assert_bits_equal(fused, reference)


def test_trainer_row_sparse_embedding_fused_equals_reference():
    results = []
    for kernel in ("fused", "reference"):
        mx.random.seed(11)
        emb = gluon.nn.Embedding(20, 4, sparse_grad=True)
        emb.initialize(mx.init.Normal(1.0))
        dense = gluon.nn.Dense(2)
        dense.initialize(mx.init.Normal(1.0))
        params = emb.collect_params()
        params.update(dense.collect_params())
        trainer = gluon.Trainer(params, "adagrad_scratch",
                                {"learning_rate": 0.3, "kernel": kernel, "clip_gradient": 0.5})
        rng = np.random.default_rng(5)
        for _ in range(6):
            x = nd.array(rng.choice(10, size=6))
            with autograd.record():
                loss = (dense(emb(x)) ** 2).sum()
            loss.backward()
            trainer.step(6)
        results.append([p.data().asnumpy() for p in params.values()])
    for fused, reference in zip(*results, strict=True):
        assert_bits_equal(fused, reference)


# -- choosing the path ----------------------------------------------------------------------

def test_fused_is_the_default_when_it_builds(monkeypatch):
    monkeypatch.delenv(kernels.KERNEL_ENV, raising=False)
    opt = mx.optimizer.create("adagrad_scratch")
    assert opt.kernel == "fused"
    assert opt.aggregate_num == kernels.AGGREGATE_NUM


def test_environment_variable_forces_a_path_and_the_argument_wins(monkeypatch):
    monkeypatch.setenv(kernels.KERNEL_ENV, "reference")
    opt = AdagradScratch()
    assert (opt.kernel, opt.aggregate_num) == ("reference", 0)
    assert AdagradScratch(kernel="fused").kernel == "fused"
    monkeypatch.setenv(kernels.KERNEL_ENV, "fused")
    assert AdagradScratch().kernel == "fused"
    assert AdagradScratch(kernel="reference").kernel == "reference"


def test_bad_kernel_choices_raise_value_error_naming_them(monkeypatch):
    with pytest.raises(ValueError, match="kernel must be one of"):
        AdagradScratch(kernel="fast")
    monkeypatch.setenv(kernels.KERNEL_ENV, "fast")
    with pytest.raises(ValueError, match=kernels.KERNEL_ENV):
        AdagradScratch()


def test_reference_path_with_lists_equals_fused():
    ws = {k: [nd.array([1.0, 2.0]), nd.array([[3.0], [-4.0]])] for k in ("fused", "reference")}
    for kernel, weights in ws.items():
        opt = AdagradScratch(learning_rate=0.1, wd=0.01, kernel=kernel)
        states = [opt.create_state(i, w) for i, w in enumerate(weights)]
        grads = [nd.array([0.5, -0.5]), nd.array([[1.0], [0.0]])]
        opt.update_multi_precision([0, 1], weights, grads, states)
    for fused, reference in zip(ws["fused"], ws["reference"], strict=True):
        assert_bits_equal(fused.asnumpy(), reference.asnumpy())


def test_library_is_loaded_only_once(monkeypatch):
    path = kernels.load()

    def second_load(*args, **kwargs):
        raise AssertionError("mx.library.load called a second time")

    monkeypatch.setattr(mx.library, "load", second_load)
    assert kernels.load() == path
    assert AdagradScratch(kernel="fused").kernel == "fused"


def _python(script, env_updates, cwd):
    env = {k: v for k, v in os.environ.items() if k != kernels.KERNEL_ENV}
    env.update(env_updates)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


FALLBACK_SCRIPT = """
    import warnings
    import mxnet as mx
    import numpy as np
    from mxnet import autograd, gluon, nd
    from adagrad_gluon import kernels

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizers = [mx.optimizer.create("adagrad_scratch") for _ in range(3)]
        mx.random.seed(0)
        net = gluon.nn.Dense(1)
        net.initialize(mx.init.Normal(0.5))
        trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch",
                                {"learning_rate": 0.1, "wd": 0.01})
        X, y = nd.arange(12).reshape(4, 3) / 10, nd.array([1.0, -1.0, 0.5, 0.0])
        for _ in range(5):
            with autograd.record():
                loss = gluon.loss.L2Loss()(net(X), y)
            loss.backward()
            trainer.step(4)
    fallbacks = [w for w in caught if issubclass(w.category, kernels.KernelFallbackWarning)]
    assert len(fallbacks) == 1, [str(w.message) for w in caught]
    print("WARNING:", fallbacks[0].message)
    assert all(o.kernel == "reference" and o.aggregate_num == 0 for o in optimizers)
    assert trainer._optimizer.kernel == "reference"
    np.save("weights.npy", np.concatenate([p.data().asnumpy().ravel()
                                           for p in net.collect_params().values()]))
    try:
        mx.optimizer.create("adagrad_scratch", kernel="fused")
    except kernels.KernelUnavailableError as exc:
        print("FORCED:", exc)
"""


UNPICKLE_SCRIPT = """
    import pickle, sys, warnings
    import adagrad_gluon
    from adagrad_gluon import kernels

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = pickle.loads(open("auto.pkl", "rb").read())
    print("AUTO:", auto.kernel, auto.aggregate_num,
          sum(issubclass(w.category, kernels.KernelFallbackWarning) for w in caught))
    try:
        pickle.loads(open("fused.pkl", "rb").read())
    except kernels.KernelUnavailableError as exc:
        print("FUSED:", type(exc).__name__)
"""


def test_a_pickled_auto_optimizer_chooses_again_where_it_is_loaded(tmp_path):
    """An optimizer pickled where the kernels built (``Trainer.save_states``, or sent to a
    parameter server) falls back where there is no compiler, unless fused was demanded."""
    import pickle

    for choice in ("auto", "fused"):
        optimizer = mx.optimizer.create("adagrad_scratch", kernel=choice)
        assert optimizer.kernel == "fused" and optimizer.kernel_choice == choice
        (tmp_path / f"{choice}.pkl").write_bytes(pickle.dumps(optimizer))
    done = _python(UNPICKLE_SCRIPT, {kernels.CXX_ENV: str(tmp_path / "no-such-c++"),
                                     CACHE_DIR_ENV: str(tmp_path / "cache")}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "AUTO: reference 0 1" in done.stdout
    assert "FUSED: KernelUnavailableError" in done.stdout


def test_without_a_compiler_auto_falls_back_with_one_warning(tmp_path):
    done = _python(FALLBACK_SCRIPT, {kernels.CXX_ENV: str(tmp_path / "no-such-c++"),
                                     CACHE_DIR_ENV: str(tmp_path / "cache")}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "WARNING: adagrad_gluon: the fused Adagrad kernels are unavailable" in done.stdout
    assert "no-such-c++" in done.stdout and kernels.KERNEL_ENV in done.stdout
    assert "FORCED: No C++ compiler" in done.stdout
    # the reference path trained exactly as the kernels do
    mx.random.seed(0)
    net = gluon.nn.Dense(1)
    net.initialize(mx.init.Normal(0.5))
    trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch",
                            {"learning_rate": 0.1, "wd": 0.01, "kernel": "fused"})
    X, y = nd.arange(12).reshape(4, 3) / 10, nd.array([1.0, -1.0, 0.5, 0.0])
    for _ in range(5):
        with autograd.record():
            loss = gluon.loss.L2Loss()(net(X), y)
        loss.backward()
        trainer.step(4)
    fused = np.concatenate([p.data().asnumpy().ravel() for p in net.collect_params().values()])
    assert_bits_equal(np.load(tmp_path / "weights.npy"), fused)


def test_forcing_fused_without_a_compiler_raises(tmp_path):
    done = _python("""
        import pytest
        from adagrad_gluon import AdagradScratch, kernels
        with pytest.raises(kernels.KernelUnavailableError, match="No C[+][+] compiler"):
            AdagradScratch()
        print("raised")
    """, {kernels.KERNEL_ENV: "fused", kernels.CXX_ENV: str(tmp_path / "no-such-c++"),
          CACHE_DIR_ENV: str(tmp_path)}, tmp_path)
    assert done.returncode == 0 and "raised" in done.stdout, done.stderr


def test_a_failed_build_reports_the_compiler_output(tmp_path, monkeypatch):
    compiler = tmp_path / "broken-c++"
    compiler.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo broken 1.0; exit 0; }\n"
                        "echo 'broken-c++: error: cannot compile today' >&2; exit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    with pytest.raises(kernels.KernelUnavailableError, match="cannot compile today"):
        kernels.build(str(compiler))
    built = list((tmp_path / "cache").rglob("*.so"))
    assert built == []  # no half-written library left behind


def test_concurrent_first_uses_build_once(tmp_path):
    """Two processes asking for a library not built yet: one compiles, the other waits and
    then finds it; both get the same file. (The compiler is a stand-in that takes a second to
    write its output: this tests the locking, the module fixture the real build.)"""
    compiler = tmp_path / "slow-c++"
    compiler.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo slow 1.0; exit 0; }\n"
                        f"echo build >> {tmp_path / 'builds.log'}\n"
                        "for arg; do out=$arg; done\nsleep 1\necho library > \"$out\"\n")
    compiler.chmod(0o755)
    env = {kernels.CXX_ENV: str(compiler), CACHE_DIR_ENV: str(tmp_path / "cache")}
    script = "from adagrad_gluon import kernels; print(kernels.build())"
    env_all = {k: v for k, v in os.environ.items() if k != kernels.KERNEL_ENV} | env
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env_all, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    assert (tmp_path / "builds.log").read_text().count("build") == 1
    assert [str(p) for p in (tmp_path / "cache").rglob("*.so")] == list(paths)


def test_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    assert kernels.cache_dir() == tmp_path / "kernels"
    assert kernels.library_path().parent.parent == tmp_path / "kernels"


def test_no_warning_when_the_kernels_build():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AdagradScratch(kernel="auto")

"""state_bits=8: the 8-bit blockwise accumulator (adagrad_gluon/optim/quantized.py), its fused
operator, its state files, and the quality of training with it."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

import adagrad_gluon as ag
from adagrad_gluon.optim import quantized as q
from adagrad_gluon.optim.functional import Step
from adagrad_gluon.optim.optimizer import AdagradScratch
from adagrad_gluon.optim.options import AdagradOptions
from adagrad_gluon.optim.state import read_states_file

from .test_lazy_decay import _embedding_trainer, _train
from .trainers import dense_trainer


def _acc(shape, scale=3.0, power=4, seed=13):
    return (np.random.default_rng(seed).random(shape) ** power * scale).astype(np.float32)


# -- the map ---------------------------------------------------------------------------------

def test_layout_is_one_byte_per_element_plus_a_scale_per_block():
    for n in (1, 255, 256, 257, 10_000_000):
        assert q.accumulator_bytes(n) == n + 4 * -(-n // 256)
    for n in (256, 10_000_000, 10_000_001):  # whole blocks, or many of them
        assert q.accumulator_bytes(n) / n <= 1.02
    acc = q.QuantizedAcc.full((3, 300), 0.5, mx.cpu())
    assert acc.codes.dtype == np.uint8 and acc.codes.shape == (3, 300)
    assert acc.scales.dtype == np.float32 and acc.scales.shape == (4,)
    np.testing.assert_array_equal(acc.asnumpy(), np.full((3, 300), 0.5, np.float32))


def test_positive_values_never_quantize_to_zero_and_the_block_max_is_exact():
    acc = np.array([1e-30, 1e-12, 0.0, 1e-3, 7.0] + [0.0] * 300, np.float32)
    codes, scales = q.quantize(acc)
    back = q.dequantize(codes, scales)
    assert codes[0] > 0 and codes[1] > 0 and codes[3] > 0  # never the step's blow-up
    assert back[2] == 0 and back[4] == 7.0
    tiny = (acc > 0) & (acc < q.TABLE[1] * 7)  # round up to the smallest code, never to 0
    np.testing.assert_array_equal(back[tiny], q.TABLE[1] * np.float32(7))


def test_each_value_gets_a_nearest_code_within_its_regime_error_bound():
    assert q.TABLE[0] == 0 and q.TABLE[255] == 1 and (np.diff(q.TABLE) > 0).all()
    acc = np.geomspace(1e-6, 1.0, 64 * 256).astype(np.float32).reshape(64, 256)
    acc[:, -1] = 1.0  # every block's absmax is 1: the ratio is the value
    codes, _ = q.quantize(acc)
    ratio = acc.reshape(-1).astype(np.float64)
    distance = np.abs(ratio[:, None] - q.TABLE.astype(np.float64))
    chosen = np.take_along_axis(distance, codes.reshape(-1, 1).astype(np.int64), axis=1)[:, 0]
    above = ratio >= q.TABLE[1]
    np.testing.assert_array_equal(chosen[above], distance[above].min(axis=1))  # a nearest one
    assert (codes.reshape(-1)[~above] == 1).all()  # below the smallest code: never 0
    error = np.abs(q.dequantize(*q.quantize(acc)).reshape(-1) - ratio) / ratio
    # a regime of m mantissa bits stores a value with a relative error of at most 2**-(m + 1)
    for (bits, _), low, high in zip(q.REGIMES, (2.0 ** -2, 2.0 ** -6, q.TABLE[1]),
                                    (1.0, 2.0 ** -2, 2.0 ** -6), strict=True):
        inside = (ratio >= low) & (ratio <= high)
        assert inside.any() and error[inside].max() <= 2.0 ** -(bits + 1)


def test_nan_makes_its_block_nan_and_spares_the_others():
    acc = np.ones(512, np.float32)
    acc[3] = np.nan
    codes, scales = q.quantize(acc)
    back = q.dequantize(codes, scales)
    assert np.isnan(back[:256]).all() and (back[256:] == 1).all()


# -- reference and fused update --------------------------------------------------------------

def _run(fused, weight_dtype, master, options, shape=(5, 300), steps=4, wd=0.01):
    rng = np.random.default_rng(0)
    w = nd.array(rng.standard_normal(shape), dtype=weight_dtype)
    codes, scales = q.quantize(_acc(shape))
    acc = q.QuantizedAcc(nd.array(codes, dtype=np.uint8), nd.array(scales))
    m = w.astype(np.float32) if master else None
    for t in range(steps):
        g = nd.array(np.random.default_rng(t).standard_normal(shape) * 2, dtype=weight_dtype)
        run = q.fused_quantized_steps if fused else q.reference_quantized_steps
        run([Step(w, g, acc, m, 0.1, wd, False)], options)
    return [w.asnumpy(), acc.codes.asnumpy(), acc.scales.asnumpy()] + (
        [m.asnumpy()] if master else [])


@pytest.mark.parametrize("options", [
    AdagradOptions(),
    AdagradOptions(eps=0.0, eps_placement="outside", weight_decay_mode="l2",
                   clip_gradient=1.5, rescale_grad=0.5),
    AdagradOptions(eps=1e-10, weight_decay_mode="decoupled", maximize=True,
                   initial_accumulator_value=0.1),
])
@pytest.mark.parametrize("weight_dtype,master", [(np.float32, False), (np.float16, False),
                                                 (np.float16, True)])
def test_fused_8bit_update_is_bit_identical_to_the_reference(options, weight_dtype, master):
    reference = _run(False, weight_dtype, master, options)
    fused = _run(True, weight_dtype, master, options)
    for a, b in zip(reference, fused, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fused_8bit_multi_tensor_call_is_bit_identical_on_a_large_tensor():
    # large enough for several threads and pieces, and a partial last block
    options = AdagradOptions()
    for shape in ((1000, 333), (7,)):
        reference = _run(False, np.float32, False, options, shape=shape, steps=2, wd=0.0)
        fused = _run(True, np.float32, False, options, shape=shape, steps=2, wd=0.0)
        for a, b in zip(reference, fused, strict=True):
            np.testing.assert_array_equal(a, b)


def _edge_case_run(fused: bool) -> list[np.ndarray]:
    """Two fused or reference 8-bit steps on blocks at the map's edges: zeros, a scale below
    2**-64, subnormal values, NaN, infinity, huge values, every code, and a last block of 77
    elements (no multiple of the 16, 32 or 64 lanes of the vectorized loops)."""
    rng = np.random.default_rng(5)
    every_code = q.TABLE * np.float32(3.0)
    blocks = [np.zeros(256), rng.random(256) * 1e-25, rng.random(256) * 1e-41,
              rng.random(256) ** 8 * 1e30, np.r_[np.nan, rng.random(255)],
              np.r_[np.inf, rng.random(255)], rng.random(256) ** 12, every_code,
              rng.random(77)]
    acc = np.concatenate(blocks).astype(np.float32)
    grad = np.where(acc < 1e-20, 0, rng.standard_normal(acc.size) * 0.1).astype(np.float32)
    codes, scales = q.quantize(acc)
    state = q.QuantizedAcc(nd.array(codes, dtype=np.uint8), nd.array(scales))
    w = nd.array(rng.standard_normal(acc.size))
    run = q.fused_quantized_steps if fused else q.reference_quantized_steps
    for _ in range(2):
        run([Step(w, nd.array(grad), state, None, 0.1, 0.0, False)], AdagradOptions())
    return [w.asnumpy(), state.codes.asnumpy(), state.scales.asnumpy()]


def test_fused_8bit_update_is_bit_identical_at_the_maps_edges():
    for a, b in zip(_edge_case_run(False), _edge_case_run(True), strict=True):
        np.testing.assert_array_equal(a, b)


PORTABLE_SCRIPT = """
import numpy as np
from adagrad_gluon.optim import kernels
from tests.test_state8 import _edge_case_run, _run
from adagrad_gluon.optim.options import AdagradOptions
from adagrad_gluon.optim.state import read_states_file
print(kernels.load())
pairs = [(_edge_case_run(False), _edge_case_run(True))]
for dtype, master in ((np.float32, False), (np.float16, True)):
    pairs.append((_run(False, dtype, master, AdagradOptions(), shape=(3, 333)),
                  _run(True, dtype, master, AdagradOptions(), shape=(3, 333))))
for reference, fused in pairs:
    for a, b in zip(reference, fused, strict=True):
        np.testing.assert_array_equal(a, b)
print("bit-identical")
"""


def test_portable_build_of_the_8bit_kernel_is_bit_identical_too(tmp_path):
    # the default build runs the AVX-512 loops where the CPU has them; this one, in a cache of
    # its own, the portable loops every other CPU runs
    from adagrad_gluon.cache import CACHE_DIR_ENV
    from adagrad_gluon.optim import kernels

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in (kernels.KERNEL_ENV, kernels.CXX_ENV)}
    env |= {CACHE_DIR_ENV: str(tmp_path),
            kernels.CXX_ENV: f"{kernels.compiler()} -DADAGRAD_GLUON_Q8_PORTABLE"}
    done = subprocess.run([sys.executable, "-c", PORTABLE_SCRIPT], env=env, cwd=root,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    library, verdict = done.stdout.split()[-2:]
    assert Path(library).is_relative_to(tmp_path) and verdict == "bit-identical"


def test_the_8bit_update_dequantizes_runs_the_float32_step_and_requantizes():
    shape = (2, 300)
    codes, scales = q.quantize(_acc(shape))
    w0 = np.ones(shape, np.float32)
    g = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    acc = q.QuantizedAcc(nd.array(codes, dtype=np.uint8), nd.array(scales))
    w = nd.array(w0)
    q.fused_quantized_steps([Step(w, nd.array(g), acc, None, 0.1, 0.0, False)],
                            AdagradOptions())
    s = q.dequantize(codes, scales) + g * g
    np.testing.assert_allclose(w.asnumpy(), w0 - 0.1 * g / np.sqrt(s + 1e-6), rtol=1e-6)
    np.testing.assert_array_equal(acc.asnumpy(), q.dequantize(*q.quantize(s)))


def test_row_sparse_8bit_update_is_lazy_per_block():
    shape = (40, 16)  # 2.5 blocks of 256: rows 0-15, 16-31, 32-39
    opt = AdagradScratch(learning_rate=0.1, state_bits=8, kernel="reference")
    w = nd.array(np.random.default_rng(2).standard_normal(shape))
    state = opt.create_state(0, w)
    codes, scales = q.quantize(_acc(shape))
    state.codes[:] = codes
    state.scales[:] = scales
    grad = nd.sparse.row_sparse_array((np.ones((1, 16), np.float32), [20]), shape=shape)
    w_before = w.asnumpy()
    opt.update(0, w, grad, state)
    new_codes, new_scales = state.codes.asnumpy(), state.scales.asnumpy()
    np.testing.assert_array_equal(new_codes[:16], codes[:16])  # untouched blocks bit for bit
    np.testing.assert_array_equal(new_codes[32:], codes[32:])
    assert new_scales[0] == scales[0] and new_scales[2] == scales[2]
    assert not np.array_equal(new_codes[16:32], codes[16:32])
    changed = np.flatnonzero((w.asnumpy() != w_before).any(axis=1))
    np.testing.assert_array_equal(changed, [20])


def test_optimizer_fused_and_reference_agree_under_a_trainer():
    results = []
    for kernel in ("reference", "fused"):
        mx.random.seed(0)
        net = gluon.nn.Dense(300, in_units=20)
        net.initialize(mx.init.Xavier())
        trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch",
                                {"learning_rate": 0.1, "state_bits": 8, "kernel": kernel,
                                 "wd": 1e-3})
        x = nd.array(np.random.default_rng(3).standard_normal((8, 20)))
        for _ in range(3):
            with autograd.record():
                loss = (net(x) ** 2).mean()
            loss.backward()
            trainer.step(8)
        results.append([p.data().asnumpy() for p in net.collect_params().values()])
        state = trainer._updaters[0].states[0]
        assert isinstance(state, q.QuantizedAcc)
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


# -- options and bad input -------------------------------------------------------------------

@pytest.mark.parametrize("bits", [16, 4, 0, "8", 8.0, True, None])
def test_state_bits_other_than_8_or_32_is_refused(bits):
    with pytest.raises(ValueError, match="state_bits"):
        AdagradScratch(state_bits=bits)


def test_float64_weights_keep_a_float64_accumulator():
    opt = AdagradScratch(state_bits=8)
    state = opt.create_state(0, nd.zeros((3,), dtype=np.float64))
    assert isinstance(state, nd.NDArray) and state.dtype == np.float64


def test_float16_multi_precision_state_is_master_and_8bit_acc():
    opt = AdagradScratch(state_bits=8, multi_precision=True)
    master, acc = opt.create_state_multi_precision(0, nd.zeros((3,), dtype=np.float16))
    assert master.dtype == np.float32 and isinstance(acc, q.QuantizedAcc)


def test_a_mismatched_8bit_state_is_refused_naming_the_parameter():
    opt = AdagradScratch(state_bits=8, kernel="reference")
    w = nd.zeros((300,))
    bad = q.QuantizedAcc(nd.zeros((300,), dtype=np.uint8), nd.zeros((1,)))
    with pytest.raises(ValueError, match="scales"):
        opt.update(0, w, nd.ones((300,)), bad)


def test_nonfinite_skip_works_with_8bit_state():
    opt = AdagradScratch(state_bits=8, nonfinite="skip", kernel="reference")
    w = nd.ones((300,))
    state = opt.create_state(0, w)
    grad = nd.ones((300,))
    grad[5] = np.nan
    opt.update(0, w, grad, state)
    assert opt.nonfinite_skipped == {0: 1} and (w.asnumpy() == 1).all()
    assert (state.asnumpy() == 0).all()


def test_effective_lr_reads_the_8bit_accumulator():
    opt = AdagradScratch(learning_rate=0.5, state_bits=8, eps=0.0)
    state = q.QuantizedAcc.full((4,), 4.0, mx.cpu())
    np.testing.assert_allclose(opt.effective_lr(0, state).asnumpy(), 0.25)


# -- state files -----------------------------------------------------------------------------

def _eight_bit_trainer(prefix, step=True, bits=8):
    trainer = dense_trainer(prefix, step=False)
    trainer._optimizer.state_bits = bits
    if step:
        params = list(trainer._params)
        with autograd.record():
            loss = sum(p.data().sum() ** 2 for p in params)
        loss.backward()
        trainer.step(1)
        kinds = {type(state) for state in trainer._updaters[0].states.values()}
        assert kinds == ({q.QuantizedAcc} if bits == 8 else {nd.NDArray})
    return trainer


def _states(trainer):
    return {i: (s.codes.asnumpy(), s.scales.asnumpy()) if isinstance(s, q.QuantizedAcc)
            else s.asnumpy() for i, s in trainer._updaters[0].states.items()}


def test_8bit_states_round_trip_through_the_safe_state_file(tmp_path):
    trainer = _eight_bit_trainer("a_")
    path = tmp_path / "s.npz"
    ag.save_states(trainer, path)
    names = set(np.load(path).files)
    assert {"codes/0", "scales/0", "codes/1", "scales/1"} <= names and "acc/0" not in names
    fresh = _eight_bit_trainer("a_", step=False)
    ag.load_states(fresh, path)
    saved, loaded = _states(trainer), _states(fresh)
    for index in saved:
        for a, b in zip(saved[index], loaded[index], strict=True):
            np.testing.assert_array_equal(a, b)


def test_resuming_under_other_state_bits_is_refused(tmp_path):
    path = tmp_path / "s.npz"
    ag.save_states(_eight_bit_trainer("b_"), path)
    with pytest.raises(ValueError, match="state_bits"):
        ag.load_states(_eight_bit_trainer("b_", step=False, bits=32), path)
    path32 = tmp_path / "s32.npz"
    ag.save_states(_eight_bit_trainer("b_", bits=32), path32)
    with pytest.raises(ValueError, match="state_bits"):
        ag.load_states(_eight_bit_trainer("b_", step=False), path32)


def test_8bit_states_round_trip_through_trainer_save_states(tmp_path):
    trainer = _eight_bit_trainer("c_")
    path = str(tmp_path / "t.states")
    trainer.save_states(path)
    fresh = _eight_bit_trainer("c_", step=False)
    fresh.load_states(path)
    saved, loaded = _states(trainer), _states(fresh)
    for index in saved:
        for a, b in zip(saved[index], loaded[index], strict=True):
            np.testing.assert_array_equal(a, b)
    assert pickle.loads(pickle.dumps(fresh._optimizer)).state_bits == 8


# -- quality ---------------------------------------------------------------------------------

def test_8bit_final_loss_is_within_1_percent_of_float32_over_5_seeds():
    """benchmarks/quality_state8.py, cheaper: 1 epoch of the chapter's airfoil run and 150
    steps of the sparse embedding task, seeds 0-4."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import quality_state8

    rows = quality_state8.compare(quality_state8.airfoil_loss, range(5), epochs=1)
    rows += quality_state8.compare(quality_state8.sparse_loss, range(5), steps=150)
    for seed, full, eight, diff in rows:
        assert np.isfinite(eight) and diff <= 0.01, (seed, full, eight)


def test_a_torch_state_dict_loads_into_an_8bit_trainer_quantized():
    pytest.importorskip("torch")
    source = _eight_bit_trainer("d_", bits=32)
    exported = ag.to_torch_state_dict(source)
    fresh = _eight_bit_trainer("d_", step=False)
    ag.load_torch_state_dict(fresh, exported)
    for index, state in fresh._updaters[0].states.items():
        assert isinstance(state, q.QuantizedAcc)
        expected = source._updaters[0].states[index].asnumpy()
        np.testing.assert_array_equal(state.asnumpy(), q.dequantize(*q.quantize(expected)))


# -- with rowwise, lazy weight decay and the row_sparse weights a kvstore keeps ---------------

ROWWISE = "rowwise=True keeps one float32 accumulator per row.*use state_bits=32"


def test_state_bits_8_with_rowwise_is_refused_clearly():
    for options in ({"rowwise": True}, {"compat": "groupadagrad"}, {"compat": "fbgemm"}):
        with pytest.raises(ValueError, match=ROWWISE):
            AdagradScratch(state_bits=8, **options)
    opt = AdagradScratch(state_bits=8, kernel="reference")
    w = nd.ones((4, 300))
    state = opt.create_state(0, w)
    opt.rowwise = True  # set after the 8-bit states exist
    with pytest.raises(ValueError, match=ROWWISE):
        opt.update(0, w, nd.ones((4, 300)), state)
    with pytest.raises(ValueError, match=ROWWISE):
        opt.create_state(1, w)


def test_a_state_file_of_8bit_accumulators_under_rowwise_is_refused(tmp_path):
    path = tmp_path / "s.npz"
    ag.save_states(_eight_bit_trainer("e_"), path)
    with np.load(path) as saved:
        arrays = dict(saved)
    meta = json.loads(str(arrays["meta"]))
    meta["options"]["rowwise"] = True
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="8-bit accumulators in a file of rowwise=True"):
        read_states_file(path, what="states file")


def test_the_row_sparse_weight_a_kvstore_keeps_keeps_a_float32_accumulator(tmp_path):
    # the kvstore's lazy update gathers the accumulator's rows; its errors are only printed,
    # so instead of refusing, state_bits=8 leaves such a weight's accumulator float32
    weight = nd.sparse.row_sparse_array((np.ones((3, 4), np.float32), [0, 1, 2]), shape=(3, 4))
    state = AdagradScratch(state_bits=8).create_state(0, weight)
    assert isinstance(state, nd.NDArray) and state.dtype == np.float32
    results = []
    for bits in (32, 8):
        mx.random.seed(3)
        emb = gluon.contrib.nn.SparseEmbedding(10, 4)
        emb.initialize()
        trainer = gluon.Trainer(emb.collect_params(), "adagrad_scratch",
                                {"state_bits": bits, "learning_rate": 0.5})
        ag.save_states(trainer, tmp_path / f"fresh{bits}.npz")  # before the first step
        initial = emb.weight.row_sparse_data(nd.arange(10)).asnumpy()
        for step in range(3):
            with autograd.record():
                loss = (emb(nd.array([step, 7])) ** 2).sum()
            loss.backward()
            trainer.step(1)
        ag.save_states(trainer, tmp_path / f"s{bits}.npz")
        ag.load_states(trainer, tmp_path / f"s{bits}.npz")
        ag.load_states(trainer, tmp_path / f"fresh{bits}.npz")
        results.append(emb.weight.row_sparse_data(nd.arange(10)).asnumpy())
        # the touched rows moved (a refusal inside the kvstore would leave them as they were)
        assert (results[-1][[0, 1, 2, 7]] != initial[[0, 1, 2, 7]]).all(axis=1).all()
        np.testing.assert_array_equal(np.delete(results[-1], [0, 1, 2, 7], axis=0),
                                      np.delete(initial, [0, 1, 2, 7], axis=0))
    np.testing.assert_array_equal(results[0], results[1])


def _lazy_decay_run(kernel, steps, save=None, load=None):
    """An embedding with row_sparse gradients and lazy decoupled weight decay, 8-bit states:
    the weights after ``steps`` steps (saved after them with ``save``, or loaded before them
    with ``load``)."""
    emb, trainer = _embedding_trainer([mx.cpu(0)], kernel=kernel, state_bits=8)
    if load is not None:
        weights, path = load
        emb.weight.set_data(nd.array(weights))
        ag.load_states(trainer, path, check_names=False)
    _train(emb, trainer, [mx.cpu(0)], steps, seed=0 if load is None else 1)
    if save is not None:
        ag.save_states(trainer, save)
    states = trainer._updaters[0].states[0]
    assert isinstance(states, q.QuantizedAcc) and trainer._optimizer.lazy_decay_marks()
    return emb.weight.data().asnumpy(), states.codes.asnumpy(), states.scales.asnumpy()


def test_8bit_lazy_weight_decay_is_bit_identical_fused_and_resumed(tmp_path):
    reference = _lazy_decay_run("reference", 12)
    fused = _lazy_decay_run("fused", 12)
    for a, b in zip(reference, fused, strict=True):
        np.testing.assert_array_equal(a, b)
    # 12 steps, saved (codes, scales and decay marks), loaded, 8 more == 20 steps in one go
    path = tmp_path / "s.npz"
    first = _lazy_decay_run("fused", 12, save=path)
    resumed = _lazy_decay_run("fused", 8, load=(first[0], path))
    emb, trainer = _embedding_trainer([mx.cpu(0)], state_bits=8)
    _train(emb, trainer, [mx.cpu(0)], 12, seed=0)
    _train(emb, trainer, [mx.cpu(0)], 8, seed=1)
    np.testing.assert_array_equal(resumed[0], emb.weight.data().asnumpy())
    np.testing.assert_array_equal(resumed[1], trainer._updaters[0].states[0].codes.asnumpy())


def test_per_key_calls_of_an_8bit_state_are_bit_identical_to_the_reference():
    """A parameter server's per-key calls (no lists) of an 8-bit state, repeated with the same
    arrays: the fused path equals the reference (the per-key reuse once took the 8-bit
    accumulator for an NDArray)."""
    results = []
    for kernel in ("fused", "reference"):
        opt = mx.optimizer.create("adagrad_scratch", learning_rate=0.1, kernel=kernel,
                                  state_bits=8)
        rng = np.random.default_rng(0)
        weight = nd.array(rng.standard_normal(1000).astype(np.float32))
        grad = nd.array(rng.standard_normal(1000).astype(np.float32))
        state = opt.create_state_multi_precision(0, weight)
        for _ in range(4):
            opt.update_multi_precision(0, weight, grad, state)
        results.append((weight.asnumpy(), state.codes.asnumpy(), state.scales.asnumpy()))
    for fused, reference in zip(*results, strict=True):
        np.testing.assert_array_equal(fused, reference)


@pytest.mark.parametrize("shape", [(0,), (0, 5), (1,), (10,), (256,), (257,), (3, 300)])
def test_dense_dequantizes_on_the_device_as_the_reference_does(monkeypatch, shape):
    """The nonfinite probe's view of an 8-bit accumulator: the values ``dequantize`` gives
    (a block with an infinite scale is NaN), computed without a copy to the host."""
    rng = np.random.default_rng(0)
    values = (rng.random(shape).astype(np.float32) * 10) ** 3
    if values.size > 3:
        values.reshape(-1)[2] = np.inf
    codes, scales = q.quantize(values)
    acc = q.QuantizedAcc(nd.array(codes, dtype=np.uint8), nd.array(scales))
    if values.size:
        monkeypatch.setattr(q.QuantizedAcc, "asnumpy", lambda self: pytest.fail("host copy"))
    got = q.dense(acc)
    assert got.shape == shape and got.dtype == np.float32
    np.testing.assert_array_equal(got.asnumpy().view(np.uint32),
                                  q.dequantize(codes, scales).view(np.uint32))

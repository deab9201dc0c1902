"""Exact lazy weight decay for row_sparse gradients (adagrad_gluon/optim/lazy_decay.py): a lazy
run, brought up to date with apply_pending_decay, matches the dense run whose gradients are 0
on the rows the sparse ones skip; the per-row marks survive every way of saving states."""

from __future__ import annotations

import json
import pickle

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

import adagrad_gluon
from adagrad_gluon import AdagradScratch, load_states, save_states
from adagrad_gluon.distributed import checkpoint

KERNELS = ["reference", "fused"]
ROWS, COLS = 1000, 4
TOUCHED = 10  # 1% of the rows per step


def _schedules():
    """Rate settings: constant, a FactorScheduler, lr_decay (each call: fresh schedulers)."""
    return {
        "constant": {"learning_rate": 0.1},
        "factor_scheduler": {"lr_scheduler": mx.lr_scheduler.FactorScheduler(
            step=100, factor=0.7, base_lr=0.2)},
        "lr_decay": {"learning_rate": 0.2, "lr_decay": 0.002},
    }


def _sparse_grads(steps, seed, dtype, rows=ROWS, cols=COLS, touched=TOUCHED):
    """``steps`` row_sparse gradients of ``touched`` distinct sorted rows each."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        ids = np.sort(rng.choice(rows, touched, replace=False))
        yield nd.sparse.row_sparse_array(
            (rng.normal(size=(touched, cols)).astype(dtype), ids), shape=(rows, cols),
            dtype=dtype)


def _run(kernel, settings, *, steps, dense, dtype=np.float64, seed=0, mode="decoupled",
         multi_precision=False, wd=0.01):
    """One parameter through ``steps`` updates; returns ``(optimizer, weight, state)``."""
    opt = AdagradScratch(kernel=kernel, wd=wd, weight_decay_mode=mode,
                         multi_precision=multi_precision, **settings)
    weight = nd.array(np.random.default_rng(99).normal(size=(ROWS, COLS)), dtype=dtype)
    state = opt.create_state_multi_precision(0, weight)
    for grad in _sparse_grads(steps, seed, dtype):
        opt.update_multi_precision(0, weight, grad.tostype("default") if dense else grad, state)
    return opt, weight, state


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("schedule", ["constant", "factor_scheduler", "lr_decay"])
@pytest.mark.parametrize("mode", ["decoupled", "step"])
def test_lazy_run_matches_the_dense_reference_after_1000_steps(kernel, schedule, mode):
    _, dense_w, dense_s = _run("reference", _schedules()[schedule], steps=1000, dense=True,
                               mode=mode)
    opt, lazy_w, lazy_s = _run(kernel, _schedules()[schedule], steps=1000, dense=False,
                               mode=mode)
    expected = dense_w.asnumpy()
    # before the catch-up, rows skipped lately lag behind (they have not decayed yet)
    assert np.abs(lazy_w.asnumpy() - expected).max() > 1e-3 * np.abs(expected).max()
    opt.apply_pending_decay(0, lazy_w, lazy_s)
    np.testing.assert_allclose(lazy_w.asnumpy(), expected, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(lazy_s.asnumpy(), dense_s.asnumpy())  # no decay in there
    # the decay is real: the rows no gradient touched shrank by prod(1 - lr_k * wd)
    assert np.abs(expected).sum() < 0.9 * np.abs(
        np.random.default_rng(99).normal(size=(ROWS, COLS))).sum()
    # and a second catch-up changes nothing
    before = lazy_w.asnumpy()
    opt.apply_pending_decay(0, lazy_w, lazy_s)
    np.testing.assert_array_equal(lazy_w.asnumpy(), before)


@pytest.mark.parametrize("kernel", KERNELS)
def test_float32_lazy_run_is_as_close_to_float64_as_the_dense_float32_run(kernel):
    settings = _schedules()["factor_scheduler"]
    _, exact, _ = _run("reference", _schedules()["factor_scheduler"], steps=1000, dense=True)
    _, dense32, _ = _run("reference", _schedules()["factor_scheduler"], steps=1000, dense=True,
                         dtype=np.float32)
    opt, lazy32, state = _run(kernel, settings, steps=1000, dense=False, dtype=np.float32)
    opt.apply_pending_decay(0, lazy32, state)
    lazy_error = np.abs(lazy32.asnumpy() - exact.asnumpy()).max()
    dense_error = np.abs(dense32.asnumpy() - exact.asnumpy()).max()
    # the lazy run rounds a skipped row once, the dense one at each of its 1,000 steps
    assert lazy_error <= dense_error
    np.testing.assert_allclose(lazy32.asnumpy(), exact.asnumpy(), rtol=1e-5, atol=1e-6)


# float64 with the scheduler's rates (0.14, ...): the dense float64 step itself differs by an
# ulp between the paths, with or without lazy decay (a separate issue), so it runs at lr 0.1
@pytest.mark.parametrize("dtype,multi_precision,schedule", [
    (np.float32, False, "factor_scheduler"), (np.float16, True, "factor_scheduler"),
    (np.float16, False, "factor_scheduler"), (np.float64, False, "constant")])
def test_fused_and_reference_paths_are_bit_identical(dtype, multi_precision, schedule):
    results = []
    for kernel in KERNELS:
        opt, w, state = _run(kernel, _schedules()[schedule], steps=150, dense=False,
                             dtype=dtype, multi_precision=multi_precision)
        lagging = w.asnumpy()
        opt.apply_pending_decay(0, w, state)
        arrays = [lagging, w.asnumpy()] + [s.asnumpy() for s in
                                           (state if isinstance(state, tuple) else (state,))]
        results.append((arrays, opt.lazy_decay_marks()))
    (ref_arrays, ref_marks), (fused_arrays, fused_marks) = results
    for ref, fused in zip(ref_arrays, fused_arrays, strict=True):
        np.testing.assert_array_equal(fused, ref)
    assert ref_marks[0][0] == fused_marks[0][0] < 0
    np.testing.assert_array_equal(fused_marks[0][1], ref_marks[0][1])


@pytest.mark.parametrize("kernel", KERNELS)
def test_float16_master_weight_decays_and_rounds_back_as_the_reference(kernel):
    _, dense_w, (dense_master, _) = _run("reference", {"learning_rate": 0.1}, steps=300,
                                         dense=True, dtype=np.float16, multi_precision=True)
    opt, lazy_w, state = _run(kernel, {"learning_rate": 0.1}, steps=300, dense=False,
                              dtype=np.float16, multi_precision=True)
    opt.apply_pending_decay(0, lazy_w, state)
    master = state[0].asnumpy()
    np.testing.assert_array_equal(lazy_w.asnumpy(), master.astype(np.float16))
    # both masters are float32: the dense one rounds at each of its 300 decays
    np.testing.assert_allclose(master, dense_master.asnumpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lazy_w.asnumpy(), dense_w.asnumpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("kernel", KERNELS)
def test_dense_and_sparse_gradients_mixed_on_one_parameter(kernel):
    opt = AdagradScratch(kernel=kernel, learning_rate=0.1, wd=0.02, weight_decay_mode="decoupled")
    ref = AdagradScratch(kernel="reference", learning_rate=0.1, wd=0.02,
                         weight_decay_mode="decoupled")
    w0 = np.random.default_rng(1).normal(size=(ROWS, COLS))
    w, w_ref = nd.array(w0, dtype=np.float64), nd.array(w0, dtype=np.float64)
    s, s_ref = opt.create_state(0, w), ref.create_state(0, w_ref)
    for t, grad in enumerate(_sparse_grads(60, 3, np.float64)):
        dense = grad.tostype("default")
        opt.update(0, w, dense if t % 7 == 6 else grad, s)  # a dense step catches every row up
        ref.update(0, w_ref, dense, s_ref)
        if t % 7 == 6:
            np.testing.assert_allclose(w.asnumpy(), w_ref.asnumpy(), rtol=1e-12)
    opt.apply_pending_decay(0, w, s)
    np.testing.assert_allclose(w.asnumpy(), w_ref.asnumpy(), rtol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
def test_without_weight_decay_nothing_is_kept(kernel):
    opt, w, state = _run(kernel, {"learning_rate": 0.1}, steps=20, dense=False, wd=0.0)
    assert opt.lazy_decay_marks() == {} and opt._row_decay == {}
    before = w.asnumpy()
    opt.apply_pending_decay(0, w, state)  # nothing pending: a no-op
    np.testing.assert_array_equal(w.asnumpy(), before)


def test_a_rate_that_reaches_lr_wd_1_midway_is_refused_without_counting():
    opt = AdagradScratch(learning_rate=0.5, wd=1.0, weight_decay_mode="decoupled")
    w = nd.ones((ROWS, COLS))
    state = opt.create_state(0, w)
    grads = _sparse_grads(2, 0, np.float32)
    opt.update(0, w, next(grads), state)
    opt.set_learning_rate(1.0)
    before = w.asnumpy()
    with pytest.raises(ValueError, match=r"lr \* wd = 1.0 must be below 1"):
        opt.update(0, w, next(grads), state)
    assert opt._index_update_count[0] == 1 and opt.num_update == 1
    np.testing.assert_array_equal(w.asnumpy(), before)


# -- gluon.Trainer ---------------------------------------------------------------------------

def _embedding_trainer(contexts, *, sparse_grad=True, kernel="fused", **options):
    mx.random.seed(4)
    emb = gluon.nn.Embedding(200, 3, sparse_grad=sparse_grad)
    emb.initialize(mx.init.Normal(1.0), ctx=contexts)
    trainer = gluon.Trainer(emb.collect_params(), "adagrad_scratch",
                            {"learning_rate": 0.2, "wd": 0.05, "kernel": kernel,
                             "weight_decay_mode": "decoupled", **options})
    return emb, trainer


def _train(emb, trainer, contexts, steps, seed=6, lazy=True):
    """``steps`` steps; each context gets its own 2 tokens (rows 100.. are never used); a
    ``lazy`` run brings their rows up to date before the forward pass reads them."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        tokens = [rng.choice(100, size=2, replace=False) for _ in contexts]
        if lazy:
            adagrad_gluon.apply_pending_decay(trainer, rows={emb.weight: np.concatenate(tokens)})
        with autograd.record():
            losses = [((emb(nd.array(tok, ctx=ctx)) - 1) ** 2).sum()
                      for tok, ctx in zip(tokens, contexts, strict=True)]
        for loss in losses:
            loss.backward()
        trainer.step(1)


@pytest.mark.parametrize("contexts", [[mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]], ids=["1", "2"])
def test_trainer_run_matches_the_dense_one_and_contexts_catch_up_their_own_copy(contexts):
    # two contexts share one optimizer: each updater's copy has its own marks
    emb, trainer = _embedding_trainer(contexts)
    ref, ref_trainer = _embedding_trainer(contexts, sparse_grad=False, kernel="reference")
    _train(emb, trainer, contexts, 40)
    _train(ref, ref_trainer, contexts, 40, lazy=False)
    adagrad_gluon.apply_pending_decay(trainer)
    copies = [d.asnumpy() for d in emb.weight.list_data()]
    np.testing.assert_array_equal(copies[0], copies[-1])
    for expected in (d.asnumpy() for d in ref.weight.list_data()):
        np.testing.assert_allclose(copies[0], expected, rtol=1e-5, atol=1e-7)
    # rows 100.. never had a gradient: only decay, prod(1 - 0.2 * 0.05) over 40 steps
    start = _embedding_trainer([mx.cpu(0)])[0].weight.data().asnumpy()
    np.testing.assert_allclose(copies[0][100:], start[100:] * 0.99 ** 40, rtol=1e-6)


@pytest.mark.parametrize(("rows", "error", "message"), [
    ([3, 200], ValueError, r"row ids must be in \[0, 200\)"),
    ([-1], ValueError, r"row ids must be in \[0, 200\)"),
    ([0.5], TypeError, "row ids must be integers"),
    (["a"], TypeError, "row ids must be integers"),
], ids=["too large", "negative", "fraction", "str"])
def test_bad_row_ids_are_refused_naming_the_parameter(rows, error, message):
    emb, trainer = _embedding_trainer([mx.cpu(0)])
    _train(emb, trainer, [mx.cpu(0)], 2)
    with pytest.raises(error, match=message):
        adagrad_gluon.apply_pending_decay(trainer, rows={emb.weight: rows})
    with pytest.raises(ValueError, match="keys are the trainer's parameters"):
        adagrad_gluon.apply_pending_decay(trainer, rows={gluon.Parameter("other"): [0]})


def test_catching_up_a_batch_twice_or_with_repeats_changes_nothing_more():
    emb, trainer = _embedding_trainer([mx.cpu(0)])
    _train(emb, trainer, [mx.cpu(0)], 5, lazy=False)
    adagrad_gluon.apply_pending_decay(trainer, rows={emb.weight: nd.array([7, 3, 7, 150])})
    once = emb.weight.data().asnumpy()
    adagrad_gluon.apply_pending_decay(trainer, rows={emb.weight: [150, 3]})
    np.testing.assert_array_equal(emb.weight.data().asnumpy(), once)
    np.testing.assert_allclose(once[150], _embedding_trainer([mx.cpu(0)])[0].weight.data()
                               .asnumpy()[150] * 0.99 ** 5, rtol=1e-6)


def test_apply_pending_decay_refuses_weights_held_by_the_kvstore():
    contexts = [mx.cpu(0), mx.cpu(1)]
    emb, _ = _embedding_trainer(contexts)
    trainer = gluon.Trainer(emb.collect_params(), "adagrad_scratch",
                            {"learning_rate": 0.2, "wd": 0.05}, update_on_kvstore=True)
    with pytest.raises(ValueError, match="update_on_kvstore=False"):
        adagrad_gluon.apply_pending_decay(trainer)
    with pytest.raises(TypeError, match="not adagrad_scratch"):
        adagrad_gluon.apply_pending_decay(gluon.Trainer(emb.collect_params(), "sgd"))


def _resumed(save, load, contexts):
    """``(weights, trainer)`` after 15 steps, a save, a load into a new trainer, 15 more."""
    emb, trainer = _embedding_trainer(contexts)
    _train(emb, trainer, contexts, 15)
    weights = emb.weight.data().asnumpy()
    saved = save(trainer)
    emb, trainer = _embedding_trainer(contexts)
    emb.weight.set_data(nd.array(weights))
    load(trainer, saved)
    _train(emb, trainer, contexts, 15, seed=7)
    return [d.asnumpy() for d in emb.weight.list_data()], trainer


def _save_npz(tmp_path):
    def save(trainer):
        save_states(trainer, tmp_path / "states.npz")
        return tmp_path / "states.npz"
    return save, lambda trainer, path: load_states(trainer, path, check_names=False)


def _save_pickle(tmp_path):
    def save(trainer):
        trainer.save_states(str(tmp_path / "states.pkl"))
        return str(tmp_path / "states.pkl")
    return save, gluon.Trainer.load_states


@pytest.mark.parametrize("how", [_save_npz, _save_pickle], ids=["save_states", "pickle"])
@pytest.mark.parametrize("contexts", [[mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]], ids=["1", "2"])
def test_resumed_run_equals_the_uninterrupted_one(tmp_path, how, contexts):
    save, load = how(tmp_path)
    emb, trainer = _embedding_trainer(contexts)
    _train(emb, trainer, contexts, 15)
    _train(emb, trainer, contexts, 15, seed=7)
    straight = [d.asnumpy() for d in emb.weight.list_data()]
    resumed, resumed_trainer = _resumed(save, load, contexts)
    for ours, theirs in zip(resumed, straight, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    for t in (trainer, resumed_trainer):
        adagrad_gluon.apply_pending_decay(t)
    for ours, theirs in zip(resumed_trainer._params[0].list_data(), emb.weight.list_data(),
                            strict=True):
        np.testing.assert_array_equal(ours.asnumpy(), theirs.asnumpy())
        assert not np.array_equal(ours.asnumpy(), straight[0])  # there was decay pending


def test_state_file_holds_the_marks_and_a_file_without_them_clears_pending_decay(tmp_path):
    emb, trainer = _embedding_trainer([mx.cpu(0)])
    _train(emb, trainer, [mx.cpu(0)], 10)
    optimizer = trainer._optimizer
    log_sum, marks = optimizer.lazy_decay_marks()[0]
    save_states(trainer, tmp_path / "lazy.npz")
    with np.load(tmp_path / "lazy.npz") as f:
        np.testing.assert_array_equal(f["decay/0"], marks)
    assert log_sum == pytest.approx(10 * np.log1p(-0.2 * 0.05), rel=1e-12)
    assert (marks[100:] == 0).all() and (marks[:100] <= 0).all()

    plain, plain_trainer = _embedding_trainer([mx.cpu(0)], wd=0.0)
    _train(plain, plain_trainer, [mx.cpu(0)], 1)
    save_states(plain_trainer, tmp_path / "plain.npz")
    with np.load(tmp_path / "plain.npz") as f:
        assert sorted(f.files) == ["acc/0", "meta"]  # as before lazy decay: version 2 as is
    trainer._optimizer.wd = 0.0
    load_states(trainer, tmp_path / "plain.npz", check_names=False)
    assert optimizer.lazy_decay_marks() == {}


@pytest.mark.parametrize(("change", "message"), [
    (lambda meta, marks: meta["params"][0].update(decay=0.5), "'decay' of parameter #0"),
    (lambda meta, marks: meta["params"][0].update(decay="x"), "'decay' of parameter #0"),
    (lambda meta, marks: marks.__setitem__(slice(None), 1.0), r"decay/0 holds marks outside"),
    (lambda meta, marks: marks.__setitem__(0, -1e9), r"decay/0 holds marks outside"),
], ids=["positive", "not a number", "mark above 0", "mark below the sum"])
def test_a_state_file_with_bad_marks_is_refused(tmp_path, change, message):
    emb, trainer = _embedding_trainer([mx.cpu(0)])
    _train(emb, trainer, [mx.cpu(0)], 5)
    save_states(trainer, tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as f:
        arrays = {k: f[k] for k in f.files}
    meta, marks = json.loads(str(arrays["meta"])), arrays["decay/0"].copy()
    change(meta, marks)
    np.savez(tmp_path / "bad.npz", **{**arrays, "meta": np.array(json.dumps(meta)),
                                      "decay/0": marks})
    with pytest.raises(ValueError, match=message):
        load_states(trainer, tmp_path / "bad.npz", check_names=False)


@pytest.mark.parametrize("kernel", KERNELS)
def test_server_checkpoint_restores_the_marks(tmp_path, kernel):
    """A server's updater (as distributed/server.py keeps it) writes its marks and a fresh
    one (a restarted server, the optimizer unpickled from the workers) continues exactly."""
    def updater():
        opt = AdagradScratch(kernel=kernel, learning_rate=0.1, wd=0.01,
                             weight_decay_mode="decoupled")
        return mx.optimizer.get_updater(pickle.loads(pickle.dumps(opt)))

    w0 = np.random.default_rng(2).normal(size=(ROWS, COLS)).astype(np.float32)
    grads = list(_sparse_grads(40, 8, np.float32))
    straight, w = updater(), nd.array(w0)
    for grad in grads:
        straight(3, grad, w)
    first, w_resumed = updater(), nd.array(w0)
    for grad in grads[:20]:
        first(3, grad, w_resumed)
    path = tmp_path / "server-0-of-1.npz"
    checkpoint.write_states(path, first)
    assert checkpoint.read_states(path).params[3].decay < 0
    second = updater()
    checkpoint.restore_states(second, checkpoint.read_states(path))
    for grad in grads[20:]:
        second(3, grad, w_resumed)
    np.testing.assert_array_equal(w_resumed.asnumpy(), w.asnumpy())
    for upd, weight in ((straight, w), (second, w_resumed)):
        upd.optimizer.apply_pending_decay(3, weight, upd.states[3])
    np.testing.assert_array_equal(w_resumed.asnumpy(), w.asnumpy())

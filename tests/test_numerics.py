"""compat= presets against each framework's formula (and real PyTorch), state that survives,
float16 by default, lazy sparse rows for every option, several contexts."""

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from adagrad_gluon import AdagradScratch
from adagrad_gluon.compat import PRESETS
from adagrad_gluon.state import (
    load_states,
    load_torch_state_dict,
    save_states,
    to_torch_state_dict,
)

from . import frameworks
from .reference import relative_error

STEPS = 30


def _run_preset(compat, w0, grads, **options):
    opt = AdagradScratch(compat=compat, **options)
    w = nd.array(w0)
    state = opt.create_state(0, w)
    history = []
    for g in grads:
        opt.update(0, w, nd.array(g), state)
        history.append(w.asnumpy().copy())
    return history, state.asnumpy()


def _framework_run(compat, w0, grads, **options):
    w = w0.astype(np.float64)
    shape = w0.shape[:1] if compat in frameworks.ROWWISE else w0.shape
    s = np.full(shape, frameworks.INITIAL_ACCUMULATOR.get(compat, 0.0))
    history = []
    for t, g in enumerate(grads, start=1):
        w, s = frameworks.FRAMEWORKS[compat](w, g.astype(np.float64), s, t, **options)
        history.append(w)
    return history, s


PRESET_CASES = {
    "d2l": dict(lr=0.3, wd=0.02),
    "mxnet1": dict(lr=0.3, wd=0.02),
    "mxnet2": dict(lr=0.3, wd=0.02),
    "pytorch": dict(lr=0.3, wd=0.02, lr_decay=0.05),
    "keras": dict(lr=0.3, wd=0.02),
    "optax": dict(lr=0.3, wd=0.02),
    "groupadagrad": dict(lr=0.3),
    "fbgemm": dict(lr=0.3, wd=0.02),
}


def _ours(options):
    ours = dict(options)
    ours["learning_rate"] = ours.pop("lr")
    return ours


def preset_parity():
    """Worst relative difference (over every step's weights) of each preset against its
    framework's float64 formula."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(6, 9)).astype(np.float32)
    grads = [rng.normal(scale=s, size=w0.shape).astype(np.float32)
             for s in np.geomspace(3.0, 0.01, STEPS)]
    grads[3][0] = 0.0  # a zero row: exercises the s == 0 rule with the 0.1-free presets
    worst = {}
    for compat, options in PRESET_CASES.items():
        ours, acc = _run_preset(compat, w0, grads, **_ours(options))
        ref, ref_acc = _framework_run(compat, w0, grads, **options)
        worst[compat] = max(max(relative_error(a, b) for a, b in zip(ours, ref, strict=True)),
                            relative_error(acc, ref_acc))
    return worst


def test_presets_match_their_frameworks_formulas():
    worst = preset_parity()
    print("\nworst relative difference per preset, 30 steps:")
    for compat, diff in worst.items():
        print(f"  {compat:12s} {diff:.2e}")
    assert set(worst) == set(PRESETS)
    for compat, diff in worst.items():
        assert diff <= 1e-5, compat


def test_preset_defaults_and_explicit_arguments_win():
    opt = AdagradScratch(compat="keras")
    assert (opt.eps, opt.eps_placement, opt.initial_accumulator_value,
            opt.weight_decay_mode) == (1e-7, "inside", 0.1, "decoupled")
    opt = AdagradScratch(compat="pytorch", eps=1e-8, weight_decay_mode="step")
    assert (opt.eps, opt.eps_placement, opt.weight_decay_mode) == (1e-8, "outside", "step")
    assert AdagradScratch().compat == "d2l" and AdagradScratch().eps == 1e-6
    w = nd.ones((2, 2))
    np.testing.assert_array_equal(AdagradScratch(compat="optax").create_state(0, w).asnumpy(),
                                  0.1)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="compat must be one of 'd2l', 'mxnet1', 'mxnet2', "
                                         "'pytorch', 'keras', 'optax', 'groupadagrad', "
                                         "'fbgemm'; got 'jax'"):
        AdagradScratch(compat="jax")


def test_pytorch_argument_names():
    opt = mx.optimizer.create("adagrad_scratch", compat="pytorch", lr=0.5, weight_decay=0.1)
    assert opt.lr == 0.5 and opt.wd == 0.1
    with pytest.raises(TypeError, match="weight_decay.*PyTorch's name for 'wd'"):
        AdagradScratch(weight_decay=0.1)
    with pytest.raises(ValueError, match="either weight_decay or wd"):
        AdagradScratch(compat="pytorch", weight_decay=0.1, wd=0.1)


def test_mxnet1_preset_is_the_builtin_with_its_default_eps():
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(4, 4)).astype(np.float32)
    grads = [rng.normal(size=w0.shape).astype(np.float32) for _ in range(10)]
    ours, _ = _run_preset("mxnet1", w0, grads, learning_rate=0.2, wd=0.01)
    builtin = mx.optimizer.create("adagrad", learning_rate=0.2, wd=0.01)
    w = nd.array(w0)
    state = builtin.create_state(0, w)
    for g in grads:
        builtin.update(0, w, nd.array(g), state)
    np.testing.assert_array_equal(ours[-1], w.asnumpy())


# -- real PyTorch ----------------------------------------------------------------------------

TORCH_CASES = [
    dict(lr=0.1),
    dict(lr=0.1, lr_decay=0.01),
    dict(lr=0.1, weight_decay=0.05),
    dict(lr=0.2, initial_accumulator_value=0.3, eps=1e-6),
    dict(lr=0.1, lr_decay=0.02, weight_decay=0.01, initial_accumulator_value=0.1, eps=1e-8,
         maximize=True),
]


@pytest.mark.parametrize("options", TORCH_CASES, ids=str)
def test_pytorch_preset_follows_real_torch_step_for_step(options):
    torch = pytest.importorskip("torch")  # optional: pip install torch==2.13.0 (CI does)
    rng = np.random.default_rng(2)
    w0 = rng.normal(size=(5, 7)).astype(np.float32)
    param = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    torch_opt = torch.optim.Adagrad([param], foreach=False, **options)
    opt = mx.optimizer.create("adagrad_scratch", compat="pytorch", **options)
    w = nd.array(w0)
    state = opt.create_state(0, w)
    worst = 0.0
    for _ in range(STEPS):
        g = rng.normal(size=w0.shape).astype(np.float32)
        param.grad = torch.from_numpy(g.copy())
        torch_opt.step()
        opt.update(0, w, nd.array(g), state)
        worst = max(worst, relative_error(w.asnumpy(), param.detach().numpy()))
        assert worst <= 1e-4
    print(f"\nworst relative difference to torch.optim.Adagrad, {options}: {worst:.2e}")


# -- state -----------------------------------------------------------------------------------

class _Mlp(gluon.HybridBlock):
    """4 -> 6 (tanh) -> 1, computed in float32 whatever the parameters' dtype (MXNet's CPU
    FullyConnected has no float16 kernel), so float16 parameters get float16 gradients."""

    def __init__(self, hidden=6, **kwargs):
        super().__init__(**kwargs)
        self._hidden = hidden
        with self.name_scope():
            self.w1 = self.params.get("w1", shape=(hidden, 4))
            self.b1 = self.params.get("b1", shape=(hidden,))
            self.w2 = self.params.get("w2", shape=(1, hidden))
            self.b2 = self.params.get("b2", shape=(1,))

    def hybrid_forward(self, F, x, w1, b1, w2, b2):
        x, w1, b1, w2, b2 = (a.astype("float32") for a in (x, w1, b1, w2, b2))
        hidden = F.tanh(F.FullyConnected(x, w1, b1, num_hidden=self._hidden))
        return F.FullyConnected(hidden, w2, b2, num_hidden=1)


def _net(dtype="float32", prefix="net_", hidden=6):
    net = _Mlp(hidden=hidden, prefix=prefix)
    net.initialize(mx.init.Zero())
    rng = np.random.default_rng(9)
    for p in net.collect_params().values():  # the same starting point for every run
        p.set_data(nd.array(rng.normal(scale=0.5, size=p.shape)))
    net.cast(dtype)
    return net


_DATA_RNG = np.random.default_rng(4)
X_ALL = _DATA_RNG.normal(size=(40, 4)).astype(np.float32)
Y_ALL = _DATA_RNG.normal(size=(40,)).astype(np.float32)


def _train(net, trainer, steps, start=0, dtype="float32"):
    for i in range(start, start + steps):
        batch = slice((i % 4) * 10, (i % 4 + 1) * 10)
        X, y = nd.array(X_ALL[batch], dtype=dtype), nd.array(Y_ALL[batch])
        with autograd.record():
            loss = gluon.loss.L2Loss()(net(X), y)
        loss.backward()
        trainer.step(10)


def _weights(net):
    return [p.data().asnumpy() for p in net.collect_params().values()]


def _trainer(net, compat, multi_precision=False):
    options = {"learning_rate": 0.1, "wd": 0.01, "compat": compat,
               "multi_precision": multi_precision, "lr_decay": 0.01}
    return gluon.Trainer(net.collect_params(), "adagrad_scratch", options)


# elementwise presets (the net has 1-D biases; tests/test_rowwise.py resumes row-wise runs)
ELEMENTWISE = [c for c in PRESETS if not PRESETS[c]["rowwise"]]
STATE_CASES = [(c, False) for c in ELEMENTWISE] + [("d2l", True), ("pytorch", True)]


@pytest.mark.parametrize("compat, multi_precision", STATE_CASES)
@pytest.mark.parametrize("fmt", ["npz", "trainer"])
def test_resume_from_saved_states_is_bit_identical(tmp_path, compat, multi_precision, fmt):
    dtype = "float16" if multi_precision else "float32"
    net = _net(dtype)
    trainer = _trainer(net, compat, multi_precision)
    _train(net, trainer, 7, dtype=dtype)
    _train(net, trainer, 6, start=7, dtype=dtype)
    uninterrupted = _weights(net)

    net = _net(dtype)
    trainer = _trainer(net, compat, multi_precision)
    _train(net, trainer, 7, dtype=dtype)
    net.save_parameters(str(tmp_path / "params"))
    path = tmp_path / ("states.npz" if fmt == "npz" else "states.pkl")
    save_states(trainer, path) if fmt == "npz" else trainer.save_states(str(path))

    resumed_net = _net(dtype)
    resumed_net.load_parameters(str(tmp_path / "params"))
    resumed = _trainer(resumed_net, compat, multi_precision)
    load_states(resumed, path) if fmt == "npz" else resumed.load_states(str(path))
    _train(resumed_net, resumed, 6, start=7, dtype=dtype)
    for a, b in zip(_weights(resumed_net), uninterrupted, strict=True):
        np.testing.assert_array_equal(a, b)


def test_loading_states_saved_under_other_options_fails_clearly(tmp_path):
    net = _net()
    trainer = _trainer(net, "d2l")
    _train(net, trainer, 2)
    save_states(trainer, tmp_path / "s.npz")
    other = _trainer(_net(), "pytorch")
    with pytest.raises(ValueError, match=r"other optimizer options .*compat: saved 'd2l', "
                                         r"trainer 'pytorch'.*eps_placement: saved 'inside'"):
        load_states(other, tmp_path / "s.npz")


def test_trainer_load_states_restores_the_saved_options_whole(tmp_path):
    """MXNet's ``Trainer.load_states`` unpickles the saved optimizer and replaces the trainer's:
    the numerics continue as saved, never a mix of the saved states and new options."""
    net = _net()
    trainer = _trainer(net, "d2l")
    _train(net, trainer, 2)
    trainer.save_states(str(tmp_path / "s.pkl"))
    other = _trainer(_net(), "pytorch")
    other.load_states(str(tmp_path / "s.pkl"))
    assert other._optimizer.compat == "d2l" and other._optimizer.eps_placement == "inside"
    assert all(u.optimizer is other._optimizer for u in other._updaters)


def test_loading_states_of_the_wrong_shape_fails_clearly(tmp_path):
    net = _net()
    trainer = _trainer(net, "d2l")
    _train(net, trainer, 1)
    save_states(trainer, tmp_path / "s.npz")
    wider = _net(hidden=7)
    with pytest.raises(ValueError, match=r"#0 \(net_b1\) is \(6,\) float32 in the file but \(7,\)"):
        load_states(_trainer(wider, "d2l"), tmp_path / "s.npz")


def test_pickled_trainer_state_of_the_wrong_shape_fails_at_the_update(tmp_path):
    net = _net()
    trainer = _trainer(net, "d2l")
    _train(net, trainer, 1)
    trainer._updaters[0].states[0] = nd.zeros((3, 3))
    with pytest.raises(ValueError, match=r"accumulator .* shape \(3, 3\).*weight shape \(6,\)"):
        _train(net, trainer, 1)


@pytest.mark.parametrize("with_torch", [False, True], ids=["numpy", "torch"])
def test_torch_state_dict_round_trip(with_torch, monkeypatch):
    if with_torch:
        pytest.importorskip("torch")
    else:
        monkeypatch.setitem(__import__("sys").modules, "torch", None)  # as if not installed
    net = _net()
    trainer = _trainer(net, "pytorch")
    _train(net, trainer, 5)
    exported = to_torch_state_dict(trainer)
    assert set(exported["state"]) == {0, 1, 2, 3}
    assert float(np.asarray(exported["state"][0]["step"])) == 5.0
    group = exported["param_groups"][0]
    assert (group["lr"], group["weight_decay"], group["lr_decay"], group["eps"]) == \
        (0.1, 0.01, 0.01, 1e-10)

    fresh_net = _net()
    for p, q in zip(fresh_net.collect_params().values(), net.collect_params().values(),
                    strict=True):
        p.set_data(q.data())
    fresh = _trainer(fresh_net, "pytorch")
    load_torch_state_dict(fresh, exported)
    _train(net, trainer, 3, start=5)
    _train(fresh_net, fresh, 3, start=5)
    for a, b in zip(_weights(fresh_net), _weights(net), strict=True):
        np.testing.assert_array_equal(a, b)


def test_half_trained_model_moves_to_torch_and_continues_alike():
    torch = pytest.importorskip("torch")
    net = _net()
    trainer = _trainer(net, "pytorch")
    _train(net, trainer, 5)
    ours = [net.w1, net.b1, net.w2, net.b2]  # torch's order: weight before bias
    exported = to_torch_state_dict(trainer, params=ours)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    with torch.no_grad():
        for p, q in zip(model.parameters(), ours, strict=True):
            p.copy_(torch.from_numpy(q.data().asnumpy()))
    torch_opt = torch.optim.Adagrad(model.parameters(), lr=0.1, weight_decay=0.01,
                                    lr_decay=0.01, eps=1e-10, foreach=False)
    torch_opt.load_state_dict(exported)
    for i in range(5, 8):
        batch = slice((i % 4) * 10, (i % 4 + 1) * 10)
        torch_opt.zero_grad()
        pred = model(torch.from_numpy(X_ALL[batch]))
        loss = ((pred.reshape(-1) - torch.from_numpy(Y_ALL[batch])) ** 2 / 2).mean()
        loss.backward()
        torch_opt.step()
    _train(net, trainer, 3, start=5)
    for p, q in zip(model.parameters(), ours, strict=True):
        assert relative_error(p.detach().numpy(), q.data().asnumpy()) <= 1e-4


def _entry(step=1.0, total=None):
    return {"step": step, "sum": np.zeros(6, np.float32) if total is None else total}


@pytest.mark.parametrize("state, match", [
    ({0: _entry(total=np.zeros((4, 6)))}, r"'sum' of parameter #0 \(net_b1\) has shape \(4, 6\), "
                                          r"expected \(6,\)"),
    ({0: _entry(total=-np.ones(6))}, "'sum' of parameter #0 .* holds negative values"),
    ({0: _entry(total=np.full(6, np.nan))}, "holds NaN"),
    ({0: _entry(total=np.zeros(6, np.int64))}, "has dtype int64"),
    ({0: _entry(step=-1.0)}, "'step' of parameter #0 must be an integer >= 0"),
    ({0: _entry(step=1.5)}, "'step' of parameter #0 must be an integer >= 0"),
    ({0: {"step": 1.0}}, "state #0 must be a dict with 'sum' and 'step'"),
    ({7: _entry()}, "parameter 7, but the trainer has parameters 0..3"),
    ({"0": _entry()}, "parameter '0'"),
    ([_entry()], "a dict whose 'state' is a dict"),
])
def test_malformed_torch_state_dicts_are_refused(state, match):
    trainer = _trainer(_net(), "pytorch")
    with pytest.raises(ValueError, match=match):
        load_torch_state_dict(trainer, {"state": state, "param_groups": []})
    assert not trainer._updaters[0].states  # nothing was installed


def test_torch_state_dict_made_under_other_options_warns():
    trainer = _trainer(_net(), "pytorch")
    state = {"state": {0: _entry()}, "param_groups": [{"eps": 1e-3, "lr_decay": 0.01}]}
    with pytest.warns(UserWarning, match=r"other options \(eps: saved 0.001, trainer 1e-10\)"):
        load_torch_state_dict(trainer, state)


def test_torch_export_of_a_non_trainer_is_a_type_error():
    with pytest.raises(TypeError, match="expected a gluon.Trainer"):
        to_torch_state_dict(5)


# -- float16, sparse, contexts ---------------------------------------------------------------

def test_float16_parameters_train_by_default():
    net = _net("float16")
    trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch", {"learning_rate": 0.1})
    before = _weights(net)
    _train(net, trainer, 5, dtype="float16")
    after = _weights(net)
    assert all(w.dtype == np.float16 and np.isfinite(w).all() for w in after)
    assert all(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    reference = _net("float32")
    ref_trainer = gluon.Trainer(reference.collect_params(), "adagrad_scratch",
                                {"learning_rate": 0.1})
    _train(reference, ref_trainer, 5)
    for a, b in zip(after, _weights(reference), strict=True):
        assert relative_error(a, b) < 1e-2  # float16 rounding of weights and activations


@pytest.mark.parametrize("compat", ELEMENTWISE)  # row-wise ones: tests/test_rowwise.py
def test_embedding_lazy_rows_for_every_preset(compat):
    """An embedding with sparse gradients: rows not looked up keep their weights and their
    accumulators; rows looked up follow the preset's formula."""
    emb = gluon.nn.Embedding(12, 3, sparse_grad=True)
    emb.initialize(mx.init.Normal(1.0))
    w0 = emb.weight.data().asnumpy().astype(np.float64)
    trainer = gluon.Trainer(emb.collect_params(), "adagrad_scratch",
                            {"learning_rate": 0.2, "compat": compat, "lr_decay": 0.1})
    tokens = [np.array([1, 4, 4]), np.array([4, 7]), np.array([1, 2])]
    ref_w = w0.copy()
    ref_s = np.full(w0.shape, PRESETS[compat]["initial_accumulator_value"])
    for t, batch in enumerate(tokens, start=1):
        with autograd.record():
            loss = (emb(nd.array(batch)) * nd.arange(3).reshape((1, 3))).sum()
        loss.backward()
        trainer.step(1)
        g = np.zeros(w0.shape)
        np.add.at(g, batch, np.arange(3.0))
        rows = np.unique(batch)
        lr_t = 0.2 / (1 + (t - 1) * 0.1)
        denominator = (np.sqrt(ref_s[rows] + g[rows] ** 2 + PRESETS[compat]["eps"])
                       if PRESETS[compat]["eps_placement"] == "inside"
                       else np.sqrt(ref_s[rows] + g[rows] ** 2) + PRESETS[compat]["eps"])
        ref_s[rows] += g[rows] ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            step = np.where(ref_s[rows] > 0, g[rows] / denominator, 0.0)
        ref_w[rows] -= lr_t * step
    np.testing.assert_allclose(emb.weight.data().asnumpy(), ref_w, rtol=1e-5, atol=1e-6)
    untouched = [0, 3, 5, 6, 8, 9, 10, 11]
    np.testing.assert_array_equal(emb.weight.data().asnumpy()[untouched], w0[untouched])
    acc = trainer._updaters[0].states[0].asnumpy()
    np.testing.assert_array_equal(acc[untouched], PRESETS[compat]["initial_accumulator_value"])


@pytest.mark.parametrize("kvstore", ["local", "device"])
def test_several_contexts_give_the_weights_of_one(kvstore):
    def run(ctxs, kv):
        net = _net()
        params = {k: p.data().asnumpy() for k, p in net.collect_params().items()}
        net.collect_params().reset_ctx(ctxs)
        for k, p in net.collect_params().items():
            p.set_data(nd.array(params[k]))
        trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch",
                                {"learning_rate": 0.1, "wd": 0.01}, kvstore=kv)
        for i in range(8):
            batch = (i % 4) * 10
            parts = gluon.utils.split_and_load(X_ALL[batch:batch + 10], ctxs, even_split=False)
            labels = gluon.utils.split_and_load(Y_ALL[batch:batch + 10], ctxs,
                                                even_split=False)
            with autograd.record():
                losses = [gluon.loss.L2Loss()(net(x), y) for x, y in zip(parts, labels,
                                                                         strict=True)]
            autograd.backward(losses)
            trainer.step(10)
        return [p.data(ctxs[-1]).asnumpy() for p in net.collect_params().values()]

    one = run([mx.cpu(0)], kvstore)
    two = run([mx.cpu(0), mx.cpu(1)], kvstore)
    for a, b in zip(two, one, strict=True):
        assert relative_error(a, b) <= 1e-6

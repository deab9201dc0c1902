"""Per-call caches of adagrad_scratch (issue 13, per-call cost): what a list call reuses from
the last identical one, that it is dropped when the arrays change, and that the results stay
bit-identical to the reference update while rates change every step."""

import pickle
from array import array

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

import adagrad_gluon
from adagrad_gluon.optim import flat as flat_module
from adagrad_gluon.optim import kernels, optimizer
from adagrad_gluon.optim.kernels import invoke

COUNT, SIZE = 6, 5


def _arrays(seed: int = 0) -> tuple[list[nd.NDArray], list[nd.NDArray]]:
    rng = np.random.default_rng(seed)
    return ([nd.array(rng.standard_normal(SIZE)) for _ in range(COUNT)],
            [nd.array(rng.standard_normal(SIZE)) for _ in range(COUNT)])


def test_a_repeated_list_call_does_not_check_its_arrays_again(monkeypatch):
    checks = []
    original = optimizer.checked_arrays
    monkeypatch.setattr(optimizer, "checked_arrays",
                        lambda *args, **kw: checks.append(args[1]) or original(*args, **kw))
    opt = mx.optimizer.create("adagrad_scratch", learning_rate=0.1, kernel="fused")
    updater = mx.optimizer.get_updater(opt)
    weights, grads = _arrays()
    indices = list(range(COUNT))
    updater(indices, grads, weights)
    assert checks == indices
    updater(indices, grads, weights)  # the same objects, as gluon.Trainer hands them
    assert checks == indices
    updater.states[2] = nd.zeros(SIZE + 1)  # another object: checked again, and refused
    with pytest.raises(ValueError, match="parameter 2: accumulator .* shape"):
        updater(indices, grads, weights)
    assert checks[COUNT:] == [0, 1, 2]


def test_a_repeated_list_call_does_not_read_storage_types_again(monkeypatch):
    """A cached call's weights were checked dense: no storage type is read per parameter to
    look for a kvstore's row_sparse weight (1000 C calls a step under a large Trainer)."""
    reads = []
    original = optimizer.is_row_sparse
    monkeypatch.setattr(optimizer, "is_row_sparse",
                        lambda array: reads.append(array) or original(array))
    updater = mx.optimizer.get_updater(
        mx.optimizer.create("adagrad_scratch", learning_rate=0.1, kernel="fused"))
    weights, grads = _arrays()
    indices = list(range(COUNT))
    updater(indices, grads, weights)
    first = len(reads)
    assert first >= COUNT
    updater(indices, grads, weights)
    assert len(reads) == first


def test_list_calls_of_two_contexts_each_reuse_their_checks(monkeypatch):
    checks = []
    original = optimizer.checked_arrays
    monkeypatch.setattr(optimizer, "checked_arrays",
                        lambda *args, **kw: checks.append(args[1]) or original(*args, **kw))
    opt = mx.optimizer.create("adagrad_scratch", learning_rate=0.1, kernel="fused")
    updaters = [mx.optimizer.get_updater(opt) for _ in range(2)]  # as gluon.Trainer makes them
    arrays = [[[a.as_in_context(mx.cpu(k)) for a in seq] for seq in _arrays()] for k in range(2)]
    indices = list(range(COUNT))
    for _ in range(3):  # the contexts take turns, as in Trainer.step
        for updater, (weights, grads) in zip(updaters, arrays, strict=True):
            updater(indices, grads, weights)
    assert checks == indices * 2


def test_unchanged_rates_reuse_their_attribute_strings():
    opt = mx.optimizer.create("adagrad_scratch", learning_rate=0.1, kernel="fused")
    updater = mx.optimizer.get_updater(opt)
    weights, grads = _arrays()
    indices = list(range(COUNT))
    updater(indices, grads, weights)
    hits = kernels._joined.cache_info().hits
    updater(indices, grads, weights)
    assert kernels._joined.cache_info().hits == hits + 2  # lrs and wds


@pytest.mark.parametrize("aggregate", [True, False])
def test_cached_calls_stay_bit_identical_while_rates_change(aggregate):
    """A scheduler, lr_decay and per-parameter lr_mult/wd_mult change the rates of every
    step; the fused path with its caches gives the reference update's weights bit for bit."""
    def run(kernel: str) -> list[np.ndarray]:
        opt = mx.optimizer.create(
            "adagrad_scratch", learning_rate=0.5, kernel=kernel, wd=0.01, lr_decay=0.1,
            lr_scheduler=mx.lr_scheduler.FactorScheduler(step=1, factor=0.7),
            param_idx2name={i: f"p{i}" for i in range(COUNT)})
        opt.set_lr_mult({f"p{i}": 1.0 + (i % 3) for i in range(COUNT)})
        opt.set_wd_mult({f"p{i}": float(i % 2) for i in range(COUNT)})
        if not aggregate:
            opt.aggregate_num = 0
        updater = mx.optimizer.get_updater(opt)
        weights, grads = _arrays()
        for step in range(5):
            for grad, new in zip(grads, _arrays(seed=step + 1)[1], strict=True):
                grad[:] = new  # in place: the same objects every step, as under a Trainer
            if aggregate:
                updater(list(range(COUNT)), grads, weights)
            else:
                for i in range(COUNT):
                    updater(i, grads[i], weights[i])
        return [w.asnumpy() for w in weights]

    for fused, reference in zip(run("fused"), run("reference"), strict=True):
        np.testing.assert_array_equal(fused, reference)


def test_cached_rate_strings_keep_every_bit():
    """The strings are cached by the numbers' bytes, so 0.0 and -0.0 (equal as floats, as
    dictionary keys) keep their own strings, as repr gives them."""
    def joined(*numbers: float) -> str:
        return kernels._joined(array("d", numbers).tobytes())

    assert joined(0.0, 0.1) == "0.0,0.1"
    assert joined(-0.0, 0.1) == "-0.0,0.1"
    assert joined(1e-300, 1 / 3) == f"{1e-300!r},{1 / 3!r}"


def test_per_key_calls_reuse_their_encoded_attributes(monkeypatch):
    """A parameter server's per-key calls go to the operator through the lean invoke, with the
    attribute arrays encoded once: the same key and value arrays for every key whose rates are
    the same, new values only when a rate changes."""
    calls = []
    original = invoke.Operator.invoke

    def spy(self, *args):
        calls.append((self.name, *args))
        original(self, *args)

    monkeypatch.setattr(invoke.Operator, "invoke", spy)
    opt = mx.optimizer.create("adagrad_scratch", learning_rate=0.1, kernel="fused",
                              param_idx2name={i: f"p{i}" for i in range(COUNT)})
    opt.set_lr_mult({f"p{COUNT - 1}": 0.5})
    opt.aggregate_num = 0
    updater = mx.optimizer.get_updater(opt)
    weights, grads = _arrays()
    for _ in range(2):
        for i in range(COUNT):
            updater(i, grads[i], weights[i])
    assert [name for name, *_ in calls] == ["adagrad_gluon_update"] * 2 * COUNT
    keys, values = {id(call[3]) for call in calls}, [call[4] for call in calls]
    assert len(keys) == 1
    assert all(v is values[0] for v in values[:COUNT - 1] + values[COUNT:-1])
    assert values[COUNT - 1] is values[-1] is not values[0]  # its own lr_mult
    assert [s.decode() for s in values[-1]] == [repr(0.05), "0.0"]


def test_attribute_values_are_exact_and_their_cache_is_bounded():
    attributes = invoke.Attributes({"eps": "0.0", "maximize": "1"})
    assert attributes.count == 4
    assert [s.decode() for s in attributes.keys] == ["lr", "wd", "eps", "maximize"]
    assert [s.decode() for s in attributes.values(1 / 3, -0.0)] == [repr(1 / 3), "-0.0", "0.0",
                                                                  "1"]
    assert [s.decode() for s in attributes.values(1 / 3, 0.0)][1] == "0.0"
    first = attributes.values(0.1, 0.0)
    assert attributes.values(0.1, 0.0) is first
    for k in range(invoke._MAX_RATES):
        attributes.values(k + 1.0, 0.0)
    assert len(attributes._values) <= invoke._MAX_RATES


def test_the_lean_invoke_raises_the_operators_errors():
    operator = invoke.Operator("adagrad_gluon_update")
    weight, acc = nd.ones(4), nd.zeros(4)
    with pytest.raises(mx.base.MXNetError, match="grad shape does not match"):
        operator(weight, nd.ones(5), acc, lr="0.1", wd="0.0")
    with pytest.raises(mx.base.MXNetError, match="no_such_operator is not registered"):
        invoke.Operator("no_such_operator")
    operator(weight, nd.ones(4), acc, lr="0.5", wd="0.0")
    np.testing.assert_allclose(weight.asnumpy(), 1 - 0.5 / np.sqrt(1 + 1e-6), rtol=1e-6)


def _per_key_updater(kernel: str = "fused", **options):
    opt = mx.optimizer.create("adagrad_scratch", learning_rate=0.1, kernel=kernel, **options)
    opt.aggregate_num = 0  # no lists: one call per key, as a parameter server makes them
    return opt, mx.optimizer.get_updater(opt)


def test_a_repeated_per_key_call_does_not_check_its_arrays_again(monkeypatch):
    checks = []
    original = optimizer.checked_arrays
    monkeypatch.setattr(optimizer, "checked_arrays",
                        lambda *args, **kw: checks.append(args[1]) or original(*args, **kw))
    _, updater = _per_key_updater()
    weights, grads = _arrays()
    for _ in range(3):
        for i in range(COUNT):
            updater(i, grads[i], weights[i])
    assert checks == list(range(COUNT))
    updater.states[2] = nd.zeros(SIZE + 1)  # another object: checked again, and refused
    with pytest.raises(ValueError, match="parameter 2: accumulator .* shape"):
        updater(2, grads[2], weights[2])
    other = nd.zeros(SIZE + 1)
    with pytest.raises(ValueError, match="parameter 3: gradient shape"):
        updater(3, other, weights[3])  # another gradient object: checked again
    assert checks == [*range(COUNT), 2, 3]


def test_per_key_calls_through_an_aggregating_updater_reuse_their_prepared_update(monkeypatch):
    """A parameter server's updater keeps the optimizer's aggregate_num (> 0 for the fused
    kernels), so MXNet hands each key over as lists of one: they take the per-key path too
    (they were checked and prepared anew on every call)."""
    checks = []
    original = optimizer.checked_arrays
    monkeypatch.setattr(optimizer, "checked_arrays",
                        lambda *args, **kw: checks.append(args[1]) or original(*args, **kw))
    opt = mx.optimizer.create("adagrad_scratch", learning_rate=0.1, kernel="fused")
    assert opt.aggregate_num > 0
    updater = mx.optimizer.get_updater(opt)
    weights, grads = _arrays()
    for _ in range(3):
        for i in range(COUNT):
            updater(i, grads[i], weights[i])
    assert checks == list(range(COUNT))
    reference = mx.optimizer.get_updater(
        mx.optimizer.create("adagrad_scratch", learning_rate=0.1, kernel="reference"))
    expected, grads = _arrays()
    for _ in range(3):
        for i in range(COUNT):
            reference(i, grads[i], expected[i])
    for actual, wanted in zip(weights, expected, strict=True):
        np.testing.assert_array_equal(actual.asnumpy(), wanted.asnumpy())


def test_per_key_calls_follow_every_change_of_options_and_arrays_bit_for_bit():
    """Options changed between steps (as gluon.Trainer sets rescale_grad), a state replaced,
    a gradient object replaced: the prepared per-key path gives the reference's weights."""
    def run(kernel: str) -> list[np.ndarray]:
        opt, updater = _per_key_updater(kernel, wd=0.01)
        weights, grads = _arrays()
        changes = [lambda: None, lambda: setattr(opt, "rescale_grad", 0.25),
                   lambda: setattr(opt, "clip_gradient", 0.3),
                   lambda: setattr(opt, "eps_placement", "outside"),
                   lambda: setattr(opt, "maximize", True),
                   lambda: updater.states.__setitem__(1, nd.ones(SIZE)),
                   lambda: grads.__setitem__(4, grads[4] * 2),
                   lambda: setattr(opt, "weight_decay_mode", "decoupled")]
        for step, change in enumerate(changes):
            change()
            for grad, new in zip(grads, _arrays(seed=step + 1)[1], strict=True):
                grad[:] = new
            for i in range(COUNT):
                updater(i, grads[i], weights[i])
        return [w.asnumpy() for w in weights]

    for fused, reference in zip(run("fused"), run("reference"), strict=True):
        np.testing.assert_array_equal(fused, reference)


def test_a_policy_set_after_per_key_calls_is_honoured():
    opt, updater = _per_key_updater()
    weights, grads = _arrays()
    updater(0, grads[0], weights[0])
    opt.nonfinite = "skip"
    grads[0][:] = np.nan
    before = weights[0].asnumpy()
    updater(0, grads[0], weights[0])
    np.testing.assert_array_equal(weights[0].asnumpy(), before)
    assert opt.num_nonfinite_skipped == 1


def test_weight_decay_set_after_per_key_calls_of_groupadagrad_is_refused():
    opt, updater = _per_key_updater(compat="groupadagrad")  # row-wise: 2-D weights
    weight, grad = nd.ones((3, SIZE)), nd.ones((3, SIZE))
    updater(0, grad, weight)
    updater(0, grad, weight)
    opt.wd = 0.1
    before = weight.asnumpy()
    with pytest.raises(ValueError, match="groupadagrad.*wd must be 0"):
        updater(0, grad, weight)
    np.testing.assert_array_equal(weight.asnumpy(), before)


def test_an_optimizer_after_per_key_calls_pickles_and_goes_on_alike():
    opt, updater = _per_key_updater()
    weights, grads = _arrays()
    for i in range(COUNT):
        updater(i, grads[i], weights[i])
    restored = pickle.loads(pickle.dumps(opt))
    copies = [w.copy() for w in weights]
    other = mx.optimizer.get_updater(restored)
    other.states = {i: s.copy() for i, s in updater.states.items()}
    other.states_synced = dict.fromkeys(other.states, True)
    for i in range(COUNT):
        updater(i, grads[i], weights[i])
        other(i, grads[i], copies[i])
    for w, c in zip(weights, copies, strict=True):
        np.testing.assert_array_equal(w.asnumpy(), c.asnumpy())


def _flat_net():
    mx.random.seed(0)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(8, activation="relu"), gluon.nn.Dense(3))
    net.initialize(mx.init.Xavier())
    x = nd.array(np.random.default_rng(0).standard_normal((16, 5)))
    net(x)
    return net, x


def _backward(block, x) -> None:
    with autograd.record():
        loss = (block(x) ** 2).mean()
    loss.backward()


def test_a_flat_step_reads_the_members_gradient_states_once(monkeypatch):
    """gluon.Trainer reads the flat parameter twice in a step; the members' gradient states
    (one C call each) are read in the first read only."""
    net, x = _flat_net()
    flat = adagrad_gluon.flatten_parameters(net.collect_params())
    trainer = gluon.Trainer(flat.params, "adagrad_scratch", {"learning_rate": 0.1})
    reads = []
    original = flat_module._gluon.GradStates.fresh
    monkeypatch.setattr(flat_module._gluon.GradStates, "fresh",
                        lambda states: reads.append(len(states._arrays)) or original(states))
    for _ in range(3):
        _backward(net, x)
        trainer.step(16)
    assert reads == [len(flat.members)] * 3


def test_a_flat_parameter_read_by_hand_between_backwards_still_refuses_a_partial_one():
    net, x = _flat_net()
    flat = adagrad_gluon.flatten_parameters(net.collect_params())
    trainer = gluon.Trainer(flat.params, "adagrad_scratch", {"learning_rate": 0.1})
    _backward(net, x)
    trainer.step(16)
    _backward(net, x)
    flat.flat.list_data()  # makes the flat gradient fresh, as the Trainer's first read does
    _backward(net[0], x)  # then a backward through the first layer only
    weights = flat.flat.data().asnumpy()
    with pytest.raises(ValueError, match=f"{net[1].weight.name}.*{net[1].bias.name}"):
        trainer.step(16)
    np.testing.assert_array_equal(flat.flat.data().asnumpy(), weights)


@pytest.mark.parametrize("dtype, multi_precision", [("float16", False), ("float16", True),
                                                    ("float64", False)])
def test_repeated_per_key_calls_of_other_dtypes_are_bit_identical(dtype, multi_precision):
    def run(kernel: str) -> list[np.ndarray]:
        opt, updater = _per_key_updater(kernel, wd=0.01, multi_precision=multi_precision)
        weights, grads = ([a.astype(dtype) for a in seq] for seq in _arrays())
        for step in range(4):
            for grad, new in zip(grads, _arrays(seed=step + 1)[1], strict=True):
                grad[:] = new.astype(dtype)
            for i in range(COUNT):
                updater(i, grads[i], weights[i])
        return [w.asnumpy() for w in weights]

    for fused, reference in zip(run("fused"), run("reference"), strict=True):
        np.testing.assert_array_equal(fused, reference)


@pytest.mark.parametrize("nonfinite, prepared", [("propagate", COUNT), ("skip", 0),
                                                 ("raise", 0)])
def test_per_key_updates_are_prepared_once_and_only_where_they_can_be_reused(
        monkeypatch, nonfinite, prepared):
    """A policy needs the whole path on every call: nothing is prepared for it."""
    calls = []
    original = kernels.prepare
    monkeypatch.setattr(kernels, "prepare",
                        lambda *args: calls.append(args) or original(*args))
    _, updater = _per_key_updater(nonfinite=nonfinite)
    weights, grads = _arrays()
    for _ in range(3):
        for i in range(COUNT):
            updater(i, grads[i], weights[i])
    assert len(calls) == prepared

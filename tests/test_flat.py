"""The opt-in flat layout (adagrad_gluon.flatten_parameters): one contiguous weight buffer and
one gradient buffer whose views are the parameters, stepped by gluon.Trainer as one parameter,
with bit-identical results; what it refuses."""

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

import adagrad_gluon as ag

OPTIONS = {"learning_rate": 0.1, "kernel": "fused", "wd": 0.01}


def _net(hybridize: bool | str = False, grad_req: str = "write") -> tuple[gluon.Block, nd.NDArray,
                                                                      nd.NDArray]:
    mx.random.seed(0)
    rng = np.random.default_rng(0)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(8, activation="relu"), gluon.nn.Dense(3))
    net.initialize(mx.init.Xavier())
    x, y = nd.array(rng.standard_normal((16, 5))), nd.array(rng.standard_normal((16, 3)))
    net(x)  # the deferred shapes
    net.collect_params().setattr("grad_req", grad_req)
    if hybridize:  # and run once, so that flattening replaces arrays a CachedOp has seen
        net.hybridize(static_alloc=hybridize == "static", static_shape=hybridize == "static")
        net(x)
    return net, x, y


def _backward(net, x, y) -> None:
    with autograd.record():
        loss = ((net(x) - y) ** 2).mean()
    loss.backward()


def _train(net, x, y, params, steps: int = 4, backwards: int = 1,
           trainer_kwargs: dict | None = None) -> list[np.ndarray]:
    trainer = gluon.Trainer(params, "adagrad_scratch", OPTIONS, **(trainer_kwargs or {}))
    for _ in range(steps):
        for _ in range(backwards):
            _backward(net, x, y)
        trainer.step(16)
        if backwards > 1:
            net.collect_params().zero_grad()
    return [p.data().asnumpy() for p in net.collect_params().values()]


@pytest.mark.parametrize("hybridize", [False, True, "static"])
def test_flat_layout_trains_bit_identically(hybridize):
    net, x, y = _net(hybridize)
    initial = [p.data().asnumpy() for p in net.collect_params().values()]
    expected = _train(net, x, y, net.collect_params())
    net, x, y = _net(hybridize)
    flat = ag.flatten_parameters(net.collect_params())
    got = _train(net, x, y, flat.params)
    assert len(flat.params) == 1 and flat.flat.shape == (sum(w.size for w in initial),)
    for before, want, have in zip(initial, expected, got, strict=True):
        assert not np.array_equal(before, want)  # it trained
        np.testing.assert_array_equal(have, want)


def test_parameters_are_views_of_the_two_buffers():
    net, x, y = _net()
    params = list(net.collect_params().values())
    values = [p.data().asnumpy() for p in params]
    flat = ag.flatten_parameters(net.collect_params())
    np.testing.assert_array_equal(flat.flat.data().asnumpy(),
                                  np.concatenate([v.ravel() for v in values]))
    flat.flat.data()[:] = 2.0
    assert all((p.data().asnumpy() == 2.0).all() for p in params)
    _backward(net, x, y)
    np.testing.assert_array_equal(flat.flat.grad().asnumpy(),
                                  np.concatenate([p.grad().asnumpy().ravel() for p in params]))
    assert np.abs(flat.flat.grad().asnumpy()).sum() > 0


def test_grad_req_add_and_zero_grad_work_in_place():
    net, x, y = _net(grad_req="add")
    expected = _train(net, x, y, net.collect_params(), backwards=2)
    net, x, y = _net(grad_req="add")
    flat = ag.flatten_parameters(net.collect_params())
    got = _train(net, x, y, flat.params, backwards=2)
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_array_equal(have, want)
    _backward(net, x, y)
    net.collect_params().zero_grad()
    assert not flat.flat.grad().asnumpy().any()


def test_saving_and_loading_parameters_keeps_the_layout(tmp_path):
    net, x, y = _net()
    flat = ag.flatten_parameters(net.collect_params())
    trainer = gluon.Trainer(flat.params, "adagrad_scratch", OPTIONS)
    net.save_parameters(str(tmp_path / "net.params"))
    saved = flat.flat.data().asnumpy()
    _backward(net, x, y)
    trainer.step(16)
    assert not np.array_equal(flat.flat.data().asnumpy(), saved)
    net.load_parameters(str(tmp_path / "net.params"))
    np.testing.assert_array_equal(flat.flat.data().asnumpy(), saved)
    _backward(net, x, y)
    trainer.step(16)  # still one flat parameter, still the views
    assert not np.array_equal(flat.flat.data().asnumpy(), saved)


def test_a_step_after_a_backward_through_some_parameters_only_is_refused():
    net, x, y = _net()
    flat = ag.flatten_parameters(net.collect_params())
    trainer = gluon.Trainer(flat.params, "adagrad_scratch", OPTIONS)
    with pytest.raises(UserWarning, match="has not been updated by backward"):
        trainer.step(16)  # no backward at all: the Trainer's own stale-gradient error
    first = net[0]
    with autograd.record():
        loss = first(x).sum()
    loss.backward()
    weights = flat.flat.data().asnumpy()
    for ignore in (False, True):
        with pytest.raises(ValueError, match=f"{net[1].weight.name}.*{net[1].bias.name}"):
            trainer.step(16, ignore_stale_grad=ignore)
    np.testing.assert_array_equal(flat.flat.data().asnumpy(), weights)


def test_a_step_after_a_full_backward_and_no_second_one_is_stale():
    net, x, y = _net()
    trainer = gluon.Trainer(ag.flatten_parameters(net.collect_params()).params,
                            "adagrad_scratch", OPTIONS)
    _backward(net, x, y)
    trainer.step(16)
    with pytest.raises(UserWarning, match="has not been updated by backward"):
        trainer.step(16)


def _replace_data_alone(param: gluon.Parameter, unseen: bool = False) -> None:
    """A new data array whose gradient is still the flat buffer's view (by hand: MXNet
    replaces both together); ``unseen``: past the parameter's ``__setattr__``."""
    data = [param.data().copy()]
    if unseen:
        vars(param)["_data"] = data
    else:
        param._data = data
    autograd.mark_variables(data, param._grad, param.grad_req)


@pytest.mark.parametrize("replace", [
    lambda p: p.initialize(mx.init.One(), force_reinit=True),
    lambda p: p.reset_ctx(mx.cpu(0)),
    lambda p: setattr(p, "grad_req", "add"),  # a new gradient array, the same data array
    _replace_data_alone,
    lambda p: _replace_data_alone(p, unseen=True),
], ids=["force_reinit", "reset_ctx", "grad_req", "data alone", "data alone, unseen"])
def test_a_member_whose_arrays_were_replaced_is_refused(replace):
    net, x, y = _net()
    trainer = gluon.Trainer(ag.flatten_parameters(net.collect_params()).params,
                            "adagrad_scratch", OPTIONS)
    _backward(net, x, y)
    trainer.step(16)
    replace(net[1].bias)
    _backward(net, x, y)
    with pytest.raises(ValueError, match=f"{net[1].bias.name}.*no longer use the flat buffers"):
        trainer.step(16)


def _param(name, shape=(2, 3), ctx=None, **kwargs) -> gluon.Parameter:
    param = gluon.Parameter(name, shape=shape, **kwargs)
    param.initialize(ctx=ctx or mx.cpu())
    return param


@pytest.mark.parametrize("make, error, message", [
    (lambda: [], ValueError, "at least one parameter"),
    (lambda: ["w"], TypeError, "takes gluon Parameters, got str"),
    (lambda: [gluon.Parameter("lazy", shape=(2, 3))], ValueError, "'lazy' is not initialized"),
    (lambda: [_param("two", ctx=[mx.cpu(0), mx.cpu(1)])], ValueError, "several contexts"),
    (lambda: [_param("frozen", grad_req="null")], ValueError, "grad_req is 'null'"),
    (lambda: [_param("a"), _param("b", dtype="float64")], ValueError, "differ in dtype"),
    (lambda: [_param("a"), _param("b", ctx=mx.cpu(1))], ValueError, "differ in context"),
    (lambda: [_param("a"), _param("b", lr_mult=2.0)], ValueError, "differ in lr_mult"),
    (lambda: [_param("a"), _param("b", wd_mult=0.0)], ValueError, "differ in wd_mult"),
    (lambda: [_param("a", stype="row_sparse")], TypeError, "is sparse"),
    (lambda: [_param("a", grad_stype="row_sparse")], TypeError, "is sparse"),
])
def test_unsupported_parameters_are_refused(make, error, message):
    with pytest.raises(error, match=message):
        ag.flatten_parameters(make())


def test_a_bad_name_is_refused():
    with pytest.raises(TypeError, match="name must be a non-empty string"):
        ag.flatten_parameters([_param("a")], name="")


def test_a_parameter_is_flattened_once_and_before_its_trainer():
    param = _param("a")
    with pytest.raises(ValueError, match="given twice"):
        ag.flatten_parameters([param, param])
    ag.flatten_parameters([param])
    with pytest.raises(ValueError, match="already flattened"):
        ag.flatten_parameters([param])
    other = _param("b")
    gluon.Trainer([other], "sgd")
    with pytest.raises(ValueError, match="Trainer already has it"):
        ag.flatten_parameters([other])


def test_a_kvstore_that_updates_steps_the_flat_parameter_too():
    net, x, y = _net()
    expected = _train(net, x, y, net.collect_params(), trainer_kwargs={
        "kvstore": mx.kv.create("local"), "update_on_kvstore": True})
    net, x, y = _net()
    got = _train(net, x, y, ag.flatten_parameters(net.collect_params()).params,
                 trainer_kwargs={"kvstore": mx.kv.create("local"), "update_on_kvstore": True})
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_array_equal(have, want)


def test_with_a_kvstore_that_updates_partial_backwards_and_replaced_arrays_are_refused():
    # a kvstore that updates never clears the flat gradient's fresh flag: the checks must not
    # rely on it
    net, x, y = _net()
    flat = ag.flatten_parameters(net.collect_params())
    trainer = gluon.Trainer(flat.params, "adagrad_scratch", OPTIONS,
                            kvstore=mx.kv.create("local"), update_on_kvstore=True)
    _backward(net, x, y)
    trainer.step(16)
    with autograd.record():
        loss = net[0](x).sum()
    loss.backward()
    with pytest.raises(ValueError, match=f"{net[1].weight.name}.*{net[1].bias.name}"):
        trainer.step(16)
    net[1].bias.initialize(mx.init.One(), force_reinit=True)
    _backward(net, x, y)
    with pytest.raises(ValueError, match=f"{net[1].bias.name}.*no longer use the flat buffers"):
        trainer.step(16)


def test_two_groups_get_names_of_their_own_and_share_a_trainer():
    first, second = (ag.flatten_parameters([_param(name)]) for name in ("a", "b"))
    params = {**first.params, **second.params}
    assert len(params) == 2 and first.flat.name != second.flat.name
    gluon.Trainer(params, "adagrad_scratch", OPTIONS)


@pytest.mark.parametrize("layer, name, attribute, value", [
    (1, "weight", "lr_mult", 2.0), (0, "bias", "wd_mult", 0.0)])
def test_changing_lr_mult_or_wd_mult_after_flattening_is_refused(layer, name, attribute, value):
    net, x, y = _net()
    trainer = gluon.Trainer(ag.flatten_parameters(net.collect_params()).params,
                            "adagrad_scratch", OPTIONS)
    param = getattr(net[layer], name)
    setattr(param, attribute, value)
    _backward(net, x, y)
    with pytest.raises(ValueError, match=f"{param.name}.*changed lr_mult or wd_mult"):
        trainer.step(16)


@pytest.mark.parametrize("loaded", [True, False], ids=["library loops", "one call each"])
def test_grad_states_read_and_set_every_array_as_the_c_api_does(monkeypatch, loaded):
    from adagrad_gluon.optim import _gluon, kernels
    kernels.load()
    if not loaded:
        monkeypatch.setattr(kernels, "grad_state_loops", lambda: None)
    arrays = [nd.zeros((3,)) for _ in range(5)]
    for array in arrays:
        array.attach_grad()
    _gluon.set_fresh_gradients(arrays[1::2], True)
    states = _gluon.GradStates(arrays)
    np.testing.assert_array_equal(states.fresh(), [False, True, False, True, False])
    states.mark(True)
    assert _gluon.fresh_gradients(arrays) == [True] * 5
    states.mark(False)
    assert _gluon.fresh_gradients(arrays) == [False] * 5
    np.testing.assert_array_equal(states.fresh(), [False] * 5)


def test_the_flat_layout_without_the_kernel_library_trains_and_checks_the_same(monkeypatch):
    from adagrad_gluon.optim import kernels
    net, x, y = _net()
    expected = _train(net, x, y, ag.flatten_parameters(net.collect_params()).params)
    monkeypatch.setattr(kernels, "grad_state_loops", lambda: None)
    net, x, y = _net()
    flat = ag.flatten_parameters(net.collect_params())
    got = _train(net, x, y, flat.params)
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_array_equal(have, want)
    trainer = gluon.Trainer(flat.params, "adagrad_scratch", OPTIONS)
    with autograd.record():
        loss = net[0](x).sum()
    loss.backward()
    with pytest.raises(ValueError, match=f"{net[1].weight.name}.*{net[1].bias.name}"):
        trainer.step(16)


def test_a_steady_flat_step_checks_its_members_again_only_after_a_change(monkeypatch):
    """The per-member checks (mults, replaced arrays) run in the first step and after a
    member's arrays or mults were assigned, not in every step."""
    from adagrad_gluon.optim import _gluon
    net, x, y = _net()
    flat = ag.flatten_parameters(net.collect_params())
    trainer = gluon.Trainer(flat.params, "adagrad_scratch", OPTIONS)
    checks = []
    original = _gluon.replaced_arrays
    monkeypatch.setattr(_gluon, "replaced_arrays",
                        lambda *args: checks.append(1) or original(*args))
    for step in range(5):
        if step == 3:
            net[0].weight.lr_mult = 1.0  # assigned, unchanged: checked and accepted
        _backward(net, x, y)
        trainer.step(16)
    assert len(checks) == 2
    assert all(isinstance(m, gluon.Parameter) for m in flat.members)


class _OwnParameter(gluon.Parameter):
    """A subclass of gluon.Parameter: its class is left alone, its checks run every step."""


def test_members_of_a_parameter_subclass_are_checked_in_every_step():
    params = [_OwnParameter(f"own{i}", shape=(3,)) for i in range(2)]
    for param in params:
        param.initialize(mx.init.One())
    flat = ag.flatten_parameters(params)
    assert all(type(p) is _OwnParameter for p in params)
    trainer = gluon.Trainer(flat.params, "adagrad_scratch", OPTIONS)

    def step() -> None:
        with autograd.record():
            loss = (params[0].data() * params[1].data()).sum()
        loss.backward()
        trainer.step(1)

    step()
    assert not np.array_equal(params[0].data().asnumpy(), np.ones(3))  # it trained
    params[1].wd_mult = 0.0
    with pytest.raises(ValueError, match="own1.*changed lr_mult or wd_mult"):
        step()
    params[1].wd_mult = 1.0
    vars(params[0])["_grad"] = [nd.zeros(3)]
    with pytest.raises(ValueError, match="own0.*no longer use the flat buffers"):
        step()


def test_a_flattened_parameter_copies_and_pickles_as_a_plain_parameter_without_a_watcher():
    import copy
    import pickle
    net, x, y = _net()
    flat = ag.flatten_parameters(net.collect_params())
    trainer = gluon.Trainer(flat.params, "adagrad_scratch", OPTIONS)
    _backward(net, x, y)
    trainer.step(16)
    member = net[0].weight
    copies = [copy.deepcopy(member), copy.copy(member)]
    copies += [pickle.loads(pickle.dumps(member, protocol)) for protocol in range(6)]
    for other in copies:
        assert type(other) is gluon.Parameter and other.name == member.name
        np.testing.assert_array_equal(other.data().asnumpy(), member.data().asnumpy())
        other.lr_mult = 3.0  # not a member of the flat parameter
    assert b"adagrad_gluon" not in pickle.dumps(member)
    assert flat._changed is False
    _backward(net, x, y)
    trainer.step(16)  # no refusal


@pytest.mark.parametrize("attribute, value", [("lr_mult", 2.0), ("wd_mult", 0.0)])
def test_changing_the_flat_parameters_own_mults_is_refused(attribute, value):
    net, x, y = _net()
    flat = ag.flatten_parameters(net.collect_params())
    trainer = gluon.Trainer(flat.params, "adagrad_scratch", OPTIONS)
    _backward(net, x, y)
    trainer.step(16)
    setattr(flat.flat, attribute, value)
    _backward(net, x, y)
    with pytest.raises(ValueError, match="changed lr_mult or wd_mult"):
        trainer.step(16)
    net.collect_params().setattr(attribute, value)  # every member too: accepted
    trainer.step(16)


def test_a_change_made_while_the_members_are_checked_is_checked_next_step(monkeypatch):
    """An assignment landing between the checks and the end of _check_members (another
    thread) is not lost."""
    net, x, y = _net()
    flat = ag.flatten_parameters(net.collect_params())
    trainer = gluon.Trainer(flat.params, "adagrad_scratch", OPTIONS)
    original = ag.FlatParameters._check_replaced

    def check_then_assign(self) -> None:
        original(self)
        net[0].weight.lr_mult = 5.0

    monkeypatch.setattr(ag.FlatParameters, "_check_replaced", check_then_assign)
    _backward(net, x, y)
    trainer.step(16)  # checked before the assignment
    monkeypatch.setattr(ag.FlatParameters, "_check_replaced", original)
    _backward(net, x, y)
    with pytest.raises(ValueError, match=f"{net[0].weight.name}.*changed lr_mult"):
        trainer.step(16)

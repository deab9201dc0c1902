"""Per-call caches of adagrad_scratch (issue 13, per-call cost): what a list call reuses from
the last identical one, that it is dropped when the arrays change, and that the results stay
bit-identical to the reference update while rates change every step."""

from array import array

import mxnet as mx
import numpy as np
import pytest
from mxnet import nd

import adagrad_gluon  # noqa: F401  (registers adagrad_scratch)
from adagrad_gluon.optim import kernels, optimizer

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

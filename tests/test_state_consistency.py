"""A states file whose ``meta`` is valid JSON of the right shape but inconsistent, or whose
scheduler attributes would break training, is refused on load (nothing installed); so is a
malformed PyTorch ``param_groups``."""

import json
import zipfile

import numpy as np
import pytest
from mxnet import autograd, gluon, lr_scheduler, nd

from adagrad_gluon.state import load_states, load_torch_state_dict, save_states


def _trainer(step=True):
    net = gluon.nn.Dense(3, in_units=4, prefix="consistency_")
    net.initialize()
    trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch",
                            {"learning_rate": 0.1,
                             "lr_scheduler": lr_scheduler.FactorScheduler(step=2, factor=0.9)})
    if step:
        _step(trainer, net)
    return trainer, net


def _step(trainer, net):
    with autograd.record():
        loss = net(nd.ones((2, 4))).sum()
    loss.backward()
    trainer.step(2)


def _edit_meta(path, edit):
    """Rewrite ``path``'s ``meta`` JSON text as ``edit(text)`` returns it."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    meta = np.load(path)["meta"].item()
    arrays = {name[:-4]: np.load(path)[name[:-4]] for name in members if name != "meta.npy"}
    np.savez(path, meta=np.array(edit(meta)), **arrays)


def _set_meta(path, change):
    def edit(text):
        meta = json.loads(text)
        change(meta)
        return json.dumps(meta)
    _edit_meta(path, edit)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "states.npz"
    save_states(_trainer()[0], path)
    return path


def _assert_refused_untouched(path, match):
    trainer, net = _trainer(step=False)
    scheduler = trainer._optimizer.lr_scheduler
    before = dict(vars(scheduler))
    with pytest.raises(ValueError, match=match):
        load_states(trainer, path)
    assert not trainer._updaters[0].states  # nothing was installed
    assert vars(scheduler) == before
    _step(trainer, net)  # the trainer still trains


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_nan_or_infinity_in_meta_is_refused(saved, value):
    _edit_meta(saved, lambda text: text.replace('"base_lr": 0.1', f'"base_lr": {value}'))
    _assert_refused_untouched(saved, rf"{saved}: its 'meta' entry is not readable JSON.*{value}")


@pytest.mark.parametrize("name, value", [
    ("base_lr", "boom"), ("base_lr", True), ("base_lr", None), ("step", "2"),
    ("warmup_mode", 3),
])
def test_a_scheduler_attribute_of_another_type_is_refused(saved, name, value):
    def change(meta):
        meta["scheduler"]["attributes"][name] = value
    _set_meta(saved, change)
    _assert_refused_untouched(saved, rf"{saved}: the lr_scheduler's '{name}'")


def test_a_scheduler_int_may_replace_a_float(saved):
    def change(meta):
        meta["scheduler"]["attributes"]["base_lr"] = 1
    _set_meta(saved, change)
    trainer, net = _trainer(step=False)
    load_states(trainer, saved)
    assert trainer._optimizer.lr_scheduler.base_lr == 1
    _step(trainer, net)


def test_num_update_below_an_update_count_is_refused(saved):
    def change(meta):
        meta["num_update"] = 0
    _set_meta(saved, change)
    _assert_refused_untouched(saved, rf"{saved}: num_update 0 is less than the largest update "
                                     r"count of a parameter \(1\)")


@pytest.mark.parametrize("groups", [{"eps": 1}, [1, 2], ["eps"], [None], "eps"])
def test_malformed_torch_param_groups_are_refused(groups):
    trainer, _ = _trainer()
    state = {"state": {0: {"step": 3, "sum": np.ones(3)}}, "param_groups": groups}
    with pytest.raises(ValueError, match="'param_groups' must be a list of dicts"):
        load_torch_state_dict(trainer, state)

"""The package's layout: the module paths of 0.1 still work and are the moved modules."""

import importlib
import pickle
import subprocess
import sys

import pytest

import adagrad_gluon
from adagrad_gluon import _aliases


@pytest.mark.parametrize("old", sorted(_aliases.MOVED))
def test_old_module_paths_are_the_moved_modules(old):
    new = importlib.import_module(f"adagrad_gluon.{_aliases.MOVED[old]}")
    assert importlib.import_module(f"adagrad_gluon.{old}") is new
    assert getattr(adagrad_gluon, old) is new
    assert new.__spec__.name == new.__name__ == f"adagrad_gluon.{_aliases.MOVED[old]}"


def test_from_import_of_an_old_path_in_a_fresh_process():
    script = ("from adagrad_gluon import kernels, chapter\n"
              "from adagrad_gluon.state import save_states\n"
              "import adagrad_gluon.optim.kernels as k, adagrad_gluon.d2l.chapter as c\n"
              "assert kernels is k and chapter is c\n"
              "print(save_states.__module__)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "adagrad_gluon.optim.state"


def test_an_optimizer_pickled_under_the_old_module_path_loads():
    # what Trainer.save_states wrote with adagrad_gluon 0.1 names the class this way
    data = pickle.dumps(adagrad_gluon.AdagradScratch(learning_rate=0.5), 0)
    old = data.replace(b"adagrad_gluon.optim.optimizer", b"adagrad_gluon.optimizer")
    assert old != data
    restored = pickle.loads(old)
    assert type(restored) is adagrad_gluon.AdagradScratch and restored.lr == 0.5


def test_an_unknown_name_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_module"):
        adagrad_gluon.no_such_module  # noqa: B018
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("adagrad_gluon.no_such_module")

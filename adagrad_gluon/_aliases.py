"""The module paths of adagrad_gluon 0.1, kept working after the package was split into
:mod:`adagrad_gluon.optim` (the optimizer library) and :mod:`adagrad_gluon.d2l` (the chapter).

``import adagrad_gluon.kernels`` (or ``from adagrad_gluon import kernels``) gives the very module
object of ``adagrad_gluon.optim.kernels``, so monkeypatching either patches both. Each old
module is imported only when it is first asked for (``plotting`` imports matplotlib).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

PACKAGE = "adagrad_gluon"
# old module name -> where it lives now
MOVED = {
    "functional": "optim.functional",
    "compat": "optim.options",
    "optimizer": "optim.optimizer",
    "kernels": "optim.kernels",
    "state": "optim.state",
    "chapter": "d2l.chapter",
    "data": "d2l.data",
    "training": "d2l.training",
    "diagnostics": "d2l.diagnostics",
    "plotting": "d2l.plotting",
}


def moved_module(name: str) -> ModuleType:
    """The module an old name (e.g. ``'kernels'``) now refers to, imported if needed."""
    return importlib.import_module(f"{PACKAGE}.{MOVED[name]}")


class _AliasLoader(importlib.abc.Loader):
    """Loads an old name as the moved module itself (the import system then files it in
    ``sys.modules`` under the old name too)."""

    def __init__(self, module: ModuleType):
        self.module = module
        self.own_spec = module.__spec__

    def create_module(self, spec) -> ModuleType:
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was imported under its new name. The import system has
        set its ``__spec__`` to the alias's; give it back its own."""
        module.__spec__ = self.own_spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        package, _, name = fullname.rpartition(".")
        if package != PACKAGE or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(moved_module(name)))


def install() -> None:
    """Make ``import adagrad_gluon.<old name>`` find the moved modules. Idempotent."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())

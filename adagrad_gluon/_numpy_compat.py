"""Let mxnet 1.9.1 import with numpy >= 1.24.

mxnet 1.9.1 uses ``numpy.bool``, an alias of the builtin ``bool`` that numpy 1.24 removed.
Restoring the alias is the whole fix. It has to happen before ``import mxnet``, whichever of
``mxnet`` and ``adagrad_gluon`` a program imports first. The wheel (and an editable install)
installs this file as the top-level module ``_adagrad_gluon_numpy_compat``, not inside the
package, so that importing it does not import the package (and mxnet). It is used twice:

* ``adagrad_gluon/__init__.py`` calls :func:`restore_numpy_bool` before it imports mxnet;
* ``adagrad_gluon_numpy_compat.pth`` calls :func:`install_import_hook` at interpreter
  start-up. The hook costs nothing until something imports ``mxnet``; then it restores the
  alias once and removes itself. It never imports numpy or mxnet by itself.

This module must stay importable on its own: standard library only.
"""

from __future__ import annotations

import sys
import warnings


def restore_numpy_bool() -> None:
    """Define ``numpy.bool = bool`` if this numpy lacks it (numpy >= 1.24)."""
    try:
        import numpy
    except ImportError:  # numpy missing: mxnet will report that itself
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy 1.20-1.23 warn on the deprecated alias
        has_alias = hasattr(numpy, "bool")
    if not has_alias:
        numpy.bool = bool


class _RestoreBeforeMxnet:
    """A ``sys.meta_path`` finder that runs :func:`restore_numpy_bool` before mxnet loads."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "mxnet":
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            restore_numpy_bool()
        return None  # let the normal finders import the module


def install_import_hook() -> None:
    """Arrange for :func:`restore_numpy_bool` to run right before the first ``import mxnet``."""
    if "mxnet" in sys.modules:
        return
    if not any(isinstance(f, _RestoreBeforeMxnet) for f in sys.meta_path):
        sys.meta_path.insert(0, _RestoreBeforeMxnet())

"""The optimizer library: Adagrad for MXNet Gluon, independent of the book chapter.

* :mod:`.functional` states the update once, as plain functions on NDArrays (the reference);
* :mod:`.options` holds the ``compat=`` presets of other frameworks' numerics;
* :mod:`.optimizer` is :class:`AdagradScratch`, registered as ``adagrad_scratch``;
* :mod:`.kernels` is the fast path: fused C++ operators, tested bit for bit against the
  reference;
* :mod:`.state` saves and restores optimizer states (a safe ``.npz``; PyTorch's layout).
"""

from .optimizer import AdagradScratch, NonFiniteGradientError, register

__all__ = ["AdagradScratch", "NonFiniteGradientError", "register"]

"""The optimizer library: Adagrad for MXNet Gluon, independent of the book chapter.

* :mod:`.functional` states the update once, as plain functions on NDArrays (the reference):
  ``adagrad_update``, ``denominator()``, the ``Step`` record and ``reference_steps``;
* :mod:`.options`: ``AdagradOptions`` (frozen, checked) and the ``compat=`` presets;
* :mod:`.optimizer`: :class:`AdagradScratch`, registered as ``adagrad_scratch``, with
  :mod:`.checks` (the arrays of an update), :mod:`.sparse_grads` (a ``row_sparse`` gradient's
  host row check and huge pages) and :mod:`.nonfinite` (``nonfinite='skip'|'raise'``);
* :mod:`.lazy_decay`: exact weight decay of the rows a ``row_sparse`` update skips;
  :mod:`.sparse_weights`: the ``row_sparse`` weights a kvstore keeps (parameter servers);
  :mod:`.flat`: ``flatten_parameters``, many parameters as views into one buffer;
* :mod:`.kernels`: the fast path, ``fused_steps`` with ``reference_steps``'s signature,
  bit-identical to it (:mod:`.kernels.build` compiles and caches the C++ operators);
* :mod:`.state`: one versioned ``.npz`` schema for a Trainer's states and the distributed
  checkpoints (:mod:`.schema`, read by :mod:`.npz`, written by :mod:`.atomic`);
  :mod:`.torch_interop`: PyTorch's ``state_dict`` and FBGEMM's row-wise states;
* :mod:`._gluon`: the only module that touches MXNet's Trainer/Updater internals.
"""

from .optimizer import AdagradScratch, NonFiniteGradientError, register

__all__ = ["AdagradScratch", "NonFiniteGradientError", "register"]

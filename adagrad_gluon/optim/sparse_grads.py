"""The per-call upkeep of ``row_sparse`` gradients of dense weights, beyond the arrays' checks:
their rows checked on the host (as ``host_row_check`` asks) and their tables advised onto huge
pages (as ``huge_pages`` asks). Mixed into
:class:`~adagrad_gluon.optim.optimizer.AdagradScratch`, which keeps the settings, the caches
``_paged`` and ``_paged_last`` and ``_rows_known_good``, and provides ``kernel``, ``_name``,
``_get_wd``, ``_row_decay``, ``param_dict`` and ``update_multi_precision``.
"""

from __future__ import annotations

from mxnet import nd

from . import kernels, pages
from .checks import check_rows
from .quantized import QuantizedAcc


class RowSparseUpkeep:
    """The optimizer's side of a row_sparse gradient's host row check and huge pages."""

    def _row_sparse_upkeep(self, indices, checked: list) -> None:
        """What each call with row_sparse gradients needs beyond the arrays' checks, whether
        they were checked now or before: their rows checked on the host
        (:func:`~.checks.check_rows`, as ``host_row_check`` asks) and their tables advised
        onto huge pages."""
        for index, arrays in zip(indices, checked, strict=True):
            if arrays.row_sparse and self._rows_need_host_check(index, arrays):
                check_rows(self._name(index), arrays.grad, arrays.weight)
        self._advise_huge_pages(indices, checked)

    def _rows_need_host_check(self, index, arrays) -> bool:
        """Whether a row_sparse gradient's rows are checked on the host (see
        ``host_row_check``); ``arrays``: the parameter's :class:`~.checks.Checked`."""
        if arrays.grad is self._rows_known_good:
            return False
        if self.host_row_check or not self._kernel_checks_rows(arrays) \
                or self._get_wd(index) != 0 \
                or (self._row_decay  # reading the context costs ~2 us: only if needed
                    and (index, arrays.weight.context.device_id) in self._row_decay):
            return True  # asked for, or the rows are read before (or without) the kernel's check
        if self.host_row_check is None:
            return not _own_gradient(self.param_dict.get(index), arrays.grad)
        return False

    def update_known_rows(self, index, weight: nd.NDArray, grad: nd.NDArray, state) -> None:
        """``update_multi_precision`` of a row_sparse ``grad`` whose rows are known to be
        strictly increasing and in range (a kvstore's gathered rows, numbered 0 to n - 1 by
        :mod:`.sparse_weights`): they are not copied to the host again."""
        self._rows_known_good = grad
        try:
            self.update_multi_precision(index, weight, grad, state)
        finally:
            self._rows_known_good = None

    def _advise_huge_pages(self, indices, checked: list) -> None:
        """Back the arrays of each parameter a row_sparse gradient updates by huge pages, as
        ``huge_pages`` says (:func:`~.pages.advise`), once per weight and device: the arrays
        last seen for an index cost an identity test; others (new arrays, or another device's
        copy under a Trainer with several contexts) are looked up per context. Both remember
        the arrays by id with the setting, holding no array alive (an array whose id a freed
        one had may go unadvised: advice only)."""
        if self.huge_pages is False:
            return
        for index, arrays in zip(indices, checked, strict=True):
            tables = (arrays.weight, arrays.acc, arrays.master)
            seen = (self.huge_pages, *map(id, tables))
            if arrays.row_sparse and self._paged_last.get(index) != seen:
                self._paged_last[index] = seen
                key = (index, arrays.weight.context)
                if self._paged.get(key) != seen:
                    self._paged[key] = seen
                    if pages.advised(self.huge_pages, pages.nbytes(arrays.weight)):
                        pages.advise(_memory_arrays(tables))

    def _kernel_checks_rows(self, arrays) -> bool:
        """Whether these arrays' update is the fused row_sparse operator, which checks the rows
        before it writes: not the reference path, an 8-bit state (its rows go through the
        reference) or a master copy the kernels do not take (the same)."""
        return (self.kernel == "fused" and not isinstance(arrays.acc, QuantizedAcc)
                and (arrays.master is None
                     or kernels.supports(arrays.weight, arrays.acc, arrays.master)))


def _own_gradient(param, grad: nd.NDArray) -> bool:
    """Whether ``grad`` is one of ``param``'s own gradient arrays (``None``: no parameter)."""
    if param is None or param.grad_req == "null":
        return False
    try:
        return any(grad is own for own in param.list_grad())
    except RuntimeError:  # not initialized (MXNetError is a RuntimeError too)
        return False


def _memory_arrays(tables: tuple) -> list[nd.NDArray]:
    """The NDArrays holding a parameter's ``(weight, accumulator, master or None)``: an
    8-bit accumulator's codes (its scales are 1/1024 of them)."""
    weight, acc, master = tables
    acc = acc.codes if isinstance(acc, QuantizedAcc) else acc
    return [array for array in (weight, acc, master) if array is not None]

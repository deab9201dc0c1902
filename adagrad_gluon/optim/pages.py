"""Transparent huge pages (2 MiB) for large embedding tables: advice to the kernel, never a
change of what an update computes.

A lazy (``row_sparse``) step touches a few thousand rows scattered over a large table and its
accumulator: 10k rows of 256 B over two 256 MB arrays are ~20k distinct 4 KiB pages per step,
far beyond what the TLB maps (a few thousand 4 KiB entries, ~12 MiB), so most rows cost a page
walk. Backed by 2 MiB pages the same arrays need 256 entries: the gather loop of
``benchmarks/bench_sparse.py`` runs a few percent faster on them. Embedding systems back
their tables with huge pages for this reason.

:func:`advise` asks Linux to back an NDArray's memory by transparent huge pages
(``madvise(MADV_HUGEPAGE)``: later faults get 2 MiB pages) and to move the pages it already has
into huge pages now (``MADV_COLLAPSE``, Linux 6.1+, synchronous: it copies the array, a few
hundred ms for 256 MB), on the 2 MiB-aligned interior of the array's memory (the partial huge
pages at its ends may hold other allocations). Only on Linux, only for CPU arrays, and not
where transparent huge pages are ``never`` (the administrator's choice). Every failure (an
older kernel's ``EINVAL``, ``EAGAIN``/``ENOMEM`` when no huge page is free, no ``madvise``) is
ignored: the advice changes where the bytes live, never their values, so an update is bit for
bit the same with or without it.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Iterable
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import nd

__all__ = ["HUGE_PAGE", "LARGE_TABLE_BYTES", "advise", "advise_memory", "advised",
           "available", "data_address", "huge_page_interior", "nbytes"]

MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
HUGE_PAGE = 2 << 20
# Tables from 64 MiB on are advised by default (AdagradScratch(huge_pages=None)): 5x the
# ~12 MiB the TLB maps with 4 KiB pages, so nearly every scattered row misses it, while the
# one-time collapse (0.2-2 ms per MiB measured) stays small beside the steps of a table that size.
LARGE_TABLE_BYTES = 64 << 20
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def nbytes(array: nd.NDArray) -> int:
    """The bytes of ``array``'s data."""
    return array.size * np.dtype(array.dtype).itemsize


def advised(setting: bool | None, nbytes: int) -> bool:
    """Whether ``AdagradScratch(huge_pages=setting)`` advises a table of ``nbytes``: every
    table (True), none (False), or from :data:`LARGE_TABLE_BYTES` on (None); where
    :func:`available` allows it."""
    return bool(setting) or (setting is None and nbytes >= LARGE_TABLE_BYTES)


def huge_page_interior(address: int, size: int) -> tuple[int, int]:
    """``(start, length)`` of the whole 2 MiB pages inside ``[address, address + size)``;
    length 0 if there are none."""
    start = -(-address // HUGE_PAGE) * HUGE_PAGE
    end = (address + size) // HUGE_PAGE * HUGE_PAGE
    return start, max(end - start, 0)


def advise(arrays: Iterable[nd.NDArray]) -> None:
    """Back each CPU array of ``arrays`` by transparent huge pages (see the module's
    docstring): waits for the array's pending writes (so its pages exist), then
    :func:`advise_memory` of its data. Advice only: the arrays' values never change, and every
    failure is ignored. Call it once per array: the collapse copies the array."""
    if not available():
        return
    for array in arrays:
        if array.context.device_type == "cpu":
            array.wait_to_read()
            advise_memory(data_address(array), nbytes(array))


def advise_memory(address: int, size: int) -> None:
    """``MADV_HUGEPAGE`` and ``MADV_COLLAPSE`` on the whole 2 MiB pages inside
    ``[address, address + size)`` of this process's memory (e.g. a numpy array's
    ``ctypes.data`` and ``nbytes``); nothing where :func:`available` is False. Failures are
    ignored (advice)."""
    madvise = _madvise()
    start, length = huge_page_interior(address, size)
    if madvise is not None and length:
        for advice in (MADV_HUGEPAGE, MADV_COLLAPSE):
            madvise(start, length, advice)  # -1 and errno on failure: ignored (advice)


def available() -> bool:
    """Whether the advice can apply here: Linux, ``madvise``, and transparent huge pages
    ``always`` or ``madvise``."""
    return _madvise() is not None


@functools.cache
def _madvise():
    """libc's ``madvise``, or None where the advice cannot apply: not Linux, no ``madvise``,
    or transparent huge pages ``never`` (or not built into the kernel)."""
    if not sys.platform.startswith("linux") or not _thp_allowed():
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def _thp_allowed() -> bool:
    """Whether transparent huge pages are ``always`` or ``madvise`` here."""
    try:
        return "[never]" not in THP_ENABLED.read_text()
    except OSError:
        return False


def data_address(array: nd.NDArray) -> int:
    """The address of ``array``'s data (MXNet's C API ``MXNDArrayGetData``; it neither waits
    for the array's pending operations nor raises their errors)."""
    pointer = ctypes.c_void_p()
    mx.base.check_call(mx.base._LIB.MXNDArrayGetData(array.handle, ctypes.byref(pointer)))
    return pointer.value or 0

"""A lean call of this library's operators: ``MXImperativeInvokeEx`` through ctypes.

``nd.adagrad_gluon_update(w, g, s, lr=..., ...)``, the function MXNet generates for an
operator, costs about as much Python as the operator's own C++ call: it checks its arguments,
converts every attribute value with ``str``, encodes keys and values as new C string arrays and
looks the output up, every call. A parameter server calls the optimizer once per key, so that
is paid per parameter. :class:`Operator` looks the operator's handle up once; its ``invoke``
takes the C arrays themselves (the callers cache the attribute arrays, see
:class:`Attributes`). The operators have no outputs (they update their inputs in place), so
nothing is wrapped in new NDArray objects. Errors are MXNet's own (``mxnet.base.MXNetError``
with the operator's message), as from the generated function.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from mxnet import nd
from mxnet.base import _LIB, NDArrayHandle, OpHandle, c_str, check_call

__all__ = ["Attributes", "Operator", "c_strings", "handles"]

# one entry per distinct (lr, wd) of an Attributes: a Trainer's are few; beyond this, start over
_MAX_RATES = 64


def handles(arrays: Sequence[nd.NDArray]) -> ctypes.Array:
    """The arrays' C handles as one C array (``NDArrayHandle[]``)."""
    return (NDArrayHandle * len(arrays))(*[array.handle for array in arrays])


def c_strings(texts: Sequence[str]) -> ctypes.Array:
    """``texts`` as one C array of NUL-terminated UTF-8 strings (``char*[]``); it holds the
    encoded bytes alive as long as it lives."""
    return (ctypes.c_char_p * len(texts))(*[text.encode() for text in texts])


class Operator:
    """One MXNet operator, called with its handle looked up once (``MXNetError`` if no
    operator of that name is registered)."""

    def __init__(self, name: str) -> None:
        handle = OpHandle()
        check_call(_LIB.NNGetOpHandle(c_str(name), ctypes.byref(handle)))
        self.name = name
        self._handle = handle

    def __call__(self, *arrays: nd.NDArray, **attrs: str) -> None:
        """Run the operator on ``arrays`` (its inputs) with ``attrs`` (strings), as
        ``nd.<name>(*arrays, **attrs)`` would."""
        self.invoke(handles(arrays), len(arrays), c_strings(list(attrs)),
                    c_strings(list(attrs.values())), len(attrs))

    def invoke(self, inputs: ctypes.Array, num_inputs: int, keys: ctypes.Array,
               values: ctypes.Array, num_attrs: int) -> None:
        """Run the operator on ``num_inputs`` handles (:func:`handles`) with ``num_attrs``
        keys and values (:func:`c_strings`)."""
        num_outputs = ctypes.c_int(0)
        outputs = ctypes.POINTER(NDArrayHandle)()
        output_stypes = ctypes.POINTER(ctypes.c_int)()
        check_call(_LIB.MXImperativeInvokeEx(
            self._handle, num_inputs, inputs, ctypes.byref(num_outputs),
            ctypes.byref(outputs), num_attrs, keys, values, ctypes.byref(output_stypes)))


class Attributes:
    """The attributes of the single-tensor operators for one set of ``shared`` attributes
    (``{key: value}``, the options'): ``lr`` and ``wd`` first, then the shared ones, as C
    arrays encoded once; the values of each ``(lr, wd)`` pair are kept, so an unchanged pair
    costs a dictionary look-up. ``lr`` and ``wd`` are written as ``repr`` writes them
    (exact), so -0.0 and 0.0 get keys of their own."""

    def __init__(self, shared: dict[str, str]) -> None:
        self.count = 2 + len(shared)
        self.keys = c_strings(["lr", "wd", *shared])
        self._shared = list(shared.values())
        self._values: dict[tuple[str, str], ctypes.Array] = {}

    def values(self, lr: float, wd: float) -> ctypes.Array:
        """The values array for rates ``lr`` and ``wd``."""
        key = (repr(float(lr)), repr(float(wd)))
        values = self._values.get(key)
        if values is None:
            if len(self._values) >= _MAX_RATES:
                self._values.clear()
            values = self._values[key] = c_strings([*key, *self._shared])
        return values

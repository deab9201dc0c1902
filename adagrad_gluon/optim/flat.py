"""The opt-in flat layout: many small dense parameters as views into ONE contiguous weight
buffer and ONE contiguous gradient buffer, so that ``gluon.Trainer`` steps a single flat
parameter with one update call instead of one NDArray per parameter::

    net.initialize(); net(x)                      # every parameter has its shape
    flat = adagrad_gluon.flatten_parameters(net.collect_params())
    trainer = gluon.Trainer(flat.params, "adagrad_scratch", {"learning_rate": 0.1})
    # forward, backward, trainer.step(batch_size) as usual

Each parameter's data and gradient become ``buffer[a:b].reshape(shape)``, views that share
the buffers' memory: the network reads and ``backward`` writes (hybridized or not) straight
into them, and ``save_parameters``/``load_parameters``, ``set_data``, ``zero_grad`` and
``grad_req='add'`` work on them in place. An elementwise update of the buffer is the update
of every parameter, bit for bit (one ``lr_mult``, ``wd_mult`` and dtype for all, checked).

Refused with ``ValueError``/``TypeError``: parameters not initialized yet, on several
contexts (or on different ones), of different dtypes, sparse, with ``grad_req='null'``,
with different ``lr_mult``/``wd_mult``, already flattened, or already in a
``gluon.Trainer``. In every step (when the Trainer reads the flat parameter) the flat
parameter's gradient is fresh only if ``backward`` wrote every member's since the last step; a
step after a backward through only some of them raises ``ValueError`` naming the others (the
Trainer would skip or refuse a stale parameter; a flat one cannot skip part of itself), and a
member whose arrays were replaced (``cast``, ``reset_ctx``, ``initialize(force_reinit=True)``,
a new ``grad_req``) raises ``ValueError`` instead of silently training a copy.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterable, Mapping

import mxnet as mx
import numpy as np
from mxnet import gluon, nd

from . import _gluon

__all__ = ["FlatParameters", "flatten_parameters"]

# every parameter flattened so far (a parameter's arrays can be views of one buffer only)
_FLATTENED: weakref.WeakSet = weakref.WeakSet()
_NAMES = itertools.count()  # the default names of flat parameters: flat0, flat1, ...


class FlatParameters:
    """Parameters laid out by :func:`flatten_parameters`: give :attr:`params` (``{name: the
    flat parameter}``) to ``gluon.Trainer``; :attr:`members` are the parameters laid out."""

    def __init__(self, members: tuple[gluon.Parameter, ...], flat: gluon.Parameter,
                 weights: list[nd.NDArray], lists: list[tuple[list, list]]) -> None:
        self.members = members
        self.flat = flat
        self.params = {flat.name: flat}
        self._weights = weights  # the members' weights: views of the flat parameter's
        self._lists = lists  # the members' data and gradient lists, kept so ids stay theirs
        self._list_ids = _gluon.array_list_ids(members)
        flat.on_read = self._check_members

    def _check_members(self) -> None:
        """Before the Trainer reads the flat parameter: refuse members whose arrays were
        replaced or whose ``lr_mult``/``wd_mult`` changed; make the flat gradient fresh when
        every member's is (and theirs stale), refuse a step after a backward through only some
        of them. (Not the flat gradient's own flag: a kvstore that updates never clears it.)"""
        flat_weight = self.flat.data()
        changed = [m.name for m in self.members
                   if (m.lr_mult, m.wd_mult) != (self.flat.lr_mult, self.flat.wd_mult)]
        if changed:
            raise ValueError(f"parameters {_names(changed)} changed lr_mult or wd_mult after "
                             f"flattening (the flat parameter has one of each); flatten again")
        current = _gluon.array_list_ids(self.members)
        if current != self._list_ids:
            count = len(self.members)
            replaced = [m.name for i, m in enumerate(self.members)
                        if current[i::count] != self._list_ids[i::count]]
            raise ValueError(f"parameters {_names(replaced)} no longer use the flat buffers "
                             f"(their arrays were replaced: cast, reset_ctx, initialize("
                             f"force_reinit=True) or a new grad_req?); flatten again")
        fresh = _gluon.fresh_gradients(self._weights)
        if all(fresh):
            _gluon.set_fresh_gradients(self._weights, False)
            _gluon.set_fresh_gradients([flat_weight], True)
        elif any(fresh):
            stale = [m.name for m, f in zip(self.members, fresh, strict=True) if not f]
            raise ValueError(
                f"the flat parameter {self.flat.name!r} steps all its parameters together, but "
                f"backward has not written the gradients of {_names(stale)} since the last "
                f"step (ignore_stale_grad cannot skip part of a flat parameter)")


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def flatten_parameters(params: Mapping[str, gluon.Parameter] | Iterable[gluon.Parameter],
                       name: str | None = None) -> FlatParameters:
    """Lay ``params`` (a ``ParameterDict``, e.g. ``net.collect_params()``, or Parameters) out
    as views into one contiguous weight buffer and one gradient buffer, keeping their values
    and gradients; return the :class:`FlatParameters` whose ``params`` a ``gluon.Trainer``
    steps as one parameter named ``name`` (default ``'flat0'``, ``'flat1'``, ...: each its
    own, so two groups can share a Trainer). See the module's docstring for what is refused."""
    if name is None:
        name = f"flat{next(_NAMES)}"
    if not isinstance(name, str) or not name:
        raise TypeError(f"flatten_parameters: name must be a non-empty string, got {name!r}")
    members = _checked_members(params)
    first = members[0]
    dtype, ctx = np.dtype(first.data().dtype), first.list_ctx()[0]
    sizes = [int(np.prod(m.shape)) for m in members]
    total = sum(sizes)
    flat = _gluon.FlatParameter(name, shape=(total,), dtype=dtype, grad_req="write",
                                lr_mult=first.lr_mult, wd_mult=first.wd_mult)
    flat.initialize(init=mx.init.Zero(), ctx=ctx)
    weights, grads = flat.data(), nd.zeros((total,), ctx=ctx, dtype=dtype)
    _gluon.install_arrays(flat, weights, grads)
    views, lists, start = [], [], 0
    for member, size in zip(members, sizes, strict=True):
        data, grad = (buffer[start:start + size].reshape(member.shape)
                      for buffer in (weights, grads))
        data[:], grad[:] = member.data(), member.grad()
        lists.append(_gluon.install_arrays(member, data, grad))
        views.append(data)
        _FLATTENED.add(member)
        start += size
    return FlatParameters(members, flat, views, lists)


def _checked_members(params) -> tuple[gluon.Parameter, ...]:
    """The parameters, checked for the flat layout (see the module's docstring)."""
    members = tuple(params.values() if isinstance(params, (Mapping, gluon.ParameterDict))
                    else params)
    if not members:
        raise ValueError("flatten_parameters needs at least one parameter")
    for member in members:
        _check_member(member)
    if len({id(m) for m in members}) != len(members):
        raise ValueError("flatten_parameters: a parameter is given twice")
    first = members[0]
    for what, value in (("dtype", lambda m: np.dtype(m.data().dtype)),
                        ("context", lambda m: m.list_ctx()[0]),
                        ("lr_mult", lambda m: m.lr_mult), ("wd_mult", lambda m: m.wd_mult)):
        other = next((m for m in members if value(m) != value(first)), None)
        if other is not None:
            raise ValueError(f"flatten_parameters: parameters {first.name!r} and "
                             f"{other.name!r} differ in {what} ({value(first)} and "
                             f"{value(other)}); flatten each group on its own")
    return members


def _check_member(member) -> None:
    if not isinstance(member, gluon.Parameter):
        raise TypeError(f"flatten_parameters takes gluon Parameters, got "
                        f"{type(member).__name__}")
    if _gluon.storage_types(member) != ("default", "default"):
        raise TypeError(f"flatten_parameters: parameter {member.name!r} is sparse; the flat "
                        f"layout takes dense parameters only")
    problem = _gluon.parameter_problem(member)
    if problem is not None:
        raise ValueError(f"parameter {member.name!r} {problem}: initialize it (and run one "
                         f"forward pass for deferred shapes) before flattening")
    reasons = {"it is on several contexts (one only)": len(member.list_ctx()) > 1,
               "its grad_req is 'null'": member.grad_req == "null",
               "it is already flattened": member in _FLATTENED,
               "a gluon.Trainer already has it (create the Trainer after flattening, with "
               "the result's .params)": _gluon.has_trainer(member)}
    reason = next((r for r, refused in reasons.items() if refused), None)
    if reason is not None:
        raise ValueError(f"flatten_parameters: cannot flatten parameter {member.name!r}: "
                         f"{reason}")

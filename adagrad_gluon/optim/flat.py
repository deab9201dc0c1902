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

Those checks cost one C call for all the members' gradient states per step (one MXNet call
per member while the kernel library is not loaded); the members' arrays and mults are compared
only after one of them was assigned, or the flat parameter's mults changed: flattening makes
each plain ``gluon.Parameter`` a :class:`~adagrad_gluon.optim._gluon.WatchedParameter`, a
subclass that reports such assignments (``type(member)`` is that subclass; copies and pickles
are plain ``gluon.Parameter`` again). If a member is of another ``Parameter`` subclass, whose
class is left alone, every step compares every member. An array written into a member's
``vars()`` past ``__setattr__`` is not reported: a data array is still refused (its view
goes stale), a gradient array is not.
"""

from __future__ import annotations

import itertools
import operator
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
_MULTS = operator.attrgetter("lr_mult", "wd_mult")


class FlatParameters:
    """Parameters laid out by :func:`flatten_parameters`: give :attr:`params` (``{name: the
    flat parameter}``) to ``gluon.Trainer``; :attr:`members` are the parameters laid out."""

    def __init__(self, members: tuple[gluon.Parameter, ...], flat: gluon.Parameter,
                 weights: list[nd.NDArray], lists: list[tuple[list, list]]) -> None:
        self.members = members
        self.flat = flat
        self.params = {flat.name: flat}
        # the members' weights (views of the flat parameter's): their gradient states
        self._grad_states = _gluon.GradStates(weights)
        # members that tell of their changes (_gluon.watch_changes) are checked after one
        # only; a subclass of gluon.Parameter in every step
        self._watched = all([_gluon.watch_changes(m, self._note_change) for m in members])
        self._changed = True  # the first step checks every member
        self._flat_mults = _MULTS(flat)  # the flat parameter is not watched: compared per step
        # the members' data lists and gradient lists, as install_arrays returned them
        self._data_lists, self._grad_lists = (list(x) for x in zip(*lists, strict=True))
        # the read that made the flat gradient fresh found it stale: the Trainer's next read is
        # its second one in the same step (see _check_members)
        self._made_fresh = False
        flat.on_read = self._check_members

    def _check_members(self) -> None:
        """Before the Trainer reads the flat parameter: refuse members whose arrays were
        replaced or whose ``lr_mult``/``wd_mult`` changed; make the flat gradient fresh when
        every member's is (and theirs stale), refuse a step after a backward through only some
        of them. (Not the flat gradient's own flag: a kvstore that updates never clears it.)

        ``gluon.Trainer`` reads the flat parameter twice in a step, nothing in between; the
        second read finds what the first left, so it is skipped when the first made the flat
        gradient fresh from stale and it is still fresh (a Trainer that updates clears it after
        its second read; a kvstore that updates never does, and its reads are all checked)."""
        flat_weight = self.flat.data()
        made_fresh, self._made_fresh = self._made_fresh, False
        if made_fresh and _gluon.fresh_gradients([flat_weight])[0]:
            return
        fresh = self._grad_states.fresh()
        # a member's data array replaced without the watcher's knowing leaves its view stale
        if self._changed or not self._watched or not fresh.all() \
                or _MULTS(self.flat) != self._flat_mults:
            self._changed = False  # before the checks: a change meanwhile is checked next time
            try:
                self._check_mults()
                self._check_replaced()
            except ValueError:
                self._changed = True
                raise
            self._flat_mults = _MULTS(self.flat)
        if fresh.all():
            self._made_fresh = not _gluon.fresh_gradients([flat_weight])[0]
            self._grad_states.mark(False)
            _gluon.set_fresh_gradients([flat_weight], True)
        elif fresh.any():
            stale = [m.name for m, f in zip(self.members, fresh, strict=True) if not f]
            raise ValueError(
                f"the flat parameter {self.flat.name!r} steps all its parameters together, but "
                f"backward has not written the gradients of {_names(stale)} since the last "
                f"step (ignore_stale_grad cannot skip part of a flat parameter)")

    def _note_change(self) -> None:
        """A member's arrays were replaced or its ``lr_mult``/``wd_mult`` set."""
        self._changed = True

    def _check_mults(self) -> None:
        """Refuse members whose ``lr_mult`` or ``wd_mult`` differs from the flat parameter's."""
        mults = _MULTS(self.flat)
        if any(map(mults.__ne__, map(_MULTS, self.members))):  # one pass in C
            changed = [m.name for m in self.members if _MULTS(m) != mults]
            raise ValueError(f"parameters {_names(changed)} changed lr_mult or wd_mult after "
                             f"flattening (the flat parameter has one of each); flatten again")

    def _check_replaced(self) -> None:
        """Refuse members whose data or gradient arrays are no longer the flat buffers'."""
        replaced = _gluon.replaced_arrays(self.members, self._data_lists, self._grad_lists)
        if any(replaced):
            replaced = [m.name for m, r in zip(self.members, replaced, strict=True) if r]
            raise ValueError(f"parameters {_names(replaced)} no longer use the flat buffers "
                             f"(their arrays were replaced: cast, reset_ctx, initialize("
                             f"force_reinit=True) or a new grad_req?); flatten again")


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

"""The update's numerics as one frozen object, :class:`AdagradOptions`, and the ``compat=``
presets that fill it in: Adagrad exactly as other frameworks define it.

Each preset fixes the numerics on which frameworks disagree; arguments passed explicitly to
:class:`~adagrad_gluon.AdagradScratch` still win. With ``s`` the accumulator, ``g`` the clipped
gradient, ``lr_t = lr / (1 + (t - 1) * lr_decay)``:

=========  =======  ========  ===========  ====================================================
preset     eps      placement  accumulator  weight decay
=========  =======  ========  ===========  ====================================================
d2l        1e-6     inside     0            step: ``w -= lr_t * (g / sqrt(s + eps) + wd * w)``
mxnet1     1e-7     inside     0            step (MXNet 1.x ``adagrad``)
mxnet2     1e-6     outside    0            l2: ``g += wd * w`` before ``s += g * g``
pytorch    1e-10    outside    0            l2 (``torch.optim.Adagrad``; ``lr_decay`` applies)
keras      1e-7     inside     0.1          decoupled: ``w -= lr_t * wd * w``, then the step
optax      1e-7     inside     0.1          l2 (``chain(add_decayed_weights, adagrad)``)
=========  =======  ========  ===========  ====================================================

Two presets are row-wise (``rowwise=True``: one accumulator per row, see
:func:`~adagrad_gluon.optim.functional.rowwise_adagrad_update`):

============  =====  =========  ===========  ==================================================
preset        eps    placement  accumulator  weight decay
============  =====  =========  ===========  ==================================================
groupadagrad  1e-5   inside     0            none: ``wd`` must be 0 (MXNet 1.x
                                             ``mx.optimizer.contrib.GroupAdaGrad``)
fbgemm        1e-8   outside    0            l2 (FBGEMM ``EXACT_ROWWISE_ADAGRAD``,
                                             ``WeightDecayMode.L2``; ``'decoupled'`` is its
                                             ``DECOUPLED``)
============  =====  =========  ===========  ==================================================

``inside`` is ``g / sqrt(s + eps)``, ``outside`` is ``g / (sqrt(s) + eps)``. Every preset makes
the update 0 where ``s == 0``, as Optax does (up to a gradient so small that its square
underflows), never 0/0 even with ``eps = 0``.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from ..validation import check_choice, check_count, check_flag, check_number

EPS_PLACEMENTS = ("inside", "outside")
WEIGHT_DECAY_MODES = ("step", "l2", "decoupled")

PRESET_FIELDS = ("eps", "eps_placement", "initial_accumulator_value", "weight_decay_mode",
                 "rowwise")
# the table above, one row per preset: its name, then the PRESET_FIELDS
PRESETS: dict[str, dict[str, object]] = {name: dict(zip(PRESET_FIELDS, row, strict=True))
                                         for name, *row in (
    ("d2l", 1e-6, "inside", 0.0, "step", False),
    ("mxnet1", 1e-7, "inside", 0.0, "step", False),
    ("mxnet2", 1e-6, "outside", 0.0, "l2", False),
    ("pytorch", 1e-10, "outside", 0.0, "l2", False),
    ("keras", 1e-7, "inside", 0.1, "decoupled", False),
    ("optax", 1e-7, "inside", 0.1, "l2", False),
    ("groupadagrad", 1e-5, "inside", 0.0, "step", True),
    ("fbgemm", 1e-8, "outside", 0.0, "l2", True),
)}
# presets whose framework refuses weight decay
NO_WEIGHT_DECAY_PRESETS = ("groupadagrad",)

# PyTorch's argument names, accepted with compat='pytorch': theirs -> ours
PYTORCH_NAMES = {"lr": "learning_rate", "weight_decay": "wd"}



@dataclasses.dataclass(frozen=True)
class AdagradOptions:
    """Everything that defines one Adagrad step other than the per-parameter ``lr`` and ``wd``
    (see :mod:`adagrad_gluon.optim.functional` for the formula). Every field is checked on
    construction, with a message naming it; the defaults are the ``'d2l'`` preset's.

    ``initial_accumulator_value`` and ``lr_decay`` shape the state and the rate rather than
    the step; ``rescale_grad`` and ``clip_gradient`` are MXNet's (the optimizer keeps them in
    step with its attributes, which ``gluon.Trainer`` sets).
    """

    eps: float = 1e-6
    eps_placement: str = "inside"
    initial_accumulator_value: float = 0.0
    lr_decay: float = 0.0
    weight_decay_mode: str = "step"
    maximize: bool = False
    rescale_grad: float = 1.0
    clip_gradient: float | None = None
    rowwise: bool = False

    def __post_init__(self) -> None:
        checked = dict(
            eps=check_eps(self.eps),
            eps_placement=check_choice("eps_placement", self.eps_placement, EPS_PLACEMENTS),
            initial_accumulator_value=check_number(
                "initial_accumulator_value", self.initial_accumulator_value),
            lr_decay=check_number("lr_decay", self.lr_decay),
            weight_decay_mode=check_choice(
                "weight_decay_mode", self.weight_decay_mode, WEIGHT_DECAY_MODES),
            maximize=check_flag("maximize", self.maximize),
            rescale_grad=check_normal("rescale_grad", self.rescale_grad),
            clip_gradient=(None if self.clip_gradient is None
                           else check_normal("clip_gradient", self.clip_gradient)),
            rowwise=check_flag("rowwise", self.rowwise),
        )
        for name, value in checked.items():
            object.__setattr__(self, name, value)


def resolve(compat: str = "d2l", **explicit) -> AdagradOptions:
    """The options of preset ``compat`` overridden by the ``explicit`` ones (any field of
    :class:`AdagradOptions`); ``None`` for a field the presets set means the preset's."""
    check_compat(compat)
    chosen = {k: v for k, v in explicit.items() if v is not None or k not in PRESET_FIELDS}
    return AdagradOptions(**{**PRESETS[compat], **chosen})


def check_compat(compat) -> str:
    """Return ``compat`` if it names a preset."""
    return check_choice("compat", compat, tuple(PRESETS))


def check_eps(eps) -> float:
    """``eps`` as a float: finite, >= 0, and 0 or not rounding to 0 in float32 (else the
    float32 update would divide 0 by 0)."""
    eps = check_number("eps", eps)
    if eps and np.float32(eps) == 0:
        raise ValueError(f"eps must be 0 or at least float32's smallest number (1.4e-45): "
                         f"{eps!r} rounds to 0 in float32 and would give 0/0")
    return eps


def check_normal(name: str, value) -> float:
    """``value`` as a float if it is a finite number of at least float64's smallest normal
    number: MXNet refuses smaller ones as operator arguments, and unlike a rate such a factor
    cannot act as 0 (it scales the gradient, which may be as large as 1e308)."""
    value = check_number(name, value, strict=True)
    if value < sys.float_info.min:
        raise ValueError(f"{name} must be at least 2.2250738585072014e-308 (float64's smallest "
                         f"normal number; MXNet refuses smaller ones), got {value!r}")
    return value


def flush_subnormal(value: float) -> float:
    """``value``, or 0 if it is below float64's smallest normal number (2.2e-308): MXNet
    refuses such numbers as operator arguments (see ``learning_rate`` in
    :class:`~adagrad_gluon.AdagradScratch` for what flushing a rate to 0 changes)."""
    return 0.0 if abs(value) < sys.float_info.min else value


def translate_pytorch_names(compat: str, kwargs: dict[str, object]) -> dict[str, object]:
    """Rename PyTorch's argument names (``lr``, ``weight_decay``) to MXNet's, for
    ``compat='pytorch'``; refuse them elsewhere and refuse both spellings at once."""
    kwargs = dict(kwargs)
    for theirs, ours in PYTORCH_NAMES.items():
        if theirs not in kwargs:
            continue
        if compat != "pytorch":
            raise TypeError(f"{theirs!r} is PyTorch's name for {ours!r}: pass {ours}= "
                            f"(or use compat='pytorch')")
        if kwargs.get(ours) is not None:
            raise ValueError(f"pass either {theirs} or {ours}, not both")
        kwargs[ours] = kwargs.pop(theirs)
    return kwargs


def optimizer_kwargs(compat: str, kwargs: dict[str, object]) -> dict[str, object]:
    """The arguments for :class:`mxnet.optimizer.Optimizer` (``learning_rate`` among them),
    PyTorch's names translated (see :func:`translate_pytorch_names`) and each checked: the
    rate (0.01 unless a scheduler sets it), ``wd``, ``rescale_grad``, ``clip_gradient``,
    ``lr_scheduler``, ``begin_num_update``, ``multi_precision``."""
    kwargs = translate_pytorch_names(compat, kwargs)
    scheduler = kwargs.get("lr_scheduler")
    if kwargs.get("learning_rate") is None and scheduler is None:
        kwargs["learning_rate"] = 0.01
    if kwargs.get("learning_rate") is not None:
        kwargs["learning_rate"] = check_number("learning_rate", kwargs["learning_rate"])
    if scheduler is not None and not callable(scheduler):
        raise TypeError(f"lr_scheduler must be callable, got {scheduler!r}")
    kwargs["wd"] = check_number("wd", kwargs.get("wd", 0.0))
    kwargs["rescale_grad"] = check_normal("rescale_grad", kwargs.get("rescale_grad", 1.0))
    if kwargs.get("clip_gradient") is not None:
        kwargs["clip_gradient"] = check_normal("clip_gradient", kwargs["clip_gradient"])
    check_count("begin_num_update", kwargs.get("begin_num_update", 0))
    check_flag("multi_precision", kwargs.get("multi_precision", False))
    return kwargs

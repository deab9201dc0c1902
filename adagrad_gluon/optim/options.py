"""``compat=`` presets: Adagrad exactly as other frameworks define it.

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

``inside`` is ``g / sqrt(s + eps)``, ``outside`` is ``g / (sqrt(s) + eps)``. Every preset makes
the update 0 where ``s == 0``, as Optax does (up to a gradient so small that its square
underflows), never 0/0 even with ``eps = 0``.
"""

from __future__ import annotations

PRESETS: dict[str, dict[str, object]] = {
    "d2l": dict(eps=1e-6, eps_placement="inside", initial_accumulator_value=0.0,
                weight_decay_mode="step"),
    "mxnet1": dict(eps=1e-7, eps_placement="inside", initial_accumulator_value=0.0,
                   weight_decay_mode="step"),
    "mxnet2": dict(eps=1e-6, eps_placement="outside", initial_accumulator_value=0.0,
                   weight_decay_mode="l2"),
    "pytorch": dict(eps=1e-10, eps_placement="outside", initial_accumulator_value=0.0,
                    weight_decay_mode="l2"),
    "keras": dict(eps=1e-7, eps_placement="inside", initial_accumulator_value=0.1,
                  weight_decay_mode="decoupled"),
    "optax": dict(eps=1e-7, eps_placement="inside", initial_accumulator_value=0.1,
                  weight_decay_mode="l2"),
}

# PyTorch's argument names, accepted with compat='pytorch': theirs -> ours
PYTORCH_NAMES = {"lr": "learning_rate", "weight_decay": "wd"}


def resolve(compat: str, explicit: dict[str, object]) -> dict[str, object]:
    """The preset's options overridden by the ``explicit`` ones that are not ``None``."""
    if compat not in PRESETS:
        raise ValueError(f"compat must be one of {', '.join(map(repr, PRESETS))}; got {compat!r}")
    chosen = {k: v for k, v in explicit.items() if v is not None}
    return {**PRESETS[compat], **chosen}


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

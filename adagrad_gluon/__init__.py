"""adagrad_gluon: a from-scratch Adagrad for Apache MXNet Gluon, and the d2l Adagrad chapter.

Importing the package registers the optimizer as ``adagrad_scratch``. Nothing is downloaded
or compiled at import.
"""

# installed as a top-level module (see _numpy_compat.py), so that the .pth hook can use it
# without importing this package
from _adagrad_gluon_numpy_compat import restore_numpy_bool

restore_numpy_bool()  # before mxnet is imported below: mxnet 1.9.1 needs numpy.bool

from . import _aliases  # noqa: E402
from .d2l.chapter import (  # noqa: E402
    adagrad,
    adagrad_2d,
    f_2d,
    format_2d,
    init_adagrad_states,
    train_2d,
)
from .d2l.data import DataFileError, get_data_ch10, load_array  # noqa: E402
from .d2l.training import TrainResult, train_ch10, train_concise_ch10  # noqa: E402
from .optim._gluon import apply_pending_decay  # noqa: E402
from .optim.flat import FlatParameters, flatten_parameters  # noqa: E402
from .optim.optimizer import AdagradScratch, register  # noqa: E402
from .optim.state import (  # noqa: E402
    load_states,
    load_torch_state_dict,
    save_states,
    to_torch_state_dict,
)
from .optim.torch_interop import (  # noqa: E402
    load_fbgemm_optimizer_states,
    to_fbgemm_optimizer_states,
)

register()
_aliases.install()


def __getattr__(name: str):
    """``adagrad_gluon.kernels`` and the other module names of 0.1 (see :mod:`._aliases`)."""
    if name in _aliases.MOVED:
        return _aliases.moved_module(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "AdagradScratch", "register", "apply_pending_decay", "__version__", "flatten_parameters",
    "FlatParameters",
    "f_2d", "adagrad_2d", "train_2d", "format_2d", "init_adagrad_states", "adagrad",
    "get_data_ch10", "load_array", "DataFileError",
    "train_ch10", "train_concise_ch10", "TrainResult",
    "save_states", "load_states", "to_torch_state_dict", "load_torch_state_dict",
    "to_fbgemm_optimizer_states", "load_fbgemm_optimizer_states",
]

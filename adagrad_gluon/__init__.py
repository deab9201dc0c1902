"""adagrad_gluon: a from-scratch Adagrad for Apache MXNet Gluon, and the d2l Adagrad chapter.

Importing the package registers the optimizer as ``adagrad_scratch``. Nothing is downloaded
or compiled at import.
"""

from ._numpy_compat import restore_numpy_bool

restore_numpy_bool()  # before mxnet is imported below: mxnet 1.9.1 needs numpy.bool

from .chapter import adagrad, adagrad_2d, f_2d, format_2d, init_adagrad_states, train_2d  # noqa: E402
from .data import DataFileError, get_data_ch10, load_array  # noqa: E402
from .optimizer import AdagradScratch, register  # noqa: E402
from .state import (  # noqa: E402
    load_states,
    load_torch_state_dict,
    save_states,
    to_torch_state_dict,
)
from .training import TrainResult, train_ch10, train_concise_ch10  # noqa: E402

register()

__version__ = "0.1.0"

__all__ = [
    "AdagradScratch", "register", "__version__",
    "f_2d", "adagrad_2d", "train_2d", "format_2d", "init_adagrad_states", "adagrad",
    "get_data_ch10", "load_array", "DataFileError",
    "train_ch10", "train_concise_ch10", "TrainResult",
    "save_states", "load_states", "to_torch_state_dict", "load_torch_state_dict",
]

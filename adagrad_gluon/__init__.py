"""adagrad_gluon: a from-scratch Adagrad for Apache MXNet Gluon, and the d2l Adagrad chapter.

Importing the package registers the optimizer as ``adagrad_scratch``. Nothing is downloaded
or compiled at import.
"""

from ._numpy_compat import restore_numpy_bool

restore_numpy_bool()  # before mxnet is imported below: mxnet 1.9.1 needs numpy.bool

from .optimizer import AdagradScratch, register  # noqa: E402

register()

__version__ = "0.1.0"

__all__ = ["AdagradScratch", "register", "__version__"]

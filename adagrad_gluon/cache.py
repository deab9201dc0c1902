"""Where adagrad_gluon keeps what it makes on a machine: downloaded data, built kernels.

One root for both: ``$ADAGRAD_GLUON_CACHE_DIR`` if set, else the user cache directory
(``~/.cache/adagrad-gluon`` on Linux, as pooch names it). Nothing is created here.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "ADAGRAD_GLUON_CACHE_DIR"


def cache_root() -> Path:
    """``$ADAGRAD_GLUON_CACHE_DIR``, else the user cache directory for adagrad-gluon."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    import pooch  # imported only when needed: importing the package stays light

    return Path(pooch.os_cache("adagrad-gluon"))

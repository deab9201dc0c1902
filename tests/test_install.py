"""Installation policy: mxnet and adagrad_gluon import in either order, and with a numpy that
lacks ``numpy.bool`` (>= 1.24); importing the package neither downloads nor compiles."""

import subprocess
import sys

import pytest

CHECK = ("import mxnet as mx; "
         "assert type(mx.optimizer.create('adagrad_scratch')).__name__ == 'AdagradScratch'")


def run(code: str, **env) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


@pytest.mark.parametrize("order", ["import mxnet; import adagrad_gluon",
                                   "import adagrad_gluon; import mxnet"])
def test_either_import_order(order):
    result = run(f"{order}; {CHECK}")
    assert result.returncode == 0, result.stderr


# numpy 1.20-1.23 serve numpy.bool through a deprecation table; removing the entry makes this
# numpy behave like 1.24+ for the attribute mxnet 1.9.1 needs.
WITHOUT_NP_BOOL = (
    "import numpy; getattr(numpy, '__deprecated_attrs__', {}).pop('bool', None); "
    "numpy.__dict__.pop('bool', None); assert not hasattr(numpy, 'bool'); "
)


def test_the_pth_hook_lets_mxnet_import_first_without_numpy_bool():
    result = run(WITHOUT_NP_BOOL + "import mxnet; import adagrad_gluon; " + CHECK)
    assert result.returncode == 0, result.stderr


def test_without_the_hook_mxnet_would_fail():
    """The control for the test above: the simulation really removes what mxnet needs."""
    result = run("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
                 "if type(f).__name__ != '_RestoreBeforeMxnet']; " + WITHOUT_NP_BOOL
                 + "import mxnet")
    assert result.returncode != 0
    assert "bool" in result.stderr


def test_package_import_restores_numpy_bool_itself():
    result = run("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
                 "if type(f).__name__ != '_RestoreBeforeMxnet']; " + WITHOUT_NP_BOOL
                 + "import adagrad_gluon; " + CHECK)
    assert result.returncode == 0, result.stderr


def test_import_neither_downloads_nor_compiles(tmp_path):
    cache = tmp_path / "cache"
    # the downloader is not even imported; a compile would leave files in the cache
    result = run("import sys, adagrad_gluon; assert 'pooch' not in sys.modules",
                 ADAGRAD_GLUON_CACHE_DIR=str(cache))
    assert result.returncode == 0, result.stderr
    assert not cache.exists() or not any(cache.iterdir())

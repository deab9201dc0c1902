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


def test_the_wheel_alone_imports_and_finds_its_data(tmp_path):
    """What ``pip install .`` installs (not the editable checkout): the package, the numpy
    hook module, the kernels' source and the shipped data all come from the wheel."""
    import os
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(tmp_path), str(root)], capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("adagrad_gluon-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # the .pth hook and its module, top-level (this venv's editable install has its own copy)
    assert (site / "adagrad_gluon_numpy_compat.pth").is_file()
    assert (site / "_adagrad_gluon_numpy_compat.py").is_file()
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "sys.path = [p for p in sys.path if p != sys.argv[2]]; "
            "import adagrad_gluon as ag; "
            "from adagrad_gluon.d2l import data; from adagrad_gluon import kernels; "
            "assert ag.__file__.startswith(sys.argv[1]); "
            "assert kernels.SOURCE.is_file() and kernels.SOURCE.is_relative_to(sys.argv[1]); "
            "it, dim = ag.get_data_ch10(); print(data.airfoil_path(), dim, len(it))")
    done = subprocess.run([sys.executable, "-c", code, str(site), str(root)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ADAGRAD_GLUON_CACHE_DIR": str(tmp_path / "c")})
    assert done.returncode == 0, done.stderr
    path, dim, batches = done.stdout.split()
    assert Path(path).is_relative_to(site) and (dim, batches) == ("5", "150")

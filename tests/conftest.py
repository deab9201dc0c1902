"""Test setup: the shared airfoil copy, a headless matplotlib, Hypothesis's profile."""

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis: each developer run searches new examples (and replays the failures it saved);
# CI (CI=true) runs a fixed, reproducible selection, so that a landing never hangs on luck.
settings.register_profile("ci", derandomize=True, database=None)
settings.load_profile("ci" if os.environ.get("CI") else "default")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

# Point the loader at the shared copy of the data (CI sets this too); a machine without it
# uses the cache and, if needed, downloads the file like a user would.
shared_file = SHARED_DATA / "airfoil_self_noise.dat"
if not os.environ.get("ADAGRAD_GLUON_DATA_DIR") and shared_file.is_file():
    os.environ["ADAGRAD_GLUON_DATA_DIR"] = str(SHARED_DATA)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The directory holding the airfoil data file the tests use."""
    return Path(os.environ["ADAGRAD_GLUON_DATA_DIR"])

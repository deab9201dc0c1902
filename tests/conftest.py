"""Test setup: the data copy shipped with the package, a headless matplotlib, Hypothesis's
profile."""

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis: each developer run searches new examples (and replays the failures it saved);
# CI (CI=true) runs a fixed, reproducible selection, so that a landing never hangs on luck.
settings.register_profile("ci", derandomize=True, database=None)
settings.load_profile("ci" if os.environ.get("CI") else "default")

ROOT = Path(__file__).resolve().parent.parent  # the checkout

# The tests use the airfoil file shipped with the package, as a user's first run does: a
# directory exported by the caller must not stand in for it. (Set before anything imports
# the package, and with it matplotlib.)
os.environ.pop("ADAGRAD_GLUON_DATA_DIR", None)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The directory holding the airfoil data file the tests use: the verified shipped copy."""
    from adagrad_gluon import data

    assert data.sha1_of(data.SHIPPED_FILE) == data.SHA1_CRLF, f"{data.SHIPPED_FILE} is corrupt"
    return data.SHIPPED_FILE.parent

"""The first run on a machine without network: ``adagrad-gluon compare`` as a new user runs it,
with no data directory configured, an empty cache and every connection refused, succeeds with
the data file shipped in the package."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adagrad_gluon import data

EXECUTABLE = Path(sys.executable).with_name("adagrad-gluon")

# Imported by every Python started with this directory on PYTHONPATH: no name lookup and no
# connection can succeed, so a download fails as it does without network.
SITECUSTOMIZE = '''
import socket

def _refuse(*args, **kwargs):
    raise OSError("network disabled by sitecustomize")

socket.getaddrinfo = _refuse
socket.create_connection = _refuse
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
'''


@pytest.fixture
def offline_env(tmp_path):
    """The environment of a new user's first run, offline: ``(env, cache directory)``."""
    site = tmp_path / "offline-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    cache = tmp_path / "empty-cache"
    env = {key: value for key, value in os.environ.items()
           if key not in (data.DATA_DIR_ENV, "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), ADAGRAD_GLUON_CACHE_DIR=str(cache), MPLBACKEND="Agg")
    return env, cache


def run(argv, env, cwd):
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_the_network_is_really_unusable(offline_env, tmp_path):
    env, _ = offline_env
    probe = ("import pooch\n"
             "try:\n"
             f"    pooch.retrieve({data.URL!r}, known_hash=None, path='.')\n"
             "except Exception as exc:\n"
             "    print('failed:', exc)\n")
    done = run([sys.executable, "-c", probe], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("failed:") and "network disabled by sitecustomize" in done.stdout


def test_compare_runs_offline_with_the_shipped_copy(offline_env, tmp_path):
    env, cache = offline_env
    assert EXECUTABLE.is_file(), f"{EXECUTABLE} is missing: pip install -e . installs it"
    done = run([str(EXECUTABLE), "compare", "--epochs", "1", "--quiet"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "(reference)" in done.stdout
    report = json.loads((tmp_path / "adagrad-gluon-out" / "compare.json").read_text())
    assert report["data"]["file"] == str(data.SHIPPED_FILE)
    assert report["data"]["sha1"] == data.SHA1_CRLF
    assert not (cache / data.FILE_NAME).exists()  # nothing was downloaded

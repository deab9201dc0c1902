"""get_data_ch10: where the file comes from, its verification, parsing and batching."""

import shutil
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest

from adagrad_gluon import data
from adagrad_gluon.data import DataFileError, DataFileWarning, get_data_ch10, read_airfoil


@pytest.fixture
def private_cache(monkeypatch, tmp_path):
    """No ADAGRAD_GLUON_DATA_DIR, and an empty private cache directory."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(cache))
    return cache


@pytest.fixture
def no_data_env(private_cache, monkeypatch, tmp_path):
    """As ``private_cache``, and no copy shipped with the package: the cache and download path."""
    monkeypatch.setattr(data, "SHIPPED_FILE", tmp_path / "not-shipped" / data.FILE_NAME)
    return private_cache


@pytest.fixture
def corrupt_shipped_copy(private_cache, monkeypatch, tmp_path, data_dir):
    """As ``private_cache``, with a shipped copy that fails its checksum (one digit changed)."""
    corrupt = tmp_path / "shipped" / data.FILE_NAME
    corrupt.parent.mkdir()
    corrupt.write_bytes((data_dir / data.FILE_NAME).read_bytes().replace(b"800", b"801", 1))
    monkeypatch.setattr(data, "SHIPPED_FILE", corrupt)
    return corrupt


@pytest.fixture
def offline(monkeypatch):
    """No network: every name lookup and connection fails, as on a machine without one."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# -- the copy shipped with the package -----------------------------------------------------

def test_the_shipped_copy_is_the_hubs_file_with_its_attribution():
    assert data.SHIPPED_FILE.parent.name == "data_files"
    assert data.SHIPPED_FILE.parent.parent == Path(data.__file__).parent  # inside the package
    assert data.sha1_of(data.SHIPPED_FILE) == data.SHA1_CRLF  # byte for byte, CRLF endings
    assert read_airfoil(data.SHIPPED_FILE).shape == (data.NUM_ROWS, data.NUM_COLUMNS)
    attribution = (data.SHIPPED_FILE.parent / "README.md").read_text()
    for needed in ("Brooks", "Pope", "Marcolini", "1989", "UCI Machine Learning Repository",
                   "CC BY 4.0", "https://creativecommons.org/licenses/by/4.0/", "Unmodified"):
        assert needed in attribution


def test_without_configuration_the_shipped_copy_is_used_offline(private_cache, offline):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DataFileWarning: the shipped copy is intact
        assert data.airfoil_path() == data.SHIPPED_FILE
        data_iter, feature_dim = get_data_ch10()
    assert feature_dim == 5 and len(data_iter) == 150
    assert not private_cache.exists()  # nothing cached, nothing downloaded


def test_a_corrupt_shipped_copy_falls_back_to_the_cache(corrupt_shipped_copy, private_cache,
                                                         data_dir, offline):
    private_cache.mkdir()
    shutil.copy(data_dir / data.FILE_NAME, private_cache / data.FILE_NAME)
    with pytest.warns(DataFileWarning, match=rf"{corrupt_shipped_copy}, is corrupt.*SHA-1"):
        assert data.airfoil_path() == private_cache / data.FILE_NAME


def test_a_corrupt_shipped_copy_falls_back_to_the_download(corrupt_shipped_copy, private_cache,
                                                            data_dir, monkeypatch):
    fetched = []

    def fake_retrieve(url, known_hash, fname, path, **kwargs):
        fetched.append(url)
        path.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_dir / data.FILE_NAME, path / fname)
        return str(path / fname)

    monkeypatch.setattr("pooch.retrieve", fake_retrieve)
    with pytest.warns(DataFileWarning, match="is corrupt"):
        assert data.airfoil_path() == private_cache / data.FILE_NAME
    assert fetched == [data.URL]


@pytest.mark.parametrize("state", ["corrupt", "missing"])
def test_an_unusable_shipped_copy_offline_says_how_to_provide_the_file(
        state, corrupt_shipped_copy, private_cache, offline):
    if state == "missing":
        corrupt_shipped_copy.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataFileWarning)
        with pytest.raises(DataFileError) as info:
            get_data_ch10()  # the real pooch, with the network refused
    message = str(info.value)
    assert f"{corrupt_shipped_copy}, is {state}" in message
    assert data.URL in message and str(private_cache / data.FILE_NAME) in message
    assert "reinstall adagrad-gluon" in message
    assert "data_dir=" in message and data.DATA_DIR_ENV in message


# -- the other sources -----------------------------------------------------------------------


def test_chapter_batches_and_standardization():
    data_iter, feature_dim = get_data_ch10(batch_size=10, n=1500)
    assert feature_dim == 5
    assert len(data_iter) == 150
    batches = list(data_iter)
    assert len(batches) == 150
    X, y = batches[0]
    assert X.shape == (10, 5) and y.shape == (10,)
    assert X.dtype == np.float32 and y.dtype == np.float32
    features, labels = (a.asnumpy() for a in data_iter.full_batch())
    # standardized over all 1503 rows (as d2l does), then the first 1500 kept
    full = read_airfoil(data.airfoil_path())
    standardized = (full - full.mean(axis=0)) / full.std(axis=0)
    np.testing.assert_allclose(features, standardized[:1500, :5], rtol=1e-6)
    np.testing.assert_allclose(labels, standardized[:1500, 5], rtol=1e-6)
    np.testing.assert_allclose(standardized.mean(axis=0), 0.0, atol=1e-4)  # float32 sums
    np.testing.assert_allclose(standardized.std(axis=0), 1.0, atol=1e-5)
    # one pass visits every example once
    seen = np.sort(np.concatenate([b[1].asnumpy() for b in batches]))
    np.testing.assert_array_equal(seen, np.sort(labels))


def test_partial_last_batch_and_small_n():
    data_iter, _ = get_data_ch10(batch_size=7, n=100)
    sizes = [X.shape[0] for X, _ in data_iter]
    assert sizes == [7] * 14 + [2] and len(data_iter) == 15


def test_batch_order_follows_numpy_seed():
    data_iter, _ = get_data_ch10(batch_size=10, n=50)
    np.random.seed(3)
    first = [y.asnumpy() for _, y in data_iter]
    np.random.seed(3)
    again = [y.asnumpy() for _, y in data_iter]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    shuffled = np.concatenate(first)
    assert not np.array_equal(shuffled, data_iter.full_batch()[1].asnumpy())


@pytest.mark.parametrize("kwargs, error, name", [
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": -3}, ValueError, "batch_size"),
    ({"batch_size": 2.5}, TypeError, "batch_size"),
    ({"n": 0}, ValueError, "n must"),
    ({"n": 1504}, ValueError, "n must be between 1 and 1503"),
    ({"n": "10"}, TypeError, "n must"),
])
def test_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        get_data_ch10(**kwargs)


def test_explicit_data_dir_wins_over_environment(monkeypatch, data_dir, tmp_path):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "nowhere"))
    assert data.airfoil_path(data_dir) == data_dir / data.FILE_NAME
    with pytest.raises(DataFileError, match=data.DATA_DIR_ENV):
        data.airfoil_path()


def test_missing_directory_or_file_is_a_clear_oserror(tmp_path):
    with pytest.raises(OSError, match=r"not a directory.*data_dir=.*ADAGRAD_GLUON_DATA_DIR"):
        get_data_ch10(data_dir=tmp_path / "missing")
    with pytest.raises(DataFileError, match=r"airfoil_self_noise\.dat does not exist"):
        get_data_ch10(data_dir=tmp_path)


def test_corrupt_file_fails_the_checksum(tmp_path, data_dir):
    bad = tmp_path / data.FILE_NAME
    content = (data_dir / data.FILE_NAME).read_bytes()
    bad.write_bytes(content.replace(b"800", b"801", 1))
    with pytest.raises(DataFileError, match=rf"{bad}.*SHA-1.*{data.SHA1_CRLF}"):
        get_data_ch10(data_dir=tmp_path)


def test_lf_line_endings_are_accepted(tmp_path, data_dir):
    lf = tmp_path / data.FILE_NAME
    lf.write_bytes((data_dir / data.FILE_NAME).read_bytes().replace(b"\r\n", b"\n"))
    assert data.sha1_of(lf) == data.SHA1_LF
    it_lf, _ = get_data_ch10(data_dir=tmp_path)
    it_crlf, _ = get_data_ch10(data_dir=data_dir)
    np.testing.assert_array_equal(it_lf.full_batch()[0].asnumpy(),
                                  it_crlf.full_batch()[0].asnumpy())


def test_download_goes_to_the_cache_and_is_reused(no_data_env, data_dir, monkeypatch):
    calls = []

    def fake_retrieve(url, known_hash, fname, path, **kwargs):
        calls.append((url, known_hash))
        path.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_dir / data.FILE_NAME, path / fname)
        return str(path / fname)

    monkeypatch.setattr("pooch.retrieve", fake_retrieve)
    assert data.airfoil_path() == no_data_env / data.FILE_NAME
    assert calls == [(data.URL, f"sha1:{data.SHA1_CRLF}")]
    assert data.airfoil_path() == no_data_env / data.FILE_NAME
    assert len(calls) == 1  # verified cache hit: no second download


def test_corrupt_cached_file_is_not_used(no_data_env, data_dir, monkeypatch):
    no_data_env.mkdir()
    (no_data_env / data.FILE_NAME).write_bytes(b"1\t2\t3\t4\t5\t6\r\n")  # truncated download
    fetched = []

    def fake_retrieve(url, known_hash, fname, path, **kwargs):
        fetched.append(fname)
        shutil.copy(data_dir / data.FILE_NAME, path / fname)
        return str(path / fname)

    monkeypatch.setattr("pooch.retrieve", fake_retrieve)
    assert data.sha1_of(data.airfoil_path()) == data.SHA1_CRLF
    assert fetched == [data.FILE_NAME]


def test_no_file_and_no_network_says_how_to_provide_it(no_data_env, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr("pooch.retrieve", offline)
    with pytest.raises(DataFileError) as info:
        get_data_ch10()
    message = str(info.value)
    assert data.URL in message and "Name or service not known" in message
    assert "data_dir=" in message and data.DATA_DIR_ENV in message


@pytest.mark.parametrize("content, match", [
    (b"", "holds no rows of 6 numbers"),
    (b"\r\n\r\n", "holds no rows of 6 numbers"),
    (b"1\t2\t3\r\n", "line 1: 3 tab-separated columns, expected 6"),
    (b"1\t2\t3\t4\t5\t6\r\n1\t2\t3\t4\t5\tx\r\n", "line 2 does not parse"),
    (b"1\t2\t3\t4\t5\tnan\r\n", "non-finite"),
    (b"1\t2\t3\t4\t5\t1e39\r\n", "beyond float32"),
    (b"1\t2\t3\t4\t5\t\xff\r\n", "not ASCII"),
])
def test_read_airfoil_rejects_malformed_files(tmp_path, content, match):
    path = tmp_path / "bad.dat"
    path.write_bytes(content)
    with pytest.raises(DataFileError, match=match):
        read_airfoil(path)

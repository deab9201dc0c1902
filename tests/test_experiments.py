"""The experiments as functions (adagrad_gluon.d2l.experiments) and their reports
(adagrad_gluon.d2l.report): results without printing, tables and strict JSON."""

import json
import math

import numpy as np
import pytest

from adagrad_gluon.d2l import report
from adagrad_gluon.d2l.data import DataFileError, sha1_of
from adagrad_gluon.d2l.diagnostics import EffectiveLRRecorder
from adagrad_gluon.d2l.experiments import (
    AirfoilData,
    Comparison,
    Remedy,
    Sweep,
    compare,
    load_data,
    max_param_diff,
    remedy,
    sweep,
    trajectory,
)
from adagrad_gluon.d2l.training import TrainResult

N, BATCH = 300, 10  # a quick run: 30 batches an epoch


@pytest.fixture(scope="module")
def data():
    return load_data(BATCH, N)


@pytest.fixture(scope="module")
def comparison(data):
    return compare(data, lr=0.1, epochs=1, seed=0)


def assert_same_runs(first, second):
    assert [r.name for r in first] == [r.name for r in second]
    for a, b in zip(first, second, strict=True):
        assert a.losses == b.losses
        for key in b.params:
            np.testing.assert_array_equal(a.params[key], b.params[key])


# -- experiments -----------------------------------------------------------------------------

def test_load_data_describes_the_file(data, data_dir):
    path = data_dir / "airfoil_self_noise.dat"
    assert (data.file, data.sha1) == (str(path), sha1_of(path))
    assert (data.examples, data.feature_dim, data.batch_size) == (N, 5, BATCH)
    assert len(data.data_iter) == N // BATCH


def test_load_data_reports_a_missing_file(tmp_path):
    with pytest.raises(DataFileError, match="airfoil_self_noise.dat"):
        load_data(data_dir=tmp_path)


def test_compare_returns_three_runs_and_their_differences(comparison, data):
    assert isinstance(comparison, Comparison)
    assert [r.name for r in comparison.runs] == ["scratch", "adagrad_scratch", "adagrad"]
    scratch, ours, builtin = comparison.runs
    assert comparison.diffs[1] == 0.0  # adagrad_scratch is bit-identical to the built-in
    assert comparison.diffs[2] == 0.0  # the reference against itself
    assert 0.0 <= comparison.diffs[0] < 1e-6  # float32 rounding of another formula order
    assert comparison.diffs == [max_param_diff(r, builtin) for r in comparison.runs]
    assert (comparison.lr, comparison.epochs, comparison.seed) == (0.1, 1, 0)
    assert (comparison.reference, comparison.eps, comparison.data) == ("adagrad", 1e-6, data)
    # the recorder follows the adagrad_scratch run, one record per recorded loss
    assert comparison.recorder.epochs == [epoch for epoch, _ in ours.losses]


def test_equal_seeds_give_equal_runs_and_other_seeds_do_not(comparison, data):
    again = compare(data, lr=0.1, epochs=1, seed=0)
    assert_same_runs(again.runs, comparison.runs)
    other = compare(data, lr=0.1, epochs=1, seed=1)
    assert other.runs[0].losses != comparison.runs[0].losses


def test_progress_gets_one_bar_per_run_told_of_every_batch(data):
    bars = []

    class Bar:
        def __init__(self, name, total):
            self.name, self.total, self.count = name, total, 0
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.count += n

    result = sweep(data, lrs=[0.1, 0.4], epochs=2, seed=0, progress=Bar)
    assert [(bar.name, bar.total, bar.count) for bar in bars] == [
        ("lr=0.1", 2 * N // BATCH, 2 * N // BATCH), ("lr=0.4", 2 * N // BATCH, 2 * N // BATCH)]
    assert [r.name for r in result.runs] == ["lr=0.1", "lr=0.4"]


def test_sweep_picks_the_lowest_finite_loss(data):
    result = sweep(data, lrs=[0.01, 1e38, 0.4], epochs=1, seed=0)
    assert isinstance(result, Sweep)
    assert result.lrs == [0.01, 1e38, 0.4]
    assert math.isnan(result.runs[1].final_loss)  # diverged
    finite = {i: r.final_loss for i, r in enumerate(result.runs) if math.isfinite(r.final_loss)}
    assert result.best == min(finite, key=finite.get)
    assert result.best_lr == result.lrs[result.best]
    assert (result.epochs, result.seed, result.data) == (1, 0, data)


def test_a_sweep_run_does_not_depend_on_the_runs_before_it(data):
    """Every run starts from the seed: lr 0.1 trains alike whether it comes first or not."""
    first = sweep(data, lrs=[0.1], epochs=1, seed=3)
    second = sweep(data, lrs=[0.4, 0.1], epochs=1, seed=3)
    assert_same_runs(first.runs, second.runs[1:])


def test_remedy_records_both_runs_effective_rates(data):
    result = remedy(data, lr=0.1, rmsprop_lr=0.01, gamma=0.9, epochs=2, seed=0)
    assert isinstance(result, Remedy)
    assert [r.name for r in result.runs] == ["adagrad", "rmsprop"]
    assert result.hyperparameters == [{"lr": 0.1}, {"lr": 0.01, "gamma": 0.9}]
    for run, recorder in zip(result.runs, result.recorders, strict=True):
        assert recorder.epochs == [epoch for epoch, _ in run.losses]
    adagrad_rates = np.hstack(list(result.recorders[0].series().values()))
    assert np.all(np.diff(adagrad_rates, axis=0) <= 0)  # a sum of squares only grows


def test_trajectory_is_the_chapters_2d_example():
    result = trajectory(eta=2, steps=20)
    assert (result.eta, result.steps, len(result.path)) == (2, 20, 21)
    assert report.trajectory_line(result) == "epoch 20, x1 -0.002295, x2 -0.000000"


# -- report ----------------------------------------------------------------------------------

def fake_run(name, final_loss, seconds=0.5):
    return TrainResult(name, final_loss, [(1.0, final_loss)], seconds,
                       {"weight": np.zeros(5), "bias": np.zeros(1)})


FAKE_DATA = AirfoilData(None, "/data/airfoil_self_noise.dat", "ab12", 300, 5, 10)


def test_format_table_aligns_and_strips_trailing_blanks():
    table = report.format_table(["lr", "loss", "best"], [["0.1", "0.25", ""], ["10", "nan", "*"]])
    assert table.splitlines() == [
        "lr   loss  best",
        "---  ----  ----",
        "0.1  0.25",
        "10    nan     *",
    ]


def test_comparison_table():
    runs = [fake_run("scratch", 0.2431234), fake_run("adagrad_scratch", 0.2431234, 1.25),
            fake_run("adagrad", 0.2431234)]
    result = Comparison(runs, [2.5e-8, 0.0, 0.0], EffectiveLRRecorder(), FAKE_DATA, 0.1, 2, 0)
    assert report.comparison_table(result).splitlines() == [
        "Adagrad on the airfoil data (300 examples, batch 10): lr 0.1, eps 1e-06, 2 epoch(s), "
        "seed 0",
        "run              final loss  sec/epoch  max |Δparam| vs adagrad",
        "---------------  ----------  ---------  -----------------------",
        "scratch            0.243123      0.500                 2.50e-08",
        "adagrad_scratch    0.243123      1.250                 0.00e+00",
        "adagrad            0.243123      0.500              (reference)",
    ]


def test_sweep_table_shows_a_diverged_run_and_stars_the_best():
    result = Sweep([fake_run("lr=0.1", 0.3), fake_run("lr=1e+38", math.nan)], [0.1, 1e38], 0,
                   FAKE_DATA, 1, 7)
    assert report.sweep_table(result).splitlines() == [
        "adagrad_scratch on the airfoil data (300 examples, batch 10): 1 epoch(s), seed 7",
        "lr     final loss  sec/epoch  best",
        "-----  ----------  ---------  ----",
        "0.1      0.300000      0.500     *",
        "1e+38         nan      0.500",
    ]


def test_json_safe_replaces_every_non_finite_float():
    value = {"a": [1.0, math.nan, (math.inf, -math.inf)], "b": {"c": math.nan, "d": 2},
             "e": "nan", "f": None}
    assert report.json_safe(value) == {"a": [1.0, None, [None, None]], "b": {"c": None, "d": 2},
                                       "e": "nan", "f": None}


def test_write_json_is_strict_and_ordered(tmp_path):
    path = report.write_json(tmp_path / "x.json", "sweep", {"runs": [math.inf], "best": 1},
                             {"out": "dir"})
    assert path == tmp_path / "x.json"

    def no_constants(name):
        raise AssertionError(f"{name} in the JSON")

    document = json.loads(path.read_text(), parse_constant=no_constants)
    assert list(document) == ["command", "runs", "best", "options", "versions"]
    assert document["runs"] == [None]
    assert set(document["versions"]) == {"adagrad_gluon", "mxnet", "numpy", "python"}


def test_run_record_is_plain_json_data():
    record = report.run_record(fake_run("scratch", 0.25))
    assert json.loads(json.dumps(record)) == record
    assert record["params"] == {"weight": [0.0] * 5, "bias": [0.0]}


def test_write_comparison_saves_the_figures_then_the_json(comparison, tmp_path):
    paths = report.write_comparison(comparison, tmp_path, {"lr": 0.1})
    assert paths == [tmp_path / "compare.json", tmp_path / "loss_curves.png",
                     tmp_path / "effective_lr.png"]
    document = json.loads(paths[0].read_text())
    assert document["figures"] == ["loss_curves.png", "effective_lr.png"]
    assert document["options"] == {"lr": 0.1}
    assert document["data"] == report.data_record(comparison.data)
    assert [run["max_abs_param_diff_vs_adagrad"] for run in document["runs"]] == comparison.diffs
    assert all(path.stat().st_size > 0 for path in paths)


# -- bad arguments: a clear error before any training ----------------------------------------

BAD_ARGUMENTS = [
    (compare, {"lr": 0}, ValueError, "lr must be > 0.0"),
    (compare, {"lr": math.nan}, ValueError, "lr must be finite"),
    (compare, {"lr": "0.1"}, TypeError, "lr must be a real number"),
    (compare, {"epochs": 0}, ValueError, "epochs must be >= 1"),
    (compare, {"epochs": 1.5}, TypeError, "epochs must be an integer"),
    (sweep, {"lrs": []}, ValueError, "at least one learning rate"),
    (sweep, {"lrs": [0.1, -1]}, ValueError, r"lrs\[1\] must be > 0.0"),
    (remedy, {"gamma": 1}, ValueError, "gamma must be < 1"),
    (remedy, {"gamma": -0.1}, ValueError, "gamma must be >= 0.0"),
    (remedy, {"rmsprop_lr": math.inf}, ValueError, "rmsprop_lr must be finite"),
]


def no_training(name, total):
    raise AssertionError(f"{name} started training")


@pytest.mark.parametrize("experiment, kwargs, error, message", BAD_ARGUMENTS)
def test_bad_arguments_are_refused_before_training(data, experiment, kwargs, error, message):
    with pytest.raises(error, match=message):
        experiment(data, progress=no_training, **kwargs)


@pytest.mark.parametrize("experiment", [compare, sweep, remedy])
def test_data_must_come_from_load_data(data, experiment):
    with pytest.raises(TypeError, match="data must be an AirfoilData"):
        experiment((data.data_iter, 5), progress=no_training)


def test_a_bad_trajectory_step_size():
    with pytest.raises(ValueError, match="eta must be > 0.0"):
        trajectory(eta=-2)

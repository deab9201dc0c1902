"""The ``adagrad-gluon`` console script: every subcommand, its JSON, its help and its errors."""

import contextlib
import io
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from mxnet.base import MXNetError

from adagrad_gluon import cli, validation
from adagrad_gluon.cli import build_parser, format_table, main
from adagrad_gluon.d2l import experiments

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_PNG_BYTES = 150_000
EXECUTABLE = Path(sys.executable).with_name("adagrad-gluon")
BOOK_RANGE = (0.235, 0.250)  # the chapter's final loss, 0.243 in the book
SMALL = ["--epochs", "1", "--n", "300", "--quiet"]  # a quick run where the numbers don't matter


def run_main(argv):
    """``main(argv)`` with stdout and stderr captured: ``(exit code, stdout, stderr)``."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    return code, stdout.getvalue(), stderr.getvalue()


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert 5_000 < len(data) < MAX_PNG_BYTES


def assert_run_schema(run: dict, epochs: int) -> None:
    assert isinstance(run["name"], str)
    assert isinstance(run["final_loss"], float) and math.isfinite(run["final_loss"])
    assert isinstance(run["sec_per_epoch"], float) and run["sec_per_epoch"] > 0
    losses = run["losses"]
    assert losses and all(len(pair) == 2 for pair in losses)
    fractions = [fraction for fraction, _ in losses]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(epochs)
    assert all(isinstance(loss, float) and loss > 0 for _, loss in losses)
    assert run["final_loss"] == losses[-1][1]
    assert set(run["params"]) == {"weight", "bias"}
    assert len(run["params"]["weight"]) == 5 and len(run["params"]["bias"]) == 1


def assert_common_schema(report: dict, command: str, out: Path) -> None:
    assert report["command"] == command
    assert set(report["versions"]) == {"adagrad_gluon", "mxnet", "numpy", "python"}
    assert report["versions"]["mxnet"] == "1.9.1"
    assert report["data"]["file"].endswith("airfoil_self_noise.dat")
    assert report["data"]["feature_dim"] == 5
    assert report["options"]["out"] == str(out)
    for name in report["figures"]:
        assert_png(out / name)


# -- trajectory ------------------------------------------------------------------------------

@pytest.mark.parametrize("eta, line", [
    (None, "epoch 20, x1 -2.382563, x2 -0.158591"),
    ("2", "epoch 20, x1 -0.002295, x2 -0.000000"),
])
def test_trajectory_prints_the_chapters_line_and_draws_it(tmp_path, eta, line):
    argv = ["trajectory", "--out", str(tmp_path)] + (["--eta", eta] if eta else [])
    code, out, err = run_main(argv)
    assert code == 0 and err == ""
    png = tmp_path / f"trajectory_eta{eta or '0.4'}.png"
    assert out.splitlines() == [line, f"wrote {png}"]
    assert_png(png)


def test_trajectory_steps_and_a_new_output_directory(tmp_path):
    out = tmp_path / "new" / "nested"
    code, stdout, _ = run_main(["trajectory", "--steps", "3", "--eta", "1", "--out", str(out)])
    assert code == 0
    assert stdout.startswith("epoch 3, x1 ")
    assert_png(out / "trajectory_eta1.png")


# -- compare ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One ``compare`` run with the default options, as a new user runs it."""
    out = tmp_path_factory.mktemp("compare")
    code, stdout, stderr = run_main(["compare", "--out", str(out), "--quiet"])
    return code, stdout, stderr, out


def test_compare_prints_the_table(compared):
    code, stdout, stderr, out = compared
    assert code == 0
    assert stderr == ""  # --quiet: no progress bars
    lines = stdout.splitlines()
    assert lines[0].startswith("Adagrad on the airfoil data (1500 examples, batch 10): lr 0.1")
    assert lines[1].split() == ["run", "final", "loss", "sec/epoch", "max", "|Δparam|", "vs",
                                "adagrad"]
    rows = {line.split()[0]: line.split() for line in lines[3:6]}
    assert list(rows) == ["scratch", "adagrad_scratch", "adagrad"]
    for row in rows.values():
        assert BOOK_RANGE[0] <= float(row[1]) <= BOOK_RANGE[1]
        assert float(row[2]) > 0
    assert float(rows["scratch"][3]) < 1e-6  # float32 rounding of another formula order
    assert float(rows["adagrad_scratch"][3]) == 0.0  # bit-identical to the built-in
    assert rows["adagrad"][3] == "(reference)"
    assert lines[6] == (f"wrote {out / 'compare.json'}, {out / 'loss_curves.png'}, "
                        f"{out / 'effective_lr.png'}")


def test_compare_json_schema(compared):
    _, stdout, _, out = compared
    report = json.loads((out / "compare.json").read_text())
    assert_common_schema(report, "compare", out)
    assert [run["name"] for run in report["runs"]] == ["scratch", "adagrad_scratch", "adagrad"]
    for run in report["runs"]:
        assert_run_schema(run, epochs=2)
        assert len(run["losses"]) == 15  # every 200 of 2 x 1500 examples
    diffs = {run["name"]: run["max_abs_param_diff_vs_adagrad"] for run in report["runs"]}
    assert diffs["adagrad"] == 0.0 and diffs["adagrad_scratch"] == 0.0
    assert 0 <= diffs["scratch"] < 1e-6
    assert report["reference"] == "adagrad" and report["eps"] == 1e-6
    assert report["options"] == {"lr": 0.1, "epochs": 2, "batch_size": 10, "n": 1500,
                                 "seed": 0, "data_dir": None, "out": str(out), "quiet": True}
    assert report["figures"] == ["loss_curves.png", "effective_lr.png"]
    # the effective learning rates of the adagrad_scratch run, one record per recorded loss
    rates = report["effective_lr"]
    assert rates["run"] == "adagrad_scratch"
    assert rates["epoch_fraction"] == [pair[0] for pair in report["runs"][1]["losses"]]
    assert {len(values[0]) for values in rates["rates"].values()} == {1, 5}
    for values in rates["rates"].values():  # Adagrad's rates never grow
        assert np.all(np.diff(np.array(values), axis=0) <= 0)


def test_compare_is_reproducible_and_shows_progress(compared, tmp_path):
    _, stdout, _, out = compared
    code, again, stderr = run_main(["compare", "--out", str(tmp_path)])
    assert code == 0
    # same seed, same numbers (the timings aside)
    first = json.loads((out / "compare.json").read_text())
    second = json.loads((tmp_path / "compare.json").read_text())
    assert [r["losses"] for r in first["runs"]] == [r["losses"] for r in second["runs"]]
    # tqdm bars on stderr without --quiet
    assert "adagrad_scratch" in stderr and "/300" in stderr


def test_compare_options_reach_the_training(tmp_path, data_dir):
    code, stdout, _ = run_main(["compare", "--lr", "0.4", "--epochs", "1", "--batch-size", "20",
                                "--n", "400", "--seed", "3", "--data-dir", str(data_dir),
                                "--out", str(tmp_path), "--quiet"])
    assert code == 0
    assert stdout.startswith("Adagrad on the airfoil data (400 examples, batch 20): lr 0.4, "
                             "eps 1e-06, 1 epoch(s), seed 3")
    report = json.loads((tmp_path / "compare.json").read_text())
    assert report["data"]["examples"] == 400 and report["data"]["batch_size"] == 20
    assert report["options"]["data_dir"] == str(data_dir)
    for run in report["runs"]:
        assert_run_schema(run, epochs=1)
        assert len(run["losses"]) == 2  # after 200 and 400 examples


# -- sweep -----------------------------------------------------------------------------------

def test_sweep_table_json_and_picture(tmp_path):
    code, stdout, _ = run_main(["sweep", "--lrs", "0.01,0.1,2", "--out", str(tmp_path)] + SMALL)
    assert code == 0
    lines = stdout.splitlines()
    assert lines[1].split() == ["lr", "final", "loss", "sec/epoch", "best"]
    rows = [line.split() for line in lines[3:6]]
    assert [row[0] for row in rows] == ["0.01", "0.1", "2"]
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert_common_schema(report, "sweep", tmp_path)
    assert [run["lr"] for run in report["runs"]] == [0.01, 0.1, 2.0]
    assert [run["name"] for run in report["runs"]] == ["lr=0.01", "lr=0.1", "lr=2"]
    for run, row in zip(report["runs"], rows, strict=True):
        assert_run_schema(run, epochs=1)
        assert float(row[1]) == pytest.approx(run["final_loss"], abs=1e-6)
    best = min(report["runs"], key=lambda run: run["final_loss"])
    assert report["best_lr"] == best["lr"]
    assert [row[-1] == "*" for row in rows] == [run is best for run in report["runs"]]
    assert report["figures"] == ["sweep.png"]


def test_a_diverged_run_is_reported_not_a_crash(tmp_path):
    code, stdout, _ = run_main(["sweep", "--lrs", "0.1,1e38", "--out", str(tmp_path)] + SMALL)
    assert code == 0
    rows = [line.split() for line in stdout.splitlines()[3:5]]
    assert rows[0][-1] == "*" and rows[1][:2] == ["1e+38", "nan"]
    report = json.loads((tmp_path / "sweep.json").read_text())  # strict JSON: null, not NaN
    diverged = report["runs"][1]
    assert diverged["final_loss"] is None and diverged["losses"][-1][1] is None
    assert report["best_lr"] == 0.1
    assert_png(tmp_path / "sweep.png")


def test_a_diverged_comparison_is_reported_with_its_pictures(tmp_path):
    code, stdout, stderr = run_main(["compare", "--lr", "1e38", "--out", str(tmp_path)] + SMALL)
    assert code == 0, stderr
    rows = [line.split() for line in stdout.splitlines()[3:6]]
    assert [row[:2] for row in rows] == [["scratch", "nan"], ["adagrad_scratch", "nan"],
                                         ["adagrad", "nan"]]
    report = json.loads((tmp_path / "compare.json").read_text())  # strict JSON: null, not NaN
    assert [run["final_loss"] for run in report["runs"]] == [None, None, None]
    assert_png(tmp_path / "loss_curves.png")
    assert_png(tmp_path / "effective_lr.png")


def test_an_overflowing_trajectory_is_one_line_not_a_traceback(tmp_path):
    code, _, stderr = run_main(["trajectory", "--eta", "1e160", "--out", str(tmp_path)])
    assert code == 1
    assert stderr.count("\n") == 1 and "overflowed" in stderr and "Traceback" not in stderr


def test_sweep_default_learning_rates():
    args = build_parser().parse_args(["sweep"])
    assert args.lrs == [0.01, 0.1, 0.4, 1.0, 2.0]


# -- remedy ----------------------------------------------------------------------------------

def test_remedy_table_json_and_picture(tmp_path):
    code, stdout, _ = run_main(["remedy", "--out", str(tmp_path), "--epochs", "2", "--quiet"])
    assert code == 0
    lines = stdout.splitlines()
    assert [line.split()[0] for line in lines[3:5]] == ["adagrad", "rmsprop"]
    report = json.loads((tmp_path / "remedy.json").read_text())
    assert_common_schema(report, "remedy", tmp_path)
    adagrad, rmsprop = report["runs"]
    assert adagrad["hyperparameters"] == {"lr": 0.1}
    assert rmsprop["hyperparameters"] == {"lr": 0.01, "gamma": 0.9}
    for run in report["runs"]:
        assert_run_schema(run, epochs=2)
        assert run["effective_lr"]["epoch_fraction"] == [pair[0] for pair in run["losses"]]

    def last_to_first(run):
        """The median over coordinates of (last recorded rate / first recorded rate)."""
        rates = np.hstack([np.array(v) for v in run["effective_lr"]["rates"].values()])
        return float(np.median(rates[-1] / rates[0]))

    # Adagrad's rates have fallen to about 1/sqrt(15) after 15 records; the leaky ones have not
    assert last_to_first(adagrad) < 0.5
    assert last_to_first(rmsprop) > 0.7
    assert report["figures"] == ["remedy.png"]


# -- help, errors, extension -----------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["compare", "--help"], ["trajectory", "--help"],
                                  ["sweep", "--help"], ["remedy", "--help"]])
def test_help(argv):
    code, stdout, stderr = run_main(argv)
    assert code == 0 and stderr == ""
    assert stdout.startswith("usage: adagrad-gluon")
    if argv[0] == "--help":
        for command in ("compare", "trajectory", "sweep", "remedy"):
            assert command in stdout


def test_version():
    code, stdout, _ = run_main(["--version"])
    assert code == 0 and stdout.strip() == "adagrad-gluon 0.1.0"


BAD_ARGUMENTS = [
    (["compare", "--lr", "-0.1"], "argument --lr: value must be > 0.0, got -0.1"),
    (["compare", "--lr", "0"], "argument --lr: value must be > 0.0"),
    (["compare", "--lr", "nan"], "argument --lr: value must be finite"),
    (["compare", "--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
    (["compare", "--epochs", "0"], "argument --epochs: value must be >= 1, got 0"),
    (["compare", "--epochs", "1.5"], "argument --epochs: expected an integer"),
    (["compare", "--batch-size", "-3"], "argument --batch-size: value must be >= 1"),
    (["compare", "--n", "1504"], "argument --n: value must be at most 1503"),
    (["compare", "--seed", "-1"], "argument --seed: value must be in 0 .. 2**32 - 1"),
    (["compare", "--data-dir", "/no/such/dir"],
     "argument --data-dir: /no/such/dir is not an existing directory"),
    (["compare", "--unknown"], "unrecognized arguments: --unknown"),
    (["trajectory", "--eta", "-2"], "argument --eta: value must be > 0.0"),
    (["trajectory", "--steps", "0"], "argument --steps: value must be >= 1"),
    (["sweep", "--lrs", "0.1,x"], "argument --lrs: expected a number, got 'x'"),
    (["sweep", "--lrs", "0.1,,1"], "argument --lrs: expected comma-separated numbers"),
    (["sweep", "--lrs", ""], "argument --lrs: expected comma-separated numbers"),
    (["sweep", "--lrs", "0.1,0.1"], "argument --lrs: learning rates must be distinct"),
    (["sweep", "--lrs=0.1,-1"], "argument --lrs: learning rate '-1' must be > 0.0"),
    (["sweep", "--lrs", "0.1,inf"], "argument --lrs: learning rate 'inf' must be finite"),
    (["sweep", "--epochs", "0"], "argument --epochs: value must be >= 1"),
    (["remedy", "--gamma", "1"], "argument --gamma: value must be < 1"),
    (["remedy", "--gamma", "-0.5"], "argument --gamma: value must be >= 0.0"),
    (["remedy", "--rmsprop-lr", "-1"], "argument --rmsprop-lr: value must be > 0.0"),
    # learning rates that float32, the training's precision, turns into inf or 0 (or subnormal)
    (["compare", "--lr", "1e300"],
     "argument --lr: value must be between 1.18e-38 and 3.4e+38 (the training runs in float32)"),
    (["compare", "--lr", "1e-39"], "argument --lr: value must be between 1.18e-38 and 3.4e+38"),
    (["sweep", "--lrs", "0.1,1e-320"],
     "argument --lrs: learning rate '1e-320' must be between 1.18e-38 and 3.4e+38"),
    (["sweep", "--lrs", "1e39"], "argument --lrs: learning rate '1e39' must be between"),
    (["remedy", "--lr", "1e300"], "argument --lr: value must be between 1.18e-38 and 3.4e+38"),
    (["remedy", "--rmsprop-lr", "1e-300"], "argument --rmsprop-lr: value must be between"),
    (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
]


@pytest.mark.parametrize("argv, message", BAD_ARGUMENTS)
def test_bad_arguments_get_one_line_and_exit_code_2(argv, message, tmp_path):
    code, stdout, stderr = run_main(argv + ["--out", str(tmp_path)] if argv else argv)
    assert code == 2
    assert stdout == ""
    assert stderr.count("\n") == 1 and stderr.endswith("\n")
    assert stderr.startswith("adagrad-gluon")
    assert f"error: {message}" in stderr
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


def test_learning_rates_at_the_edges_of_float32():
    assert validation.LR_MIN == float(np.finfo(np.float32).tiny)
    assert validation.LR_MAX == float(np.finfo(np.float32).max)
    parser = build_parser()
    assert parser.parse_args(["compare", "--lr", "3.4e38"]).lr == 3.4e38
    assert parser.parse_args(["sweep", "--lrs", "1.2e-38,1e38"]).lrs == [1.2e-38, 1e38]
    args = parser.parse_args(["remedy", "--lr", "1e-30", "--rmsprop-lr", "1e30"])
    assert (args.lr, args.rmsprop_lr) == (1e-30, 1e30)


def assert_one_line_error(code, stdout, stderr):
    assert code == 1
    assert stderr.count("\n") == 1 and stderr.endswith("\n")
    assert stderr.startswith("adagrad-gluon: error: ")
    assert "Traceback" not in stderr and "File \"" not in stderr


MXNET_MESSAGE = """Traceback (most recent call last):
  File "../src/c_api/c_api.cc", line 317
MXNetError: Check failed: retval: Error calling FCompute for custom operator 'op'
Extension Traceback:
\t[0] /src/adagrad_ops.cc[258]: attribute lrs must be a finite number, got '1e-320'
"""


@pytest.mark.parametrize("error, expected", [
    (MXNetError(MXNET_MESSAGE), "error: MXNetError: Check failed: retval: Error calling FCompute "
                                "for custom operator 'op' attribute lrs must be a finite number, "
                                "got '1e-320'\n"),
    (ValueError("learning_rate must be a normal number"),
     "error: ValueError: learning_rate must be a normal number\n"),
    (FloatingPointError("overflow encountered in multiply"),
     "error: FloatingPointError: overflow encountered in multiply\n"),
    (OverflowError("(34, 'Numerical result out of range')"),
     "error: the computation overflowed ((34, 'Numerical result out of range')); try a smaller "
     "learning rate\n"),
    (OSError(28, "No space left on device"), "error: [Errno 28] No space left on device\n"),
])
def test_a_run_that_fails_gets_one_line_and_exit_code_1(monkeypatch, tmp_path, error, expected):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(experiments, "train_ch10", fail)
    code, stdout, stderr = run_main(["compare", "--out", str(tmp_path)] + SMALL)
    assert_one_line_error(code, stdout, stderr)
    assert stderr.endswith(expected)


def test_a_bug_keeps_its_traceback_and_so_does_a_run_error_on_request(monkeypatch, tmp_path):
    def bug(*args, **kwargs):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(experiments, "train_ch10", bug)
    with pytest.raises(TypeError, match="unsupported operand"):
        run_main(["compare", "--out", str(tmp_path)] + SMALL)

    def refused(*args, **kwargs):
        raise MXNetError(MXNET_MESSAGE)

    monkeypatch.setattr(experiments, "train_ch10", refused)
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(MXNetError):
        run_main(["compare", "--out", str(tmp_path)] + SMALL)


@pytest.mark.parametrize("argv", [
    ["compare", "--lr", "1e38"],  # diverges: nan losses, effective rates that cannot be drawn
    ["sweep", "--lrs", "1e-320"],  # what the optimizer makes of a subnormal learning rate
])
def test_extreme_learning_rates_succeed_or_fail_in_one_line(monkeypatch, tmp_path, argv):
    """With the range check lifted, the run itself: exit 0, or exit 1 with one line."""
    monkeypatch.setattr(validation, "LR_MIN", 0.0)
    code, stdout, stderr = run_main(argv + ["--out", str(tmp_path)] + SMALL)
    if code != 0:
        assert_one_line_error(code, stdout, stderr)


# -- the output directory: checked before any work ------------------------------------------

def _can_create_a_file_in(directory: Path) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=directory):
            return True
    except OSError:
        return False


@pytest.fixture
def unwritable_dir(tmp_path):
    """An existing directory in which no file can be created: a read-only one; for root, whom
    permissions do not stop, a sysfs directory."""
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        usable = [d for d in (read_only, Path("/sys/kernel"))
                  if d.is_dir() and not _can_create_a_file_in(d)]
        if not usable:
            pytest.skip("no directory here refuses new files")
        yield usable[0]
    finally:
        read_only.chmod(0o755)


@pytest.fixture
def training_calls(monkeypatch):
    """Replace every training function of the CLI by one that records its call and stops."""
    calls = []

    def record(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("training started")

    monkeypatch.setattr(experiments, "train_ch10", record)
    monkeypatch.setattr(experiments, "train_concise_ch10", record)
    monkeypatch.setattr(experiments.chapter, "train_2d", record)
    return calls


@pytest.mark.parametrize("command", ["compare", "sweep", "remedy", "trajectory"])
@pytest.mark.parametrize("where", ["read-only directory", "under a file"])
def test_an_unwritable_output_fails_before_any_training(command, where, training_calls,
                                                        tmp_path, request):
    if where == "under a file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "out"
    else:
        out = request.getfixturevalue("unwritable_dir")
    code, stdout, stderr = run_main([command, "--out", str(out)]
                                    + (["--quiet"] if command != "trajectory" else []))
    assert training_calls == []
    assert_one_line_error(code, stdout, stderr)
    assert f"cannot write into the output directory {out}: " in stderr
    assert stdout == ""


def test_output_path_that_is_a_file(tmp_path):
    target = tmp_path / "taken"
    target.write_text("")
    code, _, stderr = run_main(["trajectory", "--out", str(target)])
    assert code == 2
    assert stderr.count("\n") == 1
    assert f"argument --out: {target} exists and is not a directory" in stderr


@pytest.mark.parametrize("content", [None, "not the airfoil data\n"])
def test_data_file_errors_get_one_line_and_exit_code_1(tmp_path, content):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if content is not None:
        (data_dir / "airfoil_self_noise.dat").write_text(content)
    code, stdout, stderr = run_main(["compare", "--data-dir", str(data_dir),
                                     "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 1
    assert stdout == ""
    assert stderr.count("\n") == 1
    assert stderr.startswith("adagrad-gluon: error: ")
    assert "airfoil_self_noise.dat" in stderr and "--data-dir DIR" in stderr
    assert "Traceback" not in stderr


def test_a_subcommand_is_one_function(monkeypatch):
    calls = []

    def add_hello(subparsers):
        parser = subparsers.add_parser("hello", help="say hello")
        parser.add_argument("--name", default="world")
        parser.set_defaults(run=lambda args: calls.append(args.name) or 0)

    monkeypatch.setattr(cli, "_SUBCOMMANDS", list(cli._SUBCOMMANDS))
    assert cli.subcommand(add_hello) is add_hello
    assert run_main(["hello", "--name", "Adagrad"])[0] == 0
    assert calls == ["Adagrad"]


def test_format_table():
    table = format_table(["name", "value"], [["a", "1.5"], ["longer", "22"]])
    assert table.splitlines() == [
        "name    value",
        "------  -----",
        "a         1.5",
        "longer     22",
    ]


# -- the installed entry points --------------------------------------------------------------

def run_process(argv, cwd):
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_console_script(tmp_path):
    assert EXECUTABLE.is_file(), f"{EXECUTABLE} is missing: pip install -e . installs it"
    done = run_process([str(EXECUTABLE), "compare", "--epochs", "1", "--quiet"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "adagrad_scratch" in done.stdout and "(reference)" in done.stdout
    out = tmp_path / "adagrad-gluon-out"  # the default --out, in the working directory
    report = json.loads((out / "compare.json").read_text())
    assert [run["name"] for run in report["runs"]] == ["scratch", "adagrad_scratch", "adagrad"]
    assert_png(out / "loss_curves.png")
    assert_png(out / "effective_lr.png")

    done = run_process([str(EXECUTABLE), "compare", "--lr", "-1"], cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_python_dash_m(tmp_path):
    done = run_process([sys.executable, "-m", "adagrad_gluon", "trajectory", "--out", "."],
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "epoch 20, x1 -2.382563, x2 -0.158591"
    assert_png(tmp_path / "trajectory_eta0.4.png")

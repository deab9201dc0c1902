"""Distributed training on MXNet's parameter server, on loopback.

Every job runs under the launcher's timeout (which stops every process of the job), and every
subprocess the tests start themselves under a ``timeout=``; the tests that start processes check
that none is left behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon, nd

from adagrad_gluon import AdagradScratch, cli
from adagrad_gluon.distributed import (
    CheckpointError,
    LaunchError,
    check_optimizer_for_servers,
    checkpoint,
    create_kvstore,
    environment,
    kvstore_type,
    launch,
    prepare_trainer,
    protocol,
    role_environment,
)
from adagrad_gluon.distributed.environment import free_port
from adagrad_gluon.optim.state import VERSION

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "distributed_airfoil.py"
PYTHON = sys.executable
JOB_TIMEOUT = 90.0  # seconds: the launcher stops the whole job if it takes longer
WORKERS, BATCH, EPOCHS = 2, 10, 2


# -- helpers -------------------------------------------------------------------------------------

def started_pids(output: str) -> dict[str, int]:
    """``{'worker 0': pid, ...}`` from the launcher's "started" lines."""
    return {name: int(pid) for name, pid in
            re.findall(r"^\[launch\] started (\w+(?: \d+)?) \(pid (\d+)\)", output, re.M)}


def assert_all_gone(output: str) -> None:
    """No process the launcher started, nor anything in their process groups, is left."""
    pids = started_pids(output)
    assert pids, output
    for name, pid in pids.items():
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # the group each process led is empty
        assert not Path(f"/proc/{pid}").exists(), f"{name} (pid {pid}) is still there"


def run_job(*example_args: str, kvstore: str = "dist_sync", servers: int = 1,
            example: Path = EXAMPLE) -> str:
    """Run ``example`` as ``WORKERS`` workers; return the job's output."""
    out = io.StringIO()
    try:
        # a generous grace: servers exit a moment after the workers, later on a busy machine
        launch([PYTHON, str(example), "--batch-size", str(BATCH), *example_args], WORKERS,
               servers, kvstore=kvstore, timeout=JOB_TIMEOUT, grace=30, out=out)
    except LaunchError as exc:
        pytest.fail(f"{exc}\n{out.getvalue()}")
    assert_all_gone(out.getvalue())
    return out.getvalue()


def worker_results(directory: Path) -> list[dict[str, np.ndarray]]:
    results = []
    for rank in range(WORKERS):
        with np.load(directory / f"worker-{rank}.npz") as z:
            results.append({k: z[k] for k in z.files})
    return results


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[str, np.ndarray]:
    """The single-process run on the combined batches of the workers."""
    out = tmp_path_factory.mktemp("single")
    run = subprocess.run([PYTHON, str(EXAMPLE), "--single", "--workers", str(WORKERS),
                          "--batch-size", str(BATCH), "--epochs", str(EPOCHS), "--output-dir",
                          str(out)], timeout=120, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    with np.load(out / "single.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def sync_runs(tmp_path_factory) -> dict[bool, list[dict[str, np.ndarray]]]:
    """The workers' results of ``dist_sync`` runs, by ``update_on_kvstore``."""
    runs = {}
    for on_kvstore in (True, False):
        out = tmp_path_factory.mktemp(f"sync-{on_kvstore}")
        flag = "--update-on-kvstore" if on_kvstore else "--no-update-on-kvstore"
        run_job("--epochs", str(EPOCHS), flag, "--output-dir", str(out))
        runs[on_kvstore] = worker_results(out)
    return runs


# -- dist_sync and dist_async --------------------------------------------------------------------

@pytest.mark.parametrize("on_kvstore", [True, False], ids=["update_on_kvstore", "on_workers"])
def test_dist_sync_workers_match_single_process_on_combined_batches(sync_runs, single,
                                                                     on_kvstore):
    first, second = sync_runs[on_kvstore]
    for name in ("weight", "bias"):
        np.testing.assert_array_equal(first[name], second[name])
        np.testing.assert_allclose(first[name], single[name], rtol=0, atol=1e-5)
    assert float(first["loss"]) == pytest.approx(float(single["loss"]), abs=1e-6)


def test_dist_async_runs_and_converges(tmp_path, single):
    run_job("--epochs", str(EPOCHS), "--output-dir", str(tmp_path), kvstore="dist_async")
    for result in worker_results(tmp_path):
        assert np.isfinite(result["weight"]).all()
        # the first full-data loss is ~0.5 (weights near 0); the synchronous run ends at 0.243
        assert float(result["loss"]) < float(single["loss"]) + 0.01


# -- the README's command, as a user copies it -----------------------------------------------------

README_JOB_TIMEOUT = 180  # seconds: only a safety net; the command has no --timeout of its own


def readme_launch_line(example: str = EXAMPLE.name) -> str:
    """The ``adagrad-gluon launch`` line of ``example`` in the README's "Distributed training"
    section."""
    section = (ROOT / "README.md").read_text().split("## Distributed training", 1)[1]
    blocks = re.findall(r"```bash\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    lines = [line for block in blocks for line in block.splitlines()
             if line.startswith("adagrad-gluon launch ") and example in line]
    assert len(lines) == 1, blocks
    return lines[0]


def job_processes(output: str) -> dict[int, int]:
    """``{pid: process group}`` of every live (not zombie) process in the process groups
    that the launcher started, descendants included."""
    groups = set(started_pids(output).values())
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            state, pgid = fields[0], int(fields[2])
            if pgid in groups and state != "Z":
                found[int(stat.parent.name)] = pgid
    return found


def kill_leftovers(output: str) -> None:
    """SIGKILL what a failed test left of a job: the launcher's process groups that still
    have live members (a group's id is not reused while it has members)."""
    for pgid in set(job_processes(output).values()):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def run_shell_job(command_line: str) -> str:
    """Run ``command_line`` in a shell at the repository's root, with this interpreter's
    ``python`` and ``adagrad-gluon`` first on ``PATH``; return its output, asserting it
    succeeded within :data:`README_JOB_TIMEOUT` and left no process behind."""
    env = dict(os.environ, PATH=f"{Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}")
    job = subprocess.Popen(command_line, shell=True, cwd=ROOT, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           start_new_session=True)
    try:
        output, _ = job.communicate(timeout=README_JOB_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        output, _ = job.communicate()
        kill_leftovers(output)
        pytest.fail(f"{command_line!r} still running after {README_JOB_TIMEOUT} s:\n{output}")
    assert job.returncode == 0, output
    assert_all_gone(output)
    return output


def test_readme_launch_command_finishes_as_written(single):
    # A worker that returned used to drop its last gradient pushes at interpreter exit, and the
    # other waited for them forever (7 hangs in 7 runs).
    line = readme_launch_line()
    assert line.endswith(f"--epochs {EPOCHS}")  # as the single-process run it is compared to
    output = run_shell_job(line)
    losses = re.findall(r"^\[worker \d\] epoch (\d+), loss (\S+)$", output, re.M)
    assert [int(epoch) for epoch, _ in losses] == list(range(1, EPOCHS + 1)), output
    assert float(losses[-1][1]) == pytest.approx(float(single["loss"]), abs=2e-6)


@pytest.mark.parametrize("launcher, worker_options", [
    ("adagrad-gluon launch", "--no-update-on-kvstore --epochs 3"),
    ("adagrad-gluon launch --async", "--epochs 3"),
], ids=["sync_on_workers", "async"])
def test_readme_launch_command_finishes_in_every_mode(launcher, worker_options):
    line = readme_launch_line().replace("adagrad-gluon launch", launcher, 1)
    output = run_shell_job(f"{line} {worker_options}")
    epochs = re.findall(r"^\[worker \d\] epoch (\d+), loss \S+$", output, re.M)
    assert epochs == ["1", "2", "3"], output


# -- checkpoints ---------------------------------------------------------------------------------

@pytest.mark.parametrize("on_kvstore", [True, False], ids=["update_on_kvstore", "on_workers"])
def test_checkpoint_and_resume_is_bit_identical(tmp_path, sync_runs, on_kvstore):
    flag = "--update-on-kvstore" if on_kvstore else "--no-update-on-kvstore"
    ckpt = tmp_path / "ckpt"
    run_job("--epochs", "1", flag, "--save", str(ckpt), servers=2)
    files = (["server-0-of-2.npz", "server-1-of-2.npz"] if on_kvstore else ["workers.npz"])
    assert sorted(p.name for p in ckpt.glob("*.npz")) == files
    saved = [checkpoint.read_states(ckpt / name) for name in files]
    assert sorted(k for s in saved for k in s.states) == [0, 1]  # bias and weight
    assert all(set(s.counts.values()) == {1500 // (BATCH * WORKERS)} for s in saved)

    run_job("--epochs", str(EPOCHS), flag, "--resume", str(ckpt), "--output-dir",
            str(tmp_path), servers=2)
    for resumed in worker_results(tmp_path):
        for name in ("weight", "bias"):
            np.testing.assert_array_equal(resumed[name], sync_runs[on_kvstore][0][name])


def _updater(**options) -> mx.optimizer.Updater:
    updater = mx.optimizer.get_updater(AdagradScratch(**options))
    for key, shape in ((0, (3,)), (1, (2, 2))):
        updater(key, nd.arange(np.prod(shape)).reshape(shape), nd.ones(shape))
    updater(1, nd.ones((2, 2)), nd.ones((2, 2)))
    return updater


def test_states_file_round_trip_restores_states_and_counters(tmp_path):
    path = tmp_path / "states.npz"
    updater = _updater(learning_rate=0.1, lr_decay=0.5)
    checkpoint.write_states(path, updater, token="abc")
    assert [p.name for p in tmp_path.iterdir()] == ["states.npz"]  # no temporary left
    saved = checkpoint.read_states(path)
    assert saved.token == "abc" and saved.counts == {0: 1, 1: 2} and saved.num_update == 2
    assert saved.options["lr_decay"] == 0.5

    fresh = mx.optimizer.get_updater(AdagradScratch(learning_rate=0.1, lr_decay=0.5))
    checkpoint.check_compatible(saved, fresh.optimizer)
    checkpoint.restore_states(fresh, saved)
    weights = [nd.ones((2, 2)), nd.ones((2, 2))]
    for upd, weight in zip((updater, fresh), weights, strict=True):
        upd(1, nd.full((2, 2), 0.5), weight)
    np.testing.assert_array_equal(weights[0].asnumpy(), weights[1].asnumpy())
    np.testing.assert_array_equal(fresh.states[1].asnumpy(), updater.states[1].asnumpy())


def test_states_file_refuses_other_optimizers_and_options(tmp_path):
    path = tmp_path / "states.npz"
    checkpoint.write_states(path, _updater(learning_rate=0.1))
    saved = checkpoint.read_states(path)
    with pytest.raises(ValueError, match="eps: saved 1e-06, trainer 1e-05"):
        checkpoint.check_compatible(saved, AdagradScratch(learning_rate=0.1, eps=1e-5))
    checkpoint.check_compatible(saved, AdagradScratch(learning_rate=0.1, eps=1e-5),
                                check_options=False)
    with pytest.raises(ValueError, match="not of the mxnet.optimizer.optimizer.SGD"):
        checkpoint.check_compatible(saved, mx.optimizer.SGD(learning_rate=0.1))


def test_states_file_resumes_with_another_learning_rate(tmp_path):
    """One rule for trainer files and checkpoints: the numerics options must match, the
    learning rate, wd and rescale_grad may change on resume (and are not saved)."""
    path = tmp_path / "states.npz"
    checkpoint.write_states(path, _updater(learning_rate=0.1))
    saved = checkpoint.read_states(path)
    checkpoint.check_compatible(saved, AdagradScratch(learning_rate=0.2, wd=0.01,
                                                      rescale_grad=0.5))
    fresh = mx.optimizer.get_updater(AdagradScratch(learning_rate=0.2))
    checkpoint.restore_states(fresh, saved)
    assert fresh.optimizer.lr == 0.2 and fresh.optimizer.num_update == 2


def test_states_file_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.read_states(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="garbage.npz is not a readable"):
        checkpoint.read_states(garbage)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(2))
    with pytest.raises(CheckpointError, match="not an adagrad_gluon optimizer states file"):
        checkpoint.read_states(other)
    newer = tmp_path / "newer.npz"
    checkpoint.write_states(newer, _updater())
    with np.load(newer) as z:
        fields = {k: z[k] for k in z.files}
    meta = json.loads(str(fields["meta"]))
    np.savez(newer, **{**fields, "meta": np.array(json.dumps({**meta, "version": VERSION + 1}))})
    with pytest.raises(CheckpointError, match="format version"):
        checkpoint.read_states(newer)
    for bad, match in ((-1.0, "holds negative values"), (np.nan, "holds NaN")):
        np.savez(newer, **{**fields, "acc/1": np.full((2, 2), bad, np.float32)})
        with pytest.raises(CheckpointError, match=f"newer.npz: acc/1 {match}"):
            checkpoint.read_states(newer)


# -- failures ------------------------------------------------------------------------------------

def start_long_job(cwd: Path) -> tuple[subprocess.Popen, list[str]]:
    """Start ``adagrad-gluon launch`` on an endless run of the example; return the launcher
    and the lines it printed, once a worker has printed its first epoch."""
    command = [PYTHON, "-m", "adagrad_gluon", "launch", "-n", "2", "-s", "1",
               "--timeout", str(JOB_TIMEOUT), "--", PYTHON, str(EXAMPLE), "--epochs", "100000"]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           cwd=cwd)
    seen = []
    for line in job.stdout:  # the launcher's --timeout bounds this loop
        seen.append(line)
        if re.match(r"\[worker \d\] epoch 1, loss", line):
            return job, seen
    job.wait()
    kill_leftovers("".join(seen))
    pytest.fail("the job ended before its first epoch:\n" + "".join(seen))


def test_killed_worker_stops_the_job_and_leaves_no_process(tmp_path):
    job, seen = start_long_job(tmp_path)
    try:
        killed_at = time.perf_counter()
        os.kill(started_pids("".join(seen))["worker 1"], signal.SIGKILL)
        rest, _ = job.communicate(timeout=30)
        print(f"\nlauncher exited {time.perf_counter() - killed_at:.2f} s after worker 1's "
              f"SIGKILL")
    finally:
        if job.poll() is None:
            job.send_signal(signal.SIGTERM)  # the launcher stops its processes on SIGTERM
            job.communicate(timeout=30)
    output = "".join(seen) + rest
    assert job.returncode == 1, output
    assert "error: worker 1 was killed by SIGKILL" in output
    assert_all_gone(output)


def test_killed_launcher_takes_every_process_of_the_job_with_it(tmp_path):
    job, seen = start_long_job(tmp_path)
    output = "".join(seen)
    try:
        job.kill()
        job.communicate(timeout=30)
        deadline = time.monotonic() + 10  # the kernel signals them at once; reaping may lag
        while job_processes(output) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not job_processes(output), output
    finally:
        kill_leftovers(output)


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_hangup_or_terminate_stops_the_job_and_exits_128_plus_signal(tmp_path, signum):
    job, seen = start_long_job(tmp_path)
    try:
        job.send_signal(signum)
        rest, _ = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
        kill_leftovers("".join(seen))
    output = "".join(seen) + rest
    assert job.returncode == 128 + signum, output
    assert f"interrupted by {signum.name}; every process was stopped" in output
    assert_all_gone(output)


def test_worker_that_raises_stops_the_job(tmp_path):
    # Left alone, the failed worker would wait in MXNet's exit barrier and the others for it.
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""\
        from mxnet import autograd, gluon, nd
        from adagrad_gluon.distributed import create_kvstore, prepare_trainer

        kvstore = create_kvstore()
        net = gluon.nn.Dense(1, in_units=2)
        net.initialize()
        trainer = prepare_trainer(gluon.Trainer(net.collect_params(), "adagrad_scratch",
                                                kvstore=kvstore), 4)
        if kvstore.rank == 1:
            raise RuntimeError("a bug on rank 1")
        while True:
            with autograd.record():
                loss = net(nd.ones((4, 2))).sum()
            loss.backward()
            trainer.step()
    """))
    out = io.StringIO()
    with pytest.raises(LaunchError, match="exited with status 1: RuntimeError: a bug on rank 1"):
        launch([PYTHON, str(script)], 2, 1, timeout=JOB_TIMEOUT, out=out)
    assert_all_gone(out.getvalue())


def test_server_that_cannot_import_the_optimizer_fails_loudly(tmp_path):
    # The optimizer's module is importable by the workers only (they add its directory to
    # sys.path at run time), as when a package is missing on the servers' host.
    private = tmp_path / "workers_only"
    private.mkdir()
    (private / "my_adagrad.py").write_text(
        "from adagrad_gluon import AdagradScratch\n\n\n"
        "class WorkersOnlyAdagrad(AdagradScratch):\n    pass\n"
    )
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(private)!r})
        from mxnet import gluon
        from my_adagrad import WorkersOnlyAdagrad
        from adagrad_gluon.distributed import kvstore_type, prepare_trainer

        net = gluon.nn.Dense(1, in_units=2)
        net.initialize()
        prepare_trainer(gluon.Trainer(net.collect_params(), WorkersOnlyAdagrad(),
                                      kvstore=kvstore_type()), 4)
        print("the servers took the optimizer")
    """))
    out = io.StringIO()
    with pytest.raises(LaunchError) as failure:
        launch([PYTHON, str(script)], 2, 1, timeout=JOB_TIMEOUT, out=out)
    output = out.getvalue()
    assert failure.value.process == "server 0", output
    assert failure.value.returncode == 1
    assert "cannot unpickle the optimizer" in str(failure.value)
    assert "No module named 'my_adagrad'" in str(failure.value)
    assert "must be able to import my_adagrad.WorkersOnlyAdagrad" in output
    assert "the servers took the optimizer" not in output
    assert_all_gone(output)


def test_launcher_timeout_stops_everything():
    out = io.StringIO()
    with pytest.raises(LaunchError, match="timed out after 1 s; still running: scheduler") as e:
        launch([PYTHON, "-c", "import time; time.sleep(600)"], 1, 1, timeout=1.0, out=out)
    assert e.value.returncode == 124 and e.value.process is None
    assert_all_gone(out.getvalue())


def test_launcher_reports_a_command_that_cannot_start():
    out = io.StringIO()
    with pytest.raises(LaunchError, match="cannot start worker 0 .*no-such-program"):
        launch(["no-such-program-adagrad-gluon"], 1, 1, timeout=30.0, out=out)
    assert_all_gone(out.getvalue())  # the scheduler and server started first are gone too


@pytest.mark.parametrize("kwargs, error", [
    (dict(command="python train.py"), TypeError),
    (dict(command=[]), ValueError),
    (dict(num_workers=0), ValueError),
    (dict(num_servers=1.5), TypeError),
    (dict(timeout=-1.0), ValueError),
    (dict(kvstore="local"), ValueError),
])
def test_launch_validates_its_arguments(kwargs, error):
    arguments = dict(command=[PYTHON, "-c", "pass"], num_workers=1, num_servers=1) | kwargs
    with pytest.raises(error, match=next(iter(kwargs))):
        launch(**arguments)


@pytest.mark.parametrize("argv", [
    ["launch", "-n", "0", "--", "python", "x.py"],
    ["launch", "-n", "2", "--timeout", "-3", "--", "python", "x.py"],
    ["launch", "-n", "2", "--sync", "--async", "--", "python", "x.py"],
])
def test_cli_rejects_bad_options(argv, capsys):
    assert cli.main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_cli_needs_a_command(capsys):
    assert cli.main(["launch", "-n", "2", "--"]) == 2
    assert "give the worker's command after --" in capsys.readouterr().err


# -- the worker side, without a job --------------------------------------------------------------

def _trainer(optimizer="adagrad_scratch", kvstore="dist_sync", in_units=3) -> gluon.Trainer:
    net = gluon.nn.Dense(1, in_units=in_units)
    net.initialize()
    return gluon.Trainer(net.collect_params(), optimizer, {"learning_rate": 0.1}
                         if isinstance(optimizer, str) else None, kvstore=kvstore)


def test_prepare_trainer_validates_before_connecting(monkeypatch):
    with pytest.raises(TypeError, match="trainer must be a gluon.Trainer"):
        prepare_trainer(object(), 10)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        prepare_trainer(_trainer(), 2.5)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        prepare_trainer(_trainer(), 0)
    with pytest.raises(ValueError, match="kvstore='dist_sync' or 'dist_async'.*'device'"):
        prepare_trainer(_trainer(kvstore="device"), 10)
    net = gluon.nn.Dense(1)
    net.initialize()
    deferred = gluon.Trainer(net.collect_params(), "adagrad_scratch", kvstore="dist_sync")
    with pytest.raises(ValueError, match="has no shape yet"):
        prepare_trainer(deferred, 10)
    for name in ("DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_ROLE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="DMLC_PS_ROOT_URI, DMLC_PS_ROOT_PORT.*not set"):
        prepare_trainer(_trainer(), 10)
    with pytest.raises(RuntimeError, match="not a parameter-server worker"):
        create_kvstore("dist_sync")
    with pytest.raises(ValueError, match="name must name a dist kvstore"):
        create_kvstore("local")


def test_optimizer_defined_in_the_training_script_is_refused(monkeypatch):
    script = sys.modules["__main__"]
    in_script = type("ScriptAdagrad", (AdagradScratch,), {"__module__": "__main__"})
    monkeypatch.setattr(script, "ScriptAdagrad", in_script, raising=False)
    with pytest.raises(TypeError, match=r"__main__.ScriptAdagrad is defined in the training"):
        prepare_trainer(_trainer(in_script(learning_rate=0.1)), 10)


def test_optimizer_that_cannot_be_pickled_is_refused():
    optimizer = AdagradScratch(lr_scheduler=lambda num_update: 0.1)
    with pytest.raises(TypeError, match="pickled to the servers, and it cannot be"):
        check_optimizer_for_servers(optimizer)
    assert check_optimizer_for_servers(AdagradScratch()) == [
        "adagrad_gluon.optim.optimizer.AdagradScratch"]


# -- environment and protocol --------------------------------------------------------------------

def test_the_scheduler_port_is_free_and_outside_the_ephemeral_range():
    """The scheduler binds its port after importing mxnet and never retries; meanwhile the
    servers and workers take ports with bind(0) from the ephemeral range, which once handed
    one of them the scheduler's port ("bind failed"). A port from outside cannot collide so."""
    low, high = environment._ephemeral_range()
    ports = {free_port() for _ in range(20)}
    for port in ports:
        assert not low <= port <= high, (port, low, high)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: nothing listens on it


def test_role_environment_never_passes_port_or_a_server_role():
    base = {"PORT": "9000", "DMLC_ROLE": "server", "HOME": "/home/x"}
    options = dict(root_uri="127.0.0.1", root_port=1234, num_workers=2, num_servers=1,
                   node_host="127.0.0.1", interface="lo", base=base)
    server = role_environment("server", **options)
    assert "PORT" not in server and "DMLC_ROLE" not in server
    assert server["HOME"] == "/home/x" and server["DMLC_PS_ROOT_PORT"] == "1234"
    worker = role_environment("worker", kvstore="dist_async", **options)
    assert worker["DMLC_ROLE"] == "worker" and worker["ADAGRAD_GLUON_KVSTORE"] == "dist_async"
    with pytest.raises(ValueError, match="role must be one of"):
        role_environment("client", **options)


def test_kvstore_type_reads_the_launchers_choice(monkeypatch):
    monkeypatch.setenv("ADAGRAD_GLUON_KVSTORE", "dist_async")
    assert kvstore_type() == "dist_async"
    monkeypatch.delenv("ADAGRAD_GLUON_KVSTORE")
    assert kvstore_type() == "dist_sync"
    monkeypatch.setenv("ADAGRAD_GLUON_KVSTORE", "local")
    with pytest.raises(ValueError, match="ADAGRAD_GLUON_KVSTORE must be one of"):
        kvstore_type()


def test_commands_are_told_apart_from_pickled_optimizers():
    body = protocol.encode_command(protocol.SAVE_STATES, directory="/tmp/x", token="t")
    assert protocol.decode_command(body.encode()) == {
        "op": "save_states", "directory": "/tmp/x", "token": "t"}
    pickled = pickle.dumps(AdagradScratch(), 0)
    assert protocol.decode_command(pickled) is None
    with pytest.raises(ValueError, match="unknown command"):
        protocol.decode_command(protocol.PREFIX.encode() + b'{"op": "format_disk"}')
    with pytest.raises(ValueError, match="op must be one of"):
        protocol.encode_command("format_disk")


# -- Horovod, where it is installed --------------------------------------------------------------

def test_horovod_distributed_trainer_matches_single_process(tmp_path, single):
    pytest.importorskip("horovod.mxnet")  # optional: pip install "adagrad-gluon[horovod]"
    command = [PYTHON, "-m", "horovod.runner.launch",  # horovodrun, of this interpreter
               "--gloo", "--network-interface", "lo", "-np", str(WORKERS),
               "-H", f"localhost:{WORKERS}", PYTHON, str(EXAMPLE), "--horovod", "--batch-size",
               str(BATCH), "--epochs", str(EPOCHS), "--output-dir", str(tmp_path)]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        output, _ = job.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)  # whatever horovodrun left in its session
        job.communicate()
    assert job.returncode == 0, output
    for result in worker_results(tmp_path):
        for name in ("weight", "bias"):
            np.testing.assert_allclose(result[name], single[name], rtol=0, atol=1e-5)

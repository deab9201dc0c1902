"""examples/distributed_embeddings.py: sparse embedding tables sharded on two parameter servers,
updated there by ``adagrad_scratch``; against the same updates in one process."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from adagrad_gluon.distributed import checkpoint

from .test_distributed import (
    BATCH,
    PYTHON,
    ROOT,
    WORKERS,
    readme_launch_line,
    run_job,
    run_shell_job,
    worker_results,
)

EXAMPLE = ROOT / "examples" / "distributed_embeddings.py"
USERS, ITEMS, DIM = 3000, 2000, 8
SMALL = ("--users", str(USERS), "--items", str(ITEMS), "--dim", str(DIM),
         "--interactions", "1000")
# elements: MXNet splits a key larger than this over the servers, as it does the README's
# 70,000 x 16 tables at its default bound of 1e6; both small tables here are split
BIGARRAY_BOUND = "10000"
EPOCHS = 2
LOSS = re.compile(r"^\[worker \d\] epoch (\d+), loss (\S+)$", re.M)


def run_small(*args: str, kvstore: str = "dist_sync") -> str:
    """Run the example on the small tables, each split over two servers; return the output."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MXNET_KVSTORE_BIGARRAY_BOUND", BIGARRAY_BOUND)
        return run_job(*SMALL, *args, kvstore=kvstore, servers=2, example=EXAMPLE)


def run_local(out: Path, *args: str) -> dict[str, np.ndarray]:
    """The one-process run on the combined batches of the workers."""
    run = subprocess.run([PYTHON, str(EXAMPLE), "--local", "--workers", str(WORKERS), *args,
                          "--output-dir", str(out)], timeout=180, capture_output=True,
                         text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    with np.load(out / "local.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> dict[str, np.ndarray]:
    return run_local(tmp_path_factory.mktemp("local"), "--batch-size", str(BATCH), *SMALL,
                     "--epochs", str(EPOCHS))


@pytest.fixture(scope="module")
def sync_run(tmp_path_factory) -> tuple[list[dict[str, np.ndarray]], Path]:
    """The workers' results of a ``dist_sync`` run on two servers, and its checkpoint."""
    out = tmp_path_factory.mktemp("sync")
    run_small("--epochs", str(EPOCHS), "--output-dir", str(out), "--save", str(out / "ckpt"))
    return worker_results(out), out / "ckpt"


def test_dist_sync_matches_the_one_process_run(sync_run, local):
    (first, second), _ = sync_run
    for name in ("user", "item"):
        np.testing.assert_array_equal(first[name], second[name])
        np.testing.assert_allclose(first[name], local[name], rtol=1e-5, atol=1e-6)
    assert float(first["loss"]) == pytest.approx(float(local["loss"]), rel=1e-5)


def test_each_table_is_sharded_over_both_servers(sync_run):
    _, ckpt = sync_run
    saved = [checkpoint.read_states(ckpt / f"server-{rank}-of-2.npz") for rank in range(2)]
    for key, rows in ((0, USERS), (1, ITEMS)):  # the trainer's parameters, in the net's order
        shards = [s.states[key] for s in saved]  # every server holds a state for both keys
        assert [a.shape[0] for a in shards] == [rows // 2, rows // 2]
        assert all(a.shape[1:] == (DIM,) and (a > 0).any() for a in shards)
        # updated as often as the one-process table: every synchronous step, rows or not
        assert {s.counts[key] for s in saved} == {EPOCHS * 1000 // (BATCH * WORKERS)}


def test_resume_from_a_server_checkpoint_continues_the_run(tmp_path, sync_run):
    ckpt = tmp_path / "ckpt"
    run_small("--epochs", "1", "--save", str(ckpt))
    assert sorted(p.name for p in ckpt.glob("*.npz")) == ["server-0-of-2.npz",
                                                          "server-1-of-2.npz"]
    run_small("--epochs", str(EPOCHS), "--resume", str(ckpt), "--output-dir", str(tmp_path))
    straight, _ = sync_run
    for resumed in worker_results(tmp_path):
        for name in ("user", "item", "loss"):
            np.testing.assert_array_equal(resumed[name], straight[0][name])


def test_rowwise_on_the_servers_matches_the_one_process_run_and_resumes(tmp_path):
    """``--rowwise``: one accumulator per row on each server's shard; dist_sync equals the
    one-process run, and a server checkpoint of the (rows,) accumulators resumes exactly."""
    ckpt, out, straight = tmp_path / "ckpt", tmp_path / "resumed", tmp_path / "straight"
    run_small("--rowwise", "--epochs", "1", "--save", str(ckpt))
    for rank in range(2):
        saved = checkpoint.read_states(ckpt / f"server-{rank}-of-2.npz")
        assert [saved.states[key].shape for key in (0, 1)] == [(USERS // 2,), (ITEMS // 2,)]
    run_small("--rowwise", "--epochs", str(EPOCHS), "--resume", str(ckpt),
              "--output-dir", str(out))
    run_small("--rowwise", "--epochs", str(EPOCHS), "--output-dir", str(straight))
    local = run_local(tmp_path / "local", "--rowwise", "--batch-size", str(BATCH), *SMALL,
                      "--epochs", str(EPOCHS))
    (first, second), resumed = worker_results(straight), worker_results(out)
    for name in ("user", "item"):
        np.testing.assert_array_equal(first[name], second[name])
        np.testing.assert_array_equal(resumed[0][name], first[name])
        np.testing.assert_allclose(first[name], local[name], rtol=1e-5, atol=1e-6)
    assert float(first["loss"]) == pytest.approx(float(local["loss"]), rel=1e-5)


def losses(output: str) -> list[float]:
    found = LOSS.findall(output)
    assert [int(epoch) for epoch, _ in found] == list(range(1, len(found) + 1)), output
    return [float(loss) for _, loss in found]


def test_dist_async_trains(tmp_path):
    output = run_small("--epochs", "3", "--output-dir", str(tmp_path), kvstore="dist_async")
    found = losses(output)
    assert len(found) == 3 and found[2] < found[1] < found[0], output
    for result in worker_results(tmp_path):
        assert np.isfinite(result["user"]).all() and np.isfinite(result["item"]).all()


def test_readme_embeddings_command_finishes_as_written(tmp_path):
    line = readme_launch_line(EXAMPLE.name)
    assert line.endswith(f"--epochs {EPOCHS}") and " -s 2 " in line
    found = losses(run_shell_job(line))  # MXNet's default bound splits the 70,000 x 16 tables
    assert len(found) == EPOCHS, found
    # the README's one-process line, with its defaults
    local = run_local(tmp_path, "--epochs", str(EPOCHS))
    assert found[-1] == pytest.approx(float(local["loss"]), rel=1e-5)


def test_readme_embeddings_command_finishes_with_async():
    line = readme_launch_line(EXAMPLE.name).replace("launch", "launch --async", 1)
    found = losses(run_shell_job(f"{line} {' '.join(SMALL)}"))
    assert len(found) == EPOCHS and found[-1] < found[0]


def test_weight_decay_is_refused_before_training():
    # gluon's local kvstore drops the optimizer's error: --local would silently train nothing
    run = subprocess.run([PYTHON, str(EXAMPLE), "--local", "--wd", "0.01"], timeout=120,
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "--wd: the lazy update of a sparse table" in run.stderr

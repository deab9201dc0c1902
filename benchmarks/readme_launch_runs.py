"""Run each of the README's distributed commands (every ``adagrad-gluon launch`` line of its
"Distributed training" section: the airfoil and the sparse-embeddings examples), exactly as the
README writes it, N times in a row.

    python benchmarks/readme_launch_runs.py            # 10 runs of each
    python benchmarks/readme_launch_runs.py --runs 3

Prints each run's wall time and exit status, then per command the slowest run. A command must
finish by itself (it has no --timeout); a run still going after --limit seconds is killed and
counted as a failure. Each command runs in a shell at the repository's root, with this interpreter's
``python`` and ``adagrad-gluon`` first on PATH.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_launch_lines() -> list[str]:
    """The ``adagrad-gluon launch`` lines of the README's "Distributed training" section."""
    section = (ROOT / "README.md").read_text().split("## Distributed training", 1)[1]
    blocks = re.findall(r"```bash\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    return [line for block in blocks for line in block.splitlines()
            if line.startswith("adagrad-gluon launch ")]


def run_once(line: str, limit: float) -> tuple[float, int | None]:
    """``(seconds, exit status)``; the status is ``None`` if the run was killed at ``limit``."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start = time.perf_counter()
    job = subprocess.Popen(line, shell=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        status = job.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)  # the launcher's children die with it
        job.wait()
        status = None
    return time.perf_counter() - start, status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--limit", type=float, default=120.0,
                        help="seconds after which a run counts as hung (default: 120)")
    args = parser.parse_args()
    failed = False
    for line in readme_launch_lines():
        failed |= not run_line(line, args.runs, args.limit)
    return 1 if failed else 0


def run_line(line: str, runs: int, limit: float) -> bool:
    """Run ``line`` ``runs`` times, printing each run; whether every run exited with 0."""
    print(f"{line}  ({os.cpu_count()} CPUs)")
    times, failures = [], 0
    for run in range(1, runs + 1):
        seconds, status = run_once(line, limit)
        times.append(seconds)
        failures += status != 0
        print(f"run {run:2d}: {seconds:6.2f} s, "
              f"{'killed: still running' if status is None else f'exit {status}'}", flush=True)
    print(f"{runs - failures} of {runs} finished with exit 0; slowest {max(times):.2f} s")
    return failures == 0

if __name__ == "__main__":
    sys.exit(main())

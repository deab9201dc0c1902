"""What does a multi-threaded fused update leave behind? The CPU time the process burns while it
waits after one ``adagrad_scratch`` update of a 1x1M tensor (OpenMP team of the kernels'
threads), the update's own time, and the time of one training iteration (forward, backward,
``gluon.Trainer.step``) of an MLP of 1.3M parameters (256-1024-1024-1, batch 64), under
libgomp's default wait policy and under ``OMP_WAIT_POLICY=passive``, each in a fresh process
(libgomp reads the policy when MXNet loads it), the two policies taking turns.

By default libgomp's idle team threads spin for a while after a parallel region before they
sleep: a core stays busy although nothing runs. On a machine with few cores that is time MXNet's
own work after the update (the next forward and backward pass) cannot use. A passive policy
puts them to sleep at once and pays a wake-up at the next update instead.

    python benchmarks/omp_spin.py [--repeats 15] [--window 0.02] [--rounds 3]

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

POLICIES = {"default": None, "passive": "passive"}

CHILD = """
import json, sys, time
sys.path.insert(0, {benchmarks!r})
from bench_state8 import scratch
from mxnet import nd
from adagrad_gluon.optim import kernels
step = scratch(32)(1, 1_000_000)[0]
for _ in range(5):
    step(); nd.waitall()
burned, seconds = [], []
for _ in range({repeats}):
    time.sleep({window})  # the team asleep whatever the policy: each update wakes it
    start = time.perf_counter(); step(); nd.waitall(); seconds.append(time.perf_counter() - start)
    cpu = time.process_time(); time.sleep({window}); burned.append(time.process_time() - cpu)
import mxnet as mx
from mxnet import autograd, gluon
net = gluon.nn.Sequential()
net.add(gluon.nn.Dense(1024, activation="relu"), gluon.nn.Dense(1024, activation="relu"),
        gluon.nn.Dense(1))
net.initialize(mx.init.Xavier())
x, y = nd.random.normal(shape=(64, 256)), nd.random.normal(shape=(64, 1))
trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch", {{"learning_rate": 0.01}})
def iteration():
    with autograd.record():
        loss = gluon.loss.L2Loss()(net(x), y)
    loss.backward()
    trainer.step(64)
for _ in range(20):
    iteration()
nd.waitall()
iterations = []
for _ in range({repeats}):
    start = time.perf_counter()
    for _ in range(20):
        iteration()
    nd.waitall(); iterations.append((time.perf_counter() - start) / 20)
print(json.dumps({{"threads": kernels.num_threads(), "burned": burned, "seconds": seconds,
                  "iteration": iterations}}))
"""


def run(policy: str | None, repeats: int, window: float) -> dict:
    """One fresh process under ``policy`` (None: libgomp's default); its measurements."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    code = CHILD.format(benchmarks=str(Path(__file__).resolve().parent), repeats=repeats,
                        window=window)
    done = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                          text=True, timeout=600)  # the child's stderr (a build notice) shows
    if done.returncode != 0:
        sys.exit(f"the measuring process under OMP_WAIT_POLICY={policy or 'unset'} failed "
                 f"(exit {done.returncode}; its error is above)")
    lines = done.stdout.strip().splitlines()
    if not lines:
        sys.exit(f"the measuring process under OMP_WAIT_POLICY={policy or 'unset'} printed "
                 "nothing")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--window", type=float, default=0.02,
                        help="seconds waited after each update (and before the next)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="processes per policy, the policies taking turns")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPUs; after each fused update of 1x1M, the CPU time the process "
          f"burns in the next {args.window * 1e3:.0f} ms of waiting (median of {args.repeats}); "
          f"the update's time and an MLP's training iteration (minimum)")
    for round_ in range(1, args.rounds + 1):
        for name, policy in POLICIES.items():
            result = run(policy, args.repeats, args.window)
            print(f"  round {round_}, OMP_WAIT_POLICY {name:<8} {result['threads']} kernel "
                  f"threads: {statistics.median(result['burned']) * 1e3:6.2f} ms burned, "
                  f"update {min(result['seconds']) * 1e3:.3f} ms, MLP training iteration "
                  f"{min(result['iteration']) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()

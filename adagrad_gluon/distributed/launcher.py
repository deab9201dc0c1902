"""Start, watch and stop the processes of a parameter-server job on this host, on loopback.

:func:`launch` starts the scheduler, the servers (through :mod:`adagrad_gluon.distributed.server`)
and the workers (the given command), each in its own process group, with the environment of
:mod:`adagrad_gluon.distributed.environment` and a free scheduler port. It streams their output
line by line with a role prefix (``[worker 0] ...``; the prefix counts processes as they are
started, while MXNet's ``kv.rank`` is assigned by the scheduler and may differ). The job
succeeds when every worker exits with status 0 and the servers and scheduler follow. The first
process to fail or to outlive the workers, or the overall ``timeout``, stops
every process group (SIGTERM, then SIGKILL after ``grace`` seconds) and raises
:class:`LaunchError` naming the process and the cause.

Every process it starts gets SIGKILL from the kernel if the launcher dies, however it dies
(SIGKILL included): Linux's parent-death signal, set between ``fork`` and ``exec``
(:func:`_die_with_parent`), so that it holds for any worker command. It reaches the processes
the launcher started, not processes that they start in turn.
"""

from __future__ import annotations

import collections
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from ..validation import check_choice, check_number, check_positive_int
from .environment import KVSTORE_TYPES, LOOPBACK, free_port, role_environment

POLL_SECONDS = 0.05
TIMEOUT_STATUS = 124  # the exit status of a timed-out job, as coreutils' timeout uses
_TAIL_LINES = 20
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class LaunchError(RuntimeError):
    """A job failed: ``process`` (e.g. ``'worker 1'``, or ``None`` on a timeout) is the first
    process that failed; ``returncode`` is the status the command line exits with."""

    def __init__(self, message: str, process: str | None = None, returncode: int = 1):
        super().__init__(message)
        self.process = process
        self.returncode = returncode


@dataclass
class _Process:
    name: str
    role: str
    popen: subprocess.Popen
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=_TAIL_LINES))
    reader: threading.Thread | None = None

    def last_line(self) -> str:
        """The last non-empty line the process printed (its error, usually)."""
        if self.reader is not None:
            self.reader.join(timeout=1.0)  # let the reader drain what the process left
        return next((line for line in reversed(self.tail) if line.strip()), "")

    def describe_exit(self) -> str:
        """``'worker 1 exited with status 1: <its last line>'`` or ``'... was killed by
        SIGKILL'`` (the last line of a killed process says nothing about why)."""
        code = self.popen.returncode
        if code < 0:
            try:
                return f"{self.name} was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"{self.name} was killed by signal {-code}"
        last = self.last_line()
        return f"{self.name} exited with status {code}" + (f": {last}" if last else "")


class _Job:
    """The processes of one job and the stream their output goes to."""

    def __init__(self, out: TextIO):
        self.out = out
        self.lock = threading.Lock()
        self.processes: list[_Process] = []

    def say(self, message: str) -> None:
        self.write(f"[launch] {message}\n")

    def write(self, text: str) -> None:
        with self.lock:
            self.out.write(text)
            self.out.flush()

    def start(self, name: str, role: str, args: Sequence[str], env: Mapping[str, str]) -> None:
        try:
            popen = subprocess.Popen(
                list(args), env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        except OSError as exc:
            raise LaunchError(f"cannot start {name} ({' '.join(args)}): {exc}", name) from exc
        process = _Process(name, role, popen)
        process.reader = threading.Thread(target=self._pump, args=(process,), daemon=True)
        process.reader.start()
        self.processes.append(process)
        self.say(f"started {name} (pid {popen.pid}): {' '.join(args)}")

    def _pump(self, process: _Process) -> None:
        for raw in iter(process.popen.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            process.tail.append(line)
            self.write(f"[{process.name}] {line}\n")
        process.popen.stdout.close()

    def of_role(self, *roles: str) -> list[_Process]:
        return [p for p in self.processes if p.role in roles]

    def stop(self, grace: float) -> None:
        """SIGTERM every process group, SIGKILL what is left after ``grace`` seconds, reap.
        A second interrupt while waiting (``timeout`` sends SIGTERM twice) skips to SIGKILL."""
        try:
            running = [p for p in self.processes if p.popen.poll() is None]
            for process in self.processes:  # exited leaders too: their children may remain
                _signal_group(process, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for process in running:
                try:
                    process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        finally:
            for process in self.processes:
                _signal_group(process, signal.SIGKILL)
                process.popen.wait()
                if process.reader is not None:
                    process.reader.join(timeout=1.0)


def _die_with_parent(parent: int):
    """The ``preexec_fn`` that makes a child get SIGKILL when ``parent`` (this process) dies,
    or ``None`` where Linux's ``prctl`` is missing. The kernel sends the signal when the
    *thread* that forked exits: :func:`launch` forks from its caller's thread, which waits in
    :func:`launch` until every child is gone."""
    if _LIBC is None:
        return None

    def preexec() -> None:  # runs in the child between fork and exec: no imports, no locks
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os._exit(1)

    return preexec


def _signal_group(process: _Process, signum: int) -> None:
    try:
        os.killpg(process.popen.pid, signum)  # the group the process leads (its own session)
    except ProcessLookupError:
        pass  # the group is empty


def launch(command: Sequence[str], num_workers: int = 1, num_servers: int = 1, *,
           kvstore: str = "dist_sync", timeout: float | None = None, grace: float = 5.0,
           out: TextIO | None = None, python: str = sys.executable) -> None:
    """Run ``command`` as ``num_workers`` workers, with ``num_servers`` servers and a
    scheduler, on loopback; return when the job has finished.

    ``kvstore`` (``'dist_sync'`` or ``'dist_async'``) reaches the workers as
    ``$ADAGRAD_GLUON_KVSTORE`` (see :func:`~adagrad_gluon.distributed.environment.kvstore_type`).
    ``timeout`` bounds the whole job in seconds (``None``: no bound); ``grace`` is how long
    the servers may take to exit after the workers, and processes after SIGTERM. The output of
    every process goes to ``out`` (default ``sys.stdout``) with a role prefix; ``python`` runs
    the scheduler and the servers. Raises :class:`LaunchError` if the job fails or times out;
    no process of the job is left running in any case (``KeyboardInterrupt`` included).
    """
    if isinstance(command, str) or not isinstance(command, Sequence) or not all(
            isinstance(arg, str) for arg in command):
        raise TypeError(f"command must be a sequence of strings, got {command!r}")
    if not command:
        raise ValueError("command must not be empty: give the worker's command line")
    num_workers = check_positive_int("num_workers", num_workers)
    num_servers = check_positive_int("num_servers", num_servers)
    if timeout is not None:
        timeout = check_number("timeout", timeout, strict=True)
    grace = check_number("grace", grace)
    check_choice("kvstore", kvstore, KVSTORE_TYPES)
    port = free_port()
    options = dict(root_uri=LOOPBACK, root_port=port, num_workers=num_workers,
                   num_servers=num_servers, node_host=LOOPBACK, interface="lo", kvstore=kvstore)
    job = _Job(sys.stdout if out is None else out)
    start = time.monotonic()
    try:
        bootstrap = [python, "-m", "adagrad_gluon.distributed.server", "--role"]
        job.say(f"scheduler on {LOOPBACK}:{port}; {num_servers} server(s), {num_workers} "
                f"worker(s), {kvstore}")
        job.start("scheduler", "scheduler", [*bootstrap, "scheduler"],
                  role_environment("scheduler", **options))
        for index in range(num_servers):
            job.start(f"server {index}", "server", [*bootstrap, "server"],
                      role_environment("server", **options))
        for index in range(num_workers):
            job.start(f"worker {index}", "worker", command, role_environment("worker", **options))
        _watch(job, start, timeout, grace)
    finally:
        stopping = time.monotonic()
        job.stop(grace)
        job.say(f"all processes gone {time.monotonic() - stopping:.2f} s after the job ended "
                f"({time.monotonic() - start:.2f} s in all)")


def _watch(job: _Job, start: float, timeout: float | None, grace: float) -> None:
    """Return once every process has exited with status 0; raise :class:`LaunchError` at the
    first other status, at the timeout, or if a server or the scheduler is still running
    ``grace`` seconds after the last worker. (The servers and the scheduler exit when worker 0
    tells them that all workers are done, which may be a moment before the workers exit.)"""
    workers_done: float | None = None
    while True:
        for process in job.processes:
            if process.popen.poll() not in (None, 0):
                _fail(job, process.describe_exit(), process.name)
        now = time.monotonic()
        if workers_done is None and all(p.popen.poll() == 0 for p in job.of_role("worker")):
            workers_done = now
            job.say(f"all workers finished {now - start:.2f} s after the launch")
        if workers_done is not None:
            left = [p.name for p in job.processes if p.popen.poll() is None]
            if not left:
                return
            if now - workers_done > grace:
                _fail(job, f"{', '.join(left)} still running {grace:g} s after the workers "
                           f"finished", left[0])
        if timeout is not None and now - start > timeout:
            left = [p.name for p in job.processes if p.popen.poll() is None]
            _fail(job, f"timed out after {timeout:g} s; still running: {', '.join(left)}",
                  None, TIMEOUT_STATUS)
        time.sleep(POLL_SECONDS)


def _fail(job: _Job, cause: str, process: str | None, returncode: int = 1) -> None:
    others = sum(p.popen.poll() is None for p in job.processes)
    job.say(f"error: {cause}; stopping the {others} process(es) still running")
    raise LaunchError(cause, process, returncode)

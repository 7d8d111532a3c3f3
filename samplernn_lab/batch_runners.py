"""Where a batch's runs execute: subprocesses on this machine (``_Local``) or Ray tasks (``_Ray``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from .batch_state import read_json, run_summary, write_json
from .errors import LabError

# exit statuses of a run stopped by the user (Ctrl-C reaches the whole process group) or by a polite kill: not
# a process that died, so not started again
INTERRUPTED = {130, 143, -signal.SIGINT, -signal.SIGTERM}
# seconds a closing batch gives its runs to end by themselves (Ctrl-C in a terminal reached them too) before it
# stops them with SIGTERM (a `kill PID` of the batch alone did not)
STOP_GRACE_SECONDS = 10.0


def run_env(jobs: int) -> dict[str, str]:
    """The environment of a local run's process: with ``jobs`` > 1 runs at once, its share of this machine's
    CPUs as its torch threads (``OMP_NUM_THREADS``, at least 1; a value the user set is kept).

    Each run would otherwise take every core, ``jobs`` times more busy threads than there are cores, and torch's
    threads wait on each other at every small op (two runs of the chain on 2 cores: 37x the time a training
    step; ``benchmarks/RESULTS.md``, "Runs side by side"). One run at a time keeps torch's own default.
    """
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // jobs)))
    return env


def usable_cpus() -> int:
    """The CPUs this process may use: a container's or a taskset's, not the whole machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_command(spec: Path) -> list[str]:
    """The command line of one run's process (:func:`samplernn_lab.batch._worker_main`)."""
    return [sys.executable, "-m", "samplernn_lab.batch", str(spec)]


class _Local:
    """Runs jobs as subprocesses (``jobs`` at once, sharing the CPUs: :func:`run_env`); a process that dies is
    started again ``retries`` times, one that was interrupted is not, and none is started once the batch is
    closing (Ctrl-C, SIGTERM); closing stops the runs still going after ``STOP_GRACE_SECONDS`` (SIGTERM: each
    says stopped and keeps its last checkpoint; SIGKILL after as long again), so none trains on as an orphan."""

    def __init__(self, jobs: int, retries: int):
        self.pool = ThreadPoolExecutor(max_workers=max(1, jobs))
        self.env = run_env(jobs)
        self.retries = retries
        self.futures: dict = {}
        self.stopping = False
        self.lock = threading.Lock()  # stopping and procs change together: no process starts after close
        self.procs: set[subprocess.Popen] = set()

    def submit(self, job: dict, options: dict) -> None:
        self.futures[self.pool.submit(self._one, job, options)] = job

    def _one(self, job: dict, options: dict) -> dict:
        logs = Path(job["run"]).parent / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        spec = logs / f"{job['name']}.job.json"
        write_json(spec, {"job": job, "options": options})
        code = None
        for _ in range(self.retries + 1):
            with open(logs / f"{job['name']}.log", "a") as log, self.lock:
                if self.stopping:
                    break
                proc = subprocess.Popen(run_command(spec), stdout=log, stderr=subprocess.STDOUT, env=self.env)
                self.procs.add(proc)
            try:
                code = proc.wait()
            finally:
                with self.lock:
                    self.procs.discard(proc)
            state = read_json(logs / f"{job['name']}.json")
            if code == 0 and state.get("state") in ("done", "failed"):
                return _result_from_state(job, state)
            if code in INTERRUPTED or self.stopping:
                return {**job, "status": "failed", "error": f"interrupted (exit {code}); run the batch again to resume"}
        if self.stopping:  # closed between two attempts, or before the first
            return {**job, "status": "failed", "error": "interrupted; run the batch again to resume"}
        return {**job, "status": "failed", "error": f"the run's process died (exit {code}) {self.retries + 1} times"}

    def done(self, timeout: float) -> list[dict]:
        finished, _ = wait(list(self.futures), timeout=timeout, return_when=FIRST_COMPLETED)
        return [self._pop(f) for f in finished]

    def _pop(self, future) -> dict:
        job = self.futures.pop(future)
        try:
            return future.result()
        except Exception as e:
            return {**job, "status": "failed", "error": f"{type(e).__name__}: {e}"}

    def close(self) -> None:
        with self.lock:
            self.stopping = True  # before waiting: a run stopped by Ctrl-C is not started again meanwhile
            procs = list(self.procs)
        # each step gives the runs still going STOP_GRACE_SECONDS: to end by themselves (Ctrl-C reached them too),
        # then after SIGTERM (a run says stopped, its last checkpoint whole), then after SIGKILL (one that ignores
        # SIGTERM would otherwise keep the batch waiting on it for as long as it trains)
        for stop in (None, "terminate", "kill"):
            going = [p for p in procs if p.poll() is None]
            if not going:
                break
            for proc in going:
                if stop:
                    getattr(proc, stop)()
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            for proc in going:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        self.pool.shutdown(wait=True, cancel_futures=True)


def _result_from_state(job: dict, state: dict) -> dict:
    """A run's result from the state file its process left."""
    if state.get("state") == "done":
        return {**job, "status": "ok", "minutes": state.get("minutes"), **run_summary(Path(job["run"]))}
    return {**job, "status": "failed", "error": state.get("error", "failed")}


def start_local_ray(tries: int = 3, **kwargs) -> None:
    """``ray.init`` of a new local instance (no dashboard unless asked), tried again when it times out.

    Ray gives its node a fixed 30 s to register at start-up, which a loaded 2-core machine can miss.
    """
    import ray

    kwargs = {"include_dashboard": False, **kwargs}
    for attempt in range(tries):
        try:
            ray.init(address="local", **kwargs)
            return
        except Exception as e:  # ray raises a bare Exception for this
            if "timed out during startup" not in str(e) or attempt == tries - 1:
                raise
            ray.shutdown()
            print(f"Ray's start timed out; trying again ({attempt + 2} of {tries})", file=sys.stderr)


class _Ray:
    """Runs jobs as Ray tasks: on a local instance (``address`` None or "local"), the cluster this machine
    belongs to ("auto", or ``HOST:PORT``), or through Ray Client (``ray://HOST:PORT``)."""

    def __init__(
        self,
        address: str | None,
        cpus_per_run: float | None,
        gpus_per_run: float | None,
        retries: int,
        task: Callable[[dict, dict], dict],
    ):
        try:
            import ray
        except ImportError:
            raise LabError("--ray: Ray is not installed; pip install 'samplernn-lab[cluster]'") from None
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            try:
                if address in (None, "", "local"):
                    start_local_ray(**kwargs)
                else:
                    ray.init(address=address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise LabError(f"--ray {address or ''}: cannot reach a Ray cluster: {e}".splitlines()[0]) from None
            self.started = True
        if gpus_per_run is None:
            gpus_per_run = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        self.options = {
            "num_cpus": 1 if cpus_per_run is None else cpus_per_run,
            "num_gpus": gpus_per_run,
            "max_retries": retries,
            "retry_exceptions": False,
        }
        self.task = ray.remote(task)
        self.refs: dict = {}

    def submit(self, job: dict, options: dict) -> None:
        ref = self.task.options(name=f"samplernn-lab {job['name']}", **self.options).remote(job, options)
        self.refs[ref] = job

    def done(self, timeout: float) -> list[dict]:
        ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        results = []
        for ref in ready:
            job = self.refs.pop(ref)
            try:
                results.append(self.ray.get(ref))
            except Exception as e:  # the task's worker or node died more often than --retries allows
                first = (str(e).strip().splitlines() or [""])[0]
                results.append({**job, "status": "failed", "error": f"{type(e).__name__}: {first}"})
        return results

    def close(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)
        if self.started:
            self.ray.shutdown()

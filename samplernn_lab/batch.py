"""The batch: one run per source (and per setting of a grid), scheduled locally or on Ray, and the triage.

Each run is one call of :func:`run_one`, which executes the same notebook chain as ``samplernn-lab run``
into ``OUT/<name>/`` and resumes a run that stopped part-way (training from its last checkpoint, the
notebooks after training again). It runs in a process of its own: a subprocess per run without Ray
(``jobs`` at once), a Ray task with ``ray`` (one per free ``cpus_per_run``/``gpus_per_run`` on any node;
a task whose worker or node dies is retried ``retries`` times and resumes the same way).

What a batch writes into ``OUT``::

    OUT/batch.json           the plan: every run's name, source and grid setting, and the options
    OUT/<name>/              each run's folder (see samplernn_lab.pipeline); <name>/batch-run.json says
                             which source and setting it holds
    OUT/logs/<name>.log      what the run printed; OUT/logs/<name>.json its state (running, done, failed)
    OUT/summary.csv          a row per run, a column per grid field; rewritten as each run finishes
    OUT/index.html           players and figures, grouped by setting (with a grid) or category, sortable

``status(OUT)`` (``samplernn-lab batch OUT --status``) reads these while the batch runs.
"""

from __future__ import annotations

import csv
import html
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import LabError
from .files import atomic_path, write_text
from .progress import MetricsTail
from .rundir import marker_kind, write_marker

CATEGORY_ORDER = {"varied": 0, "noise": 1, "tone": 2, "silence": 3, "failed": 4}
MARKER = "batch-run.json"  # which job of a batch a run folder holds (beside the lab's own mark)


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["lr=0.001,0.003", "quantization=linear,mulaw"]`` -> ``{"lr": ["0.001", "0.003"], ...}``."""
    grid: dict[str, list[str]] = {}
    for item in items:
        field, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not field.strip() or not vals:
            raise LabError(f"--grid {item}: expected FIELD=V1,V2,... (e.g. lr=0.001,0.003)")
        if field.strip() in grid:
            raise LabError(f"--grid {item}: {field.strip()} is given twice")
        grid[field.strip()] = vals
    return grid


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "=.-_+" else "_" for c in text)


def plan(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    grid: dict[str, list[str]] | None = None,
    overrides: Sequence[str] = (),
    preset: str = "sketch",
) -> list[dict]:
    """One job per source per combination of the grid's values.

    Returns dicts with ``name`` (``<stem>`` or ``<stem>__field=value__...``), ``source``, ``grid``
    (the grid's values of this run), ``overrides`` (``--set`` then the grid's), ``run`` (its folder) and,
    for a source that cannot be found, ``error``. Folders expand into their audio files. A bad grid
    field or value raises LabError before anything runs.
    """
    from .dataset import find_sources
    from .presets import get_preset

    out = Path(out).resolve()
    grid = grid or {}
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
    for combo in combos:
        get_preset(preset, list(overrides) + [f"{k}={v}" for k, v in combo.items()])  # fail early
    files: list[tuple[Path, str | None]] = []
    for src in sources:
        try:
            files += [(f.resolve(), None) for f in find_sources([src])]
        except LabError as e:  # reported in the table; the other sources run
            files.append((Path(src).resolve(), str(e)))
    jobs = []
    for (src, error), stem in zip(files, _unique_names([f for f, _ in files])):
        for combo in combos:
            name = "__".join([stem] + [_safe(f"{k}={v}") for k, v in combo.items()])
            job = {
                "name": name,
                "source": str(src),
                "grid": combo,
                "run": str(out / name),
                "overrides": list(overrides) + [f"{k}={v}" for k, v in combo.items()],
            }
            if error:
                job["error"] = error
            jobs.append(job)
    return jobs


def run_one(job: dict, options: dict) -> dict:
    """Run (or resume, or skip when done) one job of a batch; what ``batch`` runs locally and on Ray.

    Parameters
    ----------
    job : one of :func:`plan`'s dicts.
    options : keyword arguments of :func:`samplernn_lab.pipeline.run` shared by every run (preset,
        max_minutes, epochs, seconds, temperatures, seed).

    Returns the run's result: the job, ``status`` (``ok``, ``skipped (done)`` or ``failed``),
    ``error`` when failed, ``minutes`` of this attempt, and its ``summary.json`` when it has one. A
    failing run is returned, not raised, so Ray retries only runs whose worker died.
    """
    from .pipeline import run

    run_dir = Path(job["run"])
    logs = run_dir.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    state_file = logs / f"{job['name']}.json"
    if (run_dir / "summary.json").exists():
        return {**job, "status": "skipped (done)", **_summary(run_dir)}
    previous = _read_json(state_file)
    attempt = int(previous.get("attempt", 0)) + 1
    start = time.time()

    def finish(result: dict) -> dict:
        result = {**result, "minutes": round((time.time() - start) / 60, 2), "attempt": attempt}
        _write_json(
            state_file,
            {
                **job,
                **{k: v for k, v in result.items() if k in ("status", "error", "minutes")},
                "state": "done" if result["status"] == "ok" else "failed",
                "attempt": attempt,
                "host": socket.gethostname(),
                "node": _ray_node(),
            },
        )
        return result

    error = job.get("error") or _foreign(run_dir, job) or _unreadable(job["source"], run_dir)
    if error:
        return finish({**job, "status": "failed", "error": error})
    run_dir.mkdir(parents=True, exist_ok=True)
    if marker_kind(run_dir) is None:  # the lab's mark, so that run (and its --overwrite) know the folder
        write_marker(run_dir, "run")
    _write_json(run_dir / MARKER, {k: job[k] for k in ("name", "source", "grid", "overrides")})
    _write_json(
        state_file,
        {
            **job,
            "state": "running",
            "attempt": attempt,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node": _ray_node(),
            "started": start,
        },
    )
    try:
        with open(logs / f"{job['name']}.log", "a") as log, redirect_stdout(log), redirect_stderr(log):
            print(f"--- attempt {attempt} on {socket.gethostname()} (pid {os.getpid()})", flush=True)
            summary = run(job["source"], run_dir, overrides=job["overrides"], progress=False, resume=True, **options)
    except Exception as e:  # a failing run is reported with its error; the others go on
        first = (str(e).strip().splitlines() or [""])[0]
        return finish(
            {**job, "status": "failed", "error": first if isinstance(e, LabError) else f"{type(e).__name__}: {first}"}
        )
    return finish({**job, "status": "ok", **summary, "run": str(run_dir)})


def _foreign(run_dir: Path, job: dict) -> str | None:
    """Why ``run_dir`` cannot take this job: it holds files the lab did not make, or another run."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    mine = _read_json(run_dir / MARKER)
    if not mine:
        return f"{run_dir}: holds files the batch did not make; move them or choose another --out"
    if mine.get("source") != job["source"] or mine.get("overrides") != job["overrides"]:
        return (
            f"{run_dir}: holds a run of {Path(mine.get('source', '?')).name} with other settings; choose another --out"
        )
    return None


def _ray_node() -> str | None:
    """The Ray node this runs on (in a Ray task), else None."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


def _unreadable(source: str, run_dir: Path) -> str | None:
    """A source that is no audio fails here, before any notebook starts (seconds, not a kernel's start)."""
    if (run_dir / "dataset" / "manifest.json").exists():
        return None
    from .audio import load

    try:
        load(source)
    except LabError as e:
        return str(e)
    return None


def _summary(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["run"] = str(run_dir)  # where it is now (a folder may have been moved)
    return summary


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=1) + "\n")


def _worker_main(job_file: str) -> int:
    """``python -m samplernn_lab.batch JOB.json``: one run in a process of its own (batch without Ray)."""
    spec = json.loads(Path(job_file).read_text())
    run_one(spec["job"], spec["options"])
    return 0


class _Local:
    """Runs jobs as subprocesses (``jobs`` at once); a process that dies is started again ``retries`` times."""

    def __init__(self, jobs: int, retries: int):
        self.pool = ThreadPoolExecutor(max_workers=max(1, jobs))
        self.retries = retries
        self.futures: dict = {}

    def submit(self, job: dict, options: dict) -> None:
        self.futures[self.pool.submit(self._one, job, options)] = job

    def _one(self, job: dict, options: dict) -> dict:
        logs = Path(job["run"]).parent / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        spec = logs / f"{job['name']}.job.json"
        _write_json(spec, {"job": job, "options": options})
        code = None
        for _ in range(self.retries + 1):
            with open(logs / f"{job['name']}.log", "a") as log:
                code = subprocess.run(
                    [sys.executable, "-m", "samplernn_lab.batch", str(spec)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "TQDM_DISABLE": "1"},
                ).returncode
            state = _read_json(logs / f"{job['name']}.json")
            if code == 0 and state.get("state") in ("done", "failed"):
                return _result_from_state(job, state)
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
        self.pool.shutdown(wait=True, cancel_futures=True)


def _result_from_state(job: dict, state: dict) -> dict:
    if state.get("state") == "done":
        return {**job, "status": "ok", "minutes": state.get("minutes"), **_summary(Path(job["run"]))}
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

    def __init__(self, address: str | None, cpus_per_run: float | None, gpus_per_run: float | None, retries: int):
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
        self.task = ray.remote(run_one)
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


def batch(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    jobs: int = 1,
    preset: str = "sketch",
    max_minutes: float | None = None,
    epochs: int | None = None,
    seconds: float | None = None,
    temperatures: Sequence[float] | None = None,
    seed: int = 0,
    overrides: Sequence[str] = (),
    progress: bool = True,
    grid: dict[str, list[str]] | Sequence[str] | None = None,
    ray: str | None | bool = False,
    cpus_per_run: float | None = None,
    gpus_per_run: float | None = None,
    retries: int = 2,
    max_steps: int | None = None,
    poll_seconds: float = 2.0,
    rescue: bool = True,
) -> dict:
    """One run per source and grid setting into ``out/<name>/``, with ``summary.csv`` and ``index.html``
    rewritten as each run finishes.

    Parameters
    ----------
    sources : audio files or folders of them.
    jobs : runs at once without Ray.
    grid : ``{"lr": ["0.001", "0.003"]}`` or ``["lr=0.001,0.003"]``: one run per combination.
    ray : False (no Ray), None or "local" (a local Ray instance), "auto", "HOST:PORT" or
        "ray://HOST:PORT". An already initialised Ray (``ray.init`` in this process) is used as it is.
    cpus_per_run, gpus_per_run : Ray resources per run (default 1 CPU; 1 GPU where the cluster has GPUs).
    retries : times a run whose process, worker or node died is started again (resuming).
    max_steps : training steps per run in all.
    rescue : re-prime renders' trapped streams (see :func:`samplernn_lab.pipeline.run`).

    A run that stopped part-way resumes; a finished run (``summary.json``) is skipped; a failing run or
    missing source is reported with its error and does not stop the others. Returns counts (``ok``,
    ``failed``), the paths of ``index``/``csv`` and every run's ``results``.
    """
    out = Path(out).resolve()
    if isinstance(grid, (list, tuple)):
        grid = parse_grid(grid)
    grid = dict(grid or {})
    overrides = list(overrides) + ([f"train.max_steps={max_steps}"] if max_steps is not None else [])
    todo = plan(sources, out, grid, overrides, preset)
    options = {
        "preset": preset,
        "max_minutes": max_minutes,
        "epochs": epochs,
        "seconds": seconds,
        "temperatures": list(temperatures) if temperatures else None,
        "seed": seed,
        "rescue": rescue,
    }
    _claim_batch_out(out)
    (out / "logs").mkdir(exist_ok=True)
    _write_json(out / "batch.json", {"grid": grid, "options": options, "jobs": todo})
    runner = (
        _Ray(None if ray is True else ray, cpus_per_run, gpus_per_run, retries)
        if ray is not False
        else _Local(jobs, retries)
    )
    results: dict[str, dict] = {}
    bars: dict[str, Any] = {}
    tails: dict[str, MetricsTail] = {}
    overall = tqdm(total=len(todo), desc="batch", unit="run", disable=not progress)
    try:
        for job in todo:
            if (Path(job["run"]) / "summary.json").exists() or job.get("error"):  # nothing to schedule
                results[job["name"]] = run_one(job, options)
            else:
                runner.submit(job, options)
        _record(out, todo, results, grid, overall, tails)
        written = time.monotonic()
        while len(results) < len(todo):
            finished = runner.done(timeout=poll_seconds)
            for r in finished:
                results[r["name"]] = r
                if r["status"] == "failed":
                    tqdm.write(f"{r['name']}: failed: {r['error']}")
                if r["name"] in bars:
                    bars.pop(r["name"]).close()
            if finished or time.monotonic() - written > 30:  # and the running runs' progress now and then
                _record(out, todo, results, grid, overall, tails)
                written = time.monotonic()
            if progress:
                _run_bars(out, todo, results, bars, tails, max_steps)
    finally:
        for bar in bars.values():
            bar.close()
        overall.close()
        runner.close()
    ordered = [results[j["name"]] for j in todo]
    failed = sum(r["status"] == "failed" for r in ordered)
    return {
        "ok": len(ordered) - failed,
        "failed": failed,
        "index": str(out / "index.html"),
        "csv": str(out / "summary.csv"),
        "results": ordered,
    }


def _claim_batch_out(out: Path) -> None:
    """Make and mark ``out``; refuse one the lab did not make that holds a file the batch would overwrite
    (its run folders are checked one by one, see :func:`_foreign`)."""
    if marker_kind(out) != "batch" and not (out / "batch.json").is_file():  # batch.json: made before the mark
        mine = [name for name in ("logs", "summary.csv", "index.html") if (out / name).exists()]
        if mine:
            raise LabError(f"{out}: holds {', '.join(mine)}, not made by samplernn-lab batch; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if marker_kind(out) is None:
        write_marker(out, "batch")


def _record(out: Path, todo: list[dict], results: dict, grid: dict, overall, tails: dict) -> None:
    """Rewrite the triage with what is known now, and move the bar over runs."""
    write_triage(out, [results.get(j["name"]) or _pending(j, out, tails) for j in todo], list(grid))
    overall.n = len(results)
    counts = Counter(r.get("category") or r["status"] for r in results.values() if r["status"] != "failed")
    counts["failed"] = sum(r["status"] == "failed" for r in results.values())
    overall.set_postfix_str(
        " ".join(
            f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (CATEGORY_ORDER.get(kv[0], 5), kv[0])) if v
        ),
        refresh=False,
    )
    overall.refresh()


def _pending(job: dict, out: Path, tails: dict | None = None) -> dict:
    """A row for a run that has not finished: waiting, or running with its progress."""
    state = _read_json(out / "logs" / f"{job['name']}.json")
    if state.get("state") == "running":
        tail = (tails or {}).setdefault(job["name"], MetricsTail(job["run"])).read()
        return {**job, "status": f"running ({tail.line()})"}
    if state.get("state") == "failed":
        return {**job, "status": "failed", "error": state.get("error", "")}
    return {**job, "status": "waiting"}


def _run_bars(out: Path, todo: list[dict], results: dict, bars: dict, tails: dict, max_steps: int | None) -> None:
    """A bar per running run: its steps, epoch, loss and minutes (read from its metrics.jsonl)."""
    for job in todo:
        name = job["name"]
        if name in results:
            continue
        if name not in bars:
            if _read_json(out / "logs" / f"{name}.json").get("state") != "running":
                continue
            bars[name] = tqdm(total=max_steps, desc=name, unit="step", leave=False)
        tail = tails.setdefault(name, MetricsTail(job["run"])).read()
        bar = bars[name]
        bar.n = tail.step
        bar.set_postfix_str(tail.line(), refresh=False)
        bar.refresh()


def status(out: str | os.PathLike) -> list[dict]:
    """Every run of the batch in ``out`` as it stands: name, grid values, state (done, failed,
    ``running (epoch, step, bits, minutes)``, ``stopped (...)`` for a run that stopped part-way, waiting),
    category, epochs, best validation bits and error."""
    out = Path(out).resolve()
    spec = _read_json(out / "batch.json")
    if not spec:
        raise LabError(f"{out}: no batch here (no batch.json)")
    rows = []
    for job in spec["jobs"]:
        run_dir = Path(job["run"])
        row = {"name": job["name"], **job.get("grid", {})}
        if (run_dir / "summary.json").exists():
            s = _summary(run_dir)
            rows.append(
                {
                    **row,
                    "state": "done",
                    "category": s.get("category") or "",
                    "epochs": s.get("epochs", ""),
                    "best_val_bits": s.get("best_val_bits"),
                    "error": "",
                }
            )
            continue
        state = _read_json(out / "logs" / f"{job['name']}.json")
        tail = MetricsTail(run_dir).read()
        if state.get("state") == "failed":
            now = "failed"
        elif state.get("state") == "running":
            now = f"running ({tail.line()})"
        else:
            now = f"stopped ({tail.line()})" if tail.started else "waiting"
        rows.append(
            {
                **row,
                "state": now,
                "category": "",
                "epochs": tail.epoch if tail.started else "",
                "best_val_bits": tail.val_bits,
                "error": state.get("error", "") if now == "failed" else "",
            }
        )
    return rows


def format_status(rows: list[dict]) -> str:
    """The status rows as a fixed-width table."""
    if not rows:
        return "no runs"
    fields = [k for k in rows[0] if k != "error"] + (["error"] if any(r.get("error") for r in rows) else [])
    cells = [
        [
            ("" if r.get(f) is None else f"{r[f]:.3f}" if isinstance(r.get(f), float) else str(r.get(f, "")))
            for f in fields
        ]
        for r in rows
    ]
    widths = [max(len(f), *(len(c[i]) for c in cells)) for i, f in enumerate(fields)]
    lines = ["  ".join(f.ljust(w) for f, w in zip(fields, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    counts = Counter(r["state"].split(" ")[0] for r in rows)
    lines.append(", ".join(f"{v} {k}" for k, v in counts.items()))
    return "\n".join(lines)


def _unique_names(files: list[Path]) -> list[str]:
    seen: Counter = Counter()
    names = []
    for f in files:
        seen[f.stem] += 1
        names.append(f.stem if seen[f.stem] == 1 else f"{f.stem}-{seen[f.stem]}")
    return names


def write_triage(out: Path, results: list[dict], grid_fields: Sequence[str] = ()) -> None:
    """``summary.csv`` (a row per run, a column per grid field) and ``index.html`` (players and figures,
    grouped by grid setting when there is a grid, else by category; sortable). Both written atomically.

    ``results`` are :func:`run_one`'s results; rows of runs not finished have only the job's fields
    and a ``status`` (``waiting`` or ``running (...)``).
    """
    grid_fields = list(grid_fields)
    rows = []
    for r in results:
        renders = r.get("renders", [])
        settings = r.get("grid", {})
        rows.append(
            {
                "source": r.get("source", ""),
                "name": r["name"],
                **{f: settings.get(f, "") for f in grid_fields},
                "status": r["status"],
                "category": r.get("category") or ("failed" if r["status"] == "failed" else ""),
                "render_categories": " ".join(x["category"] for x in renders),
                "best_val_bits": "" if r.get("best_val_bits") is None else f"{r['best_val_bits']:.4f}",
                "resemblance": "" if r.get("resemblance") is None else f"{r['resemblance']:.3f}",
                "copy_share": "" if r.get("copy_share") is None else f"{r['copy_share']:.3f}",
                "epochs": r.get("epochs", ""),
                "run": os.path.relpath(r["run"], out) if r.get("run") and r["status"] != "waiting" else "",
                "renders": " ".join(os.path.relpath(Path(r["run"]) / x["file"], out) for x in renders),
                "figure": next(
                    (
                        os.path.relpath(Path(r["run"]) / f, out)
                        for f in r.get("figures", [])
                        if "poster" in f and not f.endswith("_low.png")
                    ),
                    "",
                ),
                "error": r.get("error", ""),
            }
        )
    rows.sort(key=lambda x: ([_value_key(x[f]) for f in grid_fields], CATEGORY_ORDER.get(x["category"], 5), x["name"]))
    fields = list(rows[0]) if rows else ["source", "name", *grid_fields]
    with atomic_path(out / "summary.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    write_text(out / "index.html", _index_html(rows, grid_fields))


def _value_key(value: str) -> tuple:
    """Numbers in numeric order (9 before 10), then words."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _index_html(rows: list[dict], grid_fields: Sequence[str] = ()) -> str:
    e = html.escape
    grid_fields = list(grid_fields)
    groups: dict[str, list[dict]] = {}
    for r in rows:  # rows come sorted by setting, then category
        groups.setdefault(" ".join(f"{f}={r[f]}" for f in grid_fields), []).append(r)
    columns = [
        "source",
        *grid_fields,
        "category",
        "renders",
        "best val bits",
        "resemblance",
        "copied",
        "epochs",
        "listen",
        "figure",
        "error",
    ]
    bodies = []
    for label, members in groups.items():
        lines = []
        if label:
            counts = Counter(r["category"] or "unfinished" for r in members)
            ordered = sorted(counts.items(), key=lambda kv: CATEGORY_ORDER.get(kv[0], 5))
            summary = ", ".join(f"{v} {k}" for k, v in ordered)
            lines.append(
                f"<tr class='group'><th colspan='{len(columns)}'>{e(label)} &nbsp; <small>{e(summary)}"
                f"</small></th></tr>"
            )
        for r in members:
            players = "".join(
                f"<div><audio controls preload='none' src='{e(p)}'></audio><br><small>{e(Path(p).name)}</small></div>"
                for p in r["renders"].split()
            )
            fig = (
                f"<a href='{e(r['figure'])}'><img src='{e(r['figure'])}' width='360' loading='lazy'></a>"
                if r["figure"]
                else ""
            )
            category = r["category"] or r["status"]
            cells = [
                f"<td>{e(r['name'])}</td>",
                *(f"<td>{e(str(r[f]))}</td>" for f in grid_fields),
                f"<td class='cat'>{e(category)}</td>",
                f"<td>{e(r['render_categories'])}</td>",
                f"<td>{e(r['best_val_bits'])}</td>",
                f"<td>{e(r['resemblance'])}</td>",
                f"<td>{e(r['copy_share'])}</td>",
                f"<td>{e(str(r['epochs']))}</td>",
                f"<td>{players}</td>",
                f"<td>{fig}</td>",
                f"<td>{e(r['error'])}</td>",
            ]
            lines.append(f"<tr class='{e(r['category'] or 'unfinished')}'>{''.join(cells)}</tr>")
        bodies.append("<tbody>\n" + "\n".join(lines) + "\n</tbody>")
    done = sum(bool(r["category"]) for r in rows)
    grouping = (
        f"Grouped by setting ({', '.join(grid_fields)}), then by category" if grid_fields else "Grouped by category"
    )
    tips = {"resemblance": " title='0 = like the source, 1 = like noise of its colour'"}
    heads = "".join(f"<th{tips.get(c, '')}>{e(c)}</th>" for c in columns)
    return f"""<!doctype html><html><head><meta charset='utf-8'><title>samplernn-lab batch</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top}} thead th{{cursor:pointer;background:#eee}}
tr.group th{{text-align:left;background:#f6f6e8}}
.varied .cat{{color:#282}} .tone .cat{{color:#c60}} .noise .cat{{color:#36c}} .silence .cat{{color:#888}}
.failed .cat{{color:#c00}} .unfinished .cat{{color:#888;font-style:italic}}</style></head><body>
<h1>samplernn-lab batch: {len(rows)} runs</h1>
<p>{done} of {len(rows)} finished (reload to update while the batch runs). {grouping} (varied first: those
learned something). Click a header to sort within each group.</p>
<table id='t'><thead><tr>{heads}</tr></thead>
{chr(10).join(bodies)}
</table>
<script>
document.querySelectorAll('thead th').forEach((th, i) => th.onclick = () => {{
  const dir = th.dataset.dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
  document.querySelectorAll('#t tbody').forEach(tb => {{
    const rows = [...tb.rows].filter(r => !r.classList.contains('group'));
    rows.sort((a, b) => a.cells[i].innerText.localeCompare(b.cells[i].innerText, undefined, {{numeric: true}}) *
              (dir === 'asc' ? 1 : -1));
    rows.forEach(r => tb.appendChild(r));
  }});
}});
</script></body></html>
"""


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1]))

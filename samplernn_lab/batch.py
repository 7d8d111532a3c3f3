"""The batch: one run per source (and per setting of a grid), scheduled locally or on Ray, and the triage.

Each run is one call of :func:`run_one`, which executes the same notebook chain as ``samplernn-lab run``
into ``OUT/<name>/`` and resumes a run that stopped part-way (training from its last checkpoint, the
notebooks after training again). It runs in a process of its own: a subprocess per run without Ray
(``jobs`` at once), a Ray task with ``ray`` (one per free ``cpus_per_run``/``gpus_per_run`` on any node;
a task whose worker or node dies is retried ``retries`` times and resumes the same way).

What a batch writes into ``OUT``::

    OUT/batch.json           the plan: every run's name, source and grid setting, and the options
    OUT/batch-driver.json    the batch's own process while it runs (pid, host, start), and when it ended
    OUT/<name>/              each run's folder (see samplernn_lab.pipeline); <name>/batch-run.json says
                             which source and setting it holds
    OUT/logs/<name>.log      what the run printed; OUT/logs/<name>.json its state (running, done, failed)
    OUT/summary.csv          a row per run, a column per grid field; rewritten as each run finishes
    OUT/index.html           players and figures, grouped by setting (with a grid) or category, sortable

``status(OUT)`` (``samplernn-lab batch OUT --status``) reads these while the batch runs.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .batch_runners import _Local, _Ray
from .batch_runners import start_local_ray as start_local_ray  # re-exported: the old import path
from .batch_state import DRIVER, driver_live, pending_row, read_json, run_summary, write_json
from .batch_state import format_status as format_status  # re-exported
from .batch_state import status as status  # re-exported
from .errors import LabError
from .progress import MetricsTail
from .rundir import marker_kind, write_marker
from .triage_page import count_summary, write_triage

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
    if _finished_here(run_dir, job, options):
        return {**job, "status": "skipped (done)", **run_summary(run_dir)}
    previous = read_json(state_file)
    attempt = int(previous.get("attempt", 0)) + 1
    start = time.time()

    def finish(result: dict) -> dict:
        result = {**result, "minutes": round((time.time() - start) / 60, 2), "attempt": attempt}
        write_json(
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

    error = job.get("error") or _foreign(run_dir, job, options) or _unreadable(job["source"], run_dir)
    if error:
        return finish({**job, "status": "failed", "error": error})
    run_dir.mkdir(parents=True, exist_ok=True)
    if marker_kind(run_dir) is None:  # the lab's mark, so that run (and its --overwrite) know the folder
        write_marker(run_dir, "run")
    mark = {k: job[k] for k in ("name", "source", "grid", "overrides")}
    write_json(run_dir / MARKER, {**mark, **{k: options[k] for k in ("preset", "seed") if k in options}})
    write_json(
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
    except BaseException:  # Ctrl-C, SIGTERM: the state file says stopped, not running for ever (on any machine)
        write_json(state_file, {**read_json(state_file), "state": "stopped", "stopped": time.time()})
        raise
    return finish({**job, "status": "ok", **summary, "run": str(run_dir)})


def _finished_here(run_dir: Path, job: dict, options: dict) -> bool:
    """Whether ``run_dir`` holds this job's finished run: this source with these settings, as the batch's mark says
    (or, for a run ``samplernn-lab run`` made and put in place, its summary). Another finished run there is not
    this batch's result: it is reported (:func:`_foreign`) and left alone."""
    summary = read_json(run_dir / "summary.json")
    if not summary:
        return False
    return _same_job(read_json(run_dir / MARKER) or summary, job, options)


def _same_job(record: dict, job: dict, options: dict) -> bool:
    """Whether a run's record (the batch's mark, or a summary) names ``job``'s source and settings."""
    return not _job_differences(record, job, options)


def _job_differences(record: dict, job: dict, options: dict) -> list[str]:
    """How a run's record differs from ``job``: its source (by path), then its preset, ``--set`` and seed compared as
    ``run --resume`` compares them (:func:`samplernn_lab.pipeline.setting_differences`), where it records them
    (marks of older versions lack the preset and seed)."""
    from .pipeline import setting_differences

    differ = [] if record.get("source") == job["source"] else [f"source {Path(record.get('source') or '?').name}"]
    was = {k: record[k] for k in ("preset", "seed") if k in record}
    was["overrides"] = list(record.get("overrides") or [])
    now = {"preset": options.get("preset", "sketch"), "overrides": job["overrides"], "seed": options.get("seed")}
    try:
        return differ + setting_differences(was, now)
    except LabError as e:  # a recorded --set this version no longer knows
        return differ + [str(e)]


def _foreign(run_dir: Path, job: dict, options: dict) -> str | None:
    """Why ``run_dir`` cannot take this job: it holds files the lab did not make, or another run."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    mine = read_json(run_dir / MARKER)
    if not mine:
        return f"{run_dir}: holds files the batch did not make; move them or choose another --out"
    differ = _job_differences(mine, job, options)
    if differ:
        return f"{run_dir}: holds another run ({'; '.join(differ)}); choose another --out"
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


def _worker_main(job_file: str) -> int:
    """``python -m samplernn_lab.batch JOB.json``: one run in a process of its own (batch without Ray)."""
    spec = json.loads(Path(job_file).read_text())
    # SIGTERM as an exception (exit 143, one of batch_runners.INTERRUPTED), so run_one records the run as stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run_one(spec["job"], spec["options"])
    return 0


def batch(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    jobs: int = 1,
    grid: dict[str, list[str]] | Sequence[str] | None = None,
    ray: str | None | bool = False,
    cpus_per_run: float | None = None,
    gpus_per_run: float | None = None,
    retries: int = 2,
    max_steps: int | None = None,
    poll_seconds: float = 2.0,
    progress: bool = True,
    **run_options: Any,
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
    **run_options : the settings every run shares, as keywords of :func:`samplernn_lab.pipeline.run`, with its
        defaults (``preset``, ``max_minutes``, ``epochs``, ``seconds``, ``temperatures``, ``seed``,
        ``overrides``, ``rescue``, ``checkpoint``, ``prime_seconds``, ``batch_size``); the batch itself decides
        each run's source, folder, resuming and progress.

    A run that stopped part-way resumes; a finished run (``summary.json``) is skipped; a failing run or
    missing source is reported with its error and does not stop the others. Returns counts (``ok``,
    ``failed``), the paths of ``index``/``csv`` and every run's ``results``.
    """
    out = Path(out).resolve()
    if isinstance(grid, (list, tuple)):
        grid = parse_grid(grid)
    grid = dict(grid or {})
    options = shared_options(run_options)
    overrides = list(options.pop("overrides")) + ([f"train.max_steps={max_steps}"] if max_steps is not None else [])
    todo = plan(sources, out, grid, overrides, options["preset"])
    _claim_batch_out(out)
    driver = _start_driver(out)
    todo = [{**job, "batch": driver["batch"]} for job in todo]  # each run's state file says which batch wrote it
    (out / "logs").mkdir(exist_ok=True)
    write_json(out / "batch.json", {"grid": grid, "options": options, "jobs": todo})
    try:
        with _sigterm_exits():
            runner = _runner(ray, jobs, cpus_per_run, gpus_per_run, retries)
            results = _schedule(runner, out, todo, options, grid, progress, max_steps, poll_seconds, driver)
    finally:
        if read_json(out / DRIVER).get("batch") == driver["batch"]:
            write_json(out / DRIVER, {**driver, "state": "ended", "ended": time.time()})
    ordered = [results[j["name"]] for j in todo]
    failed = sum(r["status"] == "failed" for r in ordered)
    return {
        "ok": len(ordered) - failed,
        "failed": failed,
        "index": str(out / "index.html"),
        "csv": str(out / "summary.csv"),
        "results": ordered,
    }


# what the batch decides for each run itself, not an option the runs share
_PER_RUN = ("source", "out", "progress", "resume", "overwrite")


def shared_options(given: dict[str, Any]) -> dict[str, Any]:
    """``pipeline.run``'s keywords for every run of a batch: ``given`` over ``run``'s own defaults (one place
    holds them), JSON-ready (for ``batch.json`` and the worker processes). An unknown name raises LabError."""
    import inspect

    from .pipeline import run

    params = {k: p.default for k, p in inspect.signature(run).parameters.items() if k not in _PER_RUN}
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise LabError(f"batch: {', '.join(unknown)}: not a setting of a run (one of {', '.join(params)})")
    options = {**params, **given}
    options["overrides"] = list(options["overrides"] or ())
    options["temperatures"] = list(options["temperatures"]) if options["temperatures"] else None
    return options


def _runner(
    ray: str | None | bool, jobs: int, cpus_per_run: float | None, gpus_per_run: float | None, retries: int
) -> _Local | _Ray:
    """Where the runs execute: Ray tasks unless ``ray`` is False, else local subprocesses."""
    if ray is not False:
        return _Ray(None if ray is True else ray, cpus_per_run, gpus_per_run, retries, run_one)
    return _Local(jobs, retries)


def _schedule(
    runner: _Local | _Ray,
    out: Path,
    todo: list[dict],
    options: dict,
    grid: dict,
    progress: bool,
    max_steps: int | None,
    poll_seconds: float,
    driver: dict,
) -> dict[str, dict]:
    """Submit every job, wait for them all while rewriting the triage and the bars (and ``driver``'s record, as a
    heartbeat); every run's result by name."""
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
                    _record_failure(out, r, driver)
                if r["name"] in bars:
                    bars.pop(r["name"]).close()
            if finished or time.monotonic() - written > 30:  # and the running runs' progress now and then
                _record(out, todo, results, grid, overall, tails)
                write_json(out / DRIVER, {**driver, "seen": time.time()})
                written = time.monotonic()
            if progress:
                _run_bars(out, todo, results, bars, tails, max_steps)
    finally:
        for bar in bars.values():
            bar.close()
        overall.close()
        runner.close()
    return results


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM to the batch's process (``kill PID``) as SystemExit(143), as Ctrl-C is an exception: the batch
    stops its runs and records itself ended instead of dying at once and leaving them orphaned. Main thread only
    (where Python delivers signals); the handler before is put back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(*_):
        # a second SIGTERM while the batch stops its runs would abandon them half-stopped: ignored until then
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(143)

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        if before is not None:  # None: a handler set outside Python, which cannot be put back from here
            signal.signal(signal.SIGTERM, before)


def _start_driver(out: Path) -> dict:
    """Record this batch's process in ``out/batch-driver.json``, so that ``--status`` from another process knows
    the runs an earlier batch left are queued again; refuse a folder where another batch runs now."""
    was = read_json(out / DRIVER)
    if driver_live(was):
        raise LabError(
            f"{out}: another batch runs here (pid {was.get('pid')} on {was.get('host')}); let it finish, or choose "
            "another --out"
        )
    now = time.time()
    driver = {"state": "running", "batch": uuid.uuid4().hex, "pid": os.getpid(), "host": socket.gethostname()}
    driver.update(started=now, seen=now)
    write_json(out / DRIVER, driver)
    return driver


def _record_failure(out: Path, result: dict, driver: dict) -> None:
    """Say failed in the state file of a run the runner saw fail where the run could not say so itself (its
    process killed too often, interrupted alone, its worker lost), as the batch's table says."""
    path = out / "logs" / f"{result['name']}.json"
    state = read_json(path)
    if state.get("state") != "failed" or state.get("batch") != driver["batch"]:
        write_json(path, {**state, "state": "failed", "error": result.get("error", ""), "batch": driver["batch"]})


def _claim_batch_out(out: Path) -> None:
    """Make and mark ``out``; refuse one the lab did not make that holds a file the batch would overwrite
    (its run folders are checked one by one, see :func:`_foreign`)."""
    if marker_kind(out) != "batch" and not (out / "batch.json").is_file():  # batch.json: made before the mark
        mine = [name for name in ("logs", "summary.csv", "index.html", DRIVER) if (out / name).exists()]
        if mine:
            raise LabError(f"{out}: holds {', '.join(mine)}, not made by samplernn-lab batch; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if marker_kind(out) is None:
        write_marker(out, "batch")


def _record(out: Path, todo: list[dict], results: dict, grid: dict, overall, tails: dict) -> None:
    """Rewrite the triage with what is known now, and move the bar over runs."""
    write_triage(out, [results.get(j["name"]) or pending_row(j, out, tails) for j in todo], list(grid))
    overall.n = len(results)
    rows = [
        {
            "category": "failed" if r["status"] == "failed" else r.get("category") or r["status"],
            "source_category": r.get("source_category"),
        }
        for r in results.values()
    ]
    overall.set_postfix_str(count_summary(rows), refresh=False)
    overall.refresh()


def _run_bars(out: Path, todo: list[dict], results: dict, bars: dict, tails: dict, max_steps: int | None) -> None:
    """A bar per running run: its steps, epoch, loss and minutes (read from its metrics.jsonl)."""
    for job in todo:
        name = job["name"]
        if name in results:
            continue
        if name not in bars:
            if read_json(out / "logs" / f"{name}.json").get("state") != "running":
                continue
            bars[name] = tqdm(total=max_steps, desc=name, unit="step", leave=False)
        tail = tails.setdefault(name, MetricsTail(job["run"])).read()
        bar = bars[name]
        bar.n = tail.step
        bar.set_postfix_str(tail.line(), refresh=False)
        bar.refresh()


def _unique_names(files: list[Path]) -> list[str]:
    """A run name per file: its stem, or ``stem-2``, ``stem-3``... for a stem met again, never a name already given
    or another file's own stem (``take-2.wav`` beside two ``take`` files): two jobs in one run folder would
    leave a source untrained and the batch waiting for it."""
    stems = {f.stem for f in files}
    used: set[str] = set()
    names = []
    for f in files:
        name, k = f.stem, 1
        while name in used or (k > 1 and name in stems):
            k += 1
            name = f"{f.stem}-{k}"
        used.add(name)
        names.append(name)
    return names


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1]))

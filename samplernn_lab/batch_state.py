"""A batch's files read back: each run's state and summary, and ``status`` (``samplernn-lab batch OUT --status``)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from pathlib import Path

from .errors import LabError
from .files import write_text
from .frame_features import shown_category
from .progress import MetricsTail

DRIVER = "batch-driver.json"  # in a batch's folder: the batch process, while it runs, and when it ended
# a batch rewrites its record at least every 30 s; one not rewritten for this long is gone (killed on another host)
DRIVER_STALE_SECONDS = 120.0


def run_summary(run_dir: Path) -> dict:
    """A finished run's ``summary.json``, with where the run is now."""
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["run"] = str(run_dir)  # where it is now (a folder may have been moved)
    return summary


def read_json(path: Path) -> dict:
    """A JSON file's content, or {} when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=1) + "\n")


def pending_row(job: dict, out: Path, tails: dict | None = None) -> dict:
    """A row for a run this batch has not finished: running with its progress, or waiting for its turn.

    A run an earlier batch stopped part-way (Ctrl-C, kill, kill -9) or saw fail is queued again by this one, so its old
    state file's "stopped" or "failed" is not what it is now: it is ``waiting to resume (...)``, with where it
    stopped, until it starts.
    """
    state = read_json(out / "logs" / f"{job['name']}.json")
    tail = (tails or {}).setdefault(job["name"], MetricsTail(job["run"])).read()
    return {**job, "status": run_state(state, tail, live=True, failed_here=False)}


def run_state(state: dict, tail: MetricsTail, live: bool, failed_here: bool) -> str:
    """What an unfinished run is now, one rule for the live table and ``--status``: ``failed`` (in the batch
    that runs, or the last one when none does), ``running (...)``, ``waiting to resume (...)`` while a batch that
    will take it up runs, ``stopped (...)`` part-way when none does, or ``waiting`` (not started)."""
    if failed_here:
        return "failed"
    if _running(state):
        return f"running ({tail.line()})"
    if tail.started:
        return f"{'waiting to resume' if live else 'stopped'} ({tail.line()})"
    return "waiting"


def driver_live(driver: dict) -> bool:
    """Whether a batch's record (``batch-driver.json``) says it runs and its process is alive: on this machine by
    its pid, on another by a record rewritten lately."""
    if not _running(driver):
        return False
    if driver.get("host") == socket.gethostname():
        return True
    return time.time() - driver.get("seen", driver.get("started", 0)) < DRIVER_STALE_SECONDS


def _running(state: dict) -> bool:
    """Whether a run's state file says running and its process is not known to be gone (killed with -9 here)."""
    return state.get("state") == "running" and not _gone(state)


def _gone(state: dict) -> bool:
    """Whether a run recorded as running was on this machine and its process is no more (Ctrl-C, kill -9)."""
    if state.get("host") != socket.gethostname() or not isinstance(state.get("pid"), int):
        return False  # on another machine (Ray): not for this one to say
    try:
        os.kill(state["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def status(out: str | os.PathLike) -> list[dict]:
    """Every run of the batch in ``out`` as it stands: name, grid values, state (done, failed,
    ``running (epoch, step, bits, minutes)``, ``stopped (...)`` for a run that stopped part-way, waiting),
    category, epochs, best validation bits and error.

    While a batch runs there (``batch-driver.json``), a run an earlier batch stopped or saw fail is queued again:
    ``waiting to resume (...)`` or ``waiting``, as the batch's own table says (:func:`pending_row`)."""
    out = Path(out).resolve()
    spec = read_json(out / "batch.json")
    if not spec:
        raise LabError(f"{out}: no batch here (no batch.json)")
    driver = read_json(out / DRIVER)
    live = driver_live(driver)
    rows = []
    for job in spec["jobs"]:
        run_dir = out / job["name"]  # where plan put it, wherever the batch's folder has moved since
        row = {"name": job["name"], **job.get("grid", {})}
        if (run_dir / "summary.json").exists():
            s = run_summary(run_dir)
            rows.append(
                {
                    **row,
                    "state": "done",
                    "category": shown_category(s["category"], s.get("source_category")) if s.get("category") else "",
                    "epochs": s.get("epochs", ""),
                    "best_val_bits": s.get("best_val_bits"),
                    "error": "",
                }
            )
            continue
        state = read_json(out / "logs" / f"{job['name']}.json")
        tail = MetricsTail(run_dir).read()
        # a failure an earlier batch recorded is queued again by this one
        failed_before = live and state.get("batch") != driver.get("batch")
        now = run_state(state, tail, live, failed_here=state.get("state") == "failed" and not failed_before)
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

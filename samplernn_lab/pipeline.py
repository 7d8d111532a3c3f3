"""The notebook chain, headless: ``run`` one source, ``batch`` many, and the ``demo``.

``run`` executes notebooks/01..04 with papermill into the run folder::

    RUN/dataset/                  01: the prepared dataset
    RUN/config.json, checkpoints/, metrics.jsonl, renders/epoch-NNN/   02: training
    RUN/renders/listen/*.wav      03: renders from the `auto` checkpoint (rundir.LISTEN), each diagnosed
    RUN/figures/*.png|pdf         04: the poster's figure and the epoch grid
    RUN/notebooks/*.ipynb|html    the executed notebooks
    RUN/summary.json              source, settings, best validation NLL, diagnosis of each render

``batch`` (in :mod:`samplernn_lab.batch`, re-exported here) makes one run per source in ``OUT/<name>/`` and
the triage view ``OUT/summary.csv`` and ``OUT/index.html``.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import LabError
from .files import write_text
from .progress import Watcher
from .rundir import (
    LISTEN,
    MARKER,
    RunDir,
    holds_run,
    is_empty,
    marker_kind,
    read_metrics,
    replace_lab_folder,
    write_marker,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("01_prepare_dataset", "02_train", "03_listen", "04_poster_figures")


def notebooks_dir() -> Path:
    folder = ROOT / "notebooks"
    if not (folder / f"{NOTEBOOKS[0]}.ipynb").exists():
        raise LabError(f"{folder}: the lab's notebooks are not there (run from a clone of the repository)")
    return folder


def execute(notebook: Path, out: Path, parameters: dict[str, Any], cwd: Path) -> Path:
    """Run one notebook with papermill (parameters injected after its ``parameters`` cell), keep
    the executed copy and an HTML export of it. A failing cell raises LabError naming the notebook."""
    import papermill as pm

    out.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, KERNEL_STARTS + 1):
        try:
            # the kernel's own log at ERROR: ipykernel 7 warns on every start that a local TCP kernel is
            # unencrypted, which broke the run's progress line; cell outputs (stderr included) are kept
            pm.execute_notebook(
                str(notebook),
                str(out),
                parameters=parameters,
                cwd=str(cwd),
                progress_bar=False,
                kernel_name="python3",
                # papermill waits 60 s for a kernel; a batch's workers starting kernels at once on a busy 2-core
                # machine have taken longer (seen once in make test), and a slow start is no reason to fail a run
                start_timeout=KERNEL_START_SECONDS,
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
            )
            break
        except pm.PapermillExecutionError as e:
            raise LabError(f"{out}: cell {e.exec_count} failed: {e.ename}: {e.evalue}".splitlines()[0]) from None
        except RuntimeError as e:
            # kernels started at once in parallel processes can pick the same free port (jupyter_client binds,
            # releases, then the kernel binds: papermill issues #239, #511); the loser never answers. No cell
            # has run yet, so a fresh kernel with fresh ports is safe (seen once in make test, a Ray batch)
            if not str(e).startswith(KERNEL_START_FAILURES) or attempt == KERNEL_STARTS:
                raise
            print(
                f"warning: {notebook.name}: {e}; starting a new kernel ({attempt + 1} of {KERNEL_STARTS})",
                file=sys.stderr,
            )
        finally:
            if out.exists():
                _export_html(out)
    return out


KERNEL_START_SECONDS, KERNEL_STARTS = 150, 3
KERNEL_START_FAILURES = ("Kernel didn't respond", "Kernel died before replying")


def _export_html(path: Path) -> None:
    from nbconvert import HTMLExporter

    try:
        body, _ = HTMLExporter().from_filename(str(path))
        path.with_suffix(".html").write_text(body)
    except Exception as e:  # an export problem must not hide the run's result
        print(f"warning: no HTML export of {path}: {e}", file=sys.stderr)


# The temperature the chain's renders use.
CHAIN_TEMPERATURE = 1.0


def run(
    source: str | os.PathLike,
    out: str | os.PathLike,
    preset: str = "sketch",
    max_minutes: float | None = None,
    epochs: int | None = None,
    seconds: float | None = None,
    temperatures: Sequence[float] | None = None,
    seed: int = 0,
    overrides: Sequence[str] = (),
    batch_size: int = 1,
    checkpoint: str = LISTEN,
    prime_seconds: float = 0.25,
    progress: bool = True,
    resume: bool = False,
    rescue: bool = True,
    overwrite: bool = False,
) -> dict:
    """Execute the notebook chain on one source into ``out``; returns the summary (also written
    to ``out/summary.json``). See the module docstring for what lands where.

    With ``resume``, a run that stopped part-way goes on where it stopped: the notebooks that finished
    (recorded in ``out/chain.json``) are not run again, training continues from ``checkpoints/last.pt``
    with what is left of the minute budget, and the notebooks after training are executed again.
    While training, the progress bar shows the run's epoch, step, loss and minutes.

    ``out`` must be new, empty, or a folder the lab made for a run (a previous ``run`` that failed before
    its first checkpoint is started again). One that holds a run is refused unless ``resume`` or
    ``overwrite`` (which replaces it); a folder the lab did not make is refused whatever is asked.

    Renders come from the ``auto`` checkpoint by default (the epoch whose per-epoch render was closest to
    the source, one that moves preferred to a steady tone, :func:`samplernn_lab.rundir.liveliest_epoch`, else
    the last), primed with
    ``prime_seconds`` of training audio: with one
    source the lowest validation NLL is often an early epoch, and late epochs can lock into a tone.
    With ``rescue`` (the default here), a stream that falls silent or locks into a steady tone is
    re-primed from the training audio (:mod:`samplernn_lab.sampling.rescue`); the sidecars say where.
    """
    from .presets import get_preset

    source, out = Path(source).resolve(), Path(out).resolve()
    if not source.exists():
        raise LabError(f"{source}: no such file")
    if source.is_dir():
        raise LabError(f"{source}: is a folder; run takes one audio file (batch takes folders)")
    chosen = get_preset(preset, list(overrides))  # fail early on a bad preset or field
    seconds = chosen.train.render_seconds * 2 if seconds is None else seconds
    temperatures = list(temperatures) if temperatures else [1.0, 0.9]
    _claim_out(out, resume, overwrite)
    chain_file = out / "chain.json"
    chain = json.loads(chain_file.read_text()) if resume and chain_file.exists() else {}
    done = set(chain.get("done", []))
    started = {"source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(), "preset": preset}
    started.update({"overrides": list(overrides), "seed": seed})
    _check_resumed(out, chain.get("settings"), started)
    train_resume = False
    if resume and "02_train" not in done:
        train_resume = _resume_training(out)
    settings = {"preset": preset, "overrides": list(overrides), "seed": seed}
    training = {"max_minutes": max_minutes, "epochs": epochs, "resume": train_resume}
    listening = {
        "checkpoint": checkpoint,
        "prime_seconds": prime_seconds,
        "seconds": seconds,
        "temperatures": temperatures,
        "batch": batch_size,
        "rescue": rescue,
    }
    steps = _chain_steps(source, out, settings, training, listening)
    _run_chain(steps, source, out, done, chain_file, started, progress)
    return write_summary(out, source, preset, list(overrides))


def _chain_steps(source: Path, out: Path, settings: dict, training: dict, listening: dict) -> list[tuple[str, dict]]:
    """The chain's notebooks in order, each with its papermill parameters."""
    dataset, figures, listen = out / "dataset", out / "figures", out / "renders" / "listen"
    preset, overrides, seed = settings["preset"], settings["overrides"], settings["seed"]
    return [
        (
            "01_prepare_dataset",
            {
                "sources": [str(source)],
                "dataset_dir": str(dataset),
                "preset": preset,
                "overrides": list(overrides),
                "seed": seed,
                "overwrite": True,
            },
        ),
        (
            "02_train",
            {
                "dataset_dir": str(dataset),
                "run_dir": str(out),
                "preset": preset,
                "overrides": list(overrides),
                "max_minutes": training["max_minutes"],
                "epochs": training["epochs"],
                "seed": seed,
                "resume": training["resume"],
            },
        ),
        (
            "03_listen",
            {
                "run_dir": str(out),
                "checkpoint": listening["checkpoint"],
                "prime_seconds": listening["prime_seconds"],
                "seconds": listening["seconds"],
                "temperatures": listening["temperatures"],
                "batch": listening["batch"],
                "seed": seed,
                "out_dir": str(listen),
                "source": str(source),
                "interactive": False,
                "rescue": listening["rescue"],
            },
        ),
        (
            "04_poster_figures",
            {"run_dir": str(out), "source": str(source), "renders_dir": str(listen), "out_dir": str(figures)},
        ),
    ]


def _check_resumed(out: Path, was: dict | None, now: dict) -> None:
    """A resumed run goes on with what it was started with: another source (by content), seed or setting would be
    dropped for the finished steps and taken for the rest. Refused, naming what differs (:func:`setting_differences`).
    ``was`` is None for a run that recorded nothing (not started, or an older version)."""
    if not was:
        return
    differ = []
    if was.get("source_sha256") not in (None, now["source_sha256"]):
        differ.append("another source (its sound differs)")
    differ += setting_differences(was, now)
    if differ:
        raise LabError(
            f"{out}: holds a run started with {'; '.join(differ)}; a resumed run goes on with what it was started "
            f"with: give the same, or choose another --out"
        )


def setting_differences(was: dict, now: dict) -> list[str]:
    """What differs between a run's recorded settings and those given now, each ``{"preset", "overrides", "seed"}``.

    The preset with its ``--set`` applied is compared field by field: order and spelling do not count, and budgets
    (``train_start.RESUMABLE``) may change, as in ``train --resume``. A key ``was`` lacks (a record of an older
    version) is not compared; ``was`` without a preset is read under ``now``'s. Returns lines like
    ``"seed 0 (7 given now)"``, empty when they are the same run.
    """
    from dataclasses import asdict

    from .presets import get_preset
    from .train_start import RESUMABLE

    differ = []
    if was.get("seed") is not None and was["seed"] != now.get("seed"):
        differ.append(f"seed {was['seed']} ({now.get('seed')} given now)")
    if "overrides" in was:
        before = asdict(get_preset(was.get("preset", now["preset"]), was["overrides"]))
        after = asdict(get_preset(now["preset"], now["overrides"]))
        for part, fields in before.items():
            for name, value in fields.items():
                if value != after[part][name] and not (part == "train" and name in RESUMABLE):
                    differ.append(f"{part}.{name}={value} ({after[part][name]} given now)")
    if len(differ) > 4:  # another preset: its first few fields say enough
        differ = [*differ[:3], f"{len(differ) - 3} more settings"]
    return differ


def _run_chain(
    steps: list[tuple[str, dict]],
    source: Path,
    out: Path,
    done: set[str],
    chain_file: Path,
    settings: dict,
    progress: bool,
) -> None:
    """Execute the steps not already done, recording each finished one (and what the chain was started with) in
    ``chain_file``."""
    nb_in, nb_out = notebooks_dir(), out / "notebooks"
    bar = tqdm(steps, desc=source.name, unit="notebook", disable=not progress)
    for name, params in bar:
        if name in done and name in ("01_prepare_dataset", "02_train"):
            continue  # finished before the run stopped; what comes after training is made again
        bar.set_postfix_str(name)
        if name == "02_train" and progress:
            with Watcher(out, lambda tail, name=name: bar.set_postfix_str(f"{name}: {tail.line()}")):
                execute(nb_in / f"{name}.ipynb", nb_out / f"{name}.ipynb", params, out)
        else:
            execute(nb_in / f"{name}.ipynb", nb_out / f"{name}.ipynb", params, out)
        done.add(name)
        write_text(chain_file, json.dumps({"done": sorted(done), "settings": settings}) + "\n")


def _claim_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Check ``out`` for :func:`run` (see there), replace it when asked, make it and mark it."""
    if not is_empty(out) and marker_kind(out) is None:
        raise LabError(f"{out}: folder is not empty and was not made by samplernn-lab; choose a new or empty --out")
    if holds_run(RunDir(out)) and not resume:
        if not overwrite:
            raise LabError(
                f"{out}: already holds a run; choose another --out, --resume to go on with it, or --overwrite to "
                "replace it"
            )
        replace_lab_folder(out, "run")
    out.mkdir(parents=True, exist_ok=True)
    if marker_kind(out) is None:
        write_marker(out, "run")


def _resume_training(out: Path) -> bool:
    """Whether training goes on from ``out/checkpoints/last.pt`` (its minute budget is the run's in all: training
    counts the minutes before the resume itself).

    A run stopped before its first checkpoint starts training again: only the lab's own files of that
    start (config.json, metrics.jsonl) are removed.
    """
    run = RunDir(out)
    last = run.last
    if not last.exists():
        for path in (run.config, run.metrics):
            path.unlink(missing_ok=True)
        return False
    return True


def write_summary(run_dir: Path, source: Path, preset: str, overrides: list[str]) -> dict:
    """Gather the run's settings, best validation NLL and the diagnosis of every render."""
    import soundfile as sf

    from .analysis import SourceProfile, diagnose_file, source_kind
    from .audio import load

    config = RunDir(run_dir).read_config()
    metrics = read_metrics(RunDir(run_dir).metrics, missing_ok=True)
    kind = _dataset_kind(run_dir, config)
    renders, profile = [], None
    for wav in sorted((run_dir / "renders" / "listen").glob("*.wav")):
        if profile is None or profile.sr != sf.info(wav).samplerate:  # judged against the source at its rate
            sr = sf.info(wav).samplerate
            profile = SourceProfile(load(source, sr)[0], sr, kind=kind, q_levels=_q_levels(config))
        d = diagnose_file(wav, profile)
        d["file"] = str(wav.relative_to(run_dir))
        renders.append(d)
    categories = Counter(r["category"] for r in renders)
    val_rows = [m for m in metrics if m.get("split") == "val"]
    summary = {
        "source": str(source),
        "run": str(run_dir),
        "preset": preset,
        "overrides": overrides,
        "settings": config,
        "best_val_bits": min(m["nll_bits"] for m in val_rows) if val_rows else None,
        "best_val_epoch": min(val_rows, key=lambda m: m["nll_bits"])["epoch"] if val_rows else None,
        "epochs": len(list(RunDir(run_dir).checkpoints.glob("epoch-*.pt"))),
        "steps": max((m.get("step", 0) for m in metrics), default=0),
        "category": categories.most_common(1)[0][0] if renders else None,
        # 0 = like another stretch of the source, 1 = like noise of its colour (median over renders)
        "resemblance": statistics.median(r["resemblance"] for r in renders) if renders else None,
        "copy_share": max((r["copy_share"] for r in renders), default=None),
        # what the source itself is: a steady-tone source's tone renders are its own kind, not the tone failure
        "source_category": source_kind(profile) if profile is not None else kind,
        "renders": renders,
        "figures": sorted(str(p.relative_to(run_dir)) for p in (run_dir / "figures").glob("*.png")),
        "notebooks": sorted(str(p.relative_to(run_dir)) for p in (run_dir / "notebooks").glob("*.ipynb")),
    }
    write_text(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def _q_levels(config: dict) -> int:
    """The levels the run's model plays (its ``config.json``; 256, the presets', where a run does not say)."""
    return int(config.get("quantization", {}).get("q_levels", 256))


def _dataset_kind(run_dir: Path, config: dict) -> str | None:
    """The source's kind as its dataset holds it (:func:`samplernn_lab.dataset.source_category`: the epoch
    renders and the watchdog judged by it); None where the run's dataset is gone, and the summary measures the
    source file itself."""
    from .dataset import source_category

    dataset = RunDir(run_dir).dataset(config)
    return None if dataset is None else source_category(dataset)


# batch lives in its own module; these names stay importable from here
from .batch import batch  # noqa: E402, F401
from .triage_page import CATEGORY_ORDER, write_triage  # noqa: E402, F401


def _is_demo(folder: Path) -> bool:
    """A demo's folder: marked so, or (made before the marker) a run of the bundled example."""
    if marker_kind(folder) == "demo":
        return True
    if (folder / MARKER).exists() or marker_kind(folder) != "run":
        return False
    try:
        return Path(json.loads((folder / "summary.json").read_text())["source"]).name == DEMO_SOURCE
    except (OSError, ValueError, KeyError, TypeError):
        return False


DEMO_SOURCE = "synth_glassbells.wav"
DEMO_EPOCHS = 8  # chosen by measurement: benchmarks/RESULTS.md, "The demo, after the batch fix"
DEMO_MAX_MINUTES = 15.0  # a cap for a slow machine, not the budget


def demo(out: str | os.PathLike = "runs/demo", max_minutes: float | None = None, rescue: bool = True) -> dict:
    """The chain on the bundled glass-bells example with the sketch preset: ``DEMO_EPOCHS`` epochs (about
    five minutes in all on a quiet 2-core CPU), stopped early at ``max_minutes`` (default
    ``DEMO_MAX_MINUTES``); prints where to look."""
    source = ROOT / "media" / DEMO_SOURCE
    if not source.exists():
        raise LabError(f"{source}: the bundled example is missing")
    out = Path(out)
    if not is_empty(out):  # the demo starts fresh, but replaces only a previous demo
        if not _is_demo(out):
            raise LabError(f"{out}: not empty and not a previous demo; choose a new or empty --out")
        if marker_kind(out) != "demo":  # a demo made before the marker
            write_marker(out, "demo")
        replace_lab_folder(out, "demo")
    out.mkdir(parents=True)
    write_marker(out, "demo")
    # A budget in epochs, not minutes, so a loaded or slow machine hears what a quiet one hears (under load
    # three wall-clock minutes were 3 epochs of hiss); the minutes only cap it. Longer and the sketch learns
    # this 6 s sound by heart (validation rising from epoch 5, a steady tone by epoch 27 of an old 6 min demo).
    minutes = DEMO_MAX_MINUTES if max_minutes is None else max_minutes
    summary = run(
        source,
        out,
        preset="sketch",
        max_minutes=minutes,
        epochs=DEMO_EPOCHS,
        seconds=6.0,
        temperatures=[1.0, 0.95],
        rescue=rescue,
    )
    print(f"\nThe demo is done. Look in {out}/:")
    print(f"  renders/listen/*.wav   what the model invents ({', '.join(r['category'] for r in summary['renders'])})")
    print("  renders/epoch-NNN/     short renders after every epoch (4 streams)")
    print("  figures/               the poster's figure (source vs renders) and the epoch grid")
    print("  notebooks/*.html       the executed notebooks; open the .ipynb in JupyterLab (make lab)")
    if summary["best_val_bits"] is not None:
        print(
            f"  summary.json           best validation NLL {summary['best_val_bits']:.3f} bits/sample "
            f"(epoch {summary['best_val_epoch']} of {summary['epochs']})"
        )
    return summary

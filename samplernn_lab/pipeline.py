"""The notebook chain, headless: ``run`` one source, ``batch`` many, and the ``demo``.

``run`` executes notebooks/01..04 with papermill into the run folder::

    RUN/dataset/                  01: the prepared dataset
    RUN/config.json, checkpoints/, metrics.jsonl, renders/epoch-NNN/   02: training
    RUN/renders/listen/*.wav      03: renders from the best checkpoint, each diagnosed
    RUN/figures/*.png|pdf         04: the poster's figure and the epoch grid
    RUN/notebooks/*.ipynb|html    the executed notebooks
    RUN/summary.json              source, settings, best validation NLL, diagnosis of each render

``batch`` makes one run per source in ``OUT/<name>/`` and the triage view ``OUT/summary.csv`` and
``OUT/index.html``.
"""

from __future__ import annotations

import csv
import html
import json
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from .errors import LabError
from .files import atomic_path, write_text

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("01_prepare_dataset", "02_train", "03_listen", "04_poster_figures")
CATEGORY_ORDER = {"varied": 0, "noise": 1, "tone": 2, "silence": 3, "failed": 4}


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
    try:
        # the kernel's own log at ERROR: ipykernel 7 warns on every start that a local TCP kernel is
        # unencrypted, which broke the run's progress line; cell outputs (stderr included) are kept
        pm.execute_notebook(str(notebook), str(out), parameters=parameters, cwd=str(cwd), progress_bar=False,
                            kernel_name="python3", extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except pm.PapermillExecutionError as e:
        raise LabError(f"{out}: cell {e.exec_count} failed: {e.ename}: {e.evalue}".splitlines()[0]) from None
    finally:
        if out.exists():
            _export_html(out)
    return out


def _export_html(path: Path) -> None:
    from nbconvert import HTMLExporter

    try:
        body, _ = HTMLExporter().from_filename(str(path))
        path.with_suffix(".html").write_text(body)
    except Exception as e:  # an export problem must not hide the run's result
        print(f"warning: no HTML export of {path}: {e}", file=sys.stderr)


def run(source: str | os.PathLike, out: str | os.PathLike, preset: str = "sketch",
        max_minutes: float | None = None, epochs: int | None = None, seconds: float | None = None,
        temperatures: Sequence[float] | None = None, seed: int = 0, overrides: Sequence[str] = (),
        batch_size: int = 1, checkpoint: str = "auto", prime_seconds: float = 0.25, progress: bool = True) -> dict:
    """Execute the notebook chain on one source into ``out``; returns the summary (also written
    to ``out/summary.json``). See the module docstring for what lands where.

    Renders come from the ``auto`` checkpoint by default (the latest epoch whose per-epoch render was
    diagnosed varied, else the last), primed with ``prime_seconds`` of training audio: with one
    source the lowest validation NLL is often an early epoch, and late epochs can lock into a tone.
    """
    from .presets import get_preset

    source, out = Path(source).resolve(), Path(out).resolve()
    if not source.exists():
        raise LabError(f"{source}: no such file")
    chosen = get_preset(preset, list(overrides))  # fail early on a bad preset or field
    seconds = chosen.train.render_seconds * 2 if seconds is None else seconds
    temperatures = list(temperatures) if temperatures else [1.0, 0.9]
    if out.exists() and (out / "config.json").exists():
        raise LabError(f"{out}: already holds a run; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    nb_in, nb_out = notebooks_dir(), out / "notebooks"
    dataset, figures, listen = out / "dataset", out / "figures", out / "renders" / "listen"
    steps = [
        ("01_prepare_dataset", {"sources": [str(source)], "dataset_dir": str(dataset), "preset": preset,
                                "overrides": list(overrides), "seed": seed, "overwrite": True}),
        ("02_train", {"dataset_dir": str(dataset), "run_dir": str(out), "preset": preset,
                      "overrides": list(overrides), "max_minutes": max_minutes, "epochs": epochs, "seed": seed}),
        ("03_listen", {"run_dir": str(out), "checkpoint": checkpoint, "prime_seconds": prime_seconds,
                       "seconds": seconds,
                       "temperatures": temperatures, "batch": batch_size, "seed": seed, "out_dir": str(listen),
                       "source": str(source), "interactive": False}),
        ("04_poster_figures", {"run_dir": str(out), "source": str(source), "renders_dir": str(listen),
                               "out_dir": str(figures)}),
    ]
    bar = tqdm(steps, desc=source.name, unit="notebook", disable=not progress)
    for name, params in bar:
        bar.set_postfix_str(name)
        execute(nb_in / f"{name}.ipynb", nb_out / f"{name}.ipynb", params, out)
    return write_summary(out, source, preset, list(overrides))


def write_summary(run_dir: Path, source: Path, preset: str, overrides: list[str]) -> dict:
    """Gather the run's settings, best validation NLL and the diagnosis of every render."""
    from .analysis import diagnose_file

    config = json.loads((run_dir / "config.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    renders = []
    for wav in sorted((run_dir / "renders" / "listen").glob("*.wav")):
        d = diagnose_file(wav)
        d["file"] = str(wav.relative_to(run_dir))
        renders.append(d)
    categories = Counter(r["category"] for r in renders)
    val_rows = [m for m in metrics if m.get("split") == "val"]
    summary = {
        "source": str(source), "run": str(run_dir), "preset": preset, "overrides": overrides,
        "settings": config, "best_val_bits": min(m["nll_bits"] for m in val_rows) if val_rows else None,
        "best_val_epoch": min(val_rows, key=lambda m: m["nll_bits"])["epoch"] if val_rows else None,
        "epochs": len(list((run_dir / "checkpoints").glob("epoch-*.pt"))),
        "steps": max((m.get("step", 0) for m in metrics), default=0),
        "category": categories.most_common(1)[0][0] if renders else None,
        "renders": renders,
        "figures": sorted(str(p.relative_to(run_dir)) for p in (run_dir / "figures").glob("*.png")),
        "notebooks": sorted(str(p.relative_to(run_dir)) for p in (run_dir / "notebooks").glob("*.ipynb")),
    }
    write_text(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def batch(sources: Sequence[str | os.PathLike], out: str | os.PathLike, jobs: int = 1, preset: str = "sketch",
          max_minutes: float | None = None, epochs: int | None = None, seconds: float | None = None,
          temperatures: Sequence[float] | None = None, seed: int = 0, overrides: Sequence[str] = (),
          progress: bool = True) -> dict:
    """One run per source (each in its own process), then ``summary.csv`` and ``index.html``.

    A failing source is reported and does not stop the others; a source whose run already has a
    ``summary.json`` is skipped, so a stopped batch can be started again.
    """
    from .dataset import find_sources

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    files = find_sources(list(sources))
    names = _unique_names(files)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)

    def one(item: tuple[Path, str]) -> dict:
        src, name = item
        run_dir = out / name
        if (run_dir / "summary.json").exists():
            return {"name": name, "status": "skipped (done)", **json.loads((run_dir / "summary.json").read_text())}
        if run_dir.exists():  # a run stopped part-way: start it again from scratch
            import shutil

            shutil.rmtree(run_dir)
        cmd = [sys.executable, "-m", "samplernn_lab.cli", "run", str(src), "--out", str(run_dir), "--preset", preset,
               "--seed", str(seed)]
        for flag, value in (("--max-minutes", max_minutes), ("--epochs", epochs), ("--seconds", seconds)):
            if value is not None:
                cmd += [flag, str(value)]
        if temperatures:
            cmd += ["--temperature", *map(str, temperatures)]
        if overrides:
            cmd += ["--set", *overrides]
        start = time.time()
        with open(logs / f"{name}.log", "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_DISABLE": "1"})
        if proc.returncode != 0 or not (run_dir / "summary.json").exists():
            lines = (logs / f"{name}.log").read_text().strip().splitlines()
            return {"name": name, "source": str(src), "status": "failed",
                    "error": lines[-1] if lines else f"exit {proc.returncode}", "run": str(run_dir)}
        summary = json.loads((run_dir / "summary.json").read_text())
        return {"name": name, "status": "ok", "minutes": round((time.time() - start) / 60, 2), **summary}

    results = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for r in tqdm(pool.map(one, zip(files, names)), total=len(files), desc="batch", unit="run",
                      disable=not progress):
            if r["status"] == "failed":
                tqdm.write(f"{r['name']}: failed: {r['error']}")
            results.append(r)
    write_triage(out, results)
    failed = sum(r["status"] == "failed" for r in results)
    return {"ok": len(results) - failed, "failed": failed, "index": str(out / "index.html"),
            "csv": str(out / "summary.csv"), "results": results}


def _unique_names(files: list[Path]) -> list[str]:
    seen: Counter = Counter()
    names = []
    for f in files:
        seen[f.stem] += 1
        names.append(f.stem if seen[f.stem] == 1 else f"{f.stem}-{seen[f.stem]}")
    return names


def write_triage(out: Path, results: list[dict]) -> None:
    """``summary.csv`` (a row per source) and ``index.html`` (players and figures, by category)."""
    rows = []
    for r in results:
        renders = r.get("renders", [])
        rows.append({
            "source": r.get("source", ""), "name": r["name"], "status": r["status"],
            "category": r.get("category") or ("failed" if r["status"] == "failed" else ""),
            "render_categories": " ".join(x["category"] for x in renders),
            "best_val_bits": "" if r.get("best_val_bits") is None else f"{r['best_val_bits']:.4f}",
            "epochs": r.get("epochs", ""),
            "run": os.path.relpath(r["run"], out) if r.get("run") else "",
            "renders": " ".join(os.path.relpath(Path(r["run"]) / x["file"], out) for x in renders),
            "figure": next((os.path.relpath(Path(r["run"]) / f, out) for f in r.get("figures", [])
                            if "poster" in f and not f.endswith("_low.png")), ""),
            "error": r.get("error", ""),
        })
    rows.sort(key=lambda x: (CATEGORY_ORDER.get(x["category"], 5), x["name"]))
    fields = list(rows[0]) if rows else ["source"]
    with atomic_path(out / "summary.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    write_text(out / "index.html", _index_html(rows))


def _index_html(rows: list[dict]) -> str:
    e = html.escape
    body = []
    for r in rows:
        players = "".join(f"<div><audio controls preload='none' src='{e(p)}'></audio><br><small>{e(Path(p).name)}"
                          f"</small></div>" for p in r["renders"].split())
        fig = (f"<a href='{e(r['figure'])}'><img src='{e(r['figure'])}' width='360'></a>" if r["figure"] else "")
        body.append(
            f"<tr class='{e(r['category'])}'><td>{e(r['name'])}</td><td class='cat'>{e(r['category'])}</td>"
            f"<td>{e(r['render_categories'])}</td><td>{e(r['best_val_bits'])}</td><td>{players}</td><td>{fig}</td>"
            f"<td>{e(r['error'])}</td></tr>")
    return f"""<!doctype html><html><head><meta charset='utf-8'><title>samplernn-lab batch</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top}} th{{cursor:pointer;background:#eee}}
.varied .cat{{color:#282}} .tone .cat{{color:#c60}} .noise .cat{{color:#36c}} .silence .cat{{color:#888}}
.failed .cat{{color:#c00}}</style></head><body>
<h1>samplernn-lab batch: {len(rows)} sources</h1>
<p>Grouped by category (varied first: those learned something). Click a header to sort.</p>
<table id='t'><thead><tr><th>source</th><th>category</th><th>renders</th><th>best val bits</th><th>listen</th>
<th>figure</th><th>error</th></tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
<script>
document.querySelectorAll('th').forEach((th, i) => th.onclick = () => {{
  const tb = document.querySelector('#t tbody'); const rows = [...tb.rows];
  const dir = th.dataset.dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
  rows.sort((a, b) => a.cells[i].innerText.localeCompare(b.cells[i].innerText, undefined, {{numeric: true}}) *
            (dir === 'asc' ? 1 : -1));
  rows.forEach(r => tb.appendChild(r));
}});
</script></body></html>
"""


def demo(out: str | os.PathLike = "runs/demo", max_minutes: float | None = None) -> dict:
    """The chain on the bundled glass-bells example with the sketch preset, sized for a 2-core CPU
    (about four minutes in all); prints where to look."""
    source = ROOT / "media" / "synth_glassbells.wav"
    if not source.exists():
        raise LabError(f"{source}: the bundled example is missing")
    out = Path(out)
    if out.exists():
        import shutil

        shutil.rmtree(out)  # the demo always starts fresh
    # Three minutes are about 13 epochs of this 6 s sound; much longer and the sketch model learns it by
    # heart and collapses into a steady tone (measured: every 6 s render of epoch 27 of a 6 min demo).
    minutes = 3.0 if max_minutes is None else max_minutes
    summary = run(source, out, preset="sketch", max_minutes=minutes, seconds=6.0, temperatures=[1.0, 0.95])
    print(f"\nThe demo is done. Look in {out}/:")
    print(f"  renders/listen/*.wav   what the model invents ({', '.join(r['category'] for r in summary['renders'])})")
    print("  renders/epoch-NNN/     a short render after every epoch")
    print("  figures/               the poster's figure (source vs renders) and the epoch grid")
    print("  notebooks/*.html       the executed notebooks; open the .ipynb in JupyterLab (make lab)")
    if summary["best_val_bits"] is not None:
        print(f"  summary.json           best validation NLL {summary['best_val_bits']:.3f} bits/sample "
              f"(epoch {summary['best_val_epoch']} of {summary['epochs']})")
    return summary

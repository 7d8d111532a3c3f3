"""The batch: one run per source, and the triage view of them all.

``batch`` makes one run per source in ``OUT/<name>/`` and the triage view ``OUT/summary.csv`` and
``OUT/index.html`` (players and figures, grouped by category, sortable).
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
from typing import Sequence

from tqdm.auto import tqdm

from .files import atomic_path, write_text

CATEGORY_ORDER = {"varied": 0, "noise": 1, "tone": 2, "silence": 3, "failed": 4}


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
            "resemblance": "" if r.get("resemblance") is None else f"{r['resemblance']:.3f}",
            "copy_share": "" if r.get("copy_share") is None else f"{r['copy_share']:.3f}",
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
            f"<td>{e(r['render_categories'])}</td><td>{e(r['best_val_bits'])}</td><td>{e(r['resemblance'])}</td><td>{e(r['copy_share'])}</td><td>{players}</td><td>{fig}</td>"
            f"<td>{e(r['error'])}</td></tr>")
    return f"""<!doctype html><html><head><meta charset='utf-8'><title>samplernn-lab batch</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top}} th{{cursor:pointer;background:#eee}}
.varied .cat{{color:#282}} .tone .cat{{color:#c60}} .noise .cat{{color:#36c}} .silence .cat{{color:#888}}
.failed .cat{{color:#c00}}</style></head><body>
<h1>samplernn-lab batch: {len(rows)} sources</h1>
<p>Grouped by category (varied first: those learned something). Click a header to sort.</p>
<table id='t'><thead><tr><th>source</th><th>category</th><th>renders</th><th>best val bits</th><th title='0 = like the source, 1 = like noise of its colour'>resemblance</th><th>copied</th><th>listen</th>
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

"""The triage of a batch: ``summary.csv`` and the page ``index.html`` (players and figures, sortable)."""

from __future__ import annotations

import csv
import html
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

from .files import atomic_path, write_text
from .frame_features import judged_category, shown_category

CATEGORY_ORDER = {"varied": 0, "noise": 1, "tone": 2, "silence": 3, "failed": 4}


def write_triage(out: Path, results: list[dict], grid_fields: Sequence[str] = ()) -> None:
    """``summary.csv`` (a row per run, a column per grid field) and ``index.html`` (players and figures,
    grouped by grid setting when there is a grid, else by category; sortable). Both written atomically.

    ``results`` are :func:`run_one`'s results; rows of runs not finished have only the job's fields
    and a ``status`` (``waiting``, ``waiting to resume (...)`` or ``running (...)``).
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
                "renders": [os.path.relpath(Path(r["run"]) / x["file"], out) for x in renders],  # CSV: space-joined
                "figure": next(
                    (
                        os.path.relpath(Path(r["run"]) / f, out)
                        for f in r.get("figures", [])
                        if "poster" in f and not f.endswith("_low.png")
                    ),
                    "",
                ),
                "error": r.get("error", ""),
                "source_category": r.get("source_category")
                or "",  # last: the CSV's columns before it keep their places
            }
        )
    rows.sort(key=lambda x: ([_value_key(x[f]) for f in grid_fields], CATEGORY_ORDER.get(_judged(x), 5), x["name"]))
    fields = list(rows[0]) if rows else ["source", "name", *grid_fields]
    with atomic_path(out / "summary.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows({**r, "renders": " ".join(r["renders"])} for r in rows)
    write_text(out / "index.html", _index_html(rows, grid_fields))


def count_summary(rows: Iterable[dict]) -> str:
    """How many runs fell in each category, as the triage shows them, in its order: ``"2 varied, 1 tone, as its
    source, 1 noise"``. Rows have ``category`` (empty while unfinished) and ``source_category`` where known; the
    group headings and the batch's bar say it this one way."""
    counts = Counter((_judged(r) or "unfinished", _shown(r) if r["category"] else "unfinished") for r in rows)
    ordered = sorted(counts.items(), key=lambda kv: CATEGORY_ORDER.get(kv[0][0], 5))
    return ", ".join(f"{v} {shown}" for (_, shown), v in ordered)


def _judged(row: dict) -> str:
    """The category the triage sorts and colours a run by: a source's own kind is sorted with the varied ones."""
    return judged_category(row["category"], row.get("source_category"))


def _shown(row: dict) -> str:
    """The category as the page shows it (:func:`shown_category`)."""
    return shown_category(row["category"], row.get("source_category"))


def _value_key(value: str) -> tuple:
    """Numbers in numeric order (9 before 10), then words."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


COLUMNS = ("category", "renders", "best val bits", "resemblance", "copied", "epochs", "listen", "figure", "error")


def _index_html(rows: list[dict], grid_fields: Sequence[str] = ()) -> str:
    """The page: a table body per group of rows (per setting with a grid), sortable by any column."""
    grid_fields = list(grid_fields)
    groups: dict[str, list[dict]] = {}
    for r in rows:  # rows come sorted by setting, then category
        groups.setdefault(" ".join(f"{f}={r[f]}" for f in grid_fields), []).append(r)
    columns = ["source", *grid_fields, *COLUMNS]
    bodies = []
    for label, members in groups.items():
        lines = [_group_row(label, members, len(columns))] if label else []
        lines += [_row_html(r, grid_fields) for r in members]
        bodies.append("<tbody>\n" + "\n".join(lines) + "\n</tbody>")
    return _page(rows, grid_fields, columns, bodies)


def _group_row(label: str, members: list[dict], n_columns: int) -> str:
    """The heading row of a group: its setting and how many of its runs fell in each category."""
    e = html.escape
    summary = count_summary(members)
    return f"<tr class='group'><th colspan='{n_columns}'>{e(label)} &nbsp; <small>{e(summary)}</small></th></tr>"


def _url(path: str) -> str:
    """A relative file path as an attribute's URL: quoted (a space, ``#`` or ``?`` in a name is part of the path,
    not a fragment or a query), then HTML-escaped."""
    return html.escape(quote(path))


def _row_html(r: dict, grid_fields: list[str]) -> str:
    """One run's row: its settings, category, numbers, players and figure."""
    e = html.escape
    players = "".join(
        f"<div><audio controls preload='none' src='{_url(p)}'></audio><br><small>{e(Path(p).name)}</small></div>"
        for p in r["renders"]
    )
    fig = f"<a href='{_url(r['figure'])}'><img src='{_url(r['figure'])}' width='360' loading='lazy'></a>"
    fig = fig if r["figure"] else ""
    category = _shown(r) if r["category"] else r["status"]
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
    return f"<tr class='{e(_judged(r) or 'unfinished')}'>{''.join(cells)}</tr>"


def _page(rows: list[dict], grid_fields: list[str], columns: list[str], bodies: list[str]) -> str:
    """The whole HTML document around the table's bodies: style, heading, header row and the sorting script."""
    e = html.escape
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

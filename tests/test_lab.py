"""The notebook lab: notebooks committed clean, executed headless by papermill, batch triage."""

import csv
import json
from pathlib import Path

import nbformat
import pytest
import soundfile as sf

from samplernn_lab.batch import batch
from samplernn_lab.cli import main
from samplernn_lab.pipeline import NOTEBOOKS, notebooks_dir
from signals import bell

TINY = ["dim=32", "embed_size=8", "chunk_seconds=0.5", "copies=2", "seq_len=256", "batch_size=4", "render_seconds=0.25"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_committed_without_outputs_and_have_parameters(name):
    book = nbformat.read(notebooks_dir() / f"{name}.ipynb", as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
    assert "parameters" in code[0].metadata.get("tags", []), f"{name}: first code cell is not tagged parameters"
    assert book.cells[0].cell_type == "markdown"


EXPECTED_PARAMETERS = {
    "01_prepare_dataset": {"sources", "dataset_dir", "preset", "overrides", "seed", "overwrite"},
    "02_train": {"dataset_dir", "run_dir", "preset", "overrides", "max_minutes", "epochs", "seed", "resume", "device"},
    "03_listen": {
        "run_dir",
        "checkpoint",
        "prime_seconds",
        "seconds",
        "temperatures",
        "temperature_curves",
        "batch",
        "seed",
        "out_dir",
        "source",
        "interactive",
        "rescue",
        "top_p",
        "precision",
    },
    "04_poster_figures": {"run_dir", "source", "renders_dir", "out_dir", "low_hz"},
}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_papermill_reads_every_parameter(name):
    import papermill as pm

    found = pm.inspect_notebook(str(notebooks_dir() / f"{name}.ipynb"))
    assert set(found) == EXPECTED_PARAMETERS[name]
    assert all(p["help"] for p in found.values()), [p["name"] for p in found.values() if not p["help"]]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    sf.write(root / "bells.wav", bell(16000, 2.0, seed=3), 16000, subtype="PCM_16")
    (root / "broken.wav").write_text("not audio\n" * 50)
    return root


@pytest.fixture(scope="module")
def one_run(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("lab") / "run"
    code = main(
        [
            "run",
            str(sources / "bells.wav"),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--max-minutes",
            "2",
            "--seconds",
            "0.5",
            "--temperature",
            "1.0",
            "0.8",
            "--set",
            *TINY,
        ]
    )
    assert code == 0
    return out


def test_run_executes_every_notebook_without_errors(one_run):
    for name in NOTEBOOKS:
        book = nbformat.read(one_run / "notebooks" / f"{name}.ipynb", as_version=4)
        errors = [
            o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
        ]
        assert not errors, (name, errors)
        assert (one_run / "notebooks" / f"{name}.html").stat().st_size > 1000
    # the parameters were injected, not the defaults used
    book = nbformat.read(one_run / "notebooks" / "03_listen.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in book.cells)


def test_run_leaves_renders_figures_and_summary(one_run):
    summary = json.loads((one_run / "summary.json").read_text())
    assert summary["source"].endswith("bells.wav") and summary["best_val_bits"] > 0
    assert len(summary["renders"]) == 2
    assert all(r["category"] in ("silence", "tone", "noise", "varied") for r in summary["renders"])
    for r in summary["renders"]:
        data, sr = sf.read(one_run / r["file"])
        assert sr == 16000 and len(data) == 8000
        side = json.loads((one_run / r["file"]).with_suffix(".json").read_text())
        assert side["rescue"]["events"] == [] and side["rescue"]["silence_seconds"] >= 3.0  # on in the chain
    figures = {Path(f).name for f in summary["figures"]}
    assert {"poster.png", "epoch_grid.png"} <= figures
    assert (one_run / "figures" / "poster.pdf").exists()
    assert summary["settings"]["model"]["dim"] == 32


def test_batch_reports_failures_skips_finished_runs_and_writes_triage(sources, tmp_path, one_run):
    out = tmp_path / "batch"
    # a finished run is skipped: put the one made above in place
    import shutil

    shutil.copytree(one_run, out / "bells")
    report = batch(
        [sources / "bells.wav", sources / "broken.wav"],
        out,
        preset="sketch",
        max_minutes=0.1,
        seconds=0.25,
        overrides=TINY,
        progress=False,
    )
    assert report["ok"] == 1 and report["failed"] == 1
    by_name = {r["name"]: r for r in report["results"]}
    assert by_name["bells"]["status"] == "skipped (done)"
    assert "broken.wav" in by_name["broken"]["error"] and "not a readable audio file" in by_name["broken"]["error"]
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert {r["name"] for r in rows} == {"bells", "broken"}
    good = next(r for r in rows if r["name"] == "bells")
    assert good["category"] in ("silence", "tone", "noise", "varied") and float(good["best_val_bits"]) > 0
    assert next(r for r in rows if r["name"] == "broken")["category"] == "failed"
    page = (out / "index.html").read_text()
    assert "<audio" in page and "poster.png" in page and "broken" in page
    for src in [r for r in good["renders"].split()] + [good["figure"]]:
        assert (out / src).exists(), src  # links in the page resolve from disk


def test_listen_controls_render_on_click(one_run, tmp_path):
    from samplernn_lab.notebook import listen_controls

    box = listen_controls(one_run, tmp_path / "listen", temperatures=[0.9], seconds=0.2, batch=2, seed=5)
    choose = box.children[0].children[0]
    assert {"auto", "best", "last", "epoch-001"} <= set(choose.options)
    assert choose.value == "auto"  # what the chain and the CLI render unless told
    choose.value = "epoch-001"
    button = box.children[2]
    button.click()
    wavs = sorted(p.name for p in (tmp_path / "listen").glob("*.wav"))
    assert wavs == ["epoch-001_t0.9_s5_0.wav", "epoch-001_t0.9_s5_1.wav"]
    assert not button.disabled
    named = listen_controls(one_run, tmp_path / "listen", checkpoint="last")  # notebook 3's `checkpoint`
    assert named.children[0].children[0].value == "last"


def test_player_does_not_normalise():
    import numpy as np

    from samplernn_lab.notebook import player

    quiet = 0.01 * np.sin(np.linspace(0, 100, 8000)).astype(np.float32)
    html = player(quiet, 8000)._repr_html_()
    assert "audio" in html
    # the WAV it embeds keeps the quiet level (normalise=False), not full scale
    import base64
    import io
    import re

    import soundfile as sf

    data = base64.b64decode(re.search(r'base64,([^"]+)"', html).group(1))
    audio, _ = sf.read(io.BytesIO(data))
    assert 0.005 < np.max(np.abs(audio)) < 0.02


def test_execute_keeps_the_kernel_log_quiet_and_the_cells_output(tmp_path, capfd):
    """The kernel's start-up warnings do not break the run's progress line; what cells print stays."""
    from samplernn_lab.pipeline import execute

    src = tmp_path / "tiny.ipynb"
    nbformat.write(
        nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys\nprint('to stderr', file=sys.stderr)")]),
        src,
    )
    execute(src, tmp_path / "out" / "tiny.ipynb", {}, tmp_path)
    assert "WARNING" not in capfd.readouterr().err
    book = nbformat.read(tmp_path / "out" / "tiny.ipynb", as_version=4)
    assert [o.get("text") for o in book.cells[0].outputs] == ["to stderr\n"]


def test_batch_stays_importable_from_pipeline():
    import samplernn_lab.batch as module
    from samplernn_lab import pipeline

    assert pipeline.batch is module.batch and pipeline.write_triage is module.write_triage


def test_execute_starts_a_new_kernel_when_one_never_answers(tmp_path, monkeypatch, capfd):
    """A kernel lost to the port race of parallel starts is replaced; any other error is not retried."""
    import papermill as pm

    from samplernn_lab.pipeline import execute

    src = tmp_path / "tiny.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), src)
    real, calls = pm.execute_notebook, []

    def flaky(*args, **kwargs):
        calls.append(kwargs["start_timeout"])
        if len(calls) == 1:
            raise RuntimeError("Kernel didn't respond in 150 seconds")
        return real(*args, **kwargs)

    monkeypatch.setattr(pm, "execute_notebook", flaky)
    execute(src, tmp_path / "out" / "tiny.ipynb", {}, tmp_path)
    assert len(calls) == 2 and "starting a new kernel (2 of 3)" in capfd.readouterr().err
    assert nbformat.read(tmp_path / "out" / "tiny.ipynb", as_version=4).cells[0].execution_count == 1

    def broken(*args, **kwargs):
        calls.append(kwargs["start_timeout"])
        raise RuntimeError("something else")

    calls.clear()
    monkeypatch.setattr(pm, "execute_notebook", broken)
    with pytest.raises(RuntimeError, match="something else"):
        execute(src, tmp_path / "out2" / "tiny.ipynb", {}, tmp_path)
    assert len(calls) == 1

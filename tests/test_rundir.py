"""The run folder: folders the lab did not make are left alone, one training per folder, a failed start
leaves a folder the same command accepts, one tolerant metrics reader. Each test asserts the files after."""

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from samplernn_lab import DataConfig, ModelConfig, TrainConfig, train
from samplernn_lab import pipeline as pipeline_mod
from samplernn_lab.cli import main
from samplernn_lab.dataset import prepare
from samplernn_lab.errors import LabError
from samplernn_lab.progress import MetricsTail
from samplernn_lab.rundir import (
    MARKER,
    MetricsWriter,
    RunDir,
    RunLock,
    marker_kind,
    read_metrics,
    render_events,
    write_marker,
)
from signals import tone_plus_noise

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig(frame_sizes=(4, 2), dim=16, n_rnn=1, embed_size=8, q_levels=32)
FAST = TrainConfig(seq_len=256, batch_size=2, render_seconds=0.0, max_steps=2)
TINY_SET = [
    "--set",
    "dim=16",
    "embed_size=8",
    "q_levels=32",
    "frame_sizes=(4,2)",
    "n_rnn=1",
    "seq_len=256",
    "batch_size=2",
    "render_seconds=0",
    "chunk_seconds=0.25",
    "copies=1",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("rundir")
    sf.write(root / "tpn.wav", tone_plus_noise(16000, 1.5), 16000, subtype="PCM_16")
    return prepare(
        [root / "tpn.wav"], root / "ds", DataConfig(sample_rate=16000, copies=1, chunk_seconds=0.25), progress=False
    )


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------------------------------
# folders the lab did not make


def test_demo_out_leaves_a_users_folder_alone(tmp_path, capsys):
    music = tmp_path / "music"
    music.mkdir()
    (music / "song.wav").write_bytes(b"my song")
    before = listing(music)
    assert main(["demo", "--out", str(music)]) == 2
    assert "music" in one_line(capsys)
    assert listing(music) == before


def test_demo_replaces_only_a_previous_demo(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(
        pipeline_mod, "run", lambda source, out, **kw: calls.append(out) or {"renders": [], "best_val_bits": None}
    )
    old = tmp_path / "demo"
    old.mkdir()
    write_marker(old, "demo")
    (old / "stale.wav").write_bytes(b"old render")
    assert main(["demo", "--out", str(old)]) == 0
    assert calls == [old] and not (old / "stale.wav").exists() and marker_kind(old) == "demo"
    run = tmp_path / "a-run"
    run.mkdir()
    write_marker(run, "run")
    (run / "config.json").write_text("{}")
    assert main(["demo", "--out", str(run)]) == 2
    one_line(capsys)
    assert (run / "config.json").read_text() == "{}" and len(calls) == 1


def test_run_out_refuses_a_users_folder_even_with_overwrite(tmp_path, capsys):
    src = tmp_path / "a.wav"
    sf.write(src, tone_plus_noise(16000, 1.0), 16000)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        assert main(["run", str(src), "--out", str(mine), *extra]) == 2
        assert "not made by samplernn-lab" in one_line(capsys)
        assert listing(mine) == {"notes.txt": b"keep me"}


def test_run_overwrite_replaces_a_previous_run_only_when_asked(tmp_path, monkeypatch, capsys):
    src = tmp_path / "a.wav"
    sf.write(src, tone_plus_noise(16000, 1.0), 16000)
    out = tmp_path / "run"
    out.mkdir()
    write_marker(out, "run")
    (out / "config.json").write_text("{}")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.pt").write_bytes(b"old")
    assert main(["run", str(src), "--out", str(out)]) == 2
    said = one_line(capsys)
    assert (
        "already holds a run" in said
        and "--resume" in said
        and (out / "checkpoints" / "last.pt").read_bytes() == b"old"
    )
    executed = []
    monkeypatch.setattr(pipeline_mod, "execute", lambda nb, dst, params, cwd: executed.append((nb.stem, params)))
    monkeypatch.setattr(pipeline_mod, "write_summary", lambda run_dir, *a: {"run": str(run_dir)})
    assert main(["run", str(tmp_path), "--out", str(tmp_path / "elsewhere")]) == 2  # a folder: that is batch's
    assert "is a folder" in one_line(capsys) and not (tmp_path / "elsewhere").exists()
    assert main(["run", str(src), "--out", str(out), "--resume", "--overwrite"]) == 2 and "choose one" in one_line(
        capsys
    )
    # --resume goes on with the run: its checkpoint kept, training resumed from it
    assert main(["run", str(src), "--out", str(out), "--resume"]) == 0
    assert (out / "checkpoints" / "last.pt").read_bytes() == b"old"
    assert dict(executed)["02_train"]["resume"] is True
    # it goes on with what it was started with: another source, seed or setting is refused, not half taken
    other = tmp_path / "b.wav"
    sf.write(other, tone_plus_noise(16000, 1.5), 16000)
    capsys.readouterr()
    for extra, named in [
        (["--seed", "3"], "seed 0 (3 given now)"),
        (["--set", "lr=0.01"], "train.lr="),
        (["--preset", "poster"], "model.dim=256 (1024 given now)"),
    ]:
        assert main(["run", str(src), "--out", str(out), "--resume", *extra]) == 2
        said = one_line(capsys)
        assert named in said and "goes on with what it was started with" in said, said
    assert main(["run", str(other), "--out", str(out), "--resume"]) == 2 and "another source" in one_line(capsys)
    moved = tmp_path / "moved" / "a.wav"  # the same sound found at another path is the same source
    moved.parent.mkdir()
    moved.write_bytes(src.read_bytes())
    assert main(["run", str(moved), "--out", str(out), "--resume"]) == 0
    assert (out / "checkpoints" / "last.pt").read_bytes() == b"old"
    # the same settings in another order or spelling, and a budget, are no change
    out2 = tmp_path / "run2"
    assert main(["run", str(src), "--out", str(out2), "--set", "lr=0.001", "dim=64"]) == 0
    assert main(["run", str(src), "--out", str(out2), "--resume", "--set", "model.dim=64", "train.lr=1e-3"]) == 0
    assert main(["run", str(src), "--out", str(out2), "--resume", "--set", "dim=64", "lr=0.001", "max_steps=50"]) == 0
    executed.clear()
    assert main(["run", str(src), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "checkpoints").exists() and not (out / "config.json").exists()
    assert marker_kind(out) == "run" and executed[0][0] == "01_prepare_dataset"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]  # nothing left aside


def test_prepare_overwrite_only_replaces_a_dataset(dataset, tmp_path, capsys):
    src = tmp_path / "tpn.wav"
    sf.write(src, tone_plus_noise(16000, 1.0), 16000)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    args = ["--sample-rate", "16000", "--copies", "1", "--chunk-seconds", "0.25"]
    assert main(["prepare", str(src), "--out", str(mine), "--overwrite", *args]) == 2
    assert "not made by samplernn-lab" in one_line(capsys) and listing(mine) == {"notes.txt": b"keep me"}
    ds = tmp_path / "ds"
    assert main(["prepare", str(src), "--out", str(ds), *args]) == 0
    assert marker_kind(ds) == "dataset"
    capsys.readouterr()
    assert main(["prepare", str(src), "--out", str(ds), *args]) == 2  # not without --overwrite
    assert "--overwrite" in one_line(capsys)
    assert main(["prepare", str(src), "--out", str(ds), "--overwrite", *args, "--seed", "1"]) == 0
    assert json.loads((ds / "manifest.json").read_text())["settings"]["seed"] == 1


def test_batch_out_keeps_a_users_index_page(tmp_path, capsys):
    src = tmp_path / "a.wav"
    sf.write(src, tone_plus_noise(16000, 1.0), 16000)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my page</h1>")
    assert main(["batch", str(src), "--out", str(site)]) == 2
    assert "index.html" in one_line(capsys)
    assert listing(site) == {"index.html": b"<h1>my page</h1>"}


def test_train_refuses_a_users_folder(dataset, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(LabError, match="not made by samplernn-lab"):
        train(dataset, mine, TINY, FAST, progress=False)
    assert listing(mine) == {"notes.txt": b"keep me"}


# ---------------------------------------------------------------------------------------------------------
# a failed start


def test_a_start_that_fails_reading_the_dataset_writes_nothing(dataset, tmp_path, capsys):
    other = tmp_path / "ds48"
    other.mkdir()
    for p in dataset.rglob("*"):
        if p.is_file():
            (other / p.relative_to(dataset)).parent.mkdir(parents=True, exist_ok=True)
            (other / p.relative_to(dataset)).write_bytes(p.read_bytes())
    chunk = next((other / "chunks" / "train").glob("*.wav"))
    audio, _ = sf.read(chunk)
    sf.write(chunk, audio, 48000)  # a chunk at another sample rate
    out = tmp_path / "run"
    assert main(["train", str(other), "--out", str(out), "--no-progress", *TINY_SET]) == 2
    assert chunk.name in one_line(capsys)
    assert not out.exists()


def test_a_start_that_fails_later_leaves_a_folder_the_same_command_takes(dataset, tmp_path, monkeypatch, capsys):
    train_mod = importlib.import_module("samplernn_lab.train")  # the package's ``train`` is the function

    def broken(state, session, stopper):
        raise LabError("the first epoch failed")

    out = tmp_path / "run"
    command = ["train", str(dataset), "--out", str(out), "--no-progress", "--max-steps", "2", *TINY_SET]
    with monkeypatch.context() as m:
        m.setattr(train_mod, "run_epoch", broken)
        assert main(command) == 2
    assert "first epoch failed" in one_line(capsys)
    assert not list(out.rglob("*.pt")) and marker_kind(out) == "run"
    assert main(command) == 0, capsys.readouterr().err
    assert (out / "checkpoints" / "last.pt").exists()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r.get("split") == "train"] == [1, 2]


# ---------------------------------------------------------------------------------------------------------
# one training per run folder

HOLDER = """
import sys, time
from samplernn_lab.rundir import RunDir, RunLock
RunLock(RunDir(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def hold_lock(run: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_training_is_refused_naming_the_holder_and_a_killed_holders_lock_is_taken_over(
    dataset, tmp_path, capsys
):
    out = tmp_path / "run"
    train(dataset, out, TINY, FAST, progress=False)
    before = listing(out)
    holder = hold_lock(out)
    try:
        with pytest.raises(LabError, match=rf"another training .*pid {holder.pid}\b"):
            train(dataset, out, TINY, TrainConfig(**{**FAST.__dict__, "max_steps": 4}), resume=True, progress=False)
        after = listing(out)
        assert {k: v for k, v in after.items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}
        assert main(["train", str(dataset), "--out", str(out), "--resume", "--max-steps", "4", "--no-progress"]) == 2
        assert f"pid {holder.pid}" in one_line(capsys)
    finally:
        holder.kill()  # kill -9: the lock file still names it
        holder.wait()
    assert (out / ".lock").read_text().split() == [str(holder.pid)]
    result = train(dataset, out, TINY, TrainConfig(**{**FAST.__dict__, "max_steps": 4}), resume=True, progress=False)
    assert result.step == 4
    assert re.search(rf"took over a lock left by pid {holder.pid}", capsys.readouterr().out)
    assert (out / ".lock").read_text() == ""  # released at the end


def test_the_lock_is_free_again_after_a_training(dataset, tmp_path):
    out = tmp_path / "run"
    train(dataset, out, TINY, FAST, progress=False)
    with RunLock(RunDir(out)) as lock:
        assert lock.stale_pid is None and (out / ".lock").read_text().split() == [str(os.getpid())]


# ---------------------------------------------------------------------------------------------------------
# metrics.jsonl: one reader


def test_the_reader_skips_a_cut_off_last_line_and_the_writer_drops_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "split": "train", "nll_bits": 5.0}, {"event": "render", "epoch": 1, "category": "varied"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 2, "spl')
    assert read_metrics(path) == rows
    assert render_events(tmp_path) == rows[1:]
    with MetricsWriter(path) as log:
        log.write({"step": 2, "split": "train", "nll_bits": 4.0})
    assert path.read_text().splitlines()[-1] == json.dumps({"step": 2, "split": "train", "nll_bits": 4.0})
    assert len(read_metrics(path)) == 3


def test_a_summary_of_a_run_killed_mid_line_still_reads(tmp_path):
    from samplernn_lab.pipeline import write_summary

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    write_marker(run, "run")
    (run / "config.json").write_text(json.dumps({"model": {}, "train": {}, "sample_rate": 16000}))
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 3, "epoch": 1, "split": "val", "nll_bits": 3.5})
        + "\n"
        + '{"step": 4, "epoch": 2, "split": "tr'
    )
    summary = write_summary(run, tmp_path / "a.wav", "sketch", [])
    assert summary["best_val_bits"] == 3.5
    tail = MetricsTail(run).read()
    assert tail.val_bits == 3.5 and tail.step == 0


def test_no_module_but_rundir_spells_the_run_folder_names():
    offenders = []
    for path in (ROOT / "samplernn_lab").rglob("*.py"):
        if path.name == "rundir.py":
            continue
        code = "\n".join(
            line
            for line in path.read_text().splitlines()
            if not line.lstrip().startswith(("#", '"', "'")) and "``" not in line
        )
        for name in ('"metrics.jsonl"', '"config.json"', '"checkpoints"', '"last.pt"', '"best.pt"', 'f"epoch-'):
            if name in code:
                offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_a_folder_holding_only_a_lock_counts_as_empty(dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("")  # a training killed between taking the lock and marking the folder
    train(dataset, out, TINY, FAST, progress=False)
    assert (out / MARKER).exists() and (out / "checkpoints" / "last.pt").exists()


def test_one_version_source():
    from importlib.metadata import version

    import samplernn_lab

    assert samplernn_lab.__version__ == version("samplernn-lab")
    spelled = [
        p for p in (ROOT / "samplernn_lab").rglob("*.py") if re.search(r"__version__\s*=\s*[\"']\d+\.\d", p.read_text())
    ]
    assert spelled == []

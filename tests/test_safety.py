"""The fault battery (issue 11): killed and stopped trainings, full disks, hostile and broken files.

Every test looks at the file system afterwards: nothing the user had is lost or changed (the previous files are
byte-identical), nothing half-written is left (no temporary files, no half-made folders), and every bad input gets
one line on stderr naming the file, and exit status 2.

The "random moments" are drawn from seeded generators, so a failure repeats.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import pickle
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from samplernn_lab.checkpoint import FORMAT, load, resolve
from samplernn_lab.cli import main
from samplernn_lab.errors import LabError
from signals import bell, tone_plus_noise

# A tiny model whose epoch is 9 steps (12 training chunks of 4000 samples, batches of 4, windows of 1024), with a
# render after every epoch and last.pt written after every step: a kill lands in a save, a render or a step.
TINY = [
    "dim=16",
    "embed_size=8",
    "frame_sizes=(4,2)",
    "q_levels=64",
    "n_rnn=1",
    "seq_len=1024",
    "batch_size=4",
    "render_seconds=0.05",
    "render_prime_seconds=0",
    "checkpoint_minutes=0.0001",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process: the machine is small and shared

PROGRESS_BAR = re.compile(r"\d+%\|")  # tqdm's, on stderr

# What the lab's writers leave beside a file or folder while writing it (files.atomic_path, dataset.prepare).
TEMPORARY = re.compile(r"^\..+(\.tmp|\.tmp-\w+|\.old-\w+)$")


# ---------------------------------------------------------------------------------------------
# helpers


def cli(args, capsys) -> tuple[int, str, str]:
    """Run the CLI in this process: exit status, stdout, stderr."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str, *names: object) -> str:
    """The single line of an error on stderr (beside progress bars), checked to name each of ``names``."""
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and not PROGRESS_BAR.search(line)]
    assert len(lines) == 1, err
    assert "Traceback" not in lines[0] and "error:" in lines[0], lines[0]
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too), by relative path: what must not change."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[str]:
    """Half-written leftovers under (and beside) ``folder``: temporary files and folders of the writers."""
    found = [p for p in folder.rglob("*") if TEMPORARY.match(p.name)]
    found += [p for p in folder.parent.iterdir() if TEMPORARY.match(p.name) and p.name.startswith(f".{folder.name}.")]
    return sorted(str(p) for p in found)


def assert_whole_run(run: Path) -> None:
    """Every file of a run folder the lab would read is whole: checkpoints load, renders decode, the config and
    the metrics parse (a cut-off last metrics line is allowed: the reader skips it)."""
    from samplernn_lab.audio import load as load_audio

    json.loads((run / "config.json").read_text())
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines[:-1])
    checkpoints = sorted((run / "checkpoints").glob("*.pt"))
    assert checkpoints and all(load(p)["format"] == FORMAT for p in checkpoints)
    for wav in (run / "renders").rglob("*.wav"):
        assert len(load_audio(wav)[0]) > 0, wav


def spawn(*args) -> subprocess.Popen:
    """``python -m samplernn_lab.cli ARGS`` in a new process."""
    return subprocess.Popen(
        [sys.executable, "-m", "samplernn_lab.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def metrics_lines(run: Path) -> int:
    m = run / "metrics.jsonl"
    return m.read_bytes().count(b"\n") if m.exists() else 0


def wait_until_trained(proc: subprocess.Popen, run: Path, lines: int) -> None:
    """Wait until the process has written ``lines`` metrics lines in all and a ``last.pt``."""
    deadline = time.monotonic() + 300  # a guard against a hang, not a time limit on the lab
    while not ((run / "checkpoints" / "last.pt").exists() and metrics_lines(run) >= lines):
        if proc.poll() is not None:
            pytest.fail(f"training ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.05)


@contextmanager
def file_size_limit(n_bytes: int):
    """A real failed write: every write past ``n_bytes`` of a file fails with EFBIG (the kernel's
    RLIMIT_FSIZE, its signal ignored), as a full disk fails it with ENOSPC."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


class Hostile:
    """Unpickling this creates the file ``path`` (what a stranger's checkpoint could do, and worse)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return builtins.open, (self.path, "w")


def write_hostile(path: Path, witness: Path, kind: str = "zip") -> Path:
    """A ``.pt`` that looks like a lab checkpoint but whose pickle would create ``witness``."""
    payload = {"format": FORMAT, "config": {"model": {}}, "model": {}, "epoch": 1, "step": 1, "x": Hostile(witness)}
    if kind == "zip":
        torch.save(payload, path)
    else:  # the legacy format: a bare pickle
        with open(path, "wb") as fh:
            pickle.dump(payload, fh)
    return path


# ---------------------------------------------------------------------------------------------
# fixtures: one dataset and one short run for the module (tests copy what they change)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from samplernn_lab.dataset import DataConfig, prepare

    root = tmp_path_factory.mktemp("safety-data")
    sf.write(root / "tpn.wav", tone_plus_noise(16000, 2.0), 16000, subtype="PCM_16")
    return prepare(
        [root / "tpn.wav"], root / "ds", DataConfig(sample_rate=16000, copies=2, chunk_seconds=0.25), progress=False
    )


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    """A run of two epochs (epoch checkpoints, best.pt, last.pt, renders)."""
    run = tmp_path_factory.mktemp("safety-run") / "run"
    assert main(["train", str(dataset), "--out", str(run), "--no-progress", "--max-steps", "18", "--set", *TINY]) == 0
    return run


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A copy of the trained run that a test may damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


@pytest.fixture
def dataset_copy(dataset, tmp_path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "ds"))


# ---------------------------------------------------------------------------------------------
# killed and stopped trainings


def test_kill9_at_random_moments_then_last_loads_generates_and_resumes(dataset, tmp_path, capsys):
    rng = random.Random(1109)
    run = tmp_path / "run"
    args = ["train", dataset, "--out", run, "--no-progress", "--max-steps", "100000", "--set", *TINY]
    steps = []
    for kill in range(3):
        proc = spawn(*args, *(["--resume"] if kill else []))
        wait_until_trained(proc, run, metrics_lines(run) + rng.randint(1, 12))  # some steps, maybe an epoch's end
        time.sleep(rng.uniform(0.0, 0.3))  # then anywhere: in a step, a save, a render, the loss curve
        proc.kill()
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert_whole_run(run)  # a kill can leave a temporary file, never a half-written one under a real name
        steps.append(load(run / "checkpoints" / "last.pt")["step"])
        code, out, err = cli(
            ["generate", run, "--checkpoint", "last", "--seconds", "0.05", "--out", tmp_path / f"gen{kill}"], capsys
        )
        assert code == 0, err
        assert sf.info(out.split()[0]).frames == 800
    assert steps == sorted(steps) and steps[0] < steps[-1]  # each --resume went on from the last one
    code, out, err = cli([*args, "--resume", "--max-steps", steps[-1] + 3], capsys)
    assert code == 0, err
    assert load(run / "checkpoints" / "last.pt")["step"] == steps[-1] + 3
    assert_whole_run(run)
    assert temporaries(run) == []  # a resumed run clears what a killed one left half-written


def test_sigterm_at_random_moments_stops_cleanly(dataset, tmp_path):
    rng = random.Random(1115)
    run = tmp_path / "run"
    args = ["train", dataset, "--out", run, "--no-progress", "--max-steps", "100000", "--set", *TINY]
    steps = []
    for stop in range(2):
        proc = spawn(*args, *(["--resume"] if stop else []))
        wait_until_trained(proc, run, metrics_lines(run) + rng.randint(1, 12))
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 130, err
        assert "Traceback" not in err and "--resume" in out
        step = int(re.search(r"interrupted at step (\d+)", out).group(1))
        assert load(run / "checkpoints" / "last.pt")["step"] == step  # saved where it stopped
        assert_whole_run(run)
        assert temporaries(run) == []
        steps.append(step)
    assert steps[0] < steps[1]


# ---------------------------------------------------------------------------------------------
# a full disk


def _fail_torch_save(monkeypatch, error: BaseException) -> None:
    """torch.save writes part of the file, then fails as it fails on a full disk."""

    def failing(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise error

    monkeypatch.setattr(torch, "save", failing)


@pytest.mark.parametrize("how", ["ENOSPC", "torch RuntimeError", "file size limit"])
def test_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(run_copy, dataset, capsys, monkeypatch, how):
    before = snapshot(run_copy / "checkpoints")
    step = load(run_copy / "checkpoints" / "last.pt")["step"]
    args = ["train", dataset, "--out", run_copy, "--no-progress", "--resume", "--max-steps", step + 2]
    if how == "file size limit":  # real writes, cut off by the kernel
        with file_size_limit(min(len(b) for b in before.values()) // 2):
            code, _, err = cli(args, capsys)
    else:
        _fail_torch_save(
            monkeypatch,
            OSError(errno.ENOSPC, "No space left on device")
            if how == "ENOSPC"
            else RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
        )
        code, _, err = cli(args, capsys)
        monkeypatch.undo()
    assert code == 2
    line = one_line(err, "last.pt")
    assert "could not write" in line
    assert snapshot(run_copy / "checkpoints") == before
    assert temporaries(run_copy) == []
    # nothing lost: the run goes on from the checkpoint that was kept
    code, _, err = cli(args, capsys)
    assert code == 0, err
    assert load(run_copy / "checkpoints" / "last.pt")["step"] == step + 2


@pytest.mark.parametrize("how", ["ENOSPC", "file size limit"])
def test_full_disk_while_rendering_keeps_the_previous_render(trained, tmp_path, capsys, monkeypatch, how):
    out = tmp_path / "renders"
    args = ["generate", trained, "--checkpoint", "last", "--seconds", "0.5", "--out", out]
    assert cli(args, capsys)[0] == 0
    before = snapshot(out)
    assert len(before) == 2  # a WAV and its sidecar
    again = [*args, "--overwrite"]  # the same names again: replacing them is asked for
    if how == "file size limit":
        with file_size_limit(8000):  # the WAV is 16 kB
            code, _, err = cli(again, capsys)
    else:
        real = sf.SoundFile.write

        def failing(self, data):
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(sf.SoundFile, "write", failing)
        code, _, err = cli(again, capsys)
        monkeypatch.undo()
    assert code == 2
    line = one_line(err, "last_t1_s0_0.wav")
    assert "could not write" in line
    assert snapshot(out) == before
    assert temporaries(out) == []
    # into a new folder: nothing is left behind, not even the folder
    if how == "ENOSPC":
        monkeypatch.setattr(sf.SoundFile, "write", failing)
    with file_size_limit(8000) if how == "file size limit" else nullcontext():
        code, _, err = cli(args[:-1] + [tmp_path / "new"], capsys)
    assert code == 2 and not (tmp_path / "new").exists()


def test_full_disk_while_preparing_leaves_no_dataset(tmp_path, capsys, monkeypatch):
    from samplernn_lab import audio as audio_io

    sf.write(tmp_path / "bell.wav", bell(16000, 2.0), 16000, subtype="PCM_16")
    out = tmp_path / "ds"
    real, calls = audio_io.sf.write, []

    def failing(path, *a, **k):  # the third chunk finds the disk full
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *a, **k)

    monkeypatch.setattr(audio_io.sf, "write", failing)
    code, _, err = cli(
        [
            "prepare",
            tmp_path / "bell.wav",
            "--out",
            out,
            "--sample-rate",
            "16000",
            "--chunk-seconds",
            "0.25",
            "--copies",
            "2",
        ],
        capsys,
    )
    assert code == 2 and len(calls) == 3
    assert "No space left on device" in one_line(err)
    assert not out.exists() and temporaries(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bell.wav"]


# ---------------------------------------------------------------------------------------------
# hostile checkpoints


@pytest.mark.parametrize(
    "where",
    [
        "generate FILE",
        "generate FILE (legacy pickle)",
        "generate --checkpoint auto",
        "listening notebook (auto)",
        "export",
        "train --resume",
    ],
)
def test_hostile_pickle_creates_nothing(run_copy, dataset, tmp_path, capsys, where):
    from samplernn_lab.sample import render_checkpoint

    witness = tmp_path / "created-by-the-pickle"
    out = tmp_path / "out"
    if where.startswith("generate FILE"):
        target = write_hostile(tmp_path / "gift.pt", witness, "legacy" if "legacy" in where else "zip")
        args = ["generate", target, "--seconds", "0.05", "--out", out]
    elif where == "export":
        target = write_hostile(tmp_path / "gift.pt", witness)
        out = tmp_path / "gift.ts"
        args = ["export", target, "--out", out]
    elif where == "train --resume":
        target = write_hostile(run_copy / "checkpoints" / "last.pt", witness)
        args = ["train", dataset, "--out", run_copy, "--resume", "--no-progress", "--max-steps", "100"]
    else:
        target = write_hostile(resolve(run_copy, "auto"), witness)
        args = ["generate", run_copy, "--checkpoint", "auto", "--seconds", "0.05", "--out", out]
    before = snapshot(run_copy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # torch warns about some pickles: that would be more lines on stderr
        if where.startswith("listening"):  # what notebooks/03_listen.ipynb calls
            with pytest.raises(LabError) as e:
                render_checkpoint(run_copy, out, 0.05, which="auto", progress=False)
            line = str(e.value)
            assert "\n" not in line and str(target) in line
        else:
            code, _, err = cli(args, capsys)
            assert code == 2
            line = one_line(err, target)
    assert [str(w.message) for w in caught] == []
    assert "refused" in line
    assert not witness.exists() and not out.exists()
    assert snapshot(run_copy) == before


# ---------------------------------------------------------------------------------------------
# truncated and empty files


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "header only": data[:40], "cut in half": data[: len(data) // 2]}[how])


@pytest.mark.parametrize("how", ["empty", "header only", "cut in half"])
@pytest.mark.parametrize("verb", ["generate", "train --resume"])
def test_damaged_checkpoint_gets_one_line(run_copy, dataset, tmp_path, capsys, how, verb):
    last = run_copy / "checkpoints" / "last.pt"
    _damage(last, how)
    before = snapshot(run_copy)
    if verb == "generate":
        args = ["generate", run_copy, "--checkpoint", "last", "--seconds", "0.05", "--out", tmp_path / "out"]
    else:
        args = ["train", dataset, "--out", run_copy, "--resume", "--no-progress", "--max-steps", "100"]
    code, _, err = cli(args, capsys)
    assert code == 2
    one_line(err, last)
    assert snapshot(run_copy) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["empty", "header only"])
@pytest.mark.parametrize("verb", ["generate --prime", "prepare", "diagnose"])
def test_damaged_wav_gets_one_line(trained, tmp_path, capsys, how, verb):
    wav = tmp_path / "in" / "sound.wav"
    wav.parent.mkdir()
    sf.write(wav, bell(16000, 1.0), 16000, subtype="PCM_16")
    _damage(wav, how)
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    args = {
        "generate --prime": ["generate", trained, "--seconds", "0.05", "--prime", wav, "--out", out],
        "prepare": ["prepare", wav, "--out", out, "--sample-rate", "16000", "--chunk-seconds", "0.25"],
        "diagnose": ["diagnose", wav],
    }[verb]
    code, _, err = cli(args, capsys)
    assert code == 2
    one_line(err, wav)
    assert snapshot(tmp_path) == before and temporaries(out) == []


@pytest.mark.parametrize("how", ["empty", "cut in half"])
def test_damaged_dataset_chunk_gets_one_line(dataset_copy, tmp_path, capsys, how):
    chunk = sorted((dataset_copy / "chunks" / "train").glob("*.wav"))[3]
    _damage(chunk, how)
    run = tmp_path / "run"
    code, _, err = cli(
        ["train", dataset_copy, "--out", run, "--no-progress", "--max-steps", "3", "--set", *TINY], capsys
    )
    assert code == 2
    one_line(err, chunk)
    assert not run.exists()  # a run that cannot start leaves no folder


@pytest.mark.parametrize("how", ["empty", "cut in half", "not an object", "a chunk without a path"])
def test_damaged_manifest_gets_one_line(dataset_copy, tmp_path, capsys, how):
    manifest = dataset_copy / "manifest.json"
    if how == "not an object":
        manifest.write_text("[1, 2, 3]\n")
    elif how == "a chunk without a path":
        m = json.loads(manifest.read_text())
        del m["chunks"][0]["path"]
        manifest.write_text(json.dumps(m))
    else:
        _damage(manifest, how)
    before = snapshot(dataset_copy)
    run = tmp_path / "run"
    code, _, err = cli(
        ["train", dataset_copy, "--out", run, "--no-progress", "--max-steps", "3", "--set", *TINY], capsys
    )
    assert code == 2
    one_line(err, manifest)
    assert not run.exists() and snapshot(dataset_copy) == before


@pytest.mark.parametrize("outside", ["../../etc/passwd", "/etc/passwd", "chunks/../../x.wav", "link"])
def test_manifest_pointing_outside_the_dataset_is_refused(dataset_copy, tmp_path, capsys, outside):
    manifest = dataset_copy / "manifest.json"
    m = json.loads(manifest.read_text())
    if outside == "link":  # a chunk that is a link to a file outside
        sf.write(tmp_path / "x.wav", np.zeros(4000, dtype=np.float32), 16000)
        (dataset_copy / m["chunks"][0]["path"]).unlink()
        os.symlink(tmp_path / "x.wav", dataset_copy / m["chunks"][0]["path"])
    else:
        if outside == "chunks/../../x.wav":
            sf.write(tmp_path / "x.wav", np.zeros(4000, dtype=np.float32), 16000)
        m["chunks"][0]["path"] = outside
        manifest.write_text(json.dumps(m))
    run = tmp_path / "run"
    code, _, err = cli(
        ["train", dataset_copy, "--out", run, "--no-progress", "--max-steps", "3", "--set", *TINY], capsys
    )
    assert code == 2
    line = one_line(err, manifest)
    assert "outside" in line
    assert not run.exists()


# ---------------------------------------------------------------------------------------------
# a source that vanishes while prepare works


@pytest.mark.parametrize("when", ["after the check", "after the first read"])
def test_source_vanishing_during_prepare(tmp_path, capsys, monkeypatch, when):
    from samplernn_lab import dataset as dataset_mod

    folder = tmp_path / "sources"
    folder.mkdir()
    for i in range(2):
        sf.write(folder / f"s{i}.wav", bell(16000, 1.0, seed=i), 16000, subtype="PCM_16")
    doomed = folder / "s1.wav"
    if when == "after the check":
        real_find = dataset_mod.find_sources

        def find_then_vanish(paths):
            found = real_find(paths)
            doomed.unlink()
            return found

        monkeypatch.setattr(dataset_mod, "find_sources", find_then_vanish)
    else:
        real_load = dataset_mod.audio_io.load

        def vanish_then_load(path, *a, **k):
            if Path(path) == doomed:
                doomed.unlink()
            return real_load(path, *a, **k)

        monkeypatch.setattr(dataset_mod.audio_io, "load", vanish_then_load)
    out = tmp_path / "ds"
    code, _, err = cli(
        ["prepare", folder, "--out", out, "--sample-rate", "16000", "--chunk-seconds", "0.25", "--copies", "2"], capsys
    )
    assert code == 2
    one_line(err, doomed)
    assert not out.exists() and temporaries(out) == []
    assert sorted(p.name for p in folder.iterdir()) == ["s0.wav"]

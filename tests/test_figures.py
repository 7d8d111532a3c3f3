"""Poster figure, epoch grid and loss curve, on sounds and runs synthesised in temporary folders."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from samplernn_lab.audio import save
from samplernn_lab.errors import LabError
from samplernn_lab.figures import (
    epoch_grid,
    loss_curve,
    make_epoch_grid,
    make_poster_figure,
    poster_figure,
    poster_figure_files,
    spectrogram_db,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from the PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def assert_pdf(path: Path) -> None:
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:5] == b"%PDF-"


def tone(sr: int, dur: float, f: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * f * np.arange(int(sr * dur)) / sr)).astype(np.float32)


def struck(sr: int, dur: float, f: float) -> np.ndarray:
    """Decaying inharmonic partials struck four times a second, alternating two pitches: 'varied'."""
    t = np.arange(int(sr * dur)) / sr
    tt = t % 0.25
    f0 = np.where((t // 0.25) % 2 == 0, f, 1.5 * f)
    x = sum(0.5**j * np.sin(2 * np.pi * f0 * r * t) * np.exp(-tt * (6 + 3 * j)) for j, r in enumerate([1, 2.7, 5.2]))
    return (0.5 * x).astype(np.float32)


def noise(sr: int, dur: float, amp: float = 0.1, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(sr * dur))).astype(np.float32)


# --- spectrogram_db -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sr,f", [(16000, 1000.0), (44100, 3520.0)])
def test_spectrogram_db_peaks_at_the_sine(sr, f):
    s_db, freqs, times = spectrogram_db(tone(sr, 1.0, f, amp=0.5), sr, n_fft=2048, hop=512)
    assert s_db.shape == (1025, len(times)) and freqs.shape == (1025,)
    assert freqs[-1] == pytest.approx(sr / 2)
    mid = s_db[:, len(times) // 2]
    assert abs(freqs[np.argmax(mid)] - f) <= sr / 2048  # within one bin
    assert mid.max() == pytest.approx(20 * np.log10(0.5), abs=1.5)  # dB re full scale: -6 dB
    assert s_db.min() >= -100.0 - 1e-3
    assert times[1] - times[0] == pytest.approx(512 / sr)


def test_spectrogram_db_of_silence_and_short_audio():
    s_db, _, times = spectrogram_db(np.zeros(100, np.float32), 16000, n_fft=512, hop=128)
    assert np.all(s_db == pytest.approx(-100.0))
    assert len(times) >= 1


# --- poster figure ------------------------------------------------------------------------------------


def test_more_renders_make_more_rows():
    sr = 16000
    source = ("source.wav", struck(sr, 1.0, 440.0), sr)
    one = make_poster_figure([source, ("render-1.wav", tone(sr, 1.0, 3520.0), sr)])
    three = make_poster_figure(
        [
            source,
            ("r1", tone(sr, 1.0, 3520.0), sr),
            ("r2", noise(sr, 1.0), sr),
            ("r3", struck(22050, 0.5, 300.0), 22050),
        ]
    )
    assert isinstance(one, Figure)
    panels = lambda fig: [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]  # noqa: E731
    assert len(panels(one)) == 2 * 3
    assert len(panels(three)) == 4 * 3
    assert len(three.axes) == 4 * 3 + 1  # one shared colour bar
    first_title = panels(three)[0].get_title(loc="left")
    assert "source.wav" in first_title and "1.00 s" in first_title and "16000 Hz" in first_title
    assert "22050 Hz" in panels(three)[9].get_title(loc="left")
    assert panels(three)[0].get_ylim() == (-1.0, 1.0)
    assert panels(three)[2].get_ylim() == (0.0, 1000.0)
    # one colour scale for all spectrograms
    clims = {
        m.get_clim()
        for ax in panels(three)
        for m in ax.collections
        if hasattr(m, "get_clim") and m.get_array() is not None and m.get_array().ndim == 2
    }
    assert len(clims) == 1


def test_poster_figure_writes_png_and_pdf(tmp_path):
    sr = 16000
    sounds = [("source", struck(sr, 1.0, 440.0), sr), ("render", tone(sr, 1.0, 3520.0), sr)]
    dpi = 50
    paths = poster_figure(sounds, tmp_path / "figs" / "poster", low_hz=500.0, dpi=dpi)
    assert paths == [tmp_path / "figs" / "poster.png", tmp_path / "figs" / "poster.pdf"]
    width, height = png_size(paths[0])
    fig = make_poster_figure(sounds)
    assert abs(width - fig.get_figwidth() * dpi) <= 2
    assert abs(height - fig.get_figheight() * dpi) <= 2
    assert width >= 500 and height >= 200
    assert_pdf(paths[1])
    # a suffix in `out` is replaced, not doubled
    again = poster_figure(sounds, tmp_path / "figs" / "poster.pdf", dpi=dpi)
    assert again == paths
    assert not list((tmp_path / "figs").glob("*.tmp"))  # atomic writes leave nothing behind


def test_poster_figure_files(tmp_path):
    sr = 16000
    src = save(tmp_path / "glass.wav", struck(sr, 1.0, 660.0), sr)
    r1 = save(tmp_path / "epoch-001.wav", tone(sr, 1.0, 3520.0), sr)
    r2 = save(tmp_path / "epoch-002.wav", noise(sr, 1.0), sr)
    paths = poster_figure_files(src, [r1, r2], tmp_path / "out.png", dpi=40)
    assert [p.name for p in paths] == ["out.png", "out.pdf"]
    assert png_size(paths[0])[0] > 0
    with pytest.raises(LabError, match="missing.wav"):
        poster_figure_files(src, [tmp_path / "missing.wav"], tmp_path / "x")


def test_poster_figure_rejects_nothing():
    with pytest.raises(LabError):
        make_poster_figure([])


# --- epoch grid ---------------------------------------------------------------------------------------


def make_run(root: Path) -> Path:
    sr = 16000
    renders = root / "run" / "renders"
    save(renders / "epoch-001" / "b.wav", np.zeros(sr, np.float32), sr)
    save(renders / "epoch-001" / "a.wav", tone(sr, 1.0, 3520.0), sr)  # first by name: shown
    save(renders / "epoch-002" / "render.wav", noise(sr, 1.0), sr)
    save(renders / "epoch-010" / "render.wav", struck(sr, 1.0, 440.0), sr)
    (renders / "epoch-003").mkdir()  # no WAV yet: skipped
    (renders / "notes").mkdir()
    return root / "run"


def test_epoch_grid(tmp_path):
    run = make_run(tmp_path)
    fig = make_epoch_grid(run)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 3
    assert titles[0].startswith("epoch 1 \u00b7 tone")
    assert titles[1].startswith("epoch 2 \u00b7 noise")
    assert titles[2].startswith("epoch 10 \u00b7 varied")
    assert all("dBFS" in t for t in titles)
    paths = epoch_grid(run, run / "figures" / "epochs")
    assert [p.name for p in paths] == ["epochs.png", "epochs.pdf"]
    assert png_size(paths[0])[0] > 100
    assert_pdf(paths[1])


def test_epoch_grid_shows_the_stream_the_event_judged(tmp_path):
    run = make_run(tmp_path)
    save(tmp_path / "outside.wav", tone(16000, 1.0, 3520.0), 16000)
    event = {"event": "render", "epoch": 1, "category": "silence", "resemblance": 3.0, "copy_share": 0.0}
    (run / "metrics.jsonl").write_text(json.dumps({**event, "path": "renders/epoch-001/b.wav"}) + "\n")
    title = next(ax.get_title() for ax in make_epoch_grid(run).axes if ax.get_title())
    assert title.startswith("epoch 1 \u00b7 silence \u00b7 no signal")  # b.wav, not the first by name
    # a path outside the run's renders is not followed: the first WAV by name is shown, with its own diagnosis
    (run / "metrics.jsonl").write_text(json.dumps({**event, "path": "../outside.wav"}) + "\n")
    title = next(ax.get_title() for ax in make_epoch_grid(run).axes if ax.get_title())
    assert title.startswith("epoch 1 \u00b7 tone") and "dBFS" in title and "resemblance" not in title


def test_epoch_grid_marks_a_steady_tone_sources_tones_as_its_own_kind(tmp_path):
    from samplernn_lab.figures import FAILURE_COLOUR

    run = make_run(tmp_path)
    event = {"event": "render", "epoch": 1, "category": "tone", "resemblance": 4.8, "copy_share": 0.0}
    for source, words, colour in (("varied", "tone \u00b7", FAILURE_COLOUR), ("tone", "tone, as its source", "black")):
        (run / "metrics.jsonl").write_text(
            json.dumps({**event, "path": "renders/epoch-001/a.wav", "source_category": source}) + "\n"
        )
        ax = next(ax for ax in make_epoch_grid(run).axes if ax.get_title())
        assert ax.get_title().startswith(f"epoch 1 \u00b7 {words}") and ax.title.get_color() == colour


def test_epoch_grid_without_renders_names_the_run(tmp_path):
    run = tmp_path / "empty-run"
    (run / "renders" / "epoch-001").mkdir(parents=True)
    with pytest.raises(LabError, match="empty-run"):
        epoch_grid(run, tmp_path / "grid")
    with pytest.raises(LabError, match="no-such-run"):
        epoch_grid(tmp_path / "no-such-run", tmp_path / "grid")


# --- loss curve ---------------------------------------------------------------------------------------


def write_metrics(path: Path) -> Path:
    rng = np.random.default_rng(0)
    lines, step = [json.dumps({"event": "start", "step": 0})], 0
    for epoch in range(1, 4):
        for _ in range(100):
            step += 1
            nll = 6 * np.exp(-step / 120) + 2 + 0.2 * rng.standard_normal()
            lines.append(json.dumps({"step": step, "epoch": epoch, "split": "train", "nll_bits": nll, "seconds": 0.05}))
        lines.append(json.dumps({"event": "checkpoint", "step": step, "epoch": epoch}))
        lines.append(
            json.dumps({"step": step, "epoch": epoch, "split": "val", "nll_bits": 2.5 + 1 / epoch, "seconds": 1.5})
        )
    lines.append('{"step": 301, "epoch": 4, "spl')  # a run still writing: cut-off last line
    path.write_text("\n".join(lines))
    return path


def test_loss_curve(tmp_path):
    (tmp_path / "run").mkdir()
    metrics = write_metrics(tmp_path / "run" / "metrics.jsonl")
    out = loss_curve(metrics, tmp_path / "run" / "figures" / "loss")
    assert out == tmp_path / "run" / "figures" / "loss.png"
    width, height = png_size(out)
    assert width > 300 and height > 200


def test_loss_curve_errors_name_the_file(tmp_path):
    empty = tmp_path / "metrics.jsonl"
    empty.write_text(json.dumps({"event": "start"}) + "\n")
    with pytest.raises(LabError, match="metrics.jsonl"):
        loss_curve(empty, tmp_path / "loss.png")
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n" + json.dumps({"step": 1, "split": "train", "nll_bits": 3.0}) + "\n")
    with pytest.raises(LabError, match="broken.jsonl: line 1"):
        loss_curve(broken, tmp_path / "loss.png")
    with pytest.raises(LabError, match="absent.jsonl"):
        loss_curve(tmp_path / "absent.jsonl", tmp_path / "loss.png")

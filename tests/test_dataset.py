import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from samplernn_lab.analysis import CATEGORY_RULES
from samplernn_lab.augment import augment, crossfade_join, rotate
from samplernn_lab.cli import main
from samplernn_lab.dataset import (
    DataConfig,
    batch_order,
    chunk_as_recorded,
    excerpts,
    prepare,
    read_manifest,
    source_category,
    split_source,
    windows,
)
from samplernn_lab.errors import LabError
from samplernn_lab.sampling.rescue import training_audio
from signals import bell, noise, tone

CFG = DataConfig(sample_rate=16000, copies=4, chunk_seconds=0.5, seed=3)


def folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_crossfade_join_has_no_click():
    a = np.ones(1000, np.float32)
    b = -np.ones(1000, np.float32)
    joined = crossfade_join([a, b], 100)
    assert len(joined) == 1900
    assert np.max(np.abs(np.diff(joined))) < 0.03  # a hard cut would jump by 2


def test_augment_pieces_describe_the_stream():
    x = bell(16000, 1.0)
    stream, pieces = augment(x, [(0, len(x))], 3, np.random.default_rng(0), fade=0)
    assert len(stream) == 3 * len(x)
    for p in pieces:  # without crossfades every piece is an exact copy of its source run
        np.testing.assert_array_equal(
            stream[p.stream_start : p.stream_start + p.length], x[p.source_start : p.source_start + p.length]
        )
    offsets = {p.copy: p.offset for p in pieces}
    assert len(set(offsets.values())) == 3  # each copy is offset differently


def test_gain_jitter_varies_copies_but_never_clips():
    x = bell(16000, 0.5)
    x = x / np.abs(x).max() * 0.7  # room for +3 dB, not for +6
    stream, pieces = augment(x, [(0, len(x))], 12, np.random.default_rng(1), fade=0, gain_jitter_db=6.0)
    gains = np.array([p.gain for p in pieces])
    assert gains.min() < 10 ** (-3 / 20)  # some copies quieter by more than 3 dB
    assert gains.max() == pytest.approx(1 / 0.7, rel=1e-5)  # the loudest stop at full scale
    assert np.abs(stream).max() <= 1.0 + 1e-6


def test_pitch_jitter_moves_each_copy_by_at_most_its_cents():
    sr, f0 = 16000, 500.0
    x = (0.9 * np.sin(2 * np.pi * f0 * np.arange(sr) / sr)).astype(np.float32)
    stream, pieces = augment(x, [(0, sr)], 8, np.random.default_rng(3), fade=0, pitch_jitter_cents=100.0)
    rates = np.array([p.rate for p in pieces])
    assert np.all(np.abs(1200 * np.log2(rates)) <= 101)
    assert rates.min() < 2 ** (-30 / 1200) and rates.max() > 2 ** (30 / 1200)  # copies differ, up and down
    assert len(stream) == sum(p.length for p in pieces)
    for p in pieces:  # each piece sounds at the source's pitch times its rate
        if p.length < 4000:
            continue
        mid = stream[p.stream_start + 200 : p.stream_start + p.length - 200]  # away from the resampler's edges
        f = np.abs(np.fft.rfft(mid * np.hanning(len(mid)), 1 << 18))
        assert np.argmax(f) * sr / (1 << 18) == pytest.approx(f0 * p.rate, abs=2.0)
    for k in range(8):  # a copy's pieces cover the whole source once
        assert sum(p.length * p.rate for p in pieces if p.copy == k) == pytest.approx(sr, abs=3)


def test_pitch_jitter_never_clips_a_source_at_full_scale():
    x = noise(16000, 0.5)
    x = x / np.abs(x).max()  # at 0 dBFS: a band-limited copy rings past it unless its gain is capped
    stream, pieces = augment(x, [(0, len(x))], 6, np.random.default_rng(0), fade=0, pitch_jitter_cents=100.0)
    assert np.abs(stream).max() <= 1.0
    assert min(p.gain for p in pieces) < 1.0


def test_pitch_jitter_manifest_maps_chunks_to_the_source_and_keeps_held_out_audio(make_wav, tmp_path):
    n = 16000 * 3
    ramp = np.linspace(-0.9, 0.9, n).astype(np.float32)
    path = make_wav("ramp.wav", ramp, subtype="FLOAT")
    held = {}
    for cents in (0.0, 50.0):
        cfg = DataConfig(sample_rate=16000, copies=4, chunk_seconds=0.25, crossfade_ms=0, pitch_jitter_cents=cents)
        out = prepare([path], tmp_path / f"ds{cents:g}", cfg, progress=False)
        m = read_manifest(out)
        splits = m["sources"][0]["splits"]
        rates = set()
        for c in m["chunks"]:
            data, _ = sf.read(out / c["path"], dtype="float32")
            if c["split"] != "train":
                held[cents, c["path"]] = data
            for g in c["segments"]:
                rate = g.get("rate", 1.0)
                rates.add(rate)
                inside = any(a <= g["source_start"] and g["source_stop"] <= b for a, b in splits[c["split"]])
                assert inside, (c["split"], g)  # no sample of a copy comes from the held-out stretch
                k = int((g["source_stop"] - g["source_start"]) / rate)
                j = np.arange(8, k - 8)  # away from the resampler's edges
                np.testing.assert_allclose(
                    data[g["chunk_start"] + j], np.interp(g["source_start"] + j * rate, np.arange(n), ramp), atol=2e-3
                )
        assert len(rates) > 1 if cents else rates == {1.0}
    # the held-out chunks are the same audio whether the training copies are jittered or not
    assert {k for c, k in held if c == 0.0} == {k for c, k in held if c == 50.0}
    for (_c, k), data in held.items():
        np.testing.assert_array_equal(data, held[0.0, k])


def test_primes_come_back_at_the_sources_level(make_wav, tmp_path):
    # a steady tone: every stretch has one level, so a copy's gain shows in its RMS
    path = make_wav("tone.wav", tone(440.0, 16000, 3.0, 0.25), subtype="FLOAT")
    cfg = DataConfig(sample_rate=16000, copies=6, chunk_seconds=0.25, gain_jitter_db=6.0, seed=1)
    out = prepare([path], tmp_path / "ds", cfg, progress=False)
    train = [c for c in read_manifest(out)["chunks"] if c["split"] == "train"]

    def db(x):
        return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)))

    want = db(tone(440.0, 16000, 1.0, 0.25))
    raw = [db(sf.read(out / c["path"], dtype="float32")[0][:2000]) for c in train]
    assert max(abs(r - want) for r in raw) > 2.0  # the copies as written: louder and quieter
    primes = excerpts(out, 2000 / 16000, len(train), seed=0)
    assert primes.shape == (len(train), 2000)
    for row in primes:
        assert db(row) == pytest.approx(want, abs=0.3)
    joined = training_audio(out)
    level = [db(joined[i : i + 1000]) for i in range(0, len(joined) - 1000, 1000)]
    assert max(abs(v - want) for v in level) < 0.5  # crossfades between copies move it a little


def test_gain_undone_exactly_across_crossfades_cut_by_chunk_edges(make_wav, tmp_path):
    # a constant source: as recorded, every sample is 0.25, whatever the copy, crossfade or chunk edge
    path = make_wav("dc.wav", np.full(9600, 0.25, np.float32), subtype="FLOAT")
    cfg = DataConfig(
        sample_rate=16000, copies=40, chunk_seconds=0.1, gain_jitter_db=6.0, val_fraction=0, test_fraction=0, seed=2
    )
    out = prepare([path], tmp_path / "ds", cfg, progress=False)
    m = read_manifest(out)
    cut = 0
    for c in m["chunks"]:
        segs = c["segments"]
        cut += any(g["piece_start"] < 0 and g["gain"] != segs[k - 1]["gain"] for k, g in enumerate(segs) if k)
        np.testing.assert_allclose(chunk_as_recorded(out, m, c), 0.25, atol=1e-3)
    assert cut  # some chunk starts inside a crossfade between copies of different gains


def test_rotate_reads_a_wrapped_stretch_circularly():
    assert rotate([(70, 100), (0, 50)], 0) == [(70, 100), (0, 50)]
    assert rotate([(70, 100), (0, 50)], 10) == [(80, 100), (0, 50), (70, 80)]
    assert rotate([(70, 100), (0, 50)], 40) == [(10, 50), (70, 100), (0, 10)]


def test_augment_fills_min_length():
    x = tone(seconds=0.1)
    stream, pieces = augment(x, [(0, len(x))], 1, np.random.default_rng(0), fade=16, min_length=16000)
    assert len(stream) >= 16000 and max(p.copy for p in pieces) >= 9


def test_chunk_counts_lengths_and_rate(bell_wav, tmp_path):
    out = prepare([bell_wav], tmp_path / "ds", CFG, progress=False)
    m = read_manifest(out)
    chunk = CFG.chunk_samples
    assert m["sample_rate"] == 16000 and m["chunk_samples"] == chunk == 8000
    n_train = 48000 - 2 * 4800
    fade = 160  # 4 copies of at most 3 runs each, every join crossfaded
    assert (4 * n_train - 11 * fade) // chunk <= m["counts"]["train"] <= 4 * n_train // chunk
    assert m["counts"]["val"] == 1 and m["counts"]["test"] == 1  # held-out stretches fill one chunk each
    for c in m["chunks"]:
        data, sr = sf.read(out / c["path"])
        assert sr == 16000 and len(data) == chunk
        assert c["split"] in ("train", "val", "test") and c["source"] == str(bell_wav)
        assert {"copy", "offset", "copies", "offsets", "segments"} <= set(c)


def test_min_chunks_adds_training_copies_only(bell_wav, tmp_path):
    from dataclasses import replace

    plain = read_manifest(prepare([bell_wav], tmp_path / "a", CFG, progress=False))["counts"]
    assert plain["train"] < 20  # the rule has something to do
    more = read_manifest(prepare([bell_wav], tmp_path / "b", replace(CFG, min_chunks=20), progress=False))["counts"]
    assert more["train"] >= 20 and more["val"] == plain["val"] and more["test"] == plain["test"]
    few = read_manifest(prepare([bell_wav], tmp_path / "c", replace(CFG, min_chunks=2), progress=False))["counts"]
    assert few == plain  # already enough: `copies` decides


def test_held_out_audio_never_reaches_training(tmp_path, make_wav):
    # A ramp makes every source sample identifiable by its value.
    n = 16000 * 2
    ramp = np.linspace(-0.9, 0.9, n).astype(np.float32)
    path = make_wav("ramp.wav", ramp, subtype="FLOAT")
    cfg = DataConfig(sample_rate=16000, copies=3, chunk_seconds=0.25, crossfade_ms=0, seed=1)
    out = prepare([path], tmp_path / "ds", cfg, progress=False)
    m = read_manifest(out)
    splits = m["sources"][0]["splits"]
    (v0, v1), (t0, t1) = splits["val"][0], splits["test"][0]
    assert v1 == t0 and v1 - v0 == t1 - t0 == 3200
    assert sum(b - a for a, b in splits["train"]) == n - 6400
    held = (v0, t1)
    for c in m["chunks"]:
        for s in c["segments"]:
            inside = any(a <= s["source_start"] and s["source_stop"] <= b for a, b in splits[c["split"]])
            assert inside, (c["split"], s)
        data, _ = sf.read(out / c["path"], dtype="float32")
        lo, hi = ramp[held[0]] - 1e-3, ramp[held[1] - 1] + 1e-3
        if c["split"] == "train":  # no training sample has a held-out value
            assert not np.any((data > lo + 2e-3) & (data < hi - 2e-3))
        else:
            assert data.min() >= lo and data.max() <= hi
        # the manifest's segments reproduce the chunk
        for s in c["segments"]:
            k = s["source_stop"] - s["source_start"]
            np.testing.assert_allclose(
                data[s["chunk_start"] : s["chunk_start"] + k], ramp[s["source_start"] : s["source_stop"]], atol=1e-3
            )


def test_held_out_stretch_avoids_a_decaying_tail():
    t = np.arange(16000 * 4) / 16000
    decaying = (np.exp(-1.5 * t) * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    splits = split_source(decaying, 0.1, 0.1)
    ((start, _),) = splits["val"]
    assert 0 < start < len(decaying) * 0.7  # not the near-silent end


def test_fractions_can_be_zero(bell_wav, tmp_path):
    cfg = DataConfig(sample_rate=16000, copies=2, chunk_seconds=0.5, val_fraction=0, test_fraction=0)
    m = read_manifest(prepare([bell_wav], tmp_path / "ds", cfg, progress=False))
    assert m["counts"]["val"] == m["counts"]["test"] == 0 and m["counts"]["train"] > 0


def test_same_seed_same_bytes_other_seed_differs(bell_wav, tmp_path):
    a = prepare([bell_wav], tmp_path / "a", CFG, progress=False)
    b = prepare([bell_wav], tmp_path / "b", CFG, progress=False)
    assert folder_digest(a) == folder_digest(b)
    c = prepare([bell_wav], tmp_path / "c", DataConfig(**{**CFG.__dict__, "seed": 4}), progress=False)
    assert folder_digest(a) != folder_digest(c)


def test_manifest_records_sources(bell_wav, tmp_path):
    m = read_manifest(prepare([bell_wav], tmp_path / "ds", CFG, progress=False))
    (src,) = m["sources"]
    assert src["sha256"] == hashlib.sha256(bell_wav.read_bytes()).hexdigest()
    assert src["seconds"] == pytest.approx(3.0)
    assert m["settings"]["copies"] == 4


def test_the_source_kind_is_measured_once_when_prepared(make_wav, tmp_path):
    drone = prepare([make_wav("drone.wav", tone(440, 16000, 3.0))], tmp_path / "drone", CFG, progress=False)
    peal = prepare([make_wav("peal.wav", bell(16000, 3.0))], tmp_path / "peal", CFG, progress=False)
    assert read_manifest(drone)["source_category"] == source_category(drone) == "tone"
    assert read_manifest(peal)["source_category"] == source_category(peal) == "varied"
    assert read_manifest(peal)["category_rules"] == CATEGORY_RULES
    # what the manifest says is what every judge reads, not a second measurement
    path = peal / "manifest.json"
    m = json.loads(path.read_text())
    path.write_text(json.dumps({**m, "source_category": "tone"}))
    assert source_category(peal) == "tone"
    # a dataset prepared before the kind was recorded is measured from its source
    path.write_text(json.dumps({k: v for k, v in m.items() if k != "source_category"}))
    assert source_category(peal) == "varied"
    # ... and so is one whose kind was measured under other rules (before they had an edition, or an older one):
    # a stale answer is not trusted, and the manifest is left as it was
    before = {k: v for k, v in m.items() if k != "category_rules"}
    for stale in (before, {**m, "category_rules": CATEGORY_RULES - 1}):
        text = json.dumps({**stale, "source_category": "tone"})
        path.write_text(text)
        assert source_category(peal) == "varied"
        assert path.read_text() == text
    path.write_text(json.dumps({**m, "source_category": "bells"}))
    with pytest.raises(LabError, match=r"manifest\.json: .*source_category must be one of silence, tone"):
        read_manifest(peal)


def test_the_epoch_renders_and_the_summary_judge_by_the_manifest_kind(make_wav, tmp_path):
    from samplernn_lab.epoch_renders import render_event
    from samplernn_lab.pipeline import write_summary
    from samplernn_lab.rundir import RunDir

    src = make_wav("peal.wav", bell(16000, 3.0))
    run = tmp_path / "run"
    ds = prepare([src], run / "dataset", CFG, progress=False)  # where the chain prepares it
    path = ds / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "source_category": "tone"}))  # a drone's dataset
    (run / "renders" / "listen").mkdir(parents=True)
    # the run folder was moved: the dataset its config names is gone, the one inside it is found
    gone = str(tmp_path / "before-the-move" / "dataset")
    (run / "config.json").write_text(json.dumps({"model": {}, "train": {}, "sample_rate": 16000, "dataset": gone}))
    held = make_wav("run/renders/listen/held.wav", tone(440, 16000, 3.0))
    event = render_event([held], RunDir(run), ds, 16000, 1, 10)
    assert event["source_category"] == "tone" and event["category"] == "tone" and "as its source" in event["sentence"]
    summary = write_summary(run, src, "sketch", [])
    assert summary["source_category"] == "tone" and "as its source" in summary["renders"][0]["sentence"]


def test_several_sources_and_folders(tmp_path, make_wav):
    make_wav("a.wav", bell(16000, 2.0, seed=1))
    make_wav("b.wav", bell(16000, 2.0, seed=2))
    m = read_manifest(prepare([tmp_path], tmp_path / "ds", CFG, progress=False))
    assert {c["source_index"] for c in m["chunks"]} == {0, 1}


def test_windows_cover_chunks_after_silence():
    import torch

    chunks = torch.arange(40).view(2, 20)
    got = list(windows(chunks, seq_len=8, lookback=4, silence=99))
    assert len(got) == 2
    i, w = got[0]
    assert w.shape == (2, 12) and w[0, :4].tolist() == [99] * 4 and w[0, 4:].tolist() == list(range(8))
    assert got[1][1][0, 4:].tolist() == list(range(8, 16))


# --- the CLI and bad input -------------------------------------------------------------------


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_prepare(bell_wav, tmp_path, capsys):
    code, out, _ = run_cli(
        [
            "prepare",
            str(bell_wav),
            "--out",
            str(tmp_path / "ds"),
            "--sample-rate",
            "16000",
            "--copies",
            "4",
            "--chunk-seconds",
            "0.5",
        ],
        capsys,
    )
    assert code == 0 and "train" in out
    assert read_manifest(tmp_path / "ds")["counts"]["train"] > 0


def _bad_inputs(tmp_path, make_wav):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "text.wav"
    text.write_text("RIFF? no, just text\n" * 20)
    nan = tone()
    nan[5] = np.inf
    (tmp_path / "noaudio").mkdir()
    (tmp_path / "noaudio" / "readme.txt").write_text("hi")
    return {
        "missing": (tmp_path / "missing.wav", "no such file"),
        "empty": (empty, "empty"),
        "not audio": (text, "not a readable audio file"),
        "silent": (make_wav("silent.wav", np.zeros(16000, np.float32)), "silent"),
        "nan": (make_wav("inf.wav", nan, subtype="FLOAT"), "NaN or infinite"),
        "no audio in dir": (tmp_path / "noaudio", "no audio files"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "not audio", "silent", "nan", "no audio in dir"])
def test_bad_input_one_line_error_nothing_left(case, tmp_path, make_wav, capsys):
    path, problem = _bad_inputs(tmp_path, make_wav)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli(["prepare", str(path), "--out", str(tmp_path / "ds")], capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and problem in lines[0] and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no dataset folder, no temporary left


def test_a_chunk_under_one_sample_is_refused_in_one_line(bell_wav, tmp_path, capsys):
    code, _, err = run_cli(["prepare", str(bell_wav), "--out", str(tmp_path / "ds"), "--chunk-seconds", "1e-5"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "chunk_seconds=1e-05" in err, err
    assert not (tmp_path / "ds").exists()


def test_non_empty_out_refused_and_overwrite_replaces_only_a_dataset(bell_wav, tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    args = ["prepare", str(bell_wav), "--out", str(out), "--sample-rate", "16000", "--chunk-seconds", "0.5"]
    code, _, err = run_cli(args, capsys)
    assert code != 0 and "not empty" in err and str(out) in err
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    code, _, err = run_cli(args + ["--overwrite"], capsys)  # never on a folder the lab did not write (issue 11)
    assert code == 2 and "not made by samplernn-lab" in err and [p.name for p in out.iterdir()] == ["precious.txt"]
    (out / "precious.txt").unlink()
    assert run_cli(args, capsys)[0] == 0
    code, _, err = run_cli(args + ["--seed", "1"], capsys)
    assert code != 0 and "--overwrite" in err
    code, _, _ = run_cli(args + ["--seed", "1", "--overwrite"], capsys)
    assert code == 0 and json.loads((out / "manifest.json").read_text())["settings"]["seed"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds")]


def test_interrupted_prepare_leaves_nothing(bell_wav, tmp_path, monkeypatch):
    import samplernn_lab.dataset as ds

    calls = {"n": 0}
    real_save = ds.audio_io.save

    def failing_save(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_save(*a, **k)

    monkeypatch.setattr(ds.audio_io, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        prepare([bell_wav], tmp_path / "ds", CFG, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bell.wav"]


def test_source_too_short_for_a_chunk(tmp_path, make_wav):
    path = make_wav("short.wav", noise(16000, 0.05))
    with pytest.raises(LabError):
        prepare(
            [path],
            tmp_path / "ds",
            DataConfig(sample_rate=16000, copies=1, chunk_seconds=8.0, val_fraction=0.4, test_fraction=0.0),
            progress=False,
        )


def test_written_files_get_a_plain_files_mode(bell_wav, tmp_path):
    import os
    import stat

    out = prepare([bell_wav], tmp_path / "ds", CFG, progress=False)
    umask = os.umask(0)
    os.umask(umask)
    for p in [out / "manifest.json", next((out / "chunks" / "train").glob("*.wav"))]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask


def test_batch_order_fills_every_batch_and_covers_every_chunk():
    # 19 chunks at batch 16 used to end each epoch on 3 chunks trained alone for a whole batch's steps
    for n, size in ((19, 16), (21, 16), (32, 16), (5, 16), (1, 1)):
        batches = batch_order(n, size, seed=3, epoch=2)
        assert all(len(b) == min(size, n) for b in batches)
        assert all(len(set(b.tolist())) == len(b) for b in batches)  # no chunk twice in one batch
        assert set(torch.cat(batches).tolist()) == set(range(n))
        assert len(batches) == -(-n // size)
    assert batch_order(0, 16, seed=3, epoch=2) == []
    again = batch_order(19, 16, seed=3, epoch=2)
    assert all(torch.equal(a, b) for a, b in zip(batch_order(19, 16, seed=3, epoch=2), again))
    assert not torch.equal(batch_order(19, 16, seed=3, epoch=3)[0], again[0])


def test_the_source_is_found_again_from_another_folder_and_only_unchanged(tmp_path, monkeypatch):
    """The manifest keeps the source's absolute path, and its bytes are checked: judged against another file of
    the same name (a relative path read from another folder) the renders would be judged against the wrong sound."""
    from samplernn_lab.dataset import source_audio

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sf.write(tmp_path / "a" / "take.wav", bell(16000, 1.0, seed=1), 16000)
    sf.write(tmp_path / "b" / "take.wav", noise(16000, 1.0), 16000)
    monkeypatch.chdir(tmp_path / "a")
    prepare(["take.wav"], tmp_path / "ds", CFG)
    source, _ = sf.read(tmp_path / "a" / "take.wav", dtype="float32")
    monkeypatch.chdir(tmp_path / "b")
    assert np.array_equal(source_audio(tmp_path / "ds"), source)
    sf.write(tmp_path / "a" / "take.wav", noise(16000, 1.0), 16000)  # the file changed since: the chunks stand in
    assert not np.array_equal(source_audio(tmp_path / "ds"), sf.read(tmp_path / "a" / "take.wav", dtype="float32")[0])


def test_a_dataset_prepared_again_in_the_same_folder_is_judged_against_its_new_source(tmp_path):
    import time

    from samplernn_lab.epoch_renders import _source_profile

    sf.write(tmp_path / "one.wav", bell(16000, 1.0, seed=1), 16000)
    sf.write(tmp_path / "two.wav", noise(16000, 1.0), 16000)
    prepare([tmp_path / "one.wav"], tmp_path / "ds", CFG)
    first = _source_profile(tmp_path / "ds", 16000)
    assert _source_profile(tmp_path / "ds", 16000) is first  # made once per dataset
    time.sleep(0.01)
    prepare([tmp_path / "two.wav"], tmp_path / "ds", CFG, overwrite=True)
    assert _source_profile(tmp_path / "ds", 16000) is not first

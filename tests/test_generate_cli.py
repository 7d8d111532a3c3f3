"""`samplernn-lab generate`, `diagnose` and `figures` from the command line, and their bad input."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from samplernn_lab import ModelConfig, TrainConfig, train
from samplernn_lab.audio import quantize
from samplernn_lab.checkpoint import load_model
from samplernn_lab.cli import main
from samplernn_lab.dataset import DataConfig, prepare
from samplernn_lab.sample import generate
from signals import bell, noise, tone


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _tiny_run(tmp_path_factory.mktemp("gen"))


def _tiny_run(root):
    """A one-epoch run of a bell in ``root/run``, its dataset in ``root/ds``."""
    sf.write(root / "bell.wav", bell(16000, 2.0), 16000)
    ds = prepare(
        [root / "bell.wav"], root / "ds", DataConfig(sample_rate=16000, copies=2, chunk_seconds=0.25), progress=False
    )
    train(
        ds,
        root / "run",
        ModelConfig(frame_sizes=(4, 2), dim=16, n_rnn=1, embed_size=8, q_levels=64),
        TrainConfig(seq_len=256, batch_size=4, epochs=1, render_seconds=0),
        progress=False,
    )
    return root / "run"


def cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_writes_named_wavs_with_sidecars(run, tmp_path, capsys):
    code, out, _ = cli(
        [
            "generate",
            run,
            "--checkpoint",
            "best",
            "--seconds",
            "0.1",
            "--batch",
            "2",
            "--temperature",
            "1.0",
            "0.5",
            "--seed",
            "3",
            "--out",
            tmp_path / "r",
        ],
        capsys,
    )
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "r").glob("*.wav"))
    assert names == ["best_t0.5_s3_0.wav", "best_t0.5_s3_1.wav", "best_t1_s3_0.wav", "best_t1_s3_1.wav"]
    side = json.loads((tmp_path / "r" / "best_t1_s3_0.json").read_text())
    assert side["temperature"] == 1.0 and side["seed"] == 3 and side["epoch"] == 1 and side["seconds"] == 0.1
    # the files are what generate() makes from the same checkpoint and seed
    model, _ = load_model(run, "best")
    codes = generate(model, 1600, batch_size=4, temperature=[1.0, 1.0, 0.5, 0.5], seed=3)
    data, sr = sf.read(tmp_path / "r" / "best_t1_s3_1.wav", dtype="float32")
    assert sr == 16000 and torch.equal(quantize(data, 64), codes[1])


def test_generate_with_prime(run, tmp_path, capsys):
    sf.write(tmp_path / "p.wav", tone(300.0, 16000, 0.05), 16000)
    code, _, err = cli(
        [
            "generate",
            run,
            "--checkpoint",
            "last",
            "--seconds",
            "0.05",
            "--prime",
            tmp_path / "p.wav",
            "--temperature",
            "0",
            "--out",
            tmp_path / "r",
        ],
        capsys,
    )
    assert code == 0, err
    side = json.loads((tmp_path / "r" / "last_t0_s0_0.json").read_text())
    assert side["prime"] is True and side["prime_file"].endswith("p.wav")


def _bad(run, tmp_path, case):
    if case == "no checkpoint":
        empty = tmp_path / "emptyrun"
        (empty / "checkpoints").mkdir(parents=True)
        return [empty, "--seconds", "1"], "no checkpoint"
    if case == "not a checkpoint":
        (tmp_path / "x.pt").write_bytes(b"garbage")
        return [tmp_path / "x.pt", "--seconds", "1"], "not a readable checkpoint"
    if case == "another model":
        state = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
        state["config"]["model"]["dim"] = 32  # weights of a dim-16 model under a dim-32 config
        torch.save(state, tmp_path / "other.pt")
        return [tmp_path / "other.pt", "--seconds", "1"], "do not fit"
    if case == "prime rate":
        sf.write(tmp_path / "p44.wav", tone(300.0, 44100, 0.05), 44100)
        return [run, "--seconds", "1", "--prime", tmp_path / "p44.wav"], "44100 Hz"
    if case == "negative":
        return [run, "--seconds", "-1"], "negative"
    if case == "negative seed":
        return [run, "--seconds", "0.1", "--seed", "-1"], "--seed"
    if case == "top-p":
        return [run, "--seconds", "0.1", "--top-p", "0"], "--top-p"
    if case == "a temperature twice":
        return [run, "--seconds", "0.1", "--temperature", "1", "1"], "same file"
    if case == "two primes":
        sf.write(tmp_path / "p.wav", tone(300.0, 16000, 0.05), 16000)
        return [run, "--seconds", "0.1", "--prime", tmp_path / "p.wav", "--prime-seconds", "0.1"], "one of them"
    if case == "moved dataset":
        state = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
        state["config"]["dataset"] = str(tmp_path / "gone")
        torch.save(state, tmp_path / "moved.pt")
        return [tmp_path / "moved.pt", "--seconds", "0.1", "--prime-seconds", "0.1"], str(tmp_path / "gone")
    raise AssertionError(case)


BAD = ["no checkpoint", "not a checkpoint", "another model", "prime rate", "negative", "negative seed", "top-p"]
BAD += ["a temperature twice", "two primes", "moved dataset"]


@pytest.mark.parametrize("case", BAD)
def test_generate_bad_input_one_line(run, tmp_path, capsys, case):
    args, expect = _bad(run, tmp_path, case)
    code, _, err = cli(["generate", *args, "--out", tmp_path / "r"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expect in lines[0] and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # a refusal leaves no folder behind


def test_generate_refuses_to_replace_renders_unless_asked(run, tmp_path, capsys):
    args = ["generate", run, "--checkpoint", "best", "--seconds", "0.05", "--out", tmp_path / "r"]
    assert cli(args, capsys)[0] == 0
    wav = tmp_path / "r" / "best_t1_s0_0.wav"
    before = wav.read_bytes()
    code, _, err = cli([*args, "--top-p", "0.5"], capsys)  # same file names, another render
    assert code == 2 and "--overwrite" in err and str(wav) in err and wav.read_bytes() == before
    assert cli([*args, "--top-p", "0.5", "--overwrite"], capsys)[0] == 0
    assert json.loads(wav.with_suffix(".json").read_text())["top_p"] == 0.5


def test_generate_out_naming_a_file_is_refused_and_the_file_kept(run, tmp_path, capsys):
    (tmp_path / "song.wav").write_bytes(b"mine")
    code, _, err = cli(["generate", run, "--seconds", "0.1", "--out", tmp_path / "song.wav"], capsys)
    assert code == 2 and "--out" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "song.wav").read_bytes() == b"mine"


def test_diagnose_cli_table_and_json(tmp_path, capsys):
    sf.write(tmp_path / "silence.wav", np.zeros(16000, np.float32), 16000)
    sf.write(tmp_path / "tone.wav", tone(3520.0, 16000, 2.0), 16000)
    sf.write(tmp_path / "noise.wav", noise(16000, 2.0), 16000)
    sf.write(tmp_path / "bells.wav", bell(16000, 3.0), 16000)
    files = [tmp_path / f"{n}.wav" for n in ("silence", "tone", "noise", "bells")]
    code, out, _ = cli(["diagnose", *files, "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and [r["category"] for r in rows] == ["silence", "tone", "noise", "varied"]
    assert all({"file", "category", "rms_dbfs", "spectral_flatness", "onset_rate"} <= set(r) for r in rows)
    code, out, _ = cli(["diagnose", *files], capsys)
    assert code == 0 and "silence" in out and "varied" in out and len(out.splitlines()) >= 5
    # against a source: resemblance and the copied share, in the table and the JSON
    code, out, _ = cli(["diagnose", *files, "--source", tmp_path / "bells.wav", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and rows[3]["copy_share"] > 0.9 and rows[3]["resemblance"] < 0.1
    assert all(r["resemblance"] > 1.0 for r in rows[:3]) and rows[2]["category"] == "noise"
    code, out, _ = cli(["diagnose", *files, "--source", tmp_path / "bells.wav"], capsys)
    assert code == 0 and "resemblance" in out.splitlines()[0] and "copied" in out.splitlines()[0]
    code, _, err = cli(["diagnose", tmp_path / "nope.wav"], capsys)
    assert code == 2 and "nope.wav" in err
    # a silent source sets no level to compare against (it read ~1.6e6): refused, naming it
    code, out, err = cli(["diagnose", tmp_path / "bells.wav", "--source", tmp_path / "silence.wav"], capsys)
    assert code == 2 and out == "" and "silence.wav" in err and "silent" in err and len(err.strip().splitlines()) == 1
    # ... in diagnose only: training's per-epoch judge reads a source's first minute, which may be silent
    from samplernn_lab.analysis import SourceProfile

    assert np.isfinite(SourceProfile(np.zeros(16000, np.float32), 16000).resemblance(bell(16000, 1.0)))


def test_figures_cli(tmp_path, capsys):
    sf.write(tmp_path / "src.wav", bell(44100, 2.0), 44100)
    sf.write(tmp_path / "gen.wav", noise(16000, 1.0), 16000)
    code, out, err = cli(["figures", tmp_path / "src.wav", tmp_path / "gen.wav", "--out", tmp_path / "fig.png"], capsys)
    assert code == 0, err
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "fig.pdf").exists()


def test_auto_checkpoint_is_the_latest_varied_epoch(tmp_path):
    from samplernn_lab.checkpoint import resolve

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("epoch-001", "epoch-002", "epoch-003", "last"):
        (run / "checkpoints" / f"{name}.pt").write_bytes(b"x")
    events = [{"event": "render", "epoch": e, "category": c} for e, c in ((1, "varied"), (2, "varied"), (3, "tone"))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"cut off')
    assert resolve(run, "auto").name == "epoch-002.pt"
    (run / "metrics.jsonl").write_text(json.dumps({"event": "render", "epoch": 3, "category": "silence"}) + "\n")
    assert resolve(run, "auto").name == "last.pt"


def test_prime_seconds_continues_training_audio(run, tmp_path, capsys):
    args = [
        "generate",
        run,
        "--checkpoint",
        "last",
        "--seconds",
        "0.05",
        "--batch",
        "2",
        "--prime-seconds",
        "0.02",
        "--temperature",
        "0",
        "--out",
    ]
    code, _, err = cli(args + [tmp_path / "a"], capsys)
    assert code == 0, err
    side = json.loads((tmp_path / "a" / "last_t0_s0_0.json").read_text())
    assert side["prime_seconds"] == pytest.approx(0.02)
    # greedy continuation of the training audio: what generate() gives with the same excerpts as prime
    from samplernn_lab.dataset import excerpts

    model, info = load_model(run, "last")
    prime = excerpts(info["config"]["dataset"], 0.02, 2, 0)
    codes = generate(model, 800, batch_size=2, temperature=0.0, prime=quantize(prime, 64))
    for i in range(2):
        data, _ = sf.read(tmp_path / "a" / f"last_t0_s0_{i}.wav", dtype="float32")
        assert torch.equal(quantize(data, 64), codes[i])
    assert not np.array_equal(prime[0], prime[1])  # streams start from different chunks


def test_auto_checkpoint_resembles_the_source_most_without_copying(tmp_path):
    from samplernn_lab.checkpoint import resolve

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("epoch-001", "epoch-002", "epoch-003", "epoch-004", "last"):
        (run / "checkpoints" / f"{name}.pt").write_bytes(b"x")
    events = [(1, "varied", 0.9, 0.0), (2, "varied", 0.4, 0.0), (3, "varied", 0.2, 0.5), (4, "tone", 1.4, 0.0)]

    def write(events):
        rows = [
            {"event": "render", "epoch": e, "category": c, "resemblance": r, "copy_share": cp} for e, c, r, cp in events
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write(events)
    # epoch 3 copies half of its source and epoch 4 is a steady tone far from it: epoch 2 is the closest of the rest
    assert resolve(run, "auto").name == "epoch-002.pt"
    # a tone closer to its source than noise (a bell's held partials) loses to a varied render that is too;
    # silence never counts
    (run / "checkpoints" / "epoch-005.pt").write_bytes(b"x")
    (run / "checkpoints" / "epoch-006.pt").write_bytes(b"x")
    write([*events, (5, "tone", 0.3, 0.0), (6, "silence", 0.05, 0.0)])
    assert resolve(run, "auto").name == "epoch-002.pt"
    # ... but counts when nothing varied is closer than noise (the demo before the batch fix)
    write([(1, "noise", 1.7, 0.0), (2, "noise", 2.3, 0.0), (4, "tone", 0.75, 0.0), (5, "varied", 1.2, 0.0)])
    assert resolve(run, "auto").name == "epoch-004.pt"
    # silence never counts, however close (nothing varied below 1 here)
    write([(1, "noise", 1.7, 0.0), (4, "tone", 0.75, 0.0), (6, "silence", 0.05, 0.0)])
    assert resolve(run, "auto").name == "epoch-004.pt"
    # the demo after it: strikes at 0.82 over steady partials at 0.65
    write([(2, "varied", 0.82, 0.0), (3, "tone", 0.80, 0.0), (5, "tone", 0.65, 0.0), (4, "noise", 1.16, 0.0)])
    assert resolve(run, "auto").name == "epoch-002.pt"
    # a quiet hiss bed the measure flatters (noise at 0.62) comes after a tone closer than noise
    write([(1, "noise", 0.62, 0.0), (3, "tone", 0.75, 0.0), (4, "noise", 1.3, 0.0)])
    assert resolve(run, "auto").name == "epoch-003.pt"


def test_auto_takes_a_steady_tone_sources_tones_as_its_own_kind(tmp_path):
    from samplernn_lab.checkpoint import resolve

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for e in range(1, 6):
        (run / "checkpoints" / f"epoch-{e:03d}.pt").write_bytes(b"x")
    # a rubbed glass's run (RESULTS, "The source's own kind"): hiss far off, its held tone nearer
    events = [(1, "noise", 12.8), (2, "tone", 4.8), (3, "tone", 7.9), (4, "noise", 50.0), (5, "silence", 3.0)]

    def write(source_category):
        rows = [
            {"event": "render", "epoch": e, "category": c, "resemblance": r, "copy_share": 0.0}
            | ({"source_category": source_category} if source_category else {})
            for e, c, r in events
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write(None)  # a run from before the events said what the source is: tones above 1 are the tone failure
    assert resolve(run, "auto").name == "epoch-001.pt"
    write("varied")  # a source that moves: the same
    assert resolve(run, "auto").name == "epoch-001.pt"
    write("tone")  # the source is a steady tone: its closest tone, never silence
    assert resolve(run, "auto").name == "epoch-002.pt"
    events[1:3] = [(2, "tone", 30.0), (3, "tone", 40.0)]  # by the measure: tones further off than the hiss are not
    write("tone")  # taken over it
    assert resolve(run, "auto").name == "epoch-001.pt"
    # and a tone of it closer than coloured noise is a moving render: the closest of them wins, noise after them
    events[:] = [(1, "varied", 0.7), (2, "tone", 0.5), (3, "noise", 0.4)]
    write("tone")
    assert resolve(run, "auto").name == "epoch-002.pt"
    write("noise")  # a hiss recording: its noise is its own kind, the closest wins
    assert resolve(run, "auto").name == "epoch-003.pt"
    write(None)
    assert resolve(run, "auto").name == "epoch-001.pt"


def test_generate_rescue_flag_fills_the_sidecar(run, tmp_path, capsys):
    args = ["generate", run, "--checkpoint", "last", "--seconds", "3.5", "--temperature", "0", "--out"]
    assert cli(args + [tmp_path / "off"], capsys)[0] == 0
    assert json.loads((tmp_path / "off" / "last_t0_s0_0.json").read_text())["rescue"] is None
    code, _, err = cli(args + [tmp_path / "on", "--rescue"], capsys)
    assert code == 0, err
    rescue = json.loads((tmp_path / "on" / "last_t0_s0_0.json").read_text())["rescue"]
    assert rescue["silence_seconds"] >= 3.0 and rescue["tone_seconds"] >= 3.0
    assert rescue["noise_seconds"] is None and rescue["noise_limit"] is None  # the noise rule is opt-in
    assert all(e["reason"] in ("silence", "tone") and 3.0 <= e["seconds"] < 3.5 for e in rescue["events"])


def test_rescue_is_on_in_the_chain_and_can_be_turned_off():
    from samplernn_lab.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["generate", "r", "--seconds", "1", "--out", "o"]).rescue is False
    assert parse(["run", "s.wav", "--out", "o"]).rescue is True
    assert parse(["run", "s.wav", "--out", "o", "--no-rescue"]).rescue is False
    assert parse(["batch", "s.wav", "--out", "o", "--no-rescue"]).rescue is False
    assert parse(["demo"]).rescue is True and parse(["demo", "--no-rescue"]).rescue is False


def test_export_and_figures_refuse_to_overwrite_a_file(run, tmp_path, capsys):
    """A file at --out may be the user's: refused with one line, exit 2, left as it was; --overwrite replaces."""
    mine = tmp_path / "bells.ts"
    mine.write_bytes(b"my patch notes")
    code, _, err = cli(["export", run, "--out", mine, "--checkpoint", "last"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(mine) in err and "--overwrite" in err and mine.read_bytes() == b"my patch notes"
    code, _, err = cli(["export", run, "--out", mine, "--checkpoint", "last", "--overwrite"], capsys)
    assert code == 0, err
    assert mine.read_bytes() != b"my patch notes" and torch.jit.load(str(mine)) is not None

    sf.write(tmp_path / "src.wav", bell(16000, 1.0), 16000)
    sf.write(tmp_path / "gen.wav", noise(16000, 0.5), 16000)
    (tmp_path / "fig.pdf").write_bytes(b"my paper")
    args = ["figures", tmp_path / "src.wav", tmp_path / "gen.wav", "--out", tmp_path / "fig.png"]
    code, _, err = cli(args, capsys)
    assert code == 2 and "fig.pdf: exists" in err
    assert (tmp_path / "fig.pdf").read_bytes() == b"my paper" and not (tmp_path / "fig.png").exists()
    code, _, err = cli([*args, "--overwrite"], capsys)
    assert code == 0, err
    assert (tmp_path / "fig.pdf").read_bytes()[:4] == b"%PDF"


def test_export_refuses_a_prime_it_cannot_read_and_a_folder_out(run, tmp_path, capsys):
    """With the run's dataset gone the module would start from silence without a word: refused, as generate
    refuses; so are a negative --prime-seconds and an --out that is a folder (it was a traceback)."""
    own = tmp_path / "run"
    shutil.copytree(run, own)
    state = torch.load(own / "checkpoints" / "last.pt", weights_only=True)
    state["config"]["dataset"] = str(tmp_path / "moved")
    torch.save(state, own / "checkpoints" / "last.pt")
    for extra, said in [
        ([], "moved: the run's dataset is not there"),
        (["--prime-seconds", "-1"], "must not be negative"),
        (["--out", tmp_path, "--overwrite"], "is a folder"),
    ]:
        args = ["export", own, "--checkpoint", "last", "--out", tmp_path / "m.ts", *extra]
        code, _, err = cli(args, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and said in err, err
        assert not (tmp_path / "m.ts").exists()
    code, _, err = cli(
        ["export", own, "--checkpoint", "last", "--out", tmp_path / "m.ts", "--prime-seconds", "0"], capsys
    )
    assert code == 0, err


def _auto_is_epoch_7(run, tmp_path):
    """A copy of ``run`` whose ``auto`` checkpoint is epoch 7 (a render event closer than any other)."""
    own = tmp_path / "run"
    shutil.copytree(run, own)
    (own / "checkpoints" / "epoch-007.pt").write_bytes((own / "checkpoints" / "last.pt").read_bytes())
    event = {"event": "render", "epoch": 7, "category": "varied", "resemblance": 0.5, "copy_share": 0.0}
    with open(own / "metrics.jsonl", "a") as f:
        f.write(json.dumps(event) + "\n")
    return own


def test_generate_and_export_default_to_auto(run, tmp_path, capsys):
    # the CLI renders what the chain and notebook 3 render: the epoch auto judged, not the lowest-NLL one
    own = _auto_is_epoch_7(run, tmp_path)
    code, out, err = cli(["generate", own, "--seconds", "0.02", "--temperature", "0", "--out", tmp_path / "r"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "epoch-007_t0_s0_0.json").read_text())["checkpoint"].endswith("epoch-007.pt")
    code, out, err = cli(["export", own, "--out", tmp_path / "m.ts", "--prime-seconds", "0"], capsys)
    assert code == 0, err
    assert "epoch-007" in out


def test_python_api_defaults_to_the_same_checkpoint_as_the_cli(run, tmp_path, monkeypatch):
    # one default for every door: render_checkpoint and live.export take `auto` unless told, as the CLI does
    import samplernn_lab.checkpoint as checkpoint
    from samplernn_lab.live import export
    from samplernn_lab.sampling import render_checkpoint

    own = _auto_is_epoch_7(run, tmp_path)
    paths = render_checkpoint(own, tmp_path / "r", 0.02, temperatures=[0.0], progress=False)
    assert [p.name for p in paths] == ["epoch-007_t0_s0_0.wav"]
    loaded = []
    load_model = checkpoint.load_model
    monkeypatch.setattr(
        checkpoint, "load_model", lambda r, w: loaded.append(checkpoint.resolve(r, w)) or load_model(r, w)
    )
    export(own, tmp_path / "m.ts", prime_seconds=0)
    assert [p.name for p in loaded] == ["epoch-007.pt"]


def test_render_checkpoint_watchdog_takes_the_manifests_kind(tmp_path):
    # the source's kind is measured once, at prepare: a dataset whose manifest says `tone` (a drone) turns the
    # watchdog's tone rule off in render_checkpoint(rescue=True), whatever the training audio would measure; the
    # run's own RUN/dataset (a chain run's) is the one it reads, even where the path in its config still exists
    from samplernn_lab.sampling import render_checkpoint

    own = _tiny_run(tmp_path)

    def tone_seconds(out):
        paths = render_checkpoint(own, out, 0.02, temperatures=[1.0], rescue=True, progress=False)
        return json.loads(paths[0].with_suffix(".json").read_text())["rescue"]["tone_seconds"]

    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["source_category"] != "tone"
    assert tone_seconds(tmp_path / "a") is not None
    shutil.copytree(tmp_path / "ds", own / "dataset")
    (own / "dataset" / "manifest.json").write_text(json.dumps({**manifest, "source_category": "tone"}))
    assert tone_seconds(tmp_path / "b") is None

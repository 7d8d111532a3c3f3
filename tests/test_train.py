import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from samplernn_lab import ModelConfig, TrainConfig, train
from samplernn_lab.checkpoint import load, load_model
from samplernn_lab.cli import main
from samplernn_lab.dataset import DataConfig, load_split, prepare
from samplernn_lab.errors import LabError
from samplernn_lab.model import SampleRNN
from samplernn_lab.train import _restore, evaluate, new_state
from signals import tone_plus_noise

TINY = ModelConfig(frame_sizes=(4, 2), dim=32, n_rnn=1, embed_size=8, q_levels=64)
FAST = TrainConfig(seq_len=256, batch_size=4, lr=3e-3, render_seconds=0.0, seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    import soundfile as sf

    sf.write(root / "tpn.wav", tone_plus_noise(16000, 2.0), 16000, subtype="PCM_16")
    return prepare(
        [root / "tpn.wav"],
        root / "ds",
        DataConfig(sample_rate=16000, copies=2, chunk_seconds=0.25, seed=0),
        progress=False,
    )


def entropy_bits(codes: torch.Tensor, q: int) -> float:
    p = torch.bincount(codes.flatten(), minlength=q).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**FAST.__dict__, **kw})


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_far_below_histogram_entropy(dataset, tmp_path):
    q = 256
    model = ModelConfig(frame_sizes=(4, 2), dim=64, n_rnn=1, embed_size=16, q_levels=q)
    result = train(dataset, tmp_path / "run", model, cfg(max_steps=300, batch_size=8), progress=False)
    val = load_split(dataset, "val", q, "linear")
    h = entropy_bits(val, q)
    assert result.best_val_bits is not None and result.best_val_bits < h - 2.0, (result.best_val_bits, h)
    rows = [m for m in metrics(tmp_path / "run") if m.get("split") == "train"]
    assert {"step", "epoch", "split", "nll_bits", "seconds"} <= set(rows[0])
    assert np.mean([r["nll_bits"] for r in rows[-20:]]) < np.mean([r["nll_bits"] for r in rows[:20]]) - 2.0


def test_run_folder_layout(dataset, tmp_path):
    run = tmp_path / "run"
    train(dataset, run, TINY, cfg(epochs=2, render_seconds=0.1, render_streams=3), progress=False)
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["dim"] == 32 and config["train"]["seq_len"] == 256 and config["sample_rate"] == 16000
    assert config["quantization"] == {"method": "linear", "q_levels": 64}
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch-001.pt", "epoch-002.pt", "last.pt"]
    assert (run / "renders" / "epoch-002").is_dir() and list((run / "renders" / "epoch-001").glob("*.wav"))
    assert (run / "loss.png").stat().st_size > 1000
    val = [m for m in metrics(run) if m.get("split") == "val"]
    assert [v["epoch"] for v in val] == [1, 2]
    renders = [m for m in metrics(run) if m.get("event") == "render"]
    assert len(renders) == 2 and all(r["category"] in ("silence", "tone", "noise", "varied") for r in renders)
    # judged against the source while training: the resemblance measure and the copied share
    assert all(r["resemblance"] >= 0 and 0 <= r["copy_share"] <= 1 for r in renders)
    assert {r["source_category"] for r in renders} <= {"silence", "tone", "noise", "varied"}  # what `auto` asks
    # three streams an epoch, one event: the median stream's diagnosis, the most copied share of any
    for r in renders:
        assert len(list((run / "renders" / f"epoch-{r['epoch']:03d}").glob("*.wav"))) == 3
        streams = sorted(r["streams"], key=lambda s: s["resemblance"])
        assert len(streams) == 3 and len({s["path"] for s in streams}) == 3
        keys = ("path", "resemblance", "category")
        assert tuple(r[k] for k in keys) == tuple(streams[1][k] for k in keys)
        assert r["copy_share"] == max(s["copy_share"] for s in streams)
    model, info = load_model(run, "best")
    assert info["epoch"] in (1, 2)


def test_resumed_run_equals_uninterrupted(dataset, tmp_path):
    straight = train(dataset, tmp_path / "a", TINY, cfg(max_steps=45), progress=False)
    part = train(dataset, tmp_path / "b", TINY, cfg(max_steps=17), progress=False)
    assert part.status == "budget" and part.step == 17
    assert (tmp_path / "b" / "loss.png").exists()  # a stopped run still shows its curve
    resumed = train(dataset, tmp_path / "b", TINY, cfg(max_steps=45), resume=True, progress=False)
    assert straight.step == resumed.step == 45
    a, b = load(tmp_path / "a/checkpoints/last.pt"), load(tmp_path / "b/checkpoints/last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # the same seed repeats on CPU; another seed does not
    train(dataset, tmp_path / "c", TINY, cfg(max_steps=45), progress=False)
    c = load(tmp_path / "c/checkpoints/last.pt")
    assert all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])
    train(dataset, tmp_path / "d", TINY, cfg(max_steps=45, seed=1), progress=False)
    d = load(tmp_path / "d/checkpoints/last.pt")
    assert not all(torch.equal(a["model"][k], d["model"][k]) for k in a["model"])


def test_weight_average_is_what_is_kept_and_a_resumed_run_equals_uninterrupted(dataset, tmp_path):
    straight = train(dataset, tmp_path / "a", TINY, cfg(max_steps=45, ema=0.9), progress=False)
    a = load(tmp_path / "a/checkpoints/last.pt")
    # the average is what a checkpoint's model holds: near the optimiser's weights, not them
    gaps = [float((a["model"][k] - a["model_online"][k]).abs().max()) for k in a["model"]]
    assert max(gaps) > 1e-4 and max(gaps) < 1.0
    listened, _ = load_model(tmp_path / "a", "last")
    assert all(torch.equal(v, a["model"][k]) for k, v in listened.state_dict().items())
    # 45 steps are one epoch of this dataset: best.pt holds the average at step 45, validated as such
    best = load(tmp_path / "a/checkpoints/best.pt")
    assert a["epoch"] == 1 and "model_online" not in best
    assert all(torch.equal(best["model"][k], a["model"][k]) for k in a["model"])
    val = load_split(dataset, "val", TINY.q_levels, "linear")
    model, _ = load_model(tmp_path / "a", "best")
    assert evaluate(model, val, FAST.seq_len, FAST.batch_size, "cpu") == pytest.approx(best["val_bits"])
    model.load_state_dict(a["model_online"])
    assert abs(evaluate(model, val, FAST.seq_len, FAST.batch_size, "cpu") - straight.best_val_bits) > 1e-4
    # a blow-up's restore puts each set of weights back where it was
    state = new_state(SampleRNN(TINY), cfg(ema=0.9), torch.device("cpu"))
    _restore(state, tmp_path / "a/checkpoints/last.pt")
    assert all(torch.equal(v, a["model_online"][k]) for k, v in state.model.state_dict().items())
    assert all(torch.equal(v, a["model"][k]) for k, v in state.average.state_dict().items())
    # the average starts where the weights start (decay ramps up): after one step it is within a step of them
    train(dataset, tmp_path / "one", TINY, cfg(max_steps=1, ema=0.999), progress=False)
    one = load(tmp_path / "one/checkpoints/last.pt")
    first = [float((one["model"][k] - one["model_online"][k]).abs().max()) for k in one["model"]]
    assert max(first) < 0.5 * FAST.lr, max(first)  # without the ramp: about one whole step (lr)
    part = train(dataset, tmp_path / "b", TINY, cfg(max_steps=17, ema=0.9), progress=False)
    assert part.step == 17
    train(dataset, tmp_path / "b", TINY, cfg(max_steps=45), resume=True, progress=False)
    b = load(tmp_path / "b/checkpoints/last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["model_online"][k], b["model_online"][k]), k
    # off by default: one set of weights, as before; and averaging never changes what the optimiser does
    train(dataset, tmp_path / "c", TINY, cfg(max_steps=45), progress=False)
    c = load(tmp_path / "c/checkpoints/last.pt")
    assert "model_online" not in c and all(torch.equal(c["model"][k], a["model_online"][k]) for k in c["model"])


def test_resume_drops_a_carried_state_made_for_another_batch_size(dataset, tmp_path):
    # a last.pt saved inside a short last batch (before every batch was full) carries a smaller hidden state
    from samplernn_lab.checkpoint import save

    train(dataset, tmp_path / "b", TINY, cfg(max_steps=17), progress=False)
    path = tmp_path / "b/checkpoints/last.pt"
    saved = load(path)
    assert saved["position"]["window"] > 0 and saved["hidden"][0].shape[1] == FAST.batch_size
    saved["hidden"] = [h[:, :3].contiguous() for h in saved["hidden"]]
    save(saved, path)
    resumed = train(dataset, tmp_path / "b", TINY, cfg(max_steps=20), resume=True, progress=False)
    assert resumed.step == 20


def blow_up(model) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))


def test_nonfinite_steps_are_skipped_then_restored(tmp_path):
    """The blow-up guard, driven directly: a non-finite step is skipped, patience of them restore last.pt."""
    from samplernn_lab.model import SampleRNN
    from samplernn_lab.rundir import MetricsWriter, RunDir
    from samplernn_lab.train import Session, blowup_guard, new_state, save, train_step

    torch.manual_seed(0)
    state = new_state(SampleRNN(TINY), cfg(max_steps=20, blowup_patience=3), torch.device("cpu"))
    run = RunDir(tmp_path / "run")
    session = Session(run, log=MetricsWriter(tmp_path / "m.jsonl"))
    window = torch.randint(0, TINY.q_levels, (2, TINY.frame_lengths[-1] + 256))
    loss, grad_norm = train_step(state, window)
    assert blowup_guard(state, session, loss, grad_norm) and state.step == 1
    save(state, session)
    good = {k: v.clone() for k, v in state.model.state_dict().items()}
    blow_up(state.model)  # every step from here is non-finite and skipped
    for _ in range(4):  # four blow-ups in a row
        loss, grad_norm = train_step(state, window)
        assert not blowup_guard(state, session, loss, grad_norm) and state.hidden is None
        if _ == 2:
            assert state.blowups == 0  # the third restored last.pt
            assert all(torch.equal(good[k], v) for k, v in state.model.state_dict().items())
            blow_up(state.model)
    session.log.close()
    assert state.step == 1
    events = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "nonfinite" for e in events) == 4
    restored = [e for e in events if e["event"] == "restored"]
    assert len(restored) == 1 and restored[0]["lr"] == pytest.approx(FAST.lr * 0.5)
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(FAST.lr * 0.5)
    loss, grad_norm = train_step(state, window)  # restored again from last.pt at the next patience
    assert state.blowups == 1


@pytest.mark.parametrize("problem", ["no dataset", "missing chunk", "short chunks", "bad preset", "bad field"])
def test_bad_train_input_gets_one_line(dataset, tmp_path, capsys, problem):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    args = [
        "train",
        str(ds),
        "--out",
        str(tmp_path / "run"),
        "--max-steps",
        "1",
        "--set",
        "dim=8",
        "embed_size=4",
        "seq_len=256",
        "batch_size=2",
        "render_seconds=0",
    ]
    expect = {
        "no dataset": "not a dataset",
        "missing chunk": "missing",
        "short chunks": "shorter than one window",
        "bad preset": "unknown preset",
        "bad field": "unknown setting",
    }[problem]
    if problem == "no dataset":
        (ds / "manifest.json").unlink()
    elif problem == "missing chunk":
        next((ds / "chunks" / "train").glob("*.wav")).unlink()
    elif problem == "short chunks":
        args[args.index("seq_len=256")] = "seq_len=8192"
    elif problem == "bad preset":
        args += ["--preset", "huge"]
    else:
        args += ["--set", "dimm=3"]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and expect in err[0] and "Traceback" not in err[0]


def test_overrides_reach_the_run(dataset, tmp_path, capsys):
    code = main(
        [
            "train",
            str(dataset),
            "--out",
            str(tmp_path / "run"),
            "--max-steps",
            "2",
            "--no-progress",
            "--set",
            "dim=8",
            "embed_size=4",
            "seq_len=256",
            "batch_size=2",
            "render_seconds=0",
            "n_rnn=1",
        ]
    )
    assert code == 0
    config = json.loads((tmp_path / "run/config.json").read_text())
    assert config["model"]["dim"] == 8 and config["train"]["batch_size"] == 2 and config["train"]["max_steps"] == 2


def test_existing_run_needs_resume(dataset, tmp_path):
    train(dataset, tmp_path / "run", TINY, cfg(max_steps=2), progress=False)
    with pytest.raises(LabError, match="--resume"):
        train(dataset, tmp_path / "run", TINY, cfg(max_steps=2), progress=False)


def _cli_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "samplernn_lab.cli", *args]


def test_sigint_saves_a_checkpoint_and_resume_goes_on(dataset, tmp_path):
    run = tmp_path / "run"
    args = [
        "train",
        str(dataset),
        "--out",
        str(run),
        "--preset",
        "sketch",
        "--no-progress",
        "--set",
        "dim=64",
        "embed_size=8",
        "seq_len=256",
        "batch_size=2",
        "render_seconds=0",
    ]
    proc = subprocess.Popen(_cli_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until it is really training
        m = run / "metrics.jsonl"
        if m.exists() and len(m.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in out
    state = load(run / "checkpoints" / "last.pt")
    step = state["step"]
    assert step >= 3
    code = main(args[:1] + args[1:] + ["--resume", "--max-steps", str(step + 3)])
    assert code == 0
    assert load(run / "checkpoints" / "last.pt")["step"] == step + 3


def test_the_minute_budget_counts_the_minutes_before_a_resume(dataset, tmp_path):
    first = train(dataset, tmp_path / "run", TINY, cfg(max_steps=6), progress=False)
    saved = load(tmp_path / "run/checkpoints/last.pt")
    spent = saved["budget_seconds"]
    assert first.step == 6 and spent > 0
    # a budget already spent before the resume: nothing more is trained
    again = train(dataset, tmp_path / "run", TINY, cfg(max_minutes=spent / 120), resume=True, progress=False)
    assert again.status == "budget" and again.step == 6
    assert load(tmp_path / "run/checkpoints/last.pt")["budget_seconds"] >= spent


def test_train_resume_without_flags_goes_on_to_the_runs_own_budget(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    train(dataset, run, TINY, cfg(max_steps=3), progress=False)
    # as if it had been started with a budget of 7 steps and stopped at 3 (Ctrl-C)
    config = json.loads((run / "config.json").read_text())
    config["train"]["max_steps"] = 7
    (run / "config.json").write_text(json.dumps(config))
    assert main(["train", str(dataset), "--out", str(run), "--resume", "--no-progress"]) == 0
    assert load(run / "checkpoints/last.pt")["step"] == 7  # not the sketch preset's 10 minutes
    # a budget given now replaces the run's
    assert main(["train", str(dataset), "--out", str(run), "--resume", "--max-steps", "9", "--no-progress"]) == 0
    assert load(run / "checkpoints/last.pt")["step"] == 9


def test_train_resume_refuses_settings_it_would_drop_and_takes_the_machines_own(dataset, tmp_path, capsys):
    """A resumed run keeps its own settings: a change to one of them is refused in one line (it used to be dropped
    silently), while its budgets and the machine's settings (mixed precision) are taken."""
    run = tmp_path / "run"
    train(dataset, run, TINY, cfg(max_steps=3), progress=False)
    capsys.readouterr()
    args = ["train", str(dataset), "--out", str(run), "--resume", "--no-progress"]
    for extra, named in [
        (["--set", "lr=0.5"], "train.lr"),
        (["--seed", "5"], "train.seed"),
        (["--set", "model.dim=64"], "model.dim"),
        (["--set", "gain_jitter_db=1", "max_steps=5"], "data.gain_jitter_db"),
        (["--preset", "poster"], "model.dim"),  # a preset's settings were dropped silently too
    ]:
        assert main(args + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err and "cannot change" in err, err
        assert ("leave out --preset" in err) == ("--preset" in extra), err  # what to do instead
        assert load(run / "checkpoints/last.pt")["step"] == 3  # nothing trained, nothing lost
    # the run's own settings given again are no change (the command it started with, --resume added); a budget
    # and mixed precision are taken
    same = ["--seed", "0", "--set", f"dim={TINY.dim}", "frame_sizes=4,2", "seq_len=256"]
    assert main(args + same + ["--max-steps", "5", "--set", "amp=false"]) == 0
    assert load(run / "checkpoints/last.pt")["step"] == 5
    assert json.loads((run / "config.json").read_text())["train"]["amp"] is False
    # a run started from a preset resumes with the same command, preset named, --resume added
    start = ["train", str(dataset), "--out", str(tmp_path / "run2"), "--preset", "sketch", "--no-progress", "--set"]
    start += ["dim=16", "embed_size=8", "q_levels=64", "seq_len=256", "batch_size=4", "render_seconds=0"]
    assert main(start + ["--max-steps", "2"]) == 0
    assert main(start + ["--max-steps", "3", "--resume"]) == 0
    assert load(tmp_path / "run2/checkpoints/last.pt")["step"] == 3
    capsys.readouterr()
    assert main(start + ["--max-steps", "4", "--resume", "--seed", "5"]) == 2  # refused for --seed, not the preset
    err = capsys.readouterr().err.strip()
    assert "train.seed" in err and "leave out --preset" not in err and "--preset sketch sets" not in err, err


def test_ddp_two_gloo_ranks_stay_in_step(tmp_path):
    # a quiet source, so that rank 0 alone says the new run's one warning
    dataset = quiet_tail(tmp_path)
    script = tmp_path / "ddp.py"
    script.write_text(r"""
import sys, torch, torch.distributed as dist
from samplernn_lab import ModelConfig, TrainConfig
from samplernn_lab.train import train
captured = {}
real = torch.nn.parallel.DistributedDataParallel
class Spy(real):
    def __init__(self, module, *a, **k):
        super().__init__(module, *a, **k)
        captured["model"] = module
torch.nn.parallel.DistributedDataParallel = Spy
dist.init_process_group("gloo")  # owned here, so it outlives train() for the comparison below
model = ModelConfig(frame_sizes=(4, 2), dim=16, n_rnn=1, embed_size=8, q_levels=64)
r = train(sys.argv[2], sys.argv[1], model, TrainConfig(seq_len=256, batch_size=4, max_steps=6,
          render_seconds=0), device="cpu", progress=False)
flat = torch.cat([p.detach().flatten() for p in captured["model"].parameters()])
gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, flat)
if dist.get_rank() == 0:
    print("STEPS", r.step, "MAXDIFF", float((gathered[0] - gathered[1]).abs().max()))
captured.clear()
import gc
gc.collect()
dist.destroy_process_group()
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            str(script),
            str(tmp_path / "run"),
            str(dataset),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("STEPS"))
    _, steps, _, diff = line.split()
    assert int(steps) == 6 and float(diff) == 0.0
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    warnings = [x for x in proc.stderr.splitlines() if "quieter than one step" in x]
    assert len(warnings) == 1, proc.stderr[-3000:]


def test_learning_rate_follows_a_cosine_down_to_lr_final(dataset, tmp_path):
    from samplernn_lab.train import lr_factor

    c = cfg(lr_final=0.1)
    assert [round(lr_factor(c, s), 6) for s in (0.0, 0.5, 1.0)] == [1.0, 0.55, 0.1]
    assert lr_factor(cfg(), 0.7) == 1.0  # lr_final = 1: constant
    # the optimiser's rate at the last of 20 steps is lr * factor(19 / 20); constant without the schedule
    train(dataset, tmp_path / "cos", TINY, cfg(max_steps=20, lr_final=0.1), progress=False)
    train(dataset, tmp_path / "flat", TINY, cfg(max_steps=20), progress=False)
    cos = load(tmp_path / "cos/checkpoints/last.pt")
    flat = load(tmp_path / "flat/checkpoints/last.pt")
    assert cos["optimizer"]["param_groups"][0]["lr"] == pytest.approx(FAST.lr * lr_factor(c, 19 / 20))
    assert flat["optimizer"]["param_groups"][0]["lr"] == FAST.lr
    assert cos["lr"] == flat["lr"] == FAST.lr  # the base rate (what a blow-up halves) is kept as it was
    # a resumed run follows the budget it resumes with: at its last step, the same rate
    train(dataset, tmp_path / "half", TINY, cfg(max_steps=9, lr_final=0.1), progress=False)
    train(dataset, tmp_path / "half", TINY, cfg(max_steps=20, lr_final=0.1), resume=True, progress=False)
    half = load(tmp_path / "half/checkpoints/last.pt")
    assert (
        half["step"] == 20 and half["optimizer"]["param_groups"][0]["lr"] == cos["optimizer"]["param_groups"][0]["lr"]
    )


@pytest.mark.parametrize("native", [True, False])
def test_cpu_autocast_only_where_the_cpu_has_native_bf16(monkeypatch, native):
    from samplernn_lab import train_start
    from samplernn_lab.model import SampleRNN
    from samplernn_lab.train import train_step

    monkeypatch.setattr(train_start, "cpu_bf16", lambda: native)
    window = torch.randint(0, TINY.q_levels, (4, TINY.lookback + 256), generator=torch.Generator().manual_seed(0))
    losses = {}
    for amp in (True, False):
        torch.manual_seed(0)
        state = train_start.new_state(SampleRNN(TINY), cfg(amp=amp), torch.device("cpu"))
        assert state.amp_dtype == (torch.bfloat16 if amp and native else None)
        losses[amp], grad_norm = train_step(state, window)
        assert state.step == 1 and np.isfinite(losses[amp]) and np.isfinite(grad_norm)
    # bf16 products change the loss slightly (the autocast is real), and only slightly
    assert (losses[True] != losses[False]) == native
    assert abs(losses[True] - losses[False]) < 0.05


ALLOCATOR_PROBE = """
import ctypes
import numpy as np
from samplernn_lab.train_start import keep_freed_memory

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(n, ctypes.c_size_t) for n in names.split()]

info = ctypes.CDLL(None).mallinfo2
info.restype = Info

def block():  # bytes more in blocks mapped on their own while 64 MiB are held; heap bytes given back once freed
    idle = info().hblkhd
    held = np.ones(8 * 2**20)
    mapped, heap = info().hblkhd - idle, info().arena
    del held
    return mapped, heap - info().arena

before = block()
with keep_freed_memory() as took:
    inside = block()
print(*before, took, *inside, *block())
"""


def _glibc_with_mallinfo2() -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    return sys.platform.startswith("linux") and hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallinfo2")


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc's malloc (2.33 or later)")
def test_training_keeps_large_blocks_in_the_heap_while_it_runs(monkeypatch, dataset, tmp_path):
    # Each large block of a step freed to the system is faulted in again the next step (a fifth of a CPU step at
    # the poster's batch). Inside keep_freed_memory a 64 MiB block comes from the heap and stays there when freed;
    # outside, before and after, glibc maps it on its own. A fresh process, without the user's MALLOC_ settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE], capture_output=True, text=True, check=True, env=env)
    mapped, _, took, mapped_in, returned_in, mapped_after, _ = out.stdout.split()
    assert took == "True"
    assert int(mapped) >= 64 * 2**20 and int(mapped_after) >= 64 * 2**20
    assert int(mapped_in) == 0 and int(returned_in) == 0
    # the user's own malloc settings win: then it does nothing
    env["MALLOC_ARENA_MAX"] = "2"
    out = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split()[2] == "False" and int(out.stdout.split()[3]) >= 64 * 2**20
    # and a CPU training holds it while it trains, and only then
    import contextlib
    import importlib

    train_module = importlib.import_module("samplernn_lab.train")  # the module; the package's `train` is the function
    held = []

    @contextlib.contextmanager
    def spy():
        held.append("in")
        yield True
        held.append("out")

    monkeypatch.setattr(train_module, "keep_freed_memory", spy)
    train(dataset, tmp_path / "run", TINY, cfg(max_steps=1), device="cpu", progress=False)
    assert held == ["in", "out"]


def test_state_carried_from_bf16_autocast_is_float32_and_goes_on_in_float32(monkeypatch):
    """An LSTM's state comes out of CPU autocast in bf16; carried (and saved in last.pt) it must be float32, or
    a run resumed without autocast (another machine, --set amp=false) fails in the LSTM."""
    from dataclasses import replace

    from samplernn_lab import train_start
    from samplernn_lab.model import SampleRNN
    from samplernn_lab.train import train_step

    monkeypatch.setattr(train_start, "cpu_bf16", lambda: True)
    lstm = replace(TINY, rnn_type="lstm")
    window = torch.randint(0, lstm.q_levels, (4, lstm.lookback + 256), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    state = train_start.new_state(SampleRNN(lstm), cfg(), torch.device("cpu"))
    train_step(state, window)
    assert all(x.dtype == torch.float32 for h in state.hidden for x in h)
    state.amp_dtype = None  # resumed where autocast does not run
    loss, _ = train_step(state, window)
    assert np.isfinite(loss) and state.step == 2


@pytest.mark.parametrize("levels", [0, 3])
def test_input_noise_moves_the_inputs_not_the_targets(levels):
    """With ``input_noise`` the model reads codes moved by up to that many levels (kept in range) and is scored
    on the clean window: it learns to go on from slightly wrong samples, as its own are when it renders."""
    import copy

    from samplernn_lab import train_start
    from samplernn_lab.model import SampleRNN, nll_bits
    from samplernn_lab.train import jitter_codes, train_step

    q = TINY.q_levels
    window = torch.randint(0, q, (4, TINY.lookback + 256), generator=torch.Generator().manual_seed(0))
    window[0], window[1] = 0, q - 1  # at the ends of the range a move is clamped
    torch.manual_seed(0)
    state = train_start.new_state(SampleRNN(TINY), cfg(input_noise=levels, amp=False), torch.device("cpu"))
    before = copy.deepcopy(state.model)
    seen = []
    state.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    torch.manual_seed(1)
    loss, _ = train_step(state, window)
    torch.manual_seed(1)
    expected_inputs = jitter_codes(window, levels, q)
    with torch.no_grad():
        expected = float(nll_bits(before(expected_inputs)[0], window[:, TINY.lookback :]))
    assert torch.equal(seen[0], expected_inputs) and abs(loss - expected) < 1e-5
    moved = seen[0] - window
    if levels == 0:
        assert not moved.any()
    else:
        assert int(moved.abs().max()) == levels and float((moved != 0).float().mean()) > 0.6
        assert int(seen[0].min()) == 0 and int(seen[0].max()) == q - 1
        assert (seen[0][0] <= levels).all() and (seen[0][1] >= q - 1 - levels).all()


def test_input_noise_is_seeded_and_a_resumed_run_draws_the_same(dataset, tmp_path):
    noisy = cfg(max_steps=30, input_noise=2)
    straight = train(dataset, tmp_path / "a", TINY, noisy, progress=False)
    train(dataset, tmp_path / "b", TINY, cfg(max_steps=11, input_noise=2), progress=False)
    resumed = train(dataset, tmp_path / "b", TINY, noisy, resume=True, progress=False)
    train(dataset, tmp_path / "c", TINY, cfg(max_steps=30), progress=False)
    assert straight.step == resumed.step == 30
    a, b, c = (load(tmp_path / f"{r}/checkpoints/last.pt")["model"] for r in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the noise drawn after a resume is the noise drawn straight on
    assert not all(torch.equal(a[k], c[k]) for k in a)  # and it is there: without it the weights differ


def quiet_tail(folder: Path) -> Path:
    """A dataset of a 1 s decaying tone over a -80 dBFS floor: most of it under one step of linear levels."""
    import soundfile as sf

    sr = 16000
    t = np.arange(sr) / sr
    noise = 1e-4 * np.random.default_rng(0).standard_normal(len(t))
    sf.write(folder / "tail.wav", 0.5 * np.sin(2 * np.pi * 440 * t) * 10 ** (-4 * t) + noise, sr, subtype="FLOAT")
    return prepare(
        [folder / "tail.wav"], folder / "ds", DataConfig(sample_rate=sr, copies=2, chunk_seconds=0.25), progress=False
    )


def test_a_quiet_source_under_linear_levels_is_warned_about(dataset, tmp_path, capsys):
    quiet = quiet_tail(tmp_path)
    one_step = cfg(max_steps=1)
    train(quiet, tmp_path / "lin", TINY, one_step, progress=False)
    err = capsys.readouterr().err
    assert "warning:" in err and str(quiet) in err and "quieter than one step of 64 linear levels" in err, err
    assert "quantization=mulaw" in err and len(err.strip().splitlines()) == 1
    train(quiet, tmp_path / "lin", TINY, cfg(max_steps=2), resume=True, progress=False)  # said once, at the start
    mulaw = ModelConfig(**{**TINY.__dict__, "quantization": "mulaw"})
    train(quiet, tmp_path / "mu", mulaw, one_step, progress=False)
    train(dataset, tmp_path / "loud", TINY, one_step, progress=False)  # a tone over noise, never that quiet
    assert "warning" not in capsys.readouterr().err

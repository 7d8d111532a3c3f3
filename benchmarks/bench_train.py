"""Training speed: the lab's loop against a plain reference loop, measured in the same run, and the
memory the poster preset needs at batch 128.

The reference is the textbook loop: the same model and windows, forward, backward, clip, Adam step,
nothing else. The lab's loop adds metrics, progress, blow-up guards, budgets and checkpoints; the ratio
shows what they cost. The same reference loop is also timed with the model's layers applied as the
PyTorch port applies them (``samplernn_lab.model.port_forward``: transposed convolutions, embedding then
convolution) and the textbook loss (``F.cross_entropy`` on the logits made float32), and once with the lab's
layers and the textbook loss, where the lab computes the same loss in chunks of rows
(``samplernn_lab.model.nll_bits``); those ratios show what each saves. The three run in one order, then in the
other, and each time is the mean of its two; on a CPU all of them with the allocator setting the lab's
training makes (``samplernn_lab.train_start.keep_freed_memory``), which is the process's, not the loop's.
On a CPU the poster preset runs at a smaller batch (``--poster-batch``): a step at batch 128 takes a minute
there. A third row is the README's "hour's recipe": the poster preset at its batch of 128 x 1,024 samples
with the sketch's size (dim 256, one GRU layer, embedding 64) at 16 kHz.

    python benchmarks/bench_train.py [--device cpu|cuda] [--steps N] [--poster-batch B] [--rows NAME ...]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402
from samplernn_lab.audio import silence_code  # noqa: E402
from samplernn_lab.dataset import DataConfig, batch_order, load_split, prepare, windows  # noqa: E402
from samplernn_lab.model import SampleRNN, nll_bits, port_forward  # noqa: E402
from samplernn_lab.presets import apply_overrides, get_preset  # noqa: E402
from samplernn_lab.train import train  # noqa: E402
from samplernn_lab.train_start import autocast_dtype, keep_freed_memory  # noqa: E402


def make_dataset(root: Path, data: DataConfig) -> Path:
    sr = data.sample_rate
    t = np.arange(int(sr * 6)) / sr
    rng = np.random.default_rng(0)
    bells = sum(np.exp(-2 * ((t - o) % 1.5)) * np.sin(2 * np.pi * f * t) for o, f in ((0, 440), (0.7, 660)))
    audio = (0.3 * bells + 0.02 * rng.normal(size=len(t))).astype(np.float32)
    sf.write(root / "src.wav", audio, sr)
    return prepare([root / "src.wav"], root / "ds", replace(data, copies=24), progress=False)


HOUR = ["dim=256", "n_rnn=1", "embed_size=64", "sample_rate=16000"]  # README, "Bells on a CPU, given an hour"


def textbook_nll_bits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss as the port computes it: cross-entropy over the whole batch of logits at once, in float32."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)) / math.log(2.0)


def reference_loop(
    model: SampleRNN, codes: torch.Tensor, cfg, steps: int, device, forward=None, loss_fn=nll_bits
) -> float:
    """Seconds for ``steps`` plain TBPTT steps (after one warm-up step); ``forward(model, window, hidden)``
    replaces ``model(window, hidden)`` and ``loss_fn`` the lab's loss when given."""
    forward = forward or (lambda m, w, h: m(w, h))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    silence = silence_code(model.config.q_levels)
    amp = autocast_dtype(cfg, device)  # the lab's precision, so the ratio is what its loop costs
    done, start = -1, None
    while True:
        for idx in batch_order(codes.shape[0], cfg.batch_size, 0, 0):
            hidden = None
            for _, window in windows(codes[idx], cfg.seq_len, model.lookback, silence):
                window = window.to(device)
                with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
                    logits, hidden = forward(model, window, hidden)
                    loss = loss_fn(logits, window[:, model.lookback :])
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                hidden = [h.detach() for h in hidden]
                done += 1
                if done == 0:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                if done == steps:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    return time.perf_counter() - start


def lab_loop(dataset: Path, preset, steps: int, device: str) -> float:
    """Seconds per step of samplernn_lab.train, from its own metrics (first step excluded)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = replace(preset.train, max_steps=steps + 1, render_seconds=0.0, epochs=None, max_minutes=None)
        train(dataset, Path(tmp) / "run", preset.model, cfg, device=device, progress=False)
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        secs = [r["seconds"] for r in rows if r.get("split") == "train"]
        return secs[-1] - secs[0]


def activation_bytes(model: SampleRNN, batch: int, seq_len: int, device) -> int:
    """Bytes autograd keeps for backward in one training window (fp32), parameters excluded.

    Saved tensors are counted once per storage: the GRU keeps references to its weights at every
    step, which cost nothing extra.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    codes = torch.randint(0, model.config.q_levels, (batch, model.lookback + seq_len), device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits, _ = model(codes)
        loss = nll_bits(logits, codes[:, model.lookback :])
    del loss, logits
    return sum(storages.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--poster-batch", type=int, default=None, help="default 128 on CUDA, 4 on CPU")
    ap.add_argument("--rows", nargs="+", choices=("sketch", "poster", "hour"), default=["sketch", "poster", "hour"])
    a = ap.parse_args()
    dev = torch.device(a.device)
    # the lab's training holds it on a CPU; here around every loop, so the ratios are the code's alone
    with keep_freed_memory() if dev.type == "cpu" else nullcontext():
        measure(a, dev)


def measure(a: argparse.Namespace, dev: torch.device) -> None:
    """The table and the poster's memory (see the module's docstring)."""
    poster_batch = a.poster_batch or (128 if dev.type == "cuda" else 4)
    rows = []
    for name in a.rows:
        preset = apply_overrides(get_preset("poster"), HOUR) if name == "hour" else get_preset(name)
        if name == "poster":
            preset = replace(preset, train=replace(preset.train, batch_size=poster_batch))
        steps = a.steps if name == "sketch" or dev.type == "cuda" else max(3, a.steps // 5)
        with tempfile.TemporaryDirectory() as tmp:
            dataset = make_dataset(Path(tmp), preset.data)
            codes = load_split(dataset, "train", preset.model.q_levels, preset.model.quantization)
            loops = {
                "port": (port_forward, textbook_nll_bits),
                "textbook": (None, textbook_nll_bits),
                "ref": (None, nll_bits),
            }
            secs = dict.fromkeys(loops, 0.0)
            # In one order and then the other: a loop's place in the process (what the heap holds, the caches)
            # can move its time (benchmarks/RESULTS.md, "The loss in chunks").
            for loop in [*loops, *reversed(loops)]:
                torch.manual_seed(0)
                model = SampleRNN(preset.model).to(dev)
                secs[loop] += reference_loop(model, codes, preset.train, steps, dev, *loops[loop]) / 2
            port, textbook, ref = secs["port"], secs["textbook"], secs["ref"]
            lab = lab_loop(dataset, preset, steps, a.device)
        per_step = preset.train.batch_size * preset.train.seq_len
        rows.append(
            [
                name,
                f"{preset.train.batch_size} x {preset.train.seq_len}",
                steps,
                *(f"{per_step * steps / t:,.0f}" for t in (port, textbook, ref, lab)),
                f"{port / textbook:.2f}x",
                f"{textbook / ref:.2f}x",
                f"{ref / lab:.2f}x",
                f"{lab / steps:.3f}",
            ]
        )
        print(rows[-1], flush=True)
    report(
        [
            "row",
            "batch x seq",
            "steps",
            "port's layers and loss samples/s",
            "lab's layers, port's loss samples/s",
            "reference samples/s",
            "lab samples/s",
            "layers saved",
            "loss saved",
            "lab / reference",
            "lab s/step",
        ],
        rows,
        a.device,
    )

    # Memory of the poster preset at batch 128: weights + gradients + Adam state + saved activations.
    poster = get_preset("poster")
    model = SampleRNN(poster.model).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    small, large = (activation_bytes(model, b, poster.train.seq_len, dev) for b in (2, 8))
    act = large + (large - small) / 6 * (poster.train.batch_size - 8)  # linear in the batch
    states = n_params * 4 * 4  # weights, gradients, Adam's two moments (fp32)
    gib = 1024**3
    print()
    print(
        f"poster preset at batch {poster.train.batch_size}: {n_params / 1e6:.1f} M parameters; "
        f"weights+grads+Adam {states / gib:.2f} GiB; saved activations {act / gib:.2f} GiB in fp32 "
        f"(measured at batch 2 and 8, extrapolated linearly); total about {(states + act) / gib:.2f} GiB fp32, "
        f"{(states + act / 2) / gib:.2f} GiB with 16-bit autocast activations"
    )
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        opt = torch.optim.Adam(model.parameters())
        codes = torch.randint(0, 256, (poster.train.batch_size, model.lookback + poster.train.seq_len), device=dev)
        with torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16):
            logits, _ = model(codes)
            loss = nll_bits(logits, codes[:, model.lookback :])
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        print(
            f"measured peak CUDA memory for one poster step at batch 128: "
            f"{torch.cuda.max_memory_allocated() / gib:.2f} GiB"
        )


if __name__ == "__main__":
    main()

"""Generation speed: the lab's sampler against a naive loop, measured in the same run.

The naive loop is how the original PyTorch port generated: one Python iteration per sample, the
model's own (weight-normalised) modules called step by step, the embedding and first MLP layer
computed in full, sampling with torch.multinomial.

    python benchmarks/bench_sample.py [--device cpu|cuda] [--seconds S] [--repeats N]
                                      [--presets sketch poster] [--batches 1 4 16 128] [--set field=value ...]
                                      [--precisions fp32 bf16 int8]

Each figure is the median of ``--repeats`` measurements of about ``--seconds`` each, the two loops
measured in turn, so that a noisy neighbour on a shared machine slows both. ``--precisions`` adds a row
per weight precision of the lab's sampler (``Sampler(..., precision=...)``), each paired with the naive loop.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402
from samplernn_lab.audio import silence_code  # noqa: E402
from samplernn_lab.model import SampleRNN, rescale_codes  # noqa: E402
from samplernn_lab.presets import get_preset  # noqa: E402
from samplernn_lab.sampling import Sampler  # noqa: E402


@torch.no_grad()
def naive_generate(model: SampleRNN, n: int, batch: int) -> torch.Tensor:
    q, lb, fs = model.config.q_levels, model.lookback, model.mlp.frame_size
    dev = next(model.parameters()).device
    seq = torch.full((batch, lb + n), silence_code(q), dtype=torch.long, device=dev)
    hidden = [None] * len(model.tiers)
    conds = [None] * len(model.tiers)
    for i in range(n):
        t = lb + i
        for k, tier in enumerate(model.tiers):
            frame_len = tier.frame_len
            if i % frame_len == 0:
                frames = rescale_codes(seq[:, t - frame_len : t], q).unsqueeze(1)
                upper = None
                if k > 0:
                    above = model.tiers[k - 1]
                    upper = conds[k - 1][:, (i % above.frame_len) // frame_len].unsqueeze(1)
                conds[k], hidden[k] = tier(frames, upper, hidden[k])
        logits = model.mlp(seq[:, t - fs : t], conds[-1][:, i % fs].unsqueeze(1))
        seq[:, t] = torch.multinomial(torch.softmax(logits[:, 0], -1), 1)[:, 0]
    return seq[:, lb:]


def path(sampler: Sampler) -> str:
    """Which loop the sampler chose, and how many of its dense layers run on oneDNN."""
    dense = [d for t in sampler.f.tiers for d in (*t.ih, *t.hh, t.up)]
    if sampler.backend == "torch":  # the numba kernel has its own copy of the MLP's layers
        dense += [*sampler.f.hidden, sampler.f.out]
    packed = sum(d.packed is not None for d in dense)
    if sampler.device.type == "cuda":
        return f"{sampler.backend}, CUDA graph {'on' if sampler.use_graph else 'off'}"
    return f"{sampler.backend}, oneDNN {packed}/{len(dense)}"


def rate(fn, n: int, batch: int, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(n)
    if device == "cuda":
        torch.cuda.synchronize()
    return n * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seconds", type=float, default=4.0, help="target seconds per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="measurements per figure (the median is shown)")
    ap.add_argument("--presets", nargs="+", default=["sketch", "poster"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16, 128])
    ap.add_argument("--no-graph", action="store_true", help="CUDA: sample without CUDA graphs")
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help="override preset fields")
    ap.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32"],
        choices=["fp32", "bf16", "int8"],
        help="weight precisions of the lab's sampler to measure (default fp32)",
    )
    a = ap.parse_args()
    torch.manual_seed(0)
    graph = not a.no_graph
    rows = []
    for name in a.presets:
        preset = get_preset(name, a.set)
        sr = preset.data.sample_rate
        model = SampleRNN(preset.model).eval().to(a.device)
        for batch, precision in [(b, p) for b in a.batches for p in a.precisions]:
            # warm up (numba compiles once; CUDA initialises), then size each measurement to ~seconds
            def sampler_run(n: int, model=model, batch=batch, precision=precision) -> torch.Tensor:
                s = Sampler(model, batch, 1.0, 0, a.device, cuda_graph=graph, precision=precision)
                return torch.cat(list(s.run(n)), 1)

            sampler_run(64)
            probe = rate(sampler_run, 256, batch, a.device)
            fast_n = max(256, int(probe * a.seconds / batch) // 16 * 16)
            naive_run = lambda n, model=model, batch=batch: naive_generate(model, n, batch)  # noqa: E731
            naive_run(16)
            probe = rate(naive_run, 32, batch, a.device)
            naive_n = max(32, int(probe * a.seconds / batch) // 16 * 16)
            fast, naive = [], []
            for _ in range(a.repeats):
                fast.append(rate(sampler_run, fast_n, batch, a.device))
                naive.append(rate(naive_run, naive_n, batch, a.device))
            fast, naive = statistics.median(fast), statistics.median(naive)
            lab = path(Sampler(model, batch, 1.0, 0, a.device, cuda_graph=graph, precision=precision))
            rows.append(
                [
                    name,
                    batch,
                    precision,
                    lab,
                    f"{naive:,.0f}",
                    f"{fast:,.0f}",
                    f"{fast / naive:.1f}x",
                    f"{fast / sr:.2f}x at {sr // 1000} kHz",
                ]
            )
            print(rows[-1], flush=True)
    report(
        [
            "preset",
            "batch",
            "precision",
            "lab path",
            "naive samples/s",
            "lab samples/s",
            "speed-up",
            "real time (all streams)",
        ],
        rows,
        a.device,
        f"; median of {a.repeats}",
    )


if __name__ == "__main__":
    main()

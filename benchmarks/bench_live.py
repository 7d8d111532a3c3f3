"""The exported nn~ module, called as nn~ calls it: real-time factor at a host rate.

nn~ hands the module one buffer at a time (here 2048 samples at 48 kHz, nn~'s default buffer size)
under inference mode, from one thread of a host that has its own work to do. This script saves the
module to a file, loads it back with ``torch.jit.load`` (as nn~ does), and calls ``forward`` with a
temperature buffer, again and again. The real-time factor is seconds of audio out per second of wall
time: above 1 it plays without drop-outs, and what is above 1 is room for the host.

    python benchmarks/bench_live.py [--presets sketch poster] [--precisions fp32 int8] [--threads 1 2]
                                    [--host-rate 48000] [--buffer 2048] [--seconds 6] [--repeats 3] [--batch 1]
                                    [--profile] [--files FILE.ts ...]

``--files`` measures files written by ``samplernn-lab export`` instead of the presets' sizes.

Models have the presets' sizes and random weights (speed does not depend on training). Each figure is
the median of ``--repeats`` measurements; the configurations are measured in turn within each repeat,
so a noisy neighbour on a shared machine slows all of them alike.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402
from samplernn_lab.live import build, script  # noqa: E402
from samplernn_lab.model import SampleRNN  # noqa: E402
from samplernn_lab.presets import get_preset  # noqa: E402


def load_exported(preset: str, precision: str, host_rate: int, overrides: list[str]) -> torch.jit.ScriptModule:
    """Build, script, save to bytes and load back: the file nn~ would load."""
    p = get_preset(preset, overrides)
    torch.manual_seed(0)
    model = SampleRNN(p.model).eval()
    buf = io.BytesIO()
    torch.jit.save(script(build(model, p.data.sample_rate, host_rate, precision)), buf)
    buf.seek(0)
    module = torch.jit.load(buf)
    module.set_sample_rate(host_rate)  # what nn~ does after loading
    return module


def rtf(module: torch.jit.ScriptModule, seconds: float, host_rate: int, buffer: int, batch: int, threads: int) -> float:
    """Seconds of audio per second of wall time over about ``seconds`` of audio, after a warm-up."""
    torch.set_num_threads(threads)
    x = torch.ones(batch, 1, buffer)
    n = max(1, int(seconds * host_rate / buffer))
    with torch.inference_mode():
        for _ in range(3):  # the profiling executor optimises after the first calls
            module(x)
        start = time.perf_counter()
        for _ in range(n):
            module(x)
        wall = time.perf_counter() - start
    return n * buffer / host_rate / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["sketch", "poster"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--host-rate", type=int, default=48000)
    ap.add_argument("--buffer", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1, help="streams (mc.nn~)")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds of audio per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="print where the time goes (torch.profiler) per config")
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help="override preset fields")
    ap.add_argument(
        "--files",
        nargs="+",
        default=[],
        metavar="FILE.ts",
        help="exported files to measure instead of the presets (--presets, --precisions and --set then do not apply)",
    )
    a = ap.parse_args()
    threads0 = torch.get_num_threads()
    if a.files:
        modules = {}
        for f in a.files:
            m = torch.jit.load(f)
            m.set_sample_rate(a.host_rate)
            modules[(f, m.precision)] = m
    else:
        modules = {(p, prec): load_exported(p, prec, a.host_rate, a.set) for p in a.presets for prec in a.precisions}
    configs = [(p, prec, th) for (p, prec) in modules for th in a.threads]
    results: dict = {c: [] for c in configs}
    for _ in range(a.repeats):
        for c in configs:
            p, prec, th = c
            # a wide model is far from real time on a CPU: fewer seconds keep the run short
            wide = int(modules[(p, prec)].dim) > 512
            secs = max(a.buffer / a.host_rate, a.seconds / 12) if wide else a.seconds
            results[c].append(rtf(modules[(p, prec)], secs, a.host_rate, a.buffer, a.batch, th))
            print(c, f"{results[c][-1]:.3f}", flush=True)
    rows = []
    for c in configs:
        p, prec, th = c
        m = modules[(p, prec)]
        med = statistics.median(results[c])
        model_rate = int(m.model_rate)
        rows.append(
            [
                p,
                f"{int(m.dim)}/{int(m.n_layers)}",  # an LSTM file's layers are counted here too
                f"{model_rate / 1000:g} kHz",
                prec,
                th,
                f"{med:.2f}x",
                f"{med * model_rate * a.batch:,.0f}",
                f"{min(results[c]):.2f}-{max(results[c]):.2f}",
            ]
        )
    if a.profile:
        from torch.profiler import profile

        for c in configs:
            p, prec, th = c
            torch.set_num_threads(th)
            with torch.inference_mode(), profile() as prof:
                for _ in range(4):
                    modules[(p, prec)](torch.ones(a.batch, 1, a.buffer))
            print(f"\n{c}\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    torch.set_num_threads(threads0)
    report(
        [
            "preset or file",
            "dim/GRU layers",
            "model rate",
            "precision",
            "threads",
            "real-time factor",
            "model samples/s",
            "range",
        ],
        rows,
        "cpu",
        f"; host {a.host_rate} Hz, {a.buffer}-sample buffers, batch {a.batch}; median of {a.repeats}",
    )


if __name__ == "__main__":
    main()

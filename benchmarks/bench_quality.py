"""Does the sketch preset make renders that sound like their source, per CPU minute?

For each source: prepare at 16 kHz (the sketch's data settings), then train twice on the same chunks:

* **lab**: ``samplernn_lab.train`` with the sketch preset (its per-epoch renders, validation and
  checkpoints count against its budget), renders from the ``auto`` checkpoint as the chain does;
* **reference**: a plain textbook loop: the same SampleRNN sizes without weight normalisation, a
  learned h0 or dropout, PyTorch's default initialisation, Adam at 1e-3, truncated BPTT over the same windows,
  nothing else; renders from its final weights.

Budgets are CPU minutes of one thread (``time.process_time``), so the two trainings, run side by side
one core each, get the same work however loaded the machine is. After each budget (default 3 and 10
minutes; training continues from the first budget to the next) both are rendered the same way: 4
streams x 6 s, each primed with 0.25 s of a different training chunk, at the chain's temperature. Per
source and budget the table gives validation NLL (bits/sample; both loops' weights at the budget, the lab's
mid-epoch from its ``last.pt``; and each loop's best so far: the lab's epochs' validations, the reference's
after each of its epochs, as a textbook loop validates to keep its best, that time not counted as training),
resemblance (median over streams and its range: 0 = like another stretch of the source, 1 = like coloured
noise), the largest copy share and the categories. The lab trains under bf16 autocast where the CPU multiplies
bf16 natively (its own choice); the textbook loop in float32.

    python benchmarks/bench_quality.py                       # bundled media, 3 and 10 minutes
    python benchmarks/bench_quality.py more.wav --minutes 3  # plus other recordings
    python benchmarks/bench_quality.py --rescue              # renders with the chain's trap watchdog
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import signal
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import report  # noqa: E402
from samplernn_lab.analysis import diagnose  # noqa: E402
from samplernn_lab.audio import dequantize, load, quantize, save  # noqa: E402
from samplernn_lab.dataset import excerpts, load_split, prepare, read_manifest, source_category, windows  # noqa: E402
from samplernn_lab.model import SampleRNN, nll_bits  # noqa: E402
from samplernn_lab.presets import get_preset  # noqa: E402
from samplernn_lab.resemblance import SourceProfile  # noqa: E402

STREAMS, SECONDS, PRIME_SECONDS = 4, 6.0, 0.25
REFERENCE_SEQ_LEN, REFERENCE_BATCH, REFERENCE_LR = 512, 16, 1e-3  # the textbook loop's own settings


def reference_loop(dataset: Path, out: Path, preset, budgets: list[float], on_budget) -> None:
    """The textbook loop: train, and call ``on_budget(minutes, model, val_bits, best_val_bits, steps)`` at each
    budget. Under the allocator setting the lab's training makes (``train_start.keep_freed_memory``): the
    process's, not the lab's machinery."""
    from samplernn_lab.train_start import keep_freed_memory

    with keep_freed_memory():
        _reference_loop(dataset, out, preset, budgets, on_budget)


def _reference_loop(dataset: Path, out: Path, preset, budgets: list[float], on_budget) -> None:
    from samplernn_lab.audio import silence_code
    from samplernn_lab.train import evaluate

    m = preset.model  # the lab's sizes and quantisation ("same size, same quantisation")
    cfg = type(m)(**{**m.__dict__, "weight_norm": False, "learn_h0": False, "dropout": 0.0})
    torch.manual_seed(preset.train.seed)
    model = SampleRNN(cfg)
    for module in model.modules():  # PyTorch's default initialisation, not the lab's
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    opt = torch.optim.Adam(model.parameters(), lr=REFERENCE_LR)
    codes = load_split(dataset, "train", cfg.q_levels, cfg.quantization)
    val = load_split(dataset, "val", cfg.q_levels, cfg.quantization)
    seq, bs, silence = REFERENCE_SEQ_LEN, REFERENCE_BATCH, silence_code(cfg.q_levels)
    gen = torch.Generator().manual_seed(preset.train.seed)
    start, pending, steps, seen = time.process_time(), list(budgets), 0, []
    while pending:
        if steps:  # an epoch is done: validate, as a textbook loop does to keep its best (not training time)
            paused = time.process_time()
            model.eval()
            seen.append(evaluate(model, val, seq, bs, "cpu"))
            model.train()
            start += time.process_time() - paused
        for idx in torch.randperm(codes.shape[0], generator=gen).split(bs):
            hidden = None
            for _, window in windows(codes[idx], seq, model.lookback, silence):
                logits, hidden = model(window, hidden)
                loss = nll_bits(logits, window[:, model.lookback :])
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
                hidden = [h.detach() for h in hidden]
                if pending and time.process_time() - start >= pending[0] * 60:
                    minutes = pending.pop(0)
                    paused = time.process_time()
                    model.eval()
                    bits = evaluate(model, val, seq, bs, "cpu")
                    best = min((v for v in [bits, *seen] if v is not None), default=None)  # None: no held-out set
                    on_budget(minutes, model, bits, best, steps)
                    model.train()
                    start += time.process_time() - paused  # the evaluation is not training time
                if not pending:
                    return


def lab_loop(dataset: Path, out: Path, preset, budgets: list[float], on_budget) -> None:
    """The lab's training, stopped at each budget and resumed for the next."""
    from samplernn_lab.checkpoint import load_model
    from samplernn_lab.train import evaluate, train

    m = preset.model
    val_codes = load_split(dataset, "val", m.q_levels, m.quantization)
    for i, minutes in enumerate(budgets):
        # max_minutes is the run's in all: a resumed run counts the minutes before its resume (last.pt keeps them)
        cfg = dataclasses.replace(preset.train, max_minutes=minutes, epochs=None, clock="process")
        done = train(dataset, out, preset.model, cfg, resume=i > 0, device="cpu", progress=False)
        # the lab validates at the end of each epoch; the budget ends mid-epoch, so measure the weights it
        # stopped with (last.pt) the way the reference is measured, at the budget (with ema on, the weights'
        # average: what the lab renders from and keeps)
        at_budget = evaluate(load_model(out, "last")[0], val_codes, cfg.seq_len, cfg.batch_size, "cpu")
        lines = (out / "metrics.jsonl").read_text().splitlines()
        seen = [at_budget] + [json.loads(line)["nll_bits"] for line in lines if '"val"' in line]
        seen = [v for v in seen if v is not None]
        model, _ = load_model(out, "auto")
        # with one short held-out chunk, validation swings by bits from epoch to epoch: report the best too
        on_budget(minutes, model, at_budget, min(seen) if seen else None, done.step)


def evaluate_renders(
    model: SampleRNN,
    dataset: Path,
    profile: SourceProfile,
    sr: int,
    temperature: float,
    seed: int,
    sampling: dict,
    keep: Path,
) -> dict:
    from samplernn_lab.sampling import Sampler
    from samplernn_lab.sampling.rescue import Rescue, Watchdog, training_audio

    sampling = dict(sampling)
    rescue = sampling.pop("rescue", False)
    prime = excerpts(dataset, PRIME_SECONDS, STREAMS, seed)
    cfg = model.config
    sampler = Sampler(model, STREAMS, temperature, seed, **sampling)
    sampler.prime(quantize(torch.from_numpy(prime), cfg.q_levels, cfg.quantization))
    # --rescue: the chain's trap watchdog (silence, tones, noise re-primed from the training audio)
    watch = None
    if rescue:
        source = training_audio(dataset)
        watch = Watchdog(
            Rescue(source, sr, seed=seed, kind=profile.kind), STREAMS, cfg.q_levels, cfg.quantization, model.lookback
        )
    codes = torch.cat(list(sampler.run(int(SECONDS * sr), watchdog=watch)), 1)
    audio = dequantize(codes, model.config.q_levels, model.config.quantization).numpy()
    keep.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(audio):  # to listen to and to draw
        save(keep / f"stream-{i}.wav", a, sr)
    found = [diagnose(a, sr, profile) for a in audio]  # with the source known, as triage judges a run's renders
    rows = [
        {"resemblance": d.features["resemblance"], "copy": d.features["copy_share"], "category": d.category}
        for d in found
    ]
    res = [r["resemblance"] for r in rows]
    return {
        "resemblance": statistics.median(res),
        "res_min": min(res),
        "res_max": max(res),
        "copy": max(r["copy"] for r in rows),
        "categories": [r["category"] for r in rows],
        "rescues": None if watch is None else sum(len(e) for e in watch.events),
    }


def die_with_parent() -> None:
    """Pool initializer: on Linux, the worker is killed when the benchmark's process dies, even by kill -9
    (otherwise it trains on, an orphan, for the rest of its budget). SIGKILL, not SIGTERM: training takes
    SIGTERM as "stop after this step and save", and the worker would go on to its renders."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: a killed run's workers finish on their own
        pass


def one_training(job: dict) -> list[dict]:
    """One training (lab or reference) of one source with its evaluations, in its own process."""
    torch.set_num_threads(1)
    preset = get_preset("sketch", job["overrides"])
    dataset, sr = Path(job["dataset"]), preset.data.sample_rate
    source, _ = load(job["source"], sr)
    profile = SourceProfile(source, sr, kind=source_category(dataset))  # the kind measured at prepare time
    results = []

    def on_budget(minutes, model, val_bits, best_val_bits, steps):
        t = time.process_time()
        row = {
            "source": Path(job["source"]).stem,
            "loop": job["loop"],
            "minutes": minutes,
            "val_bits": val_bits,
            "best_val_bits": best_val_bits,
            "steps": steps,
            "seeds": [preset.train.seed, preset.data.seed, job["seed"]],  # training, data, renders
            "overrides": job["overrides"],
            **evaluate_renders(
                model,
                dataset,
                profile,
                sr,
                job["temperature"],
                job["seed"],
                job["sampling"],
                Path(job["run"]) / f"eval-{minutes:g}min",
            ),
        }
        row["eval_seconds"] = time.process_time() - t
        results.append(row)
        print(json.dumps(row), flush=True)

    loop = lab_loop if job["loop"] == "lab" else reference_loop  # the reference takes the sizes only
    budgets = job["budgets"]
    # the evaluation's own CPU time must not eat the training budget: budgets are training time
    loop(dataset, Path(job["run"]), preset, budgets, on_budget)
    return results


def against_reference(row: dict, ref: dict | None, key: str) -> str:
    """``row[key]`` minus the reference loop's, in bits, for the table; "-" where there is nothing to compare."""
    if row["loop"] == "reference" or not ref or row.get(key) is None or ref.get(key) is None:
        return "-"
    return f"{row[key] - ref[key]:+.3f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sources", nargs="*", help="recordings besides the bundled media")
    p.add_argument("--minutes", type=float, nargs="+", default=[3.0, 10.0])
    p.add_argument("--no-media", action="store_true", help="leave out the bundled media")
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        help="sketch overrides: model and training settings for the lab loop; data settings (prepare) for both, "
        "which train on the same chunks",
    )
    p.add_argument("--temperature", type=float, default=None, help="render temperature (default: the chain's)")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--rescue", action="store_true", help="render with the chain's trap watchdog (re-primes counted)")
    p.add_argument("--loops", nargs="+", default=["lab", "reference"], choices=["lab", "reference"])
    p.add_argument("--jobs", type=int, default=2, help="trainings side by side (one CPU thread each)")
    p.add_argument("--out", default="runs/bench_quality")
    p.add_argument(
        "--seed", type=int, default=0, help="the renders' seed (training and data: --set train.seed=N data.seed=N)"
    )
    a = p.parse_args(argv)

    from samplernn_lab.pipeline import CHAIN_TEMPERATURE

    out = Path(a.out)
    sources = [] if a.no_media else sorted((ROOT / "media").glob("*.wav"))
    sources += [Path(s) for s in a.sources]
    preset = get_preset("sketch", a.set)
    jobs = []
    for src in sources:
        ds = out / "datasets" / src.stem
        if not (ds / "manifest.json").exists():
            prepare([src], ds, preset.data, progress=False)
        made_with = read_manifest(ds).get("settings", {})
        differ = sorted(k for k, v in dataclasses.asdict(preset.data).items() if made_with.get(k, v) != v)
        if differ:  # training on another setting's chunks would be measured under this one's name
            p.error(f"{ds}: prepared with other data settings ({', '.join(differ)}); use another --out")
        for loop in a.loops:
            run = out / "runs" / f"{src.stem}-{loop}-{time.strftime('%H%M%S')}"
            jobs.append(
                {
                    "source": str(src),
                    "dataset": str(ds),
                    "run": str(run),
                    "loop": loop,
                    "overrides": a.set,
                    "budgets": sorted(a.minutes),
                    "temperature": CHAIN_TEMPERATURE if a.temperature is None else a.temperature,
                    "top_p": a.top_p,
                    "seed": a.seed,
                    "sampling": ({} if a.top_p is None else {"top_p": a.top_p}) | {"rescue": a.rescue},
                }
            )
    # killing this process (any signal, kill -9 too) takes its workers along: their parent-death signal
    with mp.get_context("spawn").Pool(a.jobs, initializer=die_with_parent) as pool:
        rows = [r for rs in pool.imap(one_training, jobs) for r in rs]
    (out / "results.jsonl").parent.mkdir(parents=True, exist_ok=True)
    with open(out / f"results-{time.strftime('%Y%m%d-%H%M%S')}.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)

    table = []
    for r in sorted(rows, key=lambda r: (r["source"], r["minutes"], r["loop"])):
        ref = next(
            (
                x
                for x in rows
                if x["source"] == r["source"] and x["minutes"] == r["minutes"] and x["loop"] == "reference"
            ),
            None,
        )
        table.append(
            {
                "source": r["source"],
                "min": f"{r['minutes']:g}",
                "loop": r["loop"],
                "steps": f"{r['steps']:,}" if r.get("steps") is not None else "-",
                "val bits": "-" if r["val_bits"] is None else f"{r['val_bits']:.3f}",
                "best val": "-" if r.get("best_val_bits") is None else f"{r['best_val_bits']:.3f}",
                "vs ref": against_reference(r, ref, "val_bits"),
                "best vs ref best": against_reference(r, ref, "best_val_bits"),
                "resemblance": f"{r['resemblance']:.2f} ({r['res_min']:.2f}-{r['res_max']:.2f})",
                "copy": f"{r['copy']:.0%}",
                "categories": " ".join(sorted(r["categories"]))
                + (f" ({r['rescues']} re-primed)" if r.get("rescues") is not None else ""),
            }
        )
    # issue 10's acceptance, per loop and budget: the median, sources closer than coloured noise, the most copied,
    # and (where both loops ran) sources whose held-out NLL is at or below the reference's
    for loop in a.loops:
        for minutes in sorted(a.minutes):
            mine = [r for r in rows if r["loop"] == loop and r["minutes"] == minutes]
            if not mine:
                continue
            res = [r["resemblance"] for r in mine]
            refs = {r["source"]: r for r in rows if r["loop"] == "reference" and r["minutes"] == minutes}
            pairs = [(r, refs[r["source"]]) for r in mine if loop != "reference" and r["source"] in refs]
            at = [r["val_bits"] - x["val_bits"] for r, x in pairs if None not in (r["val_bits"], x["val_bits"])]
            best = [
                r["best_val_bits"] - x["best_val_bits"]
                for r, x in pairs
                if None not in (r.get("best_val_bits"), x.get("best_val_bits"))
            ]
            table.append(
                {
                    "source": "MEDIAN",
                    "min": f"{minutes:g}",
                    "loop": loop,
                    "vs ref": f"{sum(d <= 0 for d in at)}/{len(at)} <= ref" if at else "",
                    "best vs ref best": f"{sum(d <= 0 for d in best)}/{len(best)} <= ref" if best else "",
                    "resemblance": f"{statistics.median(res):.2f} ({sum(x < 1 for x in res)}/{len(res)} < 1)",
                    "copy": f"{max(r['copy'] for r in mine):.0%}",
                }
            )
    headers = [
        "source",
        "min",
        "loop",
        "steps",
        "val bits",
        "best val",
        "vs ref",
        "best vs ref best",
        "resemblance",
        "copy",
        "categories",
    ]
    note = (
        f"; sketch {' '.join(a.set) or '(as shipped)'}; budgets in CPU minutes of one thread; "
        f"T={jobs[0]['temperature'] if jobs else '-'}"
        + (f", top-p {a.top_p}" if a.top_p else "")
        + (", renders with the chain's watchdog (--rescue)" if a.rescue else "")
    )
    report(headers, [[r.get(h, "") for h in headers] for r in table], "cpu", note)


if __name__ == "__main__":
    main()

"""Does ``auto`` pick a good epoch? Every epoch of finished runs rendered again, and the pick scored.

For each run folder (one ``bench_quality.py`` lab run, or any run with ``checkpoints/epoch-NNN.pt``), every
epoch checkpoint renders two independent sets of 4 streams x 6 s, primed as the chain primes (0.25 s of a
different training chunk per stream): one set to choose with, one to score with. The lab's rule
(:func:`samplernn_lab.rundir.liveliest_epoch`: varied below coloured noise first, no silence, no far tone,
noise last) is applied to events made three ways: the run's own per-epoch events (what ``auto`` picked),
and from the choosing set's first 4 s: the median of its 4 streams, the median of its first 2. Each pick is
scored by the scoring set's median resemblance (0 = like another stretch of the source, 1 = like its
coloured noise); the best epoch by that score and the median epoch are shown for scale.

    python benchmarks/bench_auto.py RUN DATASET SOURCE [RUN DATASET SOURCE ...]

About 40 s per epoch on two CPU cores (a 10-minute sketch run has about 20 epochs).

With ``--kind``, only the rule's use of the source's own kind is measured (``source_category`` in the render
events, :func:`samplernn_lab.analysis.source_kind`): the run's own events judged without it (a steady-tone
source's tones are the tone failure) and with it (they are its own kind); where the two picks differ, both
epochs render 4 streams x 6 s as ``bench_quality.py --rescue`` renders (the chain's watchdog, seed 0) and
their median resemblance is shown. Seconds per run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import report  # noqa: E402
from samplernn_lab.analysis import diagnose, source_kind  # noqa: E402
from samplernn_lab.audio import dequantize, load, quantize  # noqa: E402
from samplernn_lab.checkpoint import load_model  # noqa: E402
from samplernn_lab.dataset import excerpts, source_category  # noqa: E402
from samplernn_lab.resemblance import SourceProfile  # noqa: E402
from samplernn_lab.rundir import RunDir, liveliest_epoch, pick_epoch, render_events  # noqa: E402
from samplernn_lab.sampling import Sampler  # noqa: E402

STREAMS, SECONDS, JUDGE_SECONDS, PRIME_SECONDS = 4, 6.0, 4.0, 0.25
CHOOSE_SEED, SCORE_SEED = 100, 200


def streams(model, dataset: Path, profile: SourceProfile, sr: int, seed: int) -> list[dict]:
    """4 streams x 6 s from one checkpoint: each stream's resemblance and category over 6 s and its first 4 s."""
    cfg = model.config
    sampler = Sampler(model, STREAMS, 1.0, seed)
    prime = excerpts(dataset, PRIME_SECONDS, STREAMS, seed)
    sampler.prime(quantize(torch.from_numpy(prime), cfg.q_levels, cfg.quantization))
    codes = torch.cat(list(sampler.run(int(SECONDS * sr))), 1)
    rows = []
    for audio in dequantize(codes, cfg.q_levels, cfg.quantization).numpy():
        whole, first = diagnose(audio, sr, profile), diagnose(audio[: int(JUDGE_SECONDS * sr)], sr, profile)
        rows.append(
            {
                "resemblance": whole.features["resemblance"],
                "judged": first.features["resemblance"],
                "category": first.category,
            }
        )
    return rows


def median_event(epoch: int, rows: list[dict], kind: str) -> dict:
    """One render event from several streams, as ``epoch_renders.render_event`` makes it: the median stream's."""
    mid = sorted(rows, key=lambda r: r["judged"])[(len(rows) - 1) // 2]
    return {
        "epoch": epoch,
        "resemblance": mid["judged"],
        "category": mid["category"],
        "copy_share": 0.0,
        "source_category": kind,
    }


def pick(events: list[dict]) -> int | None:
    """The epoch ``auto``'s rule picks from these events (:func:`samplernn_lab.rundir.pick_epoch`)."""
    name = pick_epoch(events)
    return int(name.split("-")[1]) if name else None


def by_kind(triples: list[str]) -> None:
    """``--kind``: the pick without the source's kind against the pick with it, both rendered where they differ."""
    from bench_quality import evaluate_renders

    table = []
    for run_dir, dataset, source in zip(*[iter(triples)] * 3):
        run, dataset = RunDir(run_dir), Path(dataset)
        sr = run.read_config()["sample_rate"]
        profile = SourceProfile(load(source, sr)[0], sr, kind=source_category(dataset))  # as the chain judges it
        kind = source_kind(profile)
        events = [e for e in render_events(run) if run.epoch_checkpoint(int(e["epoch"])).exists()]
        blind = pick([{k: v for k, v in e.items() if k != "source_category"} for e in events])
        knowing = pick([{**e, "source_category": kind} for e in events])
        cells = []
        for epoch in (blind, knowing):
            if blind == knowing or epoch is None:
                cells.append(f"{epoch}: -")
                continue
            model, _ = load_model(run.root, f"epoch-{epoch:03d}")
            keep = run.root / "by-kind" / f"epoch-{epoch:03d}"  # the streams, to listen to and to draw
            r = evaluate_renders(model, dataset, profile, sr, 1.0, 0, {"rescue": True}, keep)
            cats = " ".join(c[0] for c in r["categories"])
            cells.append(f"{epoch}: {r['resemblance']:.2f} ({cats}, {r['rescues']} re-primed)")
            print(f"{run.root.name} epoch {epoch}: {r['resemblance']:.2f}", flush=True)
        table.append([run.root.name, kind, *cells])
    report(["run", "source kind", "without the kind", "with it"], table, "cpu", "; epoch: median resemblance")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("triples", nargs="+", metavar="RUN DATASET SOURCE")
    p.add_argument("--kind", action="store_true", help="measure only the rule's use of the source's own kind")
    a = p.parse_args()
    if len(a.triples) % 3:
        p.error("give RUN DATASET SOURCE in threes")
    torch.set_num_threads(1)
    if a.kind:
        by_kind(a.triples)
        return
    table = []
    for run_dir, dataset, source in zip(*[iter(a.triples)] * 3):
        run, dataset = RunDir(run_dir), Path(dataset)
        epochs = sorted(int(c.stem.split("-")[1]) for c in run.checkpoints.glob("epoch-*.pt"))
        sr = run.read_config()["sample_rate"]
        profile = SourceProfile(load(source, sr)[0], sr, kind=source_category(dataset))  # as the chain judges it
        choose, score = {}, {}
        for epoch in epochs:
            model, _ = load_model(run.root, f"epoch-{epoch:03d}")
            choose[epoch] = streams(model, dataset, profile, sr, CHOOSE_SEED)
            score[epoch] = statistics.median(r["resemblance"] for r in streams(model, dataset, profile, sr, SCORE_SEED))
            print(f"{run.root.name} epoch {epoch}: {score[epoch]:.2f}", flush=True)
        now = liveliest_epoch(run)
        picks = {
            "auto (run's events)": int(now.split("-")[1]) if now else None,
            "median of 4": pick([median_event(e, rows, source_kind(profile)) for e, rows in choose.items()]),
            "median of 2": pick([median_event(e, rows[:2], source_kind(profile)) for e, rows in choose.items()]),
        }
        best, typical = min(score, key=score.get), statistics.median(score.values())
        cells = [f"{e}: {score[e]:.2f}" if e in score else "-" for e in picks.values()]
        table.append([run.root.name, len(epochs), *cells, f"{best}: {score[best]:.2f}", f"{typical:.2f}"])
    report(["run", "epochs", *picks, "best epoch", "median epoch"], table, "cpu", "; epoch: score of the pick")


if __name__ == "__main__":
    main()

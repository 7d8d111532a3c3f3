"""Judge a finished run as bench_quality.py judges its trainings: 4 x 6 s from a checkpoint, each primed with
0.25 s of a different training chunk, at the chain's temperature, median resemblance to the source.

For runs made outside the benchmark (a long CPU run, a GPU run copied back) so their figures line up with its
table. The dataset is the one the run recorded (pass --dataset where it lies elsewhere now); the source, the
dataset's first (pass --source for another path).

    python benchmarks/eval_run.py RUN [--dataset DIR] [--source FILE] [--checkpoint auto] [--seed 0]
        [--temperature 1.0] [--rescue] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_quality import evaluate_renders  # noqa: E402

from samplernn_lab.audio import load  # noqa: E402
from samplernn_lab.checkpoint import load_model  # noqa: E402
from samplernn_lab.dataset import read_manifest, source_category  # noqa: E402
from samplernn_lab.resemblance import SourceProfile  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--dataset", help="the run's dataset, if not where its config.json says")
    p.add_argument("--source", help="the source's path, if not where the dataset's manifest says")
    p.add_argument("--checkpoint", default="auto")
    p.add_argument("--seed", type=int, default=0, help="the renders' seed")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--rescue", action="store_true", help="render with the chain's trap watchdog")
    p.add_argument("--out", help="where the four streams go (default RUN/eval-CHECKPOINT)")
    a = p.parse_args(argv)
    run = Path(a.run)
    dataset = Path(a.dataset or json.loads((run / "config.json").read_text())["dataset"])
    manifest = read_manifest(dataset)
    source = a.source or manifest["sources"][0]["path"]
    model, info = load_model(run, a.checkpoint)
    sr = manifest["sample_rate"]
    audio, _ = load(source, sr)
    profile = SourceProfile(audio, sr, kind=source_category(dataset))
    out = Path(a.out) if a.out else run / f"eval-{a.checkpoint}"
    row = evaluate_renders(model.eval(), dataset, profile, sr, a.temperature, a.seed, {"rescue": a.rescue}, out)
    print(
        json.dumps(
            {
                "run": str(run),
                "checkpoint": a.checkpoint,
                "epoch": info.get("epoch"),
                "source": Path(source).stem,
                **row,
            }
        )
    )


if __name__ == "__main__":
    main()

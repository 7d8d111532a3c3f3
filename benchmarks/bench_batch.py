"""Batch scheduling: wall time of N short runs with ``--jobs`` (subprocesses) and with ``--ray``, on a local
Ray instance and on a 2-node cluster simulated on this host (``ray.cluster_utils.Cluster``: a second raylet
with its own resources, as a second ``ray start --address=...`` would make).

By default every run is dispatch only: its source is not audio, so the run fails in its first check,
and the wall time is what scheduling costs per run (a subprocess and the lab's import without Ray; a
task, its arguments and a worker with Ray). With ``--chain`` every run is the whole notebook chain on a
tiny model (``--sketch``: the sketch preset's sizes), the same in every mode. Each mode runs ``--parallel``
runs at once; Ray's start-up is measured apart from the batch. ``--threads`` adds the local mode as it was
before its runs shared the cores: every run's torch on every core (``OMP_NUM_THREADS`` = the cores, which the
runner keeps when the user sets it), paired with the shared mode in each repeat.

    python benchmarks/bench_batch.py [--runs N] [--parallel P] [--repeats R] [--chain [--steps S] [--sketch]]
                                     [--threads] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402
from samplernn_lab.batch import batch, start_local_ray  # noqa: E402
from samplernn_lab.batch_runners import usable_cpus  # noqa: E402

TINY = ["dim=16", "embed_size=8", "chunk_seconds=0.5", "copies=2", "seq_len=256", "batch_size=4", "render_seconds=0.1"]


def sources(root: Path, n: int) -> list[Path]:
    sr, files = 16000, []
    t = np.arange(2 * sr) / sr
    for i in range(n):
        f = 220 * (1 + i / 4)
        audio = 0.4 * np.exp(-2 * (t % 1.0)) * np.sin(2 * np.pi * f * t)
        files.append(root / f"s{i}.wav")
        sf.write(files[-1], audio, sr, subtype="PCM_16")
    return files


def not_audio(root: Path, n: int) -> list[Path]:
    files = [root / f"x{i}.wav" for i in range(n)]
    for f in files:
        f.write_text("not audio\n")
    return files


def one_batch(
    files: list[Path], out: Path, steps: int, chain: bool, overrides: list[str] = TINY, **kwargs
) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    report_ = batch(files, out, max_steps=steps, seconds=0.25, overrides=overrides, progress=False, **kwargs)
    wall = time.perf_counter() - t0
    if chain:
        assert report_["failed"] == 0, [r.get("error") for r in report_["results"]]
    else:
        assert all("not a readable audio file" in r["error"] for r in report_["results"]), report_["results"]
    states = [json.loads((out / "logs" / f"{r['name']}.json").read_text()) for r in report_["results"]]
    return wall, states


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=16)
    p.add_argument("--chain", action="store_true", help="every run the whole chain (minutes each), not dispatch only")
    p.add_argument("--parallel", type=int, default=2, help="runs at once: --jobs, and the CPUs Ray is given")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sketch", action="store_true", help="with --chain: the sketch's sizes, not a tiny model")
    p.add_argument("--threads", action="store_true", help="also every local run on every core, as before")
    p.add_argument("--no-ray", action="store_true", help="the local modes only")
    a = p.parse_args()
    if a.sketch and not a.chain:
        p.error("--sketch needs --chain")
    if not a.no_ray:
        import ray
        from ray.cluster_utils import Cluster
    # the shared mode as a user who set no thread count gets it; the old mode sets one below
    user_threads = os.environ.pop("OMP_NUM_THREADS", None)

    root = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    files = sources(root, a.runs) if a.chain else not_audio(root, a.runs)
    size = ["render_seconds=0.5"] if a.sketch else TINY
    walls: dict[str, list[float]] = {"jobs": []}
    if a.threads:
        walls["jobs, every core each"] = []
    if not a.no_ray:
        walls |= {"ray local": [], "ray 2 nodes": []}
    starts: dict[str, list[float]] = {"ray local": [], "ray 2 nodes": []}
    nodes_used = set()
    for rep in range(a.repeats):
        wall, _ = one_batch(files, root / f"jobs{rep}", a.steps, a.chain, size, jobs=a.parallel)
        walls["jobs"].append(wall)
        print(f"jobs {a.parallel}: {wall:.1f} s", flush=True)
        if a.threads:
            os.environ["OMP_NUM_THREADS"] = str(usable_cpus())
            try:
                wall, _ = one_batch(files, root / f"jobsall{rep}", a.steps, a.chain, size, jobs=a.parallel)
            finally:
                del os.environ["OMP_NUM_THREADS"]
            walls["jobs, every core each"].append(wall)
            print(f"jobs {a.parallel}, every core each: {wall:.1f} s", flush=True)
        if a.no_ray:
            continue
        t0 = time.perf_counter()
        start_local_ray(num_cpus=a.parallel, log_to_driver=False)
        starts["ray local"].append(time.perf_counter() - t0)
        wall, _ = one_batch(files, root / f"ray{rep}", a.steps, a.chain, size, ray=True)
        ray.shutdown()
        walls["ray local"].append(wall)
        print(f"ray local ({starts['ray local'][-1]:.1f} s start): {wall:.1f} s", flush=True)

        t0 = time.perf_counter()
        per_node = max(1, a.parallel // 2)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": per_node, "include_dashboard": False})
        cluster.add_node(num_cpus=per_node)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        starts["ray 2 nodes"].append(time.perf_counter() - t0)
        wall, states = one_batch(files, root / f"ray2n{rep}", a.steps, a.chain, size, ray=True)
        nodes_used |= {s.get("node") for s in states}
        ray.shutdown()
        cluster.shutdown()
        walls["ray 2 nodes"].append(wall)
        print(
            f"ray 2 nodes ({starts['ray 2 nodes'][-1]:.1f} s start, runs on {len(nodes_used)} nodes): {wall:.1f} s",
            flush=True,
        )

    if user_threads is not None:
        os.environ["OMP_NUM_THREADS"] = user_threads
    base = statistics.median(walls["jobs"])
    rows = []
    for mode, w in walls.items():
        wall = statistics.median(w)
        start = f"{statistics.median(starts[mode]):.1f}" if mode in starts else "-"
        rows.append(
            [
                mode,
                a.runs,
                a.parallel,
                f"{wall:.1f}",
                f"{wall / a.runs:.1f}",
                start,
                "-" if mode == "jobs" else f"{(wall - base) / a.runs:+.1f}",
                f"{wall / base:.2f}x",
            ]
        )
    report(
        [
            "mode",
            "runs",
            "at once",
            "batch wall s",
            "s per run",
            "Ray start s",
            "overhead s/run vs jobs",
            "wall / jobs",
        ],
        rows,
        "cpu",
        note=f"; {'whole chain' if a.chain else 'dispatch only'}{', sketch sizes' if a.sketch else ''}; "
        f"median of {a.repeats}" + ("" if a.no_ray else f"; 2-node runs landed on {len(nodes_used)} nodes"),
    )


if __name__ == "__main__":
    main()

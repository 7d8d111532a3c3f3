"""Two settings of ``bench_quality.py``, paired: which renders closer to its source, how often, by how much?

Each arm is a list of results files (``results-*.jsonl``) that ``bench_quality.py`` wrote. Rows pair
across the arms by source, budget, loop and seeds (training, data, renders; rows written before the
seeds were recorded count as seed 0). Per pair the table gives each arm's resemblance (of the renders
from ``auto``), the validation NLL as recorded (the lab's last epoch's in results written before
2026-12-01 late, its weights at the budget since), and the ratio of resemblances B / A (below 1: B renders
closer). Per budget and loop it counts the pairs where B is closer, level (within 10%) or further, gives
the geometric mean and median of the ratios, their typical size (exp of the median |log B/A|), and, as
the noise floor to read that against, the same size between two seeds of arm A on one source.

    python benchmarks/compare_quality.py --a OUT_A/results-*.jsonl --b OUT_B/results-*.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import table  # noqa: E402

LEVEL = 1.1  # ratios within 10% either way count as level


def rows_of(files: list[str]) -> dict[tuple, dict]:
    """Rows of results files keyed by (source, minutes, loop, seeds); a key seen twice is an error."""
    rows: dict[tuple, dict] = {}
    for name in files:
        for line in Path(name).read_text().splitlines():
            r = json.loads(line)
            key = (r["source"], r["minutes"], r["loop"], tuple(r.get("seeds", (0, 0, 0))))
            if key in rows:
                raise SystemExit(f"{name}: {key} is already in another file of this arm")
            rows[key] = r
    return rows


def bits(row: dict) -> str:
    return "-" if row.get("val_bits") is None else f"{row['val_bits']:.2f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", nargs="+", required=True, metavar="FILE", help="results of the first setting")
    p.add_argument("--b", nargs="+", required=True, metavar="FILE", help="results of the second setting")
    a = p.parse_args(argv)
    arm_a, arm_b = rows_of(a.a), rows_of(a.b)
    pairs = sorted(k for k in arm_a if k in arm_b)
    if not pairs:
        raise SystemExit("no row of --a has a row of --b with the same source, budget, loop and seeds")

    lines = []
    for key in pairs:
        ra, rb = arm_a[key], arm_b[key]
        source, minutes, loop, seeds = key
        lines.append(
            [
                source,
                f"{minutes:g}",
                loop,
                "/".join(map(str, seeds)),
                f"{ra['resemblance']:.2f}",
                f"{rb['resemblance']:.2f}",
                f"{rb['resemblance'] / ra['resemblance']:.2f}",
                bits(ra),
                bits(rb),
            ]
        )
    print(table(["source", "min", "loop", "seeds", "A", "B", "B/A", "A val bits", "B val bits"], lines))

    summary = []
    # --set's model and training settings change the lab loop only
    for minutes, loop in sorted({(k[1], k[2]) for k in pairs}):
        logs = [math.log(arm_b[k]["resemblance"] / arm_a[k]["resemblance"]) for k in pairs if k[1:3] == (minutes, loop)]
        closer = sum(x < -math.log(LEVEL) for x in logs)
        further = sum(x > math.log(LEVEL) for x in logs)
        # the noise floor: the same setting, two seeds, one source
        by_source: dict[str, list[float]] = {}
        for k, r in arm_a.items():
            if k[1:3] == (minutes, loop):
                by_source.setdefault(k[0], []).append(r["resemblance"])
        seed_logs = [abs(math.log(x / y)) for v in by_source.values() for x, y in combinations(v, 2)]
        summary.append(
            [
                f"{minutes:g}",
                loop,
                len(logs),
                f"{closer} / {len(logs) - closer - further} / {further}",
                f"{math.exp(statistics.fmean(logs)):.2f}",
                f"{math.exp(statistics.median(logs)):.2f}",
                f"{math.exp(statistics.median(map(abs, logs))):.2f}",
                f"{math.exp(statistics.median(seed_logs)):.2f} ({len(seed_logs)})" if seed_logs else "-",
            ]
        )
    print()
    print(
        table(
            [
                "min",
                "loop",
                "pairs",
                "B closer / level / further",
                "B/A geo. mean",
                "B/A median",
                "size of B/A",
                "A seed to seed (pairs)",
            ],
            summary,
        )
    )


if __name__ == "__main__":
    main()

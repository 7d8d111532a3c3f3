"""The spectral floor between partials (``hiss_db`` of samplernn_lab.frame_features) of sounds, as they are and as
a perfect model would render them with 256 levels (linear and mu-law): how far a render's hiss bed stands over
what the quantisation alone would leave.

    python benchmarks/hiss_table.py FILE [FILE ...] [--sr 16000]

Each file is read at ``--sr`` (the sketch's rate), so a source and its renders line up. A render is already
quantised: the column of its own quantisation agrees with the first (a check of the method). Prints a table: the
floor as is, after 8-bit linear and mu-law quantisation, the onset and strike rates and the level spread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import report  # noqa: E402
from samplernn_lab.audio import load  # noqa: E402
from samplernn_lab.frame_features import features  # noqa: E402
from samplernn_lab.resemblance import played_hiss_db  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--sr", type=int, default=16000)
    args = ap.parse_args(argv)
    rows = []
    for path in args.files:
        audio, sr = load(path, args.sr)
        f = features(audio, sr)
        lin, mu = (played_hiss_db(audio, sr, m) for m in ("linear", "mulaw"))
        rows.append(
            [
                "/".join(Path(path).parts[-3:]),
                f"{f['hiss_db']:.1f}",
                f"{lin:.1f}",
                f"{mu:.1f}",
                f"{f['onset_rate']:.2f}",
                f"{f['strike_rate']:.2f}",
                f"{f['level_spread_db']:.1f}",
                f"{f['rms_dbfs']:.1f}",
            ]
        )
    headers = ["file", "hiss dB", "linear 8-bit", "mu-law 8-bit", "onsets/s", "strikes/s", "spread dB", "rms dBFS"]
    report(headers, rows, "cpu", note=f"; hiss_db at {args.sr} Hz, dB under the mean bin power")


if __name__ == "__main__":
    main()

"""The spectral floor between partials (``floor_db`` of samplernn_lab.frame_features) of sounds, as they are and as
a perfect model would render them with 256 levels (linear and mu-law): how far a render's hiss bed stands over
what the quantisation alone would leave.

    python benchmarks/floor_table.py FILE [FILE ...] [--sr 16000]

Each file is read at ``--sr`` (the sketch's rate), so a source and its renders line up. A render is already
quantised: its three columns agree (a check of the method). Prints a table: the floor as is, after 8-bit linear
and mu-law quantisation, and the onset rate and level spread the hiss-bed rule also asks for.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import report  # noqa: E402
from samplernn_lab.audio import dequantize, load, quantize  # noqa: E402
from samplernn_lab.frame_features import features  # noqa: E402


def quantised(audio: np.ndarray, method: str) -> np.ndarray:
    """``audio`` through 256 levels of ``method`` and back: the best an 8-bit model of it can play."""
    return dequantize(quantize(audio, 256, method), 256, method).numpy()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--sr", type=int, default=16000)
    args = ap.parse_args(argv)
    rows = []
    for path in args.files:
        audio, sr = load(path, args.sr)
        f = features(audio, sr)
        lin, mu = (features(quantised(audio, m), sr)["floor_db"] for m in ("linear", "mulaw"))
        rows.append(
            [
                "/".join(Path(path).parts[-3:]),
                f"{f['floor_db']:.1f}",
                f"{lin:.1f}",
                f"{mu:.1f}",
                f"{f['onset_rate']:.2f}",
                f"{f['level_spread_db']:.1f}",
                f"{f['rms_dbfs']:.1f}",
            ]
        )
    headers = ["file", "floor dB", "linear 8-bit", "mu-law 8-bit", "onsets/s", "spread dB", "rms dBFS"]
    report(headers, rows, "cpu", note=f"; floors at {args.sr} Hz, dB under the mean bin power")


if __name__ == "__main__":
    main()

"""Temperature over time: a curve of ``seconds:temperature`` breakpoints, as a per-sample array.

``"0:1.0,8:0.8,20:1.1"`` starts at 1.0, glides linearly to 0.8 at 8 s and to 1.1 at 20 s, and holds its
last value after that (and its first before the first breakpoint). Time 0 is the first sample after the
prime. :class:`.sampler.Sampler` takes the array (``temperature_curve=``); ``generate --temperature-curve``
and :func:`.render.render` take the text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import LabError


@dataclass(frozen=True)
class TemperatureCurve:
    """Breakpoints ``((seconds, temperature), ...)``, times strictly increasing from >= 0, temperatures >= 0."""

    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if not self.points:
            raise LabError("--temperature-curve: no breakpoints (write e.g. '0:1.0,8:0.8,20:1.1')")
        times = [s for s, _ in self.points]
        if not all(math.isfinite(s) and s >= 0 for s in times):
            raise LabError(f"--temperature-curve {self}: times must be seconds >= 0")
        if any(b <= a for a, b in zip(times, times[1:])):
            raise LabError(f"--temperature-curve {self}: times must increase")
        if not all(math.isfinite(t) and t >= 0 for _, t in self.points):
            raise LabError(f"--temperature-curve {self}: temperatures must be finite and >= 0 (0 = greedy)")

    @classmethod
    def parse(cls, spec: str) -> TemperatureCurve:
        """``"0:1.0,8:0.8,20:1.1"`` (spaces allowed) -> a curve; LabError naming the bad part."""
        points = []
        for part in str(spec).split(","):
            fields = part.split(":")
            try:
                if len(fields) != 2:
                    raise ValueError
                points.append((float(fields[0]), float(fields[1])))
            except ValueError:
                raise LabError(
                    f"--temperature-curve {spec!r}: {part.strip()!r} is not seconds:temperature "
                    f"(write e.g. '0:1.0,8:0.8,20:1.1')"
                ) from None
        return cls(tuple(points))

    def __str__(self) -> str:
        return ",".join(f"{s:g}:{t:g}" for s, t in self.points)

    def held_after(self, sample_rate: int) -> int:
        """The sample from which the curve holds its last value: what a per-sample array needs to hold."""
        return int(math.ceil(self.points[-1][0] * sample_rate)) + 1

    def values(self, n_samples: int, sample_rate: int) -> np.ndarray:
        """The temperature of each of ``n_samples`` samples at ``sample_rate`` Hz: float32 array (n_samples,)."""
        if n_samples < 0 or sample_rate <= 0:
            raise LabError(f"temperature curve: {n_samples} samples at {sample_rate} Hz")
        times = np.arange(n_samples, dtype=np.float64) / sample_rate
        xp, fp = zip(*self.points)
        return np.interp(times, xp, fp).astype(np.float32)


def as_curve(curve: TemperatureCurve | str) -> TemperatureCurve:
    """A curve, or its text parsed."""
    return curve if isinstance(curve, TemperatureCurve) else TemperatureCurve.parse(curve)

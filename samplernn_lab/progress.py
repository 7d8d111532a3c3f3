"""A run's own progress, read from its ``metrics.jsonl`` while it trains (by whoever can see the folder).

Training runs inside a notebook kernel (``run``) or on another machine (``batch --ray``), so its own
progress bar is not on the user's screen. What is: the run folder. :class:`MetricsTail` reads the lines
appended since its last look (a half-written last line is left for the next look) and keeps the
latest epoch, step, training loss and minutes of training, which ``run``, ``batch`` and
``batch --status`` show.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from .rundir import MetricsReader, RunDir


class MetricsTail:
    """The latest state of a run, from the lines appended to ``RUN/metrics.jsonl`` since the last read.

    Attributes after :meth:`read`: ``epoch`` (epochs finished, int), ``step`` (steps in all, int),
    ``bits`` (training NLL in bits/sample, a running mean over recent steps, or None), ``val_bits``
    (latest validation NLL or None), ``minutes`` (training time in all, float).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.reader = MetricsReader(RunDir(Path(run_dir)).metrics)
        self.path = self.reader.path
        self._forget()

    def _forget(self) -> None:
        self.restarts = self.reader.restarts
        self.epoch = 0
        self.step = 0
        self.bits: float | None = None
        self.val_bits: float | None = None
        self.minutes = 0.0

    def read(self) -> MetricsTail:
        """Take in the complete lines written since the last call; returns self. A run that started over (its
        file removed or replaced) is followed from its new start."""
        lines = self.reader.read_new()  # a line still being written waits for the next read
        if self.reader.restarts != self.restarts:
            self._forget()
        for _, m in lines:
            if "seconds" in m:
                self.minutes = float(m["seconds"]) / 60
            if m.get("split") == "train":
                self.step = int(m.get("step", self.step))
                self.epoch = max(self.epoch, int(m.get("epoch", 1)) - 1)
                loss = float(m["nll_bits"])
                self.bits = loss if self.bits is None else 0.9 * self.bits + 0.1 * loss
            elif m.get("split") == "val":
                self.epoch = max(self.epoch, int(m.get("epoch", 0)))
                self.val_bits = float(m["nll_bits"])
        return self

    @property
    def started(self) -> bool:
        return self.reader.offset > 0

    def line(self) -> str:
        """``epoch 3, step 120, 2.41 bits, 1.3 min`` (``epoch`` counts finished epochs)."""
        if not self.started:
            return "preparing"
        bits = f", {self.bits:.2f} bits" if self.bits is not None else ""
        return f"epoch {self.epoch}, step {self.step}{bits}, {self.minutes:.1f} min"


class Watcher:
    """Call ``callback(tail)`` every ``interval`` seconds from a daemon thread while in a ``with`` block."""

    def __init__(self, run_dir: str | os.PathLike, callback: Callable[[MetricsTail], None], interval: float = 2.0):
        self.tail = MetricsTail(run_dir)
        self.callback, self.interval = callback, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.callback(self.tail.read())

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

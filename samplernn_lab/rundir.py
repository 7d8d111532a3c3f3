"""The run folder: the one owner of its names, its metrics log and its checkpoint names.

::

    RUN/.samplernn-lab           marker: this folder was made by the lab (JSON: kind, version)
    RUN/.lock                    held while a training writes here (pid inside)
    RUN/config.json              model, train, data and quantisation settings
    RUN/metrics.jsonl            one JSON object per line: step, epoch, split, nll_bits, seconds; events
    RUN/checkpoints/last.pt      everything a resume needs
    RUN/checkpoints/best.pt      weights at the best validation NLL
    RUN/checkpoints/epoch-NNN.pt weights after epoch NNN
    RUN/renders/epoch-NNN/*.wav  short renders after each epoch (render_streams)
    RUN/loss.png                 the loss curve

Imports nothing of the lab but :mod:`errors` and :mod:`files`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LabError
from .files import remove_temporaries, write_text
from .frame_features import OWN_KINDS, judged_category

MARKER = ".samplernn-lab"
LOCK = ".lock"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
RENDERS = "renders"
DATASET_MANIFEST = "manifest.json"  # a dataset folder's (samplernn_lab.dataset); here to recognise one
RUN_DATASET = "dataset"  # the chain (run, batch, demo) prepares a run's dataset in RUN/dataset
LOSS_PLOT = "loss.png"


def epoch_name(epoch: int) -> str:
    """``epoch-003``: the name of epoch 3's checkpoint (without ``.pt``) and render folder."""
    return f"epoch-{epoch:03d}"


@dataclass(frozen=True)
class RunDir:
    """Paths of one run folder (nothing is created by making one)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    config = property(lambda self: self.root / CONFIG)
    metrics = property(lambda self: self.root / METRICS)
    checkpoints = property(lambda self: self.root / CHECKPOINTS)
    last = property(lambda self: self.root / CHECKPOINTS / "last.pt")
    best = property(lambda self: self.root / CHECKPOINTS / "best.pt")
    loss_plot = property(lambda self: self.root / LOSS_PLOT)
    lock = property(lambda self: self.root / LOCK)

    def epoch_checkpoint(self, epoch: int) -> Path:
        """``RUN/checkpoints/epoch-NNN.pt``."""
        return self.checkpoints / f"{epoch_name(epoch)}.pt"

    def epoch_renders(self, epoch: int) -> Path:
        """``RUN/renders/epoch-NNN/``, the folder of one epoch's renders."""
        return self.root / RENDERS / epoch_name(epoch)

    def dataset(self, config: dict) -> Path | None:
        """The run's dataset: ``RUN/dataset`` where it holds one (a chain run keeps its own there, and a copied or
        moved run should not be judged against whatever now sits at the old path), else the folder ``config``
        names; None where neither holds a manifest."""
        named = config.get("dataset")
        for folder in [self.root / RUN_DATASET] + ([Path(named)] if isinstance(named, str) else []):
            if (folder / DATASET_MANIFEST).is_file():
                return folder
        return None

    def read_config(self) -> dict:
        """The run's ``config.json``; LabError naming the file when it is missing or broken."""
        try:
            return json.loads(self.config.read_text())
        except FileNotFoundError:
            raise LabError(f"{self.root}: not a run folder (no {CONFIG})") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise LabError(f"{self.config}: not valid JSON ({e})") from None


# ---------------------------------------------------------------------------------------------
# The marker: what the lab made, and so may replace


def write_marker(folder: str | os.PathLike, kind: str) -> None:
    """Mark ``folder`` as made by the lab (``kind``: ``"run"``, ``"dataset"``, ``"demo"``...)."""
    from . import __version__

    write_text(Path(folder) / MARKER, json.dumps({"kind": kind, "version": __version__}) + "\n")


def marker_kind(folder: str | os.PathLike) -> str | None:
    """The kind the lab marked ``folder`` with, or None.

    Folders the lab made before the marker are recognised by what they hold: a run (``config.json`` and
    ``checkpoints/``) counts as ``"run"``, a dataset (a ``manifest.json`` of the lab's format) as
    ``"dataset"``.
    """
    folder = Path(folder)
    try:
        return str(json.loads((folder / MARKER).read_text())["kind"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if (folder / CONFIG).is_file() and (folder / CHECKPOINTS).is_dir():
        return "run"
    try:
        if str(json.loads((folder / DATASET_MANIFEST).read_text())["format"]).startswith("samplernn-lab dataset"):
            return "dataset"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def is_empty(folder: str | os.PathLike) -> bool:
    """True when ``folder`` does not exist or holds nothing but a lock file (a training killed before it
    marked the folder)."""
    folder = Path(folder)
    return not folder.exists() or (folder.is_dir() and all(p.name == LOCK for p in folder.iterdir()))


def holds_run(run: RunDir) -> bool:
    """True when ``run`` holds a run: its ``config.json`` and at least one checkpoint. A start that failed
    before its first checkpoint does not count: the same command may start it again."""
    return run.config.is_file() and any(run.checkpoints.glob("*.pt"))


def replace_lab_folder(folder: str | os.PathLike, kind: str) -> None:
    """Remove ``folder``, which must be one the lab marked ``kind`` (anything else: LabError, nothing
    touched). It is first renamed aside, so a crash half-way leaves either the whole folder or none."""
    import shutil
    import tempfile

    folder = Path(folder)
    if is_empty(folder):
        return
    if marker_kind(folder) != kind:
        raise LabError(f"{folder}: not a {kind} folder made by samplernn-lab; it is left as it is")
    aside = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
    os.rmdir(aside)
    os.replace(folder, aside)
    shutil.rmtree(aside)


# ---------------------------------------------------------------------------------------------
# metrics.jsonl: one writer, one reader


class MetricsWriter:
    """Appends one JSON object per line, flushed at once. A cut-off last line (a killed run) is dropped
    when the file is opened again, so a broken line is only ever the last. ``path=None`` writes nothing
    (ranks other than 0)."""

    def __init__(self, path: str | os.PathLike | None):
        self.file = None
        if path is not None:
            _drop_cut_off_line(Path(path))
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line."""
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_cut_off_line(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)


class MetricsReader:
    """The one reader of ``metrics.jsonl``: the whole file, or what was appended since the last look.

    Only complete lines (ending in a newline) are read; a last line without one is a run still writing
    (or one killed mid-line) and is left for the next look, unless ``final``: then it is taken if it parses
    and skipped if cut off. A line that is not JSON is skipped, or with ``strict`` a LabError naming the
    file and the line. Lines that are JSON but not objects are skipped.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.offset = 0  # bytes read so far (always the end of a line)
        self.lineno = 0  # lines read so far
        self.restarts = 0  # times the file was gone or replaced since a look, and read again from its start
        self._file: tuple[int, int] | None = None  # (device, inode) of the file last read

    def read_new(self, *, strict: bool = False, final: bool = False) -> list[tuple[int, dict]]:
        """``(line number, object)`` for each line appended since the last call; ``[]`` if no file.

        A file removed or replaced since the last call (a run started over before its first checkpoint) is
        read from its start again, and ``restarts`` counts it."""
        try:
            fh = open(self.path, "rb")
        except OSError:
            self._start_over_if_replaced(None, 0)
            return []
        with fh:
            st = os.fstat(fh.fileno())
            self._start_over_if_replaced((st.st_dev, st.st_ino), st.st_size)
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        out = [item for raw in data[:end].splitlines() if (item := self._take(raw, strict)) is not None]
        self.offset += end
        rest = data[end:]
        if final and rest.strip():
            try:
                obj = json.loads(rest)
            except ValueError:
                obj = None  # cut off: skipped, whatever ``strict`` says
            self.offset, self.lineno = self.offset + len(rest), self.lineno + 1
            if isinstance(obj, dict):
                out.append((self.lineno, obj))
        return out

    def _start_over_if_replaced(self, file: tuple[int, int] | None, size: int) -> None:
        if self.offset and (file != self._file or size < self.offset):  # size: a new file may reuse the inode
            self.offset = self.lineno = 0
            self.restarts += 1
        self._file = file

    def _take(self, raw: bytes, strict: bool) -> tuple[int, dict] | None:
        self.lineno += 1
        if not raw.strip():
            return None
        try:
            obj = json.loads(raw)
        except ValueError:
            if strict:
                raise LabError(f"{self.path}: line {self.lineno} is not valid JSON") from None
            return None
        return (self.lineno, obj) if isinstance(obj, dict) else None


def iter_metrics(path: str | os.PathLike, strict: bool = False) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for every JSON object line of a metrics file, in order.

    A cut-off last line (a run still writing, or killed) is skipped; blank lines and non-objects too; a
    broken line before the last is skipped too, or with ``strict`` raises (see :class:`MetricsReader`).

    Raises
    ------
    LabError
        The file is missing, or (``strict``) a line before the last is not JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise LabError(f"{path}: no such metrics file")
    yield from MetricsReader(path).read_new(strict=strict, final=True)


def read_metrics(path: str | os.PathLike, missing_ok: bool = False) -> list[dict]:
    """Every JSON object of a metrics file (see :func:`iter_metrics`); ``[]`` for a missing file if
    ``missing_ok``."""
    if missing_ok and not Path(path).exists():
        return []
    return [obj for _, obj in iter_metrics(path)]


# ---------------------------------------------------------------------------------------------
# checkpoint names


# The checkpoint taken when none is named, by every door (the CLI's generate and export, the chain, notebook 3,
# render_checkpoint, live.export, load_model): the epoch the lab's triage would have a listener hear first.
LISTEN = "auto"


def resolve(run_or_path: str | os.PathLike, which: str = LISTEN) -> Path:
    """A checkpoint path from a run folder and ``best``/``last``/``auto``/``epoch-NNN``, or a path as is.

    ``auto`` is the epoch whose per-epoch render resembles the source most without copying it, a render
    that moves preferred to a steady tone (see
    :func:`liveliest_epoch`), else ``last``: the lab's triage choosing what to listen to first.
    """
    p = Path(run_or_path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise LabError(f"{p}: no such run folder or checkpoint file")
    run = RunDir(p)
    if which == "auto":
        which = liveliest_epoch(run) or "last"
    if which not in ("best", "last") and Path(which).is_file():
        return Path(which)
    name = which if which.endswith(".pt") else f"{which}.pt"
    candidates = [run.checkpoints / name]
    if which == "best":  # a run without validation data has no best.pt
        candidates.append(run.last)
    for c in candidates:
        if c.exists():
            return c
    have = ", ".join(sorted(x.name for x in run.checkpoints.glob("*.pt"))) or "none"
    raise LabError(f"{p}: no checkpoint {name!r} (train first, or pick one of {have})")


def render_events(run: str | os.PathLike | RunDir) -> list[dict]:
    """The per-epoch render events of a run's ``metrics.jsonl`` (a cut-off line is skipped), file order."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    try:
        rows = read_metrics(run.metrics, missing_ok=True)
    except LabError:
        return []
    return [r for r in rows if r.get("event") == "render" and "epoch" in r]


# ``auto`` passes over epochs whose render replays more than this share of the source verbatim ...
AUTO_MAX_COPY = 0.2
# ... and over those diagnosed a steady tone unless closer to the source than this (1 = noise of the source's
# colour, as analysis.NOISE_RESEMBLANCE): a bell's held partials trip the tone rule and still resemble the bell.
AUTO_TONE_RESEMBLANCE = 1.0


def liveliest_epoch(run: RunDir) -> str | None:
    """The epoch ``auto`` picks from the per-epoch render events of ``metrics.jsonl`` (None: none fits).

    Renders judged against their source (``resemblance`` in the event): the epoch whose render is closest
    to the source (lowest resemblance), among those not diagnosed silence, copying at most ``AUTO_MAX_COPY``
    of it, and not a steady tone further from the source than ``AUTO_TONE_RESEMBLANCE``. A render that moves
    (``varied``) closer than that beats any tone: steady partials over hiss score well on the measure
    (0.65 on the demo) yet are a failure a listener hears, where struck attacks at 0.82 are the bells. A
    tone closer than noise is picked only when nothing varied is (the demo before the batch fix: its one
    render below 1, 0.75, was a tone; passing over it left a hiss at 1.7). A render diagnosed noise comes last
    whatever its resemblance (a quiet hiss bed can score below 1, see ``analysis.HISS_MIN_NOISINESS``). Where
    the source is itself a steady tone or noise (the event's ``source_category``: a drone, a rubbed glass, a
    hiss recording), a render of that kind is not that failure and counts as a varied one, and noise no longer
    comes last (the measure alone orders the rest): a rubbed glass's tones 4.8 from its source were passed over
    for hiss at 12.6 before (benchmarks/RESULTS.md, "The source's own kind"). Older runs without the measure:
    the latest epoch diagnosed varied.
    """
    return pick_epoch([e for e in render_events(run) if run.epoch_checkpoint(int(e["epoch"])).exists()])


def pick_epoch(events: list[dict]) -> str | None:
    """:func:`liveliest_epoch`'s rule on render events (``epoch``, ``category``, ``resemblance``,
    ``copy_share``, ``source_category`` where known), whatever made them; None when none fits."""

    def kind(e: dict) -> str:  # a tone of a steady-tone source, noise of a noise source: the source's own kind
        return judged_category(e.get("category"), e.get("source_category"))

    judged = [
        e
        for e in events
        if isinstance(e.get("resemblance"), (int, float))
        and kind(e) != "silence"
        and not (kind(e) == "tone" and e["resemblance"] >= AUTO_TONE_RESEMBLANCE)
        and e.get("copy_share", 0.0) <= AUTO_MAX_COPY
    ]
    if judged:

        def rank(e: dict) -> tuple:  # a moving render closer than noise, then tones, then noise; closest, latest
            moving = kind(e) == "varied" and e["resemblance"] < AUTO_TONE_RESEMBLANCE
            # a steady-tone or noise source: the measure alone orders its own kind and the rest
            noise_last = kind(e) == "noise" and e.get("source_category") not in OWN_KINDS
            return (not moving, noise_last, e["resemblance"], -int(e["epoch"]))

        best = min(judged, key=rank)
        return epoch_name(int(best["epoch"]))
    varied = [int(e["epoch"]) for e in events if e.get("category") == "varied"]
    return epoch_name(max(varied)) if varied else None


# ---------------------------------------------------------------------------------------------
# claiming a folder for a training


def check_new_run(run: RunDir) -> None:
    """Refuse to start a new run where it could overwrite a run, or anything the lab did not make."""
    if run.root.exists() and not run.root.is_dir():
        raise LabError(f"{run.root}: exists and is not a folder")
    if holds_run(run):
        raise LabError(f"{run.root}: already holds a run (use --resume to continue it, or another --out)")
    if not is_empty(run.root) and marker_kind(run.root) is None:
        raise LabError(
            f"{run.root}: folder is not empty and was not made by samplernn-lab; choose a new or empty --out"
        )


@contextmanager
def claim(run: RunDir, run_config: dict, resume: bool, say: Callable[[str], None] = print) -> Iterator[RunLock]:
    """Rank 0 of a training: make the folder, hold its lock while in the block, mark it, write ``config.json``.

    Called once the run can start (settings checked, dataset read, model built), so a start that fails
    earlier writes nothing; one that fails later, before its first checkpoint, leaves the marker,
    ``config.json`` and a partial log, and the same command starts that run again from scratch.
    """
    run.root.mkdir(parents=True, exist_ok=True)
    with RunLock(run) as lock:
        if lock.stale_pid is not None:
            say(f"{run.lock}: took over a lock left by pid {lock.stale_pid}, which is gone")
        remove_temporaries(run.root)  # what a killed training left half-written (its real files are whole)
        if not resume:
            check_new_run(run)  # again, now that the folder is ours
            run.metrics.unlink(missing_ok=True)
        if marker_kind(run.root) is None:
            write_marker(run.root, "run")
        write_text(run.config, json.dumps(run_config, indent=1) + "\n")
        yield lock


# ---------------------------------------------------------------------------------------------
# the lock: one training per run folder


class RunLock:
    """An exclusive lock on a run folder while a training writes into it (``RUN/.lock``, pid inside).

    The lock is an OS file lock (``flock``) on that file: the kernel lets go of it when its process ends,
    however it ends, so a lock file left by a killed process (kill -9) is stale and is simply taken over.
    A second training into the same folder is refused with a LabError naming the holder's pid.
    """

    def __init__(self, run: RunDir):
        self.path = run.lock
        self.fd: int | None = None
        self.stale_pid: int | None = None  # the pid a taken-over stale lock named, if any

    def acquire(self) -> RunLock:
        """Take the lock or raise LabError; see the class docstring."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = _read_pid(self.path)
            raise LabError(
                f"{self.path.parent}: another training is writing into this run folder "
                f"(pid {holder if holder is not None else 'unknown'}); wait for it or stop it"
            ) from None
        self.stale_pid = _read_pid(self.path)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        """Let go of the lock (idempotent). The file stays, emptied: removing it could race a newcomer."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        finally:
            os.close(self.fd)  # closing releases the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None

"""Dataset preparation (the study's method) and the batches a SampleRNN trainer reads.

``prepare`` turns source sounds into a dataset folder::

    DIR/manifest.json           settings, sources (path, duration, sha256), the sources' kind as a whole
                                (``source_category``, see :func:`source_category`) with the diagnosis rules'
                                edition it was measured under (``category_rules``), and every chunk
    DIR/chunks/train/000000.wav fixed-length chunks, 16-bit PCM at the dataset's sample rate
    DIR/chunks/val/...          from held-out stretches of each source
    DIR/chunks/test/...

Each source is split in time first: a stretch of ``val_fraction + test_fraction`` of it is held
out (validation, then test) where its level is typical, so no held-out audio ever reaches the
training copies. Each part is then augmented on its own (copies, circular offsets, crossfades; see
:mod:`samplernn_lab.augment`) and cut into chunks; the tail shorter than a chunk is dropped.
Held-out stretches get just enough copies to fill whole chunks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import audio as audio_io
from .analysis import CATEGORIES, CATEGORY_RULES, categorize, features
from .augment import Piece, augment
from .config import DataConfig
from .errors import LabError
from .files import plain_mode
from .rundir import marker_kind
from .spectral import SILENT_PEAK

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
SOURCE_SECONDS = 60.0  # the source judged against (and whose kind is measured): at most this long


@dataclass
class Source:
    path: str
    name: str
    seconds: float
    sha256: str
    audio: np.ndarray = field(repr=False)
    splits: dict = field(default_factory=dict)


def find_sources(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand folders into the audio files they hold (sorted); check every path exists."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in audio_io.AUDIO_EXTENSIONS)
            if not files:
                raise LabError(f"{p}: directory holds no audio files ({', '.join(audio_io.AUDIO_EXTENSIONS)})")
            found.extend(files)
        elif not p.exists():
            raise LabError(f"{p}: no such file")
        else:
            found.append(p)
    if not found:
        raise LabError("no source sounds given")
    return found


def load_source(path: Path, sample_rate: int) -> Source:
    """Read and check one source sound (errors name the file, also one that vanished since it was found)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LabError(f"{path}: could not read it ({e.strerror or e})") from None
    audio, _ = audio_io.load(path, sample_rate)
    if float(np.max(np.abs(audio))) < SILENT_PEAK:
        raise LabError(f"{path}: source is silent (peak below -80 dBFS)")
    # the absolute path: the manifest is read from other folders (training, the notebooks) to find the source again
    return Source(str(path.resolve()), path.stem, len(audio) / sample_rate, hashlib.sha256(data).hexdigest(), audio)


def split_source(audio: np.ndarray, val_fraction: float, test_fraction: float) -> dict[str, list[tuple[int, int]]]:
    """Sample ranges ``[start, stop)`` of each split of a source, which never overlap.

    Validation and test are one held-out stretch (validation first) placed where the source's
    level is most typical, so a decaying tail or a fade-out does not become the validation set.
    Training is the rest, in circular order from the end of the held-out stretch.
    """
    n = len(audio)
    n_val = max(int(round(n * val_fraction)), 1) if val_fraction > 0 else 0
    n_test = max(int(round(n * test_fraction)), 1) if test_fraction > 0 else 0
    held = n_val + n_test
    if held == 0:
        return {"train": [(0, n)], "val": [], "test": []}
    start = _typical_window(audio, held)
    stop = start + held
    return {
        "train": [(a, b) for a, b in ((stop, n), (0, start)) if b > a],
        "val": [(start, start + n_val)] if n_val else [],
        "test": [(start + n_val, stop)] if n_test else [],
    }


def _typical_window(audio: np.ndarray, length: int, candidates: int = 21) -> int:
    """Start of the window of ``length`` samples whose RMS level is closest to the whole source's."""
    n = len(audio)
    if length >= n:
        return 0
    power = np.concatenate([[0.0], np.cumsum(np.square(audio, dtype=np.float64))])
    starts = np.unique(np.linspace(0, n - length, candidates).round().astype(int))
    level = 10 * np.log10((power[starts + length] - power[starts]) / length + 1e-12)
    whole = 10 * np.log10(power[-1] / n + 1e-12)
    return int(starts[np.argmin(np.abs(level - whole))])


def _chunk_segments(pieces: list[Piece], start: int, stop: int) -> list[dict]:
    """Which source samples make up stream samples ``[start, stop)`` (crossfades appear in both).

    A piece played at another rate (pitch jitter) says so (``rate``: source samples per chunk sample).
    ``piece_start`` / ``piece_stop`` are where the whole piece lies in chunk samples (outside the chunk where it
    began before or ends after it): consecutive pieces overlap by their crossfade."""
    segs = []
    for p in pieces:
        a, b = max(start, p.stream_start), min(stop, p.stream_start + p.length)
        if a >= b:
            continue
        seg = {"copy": p.copy, "offset": p.offset, "gain": round(p.gain, 6)}
        if p.rate != 1.0:
            seg["rate"] = p.rate
        seg["chunk_start"] = a - start
        seg["piece_start"], seg["piece_stop"] = p.stream_start - start, p.stream_start + p.length - start
        seg["source_start"] = p.source_start + int(round((a - p.stream_start) * p.rate))
        seg["source_stop"] = min(p.source_stop, p.source_start + int(round((b - p.stream_start) * p.rate)))
        segs.append(seg)
    return segs


def prepare(
    sources: list[str | os.PathLike],
    out: str | os.PathLike,
    config: DataConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Build a dataset folder from source sounds (see module docstring for the layout).

    The dataset is written into a temporary folder beside ``out`` and moved into place at the end,
    so an error or an interruption leaves ``out`` as it was. The same config (seed included) gives
    a byte-identical folder.

    Raises
    ------
    LabError
        A bad source (missing, empty, not audio, silent, NaN/inf), a directory with no audio, a
        non-empty ``out`` that is not a dataset of the lab's, or one that is without ``overwrite``, or
        sources too short for one chunk.
    """
    cfg = config or DataConfig()
    cfg.validate()
    if cfg.chunk_samples < 1:
        raise LabError(f"chunk_seconds={cfg.chunk_seconds:g}: less than one sample at {cfg.sample_rate} Hz")
    out = Path(out)
    _check_out(out, overwrite)
    loaded = [load_source(p, cfg.sample_rate) for p in find_sources(sources)]

    fade = int(round(cfg.crossfade_ms * 1e-3 * cfg.sample_rate))
    rng = np.random.default_rng(cfg.seed)
    pitch_rng = np.random.default_rng([cfg.seed, 1])  # its own: offsets and gains stay put with pitch jitter on
    plan: list[tuple[str, int, np.ndarray, dict]] = []  # split, source index, audio, manifest entry
    for si, src in enumerate(loaded):
        plan.extend(_plan_source(si, src, cfg, rng, fade, pitch_rng))

    counts = {s: sum(1 for p in plan if p[0] == s) for s in SPLITS}
    if counts["train"] == 0:
        raise LabError(
            f"{', '.join(s.path for s in loaded)}: too short to fill one {cfg.chunk_seconds} s "
            f"training chunk with {cfg.copies} copies"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        _write_dataset(tmp, plan, loaded, cfg, counts, progress)
        plain_mode(tmp)  # mkdtemp made it private
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _plan_source(
    si: int, src: Source, cfg: DataConfig, rng: np.random.Generator, fade: int, pitch_rng: np.random.Generator
) -> list[tuple[str, int, np.ndarray, dict]]:
    """Split one source, augment each split and cut it into chunks: (split, source index, audio, entry) each."""
    chunk = cfg.chunk_samples
    plan = []
    ranges = split_source(src.audio, cfg.val_fraction, cfg.test_fraction)
    src.splits = ranges
    for split in SPLITS:
        n_split = sum(b - a for a, b in ranges[split])
        if n_split == 0:
            continue
        if n_split < 2 * fade + 2:
            raise LabError(f"{src.path}: too short for a {split} split ({n_split} samples)")
        # Held-out stretches (and short sources) get extra copies until they fill a chunk; the training split
        # until it fills `min_chunks` chunks.
        train = split == "train"
        stream, pieces = augment(
            src.audio,
            ranges[split],
            cfg.copies if train else 1,
            rng,
            fade,
            cfg.gain_jitter_db,
            min_length=chunk * max(1, cfg.min_chunks if train else 1),
            pitch_jitter_cents=cfg.pitch_jitter_cents if train else 0.0,  # held-out audio stays as recorded
            pitch_rng=pitch_rng,
        )
        for ci in range(len(stream) // chunk):
            s, e = ci * chunk, (ci + 1) * chunk
            plan.append((split, si, stream[s:e], _chunk_entry(split, src, si, s, chunk, pieces)))
    return plan


def _chunk_entry(split: str, src: Source, si: int, start: int, chunk: int, pieces: list[Piece]) -> dict:
    """The manifest entry of the chunk at ``start`` of a split's augmented stream (without its path)."""
    segs = _chunk_segments(pieces, start, start + chunk)
    copies = sorted({g["copy"] for g in segs})
    return {
        "split": split,
        "source": src.path,
        "source_index": si,
        "stream_start": start,
        "n_samples": chunk,
        "copy": segs[0]["copy"],
        "offset": segs[0]["offset"],
        "copies": copies,
        "offsets": [next(g["offset"] for g in segs if g["copy"] == c) for c in copies],
        "segments": segs,
    }


def _write_dataset(
    tmp: Path, plan: list, loaded: list[Source], cfg: DataConfig, counts: dict[str, int], progress: bool
) -> None:
    """Write the planned chunks and the manifest into ``tmp``."""
    chunks = []
    index = {s: 0 for s in SPLITS}
    for split, _, data, entry in tqdm(plan, desc="prepare", unit="chunk", disable=not progress):
        rel = f"chunks/{split}/{index[split]:06d}.wav"
        index[split] += 1
        audio_io.save(tmp / rel, data, cfg.sample_rate)
        chunks.append({"path": rel, **entry})
    manifest = {
        "format": "samplernn-lab dataset 1",
        "settings": asdict(cfg),
        "sample_rate": cfg.sample_rate,
        "chunk_samples": cfg.chunk_samples,
        "sources": [
            {
                "path": s.path,
                "name": s.name,
                "seconds": round(s.seconds, 6),
                "sha256": s.sha256,
                "splits": {k: [list(r) for r in v] for k, v in s.splits.items()},
            }
            for s in loaded
        ],
        "counts": counts,
        # what the source is as a whole, measured once here: every judge of its renders asks the same answer
        "source_category": _category_of(loaded, cfg.sample_rate),
        "category_rules": CATEGORY_RULES,  # the rules that answer was measured under
        "chunks": chunks,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def _category_of(loaded: list[Source], sample_rate: int, max_seconds: float = SOURCE_SECONDS) -> str:
    """:func:`~samplernn_lab.analysis.categorize` of the sources as recorded, joined (as :func:`source_audio`)."""
    joined = np.concatenate([s.audio for s in loaded])[: int(max_seconds * sample_rate)]
    return categorize(features(joined, sample_rate))


def _check_out(out: Path, overwrite: bool) -> None:
    """``out`` may be written: new, empty, or (with ``overwrite``) a dataset the lab made; never a folder of
    anything else, whatever ``overwrite`` says."""
    if out.exists() and not out.is_dir():
        raise LabError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if marker_kind(out) != "dataset":
            raise LabError(
                f"{out}: folder is not empty and was not made by samplernn-lab prepare; choose a new or empty --out"
            )
        if not overwrite:
            raise LabError(f"{out}: already holds a dataset (use --overwrite to replace it)")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Swap the finished folder in; an old ``out`` is removed only once the new one is in place."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.rmdir(old)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Reading a dataset for training


def read_manifest(folder: str | os.PathLike) -> dict:
    """Load and check ``manifest.json`` of a dataset folder; errors name the folder or file."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise LabError(f"{folder}: no such dataset folder")
    if not path.exists():
        raise LabError(f"{folder}: not a dataset (no {MANIFEST}; make one with `samplernn-lab prepare`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LabError(f"{path}: not a valid manifest ({e})") from None
    if not isinstance(manifest, dict):
        raise LabError(f"{path}: not a valid manifest (not a JSON object)")
    for key, kind in (
        ("sample_rate", int),
        ("chunk_samples", int),
        ("chunks", list),
        ("settings", dict),
        ("sources", list),
    ):
        if not isinstance(manifest.get(key), kind) or isinstance(manifest[key], bool):
            raise LabError(f"{path}: not a valid manifest ({key!r} missing or not a {kind.__name__})")
    if "source_category" in manifest and manifest["source_category"] not in CATEGORIES:
        raise LabError(
            f"{path}: not a valid manifest (source_category must be one of {', '.join(CATEGORIES)}, "
            f"got {manifest['source_category']!r})"
        )
    root = folder.resolve()
    for i, c in enumerate(manifest["chunks"]):
        if not (isinstance(c, dict) and isinstance(c.get("path"), str) and c.get("split") in SPLITS):
            raise LabError(f"{path}: not a valid manifest (chunk {i} needs a path and a split)")
        # only files inside the dataset folder: a manifest is data, and must not reach other files
        if Path(c["path"]).is_absolute() or not (folder / c["path"]).resolve().is_relative_to(root):
            raise LabError(f"{path}: chunk {i} points outside the dataset folder ({c['path']}); refused")
        if not (folder / c["path"]).is_file():
            raise LabError(f"{path}: lists {c['path']}, which is missing")
    return manifest


def load_split(folder: str | os.PathLike, split: str, q_levels: int, quantization: str) -> torch.Tensor:
    """All chunks of one split as codes, shape (n_chunks, chunk_samples), ``torch.long``.

    Raises LabError when a chunk's rate or length disagrees with the manifest.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    rows = []
    for c in manifest["chunks"]:
        if c["split"] != split:
            continue
        path = folder / c["path"]
        data, sr = audio_io.load(path)
        if sr != manifest["sample_rate"] or len(data) != manifest["chunk_samples"]:
            raise LabError(
                f"{path}: {len(data)} samples at {sr} Hz, but the manifest says "
                f"{manifest['chunk_samples']} at {manifest['sample_rate']} Hz"
            )
        rows.append(audio_io.quantize(data, q_levels, quantization))
    if not rows:
        return torch.zeros(0, manifest["chunk_samples"], dtype=torch.long)
    return torch.stack(rows)


def batch_order(n_chunks: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The epoch's batches of chunk indices: a permutation seeded by (seed, epoch), cut into batches.

    Every batch holds ``min(batch_size, n_chunks)`` distinct chunks: a short last batch is topped up
    from the start of the permutation. A batch trains for as many steps as a chunk has windows, so a
    short last batch (3 of 19 chunks in the sketch's demo) left each epoch's weights fitted to those few
    chunks, loud or quiet: the epoch-to-epoch swings between noise and near-source renders
    (benchmarks/RESULTS.md, "Why the sketch swung"). Deterministic, so a resumed run finds its place again.
    """
    if n_chunks == 0:
        return []
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(n_chunks, generator=g)
    size = min(batch_size, n_chunks)
    batches = [perm[i : i + size] for i in range(0, n_chunks, size)]
    if batches and len(batches[-1]) < size:  # disjoint: the top-up is shorter than the first batch
        batches[-1] = torch.cat([batches[-1], perm[: size - len(batches[-1])]])
    return batches


def windows(chunks: torch.Tensor, seq_len: int, lookback: int, silence: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Truncated-BPTT windows over a batch of chunks.

    Each chunk is preceded by ``lookback`` silence codes (the same start as generation). Window
    ``i`` holds inputs ``(B, lookback + seq_len)`` whose last ``seq_len`` positions are the targets
    ``chunks[:, i*seq_len:(i+1)*seq_len]``. Yields ``(i, window)``; the tail shorter than
    ``seq_len`` is dropped.
    """
    b, n = chunks.shape
    padded = torch.cat([torch.full((b, lookback), silence, dtype=chunks.dtype), chunks], dim=1)
    for i in range(n // seq_len):
        yield i, padded[:, i * seq_len : i * seq_len + lookback + seq_len]


def chunk_as_recorded(folder: str | os.PathLike, manifest: dict, chunk: dict) -> np.ndarray:
    """A chunk's audio at the source's own level: each copy's gain jitter undone.

    A training copy may be up to ``gain_jitter_db`` louder or quieter than the source, and the level a
    render starts at is part of what the model continues: on a steady source it shows in the whole
    stream (benchmarks/RESULTS.md, "Primes at the source's level"). Across a crossfade between copies
    the gain undone follows the crossfade (exactly where the manifest records where each piece lies,
    ``piece_start``/``piece_stop``; older manifests: the settings' crossfade from each piece's first
    sample in the chunk). Chunks without per-segment gains come back as written.

    Parameters
    ----------
    folder : the dataset folder.
    manifest : its manifest (:func:`read_manifest`).
    chunk : the chunk's entry in it.

    Returns
    -------
    np.ndarray, float32, shape (n_samples,), in [-1, 1].
    """
    data, _ = audio_io.load(Path(folder) / chunk["path"])
    segs = [g for g in chunk.get("segments", []) if isinstance(g, dict)]
    gains = [g.get("gain") for g in segs]
    if not segs or not all(isinstance(g, (int, float)) and math.isfinite(g) and g > 0 for g in gains):
        return data
    n = len(data)
    if all("piece_start" in g and "piece_stop" in g for g in segs):
        # crossfade_join over the gains: each piece fades in over the stream so far (which a short piece before
        # it may not cover alone), from its start to the previous piece's end
        lo = min(0, *(int(g["piece_start"]) for g in segs))
        gain = np.full(n - lo, segs[0]["gain"], np.float32)
        for j, seg in enumerate(segs):
            a, b = int(seg["piece_start"]) - lo, min(int(seg["piece_stop"]) - lo, len(gain))
            overlap = 0 if j == 0 else int(segs[j - 1]["piece_stop"]) - lo - a
            f = max(0, min(overlap, len(gain) - a))  # the part of the crossfade inside the chunk
            if f:
                ramp = ((np.arange(f) + 0.5) / overlap).astype(np.float32)
                gain[a : a + f] = gain[a : a + f] * (1 - ramp) + seg["gain"] * ramp
            gain[a + f : b] = seg["gain"]
        gain = gain[-lo:]
    else:  # an older manifest: each piece's crossfade from its first sample in the chunk
        settings = manifest.get("settings", {})
        rate = settings.get("sample_rate", manifest.get("sample_rate", 0))
        fade = int(round(settings.get("crossfade_ms", DataConfig.crossfade_ms) * 1e-3 * rate))
        gain = np.empty(n, np.float32)
        for j, seg in enumerate(segs):
            start = int(seg["chunk_start"])
            gain[start:] = seg["gain"]
            if j and fade and seg["gain"] != segs[j - 1]["gain"]:
                at = start + np.arange(fade)
                ramp = ((np.arange(fade) + 0.5) / fade).astype(np.float32)
                inside = at < n
                gain[at[inside]] = segs[j - 1]["gain"] * (1 - ramp[inside]) + seg["gain"] * ramp[inside]
    return np.clip(data / gain, -1.0, 1.0).astype(np.float32)


def excerpts(folder: str | os.PathLike, seconds: float, n: int, seed: int = 0, split: str = "train") -> np.ndarray:
    """The first ``seconds`` of ``n`` chunks of a split, to prime renders with the source's own sound.

    Chunk ``(seed + i) % n_chunks`` primes stream ``i``, so streams start from different places; each at
    the source's level (:func:`chunk_as_recorded`), not a training copy's.

    Returns
    -------
    np.ndarray, float32, shape (n, round(seconds * sample_rate)).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    chunks = [c for c in manifest["chunks"] if c["split"] == split]
    if not chunks:
        raise LabError(f"{folder}: no {split} chunks to take a prime from")
    length = min(int(round(seconds * manifest["sample_rate"])), manifest["chunk_samples"])
    rows = []
    for i in range(n):
        rows.append(chunk_as_recorded(folder, manifest, chunks[(seed + i) % len(chunks)])[:length])
    return np.stack(rows)


def source_category(folder: str | os.PathLike) -> str:
    """What a dataset's source is as a whole: ``"silence"``, ``"tone"``, ``"noise"`` or ``"varied"``.

    Measured once, when the dataset was prepared (the manifest's ``source_category``), so the epoch renders, the
    watchdog and the summary judge a render against the same kind. A dataset prepared before the kind was recorded,
    or whose kind may have been measured under other rules (the manifest's ``category_rules`` is missing or is not
    :data:`~samplernn_lab.analysis.CATEGORY_RULES`), is measured here from :func:`source_audio`; its manifest is
    left as it is. A render of a steady-tone source that holds a tone is its own kind of sound, not the tone
    failure (:func:`samplernn_lab.analysis.source_kind`).
    """
    manifest = read_manifest(folder)
    if "source_category" in manifest and manifest.get("category_rules") == CATEGORY_RULES:
        return manifest["source_category"]
    return categorize(features(source_audio(folder), manifest["sample_rate"]))


def source_audio(folder: str | os.PathLike, max_seconds: float = SOURCE_SECONDS) -> np.ndarray:
    """The sound a dataset was made from, at the dataset's rate, to judge renders against.

    The manifest's source files, joined, where they still exist unchanged (their sha256 as recorded; a path
    relative to where ``prepare`` ran, as older manifests hold, may name another file from elsewhere); otherwise
    the training chunks (copies of the same material, each copy's gain jitter undone), joined. At most
    ``max_seconds``.

    Returns
    -------
    np.ndarray, float32, shape (n,).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    sr = manifest["sample_rate"]
    sources = [s for s in manifest["sources"] if isinstance(s, dict) and isinstance(s.get("path"), str)]
    paths = [Path(s["path"]) for s in sources]
    if paths and all(_unchanged(Path(s["path"]), s.get("sha256")) for s in sources):
        parts = [audio_io.load(p, sr)[0] for p in paths]
    else:
        # the training chunks at the source's level (gain jitter undone), as the watchdog's training audio
        parts = [chunk_as_recorded(folder, manifest, c) for c in manifest["chunks"] if c["split"] == "train"]
    return np.concatenate(parts)[: int(max_seconds * sr)].astype(np.float32)


def _unchanged(path: Path, sha256: object) -> bool:
    """Whether ``path`` is a file whose bytes hash to ``sha256`` (a manifest's record of its source)."""
    try:
        return isinstance(sha256, str) and hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False

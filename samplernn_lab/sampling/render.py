"""Renders on disk: streams of a model written to WAV files in blocks, each with a JSON sidecar."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from .. import audio as audio_io
from ..dataset import source_category
from ..errors import LabError
from ..files import atomic_path, refuse_existing, write_text, writing
from ..model import SampleRNN
from ..rundir import LISTEN, RunDir
from .rescue import Rescue, Watchdog, training_audio
from .sampler import Sampler, prime_codes
from .temperature import TemperatureCurve, as_curve


def render(
    model: SampleRNN,
    out_dir: str | os.PathLike,
    seconds: float,
    sample_rate: int,
    *,
    batch_size: int = 1,
    temperatures: Sequence[float] = (1.0,),
    seed: int = 0,
    prime: np.ndarray | None = None,
    label: str = "render",
    info: dict | None = None,
    device: torch.device | str | None = None,
    block_seconds: float = 2.0,
    progress: bool = True,
    rescue: Rescue | None = None,
    top_p: float = 1.0,
    precision: str = "fp32",
    temperature_curves: Sequence[TemperatureCurve | str] | None = None,
    overwrite: bool = True,
) -> list[Path]:
    """Render ``batch_size`` streams per temperature to WAV files, streamed to disk in blocks.

    Files are named ``{label}_t{temperature}_s{seed}_{stream}.wav`` with a ``.json`` sidecar of the
    settings. With ``temperature_curves`` (breakpoints, :class:`.temperature.TemperatureCurve`, or their
    text ``"0:1.0,8:0.8,20:1.1"``), ``batch_size`` streams per curve replace those per temperature: files
    ``{label}_curve{k}_s{seed}_{stream}.wav``, the sidecar's ``temperature_curve`` holds the breakpoints and
    its ``temperature`` the curve's mean over the render.
    Codes are dequantised exactly (bin centres): no normalisation, no DC shift.
    With ``rescue`` (:class:`.rescue.Rescue`), streams that fall silent or lock into a steady tone (or, with
    ``Rescue(noise=True)``, turn to noise) are
    re-primed from its source audio; the sidecar's ``rescue`` lists where (``events``), else is null.
    ``top_p`` < 1 samples from each step's nucleus only, ``precision`` picks the weights' precision
    (:class:`.sampler.Sampler`); the sidecar records both.
    With ``overwrite`` False, files of the same names already there are refused (LabError naming the first):
    the command line's default, where two renders into one folder differing only in, say, ``top_p`` would
    otherwise replace the first.
    Returns the WAV paths. A failed write (a full disk) raises LabError naming the file and leaves the
    files of an earlier render of the same names whole (and no ``out_dir`` where there was none).
    """
    if seconds < 0:
        raise LabError(f"--seconds must not be negative, got {seconds}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LabError(f"{out_dir}: is a file; --out names the folder the renders go in")
    n = int(round(seconds * sample_rate))
    per_curve, per_sample, per_stream, names = _streams(n, sample_rate, batch_size, temperatures, temperature_curves)
    paths = [out_dir / f"{label}_{name}_s{seed}_{i % batch_size}.wav" for i, name in enumerate(names)]
    if len(set(paths)) < len(paths):
        raise LabError(f"two streams would write the same file ({names}): give each temperature once")
    if not overwrite:
        refuse_existing([q for p in paths for q in (p, p.with_suffix(".json"))])
    # everything that can refuse the settings runs before the folder is made: a refusal leaves nothing behind
    sampler = Sampler(
        model, len(per_stream), per_stream, seed, device, top_p=top_p, precision=precision, temperature_curve=per_sample
    )
    watchdog = _watchdog(model, rescue, sample_rate, len(per_stream))
    if prime is not None:
        sampler.prime(prime_codes(model, prime))
    made_out_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        _write_streams(sampler, model.config, paths, n, sample_rate, block_seconds, progress, watchdog)
    except BaseException:
        if made_out_dir:
            _remove_if_empty(out_dir)
        raise
    elapsed = time.perf_counter() - start
    for i, (path, t, curve) in enumerate(zip(paths, per_stream, per_curve)):
        side = {
            "file": path.name,
            "label": label,
            "temperature": t,
            "temperature_curve": None if curve is None else {"spec": str(curve), "breakpoints": curve.points},
            "top_p": top_p,
            "precision": precision,
            "seed": seed,
            "seconds": seconds,
            "sample_rate": sample_rate,
            "streams_in_batch": len(per_stream),
            "prime": prime is not None,
            "q_levels": model.config.q_levels,
            "quantization": model.config.quantization,
            "samples_per_second": n * len(per_stream) / max(elapsed, 1e-9),
            "realtime_factor": n * len(per_stream) / max(elapsed, 1e-9) / sample_rate,
            "rescue": _rescue_record(watchdog, i, seconds),
            **(info or {}),
        }
        write_text(path.with_suffix(".json"), json.dumps(side, indent=1, default=str) + "\n")
    return paths


def _streams(n: int, sample_rate: int, batch_size: int, temperatures, temperature_curves):
    """Each stream's curve (or None), the per-sample temperatures (or None), its temperature and its name."""
    curves = [as_curve(c) for c in temperature_curves] if temperature_curves else None
    if curves:
        per_curve = [c for c in curves for _ in range(batch_size)]
        # arrays up to where each curve holds its last value (the sampler holds it on), not the whole render
        span = min(max(n, 1), max(c.held_after(sample_rate) for c in curves))
        rows = {id(c): c.values(span, sample_rate) for c in curves}
        per_sample = rows[id(curves[0])] if len(curves) == 1 else np.stack([rows[id(c)] for c in per_curve])
        # the mean over the render from the same arrays: past ``span`` each curve holds its last value
        total = max(n, 1)
        means = {i: (float(v.sum(dtype=np.float64)) + (total - len(v)) * float(v[-1])) / total for i, v in rows.items()}
        per_stream = [means[id(c)] for c in per_curve]
        names = [f"curve{k}" for k in range(len(curves)) for _ in range(batch_size)]
    else:
        per_curve, per_sample = [None] * (batch_size * len(temperatures)), None
        per_stream = [float(t) for t in temperatures for _ in range(batch_size)]
        names = [f"t{t:g}" for t in per_stream]
    return per_curve, per_sample, per_stream, names


def _watchdog(model: SampleRNN, rescue: Rescue | None, sample_rate: int, streams: int) -> Watchdog | None:
    """The trap watchdog for ``rescue``, or None without one."""
    if rescue is None:
        return None
    if rescue.sample_rate != sample_rate:
        raise LabError(f"rescue: source audio at {rescue.sample_rate} Hz for a render at {sample_rate} Hz")
    cfg = model.config
    return Watchdog(rescue, streams, cfg.q_levels, cfg.quantization, model.lookback)


def _write_streams(sampler, cfg, paths, n, sample_rate, block_seconds, progress, watchdog) -> None:
    """Run the sampler and stream its blocks to the WAV files, each under a temporary name until complete."""
    import soundfile as sf

    # Each WAV is written under a temporary name and renamed when complete (files are closed first).
    with ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(p)) for p in paths]
        files = []
        for path, tmp in zip(paths, tmps):
            with writing(path):
                files.append(sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=1, subtype="PCM_16", format="WAV"))
            stack.callback(_close, files[-1], path)
        for block in sampler.run(
            n,
            block=max(1, int(block_seconds * sample_rate)),
            progress=progress,
            sample_rate=sample_rate,
            watchdog=watchdog,
        ):
            audio = audio_io.dequantize(block, cfg.q_levels, cfg.quantization).numpy()
            for path, fh, row in zip(paths, files, audio):
                with writing(path):
                    fh.write(row)


def _rescue_record(watchdog: Watchdog | None, stream: int, seconds: float) -> dict | None:
    """The sidecar's ``rescue`` entry of one stream: the watchdog's settings and its events, or None."""
    if watchdog is None:
        return None
    # a restart past the end is unheard
    return {**watchdog.settings(), "events": [e for e in watchdog.events[stream] if e["seconds"] < seconds]}


def _close(fh, path: Path) -> None:
    with writing(path):  # closing writes the header: it can fail too
        fh.close()


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty: it holds something that is not ours to remove
        pass


def render_checkpoint(
    run: str | os.PathLike,
    out_dir: str | os.PathLike,
    seconds: float,
    which: str = LISTEN,
    *,
    batch_size: int = 1,
    temperatures: Sequence[float] = (1.0,),
    seed: int = 0,
    prime: str | os.PathLike | None = None,
    prime_seconds: float = 0.0,
    device: str | None = None,
    progress: bool = True,
    rescue: bool = False,
    top_p: float = 1.0,
    precision: str = "fp32",
    temperature_curves: Sequence[TemperatureCurve | str] | None = None,
    overwrite: bool = True,
) -> list[Path]:
    """Render from a run folder's checkpoint (``best``, ``last``, ``auto``, ``epoch-NNN`` or a path).

    A prime file must be at the run's sample rate (it is not resampled silently). Without one,
    ``prime_seconds > 0`` primes each stream with that much of the run's training audio (a different
    chunk per stream), so renders continue the source instead of starting from digital silence.
    ``rescue`` turns on the trap watchdog (:mod:`.rescue`), re-priming from the run's training audio.
    ``overwrite``: as in :func:`render`.
    """
    from ..checkpoint import load_model

    model, info = load_model(run, which)
    sr = int(info["config"]["sample_rate"])
    prime_audio = None if prime is None else _load_prime(prime, sr)
    # the run folder may have been moved: the lab chain keeps its dataset inside
    dataset = RunDir(run).dataset(info["config"]) or Path(info["config"]["dataset"])
    if prime is None and prime_seconds > 0:
        from ..dataset import excerpts

        streams = batch_size * len(temperature_curves or temperatures)
        prime_audio = excerpts(dataset, prime_seconds, streams, seed)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    label = Path(info["path"]).stem
    meta = {
        "checkpoint": info["path"],
        "epoch": info.get("epoch"),
        "step": info.get("step"),
        "prime_file": str(prime) if prime else None,
        "prime_seconds": prime_audio.shape[-1] / sr if prime_audio is not None else 0.0,
    }
    watch = Rescue(training_audio(dataset), sr, seed=seed, kind=source_category(dataset)) if rescue else None
    return render(
        model,
        out_dir,
        seconds,
        sr,
        batch_size=batch_size,
        temperatures=temperatures,
        seed=seed,
        prime=prime_audio,
        label=label,
        info=meta,
        device=device,
        progress=progress,
        rescue=watch,
        top_p=top_p,
        precision=precision,
        temperature_curves=temperature_curves,
        overwrite=overwrite,
    )


def _load_prime(prime: str | os.PathLike, sr: int) -> np.ndarray:
    """A prime file's audio, refused unless it is at the model's sample rate ``sr``."""
    prime_audio, prime_sr = audio_io.load(prime)  # at the file's own rate, whichever decoder reads it
    if prime_sr != sr:
        raise LabError(f"{prime}: sampled at {prime_sr} Hz, but the model was trained at {sr} Hz (resample it first)")
    return prime_audio

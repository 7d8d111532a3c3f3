"""The short renders after each epoch, and their event in ``metrics.jsonl``: what the triage listens to.

An epoch renders ``render_streams`` streams, each primed from another place in the training audio. Each is
diagnosed against the source of the dataset (category, resemblance, the share copied) and the epoch's one
event carries the median stream's diagnosis (the most copied share of any): a model that swings into loud
noise from some starts and not others is judged by a typical start, not a lucky one. The ``auto``
checkpoint is chosen from these events (:func:`samplernn_lab.rundir.liveliest_epoch`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .model import SampleRNN
from .rundir import RunDir, epoch_name


def epoch_render(
    model: SampleRNN,
    run: RunDir,
    dataset: Path,
    sample_rate: int,
    cfg: TrainConfig,
    epoch: int,
    step: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Render ``cfg.render_streams`` streams of ``cfg.render_seconds`` after epoch ``epoch`` into
    ``RUN/renders/epoch-NNN/``; returns the epoch's event (:func:`render_event`), or nothing without renders.
    Each stream is primed with the source's training audio from another place unless ``render_prime_seconds``
    is 0. The model is put back in training mode."""
    if cfg.render_seconds <= 0:
        return []
    from .dataset import excerpts
    from .sampling import render

    prime = None
    if cfg.render_prime_seconds > 0:
        prime = excerpts(dataset, cfg.render_prime_seconds, cfg.render_streams, cfg.seed + epoch)
    paths = render(
        model,
        run.epoch_renders(epoch),
        cfg.render_seconds,
        sample_rate,
        batch_size=cfg.render_streams,
        temperatures=[cfg.render_temperature],
        seed=cfg.seed + epoch,
        label=epoch_name(epoch),
        prime=prime,
        info={"epoch": epoch, "step": step, "prime_seconds": cfg.render_prime_seconds},
        device=device if device.type == "cuda" else "cpu",
        progress=False,
    )
    model.train()
    return [render_event(paths, run, dataset, sample_rate, epoch, step, q_levels=model.config.q_levels)]


def render_event(
    paths: list[Path], run: RunDir, dataset: Path, sample_rate: int, epoch: int, step: int, q_levels: int = 256
) -> dict[str, Any]:
    """The metrics event of an epoch's renders: the median stream's diagnosis (``path``, ``category``,
    ``sentence``, ``resemblance``: of the stream ranked ``(n - 1) // 2`` from the closest, so a real render
    and the lower median of an even count), the largest ``copy_share`` of any stream, ``source_category``
    (the source's own category, :func:`~samplernn_lab.analysis.source_kind`: ``auto`` does not hold a drone's
    tone against it), and ``streams``, each stream's own (add further measures here). ``q_levels``: the levels
    the model plays (the hiss-bed rule allows for the hiss fewer leave)."""
    from .analysis import diagnose, source_kind
    from .audio import load

    profile = _source_profile(dataset, sample_rate, q_levels)
    streams = []
    for path in paths:
        d = diagnose(load(path)[0], sample_rate, profile)
        streams.append(
            {
                "path": str(path.relative_to(run.root)),
                "category": d.category,
                "sentence": d.sentence,
                "resemblance": round(d.features["resemblance"], 4),
                "copy_share": round(d.features["copy_share"], 4),
            }
        )
    median = sorted(streams, key=lambda s: s["resemblance"])[(len(streams) - 1) // 2]
    return {
        "event": "render",
        "epoch": epoch,
        "step": step,
        **{k: median[k] for k in ("path", "category", "sentence", "resemblance")},
        "copy_share": max(s["copy_share"] for s in streams),
        "source_category": source_kind(profile),
        "streams": [{k: v for k, v in s.items() if k != "sentence"} for s in streams],
    }


_PROFILES: dict[tuple[str, int, int, int], object] = {}


def _source_profile(dataset: Path, sample_rate: int, q_levels: int = 256):
    """The source's resemblance profile, made once per dataset, rate and levels (every epoch's render uses it)."""
    from .dataset import source_audio, source_category
    from .resemblance import SourceProfile

    # the manifest's time too: a dataset prepared again in the same folder (a re-run notebook 01) is another sound
    key = (str(dataset.resolve()), sample_rate, (Path(dataset) / "manifest.json").stat().st_mtime_ns, q_levels)
    if key not in _PROFILES:
        _PROFILES.clear()
        _PROFILES[key] = SourceProfile(
            source_audio(dataset), sample_rate, kind=source_category(dataset), q_levels=q_levels
        )
    return _PROFILES[key]

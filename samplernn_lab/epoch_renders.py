"""The short render after each epoch, and its event in ``metrics.jsonl``: what the triage listens to.

Each render is diagnosed against the source of the dataset (category, resemblance, the share copied); the
``auto`` checkpoint is chosen from these events (:func:`samplernn_lab.rundir.liveliest_epoch`).
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
    """Render ``cfg.render_seconds`` after epoch ``epoch`` into ``RUN/renders/epoch-NNN/``; one event per
    file (:func:`render_event`). Primed with the source's training audio unless ``render_prime_seconds`` is
    0. The model is put back in training mode."""
    if cfg.render_seconds <= 0:
        return []
    from .dataset import excerpts
    from .sampling import render

    prime = None
    if cfg.render_prime_seconds > 0:
        prime = excerpts(dataset, cfg.render_prime_seconds, 1, cfg.seed + epoch)
    paths = render(
        model,
        run.epoch_renders(epoch),
        cfg.render_seconds,
        sample_rate,
        temperatures=[cfg.render_temperature],
        seed=cfg.seed + epoch,
        label=epoch_name(epoch),
        prime=prime,
        info={"epoch": epoch, "step": step, "prime_seconds": cfg.render_prime_seconds},
        device=device if device.type == "cuda" else "cpu",
        progress=False,
    )
    model.train()
    return [render_event(path, run, dataset, sample_rate, epoch, step) for path in paths]


def render_event(path: Path, run: RunDir, dataset: Path, sample_rate: int, epoch: int, step: int) -> dict[str, Any]:
    """The metrics event of one per-epoch render: its diagnosis (add further measures of it here)."""
    from .analysis import diagnose
    from .audio import load

    d = diagnose(load(path)[0], sample_rate, _source_profile(dataset, sample_rate))
    return {
        "event": "render",
        "epoch": epoch,
        "step": step,
        "path": str(path.relative_to(run.root)),
        "category": d.category,
        "sentence": d.sentence,
        "resemblance": round(d.features["resemblance"], 4),
        "copy_share": round(d.features["copy_share"], 4),
    }


_PROFILES: dict[tuple[str, int], object] = {}


def _source_profile(dataset: Path, sample_rate: int):
    """The source's resemblance profile, made once per dataset and rate (every epoch's render uses it)."""
    from .dataset import source_audio
    from .resemblance import SourceProfile

    key = (str(dataset.resolve()), sample_rate)
    if key not in _PROFILES:
        _PROFILES.clear()
        _PROFILES[key] = SourceProfile(source_audio(dataset), sample_rate)
    return _PROFILES[key]

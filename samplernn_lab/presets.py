"""The presets, re-exported: they live in :mod:`samplernn_lab.config` with every other setting."""

from __future__ import annotations

from .config import PRESETS, Preset, apply_overrides, get_preset, parse_value, poster, sketch

__all__ = ["PRESETS", "Preset", "apply_overrides", "get_preset", "parse_value", "poster", "sketch"]

"""The sampler's former home, kept so that ``samplernn_lab.sample.generate`` (and friends) still import.

Everything lives in :mod:`samplernn_lab.sampling` now.
"""

from .sampling import Folded, Sampler, Tuning, fold, generate, prime_codes, render, render_checkpoint

__all__ = ["Folded", "Sampler", "Tuning", "fold", "generate", "prime_codes", "render", "render_checkpoint"]

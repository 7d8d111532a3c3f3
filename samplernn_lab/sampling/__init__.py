"""Fast generation: the same distribution as the model, without the per-sample overhead.

The package, by job (see README "How sampling is made fast"):

* :mod:`.folding`: weights folded into plain tensors, packed dense layers, a frame tier's step;
* :mod:`.kernels`: the sample-level loop of a bottom frame, as a numba kernel and as torch ops;
* :mod:`.backends`: those two behind one interface, and which one runs (:class:`Tuning`);
* :mod:`.sampler`: :class:`Sampler`, :func:`generate`, priming;
* :mod:`.render`: WAV files and their sidecars, from a model or a run folder.
"""

from .backends import Tuning, choose_backend
from .folding import Folded, fold
from .render import render, render_checkpoint
from .sampler import Sampler, generate, prime_codes

__all__ = [
    "Folded",
    "Sampler",
    "Tuning",
    "choose_backend",
    "fold",
    "generate",
    "prime_codes",
    "render",
    "render_checkpoint",
]

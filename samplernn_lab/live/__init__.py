"""Playing a trained model live: a TorchScript module for nn~ (Max/MSP, PureData) and its export.

:mod:`.module` holds the scripted module (nn~'s conventions, the sampling loop), :mod:`.resample` the
streaming rate converter inside it, :mod:`.export` the ``samplernn-lab export`` verb.
"""

from .export import build, export, script

__all__ = ["build", "export", "script"]

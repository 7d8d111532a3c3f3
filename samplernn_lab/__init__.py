"""samplernn-lab: train SampleRNN on one sound, listen to what it invents.

The public names, one per stage: :func:`prepare` (dataset), :class:`SampleRNN` /
:class:`ModelConfig` (model), :func:`get_preset`, :func:`train`, :func:`generate` /
:func:`render` (sampling), :func:`diagnose` (analysis).
"""

from .dataset import DataConfig, prepare
from .errors import LabError
from .model import ModelConfig, SampleRNN
from .presets import Preset, get_preset
from .sampling import generate, render
from .train import TrainConfig, train

__version__ = "0.1.0"


def __getattr__(name: str):
    # analysis pulls in librosa; import it only when asked for
    if name in ("diagnose", "compare"):
        from . import analysis

        return getattr(analysis, name)
    raise AttributeError(name)


__all__ = ["DataConfig", "LabError", "ModelConfig", "Preset", "SampleRNN", "TrainConfig", "compare", "diagnose",
           "generate", "get_preset", "prepare", "render", "train"]

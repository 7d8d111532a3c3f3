"""samplernn-lab: train SampleRNN on one sound, listen to what it invents.

The public names, one per stage: :func:`prepare` (dataset), :class:`SampleRNN` /
:class:`ModelConfig` (model), :func:`get_preset`, :func:`train`, :func:`generate` /
:func:`render` (sampling), :func:`diagnose` (analysis).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("samplernn-lab")  # the one version source: pyproject.toml, via the package metadata
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from .config import DataConfig, ModelConfig, Preset, TrainConfig, get_preset  # noqa: E402
from .dataset import prepare  # noqa: E402
from .errors import LabError  # noqa: E402
from .model import SampleRNN  # noqa: E402
from .sampling import generate, render  # noqa: E402
from .train import train  # noqa: E402


def __getattr__(name: str):
    # analysis pulls in librosa; import it only when asked for
    if name in ("diagnose", "compare"):
        from . import analysis

        return getattr(analysis, name)
    raise AttributeError(name)


__all__ = [
    "DataConfig",
    "LabError",
    "ModelConfig",
    "Preset",
    "SampleRNN",
    "TrainConfig",
    "compare",
    "diagnose",
    "generate",
    "get_preset",
    "prepare",
    "render",
    "train",
]

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from signals import bell  # noqa: E402


@pytest.fixture
def bell_wav(tmp_path) -> Path:
    """A 3 s, 16 kHz bell."""
    path = tmp_path / "bell.wav"
    sf.write(path, bell(16000, 3.0), 16000, subtype="PCM_16")
    return path


@pytest.fixture
def make_wav(tmp_path):
    def make(name: str, audio: np.ndarray, sr: int = 16000, subtype: str = "PCM_16") -> Path:
        path = tmp_path / name
        sf.write(path, audio, sr, subtype=subtype)
        return path

    return make

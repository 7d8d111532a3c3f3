"""The resemblance and copy measures, on synthesised sounds whose relations are known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.signal

from samplernn_lab.analysis import compare, diagnose
from samplernn_lab.resemblance import SourceProfile, copy_share, phase_randomised, resemblance
from signals import bell_peal, noise, tone

SR = 16000


def grains(seconds: float, seed: int) -> np.ndarray:
    """Footsteps on gravel: band-passed noise bursts at random times; no two stretches share a waveform."""
    rng = np.random.default_rng(seed)
    n = int(SR * seconds)
    out = np.zeros(n)
    sos = scipy.signal.butter(2, (300, 3000), btype="bandpass", fs=SR, output="sos")
    for onset in rng.uniform(0, seconds - 0.3, int(3 * seconds)):
        i = int(onset * SR)
        burst = scipy.signal.sosfilt(sos, rng.normal(0, 1, 3000)) * np.exp(-np.arange(3000) / 600)
        out[i : i + 3000] += burst
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resemblance_orders_the_cases_a_listener_would(seed):
    source = bell_peal(SR, 12.0, rate=4.0, seed=seed)
    other = bell_peal(SR, 6.0, rate=4.0, seed=seed + 100)  # another stretch of the same peal
    n = len(other)
    profile = SourceProfile(source, SR)
    score = {
        "other stretch": profile.resemblance(other),
        # a transformed copy: muffled (a transposed copy reads further: the measure hears pitch)
        "muffled": profile.resemblance(scipy.signal.sosfilt(scipy.signal.butter(4, 1500, fs=SR, output="sos"), other)),
        "coloured noise": profile.resemblance(phase_randomised(other, seed=3)),
        "white noise": profile.resemblance(noise(SR, 6.0, 0.1)),
        "steady tone": profile.resemblance(tone(523.3, SR, 6.0, 0.3)),
        "silence": profile.resemblance(np.zeros(n)),
    }
    assert score["other stretch"] < 0.6, score
    assert score["other stretch"] < score["muffled"] < score["coloured noise"], score
    assert 0.7 < score["coloured noise"] < 1.4, score
    for failure in ("white noise", "steady tone", "silence"):
        assert score[failure] > max(1.0, score["coloured noise"]), (failure, score)


def test_resemblance_counts_a_hiss_bed_under_the_source():
    source = bell_peal(SR, 12.0, rate=2.0, seed=4)
    other = bell_peal(SR, 6.0, rate=2.0, seed=5)
    hiss = other + np.random.default_rng(0).normal(0, 0.02, len(other)).astype(np.float32)
    assert resemblance(hiss, source, SR) > 2 * resemblance(other, source, SR)


def test_copy_share_finds_a_pasted_render_and_passes_a_new_one():
    source = grains(10.0, seed=0)
    pasted = np.concatenate([source[SR : 4 * SR], grains(2.0, seed=9), source[7 * SR : 8 * SR]])  # 4 of 6 s pasted
    assert 0.5 <= copy_share(pasted, source, SR) <= 0.8
    assert copy_share(grains(6.0, seed=1), source, SR) == 0.0
    assert copy_share(np.zeros(3 * SR), source, SR) == 0.0  # silence copies nothing
    # a copy at another gain is still a copy
    assert copy_share(0.3 * source[2 * SR : 5 * SR], source, SR) > 0.9


def test_compare_and_diagnose_against_the_source():
    source = bell_peal(SR, 12.0, rate=3.0, seed=6)
    other = bell_peal(SR, 6.0, rate=3.0, seed=7)
    c = compare(other, source, SR)
    assert c["resemblance"] < 0.5 and c["copy_share"] < 0.5 and "Resemblance" in c["sentence"]
    json.dumps(c)
    assert diagnose(other, SR, source).category == "varied"
    # a hiss band around the source's partials moves with them, but it is the study's noise failure
    rng = np.random.default_rng(1)
    band = scipy.signal.sosfilt(
        scipy.signal.butter(2, (400, 2500), btype="bandpass", fs=SR, output="sos"), rng.normal(0, 0.3, len(other))
    )
    hissy = 0.3 * other + band * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * np.arange(len(other)) / SR))
    plain = diagnose(hissy, SR)
    judged = diagnose(hissy, SR, source)
    assert judged.features["resemblance"] > 1.0
    assert judged.category == "noise" and "further from its source" in judged.sentence
    assert plain.category == "varied"  # without the source the same render passes as varied


def test_a_profile_takes_a_known_kind_and_refuses_a_misspelt_one():
    from samplernn_lab.analysis import source_kind
    from samplernn_lab.errors import LabError

    peal = bell_peal(16000, 4.0)
    assert source_kind(SourceProfile(peal, 16000)) == "varied"
    assert source_kind(SourceProfile(peal, 16000, kind="tone")) == "tone"  # a dataset's, measured when prepared
    with pytest.raises(LabError, match="source kind must be one of silence, tone, noise, varied or None"):
        SourceProfile(peal, 16000, kind="bells")

"""Listen with numbers: is a render one of the three failures (silence, tone, noise) or something varied?

The study behind this lab found that failed trainings fall into three clear categories: the model goes
**silent**, converges on one **steady tone**, or produces featureless **noise**. Anything else is
**varied**: the mix of tones and transients a successful training produces. :func:`diagnose` measures a
handful of frame features and walks a short decision list; :func:`compare` sets a render against its
source (timbre, rhythm, level).

Decision list (first match wins; constants below)
--------------------------------------------------
1. ``silence``: the loud frames (``LOUD_PERCENTILE``-th percentile of frame levels) stay below
   ``SILENCE_DBFS``.
2. ``tone``: one strong spectral peak holds the sound (``tonal_dominance >= TONE_MIN_DOMINANCE``), its
   frequency hardly moves (``pitch_stability >= TONE_MIN_PITCH_STABILITY``) and the level is steady
   (``level_spread_db <= TONE_MAX_LEVEL_SPREAD_DB``) and is rarely re-attacked
   (``onset_rate <= TONE_MAX_ONSET_RATE``): a steady tone, tremolo allowed; bells and melodies move in
   pitch, struck bells and tuned drums decay and re-attack.
3. ``noise``: the spectrum is flat within every octave (``noisiness >= NOISE_MIN_NOISINESS``) and the
   level is steady (``level_spread_db <= NOISE_MAX_LEVEL_SPREAD_DB``, ``level_range_db <=
   NOISE_MAX_LEVEL_RANGE_DB``, ``onset_rate <= NOISE_MAX_ONSET_RATE``): hiss, not drums, nor a few strikes
   over a quiet floor.
4. ``varied``: everything else.

With the source known (``diagnose(audio, sr, source)``), a ``varied`` render is called ``noise`` when it is
further from its source than noise of the source's colour (``NOISE_RESEMBLANCE``), or when it is steady (the
noise rule's level and onset limits) and much noisier than its source (``HISS_MIN_NOISINESS``,
``HISS_SOURCE_FACTOR``), or when it has few onsets and no loud events over a quiet floor and the hiss between its
partials (``hiss_db``) stands ``HISS_MARGIN_DB`` over what its source keeps at the run's levels (256 where not
known): a hiss bed carrying the source's partials.

Before measuring, the mean (DC offset) is removed and the signal is high-passed at ``HIGHPASS_HZ``, so a
render with a little DC offset classifies by its content; clipping is reported but not corrected.

Frames are :func:`samplernn_lab.spectral.window_length` long, the power of two nearest 46 ms (2048
samples at 44.1 kHz, 1024 at 16 kHz), with a hop of a quarter frame; ``noisiness`` uses frames four times
longer, to resolve the harmonics of low notes.
Tuned on synthetic signals at 16 and 44.1 kHz and checked on real recordings (a drum break, a tabla
loop, speech, wind chimes, a piano melody, a struck bell: all "varied"; a rubbed glass: "tone").

The frame features and the constants they use (``SILENCE_DBFS``, ``LOUD_PERCENTILE``, ``FMIN_HZ``, ...) live
in :mod:`samplernn_lab.frame_features`; they stay importable from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .errors import LabError
from .frame_features import (  # noqa: F401  (the features and their constants live there)
    _FLOOR_DB,
    ACTIVE_RANGE_DB,
    CATEGORIES,
    CLIP_LEVEL,
    FMIN_HZ,
    HIGHPASS_HZ,
    LOUD_PERCENTILE,
    N_PEAKS,
    ONSET_DELTA_DB,
    OWN_KINDS,
    PEAK_CONTEXT_BINS,
    PEAK_HALF_WIDTH_BINS,
    PEAK_PROMINENCE_DB,
    PITCH_TOLERANCE_SEMITONES,
    SILENCE_DBFS,
    _prepare,
    features,
    is_own_kind,
    onset_times,
)
from .resemblance import SourceProfile, copy_share, resemblance  # noqa: F401  (the measures live there)
from .spectral import as_mono, pad_to_window, window_length

# --- thresholds --------------------------------------------------------------------------------------

# The rules' edition, recorded with the source's category in a dataset's manifest: raise it whenever what a
# source's category depends on changes (the decision list, a threshold, how features() measures, what audio of the
# source is measured), so that a dataset prepared under other rules has its source measured again instead of
# judged by a stale answer (samplernn_lab.dataset.source_category).
CATEGORY_RULES = 1

# A tone puts at least this share of its energy into its few strongest peaks (a sine or a sine with a
# harmonic: ~1.0; white noise ~0.02). Music spans 0.3 (a drum break) to 1.0 (bells, tabla), so the
# conditions after this one are what tell a melody or a bell from a stuck tone.
TONE_MIN_DOMINANCE = 0.5
# ... and its strongest peak stays within PITCH_TOLERANCE_SEMITONES of its median frequency in at least
# this share of frames (a chirp or a melody: far lower).
TONE_MIN_PITCH_STABILITY = 0.8
# ... and its frame levels spread (90th minus 10th percentile) by at most this much: tremolo of +-50 %
# spreads ~9 dB, struck bells and drums 20 dB and more.
TONE_MAX_LEVEL_SPREAD_DB = 15.0
# ... and it is rarely re-attacked: a steady tone has no onsets, a repeatedly struck bell or a tuned drum
# has several per second.
TONE_MAX_ONSET_RATE = 1.0

# Noise is locally flat: the energy-weighted spectral flatness within octave bands is ~0.55 for white
# and pink noise alike, 0.0 for a sine, 0.0-0.2 for speech, piano, bells and tabla, but ~0.37 for a drum
# break full of cymbals, so the level and onset conditions below must hold too.
NOISE_MIN_NOISINESS = 0.35
# ... and stationary: steady hiss spreads ~1 dB; a drum break with noisy cymbals spreads far more.
NOISE_MAX_LEVEL_SPREAD_DB = 10.0
# ... with few attacks: steady noise has none, a drum break 4-6 per second.
NOISE_MAX_ONSET_RATE = 1.0
# ... and no loud events over a quiet floor: the loud frames stand at most this far over the median one
# (steady renders measured 0.1-12.4 dB; a sparse render, two strikes in 30 s over an inaudible floor, 35 dB,
# though its 90th percentile is still the floor: RESULTS, "Sparse strikes are not steady; the hiss bed's level").
NOISE_MAX_LEVEL_RANGE_DB = 20.0

# Offsets and clipping worth a note in the sentence.
DC_NOTE = 0.01
CLIP_NOTE = 0.001
# Timbre / rhythm / level judgements in compare().
TIMBRE_MATCH_DB = 6.0  # long-term spectra within this RMS distance "sound alike"
RHYTHM_MATCH_RATIO = 2.0  # onset rates within this factor of each other
NO_RHYTHM_RATE = 0.2  # onsets per second below which a sound "has no clear rhythm"
ONSET_RATE_EPS = 0.1  # onsets per second added to both rates in the ratio, so silence gives no 0/0
LEVEL_NOTE_DB = 6.0  # level difference worth a sentence

# With its source known, a render further from it than this (1.0 = noise of the source's colour, see
# samplernn_lab.resemblance) is noise, however much it moves.
NOISE_RESEMBLANCE = 1.0
# With its source known, a steady render (level and onsets within the noise rule's limits) at least this noisy
# and HISS_SOURCE_FACTOR times noisier than its source is noise too: a hiss bed carrying the source's partials,
# whose peaks keep it under NOISE_MIN_NOISINESS (0.30-0.34 measured, the glass bells' source 0.00) and which the
# resemblance measure can score below 1 when it is quiet (benchmarks/RESULTS.md, "Dropout"). The demo's renders,
# partials over hiss some 10 dB under them, read 0.12-0.14 (RESULTS, "A quieter hiss bed"): 0.2 let them pass.
# Natural sounds reach 0.1-0.2 too (see NOISE_MIN_NOISINESS): the steadiness and the factor over the source's
# own noisiness keep a faithful render of a breathy or bowed source varied (tests/test_analysis.py).
HISS_MIN_NOISINESS = 0.1
HISS_SOURCE_FACTOR = 3.0
# With its source known, a render with few onsets and no loud events over a quiet floor whose hiss between partials
# (``hiss_db``) stands this far over the hiss its source keeps at the run's levels (``SourceProfile.played_hiss_db``)
# is a hiss bed too, however its held partials swell. The demo's beds stand 16-19 dB over the glass bells' (-40.9 dB),
# a struck batch-32 stream 12 (its onsets keep it varied), the real bell's faithful mu-law decay 6 dB under its
# source's (-10.9 dB): RESULTS, "Sparse strikes are not steady; the hiss bed's level".
HISS_MARGIN_DB = 12.0


@dataclass
class Diagnosis:
    """What a render sounds like, in one word, one sentence and a few numbers.

    Attributes
    ----------
    category : one of ``"silence"``, ``"tone"``, ``"noise"``, ``"varied"``.
    sentence : plain-language verdict, e.g. ``"Steady tone at 3520 Hz: ..."``.
    features : name -> plain float (levels in dBFS, frequencies in Hz, rates per second, shares 0..1).
    """

    category: str
    sentence: str
    features: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """``{"category", "sentence", **features}`` with plain Python floats (JSON-serialisable)."""
        return {"category": self.category, "sentence": self.sentence, **{k: float(v) for k, v in self.features.items()}}


# ------------------------------------------------------------------------------------------------------
# decision


def categorize(f: dict[str, float]) -> str:
    """The decision list of the module docstring, applied to a :func:`features` dict."""
    if f["loud_dbfs"] < SILENCE_DBFS:
        return "silence"
    if (
        f["tonal_dominance"] >= TONE_MIN_DOMINANCE
        and f["pitch_stability"] >= TONE_MIN_PITCH_STABILITY
        and f["level_spread_db"] <= TONE_MAX_LEVEL_SPREAD_DB
        and f["onset_rate"] <= TONE_MAX_ONSET_RATE
    ):
        return "tone"
    if f["noisiness"] >= NOISE_MIN_NOISINESS and _steady(f):
        return "noise"
    return "varied"


def _steady(f: dict[str, float]) -> bool:
    """Level and attacks as steady as hiss (the noise rule's limits)."""
    return (
        f["level_spread_db"] <= NOISE_MAX_LEVEL_SPREAD_DB
        and f["level_range_db"] <= NOISE_MAX_LEVEL_RANGE_DB
        and f["onset_rate"] <= NOISE_MAX_ONSET_RATE
    )


def _hz(f: float) -> str:
    return f"{f / 1000:.1f} kHz" if f >= 10000 else f"{f:.0f} Hz"


def _sentence(category: str, f: dict[str, float]) -> str:
    if category == "silence":
        if f["loud_dbfs"] <= _FLOOR_DB:
            s = "Digital silence: every sample is zero, the model learned nothing audible (a failure mode)."
        else:
            s = (
                f"Silence: even the loudest moments stay at {f['loud_dbfs']:.0f} dBFS, too quiet to hear "
                "(a failure mode)."
            )
    elif category == "tone":
        s = f"Steady tone at {_hz(f['dominant_hz'])}: the model converged on one pitch (a failure mode)."
    elif category == "noise":
        s = f"Noise: a steady hiss centred near {_hz(f['centroid_hz'])} with no pitch or rhythm (a failure mode)."
    else:
        what = []
        if f["pitch_stability"] < TONE_MIN_PITCH_STABILITY:
            what.append("the pitch moves")
        if f["level_spread_db"] > TONE_MAX_LEVEL_SPREAD_DB:
            what.append("the level rises and falls")
        if f["onset_rate"] >= NO_RHYTHM_RATE:
            what.append(
                f"{f['onset_rate']:.1f} onsets per second of which {f['strike_rate']:.1f} strike through the hiss"
            )
        if f["tonal_dominance"] < TONE_MIN_DOMINANCE and f["noisiness"] >= NOISE_MIN_NOISINESS:
            what.append("noisy but uneven")
        detail = ", ".join(what) if what else "it changes over time"
        s = f"Varied ({detail}): the mix of tones and transients of a training that learned something."
    return _with_notes(s, f)


def _with_notes(s: str, f: dict[str, float]) -> str:
    """``s`` with what any render's sentence notes: samples that are not finite, a DC offset, clipping."""
    notes = []
    if f.get("nonfinite_fraction", 0.0) > 0:
        notes.append(f"{100 * f['nonfinite_fraction']:.1f}% of samples are NaN or infinite")
    if abs(f["dc_offset"]) >= DC_NOTE:
        notes.append(f"DC offset of {f['dc_offset']:+.3f}")
    if f["clipped_fraction"] >= CLIP_NOTE:
        notes.append(f"{100 * f['clipped_fraction']:.1f}% of samples are clipped")
    if notes:
        s += " Note: " + "; ".join(notes) + "."
    return s


def diagnose(audio: np.ndarray, sr: int, source: np.ndarray | SourceProfile | None = None) -> Diagnosis:
    """Say whether a render is silence, a steady tone, noise, or varied.

    Parameters
    ----------
    audio : float array, shape (n,), nominally in [-1, 1]; any length (a 0.2 s snippet works).
    sr : sample rate in Hz.
    source : the sound the model was trained on, at ``sr`` (an array (m,) or a
        :class:`~samplernn_lab.resemblance.SourceProfile`), optional. When given, the features gain
        ``resemblance`` and ``copy_share``, and a render further from its source than noise of the
        source's colour (resemblance above ``NOISE_RESEMBLANCE``) is not called varied but noise: a hiss
        band around the source's partials is the study's noise failure even when it moves. So is a steady
        render much noisier than its source (``HISS_MIN_NOISINESS``, ``HISS_SOURCE_FACTOR``), and an unstruck
        one whose hiss stands far over what its source keeps at the profile's levels (``HISS_MARGIN_DB``). A tone or
        noise render of a source that is itself a tone or noise (:func:`source_kind`) keeps its category;
        its sentence says it is the source's own kind, not a failure mode.

    Returns
    -------
    Diagnosis with ``category``, a plain-language ``sentence`` and the :func:`features`.

    Raises
    ------
    LabError
        Empty or non-mono audio, or a non-positive sample rate.
    """
    f = features(audio, sr)
    category = categorize(f)
    if source is not None:
        profile = source if isinstance(source, SourceProfile) else SourceProfile(source, sr)
        f["resemblance"] = profile.resemblance(as_mono(audio))
        f["copy_share"] = copy_share(as_mono(audio), profile.audio, sr)
        if category == "varied" and f["resemblance"] > NOISE_RESEMBLANCE:
            return Diagnosis("noise", _with_notes(_far_sentence(f), f), f)
        bed = _hiss_bed(f, profile) if category == "varied" else None
        if bed is not None:
            return Diagnosis("noise", _with_notes(bed, f), f)
        if is_own_kind(category, source_kind(profile)):
            return Diagnosis(category, _with_notes(_own_kind_sentence(category, f), f), f)
    return Diagnosis(category=category, sentence=_sentence(category, f), features=f)


def source_kind(profile: SourceProfile) -> str:
    """The category of the source itself: the profile's ``kind`` where known (a dataset's, measured when it was
    prepared, or again under today's rules: :func:`samplernn_lab.dataset.source_category`), else
    :func:`categorize` on its whole length.

    A render in the source's own kind of ``OWN_KINDS`` (a steady tone from a drone, noise from a hiss
    recording) is not that failure: :func:`samplernn_lab.rundir.pick_epoch` and the trap watchdog ask.
    """
    return profile.kind if profile.kind is not None else categorize(profile.features)


def _own_kind_sentence(category: str, f: dict[str, float]) -> str:
    if category == "tone":
        what = f"Steady tone at {_hz(f['dominant_hz'])}"
    else:
        what = f"Noise centred near {_hz(f['centroid_hz'])}"
    return f"{what}, as its source is (resemblance {f['resemblance']:.2f}; the source's own kind of sound)."


def _hiss_bed(f: dict[str, float], profile: SourceProfile) -> str | None:
    """The sentence for a hiss bed, or None: a steady render much noisier than its source (``HISS_MIN_NOISINESS``),
    or an unstruck one whose hiss stands far over what its source keeps at the run's levels (``HISS_MARGIN_DB``).
    The source's numbers are measured last, once per profile, and only for a render that passes its own tests."""
    if _steady(f) and f["noisiness"] >= HISS_MIN_NOISINESS and f["noisiness"] >= HISS_SOURCE_FACTOR * profile.noisiness:
        return (
            f"Noise carrying the source's partials: a steady hiss near {_hz(f['centroid_hz'])}, far noisier than "
            f"its source (resemblance {f['resemblance']:.2f}; a failure mode)."
        )
    unstruck = f["onset_rate"] <= NOISE_MAX_ONSET_RATE and f["level_range_db"] <= NOISE_MAX_LEVEL_RANGE_DB
    if unstruck and (over := f["hiss_db"] - profile.played_hiss_db) >= HISS_MARGIN_DB:
        return (
            f"Noise carrying the source's partials: held partials over a hiss {over:.0f} dB above what its source "
            f"keeps at {profile.q_levels} levels, no strikes (resemblance {f['resemblance']:.2f}; a failure mode)."
        )
    return None


def _far_sentence(f: dict[str, float]) -> str:
    return (
        f"Noise around the source's sounds: it moves, but it is further from its source than noise of the "
        f"source's colour (resemblance {f['resemblance']:.2f}; a failure mode)."
    )


def diagnose_file(path: str | os.PathLike, source: str | os.PathLike | SourceProfile | None = None) -> dict:
    """Diagnose an audio file, optionally against its source (a file or a profile at the file's rate).

    Returns ``{"file": str(path), "category", "sentence", **features}``; with a source the features
    include ``resemblance`` and ``copy_share``.
    """
    from .audio import load

    audio, sr = load(path)
    if source is not None and not isinstance(source, SourceProfile):
        source = SourceProfile(load(source, sr)[0], sr)
    if isinstance(source, SourceProfile) and source.sr != sr:
        raise LabError(f"{path}: sample rate {sr} Hz differs from the source profile's {source.sr} Hz")
    return {"file": str(path), **diagnose(audio, sr, source).to_dict()}


# ------------------------------------------------------------------------------------------------------
# render vs source


def _ltas_db(y: np.ndarray, sr: int, n_mels: int = 64) -> np.ndarray:
    """Long-term average mel spectrum in dB, shape (n_mels,), shifted to mean 0 over the audible bands."""
    import librosa

    n_fft = window_length(sr)
    y = pad_to_window(y, n_fft)
    mel = librosa.feature.melspectrogram(
        y=y.astype(np.float32), sr=sr, n_fft=n_fft, hop_length=n_fft // 4, n_mels=n_mels, fmin=FMIN_HZ, fmax=sr / 2
    )
    env = 10 * np.log10(mel.mean(axis=1) + 1e-20)
    env = np.maximum(env, env.max() - 80.0)  # bands below the floor say nothing about timbre
    return env


def compare(render: np.ndarray, source: np.ndarray, sr: int) -> dict:
    """How close is a render to its source in timbre, rhythm and level?

    Parameters
    ----------
    render, source : float arrays, shape (n,) and (m,), same sample rate ``sr`` (Hz); lengths may differ.

    Returns
    -------
    dict of plain floats and a sentence:
    ``envelope_distance_db`` : RMS difference (dB) over 64 mel bands between the long-term average
        spectra, each level-normalised (mean 0 dB), so it measures timbre, not loudness. 0 = same colour;
        under ~6 dB sounds alike; a sine against noise is 20 dB and more.
    ``onset_rate_ratio`` : render onsets per second over the source's, both plus 0.1/s so that zero
        rates give a finite number; 1 = same density of attacks.
    ``render_onset_rate``, ``source_onset_rate`` : onsets per second.
    ``level_difference_db`` : render RMS minus source RMS, dB.
    ``timbre_match``, ``rhythm_match`` : 1.0 or 0.0, the judgements the sentence makes.
    ``resemblance`` : :func:`samplernn_lab.resemblance.resemblance`: 0 like another stretch of the
        source, 1 like noise of the source's colour, above 1 further (tones, silence, white noise).
    ``copy_share`` : :func:`samplernn_lab.resemblance.copy_share`: share of the render replaying the
        source verbatim, 0..1.
    ``sentence`` : e.g. "It reproduced the source's timbre but not its rhythm."
    """
    from .audio import rms_dbfs

    r = _prepare(np.nan_to_num(as_mono(render, "render")), sr)
    s = _prepare(np.nan_to_num(as_mono(source, "source")), sr)
    er, es = _ltas_db(r, sr), _ltas_db(s, sr)
    distance = float(np.sqrt(np.mean(((er - er.mean()) - (es - es.mean())) ** 2)))
    rate_r = len(onset_times(r, sr)) / (len(r) / sr)
    rate_s = len(onset_times(s, sr)) / (len(s) / sr)
    ratio = (rate_r + ONSET_RATE_EPS) / (rate_s + ONSET_RATE_EPS)
    level_r, level_s = max(rms_dbfs(r), _FLOOR_DB), max(rms_dbfs(s), _FLOOR_DB)  # digital silence: -120
    level = float(level_r - level_s)

    timbre = distance <= TIMBRE_MATCH_DB
    no_rhythm = rate_r < NO_RHYTHM_RATE and rate_s < NO_RHYTHM_RATE
    rhythm = no_rhythm or (1 / RHYTHM_MATCH_RATIO <= ratio <= RHYTHM_MATCH_RATIO)
    if level_r < SILENCE_DBFS <= level_s:
        timbre = rhythm = False
        sentence = "The render is silent, so it reproduced nothing of the source"
    elif no_rhythm:
        sentence = (
            "It reproduced the source's timbre; like the source, it has no clear rhythm"
            if timbre
            else "It did not reproduce the source's timbre; like the source, it has no clear rhythm"
        )
    elif timbre and rhythm:
        sentence = "It reproduced the source's timbre and its rhythm"
    elif timbre:
        sentence = "It reproduced the source's timbre but not its rhythm"
    elif rhythm:
        sentence = "It kept the source's rhythm but not its timbre"
    else:
        sentence = "It reproduced neither the source's timbre nor its rhythm"
    details = f"spectra {distance:.1f} dB apart; {rate_r:.1f} onsets/s against {rate_s:.1f} in the source"
    if abs(level) >= LEVEL_NOTE_DB:
        details += f"; {abs(level):.0f} dB {'louder' if level > 0 else 'quieter'}"
    sentence += f" ({details})."
    close = resemblance(render, source, sr)
    copied = copy_share(render, source, sr)
    sentence += f" Resemblance {close:.2f} (0 = the source itself, 1 = noise of its colour)"
    sentence += f", {copied:.0%} copied verbatim." if copied >= 0.005 else "."
    return {
        "envelope_distance_db": distance,
        "onset_rate_ratio": float(ratio),
        "resemblance": close,
        "copy_share": copied,
        "render_onset_rate": float(rate_r),
        "source_onset_rate": float(rate_s),
        "level_difference_db": level,
        "timbre_match": float(timbre),
        "rhythm_match": float(rhythm),
        "sentence": sentence,
    }

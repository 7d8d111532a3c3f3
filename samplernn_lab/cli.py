"""``samplernn-lab VERB ...``: argument parsing only; each verb calls one library function."""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
from pathlib import Path

from .cli_pipeline import _add_pipeline, _batch, _demo, _run
from .errors import LabError
from .files import refuse_existing
from .rundir import LISTEN


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="make a dataset folder from source sounds (copies, offsets, chunks)")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="audio files or folders of audio files")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument(
        "--preset", help="take the data settings of this preset (sketch, poster); default: the defaults below"
    )
    p.add_argument("--sample-rate", type=int, help="Hz (default 44100)")
    p.add_argument("--copies", type=int, help="copies of each source (default 8)")
    p.add_argument("--chunk-seconds", type=float, help="chunk length in seconds (default 8)")
    p.add_argument("--val-fraction", type=float, help="held-out share for validation (default 0.1)")
    p.add_argument("--test-fraction", type=float, help="held-out share for test (default 0.1)")
    p.add_argument("--gain-jitter-db", type=float, help="random gain per copy, +-dB (default 0)")
    p.add_argument(
        "--pitch-jitter-cents", type=float, help="random pitch (and speed) per training copy, +-cents (default 0)"
    )
    p.add_argument("--crossfade-ms", type=float, help="crossfade at every join (default 10 ms)")
    p.add_argument("--seed", type=int, help="(default 0)")
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="FIELD=VALUE",
        help="override preset fields (those of the data are used here)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a dataset folder made by prepare")


_PREPARE_FLAGS = (
    "sample_rate",
    "copies",
    "chunk_seconds",
    "val_fraction",
    "test_fraction",
    "gain_jitter_db",
    "pitch_jitter_cents",
    "crossfade_ms",
    "seed",
)


def _prepare_config(a):
    """The data settings of ``prepare``: the preset's (or the defaults), then ``--set``, then the flags."""
    from .config import DataConfig, Preset, apply_overrides, get_preset

    preset = get_preset(a.preset) if a.preset else Preset(data=DataConfig())
    overrides = list(a.set) + [f"data.{k}={getattr(a, k)}" for k in _PREPARE_FLAGS if getattr(a, k) is not None]
    return apply_overrides(preset, overrides).data


def _prepare(a) -> None:
    from .dataset import prepare, read_manifest

    cfg = _prepare_config(a)
    out = prepare(a.sources, a.out, cfg, overwrite=a.overwrite)
    counts = read_manifest(out)["counts"]
    print(f"wrote {out}: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" chunks of {cfg.chunk_seconds:g} s")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a SampleRNN on a dataset folder")
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--preset", help="sketch (CPU, minutes; the default) or poster (the study's, GPU); with --resume, the run's own"
    )
    p.add_argument("--max-minutes", type=float, help="stop after this many minutes (in all)")
    p.add_argument("--epochs", type=int, help="stop after this many epochs (in all)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (in all)")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from RUN/checkpoints/last.pt with the run's own settings and budgets (budgets given now "
        "replace them; all count the whole run)",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present")
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="FIELD=VALUE",
        help="override preset fields (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true")


def _train(a) -> int:
    from .presets import get_preset
    from .train import train

    overrides = list(a.set)
    for name in ("max_minutes", "epochs", "max_steps", "seed"):
        if getattr(a, name) is not None:
            overrides.append(f"train.{name}={getattr(a, name)}")
    preset = _resumed_preset(a.out, overrides, a.preset) if a.resume else None
    preset = preset or get_preset(a.preset or "sketch", overrides)
    result = train(
        a.dataset, a.out, preset.model, preset.train, resume=a.resume, device=a.device, progress=not a.no_progress
    )
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for all
        return 130 if result.status == "interrupted" else 0
    best = f", best validation {result.best_val_bits:.3f} bits/sample" if result.best_val_bits is not None else ""
    if result.status == "interrupted":
        print(
            f"interrupted at step {result.step}: checkpoint saved in {result.run}/checkpoints/last.pt; "
            f"continue with --resume"
        )
        return 130
    print(f"{result.status}: {result.epoch} epochs, {result.step} steps{best}; run in {result.run}")
    return 0


def _resumed_preset(out: str, overrides: list[str], preset: str | None = None):
    """For ``--resume``: the run's own training settings (its budgets among them) with what is given now on top,
    not a preset's: a run resumed with no flags goes on to the budget it was started with. A setting given now
    that differs from the run's own is refused unless a resume may change it (``train_start.RESUMABLE``): it
    would be dropped; so is a ``preset`` (with the overrides on it) whose settings are not the run's. None where
    the run folder has no settings to read (training then says what is missing)."""
    from .config import DataConfig, ModelConfig, Preset, TrainConfig, apply_overrides, parse_overrides, setting_owner
    from .presets import get_preset
    from .rundir import RunDir
    from .train_start import RESUMABLE

    run = RunDir(out)
    if not run.config.is_file():
        return None
    recorded = run.read_config()
    try:
        saved = Preset(ModelConfig(**recorded.get("model", {})), TrainConfig(**recorded.get("train", {})), DataConfig())
    except (TypeError, LabError) as e:
        raise LabError(f"{run.config}: settings this version cannot read ({e})") from None
    given = apply_overrides(saved, overrides)
    fixed = []
    for key in parse_overrides(overrides):
        part, name = setting_owner(key)
        if part == "train" and name in RESUMABLE:
            continue
        was = recorded.get(part, {}).get(name) if isinstance(recorded.get(part), dict) else None
        if _plain(getattr(getattr(given, part), name)) != _plain(was):  # the same value again is no change
            fixed.append(f"{part}.{name}")
    by_preset = []
    if preset is not None:  # the original command with --resume added names the run's own preset: no change
        chosen = apply_overrides(get_preset(preset), overrides)
        for part in ("model", "train"):
            for name, was in (recorded.get(part) or {}).items():
                if (part == "train" and name in RESUMABLE) or not hasattr(getattr(chosen, part), name):
                    continue
                if _plain(getattr(getattr(chosen, part), name)) != _plain(was) and f"{part}.{name}" not in fixed:
                    by_preset.append(f"{part}.{name}")
    if fixed or by_preset:
        named = ", ".join(fixed + ([f"--preset {preset} sets {', '.join(by_preset)}"] if by_preset else []))
        # a preset's defaults may have moved since the run began (a newer lab): leaving --preset out resumes it
        leave = "; leave out --preset to resume with the run's own" if by_preset else ""
        raise LabError(
            f"train --resume: {named}, which cannot change in a resumed run (it keeps its own settings); a resume "
            f"may change {', '.join(RESUMABLE)}{leave}"
        )
    return given


def _plain(value):
    """A setting as config.json holds it (tuples as lists), to compare a given value with a recorded one."""
    return list(value) if isinstance(value, tuple) else value


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="render audio from a run's checkpoint")
    p.add_argument("run", metavar="RUN", help="run folder (or a checkpoint file)")
    p.add_argument(
        "--checkpoint",
        default=LISTEN,
        help="auto (the epoch whose renders were closest to the source, moving preferred to a tone: what the "
        "chain and notebook 3 render), best (lowest validation NLL), last, epoch-NNN or a path (default auto)",
    )
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--batch", type=int, default=1, help="streams per temperature")
    p.add_argument("--temperature", type=float, nargs="+", default=None, help="one or more; 0 = greedy (default 1)")
    p.add_argument(
        "--temperature-curve",
        nargs="+",
        metavar="CURVE",
        help="temperature over time instead of --temperature: seconds:temperature breakpoints, linear between "
        "them, e.g. '0:1.0,8:0.8,20:1.1' (the last value holds); several curves: --batch streams each",
    )
    p.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        metavar="P",
        help="nucleus sampling: only the most likely codes whose probabilities sum to P (0 < P <= 1; "
        "default 1 = the whole distribution)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "int8"],
        help="weights of the frame tiers and the MLP (default fp32: the model's distribution; bf16/int8 "
        "read fewer bytes, within a small KL of it)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prime", help="audio file to continue from (at the run's sample rate)")
    p.add_argument(
        "--prime-seconds",
        type=float,
        default=0.0,
        help="without --prime: continue this many seconds of the run's training audio (default 0)",
    )
    p.add_argument("--out", required=True, help="folder for the WAVs and their JSON sidecars")
    p.add_argument("--overwrite", action="store_true", help="replace renders of the same names in --out")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument(
        "--rescue",
        action="store_true",
        help="re-prime a stream from the training audio when it falls silent or locks into a steady "
        "tone for a few seconds; where and why goes into the sidecar JSON (default off)",
    )


def _generate(a) -> None:
    from .sampling import render_checkpoint
    from .sampling.temperature import TemperatureCurve

    if a.temperature_curve and a.temperature:
        raise LabError("--temperature and --temperature-curve: give one of them")
    if a.prime and a.prime_seconds:
        raise LabError("--prime and --prime-seconds: give one of them")
    if a.prime_seconds < 0:
        raise LabError(f"--prime-seconds must not be negative, got {a.prime_seconds:g}")
    curves = [TemperatureCurve.parse(c) for c in a.temperature_curve] if a.temperature_curve else None
    paths = render_checkpoint(
        a.run,
        a.out,
        a.seconds,
        which=a.checkpoint,
        batch_size=a.batch,
        temperatures=a.temperature or [1.0],
        temperature_curves=curves,
        seed=a.seed,
        prime=a.prime,
        prime_seconds=a.prime_seconds,
        device=a.device,
        rescue=a.rescue,
        top_p=a.top_p,
        precision=a.precision,
        overwrite=a.overwrite,
    )
    for p in paths:
        print(p)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="a run's checkpoint as a TorchScript file for nn~ (Max/MSP, PureData)")
    p.add_argument("run", metavar="RUN", help="run folder (or a checkpoint file)")
    p.add_argument(
        "--checkpoint",
        default=LISTEN,
        help="auto (what the chain renders), best, last, epoch-NNN or a path (default auto)",
    )
    p.add_argument("--out", required=True, help="file to write (FILE.ts)")
    p.add_argument(
        "--sample-rate",
        type=int,
        default=48000,
        help="the host's rate in Hz (default 48000; nn~ sets its own when it loads the file)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "int8"],
        help="weights of the frame tiers and the MLP (default fp32)",
    )
    p.add_argument(
        "--prime-seconds",
        type=float,
        default=0.25,
        help="start from (and reset to) this much of the run's training audio (default 0.25; 0: silence)",
    )
    p.add_argument("--prime", help="start from this audio file instead (at the run's sample rate)")
    p.add_argument("--seed", type=int, default=0, help="the sampling noise's seed (an attribute in the host)")
    p.add_argument("--overwrite", action="store_true", help="replace FILE.ts if it exists")


def _export(a) -> None:
    from .live import export
    from .rundir import resolve

    if os.path.isdir(a.out):
        raise LabError(f"{a.out}: is a folder; --out names the .ts file to write")
    if not a.overwrite:
        refuse_existing([a.out])
    checkpoint = resolve(a.run, a.checkpoint)  # named in the message: auto's pick is not obvious
    path = export(
        a.run,
        a.out,
        which=str(checkpoint),
        host_rate=a.sample_rate,
        precision=a.precision,
        prime_seconds=a.prime_seconds,
        prime=a.prime,
        seed=a.seed,
    )
    print(f"{path}: {checkpoint.name} of {a.run}")
    print(f"  load it with [nn~ {path.name} forward] (temperature in, audio out) or [nn~ {path.name} follow]")
    if a.precision == "fp32":  # measured: int8 plays ~1.1-1.2x faster (benchmarks/RESULTS.md, "Live")
        print("  more headroom for a host on a small CPU: --precision int8 (needs nn~ with libtorch 2.3 or later)")


def _add_diagnose(sub) -> None:
    p = sub.add_parser("diagnose", help="name the category of renders: silence, tone, noise or varied")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument(
        "--source",
        metavar="SOURCE",
        help="the sound the renders were trained on: adds resemblance "
        "(0 = like the source, 1 = like noise of its colour) and the share copied verbatim; a render's JSON "
        "sidecar (written by generate) gives the levels it was played with, else 256",
    )


def _diagnose(a) -> None:
    import numpy as np

    from .analysis import SourceProfile, diagnose_file
    from .audio import load
    from .spectral import SILENT_PEAK

    profiles: dict[tuple[int, int | None], SourceProfile] = {}  # one per sample rate and levels among the files

    def source_at(path: str) -> SourceProfile | None:
        if a.source is None:
            return None
        import soundfile as sf

        try:
            sr = sf.info(path).samplerate
        except RuntimeError:
            sr = load(path)[1]
        levels = _render_levels(path)
        if (sr, levels) not in profiles:
            audio = load(a.source, sr)[0]
            if float(np.max(np.abs(audio))) < SILENT_PEAK:  # no level to compare at: every render would read ~1e6
                raise LabError(f"{a.source}: source is silent (peak below -80 dBFS): nothing to compare a render with")
            profiles[sr, levels] = SourceProfile(audio, sr, **({"q_levels": levels} if levels else {}))
        return profiles[sr, levels]

    rows = [diagnose_file(f, source_at(f)) for f in a.files]
    print(json.dumps(rows, indent=1) if a.json else format_table(rows))


def _render_levels(path: str) -> int | None:
    """The levels a render was played with, from the JSON sidecar ``generate`` writes beside it (its
    ``q_levels``); None where there is none or it says nothing usable (the source profile's default then)."""
    try:
        levels = json.loads(Path(path).with_suffix(".json").read_text()).get("q_levels")
    except (OSError, ValueError, AttributeError):
        return None
    return levels if isinstance(levels, int) and not isinstance(levels, bool) and levels >= 2 else None


def _truncate(text: str, width: int, keep_end: bool = False) -> str:
    if len(text) <= width:
        return text
    return "\u2026" + text[-(width - 1) :] if keep_end else text[: width - 1] + "\u2026"


def format_table(rows: list[dict], sentence_width: int = 60, file_width: int = 40) -> str:
    """A plain-text table of :func:`samplernn_lab.analysis.diagnose_file` rows for the terminal.

    Columns: file (long paths keep their end), category, rms dBFS, flatness, dominance, onsets/s,
    sentence (cut to ``sentence_width`` characters). Missing values show as ``-``.
    """
    headers = ["file", "category", "rms dBFS", "flatness", "dominance", "onsets/s", "sentence"]
    numbers = [("rms_dbfs", ".1f"), ("spectral_flatness", ".3f"), ("tonal_dominance", ".2f"), ("onset_rate", ".1f")]
    if any("resemblance" in r for r in rows):  # diagnosed against a source
        headers[-1:-1] = ["resemblance", "copied"]
        numbers += [("resemblance", ".2f"), ("copy_share", ".0%")]

    def num(row: dict, key: str, fmt: str) -> str:
        v = row.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) and math.isfinite(v) else "-"

    body = [
        [
            _truncate(str(r.get("file", "-")), file_width, keep_end=True),
            str(r.get("category", "-")),
            *(num(r, k, fmt) for k, fmt in numbers),
            _truncate(str(r.get("sentence", "")), sentence_width),
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(headers)]
    right = set(range(2, len(headers) - 1))  # numbers align right

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(b) for b in body)])


def _add_figures(sub) -> None:
    p = sub.add_parser("figures", help="the poster's figure: source vs renders, waveform and spectrogram")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("renders", nargs="+", metavar="RENDER")
    p.add_argument("--out", required=True, help="figure file (.png; a .pdf is written beside it)")
    p.add_argument("--low-hz", type=float, default=1000.0, help="top of the enlarged low range (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace the .png/.pdf if they exist")


def _figures(a) -> None:
    from .figure_parts import figure_paths
    from .figures import poster_figure_files

    if not a.overwrite:
        refuse_existing(figure_paths(a.out))
    for p in poster_figure_files(a.source, a.renders, a.out, low_hz=a.low_hz):
        print(p)


VERBS = {
    "prepare": _prepare,
    "train": _train,
    "generate": _generate,
    "export": _export,
    "diagnose": _diagnose,
    "figures": _figures,
    "run": _run,
    "batch": _batch,
    "demo": _demo,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samplernn-lab", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    for add in (_add_prepare, _add_train, _add_generate, _add_export, _add_diagnose, _add_figures, _add_pipeline):
        add(sub)
    return parser


_MACHINE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = VERBS[args.verb](args)
    except LabError as e:
        print(f"samplernn-lab {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = " (the same command with --resume goes on from where it stopped)" if args.verb == "run" else ""
        print(f"samplernn-lab {args.verb}: interrupted{again}", file=sys.stderr)
        return 130
    except OSError as e:  # the machine's doing, not a bug: a full disk, a read-only folder, no permission
        if e.errno not in _MACHINE_ERRORS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"samplernn-lab {args.verb}: error: {where}{e.strerror}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())

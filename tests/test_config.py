"""Every setting is checked when it is set (CLI, notebooks, Python); --set accumulates; prepare takes presets."""

import json
from dataclasses import replace

import pytest
import soundfile as sf

from samplernn_lab import DataConfig, ModelConfig, TrainConfig, get_preset
from samplernn_lab.cli import build_parser, main
from samplernn_lab.config import SettingError
from samplernn_lab.dataset import prepare, read_manifest
from signals import tone_plus_noise


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfg")
    sf.write(root / "tpn.wav", tone_plus_noise(16000, 1.5), 16000, subtype="PCM_16")
    return prepare(
        [root / "tpn.wav"], root / "ds", DataConfig(sample_rate=16000, copies=1, chunk_seconds=0.25), progress=False
    )


# the six of issue 11, then a few more of each kind
BAD = [
    ("dim=0", "dim"),
    ("rnn_type=foo", "rnn_type"),
    ("frame_sizes=[0]", "frame_sizes"),
    ("seq_len=0", "seq_len"),
    ("batch_size=0", "batch_size"),
    ("epochs=ten", "epochs"),
    ("lr=-1", "lr"),
    ("amp=yes", "amp"),
    ("quantization=alaw", "quantization"),
    ("frame_sizes=[]", "frame_sizes"),
    ("q_levels=1.5", "q_levels"),
    ("max_minutes=nan", "max_minutes"),
    ("clock=cpu", "clock"),
]


@pytest.mark.parametrize("setting, field", BAD)
def test_a_bad_set_is_one_line_naming_the_field_exit_2_and_writes_nothing(dataset, tmp_path, capsys, setting, field):
    out = tmp_path / "run"
    code = main(["train", str(dataset), "--out", str(out), "--no-progress", "--set", setting])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and f"{field}=" in err and "expected" in err, err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize(
    "make",
    [
        lambda: ModelConfig(dim=0),
        lambda: replace(ModelConfig(), rnn_type="foo"),
        lambda: setattr(TrainConfig(), "batch_size", 0),
        lambda: setattr(TrainConfig(), "epochs", "ten"),
        lambda: DataConfig(val_fraction=0.7),
        lambda: get_preset("sketch", {"seq_len": 0}),
    ],
)
def test_python_and_notebooks_get_the_same_check(make):
    with pytest.raises(SettingError) as e:
        make()
    assert "\n" not in str(e.value) and "expected" in str(e.value)
    assert isinstance(e.value, ValueError)  # callers that caught ValueError still do


def test_good_values_are_stored_as_their_field_says():
    cfg = TrainConfig(lr=1, epochs=None)
    assert isinstance(cfg.lr, float) and cfg.epochs is None
    assert ModelConfig(frame_sizes=[4, 2]).frame_sizes == (4, 2)


def test_repeated_set_accumulates():
    parser = build_parser()
    cases = {
        "train": ["ds", "--out", "r"],
        "run": ["a.wav", "--out", "r"],
        "prepare": ["a.wav", "--out", "d"],
        "batch": ["a.wav", "--out", "b"],
    }
    for verb, rest in cases.items():
        args = parser.parse_args([verb, *rest, "--set", "dim=16", "--set", "lr=0.01", "seq_len=256"])
        assert args.set == ["dim=16", "lr=0.01", "seq_len=256"], verb


def test_train_applies_every_set(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            str(dataset),
            "--out",
            str(out),
            "--no-progress",
            "--max-steps",
            "2",
            "--set",
            "dim=16",
            "--set",
            "embed_size=8",
            "--set",
            "seq_len=256",
            "batch_size=2",
            "render_seconds=0",
        ]
    )
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["dim"] == 16 and config["model"]["embed_size"] == 8
    assert config["train"]["seq_len"] == 256 and config["train"]["batch_size"] == 2


def test_prepare_takes_a_preset_and_sets(tmp_path, capsys):
    src = tmp_path / "tpn.wav"
    sf.write(src, tone_plus_noise(16000, 1.5), 16000, subtype="PCM_16")
    code = main(
        [
            "prepare",
            str(src),
            "--out",
            str(tmp_path / "ds"),
            "--preset",
            "sketch",
            "--set",
            "chunk_seconds=0.25",
            "--set",
            "copies=1",
            "--seed",
            "3",
        ]
    )
    assert code == 0, capsys.readouterr().err
    settings = read_manifest(tmp_path / "ds")["settings"]
    sketch = get_preset("sketch").data
    assert settings["sample_rate"] == sketch.sample_rate == 16000  # from the preset
    assert settings["chunk_seconds"] == 0.25 and settings["copies"] == 1 and settings["seed"] == 3
    # an explicit flag wins over the preset, and a bad --set is one line
    code = main(
        [
            "prepare",
            str(src),
            "--out",
            str(tmp_path / "ds2"),
            "--preset",
            "sketch",
            "--copies",
            "1",
            "--chunk-seconds",
            "0.5",
        ]
    )
    assert code == 0 and read_manifest(tmp_path / "ds2")["settings"]["chunk_seconds"] == 0.5
    capsys.readouterr()
    assert main(["prepare", str(src), "--out", str(tmp_path / "ds3"), "--set", "copies=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "copies=0" in err and not (tmp_path / "ds3").exists()


def test_prepare_without_a_preset_keeps_its_defaults():
    args = build_parser().parse_args(["prepare", "a.wav", "--out", "d"])
    from samplernn_lab.cli import _prepare_config

    assert _prepare_config(args) == DataConfig()

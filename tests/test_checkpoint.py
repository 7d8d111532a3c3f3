"""Checkpoints load with weights_only: plain values and tensors only; the previous format still loads."""

import pickle
from dataclasses import asdict

import pytest
import torch

from samplernn_lab import ModelConfig, SampleRNN, TrainConfig
from samplernn_lab.checkpoint import FORMAT, load, load_model, save
from samplernn_lab.cli import main
from samplernn_lab.errors import LabError

TINY = ModelConfig(frame_sizes=(4, 2), dim=16, n_rnn=1, embed_size=8, q_levels=32)


class _CreatesAFile:
    """Unpickling this calls ``open(path, "w")``: what a hostile checkpoint could do."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _run_config(model: ModelConfig) -> dict:
    return {
        "model": asdict(model),
        "train": asdict(TrainConfig()),
        "data": {"sample_rate": 16000},
        "dataset": "/nowhere",
        "sample_rate": 16000,
        "quantization": {"method": model.quantization, "q_levels": model.q_levels},
    }


def _previous_format_last(model: SampleRNN, config: dict) -> dict:
    """What train wrote as last.pt before this version (``torch.save({"format": FORMAT, **obj})``, no
    conversion): the model's and Adam's state dicts, the data position, a carried hidden state, RNG."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    logits, hidden = model(torch.randint(0, 32, (2, 8 + 8)))
    logits.logsumexp(-1).mean().backward()
    optimizer.step()
    hidden = tuple(h.detach() for h in hidden)
    return {
        "format": FORMAT,
        "config": config,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "position": {"epoch": 1, "batch": 2, "window": 3},
        "hidden": hidden,
        "step": 7,
        "epoch": 1,
        "seconds": 12.5,
        "best_val": 4.25,
        "lr": 1e-3,
        "rng": {"seed": 0, "torch": torch.get_rng_state()},
    }


def test_a_checkpoint_of_the_previous_format_loads(tmp_path):
    torch.manual_seed(0)
    model = SampleRNN(TINY)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save(_previous_format_last(model, _run_config(TINY)), path)  # as the previous save() did
    loaded, info = load_model(tmp_path / "run", "last")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert info["step"] == 7 and info["config"]["model"]["frame_sizes"] in ((4, 2), [4, 2])
    ckpt = load(path)
    assert ckpt["optimizer"]["state"] and isinstance(ckpt["hidden"], (tuple, list))


def test_save_turns_dataclasses_and_paths_into_plain_values(tmp_path):
    path = save(
        {"config": {"model": TINY, "dataset": tmp_path}, "model": SampleRNN(TINY).state_dict()}, tmp_path / "c.pt"
    )
    ckpt = load(path)
    assert ckpt["config"]["model"]["dim"] == 16 and ckpt["config"]["dataset"] == str(tmp_path)


def test_a_hostile_pickle_is_refused_and_runs_nothing(tmp_path, capsys):
    victim = tmp_path / "created-by-the-pickle"
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": _CreatesAFile(str(victim))}, evil)
    with pytest.raises(LabError, match="evil.pt: refused"):
        load(evil)
    assert not victim.exists()
    code = main(["generate", str(evil), "--seconds", "0.1", "--out", str(tmp_path / "renders")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "evil.pt" in err and "refused" in err
    assert not victim.exists() and not (tmp_path / "renders").exists()


def test_a_raw_pickle_named_pt_is_refused(tmp_path):
    victim = tmp_path / "made"
    evil = tmp_path / "raw.pt"
    evil.write_bytes(pickle.dumps(_CreatesAFile(str(victim))))
    with pytest.raises(LabError, match="raw.pt"):
        load(evil)
    assert not victim.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut", b"not a checkpoint at all"])
def test_damaged_files_are_one_line_naming_the_file(tmp_path, content):
    path = tmp_path / "damaged.pt"
    path.write_bytes(content)
    with pytest.raises(LabError, match="damaged.pt: ") as e:
        load(path)
    assert "\n" not in str(e.value)


def test_a_file_of_another_program_is_not_a_lab_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(LabError, match="other.pt: not a samplernn-lab checkpoint"):
        load(path)

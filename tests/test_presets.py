import pytest

from samplernn_lab.errors import LabError
from samplernn_lab.presets import get_preset


def test_overrides_by_name_prefix_and_dict():
    p = get_preset("sketch", ["dim=512", "model.n_rnn=2", "train.seq_len=256", "sample_rate=22050"])
    assert (p.model.dim, p.model.n_rnn, p.train.seq_len, p.data.sample_rate) == (512, 2, 256, 22050)
    assert get_preset("poster", {"frame_sizes": (4, 4)}).model.frame_sizes == (4, 4)
    assert isinstance(get_preset("sketch", ["lr=1"]).train.lr, float)


def test_optional_budgets_accept_none_other_numbers_do_not():
    assert get_preset("poster", ["epochs=None"]).train.epochs is None
    assert get_preset("sketch", ["max_minutes=none"]).train.max_minutes is None
    with pytest.raises(LabError, match="expected a number"):
        get_preset("sketch", ["dim=None"])


@pytest.mark.parametrize(
    "bad,message",
    [
        (["dimm=3"], "unknown setting"),
        (["seed=1"], "ambiguous"),
        (["weight_norm=3"], "true or false"),
        (["dim"], "field=value"),
        (["dropout=1"], "dropout=1: .* < 1"),
    ],
)
def test_bad_overrides(bad, message):
    with pytest.raises(LabError, match=message):
        get_preset("sketch", bad)

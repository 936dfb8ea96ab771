"""cynet.diagnostics.summary: parameter counts against hand arithmetic, output shapes against the model's own
forward, and the model left as it was (modes, running statistics)."""
import numpy as np
import pytest

import cynet
from cynet import nn
from cynet.diagnostics import summary


def _model():
    cynet.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3072, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.5),
                         nn.Sequential(nn.Linear(64, 32), nn.Tanh()), nn.Linear(32, 10))


def test_summary_counts_parameters_and_shapes():
    model = _model()
    model[2].requires_grad_(False)
    s = summary(model, (3, 32, 32), batch_size=4)
    by_name = {layer.name: layer for layer in s.layers}
    assert list(by_name) == ["0", "1", "2", "3", "4", "5.0", "5.1", "6"]
    assert by_name["1"].params == 3072 * 64 + 64 and by_name["1"].trainable == by_name["1"].params
    assert by_name["2"].params == 2 * 64 and by_name["2"].trainable == 0
    assert by_name["5.0"].params == 64 * 32 + 32 and by_name["6"].params == 32 * 10 + 10
    total = 3072 * 64 + 64 + 2 * 64 + 64 * 32 + 32 + 32 * 10 + 10
    assert (s.total_params, s.trainable_params, s.param_bytes) == (total, total - 128, 4 * total)
    assert [layer.output_shape for layer in s.layers] == [(4, 3072), (4, 64), (4, 64), (4, 64), (4, 64), (4, 32),
                                                          (4, 32), (4, 10)]
    assert s.activation_bytes_per_example == 4 * (3072 + 4 * 64 + 2 * 32 + 10)
    text = str(s)
    assert "Linear(in_features=3072, out_features=64, bias=True)" in text and "196,672" in text
    assert "128 (0 train.)" in text and f"parameters: {total:,}" in text


def test_summary_leaves_the_model_as_it_was():
    model = _model()
    model[4].eval()
    before = {name: m.training for name, m in model.named_modules()}
    stats = model[2].running_mean.copy(), model[2].running_var.copy()
    summary(model, (3, 32, 32))
    assert {name: m.training for name, m in model.named_modules()} == before
    assert np.array_equal(model[2].running_mean, stats[0]) and np.array_equal(model[2].running_var, stats[1])
    assert "forward" not in vars(model[1])                 # the recording wrapper is gone


def test_summary_errors():
    with pytest.raises(TypeError, match="cynet.nn.Module"):
        summary(lambda x: x, (3,))
    with pytest.raises(TypeError, match="input_shape must be a tuple of ints"):
        summary(_model(), 3072)
    for wrong in ("abc", (3.7,), (3, 32.0, 32), (True, 2)):            # never read as some other shape
        with pytest.raises(TypeError, match="input_shape must be a tuple of ints"):
            summary(_model(), wrong)
    with pytest.raises(ValueError, match="must be positive"):
        summary(_model(), (0, 32, 32))
    with pytest.raises(ValueError, match=r"^summary: a batch of 2 example\(s\) of shape \(3, 16, 16\) .*Linear"):
        summary(_model(), (3, 16, 16))                      # names summary and keeps the model's own error


def test_summary_of_a_float64_model_runs_in_float64_without_being_told():
    # before: a float32 batch, refused by the float64 Linear unless dtype= was passed
    model = nn.Sequential(nn.Linear(10, 5, dtype=np.float64), nn.Tanh())
    s = summary(model, (10,))
    assert s.dtype == np.float64 and s.param_bytes == (10 * 5 + 5) * 8     # 8 bytes an entry, by hand
    assert s.activation_bytes_per_example == 2 * 5 * 8                     # two (5,) float64 outputs
    assert summary(model, (10,), dtype=np.float64).total_params == s.total_params == 55


def test_summary_keeps_a_modules_own_forward_and_an_enclosing_recording():
    # before: the recording wrapper's removal popped any instance forward, the user's override or the wrapper of a
    # recording still open (a TrainingMonitor's), which then stopped recording
    from cynet.diagnostics.init_lab import recording
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    x = np.ones((4, 3), np.float32)
    override = lambda inp: np.full((len(inp), 2), 7.0, np.float32)     # noqa: E731
    model[1].forward = override
    summary(model, (3,))
    assert vars(model[1])["forward"] is override and np.array_equal(model(x), np.full((4, 2), 7.0))
    del model[1].forward
    outer = []
    with recording([("1", model[1])], outer):
        summary(model, (3,))                                  # its batch of 2 zeros passes through the outer too
        model(x)
    assert [y.shape for _, _, y in outer] == [(2, 2), (4, 2)]
    assert "forward" not in vars(model[1])


@pytest.mark.parametrize("bad", [2.5, "3", 0, True])
def test_summary_refuses_a_batch_size_that_is_not_a_positive_int(bad):
    # int() took 2.5 for 2 and "3" for 3
    with pytest.raises(ValueError, match="summary: batch_size must be a positive int"):
        summary(nn.Sequential(nn.Linear(4, 3)), (4,), batch_size=bad)

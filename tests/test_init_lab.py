"""Tests of cynet.diagnostics.init_lab: the lecture's findings hold in the numbers; NumPy is the oracle."""
import math

import numpy as np
import pytest

from cynet import nn
from cynet.diagnostics.init_lab import activation_statistics, init_experiment, summarize


def _numpy_experiment(nonlinearity, std, layers=10, width=500, samples=1000, seed=0):
    """The lecture's loop written directly in NumPy (same draw order as init_experiment)."""
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((samples, width))
    out = []
    for _ in range(layers):
        w = rng.standard_normal((width, width)) * std      # (out, in), as a Linear layer stores it
        h = h @ w.T
        h = np.tanh(h) if nonlinearity == "tanh" else np.maximum(h, 0)
        out.append(h)
    return out


@pytest.mark.parametrize("nonlinearity,init,std", [("tanh", "xavier", 1 / math.sqrt(500)),
                                                   ("relu", "he", math.sqrt(2 / 500))])
def test_statistics_match_numpy(nonlinearity, init, std):
    result = init_experiment(nonlinearity, init)
    reference = _numpy_experiment(nonlinearity, std)
    assert result.weight_std == pytest.approx(std)
    np.testing.assert_allclose(result.stds, [h.std() for h in reference], rtol=1e-9)
    np.testing.assert_allclose(result.means, [h.mean() for h in reference], rtol=1e-9, atol=1e-12)
    assert sum(result.stats[0].counts) == 1000 * 500


def test_small_weights_collapse_towards_zero():
    result = init_experiment("tanh", "small")
    stds = result.stds
    assert stds[-1] < 1e-6 and stds[-1] < 1e-5 * stds[0]
    assert np.all(np.diff(stds) < 0)
    assert result.verdict == "std collapses layer by layer towards 0"


def test_large_weights_saturate_tanh():
    result = init_experiment("tanh", "large")
    for s in result.stats[4:]:                                   # deep layers
        assert s.saturated > 0.90
    assert result.verdict == "saturated at ±1"


def test_xavier_tanh_stays_healthy():
    result = init_experiment("tanh", "xavier")
    assert np.all((result.stds > 0.1) & (result.stds < 0.9))
    assert all(s.saturated < 0.01 for s in result.stats)
    assert result.verdict == "healthy"


def test_xavier_relu_halves_the_variance_per_layer():
    result = init_experiment("relu", "xavier")
    ratios = result.stds[1:] / result.stds[:-1]
    # E[relu(h)^2] = Var(h) / 2: the second moment halves, so the std shrinks by about 1/sqrt(2) per layer
    assert np.all((ratios > 0.55) & (ratios < 0.85))
    second_moments = [s.std ** 2 + s.mean ** 2 for s in result.stats]
    np.testing.assert_allclose(np.array(second_moments[1:]) / second_moments[:-1], 0.5, rtol=0.2)
    assert result.verdict == "collapsing"


def test_he_relu_keeps_the_std_constant():
    result = init_experiment("relu", "he")
    stds = result.stds
    assert np.all(np.abs(stds / stds[0] - 1) < 0.2)
    assert result.verdict == "healthy"


@pytest.mark.parametrize("nonlinearity,post_std", [("tanh", 0.63), ("relu", 0.58)])
def test_lsuv_makes_every_layer_healthy_from_the_data(nonlinearity, post_std):
    """Each Linear's output has unit std on the input, so every layer's activations have the std of f(N(0, 1)):
    E[tanh(z)^2] = 0.394 (std 0.63), and for ReLU the std of max(z, 0), sqrt(1/2 - 1/(2 pi)) = 0.58."""
    result = init_experiment(nonlinearity, "lsuv", layers=6, width=100, samples=400)
    assert result.verdict == "healthy"
    np.testing.assert_allclose(result.stds, post_std, rtol=0.08)
    assert result.weight_std == pytest.approx(1 / math.sqrt(100), rel=1e-3)     # orthonormal rows, no rescaling
    assert math.sqrt(0.5 - 1 / (2 * math.pi)) == pytest.approx(0.58, abs=0.005)


def test_large_relu_explodes():
    assert init_experiment("relu", "large", layers=4, width=100, samples=100).verdict == "exploding"


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu", "sigmoid"])   # sigmoid: 0.5 out, not 0
def test_zero_init_never_breaks_symmetry(nonlinearity):
    result = init_experiment(nonlinearity, "zeros", layers=4, width=50, samples=100)
    assert result.identical_units == [True] * 4
    assert result.symmetric_after_step
    assert result.verdict == "symmetry never broken"
    healthy = init_experiment(nonlinearity, "xavier", layers=4, width=50, samples=100)
    assert not any(healthy.identical_units) and not healthy.symmetric_after_step
    assert "symmetry never broken" in str(result)


def test_activation_statistics_on_a_model_and_on_layers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    model = nn.Sequential(nn.Linear(8, 16, generator=0), nn.ReLU(), nn.Linear(16, 4, generator=1), nn.Sigmoid())
    stats = activation_statistics(model, x, bins=10)
    assert [(s.name, s.kind) for s in stats] == [("1", "ReLU"), ("3", "Sigmoid")]
    h = np.maximum(x @ model[0].weight.data.T + model[0].bias.data, 0)
    assert stats[0].mean == pytest.approx(float(h.mean()), rel=1e-5)
    assert stats[0].std == pytest.approx(float(h.std()), rel=1e-4)
    assert stats[0].dead == pytest.approx(float(np.mean(~(h > 0).any(axis=0))))
    counts, edges = np.histogram(h, bins=10, range=(h.min(), h.max()))
    np.testing.assert_array_equal(stats[0].counts, counts)
    sig = 1 / (1 + np.exp(-(h @ model[2].weight.data.T + model[2].bias.data)))
    assert stats[1].saturated == pytest.approx(float(np.mean((sig < 0.01) | (sig > 0.99))))
    assert "forward" not in model[1].__dict__                 # the recording wrapper is gone
    by_layer = activation_statistics(list(model), x)
    assert [s.name for s in by_layer] == ["0", "1", "2", "3"]
    assert by_layer[1].std == pytest.approx(stats[0].std, rel=1e-6)


def test_dead_relu_units_and_errors():
    y = np.array([[0.0, 1.0, 0.0], [0.0, 2.0, 3.0]])
    assert summarize("r", nn.ReLU(), y).dead == pytest.approx(1 / 3)
    assert math.isnan(summarize("t", nn.Tanh(), y).dead)
    with pytest.raises(ValueError):
        init_experiment("tanh", "huge")
    with pytest.raises(ValueError):
        init_experiment("softplus", "he")
    for wrong in ([1, 2], 5, None):
        with pytest.raises(TypeError, match="expected a cynet.nn.Module or a non-empty sequence of Modules"):
            activation_statistics(wrong, np.zeros((2, 2)))


def _sigmoid_net_in_numpy(init, layers=10, width=200, samples=300, seed=0):
    """The experiment's forward pass written here: the same draws in the same order, plain NumPy."""
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((samples, width))
    std = {"small": 0.01, "xavier": 1 / np.sqrt(width)}[init]
    for _ in range(layers):
        h = 1 / (1 + np.exp(-(h @ (rng.standard_normal((width, width)) * std).T)))
    return h


@pytest.mark.parametrize("init", ["small", "xavier"])
def test_a_sigmoid_net_whose_units_each_went_constant_collapsed(init):
    # before: "healthy": the std of all values is the spread of the units' constants near 0.5 (0.016 / 0.11), while
    # every input gives the same output
    result = init_experiment("sigmoid", init, width=200, samples=300)
    h = _sigmoid_net_in_numpy(init)
    signal = np.sqrt(np.mean(np.var(h, axis=0)))
    assert signal < 1e-6 and np.abs(h - h[0]).max() < 1e-5                 # the input is gone
    assert result.unit_stds[-1] == pytest.approx(signal, rel=1e-6, abs=1e-15)
    assert result.stds[-1] == pytest.approx(h.std(), rel=1e-9)             # the lecture's std still reads > 0.01
    assert result.verdict == "std collapses layer by layer towards 0"


def test_sigmoid_saturates_at_zero_and_one_and_one_zero_layer_separates_at_the_first_step():
    assert init_experiment("sigmoid", "large", width=100, samples=200).verdict == "saturated at 0 and 1"
    one = init_experiment("tanh", "zeros", layers=1, width=20, samples=30)
    assert one.identical_units == [True] and not one.symmetric_after_step
    assert one.verdict == "units identical until the first step"


def test_one_zero_relu_layer_is_never_separated_by_the_step():
    # a single zero-initialised ReLU layer outputs 0 everywhere, where ReLU passes no gradient: the step leaves its
    # weights at zero (oracle below), so its units stay identical; it was called "units identical until the first
    # step" (symmetric_after_step read False for any single layer)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 20))
    out = np.maximum(x @ np.zeros((20, 20)).T, 0.0)
    grad = ((out - rng.standard_normal(out.shape)) / 30 * (out > 0)).T @ x
    assert not np.any(grad)                                  # the weights do not move
    one = init_experiment("relu", "zeros", layers=1, width=20, samples=30)
    assert one.identical_units == [True] and one.symmetric_after_step
    assert one.verdict == "symmetry never broken"


def test_a_later_in_place_module_does_not_change_a_recorded_output():
    # leaf mode: Dropout(inplace=True) overwrote the Linear's output before it was summarised (its std read 0.80
    # instead of 0.56)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 20)).astype(np.float32)
    model = nn.Sequential(nn.Linear(20, 50, generator=0), nn.Dropout(0.5, inplace=True), nn.Linear(50, 3, generator=1))
    stats = activation_statistics(model, x)
    linear = x.astype(np.float64) @ model[0].weight.data.T.astype(np.float64) + model[0].bias.data
    assert stats[0].std == pytest.approx(linear.std(), rel=1e-6)
    assert stats[1].std != pytest.approx(linear.std(), rel=1e-2)      # the dropped-out copy differs


def test_nan_activations_are_not_dead_units():
    y = np.array([[np.nan, 0.0, 1.0], [np.nan, 0.0, 2.0]])
    stats = summarize("0", nn.ReLU(), y)
    assert math.isnan(stats.dead) and math.isnan(stats.std)            # was dead = 2/3: the NaN unit counted dead
    assert summarize("0", nn.ReLU(), np.nan_to_num(y)).dead == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", [None, True, -1, 1.5, [1, 2]])
def test_init_experiment_refuses_a_seed_that_is_not_a_non_negative_int(seed):
    # seed=None went to default_rng(None): fresh entropy, another experiment on every call; True and [1, 2] were
    # taken as seeds too
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        init_experiment("relu", "he", layers=1, width=4, samples=5, seed=seed)
    assert repr(init_experiment("relu", "he", layers=2, width=6, samples=8, seed=np.int64(3))) == \
        repr(init_experiment("relu", "he", layers=2, width=6, samples=8, seed=3))

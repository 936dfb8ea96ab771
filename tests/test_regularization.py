"""L1Penalty, elastic net (PenaltySum) and the max-norm constraint (nn.utils.max_norm_, train.MaxNorm).

Oracles: NumPy formulas written here (sum |W|, sign(W), row norms), the numerical gradient of the penalty in float64,
and hand values.
"""
import numpy as np
import pytest

import cynet
from cynet import nn, optim
from cynet.nn.loss import L1Penalty, L2Penalty, PenaltySum
from cynet.nn.utils import max_norm_
from cynet.train import MaxNorm
from _helpers import numerical_gradient


def _model(dtype=np.float32, seed=0):
    cynet.manual_seed(seed)
    return nn.Sequential(nn.Linear(300, 40, dtype=dtype), nn.BatchNorm1d(40, dtype=dtype), nn.ReLU(),
                         nn.Linear(40, 5, dtype=dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_l1_penalty_value_and_gradient_against_numpy(dtype, threads):
    model = _model(dtype)
    model[0].weight.data[0, :7] = 0                       # sign(0) = 0 there
    weights = [model[0].weight, model[3].weight]           # not the biases, nor BatchNorm's gamma/beta
    reg = L1Penalty(3e-3)
    with cynet.threads(threads):
        value = reg(model)
        model.zero_grad()
        model[0].weight.grad = np.full(model[0].weight.shape, 0.5, dtype)    # accumulate onto an existing gradient
        reg.backward(model)
    expected = 3e-3 * sum(np.abs(w.data.astype(np.float64)).sum() for w in weights)
    assert value == pytest.approx(expected, rel=1e-12)
    lam = dtype(3e-3)
    assert np.array_equal(model[0].weight.grad, dtype(0.5) + lam * np.sign(model[0].weight.data))
    assert np.array_equal(model[3].weight.grad, lam * np.sign(model[3].weight.data))
    assert np.all(model[0].bias.grad == 0) and np.all(model[1].weight.grad == 0)


def test_l1_penalty_gradient_is_the_numerical_gradient_away_from_zero():
    model = _model(np.float64)
    w = model[3].weight
    w.data[np.abs(w.data) < 1e-3] = 0.01
    reg = L1Penalty(0.7)
    model.zero_grad()
    reg.backward(model)
    oracle = numerical_gradient(lambda _: np.array(reg(model)), w.data, np.array(1.0))
    np.testing.assert_allclose(w.grad, oracle, rtol=1e-6)


def test_elastic_net_sums_both_penalties():
    model = _model(np.float64)
    net = L1Penalty(1e-3) + L2Penalty(1e-2)
    assert isinstance(net, PenaltySum)
    assert repr(net) == "PenaltySum(L1Penalty(strength=0.001), L2Penalty(strength=0.01))"
    assert net(model) == pytest.approx(L1Penalty(1e-3)(model) + L2Penalty(1e-2)(model), rel=1e-15)
    model.zero_grad()
    net.backward(model)
    w = model[0].weight.data
    np.testing.assert_allclose(model[0].weight.grad, 1e-3 * np.sign(w) + 1e-2 * w, rtol=1e-15)
    assert len((net + L1Penalty(0.0)).terms) == 3
    with pytest.raises(ValueError, match="L1Penalty: strength must be a finite number >= 0"):
        L1Penalty(-1)
    with pytest.raises(TypeError):
        L1Penalty(1.0) + 2


def test_a_trainer_with_l1_reports_it_apart_from_the_data_loss():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((40, 300)).astype(np.float32), rng.integers(0, 5, 40)
    model = _model()
    trainer = cynet.Trainer(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.05), progress=False,
                            regularization=L1Penalty(1e-3))
    trainer.fit(x, y, epochs=1, batch_size=40)
    assert trainer.history["reg_loss"][0] > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_norm_scales_back_only_the_rows_above_the_bound(dtype):
    model = _model(dtype)
    w = model[0].weight.data
    w[:10] *= 50                                           # these rows are far above 3
    before = w.copy()
    norms = np.linalg.norm(before.astype(np.float64), axis=1)
    bias, gamma = model[0].bias.data.copy(), model[1].weight.data.copy()
    count = max_norm_(model.parameters(), 3.0)
    over = norms > 3.0
    assert count == over.sum() + (np.linalg.norm(model[3].weight.data, axis=1) > 3.0).sum() and over[:10].all()
    after = np.linalg.norm(w.astype(np.float64), axis=1)
    np.testing.assert_allclose(after[over], 3.0, rtol=1e-6)
    assert np.array_equal(w[~over], before[~over])
    np.testing.assert_allclose(w[over], before[over] * (3.0 / norms[over])[:, None], rtol=1e-6)
    assert np.array_equal(model[0].bias.data, bias) and np.array_equal(model[1].weight.data, gamma)


def test_max_norm_callback_keeps_every_unit_on_the_ball():
    rng = np.random.default_rng(3)
    x, y = (rng.standard_normal((64, 300)) * 5).astype(np.float32), rng.integers(0, 5, 64)
    model = _model()
    frozen = model[3].weight
    frozen.requires_grad = False
    frozen.data *= 3
    kept = frozen.data.copy()
    callback = MaxNorm(0.5)
    trainer = cynet.Trainer(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.5), progress=False,
                            callbacks=[callback])
    trainer.fit(x, y, epochs=2, batch_size=16)
    assert trainer.stop_reason is None
    assert np.linalg.norm(model[0].weight.data.astype(np.float64), axis=1).max() <= 0.5 * (1 + 1e-6)
    assert callback.scaled > 0
    assert np.array_equal(frozen.data, kept)               # frozen weights are not the constraint's business
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ValueError):
            MaxNorm(bad)
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        max_norm_(model.parameters(), 0.0)


def test_penalty_errors():
    with pytest.raises(TypeError, match="PenaltySum: terms must be weight penalties"):
        PenaltySum(L1Penalty(1.0), 2)
    from cynet._kernels import load
    k = load("losses")
    w = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="penalty_sum: power must be 1 or 2, got 3"):
        k.penalty_sum(w, 3, np.empty(k.partials_length(8)), 1)
    with pytest.raises(ValueError, match="penalty_grad: power must be 1 or 2, got 0"):
        k.penalty_grad(w, 0, 0.1, np.empty_like(w), False, 1)


def test_max_norm_leaves_normalisation_gains_of_any_shape_alone_given_the_model():
    """A LayerNorm over (C, H, W) has a 3-d gain: taken for a weight of 4 rows of 16 ones (norm 4), MaxNorm(3)
    scaled the fresh gains to 0.75 before the first step."""
    layer_norm = nn.LayerNorm((4, 4, 4))
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), layer_norm, nn.Flatten(), nn.Linear(64, 10))
    model[0].weight.data[...] = 1.0                              # filters of 27 ones: norm 5.2 > 3
    model[3].weight.data[...] = 0.01
    assert max_norm_(model, 3.0) == 4                            # the four filters only
    np.testing.assert_allclose(np.linalg.norm(model[0].weight.data.reshape(4, -1), axis=1), 3.0, rtol=1e-6)
    assert np.all(layer_norm.weight.data == 1) and np.all(layer_norm.bias.data == 0)
    x, y = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32), np.arange(8) % 10
    callback = MaxNorm(3.0)
    cynet.Trainer(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.0), callbacks=[callback],
                  progress=False).fit(x, y, epochs=1, batch_size=4)
    assert np.all(layer_norm.weight.data == 1)
    # given the parameters, the rule is by dimension alone (what a list of parameters can tell)
    assert max_norm_(layer_norm.parameters(), 3.0) == 4           # the gain's 4 rows of 16 ones (the shift is 0)


def test_max_norm_scales_a_strided_weight_in_place():
    # a conv kernel loaded from a (kh, kw, in, out) array as a transposed view: reshape copied it, the scaling went to
    # the copy, and max_norm_ still counted the units as scaled
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(3, 2, 3)
    conv.weight.data = (rng.standard_normal((3, 3, 3, 2)) * 5).astype(np.float32).transpose(3, 2, 0, 1)
    assert not conv.weight.data.flags.c_contiguous
    expected = conv.weight.data.copy()
    norms = np.sqrt((expected.reshape(2, -1).astype(np.float64) ** 2).sum(1))
    expected *= (1.0 / norms).astype(np.float32)[:, None, None, None]          # both units are above the bound
    assert max_norm_(conv, 1.0) == 2
    np.testing.assert_allclose(conv.weight.data, expected, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(conv.weight.data.reshape(2, -1), axis=1), 1.0, rtol=1e-6)

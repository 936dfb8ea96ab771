"""nn.DropConnectLinear: the masked forward and backward against NumPy formulas from the layer's own mask, the
numerical gradient (gradcheck fixes the mask), evaluation equal to Linear, the mask's expectation, reproducible and
resumable masks, validation.
"""
import numpy as np
import pytest

import cynet
from cynet import gradcheck, nn, optim
from cynet.train import Trainer
from _helpers import assert_resumes_exactly


def _layer(p=0.5, dtype=np.float64, seed=3, **kw):
    return nn.DropConnectLinear(6, 4, dtype=dtype, generator=seed, p=p, **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_pass_uses_the_dropped_weights_and_their_gradients(rng, dtype):
    layer = _layer(0.3, dtype)
    x = rng.standard_normal((5, 6)).astype(dtype)
    y = layer(x)
    mask = layer._mask
    assert set(np.unique(mask).tolist()) <= {0.0, dtype(1 / 0.7)}
    w = layer.weight.data * mask
    np.testing.assert_allclose(y, x @ w.T + layer.bias.data, rtol=1e-6 if dtype == np.float32 else 1e-14)
    dout = rng.standard_normal((5, 4)).astype(dtype)
    dx = layer.backward(dout)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(layer.weight.grad, (dout.T @ x) * mask, **tol)
    np.testing.assert_allclose(layer.bias.grad, dout.sum(axis=0), **tol)
    np.testing.assert_allclose(dx, dout @ w, **tol)
    layer(x)                                                   # a new mask on the next pass
    assert not np.array_equal(layer._mask, mask)


def test_gradient_check_with_the_mask_fixed(rng):
    layer = _layer(0.5)
    report = gradcheck.check_module(layer, rng.standard_normal((4, 6)))
    assert report.passed, str(report)
    assert report.max_error < 1e-7


def test_evaluation_and_p_zero_are_a_plain_linear(rng):
    layer = _layer(0.5)
    plain = nn.Linear(6, 4, dtype=np.float64)
    plain.load_state_dict(layer.state_dict())
    x = rng.standard_normal((3, 6))
    np.testing.assert_array_equal(layer.eval()(x), plain(x))
    assert layer._mask is None
    zero = _layer(0.0)
    plain.load_state_dict(zero.state_dict())
    np.testing.assert_array_equal(zero(x), plain(x))
    np.testing.assert_array_equal(zero.backward(np.ones((3, 4))), plain.backward(np.ones((3, 4))))


def test_dropped_weights_average_to_the_weights():
    layer = nn.DropConnectLinear(20, 10, dtype=np.float64, generator=0, p=0.4)
    x = np.eye(20)                                             # y = W~^T rows: the dropped weights themselves
    total = np.zeros((10, 20))
    for _ in range(4000):
        total += layer(x).T - layer.bias.data[:, None]
    np.testing.assert_allclose(total / 4000, layer.weight.data, atol=0.05 * np.abs(layer.weight.data).max())
    kept = []
    for _ in range(50):
        layer(x)
        kept.append(np.mean(layer._mask != 0))
    assert abs(np.mean(kept) - 0.6) < 0.01


def test_gradients_accumulate_and_frozen_weights_get_none(rng):
    layer = _layer(0.5)
    layer.reuse_mask = True
    x, dout = rng.standard_normal((3, 6)), rng.standard_normal((3, 4))
    layer(x)
    layer.backward(dout)
    once = layer.weight.grad.copy()
    layer(x)
    layer.backward(dout)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-15)
    layer.weight.requires_grad = False
    layer.zero_grad()
    layer(x)
    layer.backward(dout)
    assert not np.any(layer.weight.grad)


def test_masks_are_reproducible_and_resume_exactly_from_a_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 6)).astype(np.float32), rng.integers(0, 3, 64)

    def trainer():
        cynet.manual_seed(0)
        model = nn.Sequential(nn.DropConnectLinear(6, 16, generator=11, p=0.3), nn.ReLU(), nn.Linear(16, 3))
        return Trainer(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                       progress=False)

    straight = trainer()
    straight.fit(x, y, epochs=3, batch_size=16)
    assert straight.history["loss"][-1] < straight.history["loss"][0]
    assert_resumes_exactly(trainer, x, y, tmp_path / "dc.npz", straight, epochs=3)


@pytest.mark.parametrize("p", [1.0, -0.1, float("nan"), "0.5"])
def test_invalid_p(p):
    with pytest.raises((ValueError, TypeError), match="DropConnectLinear"):
        nn.DropConnectLinear(4, 2, p=p)


def test_repr():
    expected = "DropConnectLinear(in_features=4, out_features=2, bias=True, p=0.25)"
    assert repr(nn.DropConnectLinear(4, 2, p=0.25)) == expected


def test_a_kept_dropconnect_mask_follows_the_model_to_float64():
    # reuse_mask (as gradcheck sets it) kept a float32 mask after .double(): 1/(1-p) rounded to float32
    layer = nn.DropConnectLinear(6, 4, p=0.3, generator=0)
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    layer(x)
    layer.reuse_mask = True
    kept = layer._mask != 0
    layer.double()
    y = layer(x.astype(np.float64))
    w = layer.weight.data * np.where(kept, 1.0 / 0.7, 0.0)
    np.testing.assert_allclose(y, x.astype(np.float64) @ w.T + layer.bias.data, rtol=1e-14, atol=1e-14)

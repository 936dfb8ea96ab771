"""cynet.nn.utils.clip_grad_norm_ / clip_grad_value_ and the Trainer's clip_grad_norm.

Oracles: the norms and scaled gradients computed here in float64 NumPy, torch.nn.utils where torch is installed, and
one SGD step worked out by hand from the clipped gradient.
"""
import math

import numpy as np
import pytest

import cynet
from cynet import nn, optim
from cynet.nn.utils import clip_grad_norm_, clip_grad_value_

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None


def _parameters(scale=1.0, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    params = [nn.Parameter(np.zeros(shape, dtype)) for shape in [(7, 5), (5,), (3, 3, 2)]]
    grads = [(rng.standard_normal(p.shape) * scale).astype(dtype) for p in params]
    for p, g in zip(params, grads):
        p.grad = g
    return params, grads


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_scales_every_gradient_by_one_factor(norm_type, dtype):
    params, grads = _parameters(scale=10.0, dtype=dtype)
    flat = np.concatenate([g.astype(np.float64).ravel() for g in grads])
    expected = np.max(np.abs(flat)) if norm_type == math.inf else np.sum(np.abs(flat) ** norm_type) ** (1 / norm_type)
    total = clip_grad_norm_(params, max_norm=2.5, norm_type=norm_type)
    assert total == pytest.approx(expected, rel=1e-6)
    factor = 2.5 / (expected + 1e-6)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    for p, g in zip(params, grads):
        np.testing.assert_allclose(p.grad, g.astype(np.float64) * factor, rtol=rtol)
    clipped = np.concatenate([p.grad.astype(np.float64).ravel() for p in params])
    after = (np.max(np.abs(clipped)) if norm_type == math.inf
             else np.sum(np.abs(clipped) ** norm_type) ** (1 / norm_type))
    assert after == pytest.approx(2.5, rel=1e-5)


def test_gradients_within_the_norm_are_left_untouched_and_frozen_or_unwritten_ones_are_skipped():
    params, grads = _parameters(scale=1e-3)
    assert clip_grad_norm_(params, 1.0) < 1.0
    assert all(np.array_equal(p.grad, g) for p, g in zip(params, grads))
    frozen = nn.Parameter(np.zeros(4, np.float32), requires_grad=False)
    frozen.grad = np.full(4, 1e6, np.float32)
    unwritten = nn.Parameter(np.zeros(4, np.float32))          # flagged zero since construction
    params, grads = _parameters(scale=10.0)
    total = clip_grad_norm_(params + [frozen, unwritten], 1.0)
    flat = np.concatenate([g.astype(np.float64).ravel() for g in grads])
    assert total == pytest.approx(np.linalg.norm(flat), rel=1e-6)
    assert np.all(frozen.grad == 1e6) and unwritten._grad_is_zero
    assert clip_grad_norm_([], 1.0) == 0.0


def test_nonfinite_norms():
    params, _ = _parameters()
    params[1].grad[2] = np.inf
    with pytest.raises(RuntimeError, match="total norm of order 2 of the gradients is inf"):
        clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    assert clip_grad_norm_(params, 1.0) == math.inf            # then scaled by 0, as in PyTorch
    assert np.all(np.nan_to_num(params[0].grad, nan=1.0) == 0)
    for bad in (-1.0, float("nan"), "1", True):
        with pytest.raises(ValueError, match="max_norm must be a number"):
            clip_grad_norm_(params, bad)
    with pytest.raises(ValueError, match="norm_type must be a number >= 1"):
        clip_grad_norm_(params, 1.0, norm_type=0.5)
    with pytest.raises(TypeError, match="must be cynet.nn.Parameter"):
        clip_grad_norm_([np.ones(3)], 1.0)


def test_clip_grad_value_clamps_each_entry():
    params, grads = _parameters(scale=3.0)
    clip_grad_value_(params, 1.5)
    for p, g in zip(params, grads):
        assert np.array_equal(p.grad, np.clip(g, -1.5, 1.5))


@pytest.mark.skipif(torch is None, reason="torch is not installed")
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_clip_grad_norm_matches_torch(norm_type):
    params, grads = _parameters(scale=4.0, dtype=np.float64)
    tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for t, g in zip(tensors, grads):
        t.grad = torch.from_numpy(g.copy())
    expected = float(torch.nn.utils.clip_grad_norm_(tensors, 1.7, norm_type=norm_type))
    assert clip_grad_norm_(params, 1.7, norm_type=norm_type) == pytest.approx(expected, rel=1e-12)
    for p, t in zip(params, tensors):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-12)


def test_trainer_steps_with_the_clipped_gradient():
    cynet.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    w0, b0 = model[0].weight.data.copy(), model[0].bias.data.copy()
    x = np.random.default_rng(1).standard_normal((8, 6)).astype(np.float32) * 50
    y = np.arange(8) % 3
    loss = nn.SoftmaxCrossEntropy()
    # the unclipped gradient, from the same model and batch
    loss.forward(model(x), y)
    model.zero_grad()
    model.backward(loss.backward())
    gw, gb = model[0].weight.grad.astype(np.float64), model[0].bias.grad.astype(np.float64)
    norm = math.sqrt(np.sum(gw ** 2) + np.sum(gb ** 2))
    assert norm > 0.5
    trainer = cynet.Trainer(model, loss, optim.SGD(model.parameters(), lr=0.1), progress=False, clip_grad_norm=0.5)
    trainer.fit(x, y, epochs=1, batch_size=8, shuffle=False)
    factor = 0.5 / (norm + 1e-6)
    np.testing.assert_allclose(model[0].weight.data, w0 - 0.1 * gw * factor, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model[0].bias.data, b0 - 0.1 * gb * factor, rtol=1e-5, atol=1e-6)
    for bad in (0, -1.0, math.inf, "1"):
        with pytest.raises(ValueError, match="clip_grad_norm must be a positive finite number"):
            cynet.Trainer(model, loss, optim.SGD(model.parameters(), lr=0.1), progress=False, clip_grad_norm=bad)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("where", [0, 1, 2])
def test_a_nan_gradient_in_any_parameter_makes_the_norm_nan(norm_type, where):
    # the inf-norm took Python's max over the parameters, which drops a NaN unless it comes first: a NaN in the second
    # parameter's gradient gave a finite norm, error_if_nonfinite did not raise and the NaN stayed (torch: NaN)
    params, _ = _parameters()
    params[where].grad[(0,) * params[where].grad.ndim] = np.nan
    with pytest.raises(RuntimeError, match="cannot be clipped"):
        clip_grad_norm_(params, 1.0, norm_type=norm_type, error_if_nonfinite=True)
    assert math.isnan(clip_grad_norm_(params, 1.0, norm_type=norm_type))
    assert all(np.all(np.isnan(p.grad)) for p in params)            # scaled by a NaN factor, as in PyTorch


@pytest.mark.parametrize("norm_type", [2.0, 3.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_finite_norm_whose_powers_overflow_still_clips(norm_type, dtype):
    # float32 squares overflow from |g| ~ 1.8e19 on (float64 ones from ~1.3e154): the "norm" came out inf and the
    # coefficient max_norm / inf = 0 zeroed every gradient, where the norm is finite and the clip a plain rescale
    big = 3e19 if dtype == np.float32 else 3e200
    p, q = nn.Parameter(np.zeros(1, dtype)), nn.Parameter(np.zeros(1, dtype))
    p.grad, q.grad = [3 * big], [4 * big]
    want_norm = (3.0 ** norm_type + 4.0 ** norm_type) ** (1 / norm_type) * big       # by hand
    total = clip_grad_norm_([p, q], max_norm=1.0, norm_type=norm_type, error_if_nonfinite=True)
    assert total == pytest.approx(want_norm, rel=1e-6)
    np.testing.assert_allclose([p.grad[0], q.grad[0]], np.array([3, 4]) * big / want_norm, rtol=1e-6)
    # an infinite entry still makes the norm infinite (and raises when asked to)
    q.grad = [np.inf]
    with pytest.raises(RuntimeError, match="is inf"):
        clip_grad_norm_([p, q], max_norm=1.0, norm_type=norm_type, error_if_nonfinite=True)

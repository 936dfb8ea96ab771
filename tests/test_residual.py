"""Residual blocks and stochastic depth (cynet.nn.Residual, nn.StochasticDepth): gradient checks of dense and conv
blocks with identity and projection shortcuts, torch autograd on the same composition, the in-place guard, the
stochastic-depth masks (per example, per batch, expectation, p = 0 / 1), and an exact resume through a checkpoint.
"""
import numpy as np
import pytest

import cynet
from cynet import checkpoint, gradcheck, nn, optim
from cynet.train import Trainer

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not importable")


def _dense_block(seed=0, shortcut=False):
    cynet.manual_seed(seed)
    width = 5 if shortcut else 6            # a projection shortcut lets the block change the width
    body = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, width))
    return nn.Sequential(nn.Residual(body, nn.Linear(6, 5) if shortcut else None), nn.Tanh(), nn.Linear(width, 3))


@pytest.mark.parametrize("shortcut", [False, True])
def test_dense_residual_blocks_pass_the_gradient_check(shortcut):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 6)), rng.integers(0, 3, 7)
    report = gradcheck.check_model(_dense_block(shortcut=shortcut), nn.SoftmaxCrossEntropy(), x, y, num_checks=30)
    assert report.passed, report


def test_conv_residual_block_with_batch_norm_and_a_projection_passes_the_gradient_check():
    cynet.manual_seed(1)
    body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.BatchNorm2d(4))
    model = nn.Sequential(nn.Residual(body, nn.Conv2d(3, 4, 1)), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((4, 3, 5, 5)), rng.integers(0, 3, 4)
    report = gradcheck.check_model(model, nn.SoftmaxCrossEntropy(), x, y, num_checks=20)
    assert report.passed, report


@needs_torch
def test_residual_matches_torch_autograd_in_float64():
    model = _dense_block(seed=3, shortcut=True).to(np.float64)
    residual, head = model[0], model[2]
    layers = [residual.body[0], residual.body[2], residual.shortcut, head]
    ours = [torch.nn.Linear(*layer.weight.data.shape[::-1]).double() for layer in layers]
    with torch.no_grad():
        for theirs, layer in zip(ours, layers):
            theirs.weight.copy_(torch.from_numpy(layer.weight.data))
            theirs.bias.copy_(torch.from_numpy(layer.bias.data))
    rng = np.random.default_rng(3)
    x, dout = rng.standard_normal((5, 6)), rng.standard_normal((5, 3))
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = ours[3](torch.tanh(ours[1](torch.tanh(ours[0](tx))) + ours[2](tx)))
    ty.backward(torch.from_numpy(dout))
    y = model(x)
    dx = model.backward(dout)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=0, atol=1e-13)
    for theirs, layer in zip(ours, layers):
        np.testing.assert_allclose(layer.weight.grad, theirs.weight.grad.numpy(), rtol=0, atol=1e-13)


def test_the_input_is_kept_from_in_place_modules_in_the_body():
    with pytest.raises(ValueError, match="runs in place and would overwrite the input"):
        nn.Residual(nn.ReLU(inplace=True))
    model = nn.Sequential(nn.Linear(4, 4), nn.Residual(nn.Sequential(nn.ReLU(inplace=True), nn.Linear(4, 4))))
    with pytest.raises(ValueError, match="runs in place and would overwrite"):
        model(np.ones((2, 4), np.float32))
    # after a fresh array inside the body, an in-place activation is fine, and the shortcut still adds the input
    cynet.manual_seed(0)
    block = nn.Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True)))
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    expected = np.maximum(x @ block.body[0].weight.data.T + block.body[0].bias.data, 0) + x
    np.testing.assert_allclose(block(x.copy()), expected, rtol=1e-6)


def test_the_input_and_what_the_body_keeps_are_kept_from_in_place_modules_in_the_shortcut():
    # Nested after a Linear, the block's input is a fresh array that no enclosing module protects: a shortcut starting
    # with an in-place ReLU overwrote it after the body's Linear had kept it, and that Linear's weight gradient,
    # dout^T x, came out of the rectified x (0.8 off for this one).
    model = nn.Sequential(nn.Linear(4, 4), nn.Residual(nn.Sequential(nn.Linear(4, 4)),
                                                       nn.Sequential(nn.ReLU(inplace=True), nn.Linear(4, 4))))
    with pytest.raises(ValueError, match="runs in place and would overwrite"):
        model(np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4))
    # a body that passes x on returns x itself: the shortcut's in-place ReLU would change the body's output too
    model = nn.Sequential(nn.Linear(4, 4), nn.Residual(nn.Identity(), nn.Sequential(nn.ReLU(inplace=True))))
    with pytest.raises(ValueError, match="runs in place and would overwrite"):
        model(np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4))
    # after a fresh array inside the shortcut, an in-place activation is fine: y = body(x) + relu(W x + b)
    cynet.manual_seed(0)
    block = nn.Residual(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True)))
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    body, short = block.body, block.shortcut[0]
    expected = (x @ body.weight.data.T + body.bias.data) + np.maximum(x @ short.weight.data.T + short.bias.data, 0)
    np.testing.assert_allclose(block(x.copy()), expected, rtol=1e-6)


def test_shape_mismatch_and_bad_arguments_are_refused():
    block = nn.Residual(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"the body's output .*\(2, 3\).* and the shortcut's .*\(2, 4\)"):
        block(np.ones((2, 4), np.float32))
    with pytest.raises(TypeError, match="body must be a cynet.nn.Module"):
        nn.Residual(lambda x: x)
    with pytest.raises(ValueError, match="p must lie in"):
        nn.StochasticDepth(1.5)
    with pytest.raises(ValueError, match="mode must be 'row' or 'batch'"):
        nn.StochasticDepth(0.1, mode="channel")
    assert list(_dense_block(shortcut=True).state_dict())[:6] == [
        "0.body.0.weight", "0.body.0.bias", "0.body.2.weight", "0.body.2.bias", "0.shortcut.weight", "0.shortcut.bias"]


def test_stochastic_depth_drops_whole_examples_and_is_unbiased():
    drop = nn.StochasticDepth(0.3, generator=0)
    x = np.random.default_rng(0).standard_normal((20000, 3, 2)).astype(np.float32)
    y = drop(x)
    kept = np.all(y != 0, axis=(1, 2))
    dropped = np.all(y == 0, axis=(1, 2))
    assert np.all(kept | dropped)                                   # each example whole: kept or dropped
    assert abs(dropped.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 20000)
    np.testing.assert_allclose(y[kept], x[kept] / np.float32(0.7), rtol=1e-6)
    dout = np.ones_like(x)
    expected = np.broadcast_to(np.where(kept[:, None, None], np.float32(1 / 0.7), np.float32(0)), x.shape)
    np.testing.assert_array_equal(drop.backward(dout), expected)
    mean = np.mean([nn.StochasticDepth(0.3, generator=s)(np.ones((500, 1))) for s in range(40)])
    assert abs(mean - 1.0) < 4 * np.sqrt(0.3 / 0.7 / 20000)        # E[y] = x

    batch = nn.StochasticDepth(0.5, mode="batch", generator=1)
    outcomes = {float(batch(np.ones((4, 2)))[0, 0]) for _ in range(20)}
    assert outcomes == {0.0, 2.0}
    assert len({tuple(batch(np.ones((4, 2))).ravel()) for _ in range(20)}) == 2


def test_stochastic_depth_is_the_identity_in_eval_and_at_p0_and_zero_at_p1():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert nn.StochasticDepth(0.0)(x) is x
    assert nn.StochasticDepth(0.9).eval()(x) is x
    all_dropped = nn.StochasticDepth(1.0)
    np.testing.assert_array_equal(all_dropped(x), np.zeros_like(x))
    np.testing.assert_array_equal(all_dropped.backward(np.ones_like(x)), np.zeros_like(x))
    drop = nn.StochasticDepth(0.5, generator=2)
    drop.reuse_mask = True
    first = drop(x)
    assert all(np.array_equal(drop(x), first) for _ in range(5))


def test_a_stochastic_depth_mode_set_after_construction_is_checked_at_the_forward():
    drop = nn.StochasticDepth(0.5, generator=0)
    drop.mode = "rows"                  # a typo: was taken for "batch" (one draw for the whole batch), silently
    with pytest.raises(ValueError, match=r"StochasticDepth\(p=0.5, mode='rows'\): mode must be 'row' or 'batch'"):
        drop(np.ones((8, 2), np.float32))


def test_a_net_with_stochastic_depth_resumes_exactly_from_a_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 6)).astype(np.float32), rng.integers(0, 3, 64)

    def trainer():
        cynet.manual_seed(0)
        body = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.StochasticDepth(0.5, generator=7))
        model = nn.Sequential(nn.Residual(body), nn.ReLU(), nn.Linear(6, 3))
        return Trainer(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                       progress=False, seed=0)

    straight = trainer()
    straight.fit(x, y, epochs=3, batch_size=16)
    first = trainer()
    first.fit(x, y, epochs=1, batch_size=16)
    checkpoint.save_trainer(tmp_path / "sd.npz", first)
    resumed = trainer()
    resumed.model[0].body[3].generator = np.random.default_rng(99)      # replaced by the checkpoint's state
    checkpoint.load_trainer(tmp_path / "sd.npz", resumed)
    resumed.fit(x, y, epochs=3, batch_size=16)
    for p, q in zip(resumed.model.parameters(), straight.model.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_fold_batchnorm_folds_inside_residual_branches():
    cynet.manual_seed(1)
    body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.BatchNorm2d(4))
    shortcut = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))
    model = nn.Sequential(nn.Residual(body, shortcut), nn.ReLU(), nn.Flatten(), nn.Linear(100, 3)).to(np.float64)
    x = np.random.default_rng(0).standard_normal((6, 3, 5, 5))
    for _ in range(3):
        model(x * 2 + 1)                                # running statistics away from (0, 1)
    model.eval()
    folded = nn.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert [type(m).__name__ for m in folded[0].body] == ["Conv2d", "ReLU", "Conv2d"]
    np.testing.assert_allclose(folded(x), model(x), rtol=0, atol=1e-12)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())      # the original is untouched


def test_stochastic_depth_passes_the_gradient_check_with_its_mask_fixed_and_refuses_a_scalar():
    x = np.random.default_rng(4).standard_normal((6, 3, 2))
    for mode in ("row", "batch"):
        report = gradcheck.check_module(nn.StochasticDepth(0.5, mode=mode, generator=3), x, num_checks=20)
        assert report.passed, report
    with pytest.raises(ValueError, match=r"input must have a batch axis \(N, \.\.\.\)"):
        nn.StochasticDepth(0.5)(np.float64(1.0))
    drop = nn.StochasticDepth(0.5, generator=0)
    drop(np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"dout must be a float64 array of shape \(4, 2\)"):
        drop.backward(np.ones((3, 2)))


def test_a_branch_that_runs_in_place_only_once_trained_is_refused_at_its_forward():
    # built in eval mode an in-place Dropout does not write into its input, so the build-time check let it through;
    # trained, it overwrote the x that the shortcut adds (y in {0, 4} for x = 1 instead of {1, 3})
    block = nn.Residual(nn.Dropout(0.5, inplace=True).eval())
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(block(x), 2 * x)             # eval: the identity plus x
    block.train()
    with pytest.raises(ValueError, match="runs in place and would overwrite the input"):
        block(x)
    np.testing.assert_array_equal(x, 1)


def test_a_branch_gradient_of_another_shape_than_the_input_is_refused_not_broadcast():
    # a custom shortcut whose backward sums dx over the batch returned (1, 4): it was broadcast into the (5, 4) sum,
    # a silently wrong input gradient
    class SummedOverTheBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x)

        def backward(self, dout, *, input_grad=True):
            dx = self.fc.backward(dout)
            return dx.sum(axis=0, keepdims=True) if input_grad else None

    block = nn.Residual(nn.Linear(4, 4), SummedOverTheBatch())
    y = block(np.ones((5, 4), np.float32))
    with pytest.raises(ValueError, match=r"the shortcut \(SummedOverTheBatch\)\.backward returned an input gradient "
                                         r"of shape \(1, 4\) for its input of shape \(5, 4\)"):
        block.backward(np.ones_like(y))
    assert block.backward(np.ones_like(y), input_grad=False) is None      # no input gradient asked: nothing checked

"""Soft targets: softmax cross-entropy against class-probability targets and with label smoothing (NumPy reference,
numerical gradient, torch), Mixup and Cutout (hand-checked draws), and the trainer's mixup hook (reproducible,
resumable, evaluation untouched).
"""
import numpy as np
import pytest

import cynet
from cynet import nn, optim
from cynet.data import Cutout, Mixup
from cynet.nn.loss import SoftmaxCrossEntropy
from cynet.train import Trainer
from _helpers import assert_resumes_exactly, numerical_gradient, relative_error

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not importable")


def _problem(rng, n=7, c=5, dtype=np.float64, scale=2.0):
    scores = (rng.standard_normal((n, c)) * scale).astype(dtype)
    targets = rng.random((n, c)).astype(dtype)
    targets /= targets.sum(axis=1, keepdims=True)
    return scores, targets


def _reference(scores, targets):
    """-mean_i sum_j t_ij log softmax(s)_ij and its gradient, in float64 NumPy."""
    s = scores.astype(np.float64)
    t = targets.astype(np.float64)
    shifted = s - s.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(s)
    loss = -np.sum(t * log_p) / n
    grad = (np.exp(log_p) * t.sum(axis=1, keepdims=True) - t) / n
    return loss, grad


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-13), (np.float32, 2e-6)])
@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (7, 5), (300, 130)])   # the last is above the parallel threshold
def test_soft_targets_match_the_numpy_reference(rng, dtype, rtol, shape):
    scores, targets = _problem(rng, *shape, dtype=dtype)
    loss = SoftmaxCrossEntropy()
    value = loss(scores, targets)
    expected, grad = _reference(scores, targets)
    assert value == pytest.approx(expected, rel=rtol, abs=1e-15)
    assert loss.backward().dtype == dtype
    np.testing.assert_allclose(loss.backward(), grad, rtol=rtol * 10, atol=rtol * 1e-3)


def test_soft_targets_numerical_gradient(rng):
    scores, targets = _problem(rng)
    targets[2] *= 0.5                                          # rows need not sum to 1
    loss = SoftmaxCrossEntropy()
    loss(scores, targets)
    analytic = loss.backward().copy()
    numeric = numerical_gradient(lambda s: loss.forward(s, targets), scores.copy(), 1.0, h=1e-5)
    assert relative_error(analytic, numeric) < 1e-7


def test_one_hot_targets_equal_integer_labels_and_smoothing_is_pytorchs(rng):
    scores, _ = _problem(rng)
    y = rng.integers(0, 5, len(scores))
    hard, soft = SoftmaxCrossEntropy(), SoftmaxCrossEntropy()
    one_hot = np.eye(5)[y]
    assert soft(scores, one_hot) == pytest.approx(hard(scores, y), rel=1e-14)
    np.testing.assert_allclose(soft.backward(), hard.backward(), rtol=1e-12, atol=1e-17)
    eps = 0.2
    smoothed = SoftmaxCrossEntropy(label_smoothing=eps)
    expected, grad = _reference(scores, one_hot * (1 - eps) + eps / 5)          # PyTorch's definition
    assert smoothed(scores, y) == pytest.approx(expected, rel=1e-14)
    np.testing.assert_allclose(smoothed.backward(), grad, rtol=1e-12, atol=1e-17)
    # smoothing applies to given distributions too
    targets = rng.dirichlet(np.ones(5), len(scores))
    assert smoothed(scores, targets) == pytest.approx(_reference(scores, targets * (1 - eps) + eps / 5)[0], rel=1e-14)
    # its minimum is the entropy of the smoothed target, not 0
    confident = np.full((1, 5), -1e4)
    confident[0, 2] = 1e4
    assert SoftmaxCrossEntropy(label_smoothing=0.0)(confident, np.array([2])) == 0.0
    assert SoftmaxCrossEntropy(label_smoothing=eps)(confident, np.array([2])) == pytest.approx(
        (eps / 5) * 4 * 2e4, rel=1e-12)


@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_targets_and_smoothing_match_torch(rng, dtype, smoothing):
    scores, targets = _problem(rng, 40, 10, dtype)
    y = rng.integers(0, 10, 40)
    loss = nn.CrossEntropyLoss(label_smoothing=smoothing)
    tol = dict(rel=1e-6) if dtype == np.float32 else dict(rel=1e-13)
    for target, torch_target in ((targets, torch.tensor(targets)), (y, torch.tensor(y))):
        value = loss(scores, target)
        ts = torch.tensor(scores, requires_grad=True)
        expected = torch.nn.functional.cross_entropy(ts, torch_target, label_smoothing=smoothing)
        expected.backward()
        assert value == pytest.approx(expected.item(), **tol)
        np.testing.assert_allclose(loss.backward(), ts.grad.numpy(), rtol=tol["rel"] * 10,
                                   atol=1e-7 if dtype == np.float32 else 1e-16)


def test_soft_targets_thread_invariance_and_limits(rng):
    scores, targets = _problem(rng, 400, 100, np.float32)
    results = []
    for n in (1, 2, 4):
        with cynet.threads(n):
            loss = SoftmaxCrossEntropy()
            results.append((loss(scores, targets), loss.backward().copy()))
    for value, grad in results[1:]:
        assert value == results[0][0] and np.array_equal(grad, results[0][1])
    # a class that can never be right (score -inf) with target 0 adds nothing; with a positive target the loss is inf
    s = np.array([[0.0, -np.inf, 1.0]])
    loss = SoftmaxCrossEntropy()
    assert np.isfinite(loss(s, np.array([[0.5, 0.0, 0.5]])))
    assert loss(s, np.array([[0.5, 0.1, 0.4]])) == np.inf


@pytest.mark.parametrize("targets,error,message", [
    (np.full((2, 3), -0.1), ValueError, "target probabilities must be finite and >= 0"),
    (np.array([[0.5, np.nan, 0.5], [1, 0, 0]]), ValueError, "and non-finite ones"),
    (np.full((2, 3), np.nan), ValueError, "got no finite value and non-finite ones"),     # (it warned All-NaN slice)
    (np.full((2, 4), 0.25), ValueError, r"must have the shape of scores \(2, 3\)"),
    (np.array([[1, 0, 0], [0, 1, 0]]), ValueError, r"labels y must have shape \(2,\)"),   # integers: labels
])
def test_soft_target_validation(targets, error, message):
    with pytest.raises(error, match=message):
        SoftmaxCrossEntropy()(np.zeros((2, 3)), targets)


def test_soft_target_kernel_refuses_mismatched_targets():
    from cynet.nn.loss import _k

    with pytest.raises(ValueError, match=r"softmax_cross_entropy_soft: targets \(2, 4\) do not match scores \(2, 3\)"):
        _k().softmax_cross_entropy_soft(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((2, 3)), np.zeros(2), 1)


@pytest.mark.parametrize("value", [-0.1, 1.5, "0.1", True, float("nan")])
def test_label_smoothing_validation(value):
    with pytest.raises(ValueError, match="label_smoothing must be a number in \\[0, 1\\]"):
        nn.CrossEntropyLoss(label_smoothing=value)


def test_reprs():
    assert repr(SoftmaxCrossEntropy()) == "SoftmaxCrossEntropy()"
    assert repr(nn.CrossEntropyLoss(label_smoothing=0.1)) == "CrossEntropyLoss(label_smoothing=0.1)"
    assert repr(Mixup(0.4, 10)) == "Mixup(alpha=0.4, num_classes=10)"
    assert repr(Cutout(8)) == "Cutout(size=8, p=1.0, value=0.0)"


# --- Mixup and Cutout -------------------------------------------------------------------------------------------------
def test_mixup_mixes_inputs_and_one_hot_targets_with_one_beta_draw():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    xm, t = Mixup(alpha=0.4, num_classes=3)(x, y, np.random.default_rng(7))
    draws = np.random.default_rng(7)
    lam, perm = draws.beta(0.4, 0.4), draws.permutation(6)                # the same draws, in the same order
    keep, take = np.float32(lam), np.float32(1 - lam)
    np.testing.assert_array_equal(xm, x * keep + x[perm] * take)
    one_hot = np.eye(3, dtype=np.float32)[y]
    np.testing.assert_array_equal(t, one_hot * keep + one_hot[perm] * take)
    assert xm.dtype == t.dtype == np.float32 and t.shape == (6, 3)
    np.testing.assert_allclose(t.sum(axis=1), 1, rtol=1e-6)
    # given distributions mix as they are
    _, t2 = Mixup(0.4, 3)(x, one_hot, np.random.default_rng(7))
    np.testing.assert_array_equal(t2, t)


@pytest.mark.parametrize("make,args,error,message", [
    (lambda: Mixup(0, 10), None, ValueError, "alpha must be a finite number > 0"),
    (lambda: Mixup(0.2, 1), None, ValueError, "num_classes must be an int >= 2"),
    (lambda: Mixup(0.2), None, TypeError, "num_classes is required"),
    (lambda: Mixup(0.2, 3), (np.zeros((2, 4), np.uint8), np.array([0, 1])), TypeError, "xb must be a float batch"),
    (lambda: Mixup(0.2, 3), (np.zeros((2, 4)), np.array([0, 3])), ValueError, r"labels must lie in \[0, 3\)"),
    (lambda: Mixup(0.2, 3), (np.zeros((2, 4)), np.array([0, 1, 2])), ValueError, "same length"),
    (lambda: Mixup(0.2, 3), (np.zeros((2, 4)), np.zeros((2, 4))), ValueError, "must have 3 columns"),
    (lambda: Mixup(0.2, 3), (np.zeros((2, 4)), np.array(["a", "b"])), TypeError, "integer class indices"),
    # soft targets are held to what the soft-target losses accept: finite, >= 0 (a negative entry mixed with a
    # positive one could come out positive and pass the loss's own check)
    (lambda: Mixup(0.2, 3), (np.zeros((2, 4)), np.array([[-5., 3, 3], [0, 1, 0]])), ValueError,
     "finite and >= 0"),
    (lambda: Mixup(0.2, 3), (np.zeros((2, 4)), np.array([[np.nan, 0, 1], [0, 1, 0]])), ValueError,
     "non-finite"),
])
def test_mixup_validation(make, args, error, message):
    with pytest.raises(error, match=message):
        mixup = make()
        mixup(*args, np.random.default_rng(0))


def test_cutout_zeroes_one_clipped_square_per_image():
    x = np.ones((200, 2, 9, 7), np.float32)
    out = Cutout(size=4)(x, np.random.default_rng(1))
    assert out.dtype == np.float32 and np.all((out == 0) | (out == 1)) and np.all(x == 1)
    holes = out[:, 0] == 0
    assert np.array_equal(holes, out[:, 1] == 0)                           # every channel alike
    for hole in holes:
        rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4                 # clipped at the edges
        assert hole.sum() == len(rows) * len(cols)                         # one solid rectangle
        assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
    assert any(hole.sum() == 16 for hole in holes) and any(hole.sum() < 16 for hole in holes)
    assert np.array_equal(Cutout(4, p=0.0)(x, np.random.default_rng(1)), x)
    assert np.all(Cutout(30, value=-2.0)(x, np.random.default_rng(1)) == -2.0)
    for bad in (dict(size=0), dict(p=1.5), dict(value=float("inf"))):
        with pytest.raises(ValueError):
            Cutout(**bad)
    with pytest.raises(ValueError, match="Cutout: expects a batch of images"):
        Cutout()(np.zeros((2, 12), np.float32))


@pytest.mark.parametrize("value", [-1.0, 256.0, 0.5])
def test_cutout_refuses_a_value_that_uint8_images_cannot_hold(value):
    # -1 would overflow and 0.5 be truncated to 0 without a word
    with pytest.raises(ValueError, match="cannot be stored in uint8 images"):
        Cutout(2, value=value)(np.ones((1, 1, 3, 3), np.uint8), np.random.default_rng(0))
    assert np.all(Cutout(9, value=value)(np.ones((1, 1, 3, 3), np.float32), np.random.default_rng(0)) == value)


def test_cutout_fills_uint8_images_with_a_whole_value():
    out = Cutout(9, value=128)(np.ones((2, 3, 3, 3), np.uint8), np.random.default_rng(0))
    assert out.dtype == np.uint8 and np.all(out == 128)


# --- the trainer's hook -----------------------------------------------------------------------------------------------
def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((96, 6)).astype(np.float32), rng.integers(0, 3, 96)


def _trainer(mixup=Mixup(0.4, 3)):
    cynet.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return Trainer(model, SoftmaxCrossEntropy(), opt, mixup=mixup, progress=False, seed=5)


def test_trainer_mixup_trains_reproducibly_resumes_exactly_and_leaves_evaluation_alone(tmp_path):
    x, y = _data()
    first, second, plain = _trainer(), _trainer(), _trainer(mixup=None)
    for trainer in (first, second, plain):
        trainer.fit(x, y, epochs=3, batch_size=32)
    for p, q in zip(first.model.parameters(), second.model.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert not np.array_equal(first.model[0].weight.data, plain.model[0].weight.data)
    assert all(np.isnan(first.history["train_acc"])) and not any(np.isnan(plain.history["train_acc"]))
    loss, acc = first.evaluate(x, y)                                      # real inputs and labels, no mixing
    scores = first.model.eval()(x)
    first.model.train()
    assert acc == np.mean(np.argmax(scores, axis=1) == y) and np.isfinite(loss)

    assert_resumes_exactly(_trainer, x, y, tmp_path / "mixup.npz", first, epochs=3, batch_size=32)
    with pytest.raises(TypeError, match="mixup must be callable"):
        _trainer(mixup=0.2)


def test_trainer_refuses_mixup_with_a_multiclass_svm_or_as_batch_transform():
    # the SVM needs class indices: it failed at the first batch, blaming float (N, C) "labels y" the user never gave
    from cynet.nn.loss import MulticlassSVM
    x, y = _data()
    model = nn.Sequential(nn.Linear(6, 3))
    with pytest.raises(TypeError, match="mixup gives .* MulticlassSVM cannot take"):
        Trainer(model, MulticlassSVM(), optim.SGD(model.parameters(), lr=0.1), mixup=Mixup(0.4, 3), progress=False)
    with pytest.raises(TypeError, match="pass it as mixup="):     # was "Generator has no len()" at the first batch
        Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), batch_transform=Mixup(0.4, 3))
    trainer = Trainer(model, MulticlassSVM(), optim.SGD(model.parameters(), lr=0.1), progress=False)
    trainer.fit(x, y, epochs=1, batch_size=32)                             # without mixup it trains
    assert trainer.iteration == 3


def test_cutout_refuses_a_value_that_overflows_float16_images():
    with pytest.raises(ValueError, match="overflows float16 images"):
        Cutout(2, value=1e5)(np.ones((1, 1, 3, 3), np.float16), np.random.default_rng(0))


@pytest.mark.parametrize("xb, yb, error, message", [
    (np.float32(1.0), [0], ValueError, r"Mixup: xb must be a batch, examples first \(N, \.\.\.\), got float32 array "
                                       r"of shape \(\)"),
    (np.zeros((1, 4)), np.int64(1), ValueError, r"Mixup: xb and yb must have the same length.*yb of shape \(\)"),
    (np.zeros((2, 4)), None, ValueError, r"Mixup: xb and yb must have the same length.*yb of shape \(\)"),
])
def test_mixup_names_a_batch_without_a_length(xb, yb, error, message):
    """A 0-d batch or label was "TypeError: len() of unsized object" / "object of type 'numpy.int64' has no len()"."""
    with pytest.raises(error, match=message):
        Mixup(0.2, 3)(xb, yb, np.random.default_rng(0))


def test_mixup_takes_labels_of_any_integer_type_or_a_list():
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    y = np.array([0, 2, 1, 1, 0, 2])
    want = Mixup(0.4, 3)(x, y, np.random.default_rng(3))
    for labels in (y.astype(np.uint8), y.astype(np.int8), y.astype(np.uint64), y.astype(">i4"), y.tolist()):
        got = Mixup(0.4, 3)(x, labels, np.random.default_rng(3))
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_cutout_of_bool_images_and_a_clear_error_for_non_numbers():
    """Bool images were "ValueError: data type <class 'numpy.bool'> not inexact" (np.finfo of a bool), object ones
    the same; bool images are cut like integer ones (the value must be storable: 0 or 1)."""
    masks = np.ones((3, 1, 4, 4), bool)
    out = Cutout(2)(masks, np.random.default_rng(1))
    numbers = Cutout(2)(masks.astype(np.uint8), np.random.default_rng(1))
    assert out.dtype == bool
    np.testing.assert_array_equal(out, numbers.astype(bool))
    with pytest.raises(ValueError, match=r"Cutout: value 0\.5 cannot be stored in bool images"):
        Cutout(2, value=0.5)(masks, np.random.default_rng(1))
    with pytest.raises(TypeError, match=r"Cutout: images must be numbers.*got object array of shape \(3, 1, 4, 4\)"):
        Cutout(2)(masks.astype(object), np.random.default_rng(1))

"""Tests of cynet.nn.loss: softmax cross-entropy, the multiclass SVM, MSE and the L2 penalty.

Oracles: NumPy references written below (float64, textbook formulas), hand-computed values, centred-difference
numerical gradients in float64, and PyTorch (``F.cross_entropy``, ``F.multi_margin_loss``, ``F.mse_loss``) when it
imports.
"""
import math

import numpy as np
import pytest

import cynet
from cynet.nn.loss import L2Penalty, MSELoss, MulticlassSVM, SoftmaxCrossEntropy
from cynet.nn.module import Module, Parameter
from _helpers import numerical_gradient, relative_error

DTYPES = [np.float32, np.float64]
SHAPES = [(1, 1), (5, 3), (257, 10), (4096, 10)]   # (4096, 10): 40960 elements, above the parallel threshold


# --- NumPy references (float64) --------------------------------------------------------------------------------------
def ref_softmax(s):
    s = np.asarray(s, np.float64)
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_cross_entropy(s, y):
    """(mean loss, dL/ds) of softmax cross-entropy, in float64."""
    s = np.asarray(s, np.float64)
    n = s.shape[0]
    m = s.max(axis=1)
    lse = m + np.log(np.exp(s - m[:, None]).sum(axis=1))
    loss = np.mean(lse - s[np.arange(n), y])
    e = np.exp(s - m[:, None])
    rows = np.arange(n)
    e_y = e[rows, y].copy()
    e[rows, y] = 0
    others = e.sum(axis=1)                  # p_y - 1 = -others / Z, without the cancellation of p_y - 1
    grad = e / (others + e_y)[:, None]
    grad[rows, y] = -others / (others + e_y)
    return loss, grad / n


def ref_svm(s, y, delta=1.0):
    """(mean loss, dL/ds, active margins) of the Weston-Watkins multiclass hinge loss, in float64."""
    s = np.asarray(s, np.float64)
    n = s.shape[0]
    rows = np.arange(n)
    margins = (s - s[rows, y][:, None]) + delta
    margins[rows, y] = 0
    active = margins > 0
    loss = np.maximum(margins, 0).sum() / n
    grad = active / n
    grad[rows, y] = -active.sum(axis=1) / n
    return loss, grad, active


def ref_mse(p, t):
    d = np.asarray(p, np.float64) - np.asarray(t, np.float64)
    return np.mean(d * d), 2 * d / d.size


def random_problem(rng, shape, dtype, scale=1.0):
    n, c = shape
    scores = (scale * rng.standard_normal(shape)).astype(dtype)
    y = rng.integers(0, c, size=n)
    return scores, y


def svm_problem_away_from_kinks(rng, shape, dtype, delta=1.0, gap=1e-2):
    """Scores whose margins all lie at least ``gap`` from the kink (redrawn rows otherwise)."""
    scores, y = random_problem(rng, shape, np.float64)
    for _ in range(100):
        rows = np.arange(shape[0])
        m = (scores - scores[rows, y][:, None]) + delta
        m[rows, y] = 1.0
        bad = np.abs(m).min(axis=1) < gap
        if not bad.any():
            return scores.astype(dtype), y
        scores[bad] = rng.standard_normal((int(bad.sum()), shape[1]))
    raise AssertionError("could not draw scores away from the kinks")


def torch_or_skip():
    return pytest.importorskip("torch")


# --- against the NumPy reference --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("n_threads", [1, 4])
def test_cross_entropy_matches_reference(rng, dtype, shape, n_threads):
    scores, y = random_problem(rng, shape, dtype, scale=3.0)
    loss = SoftmaxCrossEntropy()
    with cynet.threads(n_threads):
        value = loss(scores, y)
    want, want_grad = ref_cross_entropy(scores, y)
    assert isinstance(value, float) and value == loss.loss
    # float32 inputs are computed in double: the loss is accurate to double rounding, the gradient to float32's
    assert value == pytest.approx(want, rel=1e-13 if dtype == np.float64 else 1e-7, abs=1e-15)
    dscores = loss.backward()
    assert dscores.dtype == dtype and dscores.shape == shape
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(dscores, want_grad, rtol=4 * eps, atol=4 * eps / shape[0] * 1e-3)
    np.testing.assert_allclose(dscores.astype(np.float64).sum(axis=1), 0, atol=8 * eps / shape[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("n_threads", [1, 4])
def test_svm_matches_reference(rng, dtype, shape, n_threads):
    scores, y = random_problem(rng, shape, dtype)
    svm = MulticlassSVM(margin=1.0)
    with cynet.threads(n_threads):
        value = svm(scores, y)
    want, want_grad, want_active = ref_svm(scores, y, 1.0)
    assert isinstance(value, float)
    assert value == pytest.approx(want, rel=1e-12, abs=1e-15)
    # entries are k/N: exactly the reference rounded to the dtype
    np.testing.assert_array_equal(svm.backward(), want_grad.astype(dtype))
    np.testing.assert_array_equal(svm.kink_state(), want_active)


@pytest.mark.parametrize("dtype", DTYPES)
def test_svm_margin_setting(rng, dtype):
    scores, y = random_problem(rng, (40, 7), dtype)
    for delta in (0.0, 0.3, 5.0):
        svm = MulticlassSVM(margin=delta)
        want, want_grad, _ = ref_svm(scores, y, delta)
        assert svm(scores, y) == pytest.approx(want, rel=1e-12, abs=1e-15)
        np.testing.assert_array_equal(svm.backward(), want_grad.astype(dtype))
    assert repr(MulticlassSVM(0.5)) == "MulticlassSVM(margin=0.5)"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (1, 1), (5, 3), (257, 10), (4096, 10), (3, 4, 5)], ids=str)
@pytest.mark.parametrize("n_threads", [1, 4])
def test_mse_matches_reference(rng, dtype, shape, n_threads):
    pred = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    mse = MSELoss()
    with cynet.threads(n_threads):
        value = mse(pred, target)
    want, want_grad = ref_mse(pred, target)
    assert isinstance(value, float)
    assert value == pytest.approx(want, rel=1e-13)
    grad = mse.backward()
    assert grad.dtype == dtype and grad.shape == shape
    # the difference is exact in double: one rounding to the dtype
    np.testing.assert_array_equal(grad, want_grad.astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_probabilities(rng, dtype):
    scores, _ = random_problem(rng, (300, 12), dtype, scale=5.0)
    p = SoftmaxCrossEntropy().probabilities(scores)
    assert p.dtype == dtype and p.shape == scores.shape
    np.testing.assert_allclose(p, ref_softmax(scores), rtol=4 * np.finfo(dtype).eps, atol=1e-300)
    np.testing.assert_allclose(p.astype(np.float64).sum(axis=1), 1, rtol=16 * np.finfo(dtype).eps)


def test_probabilities_does_not_touch_the_cached_gradient(rng):
    scores, y = random_problem(rng, (6, 4), np.float64)
    loss = SoftmaxCrossEntropy()
    value = loss(scores, y)
    grad = loss.backward().copy()
    loss.probabilities(rng.standard_normal((3, 4)))
    assert loss.loss == value
    np.testing.assert_array_equal(loss.backward(), grad)


# --- hand-computed values --------------------------------------------------------------------------------------------
def test_hand_computed_values():
    # softmax CE on equal scores: ln C; gradient (1/C - [j = y]) / N
    ce = SoftmaxCrossEntropy()
    assert ce(np.zeros((2, 4)), np.array([1, 3])) == pytest.approx(math.log(4), rel=1e-15)
    np.testing.assert_allclose(ce.backward(), [[0.125, -0.375, 0.125, 0.125], [0.125, 0.125, 0.125, -0.375]],
                               rtol=1e-15)
    # CS231n's SVM example (scores of the cat, car and frog images, delta = 1): losses 2.9, 0, 12.9
    svm = MulticlassSVM()
    scores = np.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]])
    assert svm(scores, np.array([0, 1, 2])) == pytest.approx((2.9 + 0 + 12.9) / 3, rel=1e-14)
    np.testing.assert_array_equal(svm.backward(), np.array([[-1, 1, 0], [0, 0, 0], [1, 1, -2]]) / 3)
    # MSE
    mse = MSELoss()
    assert mse(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 0.0, 3.0, 5.0])) == 1.25
    np.testing.assert_array_equal(mse.backward(), [0.0, 1.0, 0.0, -0.5])


def test_initial_softmax_loss_is_log_c(rng):
    """CS231n's sanity check: small random scores give a loss of about ln C."""
    for c in (10, 100):
        scores = (1e-3 * rng.standard_normal((500, c))).astype(np.float32)
        value = SoftmaxCrossEntropy()(scores, rng.integers(0, c, 500))
        assert abs(value - math.log(c)) < 5e-3


# --- numerical gradients (float64, centred differences) --------------------------------------------------------------
H = 1e-5


def test_cross_entropy_numerical_gradient(rng):
    scores, y = random_problem(rng, (6, 5), np.float64, scale=2.0)
    loss = SoftmaxCrossEntropy()
    loss(scores, y)
    analytic = loss.backward().copy()
    numeric = numerical_gradient(lambda s: loss.forward(s, y), scores.copy(), 1.0, h=H)
    assert relative_error(analytic, numeric) < 1e-7


def test_svm_numerical_gradient(rng):
    scores, y = svm_problem_away_from_kinks(rng, (6, 5), np.float64)
    svm = MulticlassSVM()
    svm(scores, y)
    analytic, state = svm.backward().copy(), svm.kink_state()
    x = scores.copy()

    def f(s):
        value = svm.forward(s, y)
        assert np.array_equal(svm.kink_state(), state), "a perturbation crossed a kink"
        return value

    numeric = numerical_gradient(f, x, 1.0, h=H)
    assert relative_error(analytic, numeric) < 1e-7


def test_mse_numerical_gradient(rng):
    pred, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    mse = MSELoss()
    mse(pred, target)
    analytic = mse.backward().copy()
    numeric = numerical_gradient(lambda p: mse.forward(p, target), pred.copy(), 1.0, h=H)
    assert relative_error(analytic, numeric) < 1e-7


class TwoParams(Module):
    """A 2-d weight, a 1-d bias and a frozen 2-d matrix: only the first is penalised."""

    def __init__(self, rng, dtype=np.float64):
        super().__init__()
        self.weight = Parameter(rng.standard_normal((4, 3)).astype(dtype))
        self.bias = Parameter(rng.standard_normal(4).astype(dtype))
        self.fixed = Parameter(rng.standard_normal((2, 2)).astype(dtype), requires_grad=False)


def test_l2_penalty_numerical_gradient(rng):
    model = TwoParams(rng)
    reg = L2Penalty(0.3)
    model.zero_grad()
    reg.backward(model)
    for param in (model.weight, model.bias):
        numeric = numerical_gradient(lambda _: reg(model), param.data, 1.0, h=H)
        assert relative_error(param.grad, numeric) < 1e-7
    np.testing.assert_array_equal(model.bias.grad, 0)       # biases are not penalised


def test_gradcheck_module_accepts_the_losses(rng):
    """The losses plug into cynet.gradcheck (the SVM's kink_state included)."""
    from cynet import gradcheck

    scores, y = svm_problem_away_from_kinks(rng, (5, 4), np.float32)
    for loss in (SoftmaxCrossEntropy(), MulticlassSVM()):
        report = gradcheck.check_loss(loss, scores, y, num_checks=20)
        assert report.passed, report


# --- PyTorch ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_matches_torch(rng, dtype):
    torch = torch_or_skip()
    scores, y = random_problem(rng, (64, 10), dtype, scale=4.0)
    loss = SoftmaxCrossEntropy()
    value = loss(scores, y)
    t = torch.from_numpy(scores.astype(np.float64)).requires_grad_()
    want = torch.nn.functional.cross_entropy(t, torch.from_numpy(y))
    want.backward()
    assert value == pytest.approx(want.item(), rel=1e-13 if dtype == np.float64 else 1e-7)
    np.testing.assert_allclose(loss.backward(), t.grad.numpy(), rtol=4 * np.finfo(dtype).eps, atol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_svm_matches_torch_multi_margin_loss(rng, dtype):
    torch = torch_or_skip()
    n, c = 64, 10
    scores, y = svm_problem_away_from_kinks(rng, (n, c), dtype, delta=0.7)
    svm = MulticlassSVM(margin=0.7)
    value = svm(scores, y)
    t = torch.from_numpy(scores.astype(np.float64)).requires_grad_()
    want = torch.nn.functional.multi_margin_loss(t, torch.from_numpy(y), margin=0.7)   # divides each row by C
    want.backward()
    assert value == pytest.approx(c * want.item(), rel=1e-12)
    np.testing.assert_allclose(svm.backward(), c * t.grad.numpy(), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_matches_torch(rng, dtype):
    torch = torch_or_skip()
    pred = rng.standard_normal((33, 7)).astype(dtype)
    target = rng.standard_normal((33, 7)).astype(dtype)
    mse = MSELoss()
    value = mse(pred, target)
    t = torch.from_numpy(pred.astype(np.float64)).requires_grad_()
    want = torch.nn.functional.mse_loss(t, torch.from_numpy(target.astype(np.float64)))
    want.backward()
    assert value == pytest.approx(want.item(), rel=1e-13)
    np.testing.assert_allclose(mse.backward(), t.grad.numpy(), rtol=np.finfo(dtype).eps)


def test_probabilities_match_torch(rng):
    torch = torch_or_skip()
    scores, _ = random_problem(rng, (20, 6), np.float64, scale=10.0)
    want = torch.softmax(torch.from_numpy(scores), dim=1).numpy()
    np.testing.assert_allclose(SoftmaxCrossEntropy().probabilities(scores), want, rtol=1e-14, atol=1e-300)


# --- extreme and non-finite values -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_huge_scores(dtype):
    scores = np.array([[1e30, -1e30, 0.0], [1e30, -1e30, 0.0], [1e30, -1e30, 0.0], [-1e30, -1e30, -1e30]], dtype)
    y = np.array([0, 1, 2, 1])
    loss = SoftmaxCrossEntropy()
    value = loss(scores, y)
    # rows: 0; 2e30; 1e30; ln 3 (all equal)
    want = (0.0 + 2 * float(dtype(1e30)) + float(dtype(1e30)) + math.log(3)) / 4
    assert math.isfinite(value) and value == pytest.approx(want, rel=1e-15)
    third = 1 / 3
    want_grad = np.array([[0, 0, 0], [1, -1, 0], [1, 0, -1], [third, third - 1, third]]) / 4
    np.testing.assert_allclose(loss.backward(), want_grad, rtol=2 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_large_scores_without_overflow(dtype):
    # exp(1000) overflows float64 without the max subtraction
    loss = SoftmaxCrossEntropy()
    assert loss(np.array([[1000.0, 999.0]], dtype), np.array([1])) == pytest.approx(math.log1p(math.e), rel=1e-7)


def test_cross_entropy_tiny_loss_keeps_its_relative_accuracy():
    # a confidently correct row: loss = log(1 + e^-50) ~ 1.9e-22, which lse - s_y would round to 0
    loss = SoftmaxCrossEntropy()
    value = loss(np.array([[50.0, 0.0]]), np.array([0]))
    assert value == pytest.approx(math.log1p(math.exp(-50)), rel=1e-14)
    p_wrong = math.exp(-50) / (1 + math.exp(-50))
    np.testing.assert_allclose(loss.backward(), [[-p_wrong, p_wrong]], rtol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_infinities_and_nan(dtype):
    inf, nan = np.inf, np.nan
    loss = SoftmaxCrossEntropy()
    # -inf in a wrong class: probability 0, the other two share the mass
    assert loss(np.array([[0.0, -inf, 0.0]], dtype), np.array([0])) == pytest.approx(math.log(2), rel=1e-7)
    np.testing.assert_array_equal(loss.backward(), np.array([[-0.5, 0, 0.5]], dtype))
    # -inf at the target: an infinite loss, a finite gradient
    assert loss(np.array([[-inf, 0.0, 0.0]], dtype), np.array([0])) == inf
    np.testing.assert_array_equal(loss.backward(), np.array([[-1, 0.5, 0.5]], dtype))
    # NaN or +inf in a row, or a row of -inf: NaN loss, NaN in that row only
    for bad_row in ([nan, 0.0, 1.0], [0.0, 1.0, nan], [inf, 0.0, 1.0], [0.0, inf, 1.0], [-inf, -inf, -inf]):
        scores = np.array([[1.0, 2.0, 3.0], bad_row], dtype)
        assert math.isnan(loss(scores, np.array([2, 0])))
        grad = loss.backward()
        assert np.isnan(grad[1]).all()
        np.testing.assert_allclose(grad[0], ref_cross_entropy(scores[:1], [2])[1][0] / 2,
                                   rtol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_svm_huge_and_non_finite_scores(dtype):
    inf, nan = np.inf, np.nan
    svm = MulticlassSVM()
    value = svm(np.array([[1e30, -1e30, 0.0]], dtype), np.array([1]))
    big = float(dtype(1e30))
    assert value == pytest.approx((2 * big + 1) + (big + 1), rel=1e-15)
    np.testing.assert_array_equal(svm.backward(), np.array([[1, -2, 1]], dtype))
    # +inf in a wrong class: infinite loss; +inf at the target: every margin is -inf, loss 0
    assert svm(np.array([[0.0, inf]], dtype), np.array([0])) == inf
    np.testing.assert_array_equal(svm.backward(), np.array([[-1, 1]], dtype))
    assert svm(np.array([[inf, 0.0]], dtype), np.array([0])) == 0.0
    np.testing.assert_array_equal(svm.backward(), np.zeros((1, 2), dtype))
    # NaN: NaN loss, NaN at that entry and at the target, the rest of the row and other rows intact
    value = svm(np.array([[0.0, nan, 5.0], [0.0, 0.0, 0.0]], dtype), np.array([0, 0]))
    assert math.isnan(value)
    grad = svm.backward()
    assert np.isnan(grad[0, 0]) and np.isnan(grad[0, 1]) and grad[0, 2] == dtype(0.5)
    np.testing.assert_array_equal(grad[1], np.array([-1, 0.5, 0.5], dtype))


def test_mse_non_finite():
    mse = MSELoss()
    assert mse(np.array([np.inf, 0.0]), np.array([0.0, 0.0])) == np.inf
    assert math.isnan(mse(np.array([np.nan, 0.0]), np.array([0.0, 0.0])))
    assert mse(np.array([1e30], np.float32), np.array([-1e30], np.float32)) == pytest.approx(4e60, rel=1e-7)


# --- thread-count invariance -----------------------------------------------------------------------------------------
def _run_losses(scores, y, pred, target, model):
    out = []
    for loss, args in ((SoftmaxCrossEntropy(), (scores, y)), (MulticlassSVM(), (scores, y)),
                       (MSELoss(), (pred, target))):
        out.append((loss(*args), loss.backward().copy()))
    out.append((SoftmaxCrossEntropy().probabilities(scores),))
    reg = L2Penalty(1e-2)
    model.weight.grad = np.ones_like(model.weight.data)     # accumulate path
    reg.backward(model)
    out.append((reg(model), model.weight.grad.copy()))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_results_do_not_depend_on_the_thread_count(rng, dtype):
    scores, y = random_problem(rng, (4096, 17), dtype, scale=3.0)        # 69632 elements: parallel with 2 threads
    pred, target = rng.standard_normal((300, 150)).astype(dtype), rng.standard_normal((300, 150)).astype(dtype)
    model = TwoParams(rng, dtype)
    model.weight = Parameter(rng.standard_normal((300, 200)).astype(dtype))
    with cynet.threads(1):
        serial = _run_losses(scores, y, pred, target, model)
    with cynet.threads(2):
        parallel = _run_losses(scores, y, pred, target, model)
    for a, b in zip(serial, parallel):
        for u, v in zip(a, b):
            if isinstance(u, float):
                assert u == v
            else:
                np.testing.assert_array_equal(u, v)


# --- input handling and validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_cls", [SoftmaxCrossEntropy, MulticlassSVM])
def test_non_contiguous_and_read_only_scores(rng, loss_cls):
    wide, _ = random_problem(rng, (9, 14), np.float32)
    strided = wide[:, ::2]
    y = rng.integers(0, 7, 9)
    loss = loss_cls()
    want = loss(np.ascontiguousarray(strided), y)
    want_grad = loss.backward().copy()
    assert loss(strided, y) == want
    np.testing.assert_array_equal(loss.backward(), want_grad)
    assert loss(np.asfortranarray(strided), list(y)) == want
    frozen = np.ascontiguousarray(strided)
    frozen.flags.writeable = False
    assert loss(frozen, y.astype(np.uint8)) == want


def test_mse_non_contiguous_and_cast_targets(rng):
    pred = rng.standard_normal((6, 8)).astype(np.float32)
    target = rng.standard_normal((6, 8))                     # float64: cast to the predictions' float32
    mse = MSELoss()
    want = mse(pred, target.astype(np.float32))
    assert mse(np.asfortranarray(pred), target) == want
    assert mse.backward().dtype == np.float32
    value = mse(pred[:, ::2], target[:, ::2])
    assert value == pytest.approx(ref_mse(pred[:, ::2], target[:, ::2].astype(np.float32))[0], rel=1e-13)


def test_backward_before_forward():
    for loss in (SoftmaxCrossEntropy(), MulticlassSVM(), MSELoss()):
        with pytest.raises(RuntimeError, match=f"{type(loss).__name__}: backward called before forward"):
            loss.backward()
    assert MulticlassSVM().kink_state() is None


def test_backward_with_upstream_scalar(rng):
    scores, y = random_problem(rng, (5, 3), np.float32)
    loss = SoftmaxCrossEntropy()
    loss(scores, y)
    grad = loss.backward()
    assert loss.backward() is grad                           # free: the array the forward wrote
    scaled = loss.backward(2.5)
    assert scaled.dtype == np.float32
    np.testing.assert_array_equal(scaled, grad * np.float32(2.5))
    with pytest.raises(TypeError, match="dout must be a real scalar"):
        loss.backward(np.ones(3))


def test_a_new_forward_does_not_overwrite_an_earlier_gradient(rng):
    scores, y = random_problem(rng, (5, 3), np.float64)
    loss = SoftmaxCrossEntropy()
    loss(scores, y)
    first = loss.backward()
    kept = first.copy()
    loss(scores + 1.5, np.zeros(5, np.int64))
    np.testing.assert_array_equal(first, kept)


@pytest.mark.parametrize("loss_cls", [SoftmaxCrossEntropy, MulticlassSVM])
def test_label_validation(loss_cls):
    loss = loss_cls()
    name = loss_cls.__name__
    scores = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=rf"{name}: label 3 at position 2 is out of range \[0, 3\) for scores of "
                                         rf"shape \(4, 3\)"):
        loss(scores, np.array([0, 1, 3, 2]))
    with pytest.raises(ValueError, match=r"label -1 at position 0 .* \(2 labels out of range in all\)"):
        loss(scores, np.array([-1, 1, 5, 2]))
    with pytest.raises(TypeError, match=rf"{name}: labels y must be an integer array.*float64 array of shape \(4,\)"):
        loss(scores, np.array([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(TypeError, match="integer array"):
        loss(scores, np.array([True, False, True, False]))
    with pytest.raises(ValueError, match=rf"{name}: labels y must have shape \(4,\) to match scores of shape "
                                         rf"\(4, 3\), got int64 array of shape \(3,\)"):
        loss(scores, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"shape \(4,\).*int64 array of shape \(4, 1\); pass y.ravel\(\)$"):
        loss(scores, np.zeros((4, 1), np.int64))
    # the learner's usual label mistakes end with the remedy
    with pytest.raises(TypeError, match=rf"{name}: labels y must be an integer array of class indices, got float32 "
                                        rf"array of shape \(4,\); labels read as floats: pass y.astype\(np.int64\)$"):
        loss(scores, np.array([0, 1, 2, 0], np.float32))
    one_hot = np.eye(3, dtype=np.int64)[[0, 1, 2, 0]]
    with pytest.raises(ValueError, match=rf"{name}: labels y must have shape \(4,\) to match scores of shape "
                                         rf"\(4, 3\), got int64 array of shape \(4, 3\); for one-hot rows pass "
                                         rf"y.argmax\(axis=1\)$"):
        loss(scores, one_hot)
    if loss_cls is MulticlassSVM:       # (a float one-hot is a soft target for the cross-entropy, an error here)
        with pytest.raises(TypeError, match=r"MulticlassSVM: labels y must be an integer array of class indices, "
                                            r"got float64 array of shape \(4, 3\); for one-hot rows pass "
                                            r"y.argmax\(axis=1\)$"):
            loss(scores, one_hot.astype(np.float64))


@pytest.mark.parametrize("loss_cls", [SoftmaxCrossEntropy, MulticlassSVM])
def test_scores_validation(loss_cls):
    loss = loss_cls()
    name = loss_cls.__name__
    with pytest.raises(ValueError, match=rf"{name}: scores must be 2-d \(N, C\), got float32 array of shape \(3,\)"):
        loss(np.zeros(3, np.float32), np.array([0, 0, 0]))
    with pytest.raises(TypeError, match=rf"{name}: scores must be a float32 or float64 array, got int64"):
        loss(np.zeros((2, 3), np.int64), np.array([0, 0]))
    with pytest.raises(TypeError, match="float16"):
        loss(np.zeros((2, 3), np.float16), np.array([0, 0]))
    with pytest.raises(ValueError, match=r"N >= 1 rows and C >= 1 classes, got float64 array of shape \(0, 3\)"):
        loss(np.zeros((0, 3)), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match=rf"{name}: scores must be 2-d"):
        loss(np.zeros((1, 1, 1)), [0])


def test_probabilities_validation():
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy.probabilities: scores must be 2-d \(N, C\), got "
                                         r"float64 array of shape \(3,\)"):
        SoftmaxCrossEntropy().probabilities(np.zeros(3))


def test_mse_validation():
    mse = MSELoss()
    with pytest.raises(ValueError, match=r"MSELoss: targets y must have the shape of scores \(5, 1\) \(no "
                                         r"broadcasting\), got float64 array of shape \(5,\)"):
        mse(np.zeros((5, 1)), np.zeros(5))
    with pytest.raises(TypeError, match=r"MSELoss: targets y must be a floating-point array, got int64"):
        mse(np.zeros(5), np.zeros(5, np.int64))
    with pytest.raises(TypeError, match=r"MSELoss: scores \(the predictions\) must be a float32 or float64"):
        mse(np.zeros(5, np.int32), np.zeros(5))
    with pytest.raises(ValueError, match=r"N >= 1"):
        mse(np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"N >= 1"):
        mse(np.float64(1.0), np.float64(1.0))


@pytest.mark.parametrize("margin", [-1.0, math.nan, math.inf, True, "1"])
def test_svm_margin_validation(margin):
    with pytest.raises(ValueError, match="MulticlassSVM: margin must be a finite number >= 0"):
        MulticlassSVM(margin=margin)


# --- L2 penalty ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_l2_penalty_value_and_gradient(rng, dtype):
    model = TwoParams(rng, dtype)
    reg = L2Penalty(0.05)
    w = model.weight.data
    assert reg(model) == pytest.approx(0.5 * 0.05 * np.sum(w.astype(np.float64) ** 2), rel=1e-14)
    assert [name for name, _ in reg.penalized(model)] == ["weight"]
    lam = dtype(0.05)
    # fresh gradient: stale values in the buffer are overwritten, not added to
    model.weight.grad = np.full_like(w, 7.0)
    model.bias.grad = np.full_like(model.bias.data, 3.0)
    model.zero_grad()
    reg.backward(model)
    np.testing.assert_array_equal(model.weight.grad, lam * w)
    np.testing.assert_array_equal(model.bias.grad, 0)
    np.testing.assert_array_equal(model.fixed.grad, 0)
    # accumulated: added to what the data loss put there
    reg.backward(model)
    np.testing.assert_array_equal(model.weight.grad, lam * w + lam * w)
    assert model.weight.grad.dtype == dtype


def test_l2_penalty_through_linear_layers(rng):
    from cynet import nn

    model = nn.Sequential(nn.Linear(5, 4, generator=0), nn.ReLU(), nn.Linear(4, 3, generator=1))
    reg = L2Penalty(0.1)
    assert [name for name, _ in reg.penalized(model)] == ["0.weight", "2.weight"]
    want = 0.05 * sum(np.sum(p.data.astype(np.float64) ** 2) for p in (model[0].weight, model[2].weight))
    assert reg(model) == pytest.approx(want, rel=1e-14)


def test_l2_penalty_shared_parameter_counts_once(rng):
    inner = TwoParams(rng)
    model = Module()
    model.a = inner
    model.b = inner
    reg = L2Penalty(1.0)
    assert len(reg.penalized(model)) == 1
    assert reg(model) == pytest.approx(0.5 * np.sum(inner.weight.data ** 2), rel=1e-14)
    model.zero_grad()
    reg.backward(model)
    np.testing.assert_array_equal(inner.weight.grad, inner.weight.data)


def test_l2_penalty_zero_strength_and_validation(rng):
    model = TwoParams(rng)
    model.weight.grad = np.full((4, 3), 2.0)
    reg = L2Penalty(0)
    assert reg(model) == 0.0
    reg.backward(model)
    np.testing.assert_array_equal(model.weight.grad, 2.0)
    for bad in (-1e-3, math.nan, math.inf, True, None, "0.1"):
        with pytest.raises(ValueError, match="L2Penalty: strength must be a finite number >= 0"):
            L2Penalty(bad)
    with pytest.raises(TypeError, match="L2Penalty: model must be a cynet.nn.Module, got list"):
        L2Penalty(0.1)([model.weight])
    assert repr(L2Penalty(0.001)) == "L2Penalty(strength=0.001)"


def test_cross_entropy_loss_is_softmax_cross_entropy_under_pytorchs_name():
    from cynet import nn
    rng = np.random.default_rng(11)
    scores = rng.standard_normal((6, 5)).astype(np.float32)
    y = rng.integers(0, 5, 6)
    a, b = nn.CrossEntropyLoss(), nn.SoftmaxCrossEntropy()
    assert a(scores, y) == b(scores, y)
    assert np.array_equal(a.backward(), b.backward())
    s64 = scores.astype(np.float64)
    expected = np.mean(np.log(np.exp(s64).sum(1)) - s64[np.arange(6), y])     # hand formula, float64
    assert a(scores, y) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(TypeError, match="got ignore_index="):
        nn.CrossEntropyLoss(ignore_index=-100)                 # PyTorch options cynet does not take
    # torch's first positional argument is the class weights: it was read as a label smoothing ("must be a number
    # in [0, 1], got array(...)"), a ValueError about something the user never passed
    with pytest.raises(TypeError, match=r"1 positional argument\(s\) \(torch's first is weight"):
        nn.CrossEntropyLoss(np.array([1.0, 2.0, 3.0]))
    assert nn.CrossEntropyLoss(label_smoothing=0.25).label_smoothing == 0.25


def test_a_loss_value_is_a_float_with_item_and_a_backward_that_says_how():
    import copy
    import pickle

    from cynet.nn.loss import LossValue

    loss_fn = SoftmaxCrossEntropy()
    value = loss_fn(np.zeros((2, 4), np.float32), np.array([0, 3]))
    assert isinstance(value, LossValue) and isinstance(value, float)
    assert value.item() == pytest.approx(math.log(4)) and type(value.item()) is float      # ln C at zero scores
    with pytest.raises(TypeError, match=r"model.backward\(loss_fn.backward\(\)\)"):
        value.backward()
    assert type(pickle.loads(pickle.dumps(value))) is float and type(copy.deepcopy(value)) is float
    assert isinstance(MSELoss()(np.zeros(3, np.float32), np.ones(3, np.float32)), LossValue)


@pytest.mark.parametrize("targets", ["smoothing", "soft"])
def test_a_plus_inf_score_makes_the_whole_row_nan_with_soft_targets_too(targets):
    # the soft kernel counted the +inf entry among the maxima and gave the finite columns -t_j / N; the docstring
    # (and the integer-label kernel) make the loss and that row of the gradient NaN
    scores = np.array([[1.0, np.inf, 2.0], [0.5, 0.1, -0.3]], np.float32)
    if targets == "smoothing":
        loss_fn, y = SoftmaxCrossEntropy(label_smoothing=0.1), np.array([0, 2])
    else:
        loss_fn, y = SoftmaxCrossEntropy(), np.array([[0.5, 0.0, 0.5], [0.2, 0.3, 0.5]], np.float32)
    with np.errstate(invalid="ignore"):
        loss = loss_fn.forward(scores, y)
    grad = loss_fn.backward()
    assert np.isnan(loss) and np.isnan(grad[0]).all() and np.isfinite(grad[1]).all()


def test_soft_targets_are_checked_in_the_scores_dtype():
    # 1e39 is finite in float64 and inf in float32: it passed the check, then gave loss inf and an inf gradient
    scores = np.zeros((1, 3), np.float32)
    with pytest.raises(ValueError, match="finite"):
        SoftmaxCrossEntropy().forward(scores, np.array([[1e39, 0.0, 0.0]]))


def test_mse_loss_refuses_pytorchs_arguments_by_its_own_name():
    # MSELoss(reduction='sum') / MSELoss(None) raised "_DataLoss.__init__() got an unexpected keyword argument
    # 'reduction'": an internal class named, not the loss
    for args, kwargs, shown in [((), {"reduction": "sum"}, "reduction="),
                                ((), {"size_average": False}, "size_average="),
                                ((), {"reduce": False}, "reduce="), ((None,), {}, "1 positional argument")]:
        with pytest.raises(TypeError, match=f"MSELoss: takes no arguments.*got {shown}"):
            MSELoss(*args, **kwargs)
    assert MSELoss()(np.zeros(2), np.ones(2)) == 1.0

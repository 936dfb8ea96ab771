"""cynet.gradcheck: relative error, verdict bands, and the checker on hand-made modules with known gradients.

Oracles: hand-computed relative errors; small Module subclasses written here whose correct derivatives are derived
by hand (a quadratic layer, a ReLU, a squared-error and a hinge loss, an L2 penalty), together with deliberately
broken twins whose gradients are wrong by a known amount; NumPy formulas for the expected numerical derivatives;
hand arguments for where the truth is known exactly (a bias that batch norm cancels has gradient 0; a max-pooling
window changes its winner under a perturbation of h only at a tie) or is below the rounding floor.
"""
import numpy as np
import pytest

from cynet import gradcheck, nn
from cynet.gradcheck import GradientCheckError, check_loss, check_model, check_module, rel_error, verdict
from cynet.nn import Module, Parameter

try:
    from cynet.nn import loss as nn_loss
except ImportError:  # pragma: no cover - depends on the state of the tree
    nn_loss = None

needs_loss = pytest.mark.skipif(nn_loss is None, reason="cynet.nn.loss is not available yet")

H = 1e-5
KINKED = "ok for kinked functions (fine if kinks present, otherwise suspicious)"


# --- hand-made modules -----------------------------------------------------------------------------------------------
class Quadratic(Module):
    """y = w * x**2 + b per feature: dw = sum_n dout x^2, db = sum_n dout, dx = 2 w x dout."""

    def __init__(self, d, dtype=np.float64, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.weight = Parameter(rng.standard_normal(d).astype(dtype))
        self.bias = Parameter(rng.standard_normal(d).astype(dtype))
        self.seen_dtypes = []

    def forward(self, x):
        self.seen_dtypes.append(x.dtype)
        self._x = x
        return self.weight.data * x ** 2 + self.bias.data

    def backward(self, dout, *, input_grad=True):
        x = self._x
        if self.weight.requires_grad:
            self.weight.accumulate((dout * x ** 2).sum(axis=0))
        if self.bias.requires_grad:
            self.bias.accumulate(dout.sum(axis=0))
        return 2 * self.weight.data * x * dout if input_grad else None


class InputGradTwiceTooLarge(Quadratic):
    def backward(self, dout, *, input_grad=True):
        dx = super().backward(dout, input_grad=input_grad)
        return 2 * dx


class MissingBiasGradient(Quadratic):
    def backward(self, dout, *, input_grad=True):
        self.weight.accumulate((dout * self._x ** 2).sum(axis=0))
        return 2 * self.weight.data * self._x * dout


class SlightlyOff(Quadratic):
    """dx off by a relative 1e-3: rel error 1e-3 / (1 + 1e-3), the "uncomfortable" band."""

    def backward(self, dout, *, input_grad=True):
        return super().backward(dout, input_grad=input_grad) * (1 + 1e-3)


class Relu(Module):
    """max(0, x) with its kink at 0; kink_state() is the mask x > 0 of the last forward."""

    def forward(self, x):
        self._x = x
        return np.maximum(x, 0)

    def backward(self, dout, *, input_grad=True):
        return dout * (self._x > 0)

    def kink_state(self):
        return self._x > 0


class ReluWithoutKinkState(Relu):
    kink_state = None           # hides the method: the checker cannot see the kinks


class SquaredError:
    """L = 0.5 * mean_n sum_j (s - y)^2; dL/ds = (s - y) / N."""

    def forward(self, scores, y):
        self._d = scores - y
        return 0.5 * np.sum(self._d ** 2) / scores.shape[0]

    def backward(self):
        return self._d / self._d.shape[0]


class SquaredErrorWrong(SquaredError):
    def backward(self):
        return self._d            # forgot the 1/N


class Hinge:
    """L = sum_n sum_{j != y_n} max(0, s_nj - s_ny + 1) / N (the multiclass SVM), with kink_state = margins > 0."""

    def forward(self, scores, y):
        n = scores.shape[0]
        margins = scores - scores[np.arange(n), y][:, None] + 1.0
        margins[np.arange(n), y] = 0.0
        self._pos = margins > 0
        self._y = y
        return np.maximum(margins, 0).sum() / n

    def backward(self):
        n = self._pos.shape[0]
        d = self._pos.astype(np.float64)
        d[np.arange(n), self._y] = -d.sum(axis=1)
        return d / n

    def kink_state(self):
        return self._pos


class L2:
    """R = strength * sum of squared weights (biases not penalised); dR/dW = 2 strength W."""

    def __init__(self, strength, factor=2.0):
        self.strength, self.factor = strength, factor

    def __call__(self, model):
        return self.strength * sum(np.sum(p.data ** 2) for name, p in model.named_parameters()
                                   if name.endswith("weight"))

    def backward(self, model):
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.requires_grad:
                p.accumulate(self.factor * self.strength * p.data)


def batch(shape=(4, 3), seed=1, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --- rel_error and verdict -------------------------------------------------------------------------------------------
def test_rel_error_values():
    np.testing.assert_allclose(rel_error([1.0, -2.0, 3.0, 1e-8], [1.1, 2.0, 3.0, 2e-8]),
                               [0.1 / 1.1, 2.0, 0.0, 0.5], rtol=1e-12)
    assert rel_error(0.0, 0.0) == 0.0                 # both zero: no error
    np.testing.assert_array_equal(rel_error([0.0, -0.0], [0.0, 0.0]), [0.0, 0.0])
    assert rel_error(0.0, 1e-12) == 1.0               # one zero: as wrong as it gets
    assert rel_error(2.0, 3.0) == rel_error(3.0, 2.0)
    assert np.isnan(rel_error(np.nan, 1.0))


@pytest.mark.parametrize("error, expected", [
    (0.5, "wrong"), (1.01e-2, "wrong"), (1e-2, "uncomfortable"), (1e-3, "uncomfortable"), (1.01e-4, "uncomfortable"),
    (1e-4, KINKED), (1e-6, KINKED), (1.01e-7, KINKED), (1e-7, "good"), (0.0, "good"), (float("nan"), "wrong"),
    (float("inf"), "wrong"),
])
def test_verdict_bands(error, expected):
    assert verdict(error) == expected


# --- check_module ----------------------------------------------------------------------------------------------------
def test_correct_module_passes_and_numeric_matches_formula():
    x = batch()
    dout = np.random.default_rng(3).standard_normal((4, 3))
    report = check_module(Quadratic(3), x, num_checks=10, seed=3, dout=dout)
    assert report.passed and report.verdict == "good" and report.max_error < 1e-7
    assert [a.name for a in report.arrays] == ["weight", "bias", "input"]
    assert [a.num_checked for a in report.arrays] == [3, 3, 10]      # all 3 + 3 parameter entries, 10 of 12 inputs
    assert report.num_kinks == 0 and not report.kinks_present
    # the numerical derivatives are those of L = sum(dout * (w x^2 + b)) written out here
    w = np.random.default_rng(0).standard_normal(3)
    expected = {"weight": (dout * x ** 2).sum(0), "bias": dout.sum(0), "input": 2 * w * x * dout}
    for a in report.arrays:
        np.testing.assert_allclose(a.numeric, [expected[a.name][i] for i in a.indices], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(a.analytic, [expected[a.name][i] for i in a.indices], rtol=1e-14)


def test_input_gradient_factor_two_off_is_wrong():
    report = check_module(InputGradTwiceTooLarge(3), batch())
    assert report["weight"].max_error < 1e-7 and report["bias"].max_error < 1e-7
    assert report["input"].max_error == pytest.approx(0.5, rel=1e-6)         # |2n - n| / |2n|
    assert report.verdict == "wrong" and not report.passed
    with pytest.raises(GradientCheckError, match=r"(?s)gradient check failed.*input.*wrong.*FAILED"):
        report.raise_if_failed()


def test_missing_bias_gradient_is_wrong():
    report = check_module(MissingBiasGradient(3), batch())
    assert report["bias"].max_error == 1.0           # analytic 0 against a non-zero numerical gradient
    assert report["weight"].max_error < 1e-7
    assert report.verdict == "wrong" and not report.passed
    assert "worst entry (module): bias[" in str(report)


def test_slightly_wrong_gradient_is_uncomfortable():
    report = check_module(SlightlyOff(3), batch())
    assert report["input"].max_error == pytest.approx(1e-3 / (1 + 1e-3), rel=1e-4)
    assert report.verdict == "uncomfortable" and not report.passed


def test_kinks_crossed_are_reported_and_skipped():
    # half of the inputs sit at +-h/2, where x +- h lands on the other side of the kink (the centred difference
    # there is 3/4 of the slope: a rel error of 1/4); the other half are far from 0
    rng = np.random.default_rng(0)
    near = H / 2 * rng.choice([-1.0, 1.0], size=(4, 3))
    far = rng.uniform(0.1, 1.0, size=(4, 3)) * rng.choice([-1.0, 1.0], size=(4, 3))
    x = np.concatenate([near, far], axis=1)
    report = check_module(Relu(), x, num_checks=24)
    a = report["input"]
    assert a.num_kinks == 12 and a.num_checked == 12
    assert all(x[idx] == pytest.approx(H / 2, rel=1e-9) or x[idx] == pytest.approx(-H / 2, rel=1e-9)
               for idx, k in zip(a.indices, a.kink) if k)
    np.testing.assert_allclose(a.errors[a.kink & (a.analytic != 0)], 0.25, rtol=1e-5)   # they would fail
    assert a.max_error < 1e-7 and report.kinks_present and report.passed
    text = str(report)
    assert "12 kink-crossed entries skipped" in text and "kinks present" in text

    # the same check without kink_state: the crossed entries count, and the check fails
    blind = check_module(ReluWithoutKinkState(), x, num_checks=24)
    assert blind["input"].num_kinks == 0 and blind.verdict == "wrong" and not blind.passed


class InputGradOff(Quadratic):
    """dx ``relative`` too large: a real discrepancy (1e-6: far above the centred difference's rounding noise; 3e-7:
    below the smooth tolerance 1e-6, above the lecture's "good" bound 1e-7)."""

    def __init__(self, d, relative):
        super().__init__(d)
        self.relative = relative

    def backward(self, dout, *, input_grad=True):
        dx = super().backward(dout, input_grad=input_grad)
        return None if dx is None else dx * (1 + self.relative)


def test_kinked_threshold_is_relaxed_to_1e_4():
    x = batch((4, 3)) + np.sign(batch((4, 3))) * 0.5
    smooth = check_module(InputGradOff(3, 1e-6), x, tolerance=1e-7)
    assert not smooth.passed and smooth.threshold == 1e-7 and 5e-7 < smooth.max_error < 2e-6
    kinked = check_module(nn.Sequential(InputGradOff(3, 1e-6), Relu()), x, tolerance=1e-7)
    assert kinked.kinks_present and kinked.threshold == 1e-4 and kinked.passed


def test_seed_reproducibility():
    x = batch((5, 4))
    a = check_module(Quadratic(4), x, num_checks=6, seed=7)
    b = check_module(Quadratic(4), x, num_checks=6, seed=7)
    c = check_module(Quadratic(4), x, num_checks=6, seed=8)
    assert [r.indices for r in a.arrays] == [r.indices for r in b.arrays]
    for ra, rb in zip(a.arrays, b.arrays):
        np.testing.assert_array_equal(ra.numeric, rb.numeric)
        np.testing.assert_array_equal(ra.errors, rb.errors)
    assert a["input"].indices != c["input"].indices
    assert len(set(a["input"].indices)) == 6          # distinct entries


@pytest.mark.parametrize("seed", [None, True, -1, 1.0, [1, 2]])
def test_a_seed_that_is_not_a_non_negative_int_is_refused(seed):
    # seed=None was taken by default_rng(None): fresh entropy, another sample of entries (and dropout masks) on
    # every call, with "seed None" in the report; True was taken as 1
    x = batch((5, 4))
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        check_module(Quadratic(4), x, seed=seed)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        check_loss(SquaredError(), x, x, seed=seed)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        check_model(Quadratic(4), SquaredError(), x, x, seed=seed)
    assert check_module(Quadratic(4), x, seed=np.int64(7))["input"].indices == \
        check_module(Quadratic(4), x, seed=7)["input"].indices


def test_runs_in_float64_and_leaves_the_module_alone():
    module = Quadratic(3, dtype=np.float32)
    before = module.state_dict()
    report = check_module(module, batch(dtype=np.float32))
    assert report.passed and report.max_error < 1e-7            # impossible in float32
    assert module.seen_dtypes == [] and module.weight.dtype == np.float32
    for k, v in module.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_given_dout_check_input_false_and_frozen_parameters():
    module = Quadratic(3)
    module.bias.requires_grad = False
    report = check_module(module, batch(), dout=np.ones((4, 3)), check_input=False)
    assert [a.name for a in report.arrays] == ["weight"]
    np.testing.assert_allclose(report["weight"].numeric, (batch() ** 2).sum(0), rtol=1e-8)
    assert "frozen parameters skipped: bias" in str(report)
    with pytest.raises(ValueError, match=r"check_module: dout must have the output's shape \(4, 3\)"):
        check_module(Quadratic(3), batch(), dout=np.ones((3, 4)))


def test_argument_errors():
    with pytest.raises(ValueError, match="num_checks must be a positive int, got 0"):
        check_module(Quadratic(3), batch(), num_checks=0)
    with pytest.raises(ValueError, match="h must be a positive finite number"):
        check_module(Quadratic(3), batch(), h=-1e-5)
    with pytest.raises(TypeError, match="check_module: x must be floating point.*int64"):
        check_module(Quadratic(3), np.ones((4, 3), np.int64))
    with pytest.raises(KeyError, match="no array named 'gamma'"):
        check_module(Quadratic(3), batch())["gamma"]


def test_report_table():
    text = str(check_module(Quadratic(3), batch()))
    lines = text.splitlines()
    assert lines[0].startswith("Gradient check: float64, centred differences h=1e-05")
    assert lines[1].split()[:9] == ["section", "array", "shape", "checked", "kinks", "below", "noise", "max", "rel"]
    assert lines[2].split()[:6] == ["module", "weight", "(3,)", "3", "0", "0"]
    assert lines[-1].startswith("overall: max rel error") and "good; PASSED" in lines[-1]


# --- check_loss ------------------------------------------------------------------------------------------------------
def test_check_loss_correct_and_wrong():
    scores, y = batch((5, 3)), batch((5, 3), seed=2)
    report = check_loss(SquaredError(), scores, y, num_checks=15)
    assert report.passed and report.max_error < 1e-7 and report["scores"].num_checked == 15
    wrong = check_loss(SquaredErrorWrong(), scores, y)
    assert wrong["scores"].max_error == pytest.approx(0.8, rel=1e-6)       # |5n - n| / |5n|
    assert wrong.verdict == "wrong" and not wrong.passed


def test_check_loss_kinks_of_the_hinge():
    rng = np.random.default_rng(4)
    scores = rng.standard_normal((6, 4))
    y = rng.integers(0, 4, size=6)
    report = check_loss(Hinge(), scores, y, num_checks=24)
    assert report.kinks_present and report.passed and report["scores"].num_kinks == 0
    # put the margins of row 0 at +-h/2 from the kink: s_0j = s_0y - 1 +- h/2 for j != y_0; then moving any score
    # of row 0 by h (s_0y included: it shifts every margin) crosses a kink, and no other entry does
    others = np.arange(4) != y[0]
    scores[0, others] = scores[0, y[0]] - 1 + H / 2 * np.array([1.0, -1.0, 1.0])
    report = check_loss(Hinge(), scores, y, num_checks=24)
    a = report["scores"]
    assert a.num_kinks == 4 and {idx for idx, k in zip(a.indices, a.kink) if k} == {(0, j) for j in range(4)}
    assert report.passed and a.max_error < 1e-7


# --- check_model -----------------------------------------------------------------------------------------------------
def test_check_model_with_regularisation_checked_separately():
    model = nn.Sequential(Quadratic(3, seed=0), Quadratic(3, seed=1))
    x, y = batch(), batch(seed=2)
    report = check_model(model, SquaredError(), x, y, regularization=L2(0.1))
    assert [(a.section, a.name) for a in report.arrays] == [
        ("data loss", "0.weight"), ("data loss", "0.bias"), ("data loss", "1.weight"), ("data loss", "1.bias"),
        ("data loss", "input"), ("regularisation", "0.weight"), ("regularisation", "0.bias"),
        ("regularisation", "1.weight"), ("regularisation", "1.bias")]
    assert report.passed and report.max_error < 1e-7
    assert "regularisation checked separately" in str(report)
    reg = [a for a in report.arrays if a.section == "regularisation"]
    w0 = model[0].weight.data
    np.testing.assert_allclose(reg[0].numeric, [0.2 * w0[i] for i in reg[0].indices], rtol=1e-7)

    # a penalty with half its gradient: the data-loss section stays good, the regularisation section is wrong
    bad = check_model(model, SquaredError(), x, y, regularization=L2(0.1, factor=1.0))
    assert all(a.max_error < 1e-7 for a in bad.arrays if a.section == "data loss")
    assert bad["1.weight"].max_error < 1e-7                 # lookup by name finds the data-loss section first
    assert max(a.max_error for a in bad.arrays if a.section == "regularisation") == pytest.approx(0.5)
    assert not bad.passed


def test_check_model_finds_a_wrong_loss():
    model = nn.Sequential(Quadratic(3))
    report = check_model(model, SquaredErrorWrong(), batch(), batch(seed=2))
    assert report.verdict == "wrong" and not report.passed


# --- with cynet.nn layers --------------------------------------------------------------------------------------------
def test_linear_relu_model_end_to_end():
    model = nn.Sequential(nn.Linear(5, 4, generator=0), nn.ReLU(), nn.Linear(4, 3, generator=1))
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    report = check_module(model, x, num_checks=12)
    assert report.passed and report.max_error < 1e-7 and report.kinks_present
    assert [a.name for a in report.arrays] == ["0.weight", "0.bias", "2.weight", "2.bias", "input"]
    report = check_model(model, SquaredError(), x, np.zeros((6, 3)), regularization=L2(1e-2))
    assert report.passed and report.max_error < 1e-7


def test_dropout_is_fixed_during_the_check():
    model = nn.Sequential(nn.Linear(6, 5, generator=0), nn.Dropout(0.5, generator=3), nn.Linear(5, 2, generator=1))
    report = check_module(model, np.random.default_rng(1).standard_normal((8, 6)))
    assert report.passed and report.max_error < 1e-7 and "dropout fixed" in str(report)
    assert model[1].reuse_mask is False                 # on the copy only
    report = check_module(model.eval(), np.random.default_rng(1).standard_normal((8, 6)))
    assert report.passed and "dropout fixed" not in str(report)


@needs_loss
def test_cynet_losses_and_l2_penalty():
    rng = np.random.default_rng(0)
    scores, y = rng.standard_normal((6, 4)), rng.integers(0, 4, size=6)
    for loss in (nn_loss.SoftmaxCrossEntropy(), nn_loss.MulticlassSVM()):
        assert check_loss(loss, scores, y).passed
    assert check_loss(nn_loss.MSELoss(), scores, rng.standard_normal((6, 4))).passed
    model = nn.Sequential(nn.Linear(5, 4, generator=0), nn.ReLU(), nn.Linear(4, 4, generator=1))
    report = check_model(model, nn_loss.SoftmaxCrossEntropy(), rng.standard_normal((6, 5)), y,
                         regularization=nn_loss.L2Penalty(0.1))
    assert report.passed and any(a.section == "regularisation" for a in report.arrays)
    assert gradcheck.verdict(report.max_error) in ("good", KINKED)


def test_cynet_relu_and_maxout_kinks():
    rng = np.random.default_rng(2)
    x = np.concatenate([H / 2 * rng.choice([-1.0, 1.0], size=(3, 4)), rng.uniform(0.1, 1, (3, 4))], axis=1)
    report = check_module(nn.ReLU(), x, num_checks=24)
    assert report["input"].num_kinks == 12 and report.passed
    # Maxout: two pieces of unit 0 tied up to h/4 for every sample, so moving an input by h may swap the winner
    model = nn.Maxout(3, 2, pieces=2, generator=0).to(np.float64)
    w, b = model.linear.weight.data, model.linear.bias.data
    w[2] = w[0]                                   # piece 1 of unit 0 (row 2) = piece 0 (row 0) + a tiny offset
    b[2] = b[0] + H / 4
    x = rng.standard_normal((5, 3))
    report = check_module(model, x, num_checks=15)
    assert report["input"].num_kinks == 0                       # the tie is in the bias: moving x never swaps
    # b[0] and b[2] swap the winner
    assert report["linear.bias"].num_kinks == 2 and report.passed


def test_zero_gradient_up_to_rounding_passes_but_a_missing_small_gradient_does_not():
    # A Linear followed by batch norm: the Linear's bias cannot change the normalised output, so its gradient is
    # exactly 0 in exact arithmetic and ~1e-20 after rounding; the centred difference gives 0 or ~1e-11. Both are
    # below the difference's rounding noise: the check must call them equal, not "wrong".
    from cynet.nn.loss import SoftmaxCrossEntropy

    rng = np.random.default_rng(3)
    model = nn.Sequential(nn.Linear(6, 5, generator=0), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3, generator=1))
    x = rng.standard_normal((8, 6))
    y = rng.integers(0, 3, 8)
    report = gradcheck.check_model(model, SoftmaxCrossEntropy(), x, y, num_checks=5)
    bias = report["0.bias"]
    assert np.all(np.abs(bias.analytic) < 1e-12) and np.all(bias.errors == 0.0)
    assert report.passed, str(report)
    # (an analytic 0 against a numerical gradient above the noise is still "wrong": test_missing_bias_gradient_is_wrong)


def _near_zero_weight_model():
    model = nn.Sequential(nn.Linear(5, 4, generator=0), nn.Tanh(), nn.Linear(4, 3, generator=1))
    model[0].weight.data[0, 1] = 3e-6           # within h of the kink of |w|
    return model


def test_an_l1_penalty_reports_the_weights_near_zero_as_kinks_crossed():
    # |w| has its kink at 0: for a weight within h of it, the centred difference straddles the kink (CS231n: weights
    # near 0 are what L1 produces), and the entry is counted as kink crossed, not as a wrong gradient
    from cynet.nn.loss import L1Penalty, L2Penalty, SoftmaxCrossEntropy

    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    for penalty in (L1Penalty(1e-2), L1Penalty(1e-2) + L2Penalty(1e-3)):
        report = check_model(_near_zero_weight_model(), SoftmaxCrossEntropy(), x, y, regularization=penalty,
                             num_checks=100)
        weight = [a for a in report.arrays if a.section == "regularisation" and a.name == "0.weight"][0]
        assert weight.kink.sum() == 1 and weight.indices[int(np.argmax(weight.kink))] == (0, 1)
        assert report.passed, str(report)
    assert L2Penalty(1e-2).kink_state(_near_zero_weight_model()) is None


def test_a_tiny_gradient_equal_to_within_the_rounding_noise_agrees():
    # an L2 penalty's gradient at a weight of 3e-6 is 3e-8: its centred difference over a penalty near 0.05 differs
    # by the rounding noise only (a relative error of ~1e-6), which is agreement, not a suspicious gradient
    from cynet.nn.loss import L2Penalty, SoftmaxCrossEntropy

    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    report = check_model(_near_zero_weight_model(), SoftmaxCrossEntropy(), x, y, regularization=L2Penalty(1e-2),
                         num_checks=100)
    assert report.passed, str(report)
    # counted as 0, but the table shows the error measured and says why its band is not the verdict's
    weight = next(a for a in report.arrays if a.section == "regularisation" and a.name == "0.weight")
    assert weight.max_error == 0 and 1e-7 < weight.max_measured_error < 1e-4
    row = next(line for line in str(report).splitlines() if line.startswith("regularisation  0.weight"))
    assert f"{weight.max_measured_error:.2e}" in row and row.endswith("good (agrees within the loss's rounding)")
    assert "counted as 0: max counted 0.00e+00) -> good; PASSED" in str(report).splitlines()[-1]


def test_the_report_shows_the_relative_errors_measured_not_zeros():
    # every entry of a right gradient agrees within the loss's rounding floor and counts as 0 in the verdict; the
    # table printed "0.00e+00" for every array, a number no centred difference gives (the notes' 1e-7 .. 1e-11)
    from cynet.nn.loss import SoftmaxCrossEntropy

    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(20, 16, dtype=np.float64, generator=1), nn.Tanh(),
                          nn.Linear(16, 4, dtype=np.float64, generator=2))
    x, y = rng.standard_normal((8, 20)), rng.integers(0, 4, 8)
    report = check_model(model, SoftmaxCrossEntropy(), x, y)
    assert report.passed and report.verdict == "good" and report.max_error == 0
    lines = str(report).splitlines()
    for a in report.arrays:
        an, nu = a.analytic, a.numeric
        measured = np.max(np.abs(an - nu) / np.maximum(np.abs(an), np.abs(nu)))       # the notes' formula
        assert 0 < measured < 1e-7 and a.max_measured_error == measured
        row = next(line for line in lines if line.split()[:3] == ["data", "loss", a.name])
        assert row.split()[-2:] == [f"{measured:.2e}", "good"]
    assert lines[-1].startswith(f"overall: max rel error {report.max_measured_error:.2e} -> good; PASSED")


def test_a_penalty_with_a_module_style_kink_state_still_works():
    # a regulariser may expose kink_state() without the model argument, as modules do: it is called that way
    from cynet.nn.loss import L2Penalty, SoftmaxCrossEntropy

    calls = []

    class Smooth(L2Penalty):
        def kink_state(self):                    # the module form
            calls.append(1)
            return None

    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    report = check_model(_near_zero_weight_model(), SoftmaxCrossEntropy(), x, y, regularization=Smooth(1e-2),
                         num_checks=10)
    assert report.passed and calls


# --- rounding noise: estimated from the second difference, and not counted as verified ------------------------------
def _bn_after_biased_linear(seed):
    """Linear(6, 8) -> BatchNorm1d(8) with bias 1 against a batch spread of 0.01 and gamma 20: batch norm subtracts
    the batch mean, so the Linear's bias cancels exactly (dL/db = 0 for any loss downstream), while the forward loses
    about two digits in that subtraction and gamma amplifies them: the centred difference of the bias is rounding
    noise far above 10 eps |L| / h."""
    model = nn.Sequential(nn.Linear(6, 8, dtype=np.float64, generator=seed), nn.BatchNorm1d(8, dtype=np.float64))
    model[0].bias.data[...] = 1.0
    model[1].weight.data[...] = 20.0
    x = np.random.default_rng(seed).standard_normal((16, 6)) * 1e-2
    return model, x


@pytest.mark.parametrize("seed", range(5))
def test_a_bias_cancelled_by_batch_norm_is_below_the_noise_not_wrong(seed):
    model, x = _bn_after_biased_linear(seed)
    report = check_module(model, x, seed=seed)
    bias = report["0.bias"]
    # the hand argument above: the exact gradient is 0; what the backward gives is rounding, and so is the numeric
    assert np.all(np.abs(bias.analytic) < 1e-9)
    assert bias.num_below_noise == 8 and bias.num_checked == 0 and bias.unresolved
    assert np.all(np.abs(bias.numeric) <= bias.noise) and np.all(bias.errors == 0.0)
    assert report.passed and report.unresolved_arrays == ["0.bias"], str(report)
    assert all(a.num_below_noise == 0 and a.num_checked > 0 for a in report.arrays if a.name != "0.bias")
    assert "unresolved: 0.bias" in str(report).splitlines()[-1]


@needs_loss
def test_a_bias_cancelled_by_batch_norm_in_a_classifier_passes():
    # QA: check_model of Linear -> BN -> ReLU -> Linear with cross-entropy read "wrong" on the bias for most seeds
    for seed in range(6):
        model, x = _bn_after_biased_linear(seed)
        model = nn.Sequential(*model, nn.ReLU(), nn.Linear(8, 4, dtype=np.float64, generator=99))
        y = np.random.default_rng(seed).integers(0, 4, 16)
        report = check_model(model, nn_loss.SoftmaxCrossEntropy(), x, y, seed=seed, check_input=False)
        assert report.passed and report["0.bias"].num_checked == 0, str(report)


class BiasGradientOff(nn.Linear):
    """A Linear whose bias gradient is 1e-5 too large: far above the noise of the batch-norm model above."""

    def backward(self, dout, *, input_grad=True):
        dx = super().backward(dout, input_grad=input_grad)
        self.bias.grad += 1e-5
        return dx


def test_the_noise_rule_still_catches_a_small_wrong_gradient_under_batch_norm():
    _, x = _bn_after_biased_linear(0)
    model = nn.Sequential(BiasGradientOff(6, 8, dtype=np.float64, generator=0), nn.BatchNorm1d(8, dtype=np.float64))
    model[0].bias.data[...] = 1.0
    model[1].weight.data[...] = 20.0
    report = check_module(model, x)
    bias = report["0.bias"]
    assert bias.num_checked == 8 and bias.max_error == pytest.approx(1.0, abs=0.05)    # analytic 1e-5, numeric ~0
    assert report.verdict == "wrong" and not report.passed


class ScaleWrongSign(Module):
    """y = a x with a scalar a, and a backward that negates da (the QA's layer): da = -sum(dout * x)."""

    def __init__(self, a=1.0):
        super().__init__()
        self.a = Parameter(np.array([a]))

    def forward(self, x):
        self._x = x
        return self.a.data[0] * x

    def backward(self, dout, *, input_grad=True):
        self.a.accumulate(-np.array([np.sum(dout * self._x)]))
        return self.a.data[0] * dout if input_grad else None


def test_a_check_with_every_entry_below_the_noise_is_unresolved_not_good():
    # L = 0.5 mean_n sum_j (a x - y)^2 with y = 1 and x ~ 1e-11: |L| ~ 2.5 and dL/da = mean_n sum_j (a x - 1) x
    # ~ 1e-11, below the floor 10 eps |L| / h ~ 5e-10: the sign error of da cannot be seen, and nothing else is checked
    x = batch((4, 5)) * 1e-11
    y = np.ones((4, 5))
    true_da = np.sum((x - y) * x) / 4
    loss = SquaredError().forward(x, y)
    assert abs(true_da) < 10 * np.finfo(float).eps * loss / H
    report = check_model(ScaleWrongSign(), SquaredError(), x, y, check_input=False)
    assert report["a"].num_below_noise == 1 and report["a"].num_checked == 0
    assert report.unresolved and not report.passed
    assert report.verdict.startswith("unresolved: gradients below the rounding noise") and "scale" in report.verdict
    with pytest.raises(GradientCheckError, match="no entry rose above the rounding noise"):
        report.raise_if_failed()
    # the same layer at a resolvable scale is "wrong"
    assert check_model(ScaleWrongSign(), SquaredError(), x * 1e9, y, check_input=False).verdict == "wrong"


@needs_loss
def test_an_array_below_the_noise_is_reported_not_verified():
    # the QA's case: the wrong-sign scale before a Linear, input 1e-9, cross-entropy (|L| ~ 1.6): dL/da ~ 1e-11 and
    # dL/dW ~ 1e-10 are below the noise; the Linear's bias (~0.1) is resolved. "a" must not count as verified
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 5)) * 1e-9, rng.integers(0, 5, 8)
    model = nn.Sequential(ScaleWrongSign(), nn.Linear(5, 5, dtype=np.float64, generator=0))
    report = check_model(model, nn_loss.SoftmaxCrossEntropy(), x, y, check_input=False)
    a = report["0.a"]
    assert a.num_checked == 0 and a.num_below_noise == 1 and a.unresolved and not report.unresolved
    assert report["1.bias"].num_checked == 5
    text = str(report)
    assert "unresolved (below the rounding noise)" in text and "entries below the rounding noise" in text
    assert "unresolved: 0.a" in text.splitlines()[-1]


def test_exact_zero_gradients_agree_and_count():
    # a dead ReLU layer: every gradient before it is exactly 0 and so is every centred difference (the loss does not
    # move by a bit): that is agreement, not noise
    model = nn.Sequential(nn.Linear(3, 4, dtype=np.float64, generator=0), Relu())
    model[0].bias.data[...] = -100.0
    report = check_module(model, batch())
    assert report.num_below_noise == 0 and report["0.weight"].num_checked == 10 and report.passed


def test_a_tiny_gradient_agreeing_within_the_floor_is_verified():
    # dR/dw = 2 * 0.01 * w for w = 3e-6: 6e-8, resolved against the floor (~1e-11) although the penalty's curvature
    # 0.02 makes the second difference larger than the gradient; it agrees within the floor and counts as verified
    w = np.full((1, 3), 3e-6)
    model = nn.Sequential(Quadratic(3))
    model[0].weight.data[...] = w[0]
    report = check_model(model, SquaredError(), batch(), batch(seed=2), regularization=L2(0.01), check_input=False)
    reg = [a for a in report.arrays if a.section == "regularisation" and a.name == "0.weight"][0]
    np.testing.assert_allclose(reg.numeric, 2 * 0.01 * 3e-6, rtol=1e-4)
    assert reg.num_checked == 3 and reg.num_below_noise == 0 and report.passed


# --- in-place modules, memory layout, MaxPool ties, global generator, the printed status -----------------------------
@pytest.mark.parametrize("make, derivative", [
    (lambda: nn.Sigmoid(inplace=True), lambda x: (1 / (1 + np.exp(-x))) * (1 - 1 / (1 + np.exp(-x)))),
    (lambda: nn.Tanh(inplace=True), lambda x: 1 - np.tanh(x) ** 2),
    (lambda: nn.ELU(inplace=True), lambda x: np.where(x > 0, 1.0, np.exp(x))),
])
def test_an_in_place_module_is_checked_on_fresh_copies_of_the_input(make, derivative):
    x = batch((4, 5))
    x_before = x.copy()
    dout = np.random.default_rng(5).standard_normal((4, 5))
    report = check_module(make(), x, dout=dout, num_checks=20)
    a = report["input"]
    expected = derivative(x) * dout                  # elementwise: dL/dx = f'(x) dout
    np.testing.assert_allclose(a.numeric, [expected[i] for i in a.indices], rtol=1e-7, atol=1e-12)
    assert report.passed and report.max_error < 1e-7, str(report)
    np.testing.assert_array_equal(x, x_before)
    report = check_model(make(), SquaredError(), x, np.zeros((4, 5)))
    assert report.passed, str(report)


class FortranLinear(Module):
    """y = x W^T with W stored in Fortran order: dW = dout^T x, dx = dout W."""

    def __init__(self):
        super().__init__()
        self.weight = Parameter(np.random.default_rng(0).standard_normal((3, 5)))
        self.weight.data = np.asfortranarray(self.weight.data)

    def forward(self, x):
        self._x = x
        return x @ self.weight.data.T

    def backward(self, dout, *, input_grad=True):
        self.weight.accumulate(dout.T @ self._x)
        return dout @ self.weight.data if input_grad else None


def test_a_parameter_in_any_memory_layout_is_perturbed_where_the_forward_reads_it():
    module = FortranLinear()
    assert module.weight.data.flags.f_contiguous and not module.weight.data.flags.c_contiguous
    x, dout = batch((4, 5)), np.random.default_rng(6).standard_normal((4, 3))
    report = check_module(module, x, dout=dout, num_checks=15)
    expected = dout.T @ x
    np.testing.assert_allclose(report["weight"].numeric, [expected[i] for i in report["weight"].indices], rtol=1e-8)
    assert report.passed and report.max_error < 1e-7, str(report)


def test_maxpool_ties_are_kinks_not_wrong_gradients():
    xq = np.random.default_rng(0).integers(0, 3, (2, 1, 4, 4)).astype(np.float64)
    report = check_module(nn.MaxPool2d(2), xq, num_checks=32)
    a = report["input"]
    # by hand: moving an entry by h changes a window's winner only when it is one of two or more tied maxima of its
    # window (the values are integers, so any other entry is at least 1 away from its window's maximum)
    windows = xq.reshape(2, 1, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 1, 2, 2, 4)
    tied = set()
    for n, c, i, j in np.ndindex(2, 1, 2, 2):
        w = windows[n, c, i, j]
        if np.count_nonzero(w == w.max()) > 1:
            tied |= {(n, c, 2 * i + k // 2, 2 * j + k % 2) for k in np.flatnonzero(w == w.max())}
    assert tied and {idx for idx, k in zip(a.indices, a.kink) if k} == tied
    assert report.kinks_present and report.passed and a.max_error < 1e-7, str(report)


def test_maxpool_kink_state_is_the_winners_of_the_last_forward():
    pool = nn.MaxPool2d(2)
    assert pool.kink_state() is None
    x = np.array([[[[1.0, 2.0], [0.0, 2.0]]]])
    pool(x)
    first = pool.kink_state()
    pool(x + np.array([[[[0.0, 0.0], [0.0, 1e-9]]]]))          # the tie at 2 goes to the other entry
    assert not np.array_equal(first, pool.kink_state())
    pool(x + np.array([[[[0.0, 1e-9], [0.0, 0.0]]]]))
    np.testing.assert_array_equal(first, pool.kink_state())


def test_a_check_leaves_the_global_generator_alone_and_seeds_global_draws():
    import cynet

    x = np.ones((4, 6))

    def next_mask(run_check):
        cynet.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 6, generator=1), nn.Dropout(0.5))
        if run_check:
            report = check_module(model, x.astype(np.float32))
            assert report.passed and "dropout fixed" in str(report)
        return model(np.ones((4, 6), np.float32)) != 0

    np.testing.assert_array_equal(next_mask(False), next_mask(True))
    # the mask the check draws from the global generator comes from the check's seed, not the global state
    model = nn.Sequential(nn.Linear(6, 6, dtype=np.float64, generator=1), nn.Dropout(0.5))
    cynet.manual_seed(1)
    a = check_module(model, x, seed=3)
    cynet.manual_seed(2)
    b = check_module(model, x, seed=3)
    for ra, rb in zip(a.arrays, b.arrays):
        np.testing.assert_array_equal(ra.numeric, rb.numeric)


def test_a_smooth_pass_in_the_suspicious_band_says_so():
    x = batch((4, 3)) + np.sign(batch((4, 3))) * 0.5
    report = check_module(InputGradOff(3, 3e-7), x)
    assert 1e-7 < report.max_error < 1e-6 and report.passed and report.suspicious
    lines = str(report).splitlines()
    assert lines[-1].startswith("overall") and "PASSED the tolerance, but with no kinks present" in lines[-1]
    assert any(line.startswith("worst entry (module): input[") for line in lines)
    kinked = check_module(nn.Sequential(InputGradOff(3, 3e-7), Relu()), x)
    assert kinked.passed and not kinked.suspicious and "PASSED (threshold" in str(kinked)


def test_a_check_whose_every_entry_crossed_a_kink_is_unresolved_not_good():
    # A ReLU whose backward is 7x too large, checked at x = 0: every perturbation crosses the kink, nothing is
    # compared; the report said PASSED "good" (max error 0 over no entry)
    class SevenTimesReLU(nn.ReLU):
        def backward(self, dout, *, input_grad=True):
            return 7.0 * np.asarray(dout)          # ignores the mask and the scale: wrong everywhere

    report = check_module(SevenTimesReLU(), np.zeros((2, 4)), num_checks=8, seed=0)
    assert report.num_kinks == 8 and report.num_below_noise == 0
    assert report.unresolved and not report.passed
    assert report.verdict.startswith("unresolved: every sampled entry crossed a kink") and "move" in report.verdict
    text = str(report)
    assert "unresolved (every entry kink-crossed)" in text and "FAILED: no entry was compared" in text
    with pytest.raises(GradientCheckError):
        report.raise_if_failed()
    # the same wrong backward away from the kink: compared, and failed as wrong
    off_kink = check_module(SevenTimesReLU(), np.full((2, 4), 0.5), num_checks=8, seed=0)
    assert not off_kink.unresolved and not off_kink.passed and off_kink.max_error > 0.5


def test_a_backward_that_assigns_the_gradient_instead_of_adding_fails():
    # p.grad = ... instead of +=: the first gradient is right, so the comparison alone passed it (a typical slip that
    # breaks gradient accumulation over half-batches and tied weights)
    class Scale(Module):
        def __init__(self):
            super().__init__()
            self.a = Parameter(np.linspace(0.5, 1.5, 5))

        def forward(self, x):
            self._x = x
            return x * self.a.data

        def backward(self, dout, *, input_grad=True):
            self.a.grad = np.sum(dout * self._x, axis=0)     # assigned: the bug
            return dout * self.a.data if input_grad else None

    x = np.random.default_rng(0).standard_normal((4, 5))
    report = check_module(Scale(), x, num_checks=5, seed=0)
    assert report.not_accumulating == ["a"] and not report.passed and report.max_error < 1e-7
    assert "does not add into .grad for a" in str(report)

    class Right(Scale):
        def backward(self, dout, *, input_grad=True):
            self.a.accumulate(np.sum(dout * self._x, axis=0))
            return dout * self.a.data if input_grad else None

    good = check_module(Right(), x, num_checks=5, seed=0)
    assert good.passed and good.not_accumulating == []


def test_a_check_that_samples_nothing_does_not_pass():
    # every parameter frozen and check_input=False: no entry is compared, yet the report said "good; PASSED"
    layer = nn.Linear(3, 2, generator=0)
    layer.freeze()
    report = check_module(layer, np.ones((2, 3)), check_input=False)
    assert report.arrays == [] and report.nothing_checked
    assert not report.passed
    assert report.verdict.startswith("nothing checked")
    assert "FAILED: no entry was compared" in str(report)
    with pytest.raises(GradientCheckError):
        report.raise_if_failed()
    assert not check_module(nn.Tanh(), np.ones((2, 3)), check_input=False).passed
    # a frozen layer whose input is checked still passes
    assert check_module(layer, np.ones((2, 3))).passed

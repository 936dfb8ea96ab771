"""Tests of cynet.diagnostics.babysit: each check provoked both ways, with hand-computed expectations."""
import math

import numpy as np
import pytest

import cynet
from cynet import nn
from cynet.diagnostics import BabysitReport, babysit
from cynet.gradcheck import rel_error
from cynet.nn.loss import L2Penalty, MSELoss, MulticlassSVM, SoftmaxCrossEntropy
from cynet.optim import SGD, Adam


def _data(n=300, d=20, c=4, seed=0):
    """Separable synthetic data: the label is the arg-max of a fixed linear map."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(d, c))
    return x, np.argmax(x @ w, axis=1).astype(np.int64)


def _mlp(d=20, h=32, c=4, seed=0):
    return nn.Sequential(nn.Linear(d, h, generator=seed), nn.ReLU(), nn.Linear(h, c, generator=seed + 1))


FAST = dict(probe_steps=30, lr_probe=(1e-1, 1e-6))


def sgd(params, lr):
    return SGD(params, lr=lr, momentum=0.9)


class ZeroGradLinear(nn.Linear):
    """A Linear layer whose backward is broken: it reports zero parameter gradients."""

    def backward(self, dout, *, input_grad=True):
        dx = super().backward(dout, input_grad=input_grad)
        self.weight.grad = np.zeros_like(self.weight.data)
        if self.bias is not None:
            self.bias.grad = np.zeros_like(self.bias.data)
        return dx


class NegatedGradLinear(nn.Linear):
    """A Linear layer whose backward has the wrong sign for its weight gradient (gradient ascent on it)."""

    def backward(self, dout, *, input_grad=True):
        dx = super().backward(dout, input_grad=input_grad)
        self.weight.grad = -self.weight.grad
        return dx


def _units_identical(weight):
    """The oracle for symmetry: every row (unit) of the weight equals the first, exactly."""
    return bool(np.all(weight == weight[0]))


def _train_by_hand(model, x, y, steps=50, lr=1e-3):
    """Full-batch Adam steps written out here, independent of babysit, to see what training does to the units."""
    loss = SoftmaxCrossEntropy()
    optimizer = Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        model.zero_grad()
        loss.forward(model(x), y)
        model.backward(loss.backward(), input_grad=False)
        optimizer.step()
    return model


def test_healthy_mlp_passes_every_check():
    x, y = _data()
    report = babysit(_mlp(), SoftmaxCrossEntropy(), x, y, regularization=L2Penalty(1.0), **FAST)
    assert isinstance(report, BabysitReport)
    assert report.passed, str(report)
    assert [c.name for c in report.checks] == ["initial loss", "regularization raises loss", "overfit tiny subset",
                                               "learning-rate probe"]
    assert all(c.passed is True for c in report.checks)
    assert f"{math.log(4):.3f}" in report["initial loss"].explanation       # ln 4 = 1.386
    assert report.recommended_lr == (1e-1, 1e-1)
    assert [r.verdict for r in report.probe] == ["decreasing", "barely changing"]
    assert report["overfit tiny subset"].values["symmetric_layers"] == []
    assert "identical" not in report["initial loss"].explanation
    text = str(report)
    assert "initial loss" in text and "PASS" in text and "overall: PASSED" in text


def test_huge_init_fails_initial_loss_with_too_large_hint():
    x, y = _data()
    model = _mlp()
    for p in model.parameters():
        p.data *= 100
    report = babysit(model, SoftmaxCrossEntropy(), x, y, **FAST)
    check = report["initial loss"]
    assert check.passed is False and not report.passed
    assert "too large" in check.explanation
    assert check.values["loss"] > 1.15 * math.log(4)
    assert "got" in check.explanation and "1.386" in check.explanation


def test_initial_loss_value_matches_numpy_softmax():
    x, y = _data()
    model = _mlp()
    report = babysit(model, SoftmaxCrossEntropy(), x, y, **FAST)
    rng = np.random.default_rng(0)                           # babysit's own sample: the first draw of seed 0
    sample = np.sort(rng.choice(len(x), size=256, replace=False))
    s = model(x[sample]).astype(np.float64)
    s -= s.max(axis=1, keepdims=True)
    expected = float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(256), y[sample]]))
    assert report["initial loss"].values["loss"] == pytest.approx(expected, rel=1e-5)


def test_svm_expected_loss_is_c_minus_one_and_mse_is_skipped():
    x, y = _data(c=5)
    small = nn.Sequential(nn.Linear(20, 5, init="normal", generator=0))   # std 0.01: scores ~ 0, loss ~ C - 1
    report = babysit(small, MulticlassSVM(), x, y, optimizer_factory=sgd, overfit_lr=0.05, **FAST)
    check = report["initial loss"]
    assert check.passed is True
    assert check.expected.startswith("4 ")
    assert check.values["expected"] == 4.0
    assert check.values["loss"] == pytest.approx(4.0, rel=0.05)
    target = np.random.default_rng(1).normal(size=(len(x), 5)).astype(np.float32)
    report = babysit(small, MSELoss(), x, target, optimizer_factory=sgd, **FAST)
    assert report["initial loss"].passed is None and "skipped" in report["initial loss"].explanation


def test_zero_init_passes_but_warns_about_symmetry():
    x, y = _data()
    model = nn.Sequential(nn.Linear(20, 16, init="zeros"), nn.ReLU(), nn.Linear(16, 4, init="zeros"))
    report = babysit(model, SoftmaxCrossEntropy(), x, y, **FAST)
    check = report["initial loss"]
    assert check.passed is True
    assert check.values["loss"] == pytest.approx(math.log(4), abs=1e-6)
    assert "symmetry" in check.explanation and "layer 0 (Linear, 16 units)" in check.explanation
    assert "layer 2" not in check.explanation          # the output layer's units are classes: not symmetric


def test_all_zero_mlp_fails_overfit_because_symmetry_is_never_broken():
    x, y = _data()
    model = nn.Sequential(nn.Linear(20, 16, init="zeros"), nn.ReLU(), nn.Linear(16, 4, init="zeros"))
    report = babysit(model, SoftmaxCrossEntropy(), x, y, **FAST)
    check = report["overfit tiny subset"]
    assert check.passed is False and not report.passed
    assert check.explanation.startswith("symmetry never broken: the units of layer 0 (Linear, 16 units) are identical")
    assert "zero/constant init" in check.explanation
    assert "backward" not in check.explanation and "learning rate" not in check.explanation
    assert check.values["symmetric_layers"] == ["0"]
    probe = report["learning-rate probe"]
    assert probe.passed is False and "symmetry never broken" in probe.explanation
    assert "too small" not in probe.explanation
    trained = _train_by_hand(model, x[:20], y[:20])          # the oracle: training leaves the units identical
    assert _units_identical(trained[0].weight.data) and _units_identical(trained[0].bias.data[:, None])


def test_one_zero_hidden_layer_fails_overfit_with_symmetry_of_that_layer():
    x, y = _data()
    model = nn.Sequential(nn.Linear(20, 32, generator=0), nn.ReLU(), nn.Linear(32, 32, init="zeros"), nn.ReLU(),
                          nn.Linear(32, 4, generator=1))
    report = babysit(model, SoftmaxCrossEntropy(), x, y, **FAST)
    assert "layer 2 (Linear, 32 units) are identical" in report["initial loss"].explanation
    check = report["overfit tiny subset"]
    assert check.passed is False
    assert check.explanation.startswith("symmetry never broken: the units of layer 2 (Linear, 32 units)")
    assert "layer 0" not in check.explanation and "backward" not in check.explanation
    assert check.values["symmetric_layers"] == ["2"]
    trained = _train_by_hand(model, x[:20], y[:20])
    assert _units_identical(trained[2].weight.data)
    assert not _units_identical(trained[0].weight.data)


def test_constant_init_everywhere_is_symmetric_too():
    x, y = _data()
    model = nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 4))
    for p in model.parameters():
        p.data[...] = 0.05                                      # every unit of every layer the same
    report = babysit(model, SoftmaxCrossEntropy(), x, y, **FAST)
    check = report["overfit tiny subset"]
    assert check.passed is False
    # exact arithmetic would keep the units identical forever; float32 rounding separates them late in the run
    assert check.explanation.startswith("symmetry ")
    assert "the units of layer 0 (Linear, 16 units)" in check.explanation and "zero/constant init" in check.explanation
    assert "layer 2" not in check.explanation and "backward" not in check.explanation
    held = check.values["symmetry_broken_at"].get("0", math.inf)
    assert held > 20                                             # identical for more than 10 % of the 200 steps
    trained = _train_by_hand(model, x[:20], y[:20], steps=20)   # the oracle: after 20 steps still one unit
    spread = np.ptp(trained[0].weight.data, axis=0).max()
    assert spread <= 1e-5 * np.abs(trained[0].weight.data).max()


def test_zero_layer_before_random_layer_is_not_blamed_once_training_breaks_the_symmetry():
    x, y = _data()
    model = nn.Sequential(nn.Linear(20, 16, init="zeros"), nn.Tanh(), nn.Linear(16, 4, generator=1))
    report = babysit(model, SoftmaxCrossEntropy(), x, y, **FAST)
    check = report["overfit tiny subset"]
    assert check.values["symmetric_layers"] == []             # the random next layer broke it
    assert "never broken" not in check.explanation
    trained = _train_by_hand(model, x[:20], y[:20])
    assert not _units_identical(trained[0].weight.data)          # the oracle agrees


def test_regularization_check_rises_fails_and_skips():
    x, y = _data()
    on = babysit(_mlp(), SoftmaxCrossEntropy(), x, y, regularization=L2Penalty(10.0), **FAST)
    values = on["regularization raises loss"].values
    assert values["total_loss"] > values["data_loss"]
    assert values["penalty"] == pytest.approx(float(L2Penalty(10.0)(_mlp())), rel=1e-6)   # same initial weights
    off = babysit(_mlp(), SoftmaxCrossEntropy(), x, y, regularization=L2Penalty(0.0), **FAST)
    assert off["regularization raises loss"].passed is False
    skipped = babysit(_mlp(), SoftmaxCrossEntropy(), x, y, **FAST)
    assert skipped["regularization raises loss"].passed is None
    assert skipped.passed            # a skipped check does not fail the report


def test_broken_backward_fails_overfit_check():
    x, y = _data()
    model = nn.Sequential(ZeroGradLinear(20, 32, generator=0), nn.ReLU(), ZeroGradLinear(32, 4, generator=1))
    report = babysit(model, SoftmaxCrossEntropy(), x, y, overfit_steps=50, **FAST)
    check = report["overfit tiny subset"]
    assert check.passed is False
    assert "not decreasing" in check.explanation and "the backward pass is wrong" in check.explanation
    assert "learning rate too low" not in check.explanation
    assert check.values["weight_change"] == 0.0                 # no gradient: the weights never moved
    assert check.values["gradient_check_error"] == 1.0           # rel_error(analytic 0, numeric n != 0) is 1
    probe = report["learning-rate probe"]
    assert probe.passed is False and "backward pass is wrong" in probe.explanation
    assert "too small" not in probe.explanation


def test_wrong_sign_backward_fails_overfit_as_backward_not_learning_rate():
    x, y = _data()
    model = nn.Sequential(nn.Linear(20, 32, generator=0), nn.ReLU(), NegatedGradLinear(32, 4, generator=1))
    report = babysit(model, SoftmaxCrossEntropy(), x, y, **FAST)
    check = report["overfit tiny subset"]
    assert check.passed is False
    assert "the backward pass is wrong" in check.explanation and "2.weight" in check.explanation
    assert check.values["gradient_check_error"] == pytest.approx(float(rel_error(-1.0, 1.0)))   # = 2
    assert "learning rate too" not in check.explanation


def test_overfit_with_tiny_learning_rate_says_learning_rate_too_low():
    x, y = _data()
    for factory in (None, sgd):
        report = babysit(_mlp(), SoftmaxCrossEntropy(), x, y, optimizer_factory=factory, overfit_lr=1e-9, **FAST)
        check = report["overfit tiny subset"]
        assert check.passed is False and not report.passed
        assert check.explanation.startswith("the loss barely moved")
        assert "learning rate too low" in check.explanation and "raise it" in check.explanation
        assert "backward" not in check.explanation
        assert 0 < check.values["weight_change"] < 1e-5
        assert check.values["weight_change_per_step"] == pytest.approx(check.values["weight_change"] / 200)
        assert check.values["gradient_check_error"] < 1e-4


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_overfit_with_huge_learning_rate_says_exploding_too_high():
    x, y = _data()
    report = babysit(_mlp(), SoftmaxCrossEntropy(), x, y, optimizer_factory=sgd, overfit_lr=1e6, **FAST)
    check = report["overfit tiny subset"]
    assert check.passed is False
    assert check.explanation.startswith("the loss exploded") and "1e+06 is too high" in check.explanation
    assert not math.isfinite(check.values["final_loss"]) or check.values["final_loss"] > 3 * math.log(4)
    assert "backward pass is wrong" not in check.explanation


@pytest.mark.parametrize("rate, verdict, hint", [(1e6, "exploding", "every rate is too large"),
                                                 (1e-9, "barely changing", "every rate is too small")])
def test_lr_probe_names_a_range_that_is_too_large_or_too_small(rate, verdict, hint):
    x, y = _data()
    report = babysit(_mlp(), SoftmaxCrossEntropy(), x, y, optimizer_factory=sgd, overfit_lr=0.05, lr_probe=(rate,),
                     probe_steps=20)
    assert [r.verdict for r in report.probe] == [verdict]
    check = report["learning-rate probe"]
    assert check.passed is False and hint in check.explanation
    assert report["overfit tiny subset"].passed is True          # only the probed rate is wrong


class ForgetfulPenalty(L2Penalty):
    """A penalty whose value is right but whose backward forgets to add the gradient."""

    def backward(self, model):
        pass


def test_regularization_without_gradient_fails():
    x, y = _data()
    report = babysit(_mlp(), SoftmaxCrossEntropy(), x, y, regularization=ForgetfulPenalty(1.0), **FAST)
    check = report["regularization raises loss"]
    assert check.passed is False and "no gradient" in check.explanation


def test_too_little_capacity_stalls():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 2)).astype(np.float32)
    y = rng.integers(0, 4, size=40)                      # random labels: a linear model on 2 features cannot fit
    model = nn.Sequential(nn.Linear(2, 4, init="normal", generator=0))
    report = babysit(model, SoftmaxCrossEntropy(), x, y, tiny_size=20, overfit_lr=1e-2, **FAST)
    check = report["overfit tiny subset"]
    assert check.passed is False
    assert check.values["final_loss"] < 0.95 * check.values["initial_loss"]
    assert check.values["accuracy"] < 1.0
    assert "stalls" in check.explanation and "capacity" in check.explanation


def test_tiny_subset_is_overfitted_to_100_percent():
    x, y = _data()
    report = babysit(_mlp(), SoftmaxCrossEntropy(), x, y, **FAST)
    check = report["overfit tiny subset"]
    assert check.passed is True and "100%" in check.measured
    assert check.values["accuracy"] == 1.0
    assert check.values["final_loss"] <= 0.1 * check.values["initial_loss"]
    assert check.values["steps"] <= 200


def test_label_smoothing_is_measured_from_its_loss_floor():
    """With label smoothing the loss cannot reach 0: the entropy of the smoothed target is its floor (hand-computed
    for C = 4, eps = 0.1), and the overfit check measures from there instead of failing a working model."""
    x, y = _data()
    report = babysit(_mlp(), nn.CrossEntropyLoss(label_smoothing=0.1), x, y, **FAST)
    check = report["overfit tiny subset"]
    high, low = 1 - 0.1 + 0.1 / 4, 0.1 / 4
    floor = -(high * math.log(high) + 3 * low * math.log(low))
    assert check.values["loss_floor"] == pytest.approx(floor, rel=1e-12) and floor == pytest.approx(0.3488, abs=1e-4)
    assert check.passed is True and check.values["accuracy"] == 1.0
    assert check.values["final_loss"] - floor <= 0.1 * (check.values["initial_loss"] - floor)
    assert check.values["final_loss"] > floor and "cannot go below 0.349" in check.explanation
    assert report["initial loss"].passed                          # ln C holds for smoothed targets too
    assert babysit(_mlp(), nn.CrossEntropyLoss(), x, y, **FAST)["overfit tiny subset"].values["loss_floor"] == 0


def test_lr_probe_classifies_exploding_and_barely_changing():
    x, y = _data()
    report = babysit(_mlp(), SoftmaxCrossEntropy(), x, y, optimizer_factory=sgd, overfit_lr=0.05,
                     lr_probe=(1e6, 1e-9), probe_steps=20)
    exploding, still = report.probe
    assert exploding.verdict == "exploding"
    assert exploding.steps < 20 or not math.isfinite(exploding.final_loss)
    assert still.verdict == "barely changing" and abs(still.relative_drop) < 0.03
    assert report["learning-rate probe"].passed is False
    assert report.recommended_lr is None


def test_model_state_modes_and_rng_are_restored_exactly():
    x, y = _data()
    model = nn.Sequential(nn.Linear(20, 32, generator=0), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4, generator=1),
                          nn.BatchNorm1d(4))
    model.eval()
    model[1].train()
    before = model.state_dict()
    modes = [m.training for m in model.modules()]
    cynet.manual_seed(123)
    state = cynet.get_rng_state()
    babysit(model, SoftmaxCrossEntropy(), x, y, **FAST)
    after = model.state_dict()
    assert list(before) == list(after)
    for key in before:
        assert np.array_equal(before[key], after[key]), key
        assert before[key].dtype == after[key].dtype
    assert [m.training for m in model.modules()] == modes
    assert cynet.get_rng_state() == state
    assert all(not np.any(p.grad) for p in model.parameters())


def test_invalid_arguments():
    x, y = _data()
    with pytest.raises(TypeError):
        babysit(object(), SoftmaxCrossEntropy(), x, y)
    with pytest.raises(ValueError):
        babysit(_mlp(), SoftmaxCrossEntropy(), x, y[:-1])
    with pytest.raises(ValueError):
        babysit(_mlp(), SoftmaxCrossEntropy(), x, y, lr_probe=())
    with pytest.raises(ValueError):
        babysit(_mlp(), SoftmaxCrossEntropy(), x, y, tiny_size=0)

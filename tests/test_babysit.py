"""Tests of cynet.diagnostics.babysit: each check provoked both ways, with hand-computed expectations."""
import json
import math

import numpy as np
import pytest

import cynet
from cynet import nn
from cynet.diagnostics import BabysitReport, babysit
from cynet.gradcheck import check_model, rel_error
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
    # a regression has no accuracy to reach: the overfit check expects the loss only (it asked for "100% acc")
    assert report["overfit tiny subset"].expected == "loss < 10% of start"
    assert "acc" not in report["overfit tiny subset"].measured
    assert report_expected_for_classification(x, y).startswith("100% acc, loss < ")


def report_expected_for_classification(x, y):
    model = nn.Sequential(nn.Linear(20, 5, init="normal", generator=0))
    return babysit(model, SoftmaxCrossEntropy(), x, y, optimizer_factory=sgd, **FAST)["overfit tiny subset"].expected


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


@pytest.mark.parametrize("freeze", ["all", "one by one"])
def test_a_fully_frozen_model_fails_overfit_and_probe_saying_nothing_is_trainable(freeze):
    # every parameter requires_grad=False: the loss cannot move at any rate. babysit raised "ValueError: max() arg
    # is an empty sequence" (the gradient check had no array to name) instead of a report
    x, y = _data()
    model = _mlp()
    if freeze == "all":
        model.requires_grad_(False)
    else:
        for param in model.parameters():
            param.requires_grad = False
    before = [p.data.copy() for p in model.parameters()]
    report = babysit(model, SoftmaxCrossEntropy(), x, y, **FAST)
    overfit, probe = report["overfit tiny subset"], report["learning-rate probe"]
    assert report["initial loss"].passed is True
    assert overfit.passed is False and probe.passed is False and not report.passed
    assert overfit.explanation.startswith("nothing can learn: every parameter of the model is frozen")
    assert "requires_grad=False on all 4 parameters, 804 entries" in overfit.explanation   # 20*32 + 32 + 32*4 + 4
    assert overfit.values["final_loss"] == overfit.values["initial_loss"]
    assert "frozen" in probe.explanation and "too small" not in probe.explanation
    assert all(r.verdict == "barely changing" and r.final_loss == r.initial_loss for r in report.probe)
    assert all(np.array_equal(a, p.data) and not p.requires_grad for a, p in zip(before, model.parameters()))


def test_a_fully_frozen_model_fails_the_penalty_check_saying_so_not_blaming_the_penalty():
    # L2Penalty covers trainable weights only: 0 on a frozen model, which read "zero strength, or it is not computed
    # on the weights?"
    from cynet.nn.loss import L2Penalty
    x, y = _data()
    model = _mlp()
    model.requires_grad_(False)
    check = babysit(model, SoftmaxCrossEntropy(), x, y, regularization=L2Penalty(1e-2), **FAST)[
        "regularization raises loss"]
    assert check.passed is False and check.values["penalty"] == 0
    assert "every parameter of the model is frozen" in check.explanation and "zero strength" not in check.explanation


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
    assert "the gradient checks out" in check.explanation and check.values["gradient_check_error"] < 1e-6
    # the relative error measured (a right gradient's is 1e-11 .. 1e-7), not the 0 the verdict counts it as
    error = check.values["gradient_check_error"]
    assert error > 0 and f"max relative error {error:.1g})" in check.explanation


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


# --- measurements, reproducibility, validation -----------------------------------------------------------------------
def _numpy_cross_entropy(scores, y):
    """Mean softmax cross-entropy in float64, written out here as the oracle."""
    s = np.asarray(scores, dtype=np.float64)
    s = s - s.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(y)), y]))


def _dropout_model(p=0.5):
    """Wide hidden layer, dropout, an output layer scaled up: one dropout mask moves the loss by several percent."""
    model = nn.Sequential(nn.Linear(20, 200, generator=0), nn.ReLU(), nn.Dropout(p), nn.Linear(200, 3, generator=1))
    model[3].weight.data *= 5
    return model


def test_probe_and_initial_loss_are_measured_without_dropout_noise_and_reproducible():
    """A rate of 1e-9 changes no weight: with dropout masks in the measurement it came out "decreasing" or "rising"
    depending on the global generator's state. The oracle: the same model's loss with dropout in evaluation mode
    (an identity), computed in NumPy; the report must not depend on the global generator's state."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 20)).astype(np.float32)
    y = x[:, :3].argmax(1)
    model = _dropout_model()
    reports = []
    for global_seed in (1, 2, 3, 4):                         # as if each run were a fresh process
        cynet.manual_seed(global_seed)
        reports.append(babysit(model, SoftmaxCrossEntropy(), x, y, probe_steps=10, lr_probe=(1e-9,)))
    with model.modes_restored():
        expected = _numpy_cross_entropy(model.eval()(x), y)          # 60 rows: the sample is all of x
    for report in reports:
        (result,) = report.probe
        assert result.verdict == "barely changing" and report.recommended_lr is None
        assert result.initial_loss == pytest.approx(expected, rel=1e-5)
        assert result.final_loss == pytest.approx(expected, rel=1e-5)
        assert report["initial loss"].values["loss"] == pytest.approx(expected, rel=1e-5)
    first = reports[0]
    for report in reports[1:]:
        assert str(report).split("overall")[0] == str(first).split("overall")[0]
        assert [c.values for c in report.checks] == [c.values for c in first.checks]
    without = babysit(_dropout_model(p=0.0), SoftmaxCrossEntropy(), x, y, probe_steps=10, lr_probe=(1e-9,))
    assert without.probe[0].initial_loss == pytest.approx(first.probe[0].initial_loss, rel=1e-12)


def test_other_seeds_give_other_but_reproducible_dropout_runs():
    """``seed`` drives the dropout masks of the training steps too: the same seed twice gives the same probe, under
    any global state."""
    x, y = _data()
    model = nn.Sequential(nn.Linear(20, 32, generator=0), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4, generator=1))
    runs = []
    for global_seed in (10, 11):
        cynet.manual_seed(global_seed)
        runs.append(babysit(model, SoftmaxCrossEntropy(), x, y, seed=5, probe_steps=10, lr_probe=(1e-2,)))
    assert runs[0].probe == runs[1].probe
    assert runs[0]["overfit tiny subset"].values == runs[1]["overfit tiny subset"].values


def test_num_classes_other_than_the_models_outputs_is_refused():
    """num_classes=100 on a 4-output model expected ln 100 = 4.605 and failed a healthy start (ln 4 = 1.39) as
    "lower than chance"; the chance level is that of the scores the loss reads, so the mismatch is an error."""
    x, y = _data()
    for loss in (SoftmaxCrossEntropy(), MulticlassSVM()):
        with pytest.raises(ValueError, match=r"^babysit: num_classes=100 but the model has 4 outputs \(scores of "
                                             r"shape \(256, 4\)\)"):
            babysit(_mlp(), loss, x, y, num_classes=100, **FAST)
    report = babysit(_mlp(), SoftmaxCrossEntropy(), x, y, num_classes=4, **FAST)
    assert report["initial loss"].values["expected"] == pytest.approx(math.log(4))


def test_overfit_runs_without_dropout_masks_as_regularisation_is_off():
    """The overfit check turns regularisation off, and dropout/DropConnect are regularisation: with p = 0.5 masks
    active the 20 random-label examples stayed at 95 % accuracy (loss 2.39 -> 0.745 after 200 steps), blamed on
    "too little capacity", while the same network without them fits. The oracle: the same weights with p = 0, and a
    full-batch Adam run by hand with no mask."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20)).astype(np.float32)
    y = rng.integers(0, 10, 300).astype(np.int64)
    fast = dict(probe_steps=5, lr_probe=(1e-2,))
    plain = babysit(nn.Sequential(nn.Linear(20, 32, generator=7), nn.ReLU(), nn.Dropout(0.0),
                                  nn.Linear(32, 10, generator=1)), SoftmaxCrossEntropy(), x, y, **fast)
    assert plain["overfit tiny subset"].passed is True
    for model in (nn.Sequential(nn.Linear(20, 32, generator=7), nn.ReLU(), nn.Dropout(0.5, generator=3),
                                nn.Linear(32, 10, generator=1)),
                  nn.Sequential(nn.DropConnectLinear(20, 32, generator=7, p=0.5), nn.ReLU(), nn.Identity(),
                                nn.Linear(32, 10, generator=1))):
        check = babysit(model, SoftmaxCrossEntropy(), x, y, **fast)["overfit tiny subset"]
        assert check.passed is True, check.explanation
        assert check.values["steps"] == plain["overfit tiny subset"].values["steps"]
        assert check.values["final_loss"] == pytest.approx(plain["overfit tiny subset"].values["final_loss"],
                                                           rel=1e-6)
    # by hand: the subset babysit draws, full-batch Adam(1e-3) on the mask-free network until 100 % and < 10 %
    model = nn.Sequential(nn.Linear(20, 32, generator=7), nn.ReLU(), nn.Linear(32, 10, generator=1))
    draw = np.random.default_rng(0)
    draw.choice(300, size=256, replace=False)
    tiny = np.sort(draw.choice(300, size=20, replace=False))
    loss, optimizer = SoftmaxCrossEntropy(), Adam(model.parameters(), lr=1e-3)
    first = None
    for step in range(1, 201):
        model.zero_grad()
        scores = model(x[tiny])
        value = float(loss.forward(scores, y[tiny]))
        first = value if first is None else first
        model.backward(loss.backward(), input_grad=False)
        optimizer.step()
        if np.all(scores.argmax(1) == y[tiny]) and value <= 0.1 * first:
            break
    assert plain["overfit tiny subset"].values["steps"] == step
    assert plain["overfit tiny subset"].values["final_loss"] == pytest.approx(value, rel=1e-6)


def test_batch_norm_stays_in_training_mode_for_the_measurements():
    """Only the random modules are switched to evaluation mode: a batch-norm layer in evaluation mode would use
    running statistics that the probe's steps move, so a rate of 1e-9 (weights unchanged) would change the loss.
    The oracle: the loss with batch statistics (training mode) and dropout off, computed in NumPy."""
    rng = np.random.default_rng(0)
    x = (3 * rng.normal(size=(200, 20)) + 1).astype(np.float32)       # not normalised: batch norm has work to do
    y = x[:, :3].argmax(1)
    model = nn.Sequential(nn.Linear(20, 50, generator=0), nn.BatchNorm1d(50), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(50, 3, generator=1))
    report = babysit(model, SoftmaxCrossEntropy(), x, y, probe_steps=10, lr_probe=(1e-9,))
    assert report.probe[0].verdict == "barely changing"
    assert abs(report.probe[0].relative_drop) < 1e-5
    with model.modes_restored():                      # 200 rows: babysit's evaluation sample is all of x
        model[3].eval()
        expected = _numpy_cross_entropy(model(x), y)
    assert report.probe[0].initial_loss == pytest.approx(expected, rel=1e-5)


def test_generators_held_by_modules_are_restored():
    x, y = _data()
    model = nn.Sequential(nn.DropConnectLinear(20, 32, generator=5, p=0.3), nn.ReLU(), nn.Dropout(0.5, generator=123),
                          nn.StochasticDepth(0.2, generator=7), nn.Linear(32, 4, generator=1))
    generators = [model[0].generator, model[2].generator, model[3].generator]
    states = [json.dumps(g.bit_generator.state) for g in generators]
    fresh = [np.random.default_rng(seed).random(3) for seed in (5, 123, 7)]
    babysit(model, SoftmaxCrossEntropy(), x, y, **FAST)
    assert [json.dumps(g.bit_generator.state) for g in generators] == states
    assert [model[i].generator for i in (0, 2, 3)] == generators              # the same objects
    # the masks drawn next are those of an untouched generator: only Dropout's was not advanced by its init
    assert np.array_equal(model[2].generator.random(3), fresh[1])


def test_non_finite_inputs_are_rejected_up_front():
    x, y = _data()
    x = x.copy()
    x[3, 5] = np.nan
    with pytest.raises(ValueError, match=r"^babysit: x holds 1 NaN/inf value \(first in row 3\)"):
        babysit(_mlp(), SoftmaxCrossEntropy(), x, y, **FAST)
    x[3, 5] = 0.0
    x[[7, 9], 0] = np.inf
    with pytest.raises(ValueError, match=r"^babysit: x holds 2 NaN/inf values \(first in row 7\)"):
        babysit(_mlp(), SoftmaxCrossEntropy(), x, y, **FAST)
    x[[7, 9], 0] = 0.0
    target = np.zeros((len(x), 4), np.float32)
    target[11, 2] = -np.inf
    with pytest.raises(ValueError, match=r"^babysit: y holds 1 NaN/inf value \(first in row 11\)"):
        babysit(_mlp(), MSELoss(), x, target, optimizer_factory=sgd, **FAST)


class FlipTanh(nn.Tanh):
    """Tanh whose backward has the wrong sign: the loss still falls a little (the output layer's gradient is right)
    but stalls."""

    def backward(self, dout, *, input_grad=True):
        dx = super().backward(dout, input_grad=input_grad)
        return None if dx is None else -dx


def test_stalling_loss_with_wrong_backward_blames_the_backward_not_the_capacity():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 20)).astype(np.float32)
    y = x[:, :3].argmax(1)
    model = nn.Sequential(nn.Linear(20, 50, generator=0), FlipTanh(), nn.Linear(50, 50, generator=2), nn.Tanh(),
                          nn.Linear(50, 3, generator=1))
    report = babysit(model, SoftmaxCrossEntropy(), x, y, probe_steps=20)
    check = report["overfit tiny subset"]
    assert check.passed is False
    assert check.values["final_loss"] < 0.95 * check.values["initial_loss"]          # the "stalls" branch
    assert check.explanation.startswith("the loss decreases but stalls")
    assert "the backward pass is wrong" in check.explanation and "capacity" not in check.explanation
    rng = np.random.default_rng(0)                               # babysit's draws: the sample, then the subset
    rng.choice(200, size=200, replace=False)
    tiny = np.sort(rng.choice(200, size=20, replace=False))
    oracle = check_model(model, SoftmaxCrossEntropy(), x[tiny], y[tiny], num_checks=5, check_input=False)
    assert oracle.max_error == pytest.approx(2.0, rel=1e-6)                     # rel_error(-g, g) = 2
    assert check.values["gradient_check_error"] == pytest.approx(oracle.max_error, rel=1e-6)


@pytest.mark.parametrize("loss", [SoftmaxCrossEntropy(), MulticlassSVM()])
def test_one_output_class_is_an_error_like_num_classes_one(loss):
    """One output: C = 1, a chance-level loss of 0 ("expected 0.000, got 0.000 (+inf%)" before); refused like an
    explicit num_classes=1."""
    x, y = _data()
    model = nn.Sequential(nn.Linear(20, 16, generator=0), nn.ReLU(), nn.Linear(16, 1, generator=1))
    zeros = np.zeros(len(x), np.int64)
    with pytest.raises(ValueError, match=r"^babysit: the model has 1 output .* C >= 2"):
        babysit(model, loss, x, zeros, **FAST)
    with pytest.raises(ValueError, match=r"^babysit: num_classes must be an int >= 2"):
        babysit(_mlp(), loss, x, y, num_classes=1, **FAST)


def test_svm_with_zero_margin_skips_the_initial_loss_check():
    """Chance level (C - 1) * 0 = 0: a relative tolerance is meaningless there, so the check is skipped with the
    reason, and the measured value is still reported (the oracle: the hinge loss written out in NumPy)."""
    x, y = _data()
    model = _mlp()
    report = babysit(model, MulticlassSVM(margin=0.0), x, y, optimizer_factory=sgd, overfit_lr=0.05, **FAST)
    check = report["initial loss"]
    assert check.passed is None and check.status == "SKIP"
    assert check.explanation.startswith("skipped: the chance-level loss is 0")
    assert "+inf" not in check.explanation and "too large" not in check.explanation
    sample = np.sort(np.random.default_rng(0).choice(len(x), size=256, replace=False))
    s = model(x[sample]).astype(np.float64)
    correct = s[np.arange(256), y[sample]][:, None]
    hinge = np.maximum(0.0, s - correct)
    hinge[np.arange(256), y[sample]] = 0.0
    assert check.values["loss"] == pytest.approx(float(hinge.sum(axis=1).mean()), rel=1e-5)
    assert check.values["expected"] == 0.0


@pytest.mark.parametrize("num_classes", [2.7, "3", True, 1, np.int64(1), 4.0])
def test_num_classes_must_be_an_int_of_at_least_two(num_classes):
    x, y = _data()
    with pytest.raises(ValueError, match=r"^babysit: num_classes must be an int >= 2"):
        babysit(_mlp(), SoftmaxCrossEntropy(), x, y, num_classes=num_classes, **FAST)


def test_num_classes_accepts_numpy_integers():
    x, y = _data()
    report = babysit(_mlp(), SoftmaxCrossEntropy(), x, y, num_classes=np.int64(4), **FAST)
    assert report["initial loss"].values["num_classes"] == 4
    assert report["initial loss"].values["expected"] == pytest.approx(math.log(4))


def test_lr_probe_accepts_one_number_and_rejects_non_sequences():
    x, y = _data()
    one = babysit(_mlp(), SoftmaxCrossEntropy(), x, y, lr_probe=1e-1, probe_steps=30)
    as_tuple = babysit(_mlp(), SoftmaxCrossEntropy(), x, y, lr_probe=(1e-1,), probe_steps=30)
    assert [r.lr for r in one.probe] == [0.1]
    assert one.probe == as_tuple.probe
    for bad in ("1e-3", None, object()):
        with pytest.raises(ValueError, match=r"^babysit: lr_probe must be a sequence of learning rates"):
            babysit(_mlp(), SoftmaxCrossEntropy(), x, y, lr_probe=bad, probe_steps=30)
    for bad in ((1e-3, "1e-2"), (True,), (1e-3, -1.0), (math.nan,)):
        with pytest.raises(ValueError, match=r"^babysit: lr_probe must hold positive finite learning rates"):
            babysit(_mlp(), SoftmaxCrossEntropy(), x, y, lr_probe=bad, probe_steps=30)


def test_errors_from_the_model_and_the_loss_start_with_babysit_and_keep_their_text():
    x, y = _data()
    with pytest.raises(ValueError, match=r"^babysit: the model's forward pass failed") as info:
        babysit(_mlp(), SoftmaxCrossEntropy(), x[:, :19], y, **FAST)
    original = info.value.__cause__
    assert isinstance(original, ValueError) and "expected input of shape (N, 20)" in str(original)
    assert str(original) in str(info.value)
    bad = y.copy()
    bad[7] = 4                                                         # 4 classes: labels 0..3
    bad[150] = -1
    for loss in (SoftmaxCrossEntropy(), MulticlassSVM()):
        with pytest.raises(ValueError, match=r"^babysit: y holds 2 labels outside \[0, 4\) .*first: 4 in row 7"):
            babysit(_mlp(), loss, x, bad, **FAST)


def test_seed_must_be_a_non_negative_int():
    x, y = _data()
    for bad in (-1, 1.5, "0", True):
        with pytest.raises(ValueError, match=r"^babysit: seed must be a non-negative int"):
            babysit(_mlp(), SoftmaxCrossEntropy(), x, y, seed=bad, **FAST)


class _AscentAt:
    """An optimizer factory: momentum SGD, except at the rate ``bad`` where it climbs the gradient (3 x lr per step),
    so that this one rate rises while its neighbours decrease (the oracle for the verdicts is the construction)."""

    def __init__(self, bad):
        self.bad = bad

    def __call__(self, params, lr):
        optimizer = sgd(params, lr)
        if lr != self.bad:
            return optimizer

        class Ascent:
            def zero_grad(self):
                optimizer.zero_grad()

            def step(self):
                for p in params:
                    p.data += 3 * lr * p.grad

        return Ascent()


def test_recommended_range_is_the_contiguous_run_around_the_best_rate():
    """1e-1, 3e-2 and 3e-3 decrease, 1e-2 rises: the range must stop at 1e-2, not span 3e-3 ... 1e-1."""
    x, y = _data()
    report = babysit(_mlp(), SoftmaxCrossEntropy(), x, y, optimizer_factory=_AscentAt(1e-2), overfit_lr=0.05,
                     lr_probe=(1e-1, 3e-2, 1e-2, 3e-3), probe_steps=50)
    verdicts = [r.verdict for r in report.probe]
    assert verdicts == ["decreasing", "decreasing", "rising", "decreasing"], verdicts
    losses = [r.final_loss for r in report.probe]
    assert losses[0] == min(losses)                                  # the best rate is 1e-1
    assert report.best_lr == 1e-1
    assert report.recommended_lr == (3e-2, 1e-1)                     # its contiguous decreasing neighbour, no more
    values = report["learning-rate probe"].values
    assert (values["low"], values["high"], values["best"]) == (3e-2, 1e-1, 1e-1)
    assert report["learning-rate probe"].measured == "recommend 3e-02 … 1e-01"


def test_recommended_range_reaches_across_unsorted_rates():
    """Contiguity is in order of value, not of the order given: shuffled rates give the same range."""
    x, y = _data()
    report = babysit(_mlp(), SoftmaxCrossEntropy(), x, y, optimizer_factory=_AscentAt(1e-2), overfit_lr=0.05,
                     lr_probe=(3e-3, 1e-1, 1e-2, 3e-2), probe_steps=50)
    assert [r.verdict for r in report.probe] == ["decreasing", "decreasing", "rising", "decreasing"]
    assert report.recommended_lr == (3e-2, 1e-1)


def test_a_gradient_check_with_every_gradient_below_the_noise_is_not_called_a_wrong_backward():
    # gradcheck now reports such a check as unresolved (passed False): babysit must not read it as a wrong backward
    from cynet import gradcheck
    from cynet.diagnostics.babysit import _backward_is_wrong

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 20)) * 1e-11, np.arange(20) % 3          # weight gradients ~1e-11: below the noise
    model = nn.Sequential(nn.Linear(20, 3, bias=False, dtype=np.float64, generator=0))
    report = gradcheck.check_model(model, SoftmaxCrossEntropy(), x, y, num_checks=10, check_input=False, seed=0)
    assert report.unresolved and not report.passed
    text = _backward_is_wrong(report, "the loss is not decreasing")
    assert "gradients vanish" in text and "backward pass is wrong" not in text


def test_a_gradient_check_with_every_entry_on_a_kink_is_not_called_a_wrong_backward_or_vanishing():
    from cynet import gradcheck
    from cynet.diagnostics.babysit import _backward_is_wrong

    report = gradcheck.check_module(nn.ReLU(), np.zeros((2, 4)), num_checks=8, seed=0)    # x = 0: all kinks
    assert report.unresolved and not report.passed and report.num_below_noise == 0
    text = _backward_is_wrong(report, "the loss is not decreasing")
    assert "crossed a kink" in text and "vanish" not in text and "backward pass is wrong" not in text


@pytest.mark.parametrize("bad", [True, "0.001", 0.0, -1e-3, float("nan"), float("inf")])
def test_babysit_refuses_an_overfit_lr_that_is_not_a_positive_number(bad):
    x, y = _data()
    with pytest.raises(ValueError, match="overfit_lr must be a positive finite learning rate"):
        babysit(nn.Sequential(nn.Linear(20, 4, generator=0)), SoftmaxCrossEntropy(), x, y, overfit_lr=bad)


def test_the_initial_loss_notes_say_what_the_numbers_allow():
    # below chance: equal scores (tiny or zero weights) give exactly chance, never less; the hint pointed there
    x, y = _data()
    model = nn.Sequential(nn.Linear(20, 32, init="zeros"), nn.Tanh(), nn.Linear(32, 4, generator=1))
    text = babysit(model, SoftmaxCrossEntropy(), x, y, **FAST)["initial loss"].explanation
    # a zero first layer before a random one: its units part at the first step, so no claim that they cannot
    assert "are identical" in text and "where the next layer uses them alike" in text

    class HalfLoss(SoftmaxCrossEntropy):
        def forward(self, scores, y):
            return 0.5 * super().forward(scores, y)

    low = babysit(nn.Sequential(nn.Linear(20, 4, init="zeros")), HalfLoss(), x, y, **FAST)["initial loss"]
    assert low.passed is False and "lower than chance" in low.explanation
    assert "too small" not in low.explanation and "batch mean" in low.explanation


def test_babysit_refuses_a_loss_class_for_an_instance():
    # nn.SoftmaxCrossEntropy without the parentheses failed with "'numpy.ndarray' object has no attribute '__dict__'"
    model = nn.Sequential(nn.Linear(5, 3))
    x, y = np.zeros((8, 5), np.float32), np.arange(8) % 3
    with pytest.raises(TypeError, match=r"babysit: loss is the class SoftmaxCrossEntropy, not an instance of it"):
        babysit(model, nn.SoftmaxCrossEntropy, x, y)

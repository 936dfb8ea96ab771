"""Tests of cynet.diagnostics.curve_doctor: one synthetic history per pattern, and a healthy one."""
import math

import numpy as np
import pytest

from cynet.diagnostics.curve_doctor import diagnose

RNG = np.random.default_rng(0)


def _noisy(curve, scale=0.02):
    curve = np.asarray(curve, dtype=np.float64)
    return list(curve * (1 + scale * RNG.standard_normal(curve.shape)))


def _healthy_history():
    t = np.arange(1000)
    loss = 2.3 / np.sqrt(1 + t / 20)                    # keeps falling (power law), no plateau
    epochs = np.arange(1, 11)
    train_acc = 0.30 + 0.05 * epochs                    # 0.35 ... 0.80
    val_acc = train_acc - 0.04                          # small gap
    return {"loss": _noisy(loss), "train_acc": list(train_acc), "val_acc": list(val_acc),
            "train_loss": list(2.3 - 0.1 * epochs), "val_loss": list(2.35 - 0.1 * epochs)}


def test_healthy_history_has_no_alarming_finding():
    d = diagnose(_healthy_history())
    assert d.alarming == []
    assert "healthy" in d.names()
    assert "still improving" in d.names()                # val accuracy rose 0.15 over the last 3 epochs
    rise = [f for f in d if f.name == "still improving"][0].values["rise"]
    assert rise == pytest.approx(0.15)


def test_nan_loss_is_an_explosion():
    loss = _noisy(np.linspace(2.3, 1.5, 100)) + [float("nan")]
    d = diagnose({"loss": loss})
    assert d[0].name == "loss exploded" and d[0].severity == "alarm"
    assert d[0].values["iteration"] == 101
    assert "learning rate is too high" in d[0].advice


def test_loss_above_three_times_start_is_an_explosion():
    loss = [2.3] * 50 + [5.0, 9.0, 30.0]
    d = diagnose({"loss": loss})
    assert d[0].name == "loss exploded"
    assert d[0].values["peak"] == 30.0 and d[0].values["iteration"] == 53


def test_flat_loss_is_not_moving():
    d = diagnose({"loss": _noisy(np.full(500, 2.30), 0.01)})
    assert d.names()[0] == "loss not moving"
    assert "too low" in d[0].advice


def _start_and_end(loss):
    """The doctor's start (mean of the first n // 20 losses) and end (mean of the last n // 20), computed here."""
    loss = np.asarray(loss, dtype=np.float64)
    window = max(1, len(loss) // 20)
    return loss[:window].mean(), loss[-window:].mean()


def test_steadily_rising_loss_below_explosion_is_named_rising_not_lr_too_low():
    loss = np.linspace(2.3, 6, 200)                     # peaks at 2.6x its start: below the 3x explosion rule
    d = diagnose({"loss": loss})
    assert d.names() == ["loss rising"]
    f = d[0]
    assert f.severity == "alarm"
    start, end = _start_and_end(loss)
    assert f.values["start"] == pytest.approx(start) and f.values["end"] == pytest.approx(end)
    assert f"{(end - start) / start:+.1%}" in f.evidence          # +148.2%
    assert "too high" in f.advice and "bug" in f.advice
    assert "too low" not in f.advice and "raise" not in f.advice


def test_slow_noisy_rise_is_rising_and_flat_loss_is_not():
    rising = _noisy(np.linspace(2.3, 2.6, 2000), 0.02)               # +13 %, well inside the noise step to step
    d = diagnose({"loss": rising})
    assert d.names()[0] == "loss rising" and d[0].severity == "alarm"
    assert "not moving" not in " ".join(d.names())
    start, end = _start_and_end(rising)
    assert end > 1.05 * start                                         # the oracle agrees the rise passes the rule
    d = diagnose({"loss": _noisy(np.full(2000, 2.3), 0.02)})
    assert d.names()[0] == "loss not moving" and "loss rising" not in d.names()


def test_loss_that_climbs_back_after_falling_is_a_rebound():
    fall = 2.3 * np.exp(-np.arange(300) / 60) + 0.6                   # down to about 0.6 ...
    climb = 0.6 + np.arange(300) / 300                                # ... then back up to about 1.6
    loss = np.concatenate([fall, climb])
    d = diagnose({"loss": _noisy(loss, 0.01)})
    assert d.names()[0] == "loss rising"
    f = d[0]
    assert f.severity == "warning"
    assert 0.55 < f.values["low"] < 0.7 and 270 <= f.values["low_iteration"] <= 340
    assert f.values["end"] > f.values["low"] + 0.25 * (f.values["start"] - f.values["low"])
    assert "too high" in f.advice and "decay" in f.advice
    assert "plateau" not in d.names() and "healthy" not in d.names()


def test_small_wobble_after_convergence_is_not_a_rebound():
    t = np.arange(1000)
    loss = 0.5 + 1.8 * np.exp(-t / 80) + 0.02 * np.sin(t / 30)       # converged, wobbling by 1 % of the drop
    d = diagnose({"loss": _noisy(loss, 0.01)})
    assert "loss rising" not in d.names()


def test_flat_then_sudden_drop_points_at_initialisation():
    loss = np.concatenate([np.full(300, 2.30), 2.30 * np.exp(-np.arange(700) / 60) + 0.3])
    d = diagnose({"loss": _noisy(loss, 0.01)})
    assert "flat then sudden drop" in d.names()
    finding = [f for f in d if f.name == "flat then sudden drop"][0]
    assert 280 <= finding.values["flat_iterations"] <= 360        # the flat stretch: 300 iterations
    assert "initialisation" in finding.advice


def test_plateau_suggests_lr_decay():
    t = np.arange(1000)
    loss = 1.2 + 1.1 * np.exp(-t / 80)               # converges to 1.2 and stays
    d = diagnose({"loss": _noisy(loss, 0.01)})
    assert "plateau" in d.names()
    assert "decay" in [f for f in d if f.name == "plateau"][0].advice
    assert "flat then sudden drop" not in d.names()


def test_overfitting_gap():
    h = {"train_acc": [0.5, 0.7, 0.9, 0.98], "val_acc": [0.45, 0.55, 0.58, 0.57],
         "val_loss": [1.5, 1.3, 1.35, 1.6]}
    d = diagnose(h)
    f = [f for f in d if f.name == "overfitting"][0]
    assert f.values["gap"] == pytest.approx(0.41)
    assert "1.3" in f.evidence and "1.6" in f.evidence       # validation loss rose from its best
    assert "regularisation" in f.advice
    assert "underfitting" not in d.names()


def test_underfitting_no_gap_low_accuracy():
    d = diagnose({"train_acc": [0.34, 0.34, 0.34, 0.34], "val_acc": [0.33, 0.335, 0.33, 0.335]})
    f = [f for f in d if f.name == "underfitting"][0]
    assert f.values["gap"] == pytest.approx(0.005)
    assert "bigger model" in f.advice
    assert "still improving" not in d.names()       # +0.5 points over the last 3 epochs: below the 1-point rule


def test_still_improving_rule():
    d = diagnose({"train_acc": [0.6, 0.7, 0.8, 0.85], "val_acc": [0.55, 0.65, 0.75, 0.80]})
    assert "still improving" in d.names()
    d = diagnose({"train_acc": [0.6, 0.7, 0.8, 0.85], "val_acc": [0.55, 0.80, 0.79, 0.795]})
    assert "still improving" not in d.names()            # not at its best in the last epoch
    # a first fit without validation data leaves NaN in the first epochs; the rule reads the epochs that have it
    d = diagnose({"train_acc": [0.5, 0.6, 0.7, 0.8, 0.85], "val_acc": [math.nan, 0.55, 0.62, 0.70, 0.78]})
    assert "still improving" in d.names()


def test_missing_keys_and_errors():
    assert diagnose({}).names() == ["no data"]                      # not "healthy": nothing was read
    assert diagnose({"val_acc": [math.nan], "train_acc": [math.nan]}).names() == ["no data"]
    assert diagnose({"loss": [2.3]}).names() == ["no data"]
    with pytest.raises(TypeError):
        diagnose([1, 2, 3])


@pytest.mark.parametrize("loss", [
    [0.0] * 10 + list(np.linspace(0.0, 1e6, 90)),      # from 0 to a million: diverged
    list(np.linspace(-5.0, 50.0, 100)),                # a negative start, rising by 55
    [-1.0] * 100,
])
def test_a_loss_starting_at_zero_or_below_cannot_be_judged_and_is_not_called_healthy(loss):
    # every rule is relative to the start (3x, +5 %, -5 %): with a start <= 0 none applied and the curve, even one
    # from 0 to 1e6, was reported "healthy: keep going"
    start = float(np.mean(loss[:len(loss) // 20]))
    assert start <= 0
    d = diagnose({"loss": loss})
    assert "healthy" not in d.names()
    assert d.names() == ["cannot tell"]
    assert d[0].severity == "info" and d[0].values["start"] == pytest.approx(start)
    assert f"{start:.4g}" in d[0].evidence


@pytest.mark.parametrize("key", ["train_acc", "val_acc"])
def test_accuracies_given_in_percent_are_refused_not_read_as_fractions(key):
    # 90 % vs 85 % is a 5-point gap (no overfitting); read as fractions 90 and 85 it was a gap of 500 % and the
    # finding said "train accuracy 9000.0%"
    history = {"train_acc": [50.0, 90.0], "val_acc": [45.0, 85.0]}
    history = {k: (v if k == key else [a / 100 for a in v]) for k, v in history.items()}
    with pytest.raises(ValueError, match=key):
        diagnose(history)
    fractions = diagnose({"train_acc": [0.5, 0.9], "val_acc": [0.45, 0.85]})
    assert "overfitting" not in fractions.names()


def test_a_loss_that_falls_and_climbs_back_to_its_start_rose_rather_than_stood_still():
    # before: end within 5 % of start read "not moving: raise the learning rate", the opposite advice
    loss = np.concatenate([np.linspace(2.3, 0.5, 500), np.linspace(0.5, 2.3, 500)])
    d = diagnose({"loss": list(loss)})
    assert "loss not moving" not in d.names()
    rebound = [f for f in d if f.name == "loss rising"][0]
    assert rebound.severity == "warning"
    window = len(loss) // 20
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    assert rebound.values["low"] == pytest.approx(smooth.min())                 # 0.5 + half a window's slope
    assert rebound.values["end"] == pytest.approx(smooth[-1])


def test_one_noisy_batch_above_three_times_a_low_start_is_no_explosion():
    # a low loss with chi-square batch noise: one batch at 5.3x the start, no trend
    loss = list(0.19 * RNG.chisquare(4, 600) / 4)
    loss[300] = 0.19 * 5.3
    assert "loss exploded" not in diagnose({"loss": loss}).names()
    loss[301] = loss[302] = 0.19 * 12                                           # a spike that lasts: exploded
    d = diagnose({"loss": loss})
    assert d[0].name == "loss exploded" and d[0].values["iteration"] in (302, 303)


def test_flat_stretch_is_measured_to_the_middle_of_the_first_window_below_the_level():
    loss = np.concatenate([np.full(400, 2.30), np.linspace(2.30, 0.3, 600)])
    finding = [f for f in diagnose({"loss": list(loss)}) if f.name == "flat then sudden drop"][0]
    # by hand: the linear fall crosses 90 % of 2.30 at 400 + 0.23 / (2.0 / 600) = 469
    assert abs(finding.values["flat_iterations"] - 469) <= 2


@pytest.mark.parametrize("curve", [np.linspace(2.3, 1.2, 1000),                         # a straight line
                                   2.3 * np.exp(-np.arange(1000) / 1500.0)])            # a slow exponential
def test_a_steady_decline_is_not_a_flat_start(curve):
    # above 90 % of its start for 23 % of the run, then below 70 %: the old rule called a straight line "flat then
    # sudden drop" and advised another initialisation; its first half falls 5 % of the start, a flat start ~0 %
    assert "flat then sudden drop" not in diagnose({"loss": list(curve)}).names()


def test_no_underfitting_advice_when_the_loss_itself_is_alarming():
    # a run at lr 1e-6 (or from all-zero weights): the loss does not move, the accuracies stay at chance; before, the
    # "loss not moving: raise the lr" alarm came with "underfitting: the model is too weak, use a bigger model", a
    # confident cause that the run contradicts (the loss never started to fall: a bigger model does nothing)
    flat = {"loss": _noisy(np.full(120, 2.306), 0.01), "train_acc": [0.124, 0.124, 0.124],
            "val_acc": [0.118, 0.118, 0.12]}
    d = diagnose(flat)
    assert d.names()[0] == "loss not moving"
    assert "underfitting" not in d.names()
    # a slow divergence: the accuracies are low because the loss rises, not for lack of capacity
    rising = {"loss": list(np.linspace(2.3, 3.0, 200)), "train_acc": [0.15, 0.12], "val_acc": [0.14, 0.12]}
    d = diagnose(rising)
    assert d.names()[0] == "loss rising" and "underfitting" not in d.names()
    # with a loss that falls, low accuracies and no gap are still underfitting
    falling = {"loss": list(2.3 / np.sqrt(1 + np.arange(200) / 20)), "train_acc": [0.3, 0.35],
               "val_acc": [0.29, 0.34]}
    assert "underfitting" in diagnose(falling).names()


def test_diagnose_refuses_a_keras_style_history():
    # its "accuracy"/"val_accuracy" were silently skipped: a 99% vs 50% gap gave no overfitting finding
    history = {"loss": [2.0, 1.0, 0.5, 0.1], "accuracy": [0.5, 0.8, 0.95, 0.99], "val_loss": [2.0, 2.1, 2.5, 3.0],
               "val_accuracy": [0.5, 0.5, 0.5, 0.5]}
    with pytest.raises(ValueError, match=r"diagnose: history has the keys \['accuracy', 'val_accuracy'\], not "
                                         r"cynet's 'train_acc'/'val_acc'.*rename them"):
        diagnose(history)


def test_diagnose_names_a_series_that_is_not_numbers():
    with pytest.raises(TypeError, match=r"diagnose: history\['loss'\] must be a sequence of numbers, got 'abc'"):
        diagnose({"loss": "abc"})           # was "could not convert string to float: 'a'"

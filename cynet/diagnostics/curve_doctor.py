r"""The curve doctor: read a training history and name the lecture's patterns, with the numbers and the advice.

:func:`diagnose` takes a :class:`cynet.train.Trainer` history (per iteration "loss"; per epoch "train_loss",
"train_acc", "val_loss", "val_acc", accuracies as fractions in [0, 1]) and applies these rules. The per-iteration
loss is first smoothed with a moving average over :math:`w = \max(1, n/20)` iterations; *start* is the mean of the
first w losses, *end* the last smoothed value.

====================  ========  ===============================================================  ====================
finding               severity  rule (module constant)                                           advice
====================  ========  ===============================================================  ====================
loss exploded         alarm     a NaN/inf loss, the last loss or a mean of 5 above 3x start      lower the lr
                                (``EXPLODE_FACTOR``; one noisy batch alone is no explosion)
loss rising           alarm     end > 105 % of start (``LOSS_RISE`` = 0.05): a slow divergence   lower the lr, or
                                                                                                 look for a bug
loss not moving       alarm     end and the smoothed minimum within 5 % of start                 raise the lr
                                (``NOT_MOVING`` = 0.05; a loss that fell and came back rose)
loss rising           warning   fell, then climbed back: end - low > 25 % (``REBOUND``) of       decay / lower the
                                start - low, where low is the smoothed minimum                   lr
flat then sudden      warning   the smoothed loss stays above 90 % of start for >= 15 % of the   better init
drop                            run (``FLAT_FRACTION``), was flat over the first half of that
                                stretch (fell < 2.5 % of start, ``FLAT_HALF_DROP``: a steady
                                decline falls 5 %), then ends below 70 % of start
plateau               warning   the loss fell >= 10 % overall but < 2 % (``PLATEAU_DROP``) of    lr decay
                                its level over the last 25 % of iterations (``PLATEAU_TAIL``)
overfitting           warning   final train_acc - val_acc > 0.15 (``GAP``)                       regularise, more data
underfitting          warning   gap < 0.05 (``SMALL_GAP``) and train_acc < 0.6                   bigger model, longer
                                (``LOW_ACCURACY``); not with a loss alarm, which names the cause
still improving       info      val_acc at its best in the last epoch and up > 1 point           train longer
                                (``RISING``) over the last 3 epochs
healthy               ok        none of the alarms or warnings above (and the loss judged)       —
no data               info      no loss over 2 or more iterations and no finite accuracy         train first
cannot tell           info      the loss starts at 0 or below: every loss rule above compares    judge the curve
                                with the start, so none applies (and "healthy" is not claimed)   by eye
====================  ========  ===============================================================  ====================

Example:
    >>> import numpy as np
    >>> from cynet.diagnostics.curve_doctor import diagnose
    >>> findings = diagnose({"loss": [2.3] * 200})
    >>> findings[0].name
    'loss not moving'
"""
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Finding", "Diagnosis", "diagnose"]

EXPLODE_FACTOR = 3.0
SPIKE_WINDOW = 5
LOSS_RISE = 0.05
NOT_MOVING = 0.05
REBOUND = 0.25
FLAT_LEVEL = 0.90
FLAT_FRACTION = 0.15
FLAT_HALF_DROP = 0.025
DROP_LEVEL = 0.70
PLATEAU_MIN_TOTAL_DROP = 0.10
PLATEAU_TAIL = 0.25
PLATEAU_DROP = 0.02
GAP = 0.15
SMALL_GAP = 0.05
LOW_ACCURACY = 0.60
RISING = 0.01
RISING_EPOCHS = 3
SEVERITIES = ("alarm", "warning", "info", "ok")


@dataclass
class Finding:
    """One diagnosis.

    Attributes:
        name (str): the pattern, e.g. "overfitting".
        severity (str): "alarm", "warning", "info" or "ok".
        evidence (str): the numbers that triggered it.
        advice (str): what to try.
        values (dict): the raw numbers.
    """

    name: str
    severity: str
    evidence: str
    advice: str
    values: dict = field(default_factory=dict)

    def __str__(self):
        return f"[{self.severity}] {self.name}: {self.evidence} -> {self.advice}"


class Diagnosis(list):
    """A list of :class:`Finding` that prints one line per finding; :attr:`alarming` keeps alarms and warnings."""

    @property
    def alarming(self):
        return [f for f in self if f.severity in ("alarm", "warning")]

    def names(self):
        return [f.name for f in self]

    def __str__(self):
        return "\n".join(str(f) for f in self) if self else "no findings"


def _moving_average(values, window):
    if window <= 1:
        return values.copy()
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def _series(history, key):
    values = history.get(key)
    if values is None:
        return np.zeros(0)
    try:
        return np.asarray(list(values), dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"diagnose: history[{key!r}] must be a sequence of numbers, got {values!r:.100}") from None


def _loss_findings(loss, found):
    n = len(loss)
    if n < 2:
        return
    window = max(1, n // 20)
    bad = np.flatnonzero(~np.isfinite(loss))
    start = float(np.mean(loss[:window])) if np.all(np.isfinite(loss[:window])) else float(loss[0])
    if bad.size:
        found.append(Finding(
            "loss exploded", "alarm",
            f"the loss is {loss[bad[0]]} at iteration {bad[0] + 1} of {n} (started at {start:.4g})",
            "the learning rate is too high: lower it by 3-10x (or clip gradients; check the initialisation)",
            {"iteration": int(bad[0] + 1), "start": start}))
        return
    peak = int(np.argmax(loss))
    # the last loss, or a short mean: a single noisy batch of a low loss can exceed 3x its start without anything
    # exploding, a divergence stays up (or ends the run: the Trainer's guard stops at the batch that crossed)
    short = _moving_average(loss, min(SPIKE_WINDOW, n))
    if start > 0 and (loss[-1] > EXPLODE_FACTOR * start or short.max() > EXPLODE_FACTOR * start):
        found.append(Finding(
            "loss exploded", "alarm",
            f"the loss reached {loss[peak]:.4g} at iteration {peak + 1}, {loss[peak] / start:.1f}x its start "
            f"{start:.4g} (threshold {EXPLODE_FACTOR:g}x)",
            "the learning rate is too high: lower it by 3-10x",
            {"iteration": peak + 1, "peak": float(loss[peak]), "start": start}))
        return
    smooth = _moving_average(loss, window)
    end = float(smooth[-1])
    if start <= 0:
        # every rule is relative to the start: 3x, +5 %, -5 % of a start of 0 or below mean nothing
        found.append(Finding(
            "cannot tell", "info",
            f"the loss starts at {start:.4g} (mean of the first {window} iterations) and ends at {end:.4g}: the "
            f"rules compare the loss with its start, which must be positive",
            "judge this curve by eye (plot_loss); the rules fit a loss that is positive at the start, such as "
            "cross-entropy, an SVM loss or a mean squared error",
            {"start": start, "end": end, "iterations": n}))
        return
    if end > (1 + LOSS_RISE) * start:
        found.append(Finding(
            "loss rising", "alarm",
            f"the loss rose from {start:.4g} to {end:.4g} in {n} iterations ({(end - start) / start:+.1%}, "
            f"threshold +{LOSS_RISE:.0%}) without reaching {EXPLODE_FACTOR:g}x its start",
            "a rising training loss is a slow divergence: the learning rate is too high, lower it by 3-10x; if the "
            "loss rises at every rate, look for a bug (an update with the wrong sign, a wrong backward pass — check "
            "with cynet.gradcheck — or labels shuffled apart from their inputs)",
            {"start": start, "end": end, "iterations": n}))
        return
    low_at = int(np.argmin(smooth))
    low = float(smooth[low_at])
    if end >= (1 - NOT_MOVING) * start and low >= (1 - NOT_MOVING) * start:
        found.append(Finding(
            "loss not moving", "alarm",
            f"the loss went from {start:.4g} to {end:.4g} in {n} iterations ({(start - end) / start:+.1%} drop, "
            f"threshold {NOT_MOVING:.0%})",
            "the learning rate is probably too low: raise it by 10x (if it stays flat at every rate, check the "
            "backward pass with cynet.gradcheck)",
            {"start": start, "end": end, "iterations": n}))
        return
    if end - low > REBOUND * (start - low):
        low_iteration = low_at + window        # the last iteration of the window with the lowest mean
        found.append(Finding(
            "loss rising", "warning",
            f"the loss fell from {start:.4g} to {low:.4g} (iteration {low_iteration}), then climbed back to "
            f"{end:.4g}: it gave back {(end - low) / (start - low):.0%} of its drop (threshold {REBOUND:.0%})",
            "the training loss should not climb back: the learning rate has become too high for this stage — "
            "decay it (step decay, cosine, ReduceLROnPlateau) or lower it; with a fixed rate, check for a bug "
            "(an update with the wrong sign, data that changes between epochs)",
            {"start": start, "low": low, "low_iteration": low_iteration, "end": end, "iterations": n}))
        return
    below = np.flatnonzero(smooth < FLAT_LEVEL * start)
    # flat: over the first half of the stretch above the level the loss fell less than FLAT_HALF_DROP of its start; a
    # steady decline (a low learning rate, not a bad initialisation) falls half of the 10 % there
    if below.size and below[0] >= FLAT_FRACTION * len(smooth) and end < DROP_LEVEL * start and (
            start - smooth[below[0] // 2] < FLAT_HALF_DROP * start):
        flat = int(below[0]) + (window + 1) // 2     # up to the middle of the first window below the level
        found.append(Finding(
            "flat then sudden drop", "warning",
            f"the loss stayed above {FLAT_LEVEL:.0%} of its start {start:.4g} for {flat} of {n} iterations, then "
            f"fell to {end:.4g}",
            "a long flat start points at a bad initialisation (weights too small/large): try Xavier/He "
            "initialisation, or batch normalisation",
            {"flat_iterations": flat, "start": start, "end": end}))
    tail = max(2, int(round(PLATEAU_TAIL * len(smooth))))
    if len(smooth) >= 2 * tail and (start - end) >= PLATEAU_MIN_TOTAL_DROP * start:
        tail_start = float(smooth[-tail])
        tail_drop = (tail_start - end) / tail_start if tail_start > 0 else 0.0
        if tail_drop < PLATEAU_DROP:
            found.append(Finding(
                "plateau", "warning",
                f"over the last {tail} iterations the loss moved from {tail_start:.4g} to {end:.4g} "
                f"({tail_drop:+.1%}; threshold {PLATEAU_DROP:.0%}) after falling from {start:.4g}",
                "the loss has plateaued: decay the learning rate (step decay x0.1, cosine, or ReduceLROnPlateau)",
                {"tail_start": tail_start, "end": end, "start": start}))


def _accuracy_findings(history, found):
    # low accuracies under a loss alarm (exploded, rising, not moving) are that alarm's effect: "the model is too
    # weak, use a bigger one" would contradict it (a loss at lr 1e-6 or from zero weights never started to fall)
    loss_alarm = any(f.severity == "alarm" for f in found)
    train = _series(history, "train_acc")
    val = _series(history, "val_acc")
    for key, values in (("train_acc", train), ("val_acc", val)):
        outside = values[np.isfinite(values) & ((values < 0) | (values > 1))]
        if outside.size:
            # percentages (0-100) read as fractions: a gap of 30 points became 3000 %, always "overfitting"
            raise ValueError(f"diagnose: history[{key!r}] must hold accuracies as fractions in [0, 1] (as "
                             f"Trainer.history does), got {outside[0]:g}; divide percentages by 100")
    if not train.size or not math.isfinite(train[-1]):
        return
    if val.size != train.size or not math.isfinite(val[-1]):
        if train[-1] < LOW_ACCURACY and not loss_alarm:
            found.append(Finding(
                "underfitting", "warning",
                f"train accuracy {train[-1]:.1%} (below {LOW_ACCURACY:.0%}; no validation numbers)",
                "the model does not even fit its training data: use a bigger model, train longer, lower the "
                "regularisation or tune the learning rate", {"train_acc": float(train[-1])}))
        return
    gap = float(train[-1] - val[-1])
    values = {"train_acc": float(train[-1]), "val_acc": float(val[-1]), "gap": gap}
    if gap > GAP:
        evidence = (f"train accuracy {train[-1]:.1%} vs validation {val[-1]:.1%}: a gap of {gap:.1%} (threshold "
                    f"{GAP:.0%})")
        val_loss = _series(history, "val_loss")
        if val_loss.size == val.size and np.all(np.isfinite(val_loss)) and val_loss.size >= 2:
            best = int(np.argmin(val_loss))
            if best < val_loss.size - 1 and val_loss[-1] > val_loss[best]:
                evidence += (f"; validation loss rose from {val_loss[best]:.4g} (epoch {best + 1}) to "
                             f"{val_loss[-1]:.4g}")
        found.append(Finding("overfitting", "warning", evidence,
                             "increase the regularisation (weight decay, dropout), get more data or augment it, "
                             "or stop earlier (EarlyStopping)", values))
    elif gap < SMALL_GAP and train[-1] < LOW_ACCURACY and not loss_alarm:
        found.append(Finding(
            "underfitting", "warning",
            f"train accuracy {train[-1]:.1%} and validation {val[-1]:.1%}: no gap ({gap:+.1%}) and low accuracy "
            f"(below {LOW_ACCURACY:.0%})",
            "the model is too weak for the data: use a bigger model, train longer, or lower the regularisation",
            values))
    if val.size >= 2:
        back = min(RISING_EPOCHS, val.size - 1)
        rise = float(val[-1] - val[-1 - back])
        if val[-1] >= np.nanmax(val) and rise > RISING:     # NaN: epochs fitted without validation data
            found.append(Finding(
                "still improving", "info",
                f"validation accuracy is still rising: {val[-1 - back]:.1%} -> {val[-1]:.1%} over the last {back} "
                f"epochs (its best is the last epoch)",
                "train longer: the model has not converged", {"rise": rise, "epochs": back}))


def diagnose(history):
    """Name the patterns of a training history, with the evidence in numbers and the advice.

    Args:
        history (Mapping[str, Sequence[float]]): a :attr:`cynet.train.Trainer.history`; the keys used are "loss"
            (per iteration) and "train_acc", "val_acc", "val_loss" (per epoch). Missing or NaN entries skip the
            findings that need them.

    Returns:
        Diagnosis: a list of :class:`Finding`, alarms first, then warnings, information and "healthy" (added when
        nothing alarming was found); ``print`` shows one line per finding.

    Raises:
        TypeError: history is not a mapping, or one of its series holds something other than numbers.
        ValueError: Keras-style keys ("accuracy", "val_accuracy") without "train_acc"/"val_acc"; a finite
            "train_acc" or "val_acc" outside [0, 1] (a percentage, not a fraction).

    Example:
        >>> d = diagnose(trainer.history)    # doctest: +SKIP
        >>> print(d)                          # doctest: +SKIP
        [warning] overfitting: train accuracy 98.0% vs validation 61.0%: a gap of 37.0% (threshold 15%) -> ...
    """
    if not hasattr(history, "get"):
        raise TypeError(f"diagnose: history must be a mapping such as Trainer.history, got {type(history).__name__}")
    foreign = [key for key in ("accuracy", "val_accuracy", "acc") if key in history]
    if foreign and not any(key in history for key in ("train_acc", "val_acc")):
        # a Keras-style history: its accuracies were silently skipped (no overfitting finding, ever)
        raise ValueError(f"diagnose: history has the keys {foreign}, not cynet's 'train_acc'/'val_acc' (a Keras-style "
                         f"history?): rename them, e.g. {{'loss': ..., 'train_acc': h['accuracy'], 'val_acc': "
                         f"h['val_accuracy'], 'val_loss': h['val_loss']}}")
    found = []
    _loss_findings(_series(history, "loss"), found)
    _accuracy_findings(history, found)
    readable = _series(history, "loss").size >= 2 or any(
        np.isfinite(_series(history, key)).any() for key in ("train_acc", "val_acc"))
    if not readable:
        found.append(Finding(
            "no data", "info", "the history holds no loss over 2 or more iterations and no finite accuracy",
            "nothing to diagnose: pass the history of a run (Trainer.history after fit)"))
    elif not any(f.severity in ("alarm", "warning") or f.name == "cannot tell" for f in found):
        loss = _series(history, "loss")
        evidence = "no alarm or warning"
        if loss.size >= 2:
            evidence += f"; loss {loss[0]:.4g} -> {loss[-1]:.4g} over {loss.size} iterations"
        found.append(Finding("healthy", "ok", evidence, "keep going"))
    found.sort(key=lambda f: SEVERITIES.index(f.severity))
    return Diagnosis(found)

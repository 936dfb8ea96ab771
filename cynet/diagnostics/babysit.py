r"""Babysitting the learning process: the lecture's pre-training checks, run for you and explained with numbers.

CS231n ("Training Neural Networks I", *babysitting the learning process*) asks for four checks before a long run:

1. **Initial loss.** With small random weights every class gets about the same score, so the first loss (data
   loss only, regularisation off) is :math:`\ln C` for softmax cross-entropy and :math:`(C-1)\,\Delta` for the
   multiclass SVM with margin :math:`\Delta` (1 by default). Tolerance: 15 % relative (``INITIAL_LOSS_RTOL``): a
   float32 MLP with a sensible initialisation lands within a few percent; a weight scale 10x too large misses by
   far more than 15 %.
2. **Regularisation raises the loss.** With the penalty on, the total loss must be larger than the data loss,
   and the penalty's ``backward(model)`` must add a gradient.
   Checked only when you pass ``regularization`` (e.g. :class:`cynet.nn.loss.L2Penalty`); without one the check is
   reported as *skipped*: there is nothing of yours to verify, and inventing a penalty would only test cynet.
3. **Overfit a tiny subset.** ``tiny_size`` examples, regularisation off, full-batch steps: a working model,
   loss and backward pass reach 100 % training accuracy and a loss near 0 (below 10 % of the starting loss,
   ``OVERFIT_LOSS_FRACTION``) within ``overfit_steps`` steps.
4. **Learning-rate probe.** From the *same* initial weights, ``probe_steps`` mini-batch steps per learning rate.
   The loss on a fixed evaluation sample (up to 256 examples) before and after classifies each rate: *exploding*
   (a NaN/inf loss, or a batch loss above 3x the initial loss, ``EXPLODE_FACTOR``), *rising* (ended higher by more
   than 3 %), *barely changing* (moved less than 3 %, ``BARELY_CHANGING``) or *decreasing*. The recommended range
   spans the decreasing rates.

All randomness comes from ``seed`` (the subset, the batches) and the global generator (dropout masks), whose
state is saved and put back. Afterwards the model has exactly its initial parameters and buffers again
(``load_state_dict`` of a :meth:`~cynet.nn.Module.state_dict` taken first), every module its own train/eval mode,
and zeroed gradients.

Cost, measured on 2 CPU cores with float32 CIFAR-shaped data (3072 features) and the defaults (up to 200 overfit
steps on 20 examples, 5 x 100 probe steps of 64, exploding rates cut short): a 3072-100-10 MLP takes about 3 s,
a 3072-1024-512-10 MLP about 22 s. Lower ``probe_steps`` or probe fewer rates to go faster.

Example:
    >>> import numpy as np
    >>> from cynet import nn
    >>> from cynet.nn.loss import SoftmaxCrossEntropy
    >>> from cynet.diagnostics import babysit
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(300, 20)).astype(np.float32); y = (x[:, :3].argmax(1)).astype(np.int64)
    >>> model = nn.Sequential(nn.Linear(20, 50, generator=0), nn.ReLU(), nn.Linear(50, 3, generator=1))
    >>> report = babysit(model, SoftmaxCrossEntropy(), x, y, probe_steps=30)
    >>> report.passed, report["initial loss"].passed
    (True, True)
    >>> print(report)                                                        # doctest: +SKIP
"""
import math
import time
from dataclasses import dataclass, field

import numpy as np

from cynet._random import get_rng_state, set_rng_state
from cynet.nn.module import Module

__all__ = ["babysit", "BabysitReport", "Check", "ProbeResult"]

INITIAL_LOSS_RTOL = 0.15
OVERFIT_LOSS_FRACTION = 0.10
EXPLODE_FACTOR = 3.0
BARELY_CHANGING = 0.03
EVAL_SAMPLE = 256


@dataclass
class Check:
    """One babysitting check.

    Attributes:
        name (str): what was checked.
        passed (bool or None): the verdict; None when the check was skipped.
        measured (str): the number(s) observed.
        expected (str): what a healthy setup gives.
        explanation (str): the verdict in words, with a hint when it failed.
        values (dict): the raw numbers behind ``measured`` and ``expected`` (e.g. ``{"loss": ..., "expected":
            ...}``).
    """

    name: str
    passed: object
    measured: str
    expected: str
    explanation: str
    values: dict = field(default_factory=dict)

    @property
    def status(self):
        """"PASS", "FAIL" or "SKIP"."""
        return "SKIP" if self.passed is None else ("PASS" if self.passed else "FAIL")


@dataclass
class ProbeResult:
    """The learning-rate probe's outcome for one rate.

    Attributes:
        lr (float): the learning rate.
        verdict (str): "exploding", "rising", "barely changing" or "decreasing".
        initial_loss (float): loss on the evaluation sample before training.
        final_loss (float): loss on the evaluation sample after the probe (NaN/inf when it exploded).
        steps (int): steps taken (fewer than ``probe_steps`` when it exploded).
    """

    lr: float
    verdict: str
    initial_loss: float
    final_loss: float
    steps: int

    @property
    def relative_drop(self):
        """``(initial - final) / initial`` (NaN when undefined)."""
        if not (math.isfinite(self.final_loss) and self.initial_loss):
            return math.nan
        return (self.initial_loss - self.final_loss) / self.initial_loss


@dataclass
class BabysitReport:
    """What :func:`babysit` found: the checks in order, the probe's per-rate results and the recommendation.

    Attributes:
        checks (list[Check]): initial loss, regularisation, overfit, learning-rate probe.
        probe (list[ProbeResult]): one entry per probed learning rate, in the order given.
        recommended_lr (tuple or None): ``(low, high)``, the smallest and largest decreasing rate.
        best_lr (float or None): the probed rate with the lowest final loss among the decreasing ones.
        seconds (float): wall time of the whole run.
    """

    checks: list = field(default_factory=list)
    probe: list = field(default_factory=list)
    recommended_lr: object = None
    best_lr: object = None
    seconds: float = 0.0

    @property
    def passed(self):
        """True when no check failed (skipped checks do not count)."""
        return all(check.passed is not False for check in self.checks)

    def __getitem__(self, name):
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"BabysitReport: no check named {name!r}; have {[c.name for c in self.checks]}")

    def __str__(self):
        rows = [("check", "result", "measured", "expected")]
        rows += [(c.name, c.status, c.measured, c.expected) for c in self.checks]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        line = "  ".join("-" * w for w in widths)
        out = ["  ".join(cell.ljust(w) for cell, w in zip(rows[0], widths)), line]
        out += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows[1:]]
        out.append(line)
        for check in self.checks:
            out.append(f"[{check.status}] {check.name}: {check.explanation}")
        if self.probe:
            out.append("learning-rate probe:")
            for result in self.probe:
                out.append(f"  lr {result.lr:<8.0e} {result.verdict:<16} loss {result.initial_loss:.4g} -> "
                           f"{result.final_loss:.4g} ({result.steps} steps)")
        out.append(f"overall: {'PASSED' if self.passed else 'FAILED'} ({self.seconds:.1f} s)")
        return "\n".join(out)


# --- helpers ---------------------------------------------------------------------------------------------------------
def _class_names(obj):
    return {cls.__name__ for cls in type(obj).__mro__}


def _expected_initial_loss(loss, num_classes):
    """``(value, formula)`` of the chance-level loss, or ``(None, reason)`` when the loss has none."""
    names = _class_names(loss)
    if "SoftmaxCrossEntropy" in names:
        return math.log(num_classes), f"ln C = ln {num_classes}"
    if "MulticlassSVM" in names:
        margin = 1.0
        for attribute in ("margin", "delta"):
            value = getattr(loss, attribute, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                margin = float(value)
                break
        text = f"C - 1 = {num_classes - 1}" if margin == 1.0 else f"(C - 1) * margin = {num_classes - 1} * {margin:g}"
        return (num_classes - 1) * margin, text
    return None, f"no chance-level value is known for {type(loss).__name__}"


def _default_factory(params, lr):
    from cynet.optim import Adam
    return Adam(params, lr=lr)


def _is_classification(scores, y):
    return scores.ndim == 2 and y.ndim == 1 and y.dtype.kind in "iu"


def _weight_stats(model):
    """Std of all matrix-shaped weights together, and whether every one of them is exactly zero."""
    weights = [p.data for p in model.parameters() if p.data.ndim >= 2]
    if not weights:
        return math.nan, False
    total = sum(w.size for w in weights)
    sq = sum(float(np.sum(np.square(w, dtype=np.float64))) for w in weights)
    return math.sqrt(sq / total), all(not np.any(w) for w in weights)


class _Session:
    """The shared machinery: forward/loss/backward/step on the model, with the initial state kept for resets."""

    def __init__(self, model, loss, factory, x, y, dtype):
        self.model, self.loss, self.factory = model, loss, factory
        self.x, self.y, self.dtype = x, y, dtype
        self.initial = model.state_dict()

    def reset(self):
        self.model.load_state_dict(self.initial)
        self.model.zero_grad()

    def batch(self, index):
        xb = self.x[index]
        if self.dtype is not None and xb.dtype != self.dtype:
            xb = xb.astype(self.dtype)
        return xb, self.y[index]

    def loss_of(self, index):
        xb, yb = self.batch(index)
        scores = self.model.forward(xb)
        return float(self.loss.forward(scores, yb)), scores, yb

    def step(self, optimizer, index):
        self.model.zero_grad()
        value, scores, yb = self.loss_of(index)
        if math.isfinite(value):
            self.model.backward(self.loss.backward(), input_grad=False)
            optimizer.step()
        return value, scores, yb


# --- the checks ------------------------------------------------------------------------------------------------------
def _check_initial_loss(session, sample, loss, num_classes):
    value, scores, yb = session.loss_of(sample)
    if num_classes is None:
        num_classes = int(scores.shape[-1]) if scores.ndim >= 2 else 2
    expected, formula = _expected_initial_loss(loss, int(num_classes))
    name = "initial loss"
    values = {"loss": value, "expected": expected, "num_classes": int(num_classes)}
    if expected is None:
        return Check(name, None, f"{value:.4g}", "n/a", f"skipped: {formula}", values), value
    weight_std, all_zero = _weight_stats(session.model)
    measured = f"{value:.4g}"
    expect = f"{expected:.4g} ({formula})"
    if not math.isfinite(value):
        return Check(name, False, measured, expect,
                     f"expected {expected:.3f}, got {value}: the scores overflow; the weight scale is far too "
                     f"large (weight std {weight_std:.3g}) or the inputs are not normalised", values), value
    relative = (value - expected) / expected if expected else math.inf
    if abs(relative) <= INITIAL_LOSS_RTOL:
        text = (f"expected {expected:.3f}, got {value:.3f} ({relative:+.1%}, within {INITIAL_LOSS_RTOL:.0%}): "
                f"the scores start near chance, as they should")
        spread = float(np.std(np.asarray(scores, dtype=np.float64)))
        if all_zero:
            text += ("; but every weight is exactly zero: all units of a layer compute the same value and get the "
                     "same update, so the symmetry is never broken — initialise with small random weights")
        elif spread < 1e-6:
            text += (f"; the scores are all equal (std {spread:.1e}): the weights are tiny or zero, which can leave "
                     f"units symmetric and the gradients vanishing")
        return Check(name, True, measured, expect, text, values), value
    if relative > 0:
        text = (f"expected {expected:.3f}, got {value:.3f} ({relative:+.0%}): the scores are too large before "
                f"training; the weight scale is probably too large (weight std {weight_std:.3g}; try Xavier/He "
                f"initialisation) or the inputs are not normalised")
    else:
        text = (f"expected {expected:.3f}, got {value:.3f} ({relative:+.0%}): lower than chance before any "
                f"training; check that the loss is the batch mean, that the labels match the data and that the "
                f"weights are not too small / all zero (weight std {weight_std:.3g})")
    return Check(name, False, measured, expect, text, values), value


def _check_regularization(session, regularization, data_loss):
    name = "regularization raises loss"
    if regularization is None:
        return Check(name, None, "-", "loss goes up",
                     "skipped: no regularization given (pass regularization=L2Penalty(...) to check that the "
                     "penalty is added to the loss)")
    reg = float(regularization(session.model))
    total = data_loss + reg
    measured = f"{data_loss:.4g} -> {total:.4g}"
    values = {"data_loss": data_loss, "penalty": reg, "total_loss": total}
    if not math.isfinite(reg):
        return Check(name, False, measured, "> data loss", f"the penalty is {reg}: not finite", values)
    if reg <= 0:
        return Check(name, False, measured, "> data loss",
                     f"the penalty adds {reg:.3g}: it does not raise the loss (zero strength, or it is not "
                     f"computed on the weights?)", values)
    backward = getattr(regularization, "backward", None)
    if callable(backward):
        session.model.zero_grad()
        backward(session.model)
        touched = any(np.any(p.grad) for p in session.model.parameters() if p.requires_grad)
        session.model.zero_grad()
        if not touched:
            return Check(name, False, measured, "> data loss",
                         f"the penalty adds {reg:.3g} to the loss but its backward(model) adds no gradient: the "
                         f"weights would never feel it", values)
    text = f"the loss rises from {data_loss:.3f} to {total:.3f} (+{reg:.3g}) with the penalty on"
    if reg < 0.01 * data_loss:
        text += " (a small rise: the strength is low, which is fine for training)"
    return Check(name, True, measured, "> data loss", text, values)


def _check_overfit(session, tiny, steps, lr):
    name = "overfit tiny subset"
    session.reset()
    optimizer = session.factory(session.model.parameters(), lr)
    first = last = math.nan
    accuracy = math.nan
    reached = None
    taken = 0
    for step in range(1, steps + 1):
        value, scores, yb = session.step(optimizer, tiny)
        taken = step
        if step == 1:
            first = value
        last = value
        if not math.isfinite(value):
            break
        if _is_classification(scores, yb):
            accuracy = float(np.mean(np.argmax(scores, axis=1) == yb))
        if (math.isnan(accuracy) or accuracy == 1.0) and value <= OVERFIT_LOSS_FRACTION * first:
            reached = step
            break
    if reached is None and math.isfinite(last):      # the loss and accuracy after the last step
        last, scores, yb = session.loss_of(tiny)
        if _is_classification(scores, yb):
            accuracy = float(np.mean(np.argmax(scores, axis=1) == yb))
    n = len(tiny)
    acc_text = "" if math.isnan(accuracy) else f", train accuracy {accuracy:.0%}"
    measured = f"loss {first:.3g} -> {last:.3g}{acc_text}"
    expected = f"100% acc, loss < {OVERFIT_LOSS_FRACTION:.0%} of start"
    values = {"initial_loss": first, "final_loss": last, "accuracy": accuracy, "steps": taken, "lr": lr}
    if reached is not None:
        return Check(name, True, measured, expected,
                     f"{n} examples fitted in {reached} steps (lr {lr:g}): loss {first:.3f} -> {last:.3f}"
                     f"{acc_text}; forward, backward and update work together", values)
    if not math.isfinite(last):
        text = (f"the loss became {last} after {taken} steps: the learning rate {lr:g} is too high (or the "
                f"weights are far too large)")
    elif last >= 0.95 * first:
        text = (f"the loss is not decreasing ({first:.3f} -> {last:.3f} in {taken} steps, lr {lr:g}): the "
                f"backward pass is probably wrong (run cynet.gradcheck on the model) or the learning rate is far "
                f"too small")
    else:
        text = (f"the loss decreases but stalls ({first:.3f} -> {last:.3f}{acc_text} after {taken} steps, lr "
                f"{lr:g}): too little capacity for {n} examples, or a learning rate that is too low/high; try "
                f"more steps or another rate")
    return Check(name, False, measured, expected, text, values)


def _probe_one(session, lr, batches, sample, initial):
    session.reset()
    optimizer = session.factory(session.model.parameters(), lr)
    taken = 0
    for index in batches:
        value, _, _ = session.step(optimizer, index)
        taken += 1
        if not math.isfinite(value) or value > EXPLODE_FACTOR * initial:
            return ProbeResult(lr, "exploding", initial, value, taken)
    final, _, _ = session.loss_of(sample)
    if not math.isfinite(final) or final > EXPLODE_FACTOR * initial:
        return ProbeResult(lr, "exploding", initial, final, taken)
    drop = (initial - final) / initial if initial else 0.0
    if drop < -BARELY_CHANGING:
        verdict = "rising"
    elif drop < BARELY_CHANGING:
        verdict = "barely changing"
    else:
        verdict = "decreasing"
    return ProbeResult(lr, verdict, initial, final, taken)


def _check_lr_probe(report, session, sample, rates, steps, batch_size, rng):
    name = "learning-rate probe"
    n = len(session.x)
    size = min(batch_size, n)
    batches = [rng.choice(n, size=size, replace=False) for _ in range(steps)]
    session.reset()
    initial, _, _ = session.loss_of(sample)
    for lr in rates:
        report.probe.append(_probe_one(session, lr, batches, sample, initial))
    summary = ", ".join(f"{r.lr:.0e} {r.verdict}" for r in report.probe)
    good = [r for r in report.probe if r.verdict == "decreasing"]
    expected = "some lr decreasing"
    if not good:
        hints = []
        if all(r.verdict == "barely changing" for r in report.probe):
            hints.append("every rate is too small: try larger ones")
        elif all(r.verdict in ("exploding", "rising") for r in report.probe):
            hints.append("every rate is too large: try smaller ones")
        else:
            hints.append("the rates that do not barely change already explode: look between them, or check the "
                         "backward pass")
        return Check(name, False, summary, expected,
                     f"no rate decreased the loss by {BARELY_CHANGING:.0%} in {steps} steps; " + "; ".join(hints),
                     {"verdicts": {r.lr: r.verdict for r in report.probe}})
    low, high = min(r.lr for r in good), max(r.lr for r in good)
    best = min(good, key=lambda r: r.final_loss)
    report.recommended_lr = (low, high)
    report.best_lr = best.lr
    span = f"{low:.0e}" if low == high else f"{low:.0e} … {high:.0e}"
    text = (f"use {span} (lowest loss at {best.lr:.0e}: {best.initial_loss:.3f} -> {best.final_loss:.3f} in "
            f"{steps} steps); " + summary)
    return Check(name, True, f"recommend {span}", expected, text,
                 {"verdicts": {r.lr: r.verdict for r in report.probe}, "low": low, "high": high, "best": best.lr})


# --- the entry point -------------------------------------------------------------------------------------------------
def babysit(model, loss, x, y, *, optimizer_factory=None, regularization=None, num_classes=None, tiny_size=20,
            overfit_steps=200, overfit_lr=1e-3, lr_probe=(1e-1, 1e-2, 1e-3, 1e-4, 1e-5), probe_steps=100,
            batch_size=64, seed=0):
    """Run the lecture's pre-training checks on ``model`` and explain each result with numbers.

    The checks, in order (details and thresholds in :mod:`cynet.diagnostics.babysit`): the initial loss against
    its chance level, the regularisation raising the loss, overfitting ``tiny_size`` examples, and a learning-rate
    probe. The model comes back exactly as it was (parameters, buffers, train/eval modes; gradients zeroed).

    Args:
        model (cynet.nn.Module): the network; its output is the scores the loss reads.
        loss: a data loss with ``forward(scores, y) -> float`` and ``backward() -> dscores``
            (:class:`~cynet.nn.loss.SoftmaxCrossEntropy`, :class:`~cynet.nn.loss.MulticlassSVM`, ...).
        x (array_like): training inputs, one example per row (cast to the parameters' dtype per batch).
        y (array_like): labels, ``len(y) == len(x)``.
        optimizer_factory (callable): ``f(params, lr) -> optimizer`` (``step()``, ``zero_grad()``). Default None:
            :class:`cynet.optim.Adam` (reliably overfits 20 CIFAR-like examples in well under 200 steps).
        regularization: optional penalty, ``penalty(model) -> float`` (e.g. ``L2Penalty(1e-3)``). Only check 2
            uses it; without it check 2 is skipped. Default None.
        num_classes (int): C for the expected initial loss. Default None: the width of the model's output.
        tiny_size (int): examples in the overfitting subset. Default 20.
        overfit_steps (int): full-batch steps allowed for overfitting. Default 200.
        overfit_lr (float): learning rate of the overfitting run. Default 1e-3 (right for Adam; pass your own
            with an SGD factory, e.g. 1e-2 to 1e-1 for momentum SGD on normalised data).
        lr_probe (sequence of float): learning rates to probe. Default (1e-1, 1e-2, 1e-3, 1e-4, 1e-5).
        probe_steps (int): mini-batch steps per probed rate. Default 100.
        batch_size (int): mini-batch size of the probe. Default 64.
        seed (int): seeds the subset and batch choices. Default 0.

    Returns:
        BabysitReport: ``print(report)`` shows the table; ``report.passed``, ``report["initial loss"]``,
        ``report.recommended_lr``.

    Raises:
        TypeError: model is not a Module, or the loss lacks forward/backward.
        ValueError: mismatched or empty data, bad sizes, or an empty ``lr_probe``.

    Example:
        >>> from cynet.diagnostics import babysit
        >>> report = babysit(model, SoftmaxCrossEntropy(), x_train, y_train)  # doctest: +SKIP
        >>> report.passed, report.recommended_lr                               # doctest: +SKIP
        (True, (0.0001, 0.001))
    """
    start = time.perf_counter()
    if not isinstance(model, Module):
        raise TypeError(f"babysit: model must be a cynet.nn.Module, got {type(model).__name__}")
    if not (callable(getattr(loss, "forward", None)) and callable(getattr(loss, "backward", None))):
        raise TypeError(f"babysit: loss must have forward(scores, y) and backward(), got {loss!r}")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"babysit: x and y must be non-empty arrays of the same length, got shapes {x.shape} "
                         f"and {y.shape}")
    for arg, value in (("tiny_size", tiny_size), ("overfit_steps", overfit_steps), ("probe_steps", probe_steps),
                       ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"babysit: {arg} must be a positive int, got {value!r}")
    rates = [float(lr) for lr in lr_probe]
    if not rates or not all(math.isfinite(lr) and lr > 0 for lr in rates):
        raise ValueError(f"babysit: lr_probe must hold positive finite learning rates, got {lr_probe!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 2):
        raise ValueError(f"babysit: num_classes must be an int >= 2, got {num_classes!r}")
    factory = _default_factory if optimizer_factory is None else optimizer_factory

    params = model.parameters()
    dtype = params[0].data.dtype if params else None
    modes = [(module, module.training) for module in model.modules()]
    rng_state = get_rng_state()
    session = _Session(model, loss, factory, x, y, dtype)
    rng = np.random.default_rng(seed)
    n = len(x)
    sample = np.sort(rng.choice(n, size=min(EVAL_SAMPLE, n), replace=False))
    tiny = np.sort(rng.choice(n, size=min(int(tiny_size), n), replace=False))
    report = BabysitReport()
    try:
        model.train()
        check, data_loss = _check_initial_loss(session, sample, loss, num_classes)
        report.checks.append(check)
        report.checks.append(_check_regularization(session, regularization, data_loss))
        report.checks.append(_check_overfit(session, tiny, int(overfit_steps), float(overfit_lr)))
        report.checks.append(_check_lr_probe(report, session, sample, rates, int(probe_steps), int(batch_size),
                                             rng))
    finally:
        session.reset()
        for module, mode in modes:
            object.__setattr__(module, "training", mode)
        set_rng_state(rng_state)
    report.seconds = time.perf_counter() - start
    return report

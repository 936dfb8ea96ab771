r"""Babysitting the learning process: the lecture's pre-training checks, run for you and explained with numbers.

CS231n ("Training Neural Networks I", *babysitting the learning process*) asks for four checks before a long run:

1. **Initial loss.** With small random weights every class gets about the same score, so the first loss (data
   loss only, regularisation off) is :math:`\ln C` for softmax cross-entropy and :math:`(C-1)\,\Delta` for the
   multiclass SVM with margin :math:`\Delta` (1 by default). Tolerance: 15 % relative (``INITIAL_LOSS_RTOL``): a
   float32 MLP with a sensible initialisation lands within a few percent; a weight scale 10x too large misses by
   far more than 15 %. A chance level of 0 (an SVM with margin 0) is skipped: its loss scales with the scores, so
   no tolerance separates a good start from a bad one. A classification loss on a model with one output (C = 1) is
   an error: there is nothing to classify.
2. **Regularisation raises the loss.** With the penalty on, the total loss must be larger than the data loss,
   and the penalty's ``backward(model)`` must add a gradient.
   Checked only when you pass ``regularization`` (e.g. :class:`cynet.nn.loss.L2Penalty`); without one the check is
   reported as *skipped*: there is nothing of yours to verify, and inventing a penalty would only test cynet.
3. **Overfit a tiny subset.** ``tiny_size`` examples, regularisation off (the penalty, and the random modules
   in evaluation mode: no dropout masks), full-batch steps: a working model,
   loss and backward pass reach 100 % training accuracy and a loss near 0 (below 10 % of the starting loss,
   ``OVERFIT_LOSS_FRACTION``) within ``overfit_steps`` steps. A loss with label smoothing cannot go below the entropy
   of its smoothed targets: losses are then measured from that floor (10 % of the way from the floor to the start).
   A failure is explained by measurement; the first matching rule names the cause:

   - no parameter with ``requires_grad`` (a model without parameters, or every one frozen): nothing can learn,
     whatever the learning rate or the backward pass (the learning-rate probe's hint says so too);
   - a NaN/inf loss, or one above 3x the first (``EXPLODE_FACTOR``): the learning rate is too high — unless
     :func:`cynet.gradcheck.check_model` (data loss, ``GRADCHECK_ENTRIES`` = 5 entries per parameter, float64, on
     the initial weights) fails, which makes it a wrong backward pass;
   - a *symmetric layer* still symmetric after the run: symmetry never broken; or one that stayed symmetric for
     more than 10 % of the steps (``SYMMETRY_HELD``): symmetry broken too late (rounding differences can grow and
     separate units that exact arithmetic would keep identical). A symmetric layer is a weight matrix followed by
     more weight layers whose units (rows, with their biases) are identical up to ``SYMMETRY_RTOL``, as after a
     zero or constant initialisation;
   - a loss that fell by less than 5 % (``NOT_DECREASING``): a failed gradient check means a wrong backward pass;
     with a correct gradient, a net change of the weight matrices :math:`\lVert W_T - W_0\rVert / \lVert
     W_0\rVert` below 1e-4 per step (``LOW_UPDATE_RATIO``, the low end of
     :class:`~cynet.diagnostics.TrainingMonitor`'s healthy range) means the learning rate is too low;
   - a loss that fell, but not far enough: a failed gradient check means a wrong backward pass (a wrong gradient
     can still point downhill often enough to lower the loss a little); with a correct gradient, too little
     capacity, or a learning rate to tune.

4. **Learning-rate probe.** From the *same* initial weights, ``probe_steps`` mini-batch steps per learning rate.
   The loss on a fixed evaluation sample (up to 256 examples) before and after classifies each rate: *exploding*
   (a NaN/inf loss, or a batch loss above 3x the initial loss, ``EXPLODE_FACTOR``), *rising* (ended higher by more
   than 3 %), *barely changing* (moved less than 3 %, ``BARELY_CHANGING``) or *decreasing*. The recommended range
   is the contiguous run of decreasing rates around the best one (the lowest final loss), in the order of the
   rates' values: a range never spans a probed rate that rose, exploded or barely changed. When none decreases, the
   hint names a symmetric layer that no rate unlocked or a backward pass the overfit check found wrong before
   blaming the range of rates.

The losses that checks 1 and 4 compare (the initial loss, the probe's before and after) are *measurements*: they
are taken with the modules that draw at random in their forward pass (:class:`~cynet.nn.Dropout`,
:class:`~cynet.nn.StochasticDepth`, :class:`~cynet.nn.DropConnectLinear`: every module with a ``generator``
attribute) in evaluation mode, so a dropout mask cannot turn a rate that changes nothing into "decreasing" or
"rising", and the initial loss is the untrained network's rather than one noisy draw of it (inverted dropout also
inflates the scores). Every other module stays in training mode: a batch-norm layer keeps normalising with the batch
statistics, since in evaluation mode it would use running statistics that the probe's steps themselves move,
which changes the loss at a learning rate too small to move a weight. The overfit check's steps run so too
(regularisation off: dropout-like masks regularise, and can keep a network that fits the subset without them from
fitting it); the learning-rate probe's steps run in training mode.

All randomness comes from ``seed``: the subset and the batches, and, for the duration of the call, the global
generator (dropout masks and the like), which is seeded from it. The global generator's state and that of every
generator a module holds (``module.generator``) are saved first and put back, so a report depends only on the
model, the data and ``seed``. Afterwards the model has exactly its initial parameters and buffers again
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
import contextlib
import math
import numbers
import time
from dataclasses import dataclass, field

import numpy as np

from cynet._random import get_rng_state, set_rng_state
from cynet._validation import check_finite
from cynet.nn.module import Module, Parameter

__all__ = ["babysit", "BabysitReport", "Check", "ProbeResult"]

INITIAL_LOSS_RTOL = 0.15
OVERFIT_LOSS_FRACTION = 0.10
EXPLODE_FACTOR = 3.0
BARELY_CHANGING = 0.03
EVAL_SAMPLE = 256
NOT_DECREASING = 0.05
LOW_UPDATE_RATIO = 1e-4
SYMMETRY_RTOL = 1e-5
SYMMETRY_HELD = 0.10
GRADCHECK_ENTRIES = 5


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


def _table_lines(rows):
    """A header row, a rule, the other rows and a rule, in columns as wide as their widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rule = "  ".join("-" * w for w in widths)

    def line(row):
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
    return [line(rows[0]), rule] + [line(row) for row in rows[1:]] + [rule]


class _Checks:
    """What a report of :class:`Check` s answers: ``passed`` and the check by name (``report["initial loss"]``)."""

    @property
    def passed(self):
        """True when no check failed (skipped checks do not count)."""
        return all(check.passed is not False for check in self.checks)

    def __getitem__(self, name):
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"{type(self).__name__}: no check named {name!r}; have {[c.name for c in self.checks]}")


@dataclass
class BabysitReport(_Checks):
    """What :func:`babysit` found: the checks in order, the probe's per-rate results and the recommendation.

    Attributes:
        checks (list[Check]): initial loss, regularisation, overfit, learning-rate probe.
        probe (list[ProbeResult]): one entry per probed learning rate, in the order given.
        recommended_lr (tuple or None): ``(low, high)``, the smallest and largest rate of the contiguous run of
            decreasing rates (in order of value) that holds ``best_lr``; None when no rate decreased.
        best_lr (float or None): the probed rate with the lowest final loss among the decreasing ones.
        seconds (float): wall time of the whole run.
    """

    checks: list = field(default_factory=list)
    probe: list = field(default_factory=list)
    recommended_lr: object = None
    best_lr: object = None
    seconds: float = 0.0

    def __str__(self):
        rows = [("check", "result", "measured", "expected")]
        rows += [(c.name, c.status, c.measured, c.expected) for c in self.checks]
        out = _table_lines(rows)
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


def _learning_rates(lr_probe):
    """``lr_probe`` as a list of floats: a single number is one rate; raises ValueError for anything else than
    positive finite numbers (bools and strings included)."""
    if isinstance(lr_probe, numbers.Real) and not isinstance(lr_probe, bool):
        lr_probe = (lr_probe,)
    try:
        if isinstance(lr_probe, (str, bytes)):
            raise TypeError
        rates = list(lr_probe)
    except TypeError:
        raise ValueError(f"babysit: lr_probe must be a sequence of learning rates (or one number), got "
                         f"{lr_probe!r}") from None
    if not rates or not all(isinstance(lr, numbers.Real) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0
                            for lr in rates):
        raise ValueError(f"babysit: lr_probe must hold positive finite learning rates, got {lr_probe!r}")
    return [float(lr) for lr in rates]


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


def _weight_layers(model):
    """``(name, module)`` of every module owning a ``weight`` Parameter with two or more dimensions, in order."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(getattr(module, "weight", None), Parameter) and module.weight.data.ndim >= 2]


def _identical_units(module):
    """True when the layer's units are interchangeable: every row of its weight (units along axis 0, as in
    ``Linear``'s (M, D)) and every entry of its bias equal the first, up to ``SYMMETRY_RTOL`` of their largest
    magnitude (all-zero layers included)."""
    weight = module.weight.data
    if weight.shape[0] < 2:
        return False
    rows = weight.reshape(weight.shape[0], -1).astype(np.float64)
    spread = float(np.max(np.abs(rows - rows[0])))
    scale = float(np.max(np.abs(rows)))
    bias = getattr(module, "bias", None)
    if isinstance(bias, Parameter) and bias.data.shape == (weight.shape[0],):
        b = bias.data.astype(np.float64)
        spread = max(spread, float(np.max(np.abs(b - b[0]))))
        scale = max(scale, float(np.max(np.abs(b))))
    return spread <= SYMMETRY_RTOL * scale          # NaN compares False: a diverged layer is not symmetric


def _symmetric_layers(model):
    """``(name, module)`` of the symmetric layers: weight layers followed by another weight layer whose units are
    identical (a zero or constant initialisation). The last weight layer is left out: its units are the outputs,
    which the loss tells apart."""
    return [(name, module) for name, module in _weight_layers(model)[:-1] if _identical_units(module)]


def _layer_label(name, module):
    return f"layer {name or '(the model)'} ({type(module).__name__}, {module.weight.data.shape[0]} units)"


def _labels(layers):
    return " and ".join(_layer_label(name, module) for name, module in layers)


def _weight_matrices(model):
    return [p.data for p in model.parameters() if p.requires_grad and p.data.ndim >= 2]


def _relative_change(before, after):
    """``||after - before|| / ||before||`` over all the arrays together (NaN when ``before`` is all zero)."""
    moved = sum(float(np.sum(np.square(a.astype(np.float64) - b))) for b, a in zip(before, after))
    norm = sum(float(np.sum(np.square(b, dtype=np.float64))) for b in before)
    return math.sqrt(moved / norm) if norm > 0 else math.nan


# the errors a model or loss raises for data it cannot take (wrong feature count, labels out of range): re-raised
# with "babysit:" and the context, as the builtin class itself so that ``except ValueError`` still catches them
_WRAPPED = (ValueError, TypeError, IndexError)


def _rethrow(err, context):
    """Raise ``err`` (one of ``_WRAPPED``, from the model or the loss) again as its builtin class with the message
    "babysit: <context>: <its own message>", chained to it."""
    cls = next(c for c in _WRAPPED if isinstance(err, c))
    raise cls(f"babysit: {context}: {err}") from err


def _draws_at_random(module):
    """True for a module whose forward pass draws random numbers in training: cynet's Dropout, StochasticDepth and
    DropConnectLinear keep a ``generator`` attribute (None: the global generator), the convention for such modules."""
    return hasattr(module, "generator")


def _module_generators(*objects):
    """Every :class:`numpy.random.Generator` held as an attribute by the modules of ``objects`` (a model, a loss),
    each once."""
    found = {}
    for obj in objects:
        modules = obj.modules() if isinstance(obj, Module) else [obj]
        for module in modules:
            for value in vars(module).values():
                if isinstance(value, np.random.Generator):
                    found[id(value)] = value
    return list(found.values())


def _check_labels(y, num_outputs):
    """Raise ValueError when integer labels fall outside ``[0, num_outputs)``, naming the first such row of ``y``
    (the loss itself would name a position within a sampled batch)."""
    bad = (y < 0) | (y >= num_outputs)
    count = int(np.count_nonzero(bad))
    if count:
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"babysit: y holds {count} label{'s' if count > 1 else ''} outside [0, {num_outputs}) for "
                         f"the model's {num_outputs} outputs (first: {y[row]} in row {row})")


class _Session:
    """The shared machinery: forward/loss/backward/step on the model, with the initial state kept for resets."""

    def __init__(self, model, loss, factory, x, y, dtype):
        self.model, self.loss, self.factory = model, loss, factory
        self.x, self.y, self.dtype = x, y, dtype
        self.initial = model.state_dict()
        self.symmetric = _symmetric_layers(model)         # at the initial weights
        self.gradient_check = None                          # set by the overfit check when it runs one
        self.random_modules = [module for module in model.modules() if _draws_at_random(module)]

    def still_symmetric(self):
        """The initially symmetric layers whose units are still identical at the current weights."""
        return [(name, module) for name, module in self.symmetric if _identical_units(module)]

    def reset(self):
        self.model.load_state_dict(self.initial)
        self.model.zero_grad()

    def batch(self, index):
        xb = self.x[index]
        if self.dtype is not None and xb.dtype != self.dtype:
            xb = xb.astype(self.dtype)
        return xb, self.y[index]

    def scores_of(self, xb):
        try:
            return self.model.forward(xb)
        except _WRAPPED as err:
            _rethrow(err, f"the model's forward pass failed on a batch of x of shape {xb.shape}")

    def loss_value(self, scores, yb):
        try:
            return float(self.loss.forward(scores, yb))
        except _WRAPPED as err:
            _rethrow(err, f"{type(self.loss).__name__}.forward failed on scores of shape {np.shape(scores)} and a "
                          f"batch of y of shape {yb.shape}")

    def loss_of(self, index):
        xb, yb = self.batch(index)
        scores = self.scores_of(xb)
        return self.loss_value(scores, yb), scores, yb

    @contextlib.contextmanager
    def measuring(self):
        """Within the block, the modules that draw at random are in evaluation mode (the rest as they were), so a
        loss taken there is a measurement of the weights, not of one random mask; their modes come back on exit."""
        with self.model.modes_restored():
            for module in self.random_modules:
                module.train(False)
            yield

    def measure(self, index):
        """``loss_of(index)`` taken ``measuring()``."""
        with self.measuring():
            return self.loss_of(index)

    def step(self, optimizer, index):
        self.model.zero_grad()
        value, scores, yb = self.loss_of(index)
        if math.isfinite(value):
            try:
                self.model.backward(self.loss.backward(), input_grad=False)
            except _WRAPPED as err:
                _rethrow(err, "the backward pass failed")
            optimizer.step()
        return value, scores, yb


# --- the checks ------------------------------------------------------------------------------------------------------
def _check_initial_loss(session, sample, loss, num_classes):
    """Check 1. Measured with the random modules in evaluation mode (``session.measuring()``): the chance level is
    the untrained network's loss, and a dropout mask would only add noise to it (inverted dropout also scales the
    surviving activations up, which inflates the scores). Returns ``(Check, data loss)``.

    Raises:
        ValueError: a classification loss on a model with fewer than 2 outputs, or labels outside its outputs.
    """
    name = "initial loss"
    with session.measuring():
        xb, yb = session.batch(sample)
        scores = session.scores_of(xb)
        inferred = num_classes is None
        if inferred:
            num_classes = int(scores.shape[-1]) if np.ndim(scores) >= 2 else 2
        expected, formula = _expected_initial_loss(loss, int(num_classes))
        if expected is not None and inferred and num_classes < 2:
            # an explicit num_classes=1 is refused up front; one inferred from the model's width must be too: the
            # chance-level loss would be 0 and every relative comparison with it meaningless
            raise ValueError(f"babysit: the model has {num_classes} output (scores of shape {np.shape(scores)}), so "
                             f"{type(loss).__name__} sees C = {num_classes} class and has nothing to classify; a "
                             f"classifier needs C >= 2 outputs (2 for a two-class problem)")
        if expected is not None and _is_classification(np.asarray(scores), session.y):
            width = int(scores.shape[-1])
            if not inferred and num_classes != width:
                # the chance level belongs to the scores the loss reads: num_classes=100 on 10 outputs expected
                # ln 100 = 4.605 and failed a healthy start (2.47) as "lower than chance"
                raise ValueError(f"babysit: num_classes={num_classes} but the model has {width} outputs (scores of "
                                 f"shape {np.shape(scores)}): {type(loss).__name__}'s chance level is that of its "
                                 f"{width} classes; give num_classes={width}, or leave it out")
            _check_labels(session.y, width)
        value = session.loss_value(scores, yb)
    values = {"loss": value, "expected": expected, "num_classes": int(num_classes)}
    if expected is None:
        return Check(name, None, f"{value:.4g}", "n/a", f"skipped: {formula}", values), value
    if expected == 0:
        return Check(name, None, f"{value:.4g}", f"0 ({formula})",
                     f"skipped: the chance-level loss is 0 ({formula}); such a loss scales with the scores, so no "
                     f"tolerance tells a good initial scale from a bad one (measured {value:.4g})", values), value
    weight_std, all_zero = _weight_stats(session.model)
    measured = f"{value:.4g}"
    expect = f"{expected:.4g} ({formula})"
    if not math.isfinite(value):
        return Check(name, False, measured, expect,
                     f"expected {expected:.3f}, got {value}: the scores overflow; the weight scale is far too "
                     f"large (weight std {weight_std:.3g}) or the inputs are not normalised", values), value
    relative = (value - expected) / expected
    if abs(relative) <= INITIAL_LOSS_RTOL:
        text = (f"expected {expected:.3f}, got {value:.3f} ({relative:+.1%}, within {INITIAL_LOSS_RTOL:.0%}): "
                f"the scores start near chance, as they should")
        spread = float(np.std(np.asarray(scores, dtype=np.float64)))
        if session.symmetric:
            text += (f"; but {'every weight is exactly zero and ' if all_zero else ''}the units of "
                     f"{_labels(session.symmetric)} are identical (zero/constant init): they compute the same value, "
                     f"and where the next layer uses them alike or no gradient reaches them (a ReLU at 0) they also "
                     f"get the same update, so training never breaks the symmetry (the overfit check shows whether it "
                     f"does) — initialise with small random weights")
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
                f"training, which equal scores (tiny or zero weights) cannot give; check that the loss is the batch "
                f"mean and that the labels match the data (or an output bias set to the class frequencies of "
                f"imbalanced data)")
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
        frozen = _nothing_trainable(session.model)
        if frozen is not None:      # (a penalty over the trainable weights has none to act on: not its fault)
            return Check(name, False, measured, "> data loss",
                         f"the penalty adds {reg:.3g}: {frozen}, and a penalty acts on trainable weights only — "
                         f"set requires_grad=True on the parameters to train", values)
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


def _gradient_check(session, tiny, values):
    """:func:`cynet.gradcheck.check_model` of the initial model on the tiny subset (data loss only), kept on the
    session and in ``values``; None when the model cannot be checked (e.g. a module that does not survive the
    float64 copy)."""
    from cynet.gradcheck import check_model

    session.reset()
    xb, yb = session.batch(tiny)
    try:
        report = check_model(session.model, session.loss, xb, yb, num_checks=GRADCHECK_ENTRIES, check_input=False,
                             seed=0)
    except Exception:           # the check is a diagnosis aid: it must not turn a report into a crash
        return None
    session.gradient_check = report
    values["gradient_check_error"] = report.max_measured_error     # as measured (the report's table), not 0
    return report


def _backward_is_wrong(report, what_the_loss_did):
    """The explanation for a failed gradient check: a wrong backward pass, or, where no entry was verified (the check
    is unresolved), gradients too small to check at all, or sample points all on kinks."""
    if getattr(report, "unresolved", False) and not report.num_below_noise:
        return (f"{what_the_loss_did}: the gradient check could not compare a single entry — every one it sampled "
                f"crossed a kink (a ReLU or max at exactly 0, tied scores), so it cannot tell whether the backward "
                f"pass is right; run cynet.gradcheck.check_model on a random input")
    if getattr(report, "unresolved", False):
        return (f"{what_the_loss_did}: the gradients vanish — every gradient the check sampled is below the rounding "
                f"noise of the loss, so it cannot tell whether the backward pass is right; look for weights far too "
                f"small, saturated tanh/sigmoid units or dead ReLUs (cynet.diagnostics.activation_statistics)")
    worst = max(report.arrays, key=lambda array: array.max_error)
    return (f"{what_the_loss_did}: the backward pass is wrong — the gradient check disagrees with the loss (max "
            f"relative error {report.max_error:.2g} in {worst.name}, threshold {report.threshold:g}); print "
            f"cynet.gradcheck.check_model(model, loss, x, y) for the table")


def _explain_not_decreasing(session, tiny, first, last, taken, lr, values):
    """Why the loss did not fall: a wrong backward pass (gradient check), a learning rate too low (the weights
    barely moved) or, when neither, steps that move the weights without lowering the loss."""
    report = _gradient_check(session, tiny, values)
    movement = values["weight_change"]
    per_step = movement / taken if taken else math.nan
    values["weight_change_per_step"] = per_step
    head = f"the loss is not decreasing ({first:.3f} -> {last:.3f} in {taken} steps, lr {lr:g})"
    if report is None:
        return (f"{head}: the backward pass is probably wrong (run cynet.gradcheck on the model) or the learning "
                f"rate is far too small")
    if not report.passed:
        return _backward_is_wrong(report, head)
    checked = f"the gradient checks out (max relative error {report.max_measured_error:.1g})"
    if math.isfinite(per_step) and per_step < LOW_UPDATE_RATIO:
        return (f"the loss barely moved ({first:.3f} -> {last:.3f} in {taken} steps): learning rate too low — "
                f"lr {lr:g} changed the weights by {movement:.2g} of their norm in all ({per_step:.2g} per step, "
                f"below {LOW_UPDATE_RATIO:g}; healthy steps are about 1e-3) while {checked}: raise it by 10-100x")
    return (f"{head} although {checked} and the weights moved ({per_step:.2g} of their norm per step): the steps "
            f"may overshoot (lower the learning rate) or the units may be dead or saturated (look at "
            f"cynet.diagnostics.activation_statistics)")


def _loss_floor(loss, num_classes):
    """The lowest value the data loss can take on integer labels: 0, or with label smoothing eps the entropy of the
    smoothed one-hot target, -(h ln h + (C - 1) l ln l) with h = 1 - eps + eps / C and l = eps / C."""
    eps = getattr(loss, "label_smoothing", 0.0)
    if not eps or num_classes < 2:
        return 0.0
    high, low = 1 - eps + eps / num_classes, eps / num_classes
    return -(high * math.log(high) + (num_classes - 1) * low * math.log(low))


def _nothing_trainable(model):
    """Why no step can change ``model`` (it has no parameters, or every one is frozen), or None when some parameter
    has ``requires_grad``: then neither the learning rate nor the backward pass is to blame for a loss that stays."""
    params = model.parameters()
    if any(p.requires_grad for p in params):
        return None
    if not params:
        return "the model has no parameters at all"
    return (f"every parameter of the model is frozen (requires_grad=False on all {len(params)} parameters, "
            f"{sum(p.size for p in params):,} entries)")


def _check_overfit(session, tiny, steps, lr):
    name = "overfit tiny subset"
    session.reset()
    optimizer = session.factory(session.model.parameters(), lr)
    start_weights = [w.copy() for w in _weight_matrices(session.model)]
    first = last = math.nan
    peak, peak_step = -math.inf, 0
    broken_at = {}                      # initially symmetric layer -> the first step after which its units differ
    accuracy = math.nan
    reached = None
    taken = 0
    floor = 0.0
    classification = False
    # regularisation off, as the check promises: dropout, DropConnect and stochastic depth regularise too, and their
    # masks kept a network that fits the subset without them from fitting it (p = 0.5: 95 % accuracy, loss 2.39 ->
    # 0.745 after 200 steps, where p = 0 fits in 169), which was blamed on capacity; they run in evaluation mode
    with session.measuring():
        for step in range(1, steps + 1):
            value, scores, yb = session.step(optimizer, tiny)
            taken = step
            if step == 1:
                first = value
                classification = _is_classification(scores, yb)
                if classification:
                    floor = _loss_floor(session.loss, int(scores.shape[-1]))
            last = value
            if not math.isfinite(value):
                break
            if value > peak:
                peak, peak_step = value, step
            for layer, module in session.symmetric:
                if layer not in broken_at and not _identical_units(module):
                    broken_at[layer] = step
            if _is_classification(scores, yb):
                accuracy = float(np.mean(np.argmax(scores, axis=1) == yb))
            if (math.isnan(accuracy) or accuracy == 1.0) and value - floor <= OVERFIT_LOSS_FRACTION * (first - floor):
                reached = step
                break
        if reached is None and math.isfinite(last):      # the loss and accuracy after the last step
            last, scores, yb = session.loss_of(tiny)
            if _is_classification(scores, yb):
                accuracy = float(np.mean(np.argmax(scores, axis=1) == yb))
    symmetric = session.still_symmetric()
    held_long = [(layer, module) for layer, module in session.symmetric
                 if layer in broken_at and broken_at[layer] > SYMMETRY_HELD * taken]
    n = len(tiny)
    acc_text = "" if math.isnan(accuracy) else f", train accuracy {accuracy:.0%}"
    measured = f"loss {first:.3g} -> {last:.3g}{acc_text}"
    needed = "100% acc, " if classification else ""      # a regression loss has no accuracy to reach
    expected = f"{needed}loss < {OVERFIT_LOSS_FRACTION:.0%} of start"
    if floor:
        expected = f"{needed}loss < floor {floor:.3g} + {OVERFIT_LOSS_FRACTION:.0%} of (start - floor)"
    values = {"initial_loss": first, "final_loss": last, "accuracy": accuracy, "steps": taken, "lr": lr,
              "loss_floor": floor,
              "weight_change": _relative_change(start_weights, _weight_matrices(session.model)),
              "symmetric_layers": [layer for layer, _ in symmetric], "symmetry_broken_at": dict(broken_at)}
    floor_text = f" (the label-smoothed loss cannot go below {floor:.3f})" if floor else ""
    if reached is not None:
        return Check(name, True, measured, expected,
                     f"{n} examples fitted in {reached} steps (lr {lr:g}): loss {first:.3f} -> {last:.3f}"
                     f"{acc_text}{floor_text}; forward, backward and update work together", values)
    exploded = math.isfinite(first) and first > 0 and peak > EXPLODE_FACTOR * first
    frozen = _nothing_trainable(session.model)
    if frozen is not None:
        # no gradient check to run (it skips frozen parameters and had nothing to compare) and no rate to blame
        text = (f"nothing can learn: {frozen}, so no step changes the model (loss {first:.3f} -> {last:.3f}"
                f"{acc_text} after {taken} steps) — set requires_grad=True on the parameters to train")
    elif not math.isfinite(last) or exploded:
        if not math.isfinite(last):
            what = f"the loss exploded: it became {last} after {taken} steps"
        else:
            what = (f"the loss exploded to {peak:.4g} at step {peak_step}, {peak / first:.0f}x its start "
                    f"{first:.3f} (threshold {EXPLODE_FACTOR:g}x)")
        report = _gradient_check(session, tiny, values)
        if report is not None and not report.passed:
            text = _backward_is_wrong(report, what)
        else:
            text = f"{what}: the learning rate {lr:g} is too high (or the weights are far too large)"
            if report is not None:
                text += f"; the gradient checks out (max relative error {report.max_measured_error:.1g})"
    elif symmetric:
        text = (f"symmetry never broken: the units of {_labels(symmetric)} are identical (zero/constant init) and "
                f"still are after {taken} steps (loss {first:.3f} -> {last:.3f}{acc_text}): they compute the same "
                f"value and get the same update (or none), so each such layer acts as a single unit — initialise "
                f"with small random weights (Xavier/He)")
    elif held_long:
        if len(held_long) == 1:
            held = str(broken_at[held_long[0][0]] - 1)
        else:
            held = ", ".join(f"{broken_at[layer] - 1} (layer {layer})" for layer, _ in held_long)
        text = (f"symmetry broken too late: the units of {_labels(held_long)} started identical (zero/constant "
                f"init) and stayed so for {held} of {taken} steps (loss {first:.3f} -> {last:.3f}{acc_text}): "
                f"for that long each such layer acted as a single unit — initialise with small random weights "
                f"(Xavier/He)")
    elif last - floor >= (1 - NOT_DECREASING) * (first - floor):
        text = _explain_not_decreasing(session, tiny, first, last, taken, lr, values)
    else:
        # a wrong gradient can still point downhill often enough to lower the loss a little: check it before
        # blaming the capacity or the rate, as in the branches above
        head = f"the loss decreases but stalls ({first:.3f} -> {last:.3f}{acc_text} after {taken} steps, lr {lr:g})"
        report = _gradient_check(session, tiny, values)
        if report is not None and not report.passed:
            text = _backward_is_wrong(report, head)
        else:
            text = (f"{head}: too little capacity for {n} examples, or a learning rate that is too low/high; try "
                    f"more steps or another rate")
            if report is not None:
                text += f" (the gradient checks out: max relative error {report.max_measured_error:.1g})"
    if session.symmetric and not symmetric and not held_long:
        text += (f" (note: {_labels(session.symmetric)} started with identical units, a zero/constant init; the run "
                 f"broke that symmetry, but small random weights give training a better start)")
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
    final, _, _ = session.measure(sample)         # like ``initial``: random modules in evaluation mode
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


def _contiguous_range(results, best):
    """``(low, high)``: the smallest and largest rate of the run of "decreasing" results around ``best`` in order of
    value. The decreasing rates need not be contiguous (1e-1 and 1e-3 decreasing, 1e-2 rising: a noisy or unstable
    regime); a range spanning a rate that failed would recommend it, so the run stops at the first one that did
    not decrease."""
    ordered = sorted(results, key=lambda r: r.lr)
    at = next(i for i, r in enumerate(ordered) if r is best)
    lo = hi = at
    while lo > 0 and ordered[lo - 1].verdict == "decreasing":
        lo -= 1
    while hi < len(ordered) - 1 and ordered[hi + 1].verdict == "decreasing":
        hi += 1
    return ordered[lo].lr, ordered[hi].lr


def _check_lr_probe(report, session, sample, rates, steps, batch_size, rng):
    name = "learning-rate probe"
    n = len(session.x)
    size = min(batch_size, n)
    batches = [rng.choice(n, size=size, replace=False) for _ in range(steps)]
    session.reset()
    # the before/after losses the verdicts compare are measurements (random modules in evaluation mode): with
    # dropout active they differed by a fresh mask each, enough to call a rate of 1e-9 "decreasing" or "rising"
    initial, _, _ = session.measure(sample)
    symmetric_after = []                # per rate that did not explode: the layers still symmetric after it
    for lr in rates:
        result = _probe_one(session, lr, batches, sample, initial)
        report.probe.append(result)
        if result.verdict != "exploding":
            symmetric_after.append({layer for layer, _ in session.still_symmetric()})
    never_broken = set.intersection(*symmetric_after) if symmetric_after else set()
    summary = ", ".join(f"{r.lr:.0e} {r.verdict}" for r in report.probe)
    good = [r for r in report.probe if r.verdict == "decreasing"]
    expected = "some lr decreasing"
    if not good:
        hints = []
        backward = session.gradient_check
        frozen = _nothing_trainable(session.model)
        if frozen is not None:
            hints.append(f"{frozen}: no step changes the model, so no learning rate helps — set requires_grad=True "
                         f"on the parameters to train")
        elif never_broken:
            layers = [(layer, module) for layer, module in session.symmetric if layer in never_broken]
            hints.append(f"symmetry never broken: the units of {_labels(layers)} are identical (zero/constant init) "
                         f"after every rate that did not explode, so no learning rate helps — initialise with small "
                         f"random weights")
        elif backward is not None and not backward.passed:
            hints.append(f"the backward pass is wrong (the overfit check's gradient check: max relative error "
                         f"{backward.max_error:.2g}), so no learning rate helps — fix it first")
        elif all(r.verdict == "barely changing" for r in report.probe):
            hints.append("every rate is too small: try larger ones")
        elif all(r.verdict in ("exploding", "rising") for r in report.probe):
            hints.append("every rate is too large: try smaller ones")
        else:
            hints.append("the rates that do not barely change already explode: look between them, or check the "
                         "backward pass")
        return Check(name, False, summary, expected,
                     f"no rate decreased the loss by {BARELY_CHANGING:.0%} in {steps} steps; " + "; ".join(hints),
                     {"verdicts": {r.lr: r.verdict for r in report.probe}, "symmetric_layers": sorted(never_broken)})
    best = min(good, key=lambda r: r.final_loss)
    low, high = _contiguous_range(report.probe, best)
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
        num_classes (int): C for the expected initial loss, an int >= 2; with a classification loss it must equal
            the width of the model's output. Default None: that width (which must be 2 or more for a
            classification loss).
        tiny_size (int): examples in the overfitting subset. Default 20.
        overfit_steps (int): full-batch steps allowed for overfitting. Default 200.
        overfit_lr (float): learning rate of the overfitting run. Default 1e-3 (right for Adam; pass your own
            with an SGD factory, e.g. 1e-2 to 1e-1 for momentum SGD on normalised data).
        lr_probe (sequence of float): learning rates to probe; a single number probes that one rate. Default
            (1e-1, 1e-2, 1e-3, 1e-4, 1e-5).
        probe_steps (int): mini-batch steps per probed rate. Default 100.
        batch_size (int): mini-batch size of the probe. Default 64.
        seed (int): a non-negative int that seeds the subset and batch choices and, for the duration of the call,
            the global generator (dropout masks): the same seed on the same model and data gives the same report.
            Default 0.

    Returns:
        BabysitReport: ``print(report)`` shows the table; ``report.passed``, ``report["initial loss"]``,
        ``report.recommended_lr``. The overfit check's ``values`` hold the measurements behind its explanation:
        "weight_change" (net relative change of the weight matrices), "symmetric_layers" (names of the layers
        whose units were still identical after the run), "symmetry_broken_at" (initially symmetric layer -> the
        step after which its units differed) and, when the failure called for them, the gradient check's
        "gradient_check_error" and "weight_change_per_step".

    Raises:
        TypeError: model is not a Module, or the loss lacks forward/backward.
        ValueError: mismatched or empty data, NaN/inf in x (or in floating y), bad sizes, a ``num_classes`` that
            is not an int >= 2, an empty or non-numeric ``lr_probe``, an ``overfit_lr`` that is not a positive
            finite number, a bad ``seed``, a classification loss on a
            model with a single output, a ``num_classes`` other than the width of the scores a classification
            loss reads, or labels outside the model's outputs. An error the model or the loss
            raises on the data (e.g. a wrong feature count) comes back as its builtin class (ValueError,
            TypeError, IndexError) with "babysit:" and the context before its own message.

    Example:
        >>> from cynet.diagnostics import babysit
        >>> report = babysit(model, SoftmaxCrossEntropy(), x_train, y_train)  # doctest: +SKIP
        >>> report.passed, report.recommended_lr                               # doctest: +SKIP
        (True, (0.0001, 0.001))
    """
    start = time.perf_counter()
    for name, value in (("model", model), ("loss", loss)):
        if isinstance(value, type):     # nn.SoftmaxCrossEntropy without (): "'numpy.ndarray' has no '__dict__'"
            raise TypeError(f"babysit: {name} is the class {value.__name__}, not an instance of it: create one "
                            f"(e.g. {value.__name__}(...))")
    if not isinstance(model, Module):
        raise TypeError(f"babysit: model must be a cynet.nn.Module, got {type(model).__name__}")
    if not (callable(getattr(loss, "forward", None)) and callable(getattr(loss, "backward", None))):
        raise TypeError(f"babysit: loss must have forward(scores, y) and backward(), got {loss!r}")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"babysit: x and y must be non-empty arrays of the same length, got shapes {x.shape} "
                         f"and {y.shape}")
    check_finite("babysit", "x", x)
    check_finite("babysit", "y", y)     # regression targets; integer labels are checked against the outputs later
    for arg, value in (("tiny_size", tiny_size), ("overfit_steps", overfit_steps), ("probe_steps", probe_steps),
                       ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"babysit: {arg} must be a positive int, got {value!r}")
    rates = _learning_rates(lr_probe)
    if isinstance(overfit_lr, bool) or not isinstance(overfit_lr, numbers.Real) or not (
            math.isfinite(overfit_lr) and overfit_lr > 0):
        raise ValueError(f"babysit: overfit_lr must be a positive finite learning rate, got {overfit_lr!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
                                    or num_classes < 2):
        # int(2.7) would silently become 2 classes and int("3") accept a string
        raise ValueError(f"babysit: num_classes must be an int >= 2, got {num_classes!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"babysit: seed must be a non-negative int, got {seed!r}")
    factory = _default_factory if optimizer_factory is None else optimizer_factory

    params = model.parameters()
    dtype = params[0].data.dtype if params else None
    rng_state = get_rng_state()
    # modules may draw from generators of their own (nn.Dropout(0.5, generator=123)): put those back too, so that
    # babysit leaves the training run that follows exactly as it found it
    own_states = [(generator, generator.bit_generator.state) for generator in _module_generators(model, loss)]
    session = _Session(model, loss, factory, x, y, dtype)
    rng = np.random.default_rng(int(seed))
    n = len(x)
    sample = np.sort(rng.choice(n, size=min(EVAL_SAMPLE, n), replace=False))
    tiny = np.sort(rng.choice(n, size=min(int(tiny_size), n), replace=False))
    report = BabysitReport()
    with model.modes_restored():
        try:
            # the global generator (masks of the modules without one of their own) is seeded from ``seed`` for the
            # call, in place (a module may hold the global generator object itself), from a stream of its own so
            # that the subset and batch draws stay those of default_rng(seed)
            set_rng_state(np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(1)[0]).bit_generator.state)
            model.train()
            check, data_loss = _check_initial_loss(session, sample, loss, num_classes)
            report.checks.append(check)
            report.checks.append(_check_regularization(session, regularization, data_loss))
            report.checks.append(_check_overfit(session, tiny, int(overfit_steps), float(overfit_lr)))
            report.checks.append(_check_lr_probe(report, session, sample, rates, int(probe_steps), int(batch_size),
                                                 rng))
        finally:
            session.reset()
            set_rng_state(rng_state)
            for generator, state in own_states:
                generator.bit_generator.state = state
    report.seconds = time.perf_counter() - start
    return report

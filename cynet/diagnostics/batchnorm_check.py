"""Batch normalisation in training and in evaluation: do the running statistics still describe the data?

A batch-norm layer normalises with the statistics of each batch while it trains and with running averages of them
in evaluation. The running averages lag: they follow the weights through ``momentum`` (0.1 by default, so roughly
the last 10-20 batches), they stop in a frozen layer, and they were never right for data of another kind. When they
no longer match the data, the model that validated well in training mode predicts worse in eval mode, the
discrepancy the lecture warns about. :func:`check_batchnorm` measures it:

- for each batch-norm layer, its running mean and variance against the mean and variance of what the layer receives
  over the data in eval mode (every value counted, whatever the order of the samples): per channel c the mean shift
  in units of that standard deviation and the variance ratio, which is what the layer's output scale is off by,

  .. math:: d_c = \\frac{\\mu^{run}_c - \\mu_c}{\\sqrt{\\sigma^2_c + \\epsilon}}, \\qquad
            r_c = \\frac{\\sigma^{2,run}_c + \\epsilon}{\\sigma^2_c + \\epsilon},

  summarised over the channels as root mean squares, :math:`\\sqrt{\\overline{d_c^2}}` and
  :math:`\\exp\\sqrt{\\overline{(\\ln r_c)^2}}` (a typical factor, 1 when every variance is right), with the
  extremes alongside: a layer whose weights moved since its averages were taken is off in many channels, while
  estimation noise alone puts a few of a thousand channels far out;
- where a layer is stale, the same pass with the layers that act only in training switched on (Dropout,
  DropConnect, stochastic depth): how much they widen each batch norm's input, which the running variance took in
  training and eval mode never sees (named as a cause from a factor of 1.1);
- the model's outputs in eval mode against the same model normalising with batch statistics (training mode for the
  batch norms only: dropout stays off), and against eval mode with the recomputed statistics; with labels, the
  accuracy of each.

Nothing in the model changes: every pass runs on a copy.
"""
import copy
import time
from dataclasses import dataclass, field

import numpy as np

from cynet._random import get_rng_state, set_rng_state
from cynet._validation import describe
from cynet.diagnostics.babysit import Check, _Checks, _table_lines
from cynet.nn.normalization import _batch_slices, _BatchNorm, recompute_batchnorm_statistics

#: Largest root-mean-square mean shift over a layer's channels (in standard deviations of its input) that counts as
#: describing the data.
MEAN_SHIFT_TOLERANCE = 0.1
#: Largest typical variance factor, exp(rms |ln ratio|), that counts as describing the data.
VARIANCE_FACTOR_TOLERANCE = 1.25
#: Variance factor from which the layers acting only in training are named as a cause of stale statistics.
TRAINING_NOISE_FACTOR = 1.1
#: Share of the initial mean 0 / variance 1 still in the running averages above which a stale layer is named as
#: updated too few times: (1 - 0.1)^29 = 0.047 (momentum 0.1 needs about 30 batches).
INITIAL_SHARE_TOLERANCE = 0.05
#: Largest share of samples whose predicted class may differ between eval mode and batch statistics (no labels).
DISAGREEMENT_TOLERANCE = 0.05
#: Largest accuracy difference between eval mode and batch statistics (with labels), as a fraction.
ACCURACY_GAP_TOLERANCE = 0.01


@dataclass
class LayerStatistics:
    """One batch-norm layer's running statistics against the data's.

    Attributes:
        name (str): the layer's dotted name in the model.
        kind (str): its class name.
        channels (int): its number of features / channels.
        batches_tracked (int or None): ``num_batches_tracked`` (None without running statistics).
        mean_shift (float): root mean square over channels of (running mean - data mean) / sqrt(data var + eps)
            (NaN without running statistics).
        max_mean_shift (float): the largest |shift| of one channel.
        variance_factor (float): exp(rms over channels of |ln ratio|), ratio = (running var + eps) / (data var +
            eps): the factor a typical channel's variance is off by (1: right).
        variance_ratio (tuple): (min, max) of the ratio over channels.
        describes_data (bool or None): mean_shift and variance_factor within tolerance (None: the layer keeps no
            running statistics and always normalises with the batch's, or the data never reached it).
        initial_share (float or None): the weight the initial running mean 0 and variance 1 still have in the
            averages, ``(1 - momentum) ** batches_tracked`` (0 for the cumulative average of ``momentum=None`` once
            a batch was seen, and since :func:`~cynet.nn.recompute_batchnorm_statistics` wrote them; None without
            running statistics).
    """

    name: str
    kind: str
    channels: int
    batches_tracked: object
    mean_shift: float
    max_mean_shift: float
    variance_factor: float
    variance_ratio: tuple
    describes_data: object
    initial_share: object = None


@dataclass
class BatchNormReport(_Checks):
    """What :func:`check_batchnorm` measured.

    Attributes:
        layers (list[LayerStatistics]): one per batch-norm layer, in model order.
        checks (list[Check]): "running statistics" and "eval vs batch statistics".
        disagreement (dict): share of samples whose predicted class differs from eval mode's, for
            ``"batch statistics"`` and ``"recomputed statistics"`` (None when the output is not class scores).
        output_difference (dict): the same comparisons as max |difference| / std of eval mode's outputs.
        accuracy (dict or None): with labels, the accuracy in ``"eval"``, ``"batch statistics"`` and
            ``"recomputed statistics"`` mode.
        training_mode (bool): whether the model was in training mode when checked (calling it would then use batch
            statistics).
        seconds (float): wall time.
    """

    layers: list = field(default_factory=list)
    checks: list = field(default_factory=list)
    disagreement: dict = field(default_factory=dict)
    output_difference: dict = field(default_factory=dict)
    accuracy: object = None
    training_mode: bool = False
    seconds: float = 0.0

    def __str__(self):
        rows = [("layer", "kind", "channels", "batches", "mean shift rms (max)", "variance factor (range)", "")]
        for layer in self.layers:
            if layer.describes_data is None:
                what = "batch statistics only" if layer.batches_tracked is None else "not reached by the data"
                rows.append((layer.name, layer.kind, str(layer.channels), "-", "-", "-", what))
                continue
            low, high = layer.variance_ratio
            rows.append((layer.name, layer.kind, str(layer.channels), str(layer.batches_tracked),
                         f"{layer.mean_shift:.3f} ({layer.max_mean_shift:.3f})",
                         f"{layer.variance_factor:.3f} ({low:.3f} .. {high:.3f})",
                         "ok" if layer.describes_data else "STALE"))
        out = _table_lines(rows)
        if self.accuracy is not None:
            out.append("accuracy: " + ", ".join(f"{mode} {value:.2%}" for mode, value in self.accuracy.items()))
        for check in self.checks:
            out.append(f"[{check.status}] {check.name} ({check.measured}; healthy: {check.expected}): "
                       f"{check.explanation}")
        if self.training_mode:
            out.append("note: the model is in training mode, so calling it now normalises each batch with its own "
                       "statistics; model.eval() before evaluating (Trainer.evaluate and predict switch for you)")
        out.append(f"overall: {'PASSED' if self.passed else 'FAILED'} ({self.seconds:.1f} s)")
        return "\n".join(out)


def _outputs(model, x, batch_size):
    """The model's outputs over x, batch by batch (a last batch of one sample joined to the one before)."""
    return np.concatenate([np.asarray(model(x[s])) for s in _batch_slices(x.shape[0], batch_size)])


class _InputMoments:
    """Per-channel count, mean and variance (float64, shifted by the first batch's means) of every array a batch
    norm receives: channels on axis 1, statistics over the others."""

    def __init__(self):
        self.count, self.shift, self.s1, self.s2 = 0, None, 0.0, 0.0

    def add(self, x):
        x = np.asarray(x, dtype=np.float64)
        axes = (0,) + tuple(range(2, x.ndim))
        if self.shift is None:
            self.shift = x.mean(axis=axes)
        d = x - self.shift.reshape((1, -1) + (1,) * (x.ndim - 2))
        self.count += x.size // max(x.shape[1], 1)
        self.s1 = self.s1 + d.sum(axis=axes)
        self.s2 = self.s2 + (d * d).sum(axis=axes)

    def mean_var(self):
        m = self.s1 / self.count
        return self.shift + m, np.maximum(self.s2 / self.count - m * m, 0.0)


def _recording_inputs(layer, moments):
    """Shadow ``layer.forward`` on this instance (a copy's): every input goes to ``moments`` first."""
    forward = layer.forward

    def recorded(x):
        moments.add(x)
        return forward(x)
    object.__setattr__(layer, "forward", recorded)


def _layer_statistics(name, layer, moments):
    """LayerStatistics of ``layer``'s running statistics against the moments of its inputs over the data."""
    kind, channels = type(layer).__name__, int(layer.num_features)
    nan = float("nan")
    if not layer.track_running_stats:
        return LayerStatistics(name, kind, channels, None, nan, nan, nan, (nan, nan), None)
    tracked = int(layer.num_batches_tracked)
    initial = (1.0 if tracked == 0 else 0.0) if layer.momentum is None else (1.0 - layer.momentum) ** tracked
    recomputed = getattr(layer, "_recomputed_at", None)
    if recomputed is not None and tracked >= recomputed:
        initial = 0.0           # recompute_batchnorm_statistics wrote them whole: no initial 0 and 1 left to weigh
    if moments.count == 0:
        return LayerStatistics(name, kind, channels, tracked, nan, nan, nan, (nan, nan), None, initial)
    data_mean, data_var = moments.mean_var()
    data_var = data_var + layer.eps
    shift = (layer.running_mean.astype(np.float64) - data_mean) / np.sqrt(data_var)
    ratio = (layer.running_var.astype(np.float64) + layer.eps) / data_var
    rms_shift = float(np.sqrt(np.mean(shift ** 2)))
    factor = _variance_factor(ratio)
    fine = rms_shift <= MEAN_SHIFT_TOLERANCE and factor <= VARIANCE_FACTOR_TOLERANCE
    return LayerStatistics(name, kind, channels, tracked, rms_shift, float(np.abs(shift).max()), factor,
                           (float(ratio.min()), float(ratio.max())), bool(fine), initial)


def _compare(reference, other):
    """(share of samples whose argmax differs or None, max |difference| / std of the reference)."""
    scale = float(np.std(reference)) or 1.0
    difference = float(np.max(np.abs(other - reference))) / scale if reference.size else 0.0
    if reference.ndim != 2 or reference.shape[1] < 2:
        return None, difference
    return float(np.mean(reference.argmax(axis=1) != other.argmax(axis=1))), difference


def _run_copy(model, x, batch_size, record=(), training=lambda module: False):
    """``({name: _InputMoments}, outputs)``: the outputs over x of a copy of ``model`` in eval mode but for the modules
    for which ``training`` holds, which run in training mode, with the inputs of the batch norms named in ``record``
    counted. cynet's global generator is put back afterwards (a Dropout in training mode draws from it)."""
    copied = copy.deepcopy(model).eval()
    moments = {name: _InputMoments() for name in record}
    for name, layer in copied.named_modules():
        if name in moments:
            _recording_inputs(layer, moments[name])
        if training(layer):
            object.__setattr__(layer, "training", True)
    state = get_rng_state()
    try:
        outputs = _outputs(copied, x, batch_size)
    finally:
        set_rng_state(state)
    return moments, outputs


def _variance_factor(ratio):
    """exp(rms |ln ratio|): the factor a typical channel's variance is off by."""
    return float(np.exp(np.sqrt(np.mean(np.log(ratio) ** 2))))


def _running_statistics_check(layers, widened):
    tracked = [layer for layer in layers if layer.describes_data is not None]
    if not tracked:
        return Check("running statistics", None, "no running statistics", "-",
                     "no batch-norm layer that these data reach keeps running statistics "
                     "(track_running_stats=False: every mode normalises with the batch's own statistics)")
    stale = [layer for layer in tracked if not layer.describes_data]
    worst = max(tracked, key=lambda layer: layer.mean_shift)
    measured = (f"{len(stale)} of {len(tracked)} stale; largest rms shift {worst.mean_shift:.3f} std "
                f"(layer {worst.name})")
    expected = f"rms shift <= {MEAN_SHIFT_TOLERANCE} std, variance factor <= {VARIANCE_FACTOR_TOLERANCE}"
    if not stale:
        return Check("running statistics", True, measured, expected,
                     "every batch norm's running mean and variance match the statistics of its input over these "
                     "data: eval mode normalises as training did", {"stale": []})
    names = ", ".join(layer.name for layer in stale)
    fresh = [layer for layer in stale if layer.batches_tracked == 0]
    young = [layer for layer in stale if (layer.initial_share or 0) > INITIAL_SHARE_TOLERANCE]
    if fresh:
        why = ("they were never updated (num_batches_tracked is 0: the layer never ran in training mode, or was "
               "frozen from the start)")
    elif young:
        shares = "; ".join(f"layer {layer.name}: {layer.initial_share:.0%} after {layer.batches_tracked} batches"
                           for layer in young)
        why = (f"too few updates: the initial mean 0 and variance 1 still weigh (1 - momentum)^batches in the "
               f"running averages ({shares})")
    else:
        why = ("the weights before them moved since the averages were taken (the averages follow roughly the last "
               "1/momentum batches), or the training batches differ from these data (augmentation)")
        noisy = {name: factor for name, factor in widened.items() if factor > TRAINING_NOISE_FACTOR}
        if noisy:
            factors = ", ".join(f"{name} by {factor:.2f}x" for name, factor in noisy.items())
            why += (f"; and layers that act only in training (Dropout, DropConnect, stochastic depth) widen the "
                    f"variance of what {', '.join(noisy)} receive in training ({factors}, measured with them on), "
                    f"which the running averages took and eval mode does not see (the 'variance shift' of "
                    f"dropout before batch norm)")
    return Check("running statistics", False, measured, expected,
                 f"the running statistics of {names} do not describe their input over these data: {why}. In eval "
                 f"mode those layers normalise with the wrong mean and scale. Fix: "
                 f"cynet.nn.recompute_batchnorm_statistics(model, x_train) after training (the 'recomputed "
                 f"statistics' figures show what it gives), or more training steps at the final weights",
                 {"stale": [layer.name for layer in stale]})


def _modes_check(disagreement, difference, accuracy, batch_size):
    share, gap = disagreement["batch statistics"], difference["batch statistics"]
    if accuracy is not None:
        accuracy_gap = abs(accuracy["eval"] - accuracy["batch statistics"])
        measured = (f"accuracy {accuracy['eval']:.2%} (eval) vs {accuracy['batch statistics']:.2%} (batch "
                    f"statistics); {share:.1%} of predictions differ")
        passed = accuracy_gap <= ACCURACY_GAP_TOLERANCE
        expected = f"accuracies within {100 * ACCURACY_GAP_TOLERANCE:g} point"
    elif share is None:
        measured = f"outputs differ by up to {gap:.3g} std"
        passed = gap <= 0.5
        expected = "<= 0.5 std"
    else:
        measured = f"{share:.1%} of predictions differ"
        passed = share <= DISAGREEMENT_TOLERANCE
        expected = f"<= {DISAGREEMENT_TOLERANCE:.0%} of predictions"
    if passed and accuracy is not None and share is not None and share > DISAGREEMENT_TOLERANCE:
        # the accuracies agree (the criterion with labels) but the predictions do not: "predicts nearly the same"
        # would contradict the measured share (an untrained or near-chance model gets as many right either way)
        return Check("eval vs batch statistics", True, measured, expected,
                     f"the accuracy is the same within {100 * ACCURACY_GAP_TOLERANCE:g} point whether its batch norms "
                     f"use the running averages (eval) or the statistics of each batch of {batch_size}, but "
                     f"{share:.1%} of the predictions differ (more than {DISAGREEMENT_TOLERANCE:.0%}): the two modes "
                     f"get as many samples right, not the same ones", {"disagreement": share})
    if passed:
        return Check("eval vs batch statistics", True, measured, expected,
                     "the model predicts nearly the same whether its batch norms use the running averages (eval) "
                     f"or the statistics of each batch of {batch_size}", {"disagreement": share})
    return Check("eval vs batch statistics", False, measured, expected,
                 f"eval mode and batch statistics disagree: with stale running statistics (above) recompute them; "
                 f"with fresh ones, the batches are too small or unlike the data for their statistics to be "
                 f"stable (batches of {batch_size} here): train with larger batches, or use GroupNorm / "
                 f"LayerNorm, which do not depend on the batch", {"disagreement": share})


def check_batchnorm(model, x, y=None, *, batch_size=256):
    """Check that each batch norm's running statistics describe the data, and compare the model's predictions in
    eval mode with those it makes normalising by batch statistics (the train / eval discrepancy).

    See the module docstring for the measures. The model, its parameters, buffers and modes are left as they were.

    Args:
        model (Module): the model (its output: class scores (N, C), or any array).
        x (ndarray): data to check on, samples along the first axis (the training set, or a large part of it, for
            the statistics; at least 2 samples).
        y (ndarray, optional): integer labels of x: the accuracies, and the modes compared by accuracy (without
            labels, by the share of predicted classes that differ, which near-ties of a weak model inflate).
        batch_size (int): samples per forward pass, also the batch size of the batch-statistics mode. Default 256.

    Returns:
        BatchNormReport: printable (``print(report)``); ``report.passed``, ``report.layers``, ``report.checks``.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> from cynet.diagnostics import check_batchnorm
        >>> model = nn.Sequential(nn.Linear(8, 16, generator=0), nn.BatchNorm1d(16), nn.ReLU(),
        ...                       nn.Linear(16, 3, generator=1))
        >>> x = np.random.default_rng(0).normal(3.0, 2.0, (512, 8)).astype(np.float32)
        >>> report = check_batchnorm(model, x)     # running statistics never updated: mean 0, variance 1
        >>> report["running statistics"].passed, report.layers[0].batches_tracked
        (False, 0)
        >>> _ = nn.recompute_batchnorm_statistics(model, x)
        >>> check_batchnorm(model, x)["running statistics"].passed
        True
    """
    start = time.perf_counter()
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 2:
        raise ValueError(f"check_batchnorm: batch_size must be an int >= 2, got {batch_size!r}")
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"check_batchnorm: x must hold at least 2 samples along its first axis, got {describe(x)}")
    if y is not None:
        y = np.asarray(y)
        if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
            raise ValueError(f"check_batchnorm: y must be integer labels, one per sample of x ({x.shape[0]}), got "
                             f"{describe(y)}")
    norms = [(name, module) for name, module in model.named_modules() if isinstance(module, _BatchNorm)]
    report = BatchNormReport(training_mode=bool(model.training))
    if not norms:
        report.checks.append(Check("running statistics", None, "no batch-norm layers", "-",
                                   "the model has no BatchNorm1d / BatchNorm2d: nothing to check"))
        report.seconds = time.perf_counter() - start
        return report

    names = [name for name, _ in norms]
    moments, eval_out = _run_copy(model, x, batch_size, record=names)      # the model as it is, in eval mode
    if y is not None and not (eval_out.ndim == 2 and eval_out.shape[1] >= 2):
        raise ValueError(f"check_batchnorm: labels y need class scores from the model, (N, C) with C >= 2; it "
                         f"returns {describe(eval_out)}: call it without y")
    report.layers = [_layer_statistics(name, layer, moments[name]) for name, layer in norms]
    widened = {}
    if any(layer.describes_data is False for layer in report.layers):
        # the layers acting only in training switched on: how much they widen each batch norm's input
        noisy, _ = _run_copy(model, x, batch_size, record=names, training=lambda m: not isinstance(m, _BatchNorm))
        eval_var = {name: moments[name].mean_var()[1] for name in names if moments[name].count}
        widened = {name: _variance_factor(noisy[name].mean_var()[1] / var)
                   for name, var in eval_var.items() if np.all(var > 0)}
    recomputed = recompute_batchnorm_statistics(copy.deepcopy(model), x, batch_size).eval()
    outputs = {"batch statistics": _run_copy(model, x, batch_size, training=lambda m: isinstance(m, _BatchNorm))[1],
               "recomputed statistics": _outputs(recomputed, x, batch_size)}
    for mode, out in outputs.items():
        report.disagreement[mode], report.output_difference[mode] = _compare(eval_out, out)
    if y is not None:
        report.accuracy = {"eval": float(np.mean(eval_out.argmax(axis=1) == y))}
        report.accuracy.update({mode: float(np.mean(out.argmax(axis=1) == y)) for mode, out in outputs.items()})
    report.checks = [_running_statistics_check(report.layers, widened),
                     _modes_check(report.disagreement, report.output_difference, report.accuracy, batch_size)]
    report.seconds = time.perf_counter() - start
    return report

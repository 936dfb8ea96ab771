r"""Training monitors: what the lecture says to watch while a network trains, recorded by a trainer callback.

:class:`TrainingMonitor` is a :class:`cynet.train.Callback`; it does nothing unless you add it to a
:class:`~cynet.train.Trainer`'s ``callbacks``, and then only the *monitored* iterations pay. On a monitored
iteration it records, per layer (the activation modules, see :func:`cynet.diagnostics.init_lab.monitored_layers`):

- the mean, std and a histogram of the activations of the training batch;
- the fraction of saturated units of tanh (|y| > 0.99) and sigmoid (y < 0.01 or y > 0.99) layers;
- the fraction of dead ReLUs: units (features, or channels of images) never positive in the monitored batches;

and per parameter:

- the std of its gradient (``param.grad`` as the step found it: the data loss's plus a trainer's regularisation
  penalty, without an optimiser's own ``weight_decay``, which the step adds itself);
- the update-to-weight ratio :math:`\lVert\Delta W\rVert / \lVert W\rVert` of the step, which the lecture wants
  around 1e-3. Outside ``ratio_range`` (1e-4 ... 1e-2 by default) for a weight matrix, an
  :class:`UpdateRatioWarning` says which layer and by how much (biases are recorded but never warned about: they
  start at zero).

How it hooks in: before a monitored iteration (from ``on_epoch_begin`` or the previous ``on_batch_end``) it shadows
each activation module's ``forward`` with a wrapper that keeps a reference to the output, and at the iteration's
``on_batch_begin`` it copies the trainable weights (as the step finds them, after every callback of the iteration
before) and shadows the optimiser's ``step`` for that one call; when the step starts, it takes the gradients' stds
and closes the iteration's activations (the trainer's forward of the batch: the forward passes an optimiser that
re-evaluates makes in its step, :class:`~cynet.optim.LBFGS`'s line search at other weights, are not the batch's
activations, nor are the gradients they leave); after the step (its ``on_batch_end``) it reads the outputs and the
weights, then removes the wrappers. :math:`\Delta W` is so the change from the start of the iteration to the
monitor's ``on_batch_end``: the step's, plus that of any callback listed before the monitor that changes weights (a
:class:`~cynet.train.MaxNorm` before it counts its projection in, one after it does not). Other iterations, and the
validation passes, run untouched.

Overhead: only monitored iterations pay, for copying, differencing and summing every trainable weight and
gradient and for the activation histograms, so with the default schedule (the first batch of every epoch) the
cost per epoch is that of one batch's extra work, whatever the epoch's length; monitoring every iteration pays it
on each step (use ``every_iterations`` sparingly). The target is at most 10 % of the epoch time on the CIFAR-10
MLP; ``bench/test_bench_monitors.py`` measures it (one epoch of 3072-1024-BN-ReLU-512-BN-ReLU-10 over 10,000
samples in batches of 256, with and without the monitor, 1 and 2 threads) and ``bench/report.py`` prints the
ratio: run both on your machine for the figure.

Example:
    >>> from cynet.diagnostics.monitors import TrainingMonitor
    >>> monitor = TrainingMonitor(every=1)
    >>> trainer = Trainer(model, loss, optimizer, callbacks=[monitor])        # doctest: +SKIP
    >>> _ = trainer.fit(x, y, epochs=5)                                         # doctest: +SKIP
    >>> monitor.records[-1]["update_ratio"]                                     # doctest: +SKIP
    {'0.weight': 0.0012, '0.bias': 0.004, ...}
"""
import math
import warnings

import numpy as np

from cynet._validation import positive_int
from cynet.diagnostics.init_lab import monitored_layers, recording, summarize
from cynet.train import Callback

__all__ = ["TrainingMonitor", "UpdateRatioWarning"]


_NO_STEP = object()      # the optimiser had no instance attribute ``step`` of its own


class UpdateRatioWarning(UserWarning):
    """A weight's update-to-weight ratio ‖ΔW‖/‖W‖ left the healthy range (learning rate too high or too low)."""


class TrainingMonitor(Callback):
    """Record activation statistics, saturation, dead ReLUs, gradient stds and update ratios during training.

    Args:
        every (int): monitor the first ``batches`` batches of every ``every``-th epoch (epochs 1, 1 + every, ...).
            Default 1.
        every_iterations (int): instead, monitor ``batches`` consecutive iterations every ``every_iterations``
            iterations (iterations 1, 1 + k, ...). Default None (epoch schedule).
        bins (int): histogram bins per layer. Default 50.
        batches (int): consecutive batches pooled into one record (activations concatenated, dead units over all
            of them, gradient stds and update ratios averaged). Default 1.
        ratio_range (tuple): ``(low, high)`` healthy update-to-weight ratios. Default (1e-4, 1e-2).
        warn (bool): issue :class:`UpdateRatioWarning` outside ``ratio_range``. Default True.

    Attributes:
        records (list[dict]): one per monitored window: "epoch" (1-based, the epoch it ran in), "iteration" (the
            trainer's iteration count after it), "layers" (list of
            :class:`~cynet.diagnostics.init_lab.LayerStats`), "grad_std" and "update_ratio" (dicts keyed by
            parameter name).

    Example:
        >>> monitor = TrainingMonitor(every_iterations=50, ratio_range=(1e-4, 1e-2))
        >>> # Trainer(model, loss, optimizer, callbacks=[monitor]).fit(x, y, epochs=3)
        >>> monitor.records
        []
    """

    def __init__(self, every=1, every_iterations=None, bins=50, batches=1, ratio_range=(1e-4, 1e-2), warn=True):
        name = "TrainingMonitor"
        self.every = positive_int(name, "every", every)
        self.every_iterations = None if every_iterations is None else positive_int(name, "every_iterations",
                                                                                    every_iterations)
        self.bins = positive_int(name, "bins", bins)
        self.batches = positive_int(name, "batches", batches)
        try:
            low, high = (float(v) for v in ratio_range)
        except (TypeError, ValueError):
            low = high = math.nan           # not two numbers: the message below
        if not (0 <= low < high):
            raise ValueError(f"TrainingMonitor: ratio_range must be (low, high) with 0 <= low < high, got "
                             f"{ratio_range!r}")
        self.ratio_range = (low, high)
        self.warn = bool(warn)
        self.records = []
        self._layers = None
        self._params = None
        self._recorder = None
        self._sink = []
        self._before = None
        self._copy_due = False
        self._left = 0
        self._window = None
        self._batch_in_epoch = 0
        self._kept = 0              # activations of the window's earlier iterations: len(self._sink) at arming
        self._closed_at = None      # len(self._sink) when the monitored step started (None: not seen)
        self._step_grad_std = None  # the gradients' stds as the monitored step found them
        self._watched = None        # (optimizer, its own step attribute or _NO_STEP) while its step is shadowed

    # --- arming ------------------------------------------------------------------------------------------------------
    def _arm(self, trainer):
        """Prepare the coming iteration: install the forward wrappers (once per window); the weights are copied in
        on_batch_begin, after every other callback's changes (a MaxNorm after this monitor rescales them)."""
        self._before, self._copy_due = None, True
        if self._recorder is None:
            self._sink = []
            self._recorder = recording(self._layers, self._sink)
            self._recorder.__enter__()
            self._window = {"grad_std": {}, "update_ratio": {}, "count": 0}
        self._kept = len(self._sink)

    def _disarm(self):
        if self._recorder is not None:
            self._recorder.__exit__(None, None, None)
        self._recorder = None
        self._before = None
        self._copy_due = False
        self._left = 0
        self._unwatch_step()

    def _watch_step(self, optimizer):
        """Shadow ``optimizer.step`` for the coming call: when it starts, :meth:`_at_step` reads the gradients and
        closes the iteration's activations. An optimiser whose ``step`` cannot be shadowed is read after its step."""
        self._closed_at = self._step_grad_std = None
        own = optimizer.__dict__.get("step", _NO_STEP) if hasattr(optimizer, "__dict__") else _NO_STEP
        step = optimizer.step

        def watched_step(*args, **kwargs):
            self._at_step()
            return step(*args, **kwargs)

        try:
            object.__setattr__(optimizer, "step", watched_step)
        except (AttributeError, TypeError):
            return
        watched_step._monitor_step = True
        self._watched = (optimizer, own)

    def _at_step(self):
        if self._closed_at is None:
            self._closed_at = len(self._sink)
            self._step_grad_std = self._grad_stds()
        self._unwatch_step()

    def _grad_stds(self):
        """The standard deviation (float64) of each monitored parameter's gradient as it is now."""
        return [float(np.std(param.grad, dtype=np.float64)) for _, param in self._params]

    def _unwatch_step(self):
        if self._watched is None:
            return
        optimizer, own = self._watched
        self._watched = None
        if getattr(optimizer.__dict__.get("step"), "_monitor_step", False):
            if own is _NO_STEP:
                del optimizer.__dict__["step"]
            else:
                object.__setattr__(optimizer, "step", own)

    def _starts_window(self, iteration):
        """Iteration-schedule test for the 1-based ``iteration`` about to run."""
        return (iteration - 1) % self.every_iterations == 0

    # --- hooks -------------------------------------------------------------------------------------------------------
    def on_train_begin(self, trainer):
        self._layers = monitored_layers(trainer.model)
        self._params = [(name, p) for name, p in trainer.model.named_parameters() if p.requires_grad]
        self._disarm()

    def on_epoch_begin(self, trainer):
        self._batch_in_epoch = 0
        self._disarm()
        if self.every_iterations is None:
            due = trainer.epoch % self.every == 0
        else:
            due = self._starts_window(trainer.iteration + 1)
        if due:
            self._left = self.batches
            self._arm(trainer)

    def on_batch_begin(self, trainer):
        if self._copy_due:
            del self._sink[self._kept:]     # forwards since arming (other callbacks') are not the batch's
            self._before = [p.data.copy() for _, p in self._params]
            self._copy_due = False
            self._watch_step(trainer.optimizer)

    def on_batch_end(self, trainer):
        self._batch_in_epoch += 1
        last_of_epoch = self._batch_in_epoch >= (trainer.batches_per_epoch or 0)
        if self._before is not None:
            self._measure(trainer)
            self._left -= 1
            if self._left <= 0 or last_of_epoch:     # windows end with the epoch: validation is never recorded
                self._finish(trainer)
                self._left = 0
        if last_of_epoch:
            return
        if self.every_iterations is not None and self._left == 0 and self._starts_window(trainer.iteration + 1):
            self._left = self.batches
        if self._left > 0:
            self._arm(trainer)

    def on_train_end(self, trainer):
        self._disarm()

    # --- measuring ---------------------------------------------------------------------------------------------------
    def _measure(self, trainer):
        window = self._window
        window["count"] += 1
        self._unwatch_step()
        if self._closed_at is not None:
            del self._sink[self._closed_at:]    # forwards after the step began (L-BFGS's re-evaluations)
        grad_stds = self._step_grad_std
        if grad_stds is None:                   # (a step that could not be watched: the gradients as it left them)
            grad_stds = self._grad_stds()
        self._closed_at = self._step_grad_std = None
        for (name, param), before, grad_std in zip(self._params, self._before, grad_stds):
            window["grad_std"][name] = window["grad_std"].get(name, 0.0) + grad_std
            norm = float(np.linalg.norm(before.ravel()))
            delta = float(np.linalg.norm((param.data - before).ravel()))
            ratio = delta / norm if norm > 0 else math.nan
            window["update_ratio"][name] = window["update_ratio"].get(name, 0.0) + ratio
        self._before = None

    def _finish(self, trainer):
        window = self._window
        count = max(window["count"], 1)
        outputs = {}
        for name, module, y in self._sink:
            outputs.setdefault(name, (module, []))[1].append(np.asarray(y))
        layers = []
        for name, (module, arrays) in outputs.items():
            y = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
            layers.append(summarize(name, module, y, self.bins))
        record = {
            "epoch": trainer.epoch + 1,
            "iteration": trainer.iteration,
            "layers": layers,
            "grad_std": {k: v / count for k, v in window["grad_std"].items()},
            "update_ratio": {k: v / count for k, v in window["update_ratio"].items()},
        }
        self.records.append(record)
        self._sink.clear()
        if self._recorder is not None:
            self._recorder.__exit__(None, None, None)
        self._recorder = None
        self._window = None
        self._check_ratios(record)

    def _check_ratios(self, record):
        if not self.warn:
            return
        low, high = self.ratio_range
        shapes = {name: p.data.ndim for name, p in self._params}
        bad = []
        for name, ratio in record["update_ratio"].items():
            if shapes.get(name, 0) < 2 or not math.isfinite(ratio):
                continue
            if ratio > high:
                bad.append(f"{name} {ratio:.2e} > {high:g} (learning rate too high?)")
            elif ratio < low:
                bad.append(f"{name} {ratio:.2e} < {low:g} (learning rate too low?)")
        if bad:
            warnings.warn(f"TrainingMonitor: update-to-weight ratio ‖ΔW‖/‖W‖ out of [{low:g}, {high:g}] at "
                          f"iteration {record['iteration']}: " + "; ".join(bad), UpdateRatioWarning, stacklevel=2)

    # --- reading -----------------------------------------------------------------------------------------------------
    def history(self, key, name):
        """``(iterations, values)`` of one recorded quantity across the records.

        Args:
            key (str): "update_ratio", "grad_std" (``name`` a parameter) or "mean", "std", "saturated", "dead"
                (``name`` a layer).
            name (str): the parameter or layer name.

        Returns:
            tuple: two numpy arrays of the same length (empty before the first record).

        Raises:
            ValueError: an unknown ``key``, or a ``name`` no record holds for it (a misspelt name, a layer's for a
                parameter's quantity or the other way round).
        """
        param_keys, layer_keys = ("update_ratio", "grad_std"), ("mean", "std", "saturated", "dead", "unit_std")
        if key not in param_keys + layer_keys:
            raise ValueError(f"TrainingMonitor.history: key must be one of {param_keys + layer_keys}, got {key!r}")

        def names(record):
            return list(record[key]) if key in param_keys else [layer.name for layer in record["layers"]]

        if self.records and not any(name in names(record) for record in self.records):
            kind = "parameter" if key in param_keys else "monitored layer"
            raise ValueError(f"TrainingMonitor.history: no {kind} named {name!r} for {key!r}; the "
                             f"{kind}s are {names(self.records[0])}")
        iterations, values = [], []
        for record in self.records:
            if key in param_keys:
                if name in record[key]:
                    iterations.append(record["iteration"])
                    values.append(record[key][name])
            else:
                for layer in record["layers"]:
                    if layer.name == name:
                        iterations.append(record["iteration"])
                        values.append(getattr(layer, key))
        return np.asarray(iterations), np.asarray(values, dtype=np.float64)

    def __repr__(self):
        schedule = (f"every_iterations={self.every_iterations}" if self.every_iterations is not None
                    else f"every={self.every}")
        return f"TrainingMonitor({schedule}, batches={self.batches}, records={len(self.records)})"

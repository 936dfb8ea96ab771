"""The mini-batch training loop of the lecture, with callbacks, a divergence guard and exact checkpoints.

One iteration of :meth:`Trainer.fit` is the loop every CS231n solver runs::

    model.zero_grad()
    scores = model(x_batch)                                # forward
    data_loss = loss.forward(scores, y_batch)              # mean data loss
    reg_loss = regularization(model)                       # reported separately
    model.backward(loss.backward(), input_grad=False)      # nobody needs d(loss)/d(input)
    regularization.backward(model)                         # adds its gradient into the weights' grads
    optimizer.step()

and once per epoch, after the validation pass, ``scheduler.step()`` (``scheduler.step(val_loss)`` for
:class:`~cynet.optim.lr_scheduler.ReduceLROnPlateau`).

Each epoch visits the training set in the order of ``trainer.generator.permutation(n)``, a
:class:`numpy.random.Generator` owned by the trainer and seeded with ``seed``; batches are gathered one at a time
by fancy indexing (``x[indices]``), so the data set is never copied as a whole (a :class:`numpy.memmap` works).

The divergence guard is always on: a NaN/inf loss, or a data loss above ``Trainer.divergence_factor`` (3) times the
first iteration's, stops training at once with a :class:`DivergenceWarning` naming the iteration and the value,
sets :attr:`Trainer.stop_reason`, and puts back a whole training state from before things went wrong: the weights,
the module buffers (BatchNorm running statistics) and the optimiser's state (momentum buffers, Adam's moments, step
counts), as they were just before the step of a recent iteration whose loss was good. To that end the guard copies
the learning parameters, the buffers and the optimiser state into arrays allocated once per :meth:`Trainer.fit` (a
copy on the kernels' threads, no allocation per step) before the step of every ``Trainer.guard_every``-th iteration
(1, 1 + k, 1 + 2k, ...; default k = 10). The copy moves about as many bytes as an SGD-momentum step, so taking it at
every iteration costs 5-10 % of the epoch of a CIFAR-10 MLP, every tenth iteration 1.5-2 % (measured on the
benchmark's 3072-1024-512-10 MLP, two threads: the trainer's epoch 669-674 ms against 658-659 ms without the guard;
2-4 % with NumPy's one-thread copies). ``trainer.guard_every = 1`` puts back the state from just before the bad step
itself; a larger value (50, say) makes the copies cheaper still, at the price of an older state to go back to.
What the guard does not put back: the epoch and iteration counters, the history and the learning-rate schedule
(its epoch count, and the rate it set at the epoch ends since the copy, which the optimiser's restored settings
undo): they still describe the run that diverged. Start again from the restored weights with a new optimiser and
schedule (a lower rate) rather than calling ``fit`` again on the same trainer.

Example:
    >>> import numpy as np, cynet
    >>> from cynet import nn, optim
    >>> from cynet.nn.loss import SoftmaxCrossEntropy
    >>> from cynet.train import Trainer, EarlyStopping
    >>> _ = cynet.manual_seed(0)
    >>> x = np.random.default_rng(0).normal(size=(200, 5)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int64)
    >>> model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
    ...                   callbacks=[EarlyStopping(patience=3)], progress=False)
    >>> history = trainer.fit(x, y, epochs=5, batch_size=32, validation=(x, y))
    >>> len(history["train_loss"]) <= 5
    True
"""
import contextlib
import difflib
import inspect
import math
import numbers
import os
import sys
import time
import warnings

import numpy as np

from cynet import checkpoint as _checkpoint
from cynet._threading import copyto
from cynet._validation import check_finite, describe, is_count, refuse_masked, saved_scalar
from cynet.data.loader import RANDOM_AUGMENTATIONS, Mixup
from cynet.nn.loss import LabelError, MulticlassSVM, SoftmaxCrossEntropy
from cynet.nn.module import Module, _evaluation_mode
from cynet.nn.normalization import _batch_slices, _BatchNorm
from cynet.nn.utils import clip_grad_norm_, max_norm_
from cynet.optim.lbfgs import loss_closure
from cynet.optim.optimizers import learning_rates

__all__ = ["Trainer", "Callback", "ProgressBar", "EarlyStopping", "ModelCheckpoint", "MaxNorm", "DivergenceWarning"]

ITERATION_KEYS = ("loss", "reg_loss", "lr")
EPOCH_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_time")
_DIVERGED = "diverged at iteration"                     # how stop_reason starts after the divergence guard
_INTERRUPTED = "interrupted (KeyboardInterrupt)"        # ... and after a KeyboardInterrupt


class DivergenceWarning(RuntimeWarning):
    """Issued when the divergence guard stops training (NaN/inf loss, or a loss that exploded)."""


# --- small checks ----------------------------------------------------------------------------------------------------
def _int_at_least(op, name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{op}: {name} must be an int >= {low}, got {value!r}")
    return int(value)


def _positive_finite(op, name, value, allowed="a positive finite number"):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ValueError(f"{op}: {name} must be {allowed}, got {value!r}")
    return float(value)


def _check_data(op, x, y):
    refuse_masked(op, "x", x)          # np.asarray would train on the values under the mask without a word
    refuse_masked(op, "y", y)
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{op}: x and y must be arrays with one row per example, got shapes {x.shape} and "
                         f"{y.shape}")
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        raise TypeError(f"{op}: x and y must be numeric arrays, got dtypes {x.dtype} and {y.dtype}")
    if len(x) != len(y):
        single = (f"; x of shape {x.shape} looks like a single example: pass x[None] (shape {(1,) + x.shape})"
                  if x.ndim == 1 and len(y) == 1 else "")
        raise ValueError(f"{op}: x and y must have the same length (one label per example), got {len(x)} and "
                         f"{len(y)}{single}")
    if len(x) == 0:
        raise ValueError(f"{op}: x and y are empty")
    before = "evaluating" if op == "Trainer.evaluate" else "training"
    check_finite(op, "x", x, before)    # a NaN in the data would end as a 'divergence' blamed on the learning rate
    check_finite(op, "y", y, before)
    return x, y


def _label_error(op, y, c, name="y", offset=0):
    """A ValueError naming the first row of the whole ``y`` whose label lies outside [0, ``c``) (the model's ``c``
    outputs; a loss's LabelError carries it, num_classes) and how many there are. ``y`` is rows ``offset, offset +
    1, ...`` of the array the user knows as ``name`` (validation_split's held-out labels are the last rows of fit's
    ``y``)."""
    bad = np.flatnonzero((y < 0) | (y >= c))        # (the batch's bad label is among them)
    return ValueError(f"{op}: label {int(y[bad[0]])} in row {int(bad[0]) + offset} of {name} is out of range "
                      f"[0, {c}) for the model's {c} outputs ({bad.size} such label{'s' if bad.size > 1 else ''} in "
                      f"{name})")


def _check_x(op, x, before="predicting"):
    """Inputs to predict from (also :class:`cynet.ensemble.Ensemble`'s): a numeric array of at least one example, every
    value finite; ValueError / TypeError naming ``op`` otherwise (a masked array too: its mask would be ignored)."""
    refuse_masked(op, "x", x)
    x = np.asarray(x)
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"{op}: x must hold at least one example, got shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{op}: x must be a numeric array, got dtype {x.dtype}")
    if x.ndim == 1:
        # one example of shape (D,) was cut into "batches" of its values: the model then named a shape such as
        # (1024,) the user never passed
        raise ValueError(f"{op}: x must be a batch with one example per row, shape (N, ...), got {describe(x)}; "
                         f"for a single example pass x[None] (shape {(1,) + x.shape})")
    check_finite(op, "x", x, before)     # a NaN row's scores are NaN: arg-max class 0, probabilities NaN
    return x


def _correct(scores, y):
    """Number of rows whose arg-max score is the label, or None when accuracy does not apply (regression)."""
    if scores.ndim != 2 or y.ndim != 1 or y.dtype.kind not in "iu":
        return None
    return int(np.count_nonzero(np.argmax(scores, axis=1) == y))


def _resolve_mode(owner, monitor, mode):
    if mode == "auto":
        return "max" if monitor.endswith("acc") else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"{owner}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    return mode


def _check_monitor(owner, monitor):
    if monitor not in EPOCH_KEYS or monitor == "epoch_time":
        raise ValueError(f"{owner}: monitor must be one of 'val_acc', 'val_loss', 'train_acc', 'train_loss', "
                         f"got {monitor!r}")
    return monitor


def _wants_metric(scheduler):
    """True for schedulers whose ``step`` needs a metric (ReduceLROnPlateau)."""
    try:
        from cynet.optim.lr_scheduler import ReduceLROnPlateau
        if isinstance(scheduler, ReduceLROnPlateau):
            return True
    except ImportError:
        pass
    try:
        parameters = inspect.signature(scheduler.step).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               for p in parameters)


# --- callbacks -------------------------------------------------------------------------------------------------------
class Callback:
    """Base class of trainer callbacks: override the hooks you need; each receives the :class:`Trainer`.

    Hooks run in this order: ``on_train_begin`` once per :meth:`Trainer.fit`, then per epoch ``on_epoch_begin``,
    ``on_batch_begin`` before every iteration (the weights as the coming step will find them, after every
    callback's ``on_batch_end`` of the iteration before) and ``on_batch_end`` after every optimiser step,
    ``on_epoch_end`` (after validation, the scheduler step and the epoch counter's increment, so
    ``trainer.history`` holds the epoch's numbers), and ``on_train_end`` once, whatever ends the run (last epoch, a
    stop, the divergence guard, an exception or KeyboardInterrupt), for every callback whose ``on_train_begin``
    ran. An exception that ends the run leaves :meth:`Trainer.fit` unchanged, even when an ``on_train_end`` raises
    too (that one is named in a note of it); otherwise the first ``on_train_end`` error is raised, once every
    callback has ended.

    A callback stops training with ``trainer.stop(reason)``. State that must survive a checkpoint goes through
    :meth:`state_dict` / :meth:`load_state_dict` (flat: str -> ndarray or JSON scalar). State that follows the
    optimiser steps (an average of the weights) goes back with the weights when the divergence guard undoes steps
    through :meth:`guard_snapshot` / :meth:`guard_restore`.

    Example:
        >>> from cynet.train import Callback
        >>> class PrintLR(Callback):
        ...     def on_epoch_end(self, trainer):
        ...         print(trainer.epoch, trainer.optimizer.lr)
    """

    def on_train_begin(self, trainer):
        pass

    def on_epoch_begin(self, trainer):
        pass

    def on_batch_begin(self, trainer):
        pass

    def on_batch_end(self, trainer):
        pass

    def on_epoch_end(self, trainer):
        pass

    def on_train_end(self, trainer):
        pass

    def state_dict(self):
        """Flat state saved in trainer checkpoints (default: nothing)."""
        return {}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`'s output."""

    def guard_snapshot(self, previous):
        """A copy of the state that the optimiser steps change, taken with the divergence guard's copy of the
        weights (default: None, nothing). ``previous`` is this method's last result (None the first time): reuse
        its arrays."""
        return None

    def guard_restore(self, snapshot):
        """Put back :meth:`guard_snapshot`'s copy: the divergence guard has undone the steps taken since."""


_HOOKS = ("on_train_begin", "on_epoch_begin", "on_batch_begin", "on_batch_end", "on_epoch_end", "on_train_end")


def _check_hook_names(callback):
    """UserWarning for a method named almost like a hook (on_epoch_ends, on_batch_ended): the trainer never calls it,
    and the callback would silently do nothing. A helper named otherwise (on_improvement) is left alone."""
    for name in dir(type(callback)):
        if name.startswith("on_") and name not in _HOOKS and callable(getattr(type(callback), name)):
            close = difflib.get_close_matches(name, _HOOKS, n=1, cutoff=0.85)
            if close:
                warnings.warn(f"Trainer: the callback {type(callback).__name__} defines {name}(), which is not a "
                              f"hook the trainer calls ({', '.join(_HOOKS)}): did you mean {close[0]!r}? As "
                              f"written it never runs", UserWarning, stacklevel=3)


class _BestTracker(Callback):
    """Shared bookkeeping of callbacks that watch one per-epoch number for improvements."""

    def __init__(self, owner, monitor, mode, min_delta=0.0):
        self.monitor = _check_monitor(owner, monitor)
        self.mode = _resolve_mode(owner, monitor, mode)
        self.min_delta = float(min_delta)
        if not math.isfinite(self.min_delta) or self.min_delta < 0:
            raise ValueError(f"{owner}: min_delta must be a finite number >= 0, got {min_delta!r}")
        self._owner = owner
        self.best = None
        self.best_epoch = None

    def on_train_begin(self, trainer):
        if self.monitor.startswith("val_") and not trainer.has_validation:
            raise ValueError(f"{self._owner}: monitor={self.monitor!r} needs validation data: pass "
                             f"fit(..., validation=(x_val, y_val)) or monitor a 'train_' value")

    def _record_if_improved(self, trainer):
        """True, with ``best`` and ``best_epoch`` updated, when this epoch's ``monitor`` value is a new best."""
        value = trainer.history[self.monitor][-1]
        if not self._improved(value):
            return False
        self.best = float(value)
        self.best_epoch = trainer.epoch
        return True

    def _improved(self, value):
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "monitor": self.monitor, "mode": self.mode}

    def load_state_dict(self, state):
        # a best value of another number or direction (val_loss's 1.09 read as a val_acc to beat) would never be beaten
        for key in ("monitor", "mode"):
            saved = state.get(key)
            if saved is not None and str(saved) != getattr(self, key):
                raise ValueError(f"{self._owner}: the saved state watched {key}={str(saved)!r}, this one "
                                 f"{key}={getattr(self, key)!r}")
        self.best, self.best_epoch = self._checked_best(state)

    def _checked_best(self, state):
        """``best`` (None or a finite number) and ``best_epoch`` (None or an int >= 0) of ``state`` (0-d arrays as
        read back from an ``.npz`` taken), or ValueError naming the callback: a string best failed at the next
        comparison, deep in a run."""
        best, epoch = (saved_scalar(state.get(key)) for key in ("best", "best_epoch"))
        if best is not None and (isinstance(best, bool) or not isinstance(best, numbers.Real)
                                 or not math.isfinite(best)):
            raise ValueError(f"{self._owner}: the saved best must be a finite number or None, got {best!r}")
        if epoch is not None and not is_count(epoch):
            raise ValueError(f"{self._owner}: the saved best_epoch must be an int >= 0 or None, got {epoch!r}")
        return (None if best is None else float(best)), (None if epoch is None else int(epoch))


class EarlyStopping(_BestTracker):
    """Stop when a monitored number stops improving, and put the best weights back.

    After each epoch, ``monitor`` counts as improved when it beats the best so far by more than ``min_delta``
    (higher is better for accuracies, lower for losses). After ``patience`` epochs in a row without improvement,
    training stops. With ``restore_best_weights`` the model gets the weights of the best epoch back at the end
    of every :meth:`Trainer.fit`, whatever ended it (early stop, last epoch, the divergence guard, an exception,
    KeyboardInterrupt).

    The best value, the count of epochs without improvement and the best weights carry over between ``fit`` calls
    and are saved in trainer checkpoints; :meth:`reset` starts afresh. When the best weights are put back, the
    weights training had reached are kept too (and saved in checkpoints): the next ``fit`` (or one resumed from a
    checkpoint) continues from them, so that training in several calls gives the weights of one uninterrupted run.
    It does not if the model's weights were changed in between (they are then the ones training continues from; a
    dtype change, ``model.float()`` or ``model.double()``, is no change: the reached weights come back in the new
    dtype); to go on from the best weights on purpose, set ``training_state = None`` before the next ``fit``.

    Args:
        monitor (str): "val_acc" (default), "val_loss", "train_acc" or "train_loss".
        patience (int): epochs without improvement tolerated before stopping. Default 5.
        min_delta (float): the margin an improvement must exceed: a change of exactly ``min_delta`` (or less)
            counts as no improvement (as in Keras). Default 0.
        restore_best_weights (bool): restore the best epoch's weights at the end. Default True.
        mode (str): "auto" (default: "max" for accuracies, "min" for losses), "min" or "max".

    Example:
        >>> from cynet.train import EarlyStopping
        >>> stopper = EarlyStopping(monitor="val_loss", patience=3)
    """

    def __init__(self, monitor="val_acc", patience=5, min_delta=0, restore_best_weights=True, mode="auto"):
        super().__init__("EarlyStopping", monitor, mode, min_delta)
        self.patience = _int_at_least("EarlyStopping", "patience", patience, 0)
        self.restore_best_weights = bool(restore_best_weights)
        self.wait = 0
        self.best_state = None
        self.training_state = None     # the weights training reached, while the best ones are put back

    def reset(self):
        """Forget the best value, the waiting count and the best weights."""
        self.best = None
        self.best_epoch = None
        self.wait = 0
        self.best_state = None
        self.training_state = None

    def on_train_begin(self, trainer):
        super().on_train_begin(trainer)
        training_state, self.training_state = self.training_state, None
        if training_state is not None and self.best_state is not None and _same_arrays(
                trainer.model.state_dict(), self.best_state):
            trainer.model.load_state_dict(training_state)

    def on_epoch_end(self, trainer):
        if self._record_if_improved(trainer):
            self.wait = 0
            if self.restore_best_weights:
                self.best_state = trainer.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            if self.best is None:           # NaN or inf every epoch (e.g. val_acc of a regression loss)
                trainer.stop(f"early stopping: {self.monitor} has had no finite value in {self.wait} epochs (NaN "
                             f"or inf each time: is it the number to watch for this loss?)")
            else:
                trainer.stop(f"early stopping: {self.monitor} did not improve on {self.best:.6g} (epoch "
                             f"{self.best_epoch}) for {self.wait} epochs")

    def on_train_end(self, trainer):
        if self.restore_best_weights and self.best_state is not None:
            self.training_state = trainer.model.state_dict()
            trainer.model.load_state_dict(self.best_state)

    def state_dict(self):
        state = super().state_dict()
        state["wait"] = self.wait
        for name in ("best_state", "training_state"):
            saved = getattr(self, name)
            state[f"has_{name}"] = saved is not None
            if saved is not None:
                state.update({f"{name}.{key}": value for key, value in saved.items()})
        return state

    def load_state_dict(self, state):
        wait = saved_scalar(state.get("wait", 0))
        if not is_count(wait):     # checked before anything is assigned: a refused state changes nothing
            raise ValueError(f"EarlyStopping: the saved wait must be an int >= 0, got {wait!r}")
        super().load_state_dict(state)     # (checks monitor, mode and best before it assigns them)
        self.wait = int(wait)
        for name in ("best_state", "training_state"):
            prefix = name + "."
            setattr(self, name, {key[len(prefix):]: np.array(value) for key, value in state.items()
                                 if key.startswith(prefix)} if state.get(f"has_{name}") else None)

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, min_delta={self.min_delta}, "
                f"restore_best_weights={self.restore_best_weights})")


def _same_arrays(first, second):
    """Whether two state dicts hold the same keys and arrays (bit for bit), ``second``'s arrays taken in ``first``'s
    dtypes: a model cast since (``model.float()`` between two fits) still holds the weights it held (a float64 best
    state, rounded to float32, compared unequal to itself, and the next fit went on from the best weights)."""
    return first.keys() == second.keys() and all(
        np.array_equal(first[key], np.asarray(second[key]).astype(np.asarray(first[key]).dtype, copy=False))
        for key in first)


class ModelCheckpoint(_BestTracker):
    """Save the model (:func:`cynet.checkpoint.save_model`) to ``path`` each time ``monitor`` reaches a new best.

    The file is written atomically, so ``path`` always holds a complete copy of the best model so far. Load it
    with :func:`cynet.checkpoint.load_model`.

    Args:
        path (str or os.PathLike): destination file (written exactly there, e.g. "best.npz").
        monitor (str): "val_acc" (default), "val_loss", "train_acc" or "train_loss".
        mode (str): "auto" (default), "min" or "max", as for :class:`EarlyStopping`.

    Example:
        >>> from cynet.train import ModelCheckpoint
        >>> saver = ModelCheckpoint("best.npz", monitor="val_acc")
    """

    def __init__(self, path, monitor="val_acc", mode="auto"):
        super().__init__("ModelCheckpoint", monitor, mode)
        try:
            self.path = os.fspath(path)
        except TypeError:
            raise TypeError(f"ModelCheckpoint: path must be a str or os.PathLike, got {path!r}") from None

    def on_train_begin(self, trainer):
        super().on_train_begin(trainer)
        # checked before the first epoch: the first save failed on a hidden temporary file's name, an epoch in
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"ModelCheckpoint: the directory {directory!r} of {self.path!r} does not exist: "
                                    f"create it before training")

    def on_epoch_end(self, trainer):
        if self._record_if_improved(trainer):
            _checkpoint.save_model(self.path, trainer.model)

    def on_train_end(self, trainer):
        # a number that was NaN or inf at every epoch (val_acc of a regression loss, train_acc under mixup) never
        # improves: say that nothing was saved instead of leaving the path silently missing
        if self.best is None and trainer.epoch > 0 and trainer.history[self.monitor]:
            warnings.warn(f"ModelCheckpoint: nothing saved to {self.path!r}: {self.monitor} had no finite "
                          f"value in {len(trainer.history[self.monitor])} epochs (NaN or inf each time: is it the "
                          f"number to watch for this loss?)", RuntimeWarning, stacklevel=2)

    def __repr__(self):
        return f"ModelCheckpoint({self.path!r}, monitor={self.monitor!r})"


class MaxNorm(Callback):
    r"""The max-norm constraint at the start of :meth:`Trainer.fit` and after every optimiser step: each unit's
    incoming weight vector is scaled back to :math:`\lVert w \rVert_2 \le c` (:func:`cynet.nn.utils.max_norm_`),
    the CS231n notes' alternative to (or companion of) weight decay, with c typically 3 or 4.

    Args:
        max_norm (float): c, > 0. Default 3.0.

    Attributes:
        scaled (int): units scaled back during the last :meth:`Trainer.fit` (how often the constraint bites).

    Example:
        >>> from cynet.train import MaxNorm
        >>> MaxNorm(4.0).max_norm
        4.0
    """

    def __init__(self, max_norm=3.0):
        self.max_norm = _positive_finite("MaxNorm", "max_norm", max_norm)
        self.scaled = 0

    def on_train_begin(self, trainer):
        # projected gradient descent starts from a point of the constraint set
        self.scaled = max_norm_(trainer.model, self.max_norm)     # the model: its normalisation gains stay

    def on_batch_end(self, trainer):
        self.scaled += max_norm_(trainer.model, self.max_norm)


class ProgressBar(Callback):
    """A tqdm progress bar per epoch showing the running loss and accuracy, then the validation numbers.

    :class:`Trainer` adds one when ``progress=True``. Without tqdm installed it prints one line per epoch.

    Args:
        file: stream to write to (default: tqdm's, stderr).

    Example:
        >>> import io
        >>> from cynet.train import ProgressBar
        >>> bar = ProgressBar(file=io.StringIO())
    """

    def __init__(self, file=None):
        self.file = file
        self._bar = None

    def _tqdm(self):
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm

    def on_epoch_begin(self, trainer):
        tqdm = self._tqdm()
        if tqdm is not None:
            self._bar = tqdm(total=trainer.batches_per_epoch, desc=f"epoch {trainer.epoch + 1}/{trainer.epochs}",
                             unit="batch", file=self.file, leave=True, dynamic_ncols=True)

    def on_batch_end(self, trainer):
        if self._bar is not None:
            self._bar.set_postfix(self._postfix(trainer.running_loss, trainer.running_acc), refresh=False)
            self._bar.update(1)

    @staticmethod
    def _postfix(loss, acc, val_loss=math.nan, val_acc=math.nan):
        postfix = {"loss": f"{loss:.4f}"}
        if math.isfinite(acc):
            postfix["acc"] = f"{acc:.4f}"
        if math.isfinite(val_loss):
            postfix["val_loss"] = f"{val_loss:.4f}"
        if math.isfinite(val_acc):
            postfix["val_acc"] = f"{val_acc:.4f}"
        return postfix

    def on_epoch_end(self, trainer):
        h = trainer.history
        postfix = self._postfix(h["train_loss"][-1], h["train_acc"][-1], h["val_loss"][-1], h["val_acc"][-1])
        if self._bar is not None:
            self._bar.set_postfix(postfix)
            self._bar.close()
            self._bar = None
        else:
            text = ", ".join(f"{k} {v}" for k, v in postfix.items())
            print(f"epoch {trainer.epoch}/{trainer.epochs}: {text} ({h['epoch_time'][-1]:.1f} s)",
                  file=self.file or sys.stderr)

    def on_train_end(self, trainer):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if trainer.stop_reason:
            print(f"stopped: {trainer.stop_reason}", file=self.file or sys.stderr)


# --- the divergence guard's copy -------------------------------------------------------------------------------------
class _LastGoodState:
    """A copy of everything an optimiser step changes, taken just before a step, for the divergence guard.

    It holds the data of every parameter (frozen ones too: a callback may unfreeze one between two copies, and a
    step after that moves it), every module buffer (BatchNorm
    running statistics, which the iteration's forward pass has just updated) and the optimiser's state through its
    ``snapshot``/``restore`` (``state_dict``/``load_state_dict`` for an optimiser without them). The arrays are
    allocated once, when :meth:`Trainer.fit` starts (the optimiser's when its state first appears), and overwritten
    in place afterwards. A first copy is taken at that start, so a divergence at the run's first iteration still
    undoes what its forward pass did to the buffers.
    """

    def __init__(self, model, optimizer, callbacks, start_iteration):
        self.model = model
        self.optimizer = optimizer
        self.callbacks = list(callbacks)
        self.param_copies = [np.empty_like(p.data) for p in model.parameters()]
        self.buffer_copies = [np.empty_like(b) for b in model.buffers()]
        self.optimizer_copy = None
        self.callback_copies = [None] * len(self.callbacks)
        self.start_iteration = start_iteration   # iterations done when fit started
        self.iteration = None        # the iteration before whose step the copy was taken; None: when fit started
        self.take(None)

    def _has_snapshots(self):
        return all(callable(getattr(self.optimizer, name, None)) for name in ("snapshot", "restore"))

    def take(self, iteration):
        """Copy the state now, just before the step of ``iteration`` (None: at the start of fit)."""
        for saved, param in zip(self.param_copies, self.model.parameters()):
            copyto(saved, param.data)       # frozen ones too: a callback may unfreeze them before the next copy
        for saved, buffer in zip(self.buffer_copies, self.model.buffers()):
            copyto(saved, buffer)
        if self._has_snapshots():
            self.optimizer_copy = self.optimizer.snapshot(self.optimizer_copy)
        else:
            self.optimizer_copy = self.optimizer.state_dict()
        for index, callback in enumerate(self.callbacks):
            self.callback_copies[index] = callback.guard_snapshot(self.callback_copies[index])
        self.iteration = iteration

    def restore(self):
        for saved, param in zip(self.param_copies, self.model.parameters()):
            copyto(param.data, saved)
        for saved, buffer in zip(self.buffer_copies, self.model.buffers()):
            copyto(buffer, saved)
        if self._has_snapshots():
            self.optimizer.restore(self.optimizer_copy)
        else:
            self.optimizer.load_state_dict(self.optimizer_copy)
        for callback, saved in zip(self.callbacks, self.callback_copies):
            callback.guard_restore(saved)


# --- the trainer -----------------------------------------------------------------------------------------------------
class Trainer:
    """Mini-batch training of a cynet model: the lecture's loop, history, callbacks and exact checkpoints.

    Args:
        model (cynet.nn.Module): the network; its output is the scores the loss reads.
        loss: a data loss with ``forward(scores, y) -> float`` (the batch mean) and ``backward() -> dscores``
            (e.g. :class:`cynet.nn.loss.SoftmaxCrossEntropy`).
        optimizer: a :mod:`cynet.optim` optimiser over the model's parameters (``step``, ``lr``, ``state_dict``).
            One that takes a closure (:class:`~cynet.optim.LBFGS`) gets one re-evaluating the current batch; its
            first call returns the loss the trainer has just computed (with the penalty), gradients already in place;
            a non-finite loss its line search meets (a FloatingPointError) stops training as the divergence guard does.
        scheduler: optional learning-rate schedule from :mod:`cynet.optim.lr_scheduler`, stepped once per epoch
            (a ReduceLROnPlateau gets the validation loss, or the training loss when there is no validation, so
            its mode must be "min"). Default None.
        regularization: optional penalty such as :class:`cynet.nn.loss.L2Penalty`: ``regularization(model)``
            gives its value (history "reg_loss") and ``regularization.backward(model)`` adds its gradient.
            Default None.
        callbacks (iterable of Callback): hooks run during :meth:`fit`. Default ().
        batch_transform (callable): ``batch_transform(xb, rng) -> float array`` applied to every batch, for
            augmentation or preprocessing (``xb`` may be uint8). During training ``rng`` is the trainer's
            generator; for :meth:`evaluate`, :meth:`predict` and validation it is called as
            ``batch_transform(xb, None)``, which must mean "no randomness" (for example a centre crop instead of a
            random one, no flip): an augmentation itself (:class:`cynet.data.RandomCrop`, :class:`cynet.data.Compose`,
            ...) is refused, since it stays random there; pass ``make_batch_transform(transform, augment)``.
            Default None. Batches whose dtype differs from the model's parameters are then
            cast to it (so uint8 images without a transform become float32 of the same values; a float64 model fed
            uint8 images through a transform wants ``make_batch_transform(transform, augment, dtype=np.float64)``,
            as the transforms give float32 for integer input).
        seed (int): seeds :attr:`generator`, the source of the shuffling order (and of the transform's
            randomness). Default 0.
        progress (bool): show a :class:`ProgressBar` (tqdm). Default True.
        clip_grad_norm (float): when set, every step first rescales the gradients (the regularization's included)
            so that their global 2-norm is at most this (:func:`cynet.nn.utils.clip_grad_norm_`). Default None.
        mixup (callable): ``mixup(xb, yb, generator) -> (xb, targets)`` applied to every training batch after
            ``batch_transform``, e.g. :class:`cynet.data.Mixup`; it draws from the trainer's generator, so runs and
            resumed runs stay reproducible. The loss must take its targets (SoftmaxCrossEntropy takes (N, C)
            distributions; a MulticlassSVM is refused), and "train_acc" is NaN (the targets are mixtures). Default None.

    Attributes:
        history (dict[str, list[float]]): per iteration "loss" (data loss), "reg_loss", "lr" (the first parameter
            group's); per completed epoch "train_loss" (mean data loss over the epoch's examples), "train_acc"
            (accuracy on the batches *as they were trained on*: with dropout active and the weights changing during
            the epoch, so usually a little below an :meth:`evaluate` of the final weights; NaN when the labels are
            not class indices), "val_loss", "val_acc" (NaN without validation data) and "epoch_time" (seconds,
            validation included).
        epoch (int): epochs completed.
        iteration (int): training iterations run (one per entry of ``history["loss"]``; a diverged iteration is
            counted and recorded but takes no step).
        stop_reason (str or None): why the last :meth:`fit` stopped early (None when it ran all its epochs).
        generator (numpy.random.Generator): the trainer's random source.
        divergence_factor (float): class attribute, 3.0: the guard stops when a data loss exceeds this many times
            the first iteration's (when that was positive). Right for classification, where the first loss is
            about log(C) on every batch; for a regression loss on small, noisy batches a single batch can exceed
            3x by chance: set a larger factor on the instance (``trainer.divergence_factor = 20``; a number >= 1,
            ``math.inf`` to stop only on a NaN/inf loss).
        guard_every (int): class attribute, 10: the guard copies the training state before the step of every
            ``guard_every``-th iteration, and a divergence puts back the latest copy (at most ``guard_every``
            iterations old, every one of them with a good loss). 1 restores the state from just before the bad
            step, at the cost of a copy of the parameters and optimiser state per iteration.
        warn_divergence (bool): class attribute, True: the guard issues a :class:`DivergenceWarning` when it stops
            training. ``trainer.warn_divergence = False`` keeps it quiet for this trainer only (the stop and
            :attr:`stop_reason` are the same), where a process-wide warnings filter would also silence the trainers
            of other threads, and outlive its ``catch_warnings`` block when blocks of two threads overlap.

    Example:
        >>> import numpy as np
        >>> from cynet import nn, optim
        >>> from cynet.nn.loss import SoftmaxCrossEntropy
        >>> from cynet.train import Trainer
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False)
        >>> x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32); y = np.arange(30) % 3
        >>> _ = trainer.fit(x, y, epochs=2, batch_size=10)
        >>> trainer.epoch, len(trainer.history["loss"])
        (2, 6)
    """

    divergence_factor = 3.0
    guard_every = 10
    warn_divergence = True

    def __init__(self, model, loss, optimizer, *, scheduler=None, regularization=None, callbacks=(),
                 batch_transform=None, seed=0, progress=True, clip_grad_norm=None, mixup=None):
        for name, value in (("model", model), ("loss", loss), ("optimizer", optimizer)):
            if isinstance(value, type):     # nn.SoftmaxCrossEntropy without (): it failed deep inside fit
                raise TypeError(f"Trainer: {name} is the class {value.__name__}, not an instance of it: create one "
                                f"(e.g. {value.__name__}(...))")
        if not isinstance(model, Module):
            raise TypeError(f"Trainer: model must be a cynet.nn.Module, got {type(model).__name__}")
        for name in ("forward", "backward"):
            if not callable(getattr(loss, name, None)):
                raise TypeError(f"Trainer: loss must have forward(scores, y) and backward(), got {loss!r}")
        for name in ("step", "zero_grad", "state_dict", "load_state_dict"):
            if not callable(getattr(optimizer, name, None)):
                raise TypeError(f"Trainer: optimizer must be a cynet.optim optimiser (step, zero_grad, state_dict, "
                                f"load_state_dict), got {optimizer!r}")
        owned = {id(param) for param in model.parameters()}
        stepped = getattr(optimizer, "params", None)
        if owned and stepped and not any(id(param) in owned for param in stepped):
            # (built over another model's parameters, e.g. before the model was created again): fit ran and the
            # model never changed
            raise ValueError(f"Trainer: the optimizer {type(optimizer).__name__} updates none of the model's "
                             f"parameters (it was built over another model's); build it over model.parameters()")
        if scheduler is not None and not callable(getattr(scheduler, "step", None)):
            raise TypeError(f"Trainer: scheduler must have a step() method, got {scheduler!r}")
        scheduled = getattr(scheduler, "optimizer", None)
        if scheduled is not None and scheduled is not optimizer:
            # (fit stepped the other optimiser's rate every epoch; the trained one kept its first rate, silently)
            raise ValueError(f"Trainer: the scheduler {type(scheduler).__name__} was built over another optimiser "
                             f"({type(scheduled).__name__} at {id(scheduled):#x}) than the trainer's "
                             f"{type(optimizer).__name__} at {id(optimizer):#x}, whose learning rate it would never "
                             f"change; build it over the trainer's optimiser: {type(scheduler).__name__}(optimizer, "
                             f"...)")
        if getattr(scheduler, "mode", None) == "max" and _wants_metric(scheduler):
            # fed a loss, a 'max' plateau would cut the rate each time the loss kept falling
            raise ValueError(f"Trainer: the scheduler {type(scheduler).__name__} has mode='max', but the trainer "
                             f"steps it with the validation loss (the training loss without validation), which "
                             f"improves by going down: use mode='min'")
        if regularization is not None and not (callable(regularization)
                                               and callable(getattr(regularization, "backward", None))):
            raise TypeError(f"Trainer: regularization must be callable as penalty(model) and have "
                            f"backward(model), got {regularization!r}")
        if batch_transform is not None and not callable(batch_transform):
            raise TypeError(f"Trainer: batch_transform must be callable as f(xb, rng), got {batch_transform!r}")
        if isinstance(batch_transform, Mixup):     # (failed at the first batch: "Generator has no len()")
            raise TypeError(f"Trainer: {batch_transform!r} mixes inputs and labels: pass it as mixup=, not as "
                            f"batch_transform")
        if isinstance(batch_transform, RANDOM_AUGMENTATIONS):
            # called with rng=None an augmentation draws from the global generator: evaluate, predict and the
            # validation were augmented too, at random, without a word
            raise TypeError(f"Trainer: batch_transform={batch_transform!r} is an augmentation, which stays random when "
                            f"evaluation calls it with rng=None; pass make_batch_transform(transform, augment) (from "
                            f"cynet.data), which augments training batches only")
        if mixup is not None and not callable(mixup):
            raise TypeError(f"Trainer: mixup must be callable as f(xb, yb, rng) -> (xb, targets), got {mixup!r}")
        if mixup is not None and isinstance(loss, MulticlassSVM):
            # (was refused at the first batch by the loss: "labels y must be an integer array ..., got float32 array
            # of shape (N, C)", of labels the user never gave)
            raise TypeError(f"Trainer: mixup gives (N, C) target distributions, which {type(loss).__name__} cannot "
                            f"take (it needs class indices); use SoftmaxCrossEntropy with mixup, or no mixup")
        if isinstance(callbacks, Callback) or not hasattr(callbacks, "__iter__"):
            # callbacks=EarlyStopping(): was "'EarlyStopping' object is not iterable"
            raise TypeError(f"Trainer: callbacks must be a list of Callback instances, got {callbacks!r}; pass "
                            f"[callback]")
        callbacks = list(callbacks)
        for callback in callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(f"Trainer: callbacks must be cynet.train.Callback instances, got {callback!r}")
            _check_hook_names(callback)
        seed = _int_at_least("Trainer", "seed", seed, 0)
        if clip_grad_norm is not None:
            clip_grad_norm = _positive_finite("Trainer", "clip_grad_norm", clip_grad_norm,
                                              "a positive finite number or None")
        if progress and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(ProgressBar())

        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.regularization = regularization
        self.batch_transform = batch_transform
        self.mixup = mixup
        self.callbacks = callbacks
        self.seed = seed
        self.clip_grad_norm = clip_grad_norm
        self.generator = np.random.default_rng(seed)
        self.history = {key: [] for key in ITERATION_KEYS + EPOCH_KEYS}
        self.epoch = 0
        self.iteration = 0
        self._iteration_at_epoch_end = 0   # self.iteration when the last epoch completed (save_checkpoint's check)
        self._epoch_end_incomplete = False  # a callback's on_epoch_end raised: those after it did not see the epoch
        self._saves_after_epoch_end = None  # paths save_checkpoint was given during on_epoch_end, saved after it
        self.stop_reason = None
        self.stop_training = False
        # during fit, for callbacks
        self.epochs = None
        self.batches_per_epoch = None
        self.has_validation = False
        self.running_loss = math.nan
        self.running_acc = math.nan
        self._first_loss = None
        self._fit_settings = None        # the last fit's batch_size, example count and shuffle (saved in checkpoints)
        # after load_checkpoint, those the checkpoint saved (an empty dict for older files) until the next fit trains:
        # it compares its own with them
        self._resumed_settings = None
        self._last_good = None      # the divergence guard's copy, during fit
        self._unchecked_labels = None   # fit's labels, checked against the model's outputs at its first step

    # --- helpers -----------------------------------------------------------------------------------------------------
    def _call(self, hook):
        for callback in self.callbacks:
            getattr(callback, hook)(self)

    def _epoch_end(self):
        """Every callback's on_epoch_end; a checkpoint one of them saved is written again once the callbacks after
        it have run, since it must hold what they do at this epoch's end (EarlyStopping counting this epoch), or a
        fit resumed from it goes another way than the uninterrupted run. One saved by the last callback is not."""
        self._saves_after_epoch_end = saved = []
        stale = {}          # paths a later callback ran after (a dict: each once, in order)
        completed = False
        try:
            for callback in self.callbacks:
                stale.update(dict.fromkeys(saved))
                saved.clear()
                callback.on_epoch_end(self)
            completed = True
        finally:            # also when a later callback raises: what was asked for is written again as it now stands
            self._saves_after_epoch_end = None
            self._epoch_end_incomplete = not completed
            for path in stale:
                if not completed:
                    self._warn_incomplete_epoch_end(path)
                _checkpoint.save_trainer(path, self)

    def _warn_incomplete_epoch_end(self, path):
        warnings.warn(f"Trainer: the checkpoint {os.fspath(path)!r} was saved at the end of epoch {self.epoch} while a "
                      f"callback's on_epoch_end raised: the callbacks after it did not see that epoch (an "
                      f"EarlyStopping did not count it), so a fit resumed from this checkpoint can go another way "
                      f"than an uninterrupted run", UserWarning, stacklevel=3)

    def _batches(self, n, batch_size):
        """The slices of an epoch's batches; a last batch of one example joins the one before when the model has a
        batch norm (which cannot train on one) and batches hold more than one."""
        join = batch_size > 1 and any(isinstance(m, _BatchNorm) for m in self.model.modules())
        return _batch_slices(n, batch_size, join_single=join)

    def _model_dtype(self):
        for param in self.model.parameters():
            return param.data.dtype
        return None

    def _prepare(self, xb, rng, dtype):
        if self.batch_transform is not None:
            xb = np.asarray(self.batch_transform(xb, rng))
        if dtype is not None and xb.dtype != dtype:
            xb = xb.astype(dtype)
        return xb

    @contextlib.contextmanager
    def _eval_mode(self):
        """Evaluation mode for the block; every module's own previous mode comes back afterwards, even on error."""
        with _evaluation_mode(self.model):     # (shared by concurrent predictions from several Python threads)
            yield

    def _resumed_a_stopped_run(self):
        """Whether this trainer was loaded from the checkpoint of a run that had ended at an epoch's end because a
        callback asked it to (EarlyStopping), not because of the divergence guard or a KeyboardInterrupt, and has not
        trained since (a fit of the live trainer after its own early stop is a deliberate continuation)."""
        reason = self.stop_reason
        return (self._resumed_settings is not None and reason is not None
                and self.iteration == self._iteration_at_epoch_end and not reason.startswith((_DIVERGED, _INTERRUPTED)))

    def _check_resumed_settings(self, settings):
        """Keep this fit's settings; after a load_checkpoint, warn when they differ from those of the saved run (its
        batches, and so its weights, are then not the uninterrupted run's)."""
        saved, self._resumed_settings = self._resumed_settings, None
        self._fit_settings = settings
        if saved:
            changed = [f"{key} {saved[key]} -> {value}" for key, value in settings.items()
                       if key in saved and saved[key] != value]
            if changed:
                warnings.warn(f"Trainer.fit: resumed from a checkpoint with other data or settings than the run that "
                              f"saved it ({', '.join(changed)}): training goes on, but not as the uninterrupted run "
                              f"would have (pass the same x, y, batch_size and shuffle for an exact resume)",
                              UserWarning, stacklevel=3)

    def stop(self, reason):
        """Ask :meth:`fit` to stop after the current batch (for callbacks); ``reason`` goes to :attr:`stop_reason`."""
        self.stop_training = True
        self.stop_reason = str(reason)

    # --- training ----------------------------------------------------------------------------------------------------
    def fit(self, x, y, epochs, batch_size=256, validation=None, shuffle=True, validation_split=None):
        """Train until :attr:`epoch` reaches ``epochs`` (a total, not a count of further epochs).

        After loading a checkpoint saved at epoch 2, ``fit(x, y, epochs=4)`` runs epochs 3 and 4. A run ends
        early when a callback stops it (:class:`EarlyStopping`) or the divergence guard fires; an epoch cut short
        leaves no per-epoch entry in the history and does not count in :attr:`epoch`. A later ``fit`` of the same
        trainer continues training (with the callbacks' state carried over); after :meth:`load_checkpoint` of a run a
        callback stopped at an epoch's end (:class:`EarlyStopping`; the checkpoint keeps :attr:`stop_reason`), the
        first ``fit`` trains on past the stop, which the uninterrupted run did not, and warns so (UserWarning).

        ``fit`` calls ``model.train()`` first, as a PyTorch loop does, and leaves the model in training mode: a
        BatchNorm left in eval mode by hand is switched back (to keep one's statistics fixed, ``freeze()`` it, or give
        the module a ``train`` that keeps it in eval: each module's own ``train`` is obeyed); evaluation inside
        ``fit`` (validation) runs in eval mode and hands training mode back.

        Args:
            x (array_like): training inputs, one example per row (any numeric dtype; see ``batch_transform``).
            y (array_like): labels (class indices for classification losses), ``len(y) == len(x)``.
            epochs (int): the epoch count to reach, >= 0.
            batch_size (int): examples per step (the last batch of an epoch may be smaller; in a model with a batch
                norm, which cannot train on one example, a last batch of one joins the one before). Default 256.
            validation (tuple): optional ``(x_val, y_val)``, evaluated after every epoch. Default None.
            shuffle (bool): visit the examples in a fresh random order each epoch (default); False keeps the
                data order.
            validation_split (float): instead of ``validation``, hold out this fraction of ``(x, y)``, in (0, 1):
                the *last* ``round(fraction * len(x))`` examples, as Keras does (views, no copy; the same examples
                in every epoch and after a resume). Shuffle the data first if its order is not random. Default None.

        Returns:
            dict[str, list[float]]: :attr:`history`.

        Raises:
            ValueError: mismatched lengths, empty data, ``batch_size < 1``, ``epochs < 0``, a
                :attr:`guard_every` that is not an int >= 1 or a :attr:`divergence_factor` that is not a number >= 1.

        Example:
            >>> history = trainer.fit(x_train, y_train, epochs=10, batch_size=128,
            ...                       validation=(x_val, y_val))  # doctest: +SKIP
            >>> history["val_acc"][-1], trainer.stop_reason  # doctest: +SKIP
            (0.52, None)
        """
        x, y = _check_data("Trainer.fit", x, y)
        if not isinstance(shuffle, (bool, np.bool_)):       # shuffle="no" is truthy: it shuffled
            raise TypeError(f"Trainer.fit: shuffle must be True or False, got {shuffle!r}")
        if validation_split is not None:
            if validation is not None:
                raise ValueError("Trainer.fit: pass validation or validation_split, not both")
            if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
                    or not 0 < validation_split < 1:
                raise ValueError(f"Trainer.fit: validation_split must be a fraction in (0, 1), "
                                 f"got {validation_split!r}")
            held = int(round(validation_split * len(x)))
            if not 0 < held < len(x):
                raise ValueError(f"Trainer.fit: validation_split={validation_split} of {len(x)} examples holds out "
                                 f"{held}; it must leave at least one example on each side")
            validation = (x[len(x) - held:], y[len(y) - held:])
            x, y = x[:len(x) - held], y[:len(y) - held]
            # a bad held-out label is named by its row in fit's y
            self._validation_labels = ("Trainer.fit (validation_split)", "y", len(x))
        else:
            self._validation_labels = ("Trainer.fit (validation)", "y_val", 0)
        epochs = _int_at_least("Trainer.fit", "epochs", epochs, 0)
        batch_size = _int_at_least("Trainer.fit", "batch_size", batch_size, 1)
        _int_at_least("Trainer.fit", "guard_every", self.guard_every, 1)
        factor = self.divergence_factor      # (set on the instance: NaN turned the loss rule off, None failed mid-run)
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not factor >= 1:
            raise ValueError(f"Trainer.fit: divergence_factor must be a number >= 1 (math.inf: no limit on the data "
                             f"loss), got {factor!r}")
        if validation is not None:
            if not isinstance(validation, (tuple, list)) or len(validation) != 2:
                raise ValueError("Trainer.fit: validation must be a pair (x_val, y_val)")
            validation = _check_data("Trainer.fit (validation)", *validation)
        if epochs <= self.epoch:
            if self.epoch > 0:
                warnings.warn(f"Trainer.fit: epochs={epochs} is the total to reach and {self.epoch} epochs are "
                              f"already done: nothing to train (pass epochs={self.epoch + epochs} for {epochs} "
                              f"more)", stacklevel=2)
            return self.history
        if self._resumed_a_stopped_run():
            # (a checkpoint keeps stop_reason): the uninterrupted run ended here, this one trains on past the stop
            warnings.warn(f"Trainer.fit: the previous run was stopped at the end of epoch {self.epoch} "
                          f"({self.stop_reason}); this fit trains on past that stop to epoch {epochs}, which the "
                          f"uninterrupted run did not do (it ended there, with these weights)", UserWarning,
                          stacklevel=2)

        self.epochs = epochs
        # every label checked against the model's outputs at the first step, before any weight changes (a label out
        # of range was found at its own batch, after the steps of the batches before it)
        self._unchecked_labels = [(y, "Trainer.fit", "y", 0)]
        if validation is not None:
            self._unchecked_labels.append((validation[1], *self._validation_labels))
        self._check_resumed_settings({"batch_size": batch_size, "examples": len(x), "shuffle": bool(shuffle)})
        self.batches_per_epoch = len(self._batches(len(x), batch_size))
        self.has_validation = validation is not None
        self.stop_training = False
        self.stop_reason = None
        self.model.train()
        begun = []              # the callbacks whose on_train_begin ran: they get on_train_end whatever happens next
        ended_by = None         # the exception that ended the run, if one did
        try:
            for callback in self.callbacks:
                callback.on_train_begin(self)
                begun.append(callback)
            # after the callbacks' changes to the weights
            self._last_good = _LastGoodState(self.model, self.optimizer, self.callbacks, self.iteration)
            while self.epoch < epochs and not self.stop_training:
                self._run_epoch(x, y, batch_size, shuffle, validation)
        except KeyboardInterrupt as error:
            self.stop_reason = f"{_INTERRUPTED} during epoch {self.epoch + 1}"
            ended_by = error
            raise
        except BaseException as error:
            ended_by = error
            raise
        finally:
            self._last_good = None
            failed = None
            for callback in begun:              # each one, even after another's raised (EarlyStopping's restore)
                try:
                    callback.on_train_end(self)
                except BaseException as error:      # (the first is raised once every callback has ended)
                    failed = failed or (callback, error)
            if failed is not None:
                if ended_by is None:
                    raise failed[1]
                # the run's own exception goes on unchanged (an on_train_end that failed while the run was ending on
                # an error replaced it: a KeyboardInterrupt or a ValueError came out as the callback's error)
                note = (f"Trainer.fit: while this exception ended the run, {type(failed[0]).__name__}.on_train_end "
                        f"raised {failed[1]!r}")
                if hasattr(ended_by, "add_note"):       # (Python >= 3.11)
                    ended_by.add_note(note)
                else:
                    warnings.warn(note, RuntimeWarning, stacklevel=2)
        return self.history

    def _run_epoch(self, x, y, batch_size, shuffle, validation):
        start = time.perf_counter()
        self._call("on_epoch_begin")
        n = len(x)
        order = self.generator.permutation(n) if shuffle else None
        dtype = self._model_dtype()
        loss_sum, seen, correct, counted = 0.0, 0, 0, 0
        self.running_loss = self.running_acc = math.nan
        for batch in self._batches(n, batch_size):
            if self.stop_training:              # asked in on_epoch_begin: no step of this epoch
                return
            self._call("on_batch_begin")
            if self.stop_training:              # asked in on_batch_begin: not this batch's step
                return
            lo, hi = batch.start, batch.stop
            if order is None:
                xb, yb = x[lo:hi], y[lo:hi]
            else:
                index = order[lo:hi]
                xb, yb = x[index], y[index]
            xb = self._prepare(xb, self.generator, dtype)
            if self.mixup is not None:
                xb, yb = self.mixup(xb, yb, self.generator)
            try:
                result = self._step(xb, yb)
            except LabelError as error:     # named by its row in y, not its place in a shuffled batch
                raise _label_error("Trainer.fit", y, error.num_classes) from error
            if result is None:          # diverged
                return
            data_loss, batch_correct = result
            # weighted by the rows trained on: a mixup callable may return another number of rows than it was given
            # (the originals with the mixes, say), and counting the batch's slice made an accuracy above 1
            rows = len(xb)
            loss_sum += data_loss * rows
            seen += rows
            if batch_correct is not None:
                correct += batch_correct
                counted += rows
            self.running_loss = loss_sum / seen
            self.running_acc = correct / counted if counted else math.nan
            self._call("on_batch_end")
            if self.stop_training and hi < n:    # (a stop at the epoch's last batch: the epoch is whole, it ends)
                return

        history = self.history
        history["train_loss"].append(loss_sum / seen)
        history["train_acc"].append(correct / counted if counted else math.nan)
        if validation is not None:
            val_loss, val_acc = self._evaluate(*validation, labels=self._validation_labels)
        else:
            val_loss, val_acc = math.nan, math.nan
        history["val_loss"].append(val_loss)
        history["val_acc"].append(val_acc)
        if self.scheduler is not None:
            if _wants_metric(self.scheduler):
                self.scheduler.step(val_loss if validation is not None else history["train_loss"][-1])
            else:
                self.scheduler.step()
        self.epoch += 1
        self._iteration_at_epoch_end = self.iteration
        history["epoch_time"].append(time.perf_counter() - start)
        self._epoch_end()

    def _step(self, xb, yb):
        """One iteration; ``(data_loss, correct)`` or None when the divergence guard stopped training."""
        model = self.model
        model.zero_grad()
        scores = model.forward(xb)
        if self._unchecked_labels:
            self._check_every_label(scores)
        data_loss = float(self.loss.forward(scores, yb))
        reg_loss = float(self.regularization(model)) if self.regularization is not None else 0.0
        self.iteration += 1
        self.history["loss"].append(data_loss)
        self.history["reg_loss"].append(reg_loss)
        self.history["lr"].append(learning_rates(self.optimizer)[0])

        problem = None
        if not math.isfinite(data_loss):
            problem = f"loss {data_loss} is not finite"
        elif not math.isfinite(reg_loss):
            problem = f"regularization loss {reg_loss} is not finite"
        elif self._first_loss is None:
            self._first_loss = data_loss
        elif self._first_loss > 0 and data_loss > self.divergence_factor * self._first_loss:
            problem = (f"loss {data_loss:.6g} is more than {self.divergence_factor:g}x the first iteration's loss "
                       f"{self._first_loss:.6g}")
        if problem is not None:
            self._diverged(problem)
            return None

        model.backward(self.loss.backward(), input_grad=False)
        if self.regularization is not None:
            self.regularization.backward(model)
        if self.clip_grad_norm is not None:
            clip_grad_norm_(model.parameters(), self.clip_grad_norm)
        if (self.iteration - 1) % self.guard_every == 0:
            self._last_good.take(self.iteration)
        if getattr(self.optimizer, "needs_closure", False):
            try:
                self.optimizer.step(self._closure(xb, yb, data_loss + reg_loss))
            except FloatingPointError as error:
                # L-BFGS's line search met a NaN/inf loss: it put its parameters back, but the closure's forward
                # passes left the buffers (BatchNorm running statistics) at what they saw there; the guard's case
                self._diverged(f"the optimiser's re-evaluation met a non-finite loss ({error})")
                return None
        else:
            self.optimizer.step()
        return data_loss, _correct(scores, yb)

    def _check_every_label(self, scores):
        """At a fit's first step: every class label of the training (and validation) labels in [0, C) for the
        model's C outputs, else the ValueError naming the first bad row, before any step."""
        unchecked, self._unchecked_labels = self._unchecked_labels, None
        # only for the library's own forward: a subclass with its own (labels of -1 skipped as unlabelled rows, say)
        # decides which labels it takes, batch by batch, and was refused here for labels it handles
        if type(self.loss).forward not in (SoftmaxCrossEntropy.forward, MulticlassSVM.forward) or scores.ndim != 2:
            return
        c = scores.shape[1]
        for y, op, name, offset in unchecked:
            if y.ndim == 1 and y.dtype.kind in "iu" and y.size and (y.min() < 0 or y.max() >= c):
                raise _label_error(op, y, c, name, offset)

    def _closure(self, xb, yb, current_loss):
        """The closure of an optimiser that re-evaluates (L-BFGS): the batch's loss and gradients, as :meth:`_step`
        computes them (penalty and clipping included); the first call returns ``current_loss``, whose gradients the
        parameters hold already."""
        evaluate = loss_closure(self.model, self.loss, xb, yb, self.regularization)
        calls = []

        def closure():
            if not calls:
                calls.append(1)
                return current_loss
            value = evaluate()
            if self.clip_grad_norm is not None:
                clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
            return value

        return closure

    def _diverged(self, problem):
        self._last_good.restore()
        taken = self._last_good.iteration
        if taken is not None:
            back = "the last step" if taken == self.iteration - 1 else f"the step of iteration {taken}"
            restored = (f"restored the weights, buffers and optimiser state from before {back} (those of iteration "
                        f"{taken}, loss {self.history['loss'][taken - 1]:.6g})")
        elif self.iteration - 1 > self._last_good.start_iteration:
            first = self._last_good.start_iteration + 1
            steps = (f"the step of iteration {first}" if first == self.iteration - 1 else
                     f"the steps of iterations {first}-{self.iteration - 1}")
            restored = (f"restored the weights, buffers and optimiser state from the start of this fit (undoing "
                        f"{steps})")
        else:
            restored = "no step was taken in this run, so the weights are unchanged (buffers restored)"
        self.stop(f"{_DIVERGED} {self.iteration} (epoch {self.epoch + 1}): {problem}; {restored}")
        if self.warn_divergence:
            warnings.warn(f"Trainer: training {self.stop_reason}. Try a smaller learning rate.", DivergenceWarning,
                          stacklevel=5)

    # --- inference ---------------------------------------------------------------------------------------------------
    def _scores(self, x, batch_size):
        """Yield ``(lo, hi, scores)`` per batch with the transform's deterministic form (callers hold eval mode)."""
        dtype = self._model_dtype()
        for lo in range(0, len(x), batch_size):
            hi = min(lo + batch_size, len(x))
            yield lo, hi, self.model.forward(self._prepare(x[lo:hi], None, dtype))

    def evaluate(self, x, y, batch_size=1024):
        """Mean data loss and accuracy of the model on ``(x, y)``, in evaluation mode, batch by batch.

        Dropout is off and batch statistics are not used (every module's previous mode comes back afterwards,
        also on error); ``batch_transform`` runs as ``batch_transform(xb, None)``; no gradient is touched. The
        regularization penalty is not included.

        Args:
            x (array_like): inputs. y (array_like): labels, same length.
            batch_size (int): examples per forward pass (bounds the memory). Default 1024.

        Returns:
            tuple: ``(loss, accuracy)`` as floats; accuracy is NaN when the labels are not class indices.

        Example:
            >>> loss, acc = trainer.evaluate(x_val, y_val)  # doctest: +SKIP
        """
        x, y = _check_data("Trainer.evaluate", x, y)
        return self._evaluate(x, y, _int_at_least("Trainer.evaluate", "batch_size", batch_size, 1))

    def _evaluate(self, x, y, batch_size=1024, labels=("Trainer.evaluate", "y", 0)):
        """:meth:`evaluate` on data already checked (fit's validation set, checked once per fit, not every epoch);
        ``labels``: the operation, the array's name and the row offset a label out of range is reported with."""
        total, correct, counted = 0.0, 0, 0
        with self._eval_mode():
            for lo, hi, scores in self._scores(x, batch_size):
                yb = y[lo:hi]
                try:
                    total += float(self.loss.forward(scores, yb)) * (hi - lo)
                except LabelError as error:
                    raise _label_error(labels[0], y, error.num_classes, *labels[1:]) from error
                batch_correct = _correct(scores, yb)
                if batch_correct is not None:
                    correct += batch_correct
                    counted += hi - lo
        return total / len(x), (correct / counted if counted else math.nan)

    def predict(self, x, batch_size=1024):
        """Predicted class (the arg-max score) of every example, in evaluation mode, batch by batch.

        Args:
            x (array_like): inputs.
            batch_size (int): examples per forward pass. Default 1024.

        Returns:
            numpy.ndarray: int64 labels of shape (N,).

        Example:
            >>> labels = trainer.predict(x_test)  # doctest: +SKIP
        """
        x = _check_x("Trainer.predict", x)
        batch_size = _int_at_least("Trainer.predict", "batch_size", batch_size, 1)
        labels = np.empty(len(x), dtype=np.int64)
        with self._eval_mode():
            for lo, hi, scores in self._scores(x, batch_size):
                labels[lo:hi] = np.argmax(scores, axis=1)
        return labels

    def predict_proba(self, x, batch_size=1024):
        """Class probabilities of every example (the loss's ``probabilities(scores)``), in evaluation mode.

        Needs a loss that defines probabilities, such as :class:`cynet.nn.loss.SoftmaxCrossEntropy` (an SVM's
        scores are not probabilities).

        Args:
            x (array_like): inputs.
            batch_size (int): examples per forward pass. Default 1024.

        Returns:
            numpy.ndarray: shape (N, C), rows summing to 1.

        Raises:
            TypeError: the loss has no ``probabilities`` method.
        """
        probabilities = getattr(self.loss, "probabilities", None)
        if not callable(probabilities):
            raise TypeError(f"Trainer.predict_proba: {type(self.loss).__name__} does not define probabilities "
                            f"(use SoftmaxCrossEntropy, or predict() for labels)")
        x = _check_x("Trainer.predict_proba", x)
        batch_size = _int_at_least("Trainer.predict_proba", "batch_size", batch_size, 1)
        out = None
        with self._eval_mode():
            for lo, hi, scores in self._scores(x, batch_size):
                p = np.asarray(probabilities(scores))
                if out is None:
                    out = np.empty((len(x),) + p.shape[1:], dtype=p.dtype)
                out[lo:hi] = p
        return out

    # --- checkpoints -------------------------------------------------------------------------------------------------
    def save_checkpoint(self, path):
        """Save the full training state to ``path`` (atomically): model, optimiser, scheduler, callbacks, random
        states, history and counters. See :mod:`cynet.checkpoint` for the layout.

        Called from a callback's ``on_epoch_end``, the file is written at once and again when every callback's
        ``on_epoch_end`` has run, so that it ends up holding their state after this epoch whatever their order (an
        :class:`EarlyStopping` after the saving callback has then counted the epoch).

        A checkpoint taken after an epoch was cut short (KeyboardInterrupt, the divergence guard, a callback's stop
        in the middle of an epoch) holds that epoch's partly trained weights; a resumed ``fit`` runs the whole epoch
        again from them, which is not what the uninterrupted run did: a warning says so.

        Example:
            >>> trainer.save_checkpoint("run.npz")  # doctest: +SKIP
        """
        if self._epoch_end_incomplete and self.iteration == self._iteration_at_epoch_end:
            self._warn_incomplete_epoch_end(path)
        if self.iteration != self._iteration_at_epoch_end:
            warnings.warn(f"Trainer.save_checkpoint: saved in the middle of epoch {self.epoch + 1} "
                          f"({self.iteration - self._iteration_at_epoch_end} of its iterations done); a fit resumed "
                          f"from this checkpoint runs that epoch again from these weights, unlike an uninterrupted "
                          f"run (for an exact resume, save at the end of an epoch: e.g. from a callback's "
                          f"on_epoch_end)", UserWarning, stacklevel=2)
        _checkpoint.save_trainer(path, self)
        pending = getattr(self, "_saves_after_epoch_end", None)      # (a trainer unpickled from before has none)
        if pending is not None:
            pending.append(path)        # written again once every callback's on_epoch_end has run

    def load_checkpoint(self, path):
        """Restore a state saved by :meth:`save_checkpoint`; a following :meth:`fit` resumes exactly.

        Build the trainer as for the original run (same architecture, optimiser and scheduler types, and the same
        callbacks with state, in the same order; see :func:`cynet.checkpoint.load_trainer`), load, then call ``fit``
        with the same total ``epochs`` (and the same ``x``, ``y``, ``batch_size``, ``shuffle`` and validation data: a
        fit with another batch size, example count or shuffle goes on but warns that it is not an exact resume;
        other data of the same length is not detected). A checkpoint of a run that a callback stopped
        (:class:`EarlyStopping`) holds a finished run: a ``fit`` after loading it trains on past the stop, and warns
        that the uninterrupted run ended there. A load that fails changes nothing.

        Returns:
            Trainer: self.

        Raises:
            cynet.checkpoint.CheckpointError: unreadable file or a state that does not fit this trainer (naming what
                does not fit).

        Example:
            >>> trainer.load_checkpoint("run.npz").fit(x, y, epochs=10)  # doctest: +SKIP
        """
        _checkpoint.load_trainer(path, self)
        return self

    def __repr__(self):
        return (f"Trainer(model={type(self.model).__name__}, loss={type(self.loss).__name__}, "
                f"optimizer={type(self.optimizer).__name__}, epoch={self.epoch})")

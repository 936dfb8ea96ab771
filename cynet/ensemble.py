"""Model ensembles and Polyak/EMA weight averaging: the lecture's cheap extra points of test accuracy.

:class:`Ensemble` averages the class probabilities (softmax of the scores) of several models: independently
trained ones, or checkpoints of one run (:meth:`Ensemble.from_checkpoints`). :class:`EMA` is a trainer callback
keeping an exponential moving average of the weights, updated after every optimiser step::

    shadow <- decay * shadow + (1 - decay) * weights

and evaluated by swapping the averaged weights in (``with ema.apply(): ...``; for a model with batch norm
``with ema.apply(x_train): ...``, the running statistics recomputed for the averaged weights).

Example:
    >>> import numpy as np, cynet
    >>> from cynet import nn
    >>> from cynet.ensemble import Ensemble
    >>> _ = cynet.manual_seed(0)
    >>> models = [nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)) for _ in range(3)]
    >>> proba = Ensemble(models).predict_proba(np.ones((2, 4), np.float32))
    >>> proba.shape, bool(np.allclose(proba.sum(axis=1), 1))
    ((2, 3), True)
"""
import numbers
import os

import numpy as np

from cynet._validation import describe, is_count, positive_int, saved_scalar
from cynet.data.loader import RANDOM_AUGMENTATIONS, Mixup
from cynet.nn.module import Module, _evaluation_mode
from cynet.nn.normalization import recompute_batchnorm_statistics
from cynet.train import Callback, _check_x

__all__ = ["Ensemble", "EMA", "softmax"]


def softmax(scores):
    """Row-wise softmax of a (N, C) score array, computed stably (the row maximum subtracted first).

    Args:
        scores (array_like): shape (N, C) with C >= 1, real numbers (integers and bools are taken as float64).

    Returns:
        numpy.ndarray: probabilities of the scores' float dtype, rows summing to 1.

    Raises:
        ValueError: scores not of shape (N, C) with C >= 1. TypeError: complex or non-numeric scores.

    Example:
        >>> import numpy as np
        >>> from cynet.ensemble import softmax
        >>> softmax(np.array([[0.0, 0.0]]))
        array([[0.5, 0.5]])
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(f"cynet.ensemble.softmax: scores must have shape (N, C) with C >= 1 classes, got "
                         f"{describe(scores)}")
    if scores.dtype.kind not in "biuf":         # complex: astype(float64) dropped the imaginary parts
        raise TypeError(f"cynet.ensemble.softmax: scores must be real numbers, got {describe(scores)}")
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
    shifted = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def _checked_decay(owner, decay):
    """``decay`` as a float in [0, 1), or ValueError naming ``owner`` (the constructor and a loaded state alike)."""
    if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0 <= decay < 1:
        raise ValueError(f"{owner}: decay must be a number in [0, 1), got {decay!r}")
    return float(decay)


def _model_dtype(model):
    for param in model.parameters():
        return param.data.dtype
    return None


class Ensemble:
    """Average the class probabilities of several models (each model's softmax of its scores, in eval mode).

    Args:
        models (sequence of cynet.nn.Module): the members (at least one), all producing (N, C) scores.
        weights (sequence of float or None): non-negative member weights (normalised to sum to 1). Default None
            (the plain mean).
        transform (callable or None): ``transform(x_batch) -> array`` applied before every forward pass (the
            preprocessing the members were trained with, e.g. a fitted ``Standardize().transform``). A random
            augmentation (:class:`cynet.data.RandomCrop`, :class:`cynet.data.Compose`, ...) is refused: it would
            change the images at every prediction. Default None.

    Example:
        >>> from cynet import nn
        >>> from cynet.ensemble import Ensemble
        >>> ensemble = Ensemble([nn.Linear(5, 2), nn.Linear(5, 2)])
        >>> len(ensemble)
        2
    """

    def __init__(self, models, weights=None, transform=None):
        models = list(models)
        if not models:
            raise ValueError("Ensemble: needs at least one model")
        for model in models:
            if not isinstance(model, Module):
                raise TypeError(f"Ensemble: models must be cynet.nn.Module instances, got {type(model).__name__}")
        if weights is None:
            weights = np.full(len(models), 1.0 / len(models))
        else:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (len(models),) or not np.all(np.isfinite(weights)) or np.any(weights < 0) \
                    or not np.any(weights > 0):
                raise ValueError(f"Ensemble: weights must be {len(models)} finite non-negative numbers with a "
                                 f"positive sum, got {weights!r}")
            weights = weights / weights.max()     # finite weights whose sum overflows gave all-zero weights
            weights = weights / weights.sum()
        if transform is not None and not callable(transform):
            raise TypeError(f"Ensemble: transform must be callable, got {transform!r}")
        if isinstance(transform, (*RANDOM_AUGMENTATIONS, Mixup)):
            # called as transform(xb) an augmentation draws from the global generator: every prediction was of
            # randomly cropped / flipped / cut-out images, different from call to call, without a word
            raise TypeError(f"Ensemble: transform={transform!r} is a random augmentation, which would change the "
                            f"images at every prediction; pass the fitted preprocessing (e.g. "
                            f"Standardize().fit(x_train).transform, or make_batch_transform(transform, augment), "
                            f"which augments training batches only)")
        self.models = models
        self.weights = weights
        self.transform = transform

    def __len__(self):
        return len(self.models)

    @classmethod
    def from_checkpoints(cls, paths, build_model, weights=None, transform=None):
        """An ensemble of models loaded from checkpoints (:func:`cynet.checkpoint.save_model` files, trainer
        checkpoints, or a search's ``best_val*.npz``).

        Args:
            paths (sequence of str or os.PathLike): the files.
            build_model (callable): ``build_model() -> Module`` of the saved architecture (called once per path).
            weights, transform: as for :class:`Ensemble`.

        Returns:
            Ensemble: the loaded members.

        Raises:
            TypeError: ``paths`` a single path, or ``build_model`` not a model factory. ValueError: ``build_model``
                returned a model (or parameters) it had already returned.

        Example:
            >>> ens = Ensemble.from_checkpoints(["e10.npz", "e20.npz"], lambda: make_mlp())  # doctest: +SKIP
        """
        from cynet import checkpoint

        if isinstance(paths, (str, bytes, os.PathLike)):
            # a single path was iterated character by character ("'/' is a directory")
            raise TypeError(f"Ensemble.from_checkpoints: paths must be a sequence of paths (one per member), got the "
                            f"single path {paths!r}; pass [{paths!r}]")
        if isinstance(build_model, Module) or not callable(build_model):
            # a Module is callable: build_model() ran its forward without an input
            raise TypeError(f"Ensemble.from_checkpoints: build_model must be a callable that builds a new model "
                            f"(e.g. lambda: make_model()), got {type(build_model).__name__}")
        models, seen = [], set()
        for index, path in enumerate(paths):
            model = build_model()
            if not isinstance(model, Module):
                raise TypeError(f"Ensemble.from_checkpoints: build_model() must return a cynet.nn.Module, got "
                                f"{type(model).__name__}")
            params = {id(p) for p in model.parameters()}
            if id(model) in seen or params & seen:
                # every checkpoint was loaded into one module: N copies of the last checkpoint, silently
                raise ValueError(f"Ensemble.from_checkpoints: build_model returned the same model (or one sharing "
                                 f"its parameters) for checkpoint {index} ({os.fspath(path)!r}) as for an earlier "
                                 f"one; it must build a new model at every call")
            seen.add(id(model))
            seen |= params
            models.append(checkpoint.load_model(path, model))
        return cls(models, weights=weights, transform=transform)

    def _member_proba(self, index, model, x, batch_size):
        dtype = _model_dtype(model)
        out = None
        with _evaluation_mode(model):     # (shared by concurrent predictions from several Python threads)
            for lo in range(0, len(x), batch_size):
                xb = x[lo:lo + batch_size]
                if self.transform is not None:
                    xb = np.asarray(self.transform(xb))
                if dtype is not None and xb.dtype != dtype:
                    xb = xb.astype(dtype)
                scores = np.asarray(model.forward(xb), dtype=np.float64)
                if scores.ndim != 2:       # (named here, not by softmax; the number of classes is checked after)
                    raise ValueError(f"Ensemble: member {index} gives scores of shape {scores.shape} for a batch of "
                                     f"{len(xb)} examples: every member must give (N, C) class scores, C >= 2")
                p = softmax(scores)   # float64 rows that sum to 1
                if out is None:
                    out = np.empty((len(x),) + p.shape[1:], dtype=np.float64)
                out[lo:lo + len(xb)] = p
        return out

    def member_proba(self, x, batch_size=1024):
        """Each member's class probabilities.

        Args:
            x (array_like): inputs, numeric (as :meth:`cynet.Trainer.predict` takes them: complex, text or object
                arrays, and NaN or inf values, are refused rather than converted or propagated).
            batch_size (int): examples per forward pass. Default 1024.

        Returns:
            list of numpy.ndarray: one (N, C) float64 array per member.
        """
        return self._member_probabilities(_check_x("Ensemble", x), batch_size)

    def _member_probabilities(self, x, batch_size):
        """:meth:`member_proba` of checked inputs."""
        batch_size = positive_int("Ensemble", "batch_size", batch_size)
        probabilities = []
        for index, model in enumerate(self.models):
            p = self._member_proba(index, model, x, batch_size)
            # a member with another number of classes would broadcast into the mean (one output: rows summing to 2)
            if p.ndim != 2 or p.shape[1] < 2 or (probabilities and p.shape != probabilities[0].shape):
                first = f"; member 0 gives {probabilities[0].shape[1]}" if probabilities else ""
                raise ValueError(f"Ensemble: member {index} gives scores of shape {p.shape} for {len(x)} examples"
                                 f"{first}: every member must give the same number of class scores, 2 or more")
            probabilities.append(p)
        return probabilities

    def predict_proba(self, x, batch_size=1024):
        """The (weighted) mean of the members' class probabilities.

        Args:
            x (array_like): inputs, one example per row.
            batch_size (int): examples per forward pass. Default 1024.

        Returns:
            numpy.ndarray: (N, C) float64, rows summing to 1.
        """
        return self._mean(self.member_proba(x, batch_size))

    def _mean(self, members):
        """The weighted mean of the members' probabilities."""
        out = np.zeros_like(members[0])
        for weight, p in zip(self.weights, members):
            out += weight * p
        return out

    def predict(self, x, batch_size=1024):
        """The class of highest mean probability.

        Returns:
            numpy.ndarray: int64 labels, shape (N,).
        """
        return np.argmax(self.predict_proba(x, batch_size), axis=1).astype(np.int64)

    @staticmethod
    def _inputs(x, y):
        """x (checked) and y as integer class labels, one per row of x (checked before any member runs)."""
        x = _check_x("Ensemble.evaluate", x, "evaluating")
        y = np.asarray(y)
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise TypeError(f"Ensemble.evaluate: y must be a 1-d array of integer class labels, got {y.dtype} of "
                            f"shape {y.shape}")
        if len(y) != len(x):
            raise ValueError(f"Ensemble.evaluate: x and y lengths differ ({len(x)} and {len(y)})")
        return x, y

    @staticmethod
    def _score(proba, y):
        classes = proba.shape[1]
        if len(y) and (y.min() < 0 or y.max() >= classes):
            raise ValueError(f"Ensemble.evaluate: labels must lie in [0, {classes}) for the members' {classes} "
                             f"classes, got values from {y.min()} to {y.max()}")
        picked = proba[np.arange(len(y)), y]
        loss = float(-np.mean(np.log(np.maximum(picked, np.finfo(np.float64).tiny))))
        return loss, float(np.mean(np.argmax(proba, axis=1) == y))

    def evaluate(self, x, y, batch_size=1024):
        """Cross-entropy of the mean probabilities and accuracy of the ensemble on ``(x, y)``.

        Args:
            x (array_like): inputs. y (array_like): class labels.
            batch_size (int): examples per forward pass. Default 1024.

        Returns:
            tuple: ``(loss, accuracy)`` as floats.
        """
        x, y = self._inputs(x, y)
        return self._score(self._mean(self._member_probabilities(x, batch_size)), y)

    def evaluate_members(self, x, y, batch_size=1024):
        """``(loss, accuracy)`` of each member alone (to see the ensemble's gain).

        Returns:
            list of tuple: one ``(loss, accuracy)`` per member.
        """
        x, y = self._inputs(x, y)
        return [self._score(p, y) for p in self._member_probabilities(x, batch_size)]

    def __repr__(self):
        return f"Ensemble({len(self.models)} models)"


class EMA(Callback):
    """Polyak/EMA averaging of the weights, as a :class:`~cynet.train.Trainer` callback.

    At the start of training the shadow weights are a copy of the model's; after every optimiser step
    (``on_batch_end``; a step the divergence guard refused does not count, and the steps it undoes are undone in
    the average too)
    ``shadow = decay * shadow + (1 - decay) * weights``. ``with ema.apply(): trainer.evaluate(...)`` evaluates the
    averaged weights and puts the trained ones back afterwards (or call :meth:`apply` and :meth:`restore`).

    Batch norm: buffers (running statistics) are not averaged, and inside ``apply()`` the model keeps the live
    model's, collected for the trained weights, not the averaged ones (PyTorch's ``AveragedModel`` has the same
    trap, hence ``torch.optim.swa_utils.update_bn``). A model with batch norm should be evaluated with
    ``ema.apply(x_train)``: the running statistics are recomputed for the averaged weights over the training inputs
    (:func:`cynet.nn.recompute_batchnorm_statistics`) and put back on leaving. Without it, a CIFAR-10 MLP with two
    BatchNorm1d layers (decay 0.999, 1875 steps) scored 39.9% with its averaged weights against 47.4% with
    recomputed statistics (43.0% for the trained weights).

    Args:
        decay (float): in [0, 1); the average's memory is about ``1 / (1 - decay)`` steps. Default 0.999.

    Attributes:
        shadow (list of numpy.ndarray or None): the averaged weights, one per parameter.
        num_updates (int): updates since the shadow was initialised.

    Example:
        >>> from cynet.ensemble import EMA
        >>> ema = EMA(decay=0.99)
        >>> # trainer = Trainer(model, loss, opt, callbacks=[ema]); trainer.fit(...)
        >>> # with ema.apply(): val_loss, val_acc = trainer.evaluate(x_val, y_val)
        >>> # a model with batch norm: with ema.apply(x_train): val_loss, val_acc = trainer.evaluate(x_val, y_val)
    """

    def __init__(self, decay=0.999):
        self.decay = _checked_decay("EMA", decay)
        self.model = None
        self.shadow = None
        self.num_updates = 0
        self._backup = None
        self._pending_state = None

    def attach(self, model):
        """Start averaging ``model``'s weights (the shadow becomes a copy of them, unless restored from a state).

        Args:
            model (cynet.nn.Module): the model.

        Returns:
            EMA: self.
        """
        if not isinstance(model, Module):
            raise TypeError(f"EMA: model must be a cynet.nn.Module, got {type(model).__name__}")
        named = list(model.named_parameters())
        if self._pending_state is not None:
            state = self._pending_state
            missing = [name for name, _ in named if "shadow." + name not in state]
            if missing:
                raise ValueError(f"EMA: the saved state has no shadow for {missing}")
            unexpected = sorted(set(key[len("shadow."):] for key in state if key.startswith("shadow."))
                                - {name for name, _ in named})
            if unexpected:
                raise ValueError(f"EMA: the saved state has shadows of parameters the model does not have: "
                                 f"{unexpected}")
            wrong = [f"{name}: saved {np.shape(state['shadow.' + name])}, parameter {p.data.shape}"
                     for name, p in named if np.shape(state["shadow." + name]) != p.data.shape]
            if wrong:
                raise ValueError(f"EMA: the saved shadows do not match the model's parameters ({'; '.join(wrong)})")
            self.model = model
            self._pending_state = None
            self.shadow = [np.array(state["shadow." + name], dtype=p.data.dtype) for name, p in named]
        else:
            self.model = model
            self.shadow = [p.data.copy() for p in model.parameters()]
            self.num_updates = 0
        return self

    def update(self):
        """One averaging step: ``shadow = decay * shadow + (1 - decay) * weights`` (in place)."""
        if self.shadow is None:
            raise RuntimeError("EMA.update: call attach(model) first (the Trainer does it in on_train_begin)")
        if self._backup is not None:
            raise RuntimeError("EMA.update: the averaged weights are applied; restore() first")
        self._match_dtypes()
        keep = self.decay
        for shadow, param in zip(self.shadow, self.model.parameters()):
            shadow *= keep
            # (1 - decay) * weights into a scratch array kept across steps: ``shadow += (1.0 - keep) * param.data``
            # allocated a copy of every parameter at every step (14.7 MB a step for the benchmark MLP)
            scaled = self._scratch_like(param.data)
            np.multiply(param.data, 1.0 - keep, out=scaled)
            shadow += scaled
        self.num_updates += 1

    def _scratch_like(self, array):
        """A scratch array of ``array``'s shape and dtype: a view of one flat buffer per dtype, as large as the largest
        parameter asked for, kept for the next update."""
        buffers = self.__dict__.setdefault("_scratch", {})
        buffer = buffers.get(array.dtype)
        if buffer is None or buffer.size < array.size:
            buffer = buffers[array.dtype] = np.empty(max(array.size, 0 if buffer is None else buffer.size),
                                                     array.dtype)
        return buffer[:array.size].reshape(array.shape)

    # --- trainer hooks ---
    def on_train_begin(self, trainer):
        if self.model is not trainer.model or self.shadow is None:
            self.attach(trainer.model)

    def on_batch_end(self, trainer):
        self.update()

    def _match_dtypes(self):
        """The shadows in their parameters' dtypes: the model may have been cast (model.double()) since attach, and
        a float32 shadow would round the average of float64 weights."""
        for index, (shadow, param) in enumerate(zip(self.shadow, self.model.parameters())):
            if shadow.dtype != param.data.dtype:
                self.shadow[index] = shadow.astype(param.data.dtype)

    def guard_snapshot(self, previous):
        # the average goes back with the weights when the divergence guard undoes steps
        if self.shadow is None:
            return None
        self._match_dtypes()
        if previous is None or len(previous[0]) != len(self.shadow):
            previous = ([np.empty_like(shadow) for shadow in self.shadow], 0)
        copies = previous[0]
        for saved, shadow in zip(copies, self.shadow):
            np.copyto(saved, shadow)
        return copies, self.num_updates

    def guard_restore(self, snapshot):
        if snapshot is None or self.shadow is None:
            return
        copies, self.num_updates = snapshot
        for shadow, saved in zip(self.shadow, copies):
            np.copyto(shadow, saved)

    # --- evaluation with the averaged weights ---
    def apply(self, x=None, batch_size=256):
        """Swap the averaged weights into the model (the trained ones, and the buffers, are kept aside).

        Args:
            x (ndarray or None): training inputs, preprocessed as the model sees them: when given, the batch-norm
                running statistics are recomputed for the averaged weights over them
                (:func:`cynet.nn.recompute_batchnorm_statistics`); the live ones come back on :meth:`restore`.
                Default None: the averaged weights run with the live model's statistics, wrong for a model with
                batch norm.
            batch_size (int): samples per forward pass of the recomputation. Default 256.

        Returns:
            contextlib.AbstractContextManager: leaving it calls :meth:`restore`.
        """
        if self.shadow is None and self._pending_state is not None:
            raise RuntimeError("EMA.apply: the loaded average is not bound to a model yet: call attach(model) (the "
                               "Trainer does it when training starts, and load_checkpoint when it loads)")
        if self.shadow is None:
            raise RuntimeError("EMA.apply: nothing averaged yet (attach a model or train first)")
        if self._backup is not None:
            raise RuntimeError("EMA.apply: the averaged weights are already applied")
        self._match_dtypes()
        params = self.model.parameters()
        # the buffers too: a block that recomputes the batch-norm statistics for the averaged weights leaves the live
        # model's own (the trained weights with another model's running statistics predicted worse, silently)
        self._backup = ([p.data.copy() for p in params], [np.array(b, copy=True) for b in self.model.buffers()])
        for param, shadow in zip(params, self.shadow):
            np.copyto(param.data, shadow)
        if x is not None:
            try:
                recompute_batchnorm_statistics(self.model, x, batch_size)
            except BaseException:
                self.restore()
                raise
        return _Restorer(self)

    @property
    def applied(self):
        """Whether the averaged weights are in the model now (between :meth:`apply` and :meth:`restore`)."""
        return self._backup is not None

    def restore(self):
        """Put the trained weights, and the buffers (batch-norm running statistics) as they were at :meth:`apply`,
        back."""
        if self._backup is None:
            return
        weights, buffers = self._backup
        for param, saved in zip(self.model.parameters(), weights):
            np.copyto(param.data, saved)
        for buffer, saved in zip(self.model.buffers(), buffers):
            np.copyto(buffer, saved)
        self._backup = None

    def copy_to(self, model):
        """Write the averaged weights into ``model`` (same architecture) for good, e.g. before saving it. Its
        buffers are left as they are: a model with batch norm needs its running statistics recomputed afterwards
        (:func:`cynet.nn.recompute_batchnorm_statistics` over the training inputs).

        Args:
            model (cynet.nn.Module): the destination.

        Returns:
            cynet.nn.Module: ``model``.
        """
        params = model.parameters()
        if self.shadow is None or len(params) != len(self.shadow):
            raise ValueError("EMA.copy_to: the model does not match the averaged parameters")
        for param, shadow in zip(params, self.shadow):
            if param.data.shape != shadow.shape:
                raise ValueError(f"EMA.copy_to: shape {param.data.shape} differs from the shadow's {shadow.shape}")
            np.copyto(param.data, shadow)
        return model

    def state_dict(self):
        """Flat state: "decay", "num_updates" and "shadow.<parameter name>" arrays."""
        state = {"decay": self.decay, "num_updates": self.num_updates}
        if self.shadow is not None:
            for (name, _), shadow in zip(self.model.named_parameters(), self.shadow):
                state["shadow." + name] = shadow.copy()
        elif self._pending_state is not None:        # loaded, not yet bound to a model: it round-trips as loaded
            for key, value in self._pending_state.items():
                if key.startswith("shadow."):
                    state[key] = np.array(value, copy=True)
        return state

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`'s output (the shadow is bound to the model at once when one is attached, else at
        the next attach/training). A state without shadows (saved before any averaging) leaves nothing averaged. A
        state that does not fit the attached model (other parameter names or shapes), or whose ``decay`` is not in
        [0, 1) or ``num_updates`` not an int >= 0, raises ValueError and changes nothing."""
        decay, num_updates = (saved_scalar(state.get(key, default)) for key, default in (("decay", self.decay),
                                                                                        ("num_updates", 0)))
        decay = _checked_decay("EMA.load_state_dict", decay)
        if not is_count(num_updates):
            raise ValueError(f"EMA.load_state_dict: num_updates must be an int >= 0, got {num_updates!r}")
        num_updates = int(num_updates)
        if any(key.startswith("shadow.") for key in state):
            pending, self._pending_state = self._pending_state, dict(state)
            if self.model is not None:
                try:
                    self.attach(self.model)
                except ValueError:
                    self._pending_state = pending
                    raise
        else:
            self._pending_state = None
            self.shadow = None
        self.decay, self.num_updates = decay, num_updates

    def __repr__(self):
        return f"EMA(decay={self.decay}, num_updates={self.num_updates})"


class _Restorer:
    def __init__(self, ema):
        self.ema = ema

    def __enter__(self):
        return self.ema

    def __exit__(self, *exc):
        self.ema.restore()
        return False

"""Checkpoints: NumPy ``.npz`` archives plus a JSON header, written atomically and read without pickle.

A checkpoint is a plain ``.npz`` file (a zip of ``.npy`` arrays, written by :func:`numpy.savez`). Besides the arrays
it holds one entry, ``__meta__``: a 0-d unicode array whose text is a JSON object. Nothing is ever pickled, so
loading a checkpoint cannot run code (:func:`numpy.load` is called with ``allow_pickle=False``).

Writing is atomic: the archive goes to a temporary file in the destination's directory, is flushed and ``fsync``-ed,
then renamed over the destination with :func:`os.replace`. A crash or an error half-way through leaves the previous
checkpoint untouched, never a truncated one.

The header (``meta``) always holds::

    {"format": "cynet-checkpoint", "format_version": 1, "kind": "model" | "trainer", ...}

Key naming. Array entries use flat, dotted names with one prefix per owner:

============================  =====================================================================================
``model.<name>``              every parameter and buffer of the model: ``model.`` + its :meth:`Module.state_dict`
                              key, e.g. ``model.0.weight``, ``model.2.bias``.
``optim.<key>``               the optimiser's flat :meth:`state_dict` entries that are arrays (e.g. momentum
                              buffers); its scalar entries (``lr``, step counts) go to ``meta["optim"]``.
``sched.<key>``               the same for the learning-rate scheduler (``meta["sched"]`` for its scalars).
``history.<key>``             the trainer's history lists as float64 arrays (``history.loss``, ``history.val_acc``).
``callback.<i>.<key>``        array state of the trainer's i-th callback (an :class:`~cynet.train.EarlyStopping`'s
                              best weights, for example); its scalars go to ``meta["callbacks"][i]``.
============================  =====================================================================================

A trainer checkpoint's header also stores the epoch and iteration counters, the first iteration's loss (the
divergence guard's reference), the optimiser's learning rate and the random states (JSON strings from
:func:`cynet.get_rng_state`): the trainer's shuffling/augmentation generator, cynet's global generator (dropout
masks) and any module's own ``generator`` (``meta["rng"]``). Restoring all of it makes a resumed
:meth:`~cynet.train.Trainer.fit` produce exactly the weights of an uninterrupted run.

A model checkpoint (:func:`save_model`) holds only the ``model.`` entries; :func:`load_model` also accepts a trainer
checkpoint and takes its model part.

Example:
    >>> import numpy as np, tempfile, os
    >>> from cynet import checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), "run.npz")
    >>> checkpoint.save(path, {"w": np.arange(3.0)}, {"note": "demo"})
    >>> arrays, meta = checkpoint.load(path)
    >>> arrays["w"], meta["note"]
    (array([0., 1., 2.]), 'demo')
"""
import json
import os
import zipfile

import numpy as np

from cynet import _random
from cynet._files import atomic_file
from cynet._validation import is_count
from cynet.nn.module import _loadable
from cynet.optim.optimizers import learning_rates

__all__ = ["CheckpointError", "FORMAT", "FORMAT_VERSION", "save", "load", "save_model", "load_model",
           "save_trainer", "load_trainer"]

FORMAT = "cynet-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "__meta__"


class CheckpointError(ValueError):
    """A file that cannot be read as a cynet checkpoint, or whose contents do not fit the object loading it."""


# --- the file format -------------------------------------------------------------------------------------------------
def _check_arrays(arrays):
    if not isinstance(arrays, dict):
        raise TypeError(f"checkpoint.save: arrays must be a dict of str -> numpy.ndarray, got "
                        f"{type(arrays).__name__}")
    checked = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"checkpoint.save: array names must be non-empty strings, got {key!r}")
        if key == _META_KEY:
            raise ValueError(f"checkpoint.save: the name {_META_KEY!r} is reserved for the header")
        if "/" in key or "\\" in key:
            raise ValueError(f"checkpoint.save: array name {key!r} must not contain a path separator")
        value = np.asarray(value)
        if value.dtype.hasobject:
            raise TypeError(f"checkpoint.save: array {key!r} has dtype object, which only pickle could store; "
                            f"convert it to a numeric or string array")
        checked[key] = value
    return checked


def _path(path):
    """``os.fspath(path)``; a TypeError naming the checkpoint call's argument order for anything else (a model passed
    first: ``load_model(model, path)``)."""
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(f"checkpoint: path must be a str or os.PathLike, got {type(path).__name__}; the calls take "
                        f"the path first: save_model(path, model), load_model(path, model), "
                        f"load_trainer(path, trainer)") from None


def save(path, arrays, meta):
    """Write ``arrays`` and the JSON-serialisable ``meta`` to ``path`` as an ``.npz`` archive, atomically.

    The archive is written to a temporary file next to ``path``, flushed to disk (``fsync``) and renamed over
    ``path`` (:func:`os.replace`), so ``path`` always holds either the old complete file or the new complete one.
    ``path`` is used exactly as given (no ``.npz`` suffix is appended).

    Args:
        path (str or os.PathLike): destination file; its directory must exist.
        arrays (dict[str, numpy.ndarray]): the arrays, by name (no ``/``; not ``"__meta__"``; no object dtype).
        meta (dict): JSON-serialisable header. ``format`` and ``format_version`` are added (overwriting keys of
            those names).

    Raises:
        TypeError: an array of object dtype, a non-string name, or ``meta`` not JSON-serialisable.
        ValueError: a name holding a path separator (``/``) or the reserved ``"__meta__"``.
        OSError: the file cannot be written (the old file, if any, is left as it was).

    Example:
        >>> import numpy as np, tempfile, os
        >>> from cynet import checkpoint
        >>> checkpoint.save(os.path.join(tempfile.mkdtemp(), "a.npz"), {"x": np.zeros(2)}, {})
    """
    path = _path(path)
    arrays = _check_arrays(arrays)
    if not isinstance(meta, dict):
        raise TypeError(f"checkpoint.save: meta must be a dict, got {type(meta).__name__}")
    header = dict(meta)
    header["format"] = FORMAT
    header["format_version"] = FORMAT_VERSION
    try:
        text = json.dumps(header)
    except (TypeError, ValueError) as error:
        raise TypeError(f"checkpoint.save: meta for {path!r} is not JSON-serialisable: {error}") from None
    with atomic_file(path) as f:
        np.savez(f, allow_pickle=False, **arrays, **{_META_KEY: np.array(text)})


def load(path):
    """Read a checkpoint written by :func:`save`.

    Args:
        path (str or os.PathLike): the file.

    Returns:
        tuple: ``(arrays, meta)``: a dict of name -> :class:`numpy.ndarray` (fully read into memory) and the header
        dict (with ``format`` and ``format_version``).

    Raises:
        FileNotFoundError: ``path`` does not exist. IsADirectoryError: ``path`` is a directory.
        CheckpointError: the file is not a zip archive, is truncated or corrupt (bad CRC), holds pickled data, is an
            ``.npz`` without a cynet header, or was written by a newer format version. The message names the file.

    Example:
        >>> from cynet import checkpoint
        >>> arrays, meta = checkpoint.load("run.npz")  # doctest: +SKIP
    """
    path = _path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint: no such file {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint: {path!r} is a directory, not a checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint: {path!r} is not a cynet checkpoint: not an .npz (zip) archive "
                              f"(truncated, corrupt or another kind of file)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as error:
        if "allow_pickle" in str(error):          # NumPy's refusal of object arrays
            raise CheckpointError(f"checkpoint: {path!r} holds pickled Python objects, which cynet never loads "
                                  f"(loading them could run code): not a cynet checkpoint") from error
        raise CheckpointError(f"checkpoint: {path!r} is truncated or corrupt: {type(error).__name__}: {error}") \
            from error
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, NotImplementedError, RuntimeError) as error:
        # (zipfile raises NotImplementedError or RuntimeError for a corrupt directory entry: a flipped flag bit reads
        # as encryption or an unknown compression method)
        raise CheckpointError(f"checkpoint: {path!r} is truncated or corrupt: {type(error).__name__}: {error}") \
            from error
    if _META_KEY not in arrays:
        raise CheckpointError(f"checkpoint: {path!r} is not a cynet checkpoint: an .npz archive without the "
                              f"{_META_KEY!r} header entry")
    foreign = sorted(name for name, value in arrays.items() if not isinstance(value, np.ndarray))
    if foreign:                         # NumPy hands back the raw bytes of a member that is not a .npy file
        raise CheckpointError(f"checkpoint: {path!r} is not a cynet checkpoint: its members {foreign} are not .npy "
                              f"arrays")
    raw = arrays.pop(_META_KEY)
    try:
        meta = json.loads(str(raw[()]))
    except (ValueError, TypeError, IndexError) as error:
        raise CheckpointError(f"checkpoint: {path!r} has an unreadable header ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: {path!r} is not a cynet checkpoint (header format "
                              f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(f"checkpoint: {path!r} has format version {version!r}; this cynet reads versions "
                              f"1 to {FORMAT_VERSION} (written by a newer cynet?)")
    return arrays, meta


# --- models ----------------------------------------------------------------------------------------------------------
def _prefixed(prefix, mapping):
    return {prefix + key: np.asarray(value) for key, value in mapping.items()}


def _strip(prefix, arrays):
    return {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}


def _check_model_state(path, model, state):
    """Raise CheckpointError listing every key or shape that differs between ``model`` and the stored ``state``."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [f"{key}: model {tuple(expected[key].shape)}, checkpoint {tuple(state[key].shape)}"
              for key in expected if key in state and state[key].shape != expected[key].shape]
    # what Module.load_state_dict takes (its rule), checked here so that a trainer load fails before anything
    # changes: strings or complex numbers, or a NaN/inf float for an integer buffer
    dtypes = [f"{key}: model {expected[key].dtype}, checkpoint {state[key].dtype}"
              for key in expected if key in state and not _loadable(state[key], expected[key].dtype)]
    if missing or unexpected or shapes or dtypes:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {missing}")
        if unexpected:
            parts.append(f"not in the model: {unexpected}")
        if shapes:
            parts.append("shape mismatch: " + "; ".join(shapes))
        if dtypes:
            parts.append("not numbers the model can take: " + "; ".join(dtypes))
        raise CheckpointError(f"checkpoint: {path!r} does not fit {type(model).__name__}: " + " | ".join(parts))


def save_model(path, model):
    """Save a model's parameters and buffers (its :meth:`~cynet.nn.Module.state_dict`) to ``path``, atomically.

    Args:
        path (str or os.PathLike): destination file.
        model (cynet.nn.Module): the model.

    Example:
        >>> import tempfile, os
        >>> from cynet import nn, checkpoint
        >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
        >>> checkpoint.save_model(path, nn.Linear(3, 2))
        >>> _ = checkpoint.load_model(path, nn.Linear(3, 2))
    """
    _path(path)
    save(path, _prefixed("model.", model.state_dict()), {"kind": "model", "model": type(model).__name__})


def load_model(path, model):
    """Load parameters and buffers saved by :func:`save_model` (or the model part of a trainer checkpoint).

    The stored arrays are copied into the model's existing arrays (cast to their dtype); nothing is changed unless
    every key and shape matches.

    Args:
        path (str or os.PathLike): the checkpoint.
        model (cynet.nn.Module): a model of the same architecture.

    Returns:
        cynet.nn.Module: ``model``.

    Raises:
        CheckpointError: the file is not a readable cynet checkpoint, or its keys/shapes differ from the model's, or
            an array does not hold numbers (all differences listed).
    """
    arrays, _ = load(path)
    state = _strip("model.", arrays)
    _check_model_state(os.fspath(path), model, state)
    model.load_state_dict(state)
    return model


# --- trainers --------------------------------------------------------------------------------------------------------
def _split_flat(owner, state):
    """A flat state dict into (arrays, JSON scalars)."""
    arrays, scalars = {}, {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            arrays[key] = value
        elif isinstance(value, np.generic):
            scalars[key] = value.item()
        else:
            scalars[key] = value
    try:
        json.dumps(scalars)
    except (TypeError, ValueError) as error:
        raise TypeError(f"checkpoint: {owner}.state_dict() holds a value that is neither an array nor "
                        f"JSON-serialisable: {error}") from None
    return arrays, scalars


def _module_generators(model):
    """``{module name: Generator}`` for modules with their own generator (a Dropout(generator=...), say)."""
    found = {}
    for name, module in model.named_modules():
        generator = module.__dict__.get("generator")
        if isinstance(generator, np.random.Generator):
            found[name] = generator
    return found


def save_trainer(path, trainer):
    """Save everything a :class:`~cynet.train.Trainer` needs to resume exactly: model, optimiser, scheduler,
    callbacks, random states, history and counters (see the module docstring for the key names).

    Args:
        path (str or os.PathLike): destination file (written atomically).
        trainer (cynet.train.Trainer): the trainer.
    """
    for callback in trainer.callbacks:
        if getattr(callback, "applied", False):
            # the model holds the averaged weights now: saved as the trained ones, a resume would train on from them
            raise RuntimeError(f"save_trainer: {type(callback).__name__}'s averaged weights are applied to the model "
                               f"(inside its apply() block): save the trainer after the block (or restore() first)")
    arrays = _prefixed("model.", trainer.model.state_dict())
    meta = {"kind": "trainer", "model": type(trainer.model).__name__}

    optim_arrays, meta["optim"] = _split_flat(type(trainer.optimizer).__name__, trainer.optimizer.state_dict())
    arrays.update(_prefixed("optim.", optim_arrays))
    if trainer.scheduler is not None:
        sched_arrays, meta["sched"] = _split_flat(type(trainer.scheduler).__name__, trainer.scheduler.state_dict())
        arrays.update(_prefixed("sched.", sched_arrays))
    else:
        meta["sched"] = None

    callbacks = []
    for index, callback in enumerate(trainer.callbacks):
        cb_arrays, cb_scalars = _split_flat(type(callback).__name__, callback.state_dict())
        arrays.update(_prefixed(f"callback.{index}.", cb_arrays))
        callbacks.append({"type": type(callback).__name__, "state": cb_scalars})
    meta["callbacks"] = callbacks

    for key, values in trainer.history.items():
        arrays["history." + key] = np.asarray(values, dtype=np.float64)
    meta["history_keys"] = list(trainer.history)

    meta["rng"] = {
        "trainer": _random.get_rng_state(trainer.generator),
        "global": _random.get_rng_state(),
        "modules": {name: _random.get_rng_state(g) for name, g in _module_generators(trainer.model).items()},
    }
    meta["trainer"] = {"epoch": trainer.epoch, "iteration": trainer.iteration,
                       "iteration_at_epoch_end": getattr(trainer, "_iteration_at_epoch_end", trainer.iteration),
                       "first_loss": trainer._first_loss, "lr": _saved_rates(trainer.optimizer),
                       "stop_reason": trainer.stop_reason,
                       "fit_settings": trainer._fit_settings}
    save(path, arrays, meta)


def load_trainer(path, trainer):
    """Restore a checkpoint written by :func:`save_trainer` into ``trainer`` (built with the same architecture,
    optimiser and scheduler types and the same callbacks).

    All or nothing: everything is checked before anything changes (the model's keys and shapes, the optimiser's
    type, settings and state shapes, the scheduler's presence and type, the callbacks, the random states, the history
    and the counters), so a load that fails leaves the trainer as it was. The scheduler's and the callbacks' own
    ``load_state_dict`` run first and are undone should one of them refuse its state (the one that refused it
    included, in case it raised half-way through its load).

    Callbacks are matched in order, leaving out those without state on both sides (a callback whose
    ``state_dict()`` is empty, such as :class:`~cynet.train.ProgressBar`, so ``progress=True`` or ``False`` does not
    matter). The others must agree in number and type: a saved callback state with no callback of its type to take
    it, or a callback with state that the checkpoint cannot restore, raises CheckpointError rather than being skipped
    (to reuse only the weights, use :func:`load_model`).

    Args:
        path (str or os.PathLike): the checkpoint.
        trainer (cynet.train.Trainer): the trainer to restore into.

    Raises:
        CheckpointError: unreadable file, a model checkpoint (not a trainer one), a model mismatch, an optimiser or
            scheduler of another type than the one saved (or state that does not fit it), callbacks that do not
            match, or an incomplete header. The message names the file and what does not fit.
    """
    from cynet.optim.optimizers import Optimizer

    path = _path(path)
    arrays, meta = load(path)
    if meta.get("kind") != "trainer":
        raise CheckpointError(f"checkpoint: {path!r} holds a {meta.get('kind')!r} checkpoint, not a trainer's "
                              f"(use checkpoint.load_model for model checkpoints)")
    absent = [key for key in ("optim", "sched", "callbacks", "history_keys", "rng", "trainer") if key not in meta]
    if absent:
        raise CheckpointError(f"checkpoint: {path!r} is an incomplete trainer checkpoint: its header lacks {absent}")
    malformed = [key for key in ("optim", "rng", "trainer") if not isinstance(meta[key], dict)]
    malformed += [] if meta["sched"] is None or isinstance(meta["sched"], dict) else ["sched"]
    malformed += [] if isinstance(meta["history_keys"], list) else ["history_keys"]
    if malformed:
        raise CheckpointError(f"checkpoint: {path!r} has malformed header entries {malformed}")

    # --- check everything --------------------------------------------------------------------------------------------
    model_state = _strip("model.", arrays)
    _check_model_state(path, trainer.model, model_state)

    optimizer = trainer.optimizer
    optim_state = _strip("optim.", arrays)
    optim_state.update(meta["optim"])
    if optim_state.get("type") != type(optimizer).__name__:
        raise CheckpointError(f"checkpoint: {path!r} holds the state of a {optim_state.get('type')} optimiser but "
                              f"the trainer's optimiser is a {type(optimizer).__name__}")
    checked_optim = None
    if isinstance(optimizer, Optimizer):
        try:
            checked_optim = optimizer._checked_state(optim_state)
        except (KeyError, ValueError, TypeError) as error:
            raise CheckpointError(f"checkpoint: {path!r}: the optimiser state does not fit the trainer's "
                                  f"{type(optimizer).__name__}: {_reason(error)}") from error

    scheduler = trainer.scheduler
    if (meta["sched"] is None) != (scheduler is None):
        raise CheckpointError(f"checkpoint: {path!r} was saved {'without' if meta['sched'] is None else 'with'}"
                              f" a learning-rate scheduler but the trainer has "
                              f"{'one' if scheduler is not None else 'none'}")
    sched_state = None
    if scheduler is not None:
        sched_state = _strip("sched.", arrays)
        sched_state.update(meta["sched"])
        if sched_state.get("type") != type(scheduler).__name__:
            raise CheckpointError(f"checkpoint: {path!r} holds the state of a {sched_state.get('type')} scheduler "
                                  f"but the trainer's scheduler is a {type(scheduler).__name__}")

    callback_states = _matched_callback_states(path, trainer.callbacks, meta["callbacks"], arrays)

    generators = _module_generators(trainer.model)
    rng = meta["rng"]
    saved_generators = rng.get("modules", {})
    if set(generators) != set(saved_generators):
        raise CheckpointError(f"checkpoint: {path!r} stores generators for modules {sorted(saved_generators)} but "
                              f"the model's modules with their own generator are {sorted(generators)}")
    _check_rng_state(path, "the trainer's generator", rng.get("trainer"), trainer.generator)
    _check_rng_state(path, "the global generator", rng.get("global"), _random.resolve_generator(None))
    for name, state in saved_generators.items():
        _check_rng_state(path, f"module {name!r}'s generator", state, generators[name])

    history_keys = meta["history_keys"]
    absent = [key for key in history_keys if "history." + key not in arrays or arrays["history." + key].ndim != 1]
    if absent:
        raise CheckpointError(f"checkpoint: {path!r} lists history keys {absent} without a 1-d array for each")
    counters = meta["trainer"]
    problems = [f"{key} = {counters.get(key)!r}" for key in ("epoch", "iteration")
                if not is_count(counters.get(key))]
    lr = counters.get("lr")
    rates = lr if isinstance(lr, list) else [lr]
    if len(rates) != len(learning_rates(optimizer)) or not all(_is_number(r) and 0 <= r < float("inf") for r in rates):
        problems.append(f"lr = {lr!r}")
    first_loss = counters.get("first_loss")
    if first_loss is not None and not _is_number(first_loss):
        problems.append(f"first_loss = {first_loss!r}")
    if "iteration_at_epoch_end" in counters:     # (older checkpoints lack it: taken at an epoch's end)
        at_end = counters["iteration_at_epoch_end"]
        if not is_count(at_end) or (is_count(counters.get("iteration")) and at_end > counters["iteration"]):
            problems.append(f"iteration_at_epoch_end = {at_end!r}")
    if not isinstance(counters.get("stop_reason"), (str, type(None))):
        problems.append(f"stop_reason = {counters['stop_reason']!r}")
    fit_settings = counters.get("fit_settings")       # (older checkpoints lack it)
    if fit_settings is not None and not (isinstance(fit_settings, dict) and all(
            isinstance(value, (bool, int)) for value in fit_settings.values())):
        problems.append(f"fit_settings = {fit_settings!r}")
    if problems:
        raise CheckpointError(f"checkpoint: {path!r} has invalid trainer counters: {', '.join(problems)}")

    # --- apply: first what may still refuse its state (undone on failure), then what cannot fail ---------------------
    from cynet.ensemble import EMA      # (here: cynet.ensemble imports cynet.train, which imports this module)
    old_rates = learning_rates(optimizer)
    undo = []
    stage = None
    try:
        if scheduler is not None:
            stage = f"the {type(scheduler).__name__} scheduler"
            sched_backup = _copied(scheduler.state_dict())
            undo.append(lambda: scheduler.load_state_dict(sched_backup))   # (before: a load may raise half-way)
            scheduler.load_state_dict(sched_state)
        for callback, state in callback_states:
            stage = f"the {type(callback).__name__} callback"
            backup = _copied(callback.state_dict())
            undo.append(lambda callback=callback, backup=backup: callback.load_state_dict(backup))
            callback.load_state_dict(state)
            if isinstance(callback, EMA) and any(key.startswith("shadow.") for key in state) and (
                    callback.model is not trainer.model):
                callback.attach(trainer.model)   # the loaded average, bound now: apply() works before any fit
        if checked_optim is None:       # not a cynet optimiser: it could not be checked beforehand
            stage = f"the {type(optimizer).__name__} optimiser"
            optim_backup = _copied(optimizer.state_dict())
            undo.append(lambda: optimizer.load_state_dict(optim_backup))
            optimizer.load_state_dict(optim_state)
    except Exception as error:
        for step in reversed(undo):
            step()
        _set_rates(optimizer, old_rates)
        raise CheckpointError(f"checkpoint: {path!r}: {stage} refused its saved state: {_reason(error)}") from error

    trainer.model.load_state_dict(model_state)
    if checked_optim is not None:
        optimizer._apply_checked_state(checked_optim)
    _set_rates(optimizer, rates)
    trainer.history = {key: arrays["history." + key].tolist() for key in history_keys}
    _random.set_rng_state(rng["trainer"], trainer.generator)
    _random.set_rng_state(rng["global"])
    for name, state in saved_generators.items():
        _random.set_rng_state(state, generators[name])
    trainer.epoch = int(counters["epoch"])
    trainer.iteration = int(counters["iteration"])
    # (older checkpoints: taken at an epoch's end, as far as can be told)
    trainer._iteration_at_epoch_end = counters.get("iteration_at_epoch_end", trainer.iteration)
    trainer._first_loss = first_loss
    trainer.stop_reason = counters.get("stop_reason")
    trainer._fit_settings = fit_settings
    # (older files have none: nothing to compare)
    trainer._resumed_settings = {} if fit_settings is None else dict(fit_settings)


def _saved_rates(optimizer):
    """The learning rate as the header keeps it: a float, or a list of one per parameter group."""
    rates = learning_rates(optimizer)
    return rates[0] if len(rates) == 1 else rates


def _set_rates(optimizer, rates):
    groups = getattr(optimizer, "param_groups", None)
    if groups:
        for group, rate in zip(groups, rates):
            group["lr"] = rate
    else:
        optimizer.lr = rates[0]


def _reason(error):
    """An exception's message without the quotes ``str(KeyError)`` adds."""
    return str(error.args[0]) if len(error.args) == 1 else str(error)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _copied(state):
    """A flat state dict whose arrays are copies (a backup that later changes of the owner cannot reach)."""
    return {key: value.copy() if isinstance(value, np.ndarray) else value for key, value in state.items()}


def _callback_has_state(saved, index, arrays):
    prefix = f"callback.{index}."
    return bool(saved.get("state")) or any(key.startswith(prefix) for key in arrays)


def _matched_callback_states(path, callbacks, saved_callbacks, arrays):
    """``[(callback, saved state)]`` pairing the trainer's callbacks that have state with the saved ones, in order;
    CheckpointError when their numbers or types differ."""
    if not isinstance(saved_callbacks, list) or not all(isinstance(entry, dict) and "type" in entry
                                                        for entry in saved_callbacks):
        raise CheckpointError(f"checkpoint: {path!r} has an unreadable callbacks entry in its header")
    saved = [(index, entry) for index, entry in enumerate(saved_callbacks)
             if _callback_has_state(entry, index, arrays)]
    live = [callback for callback in callbacks if callback.state_dict()]
    saved_types = [entry["type"] for _, entry in saved]
    live_types = [type(callback).__name__ for callback in live]
    if saved_types != live_types:
        raise CheckpointError(f"checkpoint: {path!r} holds the state of the callbacks {saved_types} but the "
                              f"trainer's callbacks with state are {live_types}: build the trainer with the same "
                              f"callbacks in the same order (or use checkpoint.load_model for the weights alone)")
    pairs = []
    for callback, (index, entry) in zip(live, saved):
        state = _strip(f"callback.{index}.", arrays)
        state.update(entry.get("state") or {})
        pairs.append((callback, state))
    return pairs


def _check_rng_state(path, owner, state, generator):
    """CheckpointError unless ``state`` can be set into a generator like ``generator`` (tried on a scratch one)."""
    scratch = np.random.Generator(type(generator.bit_generator)())
    try:
        _random.set_rng_state(state, scratch)
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint: {path!r} has an invalid random state for {owner}: "
                              f"{_reason(error)}") from error

"""Random search, grid search, coarse-to-fine and successive halving over a trial function, and their results.

The lecture's recipe (CS231n, "Training Neural Networks"): sample hyperparameters at random rather than on a grid
(with few important dimensions, a 9-trial grid tries 3 learning rates, 9 random trials try 9), search
learning rates and regularisation strengths in log space, start coarse with a few epochs per trial, then narrow the
ranges around the best trials and train longer; look at the results, and widen a range whose best value lies on
its edge.

Every search runs trials ``train_fn(params, data, budget, seed) -> dict`` (see :func:`make_trainer_trial` for one
built from a model factory and :class:`cynet.train.Trainer`) through an executor (:mod:`cynet.tune.executors`) and
returns a :class:`SearchResult`. Trial ``i``'s seed and its hyperparameter draw come from
``numpy.random.SeedSequence(seed).spawn(...)[i]``, so a search is reproducible and a trial's outcome does not depend
on where it ran.

Trials are ranked by the search's objective (:class:`cynet.tune.Objective`): ``objective="val_acc"``, the
highest validation accuracy (the default), ``objective="val_loss"``, the lowest validation loss (a regression model
trained with :class:`cynet.nn.loss.MSELoss` has no accuracy), or any number ``train_fn`` returns with
``mode="min"`` or ``"max"``. Everything that picks "the best" follows it: the result's order, ``best_trial``, the
saved weights, the survivors of successive halving and the trials coarse-to-fine narrows around. A trial whose
objective value is not finite ranks as diverged.

Example:
    >>> from cynet.tune import RandomSearch, loguniform
    >>> def train_fn(params, data, budget, seed):
    ...     return {"val_acc": 1.0 - abs(params["lr"] - 0.01)}
    >>> result = RandomSearch({"lr": loguniform(1e-4, 1e-1)}, n_trials=8, seed=0).run(train_fn, executor=None)
    >>> len(result.trials), result.best_trial["status"]
    (8, 'ok')
"""
import copy
import csv
import itertools
import json
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np

from cynet._validation import is_real
from cynet.tune.executors import make_runner
from cynet.tune.objective import Objective, as_objective
from cynet.tune.space import Choice, Distribution, LogUniform, edge_report, grid_points, narrow_space, \
    sample_space, _check_int, _check_space, _same

__all__ = ["RandomSearch", "GridSearch", "CoarseToFine", "Stage", "successive_halving", "SearchResult",
           "make_trainer_trial", "TrainerTrial", "trial_seed"]

_STATUS_ORDER = {"ok": 0, "diverged": 1, "error": 2}
_DEFAULT_OBJECTIVE = Objective()


def _check_fraction(owner, name, value, upper=None):
    """``value`` as a float when it is a finite number >= 0 (and < ``upper`` when given); ValueError otherwise."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) \
        and math.isfinite(value) and value >= 0 and (upper is None or value < upper)
    if not ok:
        bound = ">= 0" if upper is None else f"in [0, {upper})"
        raise ValueError(f"{owner}: {name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _check_budget(owner, name, value):
    """``value`` as a Python number when it is a finite number > 0 (NumPy scalars too, not bools); ValueError
    otherwise."""
    if not is_real(value) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}: {name} must be a finite number > 0, got {value!r}")
    return value.item() if isinstance(value, (np.integer, np.floating)) else value


def _trial_sequence(seed, number):
    """Trial ``number``'s SeedSequence: the same as ``SeedSequence(seed).spawn(number + 1)[number]``."""
    return np.random.SeedSequence(seed, spawn_key=(number,))


def trial_seed(seed, number):
    """The training seed of trial ``number`` of a search seeded with ``seed`` (an int in [0, 2**32)).

    Args:
        seed (int): the search's seed.
        number (int): the trial number (0, 1, ...; numbering continues across coarse-to-fine stages).

    Returns:
        int: the seed passed to ``train_fn``.

    Raises:
        ValueError: ``seed`` or ``number`` is not a non-negative int (a bool, a float, a negative number).

    Example:
        >>> from cynet.tune import trial_seed
        >>> trial_seed(0, 3) == trial_seed(0, 3) != trial_seed(0, 4)
        True
    """
    # (a negative seed raised NumPy's bare "expected non-negative integer", 1.5 a TypeError about SeedSequence's
    # entropy, and True passed as the seed 1)
    seed = _check_int("trial_seed", "seed", seed, 0)
    number = _check_int("trial_seed", "number", number, 0)
    return int(_trial_sequence(seed, number).generate_state(1)[0])


def _param_rng(seed, number):
    """Trial ``number``'s own generator for its hyperparameter draw (a child of its SeedSequence)."""
    return np.random.default_rng(_trial_sequence(seed, number).spawn(1)[0])


def _sort_key(record, objective=_DEFAULT_OBJECTIVE):
    """Ranking: finished trials first, the longest-trained (largest budget) first among them, then by the objective
    (the highest accuracy by default; ties: lower number); then diverged (a non-finite objective value too), then
    errors. An accuracy after 1 epoch is not compared with one after 9: under successive halving or coarse-to-fine
    the best record is one of the longest-trained survivors."""
    ok = objective.finished(record)
    group = 0 if ok else max(1, _STATUS_ORDER.get(record["status"], 3))
    budget = record.get("budget", 0)
    budget = budget if ok and isinstance(budget, (int, float)) and math.isfinite(budget) else 0
    return (group, -budget, objective.loss(record) if ok else 0.0, record["number"], record.get("rung", 0))


def _stage_key(record, objective=_DEFAULT_OBJECTIVE):
    """Ranking inside a successive-halving stage: survivors of later rungs first, then by the objective."""
    ok = objective.finished(record)
    return (0 if ok else 1, -record.get("rung", 0), objective.loss(record) if ok else 0.0, record["number"])


# --- trials built from a model factory -------------------------------------------------------------------------------
def _split_data(data):
    if isinstance(data, dict):
        try:
            return data["x_train"], data["y_train"], data["x_val"], data["y_val"]
        except KeyError as error:
            raise KeyError(f"make_trainer_trial: data dict needs x_train, y_train, x_val, y_val; missing "
                           f"{error}") from None
    if isinstance(data, (tuple, list)) and len(data) == 4:
        return data
    raise TypeError(f"make_trainer_trial: data must be (x_train, y_train, x_val, y_val) or a dict with those keys, "
                    f"got {type(data).__name__}")


class TrainerTrial:
    """A trial function built from a model factory and :class:`cynet.train.Trainer` (see :func:`make_trainer_trial`).

    Picklable when its factories are (module-level functions), so it runs on process pools and Dask workers.
    """

    def __init__(self, build_model, loss=None, optimizer_factory=None, *, batch_size=64, regularization=None,
                 callbacks=None, batch_transform=None):
        if not callable(build_model):
            raise TypeError(f"make_trainer_trial: build_model must be callable as build_model(params), got "
                            f"{build_model!r}")
        # Trainer's forms (a list of callbacks, a penalty instance) failed in every trial, with "'list' object is not
        # callable" or "L2Penalty: model must be a cynet.nn.Module, got dict"
        if callbacks is not None and not callable(callbacks):
            raise TypeError(f"make_trainer_trial: callbacks must be a function params -> list of Callback (new ones "
                            f"per trial, e.g. lambda params: [EarlyStopping()]), got {callbacks!r}")
        if regularization is not None and (not callable(regularization) or hasattr(regularization, "backward")):
            raise TypeError(f"make_trainer_trial: regularization must be a function params -> penalty (e.g. lambda "
                            f"params: L2Penalty(params['reg'])), got {regularization!r}")
        self.build_model = build_model
        self.loss = loss
        self.optimizer_factory = optimizer_factory
        self.batch_size = _check_int("make_trainer_trial", "batch_size", batch_size, 1)
        self.regularization = regularization
        self.callbacks = callbacks
        self.batch_transform = batch_transform

    def _optimizer(self, model, params):
        if self.optimizer_factory is not None:
            return self.optimizer_factory(model.parameters(), params)
        from cynet.optim import SGD

        if "lr" not in params:
            raise KeyError("make_trainer_trial: without an optimizer_factory the space must define 'lr' (SGD)")
        return SGD(model.parameters(), lr=params["lr"], momentum=params.get("momentum", 0.0),
                   weight_decay=params.get("weight_decay", 0.0))

    def _regularization(self, params):
        if self.regularization is not None:
            return self.regularization(params)
        if "reg" in params:
            from cynet.nn.loss import L2Penalty

            return L2Penalty(params["reg"])
        return None

    def __call__(self, params, data, budget, seed):
        from cynet import _random
        from cynet.train import Trainer

        x_train, y_train, x_val, y_val = _split_data(data)
        # the budget is the epoch count: round() trained 1 epoch for 0.5, 2 for 2.5 and 4 for 4.5 (successive halving
        # from min_budget=0.5, eta=3) while the records showed budgets 0.5, 1.5, 4.5
        if not is_real(budget) or not math.isfinite(budget) or budget < 1 or budget != int(budget):
            raise ValueError(f"make_trainer_trial: the budget is the number of epochs to train, a whole number >= 1; "
                             f"got {budget!r}")
        epochs = int(budget)
        # The trial's own generator, local to this thread, for the initial weights, dropout masks and every other
        # generator=None draw: seeding the process-wide generator (and restoring it afterwards) let trials running on
        # threads beside each other (a thread pool, a Dask worker with several threads) draw from each other's seeds.
        # It is the generator cynet.manual_seed(seed) would make, so serial results are what they always were.
        with _random.generator_scope(seed):
            model = self.build_model(params)
            if self.loss is None:
                from cynet.nn.loss import SoftmaxCrossEntropy

                loss = SoftmaxCrossEntropy()
            else:
                loss = copy.deepcopy(self.loss)
            callbacks = list(self.callbacks(params)) if self.callbacks is not None else []
            trainer = Trainer(model, loss, self._optimizer(model, params), regularization=self._regularization(params),
                              callbacks=callbacks, batch_transform=self.batch_transform, seed=seed, progress=False)
            # the record reports a divergence; silenced on this trainer alone (warnings.catch_warnings changes the
            # process-wide filters: trials overlapping on threads left an 'ignore DivergenceWarning' filter behind
            # for good, and silenced the other threads' trainers meanwhile)
            trainer.warn_divergence = False
            trainer.fit(x_train, y_train, epochs=epochs, batch_size=int(params.get("batch_size", self.batch_size)),
                        validation=(x_val, y_val))
            diverged = bool(trainer.stop_reason) and trainer.stop_reason.startswith("diverged")
            if diverged:
                val_loss, val_acc = math.nan, math.nan
            else:
                val_loss, val_acc = trainer.evaluate(x_val, y_val)
        history = {key: list(trainer.history[key]) for key in ("train_loss", "train_acc", "val_loss", "val_acc")}
        return {"val_acc": val_acc, "val_loss": val_loss, "epochs": trainer.epoch, "history": history,
                "state_dict": dict(model.state_dict()), "status": "diverged" if diverged else "ok",
                "stop_reason": trainer.stop_reason}

    def __repr__(self):
        return f"TrainerTrial({getattr(self.build_model, '__name__', self.build_model)!r})"


def make_trainer_trial(build_model, loss=None, optimizer_factory=None, *, batch_size=64, regularization=None,
                       callbacks=None, batch_transform=None):
    """A trial function that builds a model from the hyperparameters and trains it with :class:`Trainer`.

    Per trial, inside :func:`cynet._random.generator_scope` of the trial's seed (a global generator local to the
    calling thread, the one ``cynet.manual_seed(seed)`` would make; the caller's generator is never touched), the
    model is built from scratch, trained for ``budget`` epochs (a whole number >= 1; any other budget makes the trial
    an "error") on ``data = (x_train, y_train, x_val, y_val)`` (or a dict with
    those keys) with the trainer's divergence guard, and scored on the validation split. Its initial weights and
    dropout masks thus depend on the seed alone, also when other trials run on threads beside it (a thread pool, a
    Dask worker with several threads). A run the guard stopped is reported with status "diverged" (and NaN
    accuracy), never ranked. A regression model (``loss=MSELoss()``, real-valued targets) reports a NaN "val_acc"
    and a finite "val_loss": search it with ``objective="val_loss"`` (by the default objective, its trials would
    all be "diverged").

    Args:
        build_model (callable): ``build_model(params) -> cynet.nn.Module``.
        loss: a loss instance (deep-copied per trial). Default None (:class:`cynet.nn.loss.SoftmaxCrossEntropy`).
        optimizer_factory (callable): ``optimizer_factory(parameters, params) -> optimizer``. Default None:
            ``SGD(parameters, lr=params["lr"], momentum=params.get("momentum", 0), weight_decay=...)``.
        batch_size (int): used unless ``params`` has "batch_size". Default 64.
        regularization (callable): ``regularization(params) -> penalty`` or None. Default None: an
            :class:`~cynet.nn.loss.L2Penalty` of strength ``params["reg"]`` when the space defines "reg".
        callbacks (callable): ``callbacks(params) -> list of Callback``. Default None.
        batch_transform (callable): passed to the Trainer. Default None.

    Returns:
        TrainerTrial: callable as ``trial(params, data, budget, seed) -> dict`` with "val_acc", "val_loss",
        "epochs", "history", "state_dict", "status", "stop_reason".

    Example:
        >>> from cynet import nn
        >>> from cynet.tune import make_trainer_trial
        >>> def build(params):
        ...     return nn.Sequential(nn.Linear(3072, params["hidden"]), nn.ReLU(), nn.Linear(params["hidden"], 10))
        >>> trial = make_trainer_trial(build, batch_size=128)
    """
    return TrainerTrial(build_model, loss, optimizer_factory, batch_size=batch_size, regularization=regularization,
                        callbacks=callbacks, batch_transform=batch_transform)


# --- results ---------------------------------------------------------------------------------------------------------
def _format(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):     # per-fold accuracies and epochs of a cross-validated trial
        return "[" + ", ".join(_format(v) for v in value) + "]"
    return str(value)


def _option_index(options, value):
    """The position of ``value`` among a choice's ``options`` (appended to them when it is none of them)."""
    for i, option in enumerate(options):
        if _same(option, value):
            return i
    options.append(value)
    return len(options) - 1


class SearchResult:
    """Every trial of a search, best first, with the best configuration, exports, a plot and the best checkpoint.

    Trials that finished ("ok") are ranked by budget, the longest-trained first (an accuracy after 1 epoch is not
    compared with one after 9: under successive halving and coarse-to-fine the best is a longest-trained survivor),
    then by the search's objective (:class:`~cynet.tune.Objective`: the highest validation accuracy by default,
    the lowest "val_loss" with ``objective="val_loss"``; ties: lower trial number first); "diverged" (a non-finite
    objective value included) and "error" trials follow and never count as best. In a single-budget search (random,
    grid) that is simply the order of the objective.

    Attributes:
        trials (list of dict): one record per trial run (per rung under successive halving), best first: "number",
            "stage", "rung", "params", "seed", "budget", "status", "val_acc", "val_loss", "epochs", "seconds",
            "threads", "error", "history"; with a cross-validated trial (:class:`~cynet.tune.CrossValidatedTrial`)
            also "val_acc_folds" (each fold's accuracy) and "val_acc_std" (their standard deviation); with another
            objective its key (when not "val_loss"), and "<key>_folds" and "<key>_std" for a cross-validated one.
        space (dict): the initial search space.
        objective (Objective): what the trials are ranked by.
        best_state_dict (dict or None): the best trial's weights, when its ``train_fn`` returned a "state_dict".
        best_checkpoint (str or None): where :meth:`save_best` wrote them.
        stage_spaces (list of dict): the space each stage sampled from (one entry for a single-stage search).

    Example:
        >>> result = RandomSearch(space, n_trials=16).run(trial, data, budget=2)    # doctest: +SKIP
        >>> print(result)                                     # the table, best first  # doctest: +SKIP
        >>> result.best_params, result.to_csv("trials.csv"), result.plot("val_acc.png")  # doctest: +SKIP
    """

    def __init__(self, trials, space, best_state_dict=None, stage_spaces=None, objective=None):
        self.objective = as_objective("SearchResult", "val_acc" if objective is None else objective)
        self.trials = sorted(trials, key=lambda record: _sort_key(record, self.objective))
        self.space = space
        self.best_state_dict = best_state_dict
        self.best_checkpoint = None
        self.stage_spaces = list(stage_spaces) if stage_spaces is not None else [space]

    @property
    def best_trial(self):
        """The record of the best finished trial (raises RuntimeError when no trial finished)."""
        if not self.trials or not self.objective.finished(self.trials[0]):
            counts = {s: sum(t["status"] == s for t in self.trials) for s in ("diverged", "error")}
            raise RuntimeError(f"SearchResult: no trial finished ({len(self.trials)} trials: {counts['diverged']} "
                               f"diverged, {counts['error']} errors); see result.trials[i]['error']")
        return self.trials[0]

    @property
    def best_params(self):
        """The best finished trial's hyperparameters."""
        return dict(self.best_trial["params"])

    @property
    def best_val_acc(self):
        """The best trial's validation accuracy (NaN for a regression model ranked by another objective)."""
        return self.best_trial["val_acc"]

    @property
    def best_value(self):
        """The best trial's value of the objective (its "val_acc" by default, its "val_loss" when ranked by it)."""
        return self.objective.value(self.best_trial)

    def _param_names(self):
        names = list(self.space)
        for t in self.trials:
            names.extend(k for k in t["params"] if k not in names)
        return names

    def table(self):
        """The trials as flat rows (dicts), best first: rank, number, stage, rung, status, val_acc, (when trials
        were cross-validated: val_acc_std, val_acc_folds,) val_loss, epochs, budget, seconds, threads, seed, one
        column per hyperparameter (named "params.<name>" when the name is one of these columns), error. With
        another objective, its column (and its "_std" and "_folds" columns) comes right after status, followed by
        those of val_acc and val_loss it is not.

        Returns:
            list of dict: the rows.
        """
        rows = []
        key = self.objective.key
        folds = any(f"{key}_folds" in t for t in self.trials)
        for rank, t in enumerate(self.trials, 1):
            row = {"rank": rank, "number": t["number"], "stage": t.get("stage", 0), "rung": t.get("rung", 0),
                   "status": t["status"], key: t.get(key, math.nan)}
            if folds:               # the mean score alone hides how much it varies from fold to fold
                row[f"{key}_std"], row[f"{key}_folds"] = t.get(f"{key}_std"), t.get(f"{key}_folds")
            for other in ("val_acc", "val_loss"):
                if other != key:
                    row[other] = t[other]
            row.update({"epochs": t["epochs"], "budget": t["budget"],
                        "seconds": t["seconds"], "threads": t.get("threads"), "seed": t["seed"]})
            for name in self._param_names():
                # a hyperparameter named like a column ("epochs", "seed") took that column's place in the row
                row[f"params.{name}" if name in row or name == "error" else name] = t["params"].get(name)
            row["error"] = t["error"]
            rows.append(row)
        return rows

    def to_csv(self, path):
        """Write :meth:`table` as CSV (header row first).

        Args:
            path (str or os.PathLike): destination.

        Returns:
            str: the path written.
        """
        rows = self.table()
        path = os.fspath(path)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["rank"])
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        return path

    def to_json(self, path):
        """Write the space, the best configuration and every trial (without weights) as JSON.

        Non-finite numbers are written as null.

        Args:
            path (str or os.PathLike): destination.

        Returns:
            str: the path written.
        """
        def clean(value):
            if isinstance(value, dict):
                return {str(k): clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            if isinstance(value, np.ndarray):
                return clean(value.tolist())
            if isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, (str, int, float, bool)) or value is None:
                return value
            return repr(value)

        try:
            best = {"params": self.best_params, "val_acc": self.best_val_acc}
            if not self.objective.is_default:
                best.update({"objective": self.objective.key, "mode": self.objective.mode,
                             self.objective.key: self.best_value})
        except RuntimeError:
            best = None
        document = {"space": {k: repr(v) if isinstance(v, Distribution) else v for k, v in self.space.items()},
                    "best": best, "best_checkpoint": self.best_checkpoint,
                    "trials": [{k: v for k, v in t.items() if k != "state_dict"} for t in self.trials]}
        path = os.fspath(path)
        with open(path, "w") as f:
            json.dump(clean(document), f, indent=1)
        return path

    def save_best(self, directory):
        """Save the best trial's weights with :mod:`cynet.checkpoint` as ``best_val{acc:.4f}.npz`` in ``directory``
        (``best_{key}{value:.4g}.npz`` when the objective is not "val_acc", e.g. ``best_val_loss0.0123.npz``).

        The file loads with :func:`cynet.checkpoint.load_model`; its header also holds the hyperparameters.

        Args:
            directory (str or os.PathLike): an existing directory.

        Returns:
            str: the file's path (also kept in :attr:`best_checkpoint`).

        Raises:
            RuntimeError: no finished trial, or the trial function returned no "state_dict".
        """
        from cynet import checkpoint

        best = self.best_trial
        if self.best_state_dict is None:
            raise RuntimeError("SearchResult.save_best: the trial function returned no 'state_dict' for the best "
                               "trial")
        key = self.objective.key
        name = f"best_val{best['val_acc']:.4f}.npz" if key == "val_acc" else f"best_{key}{self.best_value:.4g}.npz"
        path = os.path.join(os.fspath(directory), name)
        meta = {"kind": "model", "model": "tune-best", "val_acc": best["val_acc"], "trial": best["number"],
                "params": json.loads(json.dumps(best["params"], default=repr))}
        if key != "val_acc":
            meta.update({"objective": key, "mode": self.objective.mode, key: self.best_value})
        checkpoint.save(path, {"model." + k: np.asarray(v) for k, v in self.best_state_dict.items()}, meta)
        self.best_checkpoint = path
        return path

    def plot(self, path, *, include_failed=True):
        """The objective (validation accuracy by default; the y axis is labelled with it) against each
        hyperparameter (log-scaled axis for :func:`loguniform` ones, one tick per
        option, labelled with it, for a :func:`choice`), one panel each, saved to ``path`` (matplotlib, imported only
        here; drawn on a standalone Agg figure, so pyplot's state and backend are left alone).

        Args:
            path (str or os.PathLike): image file (.png, .pdf, ...).
            include_failed (bool): mark diverged/error trials as red crosses at the bottom. Default True.

        Returns:
            str: the path written.

        Raises:
            ImportError: matplotlib is not installed (the message says ``pip install matplotlib``).
        """
        from cynet.diagnostics.plots import _figure_class

        Figure = _figure_class("SearchResult.plot")   # no pyplot: the caller's backend (a notebook's, say) is untouched

        names = [n for n, d in self.space.items() if isinstance(d, Distribution)] or list(self.space)
        fig = Figure(figsize=(4 * len(names), 3.4))
        axes = fig.subplots(1, len(names), squeeze=False)
        objective = self.objective
        ok = [t for t in self.trials if objective.finished(t)]
        failed = [t for t in self.trials if t not in ok]
        # failed trials are drawn at the worst end of the finished ones
        low = (min if objective.mode == "max" else max)((objective.value(t) for t in ok), default=0.0)
        for ax, name in zip(axes[0], names):
            dist = self.space.get(name)
            # a choice's options at 0, 1, ... labelled with their values: matplotlib cannot place tuples (layer
            # sizes) and leaves None out
            options = list(dist.options) if isinstance(dist, Choice) else None

            def x(t, name=name, options=options):
                value = t["params"][name]
                return value if options is None else _option_index(options, value)

            sizes = [12 + 8 * t.get("rung", 0) for t in ok]
            ax.scatter([x(t) for t in ok], [objective.value(t) for t in ok], s=sizes, alpha=0.75, label="trial")
            if ok:
                ax.scatter([x(ok[0])], [objective.value(ok[0])], marker="*", s=160, color="gold",
                           edgecolor="k", zorder=3, label="best")
            if include_failed and failed:
                ax.scatter([x(t) for t in failed], [low] * len(failed), marker="x", color="red",
                           label="diverged/error")
            if isinstance(dist, LogUniform):
                ax.set_xscale("log")
            if options is not None:
                ax.set_xticks(range(len(options)))
                ax.set_xticklabels([_format(o) if isinstance(o, float) else str(o) for o in options])
            ax.set_xlabel(name)
            ax.set_ylabel(objective.label)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        path = os.fspath(path)
        fig.savefig(path, dpi=100)
        return path

    def __str__(self):
        rows = self.table()
        columns = [c for c in (rows[0] if rows else {}) if c not in ("error",)]
        cells = [[_format(row[c]) for c in columns] for row in rows]
        # each column as wide as its name and its widest value (a name such as "weight_decay" or a value such as
        # 3.12345e-05 overflowed a fixed width and pushed the rest of its line under the wrong headers)
        widths = [max([10, len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
        lines = ["  ".join(f"{c:>{w}}" for c, w in zip(columns, widths))]
        lines.extend("  ".join(f"{cell:>{w}}" for cell, w in zip(line, widths)) for line in cells)
        return "\n".join(lines)

    def __repr__(self):
        try:
            best = f"best {self.objective.key}={self.best_value:.4f} params={self.best_params}"
        except RuntimeError:
            best = "no finished trial"
        return f"SearchResult({len(self.trials)} trials, {best})"


def _print_progress(record, key="val_acc"):
    params = ", ".join(f"{k}={_format(v)}" for k, v in record["params"].items())
    rung = f" rung {record['rung']}" if record.get("rung") else ""
    print(f"trial {record['number']:>3}{rung} (budget {record['budget']}): {record['status']:<8} {key} "
          f"{record.get(key, math.nan):.4f}  {params}  ({record['seconds']:.1f} s)", flush=True)


# --- searches --------------------------------------------------------------------------------------------------------
class _Search:
    """Shared machinery: the runner, the bookkeeping of the best weights, edge warnings, the result."""

    edge = 0.1
    objective = _DEFAULT_OBJECTIVE
    _caller_name = None     # the function the user called, when it is not the class (successive_halving)
    _caller_depth = 0       # its extra frames between the user and run(), for the warnings' stacklevel

    def _caller(self):
        """The name warnings and errors give: the class's, or the function's that built the search."""
        return self._caller_name or type(self).__name__

    def run(self, train_fn, data=None, *, budget=1, executor="process", n_workers=None, threads_per_trial=None,
            checkpoint_dir=None, progress=False, mp_context=None):
        """Run the search.

        Args:
            train_fn (callable): ``train_fn(params, data, budget, seed) -> dict`` (at least the objective's key,
                "val_acc" by default; optional "val_loss", "epochs", "history", "state_dict", "status"). A trial
                without the objective's key is an "error" naming it; one whose value is not finite is "diverged".
            data: passed to every trial (shipped once per worker). Default None.
            budget (int): epochs (or any budget unit of ``train_fn``) per trial; stages of :class:`CoarseToFine`
                carry their own. Default 1.
            executor: "process" (default: a local process pool), None or "serial" (in this process), a
                :class:`distributed.Client`, or any object with ``submit(fn, *args)``.
            n_workers (int or None): process-pool workers. Default None (one per available core).
            threads_per_trial (int or None): threads per trial. Default None (cores // workers on the pool; 1 on
                Dask; the current setting in-process). Results are bit-identical across executors for the same
                thread count (BLAS sums in another order with another count): set it when comparing executors.
            checkpoint_dir (str or None): when given, the best weights are saved there
                (:meth:`SearchResult.save_best`). Default None.
            progress (bool or callable): print one line per finished trial (True), or call ``progress(record)``.
                Default False.
            mp_context: multiprocessing context for the pool. Default None.

        Raises:
            ValueError: ``train_fn`` is a :class:`~cynet.tune.CrossValidatedTrial` whose ``objective`` is another key
                than the search's (checked before any trial runs).

        Returns:
            SearchResult: every trial, best first (by the search's ``objective``).
        """
        owner = self._caller_name or f"{type(self).__name__}.run"   # successive_halving, not CoarseToFine.run
        if not callable(train_fn):
            raise TypeError(f"{owner}: train_fn must be callable, got {train_fn!r}")
        from cynet.tune.cv import CrossValidatedTrial

        # a cross-validated trial averaging another key than the search ranks by: a regression search by
        # "val_loss" over CrossValidatedTrial's default "val_acc" made every trial "diverged" (NaN mean accuracy)
        # with a finite val_loss and no error, and the search ended with no finished trial
        if isinstance(train_fn, CrossValidatedTrial) and train_fn.objective != self.objective.key:
            raise ValueError(f"{owner}: the CrossValidatedTrial averages {train_fn.objective!r} over its folds, but "
                             f"the search ranks by {self.objective.key!r}; pass "
                             f"CrossValidatedTrial(..., objective={self.objective.key!r})")
        budget = _check_budget(owner, "budget", budget)
        if threads_per_trial is not None:
            threads_per_trial = _check_int(owner, "threads_per_trial", threads_per_trial, 1)
        if n_workers is not None:
            n_workers = _check_int(owner, "n_workers", n_workers, 1)
        self._best = None                   # (sort key, state_dict)
        runner = make_runner(executor, train_fn, data, n_workers=n_workers, threads_per_trial=threads_per_trial,
                             mp_context=mp_context, max_parallel=self._max_parallel(), objective=self.objective)
        if progress:
            runner.on_result = progress if callable(progress) else \
                (lambda record, key=self.objective.key: _print_progress(record, key))
        try:
            records, spaces = self._search(runner, budget)
        finally:
            runner.close()
        result = SearchResult(records, self.space, self._best[1] if self._best else None, spaces, self.objective)
        try:
            best = result.best_params
        except RuntimeError:
            best = None
        if best is not None:
            # judged against the ranges the user gave: coarse-to-fine narrows around the best trials, so a best
            # value at the edge of a narrowed range is expected and says nothing about the ranges searched
            for message in edge_report(self.space, best, self.edge):
                warnings.warn(f"{self._caller()}: best {message}", UserWarning, stacklevel=2 + self._caller_depth)
            if checkpoint_dir is not None and result.best_state_dict is not None:
                result.save_best(checkpoint_dir)
        return result

    def _run_batch(self, runner, specs):
        """Run specs, keep only the best-so-far trial's weights (the others are dropped to save memory): None when
        the best trial returned none, even if a worse one did."""
        records = runner.run(specs)
        for record in records:
            state = record.pop("state_dict", None)
            if self.objective.finished(record):
                key = _sort_key(record, self.objective)
                if self._best is None or key < self._best[0]:
                    self._best = (key, state)
        return records

    def _max_parallel(self):
        return self.n_trials

    @staticmethod
    def _spec(number, params, budget, seed, stage=0, rung=0):
        return {"number": number, "stage": stage, "rung": rung, "params": params, "budget": budget, "seed": seed}


class RandomSearch(_Search):
    """Random search (the default and the lecture's recommendation): ``n_trials`` independent draws.

    Trial ``i`` draws its hyperparameters from its own child of ``SeedSequence(seed)`` and trains with
    :func:`trial_seed` ``(seed, i)``, so the first ``k`` trials of a longer search are the same trials.

    Args:
        space (dict): ``{name: distribution or constant}`` (:func:`loguniform`, :func:`uniform`, :func:`choice`,
            :func:`randint`).
        n_trials (int): number of configurations. Default 16.
        seed (int): the search's seed. Default 0.
        edge (float): warn when the best value lies within this fraction of an end of its range, in [0, 0.5)
            (0: never). Default 0.1.
        objective (str or Objective): what trials are ranked by, a key of ``train_fn``'s dict (see
            :class:`~cynet.tune.Objective`). Default "val_acc" (maximised); "val_loss" is minimised.
        mode (str or None): "max" or "min"; required for a key other than "val_acc" and "val_loss". Default None.

    Raises:
        ValueError: ``n_trials`` < 1, a negative ``seed``, ``edge`` outside [0, 0.5), an unknown ``mode`` or a key
        other than "val_acc"/"val_loss" without one.
        TypeError: ``objective`` is neither a str nor an :class:`~cynet.tune.Objective`.

    Example:
        >>> from cynet.tune import RandomSearch, loguniform, uniform
        >>> search = RandomSearch({"lr": loguniform(1e-4, 1e-1), "reg": loguniform(1e-5, 1e-1)}, n_trials=20)
        >>> configs = search.configurations()
        >>> len(configs)
        20
        >>> RandomSearch({"lr": loguniform(1e-4, 1e-1)}, objective="val_loss").objective   # a regression model
        Objective('val_loss', mode='min')
    """

    def __init__(self, space, n_trials=16, seed=0, *, edge=0.1, objective="val_acc", mode=None):
        self.space = _check_space(space)
        self.n_trials = _check_int("RandomSearch", "n_trials", n_trials, 1)
        self.seed = _check_int("RandomSearch", "seed", seed, 0)
        self.edge = _check_fraction("RandomSearch", "edge", edge, 0.5)
        self.objective = as_objective("RandomSearch", objective, mode)

    def configurations(self):
        """The hyperparameter draws of every trial, in trial order (no training).

        Returns:
            list of dict: one configuration per trial.
        """
        return [sample_space(self.space, _param_rng(self.seed, i)) for i in range(self.n_trials)]

    def _search(self, runner, budget):
        specs = [self._spec(i, params, budget, trial_seed(self.seed, i))
                 for i, params in enumerate(self.configurations())]
        return self._run_batch(runner, specs), [self.space]


class GridSearch(_Search):
    """Grid search, for comparison with :class:`RandomSearch`: every combination of ``points`` values per dimension.

    Numeric ranges get ``points`` evenly spaced values (log-spaced for :func:`loguniform`), a :func:`choice` all
    its options. With one important hyperparameter among several, a grid of ``k**d`` trials tries only ``k``
    distinct values of it; a random search of the same size tries ``k**d``.

    Args:
        space (dict): the search space.
        points (int or dict): values per numeric dimension (``{name: n}`` per dimension). Default 3.
        seed (int): seeds the trials' training (:func:`trial_seed`). Default 0.
        edge (float): edge-warning threshold in [0, 0.5), as for :class:`RandomSearch` (a grid always reaches both
            ends of a range, so the warning says that the best grid point is an end point). Default 0.1.
        objective (str or Objective): what trials are ranked by, a key of ``train_fn``'s dict (see
            :class:`~cynet.tune.Objective`). Default "val_acc" (maximised); "val_loss" is minimised.
        mode (str or None): "max" or "min"; required for a key other than "val_acc" and "val_loss". Default None.

    Raises:
        ValueError: bad ``points``, a negative ``seed``, ``edge`` outside [0, 0.5), a bad ``objective``/``mode``
        (as for :class:`RandomSearch`).

    Example:
        >>> from cynet.tune import GridSearch, loguniform
        >>> len(GridSearch({"lr": loguniform(1e-4, 1e-1), "reg": loguniform(1e-5, 1e-1)}, points=3).configurations())
        9
    """

    def __init__(self, space, points=3, seed=0, *, edge=0.1, objective="val_acc", mode=None):
        self.space = _check_space(space)
        self.points = points
        grid_points(space, points)      # validates
        self.seed = _check_int("GridSearch", "seed", seed, 0)
        self.edge = _check_fraction("GridSearch", "edge", edge, 0.5)
        self.objective = as_objective("GridSearch", objective, mode)

    def _max_parallel(self):
        return len(self.configurations())

    def configurations(self):
        """Every grid point, in :func:`itertools.product` order of the space's keys.

        Returns:
            list of dict: the configurations.
        """
        values = grid_points(self.space, self.points)
        names = list(values)
        return [dict(zip(names, combo)) for combo in itertools.product(*(values[n] for n in names))]

    def _search(self, runner, budget):
        specs = [self._spec(i, params, budget, trial_seed(self.seed, i))
                 for i, params in enumerate(self.configurations())]
        return self._run_batch(runner, specs), [self.space]


@dataclass
class Stage:
    """One stage of :class:`CoarseToFine`.

    Args:
        n_trials (int): configurations sampled in this stage.
        budget_epochs (int): epochs (budget) per trial (the first rung's under successive halving).
        keep (int): how many of the stage's best trials define the next stage's narrowed ranges. Default 3.
        eta (int or None): successive halving inside the stage: after each rung keep the top ``1/eta`` and give
            them ``eta`` times the budget, until one is left or ``max_rungs`` rungs ran. Default None (off).
        max_rungs (int or None): limit on the rungs of successive halving. Default None.

    Example:
        >>> from cynet.tune import Stage
        >>> coarse, fine = Stage(20, budget_epochs=1, keep=4), Stage(8, budget_epochs=3, eta=2)
    """

    n_trials: int
    budget_epochs: int = 1
    keep: int = 3
    eta: int = None
    max_rungs: int = None

    def __post_init__(self):
        _check_int("Stage", "n_trials", self.n_trials, 1)
        _check_int("Stage", "keep", self.keep, 1)
        if self.eta is not None:
            _check_int("Stage", "eta", self.eta, 2)
        if self.max_rungs is not None:
            _check_int("Stage", "max_rungs", self.max_rungs, 1)
        self.budget_epochs = _check_budget("Stage", "budget_epochs", self.budget_epochs)


def _halving(search, runner, configs, budget, eta, max_rungs, stage, first_number, seed):
    """Successive halving over ``configs``; returns every rung's records. Trial numbers stay with configurations."""
    numbers = list(range(first_number, first_number + len(configs)))
    alive = list(zip(numbers, configs))
    records, rung = [], 0
    while alive:
        specs = [search._spec(n, p, budget * eta ** rung if eta else budget, trial_seed(seed, n), stage, rung)
                 for n, p in alive]
        batch = search._run_batch(runner, specs)
        records.extend(batch)
        if eta is None or len(alive) == 1 or (max_rungs is not None and rung + 1 >= max_rungs):
            break
        objective = search.objective        # the survivors are the best by it
        ranked = sorted((r for r in batch if objective.finished(r)), key=lambda r: _sort_key(r, objective))
        n_keep = max(1, len(alive) // eta)
        by_number = dict(alive)
        alive = [(r["number"], by_number[r["number"]]) for r in ranked[:n_keep]]
        rung += 1
    return records


class CoarseToFine(_Search):
    """Coarse-to-fine search: each stage samples from ranges narrowed around the previous stage's best trials.

    After each stage the ``keep`` best trials define the next space (:func:`narrow_space`: span of their values
    plus ``margin`` of the old width each side, log space for :func:`loguniform`, clipped to the old range; a
    :func:`choice` keeps the options they used). A ``UserWarning`` is issued when a stage's best value, or the
    search's, lies within ``edge`` of an end of its range in the initial ``space`` (:func:`edge_report`): the
    optimum may be outside the ranges searched. The narrowed ranges are not judged: they are centred on the best
    trials so far, and a best value near their edge is expected. A stage with ``eta`` runs successive halving
    (:func:`successive_halving`). "Best" follows ``objective``: with ``objective="val_loss"`` the ranges narrow
    around the lowest-loss trials.

    Args:
        space (dict): the initial (coarse) space.
        stages (list of Stage): the stages, coarse first.
        seed (int): the search's seed; trial numbers continue across stages. Default 0.
        margin (float): padding of the narrowed ranges, a fraction of the old width, >= 0. Default 0.1.
        edge (float): edge-warning threshold, a fraction of the initial range, in [0, 0.5). Default 0.1.
        objective (str or Objective): what trials are ranked by, a key of ``train_fn``'s dict (see
            :class:`~cynet.tune.Objective`). Default "val_acc" (maximised); "val_loss" is minimised.
        mode (str or None): "max" or "min"; required for a key other than "val_acc" and "val_loss". Default None.

    Raises:
        TypeError: ``stages`` is not a non-empty list of :class:`Stage`; ``objective`` neither a str nor an
        :class:`~cynet.tune.Objective`.
        ValueError: a negative ``seed`` or ``margin``, ``edge`` outside [0, 0.5), a bad ``objective``/``mode``
        (checked here, before any trial runs).

    Attributes (after :meth:`run`):
        stage_spaces (list of dict): the space of each stage (also on the result).

    Example:
        >>> from cynet.tune import CoarseToFine, Stage, loguniform
        >>> search = CoarseToFine({"lr": loguniform(1e-5, 1e0)},
        ...                       stages=[Stage(16, budget_epochs=1, keep=4), Stage(8, budget_epochs=4, eta=2)])
    """

    def __init__(self, space, stages, seed=0, *, margin=0.1, edge=0.1, objective="val_acc", mode=None):
        self.space = _check_space(space)
        if isinstance(stages, Stage) or not isinstance(stages, (list, tuple)):
            raise TypeError(f"CoarseToFine: stages must be a non-empty list of Stage, got {stages!r}"
                            + ("; pass [stage]" if isinstance(stages, Stage) else ""))
        stages = list(stages)
        if not stages or not all(isinstance(s, Stage) for s in stages):
            raise TypeError("CoarseToFine: stages must be a non-empty list of Stage")
        self.stages = stages
        self.seed = _check_int("CoarseToFine", "seed", seed, 0)
        # checked here, not when the first stage has trained and narrow_space meets it
        self.margin = _check_fraction("CoarseToFine", "margin", margin)
        self.edge = _check_fraction("CoarseToFine", "edge", edge, 0.5)
        self.objective = as_objective("CoarseToFine", objective, mode)
        self.stage_spaces = []

    def _max_parallel(self):
        return max(stage.n_trials for stage in self.stages)

    def _search(self, runner, budget):
        space, records, number = self.space, [], 0
        self.stage_spaces = []
        for index, stage in enumerate(self.stages):
            self.stage_spaces.append(space)
            configs = [sample_space(space, _param_rng(self.seed, number + i)) for i in range(stage.n_trials)]
            stage_records = _halving(self, runner, configs, stage.budget_epochs, stage.eta, stage.max_rungs, index,
                                     number, self.seed)
            records.extend(stage_records)
            number += stage.n_trials
            ranked = [r for r in sorted(stage_records, key=lambda r: _stage_key(r, self.objective))
                      if self.objective.finished(r)]
            last = index + 1 == len(self.stages)
            if not ranked:
                what = f"stage {index}" if len(self.stages) > 1 else "the search"
                warnings.warn(f"{self._caller()}: no trial of {what} finished"
                              + ("" if last else "; the next stage keeps its ranges"), UserWarning,
                              stacklevel=3 + self._caller_depth)
                continue
            if not last:
                for message in edge_report(self.space, ranked[0]["params"], self.edge):
                    warnings.warn(f"{self._caller()} stage {index}: best {message}", UserWarning,
                                  stacklevel=3 + self._caller_depth)
                kept, seen = [], set()
                for r in ranked:
                    if r["number"] not in seen:
                        seen.add(r["number"])
                        kept.append(r["params"])
                space = narrow_space(space, kept[:stage.keep], self.margin)
        return records, list(self.stage_spaces)


def successive_halving(train_fn, data=None, space=None, *, n_trials=27, min_budget=1, eta=3, max_rungs=None,
                       seed=0, executor="process", n_workers=None, threads_per_trial=None, checkpoint_dir=None,
                       progress=False, mp_context=None, objective="val_acc", mode=None):
    """Successive halving: ``n_trials`` random configurations at ``min_budget``; keep the top ``1/eta`` (by
    ``objective``: the highest "val_acc" by default, the lowest "val_loss" with ``objective="val_loss"``), give
    them ``eta`` times the budget; repeat until one configuration is left (or ``max_rungs`` rungs ran).

    Args:
        train_fn (callable): ``train_fn(params, data, budget, seed) -> dict``.
        data: passed to every trial. Default None.
        space (dict): the search space (required).
        n_trials (int): configurations in the first rung. Default 27.
        min_budget (int): budget (epochs) of the first rung. Default 1.
        eta (int): reduction factor, >= 2. Default 3.
        max_rungs (int or None): limit on the rungs. Default None.
        seed (int): the search's seed. Default 0.
        executor, n_workers, threads_per_trial, checkpoint_dir, progress, mp_context: as for
            :meth:`RandomSearch.run`.
        objective (str or Objective), mode (str or None): what the survivors and the best are chosen by, as for
            :class:`RandomSearch`. Default "val_acc" (maximised).

    Returns:
        SearchResult: every rung's records (a surviving configuration keeps its trial number and seed; "rung" says
        which budget it had).

    Raises:
        ValueError: no ``space``; ``n_trials`` < 1, ``eta`` < 2, ``max_rungs`` < 1, ``min_budget`` <= 0, a
        negative ``seed``, a bad ``objective``/``mode``. TypeError: ``train_fn`` is not callable.

    Example:
        >>> from cynet.tune import successive_halving, loguniform
        >>> result = successive_halving(lambda p, d, b, s: {"val_acc": b / (1 + abs(p["lr"] - 0.01))}, None,
        ...                             {"lr": loguniform(1e-4, 1e-1)}, n_trials=9, eta=3, executor=None)
        >>> sorted({t["budget"] for t in result.trials})
        [1, 3, 9]
    """
    if space is None:
        raise ValueError("successive_halving: space is required")
    if not callable(train_fn):
        raise TypeError(f"successive_halving: train_fn must be callable, got {train_fn!r}")
    # checked under this function's name (Stage and CoarseToFine would name themselves, which the caller never saw)
    n_trials = _check_int("successive_halving", "n_trials", n_trials, 1)
    eta = _check_int("successive_halving", "eta", eta, 2)
    if max_rungs is not None:
        max_rungs = _check_int("successive_halving", "max_rungs", max_rungs, 1)
    min_budget = _check_budget("successive_halving", "min_budget", min_budget)
    seed = _check_int("successive_halving", "seed", seed, 0)
    objective = as_objective("successive_halving", objective, mode)
    search = CoarseToFine(space, [Stage(n_trials, budget_epochs=min_budget, keep=1, eta=eta, max_rungs=max_rungs)],
                          seed=seed, objective=objective)
    search._caller_name, search._caller_depth = "successive_halving", 1
    return search.run(train_fn, data, executor=executor, n_workers=n_workers, threads_per_trial=threads_per_trial,
                      checkpoint_dir=checkpoint_dir, progress=progress, mp_context=mp_context)

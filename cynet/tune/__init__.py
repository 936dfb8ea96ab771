"""Hyperparameter search, cross-validation and trial execution (local by default, Dask when asked).

- spaces: :func:`loguniform`, :func:`uniform`, :func:`choice`, :func:`randint`, :func:`lograndint`;
- searches: :class:`RandomSearch` (default), :class:`GridSearch`, :class:`CoarseToFine` with :class:`Stage`,
  :func:`successive_halving`; results in :class:`SearchResult`;
- trials: ``train_fn(params, data, budget, seed) -> dict`` or :func:`make_trainer_trial`;
- the objective: trials are ranked by ``objective="val_acc"`` (maximised, the default) or any other number
  ``train_fn`` returns: ``objective="val_loss"`` (minimised; a regression model has no accuracy), or a key with
  ``mode="min"``/``"max"`` (:class:`Objective`);
- validation: :func:`holdout_split`, :class:`KFold`, :class:`StratifiedKFold`, :func:`cross_validate`,
  :class:`CrossValidatedTrial`;
- executors: ``executor="process"`` (default), None/"serial", a :class:`distributed.Client`, any ``submit``-er.

Example:
    >>> from cynet.tune import RandomSearch, loguniform
    >>> search = RandomSearch({"lr": loguniform(1e-4, 1e-1), "reg": loguniform(1e-5, 1e-1)}, n_trials=16, seed=0)
    >>> result = search.run(trial, data, budget=2)            # doctest: +SKIP
    >>> result.best_params, result.to_csv("trials.csv")       # doctest: +SKIP
"""
from cynet.tune.space import (
    Choice, Distribution, LogRandInt, LogUniform, RandInt, Uniform, choice, edge_report, grid_points, lograndint,
    loguniform, narrow_space, randint, sample_space, uniform,
)
from cynet.tune.search import (
    CoarseToFine, GridSearch, RandomSearch, SearchResult, Stage, TrainerTrial, make_trainer_trial,
    successive_halving, trial_seed,
)
from cynet.tune.cv import CrossValidatedTrial, KFold, StratifiedKFold, cross_validate, holdout_split
from cynet.tune.executors import execute_trial
from cynet.tune.objective import Objective

__all__ = [
    "Distribution", "LogUniform", "Uniform", "Choice", "RandInt", "LogRandInt", "loguniform", "uniform", "choice",
    "randint", "lograndint", "sample_space", "grid_points", "narrow_space", "edge_report",
    "RandomSearch", "GridSearch", "CoarseToFine", "Stage", "successive_halving", "SearchResult",
    "make_trainer_trial", "TrainerTrial", "trial_seed", "Objective",
    "KFold", "StratifiedKFold", "holdout_split", "cross_validate", "CrossValidatedTrial", "execute_trial",
]

"""Validation for hyperparameter search: a holdout split, k-fold and stratified k-fold cross-validation.

Preprocessing statistics belong to the training part of each split: :func:`cross_validate` builds a fresh
transform per fold with ``transform_factory()``, fits it on that fold's training rows only and applies it to both
parts, so no validation row ever leaks into a mean or a variance.

Example:
    >>> import numpy as np
    >>> from cynet.tune import KFold
    >>> [len(val) for _, val in KFold(3).split(np.zeros((10, 2)))]
    [4, 3, 3]
"""
import warnings

import numpy as np

from cynet._validation import is_real
from cynet.tune.executors import STATUSES
from cynet.tune.objective import Objective, as_objective
from cynet.tune.space import _check_int, _trial_params

__all__ = ["KFold", "StratifiedKFold", "holdout_split", "cross_validate", "CrossValidatedTrial"]


def _check_seed(owner, seed):
    """``seed`` as an int >= 0 (a 0-d integer array too); ValueError naming ``owner`` otherwise. None is refused: an
    unseeded split would change from run to run, and cynet.manual_seed would not control it."""
    if isinstance(seed, np.ndarray) and seed.ndim == 0 and seed.dtype.kind in "iu":
        seed = seed.item()
    return _check_int(owner, "seed", seed, 0)


def _class_labels(owner, y):
    """``y`` as a 1-D array of class labels to stratify by; ValueError naming ``owner`` otherwise.

    One-hot or soft labels (2-D) would be split by their columns (an IndexError or a wrong split), and NaN labels
    never compare equal to themselves, so ``y == label`` puts them in no class and no fold would ever validate them
    (in an object array, None and NaN alike).
    """
    y = np.asarray(y)
    if y.ndim != 1:
        hint = " (one-hot labels: pass y.argmax(axis=1))" if y.ndim == 2 else ""
        raise ValueError(f"{owner}: stratifying needs y as a 1-D array of integer class labels, one per example, got "
                         f"an array of shape {y.shape}{hint}")
    if y.dtype.kind in "fc":
        missing = int(np.count_nonzero(np.isnan(y)))
    elif y.dtype.kind == "O":
        # an object array (labels from a table with gaps) hides NaN from np.isnan, and np.unique cannot sort
        # around it: [0, 1, nan, 0, 1, ...] came back with 0 and 1 more than once, so a class's examples were dealt
        # into the folds twice (a fold holding an example twice) and the NaN examples were never validated
        missing = sum(_missing_label(label) for label in y)
    else:
        missing = 0
    if missing:
        what = "NaN labels" if y.dtype.kind in "fc" else "missing labels (None or NaN)"
        raise ValueError(f"{owner}: y holds {missing} {what} (of {len(y)}); stratifying needs a class label "
                         f"for every example (1-D integer class labels); drop or label those examples first")
    return y


def _missing_label(label):
    """Whether an element of an object array of labels is missing: None, or unequal to itself (NaN, pandas.NA)."""
    if label is None:
        return True
    try:
        return bool(label != label)
    except (TypeError, ValueError):      # pandas.NA: its truth value is ambiguous
        return True


class KFold:
    """K-fold cross-validation indices: each example is in exactly one validation fold.

    The first ``n % n_splits`` folds have one example more than the others (as scikit-learn's ``KFold``).

    Args:
        n_splits (int): number of folds, >= 2. Default 5.
        shuffle (bool): permute the examples before splitting. Default False.
        seed (int): seed of the permutation when shuffling. Default 0.

    Example:
        >>> import numpy as np
        >>> from cynet.tune import KFold
        >>> train, val = next(KFold(5, shuffle=True, seed=0).split(np.zeros((20, 3))))
        >>> len(train), len(val)
        (16, 4)
    """

    def __init__(self, n_splits=5, shuffle=False, seed=0):
        self.n_splits = _check_int(type(self).__name__, "n_splits", n_splits, 2)
        self.shuffle = bool(shuffle)
        self.seed = _check_seed(type(self).__name__, seed)

    def _order(self, n):
        return np.random.default_rng(self.seed).permutation(n) if self.shuffle else np.arange(n)

    def split(self, x, y=None):
        """Yield ``(train_indices, val_indices)`` for each fold (int64 arrays, sorted).

        Args:
            x (array_like): the data (only its length is used).
            y (array_like): ignored (accepted for symmetry with :class:`StratifiedKFold`). Default None.

        Yields:
            tuple: ``(train_indices, val_indices)``.
        """
        n = len(x)
        if n < self.n_splits:
            raise ValueError(f"{type(self).__name__}: cannot split {n} examples into {self.n_splits} folds")
        order = self._order(n)
        for val in np.array_split(order, self.n_splits):
            mask = np.ones(n, dtype=bool)
            mask[val] = False
            yield np.flatnonzero(mask), np.sort(val).astype(np.int64)

    def __repr__(self):
        return f"{type(self).__name__}(n_splits={self.n_splits}, shuffle={self.shuffle}, seed={self.seed})"


class StratifiedKFold(KFold):
    """K-fold split that keeps each class's proportion in every fold (within one example per class).

    Each class's examples (shuffled when ``shuffle``) are dealt into the folds in near-equal parts; the fold that
    gets a class's extra examples rotates from class to class, so the fold sizes also stay within one or two.

    Args:
        n_splits (int): number of folds, >= 2. Default 5.
        shuffle (bool): shuffle within each class first. Default False.
        seed (int): seed of the shuffle. Default 0.

    Example:
        >>> import numpy as np
        >>> from cynet.tune import StratifiedKFold
        >>> y = np.array([0] * 8 + [1] * 4)
        >>> [np.bincount(y[val]).tolist() for _, val in StratifiedKFold(4).split(y, y)]
        [[2, 1], [2, 1], [2, 1], [2, 1]]
    """

    def split(self, x, y=None):
        """Yield ``(train_indices, val_indices)`` for each fold, stratified by the labels ``y``.

        Args:
            x (array_like): the data (only its length is used).
            y (array_like): class labels, one per example (required): a 1-D array of integer labels (any labels
                that compare equal within a class do; NaN does not).

        Yields:
            tuple: ``(train_indices, val_indices)``.

        Raises:
            ValueError: no ``y``; ``y`` not 1-D (one-hot labels: pass ``y.argmax(axis=1)``) or holding NaN; ``x`` and
            ``y`` of different lengths; fewer examples than folds.

        Warns:
            UserWarning: a class with fewer examples than folds (some folds then validate without it).
        """
        if y is None:
            raise ValueError("StratifiedKFold.split: needs the labels y")
        y = _class_labels("StratifiedKFold.split", y)
        n = len(x)
        if len(y) != n:
            raise ValueError(f"StratifiedKFold.split: x and y lengths differ ({n} and {len(y)})")
        if n < self.n_splits:
            raise ValueError(f"StratifiedKFold: cannot split {n} examples into {self.n_splits} folds")
        labels, counts = np.unique(y, return_counts=True)
        if counts.min() < self.n_splits:          # (scikit-learn warns too): those classes are missing from some folds
            scarce = [f"{label!r} ({count})" for label, count in zip(labels.tolist(), counts.tolist())
                      if count < self.n_splits]
            warnings.warn(f"StratifiedKFold: {len(scarce)} class{'es have' if len(scarce) > 1 else ' has'} fewer "
                          f"examples than the {self.n_splits} folds: {', '.join(scarce[:5])}"
                          f"{', ...' if len(scarce) > 5 else ''}; some folds will not see them in validation",
                          UserWarning, stacklevel=2)
        rng = np.random.default_rng(self.seed)
        folds = [[] for _ in range(self.n_splits)]
        offset = 0
        for label in labels:
            members = np.flatnonzero(y == label)
            if self.shuffle:
                members = rng.permutation(members)
            parts = np.array_split(members, self.n_splits)      # the first len % k parts are one longer
            for i, part in enumerate(parts):
                folds[(i + offset) % self.n_splits].append(part)
            offset += len(members) % self.n_splits
        for parts in folds:
            val = np.sort(np.concatenate(parts)).astype(np.int64)
            mask = np.ones(n, dtype=bool)
            mask[val] = False
            yield np.flatnonzero(mask), val


def holdout_split(x, y, val_fraction=0.2, *, seed=0, stratify=True):
    """Split ``(x, y)`` once into a training and a validation part (the default validation of a search).

    Args:
        x (array_like): inputs, one example per row.
        y (array_like): labels; with ``stratify``, a 1-D array of integer class labels (no NaN).
        val_fraction (float): share of the examples held out, in (0, 1). Default 0.2.
        seed (int): seed of the random split. Default 0.
        stratify (bool): keep the class proportions in both parts. Default True.

    Returns:
        tuple: ``(x_train, y_train, x_val, y_val)``, the data format of :func:`cynet.tune.make_trainer_trial`.

    Raises:
        ValueError: ``x`` and ``y`` of different lengths, ``val_fraction`` outside (0, 1) or leaving an empty part,
        or (with ``stratify``) ``y`` not 1-D class labels (one-hot labels: pass ``y.argmax(axis=1)``) or holding NaN.

    Example:
        >>> import numpy as np
        >>> from cynet.tune import holdout_split
        >>> x_tr, y_tr, x_val, y_val = holdout_split(np.zeros((10, 2)), np.arange(10) % 2, 0.2)
        >>> len(x_tr), len(x_val)
        (8, 2)
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"holdout_split: x and y lengths differ ({len(x)} and {len(y)})")
    if not is_real(val_fraction) or not 0 < val_fraction < 1:   # ("0.2" or None: a bare "'<' not supported")
        raise ValueError(f"holdout_split: val_fraction must lie in (0, 1), got {val_fraction!r}")
    seed = _check_seed("holdout_split", seed)
    n = len(x)
    n_val = int(round(val_fraction * n))
    if not 0 < n_val < n:
        raise ValueError(f"holdout_split: {val_fraction} of {n} examples leaves an empty part")
    rng = np.random.default_rng(seed)
    if stratify:
        _class_labels("holdout_split", y)
        # take round(val_fraction * count) of each class, then fix the total by the largest remainders
        labels, counts = np.unique(y, return_counts=True)
        exact = val_fraction * counts
        take = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - take), kind="stable")[:n_val - take.sum()]:
            take[i] += 1
        val = np.concatenate([rng.permutation(np.flatnonzero(y == label))[:k] for label, k in zip(labels, take)])
    else:
        val = rng.permutation(n)[:n_val]
    val = np.sort(val)
    mask = np.ones(n, dtype=bool)
    mask[val] = False
    return x[mask], y[mask], x[val], y[val]


def _fold_seed(seed, fold):
    return int(np.random.SeedSequence(seed, spawn_key=(fold,)).generate_state(1)[0])


def _splitter(owner, cv, cv_seed):
    """The splitter ``cv`` stands for: None -> ``StratifiedKFold(5, shuffle=True, seed=cv_seed)``, an int k (the
    scikit-learn habit) -> ``StratifiedKFold(k, shuffle=True, seed=cv_seed)``, or an object with ``split(x, y)``."""
    if cv is None:
        return StratifiedKFold(5, shuffle=True, seed=cv_seed)
    if isinstance(cv, (int, np.integer)) and not isinstance(cv, (bool, np.bool_)):
        return StratifiedKFold(int(cv), shuffle=True, seed=cv_seed)
    if isinstance(cv, (str, bytes)) or not callable(getattr(cv, "split", None)):     # str.split is no splitter
        raise TypeError(f"{owner}: cv must be None, a number of folds or a splitter with split(x, y) (KFold, "
                        f"StratifiedKFold), got {cv!r}")
    return cv


def _objective_key(owner, objective):
    """The key ``objective`` (a str or an :class:`~cynet.tune.Objective`) averages over the folds."""
    if isinstance(objective, Objective):
        return objective.key
    if objective in ("val_acc", "val_loss"):
        return objective
    return as_objective(owner, objective, "max").key      # validates the key; the mode plays no part in a mean


def cross_validate(train_fn, params, x, y, *, cv=None, transform_factory=None, budget=1, seed=0, cv_seed=0,
                   objective="val_acc"):
    """Train and score one configuration on every fold; the mean of the objective (validation accuracy by
    default, "val_loss" for a regression model) is its score.

    For each fold: a fresh transform from ``transform_factory()`` is fitted on the fold's training rows only and
    applied to both parts; then ``train_fn(params, (x_train, y_train, x_val, y_val), budget, fold_seed)`` runs
    (on a deep copy of ``params`` per fold).

    The folds depend on ``cv`` (or ``cv_seed``) only, never on ``seed``: configurations cross-validated with
    different training seeds are scored on the same splits, so their scores can be compared.

    Args:
        train_fn (callable): a trial function (for example :func:`cynet.tune.make_trainer_trial`'s).
        params (dict): the configuration.
        x (array_like): all the (training) data; y (array_like): labels.
        cv: a splitter with ``split(x, y)`` (:class:`KFold`, :class:`StratifiedKFold`), or an int k for
            ``StratifiedKFold(k, shuffle=True, seed=cv_seed)`` (scikit-learn's ``cv=5``). Default None
            (``StratifiedKFold(5, shuffle=True, seed=cv_seed)``).
        transform_factory (callable): ``transform_factory() -> transform`` with ``fit`` and ``transform``
            (:class:`cynet.data.Standardize`, ...). Default None (no preprocessing).
        budget (int): passed to ``train_fn``. Default 1.
        seed (int): fold ``k`` trains with ``SeedSequence(seed).spawn(...)[k]``'s seed. Default 0.
        cv_seed (int): seed of the shuffle of the splitter made for ``cv`` None or an int (ignored when ``cv`` is a
            splitter). Default 0.
        objective (str or Objective): the key of ``train_fn``'s dict whose per-fold values are kept, averaged and
            spread ("<key>_folds", "<key>_std"); every fold must return it. Use the search's objective. Default
            "val_acc".

    Raises:
        TypeError: ``cv`` is neither None, an int nor an object with ``split``.
        ValueError: ``seed`` is not a non-negative int (None included: the fold seeds would change from run to run).
        KeyError: a fold's ``train_fn`` returned no value for the objective's key (the message names the key).

    Returns:
        dict: "val_acc" (mean over folds; NaN when a fold did not finish), "val_acc_folds" (each fold's accuracy),
        "val_acc_std" (their standard deviation, ``numpy.std``: divisor the number of folds; NaN when a fold did not
        finish), "val_loss", "epochs" (per fold), "status" (the worst fold's: "ok", "diverged" when a fold
        diverged, "error" when one reported an error). In a search, "val_acc_folds" and "val_acc_std" are kept in
        each trial's record and shown in the results table. With another objective, "<key>", "<key>_folds" and
        "<key>_std" are those of its key instead (NaN mean and std when a fold did not finish), and "val_acc" and
        "val_loss" are plain means over the folds that returned them (None when none did); a fold is "diverged"
        when its objective value or its "val_loss" is not finite (a NaN accuracy of a regression model is not).

    Example:
        >>> from cynet.tune import cross_validate, KFold
        >>> scores = cross_validate(trial, {"lr": 1e-2}, x, y, cv=KFold(5, shuffle=True))  # doctest: +SKIP
    """
    # (seed=None drew the fold seeds from fresh OS entropy, other ones at every call, silently; -1 raised NumPy's
    # bare "expected non-negative integer", and True trained with the seed 1)
    seed = _check_seed("cross_validate", seed)
    key = _objective_key("cross_validate", objective)
    x, y = np.asarray(x), np.asarray(y)
    cv = _splitter("cross_validate", cv, cv_seed)
    scores, epochs, status = [], [], "ok"
    others = {name: [] for name in ("val_acc", "val_loss") if name != key}     # optional: means of what folds give
    for fold, (train, val) in enumerate(cv.split(x, y)):
        x_train, x_val = x[train], x[val]
        if transform_factory is not None:
            transform = transform_factory()
            transform.fit(x_train)
            x_train, x_val = transform.transform(x_train), transform.transform(x_val)
        out = train_fn(_trial_params(params), (x_train, y[train], x_val, y[val]), budget, _fold_seed(seed, fold))
        if not isinstance(out, dict) or out.get(key) is None:
            raise KeyError(f"cross_validate: train_fn returned no {key!r} (the objective) for fold {fold}; got "
                           f"{out!r:.200}")
        scores.append(float(out[key]))
        for name, values in others.items():
            if out.get(name) is not None:                              # None as absent
                values.append(float(out[name]))
        epochs.append(out.get("epochs", budget))
        fold_status = out.get("status", "ok")
        if fold_status not in STATUSES:
            raise ValueError(f"cross_validate: train_fn returned status {fold_status!r} for fold {fold}; expected one "
                             f"of {STATUSES}")
        val_loss = out.get("val_loss")
        if fold_status == "ok" and (not np.isfinite(scores[-1]) or (val_loss is not None
                                                                   and not np.isfinite(float(val_loss)))):
            fold_status = "diverged"
        status = max(status, fold_status, key=STATUSES.index)    # the worst fold's ("error" was called "diverged")
    finished = status == "ok"
    result = {key: float(np.mean(scores)) if finished else float("nan"), f"{key}_folds": scores,
              f"{key}_std": float(np.std(scores)) if finished else float("nan")}
    result.update({name: float(np.mean(values)) if values else None for name, values in others.items()})
    result.update(epochs=epochs, status=status)
    return result


class CrossValidatedTrial:
    """Turn a trial function on a holdout split into one scored by cross-validation (usable in any search).

    The search's ``data`` is then ``(x, y)``; each trial runs :func:`cross_validate` with the trial's seed for
    training. The folds do not depend on the trial's seed: every trial of a search (and every search with the same
    ``cv`` or ``cv_seed``) is scored on the same splits, so the ranking compares configurations, not splits.

    Args:
        train_fn (callable): ``train_fn(params, (x_train, y_train, x_val, y_val), budget, seed) -> dict``.
        cv: the splitter, or an int k for ``StratifiedKFold(k, shuffle=True, seed=cv_seed)``. Default None
            (``StratifiedKFold(5, shuffle=True, seed=cv_seed)``).
        transform_factory (callable): preprocessing fitted inside each fold. Default None.
        cv_seed (int): seed of the shuffle of the splitter made for ``cv`` None or an int, the same for every trial
            (ignored when ``cv`` is a splitter). Default 0.
        objective (str or Objective): the key averaged over the folds, with its per-fold values and spread
            (:func:`cross_validate`); pass the search's objective (a regression model: "val_loss"). Default
            "val_acc".

    Example:
        >>> from cynet.data import Standardize
        >>> from cynet.tune import CrossValidatedTrial, KFold, RandomSearch
        >>> cv_trial = CrossValidatedTrial(trial, KFold(3, True), transform_factory=Standardize)  # doctest: +SKIP
        >>> RandomSearch(space, 8).run(cv_trial, (x, y))                                       # doctest: +SKIP
    """

    def __init__(self, train_fn, cv=None, transform_factory=None, cv_seed=0, *, objective="val_acc"):
        if not callable(train_fn):
            raise TypeError(f"CrossValidatedTrial: train_fn must be callable, got {train_fn!r}")
        self.objective = _objective_key("CrossValidatedTrial", objective)
        # checked here, not in every trial of a search (ignored when cv is a splitter)
        self.cv_seed = _check_seed("CrossValidatedTrial", cv_seed) if cv is None or isinstance(
            cv, (int, np.integer)) else cv_seed
        self.train_fn, self.transform_factory = train_fn, transform_factory
        self.cv = _splitter("CrossValidatedTrial", cv, self.cv_seed)

    def __call__(self, params, data, budget, seed):
        x, y = data
        return cross_validate(self.train_fn, params, x, y, cv=self.cv, transform_factory=self.transform_factory,
                              budget=budget, seed=seed, cv_seed=self.cv_seed, objective=self.objective)

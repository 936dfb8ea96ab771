"""Validation splits (cynet.tune.cv): KFold / StratifiedKFold partition the data and keep class proportions, the
holdout split is stratified, and preprocessing is fitted inside each fold on that fold's training rows only."""
import csv
import math
import warnings

import numpy as np
import pytest

from cynet.data import Standardize
from cynet.tune.executors import execute_trial
from cynet.tune import CrossValidatedTrial, KFold, RandomSearch, StratifiedKFold, cross_validate, holdout_split, \
    loguniform


def check_partition(splits, n):
    vals = [val for _, val in splits]
    all_val = np.sort(np.concatenate(vals))
    np.testing.assert_array_equal(all_val, np.arange(n))           # every example validated exactly once
    for train, val in splits:
        assert np.intersect1d(train, val).size == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n))


@pytest.mark.parametrize("n,k", [(10, 3), (12, 4), (7, 7), (101, 5)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_kfold_partitions(n, k, shuffle):
    splits = list(KFold(k, shuffle=shuffle, seed=1).split(np.zeros((n, 2))))
    assert len(splits) == k
    check_partition(splits, n)
    sizes = [len(val) for _, val in splits]
    assert sizes == [n // k + 1] * (n % k) + [n // k] * (k - n % k)   # scikit-learn's fold sizes


def test_kfold_without_shuffle_is_contiguous_and_shuffle_is_seeded():
    assert [v.tolist() for _, v in KFold(3).split(range(7))] == [[0, 1, 2], [3, 4], [5, 6]]
    a = [v.tolist() for _, v in KFold(3, shuffle=True, seed=5).split(range(30))]
    b = [v.tolist() for _, v in KFold(3, shuffle=True, seed=5).split(range(30))]
    c = [v.tolist() for _, v in KFold(3, shuffle=True, seed=6).split(range(30))]
    assert a == b != c


def test_kfold_rejects_bad_arguments():
    with pytest.raises(ValueError):
        KFold(1)
    with pytest.raises(ValueError, match="cannot split"):
        list(KFold(5).split(range(3)))
    with pytest.raises(ValueError, match="labels"):
        list(StratifiedKFold(2).split(range(4)))


@pytest.mark.parametrize("shuffle", [False, True])
def test_stratified_kfold_keeps_class_proportions(shuffle):
    rng = np.random.default_rng(0)
    y = rng.permutation(np.repeat([0, 1, 2, 3], [50, 30, 17, 3]))
    k = 5
    with pytest.warns(UserWarning, match=r"1 class has fewer examples than the 5 folds: 3 \(3\)"):
        splits = list(StratifiedKFold(k, shuffle=shuffle, seed=3).split(y, y))
    check_partition(splits, len(y))
    counts = np.bincount(y, minlength=4)
    for _, val in splits:
        fold_counts = np.bincount(y[val], minlength=4)
        assert np.all(np.abs(fold_counts - counts / k) < 1), fold_counts    # each class within one example
    sizes = [len(val) for _, val in splits]
    assert max(sizes) - min(sizes) <= 1


def test_holdout_split_is_stratified_and_disjoint():
    x = np.arange(200)[:, None]
    y = np.repeat([0, 1, 2], [100, 60, 40])
    x_tr, y_tr, x_val, y_val = holdout_split(x, y, 0.25, seed=0)
    assert len(x_val) == 50 and len(x_tr) == 150
    assert np.bincount(y_val).tolist() == [25, 15, 10]
    assert np.intersect1d(x_tr[:, 0], x_val[:, 0]).size == 0
    np.testing.assert_array_equal(y[x_val[:, 0]], y_val)          # rows and labels stay together
    plain = holdout_split(x, y, 0.25, seed=0, stratify=False)
    assert len(plain[2]) == 50


class RecordingStandardize(Standardize):
    """A real Standardize that also records the row ids (column 0 of the raw data) of every fit."""

    fits = []

    def fit(self, x, **kwargs):
        RecordingStandardize.fits.append(set(np.asarray(x)[:, 0].astype(int).tolist()))
        return super().fit(x, **kwargs)


def recording_fn(params, data, budget, seed):
    x_tr, y_tr, x_val, y_val = data
    return {"val_acc": float(np.mean(x_val[:, 1])), "val_loss": float(len(x_val)), "epochs": budget,
            "x_train_mean": x_tr.mean(axis=0)}


def test_transform_is_fitted_on_each_folds_training_rows_only():
    rng = np.random.default_rng(0)
    n = 60
    x = np.column_stack([np.arange(n), rng.normal(5.0, 3.0, size=n)]).astype(np.float64)
    y = np.arange(n) % 3
    RecordingStandardize.fits = []
    cv = StratifiedKFold(4, shuffle=True, seed=2)
    out = cross_validate(recording_fn, {}, x, y, cv=cv, transform_factory=RecordingStandardize, budget=2, seed=0)
    splits = list(cv.split(x, y))
    assert len(RecordingStandardize.fits) == 4                    # one fresh transform per fold
    for fitted_rows, (train, val) in zip(RecordingStandardize.fits, splits):
        assert fitted_rows == set(train.tolist())
        assert fitted_rows.isdisjoint(val.tolist())               # never saw a validation row
    # the oracle: validation rows standardised with the training rows' statistics
    expected = []
    for train, val in splits:
        mu, sd = x[train, 1].mean(), x[train, 1].std()
        expected.append(np.mean((x[val, 1] - mu) / (sd + 1e-8)))
    np.testing.assert_allclose(out["val_acc_folds"], expected, rtol=1e-5, atol=1e-6)
    assert out["val_acc"] == pytest.approx(np.mean(out["val_acc_folds"]))
    assert out["epochs"] == [2, 2, 2, 2] and out["status"] == "ok"


def fold_seed_fn(params, data, budget, seed):
    return {"val_acc": float(seed % 1000) / 1000}


def test_cross_validated_trial_in_a_search_uses_fold_seeds():
    x = np.zeros((30, 2))
    y = np.arange(30) % 2
    trial = CrossValidatedTrial(fold_seed_fn, KFold(3))
    result = RandomSearch({"lr": loguniform(1e-3, 1e-1)}, n_trials=2, seed=0, edge=0).run(trial, (x, y),
                                                                                          executor=None)
    for t in result.trials:
        seeds = [int(np.random.SeedSequence(t["seed"], spawn_key=(k,)).generate_state(1)[0]) for k in range(3)]
        assert t["val_acc"] == pytest.approx(np.mean([s % 1000 for s in seeds]) / 1000)


def test_cross_validated_search_with_preprocessing_on_the_process_pool():
    from test_tune import make_problem, mlp_trial

    x_tr, y_tr, x_val, y_val = make_problem()
    x = np.concatenate([x_tr, x_val]) * 50 + 7         # badly scaled: the fold-fitted Standardize undoes it
    y = np.concatenate([y_tr, y_val])
    trial = CrossValidatedTrial(mlp_trial(), StratifiedKFold(3, shuffle=True, seed=0), transform_factory=Standardize)
    space = {"lr": loguniform(1e-2, 1.0)}
    serial = RandomSearch(space, n_trials=3, seed=0, edge=0).run(trial, (x, y), executor=None, threads_per_trial=1)
    pooled = RandomSearch(space, n_trials=3, seed=0, edge=0).run(trial, (x, y), executor="process", n_workers=2,
                                                                 threads_per_trial=1)
    assert [(t["number"], t["val_acc"]) for t in serial.trials] == [(t["number"], t["val_acc"]) for t in pooled.trials]
    assert all(t["status"] == "ok" and t["epochs"] == [1, 1, 1] for t in serial.trials)
    assert serial.best_val_acc > 0.6                    # chance is 1/3


FOLDS_SEEN = []      # (training seed, validation row ids) of every fold a trial trained, in order (serial runs)


def fold_recording_fn(params, data, budget, seed):
    x_tr, y_tr, x_val, y_val = data
    FOLDS_SEEN.append((seed, tuple(x_val[:, 0].astype(int).tolist())))
    return {"val_acc": params["lr"]}


def test_every_trial_of_a_search_is_scored_on_the_same_folds():
    x = np.column_stack([np.arange(40), np.zeros(40)])
    y = np.arange(40) % 3
    FOLDS_SEEN.clear()
    RandomSearch({"lr": loguniform(1e-3, 1e-1)}, n_trials=3, seed=0, edge=0).run(CrossValidatedTrial(fold_recording_fn),
                                                                                (x, y), executor=None)
    per_trial = [FOLDS_SEEN[5 * t:5 * t + 5] for t in range(3)]          # the default splitter has 5 folds
    assert len(FOLDS_SEEN) == 15
    training_seeds = [tuple(seed for seed, _ in folds) for folds in per_trial]
    assert len(set(training_seeds)) == 3                                  # the trials train with their own seeds ...
    folds = [[rows for _, rows in trial] for trial in per_trial]
    oracle = [tuple(val.tolist()) for _, val in StratifiedKFold(5, shuffle=True, seed=0).split(x, y)]
    assert folds == [oracle] * 3                                          # ... on the same (shuffled) splits

    FOLDS_SEEN.clear()
    cross_validate(fold_recording_fn, {"lr": 0.1}, x, y, seed=1, cv_seed=7)
    other_splits = [tuple(val.tolist()) for _, val in StratifiedKFold(5, shuffle=True, seed=7).split(x, y)]
    assert [rows for _, rows in FOLDS_SEEN] == other_splits != oracle      # cv_seed picks the splits


def _stratified_kfold_folds(x, y):
    return [val for _, val in StratifiedKFold(3).split(x, y)]


def _holdout_rows(x, y):
    return [holdout_split(x, y, 0.2)[2]]


@pytest.mark.parametrize("split,name", [(_stratified_kfold_folds, "StratifiedKFold.split"),
                                        (_holdout_rows, "holdout_split")], ids=["stratified-kfold", "holdout"])
def test_stratified_splits_want_one_class_label_per_example(split, name):
    """One-hot labels raised a bare IndexError; NaN labels were put in no class, so those examples were never
    validated (10 of 30 here)."""
    x = np.arange(30)[:, None]
    with pytest.raises(ValueError, match=rf"{name}: .*1-D array of integer class labels.*one-hot labels: pass "
                                         rf"y\.argmax\(axis=1\)"):
        split(x, np.eye(3)[np.arange(30) % 3])
    with pytest.raises(ValueError, match=rf"{name}: y holds 10 NaN labels"):
        split(x, np.array([0.0, 1.0, np.nan] * 10))
    # float labels without NaN are classes like any others: the same split as their integer twins
    y = np.arange(30) % 3
    for got, want in zip(split(x, y.astype(np.float64)), split(x, y)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("split,name", [(_stratified_kfold_folds, "StratifiedKFold.split"),
                                        (_holdout_rows, "holdout_split")], ids=["stratified-kfold", "holdout"])
def test_stratified_splits_refuse_missing_labels_in_an_object_array(split, name):
    """np.isnan never saw the NaN of an object array, and np.unique cannot sort around it ([0 1 nan 0 1 nan 1]):
    StratifiedKFold dealt each class into the folds several times (a validation fold held examples twice) and
    never validated the NaN examples."""
    x = np.arange(30)[:, None]
    for gap in (np.nan, None):
        y = np.array([0, 1, gap] * 10, dtype=object)
        with pytest.raises(ValueError, match=rf"{name}: y holds 10 missing labels \(None or NaN\)"):
            split(x, y)
    # an object array without gaps is split as its integer twin: every example validated exactly once
    y = np.arange(30) % 3
    for got, want in zip(split(x, y.astype(object)), split(x, y)):
        np.testing.assert_array_equal(got, want)
    check_partition(list(StratifiedKFold(3).split(x, y.astype(object))), 30)


def test_unstratified_holdout_still_takes_any_labels():
    x, y = np.arange(30)[:, None], np.eye(3)[np.arange(30) % 3]
    x_tr, y_tr, x_val, y_val = holdout_split(x, y, 0.2, stratify=False)
    assert y_val.shape == (6, 3)
    np.testing.assert_array_equal(y[x_val[:, 0]], y_val)


def test_a_cross_validated_search_keeps_every_folds_accuracy(tmp_path):
    """The fold accuracies (and their spread) reach the trial records, the table and the CSV; the oracle is
    cross_validate called directly with the trial's seed."""
    x = np.random.default_rng(0).normal(size=(30, 2))
    y = np.arange(30) % 2
    trial = CrossValidatedTrial(fold_seed_fn, KFold(3))
    result = RandomSearch({"lr": loguniform(1e-3, 1e-1)}, n_trials=3, seed=0, edge=0).run(trial, (x, y),
                                                                                          executor=None)
    for t in result.trials:
        direct = cross_validate(fold_seed_fn, t["params"], x, y, cv=KFold(3), seed=t["seed"])
        assert t["val_acc_folds"] == direct["val_acc_folds"] and len(t["val_acc_folds"]) == 3
        assert t["val_acc_std"] == pytest.approx(np.std(direct["val_acc_folds"]), abs=1e-15)
        assert t["val_acc"] == pytest.approx(np.mean(t["val_acc_folds"]), abs=1e-15)
    rows = result.table()
    assert list(rows[0])[:8] == ["rank", "number", "stage", "rung", "status", "val_acc", "val_acc_std",
                                 "val_acc_folds"]
    assert [r["val_acc_folds"] for r in rows] == [t["val_acc_folds"] for t in result.trials]
    with open(result.to_csv(tmp_path / "trials.csv")) as f:
        read = list(csv.DictReader(f))
    assert [float(r["val_acc_std"]) for r in read] == [t["val_acc_std"] for t in result.trials]
    assert "val_acc_folds" in str(result)


@pytest.mark.parametrize("bad", [None, -1, 1.5, "a", True])
def test_splitters_refuse_a_seed_that_is_not_an_int_at_construction(bad):
    """seed=None gave an unseeded shuffle that manual_seed did not control (two identical StratifiedKFold calls split
    differently), and bad seeds failed in NumPy at split() time with its own messages."""
    for make, owner in ((lambda: KFold(3, shuffle=True, seed=bad), "KFold"),
                        (lambda: StratifiedKFold(3, shuffle=True, seed=bad), "StratifiedKFold"),
                        (lambda: holdout_split(np.zeros((10, 2)), np.arange(10) % 2, 0.2, seed=bad), "holdout_split")):
        with pytest.raises(ValueError, match=f"^{owner}: seed must be an int >= 0"):
            make()


def test_cross_validated_trial_checks_its_seed_when_built_and_numpy_seeds_work():
    with pytest.raises(ValueError, match="^CrossValidatedTrial: seed must be an int >= 0, got None"):
        CrossValidatedTrial(lambda *a: {"val_acc": 1.0}, cv_seed=None)
    CrossValidatedTrial(lambda *a: {"val_acc": 1.0}, cv=KFold(3), cv_seed=None)    # ignored with a cv of its own
    assert KFold(3, shuffle=True, seed=np.array(3)).seed == 3 and KFold(3, seed=np.uint8(2)).seed == 2


def test_cross_validation_takes_a_trial_without_a_validation_loss():
    # a trial returning val_loss=None (absent) worked in a plain search and failed every fold here (float(None))
    x = np.random.default_rng(0).standard_normal((20, 3))
    y = np.arange(20) % 2
    out = cross_validate(lambda p, d, b, s: {"val_acc": 0.5, "val_loss": None}, {}, x, y, cv=KFold(4))
    assert out["status"] == "ok" and out["val_acc"] == 0.5 and out["val_loss"] is None
    record = execute_trial(CrossValidatedTrial(lambda p, d, b, s: {"val_acc": 0.5, "val_loss": None}, cv=KFold(4)),
                           (x, y), {"number": 0, "params": {}, "budget": 1, "seed": 0})
    assert record["status"] == "ok" and math.isnan(record["val_loss"])
    nan_fold = cross_validate(lambda p, d, b, s: {"val_acc": 0.5, "val_loss": float("nan")}, {}, x, y, cv=KFold(4))
    assert nan_fold["status"] == "diverged"


def mean_of_validation_rows(params, data, budget, seed):
    return {"val_acc": float(np.mean(data[2][:, 0]))}


def test_cv_as_a_number_of_folds_is_a_shuffled_stratified_kfold_and_anything_else_is_refused():
    """cv=4 (scikit-learn's habit) is StratifiedKFold(4, shuffle=True, seed=cv_seed): the same folds, fold by fold;
    it used to fail with "'int' object has no attribute 'split'". A cv without split() is a TypeError naming it."""
    x = np.arange(40, dtype=np.float64)[:, None]
    y = np.arange(40) % 2
    by_number = cross_validate(mean_of_validation_rows, {}, x, y, cv=4, cv_seed=7)
    by_splitter = cross_validate(mean_of_validation_rows, {}, x, y, cv=StratifiedKFold(4, shuffle=True, seed=7))
    expected = [float(np.mean(x[val, 0])) for _, val in StratifiedKFold(4, shuffle=True, seed=7).split(x, y)]
    assert by_number["val_acc_folds"] == by_splitter["val_acc_folds"] == expected
    assert len(set(expected)) > 1                                   # not the same mean whatever the split
    trial = CrossValidatedTrial(mean_of_validation_rows, cv=np.int64(4), cv_seed=7)
    assert trial({}, (x, y), 1, 0)["val_acc_folds"] == expected
    for bad in ("5", 2.5, True, [0, 1]):
        with pytest.raises(TypeError, match="cross_validate: cv must be None, a number of folds or a splitter"):
            cross_validate(mean_of_validation_rows, {}, x, y, cv=bad)
        with pytest.raises(TypeError, match="CrossValidatedTrial: cv must be"):
            CrossValidatedTrial(mean_of_validation_rows, cv=bad)
    with pytest.raises(ValueError):
        cross_validate(mean_of_validation_rows, {}, x, y, cv=1)      # StratifiedKFold's own check of k


def test_each_fold_gets_its_own_copy_of_the_configuration():
    """cross_validate gave every fold the same shallow copy's lists: a trial appending its output layer to
    params["hidden"] saw [64, 10] in fold 0, [64, 10, 10] in fold 1, ... and changed the caller's params; each fold
    now gets a deep copy, and the folds of a 3-fold run all see [64, 10]."""
    seen = []

    def trial(params, data, budget, seed):
        params["hidden"].append(10)
        seen.append(list(params["hidden"]))
        return {"val_acc": 1.0 / len(params["hidden"])}

    params = {"hidden": [64]}
    out = cross_validate(trial, params, np.zeros((12, 2)), np.arange(12) % 2, cv=KFold(3))
    assert seen == [[64, 10]] * 3 and params == {"hidden": [64]}
    assert out["val_acc_folds"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("fraction", ["0.2", None, True, [0.2]])
def test_holdout_split_names_itself_for_a_fraction_that_is_not_a_number(fraction):
    # "0.2" or None failed with a bare "'<' not supported between instances of 'int' and 'str'"
    with pytest.raises(ValueError, match=r"holdout_split: val_fraction must lie in \(0, 1\)"):
        holdout_split(np.zeros((10, 2)), np.arange(10) % 2, fraction)


def test_stratified_kfold_warns_when_a_class_has_fewer_examples_than_folds():
    # class 2 has 2 examples for 3 folds: one fold never validates it, silently (scikit-learn warns here)
    y = np.array([0] * 6 + [1] * 6 + [2] * 2)
    with pytest.warns(UserWarning, match=r"StratifiedKFold: 1 class has fewer examples than the 3 folds: 2 \(2\)"):
        folds = list(StratifiedKFold(3).split(y, y))
    assert sum(2 not in y[val] for _, val in folds) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(StratifiedKFold(2).split(y, y))


def test_cross_validate_reports_the_worst_fold_status_and_refuses_unknown_ones():
    # a fold returning status "error" made the whole result "diverged"; an unknown status was taken as a divergence
    x, y = np.zeros((12, 2)), np.arange(12) % 2

    def trial_with(statuses):
        def train_fn(params, data, budget, seed):
            return {"val_acc": 0.5, "status": statuses.pop(0)}
        return train_fn

    for statuses, want in [(["ok", "ok", "ok"], "ok"), (["ok", "diverged", "ok"], "diverged"),
                           (["ok", "error", "diverged"], "error"), (["diverged", "ok", "error"], "error")]:
        out = cross_validate(trial_with(list(statuses)), {}, x, y, cv=KFold(3))
        assert out["status"] == want, (statuses, out["status"])
        assert (want == "ok") == np.isfinite(out["val_acc"])
    with pytest.raises(ValueError, match=r"cross_validate: train_fn returned status 'failed' for fold 1"):
        cross_validate(trial_with(["ok", "failed", "ok"]), {}, x, y, cv=KFold(3))


@pytest.mark.parametrize("bad", [None, -1, 1.5, True])
def test_cross_validate_refuses_a_training_seed_that_is_not_a_non_negative_int(bad):
    # seed=None drew the fold seeds from fresh OS entropy (other training seeds at every call, silently); -1 raised
    # NumPy's bare "expected non-negative integer"; True trained with the seed 1
    x, y = np.arange(20.0).reshape(10, 2), np.arange(10) % 2
    seen = []

    def trial(params, data, budget, seed):
        seen.append(seed)
        return {"val_acc": 0.5}

    with pytest.raises(ValueError, match=r"cross_validate: seed must be an int >= 0"):
        cross_validate(trial, {}, x, y, cv=2, seed=bad)
    assert seen == []
    cross_validate(trial, {}, x, y, cv=2, seed=np.int64(3))
    cross_validate(trial, {}, x, y, cv=2, seed=3)
    assert seen[:2] == seen[2:] and len(set(seen)) == 2


def mean_target_loss_fn(params, data, budget, seed):
    """A regression-like fold: the validation loss is the mean of the validation targets; no accuracy."""
    x_train, y_train, x_val, y_val = data
    return {"val_loss": float(np.mean(y_val)), "val_acc": float("nan")}


def test_cross_validate_averages_val_loss_over_the_folds_by_hand():
    x, y = np.zeros((9, 1)), np.arange(9.0)
    # KFold(3) without shuffling: validation targets [0, 1, 2], [3, 4, 5], [6, 7, 8]: losses 1, 4, 7
    out = cross_validate(mean_target_loss_fn, {}, x, y, cv=KFold(3), objective="val_loss")
    assert out["val_loss_folds"] == [1.0, 4.0, 7.0] and out["val_loss"] == 4.0
    assert out["val_loss_std"] == pytest.approx(math.sqrt(6.0))          # sqrt(((1-4)^2 + 0 + (7-4)^2) / 3)
    assert out["status"] == "ok" and math.isnan(out["val_acc"])          # a NaN accuracy is no divergence here
    with pytest.raises(KeyError, match="cross_validate: train_fn returned no 'val_mae' \\(the objective\\)"):
        cross_validate(mean_target_loss_fn, {}, x, y, cv=KFold(3), objective="val_mae")
    # in a search ranked by the same objective, the folds and their spread reach the record and the table
    search = RandomSearch({"k": 1}, n_trials=2, objective="val_loss", edge=0)
    result = search.run(CrossValidatedTrial(mean_target_loss_fn, KFold(3), objective="val_loss"), (x, y),
                        executor=None)
    record = result.best_trial
    assert record["val_loss"] == 4.0 and record["val_loss_folds"] == [1.0, 4.0, 7.0]
    assert list(result.table()[0])[5:8] == ["val_loss", "val_loss_std", "val_loss_folds"]

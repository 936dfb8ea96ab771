"""Hyperparameter search (cynet.tune): spaces, random/grid search, failures, coarse-to-fine, successive halving,
the process pool and the results (table, CSV/JSON, best checkpoint, plot).

Small real problem: a 10-32-3 MLP on a synthetic 3-class problem (labels are the arg-max of a fixed linear map), two
epochs of plain SGD; there the learning rate decides between chance and ~90 % validation accuracy.
"""
import csv
import json
import math
import os
import pathlib
import threading
import time
import warnings

import numpy as np
import pytest

import cynet
from cynet import checkpoint, nn
from cynet.nn.loss import SoftmaxCrossEntropy
from cynet.optim import SGD
from cynet.train import Callback, DivergenceWarning, Trainer
from cynet.tune import (
    CoarseToFine, GridSearch, LogRandInt, LogUniform, Objective, RandomSearch, Stage, choice, edge_report, grid_points,
    lograndint, loguniform, make_trainer_trial, narrow_space, randint, sample_space, successive_halving, trial_seed,
    uniform,
)
from cynet.tune.executors import execute_trial


# --- the small real problem ------------------------------------------------------------------------------------------
def make_problem(n_train=480, n_val=240, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(10, 3))
    x = rng.normal(size=(n_train + n_val, 10)).astype(np.float32)
    y = np.argmax(x @ w, axis=1).astype(np.int64)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def build_mlp(params):
    hidden = int(params.get("hidden", 32))
    return nn.Sequential(nn.Linear(10, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def sgd_factory(parameters, params):
    return SGD(parameters, lr=params["lr"])


def mlp_trial(batch_size=32):
    return make_trainer_trial(build_mlp, SoftmaxCrossEntropy(), sgd_factory, batch_size=batch_size)


SPACE = {"lr": loguniform(1e-4, 10.0), "hidden": choice([16, 32])}


@pytest.fixture(scope="module")
def problem():
    return make_problem()


# --- helper trial functions (module level: picklable for the process pool) -------------------------------------------
def peak_fn(params, data, budget, seed):
    """A deterministic score peaking at lr = 1e-2 (in log space) that grows with the budget."""
    return {"val_acc": budget / (budget + 1) - abs(math.log10(params["lr"]) + 2) / 10}


def edge_peak_fn(params, data, budget, seed):
    """Best at the lowest learning rate of the range."""
    return {"val_acc": -math.log10(params["lr"])}


def flaky_fn(params, data, budget, seed):
    if params["lr"] > 0.1:
        raise RuntimeError(f"boom at lr={params['lr']:.3g}")
    if params["lr"] < 1e-3:
        return {"val_acc": float("nan")}
    return {"val_acc": params["lr"]}


def dying_fn(params, data, budget, seed):
    if params["lr"] > 0.1:
        os._exit(3)      # the worker process dies without a word
    return {"val_acc": params["lr"]}


def where_fn(params, data, budget, seed):
    """Reports which process ran it and which data object it saw (to check data is shipped once per worker)."""
    return {"val_acc": float(params["lr"]), "history": {"pid": os.getpid(), "data_id": id(data),
                                                        "threads": cynet.get_num_threads()}}


def dying_where_fn(params, data, budget, seed):
    """Kills its worker when lr > 0.1; otherwise a score from lr and the seed, and where it ran (pid, data object)."""
    if params["lr"] > 0.1:
        os._exit(3)
    return {"val_acc": params["lr"], "val_loss": seed / 2 ** 32,
            "history": {"pid": os.getpid(), "data_id": id(data)}}


def raising_twin_of_dying_where_fn(params, data, budget, seed):
    """The serial oracle of :func:`dying_where_fn`: the same scores, an exception where that one kills its worker."""
    if params["lr"] > 0.1:
        raise RuntimeError("this trial kills its worker")
    return {"val_acc": params["lr"], "val_loss": seed / 2 ** 32}


def _wait_for(path, what):
    deadline = time.monotonic() + 60
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.01)


def choreographed_fn(params, data, budget, seed):
    """Trials whose order of events is fixed by marker files in the directory ``data`` (no timing involved):

    - "blocker": its first run blocks until the broken pool terminates it (so it is running when a worker dies);
      a later run returns at once;
    - "killer": once the blocker runs, kills its worker (every time);
    - "pair" 0 and 1: each returns only once the other has started, so they finish only when run in parallel;
    - "plain": returns at once.
    Each returns ``val_acc = params["x"]`` and ``val_loss = seed``.
    """
    folder, role = pathlib.Path(data), params["role"]
    if role == "blocker":
        started = folder / "blocker-started"
        if not started.exists():
            started.touch()
            time.sleep(600)
    elif role == "killer":
        _wait_for(folder / "blocker-started", "the blocker")
        os._exit(3)
    elif role == "pair":
        (folder / f"pair-{params['id']}-started").touch()
        _wait_for(folder / f"pair-{1 - params['id']}-started", "the other trial of the pair: they did not run in "
                                                               "parallel")
    return {"val_acc": params["x"], "val_loss": float(seed)}


# --- spaces ----------------------------------------------------------------------------------------------------------
def test_loguniform_is_uniform_in_log_space():
    rng = np.random.default_rng(0)
    dist = loguniform(1e-4, 1e0)
    values = np.array([dist.sample(rng) for _ in range(8000)])
    assert values.min() >= 1e-4 and values.max() <= 1.0
    per_decade = np.histogram(np.log10(values), bins=4, range=(-4, 0))[0]
    assert np.all(np.abs(per_decade - 2000) < 150), per_decade     # +-3.8 sigma of a binomial(8000, 1/4)


def test_uniform_randint_choice_ranges():
    rng = np.random.default_rng(1)
    u = np.array([uniform(-1.0, 3.0).sample(rng) for _ in range(4000)])
    assert u.min() >= -1 and u.max() <= 3 and abs(u.mean() - 1.0) < 0.1
    r = [randint(2, 5).sample(rng) for _ in range(600)]
    assert set(r) == {2, 3, 4} and all(isinstance(v, int) for v in r)
    c = [choice(["a", "b", "c"]).sample(rng) for _ in range(300)]
    assert set(c) == {"a", "b", "c"}


@pytest.mark.parametrize("bad", [lambda: loguniform(0, 1), lambda: loguniform(1, 1), lambda: uniform(2, 1),
                                 lambda: randint(3, 3), lambda: choice([]), lambda: uniform(0, float("inf"))])
def test_invalid_distributions_raise(bad):
    with pytest.raises(ValueError):
        bad()


def test_grid_points_log_spaced():
    values = grid_points({"lr": loguniform(1e-4, 1e-1), "p": uniform(0, 1), "h": choice([8, 16]), "k": 5}, 4)
    np.testing.assert_allclose(values["lr"], np.logspace(-4, -1, 4), rtol=1e-12)
    np.testing.assert_allclose(values["p"], [0, 1 / 3, 2 / 3, 1])
    assert values["h"] == [8, 16] and values["k"] == [5]


@pytest.mark.parametrize("dist", [loguniform(1e-5, 1e-1), loguniform(3e-4, 7.0), uniform(-0.3, 0.7)], ids=repr)
@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_grid_reaches_both_ends_exactly_and_stays_inside(dist, n):
    """exp(log(1e-5)) is 9.999999999999997e-06: the grid's ends were just outside [lo, hi]."""
    values = dist.grid(n)
    assert len(values) == n and all(dist.lo <= v <= dist.hi for v in values)
    if n > 1:
        assert values[0] == dist.lo and values[-1] == dist.hi
    scale = np.log if isinstance(dist, LogUniform) else np.asarray
    np.testing.assert_allclose(scale(values), np.linspace(scale(dist.lo), scale(dist.hi), n) if n > 1
                               else [(scale(dist.lo) + scale(dist.hi)) / 2], rtol=1e-12)
    configs = GridSearch({"lr": dist, "k": 2}, points=n).configurations()
    assert [c["lr"] for c in configs] == values


def test_sample_space_passes_constants():
    params = sample_space({"lr": loguniform(1e-3, 1e-1), "batch_size": 64}, np.random.default_rng(0))
    assert params["batch_size"] == 64 and 1e-3 <= params["lr"] <= 1e-1


# --- seeds and configurations ----------------------------------------------------------------------------------------
def test_trial_seeds_come_from_seedsequence_spawn():
    children = np.random.SeedSequence(123).spawn(6)
    assert [trial_seed(123, i) for i in range(6)] == [int(c.generate_state(1)[0]) for c in children]


@pytest.mark.parametrize("seed, number", [(-1, 0), (1.5, 0), (True, 0), (0, -2), (0, 2.0)])
def test_trial_seed_refuses_a_seed_or_number_that_is_not_a_non_negative_int(seed, number):
    # -1 raised NumPy's bare "expected non-negative integer", 1.5 a TypeError about SeedSequence's entropy, and
    # trial_seed(True, 0) returned trial_seed(1, 0)
    with pytest.raises(ValueError, match=r"trial_seed: (seed|number) must be an int >= 0"):
        trial_seed(seed, number)
    assert trial_seed(np.int64(5), np.int32(2)) == trial_seed(5, 2)


def test_random_search_reproducible_and_prefix_stable():
    a = RandomSearch(SPACE, n_trials=10, seed=7).configurations()
    b = RandomSearch(SPACE, n_trials=10, seed=7).configurations()
    c = RandomSearch(SPACE, n_trials=4, seed=7).configurations()
    d = RandomSearch(SPACE, n_trials=10, seed=8).configurations()
    assert a == b and a[:4] == c and a != d


def test_random_search_tries_more_distinct_values_than_grid():
    """The lecture's point: 9 grid trials over 2 dimensions try 3 learning rates, 9 random trials try 9."""
    space = {"lr": loguniform(1e-4, 1e-1), "reg": loguniform(1e-5, 1e-1)}
    grid = GridSearch(space, points=3).configurations()
    rand = RandomSearch(space, n_trials=9, seed=0).configurations()
    assert len(grid) == 9 and len({p["lr"] for p in grid}) == 3
    assert len({p["lr"] for p in rand}) == 9


def one_knob_fn(params, data, budget, seed):
    """Only the learning rate matters (peak at 10**-2.2); "reg" is a distraction."""
    return {"val_acc": -abs(math.log10(params["lr"]) + 2.2)}


def test_random_search_beats_grid_search_on_average_when_one_knob_matters():
    space = {"lr": loguniform(1e-4, 1e-1), "reg": loguniform(1e-5, 1e-1)}
    grid_best = GridSearch(space, points=3, edge=0).run(one_knob_fn, executor=None).best_val_acc
    random_best = [RandomSearch(space, n_trials=9, seed=s, edge=0).run(one_knob_fn, executor=None).best_val_acc
                   for s in range(20)]
    assert grid_best == pytest.approx(-0.3)           # the nearest grid learning rate is 10**-2.5
    assert np.mean(random_best) > grid_best + 0.1


# --- searches on the real problem ------------------------------------------------------------------------------------
def test_random_search_beats_the_median_trial(problem):
    result = RandomSearch(SPACE, n_trials=10, seed=0).run(mlp_trial(), problem, budget=2, executor=None)
    accs = [t["val_acc"] for t in result.trials if t["status"] == "ok"]
    assert len(result.trials) == 10
    assert result.best_val_acc == max(accs)
    assert result.best_val_acc > np.median(accs) + 0.05
    assert result.best_val_acc > 0.75           # chance is ~1/3
    # the table is sorted best first and the recorded epochs are the ones run
    ok = [t for t in result.trials if t["status"] == "ok"]
    assert [t["val_acc"] for t in ok] == sorted(accs, reverse=True)
    assert all(t["epochs"] == 2 for t in ok)


def test_trainer_trial_is_reproducible_and_restores_global_rng(problem):
    trial = mlp_trial()
    cynet.manual_seed(99)
    before = cynet.get_rng_state()
    first = trial({"lr": 0.1}, problem, 1, seed=5)
    assert cynet.get_rng_state() == before
    second = trial({"lr": 0.1}, problem, 1, seed=5)
    third = trial({"lr": 0.1}, problem, 1, seed=6)
    assert first["val_acc"] == second["val_acc"]
    for key in first["state_dict"]:
        np.testing.assert_array_equal(first["state_dict"][key], second["state_dict"][key])
    assert any(not np.array_equal(first["state_dict"][k], third["state_dict"][k]) for k in first["state_dict"])


class SlowDropout(nn.Dropout):
    """Dropout that sleeps a moment before each mask, so trainings on two threads interleave their draws."""

    def forward(self, x):
        if self.training:
            time.sleep(0.001)
        return super().forward(x)


def build_synced_mlp(params):
    """An MLP with dropout; when ``params`` carries a barrier ("sync"), the trials sharing it build together, after
    every one of them has started (the moment a trial that seeded the process-wide generator was overtaken)."""
    if "sync" in params:
        params["sync"].wait()
    hidden = int(params.get("hidden", 16))
    return nn.Sequential(nn.Linear(10, hidden), nn.ReLU(), SlowDropout(0.5), nn.Linear(hidden, 3))


def _alone_on_one_thread(trial, params, data, seed):
    with cynet.threads(1):
        return trial(params, data, 1, seed)


def test_trainer_trials_on_threads_give_their_serial_results(problem):
    """Two trials training a dropout MLP at once on two threads: each gets exactly its serial run's weights, history
    and score (its initial weights and dropout masks depend on its own seed only), and the caller's generator is not
    touched."""
    import concurrent.futures

    trial = make_trainer_trial(build_synced_mlp, SoftmaxCrossEntropy(), sgd_factory, batch_size=32)
    small = tuple(part[:160] for part in problem[:2]) + tuple(part[:80] for part in problem[2:])
    seeds = (111, 222)
    serial = [_alone_on_one_thread(trial, {"lr": 0.2}, small, seed) for seed in seeds]
    cynet.manual_seed(5)
    before = cynet.get_rng_state()
    sync = threading.Barrier(2, timeout=30)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(_alone_on_one_thread, trial, {"lr": 0.2, "sync": sync}, small, seed) for seed in seeds]
        threaded = [f.result() for f in futures]
    for alone, beside in zip(serial, threaded):
        for key in alone["state_dict"]:
            np.testing.assert_array_equal(beside["state_dict"][key], alone["state_dict"][key])
        assert beside["val_loss"] == alone["val_loss"] and beside["history"] == alone["history"]
    assert cynet.get_rng_state() == before
    assert serial[0]["val_loss"] != serial[1]["val_loss"]          # the seeds matter: the check above means something


def test_random_search_on_a_thread_pool_matches_serial(problem):
    """The README's promise, on a thread pool: the same table as a serial run (trials built two at a time)."""
    import concurrent.futures

    trial = make_trainer_trial(build_synced_mlp, SoftmaxCrossEntropy(), sgd_factory, batch_size=32)
    small = tuple(part[:160] for part in problem[:2]) + tuple(part[:80] for part in problem[2:])
    space = {"lr": loguniform(1e-2, 1.0), "hidden": choice([8, 16])}

    def table(result):
        return sorted((t["number"], t["status"], t["val_acc"], t["val_loss"], t["history"]["train_loss"])
                      for t in result.trials)

    serial = RandomSearch(space, n_trials=4, seed=0, edge=0).run(trial, small, executor=None, threads_per_trial=1)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        threaded = RandomSearch(dict(space, sync=threading.Barrier(2, timeout=30)), n_trials=4, seed=0,
                                edge=0).run(trial, small, executor=pool, threads_per_trial=1)
    assert all(t["status"] == "ok" for t in threaded.trials), [t["error"] for t in threaded.trials]
    assert table(threaded) == table(serial)


class _Signal(Callback):
    """Sets ``started`` when training begins; at its end, waits for ``wait_for`` (with a timeout, never a hang)."""

    def __init__(self, started=None, wait_for=None):
        self.started, self.wait_for = started, wait_for

    def on_train_begin(self, trainer):
        if self.started is not None:
            self.started.set()

    def on_train_end(self, trainer):
        if self.wait_for is not None:
            assert self.wait_for.wait(30)


def test_trainer_trials_overlapping_on_threads_leave_the_warning_filters_alone(problem):
    """Each trial silenced DivergenceWarning with warnings.catch_warnings, which swaps the process-wide filter list:
    a trial entering while another was inside saved the other's 'ignore' filter and put it back for good when it
    left last, so every later divergence in the process, the user's own Trainer runs included, went unreported."""
    import concurrent.futures

    b_started, a_finished = threading.Event(), threading.Event()
    hooks = {"a": [_Signal(wait_for=b_started)], "b": [_Signal(started=b_started, wait_for=a_finished)]}
    trial = make_trainer_trial(build_mlp, SoftmaxCrossEntropy(), sgd_factory, batch_size=32,
                               callbacks=lambda params: hooks[params["who"]])
    small = tuple(part[:96] for part in problem)

    def run_a():
        try:
            return trial({"lr": 1e4, "who": "a"}, small, 1, 0)
        finally:
            a_finished.set()

    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inside = list(warnings.filters)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(run_a)
            second = pool.submit(trial, {"lr": 0.1, "who": "b"}, small, 1, 1)
            assert first.result()["status"] == "diverged" and second.result()["status"] == "ok"
        assert warnings.filters == inside
        assert not [w for w in caught if issubclass(w.category, DivergenceWarning)]  # the record says it
        model = build_mlp({})
        trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=1e4), progress=False)
        trainer.fit(*small[:2], epochs=1, batch_size=32)
        assert [w for w in caught if issubclass(w.category, DivergenceWarning)]
    assert warnings.filters == before


def test_trainer_trial_reports_divergence(problem):
    with_huge_lr = mlp_trial()({"lr": 1e4}, problem, 2, seed=0)
    assert with_huge_lr["status"] == "diverged" and math.isnan(with_huge_lr["val_acc"])
    assert with_huge_lr["stop_reason"].startswith("diverged")


def test_trainer_trial_trains_its_budget_in_epochs_and_refuses_a_fractional_one(problem):
    """round(budget) trained 1 epoch for a budget of 0.5, 2 for 1.5 and 4 for 4.5 (banker's rounding): successive
    halving from min_budget=0.5 with eta=3 trained 1, 2, 4 epochs while its records showed budgets 0.5, 1.5, 4.5."""
    small = tuple(part[:96] for part in problem)
    record = execute_trial(mlp_trial(), small, {"number": 0, "params": {"lr": 0.1}, "budget": 2.0, "seed": 0})
    assert record["status"] == "ok" and record["epochs"] == 2 and len(record["history"]["val_acc"]) == 2
    for budget in (0.5, 1.5, 4.5, 2.5):
        record = execute_trial(mlp_trial(), small, {"number": 0, "params": {"lr": 0.1}, "budget": budget, "seed": 0})
        assert record["status"] == "error" and "whole number" in record["error"], record
    with pytest.warns(UserWarning, match="no trial of the search finished"):
        result = successive_halving(mlp_trial(), small, {"lr": loguniform(1e-2, 1e-1)}, n_trials=3, min_budget=0.5,
                                    eta=3, executor=None)
    assert {t["status"] for t in result.trials} == {"error"}


def test_make_trainer_trial_refuses_trainers_forms_of_callbacks_and_regularization():
    """A list of callbacks or a penalty instance (what Trainer takes) was accepted and failed in every trial."""
    from cynet.nn.loss import L2Penalty
    from cynet.train import EarlyStopping

    with pytest.raises(TypeError, match="callbacks must be a function params -> list"):
        make_trainer_trial(build_mlp, callbacks=[EarlyStopping()])
    with pytest.raises(TypeError, match="regularization must be a function params -> penalty"):
        make_trainer_trial(build_mlp, regularization=L2Penalty(1e-3))
    make_trainer_trial(build_mlp, callbacks=lambda p: [EarlyStopping()], regularization=lambda p: L2Penalty(1e-3))


# --- failure handling ------------------------------------------------------------------------------------------------
def test_errors_and_diverged_trials_are_recorded_not_ranked():
    result = RandomSearch({"lr": loguniform(1e-4, 1.0)}, n_trials=12, seed=3).run(flaky_fn, executor=None)
    by_status = {s: [t for t in result.trials if t["status"] == s] for s in ("ok", "diverged", "error")}
    configs = RandomSearch({"lr": loguniform(1e-4, 1.0)}, n_trials=12, seed=3).configurations()
    assert len(by_status["error"]) == sum(p["lr"] > 0.1 for p in configs) > 0
    assert len(by_status["diverged"]) == sum(p["lr"] < 1e-3 for p in configs) > 0
    assert all("RuntimeError: boom" in t["error"] for t in by_status["error"])
    statuses = [t["status"] for t in result.trials]
    assert statuses == sorted(statuses, key=["ok", "diverged", "error"].index)     # failures rank last
    assert result.best_params["lr"] == max(p["lr"] for p in configs if 1e-3 <= p["lr"] <= 0.1)


def test_diverging_trainer_trials_never_win(problem):
    space = {"lr": choice([1e4, 0.3, 1e-3])}
    result = GridSearch(space, seed=0).run(mlp_trial(), problem, budget=2, executor=None)
    assert [t["status"] for t in result.trials] == ["ok", "ok", "diverged"]
    assert result.best_params["lr"] == 0.3


def test_no_finished_trial_raises_clearly():
    result = RandomSearch({"lr": loguniform(0.2, 1.0)}, n_trials=3).run(flaky_fn, executor=None)
    with pytest.raises(RuntimeError, match="no trial finished"):
        result.best_params


def test_execute_trial_rejects_bad_return_values():
    record = execute_trial(lambda p, d, b, s: 0.5, None, {"number": 0, "params": {}, "budget": 1, "seed": 0})
    assert record["status"] == "error" and "val_acc" in record["error"]


def test_process_pool_survives_a_dying_worker():
    space = {"lr": loguniform(1e-3, 1.0)}
    configs = RandomSearch(space, n_trials=8, seed=1).configurations()
    result = RandomSearch(space, n_trials=8, seed=1).run(dying_fn, executor="process", n_workers=2)
    errors = {t["number"] for t in result.trials if t["status"] == "error"}
    assert errors == {i for i, p in enumerate(configs) if p["lr"] > 0.1} != set()
    assert all("worker process died" in t["error"] for t in result.trials if t["status"] == "error")
    ok = [t for t in result.trials if t["status"] == "ok"]
    assert len(ok) == 8 - len(errors) and result.best_val_acc == max(p["lr"] for p in configs if p["lr"] <= 0.1)


@pytest.mark.parametrize("seed", [1, 6])        # six killers of eight trials; one killer, trial 5
def test_process_pool_records_only_the_killers_and_matches_serial(seed):
    space = {"lr": loguniform(1e-3, 1.0)}
    killers = {i for i, p in enumerate(RandomSearch(space, n_trials=8, seed=seed).configurations()) if p["lr"] > 0.1}
    pooled = RandomSearch(space, n_trials=8, seed=seed).run(dying_where_fn, executor="process", n_workers=2)
    serial = RandomSearch(space, n_trials=8, seed=seed).run(raising_twin_of_dying_where_fn, executor=None)
    assert {t["number"] for t in pooled.trials if t["status"] == "error"} == killers
    assert all("worker process died" in t["error"] for t in pooled.trials if t["number"] in killers)
    table = lambda r: sorted((t["number"], t["status"], t["val_acc"], t["val_loss"]) for t in r.trials
                             if t["number"] not in killers)
    assert table(pooled) == table(serial) and all(row[1] == "ok" for row in table(pooled))


class _PoolBrokenWhileSubmitting:
    """A stand-in for the runner's process pool: the first trial is running when a worker dies, which the executor
    notices during the second submission (submit raises BrokenProcessPool; the first future fails with it)."""

    def __init__(self):
        self.submitted = []

    def submit(self, spec, ticket):
        import concurrent.futures.process

        if self.submitted:
            raise concurrent.futures.process.BrokenProcessPool("a child process terminated abruptly")
        self.submitted.append(ticket)
        future = concurrent.futures.Future()
        future.set_exception(concurrent.futures.process.BrokenProcessPool("a child process terminated abruptly"))
        return future

    def tickets_running(self):
        return set(self.submitted)

    def shutdown(self, wait):
        pass


def test_a_pool_that_breaks_while_trials_are_submitted_loses_them_instead_of_raising():
    # seen in CI: a killer trial ran (and killed its worker) before the last trial was submitted
    from cynet.tune.executors import _ProcessRunner

    runner = _ProcessRunner(dying_where_fn, None, n_workers=2, threads=1, mp_context=None)
    runner.pool = _PoolBrokenWhileSubmitting()
    specs = [{"number": i, "params": {"lr": 0.5}} for i in range(4)]
    results = [None] * 4
    lost, running = runner._run_on_shared_pool(specs, [0, 1, 2, 3], results)
    assert lost == [0, 1, 2, 3] and running == {0}        # trial 0 was running; 1-3 never reached the pool
    assert runner.pool is None and results == [None] * 4  # the broken pool is dropped; nothing recorded yet


class UnloadableData:
    """Data that pickle can write but not read back: every worker's initializer fails under "spawn"."""

    def __reduce__(self):
        return (_refuse_to_load, ())


def _refuse_to_load():
    raise RuntimeError("this data cannot be loaded in a worker")


def test_process_pool_that_breaks_before_any_trial_runs_records_errors_instead_of_looping():
    import multiprocessing

    result = RandomSearch({"lr": loguniform(1e-3, 1e-1)}, n_trials=3, seed=0).run(
        peak_fn, UnloadableData(), executor="process", n_workers=2, mp_context=multiprocessing.get_context("spawn"))
    assert sorted(t["number"] for t in result.trials) == [0, 1, 2]
    assert all(t["status"] == "error" and "broke twice before this trial started" in t["error"]
               for t in result.trials)


def test_process_pool_recovery_spares_running_trials_and_stays_parallel(tmp_path):
    from cynet.tune.executors import make_runner

    roles = [{"role": "blocker"}, {"role": "killer"}, {"role": "pair", "id": 0}, {"role": "pair", "id": 1}] + \
            [{"role": "plain"}] * 4
    specs = [{"number": i, "params": dict(role, x=i / 10), "budget": 1, "seed": 100 + i}
             for i, role in enumerate(roles)]
    runner = make_runner("process", choreographed_fn, str(tmp_path), n_workers=2, threads_per_trial=1)
    try:
        records = runner.run(specs)
    finally:
        runner.close()
    assert [r["number"] for r in records] == list(range(8))
    killer = records[1]
    assert killer["status"] == "error" and "worker process died" in killer["error"]
    # the blocker was running when the killer's worker died, yet is not blamed; the pair, queued at that moment,
    # ran in parallel on the new pool (one at a time, each would have waited for the other in vain)
    others = [(r["status"], r["val_acc"], r["val_loss"]) for r in records if r["number"] != 1]
    assert others == [("ok", s["params"]["x"], float(s["seed"])) for s in specs if s["number"] != 1]


# --- parallel execution ----------------------------------------------------------------------------------------------
def test_process_pool_matches_serial_exactly(problem):
    # the same threads per trial everywhere: BLAS sums in another order with another thread count
    search = RandomSearch(SPACE, n_trials=6, seed=11)
    serial = search.run(mlp_trial(), problem, budget=1, executor=None, threads_per_trial=1)
    pooled = search.run(mlp_trial(), problem, budget=1, executor="process", n_workers=2, threads_per_trial=1)
    table = lambda r: [(t["number"], t["status"], t["val_acc"], t["threads"]) for t in r.trials]
    assert table(serial) == table(pooled)
    assert {t["threads"] for t in pooled.trials} == {1}
    for a, b in zip(serial.best_state_dict.values(), pooled.best_state_dict.values()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore:RandomSearch. best")
def test_process_pool_ships_data_once_per_worker_and_splits_cores():
    data = np.arange(1000.0)
    result = RandomSearch({"lr": uniform(0, 1)}, n_trials=8, seed=0).run(where_fn, data, executor="process",
                                                                          n_workers=2)
    seen = {}
    for t in result.trials:
        seen.setdefault(t["history"]["pid"], set()).add(t["history"]["data_id"])
    assert os.getpid() not in seen and 1 <= len(seen) <= 2
    assert all(len(ids) == 1 for ids in seen.values())     # one copy of the data per worker, reused by every trial
    expected_threads = max(1, cynet.available_cpus() // 2)
    assert {t["history"]["threads"] for t in result.trials} == {expected_threads}


def test_any_executor_with_submit_works(problem):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        result = RandomSearch({"lr": loguniform(1e-3, 1e-1)}, n_trials=4, seed=0).run(peak_fn, executor=pool)
    serial = RandomSearch({"lr": loguniform(1e-3, 1e-1)}, n_trials=4, seed=0).run(peak_fn, executor=None)
    assert [t["val_acc"] for t in result.trials] == [t["val_acc"] for t in serial.trials]


def output_layer_appended_in_place_fn(params, data, budget, seed):
    """A trial that completes its layer sizes in place, as a build_model adding the output layer may."""
    sizes = params["hidden"]
    sizes.append(10)
    return {"val_acc": 1.0 / len(sizes)}


def test_a_trial_that_changes_its_params_in_place_leaves_the_space_the_records_and_other_trials_alone():
    """Trials got a shallow copy of their configuration: appending to a choice's list changed the option itself, so
    serially (seed 0, all six drawing [128]) trial 1 saw [128, 10, 10] and scored 1/3, trial 5 [128, 10 x 6] and 1/7,
    the space's choice ended as [[128, 10, 10, 10, 10, 10, 10], [256, 128]] and every record showed that list; on the
    process pool (its own copy per trial) all six scored 1/2 and recorded [128, 10]. Every trial now gets a deep
    copy: same results on every executor, records showing the configuration drawn (seed 1 draws both options)."""
    results = {}
    for executor, seed in ((None, 0), ("process", 0), (None, 1), ("process", 1)):
        space = {"hidden": choice([[128], [256, 128]])}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = RandomSearch(space, 6, seed=seed).run(output_layer_appended_in_place_fn, executor=executor,
                                                        n_workers=None if executor is None else 2)
        assert space["hidden"].options == [[128], [256, 128]]
        drawn = RandomSearch(space, 6, seed=seed).configurations()
        expected = {i: config["hidden"] for i, config in enumerate(drawn)}
        for t in result.trials:
            assert t["params"]["hidden"] == expected[t["number"]]
            assert t["val_acc"] == 1.0 / (len(expected[t["number"]]) + 1)
        results[executor, seed] = sorted((t["number"], t["val_acc"]) for t in result.trials)
    assert results[None, 0] == results["process", 0] and results[None, 1] == results["process", 1]
    assert {v for _, v in results[None, 1]} == {1 / 2, 1 / 3}


def test_unknown_executor_rejected():
    with pytest.raises(ValueError, match="executor"):
        RandomSearch({"lr": uniform(0, 1)}, 2).run(peak_fn, executor="threads")


# --- coarse-to-fine and successive halving ---------------------------------------------------------------------------
def test_narrow_space_log_and_linear_oracle():
    space = {"lr": loguniform(1e-6, 1e0), "p": uniform(0.0, 1.0), "h": choice([8, 16, 32]), "c": 3}
    best = [{"lr": 1e-3, "p": 0.4, "h": 32, "c": 3}, {"lr": 1e-2, "p": 0.5, "h": 8, "c": 3}]
    out = narrow_space(space, best, margin=0.1)
    # log10 range is 6 wide: pad 0.6 decade each side of [-3, -2]
    np.testing.assert_allclose(np.log10([out["lr"].lo, out["lr"].hi]), [-3.6, -1.4], rtol=1e-9)
    np.testing.assert_allclose([out["p"].lo, out["p"].hi], [0.3, 0.6])
    assert out["h"].options == [8, 32] and out["c"] == 3
    clipped = narrow_space({"lr": loguniform(1e-4, 1e-1)}, [{"lr": 1e-4}], margin=0.2)["lr"]
    assert clipped.lo == 1e-4 and clipped.hi == pytest.approx(10 ** -3.4)


def test_coarse_to_fine_narrows_around_the_best_trials():
    space = {"lr": loguniform(1e-6, 1e0)}
    search = CoarseToFine(space, [Stage(12, 1, keep=3), Stage(8, 2, keep=2), Stage(4, 3)], seed=0, margin=0.1)
    result = search.run(peak_fn, executor=None)
    spaces = result.stage_spaces
    assert len(spaces) == 3 and len(result.trials) == 24
    for stage in range(2):
        trials = sorted((t for t in result.trials if t["stage"] == stage), key=lambda t: -t["val_acc"])
        keep = [3, 2][stage]
        old, new = spaces[stage]["lr"], spaces[stage + 1]["lr"]
        logs = np.log10([t["params"]["lr"] for t in trials[:keep]])
        pad = 0.1 * (math.log10(old.hi) - math.log10(old.lo))
        expected = [max(math.log10(old.lo), logs.min() - pad), min(math.log10(old.hi), logs.max() + pad)]
        np.testing.assert_allclose(np.log10([new.lo, new.hi]), expected, rtol=1e-9)
        assert (new.hi / new.lo) < (old.hi / old.lo)
        assert all(new.lo <= t["params"]["lr"] <= new.hi for t in result.trials if t["stage"] == stage + 1)
    assert [t["budget"] for t in sorted(result.trials, key=lambda t: t["number"])] == [1] * 12 + [2] * 8 + [3] * 4
    assert abs(math.log10(result.best_params["lr"]) + 2) < 0.3      # found the peak at 1e-2
    assert len({t["number"] for t in result.trials}) == 24


def test_edge_warning_when_best_lies_on_the_range_edge():
    with pytest.warns(UserWarning, match=r"lr=.* lower edge of loguniform\(0.0001, 1.0\)"):
        RandomSearch({"lr": loguniform(1e-4, 1.0)}, n_trials=30, seed=0).run(edge_peak_fn, executor=None)
    assert edge_report({"lr": loguniform(1e-4, 1.0)}, {"lr": 1e-2}) == []
    assert "upper edge" in edge_report({"p": uniform(0, 1)}, {"p": 0.95})[0]


def run_recording_warnings(search, train_fn):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = search.run(train_fn, executor=None)
    return result, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_coarse_to_fine_judges_the_edge_against_the_ranges_the_user_gave():
    space = {"lr": loguniform(1e-5, 1.0)}
    at_a_narrowed_edge = 0
    for seed in range(30):
        search = CoarseToFine(space, [Stage(12, 1, keep=2), Stage(8, 1)], seed=seed)
        result, messages = run_recording_warnings(search, peak_fn)
        assert abs(math.log10(result.best_params["lr"]) + 2) < 1              # the optimum 1e-2 is well inside
        assert messages == [], (seed, messages)
        at_a_narrowed_edge += bool(edge_report(result.stage_spaces[-1], result.best_params))
    assert at_a_narrowed_edge > 0      # the case that used to warn: best at an edge of the narrowed last range

    search = CoarseToFine({"lr": loguniform(1e-4, 1.0)}, [Stage(12, 1, keep=2), Stage(8, 1)], seed=0)
    result, messages = run_recording_warnings(search, edge_peak_fn)
    assert result.best_params["lr"] < 10 ** -3.6                               # within 0.1 of the lower end
    assert any(m.startswith("CoarseToFine: best lr=") and "lower edge of loguniform(0.0001, 1.0)" in m
               for m in messages), messages


def count_calls_fn(params, data, budget, seed):
    CALLS.append(params)
    return {"val_acc": params["lr"]}


CALLS = []


@pytest.mark.parametrize("make,message", [
    (lambda: CoarseToFine({"lr": loguniform(1e-4, 1e-1)}, [Stage(3), Stage(3)], margin=-0.1),
     "CoarseToFine: margin must be a finite number >= 0, got -0.1"),
    (lambda: CoarseToFine({"lr": loguniform(1e-4, 1e-1)}, [Stage(3), Stage(3)], margin=float("nan")),
     "CoarseToFine: margin"),
    (lambda: CoarseToFine({"lr": loguniform(1e-4, 1e-1)}, [Stage(3)], edge=0.5), r"CoarseToFine: edge .* \[0, 0.5\)"),
    (lambda: RandomSearch({"lr": loguniform(1e-4, 1e-1)}, edge=-1), "RandomSearch: edge"),
    (lambda: GridSearch({"lr": loguniform(1e-4, 1e-1)}, edge="wide"), "GridSearch: edge"),
], ids=["negative-margin", "nan-margin", "edge-half", "negative-edge", "edge-string"])
def test_search_arguments_are_checked_before_any_trial_runs(make, message):
    CALLS.clear()
    with pytest.raises(ValueError, match=message):
        make().run(count_calls_fn, executor=None)
    assert CALLS == []             # the negative margin used to fail only in narrow_space, after a stage trained


@pytest.mark.parametrize("kwargs,message", [({"n_trials": 0}, "n_trials"), ({"eta": 1}, "eta"),
                                            ({"max_rungs": 0}, "max_rungs"), ({"min_budget": 0}, "min_budget"),
                                            ({"min_budget": float("inf")}, "min_budget"),
                                            ({"threads_per_trial": 0}, "threads_per_trial"),   # said CoarseToFine.run
                                            ({"n_workers": 0}, "n_workers")])
def test_successive_halving_names_itself_in_argument_errors(kwargs, message):
    CALLS.clear()
    with pytest.raises(ValueError, match=f"successive_halving: {message}"):
        successive_halving(count_calls_fn, None, {"lr": loguniform(1e-4, 1e-1)}, executor=None, **kwargs)
    assert CALLS == []


def nan_fn(params, data, budget, seed):
    return {"val_acc": float("nan")}


def test_successive_halving_warnings_name_successive_halving():
    with pytest.warns(UserWarning) as caught:
        successive_halving(edge_peak_fn, None, {"lr": loguniform(1e-4, 1e-1)}, n_trials=27, eta=3, executor=None)
        successive_halving(nan_fn, None, {"lr": loguniform(1e-4, 1e-1)}, n_trials=3, eta=3, executor=None)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert messages[0].startswith("successive_halving: best lr=") and "lower edge" in messages[0]
    assert messages[1] == "successive_halving: no trial of the search finished"
    assert {w.filename for w in caught} == {__file__}                # they point at the caller's line


def test_successive_halving_keeps_the_top_third_and_triples_the_budget():
    space = {"lr": loguniform(1e-5, 1e1)}
    result = successive_halving(peak_fn, None, space, n_trials=9, min_budget=1, eta=3, seed=2, executor=None)
    rungs = {r: [t for t in result.trials if t["rung"] == r] for r in range(3)}
    assert [len(rungs[r]) for r in range(3)] == [9, 3, 1]
    assert [{t["budget"] for t in rungs[r]} for r in range(3)] == [{1}, {3}, {9}]
    for r in range(2):
        top = sorted(rungs[r], key=lambda t: -t["val_acc"])[:len(rungs[r + 1])]
        assert {t["number"] for t in top} == {t["number"] for t in rungs[r + 1]}
    survivor = rungs[2][0]
    assert survivor["seed"] == trial_seed(2, survivor["number"])         # a configuration keeps its seed
    assert result.best_trial is survivor


# --- results ---------------------------------------------------------------------------------------------------------
def test_results_table_csv_json_checkpoint_and_plot(problem, tmp_path):
    result = RandomSearch(SPACE, n_trials=5, seed=4).run(mlp_trial(), problem, budget=1, executor=None,
                                                          checkpoint_dir=tmp_path)
    rows = result.table()
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    with open(result.to_csv(tmp_path / "trials.csv")) as f:
        read = list(csv.DictReader(f))
    assert [float(r["val_acc"]) for r in read] == [r["val_acc"] for r in rows]
    assert {"lr", "hidden", "status", "epochs", "seconds"} <= set(read[0])
    with open(result.to_json(tmp_path / "trials.json")) as f:
        doc = json.load(f)
    assert doc["best"]["params"] == result.best_params and len(doc["trials"]) == 5

    path = result.best_checkpoint
    assert os.path.basename(path) == f"best_val{result.best_val_acc:.4f}.npz" and os.path.exists(path)
    model = checkpoint.load_model(path, build_mlp(result.best_params))
    x_val, y_val = problem[2], problem[3]
    acc = float(np.mean(np.argmax(model.forward(x_val), axis=1) == y_val))
    assert acc == pytest.approx(result.best_val_acc, abs=1e-12)

    pytest.importorskip("matplotlib")
    png = result.plot(tmp_path / "acc.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "SearchResult(5 trials" in repr(result) and "val_acc" in str(result)


@pytest.mark.filterwarnings("ignore:CoarseToFine. best")
def test_coarse_to_fine_stage_with_successive_halving():
    space = {"lr": loguniform(1e-6, 1e0)}
    search = CoarseToFine(space, [Stage(8, 1, keep=2), Stage(4, 1, eta=2)], seed=5)
    result = search.run(peak_fn, executor=None)
    fine = [t for t in result.trials if t["stage"] == 1]
    assert sorted((t["rung"], t["budget"]) for t in fine) == [(0, 1)] * 4 + [(1, 2)] * 2 + [(2, 4)]
    assert result.best_trial["stage"] == 1 and result.best_trial["rung"] == 2     # the longest-trained survivor
    assert {t["number"] for t in fine} <= set(range(8, 12))


def test_a_short_budget_record_never_outranks_the_longest_trained_survivor():
    # accuracy that falls with the budget (overfitting): every configuration's best number is its 1-epoch one, but
    # the ranking must not compare a 1-epoch accuracy with a 4-epoch one
    def overfitting_fn(params, data, budget, seed):
        return {"val_acc": 0.9 - abs(math.log10(params["lr"]) + 2) / 10 - 0.05 * budget}

    result = successive_halving(overfitting_fn, None, {"lr": loguniform(1e-4, 1e0)}, n_trials=4, eta=2,
                                executor=None, seed=1)
    budgets = [t["budget"] for t in result.trials]
    assert budgets == sorted(budgets, reverse=True) and set(budgets) == {1, 2, 4}
    best = result.best_trial
    assert best["budget"] == 4 and best["rung"] == 2
    assert best["val_acc"] < max(t["val_acc"] for t in result.trials)     # a 1-epoch record scored higher
    # among equal budgets, accuracy decides
    first_rung = [t["val_acc"] for t in result.trials if t["budget"] == 1]
    assert first_rung == sorted(first_rung, reverse=True)


def test_grid_search_on_the_process_pool_matches_serial():
    space = {"lr": loguniform(1e-4, 1e-1), "h": choice([1, 2])}
    serial = GridSearch(space, points=3, edge=0).run(peak_fn, executor=None)
    pooled = GridSearch(space, points=3, edge=0).run(peak_fn, executor="process", n_workers=2)
    assert len(serial.trials) == 6
    assert [(t["number"], t["val_acc"]) for t in serial.trials] == [(t["number"], t["val_acc"]) for t in pooled.trials]


def test_a_hyperparameter_named_like_a_column_keeps_both_in_the_table_and_csv(tmp_path):
    # "epochs" and "seed" as hyperparameters replaced the trained epochs and the training seed in the table
    def fn(params, data, budget, seed):
        return {"val_acc": params["lr"], "epochs": 7}

    space = {"lr": uniform(0, 1), "epochs": choice([2, 3]), "seed": choice([10, 20]), "error": choice(["x"])}
    result = RandomSearch(space, n_trials=3, seed=0, edge=0).run(fn, executor=None)
    with open(result.to_csv(tmp_path / "trials.csv")) as f:
        read = list(csv.DictReader(f))
    for row, t in zip(read, result.trials):
        assert int(row["epochs"]) == t["epochs"] == 7 and int(row["seed"]) == t["seed"]
        assert int(row["params.epochs"]) == t["params"]["epochs"] and int(row["params.seed"]) == t["params"]["seed"]
        assert row["params.error"] == "x" and row["error"] == ""


def test_printed_table_keeps_its_columns_aligned_with_long_names_and_values():
    # every column was 10 characters wide: a name such as "weight_decay" or a value such as 3.12345e-05 pushed the
    # rest of its line to the right, under the wrong headers
    def fn(params, data, budget, seed):
        return {"val_acc": params["lr"], "val_loss": 0.5}

    space = {"lr": loguniform(1e-6, 1e-4), "weight_decay": loguniform(1e-6, 1e-4)}
    result = RandomSearch(space, n_trials=6, seed=0, edge=0).run(fn, executor=None)
    lines = str(result).splitlines()
    header = lines[0].split()
    assert header[0] == "rank" and "weight_decay" in header and len(lines) == 7
    ends = [lines[0].index(name) + len(name) for name in header]
    for line, t in zip(lines[1:], result.trials):
        cells = line.split()
        assert len(cells) == len(header)
        assert [line.index(" " + cell, end - len(cell) - 1) + len(cell) + 1 for cell, end in zip(cells, ends)] == ends
        assert float(cells[header.index("lr")]) == pytest.approx(t["params"]["lr"], rel=1e-5)
    assert len({len(line) for line in lines}) == 1


def test_json_writes_nan_as_null_and_save_best_needs_weights(tmp_path):
    result = RandomSearch({"lr": loguniform(1e-4, 1.0)}, n_trials=12, seed=3).run(flaky_fn, executor=None)
    with open(result.to_json(tmp_path / "r.json")) as f:
        doc = json.load(f)            # strict JSON: no NaN tokens
    assert any(t["val_acc"] is None and t["status"] == "diverged" for t in doc["trials"])
    with pytest.raises(RuntimeError, match="state_dict"):
        result.save_best(tmp_path)


def test_best_weights_are_the_best_trials_or_none(tmp_path):
    """Only the weaker trials return weights: the best trial's weights are absent, so save_best must refuse rather
    than save a worse trial's weights under the best trial's name."""
    def fn(params, data, budget, seed):
        out = {"val_acc": params["x"]}
        if params["x"] < 0.5:
            out["state_dict"] = {"w": np.array([params["x"]])}
        return out

    search = RandomSearch({"x": uniform(0, 1)}, n_trials=8, seed=0, edge=0)
    assert max(c["x"] for c in search.configurations()) > 0.5 > min(c["x"] for c in search.configurations())
    result = search.run(fn, executor=None)
    assert result.best_params["x"] > 0.5 and result.best_state_dict is None
    with pytest.raises(RuntimeError, match="no 'state_dict' for the best trial"):
        result.save_best(tmp_path)
    assert list(tmp_path.iterdir()) == []
    # every trial returns weights: the best one's are kept
    result = search.run(lambda p, d, b, s: {"val_acc": p["x"], "state_dict": {"w": np.array([p["x"]])}},
                        executor=None)
    assert result.best_state_dict["w"][0] == result.best_params["x"]


def test_an_optional_val_loss_of_none_is_absent_not_an_error():
    record = execute_trial(lambda p, d, b, s: {"val_acc": 0.8, "val_loss": None}, None,
                           {"number": 0, "params": {}, "budget": 1, "seed": 0})
    assert record["status"] == "ok" and record["val_acc"] == 0.8 and math.isnan(record["val_loss"])


def test_stage_budget_takes_numpy_numbers_and_refuses_what_successive_halving_refuses():
    assert Stage(4, budget_epochs=np.int64(3)).budget_epochs == 3
    assert type(Stage(4, budget_epochs=np.float32(2.0)).budget_epochs) is float
    for bad in (float("inf"), True, 0, -1, "3", float("nan")):
        with pytest.raises(ValueError, match="Stage: budget_epochs must be a finite number > 0"):
            Stage(4, budget_epochs=bad)


def test_narrow_space_keeps_a_valid_range_and_clips_values_outside():
    narrow = narrow_space({"x": uniform(1e6, 1e6 + 1)}, [{"x": 1e6 + 0.5}], margin=0)["x"]
    assert 1e6 < narrow.lo < 1e6 + 0.5 < narrow.hi < 1e6 + 1          # rounding to 12 digits had closed it
    assert narrow_space({"x": uniform(0, 1)}, [{"x": 5.0}], margin=0.1)["x"] == uniform(0.9, 1.0)
    assert narrow_space({"x": uniform(0, 1)}, [{"x": -5.0}], margin=0.1)["x"] == uniform(0.0, 0.1)
    assert narrow_space({"lr": loguniform(1e-4, 1.0)}, [{"lr": 0.0}], margin=0.25)["lr"].lo == 1e-4
    assert narrow_space({"n": randint(0, 10)}, [{"n": 40}], margin=0.1)["n"] == randint(8, 10)
    for margin in (True, float("inf"), "0.1"):
        with pytest.raises(ValueError, match="margin"):
            narrow_space({"x": uniform(0, 1)}, [{"x": 0.5}], margin=margin)


@pytest.mark.parametrize("dist", [uniform(0.0, 1.0), loguniform(1e-5, 1e-1)], ids=["uniform", "loguniform"])
def test_narrowed_range_holds_every_value_it_narrows_around_even_with_margin_0(dist):
    """With margin 0 the narrowed ends are the extreme values themselves, and tidying them to 12 significant digits
    (or exp(log(v))) moved an end inwards past its value about three times in four: the best trials' values lay
    outside the range the next stage sampled from."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        values = [dist.sample(rng) for _ in range(3)]
        for margin in (0.0, 0.1):
            narrowed = dist.narrow(values, margin)
            assert narrowed.lo <= min(values) and max(values) <= narrowed.hi, (values, margin, narrowed)
    # the tidying still applies where it cuts nothing off (the docstring's example)
    assert narrow_space({"lr": loguniform(1e-4, 1e0)}, [{"lr": 1e-2}], margin=0.25)["lr"] == loguniform(1e-3, 1e-1)


def test_coarse_to_fine_with_margin_0_and_keep_1_narrows_below_one_float_without_failing():
    """Margin 0 around one value keeps a sliver of 1e-6 of the width: 2e-6 of uniform(0, 1), then 4e-12, then
    8e-18, below the spacing of floats near 0.565 (1.1e-16): the fourth stage's narrow_space built uniform(v, v) and
    the search failed with 'need lo < hi' after three stages had trained. The range now keeps the neighbouring
    floats around the value, inside the old range."""
    def score(params, data, budget, seed):
        return {"val_acc": -abs(params["p"] - 0.3) - abs(math.log10(params["lr"]) + 2)}

    space = {"p": uniform(0.0, 1.0), "lr": loguniform(1e-4, 1e-1)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CoarseToFine(space, [Stage(4, keep=1)] * 5, margin=0.0).run(score, executor=None)
    assert len(result.stage_spaces) == 5 and len(result.trials) == 20
    for previous, current in zip(result.stage_spaces, result.stage_spaces[1:]):
        for name in space:
            assert previous[name].lo <= current[name].lo < current[name].hi <= previous[name].hi
    value = 0.5651311671186441                       # the case that failed, directly
    narrowed = uniform(np.nextafter(value, 0), np.nextafter(value, 1)).narrow([value], 0.0)
    assert narrowed.lo <= value <= narrowed.hi and narrowed.lo < narrowed.hi


def test_randint_grid_is_exact_for_large_integers():
    big = 10 ** 17
    assert randint(big, big + 10).grid(3) == [big, big + 4, big + 9]         # linspace over floats gave big + 16
    for lo, hi, n in [(0, 10, 3), (1, 8, 4), (0, 2, 5), (3, 4, 3), (0, 100, 7), (5, 17, 6)]:
        assert randint(lo, hi).grid(n) == sorted({int(round(v)) for v in np.linspace(lo, hi - 1, n)})


def test_plot_uses_a_log_axis_for_loguniform(tmp_path, monkeypatch):
    figure = pytest.importorskip("matplotlib.figure")
    result = RandomSearch({"lr": loguniform(1e-4, 1.0), "p": uniform(0, 1)}, n_trials=6, seed=0,
                          edge=0).run(peak_fn, executor=None)
    saved = []
    original = figure.Figure.savefig
    monkeypatch.setattr(figure.Figure, "savefig", lambda self, *a, **k: (saved.append(self), original(self, *a, **k)))
    result.plot(tmp_path / "p.png")
    (fig,) = saved
    assert [ax.get_xscale() for ax in fig.axes] == ["log", "linear"]
    assert [ax.get_xlabel() for ax in fig.axes] == ["lr", "p"]
    best = max(t["val_acc"] for t in result.trials)
    assert best in fig.axes[0].collections[1].get_offsets()[:, 1]       # the gold star marks the best trial


def test_plot_places_every_option_of_a_choice_even_tuples_and_none(tmp_path, monkeypatch):
    # layer sizes as tuples made the plot fail ("x and y must be the same size"); None was silently left out
    figure = pytest.importorskip("matplotlib.figure")
    options = [(64,), (128, 64), (256, 128), None]

    def fn(params, data, budget, seed):
        if params["lr"] > 0.05:
            return {"val_acc": float("nan")}
        return {"val_acc": params["lr"]}

    result = RandomSearch({"lr": loguniform(1e-4, 1e-1), "layers": choice(options)}, n_trials=12, seed=0,
                          edge=0).run(fn, executor=None)
    saved = []
    original = figure.Figure.savefig
    monkeypatch.setattr(figure.Figure, "savefig", lambda self, *a, **k: (saved.append(self), original(self, *a, **k)))
    result.plot(tmp_path / "p.png")
    ax = saved[0].axes[1]
    ok = [t for t in result.trials if t["status"] == "ok"]
    failed = [t for t in result.trials if t["status"] != "ok"]
    assert ok and failed and {t["params"]["layers"] for t in result.trials} == set(options)
    points, best, crosses = (c.get_offsets() for c in ax.collections)
    assert points[:, 0].tolist() == [options.index(t["params"]["layers"]) for t in ok]
    assert points[:, 1].tolist() == [t["val_acc"] for t in ok]
    assert best.tolist() == [[options.index(ok[0]["params"]["layers"]), ok[0]["val_acc"]]]
    assert crosses[:, 0].tolist() == [options.index(t["params"]["layers"]) for t in failed]
    assert list(ax.get_xticks()) == [0, 1, 2, 3]
    assert [label.get_text() for label in ax.get_xticklabels()] == ["(64,)", "(128, 64)", "(256, 128)", "None"]


@pytest.mark.parametrize("executor", [None, "process"])
def test_progress_hears_every_trial_once(executor, capsys):
    heard = []
    result = RandomSearch({"lr": loguniform(1e-4, 1.0)}, n_trials=6, seed=3).run(
        flaky_fn, executor=executor, n_workers=2, progress=heard.append)
    assert sorted(r["number"] for r in heard) == list(range(6))
    assert {r["number"]: r["status"] for r in heard} == {t["number"]: t["status"] for t in result.trials}
    RandomSearch({"lr": loguniform(1e-3, 1e-1)}, n_trials=2, seed=0, edge=0).run(peak_fn, executor=None,
                                                                                  progress=True)
    assert capsys.readouterr().out.count("val_acc") == 2


def test_a_trial_whose_validation_loss_is_not_finite_diverged_and_is_not_ranked():
    # weights that blew up at the last step: the guard never saw the next loss, the argmax over overflowed scores
    # still gave an accuracy (the majority class's, 0.8) and the trial won the search
    record = execute_trial(lambda p, d, b, s: {"val_acc": 0.8, "val_loss": float("nan")}, None,
                           {"number": 0, "params": {}, "budget": 1, "seed": 0})
    assert record["status"] == "diverged" and "validation loss is nan" in record["error"]
    search = RandomSearch({"lr": choice([1e20, 0.01])}, n_trials=2, seed=0)

    def trial(params, data, budget, seed):
        blew_up = params["lr"] > 1
        return {"val_acc": 0.8 if blew_up else 0.5, "val_loss": math.nan if blew_up else 1.06}

    result = search.run(trial, executor=None)
    assert [t["status"] for t in result.trials if t["params"]["lr"] > 1] == ["diverged"] * sum(
        t["params"]["lr"] > 1 for t in result.trials)
    if any(t["params"]["lr"] < 1 for t in result.trials):
        assert result.best_params["lr"] == 0.01


def test_a_trial_that_calls_sys_exit_is_an_error_not_the_end_of_the_search():
    import sys
    record = execute_trial(lambda p, d, b, s: sys.exit(3), None, {"number": 0, "params": {}, "budget": 1, "seed": 0})
    assert record["status"] == "error" and record["error"].startswith("SystemExit: 3")


def test_run_refuses_a_budget_or_threads_per_trial_it_cannot_use():
    search = RandomSearch({"lr": loguniform(1e-3, 1e-1)}, n_trials=1, seed=0)
    trial = lambda p, d, b, s: {"val_acc": 0.5}          # noqa: E731
    for bad in (0, -3, float("nan"), True):
        with pytest.raises(ValueError, match="budget must be a finite number > 0"):
            search.run(trial, executor=None, budget=bad)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="threads_per_trial"):
            search.run(trial, executor=None, threads_per_trial=bad)


def test_run_refuses_a_number_of_workers_that_is_not_a_positive_int():
    """int() took n_workers=1.5 for one worker, True for one and "2" for two, without a word."""
    from cynet.tune.executors import make_runner

    search = RandomSearch({"lr": loguniform(1e-3, 1e-1)}, n_trials=1, seed=0)
    trial = lambda p, d, b, s: {"val_acc": 0.5}          # noqa: E731
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"RandomSearch\.run: n_workers must be an int >= 1"):
            search.run(trial, executor="process", n_workers=bad)
        with pytest.raises(ValueError, match=r"tune: n_workers must be an int >= 1"):
            make_runner("process", trial, None, n_workers=bad)
    assert make_runner("process", trial, None, n_workers=np.int64(2)).n_workers == 2


def test_grid_points_refuses_names_that_are_not_in_the_space():
    with pytest.raises(ValueError, match=r"points names \['learning_rate'\], which are not in the space"):
        grid_points({"lr": loguniform(1e-3, 1e-1), "reg": uniform(0, 1)}, {"learning_rate": 10, "reg": 2})


def test_successive_halving_takes_the_pools_multiprocessing_context():
    """RandomSearch.run takes mp_context (forkserver/spawn: parallel kernels in the workers); successive_halving had
    no way to pass it. A context of its own gives the same table as the serial run."""
    import multiprocessing
    space = {"lr": loguniform(1e-4, 1e-1)}
    serial = successive_halving(peak_fn, None, space, n_trials=4, eta=2, seed=3, executor=None)
    pooled = successive_halving(peak_fn, None, space, n_trials=4, eta=2, seed=3, executor="process", n_workers=1,
                                mp_context=multiprocessing.get_context("fork"))
    assert [(t["number"], t["budget"], t["val_acc"]) for t in pooled.trials] == \
        [(t["number"], t["budget"], t["val_acc"]) for t in serial.trials]


# --- common mistakes with spaces: a clear error naming the function, never a silent wrong answer -------------------
def test_choice_refuses_a_string_or_a_non_sequence():
    # choice("relu") silently became choice(['r', 'e', 'l', 'u']); choice(5) failed with "'int' object is not iterable"
    for bad in ("relu", 5, None, {"a": 1}):
        with pytest.raises(TypeError, match=r"choice: options must be a list of candidates"):
            choice(bad)


def test_narrow_space_refuses_one_dict_or_configurations_without_the_names():
    space = {"lr": loguniform(1e-4, 1e-1)}
    with pytest.raises(TypeError, match=r"narrow_space: best_params must be a list .*pass \[best_params\]"):
        narrow_space(space, {"lr": 1e-2})               # result.best_params: was "string indices must be integers"
    with pytest.raises(TypeError, match=r"narrow_space: .*got an element 0.01"):
        narrow_space(space, [1e-2])
    with pytest.raises(ValueError, match=r"narrow_space: the configuration \{'LR': 0.01\} has no value for \['lr'\]"):
        narrow_space(space, [{"LR": 1e-2}])             # was a bare KeyError: 'lr'


def test_edge_report_refuses_swapped_or_malformed_arguments():
    space, params = {"lr": loguniform(1e-4, 1e-1)}, {"lr": 0.09}
    assert edge_report(space, params)                   # the right order reports the edge
    with pytest.raises(TypeError, match=r"edge_report: the arguments are swapped: call edge_report\(space, params\)"):
        edge_report(params, space)                      # silently returned [] ("no edge")
    with pytest.raises(TypeError, match=r"edge_report: params must be a dict"):
        edge_report(space, [0.09])                      # silently returned []
    with pytest.raises(TypeError, match=r"a search space must be a non-empty dict"):
        edge_report([1], params)                        # was "'list' object has no attribute 'items'"
    with pytest.raises(ValueError, match=r"edge_report: params\['lr'\] must be a finite number > 0 .*got -1"):
        edge_report(space, {"lr": -1})                  # was "math domain error"
    with pytest.raises(ValueError, match=r"edge_report: edge must be a number in \[0, 0.5\), got '0.1'"):
        edge_report(space, params, edge="0.1")


def test_sample_space_refuses_a_seed_for_the_generator():
    with pytest.raises(TypeError, match=r"sample_space: rng must be a numpy.random.Generator .*got 0"):
        sample_space({"lr": loguniform(1e-4, 1e-1)}, 0)     # was "'int' object has no attribute 'uniform'"


def test_coarse_to_fine_refuses_a_single_stage_or_none():
    space = {"lr": loguniform(1e-4, 1e-1)}
    with pytest.raises(TypeError, match=r"CoarseToFine: stages must be a non-empty list of Stage.*pass \[stage\]"):
        CoarseToFine(space, Stage(4))                   # was "'Stage' object is not iterable"
    with pytest.raises(TypeError, match=r"CoarseToFine: stages must be a non-empty list of Stage, got None"):
        CoarseToFine(space, None)


def test_lograndint_draws_integers_with_the_log_uniform_probabilities():
    # P(k) = log((k + 1) / k) / log(hi / lo): floor(exp(t)), t uniform on [log lo, log hi); chi-squared on 8 bins
    dist = lograndint(32, 1025)
    rng = np.random.default_rng(0)
    draws = np.array([dist.sample(rng) for _ in range(100_000)])
    assert draws.dtype.kind == "i" and draws.min() == 32 and draws.max() == 1024
    edges = [32, 45, 64, 91, 128, 181, 256, 512, 1025]
    k = np.arange(32, 1025)
    p = np.log((k + 1) / k) / np.log(1025 / 32)
    expected = np.array([p[(k >= lo) & (k < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])]) * len(draws)
    observed = np.histogram(draws, bins=edges)[0]
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert chi2 < 24.3, (observed, expected)           # 7 degrees of freedom, p = 0.001
    # as many draws in 32..63 as in 512..1024 (randint would give 16x as many to the latter)
    assert abs(np.mean(draws < 64) - np.mean(draws >= 512)) < 0.01


def test_lograndint_of_a_range_too_narrow_for_its_logarithms():
    # lograndint(2**60, 2**60 + 10): log(lo) == log(hi - 1) in float64, so every draw was lo, the 5-point grid had
    # 2 points and edge_report raised ZeroDivisionError; there the law is uniform within 1e-9, drawn as randint's
    lo = 2 ** 60
    dist = lograndint(lo, lo + 10)
    rng = np.random.default_rng(0)
    draws = {dist.sample(rng) for _ in range(200)}
    assert draws == set(range(lo, lo + 10))
    assert dist.grid(5) == [lo, lo + 2, lo + 4, lo + 7, lo + 9]
    assert dist.position(lo + 9) == 1.0 and dist.position(lo) == 0.0
    assert len(edge_report({"n": dist}, {"n": lo})) == 1
    narrowed = dist.narrow([lo + 5], 0.1)
    assert isinstance(narrowed, LogRandInt) and narrowed.lo <= lo + 5 < narrowed.hi


def test_lograndint_grid_narrow_and_edges_work_in_log_scale():
    dist = lograndint(32, 1025)
    assert dist.grid(6) == [32, 64, 128, 256, 512, 1024] and dist.grid(1) == [181]     # sqrt(32 * 1024) = 181.02
    assert grid_points({"h": dist}, 3) == {"h": [32, 181, 1024]}
    # around 100 with margin 0.1 of the log-width log(1024 / 32): 100 * 32^(-0.1) = 70.7 -> 70, 100 * 32^0.1 = 141.4
    # -> 142 (hi excluded: 143)
    narrowed = narrow_space({"h": dist}, [{"h": 100}], margin=0.1)["h"]
    assert isinstance(narrowed, LogRandInt) and (narrowed.lo, narrowed.hi) == (70, 143)
    assert narrow_space({"h": dist}, [{"h": 100}, {"h": 300}], margin=0)["h"] == lograndint(100, 301)
    position = (np.log(1000) - np.log(32)) / (np.log(1024) - np.log(32))            # 0.99 of the log-range
    assert f"position {position:.2f} of the log-range" in edge_report({"h": dist}, {"h": 1000})[0]
    assert edge_report({"h": dist}, {"h": 181}) == []
    with pytest.raises(ValueError, match="lograndint: lo must be an int >= 1"):
        lograndint(0, 10)
    with pytest.raises(ValueError, match="need lo < hi"):
        lograndint(10, 10)


def test_a_one_point_grid_of_randint_is_its_middle_value_like_the_other_ranges():
    # GridSearch(points=1) gave randint(1, 10)'s lower end 1 (then "lies at the lower edge"), uniform(0, 1)'s midpoint
    assert grid_points({"n": randint(1, 10), "p": uniform(0, 1)}, 1) == {"n": [5], "p": [0.5]}
    assert randint(1, 2).grid(1) == [1] and randint(0, 4).grid(1) == [2]


# --- the objective: ranking by validation loss (or any key train_fn returns) ----------------------------------------
LOSS_OF_K = [0.3, 0.1, 0.3, float("nan"), 0.2, 0.1, float("inf")]


def loss_table_fn(params, data, budget, seed):
    """A regression-like trial: a validation loss from a table, no accuracy at all."""
    return {"val_loss": LOSS_OF_K[params["k"]]}


def test_ranking_by_val_loss_is_the_hand_sorted_order_with_ties_by_number(tmp_path):
    search = GridSearch({"k": choice(list(range(len(LOSS_OF_K))))}, objective="val_loss", edge=0)
    assert search.objective == Objective("val_loss", "min")
    result = search.run(loss_table_fn, executor=None)
    # by hand: losses 0.1 (k=1, k=5: lower number first), 0.2 (k=4), 0.3 (k=0, k=2); then NaN and inf: diverged
    assert [t["number"] for t in result.trials] == [1, 5, 4, 0, 2, 3, 6]
    assert [t["status"] for t in result.trials] == ["ok"] * 5 + ["diverged"] * 2
    assert all(math.isnan(t["val_acc"]) for t in result.trials)
    assert result.best_params == {"k": 1} and result.best_value == 0.1 and math.isnan(result.best_val_acc)
    table = result.table()
    assert list(table[0])[:7] == ["rank", "number", "stage", "rung", "status", "val_loss", "val_acc"]
    assert [row["val_loss"] for row in table[:5]] == [0.1, 0.1, 0.2, 0.3, 0.3]
    with open(result.to_csv(tmp_path / "t.csv")) as f:
        assert [int(r["number"]) for r in csv.DictReader(f)] == [1, 5, 4, 0, 2, 3, 6]
    assert "best val_loss=0.1000" in repr(result)
    document = json.load(open(result.to_json(tmp_path / "t.json")))
    assert document["best"]["objective"] == "val_loss" and document["best"]["val_loss"] == 0.1
    # the same trials by the default objective: none returned val_acc, so all are errors naming the key
    default = GridSearch({"k": choice(list(range(len(LOSS_OF_K))))}, edge=0).run(loss_table_fn, executor=None)
    assert all(t["status"] == "error" and "'val_acc'" in t["error"] for t in default.trials)


def test_objective_with_mode_max_on_another_key_and_the_plot_label(tmp_path):
    def r2_fn(params, data, budget, seed):
        return {"r2": [0.5, 0.9, 0.7, 0.9][params["k"]], "val_acc": 1.0 - params["k"]}

    result = RandomSearch({"k": choice([0, 1, 2, 3])}, n_trials=4, objective="r2", mode="max", edge=0).run(
        r2_fn, executor=None)
    by_hand = sorted(((-t["r2"], t["number"]) for t in result.trials))
    assert [t["number"] for t in result.trials] == [number for _, number in by_hand]
    assert result.best_trial["r2"] == 0.9 and result.best_trial["params"]["k"] in (1, 3)
    assert "r2" in result.table()[0] and list(result.table()[0]).index("r2") == 5
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    labels = []
    original = Figure.savefig
    try:
        Figure.savefig = lambda self, *a, **k: labels.extend(ax.get_ylabel() for ax in self.axes)
        result.plot(tmp_path / "r2.png")
    finally:
        Figure.savefig = original
    assert labels == ["r2 (higher is better)"]


def halving_loss_fn(params, data, budget, seed):
    return {"val_loss": abs(math.log10(params["lr"]) + 2) / budget}


def test_successive_halving_keeps_the_lowest_losses_by_hand():
    result = successive_halving(halving_loss_fn, None, {"lr": loguniform(1e-4, 1e0)}, n_trials=9, eta=3,
                                executor=None, objective="val_loss")
    rungs = {r: [t for t in result.trials if t["rung"] == r] for r in (0, 1, 2)}
    assert [len(rungs[r]) for r in (0, 1, 2)] == [9, 3, 1]
    for r in (0, 1):
        lowest = sorted(rungs[r], key=lambda t: t["val_loss"])[:len(rungs[r + 1])]
        assert {t["number"] for t in rungs[r + 1]} == {t["number"] for t in lowest}
    # maximising the loss instead keeps the worst ones: the objective decides
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)        # its best lies at the edge of the range, as it should
        worst = successive_halving(halving_loss_fn, None, {"lr": loguniform(1e-4, 1e0)}, n_trials=9, eta=3,
                                   executor=None, objective="val_loss", mode="max")
    top = sorted((t for t in worst.trials if t["rung"] == 0), key=lambda t: -t["val_loss"])[:3]
    assert {t["number"] for t in worst.trials if t["rung"] == 1} == {t["number"] for t in top}
    assert result.best_trial["rung"] == 2 and result.best_trial["number"] == rungs[2][0]["number"]


def test_coarse_to_fine_narrows_around_the_lowest_loss_trials():
    space = {"lr": loguniform(1e-5, 1e0)}
    search = CoarseToFine(space, [Stage(10, keep=2), Stage(4)], margin=0.1, edge=0, objective="val_loss")
    result = search.run(halving_loss_fn, executor=None)
    stage0 = [t for t in result.trials if t["stage"] == 0]
    kept = sorted(stage0, key=lambda t: (t["val_loss"], t["number"]))[:2]
    logs = sorted(math.log10(t["params"]["lr"]) for t in kept)
    pad = 0.1 * 5                                       # margin times the old width of 5 decades
    low, high = max(logs[0] - pad, -5), min(logs[1] + pad, 0)
    narrowed = result.stage_spaces[1]["lr"]
    assert math.log10(narrowed.lo) == pytest.approx(low) and math.log10(narrowed.hi) == pytest.approx(high)
    assert all(narrowed.lo <= t["params"]["lr"] <= narrowed.hi for t in result.trials if t["stage"] == 1)


def test_execute_trial_with_an_objective():
    spec = {"number": 0, "params": {}, "budget": 1, "seed": 0}
    record = execute_trial(lambda p, d, b, s: {"val_loss": 0.25}, None, spec, objective=Objective("val_loss"))
    assert record["status"] == "ok" and record["val_loss"] == 0.25 and math.isnan(record["val_acc"])
    record = execute_trial(lambda p, d, b, s: {"val_acc": 0.9}, None, spec, objective="val_loss")
    assert record["status"] == "error" and "'val_loss'" in record["error"] and "objective" in record["error"]
    record = execute_trial(lambda p, d, b, s: {"val_acc": 0.9, "val_loss": float("inf")}, None, spec,
                           objective="val_loss")
    assert record["status"] == "diverged"
    record = execute_trial(lambda p, d, b, s: {"mae": float("nan"), "val_acc": 0.5}, None, spec,
                           objective=Objective("mae", "min"))
    assert record["status"] == "diverged" and math.isnan(record["mae"])


def test_objective_refusals():
    space = {"lr": loguniform(1e-4, 1e-1)}
    with pytest.raises(ValueError, match=r"RandomSearch: mode must be 'min' or 'max', got 'lowest'"):
        RandomSearch(space, objective="val_loss", mode="lowest")
    with pytest.raises(ValueError, match=r"GridSearch: objective 'val_mae' needs mode="):
        GridSearch(space, objective="val_mae")
    with pytest.raises(TypeError, match="CoarseToFine: objective must be"):
        CoarseToFine(space, [Stage(2)], objective=3)
    with pytest.raises(ValueError, match="successive_halving: objective 'epochs' is a trial record's bookkeeping"):
        successive_halving(halving_loss_fn, None, space, objective="epochs", mode="min")
    with pytest.raises(ValueError, match="contradicts"):
        RandomSearch(space, objective=Objective("val_loss"), mode="max")


def regression_fold_fn(params, data, budget, seed):
    return {"val_acc": math.nan, "val_loss": 0.5 + params["lr"]}      # a regression model: no accuracy


def test_a_cross_validated_trial_averaging_another_key_than_the_search_ranks_by_is_refused():
    # CrossValidatedTrial's default 'val_acc' under a search by 'val_loss' (a regression model): every trial was
    # 'diverged' with a finite val_loss (0.51, 0.6) and no error, and the search ended with no finished trial
    from cynet.tune import CrossValidatedTrial, KFold

    x, y = np.zeros((12, 2), np.float32), np.zeros(12, np.float32)
    space = {"lr": loguniform(1e-2, 1e-1)}
    with pytest.raises(ValueError, match=r"RandomSearch.run: the CrossValidatedTrial averages 'val_acc' over its "
                                         r"folds, but the search ranks by 'val_loss'; pass "
                                         r"CrossValidatedTrial\(\.\.\., objective='val_loss'\)"):
        RandomSearch(space, 2, objective="val_loss").run(CrossValidatedTrial(regression_fold_fn, cv=KFold(3)),
                                                         (x, y), executor=None)
    result = RandomSearch(space, 2, objective="val_loss").run(
        CrossValidatedTrial(regression_fold_fn, cv=KFold(3), objective="val_loss"), (x, y), executor=None)
    assert [t["status"] for t in result.trials] == ["ok", "ok"]
    assert result.best_value == min(0.5 + t["params"]["lr"] for t in result.trials)


def build_linear(params):
    return nn.Linear(3, 1)


def test_regression_search_with_mse_is_ranked_by_val_loss_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3).astype(np.float32)
    data = (x[:64], y[:64], x[64:], y[64:])
    trial = make_trainer_trial(build_linear, nn.loss.MSELoss(), sgd_factory, batch_size=16)
    search = GridSearch({"lr": choice([1e-3, 1e-2, 1e-1])}, objective="val_loss", edge=0)
    result = search.run(trial, data, budget=3, executor=None, checkpoint_dir=tmp_path)
    assert [t["status"] for t in result.trials] == ["ok"] * 3
    assert all(math.isnan(t["val_acc"]) and math.isfinite(t["val_loss"]) for t in result.trials)
    losses = [t["val_loss"] for t in result.trials]
    assert losses == sorted(losses) and result.best_params == {"lr": 0.1}     # the largest step learns the most
    # the oracle: the saved best weights' mean squared error on the validation split, computed with NumPy
    state = result.best_state_dict
    weight, bias = (np.asarray(v, dtype=np.float64) for v in state.values())
    weight = weight if weight.shape == (3, 1) else weight.T
    mse = np.mean((x[64:].astype(np.float64) @ weight + bias - y[64:]) ** 2)
    assert result.best_value == pytest.approx(mse, rel=1e-5)
    assert os.path.basename(result.best_checkpoint) == f"best_val_loss{result.best_value:.4g}.npz"
    # by the default objective these trials have no accuracy: all "diverged", none best
    with pytest.raises(RuntimeError, match="no trial finished"):
        GridSearch({"lr": choice([1e-2])}, edge=0).run(trial, data, budget=1, executor=None).best_trial

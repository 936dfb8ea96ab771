"""The same search on a Dask cluster (LocalCluster, 2 worker processes): identical results to the serial run, data
shipped once per worker, failures recorded, a dying worker costs only the trial that killed it. Skipped when
``distributed`` is not installed."""
import os
import time
import types

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from cynet.tune import RandomSearch, loguniform, uniform  # noqa: E402
from cynet.tune.executors import _DaskRunner, execute_trial, is_dask_client  # noqa: E402

from test_tune import SPACE, dying_where_fn, flaky_fn, make_problem, mlp_trial, raising_twin_of_dying_where_fn, \
    where_fn  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=40)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def test_client_is_detected(client):
    assert is_dask_client(client) and not is_dask_client(object())


@pytest.mark.filterwarnings("ignore:RandomSearch. best")
def test_dask_matches_serial_and_process_pool_exactly(client):
    problem = make_problem()
    search = RandomSearch(SPACE, n_trials=6, seed=11)
    table = lambda r: [(t["number"], t["status"], t["val_acc"]) for t in r.trials]
    # the same threads per trial everywhere: BLAS sums in another order with another thread count
    serial = search.run(mlp_trial(), problem, budget=1, executor=None, threads_per_trial=1)
    pooled = search.run(mlp_trial(), problem, budget=1, executor="process", n_workers=2, threads_per_trial=1)
    on_dask = search.run(mlp_trial(), problem, budget=1, executor=client, threads_per_trial=1)
    assert table(serial) == table(pooled) == table(on_dask)
    for a, b in zip(serial.best_state_dict.values(), on_dask.best_state_dict.values()):
        np.testing.assert_array_equal(a, b)


def data_plugins(client):
    return {name for names in client.run(lambda dask_worker: list(dask_worker.plugins)).values() for name in names
            if name.startswith("cynet-tune-data")}


@pytest.mark.filterwarnings("ignore:RandomSearch. best")
def test_dask_data_reach_each_worker_once(client):
    data = np.arange(10_000.0)
    result = RandomSearch({"lr": uniform(0, 1)}, n_trials=8, seed=0).run(where_fn, data, executor=client)
    seen = {}
    for t in result.trials:
        seen.setdefault(t["history"]["pid"], set()).add(t["history"]["data_id"])
    assert os.getpid() not in seen and 1 <= len(seen) <= 2
    assert all(len(ids) == 1 for ids in seen.values())     # one copy per worker, shared by its trials
    assert {t["history"]["threads"] for t in result.trials} == {1}
    assert data_plugins(client) == set()                    # the workers drop the data when the search ends


def test_dask_failures_are_recorded(client):
    space = {"lr": loguniform(1e-4, 1.0)}
    serial = RandomSearch(space, n_trials=8, seed=3).run(flaky_fn, executor=None)
    on_dask = RandomSearch(space, n_trials=8, seed=3).run(flaky_fn, executor=client)
    assert [(t["number"], t["status"]) for t in serial.trials] == [(t["number"], t["status"]) for t in on_dask.trials]
    assert any(t["status"] == "error" and "boom" in t["error"] for t in on_dask.trials)


def dying_after_a_pause_fn(params, data, budget, seed):
    """:func:`dying_where_fn`, whose killers first give the client time to fetch their worker's last result (a
    result still on a worker that has just died costs Dask a 30 s connect timeout before it recomputes it)."""
    if params["lr"] > 0.1:
        time.sleep(0.5)
    return dying_where_fn(params, data, budget, seed)


def test_dask_a_dying_worker_costs_only_the_trial_that_killed_it():
    # a cluster of its own: this test kills workers (the nannies restart them)
    space = {"lr": loguniform(1e-3, 1.0)}
    configs = RandomSearch(space, n_trials=8, seed=6).configurations()
    killers = {i for i, p in enumerate(configs) if p["lr"] > 0.1}
    assert killers == {5}
    serial = RandomSearch(space, n_trials=8, seed=6).run(raising_twin_of_dying_where_fn, executor=None)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=50) as cluster, distributed.Client(cluster) as own_client:
        on_dask = RandomSearch(space, n_trials=8, seed=6).run(dying_after_a_pause_fn, np.arange(1000.0),
                                                              executor=own_client)
    (killer,) = [t for t in on_dask.trials if t["number"] == 5]
    assert killer["status"] == "error" and "KilledWorker" in killer["error"]
    table = lambda r: sorted((t["number"], t["status"], t["val_acc"], t["val_loss"]) for t in r.trials
                             if t["number"] not in killers)
    assert table(on_dask) == table(serial) and all(row[1] == "ok" for row in table(on_dask))
    seen = {}
    for t in on_dask.trials:
        if t["status"] == "ok":
            seen.setdefault(t["history"]["pid"], set()).add(t["history"]["data_id"])
    assert all(len(ids) == 1 for ids in seen.values())     # restarted workers got the data once too


class ScriptedFuture:
    """Stands in for a Dask future: ``result()`` returns the record or raises the error it was given."""

    def __init__(self, outcome):
        self.outcome = outcome

    def result(self):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize("blamed, culprits, expected_reruns", [
    ({5}, {5}, []),                  # one trial blamed: Dask's verdict stands
    ({5, 7}, {5}, [7]),              # the innocent finishes alone, so the last one left is the culprit
    ({4, 5}, {5}, [5, 4]),           # the culprit kills again alone; then the other must be rerun too
    ({2, 5, 7}, {2, 5}, [7, 5, 2]),
])
def test_killed_worker_verdicts_are_checked_by_running_each_trial_alone(blamed, culprits, expected_reruns):
    specs = [{"number": i, "params": {"lr": i / 10}, "budget": 1, "seed": i} for i in range(8)]
    ok = lambda spec: execute_trial(lambda p, d, b, s: {"val_acc": p["lr"]}, None, spec)
    last_worker = types.SimpleNamespace(address="tcp://127.0.0.1:1")
    verdict = lambda i: distributed.KilledWorker(task=f"trial-{i}", last_worker=last_worker, allowed_failures=3)
    reruns = []

    def rerun_alone(spec):
        reruns.append(spec["number"])
        return ScriptedFuture(verdict(spec["number"]) if spec["number"] in culprits else ok(spec))

    runner = _DaskRunner.__new__(_DaskRunner)       # no cluster: only the settling logic, with scripted reruns
    runner._submit = rerun_alone
    results = [None if i in blamed else ok(spec) for i, spec in enumerate(specs)]
    runner._settle_killed_worker_verdicts(specs, {i: verdict(i) for i in blamed}, results)
    assert reruns == expected_reruns
    assert {r["number"] for r in results if r["status"] == "error"} == culprits
    assert all("KilledWorker" in r["error"] for r in results if r["number"] in culprits)
    assert all(r["status"] == "ok" and r["val_acc"] == r["number"] / 10 for r in results if r["number"] not in culprits)

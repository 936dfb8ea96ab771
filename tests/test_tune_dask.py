"""The same search on a Dask cluster (LocalCluster, 2 worker processes): identical results to the serial run, data
scattered once per worker, failures recorded. Skipped when ``distributed`` is not installed."""
import os

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from cynet.tune import RandomSearch, loguniform, uniform  # noqa: E402
from cynet.tune.executors import is_dask_client  # noqa: E402

from test_tune import SPACE, flaky_fn, make_problem, mlp_trial, where_fn  # noqa: E402


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


@pytest.mark.filterwarnings("ignore:RandomSearch. best")
def test_dask_data_is_scattered_once_per_worker(client):
    data = np.arange(10_000.0)
    result = RandomSearch({"lr": uniform(0, 1)}, n_trials=8, seed=0).run(where_fn, data, executor=client)
    seen = {}
    for t in result.trials:
        seen.setdefault(t["history"]["pid"], set()).add(t["history"]["data_id"])
    assert os.getpid() not in seen and 1 <= len(seen) <= 2
    assert all(len(ids) == 1 for ids in seen.values())     # one copy per worker, shared by its trials
    assert {t["history"]["threads"] for t in result.trials} == {1}


def test_dask_failures_are_recorded(client):
    space = {"lr": loguniform(1e-4, 1.0)}
    serial = RandomSearch(space, n_trials=8, seed=3).run(flaky_fn, executor=None)
    on_dask = RandomSearch(space, n_trials=8, seed=3).run(flaky_fn, executor=client)
    assert [(t["number"], t["status"]) for t in serial.trials] == [(t["number"], t["status"]) for t in on_dask.trials]
    assert any(t["status"] == "error" and "boom" in t["error"] for t in on_dask.trials)

"""Where trials run: in-process, on a local process pool, or on a Dask cluster; failures become records.

A trial is ``train_fn(params, data, budget, seed) -> dict``. :func:`execute_trial` runs one and turns whatever
happens into a record: ``status`` "ok", "diverged" (the trainer's divergence guard fired, or the validation
accuracy is not finite) or "error" (an exception; its text is kept). The runners below ship ``data`` to each worker
once and then only the small per-trial specification:

- serial (``executor=None`` or ``"serial"``): in this process;
- ``"process"``: a :class:`concurrent.futures.ProcessPoolExecutor` whose workers split the cores (threads per
  trial = cores // workers, set by :func:`cynet.set_num_threads` in each worker's initializer, which also receives
  ``train_fn`` and ``data`` once per worker); a worker that dies is recorded as an "error" trial and the pool is
  rebuilt;
- a :class:`distributed.Client` (detected): ``data`` is scattered to every worker once
  (``client.scatter(data, broadcast=True)``) and each trial gets the resulting future;
- any other object with ``submit(fn, *args) -> future`` (``future.result()``): used as given, ``data`` passed
  with every submission.

On the process pool (and Dask) ``train_fn`` and ``data`` must be picklable: module-level functions, or
:func:`cynet.tune.make_trainer_trial` with module-level factories (with the "fork" start method, Linux's default up
to Python 3.13, closures work on the pool too, since nothing is pickled there).

Reproducibility: a trial's outcome depends only on its hyperparameters, seed, budget, data and the number of
threads it runs with. The last matters because BLAS (OpenBLAS, MKL) sums matrix products in another order with
another thread count, and a float32 difference in the last bit can change an accuracy after a few epochs. Trials
therefore give bit-identical results on every executor when they run with the same ``threads_per_trial`` (each
record's "threads" says what it had); the defaults differ (all cores in-process, cores // workers on the pool, 1 on
Dask), so pass ``threads_per_trial`` explicitly when comparing executors.
"""
import concurrent.futures
import math
import time
import traceback
import warnings

import numpy as np

__all__ = ["execute_trial", "make_runner", "is_dask_client"]

STATUSES = ("ok", "diverged", "error")


def _plain(value):
    """NumPy scalars to Python numbers (JSON/CSV friendly)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def execute_trial(train_fn, data, spec, threads=None):
    """Run one trial and return its record (never raises for a failing trial).

    Args:
        train_fn (callable): ``train_fn(params, data, budget, seed) -> dict`` with at least "val_acc".
        data: passed through to ``train_fn``.
        spec (dict): "number", "params", "budget", "seed" (and any bookkeeping keys, copied to the record).
        threads (int or None): run the trial with this many threads (:func:`cynet.threads`). Default None (the
            current setting).

    Returns:
        dict: the spec's keys plus "status", "val_acc", "val_loss", "epochs", "seconds", "threads" (the thread
        count it ran with), "error", "history", "state_dict".

    Example:
        >>> from cynet.tune.executors import execute_trial
        >>> record = execute_trial(lambda p, d, b, s: {"val_acc": p["x"]}, None,
        ...                        {"number": 0, "params": {"x": 0.5}, "budget": 1, "seed": 7})
        >>> record["status"], record["val_acc"]
        ('ok', 0.5)
    """
    import cynet

    record = dict(spec)
    record.update(status="ok", val_acc=math.nan, val_loss=math.nan, epochs=None, seconds=0.0, threads=None,
                  error=None, history=None, state_dict=None)
    start = time.perf_counter()
    try:
        if threads is not None:
            with cynet.threads(int(threads)):
                record["threads"] = cynet.get_num_threads()
                out = train_fn(dict(spec["params"]), data, spec["budget"], spec["seed"])
        else:
            record["threads"] = cynet.get_num_threads()
            out = train_fn(dict(spec["params"]), data, spec["budget"], spec["seed"])
        if not isinstance(out, dict) or "val_acc" not in out:
            raise TypeError(f"train_fn must return a dict with at least 'val_acc', got {out!r:.200}")
        record["val_acc"] = float(out["val_acc"])
        record["val_loss"] = float(out.get("val_loss", math.nan))
        record["epochs"] = _plain(out.get("epochs", spec["budget"]))
        record["history"] = out.get("history")
        record["state_dict"] = out.get("state_dict")
        status = out.get("status", "ok")
        if status not in STATUSES:
            raise ValueError(f"train_fn returned status {status!r}; expected one of {STATUSES}")
        if status == "ok" and not math.isfinite(record["val_acc"]):
            status = "diverged"
        record["status"] = status
        if out.get("stop_reason"):
            record["error"] = str(out["stop_reason"])
    except Exception as error:  # a failing trial is a result, not the end of the search
        record["status"] = "error"
        record["val_acc"] = math.nan
        tb = traceback.format_exception(type(error), error, error.__traceback__)
        record["error"] = f"{type(error).__name__}: {error}\n" + "".join(tb[-3:])
    record["seconds"] = time.perf_counter() - start
    return record


def _error_record(spec, text):
    record = dict(spec)
    record.update(status="error", val_acc=math.nan, val_loss=math.nan, epochs=None, seconds=math.nan, threads=None,
                  error=text, history=None, state_dict=None)
    return record


# --- process pool ----------------------------------------------------------------------------------------------------
_WORKER = {}


def _init_worker(train_fn, data, threads):
    """Process-pool initializer: keep ``train_fn`` and ``data`` for every trial of this worker; set its threads."""
    import cynet

    cynet.set_num_threads(int(threads))
    _WORKER["train_fn"] = train_fn
    _WORKER["data"] = data
    _WORKER["threads"] = int(threads)


def _run_in_worker(spec):
    return execute_trial(_WORKER["train_fn"], _WORKER["data"], spec)


def _run_with_data(train_fn, data, spec, threads):
    return execute_trial(train_fn, data, spec, threads)


def is_dask_client(executor):
    """Whether ``executor`` is a :class:`distributed.Client` (checked without importing distributed needlessly)."""
    for cls in type(executor).__mro__:
        if cls.__name__ == "Client" and cls.__module__.startswith("distributed"):
            return True
    return False


class _Runner:
    """Base of the runners: ``on_result(record)``, when set, is called as each trial's record is final."""

    on_result = None

    def _notify(self, record):
        if self.on_result is not None:
            self.on_result(record)
        return record


class _SerialRunner(_Runner):
    name = "serial"

    def __init__(self, train_fn, data, threads):
        self.train_fn, self.data, self.threads = train_fn, data, threads

    def run(self, specs):
        return [self._notify(execute_trial(self.train_fn, self.data, spec, self.threads)) for spec in specs]

    def close(self):
        pass


class _ProcessRunner(_Runner):
    name = "process"

    def __init__(self, train_fn, data, n_workers, threads, mp_context, max_parallel=None):
        from cynet._threading import available_cpus

        if n_workers is None:
            n_workers = available_cpus() if max_parallel is None else max(1, min(available_cpus(), max_parallel))
        self.n_workers = int(n_workers)
        if self.n_workers < 1:
            raise ValueError(f"tune: n_workers must be >= 1, got {n_workers!r}")
        self.threads = int(threads) if threads is not None else max(1, available_cpus() // self.n_workers)
        self.train_fn, self.data, self.mp_context = train_fn, data, mp_context
        self.pool = None

    def _pool(self):
        if self.pool is None:
            self.pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.n_workers, mp_context=self.mp_context, initializer=_init_worker,
                initargs=(self.train_fn, self.data, self.threads))
        return self.pool

    def _discard_pool(self):
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def run(self, specs):
        futures = [self._pool().submit(_run_in_worker, spec) for spec in specs]
        results, retry = [None] * len(specs), []
        for i, future in enumerate(futures):
            try:
                results[i] = self._notify(future.result())
            except concurrent.futures.process.BrokenProcessPool:
                retry.append(i)
            except Exception as error:  # e.g. a result that cannot be pickled back
                results[i] = self._notify(_error_record(specs[i], f"{type(error).__name__}: {error}"))
        if retry:
            self._discard_pool()
            # a dead worker takes every trial in flight with it: rerun those one at a time to find the culprit
            for i in retry:
                try:
                    results[i] = self._notify(self._pool().submit(_run_in_worker, specs[i]).result())
                except concurrent.futures.process.BrokenProcessPool as error:
                    self._discard_pool()
                    results[i] = self._notify(_error_record(
                        specs[i], f"the worker process died while running this trial (BrokenProcessPool: {error})"))
        return results

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)   # an interrupted search drops its queued trials
            self.pool = None


class _DaskRunner(_Runner):
    name = "dask"

    def __init__(self, client, train_fn, data, threads):
        self.client, self.train_fn = client, train_fn
        self.threads = 1 if threads is None else int(threads)
        self.data_future = client.scatter(data, broadcast=True)

    def run(self, specs):
        futures = [self.client.submit(_run_with_data, self.train_fn, self.data_future, spec, self.threads,
                                      pure=False, key=f"cynet-trial-{spec['number']}-{spec.get('rung', 0)}-"
                                                      f"{time.monotonic_ns()}")
                   for spec in specs]
        results = []
        for spec, future in zip(specs, futures):
            try:
                results.append(self._notify(future.result()))
            except Exception as error:  # KilledWorker, lost connections, ...
                results.append(self._notify(_error_record(spec, f"{type(error).__name__}: {error}")))
        return results

    def close(self):
        try:
            self.client.cancel(self.data_future)
        except Exception:
            pass


class _ExecutorRunner(_Runner):
    name = "executor"

    def __init__(self, executor, train_fn, data, threads):
        self.executor, self.train_fn, self.data, self.threads = executor, train_fn, data, threads

    def run(self, specs):
        futures = [self.executor.submit(_run_with_data, self.train_fn, self.data, spec, self.threads)
                   for spec in specs]
        results = []
        for spec, future in zip(specs, futures):
            try:
                results.append(self._notify(future.result()))
            except Exception as error:
                results.append(self._notify(_error_record(spec, f"{type(error).__name__}: {error}")))
        return results

    def close(self):
        pass


def make_runner(executor, train_fn, data, *, n_workers=None, threads_per_trial=None, mp_context=None,
                max_parallel=None):
    """The runner for ``executor``: an object with ``run(specs) -> records`` (in order) and ``close()``.

    Args:
        executor: None or "serial", "process", a :class:`distributed.Client`, or any object with ``submit``.
        train_fn (callable): the trial function.
        data: shipped once per worker (see the module docstring).
        n_workers (int or None): process-pool size. Default None (:func:`cynet.available_cpus`, but no more than
            ``max_parallel``).
        threads_per_trial (int or None): threads each trial uses. Default None: the current setting when serial,
            cores // workers on the process pool, 1 on a Dask cluster.
        mp_context: a :mod:`multiprocessing` context for the process pool. Default None (the platform's).
        max_parallel (int or None): the most trials the search ever runs at once (so that a 2-trial search on 16
            cores starts 2 workers of 8 threads, not 16 of 1). Default None.

    Returns:
        object: the runner (set its ``on_result`` to a callable to hear about each finished trial).
    """
    if executor is None or executor == "serial":
        return _SerialRunner(train_fn, data, threads_per_trial)
    if executor == "process":
        return _ProcessRunner(train_fn, data, n_workers, threads_per_trial, mp_context, max_parallel)
    if isinstance(executor, str):
        raise ValueError(f"tune: executor must be None, 'serial', 'process', a distributed.Client or an object with "
                         f"submit(), got {executor!r}")
    if is_dask_client(executor):
        return _DaskRunner(executor, train_fn, data, threads_per_trial)
    if callable(getattr(executor, "submit", None)):
        if n_workers is not None:
            warnings.warn("tune: n_workers is ignored with a user-supplied executor", UserWarning, stacklevel=3)
        return _ExecutorRunner(executor, train_fn, data, threads_per_trial)
    raise TypeError(f"tune: executor must be None, 'serial', 'process', a distributed.Client or an object with "
                    f"submit(), got {type(executor).__name__}")

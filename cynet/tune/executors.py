"""Where trials run: in-process, on a local process pool, or on a Dask cluster; failures become records.

A trial is ``train_fn(params, data, budget, seed) -> dict``. :func:`execute_trial` runs one and turns whatever
happens into a record: ``status`` "ok", "diverged" (the trainer's divergence guard fired, or the validation
accuracy is not finite) or "error" (an exception; its text is kept). The runners below ship ``data`` to each worker
once and then only the small per-trial specification:

- serial (``executor=None`` or ``"serial"``): in this process;
- ``"process"``: a :class:`concurrent.futures.ProcessPoolExecutor` whose workers split the cores (threads per
  trial = cores // workers, set by :func:`cynet.set_num_threads` in each worker's initializer, which also receives
  ``train_fn`` and ``data`` once per worker); a trial that kills its worker is recorded as an "error" (the trials
  that were running when the pool broke are run again, each in a process of its own, to tell it from the innocent
  ones), and the trials that had not started go on in parallel on a new pool;
- a :class:`distributed.Client` (detected): ``data`` reach every worker once, through a worker plugin that the
  scheduler also gives to workers that join or restart later; each trial carries only the plugin's name. A worker
  that dies costs only the trial that killed it (Dask's ``KilledWorker``, checked by a rerun alone when Dask blamed
  several trials); the others finish, or run again elsewhere;
- any other object with ``submit(fn, *args) -> future`` (``future.result()``): used as given, ``data`` passed
  with every submission.

On the process pool (and Dask) ``train_fn`` and ``data`` must be picklable: module-level functions, or
:func:`cynet.tune.make_trainer_trial` with module-level factories (with the "fork" start method, Linux's default up
to Python 3.13, closures work on the pool too, since nothing is pickled there).

Threads in forked workers: libgomp's OpenMP team does not survive fork(), so in pool workers forked from a process
that had imported cynet ("fork", Linux's default up to Python 3.13) the kernels run on one thread whatever
``threads_per_trial`` says (BLAS keeps it), with a RuntimeWarning; pass ``mp_context=multiprocessing.get_context(
"forkserver")`` (or "spawn") for parallel kernels in the workers.

Reproducibility: a trial's outcome depends only on its hyperparameters, seed, budget, data and the number of
threads it runs with. The last matters because BLAS (OpenBLAS, MKL) sums matrix products in another order with
another thread count, and a float32 difference in the last bit can change an accuracy after a few epochs. Trials
therefore give bit-identical results on every executor when they run with the same ``threads_per_trial`` (each
record's "threads" says what it had); the defaults differ (all cores in-process, cores // workers on the pool, 1 on
Dask), so pass ``threads_per_trial`` explicitly when comparing executors.
"""
import concurrent.futures
import concurrent.futures.process
import math
import multiprocessing
import time
import traceback
import uuid
import warnings

import numpy as np

from cynet.tune.space import _check_int, _trial_params

__all__ = ["execute_trial", "make_runner", "is_dask_client"]

STATUSES = ("ok", "diverged", "error")


def _plain(value):
    """NumPy scalars to Python numbers (JSON/CSV friendly)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def execute_trial(train_fn, data, spec, threads=None, objective=None):
    """Run one trial and return its record (never raises for a failing trial).

    The trial is "diverged" when its objective value (``objective``'s key; "val_acc" by default) is not finite, or
    when it returned a "val_loss" that is not finite; "error" when ``train_fn`` raised or returned no value for
    the objective's key (the error names the key). With an objective other than "val_acc", "val_acc" is optional
    (NaN when absent: a regression model has no accuracy).

    Args:
        train_fn (callable): ``train_fn(params, data, budget, seed) -> dict`` with at least the objective's key
            ("val_acc" by default); ``params`` is a deep copy of ``spec["params"]``, which it may change without
            touching the record or the space.
        data: passed through to ``train_fn``.
        spec (dict): "number", "params", "budget", "seed" (and any bookkeeping keys, copied to the record).
        threads (int or None): run the trial with this many threads (:func:`cynet.threads`). Default None (the
            current setting).
        objective (str, Objective or None): what the search ranks by (:class:`cynet.tune.Objective`). Default None
            ("val_acc").

    Returns:
        dict: the spec's keys plus "status", "val_acc", "val_loss", "epochs", "seconds", "threads" (the thread
        count it ran with), "error", "history", "state_dict"; the objective's key (a float) when it is another one;
        and "<key>_folds" (floats) and "<key>_std" when ``train_fn`` returns per-fold values of the objective's key
        (:class:`cynet.tune.CrossValidatedTrial` does: "val_acc_folds" and "val_acc_std" by default).

    Example:
        >>> from cynet.tune.executors import execute_trial
        >>> record = execute_trial(lambda p, d, b, s: {"val_acc": p["x"]}, None,
        ...                        {"number": 0, "params": {"x": 0.5}, "budget": 1, "seed": 7})
        >>> record["status"], record["val_acc"]
        ('ok', 0.5)
    """
    import cynet

    key = _objective_key(objective)
    record = dict(spec)
    record.update(status="ok", val_acc=math.nan, val_loss=math.nan, epochs=None, seconds=0.0, threads=None,
                  error=None, history=None, state_dict=None)
    if key not in record:
        record[key] = math.nan
    start = time.perf_counter()
    try:
        if threads is not None:
            with cynet.threads(int(threads)):
                record["threads"] = cynet.get_num_threads()
                out = train_fn(_trial_params(spec["params"]), data, spec["budget"], spec["seed"])
        else:
            record["threads"] = cynet.get_num_threads()
            out = train_fn(_trial_params(spec["params"]), data, spec["budget"], spec["seed"])
        if not isinstance(out, dict) or out.get(key) is None:
            objective_note = "" if key == "val_acc" else ", the search's objective"
            raise TypeError(f"train_fn must return a dict with at least {key!r}{objective_note}, got {out!r:.200}")
        val_acc = out.get("val_acc")
        record["val_acc"] = math.nan if val_acc is None else float(val_acc)    # optional unless the objective
        val_loss = out.get("val_loss")
        record["val_loss"] = math.nan if val_loss is None else float(val_loss)     # optional: None as absent
        record[key] = float(out[key])
        record["epochs"] = _plain(out.get("epochs", spec["budget"]))
        record["history"] = out.get("history")
        record["state_dict"] = out.get("state_dict")
        if out.get(f"{key}_folds") is not None:
            # a cross-validated trial: keep each fold's value, so the results show the spread behind the mean
            folds = [float(v) for v in out[f"{key}_folds"]]
            record[f"{key}_folds"] = folds
            record[f"{key}_std"] = float(out[f"{key}_std"]) if out.get(f"{key}_std") is not None \
                else float(np.std(folds)) if folds else math.nan
        status = out.get("status", "ok")
        if status not in STATUSES:
            raise ValueError(f"train_fn returned status {status!r}; expected one of {STATUSES}")
        if status == "ok" and not math.isfinite(record[key]):
            status = "diverged"
        reason = out.get("stop_reason")
        if status == "ok" and val_loss is not None and not math.isfinite(record["val_loss"]):
            # weights that blew up at the last step: the guard never saw the next loss, and an argmax over
            # overflowed scores still gives an accuracy (the majority class's), which would rank
            status = "diverged"
            reason = reason or f"the validation loss is {record['val_loss']}: the weights diverged"
        record["status"] = status
        if reason:
            record["error"] = str(reason)
    except (Exception, SystemExit) as error:  # a failing trial is a result, not the end of the search (sys.exit too)
        record["status"] = "error"
        record["val_acc"] = math.nan
        record[key] = math.nan
        tb = traceback.format_exception(type(error), error, error.__traceback__)
        record["error"] = f"{type(error).__name__}: {error}\n" + "".join(tb[-3:])
    record["seconds"] = time.perf_counter() - start
    return record


def _objective_key(objective):
    """The record key an objective (None, a key, or a :class:`cynet.tune.Objective`) ranks by."""
    if objective is None:
        return "val_acc"
    return objective if isinstance(objective, str) else objective.key


def _error_record(spec, text, objective=None):
    record = dict(spec)
    record.update(status="error", val_acc=math.nan, val_loss=math.nan, epochs=None, seconds=math.nan, threads=None,
                  error=text, history=None, state_dict=None)
    record[_objective_key(objective)] = math.nan
    return record


# --- process pool ----------------------------------------------------------------------------------------------------
_WORKER = {}
_IDLE = -1          # a worker's entry in the table of running trials while it runs none


def _init_worker(train_fn, data, threads, running_tickets=None, next_slot=None, objective=None):
    """Process-pool initializer: keep ``train_fn`` and ``data`` for every trial of this worker; set its threads.

    ``running_tickets`` (a shared array, one entry per worker) and ``next_slot`` (a shared counter) let the parent
    see which trial each worker is running: this worker takes the next free entry and writes the ticket of its
    trial there while the trial runs, so that after a worker dies the parent knows which trials were running.
    """
    import cynet

    cynet.set_num_threads(int(threads))
    _WORKER["train_fn"] = train_fn
    _WORKER["data"] = data
    _WORKER["threads"] = int(threads)
    _WORKER["objective"] = objective
    _WORKER["running_tickets"], _WORKER["slot"] = running_tickets, None
    if running_tickets is not None:
        with next_slot.get_lock():
            if next_slot.value < len(running_tickets):
                _WORKER["slot"] = next_slot.value
            next_slot.value += 1


def _run_in_worker(spec, ticket):
    """Run one trial on this worker's ``train_fn`` and ``data``, publishing ``ticket`` while it runs."""
    running_tickets, slot = _WORKER.get("running_tickets"), _WORKER.get("slot")
    if slot is not None:
        running_tickets[slot] = ticket
    try:
        return execute_trial(_WORKER["train_fn"], _WORKER["data"], spec, objective=_WORKER.get("objective"))
    finally:
        if slot is not None:
            running_tickets[slot] = _IDLE


def _run_with_data(train_fn, data, spec, threads, objective=None):
    return execute_trial(train_fn, data, spec, threads, objective)


def is_dask_client(executor):
    """Whether ``executor`` is a :class:`distributed.Client` (checked without importing distributed needlessly)."""
    for cls in type(executor).__mro__:
        if cls.__name__ == "Client" and cls.__module__.startswith("distributed"):
            return True
    return False


class _Runner:
    """Base of the runners: ``on_result(record)``, when set, is called as each trial's record is final."""

    on_result = None
    objective = None    # what the search ranks by (None: "val_acc"); set by make_runner

    def _error_record(self, spec, text):
        return _error_record(spec, text, self.objective)

    def _notify(self, record):
        if self.on_result is not None:
            self.on_result(record)
        return record


class _SerialRunner(_Runner):
    name = "serial"

    def __init__(self, train_fn, data, threads):
        self.train_fn, self.data, self.threads = train_fn, data, threads

    def run(self, specs):
        return [self._notify(execute_trial(self.train_fn, self.data, spec, self.threads, self.objective))
                for spec in specs]

    def close(self):
        pass


class _ProcessPool:
    """A :class:`concurrent.futures.ProcessPoolExecutor` whose workers publish the ticket of the trial they run.

    Args:
        n_workers (int): worker processes.
        mp_context: the :mod:`multiprocessing` context (None: the platform's).
        train_fn, data, threads, objective: handed to each worker once, by the initializer.
    """

    def __init__(self, n_workers, mp_context, train_fn, data, threads, objective=None):
        context = mp_context if mp_context is not None else multiprocessing.get_context()
        self.running_tickets = context.RawArray("q", [_IDLE] * n_workers)
        next_slot = context.Value("i", 0)
        self.executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=n_workers, mp_context=mp_context, initializer=_init_worker,
            initargs=(train_fn, data, threads, self.running_tickets, next_slot, objective))

    def submit(self, spec, ticket):
        return self.executor.submit(_run_in_worker, spec, ticket)

    def tickets_running(self):
        """The tickets of the trials the workers were running (after a break: when the pool broke)."""
        return {ticket for ticket in self.running_tickets if ticket != _IDLE}

    def shutdown(self, wait):
        self.executor.shutdown(wait=wait, cancel_futures=True)


class _ProcessRunner(_Runner):
    """Trials on a local process pool; a worker that dies costs one error record and a rebuilt pool.

    When a worker dies, :class:`concurrent.futures.ProcessPoolExecutor` fails every unfinished trial with
    ``BrokenProcessPool``, whether it was running or still queued. The pool's workers publish which trial each one
    runs, so after a break the runner knows the few trials that were running (the culprit and the innocent trials
    it took with it) from the many that had not started. The runner then

    - runs each trial that was running in a process of its own (all of them at once, one process each): a trial
      whose process dies there is the culprit and is recorded as an "error"; the others finish normally;
    - reruns the trials that had not started on a new pool, in parallel as before.
    """

    name = "process"

    def __init__(self, train_fn, data, n_workers, threads, mp_context, max_parallel=None):
        from cynet._threading import available_cpus

        if n_workers is None:
            n_workers = available_cpus() if max_parallel is None else max(1, min(available_cpus(), max_parallel))
        # int() took 1.5 for 1 worker, True for 1 and "2" for 2 without a word
        self.n_workers = _check_int("tune", "n_workers", n_workers, 1)
        self.threads = int(threads) if threads is not None else max(1, available_cpus() // self.n_workers)
        self.train_fn, self.data, self.mp_context = train_fn, data, mp_context
        self.pool = None
        self.tickets_issued = 0     # each submission to the shared pool gets a new ticket (> 0)

    def _pool(self):
        if self.pool is None:
            self.pool = _ProcessPool(self.n_workers, self.mp_context, self.train_fn, self.data, self.threads,
                                     self.objective)
        return self.pool

    def _discard_pool(self):
        if self.pool is not None:
            self.pool.shutdown(wait=False)
            self.pool = None

    def run(self, specs):
        results = [None] * len(specs)
        waiting = list(range(len(specs)))
        breaks_before_any_trial_ran = 0
        while waiting:
            lost, running = self._run_on_shared_pool(specs, waiting, results)
            if not lost:
                break
            if running:
                breaks_before_any_trial_ran = 0
                self._run_each_in_its_own_process(specs, running, results)
            else:
                # no trial was running (an initializer that fails, a worker killed from outside while idle):
                # try a new pool once, then give up rather than loop
                breaks_before_any_trial_ran += 1
                if breaks_before_any_trial_ran == 2:
                    for i in lost:
                        results[i] = self._notify(self._error_record(
                            specs[i], "the process pool broke twice before this trial started (BrokenProcessPool; "
                                      "does the worker initializer fail, or is something killing the workers?)"))
                    break
            waiting = [i for i in lost if i not in running]
        return results

    def _run_on_shared_pool(self, specs, indices, results):
        """Run ``specs[indices]`` on the pool; returns the indices lost to a broken pool and those of them that
        were running when it broke (the pool is then discarded)."""
        pool = self._pool()
        tickets = {}
        futures = []
        unsubmitted = []
        for n, i in enumerate(indices):
            self.tickets_issued += 1
            ticket = self.tickets_issued
            try:
                futures.append((i, pool.submit(specs[i], ticket)))
            except concurrent.futures.process.BrokenProcessPool:
                # a worker died (a trial that kills it may run before the last submission): this trial and the
                # ones after it never reached the pool, like queued trials of a broken pool
                unsubmitted = list(indices[n:])
                break
            tickets[ticket] = i
        lost = []
        for i, future in futures:
            try:
                results[i] = self._notify(future.result())
            except concurrent.futures.process.BrokenProcessPool:
                lost.append(i)
            except Exception as error:  # e.g. a result that cannot be pickled back
                results[i] = self._notify(self._error_record(specs[i], f"{type(error).__name__}: {error}"))
        lost += unsubmitted
        if not lost:
            return [], set()
        running = {tickets[t] for t in pool.tickets_running() if t in tickets} & set(lost)
        self._discard_pool()
        return lost, running

    def _run_each_in_its_own_process(self, specs, indices, results):
        """Run each of ``specs[indices]`` alone in a one-worker pool; a trial whose worker dies is recorded."""
        pools = {i: _ProcessPool(1, self.mp_context, self.train_fn, self.data, self.threads, self.objective)
                 for i in sorted(indices)}
        try:
            futures = [(i, pool.submit(specs[i], ticket=0)) for i, pool in pools.items()]
            for i, future in futures:
                try:
                    results[i] = self._notify(future.result())
                except concurrent.futures.process.BrokenProcessPool as error:
                    results[i] = self._notify(self._error_record(
                        specs[i], f"the worker process died while running this trial alone (BrokenProcessPool: "
                                  f"{error})"))
                except Exception as error:
                    results[i] = self._notify(self._error_record(specs[i], f"{type(error).__name__}: {error}"))
        finally:
            for pool in pools.values():
                pool.shutdown(wait=True)

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)   # an interrupted search drops its queued trials
            self.pool = None


def _worker_data_plugin(data):
    """A :class:`distributed.diagnostics.plugin.WorkerPlugin` that holds ``data`` on every worker.

    The scheduler keeps the plugin (pickled once, by the client) and installs it on each worker as it joins,
    including a worker that a nanny restarts after a trial killed it; trials read the data from their worker's
    plugin. Unlike a scattered future, nothing depends on a replica that a dying worker can take with it. The
    scheduler holds the pickled data until the search ends.
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class TrialData(WorkerPlugin):
        def __init__(self, data):
            self.data = data

        def teardown(self, worker):
            self.data = None

    return TrialData(data)


def _run_with_worker_data(train_fn, plugin_name, spec, threads, objective=None):
    """Dask task: run one trial on the data held by this worker's plugin ``plugin_name``."""
    from distributed import get_worker

    return execute_trial(train_fn, get_worker().plugins[plugin_name].data, spec, threads, objective)


class _DaskRunner(_Runner):
    """Trials on a Dask cluster; the data reach each worker once, through a worker plugin.

    A worker that dies (a trial that calls ``os._exit``, segfaults, runs out of memory) is restarted by its nanny
    and gets the data again from the scheduler; Dask reschedules the trials it was running and, once a trial has
    been on ``distributed.scheduler.allowed-failures + 1`` workers that died, fails it with ``KilledWorker``. Dask
    counts every trial assigned to a dying worker, including those queued behind the culprit, so a ``KilledWorker``
    verdict is checked: when several trials got one, each is run again alone (the latest submitted first) until the
    verdicts are settled (an innocent trial then finishes; a culprit kills its workers again and keeps its error).
    A single trial with ``KilledWorker``, or the last one left once the others proved innocent, keeps Dask's
    verdict without a rerun.

    Each culprit costs ``allowed-failures + 1`` worker restarts (twice that when a rerun confirms it). A
    :class:`distributed.LocalCluster` closes a worker for good when it finds it dead again
    ``distributed.deploy.lost-worker-timeout`` (15 s) after a death, so many such trials can use up its workers.
    """

    name = "dask"

    def __init__(self, client, train_fn, data, threads):
        self.client, self.train_fn = client, train_fn
        self.threads = 1 if threads is None else int(threads)
        self.plugin_name = f"cynet-tune-data-{uuid.uuid4().hex}"
        client.register_plugin(_worker_data_plugin(data), name=self.plugin_name)

    def _submit(self, spec):
        key = f"cynet-trial-{spec['number']}-{spec.get('rung', 0)}-{time.monotonic_ns()}"
        return self.client.submit(_run_with_worker_data, self.train_fn, self.plugin_name, spec, self.threads,
                                  self.objective, pure=False, key=key)

    def run(self, specs):
        from distributed import KilledWorker, as_completed

        finished, index_of = as_completed(), {}
        for i, spec in enumerate(specs):
            future = self._submit(spec)
            index_of[future.key] = i
            finished.add(future)
        results, killed_worker = [None] * len(specs), {}
        for future in finished:
            i = index_of[future.key]
            try:
                results[i] = self._notify(future.result())
            except KilledWorker as error:
                killed_worker[i] = error
            except Exception as error:  # lost connections, cancelled futures, ...
                results[i] = self._notify(self._error_record(specs[i], f"{type(error).__name__}: {error}"))
            finally:
                # a result left on the cluster is lost with its worker and computed again: let it go once read
                future.release()
        self._settle_killed_worker_verdicts(specs, killed_worker, results)
        return results

    def _settle_killed_worker_verdicts(self, specs, killed_worker, results):
        """Rerun alone the trials Dask failed with ``KilledWorker`` until it is clear which of them are culprits."""
        from distributed import KilledWorker

        # latest submitted first: on a one-thread worker, the trials Dask blames with the culprit are those queued
        # behind it, submitted after it, and once they are cleared the culprit needs no rerun
        unsettled = sorted(killed_worker, reverse=True)
        culprit_confirmed = False
        while unsettled:
            i = unsettled.pop(0)
            if not unsettled and not culprit_confirmed:
                # workers died, and every other suspect finished when alone: this trial killed them
                results[i] = self._notify(self._error_record(specs[i], f"KilledWorker: {killed_worker[i]}"))
                break
            try:
                results[i] = self._notify(self._submit(specs[i]).result())
            except KilledWorker as error:
                culprit_confirmed = True
                results[i] = self._notify(self._error_record(specs[i], f"KilledWorker (also when run alone): {error}"))
            except Exception as error:
                results[i] = self._notify(self._error_record(specs[i], f"{type(error).__name__}: {error}"))

    def close(self):
        try:
            self.client.unregister_worker_plugin(self.plugin_name)
        except Exception:
            pass


class _ExecutorRunner(_Runner):
    name = "executor"

    def __init__(self, executor, train_fn, data, threads):
        self.executor, self.train_fn, self.data, self.threads = executor, train_fn, data, threads

    def run(self, specs):
        futures = [self.executor.submit(_run_with_data, self.train_fn, self.data, spec, self.threads,
                                        self.objective)
                   for spec in specs]
        results = []
        for spec, future in zip(specs, futures):
            try:
                results.append(self._notify(future.result()))
            except Exception as error:
                results.append(self._notify(self._error_record(spec, f"{type(error).__name__}: {error}")))
        return results

    def close(self):
        pass


def make_runner(executor, train_fn, data, *, n_workers=None, threads_per_trial=None, mp_context=None,
                max_parallel=None, objective=None):
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
        objective (str, Objective or None): what the search ranks by, passed to :func:`execute_trial`. Default
            None ("val_acc").

    Returns:
        object: the runner (set its ``on_result`` to a callable to hear about each finished trial).
    """
    runner = _make_runner(executor, train_fn, data, n_workers, threads_per_trial, mp_context, max_parallel)
    runner.objective = objective
    return runner


def _make_runner(executor, train_fn, data, n_workers, threads_per_trial, mp_context, max_parallel):
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
            warnings.warn("tune: n_workers is ignored with a user-supplied executor", UserWarning, stacklevel=4)
        return _ExecutorRunner(executor, train_fn, data, threads_per_trial)
    raise TypeError(f"tune: executor must be None, 'serial', 'process', a distributed.Client or an object with "
                    f"submit(), got {type(executor).__name__}")

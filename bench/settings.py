"""Settings and helpers shared by the benchmark modules (not a test module: pytest does not collect it).

``CYNET_BENCH_THREADS``: the thread counts of the per-group benchmarks, comma-separated (default ``1,2``, the
development machine's cores). A host with more cores measures OpenMP scaling with, for example,
``CYNET_BENCH_THREADS=1,2,4,8,16 python -m pytest bench/test_bench_activations.py --benchmark-only ...``; report.py
prints one row per thread count.
"""
import os
import statistics
import time

import numpy as np

DEFAULT_THREADS = (1, 2)


def bench_threads(environ=os.environ):
    """The thread counts to benchmark: ``CYNET_BENCH_THREADS`` parsed as positive integers, else (1, 2).

    >>> bench_threads({"CYNET_BENCH_THREADS": "1, 4,16"})
    [1, 4, 16]
    >>> bench_threads({})
    [1, 2]
    """
    text = environ.get("CYNET_BENCH_THREADS", "").strip()
    if not text:
        return list(DEFAULT_THREADS)
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ValueError(f"CYNET_BENCH_THREADS={text!r}: expected positive integers separated by commas, "
                         "such as 1,2,4,8,16")
    return counts


def memory_pass(kind, inputs, out, torch=None, to_torch=None, stream_threads=None, read_first=False):
    """The floor of a kernel: one plain memory pass over the same bytes, as a zero-argument callable.

    ``kind`` is ``"copy"`` (``out = inputs[0]``: one array read, one written) or ``"add"``
    (``out = inputs[0] + inputs[1]``: two read, one written). Three ways to move them:

    - default: NumPy (``np.copyto``, ``np.add``) on one thread, ordinary stores;
    - ``torch``: the same through torch on the current thread count (``to_torch`` maps an array to a tensor sharing
      its memory; default ``torch.from_numpy``), the floor for more than one thread that one NumPy thread cannot show;
    - ``stream_threads=n``: cynet's streaming pass on n threads (``cynet._kernels.memory``): non-temporal stores, so
      each written byte crosses to memory once, where an ordinary store first reads its line (3 transfers per copied
      byte instead of 2). cynet's kernels stream outputs of 32 MiB or more; out of cache this is the floor they must
      be held to, in cache the ordinary stores are faster;
    - ``stream_threads=n, read_first=True``: a read of every input (``memory.count_nonzero``: each byte once, nothing
      written) and then the streaming pass: the floor of a kernel that must read its inputs twice (a batch norm,
      whose statistics come before its first output value), out of cache.

    >>> a, b, c = np.ones(3, np.float32), np.full(3, 2, np.float32), np.zeros(3, np.float32)
    >>> memory_pass("add", [a, b], c)()
    array([3., 3., 3.], dtype=float32)
    >>> memory_pass("copy", [b], c, stream_threads=2)(); c
    array([2., 2., 2.], dtype=float32)
    """
    if kind not in ("copy", "add"):
        raise ValueError(f"memory_pass: kind must be 'copy' or 'add', got {kind!r}")
    if stream_threads is not None:
        from cynet._kernels import load

        if not all(a.flags.c_contiguous for a in (out, *inputs)):
            raise ValueError("memory_pass: the streaming pass takes C-contiguous arrays")
        memory = load("memory")
        flat_out = out.reshape(-1)
        flat = [a.reshape(-1) for a in inputs]
        if kind == "copy":
            (src,) = flat
            stream = (lambda: memory.stream_copy(src, flat_out, stream_threads))
        else:
            first, second = flat
            stream = (lambda: memory.stream_add(first, second, flat_out, stream_threads))
        if not read_first:
            return stream

        def read_then_stream():
            for array in flat:
                memory.count_nonzero(array, stream_threads)
            stream()
        return read_then_stream
    if read_first:
        raise ValueError("memory_pass: read_first goes with stream_threads")
    if torch is None:
        if kind == "copy":
            (src,) = inputs
            return lambda: np.copyto(out, src)
        first, second = inputs
        return lambda: np.add(first, second, out=out)
    to_torch = to_torch or torch.from_numpy
    t_out = to_torch(out)
    if kind == "copy":
        (t_src,) = (to_torch(a) for a in inputs)
        return lambda: t_out.copy_(t_src)
    t_first, t_second = (to_torch(a) for a in inputs)
    add = torch.add
    return lambda: add(t_first, t_second, out=t_out)


def in_place_pass(targets, source, threads):
    """The floor of an in-place update (a fused optimiser step): every row of ``targets`` (a (k, n) array) read and
    written back in place, ``source`` (n values) read once: ``targets[j] += source`` on ``threads`` threads
    (``cynet._kernels.memory.add_in_place``). The writes go into lines just read, so there is no read for ownership:
    SGD with momentum (p and the velocity updated, g read) moves 5 parameter sizes, Adam (p, m, v; g) 7.

    >>> t = np.zeros((2, 3), np.float32)
    >>> in_place_pass(t, np.arange(3, dtype=np.float32), 1)(); t
    array([[0., 1., 2.],
           [0., 1., 2.]], dtype=float32)
    """
    from cynet._kernels import load

    memory = load("memory")
    return lambda: memory.add_in_place(targets, source, threads)


class InterleavedRounds:
    """The ``setup`` of an interleaved pedantic run: before each timed call of cynet, one call of every floor (the
    fastest of them counts for the round) and then, when given, one of torch's; :meth:`record` stores the medians.

    ``torch_call`` may be set to None before the run (torch cannot run the case). With ``names`` (one per floor, in
    order; a floor appended later needs its name appended too), :meth:`record` also stores the median of the per-round
    ratios cynet / each floor (``ratio_to_each_floor_median``). ``bounds`` ({name: call}) are timed in each round too
    but are not floors (a slower pass that a kind of kernel cannot beat, e.g. a two-pass one): :meth:`record` stores
    the median ratio cynet / each (``ratio_to_bound_median``).
    """

    def __init__(self, floors, torch_call=None, names=None, bounds=None):
        self.floors, self.torch_call = list(floors), torch_call
        self.names = list(names) if names is not None else None
        self.bounds = dict(bounds or {})
        self.torch_seconds, self.each_floor_seconds = [], []
        self.bound_seconds = {name: [] for name in self.bounds}

    def warm_up(self):
        """One untimed call of each floor, bound and of torch's call."""
        for call in self.floors + list(self.bounds.values()) + ([self.torch_call] if self.torch_call else []):
            call()

    def __call__(self):
        each = []
        for floor in self.floors:
            start = time.perf_counter()
            floor()
            each.append(time.perf_counter() - start)
        self.each_floor_seconds.append(each)
        for name, call in self.bounds.items():
            start = time.perf_counter()
            call()
            self.bound_seconds[name].append(time.perf_counter() - start)
        if self.torch_call is not None:
            start = time.perf_counter()
            self.torch_call()
            self.torch_seconds.append(time.perf_counter() - start)

    def record(self, benchmark, **info):
        """Store in ``benchmark.extra_info``: the floor's median, the per-round ratios cynet / floor
        (``ratio_to_floor_median``, and every ratio) and, when torch was timed, torch / cynet
        (``torch_over_cynet_median``), with ``info`` (``impl="cynet"``, the thread count, ...). With
        ``--benchmark-disable`` nothing was timed and only ``info`` is stored."""
        benchmark.extra_info.update(info)
        stats = getattr(benchmark, "stats", None)
        if stats is None:
            return
        cynet_seconds = list(stats.stats.data)
        floor_seconds = [min(each) for each in self.each_floor_seconds]       # the fastest floor of each round
        ratios = [c / f for c, f in zip(cynet_seconds, floor_seconds)]
        benchmark.extra_info.update(interleaved_floor_median=statistics.median(floor_seconds),
                                    ratio_to_floor_median=statistics.median(ratios),
                                    ratios=[round(r, 4) for r in ratios])
        if self.names is not None:
            benchmark.extra_info["ratio_to_each_floor_median"] = {
                name: statistics.median([c / each[k] for c, each in zip(cynet_seconds, self.each_floor_seconds)])
                for k, name in enumerate(self.names)}
        if self.bounds:
            benchmark.extra_info["ratio_to_bound_median"] = {
                name: statistics.median([c / b for c, b in zip(cynet_seconds, seconds)])
                for name, seconds in self.bound_seconds.items()}
        if self.torch_seconds:
            benchmark.extra_info.update(
                interleaved_torch_median=statistics.median(self.torch_seconds),
                torch_over_cynet_median=statistics.median([t / c for t, c in zip(self.torch_seconds,
                                                                                   cynet_seconds)]))

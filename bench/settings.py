"""Settings and helpers shared by the benchmark modules (not a test module: pytest does not collect it).

``CYNET_BENCH_THREADS``: the thread counts of the per-group benchmarks, comma-separated (default ``1,2``, the
development machine's cores). A host with more cores measures OpenMP scaling with, for example,
``CYNET_BENCH_THREADS=1,2,4,8,16 python -m pytest bench/test_bench_activations.py --benchmark-only ...``; report.py
prints one row per thread count.
"""
import os
import statistics

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


def memory_pass(kind, inputs, out, torch=None, to_torch=None):
    """The floor of a kernel: one plain memory pass over the same bytes, as a zero-argument callable.

    ``kind`` is ``"copy"`` (``out = inputs[0]``: one array read, one written) or ``"add"``
    (``out = inputs[0] + inputs[1]``: two read, one written). Without ``torch``: NumPy, one thread. With it: the same
    through torch on the current thread count (``to_torch`` maps an array to a tensor sharing its memory; default
    ``torch.from_numpy``), the floor for more than one thread, which one NumPy thread cannot show.

    >>> a, b, c = np.ones(3, np.float32), np.full(3, 2, np.float32), np.zeros(3, np.float32)
    >>> memory_pass("add", [a, b], c)()
    array([3., 3., 3.], dtype=float32)
    """
    if kind not in ("copy", "add"):
        raise ValueError(f"memory_pass: kind must be 'copy' or 'add', got {kind!r}")
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


def record_interleaved(benchmark, floor_seconds, torch_seconds, **info):
    """Store an interleaved run's medians in ``benchmark.extra_info``: the floor's, the per-round ratios cynet / floor
    (``ratio_to_floor_median``, and every ratio) and, when torch was timed, torch / cynet (``torch_over_cynet_median``),
    with ``info`` (``impl="cynet"``, the thread count, ...). The rounds are the pedantic run's, each after its
    ``setup`` (which timed the floors and torch); with ``--benchmark-disable`` nothing was timed and only ``info`` is
    stored."""
    benchmark.extra_info.update(info)
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return
    cynet_seconds = list(stats.stats.data)
    ratios = [c / f for c, f in zip(cynet_seconds, floor_seconds)]
    benchmark.extra_info.update(interleaved_floor_median=statistics.median(floor_seconds),
                                ratio_to_floor_median=statistics.median(ratios),
                                ratios=[round(r, 4) for r in ratios])
    if torch_seconds:
        benchmark.extra_info.update(
            interleaved_torch_median=statistics.median(torch_seconds),
            torch_over_cynet_median=statistics.median([t / c for t, c in zip(torch_seconds, cynet_seconds)]))

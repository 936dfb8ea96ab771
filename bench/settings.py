"""Settings shared by the benchmark modules (not a test module: pytest does not collect it).

``CYNET_BENCH_THREADS``: the thread counts of the per-group benchmarks, comma-separated (default ``1,2``, the
development machine's cores). A host with more cores measures OpenMP scaling with, for example,
``CYNET_BENCH_THREADS=1,2,4,8,16 python -m pytest bench/test_bench_activations.py --benchmark-only ...``; report.py
prints one row per thread count.
"""
import os

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

"""The one place that decides how many threads cynet uses, for its OpenMP kernels and for BLAS alike.

Resolution of the default, first match wins:

1. ``cynet.set_num_threads(n)`` / ``with cynet.threads(n):``;
2. the ``OMP_NUM_THREADS`` environment variable (its first entry, as OpenMP reads it);
3. the CPUs this process may actually use: the affinity mask, capped by a cgroup CPU quota (containers).

The kernels receive the count explicitly (``num_threads=`` on every parallel loop), so the OpenMP runtime's own
default plays no part. BLAS (NumPy's OpenBLAS/MKL) is limited to the same count through threadpoolctl whenever the
count is set, so BLAS calls and cynet's kernels, which alternate and never run at the same time, each use at most the
cores given and never oversubscribe them.

Alternating is also where the two thread pools can fight: an idle OpenMP worker *spins* for a while after each
parallel loop (libgomp's default), and OpenBLAS's workers need those cores for the next matrix product. Measured on
the 2-core development machine, a (256, 3072) x (3072, 1024) float32 GEMM followed by a ReLU kernel took 18 ms
with spinning workers against 7.7 ms for the GEMM alone. cynet therefore sets ``OMP_WAIT_POLICY=PASSIVE`` (idle
workers sleep; the pair then takes 7.6 ms) before its kernels load the OpenMP runtime, unless the variable is already
set. It takes effect only if no other library loaded the same OpenMP runtime first.

The price of sleeping workers is a wake-up on every parallel kernel call, and what a wake-up costs depends on the
machine: some microseconds on bare metal, but 80-170 us on the 2-vCPU virtual machine cynet is developed on, where a
ReLU over 40,000 floats took 11 us on one thread and 150-180 us on two, and one over a (256, 1024) batch 38 us against
190 us. So the thread count a kernel actually gets comes from :func:`kernel_threads`: all of them only when the work,
at the kernel's cost per element, outweighs :func:`parallel_overhead`, which is measured once per process (an empty
parallel region, timed). Results do not depend on the choice: every kernel gives the same bits for any thread count.
"""
import contextlib
import functools
import math
import os
import threading
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from threadpoolctl import threadpool_limits

__all__ = ["available_cpus", "get_num_threads", "kernel_threads", "parallel_overhead", "set_num_threads", "threads"]

# Kernel cost classes for kernel_threads, in nanoseconds per element on one core, measured on the development machine
# (AMD EPYC, AVX2) with the data in cache, where the decision is close (a few MB): maps that only stream memory (ReLU,
# Leaky ReLU, the backwards from the output, PReLU, Maxout: 0.12-0.2), maps evaluating exp/expm1/tanh (sigmoid, tanh,
# ELU, SELU, SiLU, softmax: 0.7-1.4), GELU (2.2-5), batch norm's two passes (forward 0.55, backward 1.3).
NS_STREAM = 0.15
NS_EXP = 1.1
NS_GELU = 3.5
NS_NORM = 0.8

_state = threading.local()
_global_num_threads = None  # set by set_num_threads; None means "the default"
_overhead_seconds = {}  # thread count -> measured cost of a parallel region (see parallel_overhead)
_blas_limiter = None  # the threadpoolctl limiter of the last set_num_threads, to restore on reset


@functools.lru_cache(maxsize=None)
def _cgroup_cpu_quota():
    """CPUs allowed by a cgroup v2 (cpu.max) or v1 (cfs quota/period) limit, or None when there is no limit.

    Read once per process: opening the cgroup files took ~50 us, and every kernel call asks for the thread count
    (the affinity mask, a ~0.5 us system call, is still read each time)."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            return max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        pass
    return None


def available_cpus():
    """Number of CPUs this process can run on: the affinity mask, capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, quota)
    return max(1, n)


def _from_environment():
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            return None
        if n >= 1:
            return n
    return None


def default_num_threads():
    """The count used when nothing was set: ``OMP_NUM_THREADS`` if valid, else :func:`available_cpus`."""
    return _from_environment() or available_cpus()


def get_num_threads():
    """The number of threads cynet's kernels (and BLAS, once set) use in this thread of the program.

    Example:
        >>> import cynet
        >>> cynet.get_num_threads() >= 1
        True
    """
    local = getattr(_state, "num_threads", None)
    if local is not None:
        return local
    if _global_num_threads is not None:
        return _global_num_threads
    return default_num_threads()


def _validate(n):
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"cynet: the number of threads must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"cynet: the number of threads must be >= 1, got {n}")
    return n


def set_num_threads(n):
    """Use ``n`` threads for cynet's kernels and for BLAS from now on; ``None`` returns to the default.

    Args:
        n (int or None): threads, >= 1. More threads than :func:`available_cpus` are allowed (and honoured) but
            only oversubscribe the machine.

    Example:
        >>> import cynet
        >>> cynet.set_num_threads(1); cynet.get_num_threads()
        1
        >>> cynet.set_num_threads(None)
    """
    global _global_num_threads, _blas_limiter
    if _blas_limiter is not None:
        _blas_limiter.restore_original_limits()
        _blas_limiter = None
    if n is None:
        _global_num_threads = None
        return
    _global_num_threads = _validate(n)
    _blas_limiter = threadpool_limits(limits=n, user_api="blas")


@contextlib.contextmanager
def threads(n):
    """Context manager: run the block with ``n`` threads for cynet's kernels and BLAS, then restore.

    The setting is local to the calling Python thread, so concurrent callers do not see each other's count
    (BLAS limits are process-wide: threadpoolctl restores them on exit).

    Example:
        >>> import cynet, numpy as np
        >>> with cynet.threads(1):
        ...     y = cynet.ops.relu_forward(np.ones(3, np.float32))
    """
    n = _validate(n)
    previous = getattr(_state, "num_threads", None)
    _state.num_threads = n
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield n
    finally:
        _state.num_threads = previous


def _measured_overhead(n):
    from cynet._kernels import _runtime

    if not _runtime.openmp_enabled():
        return 0.0
    _runtime.parallel_region(n)  # the first region creates the team
    samples = sorted(_timed(_runtime.parallel_region, n) for _ in range(40))
    serial = min(_timed(_runtime.parallel_region, 1) for _ in range(5))
    return max(0.0, samples[len(samples) // 2] - serial)


def _timed(f, *args):
    start = time.perf_counter()
    f(*args)
    return time.perf_counter() - start


def parallel_overhead(n=None):
    """Seconds that running a kernel on ``n`` threads (default: the current count) costs over one thread on this
    machine, whatever the work: starting and joining the team, i.e. waking the sleeping workers.

    Measured on first use for each thread count (the median of 40 empty parallel regions, about 40 x the cost) and
    kept for the process. ``CYNET_PARALLEL_OVERHEAD_US`` (microseconds, >= 0) replaces the measurement: 0 runs every
    kernel above its own small threshold on all threads (the test suite does so, to exercise the parallel paths).

    Example:
        >>> import cynet
        >>> cynet.parallel_overhead(1)
        0.0
    """
    n = get_num_threads() if n is None else _validate(n)
    if n <= 1:
        return 0.0
    value = _overhead_seconds.get(n)
    if value is None:
        setting = os.environ.get("CYNET_PARALLEL_OVERHEAD_US", "").strip()
        if setting:
            try:
                value = float(setting) * 1e-6
            except ValueError:
                value = None
            if value is None or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"cynet: CYNET_PARALLEL_OVERHEAD_US must be a number of microseconds >= 0, got "
                                 f"{setting!r}")
        else:
            value = _measured_overhead(n)
        _overhead_seconds[n] = value
    return value


def kernel_threads(elements, ns_per_element=NS_STREAM):
    """The thread count for one kernel call over ``elements`` elements costing ``ns_per_element`` each on one core:
    the current count (:func:`get_num_threads`) when splitting the work saves more than :func:`parallel_overhead`,
    else 1.

    With n threads the call saves ``t (1 - 1/n)`` of its one-thread time t and pays the overhead once.

    Example:
        >>> import cynet
        >>> with cynet.threads(1):
        ...     cynet.kernel_threads(10**9)
        1
    """
    n = get_num_threads()
    if n <= 1:
        return 1
    one_thread = elements * ns_per_element * 1e-9
    return n if one_thread * (1.0 - 1.0 / n) > parallel_overhead(n) else 1

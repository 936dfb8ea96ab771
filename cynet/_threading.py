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
set. The price is a wake-up of some tens of microseconds per parallel kernel call, small against the millisecond
kernels of a training step. It takes effect only if no other library loaded the same OpenMP runtime first.
"""
import contextlib
import math
import os
import threading

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from threadpoolctl import threadpool_limits

__all__ = ["available_cpus", "get_num_threads", "set_num_threads", "threads"]

_state = threading.local()
_global_num_threads = None  # set by set_num_threads; None means "the default"
_blas_limiter = None  # the threadpoolctl limiter of the last set_num_threads, to restore on reset


def _cgroup_cpu_quota():
    """CPUs allowed by a cgroup v2 (cpu.max) or v1 (cfs quota/period) limit, or None when there is no limit."""
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

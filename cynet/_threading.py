"""The one place that decides how many threads cynet uses, for its OpenMP kernels and for BLAS alike (and, with the
same kind of machine facts, whether a kernel's output goes to memory with streaming stores: :func:`stream_stores`).

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
with spinning workers against 7.7 ms for the GEMM alone. Unless BLAS runs on cynet's own team (the one pool, below),
cynet therefore sets ``OMP_WAIT_POLICY=PASSIVE`` (idle
workers sleep; the pair then takes 7.6 ms) before its kernels load the OpenMP runtime, unless the variable is already
set, or ``GOMP_SPINCOUNT`` is (libgomp's short spin, which needs the policy unset: with ``CYNET_BLAS_POOL=1`` and
``GOMP_SPINCOUNT=3000`` the training benchmark's epoch on 2 threads went from 1.245x to 1.184x the bare-GEMM floor on
the 2-vCPU Intel development machine, medians of five alternating rounds). It takes effect only if no other library
loaded the same OpenMP runtime first: ``import torch`` before ``import cynet`` starts libgomp with its default, and
its idle workers then spin for about 8 ms after every parallel region (measured here), which made a training epoch
2.5-3x slower (3.2-3.9 s against 1.25-1.37 s). So the cost of a parallel call (:func:`parallel_overhead`) also counts
the time the idle workers keep a core busy, measured from their CPU clocks (:func:`idle_spin_seconds`), unless the user
chose the wait policy (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` set before cynet was imported): with spinning workers
only kernels long enough to be worth a core for that long are split.

The one pool (:func:`blas_pool_status`): a pthreads OpenBLAS 0.3.28 or later (NumPy's wheels) can hand its jobs to
cynet's OpenMP team, and then no other workers wait for the cores: cynet leaves the wait policy to the runtime (libgomp
spins about 300,000 rounds, then sleeps), ready for the next product or kernel alike, and the spinning is not charged
to a parallel call. On by default where the process may use at most two CPUs (measured there: the CIFAR-10 CNN's
training step 230-250 ms against 320-355 ms on two threads); ``CYNET_BLAS_POOL=1`` or ``0`` forces it on or off.

The price of sleeping workers is a wake-up on every parallel kernel call, and what a wake-up costs depends on the
machine: some microseconds on bare metal, but 80-170 us on the 2-vCPU virtual machine cynet is developed on, where a
ReLU over 40,000 floats took 11 us on one thread and 150-180 us on two, and one over a (256, 1024) batch 38 us against
190 us. So the thread count a kernel actually gets comes from :func:`kernel_threads`: all of them only when the work,
at the kernel's cost per element, outweighs :func:`parallel_overhead`, which is measured once per process (an empty
parallel region, timed). Results do not depend on the choice: every kernel gives the same bits for any thread count.
"""
import contextlib
import functools
import importlib
import math
import os
import sys
import threading
import time
import warnings

from threadpoolctl import ThreadpoolController

np = importlib.import_module("numpy")  # loads NumPy's BLAS, which the one-pool plan at the end of this module looks for

# whether the OpenMP wait policy is the user's choice (then spinning idle workers are what they asked for):
# OMP_WAIT_POLICY, or libgomp's GOMP_SPINCOUNT, which libgomp honours only where OMP_WAIT_POLICY is unset (idle workers
# spin that many rounds, then sleep), so cynet leaves OMP_WAIT_POLICY unset for it. cynet's own choice is made at the
# end of this module (before any kernel loads the OpenMP runtime): PASSIVE, unless BLAS runs on cynet's team.
# An empty value is no choice (libgomp reports it invalid and keeps its default spin), as an empty OMP_NUM_THREADS.
WAIT_POLICY_SET_BY_USER = bool(os.environ.get("OMP_WAIT_POLICY", "").strip()
                               or os.environ.get("GOMP_SPINCOUNT", "").strip())

__all__ = ["available_cpus", "get_num_threads", "idle_spin_seconds", "kernel_threads", "parallel_overhead",
           "set_num_threads", "stream_stores", "threads"]

# Kernel cost classes for kernel_threads, in nanoseconds per element on one core, measured on the development machine
# (AMD EPYC, AVX2) with the data in cache, where the decision is close (a few MB): maps that only stream memory (ReLU,
# Leaky ReLU, the backwards from the output, PReLU, Maxout: 0.12-0.2), maps evaluating exp/expm1/tanh (sigmoid, tanh,
# ELU, SELU, SiLU: 0.45-0.75 since they are staged; softmax: 1.4), GELU (float32, forward / backward: erf form
# 1.55 / 1.3, tanh form 1.0-1.3 / 0.9), batch norm's two passes (forward 0.55, backward 1.3), the PReLU backward (dx
# and dalpha's float64 partial sums: 0.6). The normalisation forwards have their own class since the column-range
# plan (Intel Xeon host, one thread: BatchNorm1d 0.34-0.5, LayerNorm 0.3 ns per value; with NS_NORM they were split
# at (256, 1024), where two threads took 191 us against 104 on one, 135 against 79 for LayerNorm).
NS_STREAM = 0.15
NS_PRELU_BACKWARD = 0.6
NS_EXP = 1.1
NS_GELU = 1.3
NS_NORM = 0.8
NS_NORM_FORWARD = 0.5


class _ThreadSettings(threading.local):
    """The calling Python thread's own count (``threads()``); None: none set. (A class attribute, so that reading an
    unset count is a plain lookup: getattr with a default on a bare threading.local took 0.4 us, raising inside.)"""

    num_threads = None


_state = _ThreadSettings()
_global_num_threads = None  # set by set_num_threads; None means "the default"
_overhead_seconds = {}  # thread count -> measured cost of a parallel region (see parallel_overhead)
_overhead_recheck = {}  # thread count -> (time.monotonic() of the next measurement, interval): loaded measurements
_spin_seconds = {}  # thread count -> measured spinning of the idle workers (see idle_spin_seconds)
# BLAS's thread limit is process-wide while cynet's counts are per Python thread: it follows the latest threads()
# block still open in any Python thread, else set_num_threads's count, else the limit each BLAS library had before
# cynet first changed it (_blas_original: a library loaded later, after cynet's first change, is recorded when cynet
# first sees it). Changed under _blas_lock, recomputed at every entry and exit (blocks of two Python threads may close
# in any order).
_blas_lock = threading.Lock()
_blas_blocks = []        # [(token, n, thread ident)] of the open threads() blocks, in the order they were entered
_blas_original = {}      # BLAS library's file path -> its thread limit before cynet first changed it


@functools.lru_cache(maxsize=None)
def _cgroup_cpu_quota():
    """CPUs allowed by a cgroup v2 (cpu.max) or v1 (cfs quota/period) limit, or None when there is no limit.

    Read once per process: opening the cgroup files took ~50 us (the affinity mask, a ~0.5 us system call, is read
    by every get_num_threads call, and by kernel calls every DEFAULT_REFRESH_SECONDS)."""
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
    digits = value[1:] if value.startswith("+") else value
    if digits.isascii() and digits.isdigit():    # digits only, as the OpenMP runtime reads it (int() took "1_0")
        n = int(digits)
        if 1 <= n <= MAX_THREADS:   # above it, as an invalid value: the default (no kernel call could take it)
            return n
    return None


def default_num_threads():
    """The count used when nothing was set: ``OMP_NUM_THREADS`` if valid, else :func:`available_cpus`."""
    return _from_environment() or available_cpus()


def get_num_threads():
    """The number of threads cynet's kernels (and BLAS, once set) use in this thread of the program.

    In a process forked (``os.fork``, multiprocessing's "fork" start method) from one that had imported cynet, the
    kernels run on one thread whatever the setting, with a warning the first time more were asked for: libgomp's
    team does not survive fork(), and a parallel region in the child waits forever for the parent's workers. BLAS
    keeps the setting. Start workers with "spawn" or "forkserver" for parallel kernels in them. Do not fork while
    another Python thread is inside a matrix product or a kernel: OpenBLAS's locks and workers are copied mid-use,
    and the child (or, with ``CYNET_BLAS_POOL=0``, the fork itself) can hang.

    Example:
        >>> import cynet
        >>> cynet.get_num_threads() >= 1
        True
    """
    return _num_threads(default_num_threads)


def _num_threads(default):
    """get_num_threads with ``default()`` for the count when nothing was set."""
    local = _state.num_threads
    n = local if local is not None else (_global_num_threads if _global_num_threads is not None else default())
    if _forked and n > 1 and _openmp_built():
        return _one_thread_after_fork(n)
    return n


@functools.lru_cache(maxsize=None)
def _openmp_built():
    """Whether the kernels run on an OpenMP team (not a serial build): a forked child has one only then."""
    from cynet._kernels import _runtime
    return bool(_runtime.openmp_enabled())


# Settings from the environment as kernel calls see them: read again once DEFAULT_REFRESH_SECONDS have passed since
# the last reading. Reading the default thread count (OMP_NUM_THREADS through os.environ, the affinity mask by a
# system call) took 1.4 us of the 2.6 us of each kernel_threads call, and CYNET_STREAM_MIN_BYTES 0.8 us of each
# stream_stores call; a training step makes dozens of such calls, and a tiny MLP's step (8-8-8-10, batch 256: 175 us,
# mostly Python) is what a hyperparameter search spends its time on. A change of OMP_NUM_THREADS, of the affinity
# mask or of CYNET_STREAM_MIN_BYTES reaches the kernels within that interval (at once after reread_environment());
# get_num_threads and stream_min_bytes read them every time; set_num_threads and threads() reach the kernels at once.
DEFAULT_REFRESH_SECONDS = 0.05


class _RecentReading:
    """``read()`` as it was at most DEFAULT_REFRESH_SECONDS ago."""

    __slots__ = ("read", "value", "read_at")

    def __init__(self, read):
        self.read = read
        self.value = None
        self.read_at = float("-inf")

    def __call__(self):
        now = time.monotonic()
        if now - self.read_at >= DEFAULT_REFRESH_SECONDS:
            self.value = self.read()
            self.read_at = now
        return self.value


_recent_default_num_threads = _RecentReading(lambda: default_num_threads())
_recent_stream_min_bytes = _RecentReading(lambda: stream_min_bytes())


def reread_environment():
    """Make the next kernel call read ``OMP_NUM_THREADS``, the affinity mask and ``CYNET_STREAM_MIN_BYTES`` again
    instead of waiting up to DEFAULT_REFRESH_SECONDS for it (the tests change them and check the kernels at once).

    Example:
        >>> import cynet
        >>> cynet._threading.reread_environment()
    """
    for reading in (_recent_default_num_threads, _recent_stream_min_bytes):
        reading.read_at = float("-inf")


# Set in a forked child: see get_num_threads.
_forked = False
_warned_after_fork = False


def _after_fork_in_child():
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _one_thread_after_fork(asked):
    global _warned_after_fork
    if not _warned_after_fork:
        _warned_after_fork = True
        import warnings

        warnings.warn(f"cynet: this process was forked from one that had imported cynet, and libgomp's OpenMP team "
                      f"does not survive fork(): cynet's kernels run on 1 thread here instead of {asked} (BLAS keeps "
                      f"{asked}). Start worker processes with the 'spawn' or 'forkserver' method for parallel "
                      f"kernels.", RuntimeWarning, stacklevel=3)
    return 1


MAX_THREADS = 2**15     # far above any machine's cores; OpenMP and BLAS take a C int (2**31 overflowed in the kernels)


def _validate(n):
    """``n`` as a Python int: an int or a NumPy integer (not a bool), 1 to MAX_THREADS."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"cynet: the number of threads must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"cynet: the number of threads must be >= 1, got {n}")
    if n > MAX_THREADS:
        raise ValueError(f"cynet: the number of threads must be at most {MAX_THREADS}, got {n}")
    return int(n)


def set_num_threads(n):
    """Use ``n`` threads for cynet's kernels and for BLAS from now on; ``None`` returns to the default.

    Args:
        n (int or None): threads, 1 to MAX_THREADS (2**15). More threads than :func:`available_cpus` are allowed
            (and honoured) but only oversubscribe the machine.

    Example:
        >>> import cynet
        >>> cynet.set_num_threads(1); cynet.get_num_threads()
        1
        >>> cynet.set_num_threads(None)
    """
    global _global_num_threads
    n = None if n is None else _validate(n)  # before anything changes: a refused n leaves the setting as it was
    with _blas_lock:
        _global_num_threads = n
        _apply_blas_limit()


def _apply_blas_limit():
    """Set BLAS's limit to what the open threads() blocks and set_num_threads say (call with _blas_lock held)."""
    n = _blas_blocks[-1][1] if _blas_blocks else _global_num_threads
    if n is None and not _blas_original:
        return                               # nothing was ever changed
    for library in ThreadpoolController().select(user_api="blas").lib_controllers:
        original = _blas_original.setdefault(library.filepath, library.num_threads)
        library.set_num_threads(original if n is None else n)


def _blas_state_after_fork_in_child():
    """A forked child: a fresh lock, and only the blocks of the thread that forked (the others did not follow)."""
    global _blas_lock
    _blas_lock = threading.Lock()
    _blas_blocks[:] = [block for block in _blas_blocks if block[2] == threading.get_ident()]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_blas_state_after_fork_in_child)


@contextlib.contextmanager
def threads(n):
    """Context manager: run the block with ``n`` threads for cynet's kernels and BLAS, then restore.

    The setting is local to the calling Python thread, so concurrent callers do not see each other's count. BLAS's
    limit is process-wide: it follows the latest block still open in any thread, and when the last one closes,
    :func:`set_num_threads`'s count or the original limits (blocks of two threads may close in any order).
    (threadpoolctl 3.8 lets only one Python thread change a pthreads OpenBLAS's limit: the first that changed it,
    while it lives. Once the main thread has set a limit, a block opened in another thread leaves BLAS's limit as it
    is; and when the main thread's block closes while another thread's is open, BLAS takes that block's count, which
    the other thread cannot undo when it closes: the limit stays until the main thread sets one again. Results never
    change, only how many threads BLAS runs.)

    Example:
        >>> import cynet, numpy as np
        >>> with cynet.threads(1):
        ...     y = cynet.ops.relu_forward(np.ones(3, np.float32))
    """
    n = _validate(n)
    previous = _state.num_threads
    token = object()
    try:
        with _blas_lock:
            _blas_blocks.append((token, n, threading.get_ident()))
            _apply_blas_limit()
        _state.num_threads = n
        yield n
    finally:
        _state.num_threads = previous
        with _blas_lock:
            _blas_blocks[:] = [block for block in _blas_blocks if block[0] is not token]
            _apply_blas_limit()


# An idle machine wakes a sleeping worker in microseconds (0.9 us on the 2-vCPU development hosts with the one pool,
# tens of us with sleeping workers); a median wake-up above WAKE_UP_RECHECK_ABOVE means the workers waited for a core
# that another process held at that moment (measured: 10.6 ms with two busy loops on a 2-vCPU host, in one process
# of three). Such a measurement would keep every kernel of the process on one thread long after the load is gone, so
# it is taken again RECHECK_FIRST_SECONDS later, then at doubling intervals up to RECHECK_MAX_SECONDS while it stays
# that high (each time RECHECK_SAMPLES regions: at most ~0.2 s under such load).
WAKE_UP_RECHECK_ABOVE = 5e-4
RECHECK_FIRST_SECONDS = 10.0
RECHECK_MAX_SECONDS = 320.0
RECHECK_SAMPLES = 15


def _measured_overhead(n, samples=40):
    from cynet._kernels import _runtime

    if not _runtime.openmp_enabled():
        return 0.0
    _runtime.parallel_region(n)  # the first region creates the team
    times = sorted(_timed(_runtime.parallel_region, n) for _ in range(samples))
    serial = min(_timed(_runtime.parallel_region, 1) for _ in range(5))
    wake_up = max(0.0, times[len(times) // 2] - serial)
    # spinning workers cost the next BLAS call its cores, unless BLAS runs on this very team (the one pool)
    spin = 0.0 if WAIT_POLICY_SET_BY_USER or _blas_pool["libraries"] else max(0.0, idle_spin_seconds(n))
    if wake_up > WAKE_UP_RECHECK_ABOVE and wake_up > spin:
        previous = _overhead_recheck.get(n)
        interval = RECHECK_FIRST_SECONDS if previous is None else min(2 * previous[1], RECHECK_MAX_SECONDS)
        _overhead_recheck[n] = (time.monotonic() + interval, interval)
    else:
        _overhead_recheck.pop(n, None)
    return max(wake_up, spin)


def _recheck_overhead(n):
    """The overhead of n threads measured again (its first measurement was the machine's load: see
    WAKE_UP_RECHECK_ABOVE)."""
    _overhead_seconds[n] = _measured_overhead(n, RECHECK_SAMPLES)
    return _overhead_seconds[n]


SPIN_HORIZON = 0.05  # idle_spin_seconds watches the idle workers for at most this long


def idle_spin_seconds(n=None):
    """Seconds for which the OpenMP runtime's idle workers keep their cores busy after a parallel region of ``n``
    threads (default: the current count) ends: about 0 when they sleep at once (``OMP_WAIT_POLICY=PASSIVE``, which
    cynet sets unless BLAS runs on its team, the one pool), about 4-8 ms on the development machines with libgomp's
    default (the one pool's choice, or a runtime started before cynet, e.g. by ``import torch``), 0.05 (the horizon
    watched) with ``OMP_WAIT_POLICY=ACTIVE``.

    Measured once per process and thread count from the workers' CPU clocks while the caller sleeps (Linux); 0.0 where
    that cannot be measured (other systems, a serial build) and for ``n`` = 1.

    Example:
        >>> import cynet
        >>> cynet.idle_spin_seconds(1)
        0.0
    """
    return _once_per_thread_count(_spin_seconds, n, _measured_spin)


def _measured_spin(n):
    from cynet._kernels import _runtime

    return max(0.0, _runtime.idle_spin_seconds(n, SPIN_HORIZON) if _runtime.openmp_enabled() else -1.0)


def _once_per_thread_count(cache, n, compute):
    """``cache[n]`` for ``n`` threads (default: the current count), ``compute(n)`` on first use; 0.0 for one thread."""
    n = get_num_threads() if n is None else _validate(n)
    if n <= 1 or _forked:  # a forked child runs no team (see get_num_threads)
        return 0.0
    if n not in cache:
        cache[n] = compute(n)
    return cache[n]


def _timed(f, *args):
    start = time.perf_counter()
    f(*args)
    return time.perf_counter() - start


def parallel_overhead(n=None):
    """Seconds that running a kernel on ``n`` threads (default: the current count) costs over one thread on this
    machine, whatever the work: starting and joining the team, i.e. waking the sleeping workers, or, where the idle
    workers spin instead of sleeping and the wait policy is not the user's choice, the time they then keep a core
    from whatever runs next (:func:`idle_spin_seconds`), whichever is larger.

    Measured on first use for each thread count (the median of 40 empty parallel regions, about 40 x the cost) and
    kept for the process, unless the wake-up measured was above 0.5 ms: that is another process holding the cores at
    that moment, not the team's cost, so :func:`kernel_threads` measures it again 10 s later, and again at doubling
    intervals (up to 320 s) while it stays that high. ``CYNET_PARALLEL_OVERHEAD_US`` (microseconds, >= 0) replaces
    the measurement: 0 runs every kernel above its own small threshold on all threads (the test suite does so, to
    exercise the parallel paths).

    Example:
        >>> import cynet
        >>> cynet.parallel_overhead(1)
        0.0
    """
    return _once_per_thread_count(_overhead_seconds, n, _set_or_measured_overhead)


def _set_or_measured_overhead(n):
    setting = os.environ.get("CYNET_PARALLEL_OVERHEAD_US", "").strip()
    if not setting:
        return _measured_overhead(n)
    try:
        value = float(setting) * 1e-6
    except ValueError:
        value = None
    if value is None or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"cynet: CYNET_PARALLEL_OVERHEAD_US must be a number of microseconds >= 0, got {setting!r}")
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
    n = _num_threads(_recent_default_num_threads)
    if n <= 1:
        return 1
    overhead = _overhead_seconds.get(n)               # (n > 1: not a forked child, see get_num_threads)
    if overhead is None:
        overhead = parallel_overhead(n)
    elif _overhead_recheck and n in _overhead_recheck and time.monotonic() >= _overhead_recheck[n][0]:
        overhead = _recheck_overhead(n)
    return n if elements * ns_per_element * 1e-9 * (1.0 - 1.0 / n) > overhead else 1


def copyto(dst, src):
    """``np.copyto(dst, src)`` for two C-contiguous arrays of one shape and dtype, on :func:`kernel_threads` threads
    when that pays (a large copy on one core runs at that core's bandwidth); anything else goes to ``np.copyto``.

    Example:
        >>> import numpy as np, cynet
        >>> a, b = np.arange(6.0), np.zeros(6)
        >>> cynet._threading.copyto(b, a); b
        array([0., 1., 2., 3., 4., 5.])
    """
    if (dst.shape != src.shape or dst.dtype != src.dtype or not dst.flags.c_contiguous or not src.flags.c_contiguous
            or not dst.flags.writeable or np.may_share_memory(dst, src)):
        np.copyto(dst, src)                 # (NumPy handles overlapping arrays; the threads' chunks would not)
        return
    threads = kernel_threads(src.nbytes // 4, NS_STREAM)
    if threads <= 1:
        np.copyto(dst, src)
        return
    from cynet._kernels import _runtime

    _runtime.copy_bytes(src.reshape(-1).view(np.uint8), dst.reshape(-1).view(np.uint8), threads)


# --- one thread pool: BLAS jobs on cynet's OpenMP team ---------------------------------------------------------------
# A pthreads OpenBLAS keeps its own workers, and after every call they spin (sched_yield) for about 2^28 cycles on the
# cores that cynet's next kernel wakes its OpenMP team on. OpenBLAS's threads callback (0.3.28 and later) hands each
# call's jobs to cynet's team instead (cynet._kernels._runtime): one pool, whose workers then wait as libgomp does by
# default (spin about 300,000 rounds, then sleep) for whichever comes next, a product or a kernel. Matrix products keep
# their bits: the jobs and their split are OpenBLAS's own. On by default where this process may use at most
# AUTO_POOL_MAX_CPUS CPUs, where it was measured a gain; CYNET_BLAS_POOL=1 / 0 forces it on / off:
# - 2-vCPU Intel Xeon host, 2 threads, pool with libgomp's default waits against OpenBLAS's workers and passive
#   OpenMP waits: the CIFAR-10 CNN's training step (batch 256) 230-250 against 320-355 ms (conv, pooling and batch
#   norm kernels run between the products, and each got one core while OpenBLAS's workers spun on the other); the
#   benchmark MLP's epoch 1.22-1.23x the bare-GEMM floor against 1.29-1.31x (three alternating rounds each).
# - 16-core Intel Xeon host, pool with *passive* waits (the spinning ones were not measured there): a (1024, 3072) SGD
#   update right after a (256, 3072) x (3072, 1024) product 0.37-0.40 ms against 0.64-0.97 ms, the 16-thread epoch
#   432-448 against 504-528 ms; but the bare products 293-309 against 224-229 ms on 16 threads, 382-447 against
#   340-374 ms on 4, where the epoch lost (601-676 against 503-551 ms): waking a sleeping team for every product costs
#   more than OpenBLAS's spinning workers, which start at once. So above 2 CPUs the pool stays opt-in until measured.
AUTO_POOL_MAX_CPUS = 2
_OPENBLAS_AFFIXES = [(prefix, suffix) for prefix in ("", "scipy_") for suffix in ("", "64_", "_64")]
_BLAS_POOL_OFF = "off (CYNET_BLAS_POOL=1 turns it on)"
_BLAS_POOL_CHOICES = {"": None, "auto": None, "0": False, "1": True}
_blas_pool = {"libraries": [], "reason": _BLAS_POOL_OFF}


def _openblas_callback_setters():
    """(file and version, ``openblas_set_threads_callback_function``) of every loaded pthreads OpenBLAS that has it."""
    import ctypes

    setters = []
    for controller in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        if getattr(controller, "threading_layer", None) != "pthreads":
            continue
        for prefix, suffix in _OPENBLAS_AFFIXES:
            setter = getattr(controller.dynlib, f"{prefix}openblas_set_threads_callback_function{suffix}", None)
            if setter is not None:
                setter.argtypes, setter.restype = [ctypes.c_void_p], None
                setters.append((f"{controller.filepath} ({controller.version})", setter))
                break
    return setters


def _set_blas_pool(enabled):
    """Hand the parallel jobs of every loaded pthreads OpenBLAS to cynet's OpenMP team (``enabled``), or give them back
    to OpenBLAS's own workers. Returns :func:`blas_pool_status`."""
    from cynet._kernels import _runtime

    address = _runtime.blas_callback_address() if enabled else 0
    if enabled and not address:
        _blas_pool.update(libraries=[], reason="not built here (needs OpenMP, not on Windows)")
        return blas_pool_status()
    setters = _openblas_callback_setters()
    for _, setter in setters:
        setter(address or None)
    if not enabled:
        _blas_pool.update(libraries=[], reason=_BLAS_POOL_OFF)
    elif setters:
        _blas_pool.update(libraries=[name for name, _ in setters], reason="")
    else:
        _blas_pool.update(libraries=[], reason="no pthreads OpenBLAS with a threads callback (0.3.28+) is loaded")
    return blas_pool_status()


def _planned_blas_pool():
    """``(on, reason when off)``: the one pool's plan from ``CYNET_BLAS_POOL`` (1 on, 0 off, unset: on with at most
    :data:`AUTO_POOL_MAX_CPUS` CPUs) and from the BLAS that NumPy loaded."""
    setting = os.environ.get("CYNET_BLAS_POOL", "").strip().lower()
    choice = _BLAS_POOL_CHOICES.get(setting)
    if setting not in _BLAS_POOL_CHOICES:
        warnings.warn(f"cynet: CYNET_BLAS_POOL must be 0, 1 or unset, got {setting!r}; deciding as if unset",
                      RuntimeWarning, stacklevel=2)
    if choice is False:
        return False, "off (CYNET_BLAS_POOL=0)"
    if choice is None and available_cpus() > AUTO_POOL_MAX_CPUS:
        return False, (f"off: on by default with at most {AUTO_POOL_MAX_CPUS} CPUs, where it was measured (this "
                       f"process may use {available_cpus()}); CYNET_BLAS_POOL=1 turns it on")
    if sys.platform == "win32":
        return False, "not built here (needs OpenMP, not on Windows)"
    from cynet._kernels import _runtime
    if not _runtime.openmp_enabled():
        return False, "not built here (a serial build: no OpenMP team)"
    if not _openblas_callback_setters():
        return False, "no pthreads OpenBLAS with a threads callback (0.3.28+) is loaded"
    return True, ""


def _install_blas_pool():
    """At import, once NumPy's BLAS is loaded: the one pool where it was planned (:func:`_planned_blas_pool`)."""
    if BLAS_POOL_PLANNED:
        _set_blas_pool(True)


def blas_pool_status():
    """Whether BLAS runs its parallel jobs on cynet's OpenMP team (the one pool): a dict with ``libraries``
    (the OpenBLAS files whose jobs it runs, with versions), ``reason`` (why none, else '') and ``calls`` (BLAS calls
    run so far on the team and on fresh threads, which serve calls from inside a parallel region or a forked child)."""
    from cynet._kernels import _runtime

    return dict(_blas_pool, calls=dict(zip(("team", "fresh_threads"), _runtime.blas_callback_counts())))


# --- streaming stores ------------------------------------------------------------------------------------------------
# Non-temporal stores from 32 MiB of output on: a measured threshold, not the cache size the OS reports. On the AMD
# EPYC of the first development machines (32 MiB of L3 per core complex) a (4096, 4096) float32 ReLU went from 6.9 to
# 5.7 ms on two threads with them. On the Intel Xeon of a later one (the OS reports 480 MiB of L3, shared by the whole
# socket's tenants) they still paid at 64 MiB (that ReLU 7.4 -> 4.8 ms on one thread, 3.4 -> 2.4 ms on two) and cost
# at 16 MiB (0.63 -> 0.77 ms on two threads): what one core gets of a large shared L3 is much less than its size.
DEFAULT_STREAM_MIN_BYTES = 32 * 2**20


def stream_min_bytes():
    """The output size from which kernels use non-temporal stores: ``CYNET_STREAM_MIN_BYTES``, else 32 MiB."""
    setting = os.environ.get("CYNET_STREAM_MIN_BYTES", "").strip()
    if not setting:
        return DEFAULT_STREAM_MIN_BYTES
    try:
        value = int(setting)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"cynet: CYNET_STREAM_MIN_BYTES must be a whole number of bytes >= 0, got {setting!r}")
    return value


def stream_stores(output_bytes):
    """Whether a kernel writing ``output_bytes`` should send its output straight to memory (non-temporal stores).

    An ordinary store first reads the line it writes (two memory transfers per output byte), a non-temporal one does
    not, but leaves nothing in cache. So: only for outputs of at least :func:`stream_min_bytes` (32 MiB unless
    ``CYNET_STREAM_MIN_BYTES`` says otherwise; 0: always, which the test suite uses to exercise both paths), which a
    consumer would mostly read from memory anyway. Results never depend on it. The setting is read at most every
    ``DEFAULT_REFRESH_SECONDS`` (see :func:`reread_environment`).

    Example:
        >>> import cynet
        >>> cynet.stream_stores(1024)
        False
    """
    return output_bytes > 0 and output_bytes >= _recent_stream_min_bytes()


# The one pool's plan and the OpenMP wait policy, before any kernel loads the OpenMP runtime: idle workers sleep at
# once (PASSIVE) so that they leave the cores to OpenBLAS's own workers, unless BLAS will run on cynet's team, whose
# workers then wait as libgomp does by default, ready for the next product or kernel alike.
BLAS_POOL_PLANNED, _blas_pool["reason"] = _planned_blas_pool()
if not WAIT_POLICY_SET_BY_USER and not BLAS_POOL_PLANNED:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

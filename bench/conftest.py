"""Fixtures of cynet's benchmark suite: preallocated buffers, thread settings, the timing policy, run diagnostics.

Only collected when named (``python -m pytest bench ...``): the project's ``testpaths = ["tests"]`` keeps ``bench/``
out of the normal test run.

Timing policy (``--bench-time``, ``--bench-min-rounds``, ``--bench-max-rounds``): every benchmark is run with
``benchmark.pedantic``, one call per round. After the untimed correctness check, one more untimed call measures the
cost ``t`` of a call; the benchmark then runs ``clamp(ceil(bench_time / t), min_rounds, max_rounds)`` timed rounds
(plus 2 untimed warm-up rounds when a call is under 10 ms). Tables report the median. With the defaults (0.25 s, 5,
200) the full suite takes a few minutes on 2 cores; the slow NumPy reference at 4096x4096 gets 5 rounds, a 50 us
kernel 200. pytest-benchmark's own ``--benchmark-min-rounds``/``--benchmark-max-time`` apply only to its automatic
mode and are not used here.
"""
import contextlib
import math
import os
import resource
import time

import numpy as np
import pytest

# cynet first: its kernels then bind the system libgomp (torch would otherwise load its bundled copy first and,
# having the same soname, serve both). The loaded runtime is recorded in the JSON (machine_info.cynet_bench).
import cynet

try:  # torch is optional: its columns are skipped cleanly without it
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

DTYPE = np.float32
SEED = 0
PRELU_ALPHA = 0.25


# --- command-line options ---------------------------------------------------------------------------------------------
def pytest_addoption(parser):
    group = parser.getgroup("cynet-bench", "cynet benchmark timing policy")
    group.addoption("--bench-time", type=float, default=0.25,
                    help="target timed seconds per benchmark (rounds = bench_time / cost of one call), default 0.25")
    group.addoption("--bench-min-rounds", type=int, default=5, help="fewest timed rounds per benchmark, default 5")
    group.addoption("--bench-max-rounds", type=int, default=200, help="most timed rounds per benchmark, default 200")


def _option(config, name, default):
    try:
        value = config.getoption(name)
    except ValueError:  # option not registered (conftest not loaded as an initial conftest)
        return default
    return default if value is None else value


class TimingPolicy:
    def __init__(self, bench_time, min_rounds, max_rounds):
        if not (math.isfinite(bench_time) and bench_time > 0) or min_rounds < 1 or max_rounds < min_rounds:
            # (nan and inf passed "> 0" / "<= 0" and crashed every benchmark in math.ceil)
            raise pytest.UsageError("--bench-time must be a finite number > 0 and 1 <= --bench-min-rounds <= "
                                    "--bench-max-rounds")
        self.bench_time, self.min_rounds, self.max_rounds = bench_time, min_rounds, max_rounds

    def run(self, benchmark, fn):
        """Time ``fn`` with benchmark.pedantic; the number of rounds follows from one untimed calibration call."""
        start = time.perf_counter()
        fn()
        cost = max(time.perf_counter() - start, 1e-7)
        rounds = min(self.max_rounds, max(self.min_rounds, math.ceil(self.bench_time / cost)))
        warmup = 2 if cost < 0.01 else 0
        benchmark.extra_info.update(rounds=rounds, warmup_rounds=warmup)
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)


@pytest.fixture(scope="session")
def timing(pytestconfig):
    return TimingPolicy(float(_option(pytestconfig, "bench_time", 0.25)),
                        int(_option(pytestconfig, "bench_min_rounds", 5)),
                        int(_option(pytestconfig, "bench_max_rounds", 200)))


# --- torch ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def torch_module():
    """torch, or a clean skip when it cannot be imported."""
    if torch is None:
        pytest.skip("torch is not importable: torch columns skipped")
    return torch


# --- threads ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def use_threads():
    """``with use_threads(n):`` runs the block with ``n`` threads for cynet (and BLAS) and for torch, then restores
    both. Every implementation of a group runs under the same setting (NumPy's ufuncs and np.copyto are
    single-threaded whatever it says). Entered outside the timed part: threadpoolctl's limit costs milliseconds."""

    @contextlib.contextmanager
    def setting(n):
        previous_torch = torch.get_num_threads() if torch is not None else None
        with cynet.threads(n):
            if torch is not None:
                torch.set_num_threads(n)
            try:
                yield n
            finally:
                if torch is not None:
                    torch.set_num_threads(previous_torch)

    return setting


# --- buffers ----------------------------------------------------------------------------------------------------------
def _filled(shape, dtype=DTYPE, value=0):
    """A new array with every page touched (written), so no timed call pays first-touch page faults."""
    a = np.empty(shape, dtype=dtype)
    a.fill(value)
    return a


class Buffers:
    """Every array the benchmarks of one shape read or write, allocated and touched once.

    x and dout are standard normal (half the inputs negative, so branchy kernels see both sides). Outputs are shared
    by the implementations of a group: each writes the same ``out`` buffer the others write, so all see the same
    addresses, pages and cache footprint. Saved tensors (a forward's output read by its backward) and expected
    results are computed by the NumPy reference on first use and cached.
    """

    def __init__(self, shape):
        rows, cols = shape
        if cols % 2:
            raise ValueError("maxout with 2 pieces needs an even number of columns")
        rng = np.random.default_rng(SEED)
        self.shape = shape
        self.x = rng.standard_normal(shape, dtype=DTYPE)
        self.dout = rng.standard_normal(shape, dtype=DTYPE)
        self.out = _filled(shape)                                   # dx / y of every x-shaped result
        self.alpha = np.full(cols, PRELU_ALPHA, DTYPE)              # PReLU, one slope per channel (axis 1)
        self.dalpha = _filled(cols)
        half = (rows, cols // 2)                                    # maxout, 2 pieces: D = cols / 2 units
        self.half_out = _filled(half)                               # maxout y
        self.half_idx = _filled(half, np.int32)                     # maxout winning pieces
        self.half_dout = rng.standard_normal(half, dtype=DTYPE)     # maxout dout
        self._saved = {}
        self._expected = {}
        self._torch = {}

    # a forward's output, as its backward reads it
    def saved(self, key, make):
        if key not in self._saved:
            self._saved[key] = make(self)
        return self._saved[key]

    def expected(self, key, make):
        """Reference results of one (op, direction), kept for the few tests that use them (one op at a time)."""
        if key not in self._expected:
            if len(self._expected) >= 2:
                self._expected.pop(next(iter(self._expected)))
            self._expected[key] = make(self)
        return self._expected[key]

    def t(self, a):
        """The torch tensor sharing ``a``'s memory (no copy): torch reads and writes the same pages."""
        key = id(a)
        if key not in self._torch:
            self._torch[key] = (a, torch.from_numpy(a))  # keep a alive with its view
        return self._torch[key][1]

    def t_owned(self, key, make):
        """A torch tensor the buffers own (e.g. int64 maxout indices, which NumPy's int32 buffer cannot be)."""
        if key not in self._torch:
            self._torch[key] = (None, make(self))
        return self._torch[key][1]


class BufferPool:
    """One Buffers per shape; only the most recent shape is kept (the 4096x4096 set is about 0.6 GB)."""

    def __init__(self):
        self._current = None

    def get(self, shape):
        shape = tuple(shape)
        if self._current is None or self._current.shape != shape:
            self._current = None  # free the previous set before allocating the next
            self._current = Buffers(shape)
        return self._current


@pytest.fixture(scope="session")
def buffer_pool():
    return BufferPool()


# --- run diagnostics in the JSON --------------------------------------------------------------------------------------
def _cpu_busy_seconds():
    """Seconds of CPU time all processes have used (user+nice+system+irq+softirq), and steal, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None, None
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    steal = fields[7] if len(fields) > 7 else 0
    return (user + nice + system + irq + softirq) / hz, steal / hz


def _stat_cpus():
    """How many CPUs /proc/stat's first line sums (every online CPU of the machine, whatever this process's affinity
    or cgroup quota allows it), or None."""
    try:
        with open("/proc/stat") as f:
            n = sum(1 for line in f if line.startswith("cpu") and line[3:4].isdigit())
    except OSError:
        return None
    return n or None


def _own_cpu_seconds():
    """CPU time of this process (all threads) and of its finished children (pytest-benchmark runs py-cpuinfo in a
    subprocess just before the machine-info hook)."""
    return sum(ru.ru_utime + ru.ru_stime for ru in (resource.getrusage(resource.RUSAGE_SELF),
                                                     resource.getrusage(resource.RUSAGE_CHILDREN)))


def _loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return None


def _openmp_runtimes():
    try:
        with open("/proc/self/maps") as f:
            return sorted({line.split()[-1] for line in f if "gomp" in line or "libomp" in line or "iomp" in line})
    except OSError:
        return []


_session = {}


def pytest_sessionstart(session):
    busy, steal = _cpu_busy_seconds()
    _session.update(wall=time.perf_counter(), busy=busy, steal=steal, own=_own_cpu_seconds(), loadavg=_loadavg())


def pytest_benchmark_update_machine_info(config, machine_info):
    """What a reader of the JSON needs to trust (or distrust) the numbers: versions, threads, and how much CPU other
    processes took during the run (on a 2-core machine a concurrent job distorts every 2-thread number)."""
    busy, steal = _cpu_busy_seconds()
    wall = time.perf_counter() - _session.get("wall", time.perf_counter())
    info = {
        "cynet": cynet.__version__,
        "numpy": np.__version__,
        "torch": getattr(torch, "__version__", None),
        "available_cpus": cynet.available_cpus(),
        "openmp_runtimes": _openmp_runtimes(),
        "loadavg_start": _session.get("loadavg"),
        "loadavg_end": _loadavg(),
        "wall_seconds": round(wall, 1),
    }
    try:
        from cynet._config import config as cynet_config
        c = cynet_config()
        info.update(openmp=c["openmp"], simd=c["simd"])
    except Exception:  # pragma: no cover - diagnostics only, never fail a run over them
        pass
    if busy is not None and _session.get("busy") is not None:
        own = _own_cpu_seconds() - _session["own"]
        foreign = max(0.0, (busy - _session["busy"]) - own)
        info.update(own_cpu_seconds=round(own, 1), foreign_cpu_seconds=round(foreign, 1),
                    steal_seconds=round(steal - _session["steal"], 1),
                    foreign_cpu_fraction=round(foreign / max(wall * (_stat_cpus() or cynet.available_cpus()), 1e-9),
                                               3))
    machine_info["cynet_bench"] = info

"""Thread control (set_num_threads, get_num_threads, the threads context manager, OMP_NUM_THREADS, the CPU count),
its effect on BLAS, concurrent callers, and the configuration printout (show_config, python -m cynet)."""
import io
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import cynet
from cynet import ops, reference
from cynet._kernels import _runtime
from cynet._threading import default_num_threads


def _run(args, **env):
    """Run Python in a fresh process with OMP_NUM_THREADS removed from the environment, then ``env`` added."""
    full_env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    full_env.update(env)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full_env, check=True,
                          timeout=120).stdout


# --- set_num_threads / get_num_threads / threads --------------------------------------------------------------------
@pytest.mark.parametrize("bad,exc,message", [
    (0, ValueError, "must be >= 1, got 0"), (-1, ValueError, "must be >= 1, got -1"),
    (1.5, TypeError, "must be an int, got float"), (True, TypeError, "must be an int, got bool"),
    (False, TypeError, "must be an int, got bool"), ("2", TypeError, "must be an int, got str"),
    (2.0, TypeError, "must be an int, got float"), (np.True_, TypeError, "must be an int, got bool"),
    (np.float64(2), TypeError, "must be an int, got float64"), (np.int64(0), ValueError, "must be >= 1, got 0"),
    (np.int8(-3), ValueError, "must be >= 1, got -3")], ids=repr)
def test_bad_thread_counts_are_refused_and_change_nothing(bad, exc, message):
    cynet.set_num_threads(2)
    with pytest.raises(exc, match=rf"^cynet: the number of threads {message}"):
        cynet.set_num_threads(bad)
    assert cynet.get_num_threads() == 2
    with pytest.raises(exc, match=rf"^cynet: the number of threads {message}"):
        with cynet.threads(bad):
            pass  # pragma: no cover - never entered
    assert cynet.get_num_threads() == 2


@pytest.mark.parametrize("n", [np.int64(2), np.int32(1), np.uint8(3), np.intp(4)], ids=repr)
def test_numpy_integer_thread_counts_are_accepted(n):
    # as other APIs take them (maxout's pieces): a count computed with NumPy, e.g. np.int64(os.cpu_count() // 2)
    cynet.set_num_threads(n)
    assert cynet.get_num_threads() == int(n) and type(cynet.get_num_threads()) is int
    cynet.set_num_threads(None)
    with cynet.threads(n) as got:
        assert got == int(n) and type(got) is int
        assert cynet.get_num_threads() == int(n)
        assert cynet.kernel_threads(10 ** 9) == int(n)
        np.testing.assert_array_equal(ops.relu_forward(np.array([-1.0, 2.0], np.float32)), [0.0, 2.0])
    assert cynet.parallel_overhead(n) >= 0.0


def test_a_refused_thread_count_keeps_the_blas_limit():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    if not before or max(before) == 1:
        pytest.skip("no BLAS with more than one thread here: a dropped limit of 1 would not show")
    cynet.set_num_threads(1)
    with pytest.raises(TypeError):
        cynet.set_num_threads("2")
    assert cynet.get_num_threads() == 1
    assert blas_threads() == [1] * len(before)   # the limit of set_num_threads(1) still holds
    cynet.set_num_threads(None)
    assert blas_threads() == before


def test_set_get_round_trip_and_reset_to_the_default():
    default = cynet.get_num_threads()
    assert default == default_num_threads() >= 1
    for n in (1, 3, 7, 64):
        cynet.set_num_threads(n)
        assert cynet.get_num_threads() == n
    cynet.set_num_threads(None)
    assert cynet.get_num_threads() == default


def test_threads_context_restores_on_exit_nested_and_on_exception():
    cynet.set_num_threads(3)
    with cynet.threads(1) as n:
        assert n == 1 and cynet.get_num_threads() == 1
        with cynet.threads(4):
            assert cynet.get_num_threads() == 4
        assert cynet.get_num_threads() == 1
    assert cynet.get_num_threads() == 3
    with pytest.raises(RuntimeError, match="boom"):
        with cynet.threads(2):
            assert cynet.get_num_threads() == 2
            raise RuntimeError("boom")
    assert cynet.get_num_threads() == 3
    cynet.set_num_threads(None)
    with cynet.threads(2):
        pass
    assert cynet.get_num_threads() == default_num_threads()


def test_threads_context_wins_over_set_num_threads_inside_it():
    with cynet.threads(2):
        cynet.set_num_threads(5)  # the global setting changes ...
        assert cynet.get_num_threads() == 2  # ... but the block's own count is what this thread uses
    assert cynet.get_num_threads() == 5


def test_threads_context_is_local_to_the_calling_python_thread():
    seen = {}
    ready, release = threading.Event(), threading.Event()

    def other():
        ready.wait(10)
        seen["other"] = cynet.get_num_threads()
        release.set()

    cynet.set_num_threads(3)
    worker = threading.Thread(target=other)
    worker.start()
    with cynet.threads(1):
        ready.set()
        release.wait(10)
        seen["main"] = cynet.get_num_threads()
    worker.join(10)
    assert seen == {"main": 1, "other": 3}


def test_concurrent_callers_with_different_thread_counts_get_correct_results():
    # the kernels release the GIL: several Python threads call them at once, each with its own count
    rng = np.random.default_rng(0)
    x = rng.standard_normal(400_000).astype(np.float32)
    dout = rng.standard_normal(x.size).astype(np.float32)
    expected_y = reference.leaky_relu_forward(x, 0.1)
    expected_dx = reference.leaky_relu_backward(dout, x, 0.1)
    errors = []

    def work(n):
        try:
            with cynet.threads(n):
                for _ in range(5):
                    assert cynet.get_num_threads() == n
                    np.testing.assert_array_equal(ops.leaky_relu_forward(x, 0.1), expected_y)
                    np.testing.assert_array_equal(ops.leaky_relu_backward(dout, x, 0.1), expected_dx)
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in (1, 2, 3, 4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not errors, errors


def test_threads_limit_blas_and_restore_it():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    if not before:
        pytest.skip("threadpoolctl finds no BLAS in this process")
    with cynet.threads(1):
        assert blas_threads() == [1] * len(before)
    assert blas_threads() == before
    cynet.set_num_threads(1)
    assert blas_threads() == [1] * len(before)
    cynet.set_num_threads(None)
    assert blas_threads() == before


def _blas_threads_or_skip():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    if not blas_threads():
        pytest.skip("threadpoolctl finds no BLAS in this process")
    return blas_threads


def _in_order(*steps):
    """Run ``steps`` (name, thread index, action) across two Python threads, one step at a time in this order."""
    turn = [0]
    condition = threading.Condition()

    def worker(index):
        for position, (thread, action) in enumerate(steps):
            if thread != index:
                continue
            with condition:
                condition.wait_for(lambda: turn[0] == position, timeout=30)
            action()
            with condition:
                turn[0] += 1
                condition.notify_all()

    workers = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert turn[0] == len(steps)


_OVERLAPPING_BLOCKS = """
import json, threading, cynet, numpy
from threadpoolctl import threadpool_info
def blas():
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
before = blas()
a_in, b_in, a_out, b_seen = threading.Event(), threading.Event(), threading.Event(), threading.Event()
seen = {}
def a():
    with cynet.threads(1):
        a_in.set(); b_in.wait(30)
    a_out.set()
def b():
    a_in.wait(30)
    with cynet.threads(2):
        b_in.set(); a_out.wait(30); seen["inside_b"] = blas()
workers = [threading.Thread(target=a), threading.Thread(target=b)]
[w.start() for w in workers]; [w.join(60) for w in workers]
print(json.dumps(dict(before=before, inside_b=seen["inside_b"], after=blas())))
"""


def test_overlapping_threads_blocks_of_two_python_threads_leave_blas_as_it_was():
    # A enters threads(1), B enters threads(2), A leaves, B leaves: BLAS went back to 1 (B's restore of A's limit).
    # A fresh process whose main thread never set a limit: threadpoolctl lets only the first Python thread that set
    # OpenBLAS's limit change it while that thread lives (see cynet.threads)
    _blas_threads_or_skip()
    report = _fresh_process_json(_OVERLAPPING_BLOCKS, OMP_NUM_THREADS="2")
    if not report["before"]:
        pytest.skip("threadpoolctl finds no BLAS in the child")
    assert report["inside_b"] == [2] * len(report["before"])     # the latest block still open
    assert report["after"] == report["before"]


_BLAS_LOADED_LATER = """
import ctypes, json, os, shutil, sys, tempfile
import numpy, cynet
from threadpoolctl import threadpool_info
def blas():
    return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
first = blas()
prefixes = ("libscipy_openblas", "libopenblas")
openblas = [path for path in first if os.path.basename(path).startswith(prefixes)]
if not openblas or max(first.values()) == 1:
    print(json.dumps(None)); sys.exit()
cynet.set_num_threads(1)                       # cynet's first change: the loaded BLAS's limit recorded
copy = os.path.join(tempfile.mkdtemp(), "libscipy_openblas_copy.so")
shutil.copy(openblas[0], copy)
ctypes.CDLL(copy)                              # a second BLAS, loaded after that change, with its own limit
loaded = blas()
with cynet.threads(1):
    inside = blas()
cynet.set_num_threads(None)
after = blas()
shutil.rmtree(os.path.dirname(copy))
print(json.dumps(dict(first=first, loaded=loaded, inside=inside, after=after)))
"""


def test_a_blas_loaded_after_cynets_first_change_gets_its_own_limit_back():
    # CI: a BLAS library loaded after set_num_threads's first change was limited by later calls but left at that
    # limit by set_num_threads(None), which restored only the libraries loaded before the first change
    _blas_threads_or_skip()
    report = _fresh_process_json(_BLAS_LOADED_LATER, OMP_NUM_THREADS="2")
    if report is None:
        pytest.skip("no OpenBLAS with more than one thread in the child to copy")
    copies = [path for path in report["loaded"] if path not in report["first"]]
    assert len(copies) == 1
    assert set(report["inside"].values()) == {1}
    assert report["after"] == {**report["first"], copies[0]: report["loaded"][copies[0]]}
    assert report["loaded"][copies[0]] > 1          # the copy's own limit differs from cynet's 1: a lost one shows


def test_set_num_threads_during_another_threads_block_is_kept_when_the_block_ends():
    # (the block in this thread: threadpoolctl does not always pass on a limit set from another Python thread)
    blas_threads = _blas_threads_or_skip()
    try:
        with cynet.threads(2):
            setter = threading.Thread(target=cynet.set_num_threads, args=(1,))
            setter.start()
            setter.join()
            assert blas_threads() == [2] * len(blas_threads())   # the open block's count
        assert cynet.get_num_threads() == 1 and blas_threads() == [1] * len(blas_threads())
    finally:
        cynet.set_num_threads(None)


# --- the default: OMP_NUM_THREADS, then the CPUs available ----------------------------------------------------------
@pytest.mark.parametrize("value,expected", [("3", 3), ("5", 5), (" 2 ", 2), ("4,2", 4), ("1", 1), ("0", None),
                                            ("-2", None), ("abc", None), ("", None), ("2.5", None),
                                            ("100000", None), ("1_0", None), ("+3", 3), ("\u0663", None)])
def test_omp_num_threads_sets_the_default(monkeypatch, value, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert cynet.get_num_threads() == (expected or cynet.available_cpus())
    cynet._threading.reread_environment()   # a value above MAX_THREADS made every kernel call raise
    cynet.ops.relu_forward(np.ones(8, np.float32))
    cynet.set_num_threads(2)  # an explicit setting wins over the environment
    assert cynet.get_num_threads() == 2


def test_omp_num_threads_is_honoured_in_a_fresh_process():
    code = "import cynet; print(cynet.get_num_threads())"
    assert _run(["-c", code], OMP_NUM_THREADS="3").strip() == "3"
    assert _run(["-c", code]).strip() == str(cynet.available_cpus())


def test_available_cpus_respects_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity mask on this platform")
    assert 1 <= cynet.available_cpus() <= len(os.sched_getaffinity(0))
    if len(os.sched_getaffinity(0)) > 1:
        code = "import os, cynet; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); " \
               "print(cynet.available_cpus(), cynet.get_num_threads())"
        assert _run(["-c", code]).split() == ["1", "1"]


# --- configuration printout ------------------------------------------------------------------------------------------
def test_show_config_prints_the_version_and_the_settings():
    buffer = io.StringIO()
    with cynet.threads(3):
        cynet.show_config(file=buffer)
    text = buffer.getvalue()
    assert text.splitlines()[0].startswith(f"cynet {cynet.__version__} ")
    assert "OpenMP kernels : on" in text or "OpenMP kernels : OFF" in text
    assert "threads        : 3 " in text
    assert f"CPUs available {cynet.available_cpus()}" in text


def test_show_config_prints_to_stdout_by_default(capsys):
    cynet.show_config()
    assert capsys.readouterr().out.startswith(f"cynet {cynet.__version__} ")


def test_python_m_cynet_prints_the_configuration():
    out = _run(["-m", "cynet"], OMP_NUM_THREADS="3")
    assert out.startswith(f"cynet {cynet.__version__} ")
    assert "OpenMP" in out and "SIMD kernels" in out and "BLAS" in out
    assert "threads        : 3 (default 3;" in out


@pytest.mark.parametrize("user_setting, expected", [(None, "PASSIVE"), (("OMP_WAIT_POLICY", "ACTIVE"), "ACTIVE"),
                                                    (("GOMP_SPINCOUNT", "3000"), "unset"),
                                                    # empty values are no choice (libgomp calls them invalid)
                                                    (("OMP_WAIT_POLICY", ""), "PASSIVE"),
                                                    (("GOMP_SPINCOUNT", " "), "PASSIVE")])
def test_openmp_workers_wait_passively_unless_the_user_chose(user_setting, expected):
    """Without the one pool, idle OpenMP workers must not spin on the cores OpenBLAS's workers need next; a user's own
    OMP_WAIT_POLICY wins, and so does a GOMP_SPINCOUNT (libgomp ignores it unless OMP_WAIT_POLICY is unset)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["CYNET_BLAS_POOL"] = "0"
    if user_setting:
        env[user_setting[0]] = user_setting[1]
    code = "import os, cynet; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                            timeout=120)
    assert result.stdout.strip() == expected


# --- kernel_threads: one thread for calls too small to pay for waking the workers -------------------------------------
@pytest.fixture
def overhead(monkeypatch):
    """Set CYNET_PARALLEL_OVERHEAD_US for one test (the measured/cached value is forgotten before and after)."""
    from cynet import _threading

    def set_us(value):
        monkeypatch.setenv("CYNET_PARALLEL_OVERHEAD_US", value)
        _threading._overhead_seconds.clear()

    yield set_us
    _threading._overhead_seconds.clear()
    _threading._overhead_recheck.clear()


def test_a_wake_up_measured_under_load_is_measured_again_later(overhead, monkeypatch):
    # A busy machine at the first measurement (the workers wait ~10 ms for a core) must not keep every kernel of the
    # process on one thread once the load is gone: measured with two busy loops on a 2-vCPU host, one process in
    # three measured 10.6 ms and then ran even 16M-element kernels on one thread for good.
    from cynet import _threading
    from cynet._kernels import _runtime
    if not _runtime.openmp_enabled():
        pytest.skip("a serial build has no team to wake")
    monkeypatch.delenv("CYNET_PARALLEL_OVERHEAD_US", raising=False)
    _threading._overhead_seconds.clear()
    monkeypatch.setattr(_threading, "idle_spin_seconds", lambda n=None: 0.0)
    load = {"wait": 0.010}

    def timed(f, *args):                    # an n-thread region waits for the loaded core; a serial one does not
        return 1e-6 + (load["wait"] if args and args[0] > 1 else 0.0)     # (fixed times: the machine's own load
                                                                            # must not decide the test)

    now = [1000.0]
    monkeypatch.setattr(_threading, "_timed", timed)
    monkeypatch.setattr(_threading.time, "monotonic", lambda: now[0])
    with cynet.threads(2):
        big = 1 << 24                       # 16M streamed values: ~3 ms of work on one thread
        assert cynet.kernel_threads(big) == 1
        assert _threading._overhead_recheck[2][1] == _threading.RECHECK_FIRST_SECONDS
        now[0] += _threading.RECHECK_FIRST_SECONDS + 1
        assert cynet.kernel_threads(big) == 1                  # still loaded: measured again, the next in 2x
        assert _threading._overhead_recheck[2][1] == 2 * _threading.RECHECK_FIRST_SECONDS
        load["wait"] = 0.0                                      # the load is gone
        now[0] += 1
        assert cynet.kernel_threads(big) == 1                  # (not due yet)
        now[0] += 2 * _threading.RECHECK_FIRST_SECONDS
        assert cynet.kernel_threads(big) == 2
        assert 2 not in _threading._overhead_recheck and cynet.parallel_overhead() < _threading.WAKE_UP_RECHECK_ABOVE


def test_kernel_threads_splits_only_work_that_outweighs_the_wake_up(overhead):
    overhead("200")
    with cynet.threads(2):
        assert cynet.parallel_overhead() == pytest.approx(200e-6)
        # one thread: 1e6 elements at 0.4 ns = 400 us, of which two threads save 200 us: the wake-up's cost
        assert cynet.kernel_threads(990_000, 0.4) == 1
        assert cynet.kernel_threads(1_010_000, 0.4) == 2
        assert cynet.kernel_threads(200_000, 2.5) == 2      # 500 us of GELU-like work: 250 us saved
        assert cynet.kernel_threads(40_000, 0.4) == 1
    with cynet.threads(4):
        # four threads save 3/4 of 400 us = 300 us > 200 us
        assert cynet.kernel_threads(1_000_000, 0.4) == 4
    with cynet.threads(1):
        assert cynet.kernel_threads(10**9, 5.0) == 1
        assert cynet.parallel_overhead() == 0.0


def test_zero_overhead_gives_every_kernel_all_threads(overhead):
    overhead("0")
    with cynet.threads(3):
        assert cynet.kernel_threads(1) == 3


def test_kernel_calls_see_a_new_default_within_the_refresh_interval(overhead, monkeypatch):
    # The default (OMP_NUM_THREADS, then the CPUs available) is read again by kernel calls once
    # DEFAULT_REFRESH_SECONDS have passed; get_num_threads reads it every time; explicit settings apply at once.
    from cynet import _threading

    overhead("0")
    cynet.set_num_threads(None)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    time.sleep(_threading.DEFAULT_REFRESH_SECONDS)
    assert cynet.kernel_threads(10**6) == 3 == cynet.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cynet.get_num_threads() == 1                    # at once
    with cynet.threads(2):
        assert cynet.kernel_threads(10**6) == 2            # at once
    cynet.set_num_threads(4)
    assert cynet.kernel_threads(10**6) == 4
    cynet.set_num_threads(None)
    time.sleep(_threading.DEFAULT_REFRESH_SECONDS)
    assert cynet.kernel_threads(10**6) == 1                # the new default, after the interval
    monkeypatch.delenv("OMP_NUM_THREADS")
    time.sleep(_threading.DEFAULT_REFRESH_SECONDS)
    assert cynet.kernel_threads(10**6) == cynet.available_cpus()


@pytest.mark.parametrize("bad", ["-5", "abc", "nan", "inf"])
def test_a_bad_overhead_setting_is_refused(overhead, bad):
    overhead(bad)
    with cynet.threads(2), pytest.raises(ValueError, match="CYNET_PARALLEL_OVERHEAD_US"):
        cynet.parallel_overhead()


def test_the_overhead_is_measured_when_not_set():
    # a fresh process without the test suite's setting: the measured cost of waking the workers of a 2-thread team
    code = ("import cynet, math; v = cynet.parallel_overhead(2); "
            "assert v == cynet.parallel_overhead(2) and 0 <= v < 0.1 and math.isfinite(v), v; print(v)")
    env = {k: v for k, v in os.environ.items() if k != "CYNET_PARALLEL_OVERHEAD_US"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) >= 0


def _fresh_process_json(code, **env):
    """Run ``code`` (which prints one JSON document) in a fresh Python with neither the test suite's
    CYNET_PARALLEL_OVERHEAD_US nor the OMP_WAIT_POLICY that importing cynet put in this process's environment."""
    import json

    full_env = {k: v for k, v in os.environ.items() if k not in ("CYNET_PARALLEL_OVERHEAD_US", "OMP_WAIT_POLICY",
                                                                 "GOMP_SPINCOUNT")}
    full_env.update(env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


_spin_report = (
    "import io, json, cynet\n"
    "from threadpoolctl import threadpool_info\n"
    "spin = cynet.idle_spin_seconds(2)\n"
    "text = io.StringIO(); cynet.show_config(file=text)\n"
    "runtimes = sorted({i['filepath'] for i in threadpool_info() if i['user_api'] == 'openmp'})\n"
    "print(json.dumps(dict(spin=spin, overhead=cynet.parallel_overhead(2), config=text.getvalue(),"
    " runtimes=runtimes)))\n")


def _spinning_report(code, low, **env):
    """``_fresh_process_json(code)`` whose idle workers were seen spinning more than ``low`` seconds, measured up to
    three times: a spinning thread is seen only when it gets a core, so on a machine busier than its cores (the
    suite beside other jobs) the measurement says nothing and the test is skipped rather than failed."""
    for _ in range(3):
        report = _fresh_process_json(code, **env)
        if report["spin"] > low:
            return report
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > cynet.available_cpus() - 0.5:
        pytest.skip(f"no spin seen in three tries with a load average of {load:.1f} on {cynet.available_cpus()} "
                    f"CPUs: the idle workers got no core to spin on")
    return report


needs_thread_clocks = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and _runtime.openmp_enabled() and cynet.available_cpus() >= 2),
    reason="idle workers are watched through Linux thread CPU clocks, with OpenMP and two CPUs")


@needs_thread_clocks
def test_idle_workers_sleep_when_cynet_starts_the_openmp_runtime():
    report = _fresh_process_json(_spin_report, CYNET_BLAS_POOL="0")
    assert 0 <= report["spin"] < 2e-3, report
    assert "PASSIVE" in report["config"] and "started before cynet" not in report["config"]


@needs_thread_clocks
def test_a_runtime_started_before_cynet_spins_and_parallel_calls_pay_for_it():
    # what `import torch` before `import cynet` does: libgomp starts with its default wait policy (spinning), and
    # cynet's setting comes too late; its kernels then share the spinning runtime (the same soname)
    code = ("import ctypes, sys\n"
            "try:\n"
            "    ctypes.CDLL('libgomp.so.1', mode=ctypes.RTLD_GLOBAL)\n"
            "except OSError:\n"
            "    print('{\"runtimes\": []}'); sys.exit(0)\n" + _spin_report)
    report = _fresh_process_json(code, CYNET_BLAS_POOL="0")
    if len(report["runtimes"]) != 1 or "libgomp" not in report["runtimes"][0]:
        pytest.skip(f"the kernels do not run on the preloaded libgomp here: {report['runtimes']}")
    report = _spinning_report(code, 1e-3, CYNET_BLAS_POOL="0")
    assert report["spin"] > 1e-3, report  # libgomp's default spin: about 8 ms on the development machine
    assert report["overhead"] >= report["spin"]
    assert "started before cynet" in report["config"]


@needs_thread_clocks
def test_spinning_chosen_by_the_user_is_reported_but_not_charged():
    report = _spinning_report(_spin_report, 1e-3, OMP_WAIT_POLICY="ACTIVE")
    assert report["spin"] > 1e-3, report
    assert report["overhead"] < report["spin"]
    assert "ACTIVE" in report["config"] and "started before cynet" not in report["config"]


@needs_thread_clocks
def test_a_short_spin_chosen_by_the_user_is_reported_and_ends():
    # GOMP_SPINCOUNT with OMP_WAIT_POLICY unset: idle workers spin 3000 rounds (well under a millisecond), then sleep
    report = _fresh_process_json(_spin_report, GOMP_SPINCOUNT="3000")
    assert 0 <= report["spin"] < 2e-3, report
    assert "GOMP_SPINCOUNT" in report["config"] and "started before cynet" not in report["config"]


def test_idle_spin_is_zero_for_one_thread():
    assert cynet.idle_spin_seconds(1) == 0.0


def test_small_calls_on_one_thread_give_the_same_bits_as_split_ones(overhead):
    # the same call split (overhead 0) and kept on one thread (huge overhead): every kernel is thread-invariant
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 257)).astype(np.float32)
    results = []
    for setting in ("0", "1e9"):
        overhead(setting)
        with cynet.threads(2):
            bn = cynet.nn.BatchNorm1d(257)
            y = bn(x)
            dx = bn.backward(np.cos(x))
            results.append((cynet.ops.gelu_forward(x), cynet.ops.sigmoid_forward(x), y, dx, bn.weight.grad.copy()))
    for a, b in zip(*results):
        assert np.array_equal(a, b)


# --- one thread pool: OpenBLAS's jobs on cynet's OpenMP team (CYNET_BLAS_POOL=1) --------------------------------------
GEMM_SHAPES = [(256, 3072, 1024), (300, 77, 513), (1024, 512, 256)]


def _products(threads, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    with cynet.threads(threads):
        for m, k, n in GEMM_SHAPES:
            a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
            out += [a @ b, a.astype(np.float64) @ b.astype(np.float64)]
    return out


@pytest.fixture
def blas_pool():
    """The one pool on for the test, as before afterwards; a skip where no pthreads OpenBLAS has the callback."""
    was_on = bool(cynet._threading.blas_pool_status()["libraries"])
    status = cynet._threading._set_blas_pool(True)
    try:
        if not status["libraries"]:
            pytest.skip(f"no one pool here: {status['reason']}")
        yield status
    finally:
        cynet._threading._set_blas_pool(was_on)


def _pool_available_here():
    """'on' where this environment can run the one pool, else the reason (what a forced CYNET_BLAS_POOL=1 gives)."""
    was_on = bool(cynet._threading.blas_pool_status()["libraries"])
    status = cynet._threading._set_blas_pool(True)
    cynet._threading._set_blas_pool(was_on)
    return status["reason"] or "on"


_POOL_REPORT = "import os, cynet; print(cynet._threading.blas_pool_status()['reason'] or 'on', " \
               "os.environ.get('OMP_WAIT_POLICY', 'unset'))"


def _expected_pool_report(available):
    """_POOL_REPORT's line where the pool was asked for (forced, or by default with at most two CPUs): on, with the
    waits left to the runtime; or the reason it cannot run, with passive waits for cynet's team. A build without
    OpenMP (CYNET_NO_OPENMP=1) has no team, and the plan asks the kernels whether they were built with OpenMP: no pool,
    for that reason, and PASSIVE as for any plan without the pool."""
    if available == "on":
        return "on unset"
    if not _runtime.openmp_enabled():
        return "not built here (a serial build: no OpenMP team) PASSIVE"
    return f"{available} PASSIVE"


def test_blas_pool_follows_the_environment_variable_and_leaves_the_waits_to_the_runtime():
    available = _pool_available_here()
    assert _run(["-c", _POOL_REPORT], CYNET_BLAS_POOL="0").split() == ["off", "(CYNET_BLAS_POOL=0)", "PASSIVE"]
    forced = _run(["-c", _POOL_REPORT], CYNET_BLAS_POOL="1").strip()
    assert forced == _expected_pool_report(available)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_blas_pool_is_on_by_default_with_at_most_two_cpus_and_off_above(monkeypatch):
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); " + _POOL_REPORT
    available = _pool_available_here()
    one_cpu = _run(["-c", code], CYNET_BLAS_POOL="").strip()
    assert one_cpu == _expected_pool_report(available)
    monkeypatch.setenv("CYNET_BLAS_POOL", "")
    monkeypatch.setattr(cynet._threading, "available_cpus", lambda: 16)
    assert cynet._threading._planned_blas_pool() == (
        False, "off: on by default with at most 2 CPUs, where it was measured (this process may use 16); "
               "CYNET_BLAS_POOL=1 turns it on")
    monkeypatch.setenv("CYNET_BLAS_POOL", "yes")
    with pytest.warns(RuntimeWarning, match="CYNET_BLAS_POOL must be 0, 1 or unset, got 'yes'"):
        assert cynet._threading._planned_blas_pool()[0] is False


@needs_thread_clocks
def test_with_the_one_pool_idle_workers_spin():
    if _pool_available_here() != "on":
        pytest.skip(f"no one pool here: {_pool_available_here()}")
    report = _spinning_report(_spin_report, 2e-4, CYNET_BLAS_POOL="1")
    assert report["spin"] > 2e-4, report       # libgomp's default: spin a while (about 4 ms here), then sleep
    # (that parallel calls do not pay for it is a wall-clock comparison, which a busy machine upsets: bench/'s)
    assert "the runtime's default" in report["config"] and "started before cynet" not in report["config"]
    assert "one thread pool; CYNET_BLAS_POOL=0 turns it off" in report["config"]


@pytest.mark.parametrize("threads", [2, 3])
def test_blas_pool_runs_the_jobs_on_the_team_and_gives_the_same_bits(blas_pool, threads):
    cynet._threading._set_blas_pool(False)
    own_workers = _products(threads)
    cynet._threading._set_blas_pool(True)
    team_before = cynet._threading.blas_pool_status()["calls"]["team"]
    one_pool = _products(threads)
    assert cynet._threading.blas_pool_status()["calls"]["team"] > team_before
    for got, expected in zip(one_pool, own_workers):
        np.testing.assert_array_equal(got, expected)


def test_blas_pool_fresh_threads_path_gives_the_same_bits(blas_pool):
    expected = _products(2)
    fresh_before = cynet._threading.blas_pool_status()["calls"]["fresh_threads"]
    _runtime.blas_callback_force_fresh_threads(True)
    try:
        got = _products(2)
    finally:
        _runtime.blas_callback_force_fresh_threads(False)
    assert cynet._threading.blas_pool_status()["calls"]["fresh_threads"] > fresh_before
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_blas_pool_serves_concurrent_python_threads(blas_pool):
    # BLAS's limit is process-wide and threadpoolctl takes it from the main thread only: the main thread sets 2 for
    # everyone (the workers' threads(2) blocks would not reach BLAS where OMP_NUM_THREADS=1 started it on one thread,
    # and OpenBLAS's products on 1 and 2 threads differ in the last bit)
    cynet.set_num_threads(2)
    expected = _products(2)
    results, errors = {}, []

    def worker(i):
        try:
            results[i] = _products(2)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a BLAS call on the one pool did not return"
    assert not errors
    for got in results.values():
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_blas_pool_in_a_forked_child_uses_fresh_threads():
    # libgomp's team does not survive fork(): a child whose parent ran the team must not wait on it.
    code = """
import os, sys, numpy as np, cynet
status = cynet._threading.blas_pool_status()
if not status["libraries"]:
    print("skip", status["reason"]); sys.exit(0)
rng = np.random.default_rng(0)
a, b = rng.standard_normal((256, 3072), np.float32), rng.standard_normal((3072, 1024), np.float32)
with cynet.threads(2):
    parent = a @ b
pid = os.fork()
if pid == 0:
    with cynet.threads(2):
        child = a @ b
    calls = cynet._threading.blas_pool_status()["calls"]
    os._exit(0 if np.array_equal(child, parent) and calls["fresh_threads"] >= 1 else 3)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""
    out = _run(["-c", code], CYNET_BLAS_POOL="1").strip()
    if out.startswith("skip"):
        pytest.skip(out)
    assert out == "child 0"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_kernels_in_a_forked_child_run_on_one_thread_instead_of_hanging():
    # Before: a child forked after the parent's kernels ran on 2 threads hung in its first parallel kernel. A serial
    # build (CYNET_NO_OPENMP=1) has no team to lose: its child keeps the count, without a warning.
    code = """
import os, warnings, numpy as np, cynet
team = cynet._kernels._runtime.openmp_enabled()
x = np.random.default_rng(0).standard_normal((1000, 1000)).astype(np.float32)
with cynet.threads(2):
    parent = cynet.ops.tanh_forward(x)
    pid = os.fork()
    if pid == 0:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            child = cynet.ops.tanh_forward(x)
            n = cynet.get_num_threads()
            overhead = cynet.parallel_overhead(4)
        ok = (np.array_equal(child, parent) and n == (1 if team else 2) and overhead == 0.0
              and len(caught) == (1 if team else 0)
              and all("does not survive fork()" in str(w.message) for w in caught))
        os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status), cynet.get_num_threads() == cynet._threading.default_num_threads())
"""
    assert _run(["-c", code]).strip() == "child 0 True"    # the parent keeps its default, whatever the CPUs


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_copy_bytes_copies_every_byte_for_any_thread_count(n_threads):
    src = np.random.default_rng(0).integers(0, 256, 5 * 2**18 + 13, dtype=np.uint8)   # 5 chunks and a partial one
    dst = np.zeros_like(src)
    _runtime.copy_bytes(src, dst, n_threads)
    np.testing.assert_array_equal(dst, src)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.bool_])
def test_copyto_copies_like_numpy(dtype):
    from cynet._threading import copyto

    src = (np.random.default_rng(0).standard_normal(2**22 + 13) * 100).astype(dtype)   # large enough for the team
    dst = np.zeros_like(src)
    copyto(dst, src)
    np.testing.assert_array_equal(dst, src)
    # what it leaves to np.copyto: a strided destination, broadcasting, another dtype
    strided = np.zeros(2 * src.size, dtype)[::2]
    copyto(strided, src)
    np.testing.assert_array_equal(strided, src)
    rows = np.zeros((3, 4), np.float64)
    copyto(rows, np.arange(4.0))
    np.testing.assert_array_equal(rows, np.tile(np.arange(4.0), (3, 1)))
    as_float = np.zeros(src.shape, np.float64)
    copyto(as_float, src)
    np.testing.assert_array_equal(as_float, src.astype(np.float64))


@pytest.mark.parametrize("shift", [1000, -1000])
def test_copyto_between_overlapping_parts_of_one_array_is_numpys_copy(shift):
    from cynet._threading import copyto

    a = np.arange(2 * 10**6, dtype=np.float64)
    expected = a.copy()
    dst, src = (a[:-shift], a[shift:]) if shift > 0 else (a[-shift:], a[:shift])
    np.copyto(*((expected[:-shift], expected[shift:]) if shift > 0 else (expected[-shift:], expected[:shift])))
    with cynet.threads(2):
        copyto(dst, src)
    np.testing.assert_array_equal(a, expected)


def test_copy_bytes_refuses_unequal_lengths():
    with pytest.raises(ValueError, match="dst holds 3 bytes, src 4"):
        _runtime.copy_bytes(np.zeros(4, np.uint8), np.zeros(3, np.uint8), 2)


def test_show_config_says_which_settings_were_measured_and_which_were_set():
    """CYNET_PARALLEL_OVERHEAD_US=50 was printed as "measured", a 1000-byte streaming threshold as "0.0 MiB ... (a
    measured threshold)", and BLAS's own default thread count next to cynet's as if one setting controlled both."""
    code = "import cynet; cynet.show_config()"
    env = {k: v for k, v in os.environ.items() if k not in ("CYNET_PARALLEL_OVERHEAD_US", "CYNET_STREAM_MIN_BYTES")}
    run = lambda **extra: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,   # noqa: E731
                                         env={**env, **extra}, timeout=120).stdout
    set_by_user = run(CYNET_PARALLEL_OVERHEAD_US="50", CYNET_STREAM_MIN_BYTES="1000")
    assert "outputs of 1000 bytes or more" in set_by_user and "set by CYNET_STREAM_MIN_BYTES" in set_by_user
    assert "measured here" not in set_by_user
    defaults = run()
    if _runtime.openmp_enabled():
        assert "parallel call  : 50 us" in set_by_user and "set by CYNET_PARALLEL_OVERHEAD_US" in set_by_user
        assert "measured here; CYNET_PARALLEL_OVERHEAD_US overrides" in defaults
    else:   # nothing to measure or set: no kernel call is split
        for text in (set_by_user, defaults):
            assert "parallel call  : none (a serial build: every kernel call runs on the calling thread)" in text
    assert "outputs of 32.0 MiB or more" in defaults and "the default, measured on the development hosts" in defaults


@pytest.mark.parametrize("n", [2**15 + 1, 2**31, 10**20])
def test_a_thread_count_no_runtime_can_take_is_refused_and_changes_nothing(n):
    # 2**31 was stored, then every kernel raised OverflowError; 10**20 changed the setting before BLAS refused it
    before = cynet.get_num_threads()
    with pytest.raises(ValueError, match="at most 32768"):
        cynet.set_num_threads(n)
    with pytest.raises(ValueError, match="at most 32768"):
        with cynet.threads(n):
            pass
    assert cynet.get_num_threads() == before


def test_a_serial_builds_configuration_says_its_kernels_run_on_one_thread(monkeypatch):
    # a serial build printed "parallel call  : 0 us (... measured here ...; a kernel call runs on one thread unless
    # splitting saves more)" and a thread count as if its kernels used it: nothing was measured, nothing is split
    from cynet import _config
    c = {**_config.config(), "openmp": False, "threads": 3}
    text = io.StringIO()
    monkeypatch.setattr(_config, "config", lambda: c)
    _config.show_config(file=text)
    lines = {line[:15]: line[17:] for line in text.getvalue().splitlines()}
    assert lines["threads        "].startswith("3 (default ")
    assert lines["threads        "].endswith("; a serial build runs every kernel on one thread: the count limits "
                                             "BLAS only")
    assert lines["parallel call  "] == "none (a serial build: every kernel call runs on the calling thread)"
    monkeypatch.setattr(_config, "config", lambda: {**c, "openmp": True})
    text = io.StringIO()
    _config.show_config(file=text)
    lines = {line[:15]: line[17:] for line in text.getvalue().splitlines()}
    assert "serial" not in lines["threads        "]
    assert lines["parallel call  "].endswith("unless splitting saves more)")


def test_the_wait_policy_line_says_what_the_build_and_the_pool_are():
    # a serial build claimed the runtime's spin and the one pool; without the pool the default text claimed it too
    from cynet import _config
    c = _config.config()
    assert _config._wait_policy_text({**c, "openmp": False}).startswith("none (a serial build")
    no_pool = {**c, "openmp": True, "omp_wait_policy": "", "gomp_spincount": "", "wait_policy_set_by_user": False,
               "idle_spin_ms": 0.0, "blas_pool": {**c["blas_pool"], "libraries": []}}
    assert _config._wait_policy_text(no_pool) == "the runtime's default: spin a while, then sleep"

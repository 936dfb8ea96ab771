"""Thread control (set_num_threads, get_num_threads, the threads context manager, OMP_NUM_THREADS, the CPU count),
its effect on BLAS, concurrent callers, and the configuration printout (show_config, python -m cynet)."""
import io
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import cynet
from cynet import ops, reference
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
    (2.0, TypeError, "must be an int, got float")], ids=str)
def test_bad_thread_counts_are_refused_and_change_nothing(bad, exc, message):
    cynet.set_num_threads(2)
    with pytest.raises(exc, match=rf"^cynet: the number of threads {message}"):
        cynet.set_num_threads(bad)
    assert cynet.get_num_threads() == 2
    with pytest.raises(exc, match=rf"^cynet: the number of threads {message}"):
        with cynet.threads(bad):
            pass  # pragma: no cover - never entered
    assert cynet.get_num_threads() == 2


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


# --- the default: OMP_NUM_THREADS, then the CPUs available ----------------------------------------------------------
@pytest.mark.parametrize("value,expected", [("3", 3), ("5", 5), (" 2 ", 2), ("4,2", 4), ("1", 1), ("0", None),
                                            ("-2", None), ("abc", None), ("", None), ("2.5", None)])
def test_omp_num_threads_sets_the_default(monkeypatch, value, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert cynet.get_num_threads() == (expected or cynet.available_cpus())
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


@pytest.mark.parametrize("user_setting, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_workers_wait_passively_unless_the_user_chose(user_setting, expected):
    """Idle OpenMP workers must not spin on the cores BLAS needs next; a user's own OMP_WAIT_POLICY wins."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user_setting:
        env["OMP_WAIT_POLICY"] = user_setting
    code = "import os, cynet; print(os.environ['OMP_WAIT_POLICY'])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                            timeout=120)
    assert result.stdout.strip() == expected

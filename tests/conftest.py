"""pytest wiring for cynet's suite: the ``op`` parametrisation, isolation of the thread setting, the report header.

Helpers and data (the op table, ulp measures, oracles) live in ``_helpers.py``; see its docstring for why.

A test that takes an argument named ``op`` runs once per elementwise activation (``_helpers.ELEMENTWISE``, ids such as
``gelu-tanh``), unless it parametrizes ``op`` itself (to attach marks to single ops).
"""
import os

# Run every kernel on all threads above its own small threshold, as if waking the workers cost nothing: the parallel
# paths are what the thread-invariance tests exist for (by default a small call runs on one thread when waking the
# workers costs more than splitting saves, cynet.kernel_threads). Set before cynet is imported.
os.environ.setdefault("CYNET_PARALLEL_OVERHEAD_US", "0")

import numpy as np
import pytest
from hypothesis import settings

import cynet
from _helpers import ELEMENTWISE

# Hypothesis: deterministic by default (the same examples on every run, nothing written to .hypothesis/); for a longer,
# random search: HYPOTHESIS_PROFILE=thorough python -m pytest -q tests -k property
settings.register_profile("cynet", max_examples=300, deadline=None, derandomize=True, database=None)
settings.register_profile("thorough", max_examples=20_000, deadline=None, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "cynet"))


def pytest_generate_tests(metafunc):
    if "op" not in metafunc.fixturenames:
        return
    explicit = {name for mark in metafunc.definition.iter_markers("parametrize")
                for name in (mark.args[0].split(",") if isinstance(mark.args[0], str) else mark.args[0])}
    if "op" not in {name.strip() for name in explicit}:
        metafunc.parametrize("op", ELEMENTWISE, ids=[spec.id for spec in ELEMENTWISE])


@pytest.fixture(autouse=True)
def _default_thread_setting():
    """Every test starts and ends with the default thread count (no global set_num_threads leaks between tests)."""
    cynet.set_num_threads(None)
    yield
    cynet.set_num_threads(None)


@pytest.fixture
def rng():
    return np.random.default_rng(20240229)


def pytest_report_header(config):
    from cynet._config import config as cynet_config

    c = cynet_config()
    return (f"cynet {c['cynet']}: OpenMP {'on' if c['openmp'] else 'off'}, SIMD {c['simd']} "
            f"(available {', '.join(c['simd_available'])}), {c['threads']} threads, "
            f"{c['available_cpus']} CPUs available, long double mantissa {np.finfo(np.longdouble).nmant} bits")

"""cynet: a compact deep-learning framework for the CPU.

Hot paths are typed Cython kernels parallelised with OpenMP (``cynet._kernels``, private); :mod:`cynet.ops` exposes them
as plain array functions, :mod:`cynet.reference` is their NumPy twin. On top of them: :mod:`cynet.nn` (modules and
losses), :mod:`cynet.optim`, :class:`Trainer` (:mod:`cynet.train`), :func:`babysit`, :func:`summary` and the other
checks of :mod:`cynet.diagnostics`, :mod:`cynet.tune` (search, cross-validation), :mod:`cynet.ensemble` and
:mod:`cynet.data`. Threads for the kernels and for BLAS are controlled in one place: :func:`set_num_threads`,
:func:`get_num_threads`, :func:`threads`; :func:`kernel_threads` decides, per kernel call, whether splitting the work
pays for waking the workers.
"""
from cynet._threading import (available_cpus, get_num_threads, idle_spin_seconds, kernel_threads, parallel_overhead,
                              set_num_threads, stream_stores, threads)
from cynet._config import show_config
from cynet._random import get_rng_state, manual_seed, set_rng_state
from cynet import ops, reference
from cynet import nn
from cynet import init, gradcheck, data, optim
from cynet.diagnostics import babysit, summary
from cynet.train import Trainer
from cynet._threading import _install_blas_pool

_install_blas_pool()  # NumPy's OpenBLAS is loaded by now; with CYNET_BLAS_POOL=1 its jobs go to cynet's OpenMP team

__version__ = "0.1.0"

__all__ = [
    "__version__", "available_cpus", "get_num_threads", "set_num_threads", "threads", "kernel_threads",
    "parallel_overhead", "idle_spin_seconds", "stream_stores", "show_config", "ops",
    "reference", "manual_seed", "get_rng_state", "set_rng_state", "nn", "init",
    "gradcheck", "data", "optim", "babysit", "summary", "Trainer",
]

"""``cynet.show_config()`` / ``python -m cynet``: how this installation was built and what it will use."""
import os
import platform
import sys

import numpy as np
from threadpoolctl import threadpool_info

from cynet import _threading
from cynet._kernels import _runtime, available_isas, selected_isa
from cynet._threading import (WAIT_POLICY_SET_BY_USER, available_cpus, blas_pool_status, default_num_threads,
                              get_num_threads, idle_spin_seconds, parallel_overhead, stream_min_bytes)
from cynet.nn import _reuse as reuse
from cynet.nn import module


def config():
    """The facts :func:`show_config` prints, as a dict."""
    import cynet

    blas = [
        {
            "library": info.get("internal_api"),
            "version": info.get("version"),
            "threading": info.get("threading_layer"),
            "num_threads": info.get("num_threads"),
            "path": info.get("filepath"),
        }
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]
    # the idle workers' spinning is watched on at least 2 threads where there are 2 CPUs: with one thread there are no
    # workers, yet a runtime started before cynet would spin as soon as the count is raised
    spin_threads = max(2, get_num_threads()) if available_cpus() >= 2 else get_num_threads()
    return {
        "cynet": cynet.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "openmp": _runtime.openmp_enabled(),
        "simd": selected_isa(),
        "simd_available": available_isas(),
        "available_cpus": available_cpus(),
        "default_threads": default_num_threads(),
        "threads": get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", ""),
        "wait_policy_set_by_user": WAIT_POLICY_SET_BY_USER,
        "idle_spin_ms": idle_spin_seconds(spin_threads) * 1e3,
        "idle_spin_threads": spin_threads,
        "parallel_overhead_us": parallel_overhead() * 1e6,
        "stream_min_bytes": stream_min_bytes(),
        "stream_min_bytes_set": bool(os.environ.get("CYNET_STREAM_MIN_BYTES", "").strip()),
        "parallel_overhead_set": bool(os.environ.get("CYNET_PARALLEL_OVERHEAD_US", "").strip()),
        "blas": blas,
        "blas_pool": blas_pool_status(),
        "reuse_arrays": reuse.ENABLED,
        "reuse_min_bytes": reuse.MIN_BYTES,
        "reuse_max_free_bytes": reuse.MAX_FREE_BYTES,
        "fuse_batchnorm_relu": module.FUSE_BATCHNORM_RELU,
        "fuse_linear_relu": module.FUSE_LINEAR_RELU,
    }


def _fusion_text(c):
    fused = ([] if not c["fuse_batchnorm_relu"] else
             ["a batch norm and the ReLU after it (training statistics; CYNET_FUSE_BATCHNORM_RELU=0 turns it off)"])
    fused += ([] if not c["fuse_linear_relu"] else
              ["a Linear's bias and the ReLU after it (CYNET_FUSE_LINEAR_RELU=0 turns it off)"])
    return "; ".join(fused) + " in one pass inside Sequential" if fused else \
        "none (CYNET_FUSE_BATCHNORM_RELU=0, CYNET_FUSE_LINEAR_RELU=0)"


def _started_too_early(c):
    """Whether idle workers spin although nobody chose it: the OpenMP runtime started before cynet could make it
    passive (torch imported first, for example)."""
    return c["idle_spin_ms"] >= 1 and not c["wait_policy_set_by_user"] and not _spin_left_to_runtime(c)


def _size(n_bytes):
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} KiB" if n_bytes >= 2**10 \
        else f"{n_bytes} bytes"


def _wait_policy_text(c):
    if not c["openmp"]:
        return "none (a serial build: no OpenMP runtime, no idle workers)"
    if _started_too_early(c):
        return (f"{c['omp_wait_policy'] or 'passive'} asked for by cynet too late: the OpenMP runtime started before "
                f"cynet (torch imported first, for example), so idle workers spin; import cynet first or set "
                f"OMP_WAIT_POLICY=PASSIVE in the environment")
    if c["omp_wait_policy"]:
        why = ("idle workers sleep at once, leaving the cores to BLAS" if c["omp_wait_policy"].upper() == "PASSIVE"
               else "idle workers keep spinning")
        return f"{c['omp_wait_policy']} (OMP_WAIT_POLICY: {why})"
    if c["gomp_spincount"]:
        return f"spin {c['gomp_spincount']} rounds, then sleep (GOMP_SPINCOUNT, with OMP_WAIT_POLICY unset)"
    return "the runtime's default: spin a while, then sleep" + (
        " (with the one pool BLAS runs on the same team, so nothing waits for the cores)"
        if c["blas_pool"]["libraries"] else "")


def _spin_left_to_runtime(c):
    """Whether cynet left the wait policy to the runtime on purpose (the one pool): spinning is then expected."""
    return bool(c["blas_pool"]["libraries"]) and not c["wait_policy_set_by_user"]


def show_config(file=None):
    """Print the version, whether the kernels use OpenMP, the thread counts and the BLAS in use.

    Example:
        >>> import cynet
        >>> cynet.show_config()  # doctest: +SKIP
        cynet 0.1.0 ...
    """
    c = config()
    lines = [
        f"cynet {c['cynet']}  (Python {c['python']}, NumPy {c['numpy']}, {c['platform']})",
        f"OpenMP kernels : {'on' if c['openmp'] else 'OFF (serial build)'}",
        f"SIMD kernels   : {c['simd']} (built and supported here: {', '.join(c['simd_available'])}; "
        f"cap with CYNET_ISA)",
        f"threads        : {c['threads']} (default {c['default_threads']}; CPUs available {c['available_cpus']}; "
        f"set with cynet.set_num_threads or OMP_NUM_THREADS)"
        + ("" if c["openmp"] else "; a serial build runs every kernel on one thread: the count limits BLAS only"),
        f"OpenMP waits   : {_wait_policy_text(c)}" + (
            f"; idle workers measured spinning {c['idle_spin_ms']:.1f} ms after a parallel region of "
            f"{c['idle_spin_threads']} thread{'s' if c['idle_spin_threads'] != 1 else ''}" if c["openmp"] else ""),
        (f"parallel call  : {c['parallel_overhead_us']:.0f} us (waking the workers, or their spinning where larger "
         f"and it takes cores from BLAS, which the one pool's does not; "
         + ("set by CYNET_PARALLEL_OVERHEAD_US" if c["parallel_overhead_set"] else
            "measured here; CYNET_PARALLEL_OVERHEAD_US overrides")
         + "; a kernel call runs on one thread unless splitting saves more)" if c["openmp"] else
         "parallel call  : none (a serial build: every kernel call runs on the calling thread)"),
        f"streaming      : outputs of {_size(c['stream_min_bytes'])} or more written with non-temporal stores ("
        + ("set by CYNET_STREAM_MIN_BYTES" if c["stream_min_bytes_set"] else
           "the default, measured on the development hosts; CYNET_STREAM_MIN_BYTES overrides") + ")",
        "layer outputs  : " + (f"those of {c['reuse_min_bytes'] / 2**20:.0f} MiB or more reused once nothing holds "
                               f"them, up to {c['reuse_max_free_bytes'] / 2**20:.0f} MiB kept free "
                               f"(CYNET_REUSE_ARRAYS=0 turns it off)" if c["reuse_arrays"] else
                               "fresh arrays every pass (reuse off: CYNET_REUSE_ARRAYS=0, or no reference counts)"),
        "fusion         : " + _fusion_text(c),
    ]
    if c["blas"]:
        for b in c["blas"]:
            own = ("" if b["num_threads"] == c["threads"] or b["path"] in _threading._blas_original else
                   "; its own default until cynet.set_num_threads or cynet.threads sets both")
            lines.append(f"BLAS           : {b['library']} {b['version']} ({b['threading']} threading, "
                         f"{b['num_threads']} threads{own}) {b['path']}")
    else:
        lines.append("BLAS           : none found by threadpoolctl")
    pool = c["blas_pool"]
    lines.append("BLAS jobs      : " + (f"on cynet's OpenMP team (one thread pool; CYNET_BLAS_POOL=0 turns it off): "
                                        f"{', '.join(pool['libraries'])}" if pool["libraries"] else
                                        f"OpenBLAS's own workers; one pool with cynet's team: {pool['reason']}"))
    print("\n".join(lines), file=file or sys.stdout)

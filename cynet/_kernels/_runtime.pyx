"""Facts about how the kernels were compiled (OpenMP on or off) and the OpenMP runtime."""
from cython.parallel cimport prange

from cynet._kernels._openmp cimport CYNET_HAVE_OPENMP, omp_get_max_threads, omp_get_num_procs


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(CYNET_HAVE_OPENMP)


def openmp_max_threads():
    """The OpenMP runtime's default team size (1 in a serial build)."""
    return omp_get_max_threads()


def openmp_num_procs():
    """Processors the OpenMP runtime sees (1 in a serial build)."""
    return omp_get_num_procs()


cdef extern from *:
    """
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    static int cynet_cpu_has_avx2(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    static int cynet_cpu_has_avx512(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    }
    #else
    static int cynet_cpu_has_avx2(void) { return 0; }
    static int cynet_cpu_has_avx512(void) { return 0; }
    #endif
    """
    int cynet_cpu_has_avx2() nogil
    int cynet_cpu_has_avx512() nogil


def cpu_supports(str isa):
    """Whether this CPU (and the OS, which must save the wider registers) runs code built for ``isa``:
    ``'baseline'`` (always), ``'avx2'`` (with FMA) or ``'avx512'`` (F, DQ, BW and VL). False off x86 or with other
    compilers."""
    if isa == "baseline":
        return True
    if isa == "avx2":
        return bool(cynet_cpu_has_avx2())
    if isa == "avx512":
        return bool(cynet_cpu_has_avx512())
    raise ValueError(f"unknown instruction set {isa!r}; expected 'baseline', 'avx2' or 'avx512'")


def parallel_region(int n_threads):
    """Run one OpenMP parallel region of ``n_threads`` threads that does next to nothing: its wall time is what
    starting and joining the team costs (waking sleeping workers), the price every parallel kernel call pays."""
    cdef int i
    cdef int sink[64]
    with nogil:
        for i in prange(n_threads, schedule='static', num_threads=n_threads):
            sink[i % 64] = i

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
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")
            && __builtin_cpu_supports("fma");
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
    ``'baseline'`` (always), ``'avx2'`` (with FMA) or ``'avx512'`` (F, DQ, BW and VL, with FMA). False off x86 or
    with other compilers."""
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


cdef extern from *:
    """
    #if defined(__linux__) && defined(_OPENMP)
    #include <pthread.h>
    #include <time.h>
    #define CYNET_MAX_RECORDED_THREADS 256
    static pthread_t cynet_team_threads[CYNET_MAX_RECORDED_THREADS];
    static int cynet_thread_clocks_supported(void) { return 1; }
    static void cynet_record_team_thread(int index) {
        if (index >= 0 && index < CYNET_MAX_RECORDED_THREADS) cynet_team_threads[index] = pthread_self();
    }
    /* CPU seconds the recorded team thread `index` has run so far, or -1 when its clock cannot be read. */
    static double cynet_team_thread_cpu_seconds(int index) {
        clockid_t clock;
        struct timespec now;
        if (index < 0 || index >= CYNET_MAX_RECORDED_THREADS) return -1.0;
        if (pthread_getcpuclockid(cynet_team_threads[index], &clock) != 0) return -1.0;
        if (clock_gettime(clock, &now) != 0) return -1.0;
        return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
    }
    #else
    static int cynet_thread_clocks_supported(void) { return 0; }
    static void cynet_record_team_thread(int index) { (void)index; }
    static double cynet_team_thread_cpu_seconds(int index) { (void)index; return -1.0; }
    #endif
    """
    int cynet_thread_clocks_supported() nogil
    void cynet_record_team_thread(int index) noexcept nogil
    double cynet_team_thread_cpu_seconds(int index) nogil


def idle_spin_seconds(int n_threads, double horizon=0.05, double step=0.0005):
    """How long the OpenMP runtime's idle workers keep a core busy after a parallel region ends: run a region of
    ``n_threads`` threads, then watch the CPU clocks of its workers (not the calling thread) while the caller sleeps,
    in steps of ``step`` seconds, until no worker ran for more than a fifth of a step (a spinning worker that shares
    its core with another busy thread still runs about half of it).

    Returns the time from the end of the region to the end of the last step in which a worker was still running
    (0.0 when they sleep at once, as with OMP_WAIT_POLICY=PASSIVE; libgomp's default spins for milliseconds),
    ``horizon`` when they were still spinning then, or -1.0 where thread CPU clocks cannot be read (not Linux, or no
    OpenMP) or ``n_threads`` < 2."""
    import time

    cdef int i
    if n_threads < 2 or not cynet_thread_clocks_supported():
        return -1.0
    with nogil:
        for i in prange(n_threads, schedule='static', chunksize=1, num_threads=n_threads):
            cynet_record_team_thread(i)
    start = time.perf_counter()
    previous = [cynet_team_thread_cpu_seconds(i) for i in range(1, n_threads)]
    if min(previous) < 0:
        return -1.0
    busy_until = 0.0
    while True:
        time.sleep(step)
        elapsed = time.perf_counter() - start
        now = [cynet_team_thread_cpu_seconds(i) for i in range(1, n_threads)]
        if max(b - a for a, b in zip(previous, now)) <= 0.2 * step:
            return busy_until
        busy_until = elapsed
        if elapsed >= horizon:
            return horizon
        previous = now

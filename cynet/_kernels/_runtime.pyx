"""Facts about how the kernels were compiled (OpenMP on or off) and the OpenMP runtime."""
from cython.parallel cimport prange
from libc.string cimport memcpy

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


# dst[i] = src[i] for every byte, in COPY_CHUNK-byte chunks spread over the team (static schedule): a large copy on
# one core runs at that core's bandwidth, on two at more than twice it here (12.6 MB out of cache on the development
# host: 1.79 ms with np.copyto, 0.50 ms with this kernel on two threads). Plain stores: the copies this serves (the trainer's divergence
# guard, optimiser snapshots) are read back soon or never, and non-temporal stores lost on one thread here.
cdef enum:
    COPY_CHUNK = 1 << 18


def copy_bytes(const unsigned char[::1] src, unsigned char[::1] dst, int n_threads):
    """Copy ``src`` into ``dst`` (equal byte lengths) with ``n_threads`` threads."""
    cdef Py_ssize_t n = src.shape[0], chunks, chunk, start
    if dst.shape[0] != n:
        raise ValueError(f"cynet._kernels._runtime.copy_bytes: dst holds {dst.shape[0]} bytes, src {n}")
    if n == 0:
        return
    chunks = (n + COPY_CHUNK - 1) // COPY_CHUNK
    cdef int nt = n_threads if 1 < n_threads < chunks else (1 if n_threads <= 1 else <int>chunks)
    with nogil:
        for chunk in prange(chunks, schedule="static", num_threads=nt):
            start = chunk * COPY_CHUNK
            memcpy(&dst[start], &src[start], min(COPY_CHUNK, n - start))


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


QUIET_STEPS = 3


def idle_spin_seconds(int n_threads, double horizon=0.05, double step=0.0005):
    """How long the OpenMP runtime's idle workers keep a core busy after a parallel region ends: run a region of
    ``n_threads`` threads, then watch the CPU clocks of its workers (not the calling thread) while the caller sleeps,
    in steps of ``step`` seconds, until no worker ran for more than a fifth of a step in QUIET_STEPS steps in a row (a
    spinning worker that shares its core with another busy thread still runs about half of most steps).

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
    quiet = 0
    while True:
        time.sleep(step)
        elapsed = time.perf_counter() - start
        now = [cynet_team_thread_cpu_seconds(i) for i in range(1, n_threads)]
        if max(b - a for a, b in zip(previous, now)) <= 0.2 * step:
            # three quiet steps in a row: one alone was also a spinning worker descheduled by another process
            # (2 of 40 measurements read 0.0 ms against 4 ms on a loaded 2-vCPU host)
            quiet += 1
            if quiet >= QUIET_STEPS:
                return busy_until
        else:
            quiet = 0
            busy_until = elapsed
            if elapsed >= horizon:
                return horizon
        if elapsed >= 2 * horizon:
            return busy_until
        previous = now


# --- one thread pool for BLAS and the kernels --------------------------------------------------------------------------
# OpenBLAS (pthreads build, 0.3.28 and later) hands its parallel jobs to a callback when one is registered, instead of
# waking its own worker threads. Registered, BLAS calls run on the same OpenMP team as cynet's kernels, and the two
# pools no longer fight: OpenBLAS's own idle workers spin (sched_yield) for about 2^28 cycles after every call, on the
# cores the next kernel needs. The jobs of one call wait for each other (level-3 routines exchange packed panels), so
# all of them must run at the same time: on a team of exactly `numjobs` threads, else on as many fresh threads. The
# fresh threads serve the cases where an OpenMP team cannot be had: a call from inside a parallel region, a dynamic or
# capped team size, and a process forked after its parent started a team (libgomp's team does not survive fork()).
cdef extern from *:
    """
    #include <stddef.h>
    typedef void (*cynet_blas_dojob_t)(int job, void *job_data, int dojob_data);

    #if defined(_OPENMP) && !defined(_WIN32)
    #include <pthread.h>
    #include <stdlib.h>
    #include <unistd.h>

    static pid_t cynet_blas_pool_pid = 0;           /* the process that may use its OpenMP team; 0: none */
    static int cynet_blas_force_fresh_threads = 0;  /* tests: take the fresh-thread path */
    static volatile long cynet_blas_team_calls = 0, cynet_blas_fresh_calls = 0;

    typedef struct { cynet_blas_dojob_t dojob; char *data; int job, dojob_data; } cynet_blas_job_t;

    static void *cynet_blas_run_job(void *arg) {
        cynet_blas_job_t *j = (cynet_blas_job_t *)arg;
        j->dojob(j->job, j->data, j->dojob_data);
        return NULL;
    }

    /* Jobs 1..n-1 on new threads, job 0 on the caller, all at once. Should a thread not start (no memory, no thread
       left), its job runs on the caller after the others: a last resort that can wait forever on jobs that wait for
       each other, where OpenBLAS's own pool would have stopped the program. */
    static void cynet_blas_on_fresh_threads(cynet_blas_dojob_t dojob, int numjobs, size_t elsize, char *data,
                                            int dojob_data) {
        cynet_blas_job_t *jobs = (cynet_blas_job_t *)malloc((size_t)numjobs * sizeof(cynet_blas_job_t));
        pthread_t *ids = (pthread_t *)malloc((size_t)numjobs * sizeof(pthread_t));
        char *started = (char *)calloc((size_t)numjobs, 1);
        int i;
        if (jobs == NULL || ids == NULL || started == NULL) {
            for (i = 0; i < numjobs; i++) dojob(i, data + (size_t)i * elsize, dojob_data);
        } else {
            for (i = 0; i < numjobs; i++) {
                jobs[i].dojob = dojob; jobs[i].data = data + (size_t)i * elsize;
                jobs[i].job = i; jobs[i].dojob_data = dojob_data;
            }
            for (i = 1; i < numjobs; i++) started[i] = pthread_create(&ids[i], NULL, cynet_blas_run_job, &jobs[i]) == 0;
            cynet_blas_run_job(&jobs[0]);
            for (i = 1; i < numjobs; i++) {
                if (started[i]) pthread_join(ids[i], NULL);
                else cynet_blas_run_job(&jobs[i]);
            }
        }
        free(jobs); free(ids); free(started);
        __atomic_add_fetch(&cynet_blas_fresh_calls, 1, __ATOMIC_RELAXED);
    }

    /* One parallel BLAS call at a time: OpenBLAS's own server queues concurrent callers, the callback path does not,
       and two calls at once on it gave wrong products (their jobs share per-job buffers). Re-made in a forked child,
       where a lock held by another thread of the parent at fork() would never be released. */
    static pthread_mutex_t cynet_blas_lock = PTHREAD_MUTEX_INITIALIZER;
    static void cynet_blas_lock_in_child(void) { pthread_mutex_init(&cynet_blas_lock, NULL); }

    /* OpenBLAS's openblas_threads_callback: run job i, i = 0..numjobs-1, each on its own thread, and return when all
       are done (sync is always 1 for the calls that use it). */
    static void cynet_blas_threads_callback(int sync, cynet_blas_dojob_t dojob, int numjobs, size_t elsize,
                                            void *jobdata, int dojob_data) {
        char *data = (char *)jobdata;
        int team_ran = 0;
        (void)sync;
        pthread_mutex_lock(&cynet_blas_lock);
        if (numjobs <= 1) {
            if (numjobs == 1) dojob(0, data, dojob_data);
            pthread_mutex_unlock(&cynet_blas_lock);
            return;
        }
        if (!cynet_blas_force_fresh_threads && getpid() == cynet_blas_pool_pid && !omp_in_parallel()
                && !omp_get_dynamic() && numjobs <= omp_get_thread_limit()) {
            #pragma omp parallel num_threads(numjobs)
            {
                /* A team short of numjobs (which the checks above rule out) runs nothing: the fresh threads do. */
                if (omp_get_num_threads() == numjobs) {
                    int i = omp_get_thread_num();
                    dojob(i, data + (size_t)i * elsize, dojob_data);
                    if (i == 0) team_ran = 1;
                }
            }
        }
        if (team_ran) __atomic_add_fetch(&cynet_blas_team_calls, 1, __ATOMIC_RELAXED);
        else cynet_blas_on_fresh_threads(dojob, numjobs, elsize, data, dojob_data);
        pthread_mutex_unlock(&cynet_blas_lock);
    }
    static size_t cynet_blas_callback_address(void) {
        static int fork_handler_registered = 0;
        if (!fork_handler_registered) fork_handler_registered = pthread_atfork(NULL, NULL, cynet_blas_lock_in_child) == 0;
        cynet_blas_pool_pid = getpid();
        return (size_t)&cynet_blas_threads_callback;
    }
    #else
    static int cynet_blas_force_fresh_threads = 0;
    static volatile long cynet_blas_team_calls = 0, cynet_blas_fresh_calls = 0;
    static size_t cynet_blas_callback_address(void) { return 0; }
    #endif
    """
    int cynet_blas_force_fresh_threads
    long cynet_blas_team_calls
    long cynet_blas_fresh_calls
    size_t cynet_blas_callback_address()


def blas_callback_address():
    """The address of cynet's OpenBLAS threads callback (an ``openblas_threads_callback``), for
    ``openblas_set_threads_callback_function``; 0 where it is not built (no OpenMP, or Windows). Taking it makes
    the calling process the one whose OpenMP team runs BLAS jobs (a forked child runs them on fresh threads)."""
    return cynet_blas_callback_address()


def blas_callback_counts():
    """(calls run on the OpenMP team, calls run on fresh threads) since the process started."""
    return int(cynet_blas_team_calls), int(cynet_blas_fresh_calls)


def blas_callback_force_fresh_threads(bint force):
    """Tests: run every BLAS job set on fresh threads (the path of nested or forked callers) when ``force``."""
    global cynet_blas_force_fresh_threads
    cynet_blas_force_fresh_threads = force

# OpenMP shim: the kernels compile and run (serially) without OpenMP.
#
# With OpenMP, ``omp.h`` provides the runtime functions; without it, stand-ins report one thread. Cython's ``prange``
# itself needs no shim: its pragmas are guarded by ``#ifdef _OPENMP`` and become plain loops in a serial build.

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CYNET_HAVE_OPENMP 1
    #else
    #define CYNET_HAVE_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    static int omp_get_num_procs(void) { return 1; }
    #endif
    """
    bint CYNET_HAVE_OPENMP
    int omp_get_max_threads() noexcept nogil
    int omp_get_num_procs() noexcept nogil


# Below this many elements an elementwise kernel runs on the calling thread: starting a parallel region costs more
# than it saves.
cdef enum:
    PARALLEL_MIN_ELEMENTS = 32768
    # Parallel chunks start on multiples of this many elements (64 bytes of float32), so every chunk but the last
    # begins on a cache line and the threads never write the same line.
    CHUNK_ALIGN = 16


cdef inline Py_ssize_t split_length(Py_ssize_t n, Py_ssize_t work, int n_threads, Py_ssize_t align) noexcept nogil:
    """Items per parallel chunk when n items (worth `work` elements) are shared by n_threads: all n in one serial
    chunk below PARALLEL_MIN_ELEMENTS or with one thread, else an equal share rounded up to a multiple of align.
    Never 0, so that ceil(n / length) is always defined."""
    if n_threads <= 1 or work < PARALLEL_MIN_ELEMENTS:
        return n if n > 0 else 1
    return ((n + n_threads - 1) // n_threads + align - 1) // align * align


cdef inline Py_ssize_t range_start(Py_ssize_t n, Py_ssize_t t, Py_ssize_t n_ranges, Py_ssize_t align) noexcept nogil:
    """First item of range t of n_ranges over n items: near-equal ranges starting on multiples of align (n for
    t >= n_ranges), so that a thread's range of columns starts on a whole 64-byte line; a function of the shape and
    the range count only."""
    if t >= n_ranges:
        return n
    return min(n, ((n * t) // n_ranges) // align * align)


cdef inline Py_ssize_t n_spans(Py_ssize_t n, Py_ssize_t head, Py_ssize_t chunk) noexcept nogil:
    """Spans of n items whose chunks start on cache lines although the array does not: span 0 holds the ``head``
    items before the array's first 64-byte line (_stream.stream_head), then chunks of ``chunk`` items from there
    (span_start)."""
    return 1 + (n - head + chunk - 1) // chunk


cdef inline Py_ssize_t span_start(Py_ssize_t k, Py_ssize_t head, Py_ssize_t chunk, Py_ssize_t n) noexcept nogil:
    """First item of span k of n_spans(n, head, chunk) (its length: span_length). Every span but the first starts on
    a 64-byte line, so that an elementwise loop's vector stores (and loads, where the other arrays share the
    alignment, as NumPy's do) never straddle two lines: in the cache, a (256, 4096) ReLU on NumPy's 16-byte-aligned
    arrays took 1.18x a copy's time and a (512, 512) SGD step 1.22x its time on line-aligned ones before.

    Two functions returning values, not one with an output pointer: inside a prange body Cython makes private only
    the variables the body assigns, so a length written through ``&m`` went to one variable shared by every thread
    (a race: a thread could run its span with another span's length)."""
    return 0 if k == 0 else min(n, head + (k - 1) * chunk)


cdef inline Py_ssize_t span_length(Py_ssize_t k, Py_ssize_t head, Py_ssize_t chunk, Py_ssize_t n) noexcept nogil:
    """Number of items of span k of n_spans(n, head, chunk): ``head`` for span 0, ``chunk`` for the others but the
    last, which ends at n."""
    return (head if k == 0 else min(n, head + k * chunk)) - span_start(k, head, chunk, n)

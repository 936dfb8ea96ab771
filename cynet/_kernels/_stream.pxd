# Streaming (non-temporal) stores for outputs too large to stay in cache.
#
# An ordinary store to a line that is not in cache first reads the line from memory ("read for ownership"), then
# writes it back: an output costs two transfers per byte. A non-temporal store writes whole lines straight to memory:
# one transfer. Measured on the development machine (2-vCPU AMD EPYC, 64 MB float32 arrays, 2 threads): a copy loop
# 5.8 -> 4.0 ms, a two-input add 8.2 -> 6.0 ms. The price: the output is not in cache afterwards, so the kernels use it
# only for outputs of at least 32 MiB (the caller decides, cynet.stream_stores: a measured threshold), where a consumer
# would find most of it in memory anyway.
#
# Use: compute a block of at most STREAM_BLOCK values into a buffer on the stack (it stays in L1), then
# stream_store(dst, buffer, n), blocks starting on a 64-byte line of dst (stream_head gives how many values come before
# the first line boundary: write those directly; stream_blocks and stream_block give the blocks after them); call stream_fence() once the thread has written its share (non-temporal stores are
# weakly ordered: the fence makes them visible before the region's closing barrier). Off x86 (no SSE2) both are plain
# copies / no-ops. Values are never changed: only how they reach memory.

from cython cimport floating

cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>
    #if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
    #include <emmintrin.h>
    #if defined(__AVX__)
    #include <immintrin.h>
    #endif
    #define CYNET_HAVE_STREAM_STORES 1
    /* dst[i] = src[i] for i < n: whole 64-byte lines of dst with non-temporal stores, the partial lines at either
       end with plain ones (a line written partly by each kind is written to memory twice). P is the intrinsics'
       suffix (ps, pd), L the values per 64-byte line. */
    #if defined(__AVX__)
    #define CYNET_STREAM_LINE(T, P, L, dst, src)                                                                  \
        _mm256_stream_##P(dst, _mm256_loadu_##P(src));                                                            \
        _mm256_stream_##P((dst) + (L) / 2, _mm256_loadu_##P((src) + (L) / 2));
    #else
    #define CYNET_STREAM_LINE(T, P, L, dst, src)                                                                  \
        _mm_stream_##P(dst, _mm_loadu_##P(src));                                                                  \
        _mm_stream_##P((dst) + (L) / 4, _mm_loadu_##P((src) + (L) / 4));                                         \
        _mm_stream_##P((dst) + (L) / 2, _mm_loadu_##P((src) + (L) / 2));                                         \
        _mm_stream_##P((dst) + 3 * (L) / 4, _mm_loadu_##P((src) + 3 * (L) / 4));
    #endif
    #define CYNET_STREAM_STORE(T, SUFFIX, P)                                                                      \
    static inline void cynet_stream_store_##SUFFIX(T* dst, const T* src, Py_ssize_t n) {                         \
        const Py_ssize_t line = 64 / sizeof(T);                                                                   \
        Py_ssize_t i = 0;                                                                                         \
        while (i < n && (((uintptr_t)(dst + i)) & 63) != 0) { dst[i] = src[i]; i++; }                            \
        for (; i + line <= n; i += line) { CYNET_STREAM_LINE(T, P, 64 / sizeof(T), dst + i, src + i) }            \
        for (; i < n; i++) dst[i] = src[i];                                                                       \
    }
    CYNET_STREAM_STORE(float, f32, ps)
    CYNET_STREAM_STORE(double, f64, pd)
    static inline void cynet_stream_fence(void) { _mm_sfence(); }
    #else
    #define CYNET_HAVE_STREAM_STORES 0
    static inline void cynet_stream_store_f32(float* dst, const float* src, Py_ssize_t n) {
        memcpy(dst, src, (size_t)n * sizeof(float));
    }
    static inline void cynet_stream_store_f64(double* dst, const double* src, Py_ssize_t n) {
        memcpy(dst, src, (size_t)n * sizeof(double));
    }
    static inline void cynet_stream_fence(void) {}
    #endif
    """
    bint CYNET_HAVE_STREAM_STORES
    void cynet_stream_store_f32(float* dst, const float* src, Py_ssize_t n) noexcept nogil
    void cynet_stream_store_f64(double* dst, const double* src, Py_ssize_t n) noexcept nogil
    void cynet_stream_fence() noexcept nogil


cdef enum:
    # Values per buffered block: 512 bytes of float32 / 1 KB of float64 on the stack, resident in L1. Short blocks keep
    # the loads of the next block close behind the non-temporal stores of this one. On an AMD EPYC (Zen 4, AVX-512)
    # blocks of 1024 values made a two-input kernel slower streamed than plain: a (4096, 4096) float32 ReLU backward on
    # one thread took 8.2-9.3 ms (plain stores 6.2), 5.3 with blocks of 128; in alternating processes, 128 against 1024:
    # ReLU / sigmoid backward 0.59-0.75x on one thread, 0.68-0.79x on two, BatchNorm1d (4096, 4096) 0.86-0.93x,
    # the others 0.92-1.0x. Blocks of 64 and 256 were level with 128 overall (64: the ReLU forward on one thread 0.87x,
    # the sigmoid and Maxout forwards on two 1.06-1.08x).
    STREAM_BLOCK = 128


cdef inline void stream_store(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    """dst[i] = src[i] for i < n with non-temporal stores (plain copies where there are none)."""
    if floating is float:
        cynet_stream_store_f32(dst, src, n)
    else:
        cynet_stream_store_f64(dst, src, n)


cdef inline Py_ssize_t stream_head(const floating* dst, Py_ssize_t n) noexcept nogil:
    """How many of the n values from dst on come before the first 64-byte boundary (all n if none does)."""
    cdef Py_ssize_t misaligned = (<size_t>dst) & 63
    cdef Py_ssize_t head = 0 if misaligned == 0 else (64 - misaligned) // sizeof(floating)
    return min(head, n)


cdef inline Py_ssize_t stream_blocks(Py_ssize_t head, Py_ssize_t n) noexcept nogil:
    """How many buffered blocks of at most STREAM_BLOCK values cover values [head, n)."""
    return (n - head + STREAM_BLOCK - 1) // STREAM_BLOCK


cdef inline Py_ssize_t stream_block(Py_ssize_t head, Py_ssize_t b, Py_ssize_t n, Py_ssize_t* length) noexcept nogil:
    """Start of buffered block b (0 <= b < stream_blocks(head, n)); its number of values goes to length."""
    cdef Py_ssize_t start = head + b * STREAM_BLOCK
    length[0] = min(<Py_ssize_t>STREAM_BLOCK, n - start)
    return start


cdef inline void stream_fence() noexcept nogil:
    cynet_stream_fence()

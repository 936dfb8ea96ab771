"""Normalisation kernels: batch norm (two layouts), and the per-row norm behind LayerNorm and GroupNorm.

Private: only ``cynet.nn.normalization`` calls these. Contract of every kernel here:
- arrays are C-contiguous memoryviews of one floating type (float32 or float64), already validated by the caller;
  statistics (mean, var, inv_std) and parameter gradients are float64 arrays, also allocated by the caller;
- no allocation, no exception, no Python object inside: the GIL is released for the whole computation;
- the result does not depend on ``n_threads``: each statistic is accumulated by one thread in a fixed order, and the
  cross-row reductions of LayerNorm/GroupNorm's backward sum fixed row chunks (a count chosen from the shape only)
  into their own rows of ``partials``, which are then added in order.

Statistics are one pass of *shifted* sums in float64: with k the first value of the feature,
``mean = k + sum(x - k)/n`` and ``var = sum((x - k)^2)/n - (sum(x - k)/n)^2``. Shifting by a sample keeps the
cancellation of the textbook ``E[x^2] - E[x]^2`` away when the mean is large against the spread. For the same reason
x - mean is formed as ``(x - hi) - lo`` with ``hi + lo`` the float64 mean split in two values of x's type: in float32
a mean of 1e4 rounded to float32 would be off by up to 5e-4, a large fraction of a small standard deviation.

Layouts:
- "rows":   x (N, D), BatchNorm1d: the feature is the column. Two plans, chosen from the shape (``rows_plan``):
            short x (the batches of training): a thread takes a block of columns (a width chosen so that the block
            of x and dout stays in the core's L2 cache) and walks the rows twice, once for the statistics, once for
            y (or dx), in one parallel region; tall x, where such a block would be so narrow that the walk strides
            through memory a page per row: every pass streams whole rows in memory order, the per-column sums of a
            fixed number of row chunks go to caller-allocated float64 ``partials`` and are added in chunk order,
            then one pass writes y (or dx).
- "planes": x (P, C, S), BatchNorm2d (and BatchNorm1d on (N, C, L)): channel c is P contiguous planes of S values;
            a thread takes whole channels.
- per-row:  x (M, L) with L = Cg * S: LayerNorm (Cg = L, S = 1) and GroupNorm (M = N * G rows, Cg channels of S
            values per row); row m uses gamma[(m % G) * Cg + c].
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport sqrt

from cynet._kernels._openmp cimport PARALLEL_MIN_ELEMENTS, range_start
from cynet._kernels._stream cimport (STREAM_BLOCK, stream_block, stream_blocks, stream_fence, stream_head,
                                     stream_store)


cdef enum:
    # Fewest columns of x (N, D) for BatchNorm1d's column-range plan, and fewest columns per range (a thread's share).
    ROWS_RANGE_MIN_COLUMNS = 128
    ROWS_RANGE_MIN_WIDTH = 64
    # Most row chunks of the "rows" layout: each holds two float64 rows of D partial sums in `partials`.
    ROWS_MAX_CHUNKS = 16
    # Fewest rows per chunk: a chunk's partial sums must be worth the pass that adds them up.
    ROWS_MIN_CHUNK = 32
    # Most positions per block of the planes layout's column sums (2 x 8 KB of float64 accumulators: L1-resident).
    PLANE_BLOCK = 1024
    # Fewest positions per plane for the planes layout's sums to go a plane at a time (one contiguous run each).
    PLANE_RUN_MIN = 256
    # Columns per block of the "rows" layout's row-chunk plan when the chunks' sums are added up (2 x 512 B of float64
    # on the stack; also the unit of the parallel split of that step).
    SUM_BLOCK = 64
    # Bytes of coefficient rows from which BatchNorm1d's forward output pass takes four rows at a time into
    # cache-resident outputs too (_rows_affine): where the rows it reads for every row of x no longer fit L1 (AMD Zen
    # 4: 32 KB). Measured in alternating processes, float32: (256, 4096) forward 436-447 -> 347-379 us on one thread,
    # 228-238 -> 194-216 on two (24 KB of rows per thread); (1024, 2048) on one thread 838-871 -> 655-719 us. The
    # backward's dx pass the same way (four coefficient rows) was 0.83x in one session of runs and 1.25-1.3x in
    # another (the sixteen streams of dout, x and dx, all 4 KB apart, wait on each other): it stays a row at a time.
    FOUR_ROW_COEF_BYTES = 24576


cdef inline int _threads_for(Py_ssize_t work, Py_ssize_t tasks, int n_threads) noexcept nogil:
    """Threads for `tasks` independent tasks worth `work` elements: 1 (serial) below PARALLEL_MIN_ELEMENTS."""
    if n_threads <= 1 or work < PARALLEL_MIN_ELEMENTS or tasks < 2:
        return 1
    return n_threads if n_threads < tasks else <int>tasks


def rows_plan(Py_ssize_t n_rows, Py_ssize_t n_cols, Py_ssize_t itemsize):
    """How the "rows" kernels split (N, D), from the shape only: ``(width, chunks)``, one of them 0.

    - ``(width, 0)``, D >= ROWS_RANGE_MIN_COLUMNS: column ranges. The sums, statistics and output of a column do not
      depend on the other columns, so each thread takes a contiguous range of at least ``width`` columns (multiples
      of 16: whole 64-byte lines of float32 rows) and runs all three passes over every row of it, walking memory
      row by row; one parallel region, and the same bits for any number of ranges;
    - ``(0, chunks)``, narrower x: the rows are streamed in ``chunks`` fixed chunks (N // ROWS_MIN_CHUNK, at most
      ROWS_MAX_CHUNKS) whose per-column sums go to a caller-allocated float64 ``partials`` of shape (2 * chunks, D)
      and are then added in chunk order.

    (Until this plan, short x was split into column blocks of at most 256 columns sized to stay in L2 between the
    passes: each walked the rows a short segment per row, D values apart. On the Intel Xeon of a later development
    machine that cost up to three times the row-by-row walk at one thread where D is a power of two: the rows of a
    block shared a few cache sets, and loads waited on stores to addresses 4 KB apart.)"""
    if n_cols >= ROWS_RANGE_MIN_COLUMNS:
        return <Py_ssize_t>ROWS_RANGE_MIN_WIDTH, 0
    return 0, max(1, min(<Py_ssize_t>ROWS_MAX_CHUNKS, n_rows // ROWS_MIN_CHUNK))


cdef inline double _inv_std(double var, double eps) noexcept nogil:
    return 1.0 / sqrt(var + eps)


# Statistics from the shifted sums s1 = sum(x - k), s2 = sum((x - k)^2) of n values (every norm here):
#   mean = k + s1/n;  var = s2/n - (s1/n)^2, negatives clamped to 0 (biased);  returns r = 1/sqrt(var + eps).
cdef inline double _shifted_statistics(double k, double s1, double s2, Py_ssize_t n, double eps, double* mean,
                                       double* var) noexcept nogil:
    cdef double m = s1 / n
    cdef double v = s2 / n - m * m
    v = 0 if v < 0 else v            # (NaN stays NaN: a feature holding a NaN has no variance)
    mean[0] = k + m
    var[0] = v
    return _inv_std(v, eps)


# ---------------------------------------------------------------------------------------------------------------------
# Batch norm, "rows" layout (N, D): the feature is the column, so every pass streams the rows in memory order (all of
# a row, or a thread's range of its columns) and keeps per-column quantities in contiguous arrays (the inner loop over
# j vectorises). Statistics are shifted by the first row, k_j = x_0j, and summed into partials[2c] and
# partials[2c + 1] (float64): per row chunk c, the chunks then added in order (row-chunk plan), or over all rows as
# one chunk (column-range plan, see rows_plan): a fixed summation order for any thread count.
#   mean_j = k_j + (1/N) sum_i (x_ij - k_j);  var_j = (1/N) sum_i (x_ij - k_j)^2 - (mean_j - k_j)^2 (biased)
#   r_j = 1/sqrt(var_j + eps);  y_ij = (x_ij - mean_j) * (gamma_j r_j) + beta_j

# The row-chunk sums, four rows per sweep over the 2 D float64 sums ((d0 + d1) + (d2 + d3) added to them, then any
# remaining rows one by one): a sweep reads and writes the sums (out of L1 for D > 2048) once for four rows instead of
# once per row. Written in C for `restrict`: the build keeps -fno-strict-aliasing, so without it the compiler must
# assume the float64 sums may overlap the input and does not vectorise a loop over six arrays.
cdef extern from *:
    """
    /* The sweeps over rows [r0, r1) of n columns, rows D apart; K: the shift of column j, MU: its mean. */
    #define CYNET_SHIFTED_SWEEPS(T, K)                                                                            \
        Py_ssize_t i = r0, j;                                                                                     \
        for (j = 0; j < n; j++) { s1[j] = 0; s2[j] = 0; }                                                         \
        for (; i + 4 <= r1; i += 4) {                                                                             \
            const T* CYTHON_RESTRICT a = x + i * D;                                                               \
            for (j = 0; j < n; j++) {                                                                             \
                double k = (K);                                                                                   \
                double d0 = (double)a[j] - k, d1 = (double)a[D + j] - k;                                          \
                double d2 = (double)a[2 * D + j] - k, d3 = (double)a[3 * D + j] - k;                              \
                s1[j] = s1[j] + ((d0 + d1) + (d2 + d3));                                                          \
                s2[j] = s2[j] + ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3));                                      \
            }                                                                                                     \
        }                                                                                                         \
        for (; i < r1; i++) {                                                                                     \
            const T* CYTHON_RESTRICT a = x + i * D;                                                               \
            for (j = 0; j < n; j++) {                                                                             \
                double d0 = (double)a[j] - (K);                                                                   \
                s1[j] = s1[j] + d0;                                                                               \
                s2[j] = s2[j] + d0 * d0;                                                                          \
            }                                                                                                     \
        }
    /* G(g, a, k): the gradient at offset k of the rows g (dout) and a (x), as a double: g[k], or, for a batch norm
       fused with a ReLU, g[k] masked by the forward's sign (CYNET_RELU_G, below). */
    #define CYNET_PLAIN_G(g, a, k) ((double)(g)[k])
    #define CYNET_GRAD_SWEEPS(T, MU) CYNET_GRAD_SWEEPS_G(T, MU, CYNET_PLAIN_G)
    #define CYNET_GRAD_SWEEPS_G(T, MU, G)                                                                         \
        Py_ssize_t i = r0, j;                                                                                     \
        for (j = 0; j < n; j++) { sd[j] = 0; sdx[j] = 0; }                                                        \
        for (; i + 4 <= r1; i += 4) {                                                                             \
            const T* CYTHON_RESTRICT g = dout + i * D;                                                            \
            const T* CYTHON_RESTRICT a = x + i * D;                                                               \
            for (j = 0; j < n; j++) {                                                                             \
                double mu = (MU);                                                                                 \
                double g0 = G(g, a, j), g1 = G(g, a, D + j), g2 = G(g, a, 2 * D + j), g3 = G(g, a, 3 * D + j);    \
                sd[j] = sd[j] + ((g0 + g1) + (g2 + g3));                                                          \
                sdx[j] = sdx[j] + ((g0 * ((double)a[j] - mu) + g1 * ((double)a[D + j] - mu))                      \
                                   + (g2 * ((double)a[2 * D + j] - mu) + g3 * ((double)a[3 * D + j] - mu)));      \
            }                                                                                                     \
        }                                                                                                         \
        for (; i < r1; i++) {                                                                                     \
            const T* CYTHON_RESTRICT g = dout + i * D;                                                            \
            const T* CYTHON_RESTRICT a = x + i * D;                                                               \
            for (j = 0; j < n; j++) {                                                                             \
                double g0 = G(g, a, j);                                                                           \
                sd[j] = sd[j] + g0;                                                                               \
                sdx[j] = sdx[j] + g0 * ((double)a[j] - (MU));                                                     \
            }                                                                                                     \
        }
    /* rows: column j shifted by its first row's value, its mean mean[j]; planes: one shift k0 and one mean mu0. */
    #define CYNET_ROWS_SUMS(T, SUFFIX)                                                                            \
    static void cynet_rows_shifted_sums_##SUFFIX(const T* CYTHON_RESTRICT x, double* CYTHON_RESTRICT s1,         \
            double* CYTHON_RESTRICT s2, Py_ssize_t D, Py_ssize_t n, Py_ssize_t r0, Py_ssize_t r1) {               \
        CYNET_SHIFTED_SWEEPS(T, (double)x[j])                                                                     \
    }                                                                                                             \
    static void cynet_planes_shifted_sums_##SUFFIX(const T* CYTHON_RESTRICT x, double k0,                        \
            double* CYTHON_RESTRICT s1, double* CYTHON_RESTRICT s2, Py_ssize_t D, Py_ssize_t n, Py_ssize_t r0,    \
            Py_ssize_t r1) {                                                                                      \
        CYNET_SHIFTED_SWEEPS(T, k0)                                                                               \
    }                                                                                                             \
    static void cynet_rows_grad_sums_##SUFFIX(const T* CYTHON_RESTRICT dout, const T* CYTHON_RESTRICT x,         \
            const double* CYTHON_RESTRICT mean, double* CYTHON_RESTRICT sd, double* CYTHON_RESTRICT sdx,          \
            Py_ssize_t D, Py_ssize_t n, Py_ssize_t r0, Py_ssize_t r1) {                                           \
        CYNET_GRAD_SWEEPS(T, mean[j])                                                                             \
    }                                                                                                             \
    static void cynet_planes_grad_sums_##SUFFIX(const T* CYTHON_RESTRICT dout, const T* CYTHON_RESTRICT x,       \
            double mu0, double* CYTHON_RESTRICT sd, double* CYTHON_RESTRICT sdx, Py_ssize_t D, Py_ssize_t n,      \
            Py_ssize_t r0, Py_ssize_t r1) {                                                                       \
        CYNET_GRAD_SWEEPS(T, mu0)                                                                                 \
    }
    /* Sums along one contiguous run of n values in eight float64 lanes (lane l takes values l, l + 8, ...; the tail
       goes to a ninth sum), combined as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)) + tail: a fixed order.
       Built for AVX-512 with GCC/Clang, the lanes are one 8-double vector (vector extensions: one zmm register);
       elsewhere (or with -DCYNET_SCALAR_LANES) eight scalars, which the compiler vectorises at the target's width:
       each lane sees the same operations in the same order, so the same bits. An 8-double vector on a narrower
       target is not a register type for GCC: it lived on the stack, every addition a store and reload through
       general registers, and the AVX2 variant ran 3-3.4x slower than the AVX-512 one and slower than SSE2 (one
       thread: BatchNorm2d (128, 64, 32, 32) forward 8.7 ms, backward 14.8; LayerNorm (256, 4096) forward 1.07;
       with eight scalars 3.1, 4.4 and 0.36, against 2.7, 4.2 and 0.33 for AVX-512). */
    #define CYNET_LANE_TOTAL(a, tail) ((((a)[0] + (a)[1]) + ((a)[2] + (a)[3])) + (((a)[4] + (a)[5]) + ((a)[6] + (a)[7])) \
                                        + (tail))
    #if defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 9) && defined(__AVX512F__) \
        && !defined(CYNET_SCALAR_LANES)
    typedef double cynet_v8d __attribute__((vector_size(64)));
    typedef float cynet_v8f __attribute__((vector_size(32)));
    #include <immintrin.h>
    /* one vcvtps2pd zmm, ymm: GCC 12 lowers the generic conversion (__builtin_convertvector) to two halves and an
       insert */
    static inline cynet_v8d cynet_load8_f32(const float* p) { return (cynet_v8d)_mm512_cvtps_pd(_mm256_loadu_ps(p)); }
    static inline cynet_v8d cynet_load8_f64(const double* p) { cynet_v8d v; memcpy(&v, p, sizeof(v)); return v; }
    static inline void cynet_store8_f64(double* p, cynet_v8d v) { memcpy(p, &v, sizeof(v)); }
    #define CYNET_LANES_DECLARE(name) cynet_v8d name = {0, 0, 0, 0, 0, 0, 0, 0}
    #define CYNET_LANES_STORE(name, out) do { int l_; for (l_ = 0; l_ < 8; l_++) (out)[l_] = name[l_]; } while (0)
    #define CYNET_LANES_ADD(name, other) name = name + other
    #define CYNET_RUN_SWEEPS(SUFFIX, x, i, k, a, q)                                                              \
        {                                                                                                         \
            cynet_v8d d = cynet_load8_##SUFFIX((x) + (i)) - (k);                                                  \
            a = a + d; q = q + d * d;                                                                             \
        }
    #define CYNET_GRAD_RUN_SWEEPS(SUFFIX, g, x, i, mu, a, q)                                                      \
        {                                                                                                         \
            cynet_v8d gv = cynet_load8_##SUFFIX((g) + (i)), c = cynet_load8_##SUFFIX((x) + (i)) - (mu);           \
            a = a + gv; q = q + gv * c;                                                                           \
        }
    /* The gradient sweep of a batch norm fused with a ReLU: g = dout where ((x - c0) - c1) sc + sh > 0 (in x's
       type), else +0, as a vector select (the compare's all-ones lanes keep dout's bits). */
    typedef int cynet_v8i __attribute__((vector_size(32)));
    typedef long long cynet_v8l __attribute__((vector_size(64)));
    static inline cynet_v8d cynet_relu8_f32(const float* g, const float* x, float c0, float c1, float sc, float sh) {
        cynet_v8f gv, xv, v;
        memcpy(&gv, g, sizeof(gv)); memcpy(&xv, x, sizeof(xv));
        v = ((xv - c0) - c1) * sc + sh;
        gv = (cynet_v8f)((cynet_v8i)gv & (cynet_v8i)(v > 0));
        return __builtin_convertvector(gv, cynet_v8d);
    }
    static inline cynet_v8d cynet_relu8_f64(const double* g, const double* x, double c0, double c1, double sc,
                                            double sh) {
        cynet_v8d gv, xv, v;
        memcpy(&gv, g, sizeof(gv)); memcpy(&xv, x, sizeof(xv));
        v = ((xv - c0) - c1) * sc + sh;
        return (cynet_v8d)((cynet_v8l)gv & (cynet_v8l)(v > 0));
    }
    #define CYNET_RELU_RUN_SWEEPS(T, SUFFIX, g, x, i, mu, a, q)                                                  \
        {                                                                                                         \
            cynet_v8d gv = cynet_relu8_##SUFFIX((g) + (i), (x) + (i), c0, c1, sc, sh);                            \
            cynet_v8d c = cynet_load8_##SUFFIX((x) + (i)) - (mu);                                                 \
            a = a + gv; q = q + gv * c;                                                                           \
        }
    #define CYNET_LN_SWEEPS(SUFFIX, g, x, gamma, i, mu, r, a, b, dgamma, dbeta)                                 \
        {                                                                                                         \
            cynet_v8d d = cynet_load8_##SUFFIX((g) + (i));                                                        \
            cynet_v8d gd = cynet_load8_##SUFFIX((gamma) + (i)) * d;                                               \
            cynet_v8d c = cynet_load8_##SUFFIX((x) + (i)) - (mu);                                                 \
            a = a + gd; b = b + gd * c;                                                                           \
            cynet_store8_f64((dgamma) + (i), cynet_load8_f64((dgamma) + (i)) + (d * c) * (r));                    \
            cynet_store8_f64((dbeta) + (i), cynet_load8_f64((dbeta) + (i)) + d);                                  \
        }
    #define CYNET_LN2_SWEEPS(SUFFIX, g0, x0, g1, x1, gamma, i, mu0, r0, mu1, r1, a0, b0, a1, b1, dgamma, dbeta)  \
        {                                                                                                         \
            cynet_v8d gm = cynet_load8_##SUFFIX((gamma) + (i));                                                   \
            cynet_v8d d0 = cynet_load8_##SUFFIX((g0) + (i)), c0 = cynet_load8_##SUFFIX((x0) + (i)) - (mu0);       \
            cynet_v8d d1 = cynet_load8_##SUFFIX((g1) + (i)), c1 = cynet_load8_##SUFFIX((x1) + (i)) - (mu1);       \
            cynet_v8d gd0 = gm * d0, gd1 = gm * d1;                                                               \
            a0 = a0 + gd0; b0 = b0 + gd0 * c0; a1 = a1 + gd1; b1 = b1 + gd1 * c1;                                 \
            cynet_store8_f64((dgamma) + (i), cynet_load8_f64((dgamma) + (i))                                      \
                                             + ((d0 * c0) * (r0) + (d1 * c1) * (r1)));                            \
            cynet_store8_f64((dbeta) + (i), cynet_load8_f64((dbeta) + (i)) + (d0 + d1));                          \
        }
    #else
    #define CYNET_LANES_DECLARE(name) double name[8] = {0, 0, 0, 0, 0, 0, 0, 0}
    #define CYNET_LANES_STORE(name, out) do { int l_; for (l_ = 0; l_ < 8; l_++) (out)[l_] = name[l_]; } while (0)
    #define CYNET_LANES_ADD(name, other) do { int l_; for (l_ = 0; l_ < 8; l_++) name[l_] += other[l_]; } while (0)
    #define CYNET_RUN_SWEEPS(SUFFIX, x, i, k, a, q)                                                              \
        { int l; for (l = 0; l < 8; l++) { double d = (double)(x)[(i) + l] - (k); a[l] += d; q[l] += d * d; } }
    #define CYNET_GRAD_RUN_SWEEPS(SUFFIX, g, x, i, mu, a, q)                                                      \
        { int l; for (l = 0; l < 8; l++) { double gg = (g)[(i) + l];                                              \
                                           a[l] += gg; q[l] += gg * ((double)(x)[(i) + l] - (mu)); } }
    #define CYNET_RELU_RUN_SWEEPS(T, SUFFIX, g, x, i, mu, a, q)                                                  \
        { int l; for (l = 0; l < 8; l++) { T d = (g)[(i) + l], v = (((x)[(i) + l] - c0) - c1) * sc + sh;           \
                                           double gg = v > 0 ? d : (T)0;                                          \
                                           a[l] += gg; q[l] += gg * ((double)(x)[(i) + l] - (mu)); } }
    #define CYNET_LN_SWEEPS(SUFFIX, g, x, gamma, i, mu, r, a, b, dgamma, dbeta)                                 \
        { int l; for (l = 0; l < 8; l++) { double d = (g)[(i) + l], c = (double)(x)[(i) + l] - (mu);            \
                                           double gd = (double)(gamma)[(i) + l] * d;                              \
                                           a[l] += gd; b[l] += gd * c;                                            \
                                           (dgamma)[(i) + l] += d * c * (r); (dbeta)[(i) + l] += d; } }
    #define CYNET_LN2_SWEEPS(SUFFIX, g0, x0, g1, x1, gamma, i, mu0, r0, mu1, r1, a0, b0, a1, b1, dgamma, dbeta)  \
        { int l; for (l = 0; l < 8; l++) {                                                                        \
            double gm = (gamma)[(i) + l];                                                                         \
            double d0 = (g0)[(i) + l], c0 = (double)(x0)[(i) + l] - (mu0);                                        \
            double d1 = (g1)[(i) + l], c1 = (double)(x1)[(i) + l] - (mu1);                                        \
            double gd0 = gm * d0, gd1 = gm * d1;                                                                  \
            a0[l] += gd0; b0[l] += gd0 * c0; a1[l] += gd1; b1[l] += gd1 * c1;                                     \
            (dgamma)[(i) + l] += d0 * c0 * (r0) + d1 * c1 * (r1); (dbeta)[(i) + l] += d0 + d1; } }
    #endif
    /* A read-prefetch of the line holding p into every cache level (a hint: never faults, changes no value). */
    #if defined(__GNUC__) || defined(__clang__)
    #define CYNET_PREFETCH(p) __builtin_prefetch((const void*)(p), 0, 3)
    #elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
    #include <xmmintrin.h>
    #define CYNET_PREFETCH(p) _mm_prefetch((const char*)(p), _MM_HINT_T0)
    #else
    #define CYNET_PREFETCH(p) ((void)0)
    #endif
    /* The sums below read a run once, in one forward sweep, and are followed by a second pass over the same run from
       L1: the next run's lines are requested during the sweep ("ahead": its distance in values, 0 for none, when the
       run is the caller's last), one hint per 8 values, so that they arrive while this run is summed and written
       instead of the next sweep waiting for each of them (one or two hints per line).
       The statistics' sums (shifted_sums) keep two sets of eight lanes: values 16b + l go to lane l of the first,
       16b + 8 + l to lane l of the second (a last block of eight to the first), the second set added lane by lane
       into the first before the total above. One set is one chain of dependent additions, an add's latency per
       eight values: (128, 64, 32, 32) float32 forward on one thread 3.53 -> 3.40 ms, LayerNorm (4096, 4096)
       8.2 -> 7.9 ms (in one process, alternating). The gradient sums read two runs per eight values and gained
       nothing from a second set. */
    /* The gradient sums' sweep over a run: SWEEP adds eight values a step into the lanes, G gives a tail value
       (plain, or masked for a batch norm fused with a ReLU). */
    #define CYNET_PLAIN_RUN_SWEEPS(T, SUFFIX, g, x, i, mu, a, q) CYNET_GRAD_RUN_SWEEPS(SUFFIX, g, x, i, mu, a, q)
    #define CYNET_GRAD_RUN_BODY(T, SUFFIX, SWEEP, G)                                                              \
        CYNET_LANES_DECLARE(a); CYNET_LANES_DECLARE(q);                                                           \
        double la[8], lq[8], ta = 0, tq = 0;                                                                      \
        Py_ssize_t i = 0;                                                                                         \
        for (; i + 8 <= n; i += 8) {                                                                              \
            CYNET_PREFETCH(dout + i + ahead);                                                                     \
            CYNET_PREFETCH(x + i + ahead);                                                                        \
            SWEEP(T, SUFFIX, dout, x, i, mu, a, q)                                                                \
        }                                                                                                         \
        for (; i < n; i++) { double g = G(dout, x, i); ta = ta + g; tq = tq + g * ((double)x[i] - mu); }          \
        CYNET_LANES_STORE(a, la); CYNET_LANES_STORE(q, lq);                                                       \
        *sd = *sd + CYNET_LANE_TOTAL(la, ta);                                                                     \
        *sdx = *sdx + CYNET_LANE_TOTAL(lq, tq);
    #define CYNET_RUN_SUMS(T, SUFFIX)                                                                             \
    static void cynet_run_shifted_sums_##SUFFIX(const T* CYTHON_RESTRICT x, Py_ssize_t n, double k,              \
                                                double* s1, double* s2, Py_ssize_t ahead) {                       \
        CYNET_LANES_DECLARE(a); CYNET_LANES_DECLARE(q); CYNET_LANES_DECLARE(a2); CYNET_LANES_DECLARE(q2);         \
        double la[8], lq[8], ta = 0, tq = 0;                                                                      \
        Py_ssize_t i = 0;                                                                                         \
        for (; i + 16 <= n; i += 16) {                                                                            \
            CYNET_PREFETCH(x + i + ahead);                                                                        \
            CYNET_PREFETCH(x + i + 8 + ahead);                                                                    \
            CYNET_RUN_SWEEPS(SUFFIX, x, i, k, a, q)                                                               \
            CYNET_RUN_SWEEPS(SUFFIX, x, i + 8, k, a2, q2)                                                         \
        }                                                                                                         \
        if (i + 8 <= n) {                                                                                         \
            CYNET_RUN_SWEEPS(SUFFIX, x, i, k, a, q)                                                               \
            i += 8;                                                                                               \
        }                                                                                                         \
        for (; i < n; i++) { double d = (double)x[i] - k; ta = ta + d; tq = tq + d * d; }                         \
        CYNET_LANES_ADD(a, a2); CYNET_LANES_ADD(q, q2);                                                           \
        CYNET_LANES_STORE(a, la); CYNET_LANES_STORE(q, lq);                                                       \
        *s1 = *s1 + CYNET_LANE_TOTAL(la, ta);                                                                     \
        *s2 = *s2 + CYNET_LANE_TOTAL(lq, tq);                                                                     \
    }                                                                                                             \
    static void cynet_run_grad_sums_##SUFFIX(const T* CYTHON_RESTRICT dout, const T* CYTHON_RESTRICT x,          \
                                             Py_ssize_t n, double mu, double* sd, double* sdx,                    \
                                             Py_ssize_t ahead) {                                                  \
        CYNET_GRAD_RUN_BODY(T, SUFFIX, CYNET_PLAIN_RUN_SWEEPS, CYNET_PLAIN_G)                                     \
    }                                                                                                             \
    /* LayerNorm's backward sums over one row of n features with gamma per feature: A = sum gamma d,              \
       B = sum gamma d (x - mu) (eight lanes as above), and per feature dgamma_j += d (x - mu) r, dbeta_j += d, in   \
       the same sweep (one read of the row for both). */                                                          \
    static void cynet_ln_row_grad_##SUFFIX(const T* CYTHON_RESTRICT dout, const T* CYTHON_RESTRICT x,            \
                                           const T* CYTHON_RESTRICT gamma, Py_ssize_t n, double mu, double r,     \
                                           double* CYTHON_RESTRICT dgamma, double* CYTHON_RESTRICT dbeta,          \
                                           double* A, double* B, Py_ssize_t ahead) {                              \
        CYNET_LANES_DECLARE(a); CYNET_LANES_DECLARE(b);                                                           \
        double la[8], lb[8], ta = 0, tb = 0;                                                                      \
        Py_ssize_t i = 0;                                                                                         \
        for (; i + 8 <= n; i += 8) {                                                                              \
            CYNET_PREFETCH(dout + i + ahead);                                                                     \
            CYNET_PREFETCH(x + i + ahead);                                                                        \
            CYNET_LN_SWEEPS(SUFFIX, dout, x, gamma, i, mu, r, a, b, dgamma, dbeta)                                \
        }                                                                                                         \
        for (; i < n; i++) {                                                                                      \
            double d = dout[i], c = (double)x[i] - mu;                                                            \
            double gd = (double)gamma[i] * d;                                                                     \
            ta = ta + gd;                                                                                         \
            tb = tb + gd * c;                                                                                     \
            dgamma[i] += d * c * r;                                                                               \
            dbeta[i] += d;                                                                                        \
        }                                                                                                         \
        CYNET_LANES_STORE(a, la); CYNET_LANES_STORE(b, lb);                                                       \
        *A = *A + CYNET_LANE_TOTAL(la, ta);                                                                       \
        *B = *B + CYNET_LANE_TOTAL(lb, tb);                                                                       \
    }                                                                                                             \
    /* The same for two rows (dout0/x0, dout1/x1) sharing gamma, dgamma and dbeta (LayerNorm): each row's A and B   \
       as above, and per feature dgamma_j += d0 (x0 - mu0) r0 + d1 (x1 - mu1) r1, dbeta_j += d0 + d1: one update of \
       the float64 dgamma/dbeta (out of L1 at D = 4096) for two rows. */                                          \
    static void cynet_ln_rows2_grad_##SUFFIX(const T* CYTHON_RESTRICT dout0, const T* CYTHON_RESTRICT x0,        \
                                             const T* CYTHON_RESTRICT dout1, const T* CYTHON_RESTRICT x1,        \
                                             const T* CYTHON_RESTRICT gamma, Py_ssize_t n, double mu0, double r0, \
                                             double mu1, double r1, double* CYTHON_RESTRICT dgamma,              \
                                             double* CYTHON_RESTRICT dbeta, double* A0, double* B0, double* A1,   \
                                             double* B1, Py_ssize_t ahead) {                                      \
        CYNET_LANES_DECLARE(a0); CYNET_LANES_DECLARE(b0); CYNET_LANES_DECLARE(a1); CYNET_LANES_DECLARE(b1);       \
        double la[8], lb[8], ta0 = 0, tb0 = 0, ta1 = 0, tb1 = 0;                                                  \
        Py_ssize_t i = 0;                                                                                         \
        for (; i + 8 <= n; i += 8) {                                                                              \
            CYNET_PREFETCH(dout0 + i + ahead);                                                                    \
            CYNET_PREFETCH(x0 + i + ahead);                                                                       \
            CYNET_PREFETCH(dout1 + i + ahead);                                                                    \
            CYNET_PREFETCH(x1 + i + ahead);                                                                       \
            CYNET_LN2_SWEEPS(SUFFIX, dout0, x0, dout1, x1, gamma, i, mu0, r0, mu1, r1, a0, b0, a1, b1, dgamma,     \
                             dbeta)                                                                               \
        }                                                                                                         \
        for (; i < n; i++) {                                                                                      \
            double d0 = dout0[i], c0 = (double)x0[i] - mu0, d1 = dout1[i], c1 = (double)x1[i] - mu1;              \
            double gm = (double)gamma[i], gd0 = gm * d0, gd1 = gm * d1;                                           \
            ta0 = ta0 + gd0; tb0 = tb0 + gd0 * c0; ta1 = ta1 + gd1; tb1 = tb1 + gd1 * c1;                         \
            dgamma[i] += d0 * c0 * r0 + d1 * c1 * r1;                                                             \
            dbeta[i] += d0 + d1;                                                                                  \
        }                                                                                                         \
        CYNET_LANES_STORE(a0, la); CYNET_LANES_STORE(b0, lb);                                                     \
        *A0 = *A0 + CYNET_LANE_TOTAL(la, ta0);                                                                    \
        *B0 = *B0 + CYNET_LANE_TOTAL(lb, tb0);                                                                    \
        CYNET_LANES_STORE(a1, la); CYNET_LANES_STORE(b1, lb);                                                     \
        *A1 = *A1 + CYNET_LANE_TOTAL(la, ta1);                                                                    \
        *B1 = *B1 + CYNET_LANE_TOTAL(lb, tb1);                                                                    \
    }
    CYNET_ROWS_SUMS(float, f32)
    CYNET_RUN_SUMS(float, f32)
    CYNET_RUN_SUMS(double, f64)
    CYNET_ROWS_SUMS(double, f64)
    /* A batch norm fused with the ReLU after it (y = max(0, v), v = ((x - c0) - c1) sc + sh in x's type, the
       forward's coefficients): its backward's two sums over g = dout where v > 0, else 0 -- what cynet's ReLU
       backward hands a batch norm, recomputed from x instead of read from a gradient array -- in the orders of the
       unfused sums above (the same bits). */
    #define CYNET_RELU_G(g, a, k) CYNET_RELU_KEEP((double)(g)[k], ((a)[k] - c0) - c1, sc, sh)
    /* Both operands are loaded whatever the sign, so that the choice is a select, not a branch (random signs
       mispredict half the time: a branch made the fused backward ten times slower). */
    #define CYNET_RELU_KEEP(g, d, sc, sh) ((d) * (sc) + (sh) > 0 ? (g) : 0.0)
    #define CYNET_RELU_SUMS(T, SUFFIX)                                                                            \
    static void cynet_planes_grad_sums_relu_##SUFFIX(const T* CYTHON_RESTRICT dout, const T* CYTHON_RESTRICT x,  \
            double mu0, double* CYTHON_RESTRICT sd, double* CYTHON_RESTRICT sdx, Py_ssize_t D, Py_ssize_t n,      \
            Py_ssize_t r0, Py_ssize_t r1, T c0, T c1, T sc, T sh) {                                               \
        CYNET_GRAD_SWEEPS_G(T, mu0, CYNET_RELU_G)                                                                 \
    }                                                                                                             \
    static void cynet_run_grad_sums_relu_##SUFFIX(const T* CYTHON_RESTRICT dout, const T* CYTHON_RESTRICT x,     \
                                                  Py_ssize_t n, double mu, double* sd, double* sdx,               \
                                                  Py_ssize_t ahead, T c0, T c1, T sc, T sh) {                     \
        CYNET_GRAD_RUN_BODY(T, SUFFIX, CYNET_RELU_RUN_SWEEPS, CYNET_RELU_G)                                       \
    }
    CYNET_RELU_SUMS(float, f32)
    CYNET_RELU_SUMS(double, f64)
    /* The rows layout's (BatchNorm1d): column j's forward value (x - ctr[j]) scl[j] + sft[j], as _affine_span computes
       it (the coefficient rows of the forward's output pass, recomputed by _rows_relu_coefficients). */
    #define CYNET_ROWS_RELU_G(g, a, k) CYNET_RELU_KEEP((double)(g)[k], (a)[k] - ctr[j], scl[j], sft[j])
    #define CYNET_ROWS_RELU_SUMS(T, SUFFIX)                                                                       \
    static void cynet_rows_grad_sums_relu_##SUFFIX(const T* CYTHON_RESTRICT dout, const T* CYTHON_RESTRICT x,    \
            const double* CYTHON_RESTRICT mean, double* CYTHON_RESTRICT sd, double* CYTHON_RESTRICT sdx,          \
            Py_ssize_t D, Py_ssize_t n, Py_ssize_t r0, Py_ssize_t r1, const T* CYTHON_RESTRICT ctr,               \
            const T* CYTHON_RESTRICT scl, const T* CYTHON_RESTRICT sft) {                                         \
        CYNET_GRAD_SWEEPS_G(T, mean[j], CYNET_ROWS_RELU_G)                                                        \
    }
    CYNET_ROWS_RELU_SUMS(float, f32)
    CYNET_ROWS_RELU_SUMS(double, f64)
    /* BatchNorm1d's forward output pass on four rows at once (x's and the outputs' rows D apart), each coefficient
       loaded once for the four (see _rows_affine). Written in C for `restrict`: in Cython the compiler cannot rule
       out that the four outputs overlap the inputs, and the loop ran 2x slower. The same expressions as
       _affine_span, value by value. */
    #define CYNET_ROWS4(T, SUFFIX)                                                                                \
    static inline void cynet_affine4_##SUFFIX(const T* CYTHON_RESTRICT x, const T* CYTHON_RESTRICT center,            \
            const T* CYTHON_RESTRICT scale, const T* CYTHON_RESTRICT shift, T* CYTHON_RESTRICT y0,                \
            T* CYTHON_RESTRICT y1, T* CYTHON_RESTRICT y2, T* CYTHON_RESTRICT y3, Py_ssize_t D, Py_ssize_t n,      \
            int relu) {                                                                                           \
        Py_ssize_t j;                                                                                             \
        if (relu) {                                                                                               \
            for (j = 0; j < n; j++) {                                                                             \
                T c = center[j], s = scale[j], h = shift[j];                                                      \
                T v0 = (x[j] - c) * s + h, v1 = (x[D + j] - c) * s + h;                                           \
                T v2 = (x[2 * D + j] - c) * s + h, v3 = (x[3 * D + j] - c) * s + h;                               \
                y0[j] = v0 < 0 ? 0 : v0; y1[j] = v1 < 0 ? 0 : v1;                                                 \
                y2[j] = v2 < 0 ? 0 : v2; y3[j] = v3 < 0 ? 0 : v3;                                                 \
            }                                                                                                     \
            return;                                                                                               \
        }                                                                                                         \
        for (j = 0; j < n; j++) {                                                                                 \
            T c = center[j], s = scale[j], h = shift[j];                                                          \
            y0[j] = (x[j] - c) * s + h; y1[j] = (x[D + j] - c) * s + h;                                           \
            y2[j] = (x[2 * D + j] - c) * s + h; y3[j] = (x[3 * D + j] - c) * s + h;                               \
        }                                                                                                         \
    }
    CYNET_ROWS4(float, f32)
    CYNET_ROWS4(double, f64)
    """
    void cynet_rows_shifted_sums_f32(const float* x, double* s1, double* s2, Py_ssize_t D, Py_ssize_t n,
                                     Py_ssize_t r0, Py_ssize_t r1) noexcept nogil
    void cynet_rows_shifted_sums_f64(const double* x, double* s1, double* s2, Py_ssize_t D, Py_ssize_t n,
                                     Py_ssize_t r0, Py_ssize_t r1) noexcept nogil
    void cynet_rows_grad_sums_f32(const float* dout, const float* x, const double* mean, double* sd, double* sdx,
                                  Py_ssize_t D, Py_ssize_t n, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil
    void cynet_rows_grad_sums_f64(const double* dout, const double* x, const double* mean, double* sd, double* sdx,
                                  Py_ssize_t D, Py_ssize_t n, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil
    void cynet_affine4_f32(const float* x, const float* center, const float* scale, const float* shift, float* y0,
                           float* y1, float* y2, float* y3, Py_ssize_t D, Py_ssize_t n, int relu) noexcept nogil
    void cynet_affine4_f64(const double* x, const double* center, const double* scale, const double* shift,
                           double* y0, double* y1, double* y2, double* y3, Py_ssize_t D, Py_ssize_t n,
                           int relu) noexcept nogil
    void cynet_rows_grad_sums_relu_f32(const float* dout, const float* x, const double* mean, double* sd, double* sdx,
                                       Py_ssize_t D, Py_ssize_t n, Py_ssize_t r0, Py_ssize_t r1, const float* ctr,
                                       const float* scl, const float* sft) noexcept nogil
    void cynet_rows_grad_sums_relu_f64(const double* dout, const double* x, const double* mean, double* sd,
                                       double* sdx, Py_ssize_t D, Py_ssize_t n, Py_ssize_t r0, Py_ssize_t r1,
                                       const double* ctr, const double* scl, const double* sft) noexcept nogil
    void cynet_run_shifted_sums_f32(const float* x, Py_ssize_t n, double k, double* s1, double* s2,
                                    Py_ssize_t ahead) noexcept nogil
    void cynet_run_shifted_sums_f64(const double* x, Py_ssize_t n, double k, double* s1, double* s2,
                                    Py_ssize_t ahead) noexcept nogil
    void cynet_run_grad_sums_f32(const float* dout, const float* x, Py_ssize_t n, double mu, double* sd,
                                 double* sdx, Py_ssize_t ahead) noexcept nogil
    void cynet_run_grad_sums_f64(const double* dout, const double* x, Py_ssize_t n, double mu, double* sd,
                                 double* sdx, Py_ssize_t ahead) noexcept nogil
    void cynet_planes_grad_sums_relu_f32(const float* dout, const float* x, double mu0, double* sd, double* sdx,
                                         Py_ssize_t D, Py_ssize_t n, Py_ssize_t r0, Py_ssize_t r1, float c0,
                                         float c1, float sc, float sh) noexcept nogil
    void cynet_planes_grad_sums_relu_f64(const double* dout, const double* x, double mu0, double* sd, double* sdx,
                                         Py_ssize_t D, Py_ssize_t n, Py_ssize_t r0, Py_ssize_t r1, double c0,
                                         double c1, double sc, double sh) noexcept nogil
    void cynet_run_grad_sums_relu_f32(const float* dout, const float* x, Py_ssize_t n, double mu, double* sd,
                                      double* sdx, Py_ssize_t ahead, float c0, float c1, float sc,
                                      float sh) noexcept nogil
    void cynet_run_grad_sums_relu_f64(const double* dout, const double* x, Py_ssize_t n, double mu, double* sd,
                                      double* sdx, Py_ssize_t ahead, double c0, double c1, double sc,
                                      double sh) noexcept nogil
    void cynet_ln_row_grad_f32(const float* dout, const float* x, const float* gamma, Py_ssize_t n, double mu,
                               double r, double* dgamma, double* dbeta, double* A, double* B,
                               Py_ssize_t ahead) noexcept nogil
    void cynet_ln_row_grad_f64(const double* dout, const double* x, const double* gamma, Py_ssize_t n, double mu,
                               double r, double* dgamma, double* dbeta, double* A, double* B,
                               Py_ssize_t ahead) noexcept nogil
    void cynet_ln_rows2_grad_f32(const float* dout0, const float* x0, const float* dout1, const float* x1,
                                 const float* gamma, Py_ssize_t n, double mu0, double r0, double mu1, double r1,
                                 double* dgamma, double* dbeta, double* A0, double* B0, double* A1, double* B1,
                                 Py_ssize_t ahead) noexcept nogil
    void cynet_ln_rows2_grad_f64(const double* dout0, const double* x0, const double* dout1, const double* x1,
                                 const double* gamma, Py_ssize_t n, double mu0, double r0, double mu1, double r1,
                                 double* dgamma, double* dbeta, double* A0, double* B0, double* A1, double* B1,
                                 Py_ssize_t ahead) noexcept nogil
    void cynet_planes_shifted_sums_f32(const float* x, double k0, double* s1, double* s2, Py_ssize_t D, Py_ssize_t n,
                                       Py_ssize_t r0, Py_ssize_t r1) noexcept nogil
    void cynet_planes_shifted_sums_f64(const double* x, double k0, double* s1, double* s2, Py_ssize_t D, Py_ssize_t n,
                                       Py_ssize_t r0, Py_ssize_t r1) noexcept nogil
    void cynet_planes_grad_sums_f32(const float* dout, const float* x, double mu0, double* sd, double* sdx,
                                    Py_ssize_t D, Py_ssize_t n, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil
    void cynet_planes_grad_sums_f64(const double* dout, const double* x, double mu0, double* sd, double* sdx,
                                    Py_ssize_t D, Py_ssize_t n, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil


cdef inline void _rows_shifted_sums(const floating* x, double* s1, double* s2, Py_ssize_t D, Py_ssize_t n,
                                    Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """s1_j = sum_i (x_ij - x_0j), s2_j = sum_i (x_ij - x_0j)^2 for the n columns j < n of x (rows D apart), over
    rows [r0, r1) (four rows per sweep)."""
    if floating is float:
        cynet_rows_shifted_sums_f32(x, s1, s2, D, n, r0, r1)
    else:
        cynet_rows_shifted_sums_f64(x, s1, s2, D, n, r0, r1)


cdef inline void _add_chunk_sums(const double* partials, Py_ssize_t n_chunks, Py_ssize_t D, Py_ssize_t j0,
                                 Py_ssize_t w, double* first, double* second) noexcept nogil:
    """Columns [j0, j0 + w) of the two sums of every chunk (rows 2c and 2c + 1 of ``partials``, rows D apart) into
    first[:w] and second[:w], added in chunk order, a chunk's row at a time: walking the chunks for one column reads
    lines D doubles apart, which share an L1 set when D is a power of two."""
    cdef Py_ssize_t c, j
    cdef const double* row
    for j in range(w):
        first[j] = 0
        second[j] = 0
    for c in range(n_chunks):
        row = partials + (2 * c) * D + j0
        for j in range(w):
            first[j] = first[j] + row[j]
            second[j] = second[j] + row[D + j]


cdef void _rows_statistics(const floating* x, const floating* gamma, const floating* beta, const double* partials,
                           Py_ssize_t n_chunks, double* mean, double* var, double* inv_std, floating* coef,
                           Py_ssize_t N, Py_ssize_t D, Py_ssize_t j0, Py_ssize_t j1, double eps) noexcept nogil:
    """Columns [j0, j1), at most SUM_BLOCK of them: add the chunks' sums in order; mean, var, inv_std; coef rows
    center, scale, shift (x's type) for the affine pass: center = mean rounded to x's type, scale = gamma r, and shift
    = beta - (mean - center) scale (in double, rounded once), so that y = (x - center) scale + shift is
    (x - mean) scale + beta with mean's rounding folded into the shift (a fourth row for it cost the pass 5-9% on one
    thread: the rows of coefficients are read again for every row of x, from L2 where D is large)."""
    cdef Py_ssize_t i, j
    cdef double t1[SUM_BLOCK]
    cdef double t2[SUM_BLOCK]
    cdef double r
    cdef floating center
    _add_chunk_sums(partials, n_chunks, D, j0, j1 - j0, t1, t2)
    for i in range(j1 - j0):
        j = j0 + i
        r = _shifted_statistics(x[j], t1[i], t2[i], N, eps, &mean[j], &var[j])
        inv_std[j] = r
        _affine_coefficients(gamma[j], beta[j], mean[j], r, &coef[j], &coef[D + j], &coef[2 * D + j])


cdef inline void _affine_coefficients(floating gamma, floating beta, double mean, double r, floating* center,
                                      floating* scale, floating* shift) noexcept nogil:
    """Column j's coefficients of the output pass (see _rows_statistics)."""
    center[0] = <floating>mean
    scale[0] = <floating>(gamma * r)
    shift[0] = <floating>(<double>beta - (mean - <double>center[0]) * (gamma * r))


cdef void _rows_relu_coefficients(const floating* gamma, const floating* beta, const double* mean,
                                  const double* inv_std, floating* coef, Py_ssize_t D, Py_ssize_t j0,
                                  Py_ssize_t j1) noexcept nogil:
    """The backward of a forward fused with a ReLU: the forward's coefficients of columns [j0, j1), recomputed from
    its statistics and beta with the same roundings, into coef rows 0 (center), 1 (scale) and 4 (shift): the mask of
    the ReLU is the sign of (x - center) scale + shift. (Rows 0 and 1 are also the dx pass's center and a.)"""
    cdef Py_ssize_t j
    for j in range(j0, j1):
        _affine_coefficients(gamma[j], beta[j], mean[j], inv_std[j], &coef[j], &coef[D + j], &coef[4 * D + j])


cdef inline void _affine_span(const floating* x, const floating* center, const floating* scale,
                              const floating* shift, floating* y, Py_ssize_t n, bint relu) noexcept nogil:
    """y_j = (x_j - center_j) * scale_j + shift_j for j < n; with ``relu``, max(0, that) as cynet's ReLU (0 if v < 0
    else v: NaN passes)."""
    cdef Py_ssize_t j
    cdef floating v
    if relu:
        for j in range(n):
            v = (x[j] - center[j]) * scale[j] + shift[j]
            y[j] = 0 if v < 0 else v
        return
    for j in range(n):
        y[j] = (x[j] - center[j]) * scale[j] + shift[j]


# The streamed output passes of BatchNorm1d on (N, D) take four rows at a time (_affine_span4, _dx_span4): each
# coefficient row is read once per four rows of x. At D = 4096 the three or four float32 coefficient rows (48-64 KB)
# do not fit a 32 KB L1 (AMD Zen 4), and re-reading them from L2 for every row held back the stream of x from memory:
# a C model of the forward's pass took 6.3-6.6 ms at (4096, 4096) on one thread against 2.7-3.1 for a streamed copy,
# 4.0-4.3 ms with four rows per coefficient load (8 rows: 4.6; the coefficient rows in column blocks of 1024 that
# fit L1: 6.3). In the kernels, alternating processes, (4096, 4096) float32: forward 11.4-11.9 -> 8.6-8.8 ms on one
# thread, 6.3-7.0 -> 5.1-5.4 on two; backward 17.2 -> 14.8 / 10.4 -> 9.5. The same values: each element's formula
# is unchanged.
cdef inline void _affine_span4(const floating* x, const floating* center, const floating* scale,
                               const floating* shift, floating* y0, floating* y1, floating* y2, floating* y3,
                               Py_ssize_t D, Py_ssize_t n, bint relu) noexcept nogil:
    """_affine_span on four rows at once (x's rows D apart, into y0..y3, which must not overlap x): each coefficient
    loaded once for four (cynet_affine4_*)."""
    if floating is float:
        cynet_affine4_f32(x, center, scale, shift, y0, y1, y2, y3, D, n, relu)
    else:
        cynet_affine4_f64(x, center, scale, shift, y0, y1, y2, y3, D, n, relu)


cdef inline bint _disjoint(const floating* a, const floating* b, Py_ssize_t n) noexcept nogil:
    """The n values from a and the n values from b do not overlap (the four-row passes' outputs are restrict)."""
    return a + n <= b or b + n <= a


cdef void _rows_affine(const floating* x, const floating* coef, floating* y, Py_ssize_t D, Py_ssize_t j0,
                       Py_ssize_t j1, Py_ssize_t r0, Py_ssize_t r1, bint stream, bint relu) noexcept nogil:
    """y_ij = (x_ij - center_j) * scale_j + shift_j over rows [r0, r1), columns [j0, j1) (coef: _rows_statistics); with
    ``stream``, y goes to memory with non-temporal stores (through an L1 buffer, block by block of each row; four rows
    at a time where D values are whole 64-byte lines: see _affine_span4); with ``relu``, max(0, y) as cynet's ReLU."""
    cdef floating buffer[STREAM_BLOCK]
    cdef floating buffers[4][STREAM_BLOCK]
    cdef Py_ssize_t i, b, head, j, m, o, k, n = j1 - j0
    cdef const floating* center = coef + j0
    cdef const floating* scale = coef + D + j0
    cdef const floating* shift = coef + 2 * D + j0
    i = r0
    if stream and (D * sizeof(floating)) % 64 == 0:
        while i + 4 <= r1:
            o = i * D + j0
            head = stream_head(y + o, n)                   # the same for the four rows: D values are whole lines
            for k in range(4):
                _affine_span(x + o + k * D, center, scale, shift, y + o + k * D, head, relu)
            for b in range(stream_blocks(head, n)):
                j = stream_block(head, b, n, &m)
                _affine_span4(x + o + j, center + j, scale + j, shift + j, buffers[0], buffers[1], buffers[2],
                              buffers[3], D, m, relu)
                for k in range(4):
                    stream_store(y + o + k * D + j, buffers[k], m)
            i += 4
    elif not stream and 3 * n * <Py_ssize_t>sizeof(floating) >= FOUR_ROW_COEF_BYTES and _disjoint(x, y, r1 * D):
        while i + 4 <= r1:
            o = i * D + j0
            _affine_span4(x + o, center, scale, shift, y + o, y + o + D, y + o + 2 * D, y + o + 3 * D, D, n, relu)
            i += 4
    while i < r1:
        o = i * D + j0
        i += 1
        if not stream:
            _affine_span(x + o, center, scale, shift, y + o, n, relu)
            continue
        head = stream_head(y + o, n)
        _affine_span(x + o, center, scale, shift, y + o, head, relu)
        for b in range(stream_blocks(head, n)):
            j = stream_block(head, b, n, &m)
            _affine_span(x + o + j, center + j, scale + j, shift + j, buffer, m, relu)
            stream_store(y + o + j, buffer, m)
    if stream:
        stream_fence()


cdef void _bn_rows_forward_range(const floating* x, const floating* gamma, const floating* beta, floating* y,
                                 double* mean, double* var, double* inv_std, double* partials, floating* coef,
                                 Py_ssize_t N, Py_ssize_t D, Py_ssize_t j0, Py_ssize_t j1, double eps,
                                 bint stream, bint relu) noexcept nogil:
    """The column-range plan's forward on columns [j0, j1): sums over all N rows (one chunk), statistics, y."""
    cdef Py_ssize_t j = j0
    _rows_shifted_sums(x + j0, partials + j0, partials + D + j0, D, j1 - j0, 0, N)
    while j < j1:
        _rows_statistics(x, gamma, beta, partials, 1, mean, var, inv_std, coef, N, D, j, min(j + SUM_BLOCK, j1), eps)
        j += SUM_BLOCK
    _rows_affine(x, coef, y, D, j0, j1, 0, N, stream, relu)


def _check_coef(Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t want_rows, Py_ssize_t D):
    if rows != want_rows or cols != D:
        raise ValueError(f"cynet._kernels.normalization: coef must have shape ({want_rows}, {D}), got ({rows}, {cols})")


def bn_rows_forward(const floating[:, ::1] x, const floating[::1] gamma, const floating[::1] beta, double eps,
                    floating[:, ::1] y, double[::1] mean, double[::1] var, double[::1] inv_std,
                    Py_ssize_t width, double[:, ::1] partials, floating[:, ::1] coef, bint stream, int n_threads,
                    bint relu=False):
    """Training forward of BatchNorm1d on (N, D): y, and the batch mean, biased var and 1/sqrt(var + eps).

    Split as :func:`rows_plan` says: column ranges of at least ``width`` columns when it is > 0, else row chunks,
    one per pair of rows of the caller's scratch ``partials`` (float64 (2 * chunks, D); two rows for the ranges)
    with ``coef`` of x's type (3, D). ``stream``: y is written with non-temporal stores (an output larger than the
    cache). ``relu``: y = ReLU(batch norm) in the same pass (the bits of cynet's ReLU on the batch norm's output)."""
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1], n_chunks = partials.shape[0] // 2, c, r0, r1, j, jb, t
    cdef Py_ssize_t n_col_blocks
    cdef int nt, nt_cols
    _check_coef(coef.shape[0], coef.shape[1], 3, D)
    if N == 0 or D == 0:
        return
    if width > 0:
        nt = _threads_for(N * D, D // width, n_threads)        # one column range per thread
        with nogil:
            if nt == 1:
                _bn_rows_forward_range(&x[0, 0], &gamma[0], &beta[0], &y[0, 0], &mean[0], &var[0], &inv_std[0],
                                       &partials[0, 0], &coef[0, 0], N, D, 0, D, eps, stream, relu)
            else:
                for t in prange(nt, schedule='static', num_threads=nt):
                    _bn_rows_forward_range(&x[0, 0], &gamma[0], &beta[0], &y[0, 0], &mean[0], &var[0], &inv_std[0],
                                           &partials[0, 0], &coef[0, 0], N, D, range_start(D, t, nt, 16),
                                           range_start(D, t + 1, nt, 16), eps, stream, relu)
        return
    n_col_blocks = (D + SUM_BLOCK - 1) // SUM_BLOCK
    nt = _threads_for(N * D, n_chunks, n_threads)
    nt_cols = _threads_for(n_chunks * D, n_col_blocks, n_threads)
    with nogil:
        if nt == 1:
            for c in range(n_chunks):
                r0 = (N * c) // n_chunks          # chunk c: rows [r0, r1), near-equal chunks
                r1 = (N * (c + 1)) // n_chunks
                _rows_shifted_sums(&x[0, 0], &partials[2 * c, 0], &partials[2 * c + 1, 0], D, D, r0, r1)
            for jb in range(n_col_blocks):
                j = jb * SUM_BLOCK
                _rows_statistics(&x[0, 0], &gamma[0], &beta[0], &partials[0, 0], n_chunks, &mean[0], &var[0],
                                 &inv_std[0], &coef[0, 0], N, D, j, min(j + SUM_BLOCK, D), eps)
            _rows_affine(&x[0, 0], &coef[0, 0], &y[0, 0], D, 0, D, 0, N, stream, relu)
        else:
            for c in prange(n_chunks, schedule='static', num_threads=nt):
                r0 = (N * c) // n_chunks          # chunk c: rows [r0, r1), near-equal chunks
                r1 = (N * (c + 1)) // n_chunks
                _rows_shifted_sums(&x[0, 0], &partials[2 * c, 0], &partials[2 * c + 1, 0], D, D, r0, r1)
            for jb in prange(n_col_blocks, schedule='static', num_threads=nt_cols):
                j = jb * SUM_BLOCK
                _rows_statistics(&x[0, 0], &gamma[0], &beta[0], &partials[0, 0], n_chunks, &mean[0], &var[0],
                                 &inv_std[0], &coef[0, 0], N, D, j, min(j + SUM_BLOCK, D), eps)
            for c in prange(n_chunks, schedule='static', num_threads=nt):
                r0 = (N * c) // n_chunks          # chunk c: rows [r0, r1), near-equal chunks
                r1 = (N * (c + 1)) // n_chunks
                _rows_affine(&x[0, 0], &coef[0, 0], &y[0, 0], D, 0, D, r0, r1, stream, relu)


# Batch norm backward, "rows" layout, with x_hat = (x - mean) r:
#   dbeta_j = sum_i dout_ij;  dgamma_j = sum_i dout_ij x_hat_ij
#   dx_ij = (gamma_j r_j / N) (N dout_ij - dbeta_j - x_hat_ij dgamma_j)
#         = a_j dout_ij + (b_j (x_ij - mean_j) + c_j),  a = gamma r, b = -gamma r^2 dgamma / N, c = -gamma r dbeta / N
# The two sums are taken per row chunk (partials) and added in order, or per column range, as in the forward.

cdef inline void _rows_grad_sums(const floating* dout, const floating* x, const double* mean, double* sd,
                                 double* sdx, Py_ssize_t D, Py_ssize_t n, Py_ssize_t r0, Py_ssize_t r1,
                                 const floating* relu_coef) noexcept nogil:
    """sd_j = sum_i g_ij, sdx_j = sum_i g_ij (x_ij - mean_j) for the n columns j < n (rows D apart), over rows
    [r0, r1) (four rows per sweep); g = dout, or with ``relu_coef`` (not NULL: the coef rows of
    _rows_relu_coefficients, offset to column 0 of these n) dout where the forward's pre-ReLU value is > 0, else 0."""
    if relu_coef != NULL:
        if floating is float:
            cynet_rows_grad_sums_relu_f32(dout, x, mean, sd, sdx, D, n, r0, r1, relu_coef, relu_coef + D,
                                          relu_coef + 4 * D)
        else:
            cynet_rows_grad_sums_relu_f64(dout, x, mean, sd, sdx, D, n, r0, r1, relu_coef, relu_coef + D,
                                          relu_coef + 4 * D)
    elif floating is float:
        cynet_rows_grad_sums_f32(dout, x, mean, sd, sdx, D, n, r0, r1)
    else:
        cynet_rows_grad_sums_f64(dout, x, mean, sd, sdx, D, n, r0, r1)


cdef void _rows_grad_coefficients(const floating* gamma, const double* mean, const double* inv_std,
                                  const double* partials, Py_ssize_t n_chunks, double* dgamma, double* dbeta,
                                  floating* coef, Py_ssize_t N, Py_ssize_t D, Py_ssize_t j0,
                                  Py_ssize_t j1) noexcept nogil:
    """Columns [j0, j1), at most SUM_BLOCK of them: dgamma, dbeta, and coef rows center, a, b, c (x's type) for the dx
    pass: center = mean rounded to x's type, a = gamma r, b = -a r^2 sdx / N, and c = -a sd / N - b (mean - center)
    (in double, rounded once), mean's rounding folded into c as in _rows_statistics."""
    cdef Py_ssize_t i, j
    cdef double t1[SUM_BLOCK]
    cdef double t2[SUM_BLOCK]
    cdef double sd, sdx, r, gr, mu
    cdef floating center
    _add_chunk_sums(partials, n_chunks, D, j0, j1 - j0, t1, t2)
    for i in range(j1 - j0):
        j = j0 + i
        sd = t1[i]
        sdx = t2[i]
        r = inv_std[j]
        gr = gamma[j] * r
        mu = mean[j]
        dbeta[j] = sd
        dgamma[j] = sdx * r
        center = <floating>mu
        coef[j] = center
        coef[D + j] = <floating>gr
        coef[2 * D + j] = <floating>(-gr * r * r * sdx / N)
        coef[3 * D + j] = <floating>(-gr * sd / N + (gr * r * r * sdx / N) * (mu - <double>center))


cdef inline void _dx_span(const floating* dout, const floating* x, const floating* center, const floating* ca,
                          const floating* cb, const floating* cc, floating* dx, Py_ssize_t n,
                          const floating* shift) noexcept nogil:
    """dx_j = a_j dout_j + (b_j (x_j - center_j) + c_j) for j < n; with ``shift`` (not NULL: the forward was fused
    with a ReLU), dout_j where (x_j - center_j) a_j + shift_j > 0 (the forward's pre-ReLU value: a is its scale),
    else 0, in place of dout_j."""
    cdef Py_ssize_t j
    cdef floating d, g
    if shift != NULL:
        for j in range(n):
            d = x[j] - center[j]
            g = dout[j]                         # loaded whatever the sign: a select, not a branch
            g = g if d * ca[j] + shift[j] > 0 else 0
            dx[j] = ca[j] * g + (cb[j] * d + cc[j])
        return
    for j in range(n):
        dx[j] = ca[j] * dout[j] + (cb[j] * (x[j] - center[j]) + cc[j])


cdef inline void _dx_span4(const floating* dout, const floating* x, const floating* center, const floating* ca,
                           const floating* cb, const floating* cc, floating* dx0, floating* dx1, floating* dx2,
                           floating* dx3, Py_ssize_t D, Py_ssize_t n, const floating* shift) noexcept nogil:
    """_dx_span on four rows at once (dout's and x's rows D apart, into dx0..dx3): each coefficient loaded once."""
    cdef Py_ssize_t j
    cdef floating e, a, b, c, h, d0, d1, d2, d3, g0, g1, g2, g3
    if shift != NULL:
        for j in range(n):
            e = center[j]
            a = ca[j]
            b = cb[j]
            c = cc[j]
            h = shift[j]
            d0 = x[j] - e
            d1 = x[D + j] - e
            d2 = x[2 * D + j] - e
            d3 = x[3 * D + j] - e
            g0 = dout[j]
            g1 = dout[D + j]
            g2 = dout[2 * D + j]
            g3 = dout[3 * D + j]
            g0 = g0 if d0 * a + h > 0 else 0
            g1 = g1 if d1 * a + h > 0 else 0
            g2 = g2 if d2 * a + h > 0 else 0
            g3 = g3 if d3 * a + h > 0 else 0
            dx0[j] = a * g0 + (b * d0 + c)
            dx1[j] = a * g1 + (b * d1 + c)
            dx2[j] = a * g2 + (b * d2 + c)
            dx3[j] = a * g3 + (b * d3 + c)
        return
    for j in range(n):
        e = center[j]
        a = ca[j]
        b = cb[j]
        c = cc[j]
        dx0[j] = a * dout[j] + (b * (x[j] - e) + c)
        dx1[j] = a * dout[D + j] + (b * (x[D + j] - e) + c)
        dx2[j] = a * dout[2 * D + j] + (b * (x[2 * D + j] - e) + c)
        dx3[j] = a * dout[3 * D + j] + (b * (x[3 * D + j] - e) + c)


cdef void _rows_dx(const floating* dout, const floating* x, const floating* coef, floating* dx, Py_ssize_t D,
                   Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t r0, Py_ssize_t r1, bint stream, bint relu) noexcept nogil:
    """dx_ij = a_j dout_ij + (b_j (x_ij - center_j) + c_j) over rows [r0, r1), columns [j0, j1);
    ``stream`` as in _rows_affine (four rows at a time there); ``relu``: dout masked by the forward's sign (coef
    row 4: _rows_relu_coefficients' shift)."""
    cdef floating buffer[STREAM_BLOCK]
    cdef floating buffers[4][STREAM_BLOCK]
    cdef Py_ssize_t i, b, head, j, m, o, k, n = j1 - j0
    cdef const floating* center = coef + j0
    cdef const floating* ca = coef + D + j0
    cdef const floating* cb = coef + 2 * D + j0
    cdef const floating* cc = coef + 3 * D + j0
    cdef const floating* shift = coef + 4 * D + j0 if relu else NULL
    i = r0
    if stream and (D * sizeof(floating)) % 64 == 0:
        while i + 4 <= r1:
            o = i * D + j0
            head = stream_head(dx + o, n)                  # the same for the four rows: D values are whole lines
            for k in range(4):
                _dx_span(dout + o + k * D, x + o + k * D, center, ca, cb, cc, dx + o + k * D, head, shift)
            for b in range(stream_blocks(head, n)):
                j = stream_block(head, b, n, &m)
                _dx_span4(dout + o + j, x + o + j, center + j, ca + j, cb + j, cc + j, buffers[0], buffers[1],
                          buffers[2], buffers[3], D, m, shift + j if relu else NULL)
                for k in range(4):
                    stream_store(dx + o + k * D + j, buffers[k], m)
            i += 4
    while i < r1:
        o = i * D + j0
        i += 1
        if not stream:
            _dx_span(dout + o, x + o, center, ca, cb, cc, dx + o, n, shift)
            continue
        head = stream_head(dx + o, n)
        _dx_span(dout + o, x + o, center, ca, cb, cc, dx + o, head, shift)
        for b in range(stream_blocks(head, n)):
            j = stream_block(head, b, n, &m)
            _dx_span(dout + o + j, x + o + j, center + j, ca + j, cb + j, cc + j, buffer, m,
                     shift + j if relu else NULL)
            stream_store(dx + o + j, buffer, m)
    if stream:
        stream_fence()


cdef void _bn_rows_backward_range(const floating* dout, const floating* x, const floating* gamma,
                                  const double* mean, const double* inv_std, floating* dx, double* dgamma,
                                  double* dbeta, double* partials, floating* coef, Py_ssize_t N, Py_ssize_t D,
                                  Py_ssize_t j0, Py_ssize_t j1, bint compute_dx, bint stream,
                                  const floating* beta) noexcept nogil:
    """The column-range plan's backward on columns [j0, j1): sums over all N rows (one chunk), dgamma, dbeta, dx;
    with ``beta`` (not NULL) the forward was fused with a ReLU (relu=True) and dout is masked by its sign."""
    cdef Py_ssize_t j = j0
    if beta != NULL:
        _rows_relu_coefficients(gamma, beta, mean, inv_std, coef, D, j0, j1)
    _rows_grad_sums(dout + j0, x + j0, mean + j0, partials + j0, partials + D + j0, D, j1 - j0, 0, N,
                    coef + j0 if beta != NULL else NULL)
    while j < j1:
        _rows_grad_coefficients(gamma, mean, inv_std, partials, 1, dgamma, dbeta, coef, N, D, j,
                                min(j + SUM_BLOCK, j1))
        j += SUM_BLOCK
    if compute_dx:
        _rows_dx(dout, x, coef, dx, D, j0, j1, 0, N, stream, beta != NULL)


# ---------------------------------------------------------------------------------------------------------------------
def bn_rows_backward(const floating[:, ::1] dout, const floating[:, ::1] x, const floating[::1] gamma,
                     const double[::1] mean, const double[::1] inv_std, floating[:, ::1] dx, double[::1] dgamma,
                     double[::1] dbeta, bint compute_dx, Py_ssize_t width, double[:, ::1] partials,
                     floating[:, ::1] coef, bint stream, int n_threads, const floating[::1] relu_beta=None):
    """Backward of the training forward on (N, D): dx (when compute_dx), dgamma, dbeta (float64).

    Split as in :func:`bn_rows_forward`; the scratch: partials float64 (2 * chunks, D) (two rows for the column
    ranges), coef (4, D), (5, D) with ``relu_beta``; ``stream`` as there, for dx. ``relu_beta``: the forward ran with
    relu=True and this beta, and dout is the gradient of the ReLU's output (masked here as the ReLU's backward
    would)."""
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1], n_chunks = partials.shape[0] // 2, c, r0, r1, j, jb, t
    cdef Py_ssize_t n_col_blocks
    cdef int nt, nt_cols
    cdef const floating* beta = NULL
    cdef const floating* relu_coef = NULL
    _check_coef(coef.shape[0], coef.shape[1], 4 if relu_beta is None else 5, D)
    if relu_beta is not None:
        if relu_beta.shape[0] != D:
            raise ValueError(f"cynet._kernels.normalization.bn_rows_backward: relu_beta must have {D} values, got "
                             f"{relu_beta.shape[0]}")
    if N == 0 or D == 0:
        return
    if relu_beta is not None:
        beta = &relu_beta[0]
        relu_coef = &coef[0, 0]
    if width > 0:
        nt = _threads_for(N * D, D // width, n_threads)        # one column range per thread
        with nogil:
            if nt == 1:
                _bn_rows_backward_range(&dout[0, 0], &x[0, 0], &gamma[0], &mean[0], &inv_std[0], &dx[0, 0],
                                        &dgamma[0], &dbeta[0], &partials[0, 0], &coef[0, 0], N, D, 0, D,
                                        compute_dx, stream, beta)
            else:
                for t in prange(nt, schedule='static', num_threads=nt):
                    _bn_rows_backward_range(&dout[0, 0], &x[0, 0], &gamma[0], &mean[0], &inv_std[0], &dx[0, 0],
                                            &dgamma[0], &dbeta[0], &partials[0, 0], &coef[0, 0], N, D,
                                            range_start(D, t, nt, 16), range_start(D, t + 1, nt, 16),
                                            compute_dx, stream, beta)
        return
    n_col_blocks = (D + SUM_BLOCK - 1) // SUM_BLOCK
    nt = _threads_for(N * D, n_chunks, n_threads)
    nt_cols = _threads_for(n_chunks * D, n_col_blocks, n_threads)
    with nogil:
        if beta != NULL:                          # a few operations per column: serial
            _rows_relu_coefficients(&gamma[0], beta, &mean[0], &inv_std[0], &coef[0, 0], D, 0, D)
        if nt == 1:
            for c in range(n_chunks):
                r0 = (N * c) // n_chunks          # chunk c: rows [r0, r1), near-equal chunks
                r1 = (N * (c + 1)) // n_chunks
                _rows_grad_sums(&dout[0, 0], &x[0, 0], &mean[0], &partials[2 * c, 0], &partials[2 * c + 1, 0],
                                D, D, r0, r1, relu_coef)
            for jb in range(n_col_blocks):
                j = jb * SUM_BLOCK
                _rows_grad_coefficients(&gamma[0], &mean[0], &inv_std[0], &partials[0, 0], n_chunks, &dgamma[0],
                                        &dbeta[0], &coef[0, 0], N, D, j, min(j + SUM_BLOCK, D))
            if compute_dx:
                _rows_dx(&dout[0, 0], &x[0, 0], &coef[0, 0], &dx[0, 0], D, 0, D, 0, N, stream, beta != NULL)
        else:
            for c in prange(n_chunks, schedule='static', num_threads=nt):
                r0 = (N * c) // n_chunks          # chunk c: rows [r0, r1), near-equal chunks
                r1 = (N * (c + 1)) // n_chunks
                _rows_grad_sums(&dout[0, 0], &x[0, 0], &mean[0], &partials[2 * c, 0], &partials[2 * c + 1, 0],
                                D, D, r0, r1, relu_coef)
            for jb in prange(n_col_blocks, schedule='static', num_threads=nt_cols):
                j = jb * SUM_BLOCK
                _rows_grad_coefficients(&gamma[0], &mean[0], &inv_std[0], &partials[0, 0], n_chunks, &dgamma[0],
                                        &dbeta[0], &coef[0, 0], N, D, j, min(j + SUM_BLOCK, D))
            if compute_dx:
                for c in prange(n_chunks, schedule='static', num_threads=nt):
                    r0 = (N * c) // n_chunks          # chunk c: rows [r0, r1), near-equal chunks
                    r1 = (N * (c + 1)) // n_chunks
                    _rows_dx(&dout[0, 0], &x[0, 0], &coef[0, 0], &dx[0, 0], D, 0, D, r0, r1, stream, beta != NULL)


# ---------------------------------------------------------------------------------------------------------------------
# Batch norm, "planes" layout (P, C, S): the same formulas, channel c being the P planes x[:, c, :].
# Sums along one contiguous run (a plane, or a LayerNorm/GroupNorm row) use float64 lanes (cynet_run_*_sums).

cdef inline void _plane_sums(const floating* x, double k, Py_ssize_t n, double* s1, double* s2,
                             Py_ssize_t ahead) noexcept nogil:
    """s1 += sum(x - k), s2 += sum((x - k)^2) over n contiguous values (2 x 8 float64 lanes, a fixed order),
    prefetching the run ``ahead`` values further on (0: none)."""
    if floating is float:
        cynet_run_shifted_sums_f32(x, n, k, s1, s2, ahead)
    else:
        cynet_run_shifted_sums_f64(x, n, k, s1, s2, ahead)


cdef inline void _plane_grad_sums(const floating* dout, const floating* x, double mu, Py_ssize_t n, double* sd,
                                  double* sdx, Py_ssize_t ahead) noexcept nogil:
    """sd += sum(dout), sdx += sum(dout * (x - mu)) over n contiguous values (eight float64 lanes), prefetching both
    runs ``ahead`` values further on (0: none)."""
    if floating is float:
        cynet_run_grad_sums_f32(dout, x, n, mu, sd, sdx, ahead)
    else:
        cynet_run_grad_sums_f64(dout, x, n, mu, sd, sdx, ahead)


cdef inline void _plane_affine(const floating* x, floating center, floating center_lo, floating scale,
                               floating shift, floating* y, Py_ssize_t n, bint relu) noexcept nogil:
    """y = ((x - center) - center_lo) * scale + shift over n values; with ``relu``, max(0, that) as cynet's ReLU
    (0 if v < 0 else v: NaN passes)."""
    cdef Py_ssize_t s
    cdef floating v
    if relu:
        for s in range(n):
            v = ((x[s] - center) - center_lo) * scale + shift
            y[s] = 0 if v < 0 else v
        return
    for s in range(n):
        y[s] = ((x[s] - center) - center_lo) * scale + shift


cdef inline void _plane_dx(const floating* dout, const floating* x, floating center, floating center_lo,
                           floating a, floating b, floating c, floating* dx, Py_ssize_t n, bint relu,
                           floating scale, floating shift) noexcept nogil:
    """dx = a * g + (b * ((x - center) - center_lo) + c) over n values, g = dout; with ``relu``, g = dout where the
    forward's ((x - center) - center_lo) * scale + shift > 0, else 0 (cynet's ReLU backward on the fused output)."""
    cdef Py_ssize_t s
    cdef floating d, g
    if relu:
        for s in range(n):
            d = (x[s] - center) - center_lo
            g = dout[s]                         # loaded whatever the sign: a select, not a branch
            g = g if d * scale + shift > 0 else 0
            dx[s] = a * g + (b * d + c)
        return
    for s in range(n):
        dx[s] = a * dout[s] + (b * ((x[s] - center) - center_lo) + c)


cdef void _plane_affine_streamed(const floating* x, floating center, floating center_lo, floating scale,
                                 floating shift, floating* y, Py_ssize_t n, bint relu) noexcept nogil:
    """_plane_affine with y written by non-temporal stores, through an L1 buffer (the caller fences)."""
    cdef floating buffer[STREAM_BLOCK]
    cdef Py_ssize_t head = stream_head(y, n), b, s, m
    _plane_affine(x, center, center_lo, scale, shift, y, head, relu)
    for b in range(stream_blocks(head, n)):
        s = stream_block(head, b, n, &m)
        _plane_affine(x + s, center, center_lo, scale, shift, buffer, m, relu)
        stream_store(y + s, buffer, m)


cdef void _plane_dx_streamed(const floating* dout, const floating* x, floating center, floating center_lo,
                             floating a, floating b, floating c, floating* dx, Py_ssize_t n, bint relu,
                             floating scale, floating shift) noexcept nogil:
    """_plane_dx with dx written by non-temporal stores, through an L1 buffer (the caller fences)."""
    cdef floating buffer[STREAM_BLOCK]
    cdef Py_ssize_t head = stream_head(dx, n), k, s, m
    _plane_dx(dout, x, center, center_lo, a, b, c, dx, head, relu, scale, shift)
    for k in range(stream_blocks(head, n)):
        s = stream_block(head, k, n, &m)
        _plane_dx(dout + s, x + s, center, center_lo, a, b, c, buffer, m, relu, scale, shift)
        stream_store(dx + s, buffer, m)


# Per-channel sums of the planes layout, "column" order: the channel's P planes are P rows of S values; block by block
# of `width` positions, each position's values over the P planes are summed into acc[s] (and the second sum into
# acc[width + s]) by the sweeps of the "rows" layout (four planes per sweep, one sum per position: the loop over s
# vectorises), then the block's `width` sums are added in order. Planes of at least PLANE_RUN_MIN positions are
# summed a plane at a time instead (_bn_planes_forward_range / _bn_planes_backward_range), each plane one contiguous
# run in eight float64 lanes (_plane_sums / _plane_grad_sums, the run sums of LayerNorm and GroupNorm) added into the
# channel's sums in plane order: (128, 64, 32, 32) and (128, 64, 16, 16), forward and backward, 1 and 2 threads,
# 0.90-0.95x the column order's time, which waits at every 4 KB plane on eight streams at once; it is 1.14-1.67x
# slower for planes of 64 and 16 positions. The order depends on the shape only (width = min(S, PLANE_BLOCK), or
# S >= PLANE_RUN_MIN): the same bits for any thread count.


cdef inline void _add_column_sums(const double* acc, Py_ssize_t width, Py_ssize_t w, double* t1,
                                  double* t2) noexcept nogil:
    """t1 += acc[0] + ... + acc[w - 1] and t2 += the second row's, in index order."""
    cdef Py_ssize_t s
    for s in range(w):
        t1[0] = t1[0] + acc[s]
        t2[0] = t2[0] + acc[width + s]


cdef void _planes_shifted_sums(const floating* x, Py_ssize_t P, Py_ssize_t C, Py_ssize_t S, Py_ssize_t c, double k,
                               double* acc, Py_ssize_t width, double* s1, double* s2) noexcept nogil:
    """s1 = sum(x - k), s2 = sum((x - k)^2) over the P planes of channel c."""
    cdef Py_ssize_t blk, s0, w
    cdef double t1 = 0, t2 = 0
    for blk in range((S + width - 1) // width):
        s0 = blk * width
        w = min(width, S - s0)
        if floating is float:
            cynet_planes_shifted_sums_f32(x + c * S + s0, k, acc, acc + width, C * S, w, 0, P)
        else:
            cynet_planes_shifted_sums_f64(x + c * S + s0, k, acc, acc + width, C * S, w, 0, P)
        _add_column_sums(acc, width, w, &t1, &t2)
    s1[0] = t1
    s2[0] = t2


cdef void _planes_grad_sums(const floating* dout, const floating* x, Py_ssize_t P, Py_ssize_t C, Py_ssize_t S,
                            Py_ssize_t c, double mu, double* acc, Py_ssize_t width, double* sd,
                            double* sdx, bint relu, floating c0, floating c1, floating sc,
                            floating sh) noexcept nogil:
    """sd = sum(g), sdx = sum(g (x - mu)) over the P planes of channel c, in the order of _planes_shifted_sums;
    g = dout, or with ``relu`` dout where ((x - c0) - c1) sc + sh > 0, else 0."""
    cdef Py_ssize_t blk, s0, w
    cdef double t1 = 0, t2 = 0
    for blk in range((S + width - 1) // width):
        s0 = blk * width
        w = min(width, S - s0)
        if relu:
            if floating is float:
                cynet_planes_grad_sums_relu_f32(dout + c * S + s0, x + c * S + s0, mu, acc, acc + width, C * S, w,
                                                0, P, c0, c1, sc, sh)
            else:
                cynet_planes_grad_sums_relu_f64(dout + c * S + s0, x + c * S + s0, mu, acc, acc + width, C * S, w,
                                                0, P, c0, c1, sc, sh)
        elif floating is float:
            cynet_planes_grad_sums_f32(dout + c * S + s0, x + c * S + s0, mu, acc, acc + width, C * S, w, 0, P)
        else:
            cynet_planes_grad_sums_f64(dout + c * S + s0, x + c * S + s0, mu, acc, acc + width, C * S, w, 0, P)
        _add_column_sums(acc, width, w, &t1, &t2)
    sd[0] = t1
    sdx[0] = t2


cdef void _bn_planes_forward_channel(const floating* x, const floating* gamma, const floating* beta, floating* y,
                                     double* mean, double* var, double* inv_std, Py_ssize_t P, Py_ssize_t C,
                                     Py_ssize_t S, Py_ssize_t c, double eps, double* acc,
                                     Py_ssize_t width, bint stream, bint relu) noexcept nogil:
    cdef Py_ssize_t p
    cdef Py_ssize_t n = P * S
    cdef double k = x[c * S], s1 = 0, s2 = 0, r
    cdef floating center, center_lo, scale
    _planes_shifted_sums(x, P, C, S, c, k, acc, width, &s1, &s2)
    r = _shifted_statistics(k, s1, s2, n, eps, &mean[c], &var[c])
    inv_std[c] = r
    center = <floating>mean[c]
    center_lo = <floating>(mean[c] - <double>center)
    scale = <floating>(gamma[c] * r)
    for p in range(P):
        if stream:
            _plane_affine_streamed(x + (p * C + c) * S, center, center_lo, scale, beta[c], y + (p * C + c) * S, S,
                                   relu)
        else:
            _plane_affine(x + (p * C + c) * S, center, center_lo, scale, beta[c], y + (p * C + c) * S, S, relu)
    if stream:
        stream_fence()


cdef void _bn_planes_backward_channel(const floating* dout, const floating* x, const floating* gamma,
                                      const double* mean, const double* inv_std, floating* dx, double* dgamma,
                                      double* dbeta, Py_ssize_t P, Py_ssize_t C, Py_ssize_t S, Py_ssize_t c,
                                      bint compute_dx, double* acc, Py_ssize_t width,
                                      bint stream, const floating* beta) noexcept nogil:
    """dgamma, dbeta and dx of channel c; with ``beta`` (not NULL) the forward was fused with a ReLU (relu=True):
    the gradient reaching the batch norm is dout where the forward's pre-ReLU value was > 0, else 0."""
    cdef Py_ssize_t p, off
    cdef Py_ssize_t n = P * S
    cdef double mu = mean[c], r = inv_std[c], sd = 0, sdx = 0, gr
    cdef floating center, center_lo, a, b, cc, scale = 0, shift = 0
    cdef bint relu = beta != NULL
    center = <floating>mu
    center_lo = <floating>(mu - <double>center)
    if relu:                                    # the forward's coefficients, rounded as there
        scale = <floating>(gamma[c] * r)
        shift = beta[c]
    _planes_grad_sums(dout, x, P, C, S, c, mu, acc, width, &sd, &sdx, relu, center, center_lo, scale, shift)
    dbeta[c] = sd
    dgamma[c] = sdx * r
    if not compute_dx:
        return
    gr = gamma[c] * r
    a = <floating>gr
    b = <floating>(-gr * r * r * sdx / n)
    cc = <floating>(-gr * sd / n)
    for p in range(P):
        off = (p * C + c) * S
        if stream:
            _plane_dx_streamed(dout + off, x + off, center, center_lo, a, b, cc, dx + off, S, relu, scale, shift)
        else:
            _plane_dx(dout + off, x + off, center, center_lo, a, b, cc, dx + off, S, relu, scale, shift)
    if stream:
        stream_fence()


# Planes of at least PLANE_RUN_MIN positions, image by image: a thread takes a range of channels and walks the
# images in order, each image's planes of its channels one contiguous stretch of memory, for the sums and then for dx
# (or y). Each channel's sums still add its planes' run sums in plane order, so the bits are those of the
# channel-by-channel walk (_bn_planes_*_channel), which jumped C S values between one plane and the next of a channel:
# on an AMD EPYC (Zen 4) a C model of (128, 64, 32, 32) backward on one thread took 6.4 ms channel by channel, 3.9 ms
# image by image (the gradient sums 3.9 -> 1.8 ms, the dx pass 3.6 -> 2.0 ms).
cdef void _bn_planes_forward_range(const floating* x, const floating* gamma, const floating* beta, floating* y,
                                   double* mean, double* var, double* inv_std, Py_ssize_t P, Py_ssize_t C,
                                   Py_ssize_t S, Py_ssize_t c0, Py_ssize_t c1, double eps, bint stream,
                                   bint relu) noexcept nogil:
    """_bn_planes_forward_channel for channels [c0, c1), image by image (S >= PLANE_RUN_MIN); mean and var hold the
    running sums until the statistics."""
    cdef Py_ssize_t p, c, off
    cdef double r
    cdef floating center, center_lo
    for c in range(c0, c1):
        mean[c] = 0
        var[c] = 0
    for p in range(P):
        for c in range(c0, c1):
            off = (p * C + c) * S
            _plane_sums(x + off, x[c * S], S, &mean[c], &var[c], S)
    for c in range(c0, c1):
        inv_std[c] = _shifted_statistics(x[c * S], mean[c], var[c], P * S, eps, &mean[c], &var[c])
    for p in range(P):
        for c in range(c0, c1):
            off = (p * C + c) * S
            center = <floating>mean[c]
            center_lo = <floating>(mean[c] - <double>center)
            r = inv_std[c]
            if stream:
                _plane_affine_streamed(x + off, center, center_lo, <floating>(gamma[c] * r), beta[c], y + off, S,
                                       relu)
            else:
                _plane_affine(x + off, center, center_lo, <floating>(gamma[c] * r), beta[c], y + off, S, relu)
    if stream:
        stream_fence()


cdef void _bn_planes_backward_range(const floating* dout, const floating* x, const floating* gamma,
                                    const double* mean, const double* inv_std, floating* dx, double* dgamma,
                                    double* dbeta, Py_ssize_t P, Py_ssize_t C, Py_ssize_t S, Py_ssize_t c0,
                                    Py_ssize_t c1, bint compute_dx, bint stream,
                                    const floating* beta) noexcept nogil:
    """_bn_planes_backward_channel for channels [c0, c1), image by image (S >= PLANE_RUN_MIN); dbeta and dgamma
    hold the running sums until the end."""
    cdef Py_ssize_t p, c, off
    cdef Py_ssize_t n = P * S
    cdef double mu, r, gr
    cdef floating center, center_lo, scale = 0, shift = 0
    cdef bint relu = beta != NULL
    for c in range(c0, c1):
        dbeta[c] = 0
        dgamma[c] = 0
    for p in range(P):
        for c in range(c0, c1):
            off = (p * C + c) * S
            mu = mean[c]
            if not relu:
                _plane_grad_sums(dout + off, x + off, mu, S, &dbeta[c], &dgamma[c], S)
                continue
            r = inv_std[c]
            center = <floating>mu
            center_lo = <floating>(mu - <double>center)
            scale = <floating>(gamma[c] * r)           # the forward's coefficients, rounded as there
            if floating is float:
                cynet_run_grad_sums_relu_f32(dout + off, x + off, S, mu, &dbeta[c], &dgamma[c], S, center,
                                             center_lo, scale, beta[c])
            else:
                cynet_run_grad_sums_relu_f64(dout + off, x + off, S, mu, &dbeta[c], &dgamma[c], S, center,
                                             center_lo, scale, beta[c])
    if compute_dx:
        for p in range(P):
            for c in range(c0, c1):
                off = (p * C + c) * S
                mu = mean[c]
                r = inv_std[c]
                gr = gamma[c] * r
                center = <floating>mu
                center_lo = <floating>(mu - <double>center)
                if relu:
                    scale = <floating>gr
                    shift = beta[c]
                if stream:
                    _plane_dx_streamed(dout + off, x + off, center, center_lo, <floating>gr,
                                       <floating>(-gr * r * r * dgamma[c] / n), <floating>(-gr * dbeta[c] / n),
                                       dx + off, S, relu, scale, shift)
                else:
                    _plane_dx(dout + off, x + off, center, center_lo, <floating>gr,
                              <floating>(-gr * r * r * dgamma[c] / n), <floating>(-gr * dbeta[c] / n), dx + off, S,
                              relu, scale, shift)
        if stream:
            stream_fence()
    for c in range(c0, c1):
        dgamma[c] = dgamma[c] * inv_std[c]


def plane_block_width(Py_ssize_t S):
    """Positions per block of the planes layout's per-channel sums (a function of the shape only): the caller's
    scratch holds 2 * width float64 per thread."""
    return max(1, min(S, <Py_ssize_t>PLANE_BLOCK))


def bn_planes_forward(const floating[:, :, ::1] x, const floating[::1] gamma, const floating[::1] beta, double eps,
                      floating[:, :, ::1] y, double[::1] mean, double[::1] var, double[::1] inv_std,
                      double[:, ::1] scratch, bint stream, int n_threads, bint relu=False):
    """Training forward of batch norm on (P, C, S) (statistics per channel over P and S). ``scratch``: float64
    (n_threads, 2 * plane_block_width(S)), one row per thread; ``stream``: y written with non-temporal stores;
    ``relu``: y = max(0, batch norm) as cynet's ReLU computes it (a batch norm - ReLU pair in one pass)."""
    cdef Py_ssize_t P = x.shape[0], C = x.shape[1], S = x.shape[2], c, t
    cdef Py_ssize_t width = scratch.shape[1] // 2
    if P == 0 or C == 0 or S == 0:
        return
    cdef int nt = _threads_for(P * C * S, C, min(n_threads, <int>scratch.shape[0]))
    with nogil:
        if S >= PLANE_RUN_MIN:
            if nt == 1:
                _bn_planes_forward_range(&x[0, 0, 0], &gamma[0], &beta[0], &y[0, 0, 0], &mean[0], &var[0],
                                         &inv_std[0], P, C, S, 0, C, eps, stream, relu)
            else:
                for t in prange(nt, schedule='static', num_threads=nt):
                    _bn_planes_forward_range(&x[0, 0, 0], &gamma[0], &beta[0], &y[0, 0, 0], &mean[0], &var[0],
                                             &inv_std[0], P, C, S, range_start(C, t, nt, 16),
                                             range_start(C, t + 1, nt, 16), eps, stream, relu)
        elif nt == 1:
            for c in range(C):
                _bn_planes_forward_channel(&x[0, 0, 0], &gamma[0], &beta[0], &y[0, 0, 0], &mean[0], &var[0],
                                           &inv_std[0], P, C, S, c, eps, &scratch[0, 0], width, stream, relu)
        else:
            for c in prange(C, schedule='static', num_threads=nt):
                _bn_planes_forward_channel(&x[0, 0, 0], &gamma[0], &beta[0], &y[0, 0, 0], &mean[0], &var[0],
                                           &inv_std[0], P, C, S, c, eps, &scratch[threadid(), 0], width,
                                           stream, relu)


def bn_planes_backward(const floating[:, :, ::1] dout, const floating[:, :, ::1] x, const floating[::1] gamma,
                       const double[::1] mean, const double[::1] inv_std, floating[:, :, ::1] dx,
                       double[::1] dgamma, double[::1] dbeta, bint compute_dx, double[:, ::1] scratch,
                       bint stream, int n_threads, const floating[::1] relu_beta=None):
    """Backward of the training forward on (P, C, S): dx (when compute_dx), dgamma, dbeta (float64). ``scratch`` and
    ``stream`` (for dx) as in :func:`bn_planes_forward`; ``relu_beta``: the forward ran with relu=True and this beta,
    and dout is the gradient of the ReLU's output (masked here as the ReLU's backward would)."""
    cdef Py_ssize_t P = x.shape[0], C = x.shape[1], S = x.shape[2], c, t
    cdef Py_ssize_t width = scratch.shape[1] // 2
    if P == 0 or C == 0 or S == 0:
        return
    cdef int nt = _threads_for(P * C * S, C, min(n_threads, <int>scratch.shape[0]))
    cdef const floating* beta = NULL
    if relu_beta is not None:
        if relu_beta.shape[0] != C:
            raise ValueError(f"cynet._kernels.normalization.bn_planes_backward: relu_beta must have {C} values, got "
                             f"{relu_beta.shape[0]}")
        if C > 0:
            beta = &relu_beta[0]
    with nogil:
        if S >= PLANE_RUN_MIN:
            if nt == 1:
                _bn_planes_backward_range(&dout[0, 0, 0], &x[0, 0, 0], &gamma[0], &mean[0], &inv_std[0], &dx[0, 0, 0],
                                          &dgamma[0], &dbeta[0], P, C, S, 0, C, compute_dx, stream, beta)
            else:
                for t in prange(nt, schedule='static', num_threads=nt):
                    _bn_planes_backward_range(&dout[0, 0, 0], &x[0, 0, 0], &gamma[0], &mean[0], &inv_std[0],
                                              &dx[0, 0, 0], &dgamma[0], &dbeta[0], P, C, S, range_start(C, t, nt, 16),
                                              range_start(C, t + 1, nt, 16), compute_dx, stream, beta)
        elif nt == 1:
            for c in range(C):
                _bn_planes_backward_channel(&dout[0, 0, 0], &x[0, 0, 0], &gamma[0], &mean[0], &inv_std[0],
                                            &dx[0, 0, 0], &dgamma[0], &dbeta[0], P, C, S, c, compute_dx,
                                            &scratch[0, 0], width, stream, beta)
        else:
            for c in prange(C, schedule='static', num_threads=nt):
                _bn_planes_backward_channel(&dout[0, 0, 0], &x[0, 0, 0], &gamma[0], &mean[0], &inv_std[0],
                                            &dx[0, 0, 0], &dgamma[0], &dbeta[0], P, C, S, c, compute_dx,
                                            &scratch[threadid(), 0], width, stream, beta)


# ---------------------------------------------------------------------------------------------------------------------
# Per-channel affine map, one pass: y = (x - center_c) * scale_c + shift_c on (P, C, S) (S = 1 for (N, D)).
# Evaluation-mode batch norm (center = running_mean, scale = gamma / sqrt(running_var + eps), shift = beta) and its
# input gradient (center = shift = 0: dx = dout * scale).

cdef void _affine_rows(const floating* x, const floating* center, const floating* scale, const floating* shift,
                       floating* y, Py_ssize_t rows, Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(rows):
        for j in range(C):
            y[i * C + j] = (x[i * C + j] - center[j]) * scale[j] + shift[j]


def channel_affine(const floating[:, :, ::1] x, const floating[::1] center, const floating[::1] scale,
                   const floating[::1] shift, floating[:, :, ::1] y, int n_threads):
    """y = (x - center_c) * scale_c + shift_c over (P, C, S)."""
    cdef Py_ssize_t P = x.shape[0], C = x.shape[1], S = x.shape[2], q, K, k, lo, hi
    if P == 0 or C == 0 or S == 0:
        return
    cdef int nt = _threads_for(P * C * S, P * C if S > 1 else P, n_threads)
    K = nt
    with nogil:
        if S == 1:
            for k in prange(K, schedule='static', num_threads=nt):
                lo = (k * P) // K
                hi = ((k + 1) * P) // K
                _affine_rows(&x[0, 0, 0] + lo * C, &center[0], &scale[0], &shift[0], &y[0, 0, 0] + lo * C,
                             hi - lo, C)
        else:
            for q in prange(P * C, schedule='static', num_threads=nt):
                _plane_affine(&x[0, 0, 0] + q * S, center[q % C], 0, scale[q % C], shift[q % C],
                              &y[0, 0, 0] + q * S, S, False)


# ---------------------------------------------------------------------------------------------------------------------
# Running statistics after a training batch (PyTorch's convention), f the momentum (or 1 / batches seen for the
# cumulative average), n the values per channel:
#   running_mean = (1 - f) running_mean + f mean,    running_var = (1 - f) running_var + f (var n / (n - 1))
# with NumPy's operations and roundings for these expressions: (1 - f) rounded to the running arrays' type and its
# product in that type; f mean, the unbiased variance and the sum in float64; one rounding into the running array.
# A serial loop over the C channels (a few thousand at most: a parallel region would cost more than the loop).

def bn_update_running_stats(floating[::1] running_mean, floating[::1] running_var, const double[::1] mean,
                            const double[::1] var, double factor, double unbiased_scale):
    """running_* = (1 - factor) running_* + factor (mean, var * unbiased_scale), per channel."""
    cdef Py_ssize_t c, C = running_mean.shape[0]
    cdef floating keep = <floating>(1.0 - factor)
    if running_var.shape[0] != C or mean.shape[0] != C or var.shape[0] != C:
        raise ValueError(f"bn_update_running_stats: running_mean, running_var, mean and var must have one length, "
                         f"got {running_mean.shape[0]}, {running_var.shape[0]}, {mean.shape[0]}, {var.shape[0]}")
    with nogil:
        for c in range(C):
            running_mean[c] = <floating>(<double>(keep * running_mean[c]) + factor * mean[c])
            running_var[c] = <floating>(<double>(keep * running_var[c]) + factor * (var[c] * unbiased_scale))


# ---------------------------------------------------------------------------------------------------------------------
# Per-row norm on (M, Cg, S), LayerNorm and GroupNorm: statistics over each row of L = Cg * S values,
#   y = (x - mean_m) * (gamma_c r_m) + beta_c with c = (m % G) * Cg + (channel within the row).
# Backward, with g = dout * gamma_c (the gradient of x_hat) and A = sum_row g, B = sum_row g (x - mean):
#   dx = r g - r A / L - (x - mean) r^3 B / L
#   dgamma_c += sum dout x_hat, dbeta_c += sum dout over the elements of channel c in the row.

cdef inline void _ln_affine_span(const floating* x, const floating* gamma, const floating* beta, floating center,
                                 floating center_lo, floating r, floating* y, Py_ssize_t n) noexcept nogil:
    """y_j = ((x_j - center) - center_lo) * (gamma_j r) + beta_j for j < n."""
    cdef Py_ssize_t j
    for j in range(n):
        y[j] = ((x[j] - center) - center_lo) * (gamma[j] * r) + beta[j]


cdef inline void _ln_dx_span(const floating* dout, const floating* x, const floating* gamma, floating center,
                             floating center_lo, floating r, floating b, floating c, floating* dx,
                             Py_ssize_t n) noexcept nogil:
    """dx_j = (gamma_j r) dout_j + (b ((x_j - center) - center_lo) + c) for j < n."""
    cdef Py_ssize_t j
    for j in range(n):
        dx[j] = (gamma[j] * r) * dout[j] + (b * ((x[j] - center) - center_lo) + c)


cdef void _ln_affine_streamed(const floating* x, const floating* gamma, const floating* beta, floating center,
                              floating center_lo, floating r, floating* y, Py_ssize_t n) noexcept nogil:
    """_ln_affine_span with y written by non-temporal stores, through an L1 buffer (the caller fences)."""
    cdef floating buffer[STREAM_BLOCK]
    cdef Py_ssize_t head = stream_head(y, n), b, s, m
    _ln_affine_span(x, gamma, beta, center, center_lo, r, y, head)
    for b in range(stream_blocks(head, n)):
        s = stream_block(head, b, n, &m)
        _ln_affine_span(x + s, gamma + s, beta + s, center, center_lo, r, buffer, m)
        stream_store(y + s, buffer, m)


cdef void _ln_dx_streamed(const floating* dout, const floating* x, const floating* gamma, floating center,
                          floating center_lo, floating r, floating b, floating c, floating* dx,
                          Py_ssize_t n) noexcept nogil:
    """_ln_dx_span with dx written by non-temporal stores, through an L1 buffer (the caller fences)."""
    cdef floating buffer[STREAM_BLOCK]
    cdef Py_ssize_t head = stream_head(dx, n), k, s, m
    _ln_dx_span(dout, x, gamma, center, center_lo, r, b, c, dx, head)
    for k in range(stream_blocks(head, n)):
        s = stream_block(head, k, n, &m)
        _ln_dx_span(dout + s, x + s, gamma + s, center, center_lo, r, b, c, buffer, m)
        stream_store(dx + s, buffer, m)


# A row is read twice, a sweep for its sums and then the pass that writes it, the second from L1 (a row of 4096
# float32 is 16 KB): the sweep prefetches the next row (``ahead``, 0 for the last row of a thread's range). Without
# the hint, on the Intel Xeon of a later development machine, a (4096, 4096) float32 LayerNorm forward took 0.81 ns
# per value on one thread against 0.38 ns for (1024, 4096): the first pass stalled on every line (C model; with the
# hint and non-temporal stores, 0.41 ns; the copy of the same bytes 0.29 ns).

cdef void _row_forward(const floating* x, const floating* gamma, const floating* beta, floating* y, double* mean,
                       double* inv_std, Py_ssize_t m, Py_ssize_t G, Py_ssize_t Cg, Py_ssize_t S,
                       double eps, Py_ssize_t ahead, bint stream) noexcept nogil:
    cdef Py_ssize_t L = Cg * S, c, base = (m % G) * Cg
    cdef const floating* xr = x + m * L
    cdef floating* yr = y + m * L
    cdef double k = xr[0], s1 = 0, s2 = 0, var, r
    cdef floating center, center_lo, rf, scale
    _plane_sums(xr, k, L, &s1, &s2, ahead)
    r = _shifted_statistics(k, s1, s2, L, eps, &mean[m], &var)
    inv_std[m] = r
    center = <floating>mean[m]
    center_lo = <floating>(mean[m] - <double>center)
    rf = <floating>r
    if S == 1:
        if stream:
            _ln_affine_streamed(xr, gamma + base, beta + base, center, center_lo, rf, yr, L)
        else:
            _ln_affine_span(xr, gamma + base, beta + base, center, center_lo, rf, yr, L)
    else:
        for c in range(Cg):
            scale = gamma[base + c] * rf
            if stream:
                _plane_affine_streamed(xr + c * S, center, center_lo, scale, beta[base + c], yr + c * S, S, False)
            else:
                _plane_affine(xr + c * S, center, center_lo, scale, beta[base + c], yr + c * S, S, False)
    if stream:
        stream_fence()


cdef void _row_dx(const floating* dout, const floating* x, const floating* gamma, const double* mean,
                  const double* inv_std, floating* dx, Py_ssize_t m, Py_ssize_t G, Py_ssize_t Cg, Py_ssize_t S,
                  double A, double B, bint stream) noexcept nogil:
    """Row m's dx from its sums A = sum g, B = sum g (x - mean) (g = dout gamma):
    dx = (gamma_c r) dout + (b (x - mean) + c0) with b = -r^3 B / L, c0 = -r A / L."""
    cdef Py_ssize_t L = Cg * S, c, base = (m % G) * Cg
    cdef const floating* xr = x + m * L
    cdef const floating* gr = dout + m * L
    cdef floating* dxr = dx + m * L
    cdef double mu = mean[m], r = inv_std[m]
    cdef floating center = <floating>mu
    cdef floating center_lo = <floating>(mu - <double>center)
    cdef floating rf = <floating>r
    cdef floating fb = <floating>(-r * r * r * B / L)
    cdef floating fc = <floating>(-r * A / L)
    cdef floating fa
    if S == 1:
        if stream:
            _ln_dx_streamed(gr, xr, gamma + base, center, center_lo, rf, fb, fc, dxr, L)
        else:
            _ln_dx_span(gr, xr, gamma + base, center, center_lo, rf, fb, fc, dxr, L)
    else:
        for c in range(Cg):
            fa = gamma[base + c] * rf
            if stream:
                _plane_dx_streamed(gr + c * S, xr + c * S, center, center_lo, fa, fb, fc, dxr + c * S, S, False, 0,
                                   0)
            else:
                _plane_dx(gr + c * S, xr + c * S, center, center_lo, fa, fb, fc, dxr + c * S, S, False, 0, 0)
    if stream:
        stream_fence()


cdef void _row_backward(const floating* dout, const floating* x, const floating* gamma, const double* mean,
                        const double* inv_std, floating* dx, double* dgamma, double* dbeta, Py_ssize_t m,
                        Py_ssize_t G, Py_ssize_t Cg, Py_ssize_t S, bint compute_dx, Py_ssize_t ahead,
                        bint stream) noexcept nogil:
    cdef Py_ssize_t L = Cg * S, c, base = (m % G) * Cg
    cdef const floating* xr = x + m * L
    cdef const floating* gr = dout + m * L
    cdef double mu = mean[m], r = inv_std[m], A = 0, B = 0, sd, sdx, gm
    if S == 1:
        if floating is float:
            cynet_ln_row_grad_f32(gr, xr, gamma + base, L, mu, r, dgamma + base, dbeta + base, &A, &B, ahead)
        else:
            cynet_ln_row_grad_f64(gr, xr, gamma + base, L, mu, r, dgamma + base, dbeta + base, &A, &B, ahead)
    else:
        for c in range(Cg):
            sd = 0
            sdx = 0
            _plane_grad_sums(gr + c * S, xr + c * S, mu, S, &sd, &sdx, ahead)
            gm = gamma[base + c]
            A = A + gm * sd
            B = B + gm * sdx
            dgamma[base + c] += sdx * r
            dbeta[base + c] += sd
    if compute_dx:
        _row_dx(dout, x, gamma, mean, inv_std, dx, m, G, Cg, S, A, B, stream)


cdef void _row_pair_backward(const floating* dout, const floating* x, const floating* gamma, const double* mean,
                             const double* inv_std, floating* dx, double* dgamma, double* dbeta, Py_ssize_t m,
                             Py_ssize_t L, bint compute_dx, Py_ssize_t ahead, bint stream) noexcept nogil:
    """LayerNorm's rows m and m + 1 (one group, S = 1): their sums in one sweep (cynet_ln_rows2_grad), then dx."""
    cdef double A0 = 0, B0 = 0, A1 = 0, B1 = 0
    if floating is float:
        cynet_ln_rows2_grad_f32(dout + m * L, x + m * L, dout + (m + 1) * L, x + (m + 1) * L, gamma, L, mean[m],
                                inv_std[m], mean[m + 1], inv_std[m + 1], dgamma, dbeta, &A0, &B0, &A1, &B1, ahead)
    else:
        cynet_ln_rows2_grad_f64(dout + m * L, x + m * L, dout + (m + 1) * L, x + (m + 1) * L, gamma, L, mean[m],
                                inv_std[m], mean[m + 1], inv_std[m + 1], dgamma, dbeta, &A0, &B0, &A1, &B1, ahead)
    if compute_dx:
        _row_dx(dout, x, gamma, mean, inv_std, dx, m, 1, L, 1, A0, B0, stream)
        _row_dx(dout, x, gamma, mean, inv_std, dx, m + 1, 1, L, 1, A1, B1, stream)


def row_norm_forward(const floating[:, :, ::1] x, Py_ssize_t G, const floating[::1] gamma,
                     const floating[::1] beta, double eps, floating[:, :, ::1] y, double[::1] mean,
                     double[::1] inv_std, bint stream, int n_threads):
    """Forward of LayerNorm/GroupNorm on (M, Cg, S): statistics per row m, gamma/beta of length G * Cg. ``stream``:
    y is written with non-temporal stores (an output larger than the cache)."""
    cdef Py_ssize_t M = x.shape[0], Cg = x.shape[1], S = x.shape[2], L = Cg * S, m
    if M == 0 or Cg == 0 or S == 0:
        return
    cdef int nt = _threads_for(M * Cg * S, M, n_threads)
    with nogil:
        if nt == 1:
            for m in range(M):
                _row_forward(&x[0, 0, 0], &gamma[0], &beta[0], &y[0, 0, 0], &mean[0], &inv_std[0], m, G, Cg, S, eps,
                             L if m + 1 < M else 0, stream)
        else:
            for m in prange(M, schedule='static', num_threads=nt):
                _row_forward(&x[0, 0, 0], &gamma[0], &beta[0], &y[0, 0, 0], &mean[0], &inv_std[0], m, G, Cg, S, eps,
                             L if m + 1 < M else 0, stream)


def row_norm_backward(const floating[:, :, ::1] dout, const floating[:, :, ::1] x, Py_ssize_t G,
                      const floating[::1] gamma, const double[::1] mean, const double[::1] inv_std,
                      floating[:, :, ::1] dx, double[:, :, ::1] partials, double[::1] dgamma, double[::1] dbeta,
                      bint compute_dx, bint stream, int n_threads):
    """Backward of row_norm_forward. The rows are cut into K = partials.shape[0] fixed chunks (K from the shape
    only); chunk k sums dgamma into partials[k, 0] and dbeta into partials[k, 1], which are then added in order by
    _add_chunk_sums (the same layout as the "rows" plan's (2 K, P) scratch; walking k for one j at a time instead took
    a quarter of a (256, 4096) LayerNorm backward). ``stream``: dx is written with non-temporal stores."""
    cdef Py_ssize_t M = x.shape[0], Cg = x.shape[1], S = x.shape[2], K = partials.shape[0], L = Cg * S
    cdef Py_ssize_t P = partials.shape[2], k, m, lo, hi
    partials[:, :, :] = 0
    if M == 0 or Cg == 0 or S == 0:
        dgamma[:] = 0
        dbeta[:] = 0
        return
    cdef int nt = _threads_for(M * Cg * S, K, n_threads)
    with nogil:
        for k in prange(K, schedule='static', num_threads=nt):
            lo = (k * M) // K
            hi = ((k + 1) * M) // K
            m = lo
            if S == 1 and G == 1:         # LayerNorm: rows in pairs from the chunk's first (see _row_pair_backward)
                while m + 1 < hi:
                    _row_pair_backward(&dout[0, 0, 0], &x[0, 0, 0], &gamma[0], &mean[0], &inv_std[0], &dx[0, 0, 0],
                                       &partials[k, 0, 0], &partials[k, 1, 0], m, L, compute_dx,
                                       2 * L if m + 3 < hi else 0, stream)
                    m = m + 2
            while m < hi:
                _row_backward(&dout[0, 0, 0], &x[0, 0, 0], &gamma[0], &mean[0], &inv_std[0], &dx[0, 0, 0],
                              &partials[k, 0, 0], &partials[k, 1, 0], m, G, Cg, S, compute_dx,
                              L if m + 1 < hi else 0, stream)
                m = m + 1
        _add_chunk_sums(&partials[0, 0, 0], K, P, 0, P, &dgamma[0], &dbeta[0])

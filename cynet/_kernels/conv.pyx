"""Convolution and pooling kernels: im2col / col2im for Conv2d's matrix products, 2-d max and average pooling.

Private: only ``cynet.nn.conv`` calls these. Contract of every kernel here:
- arrays are C-contiguous memoryviews of one floating type (float32 or float64); shapes are validated by the caller
  and re-checked here where a wrong one would be out of bounds (a ValueError before any work);
- no allocation and no Python object inside the loops: the GIL is released for the whole computation;
- the result does not depend on ``n_threads``: im2col writes each row of ``cols`` from one thread; col2im and the
  pooling backward accumulate each input channel (plane) on one thread, in a fixed order.

Layout of the column matrix (the Caffe convention, with the batch inside the columns so that one matrix product
covers the whole batch): for a (N, C, H, W) input, a kh x kw kernel, stride s and zero padding p,
OH = (H + 2p - kh) // s + 1, OW = (W + 2p - kw) // s + 1, K = C kh kw, L = OH OW:

    cols[(c kh + a) kw + b, (n OH + i) OW + j] = x[n, c, i s - p + a, j s - p + b]   (0 outside the image)

so that Conv2d's forward is ``W.reshape(F, K) @ cols`` (F, N L).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t

from cynet._kernels._openmp cimport PARALLEL_MIN_ELEMENTS


cdef inline int _threads(Py_ssize_t work, Py_ssize_t tasks, int n_threads) noexcept nogil:
    """Threads for `tasks` independent tasks worth `work` elements: 1 (serial) below PARALLEL_MIN_ELEMENTS."""
    if n_threads <= 1 or work < PARALLEL_MIN_ELEMENTS or tasks < 2:
        return 1
    return n_threads if n_threads < tasks else <int>tasks


cdef inline void _valid_range(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size, Py_ssize_t n_out,
                              Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the outputs o < n_out whose input position o * stride + offset lies in [0, size)."""
    cdef Py_ssize_t first = 0, last
    if offset < 0:
        first = (-offset + stride - 1) // stride
    if offset >= size:
        lo[0] = hi[0] = n_out
        return
    last = (size - 1 - offset) // stride + 1
    lo[0] = min(first, n_out)
    hi[0] = max(lo[0], min(last, n_out))


# ---------------------------------------------------------------------------------------------------------------------
# im2col: one row of cols per (c, a, b), each row written by one thread; a row holds, image after image and output
# row after output row, the input values under kernel position (a, b) (zero where that falls in the padding).

cdef inline bint _same_width_run(Py_ssize_t H, Py_ssize_t W, Py_ssize_t a, Py_ssize_t b, Py_ssize_t pad,
                                 Py_ssize_t OH, Py_ssize_t* i0, Py_ssize_t* i1, Py_ssize_t* shift, Py_ssize_t* t0,
                                 Py_ssize_t* t1) noexcept nogil:
    """Stride 1 and OW == W, kernel offset (a, b): output position t = i W + j reads (or, for col2im, adds into) plane
    position t + shift. Sets the valid output rows [i0, i1) and the run [t0, t1) of t whose plane positions lie
    inside the plane (it covers every valid (i, j); the rest of it falls on the columns outside [j0, j1), which the
    callers zero); False when no output row is valid."""
    i0[0] = max(0, pad - a)
    i1[0] = min(OH, H + pad - a)
    shift[0] = (a - pad) * W + (b - pad)
    t0[0] = max(i0[0] * W, -shift[0])
    t1[0] = min(i1[0] * W, H * W - shift[0])
    return i1[0] > i0[0]


cdef inline void _zero_columns_outside(floating* block, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t W, Py_ssize_t j0,
                                       Py_ssize_t j1) noexcept nogil:
    """block[i W + j] = 0 for the rows [i0, i1) and the columns outside [j0, j1)."""
    cdef Py_ssize_t i, j
    for i in range(i0, i1):
        for j in range(j0):
            block[i * W + j] = 0
        for j in range(j1, W):
            block[i * W + j] = 0


cdef void _im2col_block_same_width(const floating* plane, floating* out, Py_ssize_t H, Py_ssize_t W,
                                   Py_ssize_t a, Py_ssize_t b, Py_ssize_t pad, Py_ssize_t OH, Py_ssize_t j0,
                                   Py_ssize_t j1) noexcept nogil:
    """One image's OH x W block of a row of cols when stride is 1 and OW == W (the "same" padding of every CIFAR net's
    3x3 layers): out[i W + j] = plane[(i + a - pad) W + j + b - pad] is one shifted copy of the plane over the valid
    output rows, then the columns outside [j0, j1) (which the copy filled from the neighbouring row) and the rows
    outside the image set to zero. One long loop instead of three short ones per output row: (56, 64, 8, 8) into
    3x3 columns 1.48 -> 0.78 ms on one thread, 0.76 -> 0.38 on two; (28, 32, 16, 16) 0.82 -> 0.45 and 0.41 -> 0.22
    (an 8.3 MB memset takes 0.29 ms). Only copies: the same columns as the row-by-row form."""
    cdef Py_ssize_t i0, i1, shift, t0, t1, t
    if not _same_width_run(H, W, a, b, pad, OH, &i0, &i1, &shift, &t0, &t1):
        for t in range(OH * W):
            out[t] = 0
        return
    for t in range(i0 * W):
        out[t] = 0
    for t in range(t0, t1):
        out[t] = plane[t + shift]
    _zero_columns_outside(out, i0, i1, W, j0, j1)
    for t in range(i1 * W, OH * W):
        out[t] = 0


cdef void _im2col_row(const floating* x, floating* row, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                      Py_ssize_t c, Py_ssize_t a, Py_ssize_t b, Py_ssize_t stride, Py_ssize_t pad, Py_ssize_t OH,
                      Py_ssize_t OW) noexcept nogil:
    cdef Py_ssize_t n, i, j, j0, j1, src_i
    cdef const floating* plane
    cdef const floating* line
    cdef floating* out
    _valid_range(b - pad, stride, W, OW, &j0, &j1)
    if stride == 1 and OW == W:
        for n in range(N):
            _im2col_block_same_width(x + (n * C + c) * H * W, row + n * OH * OW, H, W, a, b, pad, OH, j0, j1)
        return
    for n in range(N):
        plane = x + (n * C + c) * H * W
        for i in range(OH):
            out = row + (n * OH + i) * OW
            src_i = i * stride - pad + a
            if src_i < 0 or src_i >= H:
                for j in range(OW):
                    out[j] = 0
                continue
            line = plane + src_i * W + (b - pad)
            for j in range(j0):
                out[j] = 0
            if stride == 1:
                for j in range(j0, j1):
                    out[j] = line[j]
            else:
                for j in range(j0, j1):
                    out[j] = line[j * stride]
            for j in range(j1, OW):
                out[j] = 0


def _check_columns(str op, Py_ssize_t rows, Py_ssize_t columns, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H,
                   Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride, Py_ssize_t pad):
    """``(OH, OW)``; ValueError unless the settings are valid and the column matrix is (C kh kw, N OH OW) for the
    image shape."""
    cdef Py_ssize_t OH = (H + 2 * pad - kh) // stride + 1, OW = (W + 2 * pad - kw) // stride + 1
    if kh < 1 or kw < 1 or stride < 1 or pad < 0 or OH < 1 or OW < 1 or rows != C * kh * kw \
            or columns != N * OH * OW:
        raise ValueError(f"cynet._kernels.conv.{op}: the columns must be ({C * kh * kw}, {N * OH * OW}) for images "
                         f"{(N, C, H, W)}, kernel ({kh}, {kw}), stride {stride}, padding {pad}; got ({rows}, "
                         f"{columns})")
    return OH, OW


def im2col(const floating[:, :, :, ::1] x, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride, Py_ssize_t pad,
           floating[:, ::1] cols, int n_threads):
    """Fill ``cols`` (C kh kw, N OH OW) from ``x`` (N, C, H, W) (see the module docstring)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH, OW
    OH, OW = _check_columns("im2col", cols.shape[0], cols.shape[1], N, C, H, W, kh, kw, stride, pad)
    cdef Py_ssize_t K = C * kh * kw, k
    if K == 0 or N == 0:
        return
    cdef int nt = _threads(K * N * OH * OW, K, n_threads)
    with nogil:
        for k in prange(K, schedule="static", num_threads=nt):
            _im2col_row(&x[0, 0, 0, 0], &cols[k, 0], N, C, H, W, k // (kh * kw), (k // kw) % kh, k % kw, stride,
                        pad, OH, OW)


# ---------------------------------------------------------------------------------------------------------------------
# The product's layout and the images' (Conv2d keeps the (F, N L) arrays between passes, so that only its output and
# the input gradient are fresh arrays):
#   to_images:  y[n, f, l] = src[f, n L + l] + bias[f]   (bias 0 without one)
#   to_columns: dst[f, n L + l] = src[n, f, l]
# One (n, f) row of L values per task: contiguous copies.

def to_images(const floating[:, ::1] src, const floating[::1] bias, bint has_bias, floating[:, :, ::1] y,
              int n_threads):
    """``y`` (N, F, L) from the product ``src`` (F, N L), plus ``bias`` (F,) per channel when ``has_bias``."""
    cdef Py_ssize_t N = y.shape[0], F = y.shape[1], L = y.shape[2], task, n, f, l
    if src.shape[0] != F or src.shape[1] != N * L or (has_bias and bias.shape[0] != F):
        raise ValueError(f"cynet._kernels.conv.to_images: src must be {(F, N * L)} (and bias ({F},)) for y "
                         f"{(N, F, L)}, got {(src.shape[0], src.shape[1])}")
    if N * F * L == 0:
        return
    cdef int nt = _threads(N * F * L, N * F, n_threads)
    cdef const floating* row
    cdef floating* out
    cdef floating shift
    with nogil:
        for task in prange(N * F, schedule="static", num_threads=nt):
            n = task // F
            f = task % F
            row = &src[f, 0] + n * L
            out = &y[n, f, 0]
            shift = bias[f] if has_bias else 0
            if has_bias:
                for l in range(L):
                    out[l] = row[l] + shift
            else:
                for l in range(L):
                    out[l] = row[l]


def to_columns(const floating[:, :, ::1] src, floating[:, ::1] dst, int n_threads):
    """``dst`` (F, N L) from ``src`` (N, F, L): the images' layout as the product's."""
    cdef Py_ssize_t N = src.shape[0], F = src.shape[1], L = src.shape[2], task, n, f, l
    if dst.shape[0] != F or dst.shape[1] != N * L:
        raise ValueError(f"cynet._kernels.conv.to_columns: dst must be {(F, N * L)} for src {(N, F, L)}, got "
                         f"{(dst.shape[0], dst.shape[1])}")
    if N * F * L == 0:
        return
    cdef int nt = _threads(N * F * L, N * F, n_threads)
    cdef const floating* row
    cdef floating* out
    with nogil:
        for task in prange(N * F, schedule="static", num_threads=nt):
            n = task // F
            f = task % F
            row = &src[n, f, 0]
            out = &dst[f, 0] + n * L
            for l in range(L):
                out[l] = row[l]


# ---------------------------------------------------------------------------------------------------------------------
# Row products for a small weight gradient: out[a, b] = sum_t A[a, t] B[b, t] and row_sums[a] = sum_t A[a, t] for
# A (M, T) and B (P, T), C-contiguous, out and row_sums float64. Conv2d's dW = dout cols^T (A = its (F, N L) dout,
# B = the (C kh kw, N L) columns) and db = the row sums, where F x C kh kw is too small for BLAS to run well (the
# first layer of a CIFAR net: 32 x 27 outputs of a 76,800-long sum per chunk; OpenBLAS packs both operands whole for
# each call: 3.2 ms with the NumPy row sums on two threads, 3.7 on one; here 1.3 and 2.4 ms, rows on 64-byte lines).
#
# The order of every sum, fixed by T alone: t is cut into blocks of ROW_PRODUCT_BLOCK values; within a block the
# products go to 64 bytes of lanes (16 float32 or 8 float64: lane l takes t = t0 + i * lanes + l), the values after
# the last full set of lanes then one by one into a tail sum; the lanes (in float64) are added by folding halves
# (l and l + 8, then l + 4, l + 2, l + 1), plus the tail, and the block's total is added to the float64 result,
# block after block. Outputs are computed in tiles of TA x TB (wider where the ISA has more registers: 4 x 4 with
# AVX-512's 32, 2 x 2 with AVX2's 16, 1 x 2 else), a tile on one thread, so tile shape and thread count only group
# the sums: the same bits everywhere. No fused multiply-add: a product is rounded to the input type before it is
# added, as in every other kernel here.
cdef enum:
    ROW_PRODUCT_BLOCK = 1024      # values per block (a 32 + 27-row block of float32, 236 KB, stays in L2)

cdef extern from *:
    """
    #include <string.h>
    #if defined(__AVX512F__)
    #define CYNET_RP_TA 4
    #define CYNET_RP_TB 4
    #elif defined(__AVX2__) || defined(__AVX__)
    #define CYNET_RP_TA 2
    #define CYNET_RP_TB 2
    #else
    #define CYNET_RP_TA 1
    #define CYNET_RP_TB 2
    #endif
    /* The tile sizes each ISA's build instantiates: TA x TB and the edges' smaller ones (up to 3 x 3 at a corner). */
    #define CYNET_RP_CASE(S, a, b) case (a) * 8 + (b):                                                            \
        cynet_rp_tile_##S##_##a##_##b(A, B, len, t0, t1, a0, b0, out, P); break;
    #define CYNET_RP_TILES_UPTO2(T, S, L) CYNET_RP_TILE(T, S, L, 1, 1) CYNET_RP_TILE(T, S, L, 1, 2)                \
        CYNET_RP_TILE(T, S, L, 2, 1) CYNET_RP_TILE(T, S, L, 2, 2)
    #define CYNET_RP_CASES_UPTO2(S) CYNET_RP_CASE(S, 1, 1) CYNET_RP_CASE(S, 1, 2) CYNET_RP_CASE(S, 2, 1)           \
        CYNET_RP_CASE(S, 2, 2)
    #if CYNET_RP_TA == 4 && CYNET_RP_TB == 4
    #define CYNET_RP_TILES(T, S, L) CYNET_RP_TILES_UPTO2(T, S, L)                                                 \
        CYNET_RP_TILE(T, S, L, 1, 3) CYNET_RP_TILE(T, S, L, 2, 3) CYNET_RP_TILE(T, S, L, 3, 1)                    \
        CYNET_RP_TILE(T, S, L, 3, 2) CYNET_RP_TILE(T, S, L, 3, 3) CYNET_RP_TILE(T, S, L, 4, 1)                    \
        CYNET_RP_TILE(T, S, L, 4, 2) CYNET_RP_TILE(T, S, L, 4, 3) CYNET_RP_TILE(T, S, L, 4, 4)                    \
        CYNET_RP_TILE(T, S, L, 1, 4) CYNET_RP_TILE(T, S, L, 2, 4) CYNET_RP_TILE(T, S, L, 3, 4)
    #define CYNET_RP_CASES(S) CYNET_RP_CASES_UPTO2(S)                                                             \
        CYNET_RP_CASE(S, 1, 3) CYNET_RP_CASE(S, 2, 3) CYNET_RP_CASE(S, 3, 1) CYNET_RP_CASE(S, 3, 2)               \
        CYNET_RP_CASE(S, 3, 3) CYNET_RP_CASE(S, 4, 1) CYNET_RP_CASE(S, 4, 2) CYNET_RP_CASE(S, 4, 3)               \
        CYNET_RP_CASE(S, 4, 4) CYNET_RP_CASE(S, 1, 4) CYNET_RP_CASE(S, 2, 4) CYNET_RP_CASE(S, 3, 4)
    #elif CYNET_RP_TA == 2 && CYNET_RP_TB == 2
    #define CYNET_RP_TILES(T, S, L) CYNET_RP_TILES_UPTO2(T, S, L)
    #define CYNET_RP_CASES(S) CYNET_RP_CASES_UPTO2(S)
    #else
    #define CYNET_RP_TILES(T, S, L) CYNET_RP_TILE(T, S, L, 1, 1) CYNET_RP_TILE(T, S, L, 1, 2)
    #define CYNET_RP_CASES(S) CYNET_RP_CASE(S, 1, 1) CYNET_RP_CASE(S, 1, 2)
    #endif
    /* 64 bytes of lanes: with GCC/Clang, vectors of the target's width: one 64-byte vector for AVX-512, two 32-byte
       halves for AVX2, four 16-byte quarters for SSE2 or NEON (a 64-byte vector is not a register type on a narrower
       target: GCC kept it on the stack, and the first CIFAR layer, conv/c3-32 forward and backward at one thread,
       took 42.8 ms in the AVX2 variant and 35-37 in SSE2's against 18-22 for AVX-512; in halves and quarters 21.5-23
       and 25-26); elsewhere (or with -DCYNET_SCALAR_LANES) an array stepped lane by lane: each lane sees the same
       operations in every form. */
    #if defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 9) && !defined(CYNET_SCALAR_LANES) \
        && defined(__AVX__) && !defined(__AVX512F__)
    typedef float cynet_rp_h32 __attribute__((vector_size(32)));
    typedef double cynet_rp_h64 __attribute__((vector_size(32)));
    typedef struct { cynet_rp_h32 lo, hi; } cynet_rp_f32;
    typedef struct { cynet_rp_h64 lo, hi; } cynet_rp_f64;
    #define CYNET_RP_ZERO(v) ((v).lo = (__typeof__((v).lo)){0}, (v).hi = (__typeof__((v).hi)){0})
    #define CYNET_RP_LOAD(v, p) do { __typeof__((v).lo) lo_, hi_;                                                   \
                                     memcpy(&lo_, (p), 32); memcpy(&hi_, (p) + CYNET_RP_HALF(v), 32);              \
                                     (v).lo = lo_; (v).hi = hi_; } while (0)
    #define CYNET_RP_MULADD(s, x, y, L) ((s).lo = (s).lo + (x).lo * (y).lo, (s).hi = (s).hi + (x).hi * (y).hi)
    #define CYNET_RP_ADD(s, x, L) ((s).lo = (s).lo + (x).lo, (s).hi = (s).hi + (x).hi)
    #define CYNET_RP_HALF(v) ((int)(sizeof((v).lo) / sizeof((v).lo[0])))
    #define CYNET_RP_LANE(v, l) ((l) < CYNET_RP_HALF(v) ? (v).lo[(l)] : (v).hi[(l) - CYNET_RP_HALF(v)])
    #elif defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 9) && !defined(CYNET_SCALAR_LANES) \
        && !defined(__AVX512F__)
    /* 16-byte targets (SSE2, NEON): four 16-byte quarters */
    typedef float cynet_rp_q32 __attribute__((vector_size(16)));
    typedef double cynet_rp_q64 __attribute__((vector_size(16)));
    typedef struct { cynet_rp_q32 q0, q1, q2, q3; } cynet_rp_f32;
    typedef struct { cynet_rp_q64 q0, q1, q2, q3; } cynet_rp_f64;
    #define CYNET_RP_ZERO(v) ((v).q0 = (__typeof__((v).q0)){0}, (v).q1 = (v).q0, (v).q2 = (v).q0, (v).q3 = (v).q0)
    #define CYNET_RP_Q(v) ((int)(sizeof((v).q0) / sizeof((v).q0[0])))
    #define CYNET_RP_LOAD(v, p) do { __typeof__((v).q0) q0_, q1_, q2_, q3_;                                      \
                                     memcpy(&q0_, (p), 16); memcpy(&q1_, (p) + CYNET_RP_Q(v), 16);                \
                                     memcpy(&q2_, (p) + 2 * CYNET_RP_Q(v), 16);                                    \
                                     memcpy(&q3_, (p) + 3 * CYNET_RP_Q(v), 16);                                    \
                                     (v).q0 = q0_; (v).q1 = q1_; (v).q2 = q2_; (v).q3 = q3_; } while (0)
    #define CYNET_RP_MULADD(s, x, y, L) ((s).q0 = (s).q0 + (x).q0 * (y).q0, (s).q1 = (s).q1 + (x).q1 * (y).q1,      \
                                         (s).q2 = (s).q2 + (x).q2 * (y).q2, (s).q3 = (s).q3 + (x).q3 * (y).q3)
    #define CYNET_RP_ADD(s, x, L) ((s).q0 = (s).q0 + (x).q0, (s).q1 = (s).q1 + (x).q1, (s).q2 = (s).q2 + (x).q2,      \
                                   (s).q3 = (s).q3 + (x).q3)
    #define CYNET_RP_LANE(v, l) ((l) < CYNET_RP_Q(v) ? (v).q0[(l)]                                               \
                                 : (l) < 2 * CYNET_RP_Q(v) ? (v).q1[(l) - CYNET_RP_Q(v)]                              \
                                 : (l) < 3 * CYNET_RP_Q(v) ? (v).q2[(l) - 2 * CYNET_RP_Q(v)]                          \
                                 : (v).q3[(l) - 3 * CYNET_RP_Q(v)])
    #elif defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 9) && !defined(CYNET_SCALAR_LANES)
    typedef float cynet_rp_f32 __attribute__((vector_size(64)));
    typedef double cynet_rp_f64 __attribute__((vector_size(64)));
    #define CYNET_RP_ZERO(v) memset(&(v), 0, 64)
    #define CYNET_RP_LOAD(v, p) memcpy(&(v), (p), 64)
    #define CYNET_RP_MULADD(s, x, y, L) (s) = (s) + (x) * (y)
    #define CYNET_RP_ADD(s, x, L) (s) = (s) + (x)
    #define CYNET_RP_LANE(v, l) ((v)[l])
    #else
    typedef struct { float lane[16]; } cynet_rp_f32;
    typedef struct { double lane[8]; } cynet_rp_f64;
    #define CYNET_RP_ZERO(v) memset(&(v), 0, 64)
    #define CYNET_RP_LOAD(v, p) memcpy(&(v), (p), 64)
    #define CYNET_RP_MULADD(s, x, y, L) do { int l_; for (l_ = 0; l_ < (L); l_++)                                  \
                                             (s).lane[l_] = (s).lane[l_] + (x).lane[l_] * (y).lane[l_]; } while (0)
    #define CYNET_RP_ADD(s, x, L) do { int l_; for (l_ = 0; l_ < (L); l_++)                                     \
                                           (s).lane[l_] = (s).lane[l_] + (x).lane[l_]; } while (0)
    #define CYNET_RP_LANE(v, l) ((v).lane[l])
    #endif
    /* The total of 16 (or 8) float64 lanes, folding halves: l + (l + 8), then l + (l + 4), l + (l + 2), l + (l + 1)
       (constant bounds: vector instructions). */
    static inline double cynet_rp_fold16(double* t) {
        int i;
        for (i = 0; i < 8; i++) t[i] = t[i] + t[i + 8];
        for (i = 0; i < 4; i++) t[i] = t[i] + t[i + 4];
        for (i = 0; i < 2; i++) t[i] = t[i] + t[i + 2];
        return t[0] + t[1];
    }
    static inline double cynet_rp_fold8(double* t) {
        int i;
        for (i = 0; i < 4; i++) t[i] = t[i] + t[i + 4];
        for (i = 0; i < 2; i++) t[i] = t[i] + t[i + 2];
        return t[0] + t[1];
    }
    #define cynet_rp_tree(t, n) ((n) == 16 ? cynet_rp_fold16(t) : cynet_rp_fold8(t))
    /* One block [t0, t1) of a RA x RB tile: rows a0.. of A against rows b0.. of B, each block total added into
       out[a][b] (P values per row of out). RA and RB are constants: the sums stay in registers. */
    #define CYNET_RP_TILE(T, SUFFIX, L, RA, RB)                                                                   \
    static void cynet_rp_tile_##SUFFIX##_##RA##_##RB(const T* A, const T* B, Py_ssize_t len, Py_ssize_t t0,      \
                                                     Py_ssize_t t1, Py_ssize_t a0, Py_ssize_t b0, double* out,    \
                                                     Py_ssize_t P) {                                              \
        cynet_rp_##SUFFIX s[RA][RB], x[RA], y[RB];                                                                \
        T tail[RA][RB];                                                                                           \
        double lanes[16];                                                                                         \
        Py_ssize_t t = t0;                                                                                        \
        int a, b, l;                                                                                              \
        for (a = 0; a < RA; a++) for (b = 0; b < RB; b++) { CYNET_RP_ZERO(s[a][b]); tail[a][b] = 0; }            \
        for (; t + (L) <= t1; t += (L)) {                                                                         \
            for (a = 0; a < RA; a++) CYNET_RP_LOAD(x[a], A + (a0 + a) * len + t);                                 \
            for (b = 0; b < RB; b++) CYNET_RP_LOAD(y[b], B + (b0 + b) * len + t);                                 \
            for (a = 0; a < RA; a++) for (b = 0; b < RB; b++) CYNET_RP_MULADD(s[a][b], x[a], y[b], L);           \
        }                                                                                                         \
        for (; t < t1; t++)                                                                                       \
            for (a = 0; a < RA; a++) for (b = 0; b < RB; b++)                                                     \
                tail[a][b] = tail[a][b] + A[(a0 + a) * len + t] * B[(b0 + b) * len + t];                         \
        for (a = 0; a < RA; a++) for (b = 0; b < RB; b++) {                                                       \
            for (l = 0; l < (L); l++) lanes[l] = (double)CYNET_RP_LANE(s[a][b], l);                               \
            out[(a0 + a) * P + b0 + b] += cynet_rp_tree(lanes, (L)) + (double)tail[a][b];                         \
        }                                                                                                         \
    }
    #define CYNET_RP_ROW_SUM(T, SUFFIX, L, R)                                                                     \
    static inline void cynet_rp_row_sum_##SUFFIX##_##R(const T* A, Py_ssize_t len, Py_ssize_t t0, Py_ssize_t t1, \
                                                       Py_ssize_t a0, double* row_sums) {                         \
        cynet_rp_##SUFFIX s[R], x;                                                                                \
        T tail[R];                                                                                                \
        double lanes[16];                                                                                         \
        Py_ssize_t t = t0;                                                                                        \
        int l, r;                                                                                                 \
        for (r = 0; r < R; r++) { CYNET_RP_ZERO(s[r]); tail[r] = 0; }                                            \
        for (; t + (L) <= t1; t += (L))                                                                           \
            for (r = 0; r < R; r++) { CYNET_RP_LOAD(x, A + (a0 + r) * len + t); CYNET_RP_ADD(s[r], x, L); }       \
        for (; t < t1; t++)                                                                                       \
            for (r = 0; r < R; r++) tail[r] = tail[r] + A[(a0 + r) * len + t];                                    \
        for (r = 0; r < R; r++) {                                                                                 \
            for (l = 0; l < (L); l++) lanes[l] = (double)CYNET_RP_LANE(s[r], l);                                  \
            row_sums[a0 + r] += cynet_rp_tree(lanes, (L)) + (double)tail[r];                                      \
        }                                                                                                         \
    }
    #define CYNET_ROW_PRODUCTS(T, SUFFIX, L)                                                                      \
    CYNET_RP_TILES(T, SUFFIX, L)                                                                                  \
    /* row_sums[a] += the block's sum of A's row a, in the lanes' order, for R rows a0.. at once (R chains of     \
       additions side by side). */                                                                               \
    CYNET_RP_ROW_SUM(T, SUFFIX, L, 4)                                                                             \
    CYNET_RP_ROW_SUM(T, SUFFIX, L, 1)                                                                             \
    static void cynet_rp_row_sums_##SUFFIX(const T* A, Py_ssize_t len, Py_ssize_t t0, Py_ssize_t t1,             \
                                           Py_ssize_t a0, Py_ssize_t M, double* row_sums) {                      \
        if (a0 + 4 <= M) { cynet_rp_row_sum_##SUFFIX##_4(A, len, t0, t1, a0, row_sums); return; }                 \
        for (; a0 < M; a0++) cynet_rp_row_sum_##SUFFIX##_1(A, len, t0, t1, a0, row_sums);                         \
    }                                                                                                             \
    /* Tile w of one block: the tiles cover out row-major, TA x TB each (smaller at the bottom and right edges);  \
       each size a call with constant bounds, so that the compiler keeps the sums in registers. */                \
    static void cynet_rp_item_##SUFFIX(const T* A, const T* B, Py_ssize_t M, Py_ssize_t P, Py_ssize_t len,        \
                                       Py_ssize_t t0, Py_ssize_t t1, Py_ssize_t w, double* out) {                 \
        Py_ssize_t gp = (P + CYNET_RP_TB - 1) / CYNET_RP_TB;                                                      \
        Py_ssize_t a0 = (w / gp) * CYNET_RP_TA, b0 = (w % gp) * CYNET_RP_TB;                                      \
        int ta = (int)(M - a0 < CYNET_RP_TA ? M - a0 : CYNET_RP_TA);                                              \
        int tb = (int)(P - b0 < CYNET_RP_TB ? P - b0 : CYNET_RP_TB);                                              \
        switch (ta * 8 + tb) {                                                                                    \
            CYNET_RP_CASES(SUFFIX)                                                                                \
        }                                                                                                         \
    }
    CYNET_ROW_PRODUCTS(float, f32, 16)
    CYNET_ROW_PRODUCTS(double, f64, 8)
    static inline Py_ssize_t cynet_rp_items(Py_ssize_t M, Py_ssize_t P) {
        return ((M + CYNET_RP_TA - 1) / CYNET_RP_TA) * ((P + CYNET_RP_TB - 1) / CYNET_RP_TB);
    }
    """
    Py_ssize_t cynet_rp_items(Py_ssize_t M, Py_ssize_t P) noexcept nogil
    void cynet_rp_item_f32(const float* A, const float* B, Py_ssize_t M, Py_ssize_t P, Py_ssize_t len, Py_ssize_t t0,
                           Py_ssize_t t1, Py_ssize_t w, double* out) noexcept nogil
    void cynet_rp_item_f64(const double* A, const double* B, Py_ssize_t M, Py_ssize_t P, Py_ssize_t len,
                           Py_ssize_t t0, Py_ssize_t t1, Py_ssize_t w, double* out) noexcept nogil
    void cynet_rp_row_sums_f32(const float* A, Py_ssize_t len, Py_ssize_t t0, Py_ssize_t t1, Py_ssize_t a0,
                               Py_ssize_t M, double* row_sums) noexcept nogil
    void cynet_rp_row_sums_f64(const double* A, Py_ssize_t len, Py_ssize_t t0, Py_ssize_t t1, Py_ssize_t a0,
                               Py_ssize_t M, double* row_sums) noexcept nogil


cdef void _row_products_share(const floating* A, const floating* B, Py_ssize_t M, Py_ssize_t P, Py_ssize_t T,
                              double* out, double* row_sums, bint sums, int part, int parts) noexcept nogil:
    """Thread ``part`` of ``parts``: block after block, its work items (every parts-th) and its rows' sums."""
    cdef Py_ssize_t items = cynet_rp_items(M, P), t0 = 0, t1, w, a
    while t0 < T:
        t1 = min(T, t0 + ROW_PRODUCT_BLOCK)
        w = part
        while w < items:
            if floating is float:
                cynet_rp_item_f32(A, B, M, P, T, t0, t1, w, out)
            else:
                cynet_rp_item_f64(A, B, M, P, T, t0, t1, w, out)
            w += parts
        if sums:
            a = 4 * part                      # rows four at a time: group g is rows 4g .. 4g + 3
            while a < M:
                if floating is float:
                    cynet_rp_row_sums_f32(A, T, t0, t1, a, M, row_sums)
                else:
                    cynet_rp_row_sums_f64(A, T, t0, t1, a, M, row_sums)
                a += 4 * parts
        t0 = t1


def row_products(const floating[:, ::1] A, const floating[:, ::1] B, double[:, ::1] out, double[::1] row_sums,
                 bint sums, int n_threads):
    """``out`` (M, P) = A B^T and, with ``sums``, ``row_sums`` (M,) = A's row sums, in float64, for A (M, T) and
    B (P, T) (see above for the order of the sums): Conv2d's weight and bias gradients where they are small."""
    cdef Py_ssize_t M = A.shape[0], P = B.shape[0], T = A.shape[1], part
    if B.shape[1] != T or out.shape[0] != M or out.shape[1] != P or (sums and row_sums.shape[0] != M):
        raise ValueError(f"cynet._kernels.conv.row_products: A {(M, T)} and B {(P, B.shape[1])} need out {(M, P)} "
                         f"and row_sums ({M},); got {(out.shape[0], out.shape[1])} and ({row_sums.shape[0]},)")
    out[:, :] = 0
    if sums:
        row_sums[:] = 0
    if M == 0 or P == 0 or T == 0:
        return
    cdef int nt = _threads(M * P * T // 8 + (M + P) * T, cynet_rp_items(M, P), n_threads)
    with nogil:
        if nt == 1:
            _row_products_share(&A[0, 0], &B[0, 0], M, P, T, &out[0, 0], &row_sums[0] if sums else NULL, sums, 0, 1)
        else:
            for part in prange(nt, schedule="static", num_threads=nt):
                _row_products_share(&A[0, 0], &B[0, 0], M, P, T, &out[0, 0], &row_sums[0] if sums else NULL, sums,
                                    part, nt)


# ---------------------------------------------------------------------------------------------------------------------
# col2im, the adjoint of im2col: dx[n, c, i s - p + a, j s - p + b] += dcols[(c kh + a) kw + b, (n OH + i) OW + j].
# One channel per thread (all its kh kw rows, in order), so no two threads add into the same value.

cdef void _col2im_block_same_width(floating* src, floating* plane, Py_ssize_t H, Py_ssize_t W, Py_ssize_t a,
                                   Py_ssize_t b, Py_ssize_t pad, Py_ssize_t OH, Py_ssize_t j0,
                                   Py_ssize_t j1) noexcept nogil:
    """The adjoint of _im2col_block_same_width: plane[(i + a - pad) W + j + b - pad] += src[i W + j] over the valid
    rows and columns as one shifted run, after setting src's columns outside [j0, j1) (the padding's gradient, never
    added) to +0. Adding +0 leaves every value as it was: dx starts at +0 and a sum that starts at +0 is never -0 in
    round-to-nearest. (56, 64, 8, 8) from 3x3 columns 1.07 -> 0.81 ms on one thread, 0.56 -> 0.43 on two;
    (28, 32, 16, 16) 0.69 -> 0.57 and 0.38 -> 0.29 ms."""
    cdef Py_ssize_t i0, i1, shift, t0, t1, t
    if not _same_width_run(H, W, a, b, pad, OH, &i0, &i1, &shift, &t0, &t1):
        return
    _zero_columns_outside(src, i0, i1, W, j0, j1)
    for t in range(t0, t1):
        plane[t + shift] = plane[t + shift] + src[t]


cdef void _col2im_channel(floating* dcols, floating* dx, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H,
                          Py_ssize_t W, Py_ssize_t c, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride,
                          Py_ssize_t pad, Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    cdef Py_ssize_t a, b, n, i, j, j0, j1, dst_i, L = N * OH * OW
    cdef floating* row
    cdef const floating* src
    cdef floating* line
    for a in range(kh):
        for b in range(kw):
            row = dcols + ((c * kh + a) * kw + b) * L
            _valid_range(b - pad, stride, W, OW, &j0, &j1)
            if stride == 1 and OW == W:
                for n in range(N):
                    _col2im_block_same_width(row + n * OH * OW, dx + (n * C + c) * H * W, H, W, a, b, pad, OH, j0,
                                             j1)
                continue
            for n in range(N):
                for i in range(OH):
                    dst_i = i * stride - pad + a
                    if dst_i < 0 or dst_i >= H:
                        continue
                    src = row + (n * OH + i) * OW
                    line = dx + ((n * C + c) * H + dst_i) * W + (b - pad)
                    if stride == 1:
                        for j in range(j0, j1):
                            line[j] = line[j] + src[j]
                    else:
                        for j in range(j0, j1):
                            line[j * stride] = line[j * stride] + src[j]


def col2im(floating[:, ::1] dcols, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride, Py_ssize_t pad,
           floating[:, :, :, ::1] dx, int n_threads):
    """Add the columns ``dcols`` (C kh kw, N OH OW) back into ``dx`` (N, C, H, W), which the caller zeroes first.
    With stride 1 and OW == W the entries of ``dcols`` that fall in the padding are set to zero (a scratch array)."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH, OW
    OH, OW = _check_columns("col2im", dcols.shape[0], dcols.shape[1], N, C, H, W, kh, kw, stride, pad)
    cdef Py_ssize_t K = C * kh * kw, c
    if K == 0 or N == 0:
        return
    cdef int nt = _threads(K * N * OH * OW, C, n_threads)
    with nogil:
        for c in prange(C, schedule="static", num_threads=nt):
            _col2im_channel(&dcols[0, 0], &dx[0, 0, 0, 0], N, C, H, W, c, kh, kw, stride, pad, OH, OW)


cdef enum:
    MAXPOOL_ROW = 512             # the 2x2 form's per-row scratch lives on the stack (wider rows: the generic form)
    MAXPOOL_HALF_ROW = 256        # the narrow 2x2 form's per-window scratch (half its column pairs)


# ---------------------------------------------------------------------------------------------------------------------
# 2-d max pooling over each (n, c) plane:
#   y[i, j] = max over the window rows i s - p ... + kh - 1, columns j s - p ... + kw - 1 inside the plane,
#   idx[i, j] = the flat position (row * W + col) of the first maximum in row-major window order (a NaN counts as
#   maximal, as np.max propagates it); backward: dx[plane, idx] += dout (overlapping windows add up, in order).

cdef void _maxpool_plane(const floating* x, floating* y, int64_t* idx, Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh,
                         Py_ssize_t kw, Py_ssize_t stride, Py_ssize_t pad, Py_ssize_t OH,
                         Py_ssize_t OW) noexcept nogil:
    cdef Py_ssize_t i, j, r, s, r0, r1, s0, s1, where
    cdef floating best, v
    for i in range(OH):
        r0 = max(i * stride - pad, 0)
        r1 = min(i * stride - pad + kh, H)
        for j in range(OW):
            s0 = max(j * stride - pad, 0)
            s1 = min(j * stride - pad + kw, W)
            where = r0 * W + s0
            best = x[where]
            for r in range(r0, r1):
                for s in range(s0, s1):
                    v = x[r * W + s]
                    if v > best or (v != v and best == best):
                        best = v
                        where = r * W + s
            y[i * OW + j] = best
            idx[i * OW + j] = where


# _maxpool2x2_plane's windows (below) for planes of an even width W under 32 (OW < 16 outputs per row): there its
# three loops per output row are shorter than a vector and ran in their scalar remainder code, whose selects became
# branches that random data mispredicts (the (256, 128, 8, 8) float32 forward took 12.2 ms on one thread). Here the
# data-dependent loops run over a whole block of output rows at once: the winners of the column pairs of every input
# row (W even: the pairs of the block are consecutive values), then, after copying each window's two rows' winners
# side by side (a copy: no decision), the window's winner and its place, then the place as an offset in the plane.
# The same comparisons, in the same order, as _maxpool2x2_plane: the same results. Measured (AVX-512 build, one thread,
# float32): (256, 128, 8, 8) 12.2 -> 1.8 ms; per window, even widths 4-14 and 20-28 2.4-7x faster than the row form,
# but W = 16 (OW = 8, whole vectors in the row form) 1.2 against 1.8: that width keeps the row form.
cdef void _maxpool2x2_narrow_plane(const floating* x, floating* y, int64_t* idx, Py_ssize_t W, Py_ssize_t OH,
                                   Py_ssize_t OW) noexcept nogil:
    cdef floating pair_max[MAXPOOL_ROW]
    cdef int32_t pair_right[MAXPOOL_ROW]
    cdef floating high[MAXPOOL_HALF_ROW]
    cdef floating low[MAXPOOL_HALF_ROW]
    cdef int32_t right_high[MAXPOOL_HALF_ROW]
    cdef int32_t right_low[MAXPOOL_HALF_ROW]
    cdef int32_t code[MAXPOOL_HALF_ROW]
    cdef int64_t left[MAXPOOL_HALF_ROW]
    cdef Py_ssize_t rows = MAXPOOL_ROW // W          # output rows per block: their 2 rows x OW pairs fit the scratch
    cdef Py_ssize_t block, i0, n_rows, m, i, j, o, upper, lower
    cdef floating* pairs                               # not const: see _maxpool2x2_plane
    cdef floating a, b, h, w
    cdef int32_t take, lower_wins
    for block in range((OH + rows - 1) // rows):
        i0 = block * rows
        n_rows = min(rows, OH - i0)
        pairs = <floating*>(x + 2 * i0 * W)
        for m in range(n_rows * W):                    # the column pairs of 2 n_rows input rows
            a = pairs[2 * m]
            b = pairs[2 * m + 1]
            take = (b > a) | ((b != b) & (a == a))
            pair_max[m] = b if take else a
            pair_right[m] = take
        for i in range(n_rows):
            upper = 2 * i * OW
            lower = upper + OW
            for j in range(OW):
                o = i * OW + j
                high[o] = pair_max[upper + j]
                low[o] = pair_max[lower + j]
                right_high[o] = pair_right[upper + j]
                right_low[o] = pair_right[lower + j]
                left[o] = 2 * (i0 + i) * W + 2 * j
        for o in range(n_rows * OW):
            h = high[o]
            w = low[o]
            lower_wins = (w > h) | ((w != w) & (h == h))
            y[i0 * OW + o] = w if lower_wins else h
            code[o] = 2 * lower_wins + (right_low[o] if lower_wins else right_high[o])
        for o in range(n_rows * OW):
            idx[i0 * OW + o] = left[o] + (code[o] & 1) + (code[o] >> 1) * W


# The common 2x2 window with stride 2 and no padding (the CNN's pooling), with the same results as _maxpool_plane.
# Each window a b / c d is settled as the row-major scan settles it: the first maximum of each row (a or b, c or d; a
# NaN counts as maximal, the first one wins), then the lower row's only where it is strictly greater (or a NaN over a
# number), so ties go to the upper row, as in the scan. Three loops per output row, each of a form GCC vectorises
# (a select whose condition compares values selected in the same loop is not: "no vectype"): the rows' winners from
# the even and odd columns, then the window's winner and its place (0..3), then the place as an offset in the plane.
cdef void _maxpool2x2_plane(const floating* x, floating* y, int64_t* idx, Py_ssize_t W, Py_ssize_t OH,
                            Py_ssize_t OW) noexcept nogil:
    cdef floating high[MAXPOOL_ROW]
    cdef floating low[MAXPOOL_ROW]
    cdef int32_t right_high[MAXPOOL_ROW]
    cdef int32_t right_low[MAXPOOL_ROW]
    cdef int32_t code[MAXPOOL_ROW]
    cdef Py_ssize_t i, j
    cdef floating* upper       # not const: GCC 12 finds no vector type for these loads through a const pointer
    cdef floating* lower
    cdef floating* y_row
    cdef int64_t* idx_row
    cdef floating a, b, c, d, h, w
    cdef int32_t take, lower_wins
    cdef int64_t top
    for i in range(OH):
        top = 2 * i * W
        upper = <floating*>(x + top)
        lower = upper + W
        y_row = y + i * OW
        idx_row = idx + i * OW
        for j in range(OW):
            a = upper[2 * j]
            b = upper[2 * j + 1]
            take = (b > a) | ((b != b) & (a == a))
            high[j] = b if take else a
            right_high[j] = take
            c = lower[2 * j]
            d = lower[2 * j + 1]
            take = (d > c) | ((d != d) & (c == c))
            low[j] = d if take else c
            right_low[j] = take
        for j in range(OW):
            h = high[j]
            w = low[j]
            lower_wins = (w > h) | ((w != w) & (h == h))
            y_row[j] = w if lower_wins else h
            code[j] = 2 * lower_wins + (right_low[j] if lower_wins else right_high[j])
        for j in range(OW):
            idx_row[j] = top + 2 * j + (code[j] & 1) + (code[j] >> 1) * W


def maxpool_forward(const floating[:, :, :, ::1] x, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride,
                    Py_ssize_t pad, floating[:, :, :, ::1] y, int64_t[:, :, :, ::1] idx, int n_threads):
    """Max pooling of ``x`` (N, C, H, W) into ``y`` and the argmax positions ``idx`` (N, C, OH, OW); every window
    overlaps the image (2 pad <= kernel and H, W >= 1: refused otherwise, an empty image's windows hold nothing)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = (H + 2 * pad - kh) // stride + 1, OW = (W + 2 * pad - kw) // stride + 1, p
    if H < 1 or W < 1:
        raise ValueError(f"cynet._kernels.conv.maxpool_forward: x {(N, C, H, W)} has empty images: every window "
                         f"would lie in the padding")
    if kh < 1 or kw < 1 or stride < 1 or pad < 0 or 2 * pad > kh or 2 * pad > kw or OH < 1 or OW < 1 \
            or y.shape[0] != N or y.shape[1] != C or y.shape[2] != OH or y.shape[3] != OW \
            or idx.shape[0] != N or idx.shape[1] != C or idx.shape[2] != OH or idx.shape[3] != OW:
        raise ValueError(f"cynet._kernels.conv.maxpool_forward: y and idx must be {(N, C, OH, OW)} for x "
                         f"{(N, C, H, W)}, kernel ({kh}, {kw}), stride {stride}, padding {pad}")
    if N * C == 0:
        return
    cdef int nt = _threads(N * C * H * W, N * C, n_threads)
    cdef bint two_by_two = kh == 2 and kw == 2 and stride == 2 and pad == 0 and OW <= MAXPOOL_ROW
    cdef bint narrow = two_by_two and W % 2 == 0 and OW < 16 and OW != 8     # see _maxpool2x2_narrow_plane
    with nogil:
        for p in prange(N * C, schedule="static", num_threads=nt):
            if narrow:
                _maxpool2x2_narrow_plane(&x[0, 0, 0, 0] + p * H * W, &y[0, 0, 0, 0] + p * OH * OW,
                                         &idx[0, 0, 0, 0] + p * OH * OW, W, OH, OW)
            elif two_by_two:
                _maxpool2x2_plane(&x[0, 0, 0, 0] + p * H * W, &y[0, 0, 0, 0] + p * OH * OW,
                                  &idx[0, 0, 0, 0] + p * OH * OW, W, OH, OW)
            else:
                _maxpool_plane(&x[0, 0, 0, 0] + p * H * W, &y[0, 0, 0, 0] + p * OH * OW,
                               &idx[0, 0, 0, 0] + p * OH * OW, H, W, kh, kw, stride, pad, OH, OW)


cdef void _maxpool_plane_backward(const floating* dout, const int64_t* idx, floating* dx, Py_ssize_t n_out,
                                  Py_ssize_t n_in) noexcept nogil:
    cdef Py_ssize_t o, where
    for o in range(n_in):
        dx[o] = 0
    for o in range(n_out):
        where = idx[o]
        if 0 <= where < n_in:
            dx[where] = dx[where] + dout[o]


def maxpool_backward(const floating[:, :, :, ::1] dout, const int64_t[:, :, :, ::1] idx, floating[:, :, :, ::1] dx,
                     int n_threads):
    """dx (N, C, H, W) = 0, then dout (N, C, OH, OW) added at each window's argmax ``idx``."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dout.shape[2], OW = dout.shape[3], p
    if dout.shape[0] != N or dout.shape[1] != C or idx.shape[0] != N or idx.shape[1] != C or idx.shape[2] != OH \
            or idx.shape[3] != OW:
        raise ValueError("cynet._kernels.conv.maxpool_backward: dout, idx and dx disagree in shape")
    if N * C == 0:
        return
    cdef int nt = _threads(N * C * H * W, N * C, n_threads)
    with nogil:
        for p in prange(N * C, schedule="static", num_threads=nt):
            _maxpool_plane_backward(&dout[0, 0, 0, 0] + p * OH * OW, &idx[0, 0, 0, 0] + p * OH * OW,
                                    &dx[0, 0, 0, 0] + p * H * W, OH * OW, H * W)


# ---------------------------------------------------------------------------------------------------------------------
# 2-d average pooling over each (n, c) plane, windows given per output row and column (AvgPool2d and
# AdaptiveAvgPool2d both reduce to this):
#   y[i, j] = (sum of x[r, c] for r in [r0_i, r1_i), c in [c0_j, c1_j)) * row_scale_i * col_scale_j
#   backward: dx[r, c] += dout[i, j] * row_scale_i * col_scale_j over the same windows (overlaps add up, in order).
# The window sums are taken in double.

cdef void _avgpool_plane(const floating* x, floating* y, const int64_t* r0, const int64_t* r1, const int64_t* c0,
                         const int64_t* c1, const double* row_scale, const double* col_scale, Py_ssize_t W,
                         Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    cdef Py_ssize_t i, j, r, c
    cdef double total
    for i in range(OH):
        for j in range(OW):
            total = 0
            for r in range(r0[i], r1[i]):
                for c in range(c0[j], c1[j]):
                    total = total + x[r * W + c]
            y[i * OW + j] = <floating>(total * row_scale[i] * col_scale[j])


cdef void _avgpool_plane_backward(const floating* dout, floating* dx, const int64_t* r0, const int64_t* r1,
                                  const int64_t* c0, const int64_t* c1, const double* row_scale,
                                  const double* col_scale, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH,
                                  Py_ssize_t OW) noexcept nogil:
    cdef Py_ssize_t i, j, r, c
    cdef floating share
    for r in range(H * W):
        dx[r] = 0
    for i in range(OH):
        for j in range(OW):
            share = <floating>(dout[i * OW + j] * row_scale[i] * col_scale[j])
            for r in range(r0[i], r1[i]):
                for c in range(c0[j], c1[j]):
                    dx[r * W + c] = dx[r * W + c] + share


def _check_windows(str op, str pooled_name, tuple image, tuple pooled, const int64_t[::1] r0, const int64_t[::1] r1,
                   const int64_t[::1] c0, const int64_t[::1] c1, const double[::1] row_scale,
                   const double[::1] col_scale):
    """ValueError unless the arrays agree in length, the pooled array is (N, C, OH, OW) for the (N, C, H, W) image
    and every window lies inside the (H, W) plane."""
    cdef Py_ssize_t i, H = image[2], W = image[3]
    if r1.shape[0] != r0.shape[0] or row_scale.shape[0] != r0.shape[0] or c1.shape[0] != c0.shape[0] \
            or col_scale.shape[0] != c0.shape[0]:
        raise ValueError(f"cynet._kernels.conv.{op}: window arrays of different lengths")
    if pooled != (image[0], image[1], r0.shape[0], c0.shape[0]):
        raise ValueError(f"cynet._kernels.conv.{op}: {pooled_name} must be "
                         f"{(image[0], image[1], r0.shape[0], c0.shape[0])}")
    for i in range(r0.shape[0]):
        if not 0 <= r0[i] <= r1[i] <= H:
            raise ValueError(f"cynet._kernels.conv.{op}: row window {i} [{r0[i]}, {r1[i]}) outside [0, {H}]")
    for i in range(c0.shape[0]):
        if not 0 <= c0[i] <= c1[i] <= W:
            raise ValueError(f"cynet._kernels.conv.{op}: column window {i} [{c0[i]}, {c1[i]}) outside [0, {W}]")


def avgpool_forward(const floating[:, :, :, ::1] x, const int64_t[::1] r0, const int64_t[::1] r1,
                    const int64_t[::1] c0, const int64_t[::1] c1, const double[::1] row_scale,
                    const double[::1] col_scale, floating[:, :, :, ::1] y, int n_threads):
    """Average pooling of ``x`` (N, C, H, W) into ``y`` (N, C, OH, OW) over the given windows (see above)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], OH = r0.shape[0]
    cdef Py_ssize_t OW = c0.shape[0], p
    _check_windows("avgpool_forward", "y", (N, C, H, W), (y.shape[0], y.shape[1], y.shape[2], y.shape[3]), r0, r1,
                   c0, c1, row_scale, col_scale)
    if N * C * OH * OW == 0:
        return
    cdef int nt = _threads(N * C * H * W, N * C, n_threads)
    with nogil:
        for p in prange(N * C, schedule="static", num_threads=nt):
            _avgpool_plane(&x[0, 0, 0, 0] + p * H * W, &y[0, 0, 0, 0] + p * OH * OW, &r0[0], &r1[0], &c0[0], &c1[0],
                           &row_scale[0], &col_scale[0], W, OH, OW)


def avgpool_backward(const floating[:, :, :, ::1] dout, const int64_t[::1] r0, const int64_t[::1] r1,
                     const int64_t[::1] c0, const int64_t[::1] c1, const double[::1] row_scale,
                     const double[::1] col_scale, floating[:, :, :, ::1] dx, int n_threads):
    """dx (N, C, H, W) = 0, then each ``dout`` value spread evenly over its window (see above)."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3], OH = r0.shape[0]
    cdef Py_ssize_t OW = c0.shape[0], p
    _check_windows("avgpool_backward", "dout", (N, C, H, W),
                   (dout.shape[0], dout.shape[1], dout.shape[2], dout.shape[3]), r0, r1, c0, c1, row_scale, col_scale)
    if N * C * H * W == 0:
        return
    cdef int nt = _threads(N * C * H * W, N * C, n_threads)
    with nogil:
        if OH * OW == 0:
            for p in range(N * C * H * W):
                (&dx[0, 0, 0, 0])[p] = 0
        else:
            for p in prange(N * C, schedule="static", num_threads=nt):
                _avgpool_plane_backward(&dout[0, 0, 0, 0] + p * OH * OW, &dx[0, 0, 0, 0] + p * H * W, &r0[0], &r1[0],
                                        &c0[0], &c1[0], &row_scale[0], &col_scale[0], H, W, OH, OW)


# ---------------------------------------------------------------------------------------------------------------------
# RandomCrop's window (cynet.data.RandomCrop): each image n of x (N, C, H, W), padded with zeros by `pad` on every
# side, cropped at its own offset (dy_n, dx_n) of the padded image into y (N, C, OH, OW):
#   y[n, c, i, j] = x[n, c, i + dy_n - pad, j + dx_n - pad]   (0 outside the image)
# A copy: the values are x's bits. The planes are split across the team; no padded array is built.

cdef void _crop_plane(const floating* x, floating* y, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                      Py_ssize_t top, Py_ssize_t left) noexcept nogil:
    """One plane: y[i, j] = x[i + top, j + left] where that lies in the H x W image, else 0."""
    cdef Py_ssize_t i, j, r, j0, j1
    j0 = min(OW, max(0, -left))                   # the output columns whose source column is inside the image
    j1 = max(j0, min(OW, W - left))
    for i in range(OH):
        r = i + top
        if r < 0 or r >= H:
            for j in range(OW):
                y[i * OW + j] = 0
            continue
        for j in range(j0):
            y[i * OW + j] = 0
        for j in range(j0, j1):
            y[i * OW + j] = x[r * W + j + left]
        for j in range(j1, OW):
            y[i * OW + j] = 0


def random_crop(const floating[:, :, :, ::1] x, const int64_t[::1] dy, const int64_t[::1] dx, Py_ssize_t pad,
                floating[:, :, :, ::1] y, int n_threads):
    """y[n] = the window of x[n] zero-padded by ``pad``, at row dy[n] and column dx[n] of the padded image."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3], p, n
    if y.shape[0] != N or y.shape[1] != C or dy.shape[0] != N or dx.shape[0] != N or pad < 0:
        raise ValueError(f"cynet._kernels.conv.random_crop: y must be (N, C, OH, OW) and dy, dx of length N for x "
                         f"{(N, C, H, W)}, got y {(y.shape[0], y.shape[1], OH, OW)}, {dy.shape[0]} and {dx.shape[0]} "
                         f"offsets")
    for n in range(N):
        if not (0 <= dy[n] <= H + 2 * pad - OH and 0 <= dx[n] <= W + 2 * pad - OW):
            raise ValueError(f"cynet._kernels.conv.random_crop: offset ({dy[n]}, {dx[n]}) of image {n} puts the "
                             f"{OH} x {OW} window outside the padded {H + 2 * pad} x {W + 2 * pad} image")
    if N * C == 0 or OH == 0 or OW == 0:
        return
    cdef int nt = _threads(N * C * OH * OW, N * C, n_threads)
    with nogil:
        for p in prange(N * C, schedule="static", num_threads=nt):
            _crop_plane(&x[0, 0, 0, 0] + p * H * W, &y[0, 0, 0, 0] + p * OH * OW, H, W, OH, OW,
                        dy[p // C] - pad, dx[p // C] - pad)


# RandomHorizontalFlip (cynet.data.RandomHorizontalFlip): y[n] = x[n] mirrored left-right where flip[n], else a copy.
#   y[n, c, i, j] = x[n, c, i, W - 1 - j] if flip[n] else x[n, c, i, j]
cdef void _flip_plane(const floating* x, floating* y, Py_ssize_t H, Py_ssize_t W, bint mirror) noexcept nogil:
    cdef Py_ssize_t i, j
    if not mirror:
        for j in range(H * W):
            y[j] = x[j]
        return
    for i in range(H):
        for j in range(W):
            y[i * W + j] = x[i * W + W - 1 - j]


def random_flip(const floating[:, :, :, ::1] x, const unsigned char[::1] flip, floating[:, :, :, ::1] y,
                int n_threads):
    """y[n] = x[n] with its last axis reversed where flip[n] is nonzero, else x[n] (y must not overlap x)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], p
    if y.shape[0] != N or y.shape[1] != C or y.shape[2] != H or y.shape[3] != W or flip.shape[0] != N:
        raise ValueError(f"cynet._kernels.conv.random_flip: y must have x's shape {(N, C, H, W)} and flip N values, "
                         f"got y {(y.shape[0], y.shape[1], y.shape[2], y.shape[3])} and {flip.shape[0]} flags")
    if N * C * H * W == 0:
        return
    cdef int nt = _threads(N * C * H * W, N * C, n_threads)
    with nogil:
        for p in prange(N * C, schedule="static", num_threads=nt):
            _flip_plane(&x[0, 0, 0, 0] + p * H * W, &y[0, 0, 0, 0] + p * H * W, H, W, flip[p // C] != 0)


# ---------------------------------------------------------------------------------------------------------------------
# Per-channel standardisation of a batch (cynet.data.Standardize(per="channel")), the data's own type converted:
#   out[n, c, p] = (T(x[n, c, p]) - mean_c) / scale_c       in the output's type T, two roundings as in NumPy's
#                                                            np.subtract(x, mean, out) then out /= scale
ctypedef fused standardize_source:
    unsigned char
    float
    double


cdef void _standardize_plane(const standardize_source* x, floating mean, floating scale, floating* out,
                             Py_ssize_t P) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v
    for i in range(P):
        v = <floating>x[i] - mean
        out[i] = v / scale


def channel_standardize(const standardize_source[:, :, ::1] x, const floating[::1] mean, const floating[::1] scale,
                        floating[:, :, ::1] out, int n_threads):
    """out = (x - mean_c) / scale_c on (N, C, P) planes, x uint8, float32 or float64 converted to out's type."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2], q
    if out.shape[0] != N or out.shape[1] != C or out.shape[2] != P or mean.shape[0] != C or scale.shape[0] != C:
        raise ValueError(f"cynet._kernels.conv.channel_standardize: x {(N, C, P)} needs out of its shape and mean and "
                         f"scale of {C} values, got out {(out.shape[0], out.shape[1], out.shape[2])}, mean "
                         f"({mean.shape[0]},), scale ({scale.shape[0]},)")
    if N == 0 or C == 0 or P == 0:
        return
    cdef int nt = _threads(N * C * P, N * C, n_threads)
    with nogil:
        for q in prange(N * C, schedule="static", num_threads=nt):
            _standardize_plane(&x[0, 0, 0] + q * P, mean[q % C], scale[q % C], &out[0, 0, 0] + q * P, P)

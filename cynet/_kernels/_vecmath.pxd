# Vectorisable elementary functions for the kernels.
#
# libm's exp/expm1/tanh are opaque calls that the compiler cannot turn into SIMD code without -ffast-math. These
# versions are straight-line arithmetic (range reduction, a polynomial, a scale by 2**n assembled from exponent bits,
# and selects instead of branches), so a loop calling them vectorises with the baseline instruction set.
#
# exp(x):   x = n*ln2 + r, |r| <= ln2/2  (n by round-to-nearest with the 1.5*2**p "magic number",
#           ln2 split in two parts so that n*ln2_hi is exact: Cody & Waite)
#           exp(r) = 1 + r + r*r*P(r)   (float32: Cephes' degree-5 minimax P; float64: Taylor to degree 13)
#           exp(x) = (2**(n+64) * exp(r)) * 2**-64 for x <= 0 (every caller's case: sigmoid, softmax, Gaussian tails),
#           so that results in the subnormal range are produced by one ordinary rounded multiplication.
# expm1(x): with q = exp(r) - 1 = r + r*r*P(r):  expm1(x) = 2**n * q + (2**n - 1): exact to the last bits near 0
#           (n = 0 gives q itself), no cancellation.
# Measured accuracy against float64/libm: see tests/test_vecmath.py (the bound is asserted there).
#
# NaN propagates: the clamps are written as `x = c if x > c else x`, which leaves NaN unchanged.
#
# The polynomial steps are written as fused multiply-adds (fma_f32 / fma_f64): one rounding per step in the SIMD
# variants built with FMA (avx2, avx512), where this takes about 20% off an exp, and the plain a*b + c (two roundings,
# -ffp-contract=off) in the baseline build, which must run on CPUs without FMA. The two differ in the last bit of some
# results; both meet the accuracy bounds of tests/test_vecmath.py (asserted for every variant built).

from libc.stdint cimport int32_t, int64_t
from cython cimport floating

cdef extern from *:
    """
    #if defined(__FMA__) && (defined(__GNUC__) || defined(__clang__))
    #define cynet_fma_f32(a, b, c) __builtin_fmaf((a), (b), (c))
    #define cynet_fma_f64(a, b, c) __builtin_fma((a), (b), (c))
    #define CYNET_FUSED_FMA 1
    #else
    #define cynet_fma_f32(a, b, c) ((a) * (b) + (c))
    #define cynet_fma_f64(a, b, c) ((a) * (b) + (c))
    #define CYNET_FUSED_FMA 0
    #endif
    """
    # a * b + c, fused (one rounding) where the instruction set has FMA, else two rounded operations.
    float fma_f32 "cynet_fma_f32"(float a, float b, float c) noexcept nogil
    double fma_f64 "cynet_fma_f64"(double a, double b, double c) noexcept nogil
    # True in the builds where fma_f32 / fma_f64 round once (a compile-time constant: a branch on it is folded away),
    # so that fma_f32(a, b, -a * b) is the exact rounding error of a * b.
    const bint FUSED_FMA "CYNET_FUSED_FMA"

cdef extern from "<math.h>" nogil:
    # Sign-bit operations (an AND / OR with masks once vectorised), not calls.
    float fabsf(float x)
    double fabs(double x)
    float copysignf(float x, float y)
    double copysign(double x, double y)

# v, as a value the optimiser cannot see through (a volatile round trip): for a clamp limit taken once per staged
# block, outside its loops. With a literal limit, GCC folds the clamp's constant arm through the arithmetic that
# follows (a compare and three blends in the reduction loop instead of one min); with this one it emits a single
# min. Measured on the staged exp of sigmoid: 9-17% of the whole kernel, values unchanged.
cdef extern from *:
    """
    static inline float cynet_opaque_f32(float v) { volatile float t = v; return t; }
    static inline double cynet_opaque_f64(double v) { volatile double t = v; return t; }
    """
    float opaque_f32 "cynet_opaque_f32"(float v) noexcept nogil
    double opaque_f64 "cynet_opaque_f64"(double v) noexcept nogil

cdef union _f32_bits:
    float f
    int32_t i

cdef union _f64_bits:
    double f
    int64_t i


# 2**(k + offset) for an integer-valued float k and a constant integer offset with k + offset in [-126, 128] (128 gives
# inf): the low mantissa bits of k + 1.5*2**23 hold k. The offset folds into the integer constant.
cdef inline float _pow2_f32(float k, int32_t offset) noexcept nogil:
    cdef _f32_bits b
    b.f = k + 12582912.0
    b.i = (b.i - 0x4B400000 + 127 + offset) << 23
    return b.f


cdef inline double _pow2_f64(double k, int64_t offset) noexcept nogil:
    cdef _f64_bits b
    b.f = k + 6755399441055744.0
    b.i = (b.i - <int64_t>0x4338000000000000 + 1023 + offset) << 52
    return b.f


# 2**k for an integer-valued float k in [-126, 128] (float32) / [-1022, 1024] (float64).
cdef inline float exp2i_f32(float k) noexcept nogil:
    return _pow2_f32(k, 0)


cdef inline double exp2i_f64(double k) noexcept nogil:
    return _pow2_f64(k, 0)


# Round |v| < 2**22 (float32) / 2**51 (float64) to the nearest integer, ties to even, without a branch or a call.
cdef inline float round_f32(float v) noexcept nogil:
    return (v + <float>12582912.0) - <float>12582912.0


cdef inline double round_f64(double v) noexcept nogil:
    return (v + 6755399441055744.0) - 6755399441055744.0


# r = x - n*ln2 with ln2 split in two (Cody & Waite) so that n*ln2_hi is exact; n is an integer-valued float.
cdef inline float _ln2_remainder_f32(float x, float n) noexcept nogil:
    cdef float r = fma_f32(n, <float>-0.693359375, x)      # exact: n * ln2_hi has few bits
    return fma_f32(n, <float>2.12194440e-4, r)


cdef inline double _ln2_remainder_f64(double x, double n) noexcept nogil:
    cdef double r = fma_f64(n, -6.93145751953125e-1, x)
    return fma_f64(n, -1.42860682030941723212e-6, r)


# q(r) = exp(r) - 1 for |r| <= ln2/2.
cdef inline float _expm1_reduced_f32(float r) noexcept nogil:
    cdef float p = <float>1.9875691500e-4
    p = fma_f32(p, r, <float>1.3981999507e-3)
    p = fma_f32(p, r, <float>8.3334519073e-3)
    p = fma_f32(p, r, <float>4.1665795894e-2)
    p = fma_f32(p, r, <float>1.6666665459e-1)
    p = fma_f32(p, r, <float>5.0000001201e-1)
    return fma_f32(r * r, p, r)


# The last Horner steps of the Taylor polynomials of exp(r) - 1 - r: from a partial value p of the terms above 1/7!,
# p r + 1/7!, then 1/6!, ..., 1/2!. Shared by the degree-13 and degree-8 expansions below.
cdef inline double _exp_taylor_tail(double p, double r) noexcept nogil:
    p = fma_f64(p, r, 1.0 / 5040.0)
    p = fma_f64(p, r, 1.0 / 720.0)
    p = fma_f64(p, r, 1.0 / 120.0)
    p = fma_f64(p, r, 1.0 / 24.0)
    p = fma_f64(p, r, 1.0 / 6.0)
    return fma_f64(p, r, 0.5)


cdef inline double _expm1_reduced_f64(double r) noexcept nogil:
    # Taylor coefficients 1/k! for k = 2..13; the truncation error at |r| = ln2/2 is below 2**-56.
    cdef double p = 1.0 / 6227020800.0
    p = fma_f64(p, r, 1.0 / 479001600.0)
    p = fma_f64(p, r, 1.0 / 39916800.0)
    p = fma_f64(p, r, 1.0 / 3628800.0)
    p = fma_f64(p, r, 1.0 / 362880.0)
    p = fma_f64(p, r, 1.0 / 40320.0)
    return fma_f64(r * r, _exp_taylor_tail(p, r), r)


# expm1 for x in [-87, 88] (float32) / [-708, 709] (float64), or NaN, in two halves as exp_neg below (the staged
# forms use them apart): the range reduction (r through the pointer, 2**n returned), then the polynomial and scaling.
cdef inline float _expm1_reduce_f32(float x, float* r) noexcept nogil:
    cdef float n = round_f32(x * <float>1.44269504088896341)
    r[0] = _ln2_remainder_f32(x, n)
    return exp2i_f32(n)


cdef inline float _expm1_finish_f32(float r, float s) noexcept nogil:
    return fma_f32(s, _expm1_reduced_f32(r), s - <float>1.0)


cdef inline double _expm1_reduce_f64(double x, double* r) noexcept nogil:
    cdef double n = round_f64(x * 1.4426950408889634074)
    r[0] = _ln2_remainder_f64(x, n)
    return exp2i_f64(n)


cdef inline double _expm1_finish_f64(double r, double s) noexcept nogil:
    return fma_f64(s, _expm1_reduced_f64(r), s - 1.0)


# exp(-a) for a >= 0 (or NaN). n <= 0, so the scale 2**n is applied as 2**(n + 64), a normal number for every
# n >= -150 that a <= 104 gives, then times the constant 2**-64: the first product is exact and the second rounds once,
# also where the result is subnormal. (A general exp needs two scales and a split of n for the same property; this
# form, with tanh's expm1 skipping the range clamps its argument cannot reach, took 25-33% off sigmoid, tanh and SiLU,
# whose results stayed the same bit for bit.)
# Its two halves, also used apart by the staged form below: the range reduction (r returned through a pointer, the
# scale 2**(n + 64) returned), then the polynomial and the scaling.
cdef inline float _exp_neg_reduce_f32(float a, float limit, float* r) noexcept nogil:
    cdef float n
    a = limit if a > limit else a                      # limit 104: exp(-104) < FLT_TRUE_MIN / 2: 0
    n = round_f32(a * <float>-1.44269504088896341)
    r[0] = _ln2_remainder_f32(-a, n)
    return _pow2_f32(n, 64)


cdef inline float _exp_neg_finish_f32(float r, float s) noexcept nogil:
    return fma_f32(s, _expm1_reduced_f32(r), s) * <float>5.42101086242752217e-20     # * 2**-64


cdef inline double _exp_neg_reduce_f64(double a, double limit, double* r) noexcept nogil:
    cdef double n
    a = limit if a > limit else a                      # limit 746: exp(-746) < DBL_TRUE_MIN / 2: 0
    n = round_f64(a * -1.4426950408889634074)
    r[0] = _ln2_remainder_f64(-a, n)
    return _pow2_f64(n, 64)


cdef inline double _exp_neg_finish_f64(double r, double s) noexcept nogil:
    return fma_f64(s, _expm1_reduced_f64(r), s) * 5.42101086242752217e-20


# exp_neg_f32's range reduction for an argument a >= 0 (or NaN) computed in double precision, so that a is not rounded to
# float32 first (for large a that rounding alone would cost up to a/2 ulp of the result): n and r = -a - n ln2 in
# double, r then rounded once to float32 (|r| <= ln2/2: an absolute error of at most 2**-26, a third of an ulp of
# exp(r)). Returns the scale 2**(n + 64) for _exp_neg_finish_f32. a is clamped at `limit` (at most 190, where 2**(n + 64)
# is still normal; the caller selects its result beyond).
cdef inline float exp_neg_reduce_f64_to_f32(double a, double limit, float* r) noexcept nogil:
    cdef double n
    a = limit if a > limit else a
    n = round_f64(a * -1.4426950408889634074)
    r[0] = <float>_ln2_remainder_f64(-a, n)
    return _pow2_f32(<float>n, 64)


cdef inline float exp_neg_f32(float a) noexcept nogil:
    cdef float r
    cdef float s = _exp_neg_reduce_f32(a, 104.0, &r)
    return _exp_neg_finish_f32(r, s)


cdef inline double exp_neg_f64(double a) noexcept nogil:
    cdef double r
    cdef double s = _exp_neg_reduce_f64(a, 746.0, &r)
    return _exp_neg_finish_f64(r, s)


# --- fused front ends: one name per function for the kernels written over cython.floating -------------------------

cdef inline floating vfabs(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


# |x| with the sign of y
cdef inline floating vcopysign(floating x, floating y) noexcept nogil:
    if floating is float:
        return copysignf(x, y)
    else:
        return copysign(x, y)


# Staged ("block") forms: the same values, bit for bit, for n <= STAGE arguments at a time, each half of the evaluation
# as its own loop over buffers that stay in L1. One loop over the whole evaluation is latency-bound: each value's
# chain of dependent operations (~60 cycles for exp) is longer than the out-of-order window covers at 8 values per
# instruction, so the core waits. Shorter loops keep it busy. Callers pass n = STAGE (a constant: the loops' trip
# count is then known) and once the remainder. STAGE = 64 measured best in a C model (32 to 2048 tried: from 1024 on,
# staging was slower than one loop on arrays in memory); software prefetch of later stages gained nothing in the
# kernels. Measured in the kernels, old one loop -> staged, AVX2 host, median of per-pair ratios, in cache
# (256 x 4096, 1 thread) / (4096, 4096) on 1 thread / on 2: sigmoid 0.84 / 0.86 / 0.89, tanh 0.71 / 0.74 / 0.83,
# SiLU 0.75 / 0.78 / 0.80, ELU 0.77 / 0.87 / 0.86. The buffers may be the same array.
cdef enum:
    STAGE = 64

# e[i] = exp(-a[i]) for a[i] >= 0 or NaN: exp_neg_f32 / _f64
cdef inline void vexp_neg_block(const floating* a, floating* e, Py_ssize_t n) noexcept nogil:
    cdef floating r[STAGE]
    cdef floating s[STAGE]
    cdef floating limit
    cdef Py_ssize_t i
    if floating is float:
        limit = opaque_f32(104.0)
        for i in range(n):
            s[i] = _exp_neg_reduce_f32(a[i], limit, &r[i])
        for i in range(n):
            e[i] = _exp_neg_finish_f32(r[i], s[i])
    else:
        limit = opaque_f64(746.0)
        for i in range(n):
            s[i] = _exp_neg_reduce_f64(a[i], limit, &r[i])
        for i in range(n):
            e[i] = _exp_neg_finish_f64(r[i], s[i])


# e[i] = expm1(x[i]) for x[i] in [-87, 88] (float32) / [-708, 709] (float64) or NaN
cdef inline void vexpm1_in_range_block(const floating* x, floating* e, Py_ssize_t n) noexcept nogil:
    cdef floating r[STAGE]
    cdef floating s[STAGE]
    cdef Py_ssize_t i
    if floating is float:
        for i in range(n):
            s[i] = _expm1_reduce_f32(x[i], &r[i])
        for i in range(n):
            e[i] = _expm1_finish_f32(r[i], s[i])
    else:
        for i in range(n):
            s[i] = _expm1_reduce_f64(x[i], &r[i])
        for i in range(n):
            e[i] = _expm1_finish_f64(r[i], s[i])


# e[i] = expm1(x[i]) for any x[i] (or NaN), staged: arguments above 88 (float32) / 709 (float64) saturate at
# expm1(88) / expm1(709) (finite); below -87 / -708, expm1 is -1 (and 2**n stays normal). e may be x.
cdef inline void vexpm1_block(const floating* x, floating* e, Py_ssize_t n) noexcept nogil:
    cdef floating c[STAGE]
    cdef floating v
    cdef Py_ssize_t i
    for i in range(n):
        v = x[i]
        if floating is float:
            v = <float>88.0 if v > <float>88.0 else v
            v = <float>-87.0 if v < <float>-87.0 else v
        else:
            v = 709.0 if v > 709.0 else v
            v = -708.0 if v < -708.0 else v
        c[i] = v
    vexpm1_in_range_block(c, e, n)


# y[i] = sigmoid(x[i]) = 1 / (1 + exp(-x[i])) for i < n <= STAGE, staged (see vexp_neg_block); y may be x. Evaluated
# as e / (1 + e) with e = exp(-|x|) for x < 0 so that neither branch overflows and the tiny values for very negative x
# keep their relative accuracy.
cdef inline void vsigmoid_block(const floating* x, floating* y, Py_ssize_t n) noexcept nogil:
    cdef floating e[STAGE]
    cdef floating t, s
    cdef Py_ssize_t i
    for i in range(n):
        e[i] = vfabs(x[i])
    vexp_neg_block(e, e, n)
    for i in range(n):
        t = e[i]
        s = <floating>1.0 / (<floating>1.0 + t)
        y[i] = t * s if x[i] < 0 else s


# y[i] = tanh(x[i]) for i < n <= STAGE, staged; y may be x. tanh(x) = sign(x) e / (e + 2) with e = expm1(2|x|): no
# cancellation near 0, exactly +-1 for large |x| (|x| is clamped at 44 / 354, where tanh rounds to 1 and expm1(2|x|) is
# still finite). The sign is copied from x, so +-0 and NaN come back as they came.
cdef inline void vtanh_block(const floating* x, floating* y, Py_ssize_t n) noexcept nogil:
    cdef floating e[STAGE]
    cdef floating ax, t
    cdef floating limit
    cdef Py_ssize_t i
    if floating is float:
        limit = 44.0
    else:
        limit = 354.0
    for i in range(n):
        ax = vfabs(x[i])
        ax = limit if ax > limit else ax
        e[i] = ax + ax
    vexpm1_in_range_block(e, e, n)
    for i in range(n):
        t = e[i]
        y[i] = vcopysign(t / (t + <floating>2.0), x[i])


# exp(x) in double precision to a relative 2e-10 only (Taylor to degree 8): what a float32 result needs, cheaper than
# the full double exp. x must lie in [-708, 709].
cdef inline double exp_f64_for_f32(double x) noexcept nogil:
    cdef double n = round_f64(x * 1.4426950408889634074)
    cdef double r = _ln2_remainder_f64(x, n)
    return (1.0 + fma_f64(r * r, _exp_taylor_tail(1.0 / 40320.0, r), r)) * exp2i_f64(n)


# R(u) = Phi(-u) exp(u^2/2) for u >= 0 (Phi the standard normal distribution function: R is Mills' ratio over
# sqrt(2 pi)), as a (4, 5) rational minimax fit on [0, 14.5] with relative error 5.9e-9
# (scripts/fit_normal_tail_ratio.py, against a 40-digit reference; beyond 14.5, x Phi(x) is 0 in float32). Every
# coefficient is positive, so Horner's rule adds no cancellation; evaluated in double precision, its rounding is far
# below float32's: what the float32 GELU (erf form) needs, in whose tail R(|x|) multiplies exp(-x^2/2).
cdef extern from *:
    """
    /* The rational R(u)'s coefficients, highest degree first (normal_tail_ratio below). */
    #define CYNET_TAIL_P0 0.004116298923789119
    #define CYNET_TAIL_P1 0.04063321629261453
    #define CYNET_TAIL_P2 0.18323519810638839
    #define CYNET_TAIL_P3 0.43829517512761507
    #define CYNET_TAIL_P4 0.5000000029522479
    #define CYNET_TAIL_Q0 0.010317911539098237
    #define CYNET_TAIL_Q1 0.10185881539932704
    #define CYNET_TAIL_Q2 0.4694707632584922
    #define CYNET_TAIL_Q3 1.2025036221967573
    #define CYNET_TAIL_Q4 1.6744753312637684
    /* dst[at[j]] = src[j] for j < m, one scalar store each. Left alone, GCC turns this loop into vscatterdps, which
       AMD's Zen 4 runs slowly: the GELU backward's gathered far values took 2x as long on inputs with standard
       deviation 8. The empty asm statement keeps the loop scalar. */
    static inline void cynet_scatter_f32(float *dst, const int *at, const float *src, Py_ssize_t m) {
        Py_ssize_t j;
        for (j = 0; j < m; j++) {
            dst[at[j]] = src[j];
    #if defined(__GNUC__)
            __asm__ volatile("" ::: "memory");
    #endif
        }
    }
    #if defined(__AVX512F__) && defined(__AVX512VL__) && defined(__FMA__)
    #include <immintrin.h>
    #include <float.h>
    #include <math.h>
    #define CYNET_TAIL_RATIO_BLOCK 1
    /* A table of 8 rows (c0_hi, c0_lo, c1, ..., c6) over 32 intervals in registers: lo[r] holds entries 0-15 of row
       r, hi[r] entries 16-31. */
    static inline void cynet_table32_load(const float (*table)[32], __m512 *lo, __m512 *hi) {
        int row;
        for (row = 0; row < 8; row++) {
            lo[row] = _mm512_loadu_ps(table[row]);
            hi[row] = _mm512_loadu_ps(table[row] + 16);
        }
    }
    /* The polynomial of interval k at t, each coefficient looked up with one vpermt2ps (32 floats in two registers):
       Horner's rule in float32, and c0 added last as c0_hi + (t (c1 + t (c2 + ...)) + c0_lo). */
    static inline __m512 cynet_table32_eval(const __m512 *lo, const __m512 *hi, __m512i k, __m512 t) {
        int row;
        __m512 p = _mm512_permutex2var_ps(lo[7], k, hi[7]);
        for (row = 6; row >= 2; row--)
            p = _mm512_fmadd_ps(p, t, _mm512_permutex2var_ps(lo[row], k, hi[row]));
        p = _mm512_fmadd_ps(p, t, _mm512_permutex2var_ps(lo[1], k, hi[1]));      /* t (c1 + ...) + c0_lo */
        return _mm512_add_ps(_mm512_permutex2var_ps(lo[0], k, hi[0]), p);
    }
    /* R on [0, 16) as 32 degree-6 polynomials, one per interval of width 1/2, in t = (u - k/2) - 1/4 (both
       differences exact but for u < 1/8, where the second moves R by under 0.1 ulp); rows c0_hi, c0_lo, c1, ..., c6
       (scripts/fit_normal_tail_table.py: fit error below 4.6e-9 relative; evaluated in float32 as below, within
       0.72 ulp of R on a grid of 20,001 float32 u in [0, 15]). */
    static const float cynet_tail_table[8][32] = {
        /* c0_hi */ {0.414032102f, 0.30023247f, 0.230760321f, 0.185231671f, 0.153651938f, 0.130724728f, 0.113452062f, 0.100039206f, 0.0893593207f, 0.0806754008f, 0.073488228f, 0.0674492344f, 0.0623084866f, 0.0578826331f, 0.0540343598f, 0.0506589822f, 0.0476753898f, 0.0450198315f, 0.0426415503f, 0.0404996499f, 0.038560845f, 0.0367977731f, 0.0351877399f, 0.0337117724f, 0.0323538966f, 0.03110056f, 0.0299402028f, 0.0288628954f, 0.0278600696f, 0.0269242916f, 0.0260490831f, 0.0252287686f},
        /* c0_lo */ {1.52014612e-09f, -7.65331976e-09f, 2.94392122e-10f, -6.05651085e-09f, -4.17816004e-10f, 5.99351591e-09f, 1.18608234e-10f, 3.19026316e-09f, -2.08048667e-09f, -1.62099867e-09f, 2.82964252e-09f, -3.07456194e-09f, 3.57316121e-10f, -1.33633671e-09f, -3.43896245e-10f, 8.80827772e-11f, 9.30055422e-10f, 1.49285351e-09f, -8.58398463e-10f, 3.63446523e-10f, 1.28105415e-09f, 1.03444898e-10f, -1.03917186e-09f, 2.35240299e-12f, -4.81259144e-10f, 6.11886097e-10f, -5.38726952e-10f, -8.26370805e-10f, -4.36116115e-10f, 7.01265768e-10f, 6.5828526e-10f, 6.6069139e-10f},
        /* c1 */ {-0.295434296f, -0.173767954f, -0.110491887f, -0.0747868717f, -0.0532254204f, -0.0394492634f, -0.030223079f, -0.0237952452f, -0.0191651769f, -0.0157341342f, -0.0131290685f, -0.0111092003f, -0.00951423682f, -0.00823451672f, -0.00719317468f, -0.00633516721f, -0.00562030682f, -0.00501874182f, -0.00450794818f, -0.0040706899f, -0.00369360647f, -0.00336621865f, -0.00308021856f, -0.00282895449f, -0.00260705245f, -0.0024101329f, -0.00223460002f, -0.00207747938f, -0.00193629414f, -0.00180896861f, -0.00169375306f, -0.00158916472f},
        /* c2 */ {0.170086727f, 0.0849532485f, 0.0463227332f, 0.0271773227f, 0.01694737f, 0.0111196321f, 0.00761352852f, 0.00540352194f, 0.00395365991f, 0.00296913064f, 0.00228031073f, 0.00178566528f, 0.00142225216f, 0.00114982342f, 0.000941921491f, 0.000780717877f, 0.000653929368f, 0.000552921847f, 0.000471515028f, 0.000405211758f, 0.000350690039f, 0.000305461959f, 0.0002676406f, 0.000235778338f, 0.000208752361f, 0.000185683326f, 0.000165876059f, 0.00014877638f, 0.000133938855f, 0.000121002886f, 0.000109674445f, 9.97122261e-05f},
        /* c3 */ {-0.0842975229f, -0.0366824344f, -0.0175288878f, -0.00907530915f, -0.00503120106f, -0.00295672566f, -0.0018263564f, -0.00117733935f, -0.000787371013f, -0.000543586444f, -0.000385811378f, -0.000280541077f, -0.00020838686f, -0.000157735791f, -0.000121414567f, -9.48678862e-05f, -7.51298285e-05f, -6.02252039e-05f, -4.88113474e-05f, -3.99583696e-05f, -3.30111434e-05f, -2.75008642e-05f, -2.30871829e-05f, -1.95197099e-05f, -1.66119735e-05f, -1.42235094e-05f, -1.22473912e-05f, -1.06014159e-05f, -9.22180971e-06f, -8.05866603e-06f, -7.0726187e-06f, -6.23237884e-06f},
        /* c4 */ {0.037252903f, 0.0143599352f, 0.00610267045f, 0.00282376911f, 0.00140673772f, 0.00074713293f, 0.000419454387f, 0.00024711786f, 0.000151829503f, 9.67715896e-05f, 6.36990517e-05f, 4.31377885e-05f, 2.99580934e-05f, 2.12764244e-05f, 1.54162735e-05f, 1.1372812e-05f, 8.52698668e-06f, 6.48776677e-06f, 5.00246961e-06f, 3.90439072e-06f, 3.08143376e-06f, 2.45689603e-06f, 1.97744089e-06f, 1.6054255e-06f, 1.31391482e-06f, 1.08338804e-06f, 8.99529311e-07f, 7.51722951e-07f, 6.32015087e-07f, 5.34388903e-07f, 4.5425088e-07f, 3.8806462e-07f},
        /* c5 */ {-0.0152118159f, -0.00524363574f, -0.00199941336f, -0.000833438186f, -0.000375734555f, -0.000181449737f, -9.30731258e-05f, -5.0336148e-05f, -2.85198894e-05f, -1.68358329e-05f, -1.03057946e-05f, -6.51503751e-06f, -4.23853544e-06f, -2.82919086e-06f, -1.93249275e-06f, -1.34770642e-06f, -9.57710085e-07f, -6.92281617e-07f, -5.08256903e-07f, -3.78489972e-07f, -2.85550811e-07f, -2.18029896e-07f, -1.68324917e-07f, -1.31286015e-07f, -1.03372166e-07f, -8.21131039e-08f, -6.57632668e-08f, -5.30736877e-08f, -4.31404814e-08f, -3.53025733e-08f, -2.90713551e-08f, -2.40822988e-08f},
        /* c6 */ {0.00562841026f, 0.00175841851f, 0.000608642993f, 0.000230865786f, 9.49999812e-05f, 4.20211873e-05f, 1.98160888e-05f, 9.89009823e-06f, 5.19070409e-06f, 2.8487666e-06f, 1.62693141e-06f, 9.62745162e-07f, 5.88138676e-07f, 3.69714655e-07f, 2.38485569e-07f, 1.57466204e-07f, 1.06198392e-07f, 7.30148386e-08f, 5.10933091e-08f, 3.63329029e-08f, 2.62259228e-08f, 1.91892688e-08f, 1.42187702e-08f, 1.06606963e-08f, 8.07949352e-09f, 6.1855947e-09f, 4.7806461e-09f, 3.72696229e-09f, 2.9301408e-09f, 2.32131292e-09f, 1.85268012e-09f, 1.48810619e-09f},
    };
    /* out[i] = R(u[i]) as float32, i < m, sixteen at a time (the last lanes masked), for 0 <= u <= 15 (the caller's
       clamp; NaN gives NaN): each coefficient is looked up with one vpermt2ps (32 floats in two registers, indexed
       by k = min(floor(2u), 31)), the polynomial is evaluated by Horner's rule in float32 and c0 added last as
       c0_hi + (t p + c0_lo). About half the vector operations of the double-precision rational it replaces, which
       took half of the GELU forward on AVX-512. */
    static inline void cynet_normal_tail_ratio_block(const float *u, float *out, Py_ssize_t m) {
        __m512 lo[8], hi[8];
        Py_ssize_t i;
        cynet_table32_load(cynet_tail_table, lo, hi);
        for (i = 0; i < m; i += 16) {
            __mmask16 mask = (m - i >= 16) ? (__mmask16)0xFFFF : (__mmask16)((1u << (m - i)) - 1u);
            __m512 x = _mm512_maskz_loadu_ps(mask, u + i);
            __m512i k = _mm512_min_epi32(_mm512_cvttps_epi32(_mm512_add_ps(x, x)), _mm512_set1_epi32(31));
            __m512 t = _mm512_sub_ps(_mm512_fnmadd_ps(_mm512_cvtepi32_ps(k), _mm512_set1_ps(0.5f), x),
                                     _mm512_set1_ps(0.25f));
            _mm512_mask_storeu_ps(out + i, mask, cynet_table32_eval(lo, hi, k, t));
        }
    }
    /* Phi(-u) on [0, 5) as 32 degree-6 polynomials, one per interval of width h = 5/32, in t = u - (k h + h/2) (the
       centre is exact, and so is t for k >= 1; for k = 0 its rounding moves Phi(-u) by under 0.1 ulp); rows c0_hi,
       c0_lo, c1, ..., c6 (scripts/fit_normal_tail_table.py: fit error below 1.9e-9 relative; evaluated in float32 as
       below, within 1.46 ulp of Phi(-u) on a grid of 40,001 float32 u in [0, 5]). */
    static const float cynet_lower_tail_table[8][32] = {
        /* c0_hi */ {0.468864322f, 0.407346934f, 0.348037213f, 0.292232305f, 0.240988925f, 0.195066825f, 0.154903993f, 0.120623626f, 0.0920684114f, 0.0688547343f, 0.0504376404f, 0.0361777321f, 0.0254023932f, 0.0174561124f, 0.0117371762f, 0.00772033026f, 0.00496690301f, 0.00312494091f, 0.00192238297f, 0.00115616922f, 0.000679724792f, 0.000390594912f, 0.000219360096f, 0.000120388722f, 6.45615874e-05f, 3.38289792e-05f, 1.73180397e-05f, 8.66114078e-06f, 4.23147276e-06f, 2.01940634e-06f, 9.41345661e-07f, 4.28594802e-07f},
        /* c0_lo */ {-1.12869767e-08f, -1.43301826e-09f, 8.74996164e-09f, 1.29693367e-09f, 1.66393355e-09f, 4.393236e-09f, 4.59421745e-09f, -3.04429171e-09f, -3.51075991e-09f, -2.6563467e-09f, 6.83686052e-10f, 1.10470677e-09f, -5.45929413e-10f, 3.98862415e-10f, 3.20588001e-10f, 1.13295311e-10f, -2.10255854e-10f, 1.15795741e-10f, 5.27032888e-12f, 1.32599157e-11f, 1.02843003e-11f, 2.83193391e-12f, -5.88004602e-12f, 2.85752672e-12f, 1.70723602e-12f, 4.48560243e-13f, 3.44767861e-13f, -2.93305012e-13f, -1.6563091e-13f, 2.94974006e-14f, 6.1565946e-15f, 9.85485565e-16f},
        /* c1 */ {-0.397726655f, -0.388134122f, -0.369637489f, -0.343532115f, -0.311570108f, -0.275766373f, -0.238190234f, -0.200772256f, -0.165150762f, -0.13257283f, -0.103854567f, -0.0793951154f, -0.0592323653f, -0.0431242436f, -0.030639451f, -0.021244064f, -0.0143744526f, -0.00949165877f, -0.00611631805f, -0.00384622882f, -0.00236035464f, -0.00141356734f, -0.000826138537f, -0.000471179461f, -0.000262250862f, -0.000142444143f, -7.55039e-05f, -3.90563182e-05f, -1.97156132e-05f, -9.7123966e-06f, -4.66916936e-06f, -2.19053391e-06f},
        /* c2 */ {0.0155361975f, 0.0454844646f, 0.0721948221f, 0.0939345658f, 0.109536365f, 0.118493363f, 0.120955981f, 0.117639996f, 0.109670423f, 0.0983939022f, 0.0851932019f, 0.0713315532f, 0.0578441061f, 0.0454825982f, 0.0347087532f, 0.0257252324f, 0.0185295679f, 0.0129768774f, 0.00883999094f, 0.00585948909f, 0.00378025533f, 0.00237435149f, 0.00145219662f, 0.000865056005f, 0.000501964532f, 0.000283775444f, 0.000156316659f, 8.39100539e-05f, 4.38980423e-05f, 2.23840379e-05f, 1.11257541e-05f, 5.39076609e-06f},
        /* c3 */ {0.0658831522f, 0.0611355118f, 0.0522058606f, 0.0401318595f, 0.0262557734f, 0.0120176692f, -0.00125024084f, -0.012491053f, -0.0210268609f, -0.0265889913f, -0.0292809252f, -0.0294921026f, -0.0277868658f, -0.0247925855f, -0.0211057737f, -0.0172270983f, -0.0135281133f, -0.0102459462f, -0.0074983174f, -0.00531000784f, -0.00364281866f, -0.00242318423f, -0.00156410248f, -0.000980261713f, -0.000596818223f, -0.000353147741f, -0.00020316492f, -0.000113673792f, -6.18748818e-05f, -3.27731796e-05f, -1.68953829e-05f, -8.47904812e-06f},
        /* c4 */ {-0.00387617177f, -0.011162919f, -0.0171307009f, -0.0211425237f, -0.0228713043f, -0.0223307721f, -0.0198418368f, -0.0159471277f, -0.0112967873f, -0.00653194496f, -0.00218909769f, 0.00135981292f, 0.00392710697f, 0.00549375918f, 0.00616962276f, 0.00614290405f, 0.00563100725f, 0.00484123453f, 0.00394536275f, 0.00306814513f, 0.002287057f, 0.00163937267f, 0.00113267021f, 0.000755677815f, 0.0004875171f, 0.00030447598f, 0.000184257602f, 0.00010812773f, 6.15693862e-05f, 3.40363767e-05f, 1.82756758e-05f, 9.53518065e-06f},
        /* c5 */ {-0.00980952848f, -0.00863675121f, -0.00648591761f, -0.00370523776f, -0.000724519894f, 0.00202936796f, 0.00420958828f, 0.00560232718f, 0.00614665542f, 0.00592135731f, 0.00510671921f, 0.00393385859f, 0.00263475813f, 0.00140335155f, 0.000373090064f, -0.000388486049f, -0.00087170332f, -0.00110867957f, -0.00115484151f, -0.00107242179f, -0.000918462465f, -0.000738032453f, -0.000562030473f, -0.000408222113f, -0.000284044567f, -0.000189930477f, -0.000122331898f, -7.60336407e-05f, -4.56679736e-05f, -2.65372801e-05f, -1.49330599e-05f, -8.14384566e-06f},
        /* c6 */ {0.000646794331f, 0.00182603789f, 0.0027044646f, 0.00315276696f, 0.00312885642f, 0.00268011331f, 0.00192617218f, 0.00102592609f, 0.00014093479f, -0.000596790109f, -0.00110521284f, -0.00135825644f, -0.00137874018f, -0.0012224731f, -0.000959840254f, -0.000658842153f, -0.000373446703f, -0.000138225863f, 3.15301259e-05f, 0.000136030954f, 0.000185384182f, 0.000194291686f, 0.000177767724f, 0.000148489853f, 0.000115680516f, 8.5065185e-05f, 5.94866979e-05f, 3.9760358e-05f, 2.54913994e-05f, 1.57180202e-05f, 9.33988304e-06f, 5.35690469e-06f},
    };
    /* The tanh form's gate at -u, S(-u) = 1 / (1 + exp(2 sqrt(2/pi) (u + 0.044715 u^3))), on [0, 5) in the same
       layout (fit error below 1.1e-8 relative; float32 evaluation within 1.48 ulp of S(-u) on the same grid). */
    static const float cynet_tanh_gate_table[8][32] = {
        /* c0_hi */ {0.468864471f, 0.407351017f, 0.348054826f, 0.292275786f, 0.241068736f, 0.195187151f, 0.155059785f, 0.120800115f, 0.0922435373f, 0.069003731f, 0.0505384393f, 0.0362156816f, 0.0253729466f, 0.0173649807f, 0.011598181f, 0.00755185867f, 0.00478803646f, 0.00295223226f, 0.00176785386f, 0.00102666137f, 0.000577364466f, 0.000313943689f, 0.000164798868f, 8.33812519e-05f, 4.05973515e-05f, 1.8990675e-05f, 8.52101948e-06f, 3.66137579e-06f, 1.50414826e-06f, 5.8982323e-07f, 2.20408879e-07f, 7.8361559e-08f},
        /* c0_lo */ {-4.03543776e-09f, -6.44475939e-09f, 1.43733683e-08f, -5.63253177e-09f, -1.49711621e-09f, 7.28978922e-09f, 3.10388715e-10f, -2.65941891e-09f, 3.7237895e-09f, -1.16349197e-09f, 1.50202328e-09f, 9.96742799e-10f, -2.37323008e-12f, -9.15644727e-10f, -2.65427846e-10f, 1.34501799e-10f, 1.16969517e-10f, -3.28383709e-11f, -5.29420154e-11f, 3.17886082e-12f, -2.23719827e-11f, -1.42980575e-11f, -5.43471648e-12f, 7.89675454e-13f, 9.55953415e-13f, -2.06748511e-14f, 9.93833312e-14f, 9.30295405e-14f, -1.59914027e-14f, 2.09493084e-14f, -1.74004941e-15f, 1.41880348e-15f},
        /* c1 */ {-0.397720665f, -0.388083249f, -0.369512022f, -0.343328595f, -0.311315417f, -0.275512516f, -0.238000885f, -0.200704664f, -0.165238723f, -0.132816419f, -0.104219794f, -0.0798233151f, -0.0596556403f, -0.0434817486f, -0.0308896881f, -0.02137045f, -0.0143839521f, -0.00940832589f, -0.00597260054f, -0.00367477699f, -0.00218814379f, -0.00125901226f, -0.000698883145f, -0.000373677671f, -0.000192130756f, -9.48394227e-05f, -4.48700812e-05f, -2.0313495e-05f, -8.78532046e-06f, -3.62378637e-06f, -1.42327372e-06f, -5.31404964e-07f},
        /* c2 */ {0.0156122465f, 0.0456873327f, 0.0724550784f, 0.0941570625f, 0.109627485f, 0.118390456f, 0.120649569f, 0.117180079f, 0.109153308f, 0.0979337171f, 0.0848884061f, 0.0712382868f, 0.0579648763f, 0.0457720496f, 0.0350921489f, 0.026121648f, 0.0188719947f, 0.0132241426f, 0.00897921063f, 0.00590096181f, 0.00374835311f, 0.00229803054f, 0.00135767413f, 0.000771724968f, 0.000421353121f, 0.000220612434f, 0.000110585039f, 5.29821737e-05f, 2.42224505e-05f, 1.05500121e-05f, 4.37048766e-06f, 1.71928457e-06f},
        /* c3 */ {0.0661984012f, 0.0613452122f, 0.0522315502f, 0.039945513f, 0.0258928481f, 0.0115722492f, -0.00165121118f, -0.0127280001f, -0.0210274365f, -0.0263513308f, -0.0288712345f, -0.029018987f, -0.0273642559f, -0.0245060939f, -0.0209935103f, -0.0172785483f, -0.0136974715f, -0.0104722735f, -0.00772459758f, -0.0054957699f, -0.00376857864f, -0.00248804013f, -0.0015794459f, -0.000962707389f, -0.00056255376f, -0.000314653909f, -0.00016819514f, -8.57858904e-05f, -4.16825278e-05f, -1.92639563e-05f, -8.45495924e-06f, -3.51865765e-06f},
        /* c4 */ {-0.00396430725f, -0.0114052473f, -0.0174634922f, -0.0214708205f, -0.0230918229f, -0.0223650485f, -0.0196672846f, -0.015609866f, -0.0108971875f, -0.00618800428f, -0.00199417071f, 0.00136652519f, 0.00376673485f, 0.00523172924f, 0.00588749116f, 0.00591075141f, 0.00548985414f, 0.00479885936f, 0.00398324803f, 0.00315413182f, 0.00238801516f, 0.00173000887f, 0.00119912135f, 0.00079467945f, 0.000503038929f, 0.000303791428f, 0.000174803994f, 9.57067168e-05f, 4.97909095e-05f, 2.45793053e-05f, 1.14972208e-05f, 5.08872563e-06f},
        /* c5 */ {-0.0100298142f, -0.00880104862f, -0.00654543284f, -0.00363197457f, -0.000527863915f, 0.00229567592f, 0.0044607725f, 0.00575416256f, 0.00615005894f, 0.00578168035f, 0.00487844739f, 0.00369527144f, 0.00245649577f, 0.00132521195f, 0.000396780815f, -0.000291505567f, -0.000743944081f, -0.000989994733f, -0.00107132364f, -0.00103294186f, -0.000917618396f, -0.000762463431f, -0.000596918981f, -0.000441860233f, -0.000309741736f, -0.000205711622f, -0.00012941724f, -7.70855404e-05f, -4.3438944e-05f, -2.31381273e-05f, -1.1638439e-05f, -5.52232723e-06f},
        /* c6 */ {0.000677330245f, 0.00191419537f, 0.00283654919f, 0.00329723023f, 0.00323908892f, 0.00271196384f, 0.00186126924f, 0.00088471832f, -2.46142208e-05f, -0.000726992148f, -0.00115880859f, -0.00132715108f, -0.00128610583f, -0.00110820646f, -0.000862557383f, -0.000602791493f, -0.000363911648f, -0.000165040503f, -1.37143952e-05f, 9.00066952e-05f, 0.000150679261f, 0.000175651367f, 0.000173791806f, 0.00015436059f, 0.000125900333f, 9.53181443e-05f, 6.73592585e-05f, 4.45636506e-05f, 2.76440187e-05f, 1.60904619e-05f, 8.7895296e-06f, 4.50536936e-06f},
    };
    /* The GELU of the central range, y[i] = x[i] G(x[i]) for every i < m with |x[i]| <= 5, sixteen at a time, with
       G(-u) (Phi(-u) for the erf form, S(-u) for the tanh form) looked up in `table` (one of the two above: no
       exponential), then y = x G(-|x|) for x < 0 and y = x - |x| G(-|x|) for x >= 0 (G(u) = 1 - G(-u) for both
       forms; one fused step; -0 stays -0). Every other x[i] (|x| > 5, NaN) is left to the caller: appended to far_x
       with offset + i in far_at (both of room m + 16: whole vectors are stored), y[i] untouched; but where more than
       CYNET_SHORTCUT_MIN of them are, those whose full form gives a known result take it here: y = x for x > 6, and
       y = -0 for -FLT_MAX <= x < zero_below (-11 for the tanh form, -inf for the erf form: none). Returns how many
       were appended. m <= CYNET_CENTRAL_MAX (the callers' STAGE). x is prefetched 2 KB ahead: the form is light
       enough for the loads' latency to show (without it, the erf form on (4096, 4096) standard normal values took
       1.3-1.5x as long on 1 and 2 threads on the Intel Xeon development machine). */
    /* A central table (32 intervals of width h = 5/32 on [0, 5)) at u: interval k = min(floor(6.4 u), 31), t = u -
       (k h + h/2); for u > 5 a value of the last interval, which the callers do not use. */
    static inline __m512 cynet_central_eval(const __m512 *lo, const __m512 *hi, __m512 u) {
        __m512i k = _mm512_min_epi32(_mm512_cvttps_epi32(_mm512_mul_ps(u, _mm512_set1_ps(6.4f))),
                                     _mm512_set1_epi32(31));
        __m512 t = _mm512_sub_ps(u, _mm512_fmadd_ps(_mm512_cvtepi32_ps(k), _mm512_set1_ps(0.15625f),
                                                    _mm512_set1_ps(0.078125f)));
        return cynet_table32_eval(lo, hi, k, t);
    }
    #define CYNET_CENTRAL_MAX 64
    #define CYNET_SHORTCUT_MIN 16
    #ifndef CYNET_CENTRAL_PREFETCH
    #define CYNET_CENTRAL_PREFETCH 2048
    #endif
    /* The lanes of x[i:i + 16] (of m) a central block takes: *mask the lanes within m, *v their values, *u = |v|; x is
       prefetched CYNET_CENTRAL_PREFETCH bytes ahead. Returns the central lanes, |x| <= 5 (NaN is not). */
    static inline __mmask16 cynet_central_lanes(const float *x, Py_ssize_t i, Py_ssize_t m, __mmask16 *mask,
                                                __m512 *v, __m512 *u) {
        *mask = (m - i >= 16) ? (__mmask16)0xFFFF : (__mmask16)((1u << (m - i)) - 1u);
        *v = _mm512_maskz_loadu_ps(*mask, x + i);
        *u = _mm512_abs_ps(*v);
        _mm_prefetch((const char *)(x + i) + CYNET_CENTRAL_PREFETCH, _MM_HINT_T0);
        return _mm512_mask_cmp_ps_mask(*mask, *u, _mm512_set1_ps(5.0f), _CMP_LE_OQ);
    }
    static inline Py_ssize_t cynet_gelu_central_block(const float (*table)[32], float zero_below_f, const float *x,
                                                      float *y, Py_ssize_t m, int offset, float *far_x, int *far_at) {
        const __m512 zero_below = _mm512_set1_ps(zero_below_f);
        __m512 lo[8], hi[8];
        int shortcuts;
        const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        __mmask16 far_mask[CYNET_CENTRAL_MAX / 16], any_far = 0;
        Py_ssize_t i, n_far = 0;
        cynet_table32_load(table, lo, hi);
        for (i = 0; i < m; i += 16) {
            __mmask16 mask;
            __m512 v, u;
            __mmask16 central = cynet_central_lanes(x, i, m, &mask, &v, &u);
            __mmask16 far = mask & ~central;
            __m512 p = cynet_central_eval(lo, hi, u);                             /* G(-|x|) */
            __m512 r = _mm512_mask_mul_ps(_mm512_fnmadd_ps(u, p, v), _mm512_cmp_ps_mask(v, _mm512_setzero_ps(),
                                          _CMP_LT_OQ), v, p);
            _mm512_mask_storeu_ps(y + i, central, r);
            far_mask[i / 16] = far;
            any_far |= far;
        }
        if (!any_far)                                 /* the common case: one branch per call, rarely mispredicted */
            return 0;
        for (i = 0; i < m; i += 16)
            n_far += __builtin_popcount((unsigned)far_mask[i / 16]);
        /* many beyond 5 (wide inputs): take those whose full form is known exactly here (the same bits either way,
           so the threshold only moves work) */
        shortcuts = n_far > CYNET_SHORTCUT_MIN;
        n_far = 0;
        for (i = 0; i < m; i += 16) {                 /* no branch per vector: for wide inputs, a coin toss */
            __mmask16 far = far_mask[i / 16];
            __m512 v = _mm512_maskz_loadu_ps(far, x + i);
            if (shortcuts) {
                /* x > 6 (+inf too): y = x (the full forms round x - x G(-x), G(-x) < 1e-9, to x); and
                   -FLT_MAX <= x < zero_below: y = -0 (the tanh form's full form below -11) */
                __mmask16 ident = _mm512_mask_cmp_ps_mask(far, v, _mm512_set1_ps(6.0f), _CMP_GT_OQ);
                __mmask16 zero = _mm512_mask_cmp_ps_mask(_mm512_mask_cmp_ps_mask(far, v, zero_below, _CMP_LT_OQ),
                                                         v, _mm512_set1_ps(-FLT_MAX), _CMP_GE_OQ);
                _mm512_mask_storeu_ps(y + i, ident | zero, _mm512_mask_mov_ps(v, zero, _mm512_set1_ps(-0.0f)));
                far &= ~(ident | zero);
            }
            __m512i at = _mm512_add_epi32(lane, _mm512_set1_epi32(offset + (int)i));
            _mm512_storeu_ps(far_x + n_far, _mm512_maskz_compress_ps(far, v));
            _mm512_storeu_si512((void *)(far_at + n_far), _mm512_maskz_compress_epi32(far, at));
            n_far += __builtin_popcount((unsigned)far);
        }
        return n_far;
    }
    static inline Py_ssize_t cynet_gelu_erf_central_block(const float *x, float *y, Py_ssize_t m, int offset,
                                                          float *far_x, int *far_at) {
        return cynet_gelu_central_block(cynet_lower_tail_table, -INFINITY, x, y, m, offset, far_x, far_at);
    }
    static inline Py_ssize_t cynet_gelu_tanh_central_block(const float *x, float *y, Py_ssize_t m, int offset,
                                                           float *far_x, int *far_at) {
        return cynet_gelu_central_block(cynet_tanh_gate_table, -11.0f, x, y, m, offset, far_x, far_at);
    }
    /* The slopes at -u of both forms, D(-u) = d/dx [x G(x)] at x = -u, on [0, 5) in the same layout: Phi(-u) - u phi(u)
       (erf form) and S(-u) - u S(-u) (1 - S(-u)) 2c (1 + 3k u^2) (tanh form). D changes sign near u = 0.75, so these
       are fitted for the least absolute error (scripts/fit_normal_tail_table.py: below 2.7e-12; evaluated in float32
       as below, within 0.16 eps (1 + u) of D(-u), and 1 - D(-u) rounded to float32 within 0.40 eps (1 + u), on the
       same grid: the backward's bound is 4 eps |dout| (1 + |x|)). */
    static const float cynet_erf_slope_table[8][32] = {
        /* c0_hi */ {0.437791914f, 0.316377997f, 0.203647569f, 0.104363181f, 0.0219161976f, -0.041919902f, -0.0870079622f, -0.114656374f, -0.127272442f, -0.12793307f, -0.11994876f, -0.106485367f, -0.0902858227f, -0.0735090822f, -0.0576803312f, -0.043730136f, -0.0320922323f, -0.0228288136f, -0.0157575998f, -0.0105628092f, -0.0068807858f, -0.00435810816f, -0.00268503302f, -0.00160972332f, -0.000939367455f, -0.000533721934f, -0.000295315316f, -0.000159158968f, -8.35646206e-05f, -4.27486739e-05f, -2.13101648e-05f, -1.03529392e-05f},
        /* c0_lo */ {1.2824013e-09f, 3.10538151e-09f, 3.88388566e-09f, -2.27547181e-09f, 4.13285517e-10f, -1.1079259e-10f, -1.12044218e-09f, 2.77079915e-09f, 2.09304352e-10f, 3.11003423e-09f, -2.35373698e-09f, -2.18688859e-10f, 8.40656711e-10f, -3.13139448e-09f, 1.64003144e-09f, 2.84577417e-10f, 1.1659243e-10f, -7.37561456e-10f, 7.69597275e-10f, 3.12460141e-10f, -2.29431946e-10f, 2.2693418e-10f, -1.12833035e-10f, 2.79550406e-12f, -1.92782248e-11f, 2.50226801e-11f, 1.43578257e-11f, -5.58147712e-12f, 1.22039087e-12f, 1.72357484e-12f, -1.05115976e-13f, 3.3519132e-13f},
        /* c1 */ {-0.793025792f, -0.754947364f, -0.682872772f, -0.584323287f, -0.469104707f, -0.347872287f, -0.230688646f, -0.125825778f, -0.0389894508f, 0.0269612223f, 0.071831055f, 0.0975575224f, 0.107488811f, 0.105631232f, 0.0959951356f, 0.0821184739f, 0.0667941794f, 0.0519839823f, 0.0388735607f, 0.0280138031f, 0.0194965526f, 0.0131255388f, 0.00855848007f, 0.00541039603f, 0.00331866415f, 0.00197644718f, 0.00114348962f, 0.000642989413f, 0.000351535738f, 0.000186928068f, 9.67040178e-05f, 4.86842946e-05f},
        /* c2 */ {0.0620499663f, 0.179439321f, 0.277763247f, 0.347645044f, 0.383992344f, 0.386463106f, 0.359058529f, 0.309006035f, 0.245232284f, 0.176777512f, 0.111462489f, 0.0550137609f, 0.0107186716f, -0.020442741f, -0.0393269844f, -0.0479898714f, -0.0490427352f, -0.0451180935f, -0.0385044627f, -0.0309583023f, -0.0236644354f, -0.0172981005f, -0.0121398102f, -0.00820303708f, -0.00534820184f, -0.00336990273f, -0.00205474743f, -0.00121360249f, -0.000694920192f, -0.000386042695f, -0.000208176032f, -0.000109027467f},
        /* c3 */ {0.262321144f, 0.234076723f, 0.18205668f, 0.114278153f, 0.040697556f, -0.0286913607f, -0.0856084675f, -0.124716468f, -0.144121736f, -0.145139515f, -0.131489754f, -0.108194798f, -0.0804669112f, -0.0528166555f, -0.0285107382f, -0.00939883199f, 0.00395748951f, 0.0119673721f, 0.0156251043f, 0.0161530618f, 0.0147316726f, 0.0123363277f, 0.00967173465f, 0.007177928f, 0.00507778488f, 0.00343994983f, 0.00223906757f, 0.00140371872f, 0.000849181437f, 0.000496435969f, 0.000280786946f, 0.000153800123f},
        /* c4 */ {-0.0232173707f, -0.0659476742f, -0.0983340666f, -0.115849733f, -0.11689508f, -0.102907851f, -0.0777902529f, -0.046857316f, -0.0156128192f, 0.0113334227f, 0.0309759509f, 0.0421537086f, 0.0453582034f, 0.042247165f, 0.0350424238f, 0.0259748604f, 0.0168851297f, 0.00902137998f, 0.00301659736f, -0.0010080525f, -0.00327864289f, -0.004198818f, -0.00421190588f, -0.00371058914f, -0.00299320417f, -0.00225591683f, -0.00160681794f, -0.00108938362f, -0.000706422899f, -0.000439654454f, -0.000263285852f, -0.000152005872f},
        /* c5 */ {-0.0585307516f, -0.0492363013f, -0.0325689092f, -0.0118850721f, 0.00885118823f, 0.0259966273f, 0.0370022878f, 0.0408418477f, 0.0380226485f, 0.0302336067f, 0.0197771285f, 0.00896667968f, -0.000352218311f, -0.00706688222f, -0.0108334078f, -0.0119336732f, -0.0110362228f, -0.00894545671f, -0.00640134513f, -0.00395968882f, -0.00195282919f, -0.00051109615f, 0.000382477476f, 0.000829182274f, 0.000960584963f, 0.000901452324f, 0.000750326028f, 0.000574048085f, 0.000411002198f, 0.000278278108f, 0.000179373601f, 0.000110578723f},
        /* c6 */ {0.00513731642f, 0.0143411225f, 0.0206053779f, 0.0228045844f, 0.0207772516f, 0.0153399995f, 0.00795671623f, 0.000330964889f, -0.00603519334f, -0.0101621207f, -0.0117266653f, -0.0110040484f, -0.00867841113f, -0.00558799552f, -0.00250171591f, 3.13189958e-05f, 0.00173698727f, 0.00258997362f, 0.00273829466f, 0.00241215853f, 0.00184707635f, 0.00123279297f, 0.000692438567f, 0.000284520065f, 1.82616441e-05f, -0.000126859915f, -0.000183763434f, -0.000185625235f, -0.000159316885f, -0.000123322548f, -8.84099645e-05f, -5.95469501e-05f},
    };
    static const float cynet_tanh_slope_table[8][32] = {
        /* c0_hi */ {0.43779254f, 0.316394001f, 0.203714207f, 0.104517944f, 0.0221750773f, -0.0415814184f, -0.0866598636f, -0.114400662f, -0.127214134f, -0.128145635f, -0.120447159f, -0.107216835f, -0.0911419764f, -0.0743543357f, -0.05838627f, -0.0442047007f, -0.0322955921f, -0.022773657f, -0.0154966945f, -0.0101699242f, -0.00643153349f, -0.00391555065f, -0.00229221233f, -0.00128871645f, -0.000694903196f, -0.000358885154f, -0.000177269161f, -8.36231702e-05f, -3.76179778e-05f, -1.61135667e-05f, -6.56237944e-06f, -2.53714688e-06f},
        /* c0_lo */ {-8.36937408e-10f, -2.98654079e-09f, -5.93912364e-10f, 3.24092442e-09f, 7.62726271e-11f, 3.16684179e-10f, -1.46152113e-09f, 1.37061906e-09f, 1.9897286e-09f, -7.17514936e-09f, 2.60726152e-09f, 3.67928488e-09f, -1.96414018e-09f, 3.90746741e-10f, -4.17814394e-10f, 8.76560269e-10f, 1.13291532e-09f, -7.97395372e-10f, 2.17960885e-10f, -1.9354128e-10f, 8.42833373e-11f, -1.60846558e-10f, 5.75802392e-11f, 4.31977301e-11f, 1.1218872e-12f, -3.25267352e-12f, 6.3572537e-12f, -2.21158161e-12f, -1.00720365e-12f, 3.44155341e-13f, -7.25056476e-14f, 2.86192545e-14f},
        /* c1 */ {-0.79300195f, -0.75475055f, -0.682418525f, -0.583672941f, -0.468467206f, -0.347541451f, -0.230932325f, -0.126768515f, -0.0405389629f, 0.0251078885f, 0.0701004937f, 0.0963659585f, 0.10711401f, 0.106137343f, 0.0972319171f, 0.0837858319f, 0.068540819f, 0.05350288f, 0.0399658605f, 0.0286094323f, 0.0196365993f, 0.0129218679f, 0.00814837962f, 0.00491999974f, 0.00284172338f, 0.00156832661f, 0.000826042262f, 0.000414688635f, 0.000198160589f, 9.00103769e-05f, 3.88096814e-05f, 1.58614093e-05f},
        /* c2 */ {0.0623519979f, 0.180195376f, 0.278574109f, 0.348006785f, 0.383500159f, 0.385006011f, 0.35691759f, 0.306793272f, 0.243678629f, 0.176455304f, 0.112564564f, 0.0572843663f, 0.0135572068f, -0.0177614298f, -0.0374137685f, -0.04717445f, -0.0493253469f, -0.0462328978f, -0.0400490798f, -0.0325318612f, -0.0249686129f, -0.0181806851f, -0.0125852004f, -0.0082896566f, -0.00519652897f, -0.00309927063f, -0.00175755308f, -0.000946894637f, -0.000484190619f, -0.000234738021f, -0.000107770335f, -4.67986574e-05f},
        /* c3 */ {0.263554603f, 0.234688327f, 0.181639448f, 0.11281462f, 0.0386256501f, -0.0305908639f, -0.0865032375f, -0.124083348f, -0.142001167f, -0.142146707f, -0.128571764f, -0.106254071f, -0.0800293684f, -0.053881567f, -0.0306185167f, -0.0118536334f, 0.00182439014f, 0.0105985682f, 0.015158033f, 0.0164579879f, 0.0155221801f, 0.0132948477f, 0.0105448449f, 0.00782098621f, 0.00545251649f, 0.003583004f, 0.00222235708f, 0.0013017701f, 0.000720135053f, 0.000376099721f, 0.00018532906f, 8.60992586e-05f},
        /* c4 */ {-0.0237443168f, -0.0673524514f, -0.100114852f, -0.117290601f, -0.117304303f, -0.101931028f, -0.0756373629f, -0.0442782752f, -0.0135926325f, 0.0120120924f, 0.0300711524f, 0.0400369652f, 0.0428114124f, 0.040112786f, 0.0339036658f, 0.0259939879f, 0.0178317092f, 0.0104358848f, 0.00441441033f, 2.24013438e-05f, -0.00276263547f, -0.0041586319f, -0.00449508475f, -0.00413442869f, -0.00340783689f, -0.00257347059f, -0.00180020684f, -0.0011734888f, -0.000715217262f, -0.000408316177f, -0.000218550515f, -0.000109708519f},
        /* c5 */ {-0.0598370507f, -0.0500973351f, -0.0326161198f, -0.0109714651f, 0.0104960073f, 0.0277589057f, 0.0381146893f, 0.040760912f, 0.0367237702f, 0.0282340646f, 0.0178764444f, 0.00786647014f, -0.000339188729f, -0.00608997978f, -0.0093668038f, -0.01053329f, -0.010118112f, -0.00867062062f, -0.00668474147f, -0.00456594117f, -0.00261783344f, -0.00103666761f, 8.700131e-05f, 0.000755921181f, 0.00104187278f, 0.00105372898f, 0.000905771041f, 0.000693910813f, 0.000483831915f, 0.000310370408f, 0.000184282952f, 0.000101632177f},
        /* c6 */ {0.00537976343f, 0.0150365802f, 0.0216071643f, 0.0237801392f, 0.0212862361f, 0.0150513723f, 0.00690021878f, -0.00106096989f, -0.00713998359f, -0.010499699f, -0.0111970492f, -0.00989912916f, -0.00749446359f, -0.00477520097f, -0.00228380202f, -0.000300984451f, 0.00108800957f, 0.00191188091f, 0.00225258688f, 0.00221358938f, 0.00190758368f, 0.00144972978f, 0.00094836083f, 0.000491986109f, 0.000137933341f, -9.19456943e-05f, -0.000206482786f, -0.000233847255f, -0.00020829156f, -0.0001600291f, -0.000109808905f, -6.84303814e-05f},
    };
    /* The GELU backward of the central range, dx[i] = dout[i] D(x[i]) for every i < m with |x[i]| <= 5, sixteen at a
       time: D(-|x|) looked up in `table` (one of the two above: no exponential), D(x) = D(-|x|) for x < 0 and
       1 - D(-|x|) otherwise (for both forms D(x) + D(-x) = 1, as G(x) + G(-x) = 1); where more than
       CYNET_SHORTCUT_MIN lie beyond, dx[i] = dout[i] for 6 < x[i] <= FLT_MAX (cynet_slope_known_results). Every other
       x[i] (|x| > 5, NaN) is left to the caller: offset + i appended to far_at (of room m + 16: whole vectors are stored; the caller reads x and
       dout there, which this block leaves as they are, as it leaves dx[i]). Returns how many were appended (only the
       offsets are gathered here: compressing x and dout too made wide inputs 10% slower). m <= CYNET_CENTRAL_MAX;
       x and dout are prefetched as in cynet_gelu_central_block. */
    /* The offsets offset + i of the lanes set in far_mask (one mask per vector of 16 of a block of m values),
       appended to far_at in order (whole vectors are stored: room for m + 16); returns how many. */
    static inline Py_ssize_t cynet_far_offsets(const __mmask16 *far_mask, Py_ssize_t m, int offset, int *far_at) {
        const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        Py_ssize_t i, n_far = 0;
        for (i = 0; i < m; i += 16) {
            __m512i at = _mm512_add_epi32(lane, _mm512_set1_epi32(offset + (int)i));
            _mm512_storeu_si512((void *)(far_at + n_far), _mm512_maskz_compress_epi32(far_mask[i / 16], at));
            n_far += __builtin_popcount((unsigned)far_mask[i / 16]);
        }
        return n_far;
    }
    /* The known results among the far values of cynet_gelu_slope_central_block, for blocks with many of them:
       6 < x <= FLT_MAX take dx = dout (the slope is 1 in float32, |D(-x)| < 4e-8 for both forms: the full forms'
       bits, checked for every float32 of (6, 40] and a sweep to FLT_MAX) and leave far_mask. Not inlined: inlined,
       its constants took registers from the central loop (16 of them hold the table), which then ran 1.2x slower
       even on inputs without a single far value. */
    #if defined(__GNUC__)
    __attribute__((noinline))
    #endif
    static void cynet_slope_known_results(const float *dout, const float *x, float *dx, Py_ssize_t m,
                                          __mmask16 *far_mask) {
        Py_ssize_t i;
        for (i = 0; i < m; i += 16) {
            __mmask16 far = far_mask[i / 16];
            __m512 v = _mm512_maskz_loadu_ps(far, x + i);
            __mmask16 one = _mm512_mask_cmp_ps_mask(_mm512_mask_cmp_ps_mask(far, v, _mm512_set1_ps(6.0f), _CMP_GT_OQ),
                                                    v, _mm512_set1_ps(FLT_MAX), _CMP_LE_OQ);
            _mm512_mask_storeu_ps(dx + i, one, _mm512_maskz_loadu_ps(one, dout + i));
            far_mask[i / 16] = far & ~one;
        }
    }
    static inline Py_ssize_t cynet_gelu_slope_central_block(const float (*table)[32], const float *dout,
                                                            const float *x, float *dx, Py_ssize_t m, int offset,
                                                            int *far_at) {
        __m512 lo[8], hi[8];
        __mmask16 far_mask[CYNET_CENTRAL_MAX / 16], any_far = 0;
        Py_ssize_t i, n_far = 0;
        cynet_table32_load(table, lo, hi);
        for (i = 0; i < m; i += 16) {
            __mmask16 mask;
            __m512 v, u;
            __mmask16 central = cynet_central_lanes(x, i, m, &mask, &v, &u);
            __m512 g = _mm512_maskz_loadu_ps(mask, dout + i);
            _mm_prefetch((const char *)(dout + i) + CYNET_CENTRAL_PREFETCH, _MM_HINT_T0);
            __mmask16 far = mask & ~central;
            __m512 p = cynet_central_eval(lo, hi, u);                             /* D(-|x|) */
            __m512 slope = _mm512_mask_sub_ps(p, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GE_OQ),
                                              _mm512_set1_ps(1.0f), p);
            _mm512_mask_storeu_ps(dx + i, central, _mm512_mul_ps(g, slope));
            far_mask[i / 16] = far;
            any_far |= far;
        }
        if (!any_far)
            return 0;
        for (i = 0; i < m; i += 16)
            n_far += __builtin_popcount((unsigned)far_mask[i / 16]);
        if (n_far > CYNET_SHORTCUT_MIN)                    /* wide inputs: take the known results (the same bits) */
            cynet_slope_known_results(dout, x, dx, m, far_mask);
        return cynet_far_offsets(far_mask, m, offset, far_at);
    }
    static inline Py_ssize_t cynet_gelu_erf_slope_central_block(const float *dout, const float *x, float *dx,
                                                                Py_ssize_t m, int offset, int *far_at) {
        return cynet_gelu_slope_central_block(cynet_erf_slope_table, dout, x, dx, m, offset, far_at);
    }
    static inline Py_ssize_t cynet_gelu_tanh_slope_central_block(const float *dout, const float *x, float *dx,
                                                                 Py_ssize_t m, int offset, int *far_at) {
        return cynet_gelu_slope_central_block(cynet_tanh_slope_table, dout, x, dx, m, offset, far_at);
    }
    #else
    #define CYNET_TAIL_RATIO_BLOCK 0
    static inline void cynet_normal_tail_ratio_block(const float *u, float *out, Py_ssize_t m) {
        (void)u; (void)out; (void)m;  /* not called: TAIL_RATIO_BLOCK is 0 */
    }
    static inline Py_ssize_t cynet_gelu_erf_central_block(const float *x, float *y, Py_ssize_t m, int offset,
                                                          float *far_x, int *far_at) {
        (void)x; (void)y; (void)m; (void)offset; (void)far_x; (void)far_at;  /* not called: TAIL_RATIO_BLOCK is 0 */
        return 0;
    }
    static inline Py_ssize_t cynet_gelu_tanh_central_block(const float *x, float *y, Py_ssize_t m, int offset,
                                                           float *far_x, int *far_at) {
        (void)x; (void)y; (void)m; (void)offset; (void)far_x; (void)far_at;  /* not called: TAIL_RATIO_BLOCK is 0 */
        return 0;
    }
    static inline Py_ssize_t cynet_gelu_erf_slope_central_block(const float *dout, const float *x, float *dx,
                                                                Py_ssize_t m, int offset, int *far_at) {
        (void)dout; (void)x; (void)dx; (void)m; (void)offset; (void)far_at;  /* not called: TAIL_RATIO_BLOCK is 0 */
        return 0;
    }
    static inline Py_ssize_t cynet_gelu_tanh_slope_central_block(const float *dout, const float *x, float *dx,
                                                                 Py_ssize_t m, int offset, int *far_at) {
        (void)dout; (void)x; (void)dx; (void)m; (void)offset; (void)far_at;  /* not called: TAIL_RATIO_BLOCK is 0 */
        return 0;
    }
    #endif
    """
    double TAIL_P0 "CYNET_TAIL_P0"
    double TAIL_P1 "CYNET_TAIL_P1"
    double TAIL_P2 "CYNET_TAIL_P2"
    double TAIL_P3 "CYNET_TAIL_P3"
    double TAIL_P4 "CYNET_TAIL_P4"
    double TAIL_Q0 "CYNET_TAIL_Q0"
    double TAIL_Q1 "CYNET_TAIL_Q1"
    double TAIL_Q2 "CYNET_TAIL_Q2"
    double TAIL_Q3 "CYNET_TAIL_Q3"
    double TAIL_Q4 "CYNET_TAIL_Q4"
    # True in the AVX-512 build, where normal_tail_ratio_block (a float32 piecewise polynomial) replaces a loop of
    # normal_tail_ratio (a compile-time constant: the branch on it is folded away).
    bint TAIL_RATIO_BLOCK "CYNET_TAIL_RATIO_BLOCK"
    # dst[at[j]] = src[j] for j < m, scalar stores (never a vector scatter)
    void scatter_f32 "cynet_scatter_f32"(float* dst, const int* at, const float* src, Py_ssize_t m) noexcept nogil
    void normal_tail_ratio_block "cynet_normal_tail_ratio_block"(const float* u, float* out, Py_ssize_t m) noexcept nogil
    # y = x G(x) where |x| <= 5 (G: Phi, or the tanh form's gate), the other x and offset + their index appended to
    # far_x / far_at (the AVX-512 build only)
    Py_ssize_t gelu_erf_central_block "cynet_gelu_erf_central_block"(const float* x, float* y, Py_ssize_t m,
                                                                     int offset, float* far_x,
                                                                     int* far_at) noexcept nogil
    Py_ssize_t gelu_tanh_central_block "cynet_gelu_tanh_central_block"(const float* x, float* y, Py_ssize_t m,
                                                                       int offset, float* far_x,
                                                                       int* far_at) noexcept nogil
    # dx = dout D(x) where |x| <= 5 (D: the slope of x G(x)), offset + the other indices appended to far_at (the
    # AVX-512 build only)
    Py_ssize_t gelu_erf_slope_central_block "cynet_gelu_erf_slope_central_block"(
        const float* dout, const float* x, float* dx, Py_ssize_t m, int offset, int* far_at) noexcept nogil
    Py_ssize_t gelu_tanh_slope_central_block "cynet_gelu_tanh_slope_central_block"(
        const float* dout, const float* x, float* dx, Py_ssize_t m, int offset, int* far_at) noexcept nogil


cdef inline double normal_tail_ratio(double u) noexcept nogil:
    cdef double p = TAIL_P0
    cdef double q = TAIL_Q0
    p = fma_f64(p, u, TAIL_P1)
    p = fma_f64(p, u, TAIL_P2)
    p = fma_f64(p, u, TAIL_P3)
    p = fma_f64(p, u, TAIL_P4)
    q = fma_f64(q, u, TAIL_Q1)
    q = fma_f64(q, u, TAIL_Q2)
    q = fma_f64(q, u, TAIL_Q3)
    q = fma_f64(q, u, TAIL_Q4)
    q = fma_f64(q, u, 1.0)
    return p / q


# The same R(u) evaluated in float32 (coefficients rounded to float32, Horner's rule in float32 lanes: eight per AVX2
# instruction instead of four, and no conversions): its rounding errors add up to about 5 float32 ulp of R at large u
# (4.8 measured on a 3e6-point grid of [0, 15]), too much for a result that must be accurate relative to itself (the
# GELU forward keeps normal_tail_ratio), but far inside an absolute bound: what the GELU slope needs, where R is added
# to x / sqrt(2 pi) and multiplied by exp(-u^2/2) <= 1.
cdef inline float normal_tail_ratio_f32(float u) noexcept nogil:
    cdef float p = <float>0.004116298923789119
    cdef float q = <float>0.010317911539098237
    p = fma_f32(p, u, <float>0.04063321629261453)
    p = fma_f32(p, u, <float>0.18323519810638839)
    p = fma_f32(p, u, <float>0.43829517512761507)
    p = fma_f32(p, u, <float>0.5000000029522479)
    q = fma_f32(q, u, <float>0.10185881539932704)
    q = fma_f32(q, u, <float>0.4694707632584922)
    q = fma_f32(q, u, <float>1.2025036221967573)
    q = fma_f32(q, u, <float>1.6744753312637684)
    q = fma_f32(q, u, <float>1.0)
    return p / q


# The range reduction of m * exp(-u^2/2) in float32 for 0 <= u <= 15 (r through the pointer, the scale 2**(n + 64)
# returned); the caller finishes it as (m (1 + q) s) 2**-64 with q = _expm1_reduced_f32(r) and s the scale, in loops of
# their own (staged: see activations.pyx, GELU erf form), within about one ulp of m times the exact exponential,
# rounded once at the end (also where the result is subnormal). u^2 is not rounded: u = u_hi + u_lo with u_hi holding
# the top 12 significant bits, so u_hi^2 is exact, and -u^2/2 = a + c with a = -u_hi^2/2 exact and
# c = -(u_hi u_lo + u_lo^2/2) small; the reduction takes n from a + c, subtracts n ln2 from a exactly (Cody & Waite)
# and then adds c. Rounding u^2 instead would cost up to u^2/2 ulp (84 at u = 13). 2**n (n reaches -163 at u = 15) is
# applied as in exp_neg_f32, as 2**(n + 64) and then 2**-64: one rounding, provided m 2**(n + 64) is normal (any
# normal m for u up to 9.4, |m| >= 2**-27 at u = 15; GELU's m is 0 or at least 0.02).
cdef inline float half_square_exp_reduce_f32(float u, float* r) noexcept nogil:
    cdef _f32_bits b
    cdef float u_hi, u_lo, a, c, n, t
    b.f = u
    b.i = b.i & -4096                                  # clear the low 12 of the 23 stored mantissa bits
    u_hi = b.f
    u_lo = u - u_hi                                    # exact
    a = <float>-0.5 * (u_hi * u_hi)                    # exact
    c = -(u_hi * u_lo + <float>0.5 * (u_lo * u_lo))
    n = round_f32((a + c) * <float>1.44269504088896341)
    t = fma_f32(n, <float>-0.693359375, a)             # exact
    r[0] = fma_f32(n, <float>2.12194440e-4, t) + c
    return _pow2_f32(n, 64)

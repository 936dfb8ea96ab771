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
    #else
    #define cynet_fma_f32(a, b, c) ((a) * (b) + (c))
    #define cynet_fma_f64(a, b, c) ((a) * (b) + (c))
    #endif
    """
    # a * b + c, fused (one rounding) where the instruction set has FMA, else two rounded operations.
    float fma_f32 "cynet_fma_f32"(float a, float b, float c) noexcept nogil
    double fma_f64 "cynet_fma_f64"(double a, double b, double c) noexcept nogil

cdef extern from "<math.h>" nogil:
    # Sign-bit operations (an AND / OR with masks once vectorised), not calls.
    float fabsf(float x)
    double fabs(double x)
    float copysignf(float x, float y)
    double copysign(double x, double y)

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


# expm1 for x in [-87, 88] (float32) / [-708, 709] (float64), or NaN: the core of expm1_f32 / expm1_f64, for callers
# whose argument is in range by construction.
cdef inline float expm1_in_range_f32(float x) noexcept nogil:
    cdef float n = round_f32(x * <float>1.44269504088896341)
    cdef float r = _ln2_remainder_f32(x, n)
    cdef float s = exp2i_f32(n)
    return fma_f32(s, _expm1_reduced_f32(r), s - <float>1.0)


cdef inline double expm1_in_range_f64(double x) noexcept nogil:
    cdef double n = round_f64(x * 1.4426950408889634074)
    cdef double r = _ln2_remainder_f64(x, n)
    cdef double s = exp2i_f64(n)
    return fma_f64(s, _expm1_reduced_f64(r), s - 1.0)


# expm1 for x <= 88 (float32) / 709 (float64); larger x saturate at expm1(88) / expm1(709) (finite).
cdef inline float expm1_f32(float x) noexcept nogil:
    x = <float>88.0 if x > <float>88.0 else x
    x = <float>-87.0 if x < <float>-87.0 else x        # expm1(-87) == -1 in float32
    return expm1_in_range_f32(x)


cdef inline double expm1_f64(double x) noexcept nogil:
    x = 709.0 if x > 709.0 else x
    x = -708.0 if x < -708.0 else x                    # expm1(-708) == -1 in float64; 2**n stays normal
    return expm1_in_range_f64(x)


# exp(-a) for a >= 0 (or NaN). n <= 0, so the scale 2**n is applied as 2**(n + 64), a normal number for every
# n >= -150 that a <= 104 gives, then times the constant 2**-64: the first product is exact and the second rounds once,
# also where the result is subnormal. (A general exp needs two scales and a split of n for the same property: this form
# takes 40% off sigmoid and tanh, whose results are the same bit for bit.)
cdef inline float exp_neg_f32(float a) noexcept nogil:
    cdef float n, r, s
    a = <float>104.0 if a > <float>104.0 else a        # exp(-104) < FLT_TRUE_MIN / 2: 0
    n = round_f32(a * <float>-1.44269504088896341)
    r = _ln2_remainder_f32(-a, n)
    s = _pow2_f32(n, 64)
    return fma_f32(s, _expm1_reduced_f32(r), s) * <float>5.42101086242752217e-20     # * 2**-64


cdef inline double exp_neg_f64(double a) noexcept nogil:
    cdef double n, r, s
    a = 746.0 if a > 746.0 else a                      # exp(-746) < DBL_TRUE_MIN / 2: 0
    n = round_f64(a * -1.4426950408889634074)
    r = _ln2_remainder_f64(-a, n)
    s = _pow2_f64(n, 64)
    return fma_f64(s, _expm1_reduced_f64(r), s) * 5.42101086242752217e-20


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


cdef inline floating vexp_neg(floating a) noexcept nogil:
    if floating is float:
        return exp_neg_f32(a)
    else:
        return exp_neg_f64(a)


cdef inline floating vexpm1(floating x) noexcept nogil:
    if floating is float:
        return expm1_f32(x)
    else:
        return expm1_f64(x)


# sigmoid(x) = 1 / (1 + exp(-x)), evaluated as e / (1 + e) with e = exp(-|x|) for x < 0 so that neither branch
# overflows and the tiny values for very negative x keep their relative accuracy.
cdef inline floating vsigmoid(floating x) noexcept nogil:
    cdef floating e = vexp_neg(vfabs(x))
    cdef floating s = <floating>1.0 / (<floating>1.0 + e)
    return e * s if x < 0 else s


# tanh(x) = sign(x) * e / (e + 2) with e = expm1(2|x|): no cancellation near 0, exactly +-1 for large |x|. The sign is
# copied from x, so +-0 and NaN come back as they came.
cdef inline floating vtanh(floating x) noexcept nogil:
    cdef floating ax = vfabs(x)
    cdef floating e
    if floating is float:
        ax = <float>44.0 if ax > <float>44.0 else ax   # tanh(44) rounds to 1; expm1(88) is still finite
        e = expm1_in_range_f32(ax + ax)
    else:
        ax = 354.0 if ax > 354.0 else ax
        e = expm1_in_range_f64(ax + ax)
    return vcopysign(e / (e + <floating>2.0), x)


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
cdef inline double normal_tail_ratio(double u) noexcept nogil:
    cdef double p = 0.004116298923789119
    cdef double q = 0.010317911539098237
    p = fma_f64(p, u, 0.04063321629261453)
    p = fma_f64(p, u, 0.18323519810638839)
    p = fma_f64(p, u, 0.43829517512761507)
    p = fma_f64(p, u, 0.5000000029522479)
    q = fma_f64(q, u, 0.10185881539932704)
    q = fma_f64(q, u, 0.4694707632584922)
    q = fma_f64(q, u, 1.2025036221967573)
    q = fma_f64(q, u, 1.6744753312637684)
    q = fma_f64(q, u, 1.0)
    return p / q


# m * exp(-u^2/2) in float32 for 0 <= u <= 15, within about one ulp of m times the exact exponential, rounded once at
# the end (also where the result is subnormal). u^2 is not rounded: u = u_hi + u_lo with u_hi holding the top 12
# significant bits, so u_hi^2 is exact, and -u^2/2 = a + c with a = -u_hi^2/2 exact and c = -(u_hi u_lo + u_lo^2/2)
# small; the range reduction takes n from a + c, subtracts n ln2 from a exactly (Cody & Waite) and then adds c.
# Rounding u^2 instead would cost up to u^2/2 ulp (84 at u = 13). 2**n (n reaches -163 at u = 15) is applied as in
# exp_neg_f32, as 2**(n + 64) and then 2**-64: one rounding, provided m 2**(n + 64) is normal (any normal m for u up
# to 9.4, |m| >= 2**-27 at u = 15; GELU's m is 0 or at least 0.02).
cdef inline float scaled_exp_neg_half_square_f32(float u, float m) noexcept nogil:
    cdef _f32_bits b
    cdef float u_hi, u_lo, a, c, n, r
    b.f = u
    b.i = b.i & -4096                                  # clear the low 12 of the 23 stored mantissa bits
    u_hi = b.f
    u_lo = u - u_hi                                    # exact
    a = <float>-0.5 * (u_hi * u_hi)                    # exact
    c = -(u_hi * u_lo + <float>0.5 * (u_lo * u_lo))
    n = round_f32((a + c) * <float>1.44269504088896341)
    r = fma_f32(n, <float>-0.693359375, a)             # exact
    r = fma_f32(n, <float>2.12194440e-4, r) + c
    return (fma_f32(m, _expm1_reduced_f32(r), m) * _pow2_f32(n, 64)) * <float>5.42101086242752217e-20


# sigmoid in double precision to what a float32 result needs (relative 2e-10): for float32 kernels whose sigmoid
# argument is itself computed (GELU's tanh form), so that the argument is not rounded to float32 first.
cdef inline double sigmoid_f64_for_f32(double u) noexcept nogil:
    cdef double au = -u if u < 0 else u
    cdef double e = exp_f64_for_f32(-(700.0 if au > 700.0 else au))  # clamped: keeps exp in range
    e = 0.0 if au > 700.0 else e                       # sigmoid(-700) is 0 in float32: exactly 0, as at -inf
    cdef double s = 1.0 / (1.0 + e)
    return e * s if u < 0 else s

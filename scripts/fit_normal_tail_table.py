"""Fit the piecewise polynomial behind the AVX-512 float32 GELU (erf form): R(u) = Phi(-u) exp(u^2/2) on [0, 16).

R is the function of scripts/fit_normal_tail_ratio.py (Mills' ratio over sqrt(2 pi)). Here [0, 16) is cut into 32
intervals of width 1/2; on interval k, u = k/2 + 1/4 + t with -1/4 <= t < 1/4 (t = (u - k/2) - 1/4: the first
difference is exact, the second too except for u < 1/8, where its rounding moves R by under 0.1 ulp), and
R(k/2 + 1/4 + t) ~ c0 + t (c1 + t (c2 + ... + t c6)), a degree-6 polynomial fitted for the least maximum relative error
(Lawson's iteratively reweighted least squares on 48 Chebyshev nodes, against a 40-digit reference). The kernel
looks the coefficients up with one vpermt2ps per degree (32 floats in two registers), evaluates in float32 and adds
c0 last as a pair c0_hi + c0_lo of floats, so that c0's own rounding does not count.

Prints the C table of cynet/_kernels/_vecmath.pxd (rows c0_hi, c0_lo, c1, ..., c6; 32 columns) and the fit's
maximum relative error (float64 evaluation), then the error of a float32 evaluation as the kernel does it, in float32
ulp of R, on a dense grid.

Needs mpmath (not a cynet dependency: `pip install mpmath`; torch installs it).
Run: python scripts/fit_normal_tail_table.py
"""
import mpmath
import numpy as np

mpmath.mp.dps = 40
INTERVALS, WIDTH, DEGREE, NODES = 32, 0.5, 6, 48


def tail_ratio(u):
    u = mpmath.mpf(u)
    return float(mpmath.erfc(u / mpmath.sqrt(2)) / 2 * mpmath.exp(u * u / 2))


def fit_interval(k):
    j = np.arange(NODES)
    t = WIDTH * np.cos(np.pi * (j + 0.5) / NODES) / 2
    r = np.array([tail_ratio(k * WIDTH + WIDTH / 2 + x) for x in t])
    v = np.vander(t, DEGREE + 1, increasing=True)
    w = np.ones(NODES)
    best = None
    for _ in range(60):
        c, *_ = np.linalg.lstsq(v * (np.sqrt(w) / r)[:, None], np.sqrt(w), rcond=None)
        err = np.abs(v @ c / r - 1)
        if best is None or err.max() < best[1]:
            best = (c, err.max())
        w = w * err / err.mean()
    return best[0]


def table():
    rows = np.zeros((DEGREE + 2, INTERVALS), np.float32)     # c0_hi, c0_lo, c1, ..., c6
    for k in range(INTERVALS):
        c = fit_interval(k)
        hi = np.float32(c[0])
        rows[0, k], rows[1, k] = hi, np.float32(c[0] - np.float64(hi))
        rows[2:, k] = c[1:].astype(np.float32)
    return rows


def fma32(a, b, c):
    """float32 fma, emulated: a b is exact in float64, then one (double) rounding."""
    return (a.astype(np.float64) * b + c).astype(np.float32)


def evaluate_f32(rows, u):
    u = u.astype(np.float32)
    k = np.minimum((u * np.float32(2)).astype(np.int32), INTERVALS - 1)
    t = ((u - k.astype(np.float32) * np.float32(0.5)).astype(np.float32) - np.float32(0.25)).astype(np.float32)
    p = rows[DEGREE + 1, k]
    for row in range(DEGREE, 1, -1):
        p = fma32(p, t, rows[row, k])
    s = (p * t).astype(np.float32)
    return (rows[0, k] + (s + rows[1, k]).astype(np.float32)).astype(np.float32)


def main():
    rows = table()
    print("static const float cynet_tail_table[%d][%d] = {" % rows.shape)
    names = ["c0_hi", "c0_lo"] + [f"c{d}" for d in range(1, DEGREE + 1)]
    for name, row in zip(names, rows):
        values = ", ".join(f"{float(v):.9g}f" for v in row)
        print(f"    /* {name} */ {{{values}}},")
    print("};")
    u = np.linspace(0, 15, 20_001).astype(np.float32)            # the kernel's u are float32 numbers
    truth = np.array([tail_ratio(float(x)) for x in u])
    got = evaluate_f32(rows, u).astype(np.float64)
    ulp = np.spacing(np.abs(truth).astype(np.float32)).astype(np.float64)
    err = np.abs(got - truth) / ulp
    print(f"float32 evaluation: max {err.max():.3f} ulp of R at u = {u[np.argmax(err)]:.5f}, "
          f"mean {err.mean():.3f} ({err.size} points)")


if __name__ == "__main__":
    main()

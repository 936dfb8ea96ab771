"""Fit the piecewise polynomials behind the AVX-512 float32 GELU (both forms, forward and backward).

Five tables, each for a function of u = |x| >= 0, each cut into 32 intervals (one vpermt2ps per coefficient looks up
32 floats held in two registers):

- the tail ratio R(u) = Phi(-u) exp(u^2/2) on [0, 16), intervals of width 1/2, degree 6. R is the function of
  scripts/fit_normal_tail_ratio.py (Mills' ratio over sqrt(2 pi)); the kernel multiplies it by exp(-u^2/2);
- the lower tail Phi(-u) itself on [0, 5), intervals of width 5/32, degree 6: the central path, which needs no
  exponential (|x| <= 5 holds all but 6e-7 of standard normal values, 1.2% of those with standard deviation 2);
- the tanh form's gate at -u, S(-u) = (1 + tanh(-w)) / 2 = 1 / (1 + exp(2w)) with w = sqrt(2/pi) (u + 0.044715 u^3),
  on [0, 5), width 5/32, degree 6: the same central path for GELU's tanh form;
- the slopes at -u of both forms, D(-u) = d/dx [x G(x)] at x = -u: Phi(-u) - u phi(u) (erf form) and
  S(-u) - u S(-u) (1 - S(-u)) 2c (1 + 3k u^2) (tanh form, c = sqrt(2/pi), k = 0.044715), on [0, 5), width 5/32,
  degree 6: the backward's central path (the slope at x >= 0 is 1 - D(-x) for both forms). D changes sign (near
  u = 0.75, and it is small beyond 4), so these are fitted for the least maximum absolute error: the backward's bound
  is absolute, |error| <= 4 eps |dout| (1 + |x|).

On interval k of width h, u = k h + h/2 + t with -h/2 <= t < h/2 (for the tail ratio t = (u - k h) - h/2: the first
difference is exact, the second too except for u - k h < h/4, where its rounding moves R by under 0.1 ulp; for the
other two t = u - (k h + h/2), exact for k >= 1, as u and the centre are within a factor 2 of each other), and
f(k h + h/2 + t) ~ c0 + t (c1 + t (c2 + ...)), fitted for the least maximum relative error (the slopes: absolute error)
by Lawson's iteratively reweighted least squares on 48 Chebyshev nodes, against a 40-digit reference. The kernel evaluates in float32 and adds
c0 last as a pair c0_hi + c0_lo of floats, so that c0's own rounding does not count.

Prints each C table of cynet/_kernels/_vecmath.pxd (rows c0_hi, c0_lo, c1, ...; 32 columns) and the error of a float32
evaluation as the kernel does it, on a dense grid: in float32 ulp of the function, for the slopes in units of
eps (1 + u), on both sides (D(-u), and 1 - D(-u) rounded to float32 as the kernel does).

Needs mpmath (not a cynet dependency: `pip install mpmath`; torch installs it).
Run: python scripts/fit_normal_tail_table.py
"""
import mpmath
import numpy as np

mpmath.mp.dps = 40
INTERVALS, NODES = 32, 48


def tail_ratio(u):
    u = mpmath.mpf(u)
    return float(mpmath.erfc(u / mpmath.sqrt(2)) / 2 * mpmath.exp(u * u / 2))


def lower_tail(u):
    """Phi(-u), the standard normal distribution function at -u."""
    return float(mpmath.erfc(mpmath.mpf(u) / mpmath.sqrt(2)) / 2)


def tanh_gate_lower(u):
    """The tanh form's gate 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) at x = -u."""
    u = mpmath.mpf(u)
    return float(1 / (1 + mpmath.exp(2 * mpmath.sqrt(2 / mpmath.pi) * (u + mpmath.mpf("0.044715") * u ** 3))))


def erf_slope_lower(u):
    """The erf form's slope at x = -u: Phi(-u) - u phi(u)."""
    u = mpmath.mpf(u)
    return float(mpmath.erfc(u / mpmath.sqrt(2)) / 2 - u * mpmath.exp(-u * u / 2) / mpmath.sqrt(2 * mpmath.pi))


def tanh_slope_lower(u):
    """The tanh form's slope at x = -u: S(-u) - u S(-u) (1 - S(-u)) 2c (1 + 3k u^2)."""
    u = mpmath.mpf(u)
    c, k = mpmath.sqrt(2 / mpmath.pi), mpmath.mpf("0.044715")
    s = 1 / (1 + mpmath.exp(2 * c * (u + k * u ** 3)))
    return float(s - u * s * (1 - s) * 2 * c * (1 + 3 * k * u * u))


SLOPES = (erf_slope_lower, tanh_slope_lower)

# name, function, interval width, degree, the grid checked (the kernel's u are float32 numbers)
TABLES = [
    ("cynet_tail_table", tail_ratio, 0.5, 6, np.linspace(0, 15, 20_001)),
    ("cynet_lower_tail_table", lower_tail, 0.15625, 6, np.linspace(0, 5, 40_001)),
    ("cynet_tanh_gate_table", tanh_gate_lower, 0.15625, 6, np.linspace(0, 5, 40_001)),
    ("cynet_erf_slope_table", erf_slope_lower, 0.15625, 6, np.linspace(0, 5, 40_001)),
    ("cynet_tanh_slope_table", tanh_slope_lower, 0.15625, 6, np.linspace(0, 5, 40_001)),
]


def fit_interval(f, k, width, degree, relative=True):
    j = np.arange(NODES)
    t = width * np.cos(np.pi * (j + 0.5) / NODES) / 2
    r = np.array([f(k * width + width / 2 + x) for x in t])
    v = np.vander(t, degree + 1, increasing=True)
    w = np.ones(NODES)
    best = None
    for _ in range(60):
        if relative:
            c, *_ = np.linalg.lstsq(v * (np.sqrt(w) / r)[:, None], np.sqrt(w), rcond=None)
            err = np.abs(v @ c / r - 1)
        else:
            c, *_ = np.linalg.lstsq(v * np.sqrt(w)[:, None], np.sqrt(w) * r, rcond=None)
            err = np.abs(v @ c - r)
        if best is None or err.max() < best[1]:
            best = (c, err.max())
        w = w * err / err.mean()
    return best


def table(f, width, degree):
    """(rows c0_hi, c0_lo, c1, ..., c_degree as float32, the largest fit error in float64: relative, or absolute for
    the slopes)."""
    rows = np.zeros((degree + 2, INTERVALS), np.float32)
    worst = 0.0
    for k in range(INTERVALS):
        c, err = fit_interval(f, k, width, degree, relative=f not in SLOPES)
        worst = max(worst, err)
        hi = np.float32(c[0])
        rows[0, k], rows[1, k] = hi, np.float32(c[0] - np.float64(hi))
        rows[2:, k] = c[1:].astype(np.float32)
    return rows, worst


def fma32(a, b, c):
    """float32 fma, emulated: a b is exact in float64, then one (double) rounding."""
    return (a.astype(np.float64) * b + c).astype(np.float32)


def evaluate_f32(rows, u, width, centred):
    """The kernel's float32 evaluation. t = (u - k h) - h/2 for the tail ratio, u - (k h + h/2) for the others
    (centred: the centre k h + h/2 is exact, and so is u minus it for k >= 1, both being within a factor 2)."""
    u = u.astype(np.float32)
    k = np.minimum((u * np.float32(1 / width)).astype(np.int32), INTERVALS - 1)
    kh = (k.astype(np.float32) * np.float32(width)).astype(np.float32)
    if centred:
        t = (u - (kh + np.float32(width / 2)).astype(np.float32)).astype(np.float32)
    else:
        t = ((u - kh).astype(np.float32) - np.float32(width / 2)).astype(np.float32)
    p = rows[-1, k]
    for row in range(len(rows) - 2, 1, -1):
        p = fma32(p, t, rows[row, k])
    s = (p * t).astype(np.float32)
    return (rows[0, k] + (s + rows[1, k]).astype(np.float32)).astype(np.float32)


def main():
    for name, f, width, degree, grid in TABLES:
        rows, worst = table(f, width, degree)
        print(f"static const float {name}[{rows.shape[0]}][{rows.shape[1]}] = {{")
        names = ["c0_hi", "c0_lo"] + [f"c{d}" for d in range(1, degree + 1)]
        for row_name, row in zip(names, rows):
            values = ", ".join(f"{float(v):.9g}f" for v in row)
            print(f"    /* {row_name} */ {{{values}}},")
        print("};")
        u = grid.astype(np.float32)
        truth = np.array([f(float(x)) for x in u])
        got = evaluate_f32(rows, u, width, centred=f is not tail_ratio)
        if f in SLOPES:
            scale = np.finfo(np.float32).eps * (1 + u.astype(np.float64))
            err = np.abs(got - truth) / scale
            err_right = np.abs((np.float32(1) - got).astype(np.float64) - (1 - truth)) / scale
            print(f"{name}: fit error {worst:.2e} absolute; float32 evaluation: max {err.max():.3f} eps (1 + u) at "
                  f"u = {u[np.argmax(err)]:.5f} (x = -u), {err_right.max():.3f} at u = {u[np.argmax(err_right)]:.5f} "
                  f"(x = u, 1 - D(-u)) ({err.size} points)\n")
            continue
        ulp = np.spacing(np.abs(truth).astype(np.float32)).astype(np.float64)
        err = np.abs(got.astype(np.float64) - truth) / ulp
        print(f"{name}: fit error {worst:.2e} relative; float32 evaluation: max {err.max():.3f} ulp at "
              f"u = {u[np.argmax(err)]:.5f}, mean {err.mean():.3f} ({err.size} points)\n")


if __name__ == "__main__":
    main()

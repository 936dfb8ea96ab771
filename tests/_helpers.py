"""Shared test helpers: the table of elementwise ops, and error measures."""
import numpy as np

from cynet import ops, reference

# name, forward kwargs, which tensor the backward takes ("x" or "y"), kinked at 0 (gradient tests avoid it),
# exact: forward is pure arithmetic on the input (bit-equal to the reference)
ELEMENTWISE = [
    ("sigmoid", {}, "y", False, False),
    ("tanh", {}, "y", False, False),
    ("relu", {}, "y", True, True),
    ("leaky_relu", {"negative_slope": 0.1}, "x", True, True),
    ("elu", {"alpha": 1.3}, "y", True, False),
    ("selu", {}, "y", True, False),
    ("gelu", {"approximate": "none"}, "x", False, False),
    ("gelu", {"approximate": "tanh"}, "x", False, False),
    ("silu", {}, "x", False, False),
]
ELEMENTWISE_IDS = [f"{name}-{next(iter(kw.values()))}" if kw else name for name, kw, *_ in ELEMENTWISE]


def forward_pair(name):
    return getattr(ops, f"{name}_forward"), getattr(reference, f"{name}_forward")


def backward_pair(name):
    return getattr(ops, f"{name}_backward"), getattr(reference, f"{name}_backward")


def ulp_error(actual, expected_f64, dtype):
    """|actual - expected| in units of the last place of `expected` rounded to `dtype` (finite, nonzero entries)."""
    expected_f64 = np.asarray(expected_f64, dtype=np.float64)
    rounded = expected_f64.astype(dtype)
    spacing = np.spacing(np.abs(rounded)).astype(np.float64)
    return np.abs(np.asarray(actual, np.float64) - expected_f64) / spacing


def assert_close_ulp(actual, expected_f64, dtype, max_ulp, abs_floor=0.0):
    """Every finite entry within max_ulp of the float64 truth (or within abs_floor in absolute terms)."""
    expected_f64 = np.asarray(expected_f64, dtype=np.float64)
    assert np.array_equal(np.isnan(actual), np.isnan(expected_f64.astype(dtype)))
    finite = np.isfinite(expected_f64.astype(dtype))
    assert np.array_equal(actual[~finite & ~np.isnan(actual)], expected_f64.astype(dtype)[~finite & ~np.isnan(actual)])
    a, e = actual[finite], expected_f64[finite]
    err = ulp_error(a, e, dtype)
    bad = (err > max_ulp) & (np.abs(a - e) > abs_floor)
    assert not bad.any(), (f"{bad.sum()} entries beyond {max_ulp} ulp; worst {err[bad].max()} ulp at "
                           f"expected={e[bad][np.argmax(err[bad])]}, got={a[bad][np.argmax(err[bad])]}")


def numerical_gradient(f, x, dout, h=1e-5):
    """Centred difference of sum(f(x) * dout) with respect to every entry of x (float64), one entry at a time."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = np.sum(f(x) * dout)
        flat[i] = old - h
        minus = np.sum(f(x) * dout)
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * h)
    return grad


def relative_error(a, b):
    """max |a - b| / max(|a|, |b|), with 0/0 counted as 0 (the CS231n measure)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    denom = np.maximum(np.abs(a), np.abs(b))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(denom == 0, 0.0, np.abs(a - b) / denom)
    return float(rel.max()) if rel.size else 0.0

"""cynet.init: gains, fans, the distribution of every initialiser, orthogonality, seeding, dtypes and errors.

Oracles: hand-computed gains and fans, the formulas of the Glorot/He papers written out here, a Gram-Schmidt
orthonormalisation written here (the unique QR with a positive diagonal R), and torch.nn.init when torch is
importable (its formulas and the statistics of its draws; the values differ, the random sources being different).

Statistics use tensors of 200,000 entries: the sample std of n normal draws has relative standard error
1/sqrt(2n) ~ 0.16 %, so a 2 % tolerance is more than ten standard errors wide and still catches a wrong factor.
"""
import math

import numpy as np
import pytest

from cynet import _random
from cynet import init
from cynet.nn import Parameter

try:
    import torch
    import torch.nn.init as tinit
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

DTYPES = [np.float32, np.float64]
SHAPE = (400, 500)          # fan_in 500, fan_out 400, 200,000 entries
FAN_IN, FAN_OUT = 500, 400


def rel(a, b):
    return abs(a - b) / abs(b)


# --- calculate_gain --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("linear", 1.0), ("identity", 1.0), ("conv2d", 1.0), ("sigmoid", 1.0), ("tanh", 5 / 3),
    ("relu", math.sqrt(2)), ("selu", 0.75), ("leaky_relu", math.sqrt(2 / (1 + 0.01 ** 2))),
])
def test_calculate_gain_values(name, expected):
    assert init.calculate_gain(name) == pytest.approx(expected, rel=1e-15)


def test_calculate_gain_leaky_relu_slope():
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04), rel=1e-15)
    assert init.calculate_gain("leaky_relu", 0) == pytest.approx(math.sqrt(2), rel=1e-15)
    assert init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3), rel=1e-15)
    for bad in (True, "0.1", float("nan")):
        with pytest.raises(ValueError, match="negative_slope"):
            init.calculate_gain("leaky_relu", bad)


def test_calculate_gain_unknown_name():
    with pytest.raises(ValueError, match="calculate_gain.*'softplus'.*tanh"):
        init.calculate_gain("softplus")


@needs_torch
@pytest.mark.parametrize("name, param", [("linear", None), ("sigmoid", None), ("tanh", None), ("relu", None),
                                         ("selu", None), ("leaky_relu", None), ("leaky_relu", 0.3)])
def test_calculate_gain_matches_torch(name, param):
    assert init.calculate_gain(name, param) == pytest.approx(tinit.calculate_gain(name, param), rel=1e-12)


# --- fans ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, expected", [((4, 3), (3, 4)), ((64, 3, 5, 5), (75, 1600)), ((8, 2, 7), (14, 56)),
                                             ((1, 1), (1, 1))])
def test_fan_in_and_fan_out(shape, expected):
    assert init.fan_in_and_fan_out(np.empty(shape)) == expected
    assert init.fan_in_and_fan_out(Parameter(np.empty(shape))) == expected


@needs_torch
@pytest.mark.parametrize("shape", [(4, 3), (64, 3, 5, 5), (8, 2, 7)])
def test_fan_in_and_fan_out_matches_torch(shape):
    assert init.fan_in_and_fan_out(np.empty(shape)) == tinit._calculate_fan_in_and_fan_out(torch.empty(shape))


@pytest.mark.parametrize("fn", [init.fan_in_and_fan_out, init.xavier_uniform_, init.xavier_normal_,
                                init.kaiming_uniform_, init.kaiming_normal_])
@pytest.mark.parametrize("shape", [(5,), ()])
def test_fan_undefined_below_two_dimensions(fn, shape):
    # the error names the function called (it named fan_in_and_fan_out for xavier_uniform_ and the others)
    with pytest.raises(ValueError, match=rf"cynet\.init\.{fn.__name__}: fan in and fan out .*fewer than 2 dimensions"):
        fn(np.zeros(shape))


def test_orthogonal_needs_two_dimensions():
    with pytest.raises(ValueError, match=r"orthogonal_.*2 or more dimensions.*\(5,\)"):
        init.orthogonal_(np.zeros(5))


# --- constant fills --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_fills(dtype):
    a = np.full((3, 4), 7.0, dtype)
    assert init.zeros_(a) is a and not a.any()
    assert init.ones_(a) is a and (a == 1).all()
    assert init.constant_(a, -0.25) is a and (a == -0.25).all() and a.dtype == dtype
    p = Parameter(np.zeros(3, dtype))
    assert init.constant_(p, 2.0) is p and (p.data == 2).all()


# --- statistics of the random initialisers ---------------------------------------------------------------------------
def _normal_cases():
    g = 5 / 3
    return [
        ("normal", lambda w: init.normal_(w, mean=0.5, std=0.2), 0.5, 0.2),
        ("xavier_normal", lambda w: init.xavier_normal_(w, gain=g), 0.0, g * math.sqrt(2 / (FAN_IN + FAN_OUT))),
        ("kaiming_normal relu", lambda w: init.kaiming_normal_(w, nonlinearity="relu"), 0.0, math.sqrt(2 / FAN_IN)),
        ("kaiming_normal fan_out", lambda w: init.kaiming_normal_(w, a=0.2, mode="fan_out"), 0.0,
         math.sqrt(2 / 1.04) / math.sqrt(FAN_OUT)),
        ("he", lambda w: init.get_initializer("he")(w), 0.0, math.sqrt(2 / FAN_IN)),
        ("xavier", lambda w: init.get_initializer("xavier")(w), 0.0, math.sqrt(2 / (FAN_IN + FAN_OUT))),
        ("small normal", lambda w: init.get_initializer("normal")(w), 0.0, 0.01),
        ("kaiming_normal name", lambda w: init.get_initializer("kaiming_normal")(w), 0.0, math.sqrt(2 / FAN_IN)),
        ("xavier_normal name", lambda w: init.get_initializer("xavier_normal")(w), 0.0,
         math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", _normal_cases(), ids=lambda c: c[0])
def test_normal_initialisers_statistics(case, dtype):
    _, fill, mean, std = case
    w = np.empty(SHAPE, dtype)
    _random.manual_seed(1)
    assert fill(w) is w
    assert w.dtype == dtype
    assert rel(w.std(dtype=np.float64), std) < 0.02
    assert abs(w.mean(dtype=np.float64) - mean) < 0.02 * std
    # Gaussian, not uniform: about 4.55 % of the draws lie beyond two standard deviations
    assert 0.040 < np.mean(np.abs(w - mean) > 2 * std) < 0.051


def _uniform_cases():
    g = 5 / 3
    return [
        ("uniform", lambda w: init.uniform_(w, low=-0.3, high=0.7), -0.3, 0.7),
        ("xavier_uniform", lambda w: init.xavier_uniform_(w, gain=g), *(lambda b: (-b, b))(
            g * math.sqrt(6 / (FAN_IN + FAN_OUT)))),
        ("kaiming_uniform relu", lambda w: init.kaiming_uniform_(w, nonlinearity="relu"),
         -math.sqrt(6 / FAN_IN), math.sqrt(6 / FAN_IN)),
        ("kaiming_uniform fan_out", lambda w: init.kaiming_uniform_(w, mode="fan_out", nonlinearity="tanh"),
         -(5 / 3) * math.sqrt(3 / FAN_OUT), (5 / 3) * math.sqrt(3 / FAN_OUT)),
        ("default (a=sqrt 5)", lambda w: init.get_initializer("default")(w), -1 / math.sqrt(FAN_IN),
         1 / math.sqrt(FAN_IN)),
        ("xavier_uniform name", lambda w: init.get_initializer("xavier_uniform")(w),
         -math.sqrt(6 / (FAN_IN + FAN_OUT)), math.sqrt(6 / (FAN_IN + FAN_OUT))),
        ("kaiming_uniform name", lambda w: init.get_initializer("kaiming_uniform")(w),
         -math.sqrt(6 / FAN_IN), math.sqrt(6 / FAN_IN)),
        ("default_bias_", lambda w: init.default_bias_(w, FAN_IN), -1 / math.sqrt(FAN_IN), 1 / math.sqrt(FAN_IN)),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", _uniform_cases(), ids=lambda c: c[0])
def test_uniform_initialisers_bounds_and_statistics(case, dtype):
    _, fill, low, high = case
    w = np.empty(SHAPE, dtype)
    _random.manual_seed(2)
    assert fill(w) is w
    assert w.dtype == dtype
    width = high - low
    # bounds exact (inclusive: rounding to float32 may land on the bound), and the support is filled to the edges
    assert w.min() >= dtype(low) and w.max() <= dtype(high)
    assert w.min() < low + 1e-3 * width and w.max() > high - 1e-3 * width
    assert rel(w.std(dtype=np.float64), width / math.sqrt(12)) < 0.02
    assert abs(w.mean(dtype=np.float64) - (low + high) / 2) < 0.01 * width
    # flat: each tenth of the interval holds about a tenth of the draws
    counts, _ = np.histogram(w, bins=10, range=(low, high))
    assert np.all(np.abs(counts / w.size - 0.1) < 0.005)


def test_kaiming_on_conv_shaped_weight_uses_the_receptive_field():
    w = np.empty((100, 20, 5, 5))
    init.kaiming_normal_(w, nonlinearity="relu", generator=3)
    assert rel(w.std(), math.sqrt(2 / (20 * 25))) < 0.02
    init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=3)
    assert rel(w.std(), math.sqrt(2 / (100 * 25))) < 0.02


def test_zero_std_and_zero_width_are_constants():
    assert (init.normal_(np.empty(5), mean=3.0, std=0.0) == 3.0).all()
    assert (init.uniform_(np.empty(5), 1.5, 1.5) == 1.5).all()
    assert (init.default_bias_(np.ones(4), 0) == 0).all()


def test_zero_element_tensors_are_left_alone():
    for fn in (init.kaiming_uniform_, init.kaiming_normal_, init.orthogonal_, init.xavier_normal_):
        w = np.empty((0, 3))
        assert fn(w) is w


# --- orthogonal ------------------------------------------------------------------------------------------------------
def gram_schmidt(a):
    """Orthonormalise the columns of a (rows >= cols) by modified Gram-Schmidt: the Q of the QR with R_jj > 0."""
    q = np.array(a, dtype=np.float64)
    for j in range(q.shape[1]):
        for i in range(j):
            q[:, j] -= (q[:, i] @ q[:, j]) * q[:, i]
        q[:, j] /= np.linalg.norm(q[:, j])
    return q


@pytest.mark.parametrize("shape", [(6, 6), (4, 9), (9, 4), (3, 2, 2, 2)])
def test_orthogonal_is_orthonormal(shape):
    w = init.orthogonal_(np.empty(shape), generator=0)
    m = w.reshape(shape[0], -1)
    small = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    np.testing.assert_allclose(small, np.eye(min(m.shape)), atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_orthogonal_gain(dtype):
    w = init.orthogonal_(Parameter(np.empty((5, 8), dtype)), gain=math.sqrt(2), generator=0).data
    assert w.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(w.astype(np.float64) @ w.T.astype(np.float64), 2 * np.eye(5), atol=tol)


@pytest.mark.parametrize("shape", [(7, 3), (3, 7)])
def test_orthogonal_is_gram_schmidt_of_the_gaussian(shape):
    # PyTorch's recipe: QR of a standard-normal (rows, cols) matrix, transposed first when rows < cols, columns of Q
    # sign-corrected by diag(R). That is Gram-Schmidt of the same matrix's columns (or rows).
    rows, cols = shape
    a = np.random.default_rng(5).standard_normal(shape)
    expected = gram_schmidt(a) if rows >= cols else gram_schmidt(a.T).T
    np.testing.assert_allclose(init.orthogonal_(np.empty(shape), generator=5), expected, atol=1e-12)


def test_orthogonal_sign_correction_makes_entries_symmetric():
    # Without the sign correction, LAPACK's Householder QR returns Q[0, 0] < 0 almost always.
    rng = np.random.default_rng(11)
    firsts = np.array([init.orthogonal_(np.empty((4, 4)), generator=rng)[0, 0] for _ in range(400)])
    assert 0.40 < np.mean(firsts > 0) < 0.60


# --- seeding, generators, dtypes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(init.INITIALIZERS))
def test_manual_seed_reproduces_every_named_initialiser(name):
    fill = init.get_initializer(name)
    _random.manual_seed(0)
    a = fill(np.empty((20, 30)))
    b = fill(np.empty((20, 30)))
    _random.manual_seed(0)
    c = fill(np.empty((20, 30)))
    np.testing.assert_array_equal(a, c)
    if name != "zeros":
        assert not np.array_equal(a, b)      # the global generator moved on


def test_generator_argument_forms():
    a = init.normal_(np.empty(10), generator=7)
    b = init.normal_(np.empty(10), generator=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, np.random.default_rng(7).standard_normal(10))
    with pytest.raises(TypeError, match="generator"):
        init.normal_(np.empty(3), generator="seed")


def test_float32_and_float64_draw_the_same_values():
    w32 = init.kaiming_uniform_(np.empty((30, 40), np.float32), generator=3)
    w64 = init.kaiming_uniform_(np.empty((30, 40), np.float64), generator=3)
    np.testing.assert_array_equal(w32, w64.astype(np.float32))


def test_parameter_is_filled_in_place():
    p = Parameter(np.zeros((30, 40), np.float32))
    data = p.data
    assert init.xavier_uniform_(p, generator=0) is p
    assert p.data is data and p.data.any()


# --- get_initializer -------------------------------------------------------------------------------------------------
def test_get_initializer_zeros_and_orthogonal():
    w = init.get_initializer("zeros")(np.ones((3, 4)))
    assert not w.any()
    w = init.get_initializer("orthogonal")(np.empty((3, 4)), generator=0)
    np.testing.assert_allclose(w @ w.T, np.eye(3), atol=1e-12)


def test_get_initializer_callable():
    seen = {}

    def fill(w, generator):
        seen["types"] = (type(w), type(generator))
        w[...] = generator.integers(0, 10, size=w.shape)

    f = init.get_initializer(fill)
    p = Parameter(np.zeros((2, 3)))
    assert f(p, generator=4) is p
    assert seen["types"] == (np.ndarray, np.random.Generator)
    np.testing.assert_array_equal(p.data, np.random.default_rng(4).integers(0, 10, size=(2, 3)))


def test_get_initializer_errors():
    with pytest.raises(ValueError, match=r"get_initializer.*'glorot'.*'he'"):
        init.get_initializer("glorot")
    with pytest.raises(TypeError, match="get_initializer"):
        init.get_initializer(3)


def test_linear_uses_the_named_initialiser():
    from cynet.nn import Linear

    layer = Linear(400, 300, init="he", dtype=np.float64, generator=0)
    assert rel(layer.weight.data.std(), math.sqrt(2 / 400)) < 0.02
    layer = Linear(400, 300, generator=0)
    assert np.abs(layer.weight.data).max() <= np.float32(1 / 20)
    assert np.abs(layer.bias.data).max() <= np.float32(1 / 20)


# --- errors ----------------------------------------------------------------------------------------------------------
def test_argument_errors():
    with pytest.raises(TypeError, match=r"normal_.*floating point.*int64"):
        init.normal_(np.zeros((2, 2), np.int64))
    with pytest.raises(TypeError, match="Parameter or a numpy.ndarray.*list"):
        init.zeros_([1.0, 2.0])
    with pytest.raises(ValueError, match="std must be non-negative, got -1"):
        init.normal_(np.empty(3), std=-1)
    with pytest.raises(ValueError, match="low must be <= high"):
        init.uniform_(np.empty(3), 1, 0)
    with pytest.raises(ValueError, match="mode must be 'fan_in' or 'fan_out', got 'fan_avg'"):
        init.kaiming_normal_(np.empty((3, 3)), mode="fan_avg")
    with pytest.raises(ValueError, match="unsupported nonlinearity 'swish'"):
        init.kaiming_uniform_(np.empty((3, 3)), nonlinearity="swish")
    with pytest.raises(ValueError, match="gain must be finite"):
        init.xavier_normal_(np.empty((3, 3)), gain=float("inf"))
    with pytest.raises(ValueError, match="fan_in must be a non-negative int"):
        init.default_bias_(np.empty(3), -1)
    ro = np.zeros((3, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        init.ones_(ro)


# --- torch.nn.init: same formulas, same distributions ----------------------------------------------------------------
TORCH_CASES = [
    ("xavier_uniform_", dict(gain=1.5)),
    ("xavier_normal_", dict(gain=0.5)),
    ("kaiming_uniform_", dict(a=math.sqrt(5))),
    ("kaiming_uniform_", dict(mode="fan_out", nonlinearity="relu")),
    ("kaiming_normal_", dict(nonlinearity="relu")),
    ("kaiming_normal_", dict(a=0.1, mode="fan_out")),
    ("normal_", dict(mean=0.0, std=0.05)),
    ("uniform_", dict()),
]


@needs_torch
@pytest.mark.parametrize("name, kw", TORCH_CASES, ids=[f"{n}{sorted(kw.items())}" for n, kw in TORCH_CASES])
def test_distribution_matches_torch(name, kw):
    torch.manual_seed(0)
    t = getattr(tinit, name)(torch.empty(SHAPE, dtype=torch.float64), **kw).numpy()
    w = getattr(init, name)(np.empty(SHAPE), **kw, generator=0)
    assert rel(w.std(), t.std()) < 0.02
    assert abs(w.mean() - t.mean()) < 0.02 * t.std()
    if "uniform" in name:
        # same support: both reach within 0.1 % of the same bound
        assert rel(np.abs(w).max() if name != "uniform_" else w.max(), np.abs(t).max()) < 1e-3
    else:
        assert abs(np.mean(np.abs(w) > 2 * t.std()) - np.mean(np.abs(t) > 2 * t.std())) < 0.004


@needs_torch
def test_linear_default_matches_torch_bounds():
    torch.manual_seed(0)
    t = torch.nn.Linear(FAN_IN, FAN_OUT).double()
    w = init.get_initializer("default")(np.empty((FAN_OUT, FAN_IN)), generator=0)
    b = init.default_bias_(np.empty(FAN_OUT), FAN_IN, generator=0)
    tw, tb = t.weight.detach().numpy(), t.bias.detach().numpy()
    assert rel(np.abs(w).max(), np.abs(tw).max()) < 1e-3 and np.abs(w).max() <= 1 / math.sqrt(FAN_IN)
    assert rel(w.std(), tw.std()) < 0.02
    assert np.abs(b).max() <= 1 / math.sqrt(FAN_IN) and np.abs(tb).max() <= 1 / math.sqrt(FAN_IN)


@needs_torch
@pytest.mark.parametrize("shape", [(5, 8), (8, 5)])
def test_orthogonal_like_torch(shape):
    torch.manual_seed(0)
    t = tinit.orthogonal_(torch.empty(shape, dtype=torch.float64), gain=2.0).numpy()
    w = init.orthogonal_(np.empty(shape), gain=2.0, generator=0)
    for m in (t, w):
        small = m @ m.T if shape[0] <= shape[1] else m.T @ m
        np.testing.assert_allclose(small, 4 * np.eye(min(shape)), atol=1e-12)

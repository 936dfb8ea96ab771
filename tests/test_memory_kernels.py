"""The memory passes the benchmarks use as bandwidth floors (cynet._kernels.memory): a streaming copy, a streaming
add, an in-place add and a read (count_nonzero). They must move exactly the values they name (a floor that skips
work would flatter every kernel held against it): checked against NumPy for every built instruction-set variant, both
dtypes, lengths with partial cache lines at either end, outputs off a cache line, in place, and 1, 2 and 4 threads
(bit for bit: one IEEE addition per value; the count exactly)."""
import numpy as np
import pytest

from cynet._kernels import available_isas, load

ISAS = available_isas("memory")
DTYPES = [np.float32, np.float64]
LENGTHS = [0, 1, 15, 17, 1000, 40_003, 100_000]
THREADS = [1, 2, 4]


def _misaligned(n, dtype, offset):
    """n values starting ``offset`` items after an allocation's start (not on a cache line when offset > 0)."""
    return np.zeros(n + offset, dtype)[offset:]


def _values(n, dtype, seed):
    return np.random.default_rng(seed).standard_normal(n).astype(dtype)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize("threads", THREADS)
def test_stream_copy_and_add_write_exactly_numpys_values(isa, dtype, n, offset, threads):
    memory = load("memory", isa)
    a, b = _values(n, dtype, 1), _values(n, dtype, 2)
    out = _misaligned(n, dtype, offset)
    memory.stream_copy(a, out, threads)
    np.testing.assert_array_equal(out, a)
    memory.stream_add(a, b, out, threads)
    np.testing.assert_array_equal(out, a + b)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("rows", [1, 2, 3, 5])   # 1 and 5: the block path
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("threads", THREADS)
def test_add_in_place_adds_the_source_into_every_row(isa, dtype, rows, n, threads):
    memory = load("memory", isa)
    targets = _values(rows * n, dtype, 3).reshape(rows, n)
    source = _values(n, dtype, 4)
    expected = targets + source
    memory.add_in_place(targets, source, threads)
    np.testing.assert_array_equal(targets, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_stream_add_in_place_of_one_input(dtype):
    a, b = _values(50_001, dtype, 5), _values(50_001, dtype, 6)
    expected = a + b
    load("memory").stream_add(a, b, a, 2)
    np.testing.assert_array_equal(a, expected)


def test_lengths_that_differ_are_refused():
    memory = load("memory")
    a, short = np.zeros(8, np.float32), np.zeros(7, np.float32)
    with pytest.raises(ValueError, match="stream_copy: dst holds 7 values, src 8"):
        memory.stream_copy(a, short, 1)
    with pytest.raises(ValueError, match="stream_add: lengths 8, 7 and 8 differ"):
        memory.stream_add(a, short, a, 1)
    with pytest.raises(ValueError, match="add_in_place: rows of 8 values, source 7"):
        memory.add_in_place(np.zeros((2, 8), np.float32), short, 1)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("n", LENGTHS + [(1 << 20) + 5])   # past one int32 block of counts
@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize("threads", THREADS)
def test_count_nonzero_reads_every_value(isa, dtype, n, offset, threads):
    """The read floor must look at every value: NumPy's count of zeros placed at either end, at block edges and at
    random; NaN and -0.0 as NumPy counts them (NaN is not zero, -0.0 is)."""
    x = _misaligned(n, dtype, offset)
    x[:] = _values(n, dtype, 7)
    rng = np.random.default_rng(8)
    zeros = rng.integers(0, max(n, 1), size=n // 3) if n else []
    x[zeros] = 0
    for index, value in ((0, 0.0), (n - 1, -0.0), (n // 2, np.nan), ((1 << 20) - 1, 0.0), (1 << 20, np.nan)):
        if 0 <= index < n:
            x[index] = value
    assert load("memory", isa).count_nonzero(x, threads) == np.count_nonzero(x)

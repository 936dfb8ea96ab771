"""cynet.data.loader: epoch coverage, seeded reproducibility, per-batch transform, and augmentation properties.

Oracles: index bookkeeping (samples carry their own index), hand-built shifted and mirrored images, np.pad.
"""
import numpy as np
import pytest

import cynet
from cynet.data import (BatchIterator, Compose, Cutout, MeanImage, RandomCrop, RandomHorizontalFlip, augment_batch,
                        make_batch_transform)


def indexed(n=23, shape=(3, 4, 4)):
    """x[i] is filled with i, so a batch tells which samples it holds."""
    x = np.broadcast_to(np.arange(n, dtype=np.float32).reshape((n,) + (1,) * len(shape)), (n,) + shape).copy()
    return x, np.arange(n)


@pytest.mark.parametrize("batch_size, drop_last, expected_len", [(5, False, 5), (5, True, 4), (23, False, 1),
                                                                 (50, False, 1), (1, True, 23)])
def test_every_sample_once_per_epoch(batch_size, drop_last, expected_len):
    x, y = indexed()
    it = BatchIterator(x, y, batch_size, seed=0, drop_last=drop_last)
    assert len(it) == expected_len
    for _ in range(3):
        seen = []
        batches = list(it)
        assert len(batches) == expected_len
        for xb, yb in batches:
            assert xb.shape[1:] == x.shape[1:] and len(xb) == len(yb) <= batch_size
            np.testing.assert_array_equal(xb[:, 0, 0, 0], yb)  # x and y stay paired
            seen.extend(yb.tolist())
        if drop_last:
            assert len(seen) == expected_len * batch_size and len(set(seen)) == len(seen)
        else:
            assert sorted(seen) == list(range(23))


def test_shuffles_differently_each_epoch_and_reproducibly_with_a_seed():
    x, y = indexed()
    epochs = lambda it: [np.concatenate([yb for _, yb in it]) for _ in range(3)]  # noqa: E731
    a, b = epochs(BatchIterator(x, y, 4, seed=7)), epochs(BatchIterator(x, y, 4, seed=7))
    for ea, eb in zip(a, b):
        np.testing.assert_array_equal(ea, eb)
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[0], np.arange(23))
    assert not np.array_equal(a[0], epochs(BatchIterator(x, y, 4, seed=8))[0])
    cynet.manual_seed(3)
    c = epochs(BatchIterator(x, y, 4))  # seed=None: the global generator
    cynet.manual_seed(3)
    np.testing.assert_array_equal(c[0], epochs(BatchIterator(x, y, 4))[0])
    # one iterator built before manual_seed follows it: it kept the generator of its construction, which
    # manual_seed replaces, so reseeding did not reproduce its epochs
    reused = BatchIterator(x, y, 4)
    cynet.manual_seed(3)
    first = np.concatenate([yb for _, yb in reused])
    cynet.manual_seed(3)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in reused]), first)
    np.testing.assert_array_equal(first, c[0])
    in_order = np.concatenate([yb for _, yb in BatchIterator(x, y, 4, shuffle=False)])
    np.testing.assert_array_equal(in_order, np.arange(23))


def test_iterator_applies_the_fitted_transform_per_batch():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 3, 4, 4), dtype=np.uint8)
    y = np.arange(20)
    t = MeanImage().fit(x)
    for xb, yb in BatchIterator(x, y, 6, seed=1, transform=t):
        assert xb.dtype == np.float32
        np.testing.assert_allclose(xb, x[yb] - x.astype(np.float64).mean(axis=0), atol=1e-4)
    with pytest.raises(RuntimeError, match="not fitted"):
        BatchIterator(x, y, 6, transform=MeanImage())


def test_iterator_validates_its_arguments():
    x, y = indexed()
    with pytest.raises(ValueError, match="same number of samples"):
        BatchIterator(x, y[:-1], 4)
    with pytest.raises(ValueError, match="batch_size"):
        BatchIterator(x, y, 0)
    with pytest.raises(ValueError, match="drop_last"):
        BatchIterator(x, y, 30, drop_last=True)
    assert [yb for _, yb in BatchIterator(x, None, 30)] == [None]


# --- augmentation ----------------------------------------------------------------------------------------------------
def test_random_crop_is_a_shifted_copy_with_zero_fill():
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 2, size=(64, 2, 6, 6)).astype(np.float32)  # no zeros: zeros can only come from padding
    out = RandomCrop(6, padding=2)(x, np.random.default_rng(5))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    offsets = set()
    for n in range(len(x)):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if np.array_equal(out[n], padded[n, :, dy:dy + 6, dx:dx + 6])]
        assert len(matches) == 1, n  # exactly one window of the zero-padded image
        offsets.add(matches[0])
    assert len(offsets) > 10  # per-image offsets, not one shift for the whole batch


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
@pytest.mark.parametrize("shape,size,padding", [((256, 3, 32, 32), 32, 2), ((9, 2, 7, 5), (4, 6), 3),
                                                ((5, 1, 3, 3), 9, 3), ((4, 3, 6, 6), (2, 2), 0)],
                         ids=["cifar", "odd-window", "window-larger-than-image", "no-padding"])
@pytest.mark.parametrize("threads", [1, 2])
def test_random_crop_equals_the_padded_window_at_the_drawn_offsets(dtype, shape, size, padding, threads):
    # the oracle: draw the offsets from the same seed (rows, then columns, as RandomCrop does), pad with np.pad and
    # slice image by image; the kernel (float batches) and the NumPy gather (others) must give exactly that
    n, c, h, w = shape
    sh, sw = (size, size) if isinstance(size, int) else size
    x = np.random.default_rng(3).uniform(1, 200, size=shape).astype(dtype)[:, :, :, ::-1]   # not C-contiguous
    with cynet.threads(threads):
        out = RandomCrop(size, padding=padding)(x, np.random.default_rng(11))
    draws = np.random.default_rng(11)
    dy = draws.integers(0, h + 2 * padding - sh + 1, size=n)
    dx = draws.integers(0, w + 2 * padding - sw + 1, size=n)
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    want = np.stack([padded[i, :, dy[i]:dy[i] + sh, dx[i]:dx[i] + sw] for i in range(n)])
    assert out.dtype == x.dtype and out.shape == want.shape
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("threads", [1, 2])
def test_random_flip_mirrors_the_drawn_images(dtype, p, threads):
    # the oracle: the same draws (one uniform per image, flipped where < p), each image reversed along its last axis
    x = np.random.default_rng(4).uniform(1, 200, size=(256, 3, 9, 7)).astype(dtype)[:, ::-1]   # not C-contiguous
    with cynet.threads(threads):
        out = RandomHorizontalFlip(p=p)(x, np.random.default_rng(12))
    flip = np.random.default_rng(12).random(len(x)) < p
    want = np.stack([image[:, :, ::-1] if f else image for image, f in zip(x, flip)])
    assert out.dtype == x.dtype and not np.shares_memory(out, x)
    np.testing.assert_array_equal(out, want)


def test_crop_and_flip_kernels_refuse_bad_shapes_and_offsets():
    from cynet._kernels import load

    conv = load("conv")
    x = np.zeros((2, 1, 4, 4), np.float32)
    offsets = np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="y must be"):
        conv.random_crop(x, offsets, offsets, 1, np.zeros((3, 1, 4, 4), np.float32), 1)
    with pytest.raises(ValueError, match=r"offset \(3, 0\) of image 1 puts the 4 x 4 window outside"):
        conv.random_crop(x, np.array([0, 3]), offsets, 1, np.zeros((2, 1, 4, 4), np.float32), 1)
    with pytest.raises(ValueError, match="y must have x's shape"):
        conv.random_flip(x, np.zeros(2, np.uint8), np.zeros((2, 1, 4, 3), np.float32), 1)


def test_random_crop_smaller_window_and_no_padding():
    x = np.arange(2 * 1 * 5 * 5, dtype=np.float32).reshape(2, 1, 5, 5)
    out = RandomCrop((3, 2), padding=0)(x, np.random.default_rng(1))
    assert out.shape == (2, 1, 3, 2)
    for n in range(2):
        assert any(np.array_equal(out[n, 0], x[n, 0, i:i + 3, j:j + 2]) for i in range(3) for j in range(4))
    with pytest.raises(ValueError, match="larger than the padded image"):
        RandomCrop(8, padding=1)(x, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        RandomCrop(5)(x.reshape(2, 25), np.random.default_rng(0))


def test_random_horizontal_flip_reverses_the_last_axis_of_chosen_images():
    x = np.random.default_rng(0).normal(size=(200, 3, 4, 5)).astype(np.float32)
    out = RandomHorizontalFlip(p=0.5)(x, np.random.default_rng(3))
    flipped = np.array([np.array_equal(out[n], x[n, :, :, ::-1]) for n in range(len(x))])
    kept = np.array([np.array_equal(out[n], x[n]) for n in range(len(x))])
    assert np.all(flipped ^ kept)
    assert 60 < flipped.sum() < 140
    # the choice is the generator's: the same draw reproduces it
    np.testing.assert_array_equal(flipped, np.random.default_rng(3).random(200) < 0.5)
    np.testing.assert_array_equal(RandomHorizontalFlip(p=0.0)(x, np.random.default_rng(0)), x)
    np.testing.assert_array_equal(RandomHorizontalFlip(p=1.0)(x, np.random.default_rng(0)), x[..., ::-1])
    assert out is not x


def test_compose_and_batch_transform_hook():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, size=(8, 3, 4, 4), dtype=np.uint8)
    t = MeanImage().fit(x)
    aug = Compose([RandomCrop(4, padding=1), RandomHorizontalFlip(p=1.0)])
    hook = make_batch_transform(t, aug)
    np.testing.assert_array_equal(hook(x, None), t.transform(x))  # evaluation: transform only
    train = hook(x, np.random.default_rng(2))
    # same generator, same steps by hand: transform first, then crop, then flip
    g = np.random.default_rng(2)
    by_hand = RandomHorizontalFlip(p=1.0)(RandomCrop(4, padding=1)(t.transform(x), g), g)
    np.testing.assert_array_equal(train, by_hand)
    np.testing.assert_array_equal(augment_batch(x, np.random.default_rng(2), aug, t), by_hand)
    assert hook(x, None).dtype == np.float32 and make_batch_transform()(x, None).dtype == np.float32


def test_iterator_augments_after_the_transform_reproducibly():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 3, 4, 4), dtype=np.uint8)
    t = MeanImage().fit(x)
    aug = Compose([RandomCrop(4, padding=1), RandomHorizontalFlip()])
    a = [xb for xb, _ in BatchIterator(x, None, 5, seed=4, transform=t, augment=aug)]
    b = [xb for xb, _ in BatchIterator(x, None, 5, seed=4, transform=t, augment=aug)]
    for xa, xb in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        assert xa.dtype == np.float32
    # zero fill happens after mean subtraction: padded pixels are exactly 0 in the transformed space
    assert any((xa == 0).any() for xa in a)


def test_the_iterators_generator_can_be_set():
    x, y = indexed()
    it = BatchIterator(x, y, 4)
    it.generator = 7                                  # an int seed or a Generator of its own, as seed= takes
    expected = np.concatenate([yb for _, yb in BatchIterator(x, y, 4, seed=7)])
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in it]), expected)
    it.generator = None                               # back to the global generator
    cynet.manual_seed(5)
    first = np.concatenate([yb for _, yb in it])
    cynet.manual_seed(5)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in it]), first)


@pytest.mark.parametrize("dtype, expected", [(">f8", np.float64), ("<f8", np.float64), (">f4", np.float32),
                                             (np.float16, np.float32), (np.uint8, np.float32)])
def test_the_hook_without_a_transform_keeps_float64_in_either_byte_order(dtype, expected):
    """Without a transform the hook kept float64 only when it was native: big-endian float64 data (read from a
    big-endian file) came back float32, half its bits gone, though the docstring promises float64 stays float64."""
    x = (np.arange(2 * 1 * 2 * 3) / 3.0).reshape(2, 1, 2, 3).astype(dtype)
    out = make_batch_transform(None, RandomHorizontalFlip(p=1.0))(x, np.random.default_rng(0))
    assert out.dtype == expected
    np.testing.assert_array_equal(out, x.astype(expected)[..., ::-1])
    xb, _ = next(iter(BatchIterator(x, None, 2, shuffle=False, augment=RandomHorizontalFlip(p=0.0))))
    assert xb.dtype == expected
    np.testing.assert_array_equal(xb, x.astype(expected))


def test_compose_refuses_a_single_augmentation_with_a_message():
    # was "'RandomCrop' object is not iterable"
    for single in (RandomCrop(4, padding=1), Compose([RandomHorizontalFlip()]), 3):
        with pytest.raises(TypeError, match=r"augmentations must be a list of callables.*pass \[augmentation\]"):
            Compose(single)
    out = Compose((RandomHorizontalFlip(p=1.0),))(np.arange(2.0).reshape(1, 1, 1, 2), np.random.default_rng(0))
    assert out.ravel().tolist() == [1.0, 0.0]


def test_augmentations_refuse_arguments_of_the_wrong_type_naming_the_class():
    # RandomCrop("32") was read as the size ('3', '2'); RandomCrop(32.0) was "'float' object is not iterable";
    # RandomHorizontalFlip("a") and Cutout(value="a") were bare comparison / isfinite TypeErrors
    for size in ("32", 32.0, None, {32: 32}):
        with pytest.raises(TypeError, match=r"RandomCrop: size must be a positive int or \(height, width\), got"):
            RandomCrop(size)
    with pytest.raises(ValueError, match=r"RandomCrop: size .* got \(32, 32.0\)"):
        RandomCrop((32, 32.0))
    for p in ("a", None, True):
        with pytest.raises(TypeError, match="RandomHorizontalFlip: p must be a number"):
            RandomHorizontalFlip(p)
    with pytest.raises(TypeError, match="Cutout: value must be a number"):
        Cutout(4, value="a")
    with pytest.raises(TypeError, match="Cutout: p must be a number"):
        Cutout(4, p="0.5")
    assert RandomCrop([3, 2], padding=1).size == (3, 2) and RandomCrop(np.int64(4)).size == (4, 4)
    assert RandomHorizontalFlip(1).p == 1.0 and Cutout(2, p=np.float32(0.5), value=np.int64(1)).value == 1.0


@pytest.mark.parametrize("augment", [RandomCrop(4, padding=1), RandomHorizontalFlip()], ids=repr)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_big_endian_batch_is_augmented_as_the_native_one(augment, dtype):
    """A '>f4' batch went down NumPy's path and came back '>f4' (a dtype the layers after it compared unequal to
    float32); now it is the float32 batch it holds, by the kernels, with the native result."""
    x = np.random.default_rng(0).standard_normal((5, 3, 4, 4)).astype(dtype)
    want = augment(x, np.random.default_rng(7))
    got = augment(x.astype(np.dtype(dtype).newbyteorder(">")), np.random.default_rng(7))
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)


def test_make_batch_transform_with_dtype_float64_standardises_uint8_images_in_float64():
    # a float64 model fed uint8 images got float32-rounded inputs (the transform gives float32 for integer input,
    # the trainer's cast to float64 after it cannot restore the bits): dtype=np.float64 computes them in float64
    from cynet.data import Standardize, make_batch_transform
    x = np.random.default_rng(0).integers(0, 256, (20, 3, 4, 4)).astype(np.uint8)
    standardize = Standardize(per="channel").fit(x)
    want = standardize.transform(x.astype(np.float64))
    got = make_batch_transform(standardize, dtype=np.float64)(x, None)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)
    assert make_batch_transform(standardize)(x, None).dtype == np.float32          # the default is unchanged
    flipped = make_batch_transform(None, RandomHorizontalFlip(p=1.0), dtype=np.float64)(x, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped, x[..., ::-1].astype(np.float64))
    for bad in (np.int32, "complex128", 3):
        with pytest.raises(TypeError, match="make_batch_transform: dtype must be numpy.float32, numpy.float64"):
            make_batch_transform(standardize, dtype=bad)

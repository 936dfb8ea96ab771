"""cynet.data.preprocessing: every transform against NumPy formulas written here, fitting bookkeeping, state, bundles.

Oracles: direct float64 NumPy statistics (mean, variance, covariance), numpy.linalg.eigh / SVD for PCA (up to sign),
hand-computed values on tiny arrays.
"""
import json
import os
import warnings

import numpy as np
import pytest

import cynet
from cynet import nn
from cynet.data import (TRANSFORMS, ChannelMean, MeanImage, PCA, PCAWhitening, Pipeline, Standardize, ZCAWhitening,
                        load_bundle, save_bundle, transform_from_state_dict)


def images(n=40, c=3, h=4, w=5, seed=0):
    """Correlated uint8 images: a per-image brightness plus noise, so covariances are far from diagonal."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=(n, 1, 1, 1))
    return np.clip(base + rng.integers(-40, 40, size=(n, c, h, w)), 0, 255).astype(np.uint8)


def gaussian(n=300, d=6, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * np.linspace(3.0, 0.3, d)[:, None]
    return (rng.normal(size=(n, d)) @ mix + rng.normal(size=d) * 5).astype(np.float64)


# --- mean and standardisation ----------------------------------------------------------------------------------------
def test_mean_image_hand_computed():
    x = np.array([[0, 2, 10], [4, 6, 20]], np.uint8)
    t = MeanImage().fit(x)
    np.testing.assert_array_equal(t.mean_, [2.0, 4.0, 15.0])
    out = t.transform(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[-2, -2, -5], [2, 2, 5]])


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_mean_image_on_images_matches_numpy(dtype):
    x = images().astype(dtype)
    t = MeanImage()
    out = t.fit_transform(x)
    expected = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
    assert out.shape == x.shape and out.dtype == (np.float64 if dtype == np.float64 else np.float32)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(t.inverse_transform(out), x.astype(np.float64), atol=1e-4)


def test_channel_mean_images_and_flat_rows_agree():
    x = images()
    expected = x.astype(np.float64).mean(axis=(0, 2, 3))
    t4 = ChannelMean().fit(x)
    np.testing.assert_allclose(t4.mean_, expected, rtol=1e-12)
    t2 = ChannelMean(channels=3).fit(x.reshape(len(x), -1))  # rows of C planes, like CIFAR's 3072 values
    np.testing.assert_allclose(t2.mean_, expected, rtol=1e-12)
    out = t4.transform(x)
    np.testing.assert_allclose(out, x - expected[None, :, None, None], atol=1e-4)
    np.testing.assert_array_equal(t2.transform(x.reshape(len(x), -1)), out.reshape(len(x), -1))
    np.testing.assert_allclose(t4.inverse_transform(out), x, atol=1e-4)


def test_channel_mean_rejects_wrong_channel_layout():
    with pytest.raises(ValueError, match="channels"):
        ChannelMean(channels=3).fit(np.zeros((4, 2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="divisible"):
        ChannelMean(channels=3).fit(np.zeros((4, 10), np.uint8))


def test_standardize_per_feature_hand_computed():
    x = np.array([[0.0, 10.0], [2.0, 30.0]])
    out = Standardize(eps=0.0).fit_transform(x)
    np.testing.assert_allclose(out, [[-1, -1], [1, 1]])


@pytest.mark.parametrize("per", ["feature", "channel"])
def test_standardize_matches_numpy(per):
    x = images()
    xf = x.astype(np.float64)
    t = Standardize(per=per, eps=1e-8).fit(x)
    if per == "feature":
        mean, var = xf.mean(axis=0), xf.var(axis=0)
    else:
        mean = xf.mean(axis=(0, 2, 3))[None, :, None, None]
        var = xf.var(axis=(0, 2, 3))[None, :, None, None]
    expected = (xf - mean) / np.sqrt(var + 1e-8)
    out = t.transform(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    axes = (0,) if per == "feature" else (0, 2, 3)
    np.testing.assert_allclose(out.astype(np.float64).std(axis=axes), 1.0, rtol=1e-4)
    np.testing.assert_allclose(t.inverse_transform(out), xf, atol=1e-3)


def test_standardize_constant_feature_stays_finite():
    x = np.ones((5, 3), np.float32)
    out = Standardize().fit_transform(x)
    assert np.all(np.isfinite(out)) and not out.any()


def test_standardize_without_eps_refuses_a_constant_feature_at_fit():
    # ten values 0.1: float64 mean 0.09999999999999999, var 1.9e-34, the feature came out as +1.0; 3.0: 0/0 = NaN
    x = np.column_stack([np.arange(10.0), np.full(10, 0.1), np.full(10, 3.0)])
    with pytest.raises(ValueError, match=r"eps=0 and 2 features have zero variance.*\[1, 2\]"):
        Standardize(eps=0.0).fit(x)
    images_ = np.random.default_rng(0).standard_normal((4, 3, 2, 2))
    images_[:, 1] = 0.5                                        # one constant channel
    with pytest.raises(ValueError, match=r"1 channels have zero variance.*\[1\]"):
        Standardize(per="channel", eps=0.0).fit(images_)
    # a float32 feature that moves by one ulp in one sample of many is not constant
    tiny = np.full((1000, 1), 1.0, np.float32)
    tiny[0, 0] = np.nextafter(np.float32(1.0), np.float32(2.0))
    out = Standardize(eps=0.0).fit_transform(tiny)
    assert np.isfinite(out).all() and abs(float(out.astype(np.float64).std()) - 1.0) < 1e-3


# --- chunked statistics ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, attrs", [(MeanImage, ["mean_"]), (ChannelMean, ["mean_"]),
                                        (Standardize, ["mean_", "var_"]),
                                        (PCA, ["mean_", "components_", "explained_variance_"])])
def test_chunked_statistics_equal_direct_float64(cls, attrs):
    x = images(n=53)
    chunked = cls(chunk_size=7).fit(x)   # 8 chunks, the last one short
    whole = cls(chunk_size=10_000).fit(x)
    for a in attrs:
        ours, theirs = getattr(chunked, a), getattr(whole, a)
        if a == "components_":
            # 53 centred samples span at most 52 directions: a component of (numerically) zero variance is any unit
            # vector of the null space, which the eigensolver picks as the rounding of its input leads it (it did
            # differ between the two fits with one BLAS build). Compare the determined ones; the rest must still be
            # orthonormal rows of zero variance in both fits.
            determined = whole.explained_variance_ > 1e-9 * whole.explained_variance_[0]
            assert determined.sum() == 52
            np.testing.assert_allclose(np.abs(chunked.explained_variance_[~determined]).max(), 0, atol=1e-9)
            np.testing.assert_allclose(ours @ ours.T, np.eye(len(ours)), atol=1e-10)
            ours, theirs = ours[determined], theirs[determined]
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10)
    xf = x.astype(np.float64)
    np.testing.assert_allclose(chunked.mean_.reshape(-1),
                               xf.mean(axis=(0, 2, 3)) if cls is ChannelMean else xf.mean(axis=0).reshape(-1),
                               rtol=1e-12)


def test_transform_output_chunking_does_not_change_the_result():
    x = images(n=53)
    t = PCAWhitening(n_components=10, chunk_size=5).fit(x)
    a = t.transform(x)
    t.chunk_size = 1000
    np.testing.assert_allclose(a, t.transform(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a, PCAWhitening(n_components=10, chunk_size=1000).fit(x).transform(x), atol=1e-4)


@pytest.mark.parametrize("make", [lambda: Standardize(per="channel", chunk_size=2000),
                                  lambda: Standardize(per="feature", chunk_size=2000),
                                  lambda: PCA(chunk_size=2000)], ids=["channel", "feature", "pca"])
def test_fit_holds_one_float64_chunk_at_a_time(make):
    """The second pass (variance, covariance) centred each chunk out of place and kept the previous chunk alive while
    the next one was made: three float64 chunks at once (302 MB for CIFAR at chunk_size=4096, twice the uint8 data
    set), where one suffices."""
    import tracemalloc
    x = images(n=6000, h=8, w=8)
    chunk = 2000 * x[0].size * 8                            # one float64 chunk: 3.1 MB
    transform = make()
    tracemalloc.start()
    try:
        transform.fit(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.6 * chunk, f"fit's peak {peak / 1e6:.1f} MB for float64 chunks of {chunk / 1e6:.1f} MB"


# --- PCA and whitening -----------------------------------------------------------------------------------------------
def aligned(a, b):
    """Flip the signs of b's rows to match a's (eigenvectors are defined up to sign)."""
    return b * np.sign(np.sum(a * b, axis=1))[:, None]


def test_pca_matches_eigh_and_svd_up_to_sign():
    x = gaussian()
    pca = PCA(n_components=4).fit(x)
    xc = x - x.mean(axis=0)
    cov = xc.T @ xc / (len(x) - 1)
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1], vectors[:, ::-1].T
    np.testing.assert_allclose(pca.explained_variance_, values[:4], rtol=1e-10)
    np.testing.assert_allclose(pca.explained_variance_ratio_, values[:4] / values.sum(), rtol=1e-10)
    np.testing.assert_allclose(pca.components_, aligned(pca.components_, vectors[:4]), atol=1e-10)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    np.testing.assert_allclose(pca.components_, aligned(pca.components_, vt[:4]), atol=1e-10)
    np.testing.assert_allclose(pca.explained_variance_, s[:4] ** 2 / (len(x) - 1), rtol=1e-10)
    z = PCA(n_components=4).fit(x).transform(x)
    assert z.shape == (300, 4) and z.dtype == np.float64
    np.testing.assert_allclose(z, xc @ pca.components_.T, atol=1e-9)


def test_pca_full_inverse_round_trip_and_truncated_reconstruction():
    x = images(n=60, c=2, h=2, w=3)
    pca = PCA().fit(x)
    z = pca.transform(x)
    assert z.shape == (60, 12) and z.dtype == np.float32
    np.testing.assert_allclose(pca.inverse_transform(z), x, atol=1e-3)
    k2 = PCA(n_components=2).fit(x)
    back = k2.inverse_transform(k2.transform(x)).astype(np.float64)
    xc = x.reshape(60, -1) - x.reshape(60, -1).mean(axis=0)
    proj = xc @ k2.components_.T @ k2.components_ + x.reshape(60, -1).mean(axis=0)
    np.testing.assert_allclose(back.reshape(60, -1), proj, atol=1e-3)


def test_pca_variance_fraction_picks_fewest_components():
    x = gaussian()
    full = PCA().fit(x)
    cum = np.cumsum(full.explained_variance_ratio_)
    pca = PCA(n_components=0.9).fit(x)
    k = pca.n_components_
    assert cum[k - 1] >= 0.9 and (k == 1 or cum[k - 2] < 0.9)


def test_pca_whitening_covariance_is_identity():
    x = gaussian()
    z = PCAWhitening(eps=0.0).fit_transform(x)
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(6), atol=1e-8)
    t = PCAWhitening(n_components=3, eps=0.0).fit(x)
    z3 = t.transform(x)
    np.testing.assert_allclose(np.cov(z3, rowvar=False), np.eye(3), atol=1e-8)
    full = PCAWhitening(eps=1e-5).fit(x)
    np.testing.assert_allclose(full.inverse_transform(full.transform(x)), x, atol=1e-8)


@pytest.mark.parametrize("make", [lambda: PCAWhitening(eps=0.0), lambda: ZCAWhitening(eps=0.0)])
@pytest.mark.parametrize("case", ["constant feature", "fewer samples than features"])
def test_whitening_without_eps_refuses_zero_variance_directions_at_fit(make, case):
    """eps=0 divides by each direction's standard deviation: a direction of zero variance gave all-NaN (ZCA) or
    inf/NaN (PCA whitening) outputs from a fit that had succeeded."""
    x = gaussian(n=100, d=4) if case == "constant feature" else gaussian(n=3, d=5)
    if case == "constant feature":
        x[:, 2] = 7.0
    rank = np.linalg.matrix_rank(np.cov(x, rowvar=False))
    t = make()
    with pytest.raises(ValueError, match=f"eps=0 and .* have zero variance .*rank {rank}.*Use eps > 0"):
        t.fit(x)
    assert not t.is_fitted
    # with eps > 0 the same data whitens to finite values; without the null directions eps=0 works
    assert np.all(np.isfinite(type(t)(eps=1e-5).fit_transform(x)))
    if isinstance(t, PCAWhitening) and not isinstance(t, ZCAWhitening):
        z = PCAWhitening(n_components=int(rank), eps=0.0).fit_transform(x)
        assert np.all(np.isfinite(z))


def test_whitening_without_eps_refuses_a_null_direction_among_few_kept_of_many_features():
    """The zero-variance bound scaled with the k directions kept instead of the D features of the covariance whose
    eigenvalues carry the rounding noise: PCAWhitening(2, eps=0) on rank-1 data of 800 features kept the null
    direction (variance ~5e-16 of the largest): its whitened training variance came out 1.6e-16 instead of 1, and a
    validation sample 0.001 off the training line got -36 in it (unit-variance outputs)."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(300, 1)) @ rng.normal(size=(1, 800)) + 128 + rng.normal(size=800) * 30
        assert np.linalg.matrix_rank(np.cov(x, rowvar=False)) == 1
        t = PCAWhitening(n_components=2, eps=0.0)
        with pytest.raises(ValueError, match=r"eps=0 and 1 of the 2 directions kept have zero variance .*rank 1"):
            t.fit(x)
        assert not t.is_fitted
        z = PCAWhitening(n_components=1, eps=0.0).fit_transform(x)      # the real direction still whitens
        np.testing.assert_allclose(np.var(z, axis=0, ddof=1), [1.0], rtol=1e-10)


def test_zca_is_symmetric_whitening_closest_to_the_original():
    x = gaussian()
    zca = ZCAWhitening(eps=0.0).fit(x)
    w = zca.whitening_
    np.testing.assert_allclose(w, w.T, atol=1e-12)
    xc = x - x.mean(axis=0)
    cov = xc.T @ xc / (len(x) - 1)
    values, vectors = np.linalg.eigh(cov)
    np.testing.assert_allclose(w, vectors @ np.diag(values ** -0.5) @ vectors.T, atol=1e-9)
    y = zca.transform(x)
    assert y.shape == x.shape
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(6), atol=1e-8)
    # any other whitening Q W (Q orthogonal) is farther from the centred data than ZCA's
    zca_dist = np.sum((y - xc) ** 2)
    pca_dist = np.sum((PCAWhitening(eps=0.0).fit_transform(x) - xc) ** 2)
    assert zca_dist < pca_dist
    rng = np.random.default_rng(1)
    for _ in range(5):
        q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
        assert zca_dist < np.sum((y @ q - xc) ** 2)
    np.testing.assert_allclose(zca.inverse_transform(y), x, atol=1e-8)


def test_zca_on_uint8_images_keeps_the_image_shape():
    x = images(n=80, c=3, h=2, w=2)
    zca = ZCAWhitening(eps=1e-2).fit(x)
    y = zca.transform(x)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(zca.inverse_transform(y), x, atol=1e-2)


# --- pipeline --------------------------------------------------------------------------------------------------------
def test_pipeline_equals_steps_applied_by_hand():
    x = images()
    pipe = Pipeline([("mean", ChannelMean()), ("pca", PCA(n_components=5))]).fit(x)
    cm = ChannelMean().fit(x)
    pca = PCA(n_components=5).fit(cm.transform(x))
    np.testing.assert_allclose(pipe.transform(x), pca.transform(cm.transform(x)), atol=1e-5)
    assert pipe["pca"].n_components_ == 5 and pipe[0] is pipe["mean"]


# --- fitting bookkeeping and errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", list(TRANSFORMS.values()))
def test_transform_before_fit_is_a_clear_error(cls):
    t = Pipeline([MeanImage()]) if cls is Pipeline else cls()
    with pytest.raises(RuntimeError, match=r"is not fitted: call fit\(x_train\) first"):
        t.transform(images())


def test_wrong_feature_shape_is_refused():
    t = MeanImage().fit(images(h=4, w=5))
    with pytest.raises(ValueError, match=r"fitted on samples of shape \(3, 4, 5\)"):
        t.transform(images(h=5, w=4))
    with pytest.raises(ValueError, match="samples first"):
        t.transform(np.zeros(60))
    with pytest.raises(TypeError, match="numeric"):
        t.fit(np.zeros((3, 2), dtype=bool))
    pca = PCA(n_components=3).fit(gaussian())
    with pytest.raises(ValueError, match="output of transform"):
        pca.inverse_transform(np.zeros((2, 4)))


def test_second_fit_on_different_data_warns_unless_refit():
    train, other = images(seed=0), images(seed=1)
    t = MeanImage().fit(train)
    assert t.fitted_on[0] == 40 and t.fitted_on[1].startswith("crc32:")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t.fit(train)  # the same data again: harmless, no warning
    with pytest.warns(UserWarning, match=r"training set only.*refit=True"):
        t.fit(other)
    np.testing.assert_allclose(t.mean_, other.astype(np.float64).mean(axis=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t.fit(train, refit=True)
    assert t.fitted_on == MeanImage().fit(train).fitted_on


def test_fingerprint_sees_a_change_in_the_data():
    x = images()
    y = x.copy()
    y[0, 0, 0, 0] ^= 1
    assert MeanImage().fit(x).fitted_on != MeanImage().fit(y).fitted_on


# --- state dicts and bundles -----------------------------------------------------------------------------------------
def fitted_transforms():
    x = images(n=50, c=3, h=2, w=2)
    return x, [MeanImage().fit(x), ChannelMean().fit(x), Standardize(per="channel").fit(x),
               Standardize(per="feature", eps=1e-3).fit(x), PCA(n_components=4).fit(x),
               PCAWhitening(n_components=0.95).fit(x), ZCAWhitening(eps=1e-3).fit(x),
               Pipeline([("m", MeanImage()), ("w", PCAWhitening(n_components=3))]).fit(x)]


def test_state_dict_round_trip_through_npz_without_pickle(tmp_path):
    x, transforms = fitted_transforms()
    for t in transforms:
        state = t.state_dict()
        for key, value in state.items():
            assert isinstance(key, str)
            assert isinstance(value, (np.ndarray, str, int, float)), (key, type(value))
        path = tmp_path / f"{type(t).__name__}.npz"
        np.savez(path, **{k: np.asarray(v) for k, v in state.items()})
        with np.load(path, allow_pickle=False) as f:
            loaded = {k: f[k] for k in f.files}
        rebuilt = transform_from_state_dict(loaded)
        assert type(rebuilt) is type(t) and rebuilt.config() == t.config()
        assert rebuilt.fitted_on == t.fitted_on
        np.testing.assert_array_equal(rebuilt.transform(x), t.transform(x))


def test_load_state_dict_checks_class_and_arguments():
    _, (mean_image, _, _, std_feature, *_) = fitted_transforms()
    with pytest.raises(ValueError, match="belongs to a MeanImage"):
        ChannelMean().load_state_dict(mean_image.state_dict())
    with pytest.raises(ValueError, match="arguments"):
        Standardize(per="feature").load_state_dict(std_feature.state_dict())
    with pytest.raises(ValueError, match="unknown transform class"):
        transform_from_state_dict({"class": "os.system", "config": "{}"})
    assert not MeanImage().load_state_dict(MeanImage().state_dict()).is_fitted


def test_bundle_round_trip_with_linear_model(tmp_path):
    x = images(n=30, c=1, h=2, w=3).reshape(30, 6)
    t = Pipeline([Standardize(), PCA(n_components=4)]).fit(x)
    model = nn.Linear(4, 3, generator=0)
    path = tmp_path / "model.npz"
    assert save_bundle(path, model, t, metadata={"classes": ["a", "b", "c"], "val_acc": 0.5}) == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temporary file left behind
    with np.load(path, allow_pickle=False) as f:  # a plain npz, readable without pickle
        assert "model.weight" in f.files and "transform.class" in f.files
    other = nn.Linear(4, 3, generator=1)
    bundle = load_bundle(path, other)
    assert bundle.model is other and bundle.metadata == {"classes": ["a", "b", "c"], "val_acc": 0.5}
    np.testing.assert_array_equal(other.weight.data, model.weight.data)
    np.testing.assert_array_equal(other.bias.data, model.bias.data)
    np.testing.assert_array_equal(bundle.transform.transform(x), t.transform(x))
    np.testing.assert_array_equal(other(bundle.transform.transform(x)), model(t.transform(x)))


def test_bundle_errors(tmp_path):
    with pytest.raises(RuntimeError, match="not fitted"):
        save_bundle(tmp_path / "m.npz", nn.Linear(2, 2), MeanImage())
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_bundle(tmp_path / "missing.npz", nn.Linear(2, 2))
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a cynet bundle"):
        load_bundle(tmp_path / "plain.npz", nn.Linear(2, 2))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        load_bundle(tmp_path / "junk.npz", nn.Linear(2, 2))
    model = nn.Linear(2, 2)
    save_bundle(tmp_path / "no_transform.npz", model)
    assert load_bundle(tmp_path / "no_transform.npz", nn.Linear(2, 2)).transform is None
    meta = json.loads(np.load(tmp_path / "no_transform.npz")["bundle.metadata"].item())
    assert meta == {}
    assert os.listdir(tmp_path).count("no_transform.npz") == 1


def test_a_truncated_or_corrupt_bundle_is_a_value_error(tmp_path):
    # zipfile's own exceptions (BadZipFile, NotImplementedError, RuntimeError) escaped load_bundle
    path = tmp_path / "damaged.npz"
    save_bundle(path, nn.Linear(3, 2), MeanImage().fit(np.ones((4, 3), np.float32)))
    data = path.read_bytes()
    entry = data.rfind(b"PK\x01\x02")       # the last central directory entry
    crc_damaged = bytearray(data)
    crc_damaged[data.find(b"\x93NUMPY") + 20] ^= 0xFF                 # inside the first member: a bad CRC
    flag_damaged = bytearray(data)
    flag_damaged[entry + 8] ^= 0x40                                   # "strong encryption": NotImplementedError
    password_damaged = bytearray(data)
    password_damaged[entry + 8] ^= 0x01                               # "encrypted, password required": RuntimeError
    for damaged in (data[:len(data) // 2], data[:len(data) - 10], data[:30], bytes(crc_damaged),
                    bytes(flag_damaged), bytes(password_damaged)):
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match="damaged.npz"):
            load_bundle(path, nn.Linear(3, 2))


@pytest.mark.parametrize("key, value", [("transform.class", "NoSuchTransform"), ("transform.mean_", np.zeros(5)),
                                        ("transform.config", "{not json"), ("bundle.metadata", "{not json")])
def test_a_bundle_whose_transform_or_metadata_cannot_be_read_leaves_the_model_unchanged(tmp_path, key, value):
    # the weights were loaded into the model before the transform was rebuilt: a failed load changed the model
    path = tmp_path / "bad.npz"
    save_bundle(path, nn.Linear(3, 2, generator=1), MeanImage().fit(np.ones((4, 3), np.float32)))
    with np.load(path, allow_pickle=False) as data:
        stored = {name: data[name] for name in data.files}
    stored[key] = np.asarray(value)
    np.savez(path, **stored)
    model = nn.Linear(3, 2, generator=2)
    before = {name: value.copy() for name, value in model.state_dict().items()}
    with pytest.raises(ValueError):
        load_bundle(path, model)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_save_bundle_never_pickles(tmp_path):
    # np.savez pickled an object array: save_bundle wrote a file that load_bundle (allow_pickle=False) refuses
    class ObjectState:
        def state_dict(self):
            return {"w": np.array([{"a": 1}], dtype=object)}

    with pytest.raises(ValueError, match=r"save_bundle: \['model.w'\] hold Python objects \(dtype object\)"):
        save_bundle(tmp_path / "obj.npz", ObjectState())
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_channel_standardize_gives_numpys_bits_on_any_thread_count(dtype):
    # per-channel Standardize of C-contiguous batches runs on the kernels' threads (conv.channel_standardize): the
    # values of NumPy's subtraction then division in the output type, for uint8, float32 and float64 data
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (70, 3, 9, 11)).astype(dtype)
    st = Standardize(per="channel").fit(x)
    out_type = np.float64 if dtype == np.float64 else np.float32
    want = np.empty(x.shape, out_type).reshape(70, 3, -1)
    np.subtract(x.reshape(70, 3, -1), st.mean_[:, None].astype(out_type), out=want, casting="unsafe")
    want /= st.scale_[:, None].astype(out_type)
    for threads in (1, 2, 3):
        with cynet.threads(threads):
            got = st.transform(x)
            assert got.dtype == out_type
            np.testing.assert_array_equal(got, want.reshape(x.shape))
    strided = x[:, :, ::-1]                             # not C-contiguous: NumPy's path, the same values
    np.testing.assert_array_equal(st.transform(strided), want.reshape(x.shape)[:, :, ::-1])


def test_the_standardize_kernel_refuses_inconsistent_shapes():
    from cynet._kernels import load

    x = np.zeros((2, 3, 4), np.uint8)
    ones = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"channel_standardize: x \(2, 3, 4\) needs out of its shape"):
        load("conv").channel_standardize(x, ones, ones, np.empty((2, 3, 5), np.float32), 1)
    with pytest.raises(ValueError, match=r"scale \(2,\)"):
        load("conv").channel_standardize(x, ones, np.ones(2, np.float32), np.empty((2, 3, 4), np.float32), 1)


@pytest.mark.parametrize("make", [Standardize, lambda: Standardize(per="channel"), MeanImage, ChannelMean, PCA,
                                  ZCAWhitening], ids=["standardize", "per-channel", "mean-image", "channel-mean",
                                                      "pca", "zca"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_fit_refuses_training_data_with_nan_or_inf_and_keeps_its_previous_fit(make, bad):
    rng = np.random.default_rng(0)
    clean = rng.standard_normal((40, 3, 2, 2)).astype(np.float32)
    dirty = clean.copy()
    dirty[5, 1, 0, 1] = bad
    transform = make()
    with pytest.raises(ValueError, match="holds 1 NaN or infinite values"):
        transform.fit(dirty)
    assert not transform.is_fitted
    transform.fit(clean)
    before = transform.state_dict()
    with pytest.raises(ValueError, match="NaN or infinite"):
        transform.fit(dirty, refit=True)
    after = transform.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


def test_fit_refuses_values_whose_statistics_overflow():
    transform = Standardize()
    with pytest.raises(ValueError, match="overflow the statistics"):
        transform.fit(np.array([[0.0], [1e300], [-1e300]]))
    assert not transform.is_fitted


def test_a_failed_load_leaves_a_transform_or_a_pipeline_as_it_was():
    """A pipeline whose second step refused its state kept the first step's new statistics and went on
    transforming, silently wrong; a single transform given a state without feature_shape had its mean replaced."""
    a, b = gaussian(n=50, d=6, seed=0), gaussian(n=50, d=6, seed=1) * 10 + 3
    pipe = Pipeline([MeanImage(), PCA(3)]).fit(a)
    expected = pipe.transform(a)
    other = Pipeline([MeanImage(), PCAWhitening(3)]).fit(b).state_dict()          # the same step names
    with pytest.raises(ValueError, match="belongs to a PCAWhitening, not a PCA"):
        pipe.load_state_dict(other)
    np.testing.assert_array_equal(pipe[0].mean_, a.mean(axis=0))
    np.testing.assert_array_equal(pipe.transform(a), expected)
    mean = MeanImage().fit(a)
    state = MeanImage().fit(b).state_dict()
    del state["feature_shape"]
    with pytest.raises(KeyError, match="lacks .*feature_shape"):
        mean.load_state_dict(state)
    np.testing.assert_array_equal(mean.mean_, a.mean(axis=0))


@pytest.mark.parametrize("make", [MeanImage, Standardize, lambda: PCA(3), lambda: ZCAWhitening(eps=1e-3)])
def test_big_endian_float64_input_gives_float64_output(make):
    """Non-native float64 came back float32 (the dtype test compared with the native float64)."""
    x = gaussian(n=40, d=6)
    swapped = x.astype(">f8")
    out = make().fit_transform(swapped)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, make().fit_transform(x))


def test_a_failed_pipeline_fit_leaves_every_step_as_it_was():
    """PCA refuses one sample after Standardize has already refitted on it: the pipeline must not keep the new mean
    and variance in front of the old components (it transformed to -1.9e7 instead of its previous values)."""
    x = gaussian(n=100, d=4)
    pipe = Pipeline([Standardize(), PCA(2)]).fit(x)
    oracle = Pipeline([Standardize(), PCA(2)]).fit(x)                  # the same fit, never touched again
    before = pipe.state_dict()
    with pytest.raises(ValueError, match="PCA.fit: needs at least 2 samples"):
        pipe.fit(x[:1] + 1000, refit=True)
    after = pipe.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])
    np.testing.assert_array_equal(pipe.transform(x[:5]), oracle.transform(x[:5]))
    # a first fit that fails leaves every step unfitted, not half of them fitted
    fresh = Pipeline([Standardize(), PCA(2)])
    with pytest.raises(ValueError, match="needs at least 2 samples"):
        fresh.fit(x[:1])
    assert not fresh.is_fitted and not fresh[0].is_fitted and not fresh[1].is_fitted


def test_a_fit_that_fails_midway_restores_the_previous_statistics(monkeypatch):
    """PCA sets its mean before the eigendecomposition: an error there must not leave the new mean with the old
    components (the previous fit is the oracle)."""
    x = gaussian()
    pca = PCA(3).fit(x)
    before = pca.state_dict()
    expected = PCA(3).fit(x).transform(x[:4])

    def failing_eigh(cov):
        raise np.linalg.LinAlgError("Eigenvalues did not converge")

    monkeypatch.setattr(np.linalg, "eigh", failing_eigh)
    with pytest.raises(np.linalg.LinAlgError):
        pca.fit(x * 3 + 100, refit=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(pca.mean_, before["mean_"])
    np.testing.assert_array_equal(pca.transform(x[:4]), expected)


@pytest.mark.parametrize("make", [MeanImage, ChannelMean, Standardize, lambda: Standardize(per="channel"),
                                  lambda: PCA(2), lambda: PCAWhitening(3), ZCAWhitening,
                                  lambda: Pipeline([Standardize(), PCA(2)])],
                         ids=["mean-image", "channel-mean", "standardize", "per-channel", "pca", "pca-whitening",
                              "zca", "pipeline"])
@pytest.mark.parametrize("shape", [(20, 6), (20, 3, 2, 2)], ids=["rows", "images"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_an_empty_batch_gives_an_empty_result_of_the_right_shape(make, shape, dtype):
    """Oracle: the shape and dtype the same transform gives for a batch of one row, with zero rows."""
    x = np.random.default_rng(0).integers(0, 255, size=shape).astype(dtype)
    transform = make().fit(x)
    one = transform.transform(x[:1])
    empty = transform.transform(x[:0])
    assert empty.shape == (0,) + one.shape[1:] and empty.dtype == one.dtype
    back_one = transform.inverse_transform(one)
    back = transform.inverse_transform(empty)
    assert back.shape == (0,) + back_one.shape[1:] == (0,) + shape[1:] and back.dtype == back_one.dtype


@pytest.mark.parametrize("dtype", [np.int64, np.uint32, np.int32])
def test_wide_integer_data_is_centred_with_a_float64_mean(dtype):
    # the mean was rounded to float32 before x - mean: int64 [1e9, 1e9 + 1] came out as [0, 1] (a float32 step at
    # 1e9 is 64), not zero-mean; the oracle is (x - mean) in float64, rounded once to float32
    big = 2_000_000_000 if dtype != np.int32 else 2_000_000_000 // 2
    x = np.array([[big], [big + 1], [big + 3]], dtype=dtype)
    want = (x.astype(np.float64) - x.astype(np.float64).mean(0)).astype(np.float32)
    np.testing.assert_array_equal(MeanImage().fit_transform(x), want)
    std = Standardize(eps=0.0).fit(x)
    np.testing.assert_allclose(std.transform(x), want / np.float32(std.scale_[0]), rtol=1e-6)
    two = np.column_stack([x[:, 0], x[:, 0] * 0 + np.array([0, 5, 1], dtype)]).astype(dtype)
    pca = PCA().fit(two)
    z = pca.transform(two).astype(np.float64)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)                      # centred: zero-mean components
    images_ = np.full((2, 3, 1, 1), big, dtype)
    images_[1] += 2
    np.testing.assert_array_equal(ChannelMean().fit_transform(images_)[:, 0, 0, 0], [-1, 1])


@pytest.mark.parametrize("index,key,cut", [(0, "mean_", np.s_[0, 0]), (1, "mean_", np.s_[:2]),
                                           (2, "scale_", np.s_[:1]), (3, "var_", np.s_[:, 0]),
                                           (4, "components_", np.s_[:, :-1]), (4, "explained_variance_", np.s_[:3]),
                                           (6, "mean_", np.s_[1:])],
                         ids=["MeanImage", "ChannelMean", "Standardize-channel", "Standardize-feature", "PCA-columns",
                              "PCA-variance", "ZCA-mean"])
def test_load_state_dict_refuses_fitted_arrays_of_another_shape(index, key, cut):
    """A state whose fitted arrays do not fit its saved sample shape (a hand edit, two states mixed up) is refused
    and leaves the transform as it was: it used to load and then broadcast against the data (MeanImage's (2,) mean
    of (3, 2, 2) images subtracted along the last axis without a word)."""
    x, transforms = fitted_transforms()
    fitted = transforms[index]
    state = fitted.state_dict()
    state[key] = np.asarray(state[key])[cut]
    target = type(fitted)(**fitted.config())
    with pytest.raises(ValueError, match=f"{type(fitted).__name__}.load_state_dict: the fitted arrays do not match "
                                         f"the saved sample shape .*{key} has shape"):
        target.load_state_dict(state)
    assert not target.is_fitted
    assert type(fitted)(**fitted.config()).load_state_dict(fitted.state_dict()).transform(x).shape[0] == len(x)


def test_eps_of_the_wrong_type_is_a_type_error_naming_the_transform():
    # Standardize(eps="a") / PCAWhitening(eps=None) were numpy's anonymous "ufunc 'isfinite' not supported"
    for cls in (Standardize, PCAWhitening, ZCAWhitening):
        for eps in ("a", None, [1e-5], True):
            with pytest.raises(TypeError, match=f"{cls.__name__}: eps must be a finite number >= 0, got"):
                cls(eps=eps)
        with pytest.raises(ValueError, match=f"{cls.__name__}: eps must be a finite number >= 0"):
            cls(eps=-1.0)
        assert cls(eps=np.float32(0.5)).eps == 0.5 and cls(eps=0).eps == 0.0

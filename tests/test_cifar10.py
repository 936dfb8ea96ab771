"""cynet.data.cifar10: loading synthetic files in the official format, refusing unsafe or broken files, the opt-in
download (no network: urlopen is monkeypatched), the shared development data and the packaged subset.

Oracles: the arrays written into the synthetic files here; for the trusted shared files, plain pickle.load / np.load.
"""
import hashlib
import io
import json
import os
import pickle
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cynet.data import cifar10
from cynet.data import CIFAR10FormatError, load_cifar10, load_cifar10_subset, load_test_npz

SHARED = Path(os.environ.get("CYNET_SHARED_DATA", "/work/shared/datasets"))
SHARED_TRAIN = SHARED / "cifar-10-batches-py"
SHARED_TEST = SHARED / "cifar10_test_partial.npz"
needs_shared = pytest.mark.skipif(not (SHARED_TRAIN / "data_batch_1").is_file() or not SHARED_TEST.is_file(),
                                  reason=f"shared CIFAR-10 development data not found at {SHARED} "
                                         f"(set $CYNET_SHARED_DATA)")
NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
ROWS = 12  # images per synthetic batch


def batch(seed, n=ROWS):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, 10, size=n)]


def write_batch(path, data, labels, protocol=2, label=b"training batch"):
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": label, b"labels": labels, b"data": data}, f, protocol=protocol)


def write_meta(path, names=NAMES):
    with open(path, "wb") as f:
        pickle.dump({b"num_cases_per_batch": ROWS, b"label_names": names, b"num_vis": 3072}, f, protocol=2)


def make_dir(root, train=(1, 2, 3, 4, 5), test=True, meta=True):
    root.mkdir(parents=True, exist_ok=True)
    for b in train:
        write_batch(root / f"data_batch_{b}", *batch(b))
    if test:
        write_batch(root / "test_batch", *batch(99), label=b"testing batch 1 of 1")
    if meta:
        write_meta(root / "batches.meta")
    return root


def expected(batches):
    parts = [batch(b) for b in batches]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).astype(np.int64)


def make_archive(path, directory):
    with tarfile.open(path, "w:gz") as tar:
        for f in sorted(directory.iterdir()):
            tar.add(f, arcname=f"cifar-10-batches-py/{f.name}")
    return path


# --- the standard directory ------------------------------------------------------------------------------------------
def test_full_directory(tmp_path):
    d = make_dir(tmp_path / "cifar-10-batches-py")
    data = load_cifar10(d)
    x, y = expected(range(1, 6))
    assert data.x_train.shape == (5 * ROWS, 3, 32, 32) and data.x_train.dtype == np.uint8
    assert data.y_train.dtype == np.int64
    np.testing.assert_array_equal(data.x_train.reshape(-1, 3072), x)
    np.testing.assert_array_equal(data.y_train, y)
    xt, yt = batch(99)
    np.testing.assert_array_equal(data.x_test.reshape(-1, 3072), xt)
    np.testing.assert_array_equal(data.y_test, yt)
    assert data.classes == tuple(n.decode() for n in NAMES)
    assert "data_batch_1..5" in data.source and str(d) in data.source
    # CIFAR rows are 1024 R, 1024 G, 1024 B planes, row-major
    np.testing.assert_array_equal(data.x_train[0, 1], x[0, 1024:2048].reshape(32, 32))
    # the parent directory works too, and root=None reads $CYNET_DATA
    np.testing.assert_array_equal(load_cifar10(tmp_path).y_train, y)


def test_default_root_reads_cynet_data(tmp_path, monkeypatch):
    make_dir(tmp_path / "cifar-10-batches-py", train=(2,), test=False)
    monkeypatch.setenv("CYNET_DATA", str(tmp_path))
    data = load_cifar10()
    np.testing.assert_array_equal(data.y_train, expected([2])[1])
    assert data.x_test is None and data.y_test is None


def test_partial_directory_flatten_and_selected_batches(tmp_path):
    d = make_dir(tmp_path, train=(1, 3), test=False, meta=False)
    data = load_cifar10(d, flatten=True)
    x, y = expected([1, 3])
    assert data.x_train.shape == (2 * ROWS, 3072)
    np.testing.assert_array_equal(data.x_train, x)
    np.testing.assert_array_equal(data.y_train, y)
    assert data.x_test is None and data.classes == cifar10.CLASSES  # no batches.meta: the standard names
    only3 = load_cifar10(d, batches=[3], test=False)
    np.testing.assert_array_equal(only3.y_train, expected([3])[1])
    with pytest.raises(FileNotFoundError, match="data_batch_2"):
        load_cifar10(d, batches=[1, 2])
    with pytest.raises(ValueError, match="1..5"):
        load_cifar10(d, batches=[0])


def test_test_flag_skips_the_test_batch(tmp_path):
    data = load_cifar10(make_dir(tmp_path, train=(1,)), test=False)
    assert data.x_test is None


def test_missing_data_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_cifar10(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 data"):
        load_cifar10(tmp_path / "empty")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_files_written_by_python3_numpy_load(tmp_path, protocol):
    x, labels = batch(1)
    write_batch(tmp_path / "data_batch_1", x, np.asarray(labels, dtype=np.int64), protocol=protocol)
    with open(tmp_path / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [n.decode() for n in NAMES]}, f, protocol=protocol)  # str names, str keys
    data = load_cifar10(tmp_path, flatten=True)
    np.testing.assert_array_equal(data.x_train, x)
    np.testing.assert_array_equal(data.y_train, labels)
    assert data.classes[-1] == "truck"


def test_tar_gz_archive_read_without_extracting(tmp_path):
    d = make_dir(tmp_path / "src" / "cifar-10-batches-py", train=(1, 2))
    (tmp_path / "dl").mkdir()
    archive = make_archive(tmp_path / "dl" / "cifar-10-python.tar.gz", d)
    data = load_cifar10(archive)
    x, y = expected([1, 2])
    np.testing.assert_array_equal(data.x_train.reshape(-1, 3072), x)
    np.testing.assert_array_equal(data.y_train, y)
    np.testing.assert_array_equal(data.y_test, batch(99)[1])
    assert str(archive) in data.source
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["cifar-10-python.tar.gz"]  # nothing extracted
    np.testing.assert_array_equal(load_cifar10(tmp_path / "dl", batches=[2]).y_train, expected([2])[1])
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(archive, batches=[3])


# --- unsafe, truncated and malformed files ---------------------------------------------------------------------------
class Exploit:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_before_running(tmp_path):
    marker = tmp_path / "pwned"
    make_dir(tmp_path / "c", train=(1,))
    with open(tmp_path / "c" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Exploit(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"data_batch_1.*refusing to unpickle '(posix|nt|os)\.system'"):
        load_cifar10(tmp_path / "c")
    assert not marker.exists()
    # sanity check of the test itself: a plain pickle.load does run it
    if sys.platform != "win32":
        with open(tmp_path / "c" / "data_batch_1", "rb") as f:
            pickle.load(f)
        assert marker.exists()


def test_malicious_meta_and_test_batch_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    d = make_dir(tmp_path / "c", train=(1,))
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": Exploit(marker)}, f)
    with pytest.raises(pickle.UnpicklingError, match="batches.meta"):
        load_cifar10(d)
    builtin_eval = b"cbuiltins\neval\n(V1+1\ntR."  # protocol 0: eval('1+1')
    assert pickle.loads(builtin_eval) == 2
    (d / "batches.meta").write_bytes(builtin_eval)
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        load_cifar10(d)
    write_meta(d / "batches.meta")
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [Exploit(marker)]}, f, protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="test_batch"):
        load_cifar10(d)
    assert load_cifar10(d, test=False).x_test is None  # not asked for: not read
    assert not marker.exists()


def test_truncated_files_name_the_file(tmp_path):
    d = make_dir(tmp_path / "c", train=(1, 2))
    raw = (d / "data_batch_2").read_bytes()
    for cut in (len(raw) // 2, 10, 0):
        (d / "data_batch_2").write_bytes(raw[:cut])
        with pytest.raises(CIFAR10FormatError, match="data_batch_2.*truncated or corrupt"):
            load_cifar10(d)
    (d / "data_batch_2").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(CIFAR10FormatError, match="data_batch_2"):
        load_cifar10(d)


def test_truncated_archive_names_the_archive(tmp_path):
    d = make_dir(tmp_path / "src", train=(1, 2, 3))
    archive = make_archive(tmp_path / "cifar-10-python.tar.gz", d)
    raw = archive.read_bytes()
    archive.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(CIFAR10FormatError, match="cifar-10-python.tar.gz"):
        load_cifar10(archive)


def test_a_data_file_given_as_root_is_named_as_the_wrong_root_not_as_a_corrupt_archive(tmp_path):
    d = make_dir(tmp_path / "c", train=(1,), test=False)
    x, labels = batch(1)
    np.savez(tmp_path / "test.npz", data=x, labels=np.asarray(labels))
    for wrong in (d / "data_batch_1", tmp_path / "test.npz"):
        with pytest.raises(CIFAR10FormatError, match="is a file but not a CIFAR-10 archive") as error:
            load_cifar10(wrong)
        assert "delete" not in str(error.value)          # the file is fine: never advise deleting it
    # an archive under another name is still read as one
    archive = make_archive(tmp_path / "my_copy.tgz", make_dir(tmp_path / "src", train=(1,)))
    np.testing.assert_array_equal(load_cifar10(archive).y_train, expected([1])[1])


def test_malformed_contents_are_rejected(tmp_path):
    d = make_dir(tmp_path / "c", train=(1,), test=False)
    x, labels = batch(1)
    write_batch(d / "data_batch_1", x, labels[:-1])
    with pytest.raises(CIFAR10FormatError, match=r"data_batch_1: 12 images but labels of shape \(11,\)"):
        load_cifar10(d)
    write_batch(d / "data_batch_1", x, labels[:-1] + [10])
    with pytest.raises(CIFAR10FormatError, match=r"data_batch_1: labels must be in 0..9, found \[10\]"):
        load_cifar10(d)
    write_batch(d / "data_batch_1", x, [-1] + labels[1:])
    with pytest.raises(CIFAR10FormatError, match="0..9"):
        load_cifar10(d)
    write_batch(d / "data_batch_1", x[:, :3000], labels)
    with pytest.raises(CIFAR10FormatError, match="rows of 3072"):
        load_cifar10(d)
    write_batch(d / "data_batch_1", x.astype(np.float32), labels)
    with pytest.raises(CIFAR10FormatError, match="uint8"):
        load_cifar10(d)
    with open(d / "data_batch_1", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(CIFAR10FormatError, match="expected a pickled dict"):
        load_cifar10(d)
    write_batch(d / "data_batch_1", x, labels)
    write_meta(d / "batches.meta", NAMES[:9])
    with pytest.raises(CIFAR10FormatError, match="batches.meta: expected 10 label names"):
        load_cifar10(d)


# --- download (no network) -------------------------------------------------------------------------------------------
def test_download_offline_gives_a_clear_message(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ConnectionError, match=r"could not download https://www\.cs\.toronto\.edu.*offline"):
        load_cifar10(tmp_path / "cache", download=True)
    assert list((tmp_path / "cache").iterdir()) == []  # no partial file left
    with pytest.raises(FileNotFoundError):  # without download=True nothing is attempted
        load_cifar10(tmp_path / "cache")


def test_download_verifies_md5_and_renames_atomically(tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "fake.tar.gz", make_dir(tmp_path / "src", train=(1,)))
    payload = archive.read_bytes()
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="md5 mismatch"):  # the real checksum cannot match the fake archive
        load_cifar10(cache, download=True)
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", hashlib.md5(payload).hexdigest())
    data = load_cifar10(cache, download=True)
    assert calls == [cifar10.CIFAR10_URL] * 2
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-python.tar.gz"]
    assert (cache / "cifar-10-python.tar.gz").read_bytes() == payload
    np.testing.assert_array_equal(data.y_train, batch(1)[1])
    load_cifar10(cache, download=True)  # already there: no second download
    assert len(calls) == 2


# --- npz test files --------------------------------------------------------------------------------------------------
def test_load_test_npz_synthetic_and_errors(tmp_path):
    x, labels = batch(5)
    np.savez(tmp_path / "t.npz", data=x, labels=np.asarray(labels))
    xi, y = load_test_npz(tmp_path / "t.npz")
    assert xi.shape == (ROWS, 3, 32, 32) and y.dtype == np.int64
    np.testing.assert_array_equal(load_test_npz(tmp_path / "t.npz", flatten=True)[0], x)
    np.savez(tmp_path / "bad.npz", data=x, labels=np.asarray(labels[:-1]))
    with pytest.raises(CIFAR10FormatError, match="bad.npz"):
        load_test_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "nokey.npz", pixels=x)
    with pytest.raises(CIFAR10FormatError, match=r"missing keys \['data', 'labels'\]"):
        load_test_npz(tmp_path / "nokey.npz")
    raw = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(CIFAR10FormatError, match="trunc.npz"):
        load_test_npz(tmp_path / "trunc.npz")
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_test_npz(tmp_path / "absent.npz")


# --- the data a program can reach -------------------------------------------------------------------------------------
def test_reachable_tries_the_default_root_then_the_fallbacks_then_the_subset(tmp_path, monkeypatch):
    from cynet.data import load_cifar10_reachable

    monkeypatch.setenv("CYNET_DATA", str(tmp_path / "empty"))
    data, is_subset = load_cifar10_reachable(fallbacks=[tmp_path / "nowhere"])
    assert is_subset and "subset" in data.source
    # a development copy: batches without test_batch, one *test*.npz beside them
    dev = tmp_path / "dev"
    make_dir(dev / "cifar-10-batches-py", train=(1, 2), test=False)
    xt, yt = batch(7)
    np.savez(dev / "cifar10_test_partial.npz", data=xt, labels=np.asarray(yt))
    data, is_subset = load_cifar10_reachable(fallbacks=[tmp_path / "nowhere", dev])
    assert not is_subset
    np.testing.assert_array_equal(data.y_train, expected([1, 2])[1])
    np.testing.assert_array_equal(data.x_test.reshape(-1, 3072), xt)
    np.testing.assert_array_equal(data.y_test, yt)
    assert "cifar10_test_partial.npz" in data.source
    flat, _ = load_cifar10_reachable(dev / "cifar-10-batches-py", flatten=True)
    assert flat.x_test.shape == (ROWS, 3072)
    # $CYNET_DATA comes before the fallbacks; its test_batch is not replaced
    make_dir(tmp_path / "home" / "cifar-10-batches-py", train=(3,))
    monkeypatch.setenv("CYNET_DATA", str(tmp_path / "home"))
    data, _ = load_cifar10_reachable(fallbacks=[dev])
    np.testing.assert_array_equal(data.y_train, expected([3])[1])
    np.testing.assert_array_equal(data.y_test, batch(99)[1])
    # two candidate test files: ambiguous, none is taken
    np.savez(dev / "other_test.npz", data=xt, labels=np.asarray(yt))
    assert load_cifar10_reachable(dev)[0].x_test is None
    # one place given as a plain string (or path) is one place, not a sequence of one-character ones
    monkeypatch.setenv("CYNET_DATA", str(tmp_path / "empty"))
    for one in (str(dev), dev):
        data, is_subset = load_cifar10_reachable(fallbacks=one)
        assert not is_subset
        np.testing.assert_array_equal(data.y_train, expected([1, 2])[1])
    monkeypatch.setenv("CYNET_DATA", str(tmp_path / "home"))
    # an explicit root must work: its error is not swallowed
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 data"):
        load_cifar10_reachable(tmp_path / "nowhere")


# --- the shared development data -------------------------------------------------------------------------------------
def trusted_batch(i):
    with open(SHARED_TRAIN / f"data_batch_{i}", "rb") as f:
        return pickle.load(f, encoding="bytes")  # trusted read-only shared files: the oracle


@needs_shared
def test_shared_training_batches():
    data = load_cifar10(SHARED_TRAIN)
    assert data.x_train.shape == (40000, 3, 32, 32) and data.x_test is None
    assert data.classes[0] == "airplane" and data.classes[9] == "truck"
    counts = np.zeros(10, dtype=np.int64)
    for i in range(1, 5):
        raw = trusted_batch(i)
        counts += np.bincount(raw[b"labels"], minlength=10)
        rows = slice((i - 1) * 10000, i * 10000)
        assert hashlib.md5(data.x_train[rows].tobytes()).hexdigest() == hashlib.md5(raw[b"data"].tobytes()).hexdigest()
        np.testing.assert_array_equal(data.y_train[rows], raw[b"labels"])
    np.testing.assert_array_equal(np.bincount(data.y_train, minlength=10), counts)
    assert counts.sum() == 40000 and counts.min() > 3800  # CIFAR-10 batches are nearly balanced
    first = trusted_batch(1)[b"data"][0]
    np.testing.assert_array_equal(data.x_train[0, 2], first[2048:].reshape(32, 32))  # blue plane
    x_test, y_test = load_test_npz(SHARED_TEST)
    with np.load(SHARED_TEST) as f:
        np.testing.assert_array_equal(x_test.reshape(-1, 3072), f["data"])
        np.testing.assert_array_equal(y_test, f["labels"])
    assert x_test.shape == (1017, 3, 32, 32)


# --- the packaged subset ---------------------------------------------------------------------------------------------
def test_packaged_subset_is_small_balanced_and_well_formed():
    assert cifar10.SUBSET_PATH.is_file()
    assert os.path.getsize(cifar10.SUBSET_PATH) <= 4_000_000
    data = load_cifar10_subset()
    n_train, n_test = len(data.y_train), len(data.y_test)
    assert data.x_train.shape == (n_train, 3, 32, 32) and data.x_test.shape == (n_test, 3, 32, 32)
    assert data.x_train.dtype == np.uint8 and data.y_train.dtype == np.int64
    assert f"packaged CIFAR-10 subset of {n_train + n_test} images" in data.source
    assert np.ptp(np.bincount(data.y_train, minlength=10)) <= 1
    assert np.ptp(np.bincount(data.y_test, minlength=10)) <= 1
    assert load_cifar10_subset(flatten=True).x_train.shape == (n_train, 3072)
    assert data.classes == cifar10.CLASSES


@needs_shared
def test_packaged_subset_holds_real_rows_of_the_shared_data():
    data = load_cifar10_subset(flatten=True)
    with np.load(cifar10.SUBSET_PATH) as f:
        train_index, test_index = f["train_index"], f["test_index"]
        meta = json.loads(f["metadata"].item())
    shared = np.concatenate([trusted_batch(i)[b"data"] for i in range(1, 5)])
    labels = np.concatenate([trusted_batch(i)[b"labels"] for i in range(1, 5)])
    np.testing.assert_array_equal(data.x_train, shared[train_index])
    np.testing.assert_array_equal(data.y_train, labels[train_index])
    assert len(set(train_index.tolist())) == len(train_index)
    # independent of the stored indices: every image is one of the training rows
    known = {row.tobytes() for row in shared}
    assert all(row.tobytes() in known for row in data.x_train)
    with np.load(SHARED_TEST) as f:
        np.testing.assert_array_equal(data.x_test, f["data"][test_index])
        np.testing.assert_array_equal(data.y_test, f["labels"][test_index])
    assert "test" in meta["test_source"] and meta["seed"] == 0


def test_subset_script_carves_a_disjoint_test_part_without_test_images(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    try:
        import make_cifar10_subset
    finally:
        sys.path.pop(0)
    d = make_dir(tmp_path / "c", train=(1, 2, 3, 4, 5), test=False)
    for b in range(1, 6):  # 10 rows of each class per batch so a balanced draw is possible
        x, _ = batch(b, n=20)
        write_batch(d / f"data_batch_{b}", x, [i % 10 for i in range(20)])
    out = tmp_path / "subset.npz"
    make_cifar10_subset.main(["--data", str(d), "--out", str(out), "--train", "30", "--test", "20", "--seed", "1"])
    data = load_cifar10_subset(path=out, flatten=True)
    meta = cifar10.subset_metadata(out)
    assert "not the official test set" in meta["test_source"]
    with np.load(out) as f:
        assert not set(f["train_index"].tolist()) & set(f["test_index"].tolist())
    np.testing.assert_array_equal(np.bincount(data.y_train), [3] * 10)
    np.testing.assert_array_equal(np.bincount(data.y_test), [2] * 10)
    full = load_cifar10(d, flatten=True)
    np.testing.assert_array_equal(data.x_test, full.x_train[np.load(out)["test_index"]])
    with pytest.raises(SystemExit, match="exceeds --max-bytes"):
        make_cifar10_subset.main(["--data", str(d), "--out", str(tmp_path / "big.npz"), "--train", "30",
                                  "--test", "20", "--max-bytes", "1000"])
    assert not (tmp_path / "big.npz").exists()


def test_more_malformed_contents_are_format_errors_naming_the_file(tmp_path):
    # these gave bare LookupError, UnicodeDecodeError, TypeError or NumPy's ragged-array ValueError, the file unnamed
    d = make_dir(tmp_path / "m", train=(1,), test=False)
    x, labels = batch(1)
    good = (d / "data_batch_1").read_bytes()
    assert b"latin1" in good
    (d / "data_batch_1").write_bytes(good.replace(b"latin1", b"lVtin1", 1))      # one flipped byte: a codec name
    with pytest.raises(CIFAR10FormatError, match="data_batch_1: truncated or corrupt pickle"):
        load_cifar10(d)
    write_batch(d / "data_batch_1", x, [labels[:2], labels[2:5]] + labels[2:])  # ragged labels
    with pytest.raises(CIFAR10FormatError, match="data_batch_1: b'data' and b'labels' must be arrays"):
        load_cifar10(d)
    write_batch(d / "data_batch_1", x, labels)
    write_meta(d / "batches.meta", 5)
    with pytest.raises(CIFAR10FormatError, match="batches.meta: b'label_names' must be a list"):
        load_cifar10(d)
    write_meta(d / "batches.meta", [b"\xff\xfe"] * 10)
    with pytest.raises(CIFAR10FormatError, match="batches.meta: b'label_names' must be a list"):
        load_cifar10(d)


def test_an_npy_given_for_an_npz_is_a_format_error(tmp_path):
    xt, yt = batch(7)
    np.save(tmp_path / "test_rows.npy", xt)            # np.save instead of np.savez: one array, no keys
    with pytest.raises(CIFAR10FormatError, match=r"test_rows.npy: not an .npz archive"):
        load_test_npz(tmp_path / "test_rows.npy")


def test_a_checkpoint_named_like_a_test_file_is_not_taken_for_the_test_set(tmp_path, monkeypatch):
    from cynet.data import load_cifar10_reachable
    monkeypatch.setenv("CYNET_DATA", str(tmp_path / "empty"))
    dev = tmp_path / "dev"
    make_dir(dev / "cifar-10-batches-py", train=(1,), test=False)
    np.savez(dev / "latest.npz", w=np.ones(3))          # "*test*.npz": a checkpoint beside the data
    data, _ = load_cifar10_reachable(fallbacks=[dev])
    assert data.x_test is None                          # it raised "latest.npz: missing keys"
    xt, yt = batch(7)
    np.savez(dev / "cifar10_test_partial.npz", data=xt, labels=np.asarray(yt))
    data, _ = load_cifar10_reachable(fallbacks=[dev])
    np.testing.assert_array_equal(data.y_test, yt)      # the real one is found beside it, not dropped as ambiguous


def test_a_download_cut_short_is_a_connection_error(tmp_path, monkeypatch):
    import http.client

    class CutShort(io.BytesIO):
        def read(self, n=-1):
            raise http.client.IncompleteRead(b"partial", 100)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: CutShort())
    with pytest.raises(ConnectionError, match="could not download"):
        load_cifar10(tmp_path / "cache", download=True)
    assert list((tmp_path / "cache").iterdir()) == []


# --- memory: one copy of the training set while it is assembled ------------------------------------------------------
def test_training_batches_are_assembled_without_a_second_copy_of_the_training_set(tmp_path):
    """Keeping every parsed batch and concatenating them held two copies (peak 308 MB for the 50k set); each batch is
    now copied into the result as it comes: peak = the result plus a few batch-sized buffers (file bytes, parsed)."""
    import tracemalloc
    rows = 1000
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for b in range(1, 6):
        write_batch(d / f"data_batch_{b}", *batch(b, rows), protocol=4)   # the pixels as one bytes object
    tracemalloc.start()
    try:
        data = load_cifar10(d, test=False, flatten=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_batch = rows * 3072
    assert data.x_train.nbytes == 5 * one_batch
    assert peak < data.x_train.nbytes + 4 * one_batch, (peak, data.x_train.nbytes)    # two copies: >= 10 batches
    x = np.concatenate([batch(b, rows)[0] for b in range(1, 6)])
    np.testing.assert_array_equal(data.x_train, x)


def test_training_batches_of_different_sizes_are_assembled_in_order(tmp_path):
    """The result is sized from the first batch; a larger later batch grows it, smaller ones shrink it."""
    sizes = {1: 5, 2: 9, 3: 2, 4: 7}
    for order in ([1, 2, 3, 4], [2, 3, 1], [3, 2], [4, 3]):
        d = tmp_path / "-".join(map(str, order))
        d.mkdir()
        for b in order:
            write_batch(d / f"data_batch_{b}", *batch(b, sizes[b]))
        data = load_cifar10(d, batches=order, test=False, flatten=True)
        parts = [batch(b, sizes[b]) for b in order]
        np.testing.assert_array_equal(data.x_train, np.concatenate([p[0] for p in parts]))
        np.testing.assert_array_equal(data.y_train, np.concatenate([p[1] for p in parts]))
        assert data.x_train.flags.c_contiguous and data.x_train.flags.owndata

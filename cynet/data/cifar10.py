"""CIFAR-10 from the official "python version" files, a ``.tar.gz`` archive, or the small packaged subset.

The official files are pickles, and unpickling can execute arbitrary code. They are read here with a restricted
unpickler that admits only the numpy names an array needs (``_reconstruct``, ``ndarray``, ``dtype``, …) and refuses
everything else with :class:`pickle.UnpicklingError` naming the file. Nothing is downloaded unless you pass
``download=True``.

Layout of one batch file: a dict with ``b'data'`` (uint8, (10000, 3072): rows of 1024 red, 1024 green, 1024 blue
values of a 32×32 image, row-major), ``b'labels'`` (10000 ints in 0..9) and ``b'batch_label'``; ``batches.meta``
holds ``b'label_names'``.

Example:
    >>> from cynet.data import load_cifar10_subset
    >>> data = load_cifar10_subset()
    >>> data.x_train.shape[1:], data.x_train.dtype, data.classes[0]
    ((3, 32, 32), dtype('uint8'), 'airplane')
"""
import hashlib
import http.client
import io
import json
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from cynet._files import atomic_file

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (3, 32, 32)
ROW_SIZE = 3072
SUBSET_PATH = Path(__file__).resolve().parent / "_subset" / "cifar10_subset.npz"


class CIFAR10FormatError(ValueError):
    """A CIFAR-10 file is truncated, corrupt or not in the expected format (the message names the file)."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a name outside the few the CIFAR-10 format needs: refused before anything ran."""


@dataclass(frozen=True, repr=False)
class CIFAR10:
    """CIFAR-10 arrays as loaded.

    Attributes:
        x_train (ndarray): uint8 ``(N, 3, 32, 32)`` (or ``(N, 3072)`` with ``flatten=True``).
        y_train (ndarray): int64 ``(N,)`` in 0..9.
        x_test, y_test (ndarray or None): the same for the test batch; None when there is none.
        classes (tuple): the 10 class names, index = label.
        source (str): where the arrays came from.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: Optional[np.ndarray]
    y_test: Optional[np.ndarray]
    classes: Tuple[str, ...]
    source: str

    def __repr__(self):
        test = "None" if self.x_test is None else f"{self.x_test.dtype}{tuple(self.x_test.shape)}"
        return (f"CIFAR10(x_train={self.x_train.dtype}{tuple(self.x_train.shape)}, x_test={test}, "
                f"classes={len(self.classes)}, source={self.source!r})")


# --- safe unpickling -------------------------------------------------------------------------------------------------
def _allowed_globals():
    """The (module, name) pairs a CIFAR-10 pickle (or one written by NumPy in Python 3) may reference."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    import _codecs

    allowed = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    if hasattr(numeric, "_frombuffer"):
        for module in ("numpy.core.numeric", "numpy._core.numeric"):
            allowed[(module, "_frombuffer")] = numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    allowed[("_codecs", "encode")] = _codecs.encode  # how Python 3 writes bytes at protocol 2
    allowed[("builtins", "bytearray")] = bytearray
    return allowed


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the names in ``_ALLOWED``; anything else is refused before it can run."""

    def __init__(self, file, source):
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module, name):
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self.source}: refusing to unpickle '{module}.{name}': a CIFAR-10 file only needs numpy arrays, "
                f"lists, dicts and bytes. The file is corrupt or malicious; nothing from it was executed.")
        return obj

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refusing a persistent id in the pickle (not a CIFAR-10 file)")


def safe_unpickle(data, source):
    """Unpickle ``data`` (bytes) admitting only the names the CIFAR-10 format needs.

    Args:
        data (bytes): the pickle.
        source (str): the file name, used in error messages.

    Returns:
        object: the unpickled object (``encoding='bytes'``: Python 2 strings come back as bytes).

    Raises:
        pickle.UnpicklingError: the pickle references anything else (nothing from it is executed).
        CIFAR10FormatError: the data is truncated or corrupt.
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OverflowError, UnicodeDecodeError, LookupError) as exc:     # (LookupError: a codec name)
        raise CIFAR10FormatError(f"{source}: truncated or corrupt pickle ({type(exc).__name__}: {exc}); delete it "
                                 f"and download CIFAR-10 again") from exc


def _get(d, key):
    """``d[b'key']`` or ``d['key']`` (files written in Python 3 may use str keys)."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _parse_batch(obj, source):
    """(data uint8 (n, 3072), labels int64 (n,)) from an unpickled batch dict, validated."""
    if not isinstance(obj, dict):
        raise CIFAR10FormatError(f"{source}: expected a pickled dict with b'data' and b'labels', got "
                                 f"{type(obj).__name__}")
    data, labels = _get(obj, "data"), _get(obj, "labels")
    if data is None or labels is None:
        raise CIFAR10FormatError(f"{source}: the dict lacks b'data' or b'labels' (keys: {sorted(map(repr, obj))})")
    try:
        data, labels = np.asarray(data), np.asarray(labels)
    except (TypeError, ValueError) as exc:               # ragged rows or labels
        raise CIFAR10FormatError(f"{source}: b'data' and b'labels' must be arrays ({exc})") from exc
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_SIZE:
        raise CIFAR10FormatError(f"{source}: b'data' must be uint8 rows of {ROW_SIZE} values, got {data.dtype} "
                                 f"array of shape {tuple(data.shape)}")
    labels = _check_labels(labels, data.shape[0], source)
    return data, labels


def _check_labels(labels, n, source):
    if labels.ndim != 1 or labels.shape[0] != n:
        raise CIFAR10FormatError(f"{source}: {n} images but labels of shape {tuple(labels.shape)}")
    if n and labels.dtype.kind not in "iu":
        raise CIFAR10FormatError(f"{source}: labels must be integers, got {labels.dtype}")
    labels = labels.astype(np.int64)
    if n and (labels.min() < 0 or labels.max() > 9):
        bad = labels[(labels < 0) | (labels > 9)]
        raise CIFAR10FormatError(f"{source}: labels must be in 0..9, found {bad[:5].tolist()}")
    return labels


def _parse_meta(obj, source):
    if not isinstance(obj, dict) or _get(obj, "label_names") is None:
        raise CIFAR10FormatError(f"{source}: expected a pickled dict with b'label_names'")
    try:
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in _get(obj, "label_names"))
    except (TypeError, UnicodeDecodeError) as exc:      # not a list of names, or names that are not UTF-8
        raise CIFAR10FormatError(f"{source}: b'label_names' must be a list of 10 names ({exc})") from exc
    if len(names) != 10:
        raise CIFAR10FormatError(f"{source}: expected 10 label names, got {len(names)}")
    return names


# --- sources: a directory or a tar.gz archive ------------------------------------------------------------------------
class _DirectorySource:
    def __init__(self, directory):
        self.directory = Path(directory)
        self.description = str(self.directory)

    def has(self, name):
        return (self.directory / name).is_file()

    def read(self, name):
        path = self.directory / name
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR-10: missing file {path}")
        return path.read_bytes(), str(path)

    def close(self):
        pass


class _TarSource:
    def __init__(self, archive):
        self.archive = Path(archive)
        self.description = str(self.archive)
        try:
            self.tar = tarfile.open(self.archive, "r:*")
            self.members = {Path(m.name).name: m for m in self.tar.getmembers() if m.isfile()}
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise CIFAR10FormatError(f"{self.archive}: truncated or corrupt archive ({type(exc).__name__}: {exc})"
                                     f"; delete it and download again") from exc

    def has(self, name):
        return name in self.members

    def read(self, name):
        where = f"{self.archive}:{FOLDER_NAME}/{name}"
        if name not in self.members:
            raise FileNotFoundError(f"CIFAR-10: missing file {where}")
        try:
            return self.tar.extractfile(self.members[name]).read(), where
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise CIFAR10FormatError(f"{where}: truncated or corrupt archive ({type(exc).__name__}: {exc})") from exc

    def close(self):
        self.tar.close()


def default_root():
    """Where :func:`load_cifar10` looks when ``root=None``: ``$CYNET_DATA``, else ``~/.cache/cynet``."""
    return Path(os.environ.get("CYNET_DATA") or Path.home() / ".cache" / "cynet").expanduser()


def _looks_like_archive(path):
    """Whether ``path`` starts as a gzip, bzip2 or xz stream or a tar file does (its first bytes only)."""
    with open(path, "rb") as f:
        head = f.read(512)
    return head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or head[257:262] == b"ustar"


def _find_source(root):
    """A source for ``root``: an archive path, a batches directory, or a directory holding either."""
    root = Path(root).expanduser()
    if root.is_file():
        if root.name != ARCHIVE_NAME and not _looks_like_archive(root):
            raise CIFAR10FormatError(
                f"{root} is a file but not a CIFAR-10 archive (tar, tar.gz, tar.bz2 or tar.xz); root must be the "
                f"{FOLDER_NAME} directory, a directory holding it or {ARCHIVE_NAME}, or that archive itself")
        return _TarSource(root)
    candidates = (root, root / FOLDER_NAME)
    for directory in candidates:
        if directory.is_dir() and any((directory / n).is_file() for n in TRAIN_BATCHES + (TEST_BATCH,)):
            return _DirectorySource(directory)
    if (root / ARCHIVE_NAME).is_file():
        return _TarSource(root / ARCHIVE_NAME)
    return None


def load_cifar10(root=None, *, batches=None, test=True, flatten=False, download=False):
    """Load CIFAR-10 (the official "python version") as uint8 arrays.

    ``root`` may be the ``cifar-10-batches-py`` directory, a directory containing it or ``cifar-10-python.tar.gz``,
    or the archive itself (members are read straight from it, nothing is extracted). A directory with only some
    batches (a development copy) loads the ones present.

    Args:
        root (str, PathLike or None): where the data is; None means ``$CYNET_DATA`` or ``~/.cache/cynet``.
        batches (iterable of int or None): training batches to load (1..5); None loads every one present.
        test (bool): also load ``test_batch`` when present. Default True.
        flatten (bool): rows of 3072 values instead of (3, 32, 32) images. Default False.
        download (bool): when nothing is found, download the official archive (170 MB, md5-checked) into
            ``root``. Default False.

    Returns:
        CIFAR10: ``x_train`` uint8 (N, 3, 32, 32), ``y_train`` int64, ``x_test``/``y_test`` (None without a test
        batch), ``classes``, ``source``.

    Raises:
        FileNotFoundError: no data at ``root`` (and ``download=False``), or an asked batch is missing (named).
        pickle.UnpicklingError: a file references code (refused; nothing executed).
        CIFAR10FormatError (a ValueError): a truncated or malformed file (named).

    Example:
        >>> data = load_cifar10("~/data/cifar-10-batches-py")            # doctest: +SKIP
        >>> data.x_train.shape, data.y_train.dtype                       # doctest: +SKIP
        ((50000, 3, 32, 32), dtype('int64'))
    """
    root = default_root() if root is None else Path(root).expanduser()
    if batches is not None:
        batches = list(batches)
        bad = [b for b in batches if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= 5]
        if bad or not batches or len(set(batches)) != len(batches):
            raise ValueError(f"load_cifar10: batches must be distinct ints in 1..5, got {batches}")
    source = _find_source(root)
    if source is None:
        if not download:
            raise FileNotFoundError(
                f"load_cifar10: no CIFAR-10 data at {root}: expected the '{FOLDER_NAME}' directory (data_batch_1..5, "
                f"test_batch, batches.meta), a directory containing it, or {ARCHIVE_NAME}. Pass download=True to fetch "
                f"it from {CIFAR10_URL} (170 MB), point root or $CYNET_DATA at a copy, or use load_cifar10_subset() "
                f"offline.")
        source = _TarSource(download_cifar10(root if not root.is_file() else root.parent))
    try:
        names = ([f"data_batch_{b}" for b in batches] if batches is not None
                 else [n for n in TRAIN_BATCHES if source.has(n)])
        if not names:
            raise FileNotFoundError(f"load_cifar10: no training batch (data_batch_1..5) in {source.description}")
        x_train, y_train = _read_training_batches(source, names)
        x_test = y_test = None
        if test and source.has(TEST_BATCH):
            data, where = source.read(TEST_BATCH)
            x_test, y_test = _parse_batch(safe_unpickle(data, where), where)
        if source.has(META_FILE):
            data, where = source.read(META_FILE)
            classes = _parse_meta(safe_unpickle(data, where), where)
        else:
            classes = CLASSES
    finally:
        source.close()
    if not flatten:
        x_train = x_train.reshape((-1,) + IMAGE_SHAPE)
        x_test = None if x_test is None else x_test.reshape((-1,) + IMAGE_SHAPE)
    listed = _batch_range(names)
    test_note = f"test_batch ({len(y_test)} test images)" if y_test is not None else "no test_batch"
    description = f"CIFAR-10 from {source.description}: {listed} ({len(y_train)} training images), {test_note}"
    return CIFAR10(x_train, y_train, x_test, y_test, tuple(classes), description)


def load_cifar10_reachable(root=None, *, fallbacks=(), test=True, flatten=False, download=False):
    """CIFAR-10 from the first place that holds it, else the packaged subset: what an offline program can reach.

    An explicit ``root`` (or ``download=True``) must work: its errors propagate. Otherwise the places tried are
    ``$CYNET_DATA`` / ``~/.cache/cynet`` (:func:`default_root`), then each of ``fallbacks`` in order (for example
    a development copy next to the project), and last :func:`load_cifar10_subset`. When the training batches come
    without a test batch, a single ``*test*.npz`` file beside them (``data``/``labels``, see
    :func:`load_test_npz`) serves as the test set, as the shared development copy's ``cifar10_test_partial.npz``
    does; ``source`` then names it.

    Args:
        root (str, PathLike or None): the data set's location, as :func:`load_cifar10` takes it. Default None.
        fallbacks (str, PathLike or a sequence of them): further places to try when ``root`` is None. Default ().
        test (bool): load test images too. Default True.
        flatten (bool): ``(N, 3072)`` rows instead of ``(N, 3, 32, 32)``. Default False.
        download (bool): fetch the official archive into ``root`` / the default root if it is not there.

    Returns:
        tuple: ``(CIFAR10, is_subset)``; ``is_subset`` is True when only the packaged subset was found.

    Example:
        >>> data, is_subset = load_cifar10_reachable(fallbacks=["../shared/datasets"])  # doctest: +SKIP
        >>> print(data.source)                                                            # doctest: +SKIP
    """
    if root is not None or download:
        place = default_root() if root is None else Path(root).expanduser()
        data = load_cifar10(place, test=test, flatten=flatten, download=download)
    else:
        data = None
        if isinstance(fallbacks, (str, bytes, os.PathLike)):
            fallbacks = [fallbacks]     # one place, not a sequence of one-character places
        for place in [default_root()] + [Path(p).expanduser() for p in fallbacks]:
            try:
                data = load_cifar10(place, test=test, flatten=flatten)
                break
            except (FileNotFoundError, OSError):
                continue
        if data is None:
            return load_cifar10_subset(flatten=flatten), True
    if test and data.x_test is None:                      # `place` is where the batches were found
        directory = place.parent if place.is_file() else place
        found = sorted({f for d in (directory, directory.parent) if d.is_dir() for f in d.glob("*test*.npz")
                        if _holds_test_images(f)})     # a checkpoint named latest.npz is not a test set
        if len(found) == 1:
            x_test, y_test = load_test_npz(found[0], flatten=flatten)
            data = CIFAR10(data.x_train, data.y_train, x_test, y_test, data.classes,
                           f"{data.source}; test images from {found[0]} ({len(y_test)})")
    return data, False


def _holds_test_images(path):
    """Whether the .npz at ``path`` has 'data' and 'labels' (read from its directory, nothing loaded)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return isinstance(f, np.lib.npyio.NpzFile) and {"data", "labels"} <= set(f.files)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        return False


def _batch_range(names):
    numbers = [int(n.rsplit("_", 1)[1]) for n in names]
    if numbers == list(range(numbers[0], numbers[-1] + 1)) and len(numbers) > 1:
        return f"data_batch_{numbers[0]}..{numbers[-1]}"
    return ", ".join(names)


def _read_training_batches(source, names):
    """The training batches ``names`` as one uint8 ``(N, 3072)`` array and one int64 ``(N,)`` label array.

    Each batch is parsed and copied into the result as it comes, then dropped, so the peak is the result plus one
    batch (its file bytes and its parsed rows), not two copies of the training set. The result is allocated for
    ``len(names)`` batches the size of the first; batches of other sizes (a development copy) grow or shrink it in
    place (``ndarray.resize``: no second copy is kept).
    """
    x = y = None
    filled = 0
    for remaining, name in zip(range(len(names) - 1, -1, -1), names):
        raw, where = source.read(name)
        batch = safe_unpickle(raw, where)
        del raw
        data, labels = _parse_batch(batch, where)
        del batch
        n = len(labels)
        if x is None:
            x = np.empty((n * len(names), ROW_SIZE), dtype=np.uint8)
            y = np.empty(n * len(names), dtype=np.int64)
        elif filled + n > len(y):                      # a batch larger than the first: room for it and the rest
            x.resize((filled + n * (remaining + 1), ROW_SIZE), refcheck=False)
            y.resize(filled + n * (remaining + 1), refcheck=False)
        x[filled:filled + n] = data
        y[filled:filled + n] = labels
        filled += n
        del data, labels
    if filled != len(y):                               # smaller batches than the first: give the rest back
        x.resize((filled, ROW_SIZE), refcheck=False)
        y.resize(filled, refcheck=False)
    return x, y


# --- download --------------------------------------------------------------------------------------------------------
def download_cifar10(root=None, *, force=False):
    """Download the official archive into ``root`` (streamed, md5-verified, renamed atomically).

    The archive is written to a temporary file in ``root`` while its md5 is computed, then renamed to
    ``cifar-10-python.tar.gz``; a checksum mismatch or an interrupted download leaves nothing behind.

    Args:
        root (str, PathLike or None): destination directory; None means ``$CYNET_DATA`` or ``~/.cache/cynet``.
        force (bool): download even when the archive is already there. Default False.

    Returns:
        pathlib.Path: the archive.

    Raises:
        ConnectionError: the download failed (offline, for instance); the message says what to do instead.
        ValueError: the md5 checksum does not match.
    """
    root = default_root() if root is None else Path(root).expanduser()
    target = root / ARCHIVE_NAME
    if target.is_file() and not force:
        return target
    root.mkdir(parents=True, exist_ok=True)
    md5 = hashlib.md5()
    with atomic_file(target, suffix=".part") as out:
        try:
            with urllib.request.urlopen(CIFAR10_URL, timeout=60) as response:
                while True:
                    block = response.read(1 << 20)
                    if not block:
                        break
                    md5.update(block)
                    out.write(block)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:   # (IncompleteRead: cut short)
            raise ConnectionError(
                f"download_cifar10: could not download {CIFAR10_URL} ({exc}). If this machine is offline, "
                f"download {ARCHIVE_NAME} elsewhere and copy it to {root} (or set $CYNET_DATA to its "
                f"directory); load_cifar10_subset() works offline.") from exc
        if md5.hexdigest() != CIFAR10_MD5:
            raise ValueError(f"download_cifar10: md5 mismatch for {CIFAR10_URL}: expected {CIFAR10_MD5}, got "
                             f"{md5.hexdigest()} (the partial download was deleted; try again)")
    return target


# --- npz files: the shared test images and the packaged subset -------------------------------------------------------
def _read_npz(path, keys):
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):     # np.save's .npy: one array, no keys
            raise CIFAR10FormatError(f"{path}: not an .npz archive (an .npy array? save with np.savez and the keys "
                                     f"{list(keys)})")
        with f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise CIFAR10FormatError(f"{path}: missing keys {missing} (has {f.files})")
            return {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        if isinstance(exc, CIFAR10FormatError):
            raise
        raise CIFAR10FormatError(f"{path}: truncated or corrupt .npz ({type(exc).__name__}: {exc})") from exc


def _check_rows(x, source, what):
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != ROW_SIZE:
        raise CIFAR10FormatError(f"{source}: {what} must be uint8 rows of {ROW_SIZE} values, got {x.dtype} array "
                                 f"of shape {tuple(x.shape)}")
    return x


def load_test_npz(path, *, flatten=False):
    """Load test images stored as an ``.npz`` with ``data`` (uint8 (N, 3072)) and ``labels`` (no pickle).

    This is the format of the shared development file ``cifar10_test_partial.npz``.

    Args:
        path (str or PathLike): the file.
        flatten (bool): rows of 3072 values instead of (3, 32, 32) images. Default False.

    Returns:
        tuple: ``(x, y)``: uint8 (N, 3, 32, 32) (or (N, 3072)) and int64 (N,).

    Example:
        >>> x, y = load_test_npz("/work/shared/datasets/cifar10_test_partial.npz")   # doctest: +SKIP
    """
    f = _read_npz(path, ("data", "labels"))
    x = _check_rows(f["data"], path, "data")
    y = _check_labels(f["labels"], x.shape[0], path)
    return (x if flatten else x.reshape((-1,) + IMAGE_SHAPE)), y


def load_cifar10_subset(*, flatten=False, path=None):
    """The small real CIFAR-10 subset packaged with cynet (offline, seconds to load, for examples and tests).

    Built by ``scripts/make_cifar10_subset.py``: class-balanced training images drawn from the official training
    batches and test images from the official test set (see ``source`` and the file's metadata).

    Args:
        flatten (bool): rows of 3072 values instead of (3, 32, 32) images. Default False.
        path (str, PathLike or None): another file in the same format; None means the packaged one.

    Returns:
        CIFAR10: as :func:`load_cifar10`; ``source`` says it is the packaged subset and how many images it has.

    Example:
        >>> data = load_cifar10_subset()
        >>> len(data.classes), data.y_train.dtype
        (10, dtype('int64'))
    """
    path = SUBSET_PATH if path is None else Path(path).expanduser()
    f = _read_npz(path, ("x_train", "y_train", "x_test", "y_test", "classes", "metadata"))
    x_train = _check_rows(f["x_train"], path, "x_train")
    y_train = _check_labels(f["y_train"], x_train.shape[0], path)
    x_test = _check_rows(f["x_test"], path, "x_test")
    y_test = _check_labels(f["y_test"], x_test.shape[0], path)
    classes = tuple(str(c) for c in f["classes"])
    meta = json.loads(f["metadata"].item())
    if not flatten:
        x_train, x_test = x_train.reshape((-1,) + IMAGE_SHAPE), x_test.reshape((-1,) + IMAGE_SHAPE)
    n = len(y_train) + len(y_test)
    test_from = meta.get("test_source", "unknown")
    description = (f"packaged CIFAR-10 subset of {n} images ({len(y_train)} training, {len(y_test)} test; test "
                   f"images from {test_from}) at {path}")
    return CIFAR10(x_train, y_train, x_test, y_test, classes, description)


def subset_metadata(path=None):
    """The JSON metadata stored in the packaged subset (seed, sources, indices of the images taken)."""
    f = _read_npz(SUBSET_PATH if path is None else path, ("metadata",))
    return json.loads(f["metadata"].item())

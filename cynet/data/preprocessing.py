"""Data preprocessing fitted once on the training set, then applied unchanged to every split (CS231n).

Every transform follows scikit-learn's conventions: ``fit(x_train)`` computes statistics and returns ``self``;
``transform(x)`` applies them; ``fit_transform``; ``inverse_transform``; fitted attributes end in ``_``.
``state_dict()`` / ``load_state_dict()`` give a flat ``{str: ndarray | JSON-able scalar}`` storable in an ``.npz``
without pickle, and :func:`save_bundle` / :func:`load_bundle` keep a model and its transform together so evaluation
reuses exactly the training statistics.

Statistics always come from the *whole training set*, never from a batch, and never from validation or test data:
fitting a second time on different data warns unless ``refit=True``. They are accumulated in float64 over chunks of
``chunk_size`` rows, so fitting 40,000 uint8 CIFAR images never makes a float64 copy of the data set; ``transform``
writes one output array: float32 for uint8, integer or float32 input, float64 for float64 input.

Inputs are ``(N, D)`` or images ``(N, C, H, W)`` (any ``(N, ...)``): the transform remembers the sample shape it was
fitted on and refuses anything else.

Example:
    >>> import numpy as np
    >>> from cynet.data import MeanImage
    >>> x_train = np.arange(24, dtype=np.uint8).reshape(4, 6)
    >>> t = MeanImage().fit(x_train)
    >>> t.transform(x_train[:1])
    array([[-9., -9., -9., -9., -9., -9.]], dtype=float32)
"""
import json
import os
import warnings
import zipfile
import zlib
from collections import namedtuple

import numpy as np

from cynet._files import atomic_file
from cynet._kernels import load
from cynet._threading import kernel_threads
from cynet._validation import is_real

DEFAULT_CHUNK_SIZE = 4096
_BUNDLE_FORMAT = "cynet-bundle-v1"


# --- helpers ---------------------------------------------------------------------------------------------------------
def _describe(x):
    return f"{x.dtype} array of shape {tuple(x.shape)}"


def _output_dtype(x):
    """float64 stays float64 (in either byte order; wider floats give float64 too); uint8, other integers, float16
    and float32 give float32."""
    return np.dtype(np.float64) if x.dtype.kind == "f" and x.dtype.itemsize >= 8 else np.dtype(np.float32)


def _centring_dtype(x, dtype):
    """The dtype of the mean that x - mean takes: float64 for integers wider than 16 bits (a mean rounded to float32
    first is off by up to half a float32 step at its size, 32 at 1e9, so int64 values [1e9, 1e9 + 1] came out as
    [0, 1], not zero-mean), else the output dtype (float and 8-16-bit data keep their bits)."""
    return np.dtype(np.float64) if x.dtype.kind in "iu" and x.dtype.itemsize > 2 else dtype


def _check_data(owner, x, what="x"):
    """``x`` as an ndarray of at least 2 dims (N, ...) with a real numeric dtype; TypeError/ValueError otherwise."""
    x = np.asarray(x)
    if x.dtype.kind not in "uif":
        raise TypeError(f"{owner}: {what} must be a numeric array (uint8, integer or float), got {_describe(x)}")
    if x.ndim < 2:
        raise ValueError(f"{owner}: {what} must have shape (N, D) or (N, C, H, W) (samples first), got "
                         f"{_describe(x)}")
    return x


def _rows(x):
    """``x`` (N, ...) viewed as (N, D) rows. The feature count is spelled out: ``reshape(N, -1)`` cannot infer it
    from an empty batch (N = 0: "cannot reshape array of size 0")."""
    return x.reshape(x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64)))


def _chunks(n, size):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def fingerprint(x):
    """A cheap fingerprint of a data set: CRC32 of its shape, dtype and up to 64 evenly spaced rows.

    Used to notice a second ``fit`` on a *different* data set; reading 64 rows costs nothing next to the fit.

    Args:
        x (ndarray): the data, samples first.

    Returns:
        str: ``"crc32:xxxxxxxx"``.
    """
    x = np.asarray(x)
    crc = zlib.crc32(repr((tuple(x.shape), x.dtype.str)).encode())
    if x.shape[0]:
        for i in np.unique(np.linspace(0, x.shape[0] - 1, num=min(64, x.shape[0])).astype(np.int64)):
            crc = zlib.crc32(np.ascontiguousarray(x[i]).tobytes(), crc)
    return f"crc32:{crc:08x}"


def _scalar(value):
    """A Python scalar from a value stored in a state dict (0-d arrays come back from npz files)."""
    if isinstance(value, np.ndarray):
        if value.ndim != 0:
            raise ValueError(f"expected a scalar, got {_describe(value)}")
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _column_mean(x2d, chunk_size):
    """Mean of every column of ``x2d`` (N, D), accumulated in float64 one chunk at a time."""
    total = np.zeros(x2d.shape[1], dtype=np.float64)
    for a, b in _chunks(x2d.shape[0], chunk_size):
        total += x2d[a:b].sum(axis=0, dtype=np.float64)
    return total / x2d.shape[0]


def _column_var(x2d, mean, chunk_size):
    """Population variance of every column (second pass around the known mean, float64)."""
    total = np.zeros(x2d.shape[1], dtype=np.float64)
    for a, b in _chunks(x2d.shape[0], chunk_size):
        centred = x2d[a:b].astype(np.float64)
        centred -= mean                 # in place, and dropped before the next chunk: one chunk-sized temporary
        total += np.einsum("nd,nd->d", centred, centred)
        del centred
    return total / x2d.shape[0]


def _covariance(x2d, mean, chunk_size):
    """Sample covariance ``Xc^T Xc / (N - 1)`` (D, D), accumulated in float64 one chunk at a time."""
    n, d = x2d.shape
    cov = np.zeros((d, d), dtype=np.float64)
    for a, b in _chunks(n, chunk_size):
        centred = x2d[a:b].astype(np.float64)
        centred -= mean
        cov += centred.T @ centred
        del centred
    return cov / max(n - 1, 1)


# --- base class ------------------------------------------------------------------------------------------------------
class Transform:
    """Base class of the preprocessing transforms: fitting bookkeeping, shape checks and the state dict.

    Subclasses implement ``_fit(x)``, ``_transform(x, out_dtype)`` and ``_inverse(x, out_dtype)``, list their
    constructor arguments in ``_config_names`` and their fitted arrays in ``_fitted_names``.

    Attributes:
        feature_shape_ (tuple): the sample shape ``x.shape[1:]`` seen by ``fit``.
        fitted_on (tuple or None): ``(n_samples, fingerprint)`` of the data set it was fitted on.
    """

    _config_names = ()
    _fitted_names = ()

    def __init__(self, *, chunk_size=DEFAULT_CHUNK_SIZE):
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"{type(self).__name__}: chunk_size must be a positive int, got {chunk_size!r}")
        self.chunk_size = int(chunk_size)
        self.fitted_on = None
        self.feature_shape_ = None

    # --- fitting ---------------------------------------------------------------------------------------------------
    @property
    def is_fitted(self):
        """Whether :meth:`fit` (or :meth:`load_state_dict` with fitted state) has run."""
        return self.fitted_on is not None

    def _check_fitted(self):
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(x_train) first")

    def _check_refit(self, x, refit):
        """Warn when a fitted transform is fitted again on a *different* data set without ``refit=True``."""
        print_ = fingerprint(x)
        if self.is_fitted and not refit and (int(x.shape[0]), print_) != tuple(self.fitted_on):
            warnings.warn(
                f"{type(self).__name__}.fit called again on a different data set (was fitted on "
                f"{self.fitted_on[0]} samples, now {x.shape[0]}): preprocessing statistics must come from the "
                f"training set only, then be applied unchanged to validation and test data. Pass refit=True if "
                f"refitting is intended.", UserWarning, stacklevel=3)
        return print_

    def fit(self, x, *, refit=False):
        """Compute the statistics from the whole training set ``x``.

        Args:
            x (array_like): training data, ``(N, D)`` or ``(N, C, H, W)``, uint8 / integer / float.
            refit (bool): silence the warning given when an already fitted transform is fitted on different data.
                Default False.

        Returns:
            self
        """
        x = _check_data(type(self).__name__ + ".fit", x)
        if x.shape[0] < self._min_samples:
            raise ValueError(f"{type(self).__name__}.fit: needs at least {self._min_samples} samples, got "
                             f"{_describe(x)}")
        name = type(self).__name__
        bad = _count_nonfinite(x)
        if bad:
            raise ValueError(f"{name}.fit: the training data holds {bad} NaN or infinite values ({_describe(x)}); "
                             f"remove or repair those samples first")
        print_ = self._check_refit(x, refit)
        previous = self.state_dict()
        try:
            self._fit(x)
        except BaseException:
            self.load_state_dict(previous)                    # _fit may have set some statistics before it failed
            raise
        broken = [key for key in self._fitted_names if np.asarray(getattr(self, key)).dtype.kind == "f"
                  and not np.all(np.isfinite(getattr(self, key)))]
        if broken:
            self.load_state_dict(previous)                    # as before the call
            raise ValueError(f"{name}.fit: the training data's values ({_describe(x)}, largest magnitude "
                             f"{float(np.max(np.abs(x))):g}) overflow the statistics ({', '.join(broken)}); scale "
                             f"the data first")
        self.feature_shape_ = tuple(int(s) for s in x.shape[1:])
        self.fitted_on = (int(x.shape[0]), print_)
        return self

    _min_samples = 1

    def _check_features(self, method, x):
        x = _check_data(f"{type(self).__name__}.{method}", x)
        if tuple(x.shape[1:]) != self.feature_shape_:
            raise ValueError(f"{type(self).__name__}.{method}: fitted on samples of shape {self.feature_shape_}, "
                             f"got {_describe(x)} (samples of shape {tuple(x.shape[1:])}); reshape the input the "
                             f"way the training data was")
        return x

    def transform(self, x):
        """Apply the fitted statistics to ``x`` (any split: train, validation, test, one batch).

        Args:
            x (array_like): samples of the shape seen by :meth:`fit`.

        Returns:
            ndarray: float32 (float64 for float64 input), a new array.
        """
        self._check_fitted()
        x = self._check_features("transform", x)
        return self._transform(x, _output_dtype(x))

    def fit_transform(self, x, *, refit=False):
        """``fit(x, refit=refit).transform(x)``."""
        return self.fit(x, refit=refit).transform(x)

    def inverse_transform(self, x):
        """Undo :meth:`transform` (exactly up to rounding, except for dropped PCA components).

        Args:
            x (array_like): an output of :meth:`transform`.

        Returns:
            ndarray: float data in the original sample shape.
        """
        self._check_fitted()
        x = _check_data(f"{type(self).__name__}.inverse_transform", x)
        if tuple(x.shape[1:]) != self._output_shape():
            raise ValueError(f"{type(self).__name__}.inverse_transform: expects samples of shape "
                             f"{self._output_shape()} (the output of transform), got {_describe(x)}")
        return self._inverse(x, _output_dtype(x))

    def _output_shape(self):
        return self.feature_shape_

    def __call__(self, x):
        return self.transform(x)

    # --- state -------------------------------------------------------------------------------------------------------
    def config(self):
        """The constructor arguments, JSON-able."""
        return {name: getattr(self, name) for name in self._config_names}

    def state_dict(self):
        """A flat ``{str: ndarray | JSON-able scalar}`` holding the class, its arguments and the fitted state.

        Storable with ``numpy.savez`` without pickle (see :func:`save_bundle`); :func:`transform_from_state_dict`
        rebuilds the transform from it.
        """
        state = {"class": type(self).__name__, "config": json.dumps(self.config(), sort_keys=True)}
        if self.is_fitted:
            state["feature_shape"] = np.asarray(self.feature_shape_, dtype=np.int64)
            state["fitted_on.n_samples"] = int(self.fitted_on[0])
            state["fitted_on.fingerprint"] = str(self.fitted_on[1])
            for name in self._fitted_names:
                state[name] = np.array(getattr(self, name), copy=True)
        return state

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned (also as read back from an ``.npz``); returns self."""
        name = type(self).__name__
        cls = _scalar(state.get("class", name))
        if cls != name:
            raise ValueError(f"{name}.load_state_dict: the state belongs to a {cls}, not a {name}")
        if "config" in state:
            config = json.loads(_scalar(state["config"]))
            if config != self.config():
                raise ValueError(f"{name}.load_state_dict: the state was saved with arguments {config}, this "
                                 f"transform has {self.config()}; build it with transform_from_state_dict(state)")
        if "fitted_on.n_samples" not in state:
            self.fitted_on, self.feature_shape_ = None, None
            return self
        missing = [k for k in (*self._fitted_names, "feature_shape", "fitted_on.fingerprint") if k not in state]
        if missing:     # checked before anything is assigned: a failed load leaves the transform as it was
            raise KeyError(f"{name}.load_state_dict: fitted state lacks {missing}")
        feature_shape = tuple(int(s) for s in np.asarray(state["feature_shape"]).reshape(-1))
        fitted_on = (int(_scalar(state["fitted_on.n_samples"])), str(_scalar(state["fitted_on.fingerprint"])))
        arrays = {key: np.asarray(state[key]) for key in self._fitted_names}
        wrong = [f"{key} has shape {arrays[key].shape}, expected {shape}"
                 for key, shape in self._fitted_shapes(feature_shape, arrays).items() if arrays[key].shape != shape]
        if wrong:       # a hand-edited or mixed-up state would broadcast against the data instead of failing
            raise ValueError(f"{name}.load_state_dict: the fitted arrays do not match the saved sample shape "
                             f"{feature_shape}: " + "; ".join(wrong))
        for key in self._fitted_names:
            object.__setattr__(self, key, np.array(arrays[key], copy=True))
        self.feature_shape_, self.fitted_on = feature_shape, fitted_on
        self._after_load()
        return self

    def _after_load(self):
        pass

    def _fitted_shapes(self, feature_shape, arrays):
        """The shape each fitted array must have for samples of ``feature_shape`` (checked by load_state_dict)."""
        return {}

    @classmethod
    def from_state_dict(cls, state):
        """A new transform built from its arguments in ``state``, with the fitted state loaded."""
        config = json.loads(_scalar(state["config"])) if "config" in state else {}
        return cls(**config).load_state_dict(state)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        fitted = f", fitted on {self.fitted_on[0]} samples" if self.is_fitted else ", not fitted"
        return f"{type(self).__name__}({args}){fitted}"


def _channel_view(owner, x, channels):
    """``x`` viewed as (N, C, P): (N, C, H, W) images or (N, C*P) rows with ``channels`` channel planes."""
    if x.ndim >= 3:
        if x.shape[1] != channels:
            raise ValueError(f"{owner}: expects {channels} channels on axis 1 (channels={channels}), got "
                             f"{_describe(x)}")
        return x.reshape(x.shape[0], channels, int(np.prod(x.shape[2:], dtype=np.int64)))   # (N = 0 too)
    if x.shape[1] % channels:
        raise ValueError(f"{owner}: (N, D) input needs D divisible by channels={channels} (rows of C planes, "
                         f"like CIFAR's 1024 R, 1024 G, 1024 B), got {_describe(x)}")
    return x.reshape(x.shape[0], channels, x.shape[1] // channels)


def _channel_stats(x3, chunk_size, with_var):
    """Per-channel mean (and population variance) of (N, C, P) data, float64, chunked."""
    n, c, p = x3.shape
    total = np.zeros(c, dtype=np.float64)
    for a, b in _chunks(n, chunk_size):
        total += x3[a:b].sum(axis=(0, 2), dtype=np.float64)
    mean = total / (n * p)
    if not with_var:
        return mean, None
    sq = np.zeros(c, dtype=np.float64)
    for a, b in _chunks(n, chunk_size):
        centred = x3[a:b].astype(np.float64)
        centred -= mean[:, None]
        sq += np.einsum("ncp,ncp->c", centred, centred)
        del centred
    return mean, sq / (n * p)


def _check_eps(owner, eps):
    """``eps`` as a float: TypeError unless a real number (np.isfinite('a') was an anonymous ufunc TypeError),
    ValueError unless finite and >= 0."""
    if not is_real(eps):
        raise TypeError(f"{owner}: eps must be a finite number >= 0, got {eps!r}")
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"{owner}: eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def _check_channels(owner, channels):
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"{owner}: channels must be a positive int, got {channels!r}")
    return int(channels)


# --- mean subtraction ------------------------------------------------------------------------------------------------
class MeanImage(Transform):
    """Subtract the mean training image (AlexNet): one mean per feature (pixel and channel).

    .. math:: \\mu = \\frac{1}{N}\\sum_{n} x_n, \\qquad y = x - \\mu

    Args:
        chunk_size (int): rows per float64 chunk while fitting. Default 4096.

    Attributes:
        mean_ (ndarray): float64, the sample shape seen by ``fit``.

    Shape:
        input and output ``(N, ...)``, the same shape.

    Example:
        >>> import numpy as np
        >>> from cynet.data import MeanImage
        >>> x = np.array([[0, 2], [4, 6]], np.uint8)
        >>> MeanImage().fit(x).transform(x)
        array([[-2., -2.],
               [ 2.,  2.]], dtype=float32)
    """

    _fitted_names = ("mean_",)

    def _fit(self, x):
        self.mean_ = _column_mean(_rows(x), self.chunk_size).reshape(x.shape[1:])

    def _fitted_shapes(self, feature_shape, arrays):
        return {"mean_": feature_shape}

    def _transform(self, x, dtype):
        out = np.empty(x.shape, dtype=dtype)
        np.subtract(x, self.mean_.astype(_centring_dtype(x, dtype)), out=out, casting="unsafe")
        return out

    def _inverse(self, x, dtype):
        out = np.empty(x.shape, dtype=dtype)
        np.add(x, self.mean_.astype(dtype), out=out, casting="unsafe")
        return out


class ChannelMean(Transform):
    """Subtract one mean per colour channel (VGG): images keep their spatial structure.

    .. math:: \\mu_c = \\frac{1}{N H W}\\sum_{n,h,w} x_{nchw}, \\qquad y_{nchw} = x_{nchw} - \\mu_c

    Args:
        channels (int): number of channels; (N, C, H, W) input must have it on axis 1, (N, D) rows are read as
            ``channels`` consecutive planes (CIFAR rows: 1024 R, 1024 G, 1024 B). Default 3.
        chunk_size (int): rows per float64 chunk while fitting. Default 4096.

    Attributes:
        mean_ (ndarray): float64 ``(channels,)``.

    Example:
        >>> import numpy as np
        >>> from cynet.data import ChannelMean
        >>> x = np.zeros((2, 3, 4, 4), np.uint8); x[:, 1] = 10
        >>> ChannelMean().fit(x).mean_
        array([ 0., 10.,  0.])
    """

    _config_names = ("channels",)
    _fitted_names = ("mean_",)

    def __init__(self, channels=3, *, chunk_size=DEFAULT_CHUNK_SIZE):
        super().__init__(chunk_size=chunk_size)
        self.channels = _check_channels("ChannelMean", channels)

    def _fitted_shapes(self, feature_shape, arrays):
        return {"mean_": (self.channels,)}

    def _fit(self, x):
        self.mean_, _ = _channel_stats(_channel_view("ChannelMean.fit", x, self.channels), self.chunk_size, False)

    def _apply(self, x, dtype, sign):
        x3 = _channel_view(type(self).__name__, x, self.channels)
        out = np.empty(x3.shape, dtype=dtype)
        (np.subtract if sign < 0 else np.add)(x3, self.mean_.astype(_centring_dtype(x3, dtype))[:, None], out=out,
                                              casting="unsafe")
        return out.reshape(x.shape)

    def _transform(self, x, dtype):
        return self._apply(x, dtype, -1)

    def _inverse(self, x, dtype):
        return self._apply(x, dtype, +1)


def _standardize_kernel_takes(x3, dtype):
    """Whether conv.channel_standardize can run on the (N, C, P) view: C-contiguous uint8 data into float32/float64,
    or float data into its own type (NumPy's subtraction and division give the same values then)."""
    if not x3.flags.c_contiguous or dtype not in (np.float32, np.float64):
        return False
    return x3.dtype == np.uint8 or x3.dtype == dtype


def _count_nonfinite(x, rows_per_block=4096):
    """NaN and infinite values in x (0 for integer data), a block of rows at a time (no x-sized temporary)."""
    if x.dtype.kind != "f":
        return 0
    return sum(int(np.count_nonzero(~np.isfinite(x[start:start + rows_per_block])))
               for start in range(0, x.shape[0], rows_per_block))


class Standardize(Transform):
    """Zero mean and unit variance, per feature (sklearn's StandardScaler) or per channel.

    .. math:: y = \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}}

    with the population variance :math:`\\sigma^2` of the training set, per feature or per channel.

    Args:
        per (str): ``"feature"`` (every pixel/channel its own statistics) or ``"channel"`` (one mean and std per
            colour channel). Default ``"feature"``.
        eps (float): added to the variance; keeps constant features finite. Default 1e-8. With eps = 0, fit refuses
            features (channels) of zero variance.
        channels (int): channels for ``per="channel"`` (see :class:`ChannelMean`). Default 3.
        chunk_size (int): rows per float64 chunk while fitting. Default 4096.

    Attributes:
        mean_, var_, scale_ (ndarray): float64; the sample shape (per feature) or ``(channels,)``;
            ``scale_ = sqrt(var_ + eps)``.

    Example:
        >>> import numpy as np
        >>> from cynet.data import Standardize
        >>> x = np.array([[0., 10.], [2., 30.]])
        >>> Standardize(eps=0.0).fit_transform(x)
        array([[-1., -1.],
               [ 1.,  1.]])
    """

    _config_names = ("per", "eps", "channels")
    _fitted_names = ("mean_", "var_", "scale_")

    def __init__(self, per="feature", eps=1e-8, channels=3, *, chunk_size=DEFAULT_CHUNK_SIZE):
        super().__init__(chunk_size=chunk_size)
        if per not in ("feature", "channel"):
            raise ValueError(f"Standardize: per must be 'feature' or 'channel', got {per!r}")
        self.per, self.eps = per, _check_eps("Standardize", eps)
        self.channels = _check_channels("Standardize", channels)

    def _fit(self, x):
        if self.per == "channel":
            self.mean_, self.var_ = _channel_stats(_channel_view("Standardize.fit", x, self.channels),
                                                   self.chunk_size, True)
        else:
            x2 = _rows(x)
            mean = _column_mean(x2, self.chunk_size)
            self.var_ = _column_var(x2, mean, self.chunk_size).reshape(x.shape[1:])
            self.mean_ = mean.reshape(x.shape[1:])
        if self.eps == 0:                    # (values averaged per feature, or per channel)
            self._refuse_zero_variance(len(x) if self.per != "channel" else x.size // self.channels)
        self.scale_ = np.sqrt(self.var_ + self.eps)

    def _fitted_shapes(self, feature_shape, arrays):
        shape = (self.channels,) if self.per == "channel" else feature_shape
        return {"mean_": shape, "var_": shape, "scale_": shape}

    def _refuse_zero_variance(self, n):
        """eps = 0 divides by each standard deviation: a constant feature's is 0, or the rounding noise of its mean
        (1.4e-17 for ten values 0.1, which then came out as +1.0, or 0/0 = NaN for 3.0). Refused at fit, as
        PCAWhitening refuses a zero-variance direction: a variance within n float64 roundings of its mean counts as
        zero (a float32 feature that moves by one ulp in one of 50,000 samples stays well above it)."""
        zero = self.var_ <= (n * np.finfo(np.float64).eps * np.abs(self.mean_)) ** 2
        if zero.any():
            where = [tuple(int(i) for i in index) if len(index) > 1 else int(index[0])
                     for index in np.argwhere(zero)[:5]]
            unit = "channels" if self.per == "channel" else "features"
            raise ValueError(f"Standardize.fit: eps=0 and {int(zero.sum())} {unit} have zero variance in the training "
                             f"data (constant, e.g. {where}): dividing by their standard deviation divides by zero "
                             f"or by rounding noise. Use eps > 0 (the default is 1e-8)")

    def _view(self, x):
        if self.per == "channel":
            return _channel_view("Standardize", x, self.channels), self.mean_[:, None], self.scale_[:, None]
        return x, self.mean_, self.scale_

    def _transform(self, x, dtype):
        xv, mean, scale = self._view(x)
        out = np.empty(xv.shape, dtype=dtype)
        if self.per == "channel" and _standardize_kernel_takes(xv, dtype):
            # the same two roundings on the kernels' threads (a CIFAR batch of 256: 0.39 ms on one thread in NumPy)
            load("conv").channel_standardize(xv, self.mean_.astype(dtype), self.scale_.astype(dtype), out,
                                             kernel_threads(out.size))
            return out.reshape(x.shape)
        np.subtract(xv, mean.astype(_centring_dtype(xv, dtype)), out=out, casting="unsafe")
        out /= scale.astype(dtype)
        return out.reshape(x.shape)

    def _inverse(self, x, dtype):
        xv, mean, scale = self._view(x)
        out = np.empty(xv.shape, dtype=dtype)
        np.multiply(xv, scale.astype(dtype), out=out, casting="unsafe")
        out += mean.astype(dtype)
        return out.reshape(x.shape)


# --- PCA and whitening -----------------------------------------------------------------------------------------------
def _eigh_descending(cov):
    """Eigenvalues (descending, clipped at 0) and eigenvectors as rows, each with its largest |entry| positive."""
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1].clip(min=0.0), vectors[:, ::-1].T.copy()
    signs = np.sign(vectors[np.arange(len(vectors)), np.abs(vectors).argmax(axis=1)])
    signs[signs == 0] = 1.0
    return values, vectors * signs[:, None]


class PCA(Transform):
    """Project centred data onto the top principal components (eigenvectors of the training covariance).

    .. math:: \\Sigma = \\frac{1}{N-1} X_c^\\top X_c = U \\Lambda U^\\top, \\qquad y = (x - \\mu)\\, U_k

    Args:
        n_components (int, float or None): components kept: an int ``k`` (1..D), a float in (0, 1) (the fewest
            components explaining that fraction of the variance), or None (``min(N, D)``). Default None.
        chunk_size (int): rows per float64 chunk while fitting. Default 4096.

    Attributes:
        mean_ (ndarray): float64 ``(D,)``.
        components_ (ndarray): float64 ``(k, D)``, orthonormal rows, largest variance first; each row's largest
            absolute entry is positive (eigenvectors are defined up to sign).
        explained_variance_ (ndarray): ``(k,)`` eigenvalues of the covariance (divisor N-1, like sklearn).
        explained_variance_ratio_ (ndarray): ``(k,)`` their share of the total variance.
        n_components_ (int): ``k``.

    Shape:
        input ``(N, ...)`` with D features; output ``(N, k)``. ``inverse_transform`` returns the input shape.

    Example:
        >>> import numpy as np
        >>> from cynet.data import PCA
        >>> x = np.random.default_rng(0).normal(size=(100, 5)) * [5, 1, 1, 1, 0.1]
        >>> pca = PCA(n_components=2).fit(x)
        >>> pca.transform(x).shape, bool(pca.explained_variance_ratio_[0] > 0.8)
        ((100, 2), True)
    """

    _config_names = ("n_components",)
    _fitted_names = ("mean_", "components_", "explained_variance_", "explained_variance_ratio_")
    _min_samples = 2

    def __init__(self, n_components=None, *, chunk_size=DEFAULT_CHUNK_SIZE):
        super().__init__(chunk_size=chunk_size)
        if n_components is not None:
            if isinstance(n_components, bool) or not isinstance(n_components, (int, float, np.integer,
                                                                                np.floating)):
                raise TypeError(f"{type(self).__name__}: n_components must be an int, a float in (0, 1) or None, "
                                f"got {n_components!r}")
            if isinstance(n_components, (float, np.floating)):
                if not 0.0 < n_components < 1.0:
                    raise ValueError(f"{type(self).__name__}: a float n_components is a variance fraction in "
                                     f"(0, 1), got {n_components!r}")
                n_components = float(n_components)
            elif n_components < 1:
                raise ValueError(f"{type(self).__name__}: n_components must be >= 1, got {n_components!r}")
            else:
                n_components = int(n_components)
        self.n_components = n_components

    def _fit(self, x):
        x2 = _rows(x)
        n, d = x2.shape
        if isinstance(self.n_components, int) and self.n_components > d:
            raise ValueError(f"{type(self).__name__}.fit: n_components={self.n_components} exceeds the {d} "
                             f"features of {_describe(x)}")
        self.mean_ = _column_mean(x2, self.chunk_size)
        values, vectors = _eigh_descending(_covariance(x2, self.mean_, self.chunk_size))
        total = values.sum()
        ratio = values / total if total > 0 else np.zeros_like(values)
        if self.n_components is None:
            k = min(n, d)
        elif isinstance(self.n_components, float):
            k = int(np.searchsorted(np.cumsum(ratio), self.n_components) + 1)
            k = min(k, d)
        else:
            k = self.n_components
        self._set_fitted(vectors[:k], values[:k], ratio[:k])

    def _set_fitted(self, components, variance, ratio):
        self.components_, self.explained_variance_, self.explained_variance_ratio_ = components, variance, ratio
        self._after_load()

    def _after_load(self):
        self.n_components_ = int(self.components_.shape[0])
        self._cache = {}

    def _fitted_shapes(self, feature_shape, arrays):
        d = int(np.prod(feature_shape))
        saved = arrays["components_"].shape
        k = self.n_components if isinstance(self.n_components, int) else saved[0] if len(saved) == 2 else 1
        k = min(max(k, 1), d)                                   # 1 <= k <= D components of D features
        return {"mean_": (d,), "components_": (k, d), "explained_variance_": (k,), "explained_variance_ratio_": (k,)}

    def _matrix(self, dtype):
        """The (D, k) projection applied to centred rows, in ``dtype`` (cached)."""
        key = ("forward", np.dtype(dtype).str)
        if key not in self._cache:
            self._cache[key] = np.ascontiguousarray(self._forward_matrix().astype(dtype))
        return self._cache[key]

    def _inverse_matrix(self, dtype):
        key = ("inverse", np.dtype(dtype).str)
        if key not in self._cache:
            self._cache[key] = np.ascontiguousarray(self._backward_matrix().astype(dtype))
        return self._cache[key]

    def _forward_matrix(self):
        return self.components_.T

    def _backward_matrix(self):
        return self.components_

    def _output_shape(self):
        return (self.n_components_,)

    def _transform(self, x, dtype):
        x2 = _rows(x)
        w, mean = self._matrix(dtype), self.mean_.astype(_centring_dtype(x2, dtype))
        out = np.empty((x2.shape[0], w.shape[1]), dtype=dtype)
        for a, b in _chunks(x2.shape[0], self.chunk_size):
            np.matmul((x2[a:b] - mean).astype(dtype, copy=False), w, out=out[a:b])
        return out.reshape((x.shape[0],) + self._output_shape())

    def _inverse(self, x, dtype):
        x2 = _rows(x)
        w, mean = self._inverse_matrix(dtype), self.mean_.astype(dtype)
        out = np.empty((x2.shape[0], w.shape[1]), dtype=dtype)
        for a, b in _chunks(x2.shape[0], self.chunk_size):
            np.matmul(x2[a:b].astype(dtype, copy=False), w, out=out[a:b])
            out[a:b] += mean
        return out.reshape((x.shape[0],) + self.feature_shape_)


class PCAWhitening(PCA):
    """PCA followed by scaling every component to unit variance: the whitened data has covariance ≈ identity.

    .. math:: y = (x - \\mu)\\, U_k\\, (\\Lambda_k + \\epsilon I)^{-1/2}

    Args:
        n_components (int, float or None): as in :class:`PCA`. Default None.
        eps (float): added to the eigenvalues so near-zero-variance directions are not amplified into noise.
            Default 1e-5.
        chunk_size (int): rows per float64 chunk while fitting. Default 4096.

    Attributes:
        as :class:`PCA`.

    Shape:
        input ``(N, ...)``, output ``(N, k)``.

    Example:
        >>> import numpy as np
        >>> from cynet.data import PCAWhitening
        >>> x = np.random.default_rng(0).normal(size=(500, 3)) @ [[2., 1, 0], [0, 1, 0], [0, 0, .5]]
        >>> z = PCAWhitening(eps=0.0).fit_transform(x)
        >>> np.allclose(np.cov(z, rowvar=False), np.eye(3))
        True
    """

    _config_names = ("n_components", "eps")

    def __init__(self, n_components=None, eps=1e-5, *, chunk_size=DEFAULT_CHUNK_SIZE):
        super().__init__(n_components, chunk_size=chunk_size)
        self.eps = _check_eps(type(self).__name__, eps)

    def _set_fitted(self, components, variance, ratio):
        if self.eps == 0 and variance.size:
            # eps = 0 divides each component by its standard deviation: one of (numerically) zero variance would
            # come out inf/NaN or as rounding noise amplified ~1e8 times, so refuse it here rather than at transform.
            # The eigenvalues' rounding noise grows with the covariance's size D, not with the k directions kept
            # (numpy.linalg.matrix_rank's tolerance, lambda_max * D * eps): with k in the bound, PCAWhitening(2) on
            # rank-1 data of D = 800 features kept a direction of variance 5e-16 * lambda_max as if it were real
            zero = variance <= variance[0] * components.shape[1] * np.finfo(np.float64).eps
            if zero.any():
                name = type(self).__name__
                raise ValueError(
                    f"{name}.fit: eps=0 and {int(zero.sum())} of the {variance.size} directions kept have zero "
                    f"variance in the training data (its covariance has rank {int((~zero).sum())}: constant "
                    f"features, or fewer samples than features); whitening them divides by zero. Use eps > 0 "
                    f"(the default is 1e-5)" + ("" if isinstance(self, ZCAWhitening) else
                                                f" or n_components <= {int((~zero).sum())}"))
        super()._set_fitted(components, variance, ratio)

    def _forward_matrix(self):
        return self.components_.T / np.sqrt(self.explained_variance_ + self.eps)

    def _backward_matrix(self):
        return self.components_ * np.sqrt(self.explained_variance_ + self.eps)[:, None]


class ZCAWhitening(PCAWhitening):
    """ZCA whitening: PCA whitening rotated back to the input space (the whitened data closest to the original).

    .. math:: W = U (\\Lambda + \\epsilon I)^{-1/2} U^\\top, \\qquad y = (x - \\mu)\\, W

    ``W`` is symmetric; of all whitening matrices it minimises :math:`E\\|y - (x - \\mu)\\|^2`, so whitened images
    still look like images (edges enhanced). All components are kept.

    Args:
        eps (float): added to the eigenvalues (larger = less noise amplification). Default 1e-5.
        chunk_size (int): rows per float64 chunk while fitting. Default 4096.

    Attributes:
        mean_, components_, explained_variance_ (ndarray): as in :class:`PCA`, all D components.
        whitening_ (ndarray): float64 ``(D, D)``, the symmetric matrix W.

    Shape:
        input and output ``(N, ...)``, the same shape.

    Example:
        >>> import numpy as np
        >>> from cynet.data import ZCAWhitening
        >>> x = np.random.default_rng(0).normal(size=(500, 3)) @ [[2., 1, 0], [0, 1, 0], [0, 0, .5]]
        >>> zca = ZCAWhitening(eps=0.0).fit(x)
        >>> np.allclose(zca.whitening_, zca.whitening_.T)
        True
    """

    _config_names = ("eps",)

    def __init__(self, eps=1e-5, *, chunk_size=DEFAULT_CHUNK_SIZE):
        super().__init__(None, eps, chunk_size=chunk_size)

    def config(self):
        return {"eps": self.eps}

    def _fit(self, x):
        x2 = _rows(x)
        self.mean_ = _column_mean(x2, self.chunk_size)
        values, vectors = _eigh_descending(_covariance(x2, self.mean_, self.chunk_size))
        total = values.sum()
        self._set_fitted(vectors, values, values / total if total > 0 else np.zeros_like(values))

    @property
    def whitening_(self):
        """The symmetric whitening matrix ``W = U (Λ + eps)^(-1/2) U^T`` (float64, (D, D))."""
        self._check_fitted()
        return self._forward_matrix()

    def _forward_matrix(self):
        return (self.components_.T / np.sqrt(self.explained_variance_ + self.eps)) @ self.components_

    def _backward_matrix(self):
        return (self.components_.T * np.sqrt(self.explained_variance_ + self.eps)) @ self.components_

    def _output_shape(self):
        return self.feature_shape_


# --- pipeline --------------------------------------------------------------------------------------------------------
class Pipeline(Transform):
    """Apply transforms one after the other; each is fitted on the output of the ones before it.

    Args:
        steps (list): transforms, or ``(name, transform)`` pairs as in sklearn.

    Example:
        >>> import numpy as np
        >>> from cynet.data import Pipeline, MeanImage, PCA
        >>> x = np.random.default_rng(0).integers(0, 256, size=(50, 12), dtype=np.uint8)
        >>> Pipeline([MeanImage(), PCA(n_components=4)]).fit_transform(x).shape
        (50, 4)
    """

    def __init__(self, steps):
        super().__init__()
        if isinstance(steps, Transform) or not isinstance(steps, (list, tuple)) or not steps:
            raise TypeError(f"Pipeline: steps must be a non-empty list of transforms, got {steps!r}")
        names, transforms = [], []
        for i, step in enumerate(steps):
            name, t = step if isinstance(step, tuple) else (str(i), step)
            if not isinstance(t, Transform):
                raise TypeError(f"Pipeline: step {i} is not a cynet.data transform: {t!r}")
            names.append(str(name))
            transforms.append(t)
        if len(set(names)) != len(names):
            raise ValueError(f"Pipeline: step names must be unique, got {names}")
        self.names, self.steps = names, transforms

    def config(self):
        return {"names": self.names}

    def __getitem__(self, key):
        return self.steps[self.names.index(key) if isinstance(key, str) else key]

    def __len__(self):
        return len(self.steps)

    def fit(self, x, *, refit=False):
        """Fit every step in turn, each on the output of the steps before it; all or nothing.

        Args:
            x (array_like): training data, as for :meth:`Transform.fit`.
            refit (bool): silence the warning given when the fitted pipeline is fitted on different data.
                Default False.

        Returns:
            self

        Raises:
            ValueError, TypeError: a step refused its input (what that step raises). Every step then has the state
            it had before the call (fitted or not), like a single transform whose fit fails.
        """
        x = _check_data("Pipeline.fit", x)
        print_ = self._check_refit(x, refit)
        shape = tuple(int(s) for s in x.shape[1:])
        n = int(x.shape[0])
        # A step that fails after earlier steps were refitted would leave new statistics in front of old ones, and a
        # pipeline that still transforms without complaint, silently wrong: put every step back as it was.
        previous = [t.state_dict() for t in self.steps]
        try:
            for t in self.steps[:-1]:
                x = t.fit_transform(x, refit=True)
            self.steps[-1].fit(x, refit=True)
        except BaseException:
            for t, state in zip(self.steps, previous):
                t.load_state_dict(state)
            raise
        self.feature_shape_, self.fitted_on = shape, (n, print_)
        return self

    def _transform(self, x, dtype):
        for t in self.steps:
            x = t.transform(x)
        return x

    def _output_shape(self):
        return self.steps[-1]._output_shape()

    def _inverse(self, x, dtype):
        for t in reversed(self.steps):
            x = t.inverse_transform(x)
        return x

    def state_dict(self):
        state = super().state_dict()
        for i, t in enumerate(self.steps):
            for key, value in t.state_dict().items():
                state[f"steps.{i}.{key}"] = value
        return state

    def load_state_dict(self, state):
        """Restore every step from :meth:`state_dict` output; all or nothing (a step that refuses its state puts
        the steps loaded before it back), as :meth:`fit`. Returns self."""
        previous = self.state_dict()
        try:
            self._load_all(state)
        except BaseException:
            self._load_all(previous)
            raise
        return self

    def _load_all(self, state):
        super().load_state_dict(state)
        for i, t in enumerate(self.steps):
            prefix = f"steps.{i}."
            t.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    @classmethod
    def from_state_dict(cls, state):
        names = json.loads(_scalar(state["config"]))["names"]
        steps = []
        for i, name in enumerate(names):
            prefix = f"steps.{i}."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            steps.append((name, transform_from_state_dict(sub)))
        return cls(steps).load_state_dict(state)

    def __repr__(self):
        inner = ", ".join(repr(t) for t in self.steps)
        return f"Pipeline([{inner}])"


TRANSFORMS = {cls.__name__: cls for cls in (MeanImage, ChannelMean, Standardize, PCA, PCAWhitening, ZCAWhitening,
                                            Pipeline)}
"""The registry :func:`transform_from_state_dict` rebuilds from: class name -> class (never pickle)."""


def transform_from_state_dict(state):
    """Rebuild a transform from :meth:`Transform.state_dict` output, by its stored class name.

    Args:
        state (Mapping): as returned by ``state_dict()`` (or read back from an npz).

    Returns:
        Transform: a new transform with the same arguments and fitted state.

    Raises:
        ValueError: the class name is not one of :data:`TRANSFORMS`.
    """
    if "class" not in state:
        raise KeyError("transform_from_state_dict: the state has no 'class' entry")
    name = _scalar(state["class"])
    if name not in TRANSFORMS:
        raise ValueError(f"transform_from_state_dict: unknown transform class {name!r}; known: {sorted(TRANSFORMS)}")
    return TRANSFORMS[name].from_state_dict(state)


# --- model + transform bundles ---------------------------------------------------------------------------------------
Bundle = namedtuple("Bundle", ["model", "transform", "metadata"])
Bundle.__doc__ = """What :func:`load_bundle` returns: the model (weights loaded), the rebuilt transform (or None) and
the metadata dict saved with them."""


def save_bundle(path, model, transform=None, *, metadata=None):
    """Save a model's weights and its fitted preprocessing together in one ``.npz`` (no pickle, atomic).

    Evaluation code then calls :func:`load_bundle` and applies exactly the statistics the model was trained with.
    The file is written to a temporary file in the same directory and renamed over ``path`` (``os.replace``), so
    an interrupted save never leaves a half-written bundle.

    Args:
        path (str or PathLike): destination (``.npz`` is *not* appended).
        model: anything with ``state_dict()`` returning ``{name: ndarray}`` (a :class:`cynet.nn.Module`).
        transform (Transform or None): a fitted transform. Default None.
        metadata (dict or None): JSON-able extras (class names, accuracy, ...). Default None.

    Returns:
        str: the path written.

    Raises:
        ValueError: an array of object dtype (only pickle could store it); nothing is written.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from cynet import nn
        >>> from cynet.data import MeanImage, save_bundle, load_bundle
        >>> t = MeanImage().fit(np.ones((4, 3), np.float32))
        >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
        >>> _ = save_bundle(path, nn.Linear(3, 2), t)
        >>> load_bundle(path, nn.Linear(3, 2)).transform.mean_
        array([1., 1., 1.])
    """
    path = os.fspath(path)
    if transform is not None:
        if not isinstance(transform, Transform):
            raise TypeError(f"save_bundle: transform must be a cynet.data transform or None, got {transform!r}")
        transform._check_fitted()
    arrays = {"bundle.format": np.asarray(_BUNDLE_FORMAT),
              "bundle.metadata": np.asarray(json.dumps(metadata if metadata is not None else {}))}
    for key, value in model.state_dict().items():
        arrays[f"model.{key}"] = np.asarray(value)
    if transform is not None:
        for key, value in transform.state_dict().items():
            arrays[f"transform.{key}"] = np.asarray(value)
    objects = sorted(key for key, value in arrays.items() if value.dtype.hasobject)
    if objects:     # np.savez would pickle them (its allow_pickle argument is NumPy 2.1's: not relied on here)
        raise ValueError(f"save_bundle: {objects} hold Python objects (dtype object), which only pickle could "
                         f"store: a bundle holds numbers only; nothing written")
    with atomic_file(path, suffix=".npz.tmp") as f:
        np.savez(f, **arrays)
    return path


def load_bundle(path, model):
    """Load a bundle written by :func:`save_bundle`: weights into ``model`` (in place), the transform rebuilt.

    Args:
        path (str or PathLike): the ``.npz`` file.
        model: a model of the same architecture (``load_state_dict`` must accept the saved weights).

    Returns:
        Bundle: ``(model, transform, metadata)``; ``transform`` is None when none was saved.

    ``model`` is changed only once the transform and the metadata have been read back.

    Raises:
        FileNotFoundError: no such file. ValueError: not a cynet bundle, or a truncated or corrupt file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_bundle: no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {key: data[key] for key in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
        # (a truncated or corrupt zip: BadZipFile, or NotImplementedError/RuntimeError for a damaged directory entry)
        raise ValueError(f"load_bundle: {path} is not a readable .npz bundle ({exc})") from exc
    if _scalar(stored.get("bundle.format", np.asarray(""))) != _BUNDLE_FORMAT:
        raise ValueError(f"load_bundle: {path} is not a cynet bundle (no 'bundle.format' = {_BUNDLE_FORMAT!r})")
    # the transform and the metadata first: one that cannot be read must leave the model's weights as they were
    tstate = {k[10:]: v for k, v in stored.items() if k.startswith("transform.")}
    transform = transform_from_state_dict(tstate) if tstate else None
    metadata = json.loads(_scalar(stored["bundle.metadata"]))
    model.load_state_dict({k[6:]: v for k, v in stored.items() if k.startswith("model.")})
    return Bundle(model, transform, metadata)

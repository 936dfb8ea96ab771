"""Mini-batches for training: a seeded shuffling iterator, image augmentation (random crops, flips, Cutout), Mixup,
and the per-batch transform hook.

Order of operations for every batch (training)::

    xb = x[batch_indices]          # fancy indexing: one batch copied, never the whole data set
    xb = transform.transform(xb)   # fitted preprocessing (statistics of the whole training set) -> float32
    xb = augment(xb, generator)    # random crop / flip on the float batch (zero padding is then the mean colour
                                   # when the transform subtracts a mean)

For evaluation use the same transform and no augmentation: ``make_batch_transform(transform, augment)(xb, None)``.

Example:
    >>> import numpy as np
    >>> from cynet.data import BatchIterator, RandomHorizontalFlip
    >>> x = np.zeros((10, 3, 8, 8), np.uint8); y = np.arange(10)
    >>> it = BatchIterator(x, y, batch_size=4, seed=0, augment=RandomHorizontalFlip())
    >>> len(it), [len(yb) for _, yb in it]
    (3, [4, 4, 2])
"""
import numpy as np

from cynet._kernels import load
from cynet._random import resolve_generator
from cynet._threading import kernel_threads
from cynet._validation import check_probabilities, describe, is_real, native
from cynet.data.preprocessing import _output_dtype


def _check_images(owner, xb):
    """A batch of images (N, C, H, W) as an ndarray in the machine's byte order (big-endian data converted: a '>f4'
    batch comes back float32, by the kernels)."""
    xb = native(xb)
    if xb.ndim != 4:
        raise ValueError(f"{owner}: expects a batch of images (N, C, H, W), got {xb.dtype} array of shape "
                         f"{tuple(xb.shape)}; reshape flat rows first, e.g. x.reshape(-1, 3, 32, 32)")
    return xb


class RandomCrop:
    """Pad every image with zeros by ``padding`` pixels and crop a random ``size`` × ``size`` window from it.

    Each image of the batch gets its own offset; float batches are cropped by one kernel on the kernels' threads
    (no padded copy: 3.9 -> 0.2 ms for a (256, 3, 32, 32) float32 batch), others by one NumPy gather.
    ``out[n, c, i, j] = padded[n, c, i + dy_n, j + dx_n]`` with ``dy_n, dx_n`` uniform in ``0..2*padding``
    (for ``size`` equal to the image size).

    Args:
        size (int or tuple): output ``(height, width)``. Default 32.
        padding (int): zeros added on every side. Default 4.

    Shape:
        ``(N, C, H, W)`` -> ``(N, C, size, size)``, same dtype.

    Example:
        >>> import numpy as np
        >>> from cynet.data import RandomCrop
        >>> RandomCrop(8, padding=2)(np.ones((5, 3, 8, 8), np.float32), np.random.default_rng(0)).shape
        (5, 3, 8, 8)
    """

    def __init__(self, size=32, padding=4):
        given = size
        if isinstance(size, (int, np.integer)):
            size = (size, size)
        elif isinstance(size, (tuple, list)):     # not any iterable: "32" was read as the size ('3', '2')
            size = tuple(size)
        else:
            raise TypeError(f"RandomCrop: size must be a positive int or (height, width), got {given!r}")
        if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in size):
            raise ValueError(f"RandomCrop: size must be a positive int or (height, width), got {given!r}")
        if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"RandomCrop: padding must be an int >= 0, got {padding!r}")
        self.size, self.padding = (int(size[0]), int(size[1])), int(padding)

    def __call__(self, xb, generator=None):
        xb = _check_images("RandomCrop", xb)
        n, c, h, w = xb.shape
        p, (sh, sw) = self.padding, self.size
        if sh > h + 2 * p or sw > w + 2 * p:
            raise ValueError(f"RandomCrop: crop {self.size} is larger than the padded image ({h + 2 * p}, "
                             f"{w + 2 * p}) of a batch of shape {tuple(xb.shape)}")
        rng = resolve_generator(generator)
        dy = rng.integers(0, h + 2 * p - sh + 1, size=n)
        dx = rng.integers(0, w + 2 * p - sw + 1, size=n)
        if xb.dtype in (np.float32, np.float64):       # the kernel: no padded copy, the planes on the team
            out = np.empty((n, c, sh, sw), xb.dtype)
            load("conv").random_crop(np.ascontiguousarray(xb), dy.astype(np.int64), dx.astype(np.int64), p, out,
                                     kernel_threads(out.size))
            return out
        padded = np.zeros((n, c, h + 2 * p, w + 2 * p), dtype=xb.dtype)
        padded[:, :, p:p + h, p:p + w] = xb
        rows = (dy[:, None] + np.arange(sh))[:, None, :, None]
        cols = (dx[:, None] + np.arange(sw))[:, None, None, :]
        return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols]

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right (reverse the last axis) with probability ``p``. Float batches are written by one
    kernel on the kernels' threads (a (256, 3, 32, 32) float32 batch 0.31 -> 0.06 ms), others by NumPy.

    Args:
        p (float): probability that an image is flipped. Default 0.5.

    Shape:
        ``(N, C, H, W)`` -> the same; a new array.

    Example:
        >>> import numpy as np
        >>> from cynet.data import RandomHorizontalFlip
        >>> x = np.arange(4, dtype=np.float32).reshape(1, 1, 1, 4)
        >>> RandomHorizontalFlip(p=1.0)(x, np.random.default_rng(0))
        array([[[[3., 2., 1., 0.]]]], dtype=float32)
    """

    def __init__(self, p=0.5):
        if not is_real(p):
            raise TypeError(f"RandomHorizontalFlip: p must be a number in [0, 1], got {p!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, xb, generator=None):
        xb = _check_images("RandomHorizontalFlip", xb)
        flip = resolve_generator(generator).random(xb.shape[0]) < self.p
        if xb.dtype in (np.float32, np.float64):       # the kernel: one pass, the planes on the team
            out = np.empty(xb.shape, xb.dtype)
            load("conv").random_flip(np.ascontiguousarray(xb), flip.view(np.uint8), out, kernel_threads(out.size))
            return out
        out = np.array(xb, copy=True)
        out[flip] = xb[flip, :, :, ::-1]
        return out

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply augmentations in order, all drawing from the same generator.

    Args:
        augmentations (list): callables ``aug(xb, generator) -> xb``.

    Example:
        >>> from cynet.data import Compose, RandomCrop, RandomHorizontalFlip
        >>> augment = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip()])
    """

    def __init__(self, augmentations):
        if callable(augmentations) or not hasattr(augmentations, "__iter__"):
            # Compose(RandomCrop(32)) was "'RandomCrop' object is not iterable"
            raise TypeError(f"Compose: augmentations must be a list of callables, got {augmentations!r}; pass "
                            f"[augmentation]")
        augmentations = list(augmentations)
        for a in augmentations:
            if not callable(a):
                raise TypeError(f"Compose: every augmentation must be callable(xb, generator), got {a!r}")
        self.augmentations = augmentations

    def __call__(self, xb, generator=None):
        rng = resolve_generator(generator)
        for a in self.augmentations:
            xb = a(xb, rng)
        return xb

    def __repr__(self):
        return f"Compose({self.augmentations!r})"


class Cutout:
    """Cutout (DeVries & Taylor, 2017): set a random ``size`` x ``size`` square of every image to ``value``.

    The square's centre is uniform over the image, so near an edge only part of it falls inside (the paper's form).
    Each image gets its own square, drawn with probability ``p``; the masking is one vectorised ``where``.

    Args:
        size (int): side of the square, >= 1. Default 16 (the paper's choice for CIFAR-10).
        p (float): probability that an image is cut. Default 1.0.
        value (float): what the square is filled with. Default 0 (the mean, after mean subtraction).

    Shape:
        ``(N, C, H, W)`` -> the same; a new array.

    Example:
        >>> import numpy as np
        >>> from cynet.data import Cutout
        >>> out = Cutout(size=2)(np.ones((3, 1, 4, 4), np.float32), np.random.default_rng(0))
        >>> out.shape, bool(np.all((out == 0) | (out == 1))), int((out == 0).sum(axis=(1, 2, 3)).max()) <= 4
        ((3, 1, 4, 4), True, True)
    """

    def __init__(self, size=16, p=1.0, value=0.0):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"Cutout: size must be an int >= 1, got {size!r}")
        for name, number in (("p", p), ("value", value)):
            if not is_real(number):
                raise TypeError(f"Cutout: {name} must be a number, got {number!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Cutout: p must be in [0, 1], got {p!r}")
        if not np.isfinite(value):
            raise ValueError(f"Cutout: value must be finite, got {value!r}")
        self.size, self.p, self.value = int(size), float(p), float(value)

    def __call__(self, xb, generator=None):
        xb = _check_images("Cutout", xb)
        if xb.dtype.kind not in "biufc":
            raise TypeError(f"Cutout: images must be numbers (bool, integer, floating point or complex), got "
                            f"{describe(xb)}")
        if xb.dtype.kind == "b":
            if self.value not in (0.0, 1.0):
                raise ValueError(f"Cutout: value {self.value:g} cannot be stored in bool images (0 or 1)")
        elif xb.dtype.kind in "iu":
            info = np.iinfo(xb.dtype)
            if self.value != int(self.value) or not info.min <= self.value <= info.max:
                raise ValueError(f"Cutout: value {self.value:g} cannot be stored in {xb.dtype} images (whole numbers "
                                 f"from {info.min} to {info.max}); give such a value, or cut after the conversion "
                                 f"to floating point")
        elif abs(self.value) > float(np.finfo(xb.dtype).max):
            raise ValueError(f"Cutout: value {self.value:g} overflows {xb.dtype} images (largest "
                             f"{np.finfo(xb.dtype).max:g})")
        n, _, h, w = xb.shape
        rng = resolve_generator(generator)
        cy, cx = rng.integers(0, h, size=n), rng.integers(0, w, size=n)
        cut = rng.random(n) < self.p
        top, left = cy - self.size // 2, cx - self.size // 2
        rows, cols = np.arange(h), np.arange(w)
        inside_rows = (rows >= top[:, None]) & (rows < (top + self.size)[:, None])            # (N, H)
        inside_cols = (cols >= left[:, None]) & (cols < (left + self.size)[:, None])          # (N, W)
        mask = (inside_rows[:, :, None] & inside_cols[:, None, :]) & cut[:, None, None]       # (N, H, W)
        return np.where(mask[:, None, :, :], xb.dtype.type(self.value), xb)

    def __repr__(self):
        return f"Cutout(size={self.size}, p={self.p}, value={self.value})"


class Mixup:
    r"""Mixup (Zhang et al., 2018): train on convex combinations of pairs of examples and of their labels.

    .. math::
        \tilde x_i = \lambda x_i + (1 - \lambda) x_{\pi(i)}, \qquad
        \tilde t_i = \lambda e_{y_i} + (1 - \lambda) e_{y_{\pi(i)}}, \qquad \lambda \sim \mathrm{Beta}(\alpha, \alpha)

    with one :math:`\lambda` per batch and :math:`\pi` a random permutation of the batch (the paper's batch form),
    :math:`e_y` the one-hot vector of class y. The targets are (N, C) distributions, which
    :class:`cynet.nn.SoftmaxCrossEntropy` takes. Pass it to the trainer, ``Trainer(..., mixup=Mixup(0.2, 10))``:
    only training batches are mixed; evaluation sees the real inputs and labels.

    Args:
        alpha (float): :math:`\alpha` > 0 of the Beta distribution (small: mostly mild mixes). Default 0.2.
        num_classes (int): C, the number of classes (>= 2); required (its default, None, only keeps ``alpha``
            first as in the paper's notation).

    Call:
        ``mixup(xb, yb, generator) -> (x_mixed, targets)``: ``xb`` a float batch (any shape, examples first), ``yb``
        integer labels (N,) or target distributions (N, C); ``targets`` (N, C) in ``xb``'s dtype.

    Example:
        >>> import numpy as np
        >>> from cynet.data import Mixup
        >>> x = np.eye(2, dtype=np.float32); y = np.array([0, 1])
        >>> xm, t = Mixup(alpha=1.0, num_classes=2)(x, y, np.random.default_rng(0))
        >>> bool(np.allclose(xm, t))                 # x was one-hot too: inputs and targets mix alike
        True
    """

    def __init__(self, alpha=0.2, num_classes=None):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)) or \
                not (0 < alpha < np.inf):
            raise ValueError(f"Mixup: alpha must be a finite number > 0, got {alpha!r}")
        if num_classes is None:
            raise TypeError("Mixup: num_classes is required (the number of classes of the labels, e.g. "
                            "Mixup(0.2, num_classes=10))")
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"Mixup: num_classes must be an int >= 2, got {num_classes!r}")
        self.alpha, self.num_classes = float(alpha), int(num_classes)

    def targets(self, yb, dtype=np.float32):
        """``yb`` as (N, C) distributions: one-hot rows for integer labels, float rows as they are once checked (C
        columns, every entry finite and >= 0, as the soft-target losses require)."""
        yb = np.asarray(yb)
        c = self.num_classes
        if yb.ndim == 2 and yb.dtype.kind == "f":
            if yb.shape[1] != c:
                raise ValueError(f"Mixup: target distributions must have {c} columns, got shape {yb.shape}")
            check_probabilities("Mixup", yb)
            return yb.astype(dtype, copy=False)
        if yb.ndim != 1 or yb.dtype.kind not in "iu":
            raise TypeError(f"Mixup: labels must be integer class indices (N,) or (N, {c}) distributions, got "
                            f"{yb.dtype} array of shape {yb.shape}")
        if yb.size and (yb.min() < 0 or yb.max() >= c):
            raise ValueError(f"Mixup: labels must lie in [0, {c}), got values in [{yb.min()}, {yb.max()}]")
        out = np.zeros((len(yb), c), dtype=dtype)
        out[np.arange(len(yb)), yb] = 1
        return out

    def __call__(self, xb, yb, generator=None):
        xb = np.asarray(xb)
        if xb.dtype.kind != "f":
            raise TypeError(f"Mixup: xb must be a float batch (mix after preprocessing), got {xb.dtype}")
        if xb.ndim == 0:
            raise ValueError(f"Mixup: xb must be a batch, examples first (N, ...), got {describe(xb)}")
        yb = np.asarray(yb)
        if yb.ndim == 0 or len(yb) != len(xb):
            raise ValueError(f"Mixup: xb and yb must have the same length (one label or target row per example), got "
                             f"xb of shape {xb.shape} and yb of shape {yb.shape}")
        targets = self.targets(yb, xb.dtype)
        rng = resolve_generator(generator)
        lam = rng.beta(self.alpha, self.alpha)
        perm = rng.permutation(len(xb))
        keep, take = xb.dtype.type(lam), xb.dtype.type(1 - lam)
        mixed = xb * keep
        mixed += xb[perm] * take
        mixed_targets = targets * keep
        mixed_targets += targets[perm] * take
        return mixed, mixed_targets

    def __repr__(self):
        return f"Mixup(alpha={self.alpha}, num_classes={self.num_classes})"


#: The random image augmentations: called without a generator they draw from the global one, so the consumers that
#: take a preprocessing callable (Trainer's batch_transform, Ensemble's transform) refuse them.
RANDOM_AUGMENTATIONS = (RandomCrop, RandomHorizontalFlip, Cutout, Compose)


def make_batch_transform(transform=None, augment=None, *, dtype=None):
    """A ``batch_transform(xb, rng)`` hook for a training loop: transform, then augment unless ``rng`` is None.

    Args:
        transform: a fitted preprocessing transform (``transform.transform(xb)``), or None.
        augment: a callable ``augment(xb, generator)`` (:class:`RandomCrop`, :class:`Compose`, …), or None.
        dtype: keyword-only; ``numpy.float64`` casts each batch to float64 before the transform, so that a float64
            model fed uint8 images gets inputs computed in float64 (the transforms give float32 for integer input,
            which the trainer's cast to the model's float64 cannot make more precise). Default None (as below).

    Returns:
        callable: ``batch_transform(xb, rng)``; ``rng`` a :class:`numpy.random.Generator` for training, None for
        evaluation (transform only, no augmentation). Output is float32 (float64 stays float64; ``dtype=float64``:
        float64).

    Example:
        >>> import numpy as np
        >>> from cynet.data import make_batch_transform, RandomHorizontalFlip
        >>> bt = make_batch_transform(None, RandomHorizontalFlip(p=1.0))
        >>> x = np.arange(3, dtype=np.uint8).reshape(1, 1, 1, 3)
        >>> bt(x, None).ravel(), bt(x, np.random.default_rng(0)).ravel()
        (array([0., 1., 2.], dtype=float32), array([2., 1., 0.], dtype=float32))
    """
    if transform is not None and not hasattr(transform, "transform"):
        raise TypeError(f"make_batch_transform: transform must have a .transform(x) method, got {transform!r}")
    if augment is not None and not callable(augment):
        raise TypeError(f"make_batch_transform: augment must be callable(xb, generator), got {augment!r}")
    if dtype is not None:
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            dtype = np.dtype(object)           # (not None: np.dtype(None) is float64, and None == float64 is True)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError("make_batch_transform: dtype must be numpy.float32, numpy.float64 or None")

    def batch_transform(xb, rng=None):
        if dtype is not None:
            xb = np.asarray(xb, dtype=dtype)
        if transform is not None:
            xb = transform.transform(xb)
        else:       # float64 in either byte order stays float64 (a '>f8' array is not == np.float64), as transforms
            xb = np.asarray(xb)
            if xb.dtype != _output_dtype(xb):
                xb = xb.astype(_output_dtype(xb))
        if augment is not None and rng is not None:
            xb = augment(xb, rng)
        return xb

    return batch_transform


def augment_batch(xb, rng, augment=None, transform=None):
    """One-shot form of :func:`make_batch_transform`: ``make_batch_transform(transform, augment)(xb, rng)``."""
    return make_batch_transform(transform, augment)(xb, rng)


class BatchIterator:
    """Iterate over ``(xb, yb)`` mini-batches, reshuffled every epoch with a seeded permutation.

    Each batch is gathered with fancy indexing (only that batch is copied), then preprocessed by ``transform``
    (float32; float64 data stays float64) and, for images, augmented. Iterating again starts a new epoch with a new
    permutation drawn from the same generator, so a seeded iterator gives the same sequence of epochs every run.

    Args:
        x (ndarray): inputs, samples first (uint8 images are fine: the transform converts each batch).
        y (ndarray or None): targets, ``len(y) == len(x)``; None yields ``(xb, None)``.
        batch_size (int): samples per batch.
        shuffle (bool): new random order each epoch. Default True.
        seed (int, Generator or None): the permutation and augmentation source; None means the global generator
            (:func:`cynet.manual_seed`). Default None.
        augment (callable or None): ``augment(xb, generator)``, applied after ``transform``. Default None.
        drop_last (bool): skip the last, smaller batch. Default False.
        transform: a *fitted* preprocessing transform applied to every batch, or None (batches converted to float32,
            float64 data kept float64, only when ``augment`` is set; otherwise returned as stored: a view of ``x`` when
            ``shuffle=False``).
            Default None.

    Example:
        >>> import numpy as np
        >>> from cynet.data import BatchIterator
        >>> it = BatchIterator(np.arange(10.0)[:, None], np.arange(10), batch_size=3, seed=0, drop_last=True)
        >>> len(it), [yb.shape[0] for _, yb in it]
        (3, [3, 3, 3])
    """

    def __init__(self, x, y, batch_size, shuffle=True, seed=None, augment=None, drop_last=False, transform=None):
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"BatchIterator: x must hold at least one sample, got shape {tuple(x.shape)}")
        if y is not None:
            y = np.asarray(y)
            if y.shape[:1] != x.shape[:1]:
                raise ValueError(f"BatchIterator: x and y must have the same number of samples, got x of shape "
                                 f"{tuple(x.shape)} and y of shape {tuple(y.shape)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"BatchIterator: batch_size must be a positive int, got {batch_size!r}")
        if drop_last and batch_size > x.shape[0]:
            raise ValueError(f"BatchIterator: drop_last with batch_size={batch_size} > {x.shape[0]} samples "
                             f"yields no batch")
        if transform is not None:
            if not hasattr(transform, "transform"):
                raise TypeError(f"BatchIterator: transform must have a .transform(x) method, got {transform!r}")
            if getattr(transform, "is_fitted", True) is False:
                raise RuntimeError(f"BatchIterator: {type(transform).__name__} is not fitted: call "
                                   f"fit(x_train) first")
        if augment is not None and not callable(augment):
            raise TypeError(f"BatchIterator: augment must be callable(xb, generator), got {augment!r}")
        self.x, self.y, self.batch_size = x, y, int(batch_size)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        # None: the global generator at each epoch's start (manual_seed replaces it); else this iterator's own
        self._own_generator = None if seed is None else resolve_generator(seed)
        self.transform, self.augment = transform, augment
        self._batch_transform = make_batch_transform(transform, augment)

    @property
    def generator(self):
        """The generator the next epoch draws from: the iterator's own, or the global one (:func:`cynet.manual_seed`)
        for ``seed=None``."""
        return self._own_generator if self._own_generator is not None else resolve_generator(None)

    @generator.setter
    def generator(self, value):
        """An int seed or a Generator of the iterator's own; None: the global generator from the next epoch on."""
        self._own_generator = None if value is None else resolve_generator(value)

    def __len__(self):
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = self.x.shape[0]
        generator = self.generator
        order = generator.permutation(n) if self.shuffle else np.arange(n)
        for b in range(len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            if not self.shuffle:
                index = slice(b * self.batch_size, min((b + 1) * self.batch_size, n))
            xb = self.x[index]
            if self.transform is not None or self.augment is not None:
                xb = self._batch_transform(xb, generator)
            yield xb, (None if self.y is None else self.y[index])

    def __repr__(self):
        return (f"BatchIterator({self.x.shape[0]} samples, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, transform={self.transform!r}, augment={self.augment!r})")

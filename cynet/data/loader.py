"""Mini-batches for training: a seeded shuffling iterator, image augmentation, and the per-batch transform hook.

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

from cynet._random import resolve_generator


def _check_images(owner, xb):
    xb = np.asarray(xb)
    if xb.ndim != 4:
        raise ValueError(f"{owner}: expects a batch of images (N, C, H, W), got {xb.dtype} array of shape "
                         f"{tuple(xb.shape)}; reshape flat rows first, e.g. x.reshape(-1, 3, 32, 32)")
    return xb


class RandomCrop:
    """Pad every image with zeros by ``padding`` pixels and crop a random ``size`` × ``size`` window from it.

    Each image of the batch gets its own offset; the crop is one vectorised gather, no Python loop per image.
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
        size = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in size):
            raise ValueError(f"RandomCrop: size must be a positive int or (height, width), got {size!r}")
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
        padded = np.zeros((n, c, h + 2 * p, w + 2 * p), dtype=xb.dtype)
        padded[:, :, p:p + h, p:p + w] = xb
        dy = rng.integers(0, h + 2 * p - sh + 1, size=n)
        dx = rng.integers(0, w + 2 * p - sw + 1, size=n)
        rows = (dy[:, None] + np.arange(sh))[:, None, :, None]
        cols = (dx[:, None] + np.arange(sw))[:, None, None, :]
        return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols]

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right (reverse the last axis) with probability ``p``.

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
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, xb, generator=None):
        xb = _check_images("RandomHorizontalFlip", xb)
        flip = resolve_generator(generator).random(xb.shape[0]) < self.p
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


def make_batch_transform(transform=None, augment=None):
    """A ``batch_transform(xb, rng)`` hook for a training loop: transform, then augment unless ``rng`` is None.

    Args:
        transform: a fitted preprocessing transform (``transform.transform(xb)``), or None.
        augment: a callable ``augment(xb, generator)`` (:class:`RandomCrop`, :class:`Compose`, …), or None.

    Returns:
        callable: ``batch_transform(xb, rng)``; ``rng`` a :class:`numpy.random.Generator` for training, None for
        evaluation (transform only, no augmentation). Output is float32 (float64 stays float64).

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

    def batch_transform(xb, rng=None):
        if transform is not None:
            xb = transform.transform(xb)
        else:
            xb = np.asarray(xb)
            if xb.dtype != np.float64 and xb.dtype != np.float32:
                xb = xb.astype(np.float32)
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
    (float32) and, for images, augmented. Iterating again starts a new epoch with a new permutation drawn from the
    same generator, so a seeded iterator gives the same sequence of epochs every run.

    Args:
        x (ndarray): inputs, samples first (uint8 images are fine: the transform converts each batch).
        y (ndarray or None): targets, ``len(y) == len(x)``; None yields ``(xb, None)``.
        batch_size (int): samples per batch.
        shuffle (bool): new random order each epoch. Default True.
        seed (int, Generator or None): the permutation and augmentation source; None means the global generator
            (:func:`cynet.manual_seed`). Default None.
        augment (callable or None): ``augment(xb, generator)``, applied after ``transform``. Default None.
        drop_last (bool): skip the last, smaller batch. Default False.
        transform: a *fitted* preprocessing transform applied to every batch, or None (batches converted to float32
            only when ``augment`` is set; otherwise returned as stored: a view of ``x`` when ``shuffle=False``).
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
        self.generator = resolve_generator(seed)
        self.transform, self.augment = transform, augment
        self._batch_transform = make_batch_transform(transform, augment)

    def __len__(self):
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = self.x.shape[0]
        order = self.generator.permutation(n) if self.shuffle else np.arange(n)
        for b in range(len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            if not self.shuffle:
                index = slice(b * self.batch_size, min((b + 1) * self.batch_size, n))
            xb = self.x[index]
            if self.transform is not None or self.augment is not None:
                xb = self._batch_transform(xb, self.generator)
            yield xb, (None if self.y is None else self.y[index])

    def __repr__(self):
        return (f"BatchIterator({self.x.shape[0]} samples, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, transform={self.transform!r}, augment={self.augment!r})")

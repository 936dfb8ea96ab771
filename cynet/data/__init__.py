"""cynet.data: CIFAR-10 loading, preprocessing fitted on the training set, and mini-batch iteration.

- :mod:`cynet.data.preprocessing`: :class:`MeanImage`, :class:`ChannelMean`, :class:`Standardize`, :class:`PCA`,
  :class:`PCAWhitening`, :class:`ZCAWhitening`, :class:`Pipeline` (sklearn-style ``fit``/``transform``), and
  :func:`save_bundle` / :func:`load_bundle` to keep a model and its transform together.
- :mod:`cynet.data.cifar10`: :func:`load_cifar10` (directory or ``.tar.gz``, restricted unpickler, opt-in download),
  :func:`load_test_npz`, :func:`load_cifar10_subset` (a small real subset shipped with cynet).
- :mod:`cynet.data.loader`: :class:`BatchIterator`, :class:`RandomCrop`, :class:`RandomHorizontalFlip`,
  :class:`Cutout`, :class:`Compose`, :func:`make_batch_transform`, and :class:`Mixup` (for ``Trainer(mixup=...)``).

Example:
    >>> from cynet.data import load_cifar10_subset, MeanImage, BatchIterator
    >>> data = load_cifar10_subset()
    >>> t = MeanImage().fit(data.x_train)
    >>> xb, yb = next(iter(BatchIterator(data.x_train, data.y_train, 64, seed=0, transform=t)))
    >>> xb.dtype, xb.shape
    (dtype('float32'), (64, 3, 32, 32))
"""
from cynet.data.preprocessing import (TRANSFORMS, Bundle, ChannelMean, MeanImage, PCA, PCAWhitening, Pipeline,
                                      Standardize, Transform, ZCAWhitening, fingerprint, load_bundle, save_bundle,
                                      transform_from_state_dict)
from cynet.data.cifar10 import (CIFAR10, CIFAR10FormatError, CLASSES, UnsafePickleError, default_root,
                                download_cifar10, load_cifar10, load_cifar10_reachable, load_cifar10_subset,
                                load_test_npz)
from cynet.data.loader import (BatchIterator, Compose, Cutout, Mixup, RandomCrop, RandomHorizontalFlip, augment_batch,
                               make_batch_transform)

__all__ = [
    "Transform", "MeanImage", "ChannelMean", "Standardize", "PCA", "PCAWhitening", "ZCAWhitening", "Pipeline",
    "TRANSFORMS", "transform_from_state_dict", "fingerprint", "Bundle", "save_bundle", "load_bundle",
    "CIFAR10", "CIFAR10FormatError", "UnsafePickleError", "CLASSES", "default_root", "download_cifar10",
    "load_cifar10", "load_cifar10_reachable", "load_cifar10_subset", "load_test_npz",
    "BatchIterator", "RandomCrop", "RandomHorizontalFlip", "Cutout", "Mixup", "Compose", "make_batch_transform",
    "augment_batch",
]

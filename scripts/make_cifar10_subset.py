"""Build the small real CIFAR-10 subset packaged with cynet (``cynet/data/_subset/cifar10_subset.npz``).

Training images: class-balanced, drawn without replacement (seeded) from the training batches present in ``--data``.
Test images: class-balanced from ``test_batch`` in ``--data`` if present, else from ``--test-data`` (an npz with
``data``/``labels``, like the shared ``cifar10_test_partial.npz``), else carved from training images disjoint from
the training part (recorded in the metadata). The file is a compressed npz of uint8 rows, no pickle:

    x_train (N, 3072) uint8, y_train (N,) int64, x_test, y_test, classes (10,) str,
    train_index / test_index (int64: rows of the sources taken), metadata (JSON string)

CIFAR pixels barely compress with zlib (~2.8 KB per image), so 4 MB holds about 1,400 images: the defaults
(1,000 + 300) fit; the script refuses to write a file above ``--max-bytes``.

Usage:
    python scripts/make_cifar10_subset.py --data /work/shared/datasets/cifar-10-batches-py \\
        --test-data /work/shared/datasets/cifar10_test_partial.npz --out cynet/data/_subset/cifar10_subset.npz \\
        --train 1000 --test 300 --seed 0
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cynet.data.cifar10 import load_cifar10, load_test_npz  # noqa: E402


def balanced_choice(labels, count, rng, exclude=None):
    """``count`` sorted row indices, as equal per class as possible (the first ``count % 10`` classes get one more)."""
    classes = np.unique(labels)
    per_class = [count // len(classes) + (i < count % len(classes)) for i in range(len(classes))]
    allowed = np.ones(len(labels), dtype=bool)
    if exclude is not None:
        allowed[exclude] = False
    picked = []
    for c, k in zip(classes, per_class):
        pool = np.flatnonzero((labels == c) & allowed)
        if k > len(pool):
            raise SystemExit(f"make_cifar10_subset: class {c} has only {len(pool)} images available, {k} needed")
        picked.append(rng.choice(pool, size=k, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 python-version directory or archive")
    parser.add_argument("--test-data", default=None, help="npz with data/labels test images (used without "
                                                           "test_batch)")
    parser.add_argument("--out", default="cynet/data/_subset/cifar10_subset.npz")
    parser.add_argument("--train", type=int, default=1000, help="training images (default 1000)")
    parser.add_argument("--test", type=int, default=300, help="test images (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-bytes", type=int, default=4_000_000, help="refuse larger files (default 4 MB)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    data = load_cifar10(args.data, flatten=True)
    train_index = balanced_choice(data.y_train, args.train, rng)
    meta = {"seed": args.seed, "train_source": data.source, "n_train": args.train, "n_test": args.test,
            "train_index_refers_to": "rows of the training batches present, concatenated in order",
            "builder": "scripts/make_cifar10_subset.py"}
    if data.x_test is not None:
        x_pool, y_pool = data.x_test, data.y_test
        meta["test_source"] = f"the official test_batch in {args.data}"
        test_index = balanced_choice(y_pool, args.test, rng)
    elif args.test_data:
        x_pool, y_pool = load_test_npz(args.test_data, flatten=True)
        meta["test_source"] = f"official CIFAR-10 test images ({os.path.basename(args.test_data)}, {len(y_pool)} rows)"
        test_index = balanced_choice(y_pool, args.test, rng)
    else:
        x_pool, y_pool = data.x_train, data.y_train
        meta["test_source"] = ("training images disjoint from the training part (no test images were available): "
                               "not the official test set")
        test_index = balanced_choice(y_pool, args.test, rng, exclude=train_index)
    meta["test_index_refers_to"] = "rows of the test source"

    arrays = {"x_train": data.x_train[train_index], "y_train": data.y_train[train_index],
              "x_test": x_pool[test_index], "y_test": y_pool[test_index],
              "classes": np.array(data.classes), "train_index": train_index, "test_index": test_index,
              "metadata": np.array(json.dumps(meta, sort_keys=True))}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".subset-", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        size = os.path.getsize(tmp)
        if size > args.max_bytes:
            raise SystemExit(f"make_cifar10_subset: {size:,} bytes exceeds --max-bytes {args.max_bytes:,}; "
                             f"use fewer images (about 2.8 KB each)")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {out}: {args.train} training + {args.test} test images, {size:,} bytes; test images from "
          f"{meta['test_source']}")


if __name__ == "__main__":
    main()

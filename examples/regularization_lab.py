"""The lecture's regularisers side by side: the same over-sized MLP on a few thousand CIFAR-10 images, once per method.

A 3072-512-ReLU-512-ReLU-10 net has far more weights than ``--train`` images, so without regularisation it fits the
training images and generalises poorly: a large gap between training and validation accuracy, which the curve
doctor names "overfitting". Then the same net, seed and epochs with each of CS231n's regularisers in turn:

- an L2 penalty on the weight matrices (as SGD weight decay, biases left out: ``optim.weight_decay_groups``);
- dropout after each hidden layer, and DropConnect on the hidden weights (``nn.DropConnectLinear``);
- the max-norm constraint (``train.MaxNorm``);
- label smoothing (``nn.CrossEntropyLoss(label_smoothing=...)``) and Mixup (``Trainer(mixup=data.Mixup(...))``);
- data augmentation: random crops, flips and Cutout of the images.

It prints, for each, the final model's training and validation accuracy (evaluation mode, the clean images), the gap
between them (both of the same, final, model), the best validation accuracy of any epoch and the time, then names the
run with the smallest gap and the one with the best validation accuracy. The strengths are the usual starting
points, not tuned values: search them with ``cynet.tune`` for a real model.

Data: ``--data`` (a CIFAR-10 directory), else ``$CYNET_DATA`` or ``~/.cache/cynet``, else the shared development copy
``../shared/datasets`` next to the project (or ``$CYNET_SHARED_DATA``), else the small subset packaged with cynet.

Example:
    python examples/regularization_lab.py --train 2000 --epochs 15
"""
import argparse
import time

import numpy as np

import cynet
from cynet import nn, optim
from cynet.data import Compose, Cutout, Mixup, RandomCrop, RandomHorizontalFlip
from cynet.diagnostics import diagnose
from cynet.train import MaxNorm, Trainer
from cifar10_data import IMAGE, load_split
from cli_types import data_errors_exit, non_negative_int, positive_float, positive_int


def build_mlp(hidden=512, dropout=0.0, dropconnect=0.0):
    """3072-hidden-ReLU-hidden-ReLU-10, He initialisation; optional dropout after, or DropConnect in, the hidden
    layers."""
    def hidden_layer(fan_in):
        if dropconnect:
            return nn.DropConnectLinear(fan_in, hidden, init="he", p=dropconnect)
        return nn.Linear(fan_in, hidden, init="he")

    layers = []
    for fan_in in (3072, hidden):
        layers += [hidden_layer(fan_in), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
    return nn.Sequential(*layers, nn.Linear(hidden, 10, init="he"))


def augment_images(xb, rng):
    """Random crop (padding 4), horizontal flip and an 8-pixel Cutout on flat rows (reshaped to images and back)."""
    if rng is None:                     # evaluation: no augmentation
        return xb
    images = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), Cutout(8)])(xb.reshape((-1,) + IMAGE), rng)
    return images.reshape(len(xb), -1)


def methods(weight_decay=0.1, dropout=0.5, dropconnect=0.5, max_norm=1.0, smoothing=0.1, mixup=1.0):
    """{name: settings} of the runs; every run starts from the same seed."""
    return {
        "none": {},
        f"L2 weight decay {weight_decay:g} (weights only)": {"weight_decay": weight_decay},
        f"dropout {dropout:g}": {"dropout": dropout},
        f"DropConnect {dropconnect:g}": {"dropconnect": dropconnect},
        f"max-norm {max_norm:g}": {"callbacks": [MaxNorm(max_norm)]},
        f"label smoothing {smoothing:g}": {"smoothing": smoothing},
        f"mixup {mixup:g}": {"mixup": Mixup(mixup, num_classes=10)},
        "crops, flips, Cutout 8": {"batch_transform": augment_images},
    }


def run(name, settings, data, epochs, lr, batch_size, seed):
    """Train one configuration; returns a dict of its figures and the history."""
    x_tr, y_tr, x_val, y_val = data
    cynet.manual_seed(seed)
    model = build_mlp(dropout=settings.get("dropout", 0.0), dropconnect=settings.get("dropconnect", 0.0))
    params = optim.weight_decay_groups(model, settings.get("weight_decay", 0.0))
    optimizer = optim.SGD(params, lr=lr, momentum=0.9)
    loss = nn.CrossEntropyLoss(label_smoothing=settings.get("smoothing", 0.0))
    trainer = Trainer(model, loss, optimizer, callbacks=list(settings.get("callbacks", [])), progress=False,
                      batch_transform=settings.get("batch_transform"), mixup=settings.get("mixup"), seed=seed)
    start = time.perf_counter()
    history = trainer.fit(x_tr, y_tr, epochs=epochs, batch_size=batch_size, validation=(x_val, y_val))
    seconds = time.perf_counter() - start
    _, train_acc = trainer.evaluate(x_tr, y_tr)
    final_val_acc = float(history["val_acc"][-1])      # the final model's, as train_acc: the gap is one model's
    val_acc = float(np.nanmax(history["val_acc"]))      # the best epoch's
    return {"name": name, "train_acc": train_acc, "final_val_acc": final_val_acc, "val_acc": val_acc,
            "gap": train_acc - final_val_acc, "seconds": seconds, "history": history}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="CIFAR-10 directory (default: $CYNET_DATA or ~/.cache/cynet, the shared "
                                       "copy, the subset)")
    parser.add_argument("--train", type=positive_int, default=2000, help="training images (default 2000)")
    parser.add_argument("--val", type=positive_int, default=1000, help="validation images (default 1000)")
    parser.add_argument("--epochs", type=positive_int, default=15)
    parser.add_argument("--lr", type=positive_float, default=0.01)
    parser.add_argument("--batch-size", type=positive_int, default=100)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    args = parser.parse_args(argv)

    with data_errors_exit("--data"):
        x_tr, y_tr, x_val, y_val, source = load_split(args.data, args.train, args.val, args.seed)
    print(f"data: {len(x_tr)} training and {len(x_val)} validation images from {source}")
    print(f"model: 3072-512-ReLU-512-ReLU-10, SGD momentum 0.9, lr {args.lr:g}, {args.epochs} epochs, batch "
          f"{args.batch_size}, {cynet.get_num_threads()} threads\n")
    results = []
    width = max(len(name) for name in methods())        # the longest name sets the column (L2's is 34 characters)
    for name, settings in methods().items():
        results.append(run(name, settings, (x_tr, y_tr, x_val, y_val), args.epochs, args.lr, args.batch_size,
                           args.seed))
        r = results[-1]
        print(f"  {name:<{width}} train {r['train_acc']:6.1%}  val {r['final_val_acc']:6.1%}  gap {r['gap']:+6.1%}  "
              f"best val {r['val_acc']:6.1%}  ({r['seconds']:.1f} s)", flush=True)
    baseline = results[0]
    # gap vs none: a difference of two percentages, in percentage points
    print(f"\n{'method':<{width}} {'train acc':>9} {'val acc':>8} {'gap':>7} {'gap vs none':>12} {'best val':>9}")
    for r in results:
        print(f"{r['name']:<{width}} {r['train_acc']:>9.1%} {r['final_val_acc']:>8.1%} {r['gap']:>+7.1%} "
              f"{100 * (r['gap'] - baseline['gap']):>+8.1f} pts {r['val_acc']:>9.1%}")
    narrowest = min(results[1:], key=lambda r: r["gap"])
    best = max(results, key=lambda r: r["val_acc"])
    findings = [f for f in diagnose(baseline["history"]) if f.name == "overfitting"]
    print(f"\nwithout regularisation: {findings[0] if findings else 'no overfitting finding from the curve doctor'}")
    print(f"smallest gap: {narrowest['name']} ({narrowest['gap']:+.1%} against {baseline['gap']:+.1%} without); "
          f"best validation accuracy: {best['name']} ({best['val_acc']:.1%})")
    return results


if __name__ == "__main__":
    main()

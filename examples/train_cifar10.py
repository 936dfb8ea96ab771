"""Train a fully connected network (or, with ``--model cnn``, a small convolutional one) on CIFAR-10 the way the
CS231n lecture teaches it, with every stage shown.

Stages: load the data (the full set, the shared development set, or the small subset packaged with cynet when
nothing else is reachable) -> carve a validation split from the training images -> fit the preprocessing on the
training part only -> build an MLP (or CNN) with batch norm and He initialisation -> run the lecture's sanity checks
(initial loss ~ ln 10, the penalty raising the loss, overfitting a tiny subset, a learning-rate probe) -> train
with progress bars, keeping the best checkpoint by validation accuracy -> plot the loss curve and the accuracies ->
the batch-norm check on the best checkpoint -> report test accuracy once, on the best checkpoint, as the last line
``test accuracy: NN.NN% (N images)``.

Data, the first that is there: ``--data``; ``$CYNET_DATA`` or ``~/.cache/cynet``; the development copy
``../shared/datasets`` next to the project or at ``$CYNET_SHARED_DATA`` (40,000 training images, and its 1,017 test
images in ``cifar10_test_partial.npz``); else the small subset packaged with cynet, which the run says it uses.

Examples:
    # the data this machine can reach, offline
    python examples/train_cifar10.py

    # every stage in under a minute, on the packaged subset (1,000 training images, 100 of them for validation;
    # 300 test images)
    python examples/train_cifar10.py --subset

    # three conv - batch norm - ReLU - pool blocks instead of the MLP (slower per epoch, more accurate)
    python examples/train_cifar10.py --model cnn --epochs 10

    # the same with residual blocks (stochastic depth) and global average pooling
    python examples/train_cifar10.py --model resnet --epochs 10

    # a directory and a test file named explicitly
    python examples/train_cifar10.py --data ../shared/datasets/cifar-10-batches-py \\
        --test-data ../shared/datasets/cifar10_test_partial.npz

    # the official data set, downloaded into $CYNET_DATA or ~/.cache/cynet (md5-checked)
    python examples/train_cifar10.py --download
"""
import argparse
import json
import os
import sys
import time

import numpy as np

import cynet
from cynet import nn, optim
from cynet.checkpoint import load_model
from cynet.data import (Compose, RandomCrop, RandomHorizontalFlip, Standardize, load_cifar10_reachable,
                        load_cifar10_subset, load_test_npz, make_batch_transform, save_bundle)
from cynet.nn.loss import L2Penalty, SoftmaxCrossEntropy
from cynet.optim.lr_scheduler import CosineAnnealingLR
from cynet.train import ModelCheckpoint, Trainer
from cifar10_data import SHARED
from cli_types import (data_errors_exit, make_output_directory, non_negative_float, non_negative_int, output_directory,
                       positive_float, positive_int, probability, thread_count)

MODELS = {
    # hidden layer widths of the fully connected net (each Linear -> BatchNorm1d -> ReLU)
    "mlp": (1024, 512),
    "mlp-wide": (2048, 1024),
    "mlp-small": (512, 256),
    # filters of the convolutional net's three blocks (each Conv2d 3x3 -> BatchNorm2d -> ReLU -> MaxPool2d 2x2)
    "cnn": ("conv", 32, 64, 128),
    # the same blocks, the middle one followed by a residual block (two Conv2d 3x3 - BatchNorm2d, stochastic depth,
    # identity shortcut), and global average pooling before the classifier
    "resnet": ("residual", 32, 64, 128),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="CIFAR-10 directory (data_batch_* files) or cifar-10-python.tar.gz; default: "
                                  "$CYNET_DATA or ~/.cache/cynet, else ../shared/datasets next to the project or at "
                                  "$CYNET_SHARED_DATA, else the subset packaged with cynet")
    p.add_argument("--test-data", help="test images as an .npz with 'data' and 'labels' (default: test_batch, "
                                       "else the one *test*.npz file beside the batches, if any)")
    p.add_argument("--download", action="store_true", help="download the official archive if it is not there")
    p.add_argument("--subset", action="store_true", help="train on the small subset packaged with cynet (a quick "
                                                         "offline run of every stage, under a minute)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="default: 30 on a full data set, 15 on the subset")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--lr", type=positive_float, default=None,
                   help="initial learning rate (SGD, Nesterov momentum 0.9); default 0.05 for the MLPs and the "
                        "resnet, 0.01 for the CNN, whose classifier reads 2,048 non-negative features (it diverged at "
                        "0.02)")
    p.add_argument("--weight-decay", type=non_negative_float, default=5e-4)
    p.add_argument("--dropout", type=probability, default=0.2)
    p.add_argument("--model", choices=sorted(MODELS), default="mlp")
    p.add_argument("--val-size", type=positive_int, default=None,
                   help="validation images (default: 10%% of training)")
    p.add_argument("--no-augment", action="store_true", help="no random crops / flips")
    p.add_argument("--skip-checks", action="store_true", help="do not run the sanity checks before training")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--threads", type=thread_count, default=None,
                   help="threads for kernels and BLAS (default: $OMP_NUM_THREADS, else every CPU this process may use)")
    p.add_argument("--out", type=output_directory, default="runs/cifar10",
                   help="directory for the checkpoint, plots and history")
    return p.parse_args(argv)


def stage(title):
    print(f"\n== {title} " + "=" * max(0, 74 - len(title)), flush=True)


def load_data(args):
    """(x_train, y_train, x_test, y_test, description, test source, subset?); uint8 images (N, 3, 32, 32)."""
    if args.subset:
        data, subset = load_cifar10_subset(), True
    else:
        data, subset = load_cifar10_reachable(args.data, fallbacks=[SHARED], download=args.download)
    x_test, y_test = data.x_test, data.y_test
    test_source = None if x_test is None else "named under source"
    if args.test_data:
        x_test, y_test = load_test_npz(args.test_data)
        test_source = args.test_data
    description = data.source
    if args.subset:
        description += "  <- the small subset packaged with cynet (--subset)"
    elif subset:
        description += ("  <- the small subset packaged with cynet, used because no CIFAR-10 data was found "
                        "(pass --data DIR, set $CYNET_DATA, or --download for the full set)")
    return data.x_train, data.y_train, x_test, y_test, description, test_source, subset


def conv_bn(channels, width, generator):
    """A 3x3 convolution (padding 1, He initialisation) and the batch norm of its output."""
    return [nn.Conv2d(channels, width, 3, padding=1, init="he", generator=generator), nn.BatchNorm2d(width)]


def classifier(features, dropout, generator):
    """Dropout (if any) and the Linear classifier, whose small N(0, 0.01^2) weights make the first loss ln 10."""
    return ([nn.Dropout(dropout)] if dropout > 0 else []) + [nn.Linear(features, 10, init="normal",
                                                                        generator=generator)]


def build_cnn(filters, dropout, seed):
    """CS231n's conv - batch norm - ReLU - pool blocks (32x32 -> 4x4), then the classifier on the flattened maps."""
    layers, channels = [], 3
    for i, width in enumerate(filters):
        # the ReLU overwrites the batch norm's output (which nothing keeps): no fresh array of the block's largest size
        layers += conv_bn(channels, width, seed + i) + [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        channels = width
    return nn.Sequential(*layers, nn.Flatten(), *classifier(channels * 4 * 4, dropout, seed + len(filters)))


def build_resnet(filters, dropout, seed, drop_path=0.1):
    """CS231n's conv blocks, each one but the first and the last followed by a residual block (He et al., 2016):
    y = ReLU(x + BN(conv(ReLU(BN(conv x))))), the branch dropped with probability ``drop_path`` per image in training
    (stochastic depth); the last block's maps are averaged over their 4 x 4 positions (global average pooling) into
    the classifier."""
    layers, channels, generator = [], 3, seed
    for i, width in enumerate(filters):
        layers += conv_bn(channels, width, generator) + [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        generator += 1
        if 0 < i < len(filters) - 1:
            body = nn.Sequential(*conv_bn(width, width, generator), nn.ReLU(inplace=True),
                                 *conv_bn(width, width, generator + 1),
                                 nn.StochasticDepth(drop_path, generator=generator + 2))
            layers += [nn.Residual(body), nn.ReLU(inplace=True)]
            generator += 3
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), *classifier(channels, dropout, generator))


def build_model(hidden, dropout, seed):
    if hidden[0] == "conv":
        return build_cnn(hidden[1:], dropout, seed)
    if hidden[0] == "residual":
        return build_resnet(hidden[1:], dropout, seed)
    layers = [nn.Flatten()]
    width = 3072
    for i, units in enumerate(hidden):
        layers += [nn.Linear(width, units, init="he", generator=seed + i), nn.BatchNorm1d(units), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = units
    # the classifier starts with small weights, N(0, 0.01^2) (the lecture's "small random numbers"): every class
    # then scores about the same and the first loss is ln 10 = 2.303, which the sanity checks verify; He scaling
    # here would start near 3 and only cost the first iterations
    layers.append(nn.Linear(width, 10, init="normal", generator=seed + len(hidden)))
    return nn.Sequential(*layers)


def save_plots(history, out):
    from cynet.diagnostics.plots import plot_accuracy, plot_loss

    paths = [os.path.join(out, "loss.png"), os.path.join(out, "accuracy.png")]
    plot_loss(history, paths[0])
    plot_accuracy(history, paths[1])
    return paths


def main(argv=None):
    args = parse_args(argv)
    if args.lr is None:
        args.lr = 0.01 if args.model == "cnn" else 0.05
    if args.threads:
        cynet.set_num_threads(args.threads)
    cynet.manual_seed(args.seed)
    make_output_directory(args.out, "--out")
    started = time.perf_counter()

    stage("data")
    with data_errors_exit("--data / --test-data"):
        x_all, y_all, x_test, y_test, description, test_source, subset = load_data(args)
    print(f"source       : {description}")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(x_all))
    val_size = args.val_size if args.val_size is not None else max(1, len(x_all) // 10)
    if not 0 < val_size < len(x_all):
        sys.exit(f"--val-size must lie in (0, {len(x_all)}), got {val_size}")
    val_idx, train_idx = np.sort(order[:val_size]), np.sort(order[val_size:])
    x_train, y_train = x_all[train_idx], y_all[train_idx]
    x_val, y_val = x_all[val_idx], y_all[val_idx]
    print(f"training     : {len(x_train)} images, validation: {len(x_val)} (carved from the training set), "
          f"test: {0 if x_test is None else len(x_test)} ({test_source or 'none available'})")

    stage("preprocessing (statistics of the training part only)")
    transform = Standardize(per="channel").fit(x_train)
    print(f"{type(transform).__name__}(per='channel'): mean {np.round(transform.mean_.ravel(), 2).tolist()}, "
          f"std {np.round(transform.scale_.ravel(), 2).tolist()}")
    augment = None if args.no_augment else Compose([RandomCrop(32, padding=2), RandomHorizontalFlip()])
    batch_transform = make_batch_transform(transform, augment)
    print(f"augmentation : {'none' if augment is None else 'random crop (padding 2) + horizontal flip'}")

    stage("model")
    hidden = MODELS[args.model]
    model = build_model(hidden, args.dropout, args.seed)
    print(model)
    print(f"parameters   : {sum(p.size for p in model.parameters()):,}")
    loss = SoftmaxCrossEntropy()

    if not args.skip_checks:
        stage("sanity checks before training (CS231n: babysitting the learning process)")
        from cynet.diagnostics import babysit

        xb = batch_transform(x_train[:512], None)
        # probe with the optimiser training will use, so the recommended range speaks of --lr
        report = babysit(model, loss, xb, y_train[:512], num_classes=10, seed=args.seed,
                         optimizer_factory=lambda params, lr: optim.SGD(params, lr=lr, momentum=0.9, nesterov=True),
                         overfit_lr=args.lr,
                         regularization=L2Penalty(args.weight_decay) if args.weight_decay > 0 else None)
        print(report)
        low, high = report.recommended_lr or (None, None)
        if low is not None and not low <= args.lr <= high:
            print(f"note: --lr {args.lr:g} lies outside the probe's recommended range {low:g} … {high:g}")

    stage("training")
    epochs = args.epochs if args.epochs is not None else (15 if subset else 30)
    # weight decay on the weight matrices only, as the babysitter's L2Penalty: not on biases nor BatchNorm's gamma/beta
    optimizer = optim.SGD(optim.weight_decay_groups(model, args.weight_decay), lr=args.lr, momentum=0.9, nesterov=True)
    scheduler = CosineAnnealingLR(optimizer, T_max=epochs)
    best_path = os.path.join(args.out, "best.npz")
    trainer = Trainer(model, loss, optimizer, scheduler=scheduler, batch_transform=batch_transform,
                      callbacks=[ModelCheckpoint(best_path, monitor="val_acc")], seed=args.seed)
    train_started = time.perf_counter()
    try:
        history = trainer.fit(x_train, y_train, epochs=epochs, batch_size=args.batch_size,
                              validation=(x_val, y_val))
    except KeyboardInterrupt:       # Ctrl-C: keep what was trained (the best checkpoint so far) and write the outputs
        history = trainer.history
        print(f"\n{trainer.stop_reason}: writing the outputs of the {trainer.epoch} finished epoch(s)", flush=True)
    train_seconds = time.perf_counter() - train_started
    if not history["val_acc"]:
        advice = "" if trainer.stop_reason.startswith("interrupted") else f"; try a smaller --lr than {args.lr:g}"
        sys.exit(f"training stopped before its first epoch ended ({trainer.stop_reason}): no checkpoint to "
                 f"test{advice}")
    epoch_times = history.get("epoch_time", [])
    n = cynet.get_num_threads()
    print(f"trained {trainer.epoch} epochs in {train_seconds:.1f} s "
          f"({np.mean(epoch_times) if epoch_times else float('nan'):.2f} s per epoch on "
          f"{n} thread{'s' if n != 1 else ''}); best validation accuracy {100 * max(history['val_acc']):.2f}%")
    if trainer.stop_reason:
        print(f"stopped early: {trainer.stop_reason}")

    stage("outputs")
    for path in save_plots(history, args.out):
        print(f"plot         : {path}")
    history_path = os.path.join(args.out, "history.json")
    with open(history_path, "w") as f:
        json.dump(history, f)                    # per iteration: loss, ...; per epoch: val_acc, ... (NaN as NaN)
    print(f"history      : {history_path}")
    load_model(best_path, model)
    bundle_path = os.path.join(args.out, "model_and_preprocessing.npz")
    # the weights are the best checkpoint's: its epoch, not the last one trained
    best_epoch = int(np.nanargmax(history["val_acc"])) + 1
    save_bundle(bundle_path, model, transform,
                metadata={"model": args.model, "epoch": best_epoch, "epochs_trained": trainer.epoch})
    print(f"checkpoint   : {best_path} (best validation accuracy); model + preprocessing: {bundle_path}")
    if not args.skip_checks and any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules()):
        stage("batch norm in training and in evaluation (CS231n: batch normalization at test time)")
        from cynet.diagnostics import check_batchnorm
        part = slice(0, min(len(x_train), 5000))          # the running statistics against 5,000 training images
        print(check_batchnorm(model, batch_transform(x_train[part], None), y_train[part],
                              batch_size=args.batch_size))
    print(f"total time   : {time.perf_counter() - started:.1f} s")

    if x_test is None:
        print("no test set available: pass --test-data FILE.npz or a directory with test_batch")
        return None
    # the trainer applies batch_transform(x, None) itself: pass the raw uint8 images
    _, test_acc = trainer.evaluate(x_test, y_test)
    print(f"test accuracy: {100 * test_acc:.2f}% ({len(x_test)} images)")
    return test_acc


if __name__ == "__main__":
    main()

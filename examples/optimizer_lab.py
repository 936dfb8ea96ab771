"""The lecture's update rules side by side: a ravine, then a small CIFAR-10 classifier, each rule at its best rate.

Part 1, the picture of CS231n's "problems with SGD": a quadratic ravine f(w) = (w0^2 + kappa w1^2) / 2 whose loss
changes ``--kappa`` times faster along one axis than along the other. Each rule (SGD, SGD with momentum, Nesterov,
AdaGrad, RMSProp, Adam) runs from the same start at every learning rate of a log-spaced grid, and the table shows the
fewest steps to bring the loss to 1e-4 of its start, at which rate. Plain SGD must keep its rate under 2 / kappa
(the steep axis diverges above it), so the shallow axis crawls; momentum builds up speed along it. L-BFGS with its
line search, which models the curvature, needs a handful of iterations.

Part 2, the same rules training 3072-``--hidden``-ReLU-10 on ``--train`` CIFAR-10 images for ``--epochs`` epochs of
mini-batches, each at the best of three learning rates around its usual default (a coarse log-space search, judged
by the final training loss, the quantity every rule minimises). Then L-BFGS, three times:

- full batch, deterministic (the lecture: "if you can afford to do full batch updates then try out L-BFGS (and
  don't forget to disable all sources of noise)"): one ``step`` on the whole training set with the strong-Wolfe line
  search, first limited to as many gradient evaluations as the other rules' epochs (the last line search may end a
  few past it), then run to convergence (at most ``--lbfgs-iterations`` iterations);
- mini-batch: one iteration per batch, as one would use SGD (the lecture: it "does not transfer very well to the
  mini-batch setting": each batch's curvature pairs describe another function).

The table gives each run's final training loss (whole training set), validation accuracy, data passes (gradient
evaluations of the whole training set, or their equivalent in batches) and time.

Data: ``--data`` (a CIFAR-10 directory), else ``$CYNET_DATA`` or ``~/.cache/cynet``, else the shared development copy
``../shared/datasets`` next to the project (or ``$CYNET_SHARED_DATA``), else the small subset packaged with cynet.

Example:
    python examples/optimizer_lab.py --train 2000 --epochs 20
"""
import argparse
import math
import time
import warnings

import numpy as np

import cynet
from cynet import nn, optim
from cynet.train import DivergenceWarning, Trainer
from cifar10_data import load_split
from cli_types import at_least_one, data_errors_exit, non_negative_int, positive_int

# rule name -> (constructor(params, lr), the usual default rate the CIFAR search centres on)
RULES = {
    "SGD": (lambda params, lr: optim.SGD(params, lr=lr), 0.1),
    "SGD + momentum 0.9": (lambda params, lr: optim.SGD(params, lr=lr, momentum=0.9), 0.01),
    "Nesterov 0.9": (lambda params, lr: optim.SGD(params, lr=lr, momentum=0.9, nesterov=True), 0.01),
    "AdaGrad": (lambda params, lr: optim.AdaGrad(params, lr=lr), 0.01),
    "RMSProp": (lambda params, lr: optim.RMSProp(params, lr=lr), 1e-3),
    "Adam": (lambda params, lr: optim.Adam(params, lr=lr), 1e-3),
}


# --- part 1: the ravine -------------------------------------------------------------------------------------------
def ravine(kappa, angle=0.0):
    """f(w) = (u0^2 + kappa u1^2) / 2 with u = R(angle) w (the ravine's axes turned by ``angle`` radians) and its
    gradient, and the start u = (-7, 2) in w: the same problem in turned coordinates, which only the rules with
    per-parameter rates (AdaGrad, RMSProp, Adam) see differently."""
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, s], [-s, c]])
    hessian = rotation.T @ np.diag([1.0, kappa]) @ rotation

    def function(w):
        gradient = hessian @ w
        return 0.5 * float(np.dot(gradient, w)), gradient
    return function, rotation.T @ np.array([-7.0, 2.0])


def steps_to_target(make, lr, function, start, target, max_steps):
    """Steps of the rule at rate ``lr`` until f <= target (None: not within ``max_steps``, or diverged)."""
    param = nn.Parameter(start.copy())
    opt = make([param], lr)
    for step in range(max_steps + 1):
        value, gradient = function(param.data)
        if value <= target:
            return step
        if not math.isfinite(value) or value > 1e6:
            return None
        param.grad = gradient
        opt.step()
    return None


def lbfgs_on_ravine(function, start, target):
    """(iterations, function evaluations) of L-BFGS with the strong-Wolfe line search to f <= target."""
    param = nn.Parameter(start.copy())
    opt = optim.LBFGS([param], max_iter=1, line_search_fn="strong_wolfe")

    def closure():
        value, gradient = function(param.data)
        param.grad = gradient
        return value

    for iteration in range(100):
        if function(param.data)[0] <= target:
            return iteration, opt.state_dict()["lbfgs.func_evals"]
        opt.step(closure)
    return None, opt.state_dict()["lbfgs.func_evals"]


def ravine_part(kappa, max_steps=2000, rates=np.logspace(-4, 1, 26)):
    """One row per rule: ``{"rule", "aligned": (steps, lr), "turned": (steps, lr)}`` for the ravine along the axes
    and turned by 45 degrees (steps None when no rate of the grid got there; L-BFGS: iterations, and its function
    evaluations in "evaluations")."""
    shapes = {"aligned": ravine(kappa), "turned": ravine(kappa, math.pi / 4)}
    rows = [{"rule": name} for name in RULES] + [{"rule": "L-BFGS, strong Wolfe", "evaluations": {}}]
    for shape, (function, start) in shapes.items():
        target = 1e-4 * function(start)[0]
        for row, (make, _) in zip(rows, RULES.values()):
            best = (None, None)
            for lr in rates:
                steps = steps_to_target(make, float(lr), function, start, target, max_steps)
                if steps is not None and (best[0] is None or steps < best[0]):
                    best = (steps, float(lr))
            row[shape] = best
        iterations, evaluations = lbfgs_on_ravine(function, start, target)
        rows[-1][shape] = (iterations, 1.0)
        rows[-1]["evaluations"][shape] = evaluations
    return rows


# --- part 2: CIFAR-10 ---------------------------------------------------------------------------------------------
def build_model(hidden, seed):
    cynet.manual_seed(seed)
    return nn.Sequential(nn.Linear(3072, hidden, init="he"), nn.ReLU(), nn.Linear(hidden, 10, init="normal"))


def full_loss_and_accuracy(model, loss, x, y, x_val, y_val):
    trainer = Trainer(model, loss, optim.SGD(model.parameters(), lr=0.0), progress=False)
    return trainer.evaluate(x, y)[0], trainer.evaluate(x_val, y_val)[1]


def minibatch_run(name, make, lr, data, hidden, epochs, batch_size, seed):
    x_tr, y_tr, x_val, y_val = data
    model, loss = build_model(hidden, seed), nn.SoftmaxCrossEntropy()
    trainer = Trainer(model, loss, make(model.parameters(), lr), progress=False, seed=seed)
    start = time.perf_counter()
    trainer.fit(x_tr, y_tr, epochs=epochs, batch_size=batch_size)
    seconds = time.perf_counter() - start
    train_loss, val_acc = full_loss_and_accuracy(model, loss, x_tr, y_tr, x_val, y_val)
    return {"rule": name, "lr": lr, "train_loss": train_loss, "val_acc": val_acc, "passes": float(epochs),
            "seconds": seconds, "stop": trainer.stop_reason}


def lbfgs_full_batch(name, data, hidden, max_iter, max_eval, seed):
    """One L-BFGS ``step`` on the whole training set (deterministic: no dropout, no batch norm), at most
    ``max_iter`` iterations and ``max_eval`` gradient evaluations; ``{stop}`` in ``name`` becomes what ended it
    ("converged": a tolerance; or the limit it reached)."""
    x_tr, y_tr, x_val, y_val = data
    model, loss = build_model(hidden, seed), nn.SoftmaxCrossEntropy()
    opt = optim.LBFGS(model.parameters(), max_iter=max_iter, max_eval=max_eval, history_size=20,
                      line_search_fn="strong_wolfe")
    start = time.perf_counter()
    opt.step(optim.loss_closure(model, loss, x_tr, y_tr))
    seconds = time.perf_counter() - start
    train_loss, val_acc = full_loss_and_accuracy(model, loss, x_tr, y_tr, x_val, y_val)
    state = opt.state_dict()
    iterations, evals = int(state["lbfgs.n_iter"]), int(state["lbfgs.func_evals"])
    if "{stop}" in name:     # what ended the step: a tolerance (converged) or a limit
        stop = (f"stopped at {iterations} iterations" if iterations >= max_iter else
                f"stopped at {evals} evaluations" if evals >= max_eval else "converged")
        name = name.format(stop=stop)
    return {"rule": name, "lr": 1.0, "train_loss": train_loss, "val_acc": val_acc,
            "passes": float(evals), "seconds": seconds, "stop": None}


def lbfgs_minibatch(data, hidden, epochs, batch_size, seed):
    """L-BFGS as SGD is used: one iteration (line search included) per mini-batch, the trainer's loop."""
    x_tr, y_tr, x_val, y_val = data
    model, loss = build_model(hidden, seed), nn.SoftmaxCrossEntropy()
    opt = optim.LBFGS(model.parameters(), max_iter=1, history_size=20, line_search_fn="strong_wolfe")
    trainer = Trainer(model, loss, opt, progress=False, seed=seed)
    start = time.perf_counter()
    trainer.fit(x_tr, y_tr, epochs=epochs, batch_size=batch_size)
    seconds = time.perf_counter() - start
    train_loss, val_acc = full_loss_and_accuracy(model, loss, x_tr, y_tr, x_val, y_val)
    passes = opt.state_dict()["lbfgs.func_evals"] * batch_size / len(x_tr)
    return {"rule": "L-BFGS mini-batch", "lr": 1.0, "train_loss": train_loss, "val_acc": val_acc,
            "passes": passes, "seconds": seconds, "stop": trainer.stop_reason}


def cifar_part(data, hidden, epochs, batch_size, lbfgs_iterations, seed, report=print):
    """One row per rule (the best of three rates), then L-BFGS full batch with the same data passes as the others,
    full batch to convergence, and mini-batch."""
    rows = []
    for name, (make, default) in RULES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DivergenceWarning)      # the rates that diverge are reported as such
            tried = [minibatch_run(name, make, default * factor, data, hidden, epochs, batch_size, seed)
                     for factor in (0.3, 1.0, 3.0)]
        best = min(tried, key=lambda r: (r["stop"] is not None, r["train_loss"]))
        rows.append(best)
        report(f"  {name:<22} " + ", ".join(f"lr {r['lr']:.3g}: " + ("diverged" if r["stop"] else
                                                                    f"{r['train_loss']:.3f}") for r in tried),
               flush=True)
    rows.append(lbfgs_full_batch(f"L-BFGS full batch, ~{epochs} evals", data, hidden, 10 * epochs, epochs, seed))
    rows.append(lbfgs_full_batch("L-BFGS full batch, {stop}", data, hidden, lbfgs_iterations,
                                 lbfgs_iterations * 5 // 4, seed))
    rows.append(lbfgs_minibatch(data, hidden, epochs, batch_size, seed))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="CIFAR-10 directory (default: $CYNET_DATA or ~/.cache/cynet, the shared "
                                       "copy, the subset)")
    parser.add_argument("--train", type=positive_int, default=2000, help="training images (default 2000)")
    parser.add_argument("--val", type=positive_int, default=1000, help="validation images (default 1000)")
    parser.add_argument("--hidden", type=positive_int, default=100, help="hidden units (default 100)")
    parser.add_argument("--epochs", type=positive_int, default=20)
    parser.add_argument("--batch-size", type=positive_int, default=100)
    parser.add_argument("--lbfgs-iterations", type=positive_int, default=200, help="full-batch L-BFGS iterations")
    parser.add_argument("--kappa", type=at_least_one, default=50.0,
                        help="the ravine's condition number, >= 1 (default 50)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    args = parser.parse_args(argv)

    print(f"part 1: the ravine f(w) = (w0^2 + {args.kappa:g} w1^2) / 2 from w = (-7, 2), along the axes and turned "
          f"by 45 degrees; each rule at its best rate (1e-4 ... 10): steps until f <= 1e-4 f(start)\n")
    ravine_rows = ravine_part(args.kappa)
    print(f"  {'rule':<22} {'along the axes':>22} {'turned 45 degrees':>22}")
    for r in ravine_rows:
        cells = []
        for shape in ("aligned", "turned"):
            steps, lr = r[shape]
            cells.append("not within 2000" if steps is None else f"{steps} steps at {lr:.3g}")
        extra = ("  (function evaluations: " + ", ".join(str(v) for v in r["evaluations"].values()) + ")"
                 if "evaluations" in r else "")
        print(f"  {r['rule']:<22} {cells[0]:>22} {cells[1]:>22}{extra}")

    with data_errors_exit("--data"):
        x_tr, y_tr, x_val, y_val, source = load_split(args.data, args.train, args.val, args.seed)
    print(f"\npart 2: 3072-{args.hidden}-ReLU-10 on {len(x_tr)} training and {len(x_val)} validation images from "
          f"{source}; {args.epochs} epochs of batches of {args.batch_size}, each rule at the best of three rates "
          f"(final training loss per rate)\n")
    rows = cifar_part((x_tr, y_tr, x_val, y_val), args.hidden, args.epochs, args.batch_size, args.lbfgs_iterations,
                      args.seed)
    print(f"\n{'rule':<32} {'lr':>7} {'train loss':>10} {'val acc':>8} {'data passes':>11} {'time':>7}")
    for r in rows:
        note = "  (diverged)" if r.get("stop") else ""
        print(f"{r['rule']:<32} {r['lr']:>7.3g} {r['train_loss']:>10.4g} {r['val_acc']:>8.1%} {r['passes']:>11.1f} "
              f"{r['seconds']:>6.1f}s{note}")
    finite = [r for r in rows if math.isfinite(r["train_loss"])]
    lowest = min(finite, key=lambda r: r["train_loss"])
    best = max(rows, key=lambda r: r["val_acc"])
    print(f"\nlowest training loss: {lowest['rule']} ({lowest['train_loss']:.4g}); best validation accuracy: "
          f"{best['rule']} ({best['val_acc']:.1%})")
    return ravine_rows, rows


if __name__ == "__main__":
    main()

"""The lecture's initialisation experiment: a 10-layer, 500-unit net on unit-Gaussian data, per-layer statistics.

Prints, for tanh and ReLU and each weight scale (0.01, 1.0, Xavier, He, zeros, and LSUV from the data), the mean and
std of every layer's activations and a verdict computed from the numbers; ``--plots DIR`` also draws each run's
per-layer histograms.

Usage:
    python examples/init_lab.py
    python examples/init_lab.py --plots init_plots --width 200
"""
import argparse
import os

from cynet.diagnostics.init_lab import INIT_SCALES, init_experiment
from cli_types import make_output_directory, non_negative_int, positive_int


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plots", metavar="DIR", help="write per-layer activation histograms (PNG) to DIR")
    parser.add_argument("--layers", type=positive_int, default=10, help="depth (default 10)")
    parser.add_argument("--width", type=positive_int, default=500, help="units per layer (default 500)")
    parser.add_argument("--samples", type=positive_int, default=1000, help="input rows (default 1000)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    args = parser.parse_args(argv)
    if args.plots:
        make_output_directory(args.plots, "--plots")
        from cynet.diagnostics.plots import plot_activation_histograms
    summary = []
    for nonlinearity in ("tanh", "relu"):
        for init in INIT_SCALES:
            result = init_experiment(nonlinearity, init, layers=args.layers, width=args.width,
                                     samples=args.samples, seed=args.seed)
            print(result)
            if init == "zeros":
                print(f"  after one SGD step all units of every layer share the same weights: "
                      f"{result.symmetric_after_step}")
            print()
            summary.append((nonlinearity, init, result.stds[0], result.stds[-1], result.verdict))
            if args.plots:
                path = os.path.join(args.plots, f"{nonlinearity}_{init}.png")
                plot_activation_histograms(result, path)
                print(f"  wrote {path}\n")
    print(f"{'nonlinearity':<13}{'init':<8}{'std layer 1':>12}{'std last':>12}  verdict")
    for nonlinearity, init, first, last, verdict in summary:
        print(f"{nonlinearity:<13}{init:<8}{first:12.3g}{last:12.3g}  {verdict}")


if __name__ == "__main__":
    main()

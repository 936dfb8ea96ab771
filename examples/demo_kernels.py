"""A short tour of cynet's kernels: configuration, every activation against the NumPy reference, and timings.

Run:  python examples/demo_kernels.py [--size N] [--threads T]
"""
import argparse
import time

import numpy as np

import cynet
from cli_types import positive_int, thread_count
from cynet import ops, reference


def best_time(fn, repeats=5):
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=positive_int, default=1024,
                        help="the input is (size, 4096) float32 (default 1024)")
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="threads for kernels and BLAS (default: $OMP_NUM_THREADS, else every CPU this process "
                             "may use)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        cynet.set_num_threads(args.threads)

    cynet.show_config()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.size, 4096)).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    alpha = np.full(x.shape[1], 0.25, np.float32)
    out, ref_out, limit_out = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    limit = best_time(lambda: np.copyto(limit_out, x))

    # name, cynet call, reference call, saved tensor for backward
    cases = [
        ("sigmoid", lambda o: ops.sigmoid_forward(x, out=o), lambda o: reference.sigmoid_forward(x, out=o)),
        ("tanh", lambda o: ops.tanh_forward(x, out=o), lambda o: reference.tanh_forward(x, out=o)),
        ("relu", lambda o: ops.relu_forward(x, out=o), lambda o: reference.relu_forward(x, out=o)),
        ("leaky_relu", lambda o: ops.leaky_relu_forward(x, 0.01, out=o),
         lambda o: reference.leaky_relu_forward(x, 0.01, out=o)),
        ("prelu", lambda o: ops.prelu_forward(x, alpha, out=o), lambda o: reference.prelu_forward(x, alpha, out=o)),
        ("elu", lambda o: ops.elu_forward(x, 1.0, out=o), lambda o: reference.elu_forward(x, 1.0, out=o)),
        ("selu", lambda o: ops.selu_forward(x, out=o), lambda o: reference.selu_forward(x, out=o)),
        ("gelu", lambda o: ops.gelu_forward(x, out=o), lambda o: reference.gelu_forward(x, out=o)),
        ("gelu_tanh", lambda o: ops.gelu_forward(x, "tanh", out=o),
         lambda o: reference.gelu_forward(x, "tanh", out=o)),
        ("silu", lambda o: ops.silu_forward(x, out=o), lambda o: reference.silu_forward(x, out=o)),
        ("silu_backward", lambda o: ops.silu_backward(dout, x, out=o),
         lambda o: reference.silu_backward(dout, x, out=o)),
    ]
    n = cynet.get_num_threads()
    print(f"\ninput (N, D) = {x.shape} float32, {n} thread{'s' if n != 1 else ''}; "
          f"memory-copy floor for these bytes: {limit * 1e3:.2f} ms\n")
    print(f"{'op':<14}{'max |cynet - numpy|':>22}{'cynet ms':>10}{'numpy ms':>10}{'speed-up':>10}{'x floor':>9}")
    for name, fast, slow in cases:
        fast(out)
        slow(ref_out)
        err = float(np.max(np.abs(out.astype(np.float64) - ref_out)))
        t_fast = best_time(lambda: fast(out))
        t_slow = best_time(lambda: slow(ref_out), repeats=2)
        print(f"{name:<14}{err:>22.3g}{t_fast * 1e3:>10.2f}{t_slow * 1e3:>10.2f}{t_slow / t_fast:>9.1f}x"
              f"{t_fast / limit:>8.2f}x")

    y, idx = ops.maxout_forward(x, pieces=2)
    y_ref, idx_ref = reference.maxout_forward(x, 2)
    print(f"\nmaxout (pieces=2): {x.shape} -> {y.shape}; equal to the reference: "
          f"{np.array_equal(y, y_ref) and np.array_equal(idx, idx_ref)}")


if __name__ == "__main__":
    main()

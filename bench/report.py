"""Turn a pytest-benchmark JSON of bench/test_bench_activations.py into a Markdown table of ratios.

    python bench/report.py bench/results/run.json

One row per (op, direction, shape, threads): median milliseconds of cynet, the NumPy reference, PyTorch and the
memory-bandwidth floor ('limit'), then cynet/limit (1.0 = as fast as copying the bytes), numpy/cynet and torch/cynet
(speed-ups: above 1 means cynet is faster). A '!' marks a row where cynet is above 1.3x the limit or slower than torch.
"""
import argparse
import json
from collections import defaultdict


def load(path):
    with open(path) as f:
        data = json.load(f)
    rows = defaultdict(dict)
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        key = (info["case"], tuple(info["shape"]), info["threads"])
        rows[key][info["impl"]] = bench["stats"]["median"] * 1e3
    return data.get("machine_info", {}), rows


def fmt(value, spec=".2f"):
    return "—" if value is None else format(value, spec)


def table(rows, limit_target=1.3):
    lines = ["| op | shape | threads | cynet ms | numpy ms | torch ms | limit ms | cynet/limit | numpy/cynet "
             "| torch/cynet |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (case, shape, threads), t in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        c, n, tr, lim = (t.get(k) for k in ("cynet", "numpy", "torch", "limit"))
        vs_limit = c / lim if c and lim else None
        vs_numpy = n / c if c and n else None
        vs_torch = tr / c if c and tr else None
        flag = " !" if (vs_limit and vs_limit > limit_target) or (vs_torch and vs_torch < 1) else ""
        lines.append(f"| {case}{flag} | {shape[0]}x{shape[1]} | {threads} | {fmt(c)} | {fmt(n, '.1f')} | "
                     f"{fmt(tr)} | {fmt(lim)} | {fmt(vs_limit)} | {fmt(vs_numpy, '.1f')} | {fmt(vs_torch)} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark JSON (--benchmark-json=...)")
    args = parser.parse_args()
    machine, rows = load(args.json)
    cpu = machine.get("cpu", {}).get("brand_raw", "?")
    print(f"CPU: {cpu}; cores: {machine.get('cpu', {}).get('count', '?')}\n")
    print(table(rows))


if __name__ == "__main__":
    main()

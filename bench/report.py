"""Markdown ratio tables from a pytest-benchmark JSON of the suite in bench/.

    python bench/report.py bench/results/run.json [more.json ...] [--flag-limit 1.3]

One row per (op, direction, shape, threads), in run order: the median milliseconds of cynet, the NumPy reference,
torch and the memory-bandwidth floor, then

- cynet/limit:  cynet's time over the floor's (1.00 = as fast as moving the op's bytes);
- numpy/cynet:  speed-up over the NumPy reference (above 1: cynet is faster);
- torch/cynet:  speed-up over torch (above 1: cynet is faster; below 1: torch is faster).

The floor ('limit') is the fastest of the floor benchmarks of the row: NumPy (``limit``, one thread), torch
(``limit_torch``, the row's thread count) and cynet's streaming pass (``limit_stream``, non-temporal stores on the
row's thread count); the 'floor' column says which (np, torch, nt). The optimiser steps have one floor of their own,
``limit_inplace`` (in-place: the step's arrays read and written back in place on the row's threads). A row is
flagged when cynet/limit is above --flag-limit (default 1.3) or when torch is faster than cynet. A dagger on a torch
time points to a footnote: that torch path does not do exactly cynet's work (it allocates, or moves more bytes); see
the notes under the table.

Benchmarks without an ``op`` (a training epoch, a search, a monitored epoch) go into a second table, one row per
pytest-benchmark group: the median seconds of every implementation of the group and each one's ratio to the
group's baseline (``floor`` where the group has one, else ``limit``, else ``serial``, else ``plain``, else its
first implementation: a group with a ``limit`` reads cynet/limit the same way round as the op table).

Ordinary stores (``np.copyto``, ``np.add``, torch's ``copy_``/``add``) read each written line first (write-allocate):
3 transfers per copied byte and 4 per added one. Non-temporal stores skip that read, and cynet writes outputs of 32
MiB or more with them; out of cache the streaming floor is therefore the one to beat, in cache the ordinary stores
win. A file from before the streaming floor existed has no ``limit_stream``: its cynet/limit at (4096, 4096) and for
BatchNorm2d's (128, 64, 32, 32) is flattered (ratios below 1 were possible).

Several JSON files (runs of one suite at different thread counts, say) make one table, rows in the order the runs
met them and each op's rows by thread count; the header describes the first file. ``--scaling`` prints instead one
row per op with cynet's time at every thread count.

Standard library only.
"""
import argparse
import json
import sys

FLOORS = (("np", "limit"), ("torch", "limit_torch"), ("nt", "limit_stream"), ("in-place", "limit_inplace"))
IMPLS = ("cynet", "numpy", "torch") + tuple(impl for _, impl in FLOORS)
BASELINES = ("floor", "floor (interleaved)", "limit", "serial", "plain")


def load(paths):
    """The first file's run data and the rows, notes and torch_differs flags of all files (a list of paths), in the
    order given."""
    datas = []
    for path in paths:
        with open(path) as f:
            datas.append(json.load(f))
    data = dict(datas[0], benchmarks=[bench for d in datas for bench in d.get("benchmarks", [])])
    rows = {}        # (op, direction, shape, threads) -> {impl: median ms}
    notes = {}       # (op, direction, impl) -> note
    differs = set()  # (op, direction) where torch's path does more work than cynet's
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if info.get("impl") not in IMPLS or "op" not in info:
            continue
        key = (info["op"], info["direction"], info["shape"], int(info["threads"]))
        rows.setdefault(key, {})[info["impl"]] = bench["stats"]["median"] * 1e3
        if info.get("note"):
            notes[(info["op"], info["direction"], info["impl"])] = info["note"]
        if info.get("torch_differs"):
            differs.add((info["op"], info["direction"]))
    first_seen = {}  # rows of one (op, direction, shape) together, its thread counts in increasing order
    for key in rows:
        first_seen.setdefault(key[:3], len(first_seen))
    rows = dict(sorted(rows.items(), key=lambda item: (first_seen[item[0][:3]], item[0][3])))
    return data, rows, notes, differs


def load_groups(data):
    """{group: {impl: median seconds}} of the benchmarks that are not per-op kernel timings, in run order."""
    groups = {}
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "op" in info or "impl" not in info:
            continue
        group = groups.setdefault(bench.get("group") or bench["name"], {})
        group[info["impl"]] = bench["stats"]["median"]
        if "interleaved_floor_median" in info:       # test_epoch_interleaved_with_the_floor
            group["floor (interleaved)"] = info["interleaved_floor_median"]
            group["median of the per-round ratios"] = info["ratio_to_floor_median"]
        if "ratio_to_each_floor_median" in info:     # the same, against each floor of the round on its own
            group["median per floor"] = info["ratio_to_each_floor_median"]
        if "ratio_to_bound_median" in info:          # against slower passes that are not floors (two-pass)
            group["median per bound"] = info["ratio_to_bound_median"]
        if "interleaved_torch_median" in info:       # test_activation_interleaved_with_the_floor, torch importable
            group["torch (interleaved)"] = info["interleaved_torch_median"]
            group["median of torch / cynet per round"] = info["torch_over_cynet_median"]
    return groups


def group_table(groups):
    out = ["| group | baseline | implementations: median (ratio to the baseline) |", "|---|---|---|"]
    for group, times in groups.items():
        ratio_median = times.pop("median of the per-round ratios", None)
        torch_ratio_median = times.pop("median of torch / cynet per round", None)
        per_floor = times.pop("median per floor", None)
        per_bound = times.pop("median per bound", None)
        base = next((b for b in BASELINES if b in times), next(iter(times)))
        cells = [f"{impl} {fmt_seconds(times[impl])} ({times[impl] / times[base]:.2f})" for impl in times]
        if ratio_median is not None:
            cells.append(f"cynet / floor round by round: median {ratio_median:.3f}")
        if per_floor:
            cells.append("by floor: " + ", ".join(f"{name} {value:.3f}" for name, value in per_floor.items()))
        if per_bound:
            cells.append("against " + ", ".join(f"the {name} bound {value:.3f}" for name, value in per_bound.items()))
        if torch_ratio_median is not None:
            cells.append(f"torch / cynet round by round: median {torch_ratio_median:.3f}")
        out.append(f"| {group} | {base} | {'; '.join(cells)} |")
    return "\n".join(out)


def fmt_seconds(value):
    """A group's median: in seconds from one second up, else in milliseconds (to the microsecond below 1 ms, where
    two decimals would leave one or two significant digits)."""
    if value >= 1:
        return f"{value:.3f} s"
    return f"{value * 1e3:.2f} ms" if value >= 1e-3 else f"{value * 1e3:.3f} ms"


def fmt_ms(value):
    if value is None:
        return "—"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def fmt_ratio(value, digits=2):
    return "—" if value is None else f"{value:.{digits}f}"


def fmt_direction(direction):
    """'for' / 'bac' for the kernels' two directions; any other (the loss's 'forward+backward', the optimisers'
    'step') in full: its first three letters would read as a forward."""
    return {"forward": "for", "backward": "bac"}.get(direction, direction)


def ratio(a, b):
    return a / b if a is not None and b else None


def header(data):
    m = data.get("machine_info", {})
    c = m.get("cynet_bench", {})
    commit = data.get("commit_info", {})
    cpu = m.get("cpu", {})
    lines = [
        f"- run: {data.get('datetime', '?')}, commit {str(commit.get('id', '?'))[:10]}"
        f"{' (dirty)' if commit.get('dirty') else ''}, wall {c.get('wall_seconds', '?')} s",
        f"- machine: {cpu.get('brand_raw', '?')}, {c.get('available_cpus', cpu.get('count', '?'))} CPUs; "
        f"Python {m.get('python_version', '?')}",
        f"- cynet {c.get('cynet', '?')} (SIMD {c.get('simd', '?')}, OpenMP runtime "
        f"{', '.join(c.get('openmp_runtimes', [])) or '?'}), NumPy {c.get('numpy', '?')}, torch {c.get('torch')}",
    ]
    if "foreign_cpu_fraction" in c:
        frac = c["foreign_cpu_fraction"]
        warn = " — **other processes were busy: treat the numbers as noisy**" if frac > 0.05 else ""
        lines.append(f"- CPU used by other processes during the run: {c['foreign_cpu_seconds']} s "
                     f"({100 * frac:.1f}% of the machine), steal {c.get('steal_seconds', '?')} s; load average "
                     f"at start {c.get('loadavg_start')}{warn}")
    return "\n".join(lines)


def table(rows, differs, flag_limit):
    out = ["| op | dir | shape | thr | cynet ms | numpy ms | torch ms | limit ms | floor | cynet/limit "
           "| numpy/cynet | torch/cynet | flag |",
           "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    flagged = []
    for (op, direction, shape, threads), t in rows.items():
        cynet, numpy, torch = t.get("cynet"), t.get("numpy"), t.get("torch")
        floors = {name: t[impl] for name, impl in FLOORS if impl in t}
        floor_by = min(floors, key=floors.get) if floors else None
        limit = floors.get(floor_by)
        vs_limit, vs_numpy, vs_torch = ratio(cynet, limit), ratio(numpy, cynet), ratio(torch, cynet)
        flags = []
        if vs_limit is not None and vs_limit > flag_limit:
            flags.append(f"> {flag_limit}x limit")
        if vs_torch is not None and vs_torch < 1:
            flags.append("slower than torch")
        if flags:
            flagged.append((op, direction, shape, threads))
        dagger = "†" if torch is not None and (op, direction) in differs else ""
        out.append(f"| {op} | {fmt_direction(direction)} | {shape} | {threads} | {fmt_ms(cynet)} | {fmt_ms(numpy)} | "
                   f"{fmt_ms(torch)}{dagger} | {fmt_ms(limit)} | {floor_by or '—'} | {fmt_ratio(vs_limit)} | "
                   f"{fmt_ratio(vs_numpy, 1)} | {fmt_ratio(vs_torch)} | "
                   f"{'**' + '; '.join(flags) + '**' if flags else ''} |")
    return "\n".join(out), flagged


def scaling_table(rows):
    """One row per (op, direction, shape): cynet's median ms at each thread count, then, at the largest count, the
    speed-up over cynet on the smallest count, cynet over the floor and torch over cynet."""
    counts = sorted({key[3] for key in rows})
    ops = list(dict.fromkeys(key[:3] for key in rows))
    head = " | ".join(f"t{n} ms" for n in counts)
    top, low = counts[-1], counts[0]
    out = [f"| op | dir | shape | {head} | t{low}/t{top} | cynet/limit t{top} | torch/cynet t{top} |",
           "|---|---|---|" + "---:|" * (len(counts) + 3)]
    for op, direction, shape in ops:
        times = {n: rows.get((op, direction, shape, n), {}) for n in counts}
        last = times[top]
        floors = [last[impl] for _, impl in FLOORS if impl in last]
        cells = " | ".join(fmt_ms(times[n].get("cynet")) for n in counts)
        out.append(f"| {op} | {fmt_direction(direction)} | {shape} | {cells} | "
                   f"{fmt_ratio(ratio(times[low].get('cynet'), last.get('cynet')), 1)} | "
                   f"{fmt_ratio(ratio(last.get('cynet'), min(floors) if floors else None))} | "
                   f"{fmt_ratio(ratio(last.get('torch'), last.get('cynet')))} |")
    return "\n".join(out)


def footnotes(notes, differs):
    lines = ["Torch paths (notes; † in the table: torch does more work than cynet there, so torch/cynet flatters "
             "cynet):\n"]
    lines += [f"- {op} {d}{' †' if (op, d) in differs else ''}: {n}"
              for (op, d, impl), n in notes.items() if impl == "torch"]
    by_note = {}
    for (op, d, impl), n in notes.items():
        if impl.startswith("limit"):
            by_note.setdefault(n, []).append(f"{op} {d}")
    lines.append("\nFloors ('limit': NumPy on one thread; 'limit_torch': the same arrays moved by torch on the row's "
                 "threads; 'limit_stream': non-temporal stores on the row's threads; 'limit_inplace': an optimiser "
                 "step's arrays updated in place):\n")
    lines += [f"- {n} — {', '.join(cases)}" for n, cases in by_note.items()]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON written with --benchmark-json=...")
    parser.add_argument("--flag-limit", type=float, default=1.3,
                        help="flag rows where cynet/limit is above this (default 1.3)")
    parser.add_argument("--no-notes", action="store_true", help="print the table only")
    parser.add_argument("--scaling", action="store_true",
                        help="one row per op with cynet's time at every thread count (runs of bench/scaling.sh)")
    args = parser.parse_args(argv)
    try:
        data, rows, notes, differs = load(args.json)
    except (OSError, ValueError) as exc:       # a missing file (an unexpanded glob), a JSON cut short
        print(f"report.py: cannot read {getattr(exc, 'filename', None) or ', '.join(args.json)}: {exc}",
              file=sys.stderr)
        return 2
    groups = load_groups(data)
    if not rows and not groups:
        print(f"{', '.join(args.json)}: no benchmarks of bench/ in these files", file=sys.stderr)
        return 1
    if not args.no_notes:
        print(header(data) + "\n")
    if rows and args.scaling:
        print(scaling_table(rows))
    elif rows:
        body, flagged = table(rows, differs, args.flag_limit)
        print(body)
        if not args.no_notes:
            print(f"\n{len(flagged)} of {len(rows)} rows flagged (cynet/limit > {args.flag_limit} or slower than "
                  f"torch).")
            print("\n" + footnotes(notes, differs))
    if groups:
        print(("\n" if rows else "") + group_table(groups))
    return 0


if __name__ == "__main__":
    sys.exit(main())

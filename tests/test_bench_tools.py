"""The benchmark suite's own tools (bench/settings.py, bench/report.py): the thread-count setting, the floors' memory
passes and the reports built from several runs. The benchmarks themselves are timed, not tested; these are plain
functions."""
import importlib.util
import json
import pathlib

import numpy as np
import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"


def _module(name):
    spec = importlib.util.spec_from_file_location(f"cynet_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


settings = _module("settings")
report = _module("report")


@pytest.mark.parametrize("text,expected", [("1, 4,16", [1, 4, 16]), ("", [1, 2]), ("  ", [1, 2]), ("8", [8])])
def test_bench_threads_parses_the_environment_variable(text, expected):
    assert settings.bench_threads({"CYNET_BENCH_THREADS": text}) == expected


@pytest.mark.parametrize("text", ["0", "1,-2", "two", "1,,x"])
def test_bench_threads_refuses_what_is_not_positive_integers(text):
    with pytest.raises(ValueError, match="CYNET_BENCH_THREADS"):
        settings.bench_threads({"CYNET_BENCH_THREADS": text})


@pytest.mark.parametrize("use_torch", [False, True], ids=["numpy", "torch"])
def test_memory_pass_moves_the_bytes_it_names(use_torch):
    torch = pytest.importorskip("torch") if use_torch else None
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 10, np.float32)
    out = np.zeros((2, 3), np.float32)
    settings.memory_pass("copy", [a], out, torch)()
    np.testing.assert_array_equal(out, a)
    settings.memory_pass("add", [a, b], out, torch)()
    np.testing.assert_array_equal(out, [[10, 11, 12], [13, 14, 15]])      # written in place, into `out`
    with pytest.raises(ValueError, match="memory_pass: kind"):
        settings.memory_pass("scale", [a], out, torch)


def test_streaming_and_in_place_passes_move_the_bytes_they_name():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 10, np.float32)
    out = np.zeros((2, 3), np.float32)
    settings.memory_pass("copy", [a], out, stream_threads=2)()
    np.testing.assert_array_equal(out, a)
    settings.memory_pass("add", [a, b], out, stream_threads=1)()
    np.testing.assert_array_equal(out, [[10, 11, 12], [13, 14, 15]])
    with pytest.raises(ValueError, match="C-contiguous"):
        settings.memory_pass("copy", [a.T], out.T, stream_threads=1)
    calls = []
    memory = settings_memory()
    original = memory.count_nonzero
    try:
        memory.count_nonzero = lambda array, threads: calls.append(array.copy()) or original(array, threads)
        settings.memory_pass("add", [a, b], out, stream_threads=2, read_first=True)()
    finally:
        memory.count_nonzero = original
    np.testing.assert_array_equal(out, [[10, 11, 12], [13, 14, 15]])
    assert len(calls) == 2 and np.array_equal(calls[0], a.ravel()) and np.array_equal(calls[1], b.ravel())
    with pytest.raises(ValueError, match="read_first goes with stream_threads"):
        settings.memory_pass("copy", [a], out, read_first=True)
    targets = np.ones((3, 4), np.float32)
    step = settings.in_place_pass(targets, np.arange(4, dtype=np.float32), 2)
    step()
    step()
    np.testing.assert_array_equal(targets, np.tile([1, 3, 5, 7], (3, 1)))


def test_report_takes_the_fastest_of_the_three_floors():
    rows = {("relu", "forward", "4096x4096", 2): {"cynet": 3.0, "limit": 6.0, "limit_torch": 4.0,
                                                  "limit_stream": 2.5}}
    body, flagged = report.table(rows, set(), 1.3)
    line = body.splitlines()[-1]
    # the streaming floor (2.5 ms) is the limit: cynet / limit = 1.2, not flagged at 1.3
    assert "| 2.500 | nt | 1.20 |" in line and not flagged
    rows[("relu", "forward", "4096x4096", 2)]["limit_stream"] = 2.0
    body, flagged = report.table(rows, set(), 1.3)
    assert "| 2.000 | nt | 1.50 |" in body and flagged == [("relu", "forward", "4096x4096", 2)]


def _run(path, threads, times):
    """A pytest-benchmark JSON with one (op, direction, shape) group at ``threads``: {impl: median seconds}."""
    benchmarks = [{"name": f"relu-{impl}-t{threads}", "group": f"relu/forward/8x8/t{threads}",
                   "stats": {"median": seconds},
                   "extra_info": {"op": "relu", "direction": "forward", "shape": "8x8", "threads": threads,
                                  "impl": impl}}
                  for impl, seconds in times.items()]
    path.write_text(json.dumps({"benchmarks": benchmarks, "machine_info": {}, "commit_info": {}}))
    return str(path)


def test_report_merges_runs_and_prints_one_scaling_row_per_op(tmp_path):
    # two runs given in the order t4, t1: the rows come back t1, t4
    t4 = _run(tmp_path / "t4.json", 4, {"cynet": 0.002, "torch": 0.003, "limit_torch": 0.001})
    t1 = _run(tmp_path / "t1.json", 1, {"cynet": 0.010, "torch": 0.012, "limit": 0.005})
    _, rows, _, _ = report.load([t4, t1])
    assert list(rows) == [("relu", "forward", "8x8", 1), ("relu", "forward", "8x8", 4)]
    assert rows[("relu", "forward", "8x8", 4)] == {"cynet": 2.0, "torch": 3.0, "limit_torch": 1.0}
    line = report.scaling_table(rows).splitlines()[-1]
    # t1 10 ms, t4 2 ms; t1/t4 = 5.0; at t4 cynet / floor = 2 / 1, torch / cynet = 3 / 2
    assert line == "| relu | for | 8x8 | 10.0 | 2.000 | 5.0 | 2.00 | 1.50 |"


def settings_memory():
    from cynet._kernels import load
    return load("memory")


def test_interleaved_rounds_record_the_ratio_to_each_floor(monkeypatch):
    # a fake clock: each floor call takes the time listed for it, round by round (np 4 and 6 ms, nt 2 and 3 ms), then
    # the two-pass bound (8 and 3 ms)
    durations = iter([0.004, 0.002, 0.008, 0.006, 0.003, 0.003])
    clock = {"now": 0.0, "pending": None}

    def perf_counter():
        if clock["pending"] is None:                  # a call starts
            clock["pending"] = next(durations)
            return clock["now"]
        clock["now"] += clock["pending"]              # ... and ends
        clock["pending"] = None
        return clock["now"]

    monkeypatch.setattr(settings.time, "perf_counter", perf_counter)
    rounds = settings.InterleavedRounds([lambda: None, lambda: None], names=["np", "nt"],
                                        bounds={"two-pass": lambda: None})
    rounds()
    rounds()

    class Stats:                                      # what pytest-benchmark's fixture holds: cynet 4 and 6 ms
        class stats:
            data = [0.004, 0.006]

    class Benchmark:
        extra_info = {}
        stats = Stats

    rounds.record(Benchmark, impl="cynet")
    info = Benchmark.extra_info
    assert info["ratio_to_floor_median"] == pytest.approx(2.0)           # against the faster floor (nt) each round
    assert info["ratio_to_each_floor_median"] == pytest.approx({"np": 1.0, "nt": 2.0})
    assert info["interleaved_floor_median"] == pytest.approx(0.0025)
    assert info["ratio_to_bound_median"] == pytest.approx({"two-pass": (0.5 + 2.0) / 2})   # 4/8 and 6/3


def test_report_prints_the_interleaved_ratios_to_each_floor_and_bound():
    data = {"benchmarks": [{"name": "bn", "group": "batchnorm_interleaved/forward/8x8/t2", "stats": {"median": 0.004},
                            "extra_info": {"impl": "cynet", "interleaved_floor_median": 0.002,
                                           "ratio_to_floor_median": 2.0,
                                           "ratio_to_each_floor_median": {"np": 1.25, "nt": 2.0},
                                           "ratio_to_bound_median": {"two-pass": 1.2}}}]}
    line = report.group_table(report.load_groups(data)).splitlines()[-1]
    assert "by floor: np 1.250, nt 2.000" in line and "against the two-pass bound 1.200" in line


def test_report_spells_out_directions_other_than_forward_and_backward():
    # the loss is timed forward+backward, the optimisers' step is a step: neither is a forward
    rows = {("relu", "forward", "8x8", 1): {"cynet": 1.0},
            ("relu", "backward", "8x8", 1): {"cynet": 1.0},
            ("softmax_ce", "forward+backward", "8x8", 1): {"cynet": 1.0},
            ("optim_adam", "step", "8x8", 1): {"cynet": 1.0}}
    body, _ = report.table(rows, set(), 1.3)
    dirs = [line.split(" | ")[1] for line in body.splitlines()[2:]]
    assert dirs == ["for", "bac", "forward+backward", "step"]
    dirs = [line.split(" | ")[1] for line in report.scaling_table(rows).splitlines()[2:]]
    assert dirs == ["for", "bac", "forward+backward", "step"]


def test_report_prints_sub_millisecond_group_medians_to_the_microsecond():
    # bias_relu / dropout at (256, 1024) take tens of microseconds: 54 us and 46 us must not both read "0.05 ms"
    groups = {"bias_relu/forward/256x1024/t1": {"cynet": 54e-6, "limit": 46e-6}}
    line = report.group_table(groups).splitlines()[-1]
    assert "cynet 0.054 ms (1.17)" in line and "limit 0.046 ms (1.00)" in line
    assert report.fmt_seconds(2.5e-3) == "2.50 ms" and report.fmt_seconds(1.25) == "1.250 s"


def test_foreign_cpu_fraction_is_of_the_cpus_proc_stat_counts(monkeypatch):
    # /proc/stat sums every CPU of the machine; a run pinned to 1 of its 4 CPUs (taskset, a cgroup quota) must not
    # divide the machine's foreign CPU time by one CPU's capacity (3 s over 10 s read as 30 %, not 7.5 %)
    conftest = _module("conftest")
    monkeypatch.setattr(conftest.cynet, "available_cpus", lambda: 1)
    monkeypatch.setattr(conftest, "_stat_cpus", lambda: 4, raising=False)
    monkeypatch.setattr(conftest, "_cpu_busy_seconds", lambda: (113.0, 0.0))     # 13 s busy in all
    monkeypatch.setattr(conftest, "_own_cpu_seconds", lambda: 10.0)              # 10 s of it this run's
    monkeypatch.setattr(conftest.time, "perf_counter", lambda: 110.0)
    conftest._session.update(wall=100.0, busy=100.0, steal=0.0, own=0.0, loadavg=None)
    machine_info = {}
    conftest.pytest_benchmark_update_machine_info(None, machine_info)
    info = machine_info["cynet_bench"]
    assert info["foreign_cpu_seconds"] == 3.0 and info["foreign_cpu_fraction"] == 0.075


def test_report_names_a_file_it_cannot_read(tmp_path, capsys):
    # bench/scaling.sh passes its glob as is when every run of a suite timed out: one line, not a traceback
    bad = tmp_path / "cut.json"
    bad.write_text('{"benchmarks": [')
    assert report.main([str(tmp_path / "activations-t*.json")]) == 2
    assert "activations-t*.json" in capsys.readouterr().err
    assert report.main([str(bad)]) == 2
    assert "cut.json" in capsys.readouterr().err


@pytest.mark.parametrize("bench_time", [float("nan"), float("inf"), 0.0, -1.0])
def test_timing_policy_refuses_a_bench_time_that_is_not_a_finite_positive_number(bench_time):
    # nan and inf passed the check and crashed every benchmark in math.ceil(bench_time / cost)
    conftest = _module("conftest")
    with pytest.raises(pytest.UsageError, match="--bench-time must be a finite number > 0"):
        conftest.TimingPolicy(bench_time, 3, 100)
    assert conftest.TimingPolicy(0.25, 3, 100).bench_time == 0.25


def test_scaling_script_times_every_floor_of_the_rows_it_reports():
    # out of cache the streaming floor is the fastest; without it the scaling tables' cynet/limit read low
    script = (BENCH / "scaling.sh").read_text()
    selections = [line for line in script.splitlines() if line.strip().startswith("-k")]
    assert len(selections) == 3
    for line in selections[:2]:
        assert "limit_stream" in line and "limit_torch" in line

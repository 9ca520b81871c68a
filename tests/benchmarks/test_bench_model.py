"""benchmarks/bench_model.py --one-core times the training step with Numba's loops and the
BLAS on one thread and no tasks side by side, stage by stage, and prints it beside the step
on every core."""

import json

import numba
from _scripts import load_benchmark, run_benchmark

STAGES = {"backbone + FPN forward", "heads forward (subnets side by side)",
          "heads backward (input gradients)", "backbone + FPN backward (queue beside)"}


def test_the_one_core_part_runs_on_one_thread_and_times_every_stage():
    out = run_benchmark("bench_model", "--only", "train", "--quick", "--one-core", timeout=600)
    one = json.loads(out.strip().splitlines()[-1])
    assert one["threads"] == 1
    assert STAGES <= set(one["per_stage_seconds"])
    assert all(sec > 0 for sec in one["per_stage_seconds"].values())
    assert 0 < sum(one["per_stage_seconds"].values()) <= one["mean_seconds_per_step"]


def test_the_one_core_table_gives_each_stage_on_one_core_and_on_all(capsys):
    bench = load_benchmark("bench_model")
    heads, backbone, queue = bench.BACKWARD_STAGES
    two = {"seconds_per_step": 0.05, "threads": numba.get_num_threads(),
           "per_stage_seconds": {"backbone + FPN forward": 0.015, "loss": 0.001,
                                 heads: 0.010, backbone: 0.016, queue: 0.002}}
    one = {"seconds_per_step": 0.08,
           "per_stage_seconds": {"backbone + FPN forward": 0.018, "loss": 0.002,
                                 heads: 0.018, backbone: 0.016, queue: 0.020}}
    bench._print_one_core(two, one)
    out = capsys.readouterr().out
    assert "step 80.0 ms against 50.0 ms" in out and "1.60x from the other cores" in out
    lines = {line.strip().split("  ")[0]: line for line in out.splitlines()[2:]}
    assert lines["backbone + FPN forward"].split()[-5:] == ["18.0", "ms", "15.0", "ms", "1.20x"]
    assert lines["loss"].split()[-1] == "2.00x"
    assert lines["the backward (the three stages above)"].split()[-5:] == [
        "54.0", "ms", "28.0", "ms", "1.93x"]

"""benchmarks/bench_twin_stages.py (needs torch): one timed step prints the twin's stages and
its backbone's modules, each with a time, and their sum."""

import re

import pytest
from _scripts import run_benchmark

pytest.importorskip("torch")


def test_one_step_prints_every_stage_and_module_with_a_time():
    out = run_benchmark("bench_twin_stages", "--steps", "1")
    names = ["backbone + FPN forward", "heads forward", "loss, backward and update",
             "stem convolution", "its batch norm and ReLU", "max pooling", "layer1", "layer2",
             "layer3", "layer4", "FPN"]
    times = {}
    for line in out.splitlines():
        match = re.fullmatch(r"  (.+?)\s+(\d+\.\d\d)", line)
        if match:
            times.setdefault(match.group(1), []).append(float(match.group(2)))
    assert all(times.get(name, [0])[0] > 0 for name in names), out
    assert len(times["all"]) == 2  # one sum per table
    stages = sum(times[n][0] for n in names[:3])
    assert times["all"][0] == pytest.approx(stages, abs=0.02)

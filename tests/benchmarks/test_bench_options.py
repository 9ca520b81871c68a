"""benchmarks/bench_options.py reads its variants as kernel options and environment changes,
and refuses a name the kernel options do not have before it runs anything;
benchmarks/bench_handoff.py prints its three hand-overs on one CPU and across two, and the
two spinning ones across two."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _scripts import load_benchmark, run_benchmark

REPO = Path(__file__).resolve().parents[2]


def test_variants_are_options_and_environment():
    parse = load_benchmark("bench_options")._parse
    assert parse("") == ({}, {})
    assert parse("serial_max_elements=65536, winograd=False") == (
        {"serial_max_elements": 65536, "winograd": False}, {})
    assert parse("env:GOMP_SPINCOUNT=0,cols_max_columns=1024") == (
        {"cols_max_columns": 1024}, {"GOMP_SPINCOUNT": "0"})
    for bad in ("winograd", "cols_max_columns=many"):
        with pytest.raises(SystemExit):
            parse(bad)


def test_an_unknown_option_fails_before_any_run():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_options.py"),
                           "--runs", "1", "", "no_such_option=1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no_such_option" in done.stderr and "round 1" not in done.stdout


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs to hand work between")
def test_handoff_prints_each_way_on_one_cpu_and_across():
    out = run_benchmark("bench_handoff", "--calls", "50")
    rows = re.findall(r"^(\S.+?)\s+(\d+\.\d)\s+(\d+\.\d)$", out, re.MULTILINE)
    assert [name for name, _, _ in rows] == [
        "threads.side_by_side, two empty tasks", "Numba prange over 2 threads, empty body",
        "SimpleQueue round trip between two threads"], out
    assert all(float(a) > 0 and float(b) > 0 for _, a, b in rows)
    assert "same CPU" in out and "across CPUs" in out
    spinning = re.findall(r"^(spinning worker, .+?)\s+-\s+(\d+\.\d)$", out, re.MULTILINE)
    assert [name for name, _ in spinning] == [
        "spinning worker, nobody waits asleep (nogil)",
        "spinning worker, done said holding the GIL"], out
    assert all(float(us) > 0 for _, us in spinning)

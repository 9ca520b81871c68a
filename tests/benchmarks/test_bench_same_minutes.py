"""benchmarks/bench_same_minutes.py: a run of the retina_np side writes its JSON line and the
table; the torch sides are skipped, with a reason and exit status 0, where torch is missing."""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _scripts import load_benchmark

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_same_minutes.py"


def _run(args, pythonpath=(), timeout=120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, pythonpath), str(REPO)]))
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_recipe_is_the_demos():
    from retina_np.demo import run_demo

    demo = {k: v.default for k, v in inspect.signature(run_demo).parameters.items()}
    recipe = load_benchmark("bench_same_minutes").DEMO
    assert {k: demo[k] for k in recipe} == recipe


def test_retina_np_run_writes_its_json_line_and_the_table(tmp_path):
    results = tmp_path / "results.jsonl"
    done = _run(["--quick", "--sides", "retina_np", "--minutes", "0.04", "--train-images", "64",
                 "--val-images", "4", "--results", str(results)])
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = results.read_text().splitlines()
    run = json.loads(line)
    assert run["side"] == "retina_np"
    assert run["minutes"] == 0.04 and run["val_images"] == 4 and run["train_images"] == 64
    assert run["steps"] >= 1
    # the clock ends the run after the step that passes the budget
    assert run["train_seconds"] >= 0.04 * 60
    assert run["steps_per_s"] == pytest.approx(run["steps"] / run["train_seconds"])
    assert run["images_per_s"] == pytest.approx(run["batch_size"] * run["steps_per_s"])
    for name in ("AP", "AP50", "AP75"):
        assert -1.0 <= run[name] <= 1.0
    assert run["warmup_seconds"] > 0 and "before the clock" in run["warmup"]
    assert run["cpu_model"] and run["cores"] >= 1 and run["numba_version"]
    assert run["torch_version"] is None  # this side never imports torch
    assert "retina_np" in done.stdout and "median" in done.stdout


def test_torch_sides_are_skipped_without_torch(tmp_path):
    # a torch that cannot be imported, whether or not this environment has the real one
    (tmp_path / "torch.py").write_text("raise ImportError('no torch in this test')\n")
    results = tmp_path / "results.jsonl"
    done = _run(["--quick", "--sides", "twin,torchvision", "--results", str(results)],
                pythonpath=[tmp_path])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("skipping twin, torchvision:")
    assert "cannot import torch" in done.stdout
    assert len(done.stdout.splitlines()) == 1
    assert not results.exists()

"""Data-parallel training with a real ``mpiexec -n 2`` (retina_np/distributed.py): the jobs
are tests/distributed/mpi_job.py, each started as a subprocess with a timeout. Skipped where
mpi4py or mpiexec is missing (``pip install -e ".[mpi]"`` brings both; CI has them)."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mpi4py")

import mpi_job  # noqa: E402  (tests/distributed is on sys.path: no __init__.py)

from retina_np import distributed  # noqa: E402
from retina_np.checkpoint import load_checkpoint  # noqa: E402
from retina_np.data import DataLoader  # noqa: E402
from retina_np.train import read_log  # noqa: E402

JOB = Path(mpi_job.__file__)
STEPS, BATCH = 4, 4  # a global batch of 4: 2 images per rank
# Starting two Pythons that import numba and load the cached kernels takes about 7 s here.
TIMEOUT_S = 120


def mpiexec(*args, ranks=2, check=True):
    try:
        launcher = distributed.mpiexec()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    cmd = [launcher, "-n", str(ranks), sys.executable, str(JOB), *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}")
    return done


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||a|| (0 for two zero arrays)."""
    norm = np.linalg.norm(a.astype(np.float64))
    diff = np.linalg.norm(a.astype(np.float64) - b)
    return 0.0 if diff == 0 else diff / norm


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """An uninterrupted 2-rank run: 4 SGD steps at a global batch of 4."""
    out = tmp_path_factory.mktemp("two_ranks")
    mpiexec("train", out, STEPS, BATCH)
    return out


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float64", 1e-12)])
def test_two_ranks_train_as_one_process_on_the_whole_batch(tmp_path, two_ranks, dtype,
                                                           tolerance):
    """2 ranks x 2 images = 1 process x 4 images, batch norm in training mode (synchronised):
    every parameter and running statistic after 4 steps, and every step's loss."""
    if dtype == "float32":
        ranks_out = two_ranks
    else:
        ranks_out = tmp_path / "ranks"
        mpiexec("train", ranks_out, STEPS, BATCH, "--dtype", dtype)
    mpi_job.run_train(tmp_path / "one", STEPS, BATCH, dtype, crash_at=0, resume=False)
    one = load_checkpoint(tmp_path / "one" / "final.npz").state_dict
    ranks = load_checkpoint(ranks_out / "final.npz").state_dict
    assert one.keys() == ranks.keys()
    assert any("running_var" in name for name in one)  # batch norm in training mode
    worst = max(one, key=lambda k: relative_difference(one[k], ranks[k]))
    assert relative_difference(one[worst], ranks[worst]) < tolerance, worst
    losses = [[r["total"] for r in read_log(d / "log.jsonl")] for d in (tmp_path / "one",
                                                                        ranks_out)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=tolerance)


def test_the_averaged_gradient_is_the_mean_of_the_ranks(tmp_path):
    """Every rank ends with (g0 + g1) / 2, and that is the gradient of one process on the
    whole batch."""
    mpiexec("grads", tmp_path)
    g0, g1, a0, a1 = (np.load(tmp_path / f"{what}_rank{r}.npz")
                      for what, r in (("grads", 0), ("grads", 1), ("average", 0), ("average", 1)))
    for name in g0.files:
        np.testing.assert_array_equal(a0[name], (g0[name] + g1[name]) / 2, err_msg=name)
        np.testing.assert_array_equal(a1[name], a0[name], err_msg=name)
    assert any(not np.array_equal(g0[n], g1[n]) for n in g0.files)  # the shares differ

    net = mpi_job.model().train()
    c = net.config
    loader = DataLoader(mpi_job.dataset(), 4, seed=0, size_divisible=c.size_divisible,
                        image_mean=c.image_mean, image_std=c.image_std)
    images, targets, _, _ = loader.batch(0, 0)
    net.zero_grad()
    cls, box = net(images)
    _, d_cls, d_box = net.loss(cls, box, targets, images.shape[-2:])
    net.backward(d_cls, d_box)
    for name, p in net.named_parameters():
        assert relative_difference(p.grad, a0[name]) < 1e-5, name


def test_a_failing_rank_ends_the_job_at_once_and_a_resumed_run_is_bit_identical(
        tmp_path, two_ranks):
    """Rank 1 raises after step 3: the job exits non-zero within seconds, naming the rank;
    resumed from the checkpoint of step 2, it ends with the uninterrupted run's bits."""
    out = tmp_path / "crashed"
    done = mpiexec("train", out, STEPS, BATCH, "--crash-at", 3, check=False)
    ended = time.time()
    assert done.returncode != 0
    assert "rank 1 of 2 failed" in done.stderr, done.stderr
    raised = float(re.search(r"planted at step 3, at ([0-9.]+)", done.stderr).group(1))
    assert ended - raised < 10.0  # not a hang until the timeout
    assert load_checkpoint(out / "last.npz").step == 2

    mpiexec("train", out, STEPS, BATCH, "--resume")
    resumed, whole = (load_checkpoint(d / "final.npz") for d in (out, two_ranks))
    for part in ("state_dict", "optimizer_state"):
        a, b = getattr(resumed, part), getattr(whole, part)
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{part} {name}")
    assert [r["total"] for r in read_log(out / "log.jsonl")] == [
        r["total"] for r in read_log(two_ranks / "log.jsonl")]


def test_a_lone_process_imports_no_mpi():
    """Outside mpiexec the package never imports mpi4py, even when training."""
    code = ("import sys; from retina_np import distributed, train; "
            "c = distributed.world(); assert (c.rank, c.size) == (0, 1); "
            "assert 'mpi4py' not in sys.modules")
    env = {k: v for k, v in os.environ.items() if k not in distributed._LAUNCHER_VARIABLES}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=TIMEOUT_S)


def test_ctrl_c_ends_every_rank_and_rank_0_keeps_a_checkpoint(tmp_path):
    """SIGINT to mpiexec (what Ctrl-C in a terminal sends) reaches every rank: rank 0 writes
    last.npz at the step it reached (no checkpoint before: checkpoint_every 0), and the whole
    job ends within seconds."""
    import signal

    try:
        launcher = distributed.mpiexec()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    job = subprocess.Popen([launcher, "-n", "2", sys.executable, str(JOB), "train", tmp_path,
                            "5000", str(BATCH), "--checkpoint-every", "0"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    log = tmp_path / "log.jsonl"
    deadline = time.time() + TIMEOUT_S
    while not (log.exists() and len(log.read_text().splitlines()) >= 3):
        assert job.poll() is None and time.time() < deadline, "the job did not start"
        time.sleep(0.2)
    job.send_signal(signal.SIGINT)
    sent = time.time()
    _, stderr = job.communicate(timeout=TIMEOUT_S)
    assert time.time() - sent < 15.0
    assert job.returncode != 0
    assert "rank 0 of 2 interrupted" in stderr, stderr
    assert load_checkpoint(tmp_path / "last.npz").step == len(read_log(log)) >= 3

import json
import math

import numpy as np
import pytest

from retina_np.checkpoint import load_checkpoint
from retina_np.data import DataLoader, ShapesDataset
from retina_np.evaluate import evaluate
from retina_np.models import RetinaNet, RetinaNetConfig
from retina_np.train import TrainConfig, TrainingDiverged, read_log, train, train_step


@pytest.fixture(scope="module")
def data():
    return ShapesDataset(12, image_size=64, seed=3, min_size=12, max_size=32)


def tiny():
    return RetinaNet(RetinaNetConfig.tiny(3), seed=0)


def quick_cfg(**kw):
    base = dict(steps=8, batch_size=4, lr=0.01, warmup_steps=2, checkpoint_every=4)
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_the_loss_and_evaluation_runs(tmp_path, data):
    model = tiny()
    cfg = quick_cfg(steps=60, lr=0.05, warmup_steps=5)
    records = train(model, data, tmp_path, cfg, progress=False)
    first = np.mean([r["total"] for r in records[:3]])
    last = np.mean([r["total"] for r in records[-3:]])
    assert last < 0.7 * first
    assert (tmp_path / "final.npz").exists() and (tmp_path / "last.npz").exists()
    assert len(read_log(tmp_path / "log.jsonl")) == 60
    metrics = evaluate(model, data, batch_size=4, out_dir=tmp_path / "eval", progress=False)
    assert 0.0 <= metrics["AP50"] <= 1.0
    assert (tmp_path / "eval" / "metrics.json").exists()


def test_the_images_are_normalised_with_the_models_statistics(tmp_path, data):
    """``RetinaNetConfig.image_mean`` and ``image_std`` reach the training batches; the
    defaults give the batches of a default DataLoader, as before."""
    cfg = quick_cfg(steps=1, checkpoint_every=0)
    default = train(tiny(), data, tmp_path / "a", cfg, progress=False)[0]
    config = RetinaNetConfig.tiny(3)
    config.image_mean, config.image_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    other = train(RetinaNet(config, seed=0), data, tmp_path / "b", cfg, progress=False)[0]
    assert other["total"] != default["total"]
    model = tiny()
    images, targets, _, _ = DataLoader(data, cfg.batch_size, seed=cfg.seed).batch(0, 0)
    losses = train_step(model, cfg.make_optimizer(model.named_parameters()), images, targets,
                        lr=0.0)
    assert losses["total"] == default["total"]


def test_resume_gives_identical_losses(tmp_path, data):
    straight = train(tiny(), data, tmp_path / "a", quick_cfg(), progress=False)

    def stop_at_4(record):
        if record["step"] == 4:
            raise KeyboardInterrupt  # as Ctrl-C: a checkpoint is saved, then the run ends

    with pytest.raises(KeyboardInterrupt):
        train(
            tiny(),
            data,
            tmp_path / "b",
            quick_cfg(checkpoint_every=0),
            progress=False,
            on_step=stop_at_4,
        )
    resumed = train(tiny(), data, tmp_path / "b", quick_cfg(), resume=True, progress=False)
    assert len(resumed) == 4
    log = [r["total"] for r in read_log(tmp_path / "b" / "log.jsonl")]
    assert log == [r["total"] for r in straight]


def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, data):
    model = tiny()

    def poison(record):
        if record["step"] == 5:
            model.head.regression_head.bbox_reg.weight.data[...] = np.nan

    with pytest.raises(TrainingDiverged, match="step 6"):
        train(model, data, tmp_path, quick_cfg(steps=8), progress=False, on_step=poison)
    kept = load_checkpoint(tmp_path / "last.npz")
    assert kept.step == 4
    assert all(np.isfinite(v).all() for v in kept.state_dict.values())


def test_ctrl_c_saves_a_checkpoint(tmp_path, data):
    def interrupt(record):
        if record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            tiny(), data, tmp_path, quick_cfg(checkpoint_every=0), progress=False, on_step=interrupt
        )
    assert load_checkpoint(tmp_path / "last.npz").step == 3
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["step"] == 3
    assert math.isfinite(read_log(tmp_path / "log.jsonl")[-1]["total"])


def test_time_capped_cosine_run_follows_the_clock_and_keeps_a_final_checkpoint(
    tmp_path, data, monkeypatch
):
    """A run stopped by max_minutes is finished as planned: final.npz is written, and its
    cosine schedule decays with the elapsed fraction of the budget, not the step count."""
    import retina_np.train as train_module

    clock = iter(range(0, 10_000))  # every perf_counter call: one more "second"
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: float(next(clock)))
    cfg = quick_cfg(
        steps=1000, lr=0.01, warmup_steps=0, schedule_kind="cosine", max_minutes=0.5,
        checkpoint_every=0,
    )
    records = train(tiny(), data, tmp_path, cfg, progress=False)
    assert 3 < len(records) < 1000  # 30 "seconds" of budget, a few clock calls per step
    assert (tmp_path / "final.npz").exists()
    lrs = [r["lr"] for r in records]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    # by steps the cosine would still be at ~100% of the rate; by the clock it is near 0
    assert lrs[-1] < 0.1 * lrs[0]


def test_resumed_time_capped_run_keeps_its_clock(tmp_path, data, monkeypatch):
    """The demo's recipe (cosine following a max_minutes clock), interrupted and resumed: the
    learning rate goes on down from where it was and the run ends where the clock says, as
    if it had not been interrupted (a new process's clock starts anywhere)."""
    import retina_np.train as train_module

    now = [0.0]

    def perf_counter():  # one more "second" at every call
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(train_module.time, "perf_counter", perf_counter)
    cfg = quick_cfg(
        steps=1000, lr=0.01, warmup_steps=0, schedule_kind="cosine", max_minutes=0.5,
        checkpoint_every=0,
    )
    straight = train(tiny(), data, tmp_path / "a", cfg, progress=False)

    def stop_at_4(record):
        if record["step"] == 4:
            raise KeyboardInterrupt

    now[0] = 0.0
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), data, tmp_path / "b", cfg, progress=False, on_step=stop_at_4)
    now[0] = 5000.0  # another process, another clock
    resumed = train(tiny(), data, tmp_path / "b", cfg, resume=True, progress=False)
    lrs = [r["lr"] for r in read_log(tmp_path / "b" / "log.jsonl")]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])), lrs  # no jump back up on resume
    assert lrs[-1] < 0.1 * lrs[0]
    # The checkpoint and the resume cost a few clock calls of their own, nothing more.
    assert abs(len(lrs) - len(straight)) <= 2 and 4 + len(resumed) == len(lrs)
    assert (tmp_path / "b" / "final.npz").exists()


def test_time_capped_run_shows_the_step_the_clock_will_end_it_at(tmp_path, data, monkeypatch):
    """The progress bar's total is the step where the clock will stop the run, not the
    (much larger) step ceiling, so its percentage and time left are those of the real run."""
    import retina_np.progress as progress_module
    import retina_np.train as train_module

    clock = iter(range(0, 10_000))
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: float(next(clock)))
    totals = []

    class Bar:  # records the total shown at each update
        def __init__(self, total, **kw):
            self.total = total

        def update(self, n):
            totals.append(self.total)

        def set_postfix(self, **kw):
            pass

        def close(self):
            totals.append(self.total)

    monkeypatch.setattr(progress_module, "tqdm", Bar)
    monkeypatch.setattr(progress_module, "stderr_is_terminal", lambda: True)
    cfg = quick_cfg(steps=1000, max_minutes=0.5, checkpoint_every=0)
    records = train(tiny(), data, tmp_path, cfg)
    assert len(totals) == len(records) + 1 and len(records) < 100
    assert totals[-1] == len(records)  # the bar ends full
    assert all(t < 100 for t in totals)  # never the ceiling of 1000


def test_off_a_terminal_progress_is_a_few_plain_lines(tmp_path, data, capsys):
    # pytest's captured stderr is not a terminal, as in CI or "> log".
    train(tiny(), data, tmp_path, quick_cfg(steps=8), progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    # the first step and the last; the run takes far less than PLAIN_PROGRESS_SECONDS
    assert len(lines) == 2, err
    assert lines[0].startswith("train: step 1/8  loss ") and "min left" in lines[0]
    assert lines[1].startswith("train: step 8/8  loss ") and "left" not in lines[1]


def test_plain_progress_prints_every_few_seconds(monkeypatch):
    import io

    import retina_np.progress as progress_module

    now = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    bar = progress_module.PlainProgress(total=1000, initial=100, every_s=20.0, file=out)
    for _ in range(300):  # 300 steps of 0.5 s: the first, then one line per 20 s, then the end
        now[0] += 0.5
        bar.set_postfix(loss="0.500")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + 7 + 1, lines
    assert lines[0] == "train: step 101/1000  loss 0.500  0.0 min, about 7.5 min left"
    assert lines[1].startswith("train: step 141/1000  loss 0.500  0.3 min, about ")
    assert lines[-1].startswith("train: step 400/1000")


@pytest.mark.parametrize(
    "optimizer, weight_decay, expected", [("sgd", None, 1e-4), ("adamw", None, 0.05),
                                          ("adamw", 0.0, 0.0), ("sgd", 3e-4, 3e-4)]
)
def test_weight_decay_defaults_to_the_optimizers_own(optimizer, weight_decay, expected):
    cfg = TrainConfig(optimizer=optimizer, weight_decay=weight_decay)
    assert cfg.make_optimizer(tiny().named_parameters()).weight_decay == expected


def test_off_a_terminal_evaluation_progress_is_plain_lines(data, capsys):
    """evaluate's progress, like train's, prints no carriage-return updates into a log."""
    evaluate(tiny().eval(), data, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("evaluate:")]
    assert lines and lines[-1].startswith("evaluate: batch ")

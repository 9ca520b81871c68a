"""The training loop: SGD on RetinaNet's loss, with logs, checkpoints and exact resume.

A run directory holds ``log.jsonl`` (one record per step), ``last.npz`` (the latest checkpoint,
always replaced atomically) and ``final.npz``. Data order and flips depend only on the seed and
the step, so ``resume=True`` continues with exactly the losses an uninterrupted run would have.
Checkpoints also keep the training time spent so far, so that a run capped by ``max_minutes``
keeps its clock (and its cosine schedule, which follows the clock) across a resume.

Under mpiexec each rank trains on its share of every batch (``retina_np/distributed.py``):
the gradients are averaged and batch norm is synchronised, so the run is that of one process
on the whole batch; rank 0 alone writes the log, the progress and the checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from retina_np import backend, distributed
from retina_np.checkpoint import load_checkpoint, save_checkpoint
from retina_np.data import DataLoader
from retina_np.optim import SGD, AdamW, LRSchedule, clip_grad_norm
from retina_np.progress import progress_bar
from retina_np.schedule import Scheduled


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    steps: int = 1000  # optimisation steps (one batch each)
    batch_size: int = 8  # the global batch: under mpiexec each rank takes batch_size / ranks
    lr: float = 0.01  # the paper's 0.01 at batch 16; linear scaling is up to you
    optimizer: str = "sgd"  # "sgd" (paper) or "adamw" (optim.AdamW: faster from scratch)
    momentum: float = 0.9  # paper (SGD only)
    # None: the optimizer's own, SGD 1e-4 (paper) or AdamW 0.05; never on biases and norms
    weight_decay: float | None = None
    warmup_steps: int = 100  # linear warm-up avoids early divergence at full rate
    warmup_factor: float = 1.0 / 3.0
    schedule_kind: str = "step"  # "step" (milestones) or "cosine" (decay to 0 at `steps`)
    milestones: tuple[float, ...] = (0.75, 0.9)  # fractions of `steps` where lr drops 10x
    clip_grad_norm: float = 10.0  # 0 disables; a cheap guard against rare huge steps
    flip: bool = True  # random horizontal flips
    cache_images: bool = False  # keep decoded images in memory (2000 shapes images: 98 MB)
    seed: int = 0  # data order and flips
    log_every: int = 1
    checkpoint_every: int = 200  # steps between checkpoints (0: only at the end)
    max_minutes: float = 0.0  # >0: stop early (with a checkpoint) after this wall time
    # With max_minutes and a cosine schedule, the cosine follows whichever runs out first,
    # steps or time, so a run stopped by the clock still ends at a learning rate near 0. Such
    # a run depends on the machine's speed: its losses are not reproducible step for step.

    def schedule(self) -> LRSchedule:
        return LRSchedule(
            base_lr=self.lr,
            warmup_steps=self.warmup_steps,
            warmup_factor=self.warmup_factor,
            milestones=tuple(int(round(f * self.steps)) for f in self.milestones),
            cosine_steps=self.steps if self.schedule_kind == "cosine" else 0,
        )

    def make_optimizer(self, named_parameters):
        """The optimizer this config names."""
        decay = {} if self.weight_decay is None else {"weight_decay": self.weight_decay}
        if self.optimizer == "adamw":
            return AdamW(named_parameters, self.lr, **decay)
        return SGD(named_parameters, self.lr, self.momentum, **decay)

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule_kind not in ("step", "cosine"):
            raise ValueError(
                f"schedule_kind must be 'step' or 'cosine', got {self.schedule_kind!r}"
            )


def _check_finite(losses: dict, step: int) -> None:
    bad = {k: v for k, v in losses.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise TrainingDiverged(
            f"loss became non-finite at step {step}: "
            + ", ".join(f"{k}={v}" for k, v in bad.items())
            + " (try a lower --lr; the last good checkpoint is kept)"
        )


def train_step(model, optimizer, images, targets, lr, clip=0.0, scheduled=True, comm=None):
    """Forward, loss, backward, update. Returns the losses dict (python floats).

    scheduled: run the step's independent parts side by side on the CPU's cores
    (retina_np/schedule.py); False runs the model's own calls. The numbers are the same.
    comm: a ``distributed.Communicator`` whose ranks each pass their share of one batch: the
    losses and the gradients are then averaged over the ranks (batch norm is synchronised
    by ``distributed.sync_batch_norm``), and every rank makes the same update.
    """
    model.train()
    # The loader yields numpy float32 images; a model on the GPU gets them copied there, once
    # per batch, and a float64 model (exactness checks) gets them in float64.
    weight = model.parameters()[0].data
    if isinstance(images, np.ndarray) and images.dtype != weight.dtype:
        images = images.astype(weight.dtype)
    images = backend.to_device(images, backend.device_of(weight))
    if scheduled:  # the gradients zeroed and the targets matched beside the forward
        net = Scheduled(model, targets=targets, zero_grad=True)
    else:
        model.zero_grad()
        net = model
    cls_logits, box_deltas = net(images)
    losses, d_cls, d_box = net.loss(cls_logits, box_deltas, targets, images.shape[-2:])
    if comm is not None:
        losses = distributed.average_losses(losses, comm)
    if not all(math.isfinite(v) for v in losses.values() if isinstance(v, float)):
        model.clear_caches()
        return losses
    net.backward(d_cls, d_box)
    if comm is not None:
        distributed.average_gradients(model.parameters(), comm)
    losses["grad_norm"] = clip_grad_norm(model.parameters(), clip)
    optimizer.step(lr=lr)
    return losses


def train(
    model,
    dataset,
    out_dir,
    config: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step=None,
) -> list[dict]:
    """Train ``model`` on ``dataset`` and return the log records of this call.

    Args:
        model: a RetinaNet (its config travels in the checkpoints).
        dataset: anything with ``len`` and ``ds[i] -> (image uint8 HWC, target)``.
        out_dir: run directory for ``log.jsonl``, ``last.npz``, ``final.npz``.
        resume: continue from ``out_dir/last.npz`` (same data order, same losses).
        on_step: optional callback(record) after each step (live plots in notebooks); under
            mpiexec it is called on every rank.
    """
    comm = distributed.world()
    with distributed.abort_on_error(comm):
        return _train(model, dataset, out_dir, config, resume, progress, on_step, comm)


def _train(model, dataset, out_dir, config, resume, progress, on_step, comm) -> list[dict]:
    """``train`` on this rank of ``comm``."""
    cfg = config or TrainConfig()
    lead = comm.rank == 0  # writes the log, the progress and the checkpoints
    distributed.sync_batch_norm(model, comm)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = model.config  # the images are made as the model expects them
    loader = DataLoader(
        dataset, cfg.batch_size, shuffle=True, flip=cfg.flip, seed=cfg.seed, cache=cfg.cache_images,
        size_divisible=c.size_divisible, image_mean=c.image_mean, image_std=c.image_std,
    )
    optimizer = cfg.make_optimizer(model.named_parameters())
    schedule = cfg.schedule()
    step = 0
    spent_before = 0.0  # seconds of training in earlier calls (resume)
    log_path = out / "log.jsonl"
    if resume:
        ckpt = load_checkpoint(out / "last.npz")
        model.load_state_dict(ckpt.state_dict)
        optimizer.load_state_dict(ckpt.optimizer_state)
        step = ckpt.step
        spent_before = float(ckpt.extra.get("train_seconds", 0.0))
        if lead:
            _truncate_log(log_path, step)
    elif log_path.exists() and lead:
        log_path.unlink()
    if lead:
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))

    def checkpoint(path_name: str) -> None:
        if not lead:
            return
        extra = {"train_config": asdict(cfg), "train_seconds": time.perf_counter() - start}
        save_checkpoint(out / path_name, model, optimizer, step=step, extra=extra)

    records = []
    # The clock of the whole run: a resumed run goes on from the time already spent, so that
    # max_minutes and a cosine schedule that follows it do not start over. A checkpoint from
    # before train_seconds was kept has no time: its steps are left out of the rate estimate.
    start = time.perf_counter() - spent_before
    first_step = 0 if spent_before > 0 else step
    bar = progress_bar(cfg.steps, step, progress and lead, desc="train", unit="step")

    def clock() -> float:
        """Seconds since the run began; rank 0's, so that every rank takes the same learning
        rate and stops at the same step."""
        return comm.broadcast(time.perf_counter() - start)

    # this rank's share of batch i of an epoch
    draw = partial(loader.batch, rank=comm.rank, ranks=comm.size)
    # The next batch is drawn in a background thread while the current step computes: drawing
    # and decoding images is mostly numpy work that releases the GIL. Only that thread touches
    # the loader, and batch(epoch, i) depends on nothing but its arguments, so the data stay
    # exactly those of a run without it.
    out_of_time = False  # stopped by max_minutes: finished as planned, not interrupted
    prefetch = ThreadPoolExecutor(max_workers=1)
    pending = prefetch.submit(draw, *divmod(step, len(loader)))
    try:
        # only rank 0 writes the log; the other ranks write theirs nowhere
        with open(log_path if lead else os.devnull, "a") as log, \
                distributed.CtrlC(comm) as ctrl_c:
            while step < cfg.steps:
                epoch = step // len(loader)
                images, targets, _, _ = pending.result()
                if step + 1 < cfg.steps:  # no batch is drawn for a step that never comes
                    pending = prefetch.submit(draw, *divmod(step + 1, len(loader)))
                images = distributed.pad_to_common_size(images, comm)
                t0 = time.perf_counter()
                progress = None
                if cfg.max_minutes > 0 and cfg.schedule_kind == "cosine":
                    elapsed = clock() / (60 * cfg.max_minutes)
                    progress = max(step / cfg.steps, elapsed)
                lr = schedule(step, progress)
                losses = train_step(model, optimizer, images, targets, lr, cfg.clip_grad_norm,
                                    comm=comm if comm.size > 1 else None)
                _check_finite(losses, step + 1)
                dt = time.perf_counter() - t0
                step += 1
                record = {
                    "step": step,
                    "lr": lr,
                    "epoch": epoch,
                    "time": dt,
                    "images_per_s": len(targets) * comm.size / dt,
                    **losses,
                }
                records.append(record)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                bar.set_postfix(
                    loss=f"{losses['total']:.3f}",
                    cls=f"{losses['classification']:.3f}",
                    box=f"{losses['box_regression']:.3f}",
                    img_s=f"{record['images_per_s']:.1f}",
                )
                if cfg.max_minutes > 0:  # the clock may end the run first: show where
                    spent = time.perf_counter() - start
                    left_steps = (60 * cfg.max_minutes - spent) * (step - first_step) / spent
                    bar.total = min(cfg.steps, step + max(0, round(left_steps)))
                bar.update(1)
                if on_step is not None:
                    on_step(record)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    checkpoint("last.npz")
                if ctrl_c.requested():  # under mpiexec: every rank stops after this step
                    raise KeyboardInterrupt
                if cfg.max_minutes > 0 and clock() > 60 * cfg.max_minutes:
                    out_of_time = True
                    bar.total = step  # it ends full
                    break
    except KeyboardInterrupt:
        bar.close()
        checkpoint("last.npz")
        if lead:
            print(f"\ninterrupted at step {step}; checkpoint saved to {out / 'last.npz'} "
                  "(continue with --resume)", flush=True)
        raise
    finally:
        prefetch.shutdown(wait=True, cancel_futures=True)
    bar.close()
    checkpoint("last.npz")
    if step >= cfg.steps or out_of_time:
        checkpoint("final.npz")
    comm.barrier()  # every rank returns once the checkpoints are written
    return records


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop log records after ``step`` (written after the checkpoint we resume from)."""
    if not log_path.exists():
        return
    keep = [
        line
        for line in log_path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
    log_path.write_text("".join(line + "\n" for line in keep))


def read_log(path) -> list[dict]:
    """The records of a ``log.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

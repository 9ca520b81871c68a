"""``retina-np demo``: shapes data -> train within a time budget -> COCO metrics -> pictures.

Under mpiexec (``retina-np demo --workers 2``) every rank trains on its share of each batch;
rank 0 plans the run (the other ranks take its step count and time budget), evaluates, draws
and prints.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from retina_np import distributed
from retina_np.data import DataLoader, ShapesDataset, model_batch
from retina_np.evaluate import evaluate
from retina_np.models import RetinaNet, RetinaNetConfig
from retina_np.optim import AdamW
from retina_np.train import TrainConfig, read_log, train, train_step
from retina_np.viz import detection_grid, plot_loss_curves

# Evaluation of the 500 validation images and the plots take a little time of their own.
_EVAL_SECONDS_PER_IMAGE = 0.02
_FIXED_OVERHEAD_SECONDS = 20.0


def _seconds_per_step(config, dataset, batch_size, device, seed, comm) -> float:
    """Time a few training steps of a throw-away model (after one step to compile); rank 0's
    time under mpiexec, where each rank steps on its share of the batch."""
    model = RetinaNet(config, seed=seed)
    if device == "cuda":
        model.to("cuda")
    distributed.sync_batch_norm(model, comm)
    step_comm = comm if comm.size > 1 else None
    loader = DataLoader(dataset, batch_size, seed=seed, size_divisible=config.size_divisible,
                        image_mean=config.image_mean, image_std=config.image_std)
    optimizer = AdamW(model.named_parameters(), lr=0.0)
    times = []
    for i in range(6):  # the median: one step slowed by another process must not set the plan
        images, targets, _, _ = loader.batch(*divmod(i, len(loader)), rank=comm.rank,
                                             ranks=comm.size)  # a small set: next epochs
        start = time.perf_counter()
        train_step(model, optimizer, images, targets, lr=0.0, comm=step_comm)
        times.append(time.perf_counter() - start)
    times = times[1:]  # the first step compiles
    return comm.broadcast(sorted(times)[len(times) // 2])


def run_demo(
    minutes=10.0,
    out_dir="demo_out",
    train_images=2000,
    val_images=500,
    batch_size=8,
    lr=0.004,
    seed=0,
    device="cpu",
) -> dict:
    """Run the whole demo; returns the metrics dict and writes everything into ``out_dir``
    (under mpiexec: rank 0 does; the other ranks return None after training)."""
    comm = distributed.world()
    with distributed.abort_on_error(comm):
        return _run_demo(minutes, out_dir, train_images, val_images, batch_size, lr, seed,
                         device, comm)


def _run_demo(minutes, out_dir, train_images, val_images, batch_size, lr, seed, device, comm):
    """``run_demo`` on this rank of ``comm``."""
    print = _print if comm.rank == 0 else _quiet
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_set = ShapesDataset(train_images, seed=seed)
    val_set = ShapesDataset(val_images, seed=seed + 10_000)
    config = RetinaNetConfig.shapes(len(train_set.class_names))
    ranks = f" on {comm.size} ranks of {batch_size // comm.size} images" if comm.size > 1 else ""
    print(
        f"data: {train_images} training and {val_images} validation shapes images "
        f"({'x'.join(map(str, train_set.image_size(0)))} px, classes {train_set.class_names})"
    )

    print("compiling kernels and timing a training step ...")
    per_step = _seconds_per_step(config, train_set, batch_size, device, seed, comm)
    elapsed = comm.broadcast(time.perf_counter() - t_start)
    budget = 60 * minutes - elapsed - _FIXED_OVERHEAD_SECONDS - _EVAL_SECONDS_PER_IMAGE * val_images
    # The clock ends the run (max_minutes below) and the cosine learning rate follows the
    # clock down to 0, so the step count is only a ceiling, three times the estimate: the timed
    # steps may have been slowed by something else running (0.36 s against 0.21 measured).
    expected = max(10, int(budget / per_step))
    steps = 3 * expected
    print(
        f"{per_step:.3f} s per step of {batch_size} images{ranks}: about {expected} steps "
        f"({expected * batch_size / train_images:.1f} epochs) in {budget / 60:.1f} min; the "
        "learning rate follows the clock down to 0"
    )

    model = RetinaNet(config, seed=seed)
    if device == "cuda":
        model.to("cuda")
    # AdamW with a cosine decay: from scratch in minutes it learns much faster than the
    # paper's SGD (1000 steps: COCO AP 0.27 against 0.16; docs/performance-history.md,
    # "Training recipe").
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        optimizer="adamw",
        schedule_kind="cosine",
        cache_images=True,  # 2000 images of 128x128: 98 MB, drawn once
        seed=seed,
        checkpoint_every=max(50, steps // 10),
        max_minutes=max(0.5, budget / 60),  # a hard stop at the budget
    )
    run_dir = out / "run"
    records = train(model, train_set, run_dir, cfg)
    if comm.rank != 0:
        return None

    print("evaluating on the validation images ...")
    metrics = evaluate(model, val_set, out_dir=out)
    plot_loss_curves(read_log(run_dir / "log.jsonl"), path=out / "training_curves.png")
    show = list(range(min(16, len(val_set))))
    images = [val_set[i][0] for i in show]
    batch = model_batch(images, config)
    dets = model.detect(batch, [im.shape[:2] for im in images])
    detection_grid(
        images,
        dets,
        train_set.class_names,
        path=out / "detections.png",
        gts=[val_set[i][1] for i in show],
    )
    wall = time.perf_counter() - t_start
    summary = {
        k: metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100") if k in metrics
    }
    summary.update(
        {
            "train_steps": len(records),
            "planned_steps": steps,
            "seconds_per_step": per_step,
            "wall_seconds": wall,
            "train_images": train_images,
            "val_images": val_images,
            "batch_size": batch_size,
        }
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(
        f"AP {metrics['AP']:.3f}   AP50 {metrics['AP50']:.3f}   AP75 {metrics['AP75']:.3f}"
        f"   (COCO metrics on {val_images} held-out images, pycocotools)"
    )
    for name, ap in metrics.get("AP_per_class", {}).items():
        print(f"  {name:10s} AP {ap:.3f}")
    print(
        f"wall time {wall / 60:.1f} min; files in {out}/: metrics.json, summary.json, "
        "training_curves.png, pr_curves.png, detections.png, detections.json, run/final.npz"
    )
    return metrics


_print = print


def _quiet(*args, **kwargs) -> None:
    """``print`` on the ranks other than 0."""

"""Same minutes, same data: what retina_np, its PyTorch twin and an off-the-shelf torchvision
RetinaNet each learn on the synthetic shapes in one wall-clock budget, scored by pycocotools on
the same held-out images.

    python benchmarks/bench_same_minutes.py                        # 10 min each, 3 pairs
    python benchmarks/bench_same_minutes.py --minutes 5 --pairs 2 --results same.jsonl
    python benchmarks/bench_same_minutes.py --sides retina_np,twin --torch-python ~/torch/bin/python
    python benchmarks/bench_same_minutes.py --quick                # smoke run: 0.2 min, 50 images

Every run is a fresh process (this script with ``--worker --side X``), all with this checkout's
retina_np on ``PYTHONPATH``; with ``--pairs N`` the sides take turns, the order reversed in
every other round, so that all of them see the machine's slow and fast spells alike. Each run
appends one JSON line to ``--results``; the end prints the steps and AP of every run, the
medians and the ratio of the median steps.

The sides:

* ``retina_np``: what ``retina-np demo`` trains (retina_np/demo.py): the shapes preset, seed 0,
  ShapesDataset(2000, seed=0), batch 8 with flips, images cached, AdamW lr 0.004 (weight decay
  0.05, none on 1-D parameters), 100 warm-up steps from a third of the rate, the cosine that
  follows the clock down to 0 at the budget, gradients clipped at norm 10; by the package's
  ``train`` and scored by ``evaluate``. Unlike the demo it writes no checkpoints while training
  and its step ceiling is out of reach, so that the clock alone ends the run and sets the rate.
* ``twin``: the same network, recipe and batches in PyTorch (benchmarks/torch_twin.py), started
  from our initial weights; torch's AdamW with our rate, betas, eps, decay and its groups, the
  same clipping and the same schedule function (``TrainConfig.schedule()``) on the same clock.
  Anchors are matched by retina_np's matcher in the training loop (its time counts). Detections
  come from the twin's head outputs through our postprocessing (``RetinaNet.detections``) and
  are scored by our ``evaluate``, so the AP compares training, not postprocessing.
* ``torchvision``: torchvision's ``RetinaNet`` on ``resnet_fpn_backbone("resnet18")``, untrained,
  built as ``retinanet_resnet50_fpn`` builds an untrained model (trainable BatchNorm,
  every layer trained, C3..C5 into a 256-channel FPN, P6 and P7 from P5), with its own
  transform (the ImageNet normalisation, as ours; min_size = max_size = 128, the data's size),
  anchors, matcher, loss and postprocessing (score 0.05, NMS 0.5, top 1000, 100 detections, as
  ours); the same optimiser recipe, batches, clock and scoring. It is what a user would
  otherwise pick, not our architecture: ResNet-18 is 64..512 channels wide with two blocks a
  stage (ours: 16..128, one block), its FPN and heads are 256 channels wide (ours 64), its heads
  have no GroupNorm and start at normal(0, 0.01) (ours: GroupNorm and 0.05), its anchors start
  at 32 px on P3 (ours at 12, the shapes being 12..64 px), its box loss is L1 (ours smooth L1,
  beta 1/9), and it has K + 1 = 4 class channels (torchvision's convention, labels 1..K).

Only training is timed, from the first batch to the end of the last step, after one warm-up
step on a throw-away model that is not counted (its seconds are in the JSON line): for
retina_np it compiles the Numba kernels or, with the cache filled (``cache=True``), loads them;
a cold compile is ``bench_cold_start.py``'s business. The torch sides import torch before
retina_np and run with as many threads as Numba uses; each side keeps its library's own OpenMP
settings (``_child_env`` says why).
``pipeline_ms_per_batch`` (drawing 8 uncached images, before the warm-up) shows
whether a process's data pipeline is slowed by torch's runtime, and ``data_wait_seconds`` how
long a torch loop waited for its background batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SIDES = ("retina_np", "twin", "torchvision")
TORCH_SIDES = ("twin", "torchvision")

# retina_np/demo.py's run_demo defaults (tests/benchmarks/test_bench_same_minutes.py checks
# them against it) and the held-out seed that _run_demo uses (seed + 10_000).
DEMO = {"train_images": 2000, "val_images": 500, "batch_size": 8, "lr": 0.004, "seed": 0}
VAL_SEED_OFFSET = 10_000
# A step ceiling no run reaches: the clock alone ends training and moves the cosine.
STEP_CEILING = 10**9
QUICK = {"minutes": 0.2, "val_images": 50, "pairs": 1}
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


# --------------------------------------------------------------------------------------
# The parent: run the sides in turn, collect, print the table
# --------------------------------------------------------------------------------------


def _torch_check(python: str) -> tuple[dict | None, str]:
    """``({"torch": version, "torchvision": version or None}, "")`` if ``python`` imports
    torch, else ``(None, why)``."""
    code = ("import json, torch\n"
            "try:\n    import torchvision; tv = torchvision.__version__\n"
            "except ImportError:\n    tv = None\n"
            "print(json.dumps({'torch': torch.__version__, 'torchvision': tv}))")
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{python} could not be run ({e})"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"{python} cannot import torch ({last})"
    return json.loads(done.stdout.strip().splitlines()[-1]), ""


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    # Each side runs with its library's own OpenMP settings, as a user gets them: retina_np
    # sets OMP_WAIT_POLICY=PASSIVE for its pool (retina_np/runtime.py); torch's workers spin
    # after each op (GNU OpenMP's default). Forcing PASSIVE on torch made the twin's step 2.2x
    # slower on the quiet 2-core machine (0.15 against 0.068 s, bench_model.py --only torch);
    # on a busy machine its spinning workers can make it the slower one instead (steps of
    # 1-3 s in bursts). A policy set in the shell applies to every side.
    return env


def _run_side(python: str, side: str, args, pair: int) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", "--side", side,
           "--minutes", str(args.minutes), "--train-images", str(args.train_images),
           "--val-images", str(args.val_images), "--pair", str(pair)]
    done = subprocess.run(cmd, env=_child_env(), stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {side} run failed (exit {done.returncode}): {' '.join(cmd)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median(values):
    return statistics.median(values) if values else float("nan")


def _table(runs: list[dict], sides: list[str]) -> str:
    lines = [f"{'side':12s} {'steps of each run':28s} {'median':>7s}   "
             f"{'AP of each run':28s} {'median':>6s}"]
    medians = {}
    for side in sides:
        mine = [r for r in runs if r["side"] == side]
        if not mine:
            continue
        steps = [r["steps"] for r in mine]
        aps = [r["AP"] for r in mine]
        medians[side] = _median(steps)
        lines.append(f"{side:12s} {' '.join(str(s) for s in steps):28s} {medians[side]:7.0f}   "
                     f"{' '.join(f'{a:.3f}' for a in aps):28s} {_median(aps):6.3f}")
    if "retina_np" in medians:
        ratios = [f"retina_np / {s} {medians['retina_np'] / medians[s]:.2f}"
                  for s in TORCH_SIDES if medians.get(s)]
        if ratios:
            lines.append("steps (medians): " + ", ".join(ratios))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, help="training budget of every run (default 10)")
    p.add_argument("--pairs", type=int, help="rounds of all the sides (default 3)")
    p.add_argument("--sides", default=",".join(SIDES),
                   help="comma-separated, of " + ", ".join(SIDES))
    p.add_argument("--torch-python", help="a python that imports torch (default: this one, if "
                   "it does)")
    p.add_argument("--train-images", type=int, help=f"default {DEMO['train_images']}, the demo's")
    p.add_argument("--val-images", type=int, help=f"default {DEMO['val_images']}, the demo's")
    p.add_argument("--results", default="same_minutes.jsonl", help="JSON lines appended here")
    p.add_argument("--quick", action="store_true", help="smoke run: 0.2 min, 50 validation "
                   "images, 1 pair (options given still win)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--pair", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = {"minutes": 10.0, "pairs": 3, **DEMO}
    if args.quick:
        defaults.update(QUICK)
    for name in ("minutes", "pairs", "train_images", "val_images"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    if args.worker:
        print(json.dumps(_worker(args)), flush=True)
        return 0

    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [s for s in sides if s not in SIDES]
    if unknown:
        p.error(f"unknown sides {unknown}; choose from {', '.join(SIDES)}")
    pythons = dict.fromkeys(sides, sys.executable)
    torch_sides = [s for s in sides if s in TORCH_SIDES]
    if torch_sides:
        torch_python = args.torch_python or sys.executable
        versions, why = _torch_check(torch_python)
        if versions is not None and "torchvision" in torch_sides and not versions["torchvision"]:
            print(f"skipping torchvision: {torch_python} has torch but no torchvision")
            sides.remove("torchvision")
            torch_sides.remove("torchvision")
        if versions is None:
            print(f"skipping {', '.join(torch_sides)}: {why} (give --torch-python)")
            sides = [s for s in sides if s not in TORCH_SIDES]
            torch_sides = []
        for s in torch_sides:
            pythons[s] = torch_python
    if not sides:
        return 0

    print(f"{args.minutes:g} min of training per run, {args.pairs} round(s) of "
          f"{', '.join(sides)}; {args.train_images} training and {args.val_images} held-out "
          f"images; results appended to {args.results}", flush=True)
    runs = []
    for pair in range(args.pairs):
        for side in sides if pair % 2 == 0 else sides[::-1]:
            r = _run_side(pythons[side], side, args, pair)
            runs.append(r)
            with open(args.results, "a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"round {pair + 1} {side:12s} {r['steps']:6d} steps in "
                  f"{r['train_seconds']:.1f} s ({r['images_per_s']:.1f} images/s), AP "
                  f"{r['AP']:.3f} AP50 {r['AP50']:.3f} AP75 {r['AP75']:.3f}; warm-up "
                  f"{r['warmup_seconds']:.1f} s not counted", flush=True)
    first = runs[0]
    torch_version = next((r["torch_version"] for r in runs if r["torch_version"]), None)
    print(f"\n{first['cpu_model']}, {first['cores']} cores; numba {first['numba_version']}"
          + (f", torch {torch_version}" if torch_version else ""))
    print(_table(runs, sides))
    return 0


# --------------------------------------------------------------------------------------
# The workers: one side's warm-up, training and evaluation, in this process
# --------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _train_config(minutes: float):
    """The demo's TrainConfig (retina_np/demo.py), stopped and scheduled by the clock alone."""
    from retina_np.train import TrainConfig

    return TrainConfig(
        steps=STEP_CEILING,
        batch_size=DEMO["batch_size"],
        lr=DEMO["lr"],
        optimizer="adamw",
        schedule_kind="cosine",
        cache_images=True,
        seed=DEMO["seed"],
        checkpoint_every=0,  # only at the end, after the clock
        max_minutes=minutes,
    )


def _datasets(args):
    from retina_np.data import ShapesDataset

    return (ShapesDataset(args.train_images, seed=DEMO["seed"]),
            ShapesDataset(args.val_images, seed=DEMO["seed"] + VAL_SEED_OFFSET))


def _loader(dataset, config, cfg, cache=True, image_mean=None, image_std=None):
    """The loader ``train`` makes for this config (the torchvision side asks for [0, 1] pixels:
    its model normalises them itself, with the same statistics)."""
    from retina_np.data import DataLoader

    return DataLoader(dataset, cfg.batch_size, shuffle=True, flip=cfg.flip, seed=cfg.seed,
                      cache=cache and cfg.cache_images, size_divisible=config.size_divisible,
                      image_mean=config.image_mean if image_mean is None else image_mean,
                      image_std=config.image_std if image_std is None else image_std)


def _pipeline_ms(loader, batches=5) -> float:
    """Median milliseconds to draw one uncached batch (render, flip, normalise, pad)."""
    times = []
    for i in range(min(batches, len(loader))):
        start = time.perf_counter()
        loader.batch(0, i)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _worker(args) -> dict:
    # As `import retina_np` sets it, but torch loads numpy (and its OpenBLAS) first.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    versions = {"torch_version": None, "torchvision_version": None}
    if args.side in TORCH_SIDES:
        import numba
        import torch  # before retina_np, as a user comparing with torch would

        threads = numba.config.NUMBA_NUM_THREADS  # as many as our kernels run on
        torch.set_num_threads(threads)
        torch.manual_seed(DEMO["seed"])
        versions["torch_version"] = torch.__version__
        if args.side == "torchvision":
            import torchvision

            versions["torchvision_version"] = torchvision.__version__
    import numba

    result = {"twin": _twin, "torchvision": _torchvision, "retina_np": _retina_np}[args.side](args)
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel ran in this process
        layer = None
    return {
        "side": args.side,
        "minutes": args.minutes,
        "steps": result["steps"],
        "train_seconds": result["train_seconds"],
        "images_per_s": result["steps"] * DEMO["batch_size"] / result["train_seconds"],
        "steps_per_s": result["steps"] / result["train_seconds"],
        **{k: result["metrics"][k] for k in METRICS},
        "final_loss": result["final_loss"],
        "warmup_seconds": result["warmup_seconds"],
        "warmup": result["warmup"],
        "pipeline_ms_per_batch": result["pipeline_ms"],
        "data_wait_seconds": result.get("data_wait_seconds"),
        "parameters": result["parameters"],
        "batch_size": DEMO["batch_size"],
        "train_images": args.train_images,
        "val_images": args.val_images,
        "pair": args.pair,
        "cpu_model": _cpu_model(),
        "cores": _cores(),
        "threads": numba.get_num_threads(),
        "numba_threading_layer": layer,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "numba_version": numba.__version__,
        **versions,
        "python": platform.python_version(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _final_loss(losses) -> float:
    """Mean loss of the last 20 steps."""
    tail = losses[-20:]
    return float(sum(tail) / len(tail)) if tail else float("nan")


def _retina_np(args) -> dict:
    from retina_np.evaluate import evaluate
    from retina_np.models import RetinaNet, RetinaNetConfig
    from retina_np.train import train, train_step

    train_set, val_set = _datasets(args)
    config = RetinaNetConfig.shapes(len(train_set.class_names))
    cfg = _train_config(args.minutes)
    pipeline_ms = _pipeline_ms(_loader(train_set, config, cfg, cache=False))

    # Warm-up, as the demo's timing steps: one step of a throw-away model at rate 0 compiles
    # (or loads from Numba's cache) every kernel of the step.
    start = time.perf_counter()
    throwaway = RetinaNet(config, seed=DEMO["seed"])
    images, targets, _, _ = _loader(train_set, config, cfg, cache=False).batch(0, 0)
    train_step(throwaway, cfg.make_optimizer(throwaway.named_parameters()), images, targets,
               lr=0.0, clip=cfg.clip_grad_norm)
    warmup = time.perf_counter() - start
    del throwaway

    model = RetinaNet(config, seed=DEMO["seed"])
    losses, last = [], [0.0]

    def on_step(record):  # the end of the step just done
        last[0] = time.perf_counter()
        losses.append(record["total"])

    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        records = train(model, train_set, run_dir, cfg, progress=False, on_step=on_step)
    metrics = evaluate(model, val_set, progress=False)
    return {
        "steps": len(records),
        "train_seconds": last[0] - start,
        "metrics": metrics,
        "final_loss": _final_loss(losses),
        "warmup_seconds": warmup,
        "warmup": "one training step of a throw-away model before the clock: Numba's kernels "
                  "compiled, or loaded from its cache",
        "pipeline_ms": pipeline_ms,
        "parameters": int(sum(p.data.size for p in model.parameters())),
    }


def _torch_train(step, loader, cfg, minutes) -> dict:
    """``train``'s loop for a torch model: the next batch drawn in a background thread while
    a step runs, the rate from ``cfg.schedule()`` at the clock's progress, the run ended after
    the step that passes the budget. ``step(batch, lr) -> loss``."""
    schedule = cfg.schedule()
    budget = 60 * minutes
    losses, waited = [], 0.0
    prefetch = ThreadPoolExecutor(max_workers=1)
    try:
        start = time.perf_counter()
        pending = prefetch.submit(loader.batch, 0, 0)
        while True:
            t0 = time.perf_counter()
            batch = pending.result()
            waited += time.perf_counter() - t0
            n = len(losses) + 1
            pending = prefetch.submit(loader.batch, *divmod(n, len(loader)))
            lr = schedule(len(losses), (time.perf_counter() - start) / budget)
            losses.append(step(batch, lr))
            end = time.perf_counter()
            if end - start > budget:
                break
    finally:
        prefetch.shutdown(wait=True, cancel_futures=True)
    return {"steps": len(losses), "train_seconds": end - start,
            "final_loss": _final_loss(losses), "data_wait_seconds": waited}


def _adamw(net, ours):
    """torch's AdamW with the numbers of ``ours`` (a retina_np AdamW): its rate, betas, eps
    and weight decay, none on 1-D parameters (``torch_twin.adamw``, as ``ours.decay_for``)."""
    import torch_twin as tt

    return tt.adamw(net, lr=ours.lr, betas=ours.betas, eps=ours.eps,
                    weight_decay=ours.weight_decay)


def _set_lr(optimizer, lr) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _torch_update(net, optimizer, loss, lr, clip) -> float:
    """Backward, clip as ``retina_np.optim.clip_grad_norm`` (norm over every gradient), step."""
    import torch

    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    _set_lr(optimizer, lr)
    optimizer.step()
    return loss.item()


def _twin(args) -> dict:
    import torch
    import torch_twin as tt

    from retina_np.evaluate import evaluate
    from retina_np.models import RetinaNet, RetinaNetConfig

    train_set, val_set = _datasets(args)
    config = RetinaNetConfig.shapes(len(train_set.class_names))
    cfg = _train_config(args.minutes)
    pipeline_ms = _pipeline_ms(_loader(train_set, config, cfg, cache=False))
    model = RetinaNet(config, seed=DEMO["seed"])  # initial weights, anchors, postprocessing
    ours = cfg.make_optimizer(model.named_parameters())

    def make(twin):
        optimizer = _adamw(twin, ours)

        def step(batch, lr):  # the twin's own training step (as bench_model.py times it)
            images, targets, _, _ = batch
            anchor_class, target_deltas = tt.match_batch(model, targets, images.shape[-2:])
            _set_lr(optimizer, lr)
            return tt.train_step(twin, optimizer, torch.from_numpy(images),
                                 torch.from_numpy(anchor_class), torch.from_numpy(target_deltas),
                                 config, clip=cfg.clip_grad_norm)

        return step

    start = time.perf_counter()
    make(tt.TorchRetinaNet(config))(_loader(train_set, config, cfg, cache=False).batch(0, 0), 0.0)
    warmup = time.perf_counter() - start

    twin = tt.TorchRetinaNet(config)
    tt.load_numpy_state(twin, model.state_dict())
    result = _torch_train(make(twin), _loader(train_set, config, cfg), cfg, args.minutes)

    class TwinDetector:
        """``evaluate``'s model: the twin's head outputs, then our postprocessing."""

        def __init__(self):
            self.config = config

        def detect(self, images, image_sizes):
            twin.eval()
            with torch.no_grad():
                cls_logits, box_deltas = twin(torch.from_numpy(images))
            return model.detections(cls_logits.numpy(), box_deltas.numpy(), images.shape[-2:],
                                    image_sizes)

    result.update(
        metrics=evaluate(TwinDetector(), val_set, progress=False),
        warmup_seconds=warmup,
        warmup="one training step of a throw-away twin before the clock (torch's lazy set-up, "
               "Numba's matcher compiled or loaded from its cache)",
        pipeline_ms=pipeline_ms,
        parameters=int(sum(p.numel() for p in twin.parameters())),
    )
    return result


def _torchvision_retinanet(config):
    """torchvision's RetinaNet on ResNet-18-FPN, untrained, as ``retinanet_resnet50_fpn``
    builds an untrained model; our inference numbers and image statistics."""
    from torch import nn
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    backbone = resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5,
        returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return RetinaNet(
        backbone,
        num_classes=config.num_classes + 1,  # torchvision counts a background class: labels 1..K
        min_size=128, max_size=128,  # the shapes' size: its transform does not rescale them
        image_mean=list(config.image_mean), image_std=list(config.image_std),
        score_thresh=config.score_thresh, nms_thresh=config.nms_thresh,
        detections_per_img=config.detections_per_img, topk_candidates=config.topk_candidates,
        fg_iou_thresh=config.fg_iou_thresh, bg_iou_thresh=config.bg_iou_thresh)


def _torchvision(args) -> dict:
    import numpy as np
    import torch

    from retina_np.evaluate import evaluate
    from retina_np.models import RetinaNetConfig

    train_set, val_set = _datasets(args)
    config = RetinaNetConfig.shapes(len(train_set.class_names))
    cfg = _train_config(args.minutes)
    ours = cfg.make_optimizer([])  # the recipe's rate, betas, eps and weight decay
    pixels = {"image_mean": (0.0, 0.0, 0.0), "image_std": (1.0, 1.0, 1.0)}  # [0, 1] pixels
    pipeline_ms = _pipeline_ms(_loader(train_set, config, cfg, cache=False, **pixels))

    def inputs(images, image_sizes):
        return [torch.from_numpy(im[:, :h, :w]) for im, (h, w) in zip(images, image_sizes)]

    def make(net):
        optimizer = _adamw(net, ours)

        def step(batch, lr):
            images, targets, sizes, _ = batch
            net.train()
            optimizer.zero_grad(set_to_none=True)
            losses = net(inputs(images, sizes), [
                {"boxes": torch.from_numpy(t["boxes"]),
                 "labels": torch.from_numpy(t["labels"] + 1)} for t in targets])
            return _torch_update(net, optimizer, sum(losses.values()), lr, cfg.clip_grad_norm)

        return step

    start = time.perf_counter()
    make(_torchvision_retinanet(config))(
        _loader(train_set, config, cfg, cache=False, **pixels).batch(0, 0), 0.0)
    warmup = time.perf_counter() - start

    torch.manual_seed(DEMO["seed"])
    net = _torchvision_retinanet(config)
    result = _torch_train(make(net), _loader(train_set, config, cfg, **pixels), cfg, args.minutes)

    class TorchvisionDetector:
        """``evaluate``'s model: torchvision's own postprocessing, labels back to 0..K-1."""

        def __init__(self):
            self.config = dataclasses.replace(config, **pixels)  # the batches evaluate draws

        def detect(self, images, image_sizes):
            net.eval()
            with torch.no_grad():
                outputs = net(inputs(images, image_sizes))
            dets = []
            for out in outputs:
                keep = (out["labels"] > 0).numpy()  # the background channel is no class
                dets.append({"boxes": out["boxes"].numpy()[keep],
                             "scores": out["scores"].numpy()[keep],
                             "labels": out["labels"].numpy()[keep].astype(np.int64) - 1})
            return dets

    result.update(
        metrics=evaluate(TorchvisionDetector(), val_set, progress=False),
        warmup_seconds=warmup,
        warmup="one training step of a throw-away model before the clock (torch's lazy set-up)",
        pipeline_ms=pipeline_ms,
        parameters=int(sum(p.numel() for p in net.parameters())),
    )
    return result


if __name__ == "__main__":
    sys.exit(main())

"""The ``retina-np`` command line: demo, train, evaluate, detect, convert-torchvision.

Errors a user can cause (a bad file, a wrong checkpoint) print one line and exit with 2; a
traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _add_common_data(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        required=True,
        help="a COCO dataset folder (images/ + annotations.json), or 'shapes:N[:SEED]' "
        "for N synthetic shapes images",
    )
    p.add_argument(
        "--strict-data",
        action="store_true",
        help="refuse COCO boxes of zero width or height or reaching past their image "
        "(default: drop or clip them, with one warning)",
    )


def _add_workers(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="train on this many MPI ranks of this machine, each with its share of every "
        "batch and of the cores: starts mpiexec itself (needs the mpi extra); on several "
        "machines run `mpiexec -n N -hosts a,b retina-np ...` instead",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retina-np",
        description="RetinaNet from scratch in NumPy and Numba: train, evaluate and detect.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="generate shapes data, train, evaluate and draw (the main job)")
    p.add_argument("--minutes", type=float, default=10.0, help="total time budget (default 10)")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--val-images", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.004, help="AdamW learning rate (default 0.004)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    _add_workers(p)

    p = sub.add_parser("train", help="train a RetinaNet")
    _add_common_data(p)
    p.add_argument("--config", default="shapes", help="model preset: shapes, tiny, resnet50_fpn")
    p.add_argument("--out", required=True, help="run folder (log.jsonl, last.npz, final.npz)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument(
        "--optimizer", default="sgd", choices=["sgd", "adamw"], help="sgd (paper) or adamw"
    )
    p.add_argument(
        "--weight-decay", type=float, help="default 1e-4 for sgd (paper), 0.05 for adamw"
    )
    p.add_argument("--schedule", default="step", choices=["step", "cosine"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.npz")
    p.add_argument("--val-data", help="evaluate on this dataset at the end")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    _add_workers(p)

    p = sub.add_parser("evaluate", help="COCO metrics of a checkpoint on a dataset")
    p.add_argument("--checkpoint", required=True)
    _add_common_data(p)
    p.add_argument("--out", help="folder for metrics.json, detections.json, pr_curves.png")
    p.add_argument("--batch-size", type=int, default=8)

    p = sub.add_parser("detect", help="detect objects in image files")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--out", default="detections", help="folder for annotated PNGs and json")
    p.add_argument("--score-thresh", type=float, default=0.3, help="drawing threshold")

    p = sub.add_parser(
        "convert-torchvision",
        help="export a torchvision RetinaNet state_dict (.pth) to .npz (needs torch)",
    )
    p.add_argument("src", help="a .pth file with a retinanet_resnet50_fpn state_dict")
    p.add_argument("dst", help="the .npz file to write")
    p.add_argument("--num-classes", type=int, default=91)
    return parser


def load_dataset(spec: str, strict: bool = False):
    """'shapes:N[:SEED]' or a COCO folder / annotations file (``strict``: see CocoDataset)."""
    from retina_np.data import CocoDataset, ShapesDataset

    if spec.startswith("shapes:"):
        parts = spec.split(":")
        try:
            n = int(parts[1])
            seed = int(parts[2]) if len(parts) > 2 else 0
        except (IndexError, ValueError):
            raise ValueError(f"--data {spec!r}: expected shapes:N or shapes:N:SEED") from None
        return ShapesDataset(n, seed=seed)
    path = Path(spec)
    if path.is_dir():
        return CocoDataset(path / "images", path / "annotations.json", strict=strict)
    if path.suffix == ".json" and path.is_file():
        return CocoDataset(path.parent / "images", path, strict=strict)
    raise ValueError(
        f"--data {spec}: no such dataset (a folder with images/ and annotations.json, or shapes:N)"
    )


def _config_for(name: str, num_classes: int, class_names):
    from retina_np.models import RetinaNetConfig

    presets = {
        "shapes": RetinaNetConfig.shapes,
        "tiny": RetinaNetConfig.tiny,
        "resnet50_fpn": RetinaNetConfig.resnet50_fpn,
    }
    if name not in presets:
        raise ValueError(f"--config {name}: unknown preset (choose from {', '.join(presets)})")
    config = presets[name](num_classes)
    config.class_names = tuple(class_names)
    return config


def cmd_train(args) -> int:
    from retina_np import distributed
    from retina_np.evaluate import evaluate
    from retina_np.models import RetinaNet
    from retina_np.train import TrainConfig, train

    dataset = load_dataset(args.data, args.strict_data)
    val = load_dataset(args.val_data, args.strict_data) if args.val_data else None
    config = _config_for(args.config, len(dataset.class_names), dataset.class_names)
    model = RetinaNet(config, seed=args.seed)
    if args.device == "cuda":
        model.to("cuda")
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,  # None: the optimizer's own
        schedule_kind=args.schedule,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    train(model, dataset, args.out, cfg, resume=args.resume)
    if distributed.world().rank != 0:  # rank 0 reports and evaluates
        return 0
    print(f"checkpoint: {Path(args.out) / 'final.npz'}")
    if val is not None:
        metrics = evaluate(model, val, out_dir=Path(args.out) / "eval")
        _print_metrics(metrics)
    return 0


def _print_metrics(metrics: dict) -> None:
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"]
    print("  ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics))


def cmd_evaluate(args) -> int:
    from retina_np.checkpoint import load_model
    from retina_np.evaluate import evaluate

    model, _ = load_model(args.checkpoint)
    dataset = load_dataset(args.data, args.strict_data)
    if len(dataset.class_names) != model.config.num_classes:
        raise ValueError(
            f"{args.checkpoint}: model has {model.config.num_classes} classes, "
            f"dataset {args.data} has {len(dataset.class_names)}"
        )
    metrics = evaluate(model, dataset, batch_size=args.batch_size, out_dir=args.out)
    _print_metrics(metrics)
    if args.out:
        print(f"written to {args.out}/")
    return 0


def cmd_detect(args) -> int:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from retina_np.checkpoint import load_model
    from retina_np.data import model_batch
    from retina_np.viz import detection_grid

    model, _ = load_model(args.checkpoint)
    names = model.config.class_names or tuple(str(k) for k in range(model.config.num_classes))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for path in args.images:
        try:
            image = np.asarray(Image.open(path).convert("RGB"))
        except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"{path}: cannot read image ({exc})") from None
        batch = model_batch([image], model.config)
        det = model.detect(batch, [image.shape[:2]])[0]
        stem = Path(path).stem
        detection_grid([image], [det], names, path=out / f"{stem}_detections.png", ncols=1)
        results[str(path)] = [
            {
                "box": [float(v) for v in b],
                "score": float(s),
                "label": int(k),
                "class": names[int(k)],
            }
            for b, s, k in zip(det["boxes"], det["scores"], det["labels"])
            if s >= args.score_thresh
        ]
        print(f"{path}: {len(results[str(path)])} detections >= {args.score_thresh}")
    (out / "detections.json").write_text(json.dumps(results, indent=1))
    print(f"written to {out}/")
    return 0


def cmd_convert_torchvision(args) -> int:
    from retina_np.convert import convert_torchvision_checkpoint

    path = convert_torchvision_checkpoint(args.src, args.dst, num_classes=args.num_classes)
    print(f"wrote {path}")
    return 0


def cmd_demo(args) -> int:
    from retina_np.demo import run_demo

    run_demo(
        minutes=args.minutes,
        out_dir=args.out,
        train_images=args.train_images,
        val_images=args.val_images,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
    )
    return 0


def _one_line_dataset_warning(command: str, show):
    """A ``warnings.showwarning`` that prints a DatasetWarning as one line (others as ``show``)."""
    from retina_np.data import DatasetWarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DatasetWarning):
            print(f"retina-np {command}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def _launch_workers(workers: int, argv: list[str]) -> int:
    """Run this command again under ``mpiexec -n workers`` (without --workers); its exit code."""
    import subprocess

    from retina_np import distributed

    if distributed.launched_by_mpi():
        raise SystemExit("retina-np: --workers starts mpiexec itself; under mpiexec leave it out")
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            rest.append(a)
    try:
        cmd = distributed.launch_command(workers, rest)
    except RuntimeError as exc:
        print(f"retina-np: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print("+ " + " ".join(cmd), file=sys.stderr)
    job = subprocess.Popen(cmd)
    while True:
        try:
            return job.wait()
        except KeyboardInterrupt:  # mpiexec passes Ctrl-C on to every rank: let them finish
            continue


COMMANDS = {
    "demo": cmd_demo,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "detect": cmd_detect,
    "convert-torchvision": cmd_convert_torchvision,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "workers", 1) > 1:
        return _launch_workers(args.workers, sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_dataset_warning(args.command, warnings.showwarning)
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # ValueError covers DatasetError, CheckpointError and bad arguments; RuntimeError
        # covers TrainingDiverged and a missing GPU. One line, no traceback.
        message = "; ".join(line.strip() for line in str(exc).strip().splitlines())
        print(f"retina-np {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if args.command == "demo" and _rank() == 0:
            print(f"(total {time.perf_counter() - start:.0f} s)")


def _rank() -> int:
    from retina_np import distributed

    return distributed.world().rank


if __name__ == "__main__":
    sys.exit(main())

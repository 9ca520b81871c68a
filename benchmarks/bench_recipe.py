"""Training-recipe comparison on the shapes dataset: quality after a fixed number of steps.

    python benchmarks/bench_recipe.py --name adamw --optimizer adamw --lr 0.002 --schedule cosine
    python benchmarks/bench_recipe.py --name sgd --optimizer sgd --lr 0.02 --weight-decay 1e-4

Trains the shapes preset (with the changes given) for ``--steps`` steps on 2000 training images
and prints COCO AP / AP50 / AP75 on 300 held-out images, one JSON line (also appended to
``--results``). Quality per step does not depend on how fast the machine is, so recipes can be
compared on a busy machine; the demo's budget then decides how many steps there are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--optimizer", default="adamw", choices=["sgd", "adamw"])
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--schedule", default="cosine", choices=["step", "cosine"])
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--head-norm-groups", type=int, help="default: the preset's")
    p.add_argument("--base-width", type=int, help="default: the preset's")
    p.add_argument("--head-convs", type=int, help="default: the preset's")
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--val-images", type=int, default=300)
    p.add_argument("--out", default="recipe_runs")
    p.add_argument("--results", default="recipe_runs/results.jsonl")
    args = p.parse_args()

    from retina_np.data import ShapesDataset
    from retina_np.evaluate import evaluate
    from retina_np.models import RetinaNet, RetinaNetConfig
    from retina_np.train import TrainConfig, train

    changes = {
        field: getattr(args, field)
        for field in ("head_norm_groups", "base_width", "head_convs")
        if getattr(args, field) is not None
    }
    config = dataclasses.replace(RetinaNetConfig.shapes(3), **changes)
    train_config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        schedule_kind=args.schedule,
        warmup_steps=args.warmup,
        cache_images=True,
        checkpoint_every=0,
    )
    model = RetinaNet(config, seed=0)
    start = time.perf_counter()
    train(model, ShapesDataset(args.train_images, seed=0), f"{args.out}/{args.name}", train_config)
    train_seconds = time.perf_counter() - start
    metrics = evaluate(model, ShapesDataset(args.val_images, seed=10_000), progress=False)
    result = {
        "name": args.name,
        **{k: round(metrics[k], 4) for k in ("AP", "AP50", "AP75")},
        "train_seconds": round(train_seconds, 1),
        "args": vars(args),
    }
    print(json.dumps(result))
    with open(args.results, "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

"""ResNet-50-FPN inference at batch 1, ours against torchvision's ``retinanet_resnet50_fpn``,
both with the same weights, on the CPU.

    python benchmarks/bench_inference.py                                    # 512 and 800
    python benchmarks/bench_inference.py --sizes 512 --rounds 1 --repeat 2  # a smoke run

The weights: torchvision's model built with ``weights=None, weights_backbone=None`` (seed 0),
made to behave like a trained one on the benchmark images, so that the postprocess has a
realistic amount of work: each batch norm's statistics are those of the activations of the
largest image (one forward in training mode), and the classifier's last layer is scaled and
shifted so that, over the images' (anchor, class) pairs, 1.7% score above the 0.05 threshold
(a busy image, as bench_detection.py's postprocess input) and the best scores 0.98 (random
weights left as they are give either no score above 0.05 or a hundred at 1.0, tied in
float32). That state dict, converted by ``retina_np.convert``, is written to a file that both
sides load.

The image: a synthetic shapes image of exactly the timed size (uint8 RGB), so that
torchvision's transform (``min_size = max_size`` = the size) does not resize it. What is timed
is the whole inference of one image:

* ours: ``model.detect(model_batch([image], config))``: normalise, backbone, FPN, heads,
  postprocess (per-level threshold and top-1000, decode, per-class NMS, best 100);
* torchvision: ``model([image])`` in eval mode under ``torch.inference_mode()``: its transform
  (normalise; a resize by a factor of 1.0, a copy; batching), backbone, FPN, heads, the same
  postprocess (``detections_per_img`` set to our 100; torchvision's default is 300), and the
  rescaling of the boxes to the input size (a factor of 1.0). It takes the image as float
  [0, 1] CHW (converted outside the timing); ours takes the uint8 image.

Each side and size runs in its own fresh process: it builds the model, loads the weights,
makes ``--warmup`` untimed calls (our first compiles or loads the Numba kernels), then times
``--repeat`` calls; the sides alternate, ``--rounds`` times. torch runs with as many threads
as our Numba kernels (``torch.set_num_threads``). At the end, one process (torch first, then
retina_np) runs both on the image of each size and says how close their detections are.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# A busy image for a trained detector: 1.7% of the (anchor, class) pairs above the score
# threshold (as bench_detection.py's postprocess input), the best pair at 0.98.
SHARE_ABOVE_THRESH, TOP_SCORE = 0.017, 0.98
CLASSES = 91  # torchvision's COCO head, background slot included


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed_calls(fn, warmup: int, repeat: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_us(fn, repeat: int, warmup: int = 1) -> float:
    """The median time of ``fn()`` over ``repeat`` calls (after ``warmup`` unrecorded), in
    microseconds (the upper of the middle two for an even count)."""
    times = sorted(_timed_calls(fn, warmup, repeat))
    return 1e6 * times[len(times) // 2]


def _image_path(folder: Path, size: int) -> Path:
    return folder / f"image_{size}.npy"


def _torchvision_model(size: int, folder: Path):
    """torchvision's RetinaNet with the benchmark's weights and our postprocess numbers, in
    eval mode, its transform set to leave a ``size`` x ``size`` image at its size."""
    import torch
    from torchvision.models.detection import retinanet_resnet50_fpn

    tv = retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=CLASSES, min_size=size, max_size=size
    )
    state = np.load(folder / "weights.npz")
    tv.load_state_dict({k: torch.from_numpy(state[k]) for k in state.files})
    for name, value in json.loads((folder / "postprocess.json").read_text()).items():
        setattr(tv, name, value)
    return tv.eval()


def _torch_image(image: np.ndarray):
    """uint8 (H, W, 3) -> float (3, H, W) in [0, 1], what torchvision's detectors take."""
    import torch

    return torch.from_numpy(image).permute(2, 0, 1).float().div(255).contiguous()


# --------------------------------------------------------------------------------------------
# The parts, each run in its own process
# --------------------------------------------------------------------------------------------


def part_weights(folder: Path, sizes: list[int]) -> dict:
    """Write the shared weights (weights.npz), our postprocess numbers and the images."""
    import torch
    from torch import nn
    from torchvision.models.detection import retinanet_resnet50_fpn

    from retina_np.convert import torchvision_state_to_numpy
    from retina_np.data import ShapesDataset, model_batch
    from retina_np.models import RetinaNetConfig

    for size in sizes:
        image = ShapesDataset(1, size, seed=0, max_shapes=8, max_size=size // 3)[0][0]
        np.save(_image_path(folder, size), image)  # (H, W, 3) uint8
    c = RetinaNetConfig.resnet50_fpn(CLASSES)
    post = {k: getattr(c, k) for k in
            ("score_thresh", "nms_thresh", "topk_candidates", "detections_per_img")}
    (folder / "postprocess.json").write_text(json.dumps(post))

    torch.manual_seed(0)
    tv = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=CLASSES).eval()
    # normalised as both models do (torchvision's transform would resize them to its min_size)
    xs = [torch.from_numpy(model_batch([np.load(_image_path(folder, size))], c))
          for size in sizes]
    with torch.no_grad():
        norms = [m for m in tv.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in norms:  # momentum None and one batch: the running statistics = the batch's
            m.reset_running_stats()
            m.momentum = None
        tv.backbone.train()(xs[int(np.argmax(sizes))])
        tv.eval()
        for m in norms:
            m.momentum = 0.1
        head = tv.head.classification_head
        final = head.cls_logits
        z = np.concatenate([  # every pair's logit without the bias, all images
            torch.nn.functional.conv2d(head.conv(f), final.weight, None, padding=1).flatten()
            for x in xs for f in tv.backbone(x).values()
        ])
        # logit = scale * z + bias: the (1 - share) quantile at the threshold, the top at 0.98
        at_thresh = np.log(c.score_thresh / (1 - c.score_thresh))
        z_thresh = np.quantile(z, 1 - SHARE_ABOVE_THRESH)
        scale = (np.log(TOP_SCORE / (1 - TOP_SCORE)) - at_thresh) / (z.max() - z_thresh)
        final.weight.mul_(float(scale))
        final.bias.fill_(float(at_thresh - scale * z_thresh))
    np.savez(folder / "weights.npz", **torchvision_state_to_numpy(tv.state_dict()))
    return {}


def part_ours(folder: Path, size: int, warmup: int, repeat: int) -> dict:
    import numba

    from retina_np.data import model_batch
    from retina_np.models import RetinaNet, RetinaNetConfig

    model = RetinaNet(RetinaNetConfig.resnet50_fpn(CLASSES)).eval()
    state = np.load(folder / "weights.npz")
    model.load_state_dict({k: state[k] for k in state.files})
    image = np.load(_image_path(folder, size))
    times = _timed_calls(lambda: model.detect(model_batch([image], model.config)), warmup, repeat)
    return {
        "times": times,
        "threads": numba.get_num_threads(),
        "layer": numba.threading_layer(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "peak_rss_mb": _peak_rss_mb(),
    }


def part_torchvision(folder: Path, size: int, warmup: int, repeat: int, threads: int) -> dict:
    # OpenMP's wait policy: each side runs alone in its process, so the two runtimes' idle
    # workers never compete here (bench_detection.py, with both in one process, sets
    # OMP_WAIT_POLICY=PASSIVE for that reason). Each keeps its own setting: ``import
    # retina_np`` sets PASSIVE for Numba's OpenMP workers (retina_np/runtime.py), while torch's
    # own GNU OpenMP keeps its default (idle workers spin a while before they sleep), unless
    # the environment sets a policy for both. On a machine that other processes share, the
    # spinning makes torch's times swing widely; OMP_WAIT_POLICY=PASSIVE steadies them.
    import torch
    import torchvision

    torch.set_num_threads(threads)
    tv = _torchvision_model(size, folder)
    t = tv.transform
    if tuple(t.min_size) != (size,) or t.max_size != size:
        raise RuntimeError(f"torchvision's transform would resize: {t}")
    x = _torch_image(np.load(_image_path(folder, size)))
    with torch.inference_mode():
        times = _timed_calls(lambda: tv([x]), warmup, repeat)
    return {
        "times": times,
        "threads": torch.get_num_threads(),
        "versions": f"torch {torch.__version__}, torchvision {torchvision.__version__}",
        "transform": f"min_size {t.min_size}, max_size {t.max_size}, mean {t.image_mean}, "
                     f"std {t.image_std}, size_divisible {t.size_divisible}",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "peak_rss_mb": _peak_rss_mb(),
    }


def part_check(folder: Path, sizes: list[int]) -> dict:
    """Both models on the image of each size, in one process: how close the normalised
    inputs, the head outputs and the detections are."""
    # Both libraries in one process: their OpenMP workers must sleep when idle, or each
    # runtime's spinning threads take the cores from the other (as bench_detection.py). Set
    # before either starts its threads; only correctness is measured here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from retina_np.data import model_batch
    from retina_np.models import RetinaNet, RetinaNetConfig

    state = np.load(folder / "weights.npz")
    ours = RetinaNet(RetinaNetConfig.resnet50_fpn(CLASSES)).eval()
    ours.load_state_dict({k: state[k] for k in state.files})
    report = {}
    for size in sizes:
        image = np.load(_image_path(folder, size))
        tv = _torchvision_model(size, folder)
        x = model_batch([image], ours.config)
        with torch.inference_mode():
            theirs_x = tv.transform([_torch_image(image)])[0].tensors
            feats = list(tv.backbone(theirs_x).values())
            head = tv.head(feats)
            det_tv = {k: v.numpy() for k, v in tv([_torch_image(image)])[0].items()}
        cls, box = ours(x)
        ours.clear_caches()
        det = ours.detect(x)[0]
        r = {
            "input_max_abs_diff": float(np.abs(theirs_x.numpy() - x).max()),
            "cls_max_abs_diff": float(np.abs(head["cls_logits"].numpy() - cls).max()),
            "box_max_abs_diff": float(np.abs(head["bbox_regression"].numpy() - box).max()),
            "pairs_above_thresh": float((cls > np.log(0.05 / 0.95)).mean()),
            **_compare(det, det_tv),
        }
        if not r["identical"]:  # torchvision's postprocess on our head outputs
            counts = [f.shape[2] * f.shape[3] * 9 for f in feats]
            anchors = ours.anchors((size, size))
            with torch.inference_mode():
                det_post = tv.postprocess_detections(
                    {"cls_logits": list(torch.from_numpy(cls).split(counts, dim=1)),
                     "bbox_regression": list(torch.from_numpy(box).split(counts, dim=1))},
                    [list(torch.from_numpy(anchors).split(counts))],
                    [(size, size)],
                )[0]
            r["their_postprocess_on_our_heads"] = _compare(
                det, {k: v.numpy() for k, v in det_post.items()})
        report[str(size)] = r
    return report


def _compare(det: dict, det_tv: dict, rtol=1e-4, atol_px=0.01) -> dict:
    """Pair each of our detections with one of torchvision's that has the same label, a score
    within ``rtol`` and a box within ``atol_px`` pixels, at any rank (equal scores may come in
    either order); the largest differences of the pairs, and how many kept their rank."""
    free = list(range(len(det_tv["scores"])))
    pairs = []
    for i, (box, score, label) in enumerate(zip(det["boxes"], det["scores"], det["labels"])):
        for j in free:
            if (det_tv["labels"][j] == label
                    and abs(det_tv["scores"][j] - score) <= rtol * score
                    and np.abs(det_tv["boxes"][j] - box).max() <= atol_px):
                pairs.append((i, j))
                free.remove(j)
                break
    i, j = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
    n = min(len(det["scores"]), len(det_tv["scores"]))
    return {
        "ours": len(det["scores"]),
        "theirs": len(det_tv["scores"]),
        "paired": len(pairs),
        "same_rank": int((i == j).sum()),
        "identical": len(pairs) == len(det["scores"]) == len(det_tv["scores"]),
        "score_max_abs_diff": float(np.abs(det["scores"][i] - det_tv["scores"][j]).max(
            initial=0.0)),
        "box_max_abs_diff": float(np.abs(det["boxes"][i] - det_tv["boxes"][j]).max(
            initial=0.0)),
        "rank_score_max_abs_diff": float(np.abs(det["scores"][:n] - det_tv["scores"][:n]).max(
            initial=0.0)),  # the two score lists, rank by rank
    }


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def _run_part(*args) -> dict:
    cmd = [sys.executable, __file__, "--part", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _print_check(check: dict) -> None:
    print("\nsame detections? (one process, both models on the image of each size)")
    for size, r in check.items():
        print(f"  {size}: inputs after normalisation max |diff| {r['input_max_abs_diff']:.1e}; "
              f"head outputs max |diff| cls {r['cls_max_abs_diff']:.1e}, box "
              f"{r['box_max_abs_diff']:.1e}; {100 * r['pairs_above_thresh']:.2f}% of the "
              "(anchor, class) pairs above the 0.05 score")
        print(f"       {_describe(r)}")
        if "their_postprocess_on_our_heads" in r:
            print(f"       torchvision's postprocess fed our head outputs: "
                  f"{_describe(r['their_postprocess_on_our_heads'])}")


def _describe(r: dict) -> str:
    text = (f"detections ours {r['ours']}, torchvision {r['theirs']}: {r['paired']} paired (same "
            f"label, score within 1e-4 relative, box within 0.01 px; max |diff| score "
            f"{r['score_max_abs_diff']:.1e}, box {r['box_max_abs_diff']:.1e} px), "
            f"{r['same_rank']} of them at the same rank")
    if r["same_rank"] < r["paired"]:
        gap = r["rank_score_max_abs_diff"]
        text += f" (rank by rank the two score lists differ by at most {gap:.1e}" + (
            ": the others swap places among equal scores)" if gap == 0 else ")")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 800])
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two sides")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before them")
    parser.add_argument("--part", nargs="+", help=argparse.SUPPRESS)  # a child process's work
    args = parser.parse_args()
    if args.part:
        name, folder, *rest = args.part
        folder, ints = Path(folder), [int(v) for v in rest]
        if name == "weights":
            out = part_weights(folder, ints)
        elif name == "ours":
            out = part_ours(folder, *ints)
        elif name == "torchvision":
            out = part_torchvision(folder, *ints)
        else:
            out = part_check(folder, ints)
        print(json.dumps(out))
        return

    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        sys.exit("bench_inference.py needs torch and torchvision in this python (ours alone: "
                 "bench_model.py --only 512 / 800)")
    import numba  # reads the thread count it will use; starts no threads

    threads = numba.config.NUMBA_NUM_THREADS
    load_before = os.getloadavg()[0]
    results = {size: {"ours": [], "torchvision": []} for size in args.sizes}
    with tempfile.TemporaryDirectory() as tmp:
        _run_part("weights", tmp, *args.sizes)
        for i in range(args.rounds):
            for size in args.sizes:
                for side in ("ours", "torchvision"):
                    extra = (threads,) if side == "torchvision" else ()
                    r = _run_part(side, tmp, size, args.warmup, args.repeat, *extra)
                    results[size][side].append(r)
                    print(f"round {i + 1} {size} {side:11s}: median {np.median(r['times']):.3f} "
                          f"s, best {min(r['times']):.3f} s, {r['threads']} threads, "
                          f"OMP_WAIT_POLICY {r['omp_wait_policy']}, peak RSS "
                          f"{r['peak_rss_mb']:.0f} MB", flush=True)
        check = _run_part("check", tmp, *args.sizes)
    first = results[args.sizes[0]]
    print(f"\n{first['torchvision'][0]['versions']}; numba {numba.__version__} "
          f"({first['ours'][0]['layer']} layer); {threads} threads each; torchvision's transform "
          f"at {args.sizes[0]}: {first['torchvision'][0]['transform']}")
    print(f"seconds per image, batch 1, whole inference; median and best of {args.rounds} "
          f"process(es) x {args.repeat} calls each after {args.warmup} warm-up call(s)")
    print(f"{'size':>7} {'ours median':>12} {'best':>7} {'tv median':>10} {'best':>7} "
          f"{'tv/ours':>8} {'best':>6} {'ours RSS':>9} {'tv RSS':>8}")
    for size in args.sizes:
        ours = np.concatenate([r["times"] for r in results[size]["ours"]])
        tv = np.concatenate([r["times"] for r in results[size]["torchvision"]])
        rss = {k: max(r["peak_rss_mb"] for r in v) for k, v in results[size].items()}
        print(f"{size:>4}^2 {np.median(ours):12.3f} {ours.min():7.3f} {np.median(tv):10.3f} "
              f"{tv.min():7.3f} {np.median(tv) / np.median(ours):8.2f} "
              f"{tv.min() / ours.min():6.2f} {rss['ours']:6.0f} MB {rss['torchvision']:5.0f} MB")
    print("tv/ours > 1: ours is faster. Peak RSS: the whole process (torch's libraries, or "
          "Numba's and LLVM's), at its largest.")
    _print_check(check)
    print(f"(load average before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs; above the CPU count, other processes shared the cores)")


if __name__ == "__main__":
    main()

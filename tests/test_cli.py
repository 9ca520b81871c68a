import json
import subprocess
import sys

import pytest

from retina_np.cli import main
from retina_np.data import ShapesDataset, export_coco


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("coco")
    export_coco(ShapesDataset(6, image_size=64, seed=1, max_size=32), out, progress=False)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, coco_dir):
    out = tmp_path_factory.mktemp("run")
    assert (
        main(
            [
                "train",
                "--data",
                str(coco_dir),
                "--config",
                "tiny",
                "--out",
                str(out),
                "--steps",
                "3",
                "--batch-size",
                "2",
                "--checkpoint-every",
                "0",
            ]
        )
        == 0
    )
    return out


def one_error_line(capsys):
    """The one error line on stderr (progress bars may share stderr), and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_help_runs():
    result = subprocess.run(
        [sys.executable, "-m", "retina_np.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for command in ("demo", "train", "evaluate", "detect", "convert-torchvision"):
        assert command in result.stdout


@pytest.mark.parametrize("preset", [None, "28"])
def test_importing_the_package_first_shortens_openblas_spinning(preset):
    """The command imports retina_np before numpy, which sets OPENBLAS_THREAD_TIMEOUT (read
    when numpy loads OpenBLAS) unless the user chose a value."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if preset:
        env["OPENBLAS_THREAD_TIMEOUT"] = preset
    code = "import retina_np.cli, os; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.strip() == (preset or "4")


def test_train_evaluate_detect_end_to_end(run_dir, coco_dir, tmp_path, capsys):
    ckpt = run_dir / "final.npz"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(ckpt),
                "--data",
                str(coco_dir),
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    assert "AP50" in capsys.readouterr().out
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["AP50"] >= 0
    image = sorted((coco_dir / "images").iterdir())[0]
    assert (
        main(["detect", "--checkpoint", str(ckpt), str(image), "--out", str(tmp_path / "det")]) == 0
    )
    assert (tmp_path / "det" / "detections.json").exists()
    assert (tmp_path / "det" / f"{image.stem}_detections.png").exists()


def test_corrupt_image_file(coco_dir, tmp_path, run_dir, capsys):
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    for f in (coco_dir / "images").iterdir():
        (bad / "images" / f.name).write_bytes(f.read_bytes())
    (bad / "annotations.json").write_text((coco_dir / "annotations.json").read_text())
    victim = sorted((bad / "images").iterdir())[2]
    victim.write_bytes(b"not a png")
    code = main(["evaluate", "--checkpoint", str(run_dir / "final.npz"), "--data", str(bad)])
    assert code == 2
    assert victim.name in one_error_line(capsys)


def train_on(path, out, *extra):
    return main(["train", "--data", str(path), "--config", "tiny", "--out", str(out),
                 "--steps", "1", "--batch-size", "2", "--checkpoint-every", "0", *extra])


@pytest.mark.parametrize("problem", ["degenerate", "outside", "category", "not_finite"])
def test_bad_annotation_with_strict_data(coco_dir, tmp_path, capsys, problem):
    data = json.loads((coco_dir / "annotations.json").read_text())
    ann = data["annotations"][1]
    if problem == "degenerate":
        ann["bbox"][2] = 0
    elif problem == "outside":
        ann["bbox"][0] = 1000
    elif problem == "category":
        ann["category_id"] = 99
    else:
        ann["bbox"][1] = float("nan")
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    (tmp_path / "images").symlink_to(coco_dir / "images")
    strict = train_on(path, tmp_path / "r", "--strict-data")
    assert strict == 2
    line = one_error_line(capsys)
    assert "annotations.json" in line and "annotations[1]" in line
    if problem in ("category", "not_finite"):  # errors with or without --strict-data
        assert train_on(path, tmp_path / "r") == 2
        assert "annotations[1]" in one_error_line(capsys)


def test_real_world_boxes_train_with_one_warning(coco_dir, tmp_path, capsys):
    # A zero-width box and a box 3 px past the border, as in real COCO files; the rest is clean.
    data = json.loads((coco_dir / "annotations.json").read_text())
    zero_width, past_border = data["annotations"][1], data["annotations"][4]
    zero_width["bbox"][2] = 0
    image = next(i for i in data["images"] if i["id"] == past_border["image_id"])
    past_border["bbox"][2] = image["width"] + 3 - past_border["bbox"][0]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    (tmp_path / "images").symlink_to(coco_dir / "images")
    assert train_on(path, tmp_path / "r") == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "Traceback" not in err, err
    assert warnings[0].startswith("retina-np train: warning: ")
    dropped = ("dropped 1 box(es) of zero width or height or outside their image "
               f"(annotation ids {zero_width['id']})")
    clipped = ("clipped 1 box(es) reaching more than 1 px past their image "
               f"(annotation ids {past_border['id']})")
    assert dropped in warnings[0] and clipped in warnings[0]
    assert (tmp_path / "r" / "final.npz").exists()
    assert train_on(path, tmp_path / "s", "--strict-data") == 2
    line = one_error_line(capsys)
    assert f"(id {zero_width['id']}): degenerate bbox" in line


def test_missing_files(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "x.npz"), "--data", "shapes:4"]) == 2
    assert "x.npz" in one_error_line(capsys)
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "nowhere" in one_error_line(capsys)


def test_checkpoint_from_a_different_config(run_dir, capsys):
    # The run has 3 classes; a 2-class COCO file does not fit it.
    code = main(["evaluate", "--checkpoint", str(run_dir / "final.npz"), "--data", "shapes:4"])
    assert code == 0  # same classes: fine
    capsys.readouterr()
    from retina_np.checkpoint import load_checkpoint, save_checkpoint
    from retina_np.models import RetinaNet, RetinaNetConfig

    other = RetinaNet(RetinaNetConfig.tiny(3))
    other.config.fpn_channels = 16  # the config in the file no longer matches its weights
    bad = save_checkpoint(run_dir / "mismatch.npz", other)
    assert load_checkpoint(run_dir / "final.npz").state_dict  # the original still loads
    code = main(["evaluate", "--checkpoint", str(bad), "--data", "shapes:4"])
    assert code == 2
    assert "mismatch.npz" in one_error_line(capsys)


def test_demo_with_fewer_training_images_than_its_timing_steps(tmp_path, capsys):
    """The demo times six steps before it plans the run; a training set of two batches
    takes them from the next epochs instead of asking for batches that do not exist."""
    code = main(["demo", "--minutes", "0.1", "--train-images", "16", "--val-images", "4",
                 "--out", str(tmp_path / "demo")])
    assert code == 0
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert 0.0 <= metrics["AP50"] <= 1.0

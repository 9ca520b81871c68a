import json
import re

import numpy as np
import pytest
from PIL import Image

from retina_np.data import CocoDataset, DatasetError, DatasetWarning, ShapesDataset, export_coco


@pytest.fixture
def tiny_coco(tmp_path):
    """Three 20x30 images; category ids 3, 7, 10 (not contiguous); image 2 has no boxes."""
    images_dir = tmp_path / "imgs"
    images_dir.mkdir()
    rng = np.random.default_rng(0)
    images = []
    for k, image_id in enumerate([11, 5, 42]):
        name = f"img{k}.png"
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(images_dir / name)
        images.append({"id": image_id, "file_name": name, "width": 30, "height": 20})
    annotations = [
        {"id": 1, "image_id": 11, "category_id": 7, "bbox": [1, 2, 10, 5], "iscrowd": 0},
        {"id": 2, "image_id": 11, "category_id": 3, "bbox": [0, 0, 30, 20], "iscrowd": 0},
        {"id": 3, "image_id": 5, "category_id": 10, "bbox": [4.5, 3.25, 2, 7], "iscrowd": 0},
        {"id": 4, "image_id": 5, "category_id": 7, "bbox": [0, 0, 5, 5], "iscrowd": 1},
    ]
    categories = [{"id": 10, "name": "c"}, {"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    data = {"images": images, "annotations": annotations, "categories": categories}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return images_dir, path, data


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def test_export_then_load_round_trips_exactly(tmp_path):
    shapes = ShapesDataset(6, image_size=(48, 64), seed=9, max_size=40)
    path = export_coco(shapes, tmp_path / "out", progress=False)
    coco = CocoDataset(tmp_path / "out" / "images", path)
    assert len(coco) == len(shapes) and coco.class_names == shapes.class_names
    for i in range(len(shapes)):
        image, target = shapes[i]
        image2, target2 = coco[i]
        assert image2.dtype == np.uint8 and image2.shape == image.shape
        np.testing.assert_array_equal(image2, image)
        assert target2["boxes"].dtype == np.float32 and target2["labels"].dtype == np.int64
        np.testing.assert_array_equal(target2["boxes"], target["boxes"])
        np.testing.assert_array_equal(target2["labels"], target["labels"])
        assert coco.image_id(i) == shapes.image_id(i)
        assert coco.image_size(i) == (48, 64)
    data = json.loads(path.read_text())
    assert [c["id"] for c in data["categories"]] == [1, 2, 3]
    ann = data["annotations"][0]
    assert ann["iscrowd"] == 0 and ann["area"] == ann["bbox"][2] * ann["bbox"][3]


def test_category_mapping_and_targets(tiny_coco):
    images_dir, path, _ = tiny_coco
    ds = CocoDataset(images_dir, path)
    assert ds.label_to_category_id == {0: 3, 1: 7, 2: 10}
    assert ds.class_names == ("a", "b", "c")
    for label, cid in ds.label_to_category_id.items():
        assert ds.category_id_to_label[cid] == label
    assert [ds.image_id(i) for i in range(3)] == [11, 5, 42]
    t0 = ds.target(0)
    np.testing.assert_array_equal(t0["boxes"], [[1, 2, 11, 7], [0, 0, 30, 20]])
    np.testing.assert_array_equal(t0["labels"], [1, 0])
    t1 = ds.target(1)  # the crowd annotation is left out of the target
    np.testing.assert_array_equal(t1["boxes"], np.array([[4.5, 3.25, 6.5, 10.25]], np.float32))
    np.testing.assert_array_equal(t1["labels"], [2])
    assert len(ds.coco_annotations(1)) == 2  # ... but kept for evaluation


def test_image_without_annotations(tiny_coco):
    images_dir, path, _ = tiny_coco
    image, target = CocoDataset(images_dir, path)[2]
    assert image.shape == (20, 30, 3)
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == np.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == np.int64


def test_export_of_a_coco_dataset_keeps_category_ids(tiny_coco, tmp_path):
    images_dir, path, _ = tiny_coco
    ds = CocoDataset(images_dir, path)
    out = export_coco(ds, tmp_path / "again", progress=False)
    again = CocoDataset(tmp_path / "again" / "images", out)
    assert again.label_to_category_id == ds.label_to_category_id
    for i in range(len(ds)):
        np.testing.assert_array_equal(again[i][0], ds[i][0])
        np.testing.assert_array_equal(again.target(i)["boxes"], ds.target(i)["boxes"])


def test_grayscale_image_becomes_rgb(tiny_coco):
    images_dir, path, _ = tiny_coco
    Image.fromarray(np.full((20, 30), 7, np.uint8)).save(images_dir / "img0.png")
    image = CocoDataset(images_dir, path)[0][0]
    assert image.shape == (20, 30, 3) and (image == 7).all()


# Boxes real files hold, refused only with strict=True: (edit of the json, where).
REPAIRABLE_BOXES = {
    "degenerate_w": (lambda d: d["annotations"][2].update(bbox=[1, 1, 0, 3]), "annotations[2]"),
    "degenerate_h": (lambda d: d["annotations"][1].update(bbox=[1, 1, 3, -2]), "annotations[1]"),
    "outside": (lambda d: d["annotations"][0].update(bbox=[25, 2, 10, 5]), "annotations[0]"),
    "negative": (lambda d: d["annotations"][2].update(bbox=[-3, 2, 10, 5]), "annotations[2]"),
}

# Each bad annotation case: (edit of the json, text the message must hold).
BAD_ANNOTATIONS = {
    "not_finite": (lambda d: d["annotations"][2].update(bbox=[1, float("inf"), 2, 2]),
                   "annotations[2]"),
    "unknown_category": (lambda d: d["annotations"][1].update(category_id=99), "annotations[1]"),
    "unknown_image": (lambda d: d["annotations"][0].update(image_id=1234), "annotations[0]"),
    "bbox_text": (lambda d: d["annotations"][2].update(bbox=[1, "a", 2, 2]), "annotations[2]"),
    "bbox_short": (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotations[0]"),
    "missing_file_name": (lambda d: d["images"][1].pop("file_name"), "images[1]"),
    "duplicate_image_id": (lambda d: d["images"][2].update(id=11), "images[2]"),
    "no_categories": (lambda d: d.pop("categories"), "categories"),
}


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("case", sorted(BAD_ANNOTATIONS))
def test_bad_annotations_raise_one_clear_error(tiny_coco, case, strict):
    images_dir, path, data = tiny_coco
    edit, where = BAD_ANNOTATIONS[case]
    edit(data)
    write_json(path, data)
    with pytest.raises(ValueError) as info:  # DatasetError is a ValueError
        CocoDataset(images_dir, path, strict=strict)
    assert isinstance(info.value, DatasetError)
    assert str(path) in str(info.value) and where in str(info.value)


@pytest.mark.parametrize("case", sorted(REPAIRABLE_BOXES))
def test_strict_refuses_degenerate_and_outside_boxes(tiny_coco, case):
    images_dir, path, data = tiny_coco
    edit, where = REPAIRABLE_BOXES[case]
    edit(data)
    write_json(path, data)
    with pytest.raises(DatasetError) as info:
        CocoDataset(images_dir, path, strict=True)
    assert str(path) in str(info.value) and where in str(info.value)


def test_degenerate_boxes_are_dropped_and_overhangs_clipped_with_one_warning(tiny_coco):
    images_dir, path, data = tiny_coco
    anns = data["annotations"]
    anns[0]["bbox"] = [1, 2, 10, 0]  # height 0, as COCO's annotation 918 (image 11)
    anns[1]["bbox"] = [-3, 5, 36, 18]  # 3 px past the left, right and bottom (image 11)
    anns[2]["bbox"] = [40, 3, 5, 5]  # entirely right of the 30 px wide image 5
    anns.append({"id": 8, "image_id": 42, "category_id": 3, "bbox": [29.5, 0, 1, 5]})  # 0.5 px
    write_json(path, data)
    with pytest.warns(DatasetWarning) as caught:
        ds = CocoDataset(images_dir, path)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(str(path))
    assert "dropped 2 box(es)" in message and "annotation ids 1, 3)" in message
    assert "clipped 1 box(es)" in message and "annotation ids 2)" in message
    np.testing.assert_array_equal(ds.target(0)["boxes"], [[0, 5, 30, 20]])
    np.testing.assert_array_equal(ds.target(0)["labels"], [0])
    assert ds.target(1)["boxes"].shape == (0, 4)  # its other annotation is a crowd one
    np.testing.assert_array_equal(ds.target(2)["boxes"], [[29.5, 0, 30, 5]])  # within 1 px
    assert [a["bbox"] for a in ds.coco_annotations(0)] == [[0, 5, 30, 15]]  # for evaluation
    assert data["annotations"][1]["bbox"] == [-3, 5, 36, 18]  # the caller's json is untouched


def test_many_repairs_name_the_first_few_ids(tiny_coco):
    images_dir, path, data = tiny_coco
    data["annotations"] = [
        {"id": 100 + k, "image_id": 11, "category_id": 3, "bbox": [k, k, 0, 2]} for k in range(8)
    ]
    write_json(path, data)
    with pytest.warns(DatasetWarning, match=r"dropped 8 box\(es\).*ids 100, 101, 102, 103, 104 "
                     r"and 3 more\)"):
        CocoDataset(images_dir, path)


def test_a_clean_file_gives_no_warning(tiny_coco, recwarn):
    images_dir, path, _ = tiny_coco
    CocoDataset(images_dir, path)
    assert not [w for w in recwarn if issubclass(w.category, DatasetWarning)]


def test_malformed_json(tiny_coco):
    images_dir, path, _ = tiny_coco
    path.write_text('{"images": [}')
    with pytest.raises(DatasetError, match=re.escape(str(path)) + ".*line 1 column"):
        CocoDataset(images_dir, path)
    with pytest.raises(DatasetError, match="not found"):
        CocoDataset(images_dir, path.with_name("nope.json"))


@pytest.mark.parametrize("case", ["missing", "garbage", "truncated", "wrong_size"])
def test_bad_image_files_fail_on_load(tiny_coco, case):
    images_dir, path, _ = tiny_coco
    target = images_dir / "img1.png"
    if case == "missing":
        target.unlink()
    elif case == "garbage":
        target.write_bytes(b"this is not a png at all")
    elif case == "truncated":
        target.write_bytes(target.read_bytes()[:100])
    else:
        Image.fromarray(np.zeros((21, 30, 3), np.uint8)).save(target)
    ds = CocoDataset(images_dir, path)  # images are checked lazily
    ds[0], ds[2]  # the good ones still load
    with pytest.raises(DatasetError) as info:
        ds[1]
    message = str(info.value)
    assert str(target) in message and "index 1" in message


def test_out_of_range_index(tiny_coco):
    images_dir, path, _ = tiny_coco
    ds = CocoDataset(images_dir, path)
    with pytest.raises(IndexError):
        ds[3]


def test_json_without_annotations_is_a_set_of_empty_images(tiny_coco):
    images_dir, path, data = tiny_coco
    del data["annotations"]
    write_json(path, data)
    ds = CocoDataset(images_dir, path)
    assert all(ds.target(i)["boxes"].shape == (0, 4) for i in range(len(ds)))

import os

import numpy as np
import pytest

from retina_np.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from retina_np.models import RetinaNet, RetinaNetConfig
from retina_np.optim import SGD


@pytest.fixture
def trained(rng):
    model = RetinaNet(RetinaNetConfig.tiny(2), seed=0)
    opt = SGD(model.named_parameters(), lr=0.01)
    for p in model.parameters():
        p.grad[...] = rng.normal(size=p.shape)
    opt.step()
    return model, opt


def test_round_trip_gives_bit_identical_outputs(tmp_path, trained, rng):
    model, opt = trained
    path = save_checkpoint(tmp_path / "a.npz", model, opt, step=7, rng=rng, extra={"note": "x"})
    loaded, ckpt = load_model(path)
    x = rng.normal(size=(1, 3, 64, 64)).astype(np.float32)
    for a, b in zip(model.eval()(x), loaded.eval()(x)):
        assert np.array_equal(a, b)
    assert ckpt.step == 7 and ckpt.extra == {"note": "x"}
    assert set(ckpt.optimizer_state) == set(opt.state_dict())
    assert ckpt.config == model.config
    # The saved generator state continues exactly where the saved generator would.
    g = np.random.default_rng(5)
    save_checkpoint(tmp_path / "b.npz", model, rng=g)
    expected = g.random()
    h = np.random.default_rng()
    h.bit_generator.state = load_checkpoint(tmp_path / "b.npz").rng_state
    assert h.random() == expected


def test_truncated_file_raises_clear_error(tmp_path, trained):
    path = save_checkpoint(tmp_path / "a.npz", trained[0])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="a.npz"):
        load_checkpoint(path)


def test_altered_file_raises_clear_error(tmp_path, trained):
    model = trained[0]
    path = save_checkpoint(tmp_path / "a.npz", model)
    # Re-save one array with a changed value but a valid zip: only the digest can tell.
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["model/head.regression_head.bbox_reg.bias"] = (
        arrays["model/head.regression_head.bbox_reg.bias"] + 1
    )
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="altered"):
        load_checkpoint(path)
    # And flipping raw bytes inside the archive is caught as well.
    path2 = save_checkpoint(tmp_path / "b.npz", model)
    raw = bytearray(path2.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    path2.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError):
        load_checkpoint(path2)


def test_pickled_content_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_interrupted_save_keeps_the_old_file(tmp_path, trained, monkeypatch):
    model = trained[0]
    path = save_checkpoint(tmp_path / "a.npz", model, step=1)

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, step=2)
    monkeypatch.undo()
    assert load_checkpoint(path).step == 1
    assert os.listdir(tmp_path) == ["a.npz"]  # no temp file left behind


def test_checkpoint_from_another_config_is_reported(tmp_path, trained):
    path = save_checkpoint(tmp_path / "a.npz", trained[0])
    other = RetinaNet(RetinaNetConfig.tiny(3))
    with pytest.raises(ValueError, match="cls_logits.weight"):
        other.load_state_dict(load_checkpoint(path).state_dict)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.npz")

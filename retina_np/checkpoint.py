"""Checkpoints as .npz files with no pickle inside, written atomically.

Layout of the archive: ``model/<name>`` for every state_dict array, ``optim/<name>`` for the
optimizer's momentum buffers, and ``meta``: a UTF-8 JSON document (stored as uint8 bytes) with
the config, the step, the RNG state, free-form extras and a SHA-256 of every array, so that an
altered file is caught even when its zip structure is intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or does not fit the model."""


@dataclass
class Checkpoint:
    state_dict: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray] = field(default_factory=dict)
    config_json: str | None = None
    step: int = 0
    rng_state: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def config(self):
        from retina_np.models.config import RetinaNetConfig

        return None if self.config_json is None else RetinaNetConfig.from_json(self.config_json)


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_checkpoint(
    path, model, optimizer=None, step: int = 0, rng=None, extra: dict | None = None
) -> Path:
    """Write ``path`` atomically: a temp file in the same folder, fsync, then rename.

    An interrupted save leaves any earlier file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    config = getattr(model, "config", None)
    meta = {
        "format_version": FORMAT_VERSION,
        "config": None if config is None else config.to_json(),
        "step": int(step),
        "rng_state": None if rng is None else rng.bit_generator.state,
        "extra": extra or {},
        "sha256": _digest(arrays),
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path) -> Checkpoint:
    """Read and verify a checkpoint; any damage raises ``CheckpointError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {exc}"
        ) from exc
    if "meta" not in arrays:
        raise CheckpointError(f"{path}: no 'meta' record; not a retina_np checkpoint")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: its 'meta' record is damaged: {exc}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {meta.get('format_version')}, expected {FORMAT_VERSION}"
        )
    if _digest(arrays) != meta.get("sha256"):
        raise CheckpointError(f"{path}: contents do not match their SHA-256; the file was altered")
    return Checkpoint(
        state_dict={k[len("model/") :]: v for k, v in arrays.items() if k.startswith("model/")},
        optimizer_state={
            k[len("optim/") :]: v for k, v in arrays.items() if k.startswith("optim/")
        },
        config_json=meta.get("config"),
        step=int(meta.get("step", 0)),
        rng_state=meta.get("rng_state"),
        extra=meta.get("extra", {}),
    )


def load_model(path):
    """A RetinaNet built from the checkpoint's config, with its weights loaded."""
    # the module, not the package retina_np.models: that imports models.pretrained, which
    # loads its weights through this function
    from retina_np.models.retinanet import RetinaNet

    ckpt = load_checkpoint(path)
    if ckpt.config is None:
        raise CheckpointError(f"{path}: the checkpoint carries no model config")
    model = RetinaNet(ckpt.config)
    try:
        model.load_state_dict(ckpt.state_dict)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return model, ckpt

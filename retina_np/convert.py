"""Export a torchvision ``retinanet_resnet50_fpn`` state_dict to a retina_np checkpoint.

Only this module touches torch, and only when called: ``retina-np convert-torchvision
model.pth model.npz``. Parameter names are torchvision's already, so the conversion changes
nothing: ``load_state_dict`` ignores the ``num_batches_tracked`` counters that a state_dict of
torch's own BatchNorm2d carries (``weights=None``), as torchvision's FrozenBatchNorm2d does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def torchvision_state_to_numpy(state: dict) -> dict[str, np.ndarray]:
    """torch tensors -> numpy arrays, floating point ones as float32, every key kept."""
    arrays = {k: v.detach().cpu().numpy() for k, v in state.items()}
    return {k: a.astype(np.float32) if a.dtype.kind == "f" else a for k, a in arrays.items()}


def convert_torchvision_checkpoint(src, dst, num_classes: int = 91) -> Path:
    """Read a .pth state_dict with torch, check it against RetinaNet, save it as .npz."""
    try:
        import torch
    except ImportError:
        raise RuntimeError(
            "convert-torchvision needs torch (pip install torch); retina_np itself never imports it"
        ) from None
    from retina_np.checkpoint import save_checkpoint
    from retina_np.models import RetinaNet, RetinaNetConfig

    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file")
    state = torch.load(src, map_location="cpu", weights_only=True)
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    model = RetinaNet(RetinaNetConfig.resnet50_fpn(num_classes))
    model.load_state_dict(torchvision_state_to_numpy(state))
    return save_checkpoint(dst, model, extra={"source": str(src.name)})

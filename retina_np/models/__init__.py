"""The network: ResNet backbone, FPN, RetinaNet heads; ``pretrained("shapes")``, a trained one."""

from retina_np.models.config import RetinaNetConfig
from retina_np.models.fpn import FPN
from retina_np.models.heads import RetinaNetHead
from retina_np.models.pretrained import pretrained
from retina_np.models.resnet import ResNet
from retina_np.models.retinanet import RetinaNet

__all__ = ["FPN", "ResNet", "RetinaNet", "RetinaNetConfig", "RetinaNetHead", "pretrained"]

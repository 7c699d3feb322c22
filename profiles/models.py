"""Plain-torch stand-ins for the catalog's model variants: random weights, no downloads, no torchvision.

``build_model(name)`` takes a variant name (``resnet50``, ``efficientnet_b4``, ``retinanet_resnet50_fpn_v2``,
``deeplabv3_resnet101``, ``bert``, ...), a family name (``classification``, ``detection``, ``segmentation``,
``language``) or ``noop``, and returns ``(module, item_shape)``: a module in eval mode and the shape of one input
item without the batch dimension (always a float32 tensor). The stand-ins keep the shape of the real families
(residual conv nets, depthwise-separable nets, a small vision transformer, detection and segmentation heads on
a conv backbone, a transformer encoder) and grow with the variant, so that a bigger variant costs more; they
are small enough for a laptop CPU (a few ms per item on one thread at the largest size). They stand in for
the real models on CPU (the serving shim's ``cpu`` backend) and wherever a profiler needs a model it can build
offline; their latencies say nothing about the real variants'.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from jigsaw.profiles.errors import CatalogError

FAMILIES = ("classification", "detection", "segmentation", "language")
IMAGE_SHAPE = (3, 64, 64)
TOKENS_SHAPE = (32, 64)  # sequence length x embedding width: the language stand-in takes embedded tokens

# Size 1..8 of a variant within its ladder (more = bigger); a name not listed gets the size its digits suggest.
_SIZES = {
    "resnet18": 1, "resnet34": 2, "resnet50": 3, "resnet101": 4, "resnet152": 5,
    "mobilenet_v3_small": 1, "mobilenet_v3_large": 2, "mobilenetv2": 2, "vit_b_16": 4,
    "fasterrcnn_mobilenet_v3_large_fpn": 1, "fcos_resnet50_fpn": 2, "retinanet_resnet50_fpn_v2": 3,
    "fasterrcnn_resnet50_fpn_v2": 4, "lraspp_mobilenet_v3_large": 1, "deeplabv3_mobilenet_v3_large": 2,
    "deeplabv3_resnet50": 3, "deeplabv3_resnet101": 4, "bert": 3,
}
_FAMILY_PREFIXES = (  # first matching prefix wins
    ("fasterrcnn", "detection"), ("retinanet", "detection"), ("fcos", "detection"), ("ssd", "detection"),
    ("yolo", "detection"), ("deeplab", "segmentation"), ("lraspp", "segmentation"), ("fcn", "segmentation"),
    ("bert", "language"), ("gpt", "language"), ("vit", "vit"), ("mobilenet", "mobile"),
    ("efficientnet", "mobile"), ("", "classification"),
)


def _size(name: str) -> int:
    if name in _SIZES:
        return _SIZES[name]
    m = re.search(r"_b(\d)$", name)  # efficientnet_b0..b7
    if m:
        return int(m.group(1)) + 1
    digits = [int(d) for d in re.findall(r"\d+", name)]
    return min(8, max(1, digits[0] // 30 + 1)) if digits else 2  # resnet/vgg/densenet depths


def _conv(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, width: int, separable: bool) -> None:
        super().__init__()
        self.body = (nn.Sequential(_conv(width, width, groups=width), nn.Conv2d(width, width, 1))
                     if separable else nn.Sequential(_conv(width, width), nn.Conv2d(width, width, 3, padding=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def _backbone(size: int, separable: bool) -> tuple[nn.Sequential, int]:
    """Four stages (1/2 .. 1/16 resolution); deeper and wider with ``size``. Returns it and its output width."""
    width, layers, c_in = 8 + 4 * size, [], IMAGE_SHAPE[0]
    for stage in range(4):
        c_out = width * 2 ** min(stage, 2)
        layers.append(_conv(c_in, c_out, stride=2))
        layers += [_Residual(c_out, separable) for _ in range(max(1, size // 2))]
        c_in = c_out
    return nn.Sequential(*layers), c_in


class _Classifier(nn.Module):
    def __init__(self, size: int, separable: bool) -> None:
        super().__init__()
        self.features, width = _backbone(size, separable)
        self.head = nn.Linear(width, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class _Detector(nn.Module):
    """Per-cell box regression and class scores on the 1/16 feature map (an anchor-free head)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.features, width = _backbone(size, separable=False)
        self.head = nn.Sequential(_conv(width, width), nn.Conv2d(width, 4 + 91, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten(2).transpose(1, 2)  # [batch, cells, box + classes]


class _Segmenter(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.features, width = _backbone(size, separable=size <= 2)
        self.head = nn.Conv2d(width, 21, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(x))
        return nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class _Encoder(nn.Module):
    """A transformer encoder over ``[batch, tokens, dim]`` (the language stand-in, and ViT after patching)."""

    def __init__(self, size: int, dim: int, classes: int) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=size, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[:, 0])


class _ViT(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.patch = nn.Conv2d(IMAGE_SHAPE[0], 64, 8, stride=8)
        self.encoder = _Encoder(size, 64, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.patch(x).flatten(2).transpose(1, 2))


def family_of(name: str) -> str:
    """The stand-in family of a variant or family name: one of FAMILIES, ``vit``, ``mobile`` or ``noop``."""
    if name in (*FAMILIES, "noop"):
        return name
    return next(f for prefix, f in _FAMILY_PREFIXES if name.startswith(prefix))


def build_model(name: str, *, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    """The stand-in for ``name`` (a variant, a family, or ``noop``: the identity on one number, for measuring
    the serving path alone) with random weights drawn from ``seed``, in eval mode.

    :returns: (module, item_shape); the module maps float32 ``[batch, *item_shape]`` to ``[batch, ...]``
    """
    if not name or not name.replace("_", "").isalnum():
        raise CatalogError(f"'{name}' is not a model name", field="model", fix="e.g. resnet50, bert or noop")
    torch.manual_seed(seed)
    family, size = family_of(name), _size(name)
    shape: tuple[int, ...] = IMAGE_SHAPE
    model: nn.Module
    if family == "noop":
        model, shape = nn.Identity(), (1,)
    elif family == "detection":
        model = _Detector(size)
    elif family == "segmentation":
        model = _Segmenter(size)
    elif family == "language":
        model, shape = _Encoder(size, TOKENS_SHAPE[1], 2), TOKENS_SHAPE
    elif family == "vit":
        model = _ViT(size)
    else:
        model = _Classifier(size, separable=family == "mobile")
    return model.eval(), shape

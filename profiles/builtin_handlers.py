"""The built-in handlers: the catalog's families served by the plain-torch stand-ins of ``jigsaw.profiles.models``
(random weights, or a state dict from a local ``weights`` file). torchvision's wheels do not load beside the CPU
build of torch this project pins, so its models are a user handler away (README), not a dependency.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from jigsaw.profiles.errors import CatalogError
from jigsaw.profiles.handlers import EXAMPLE_IMAGE, Handler, Output
from jigsaw.profiles.models import IMAGE_SHAPE, build_model, family_of

# COCO's category names by index, as detectors number them ("N/A": unused ids)
COCO_LABELS = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")


def images_to_batch(images: Sequence[np.ndarray], device: torch.device, shape: tuple[int, ...] = IMAGE_SHAPE
                    ) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` (or ``[H, W]``) images, each resized to ``shape`` (C, H, W) and scaled to [0, 1]."""
    out = torch.empty((len(images), *shape), device=device)
    for i, image in enumerate(images):
        a = np.asarray(image)
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or min(a.shape[:2]) < 1:
            raise ValueError(f"expected an RGB image (uint8 [H, W, 3]), got {a.dtype} {list(a.shape)}")
        x = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).to(device, torch.float32)[None] / 255.0
        out[i] = torch.nn.functional.interpolate(x, size=shape[1:], mode="bilinear", align_corners=False)[0]
    return out


class _StandIn:
    """A stand-in model of ``jigsaw.profiles.models`` on ``device``, its weights random or from ``weights``."""

    def __init__(self, variant: str, weights: str | None, device: str) -> None:
        self.module, self.item_shape = build_model(variant)
        if weights is not None:
            self.module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.device = torch.device(device)
        self.module = self.module.to(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x)


class Classifier(_StandIn):
    """Image -> ``{"label": class index, "score": its probability}``; the children take the same image."""

    def __call__(self, images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        probs = self.forward(images_to_batch(images, self.device, self.item_shape)).softmax(dim=1)
        score, label = probs.max(dim=1)
        return [{"label": int(k), "score": round(float(s), 6)} for k, s in zip(label, score, strict=True)]


class Detector(_StandIn):
    """Image -> detections ``[{"label", "score", "box": [x0, y0, x1, y1] in pixels}]``, best first; each detection's
    crop of the image goes to the children as one item, labelled. The stand-in's logits have no scale (random
    weights), so each class's logits are standardised over the cells of the image: a cell is a detection when its
    best class among ``classes`` (COCO names; default all) stands ``threshold`` deviations above that class's
    mean (at 2.0, about 7 of the 16 cells of a generated image over all 80 classes); its score is the sigmoid of
    that. At most ``max_detections`` per image."""

    def __init__(self, variant: str, weights: str | None, device: str, *, classes: Sequence[str] | None = None,
                 threshold: float = 2.0, max_detections: int = 16) -> None:
        super().__init__(variant, weights, device)
        names = [n for n in COCO_LABELS[1:] if n != "N/A"] if classes is None else list(classes)
        unknown = [n for n in names if n not in COCO_LABELS[1:] or n == "N/A"]
        if unknown or not names:
            raise ValueError(f"classes must be COCO category names (e.g. car, person), not {unknown or names}")
        self.labels, self.ids = names, [COCO_LABELS.index(n) for n in names]
        self.threshold, self.max_detections = float(threshold), int(max_detections)
        self.example = EXAMPLE_IMAGE

    def __call__(self, images: Sequence[np.ndarray]) -> list[Output]:
        raw = self.forward(images_to_batch(images, self.device, self.item_shape)).cpu()  # [batch, cells, 4 + 91]
        grid = round(raw.shape[1] ** 0.5)
        logits = raw[:, :, [4 + i for i in self.ids]]
        z = (logits - logits.mean(dim=1, keepdim=True)) / (logits.std(dim=1, keepdim=True) + 1e-12)
        z, best = z.max(dim=2)
        out = []
        for b, image in enumerate(images):
            h, w = image.shape[:2]
            cells = [int(c) for c in torch.argsort(z[b], descending=True, stable=True)
                     if z[b, c] > self.threshold][:self.max_detections]
            detections, forward = [], []
            for c in cells:
                cy, cx = divmod(c, grid)
                dx, dy, dw, dh = torch.sigmoid(raw[b, c, :4]).tolist()
                x_mid, y_mid = (cx + dx) / grid * w, (cy + dy) / grid * h
                half_w, half_h = max(1.0, dw * w / 2), max(1.0, dh * h / 2)
                x0, x1 = int(max(0, x_mid - half_w)), int(min(w, x_mid + half_w) + 0.999)
                y0, y1 = int(max(0, y_mid - half_h)), int(min(h, y_mid + half_h) + 0.999)
                label = self.labels[int(best[b, c])]
                detections.append({"label": label, "score": round(float(torch.sigmoid(z[b, c])), 6),
                                   "box": [x0, y0, x1, y1]})
                forward.append((label, np.ascontiguousarray(image[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)])))
            out.append(Output(detections, forward))
        return out


class Segmenter(_StandIn):
    """Image -> ``{"classes": {class index: share of the pixels}}`` of the predicted mask (shares ≥ 1 %); the
    children take the same image."""

    def __call__(self, images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        mask = self.forward(images_to_batch(images, self.device, self.item_shape)).argmax(dim=1).flatten(1).cpu()
        out = []
        for m in mask:
            counts = torch.bincount(m, minlength=21) / m.numel()
            out.append({"classes": {int(k): round(float(s), 4) for k, s in enumerate(counts) if s >= 0.01}})
        return out


class Encoder(_StandIn):
    """Float32 ``[tokens, dim]`` embeddings (JSON ``inputs``) -> ``{"label", "score"}``."""

    def __init__(self, variant: str, weights: str | None, device: str) -> None:
        super().__init__(variant, weights, device)
        self.example = np.zeros(self.item_shape, dtype=np.float32)

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        arrays = [np.asarray(x, dtype=np.float32) for x in inputs]
        wrong = next((a for a in arrays if a.shape != self.item_shape), None)
        if wrong is not None:
            raise ValueError(f"expected float [{', '.join(map(str, self.item_shape))}] inputs, got {list(wrong.shape)}")
        probs = self.forward(torch.from_numpy(np.stack(arrays)).to(self.device)).softmax(dim=1)
        score, label = probs.max(dim=1)
        return [{"label": int(k), "score": round(float(s), 6)} for k, s in zip(label, score, strict=True)]


def noop(inputs: Sequence[np.ndarray]) -> list[int]:
    """Passes every input on and answers 0: the serving path alone, for benchmarks."""
    return [0] * len(inputs)


def builtin(variant: str, *, weights: str | None = None, device: str = "cpu", **options: Any) -> Handler:
    """The built-in handler of ``variant``'s family (``jigsaw.profiles.models.family_of``): options go to the
    detector (``classes``, ``threshold``, ``max_detections``); other families take none."""
    family = family_of(variant)
    if family == "noop":
        handler: Handler = noop
    elif family == "detection":
        handler = Detector(variant, weights, device, **options)
    else:
        if options:
            raise CatalogError(f"the built-in {family} handler takes no options ({', '.join(options)})",
                               field="handler.options", fix="remove them")
        kind = {"segmentation": Segmenter, "language": Encoder}.get(family, Classifier)
        handler = kind(variant, weights, device)
    return handler

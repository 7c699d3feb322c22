"""Request payloads: what ``POST /v1/apps/{app}/infer`` takes, how a task's outputs become its children's items,
the same task graph run in one process (the reference the served answers are checked against), and sample
images for load generation and tests.

A body is an image (``Content-Type: image/png`` or ``image/jpeg``; decoded to uint8 ``[H, W, 3]``) or JSON
``{"inputs": numbers, nested}`` (float32). An item's key is its path of output indices from the request (the
source's item is ``()``, a detector's third crop ``(2,)``), so that a task's results are answered in a fixed order
however the items were batched.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from jigsaw.profiles import handlers
from jigsaw.profiles.types import App

IMAGE_TYPES = ("image/png", "image/jpeg")
MAX_PIXELS = 4096 * 4096  # a decoded image larger than this is refused (a small file can decode to gigabytes)
MAX_INPUT_VALUES = 1 << 22  # numbers in a JSON input


class PayloadError(ValueError):
    """A body the app cannot take; ``status`` is the HTTP answer (400, 413 or 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def decode(body: bytes, content_type: str) -> tuple[np.ndarray, str | None]:
    """The input a body carries, and the request id a JSON body may give (``"id"``)."""
    kind = media_type(content_type)
    if kind in IMAGE_TYPES:
        return decode_image(body), None
    if kind not in ("application/json", ""):
        raise PayloadError(415, f"Content-Type {kind} is not served; send {' or '.join(IMAGE_TYPES)}, or "
                                'application/json {"inputs": ...}')
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deeply
        raise PayloadError(400, f"body is not JSON ({e})") from None
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise PayloadError(400, 'send an image (Content-Type image/png or image/jpeg) or JSON {"inputs": ...}')
    rid = doc.get("id")
    return inputs_of(doc["inputs"]), None if rid is None else str(rid)


def decode_image(body: bytes) -> np.ndarray:
    """uint8 ``[H, W, 3]`` pixels of a PNG or JPEG; ``PayloadError`` for anything else or one too large."""
    try:
        with Image.open(io.BytesIO(body)) as image:
            if image.format not in ("PNG", "JPEG"):
                raise PayloadError(415, f"a {image.format} image; send PNG or JPEG")
            if image.width * image.height > MAX_PIXELS:
                raise PayloadError(413, f"a {image.width} x {image.height} image; at most {MAX_PIXELS:,} pixels")
            return np.asarray(image.convert("RGB"))
    except PayloadError:
        raise
    except Exception as e:  # Pillow raises many kinds for a broken file
        raise PayloadError(400, f"the image does not decode ({type(e).__name__}: {e})") from None


def inputs_of(value: Any) -> np.ndarray:
    """JSON numbers (nested lists of equal lengths) as a float32 array; ``PayloadError`` otherwise."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        raise PayloadError(400, '"inputs" must be numbers, or lists of them of equal lengths') from None
    if array.size > MAX_INPUT_VALUES:
        raise PayloadError(413, f'"inputs" has {array.size:,} numbers; at most {MAX_INPUT_VALUES:,}')
    if not np.isfinite(array).all():
        raise PayloadError(400, '"inputs" must be finite numbers')
    return array


# ---------------------------------------------------------------------------------------------- the task graph


def children_items(app: App, task: str, forward: Sequence[tuple[str | None, np.ndarray]]
                   ) -> list[tuple[str, int, np.ndarray]]:
    """(child, index in ``forward``, input) of every item ``task``'s output sends on: each child takes the items
    whose label its edge lists (``App.labels``), or every item when its edge lists none."""
    out = []
    for u, v in app.edges:
        if u != task:
            continue
        labels = app.labels.get((u, v))
        out += [(v, j, x) for j, (label, x) in enumerate(forward) if labels is None or label in labels]
    return out


def ordered(results: Mapping[str, list[tuple[tuple[int, ...], Any]]], app: App) -> dict[str, list[Any]]:
    """Per sink task its results in key order (``[]`` where none reached it)."""
    return {t: [value for _, value in sorted(results.get(t, []), key=lambda r: r[0])] for t in app.sinks}


def run_in_process(app: App, task_handlers: Mapping[str, handlers.Handler], payload: np.ndarray
                   ) -> dict[str, list[Any]]:
    """The answer's ``outputs`` for one input, every item run alone in this process: what serving must give."""
    results: dict[str, list[tuple[tuple[int, ...], Any]]] = {}
    pending = [(t, (), payload) for t in app.sources]
    while pending:
        task, key, x = pending.pop()
        (out,) = handlers.outputs(task_handlers[task], [x])
        if task in app.sinks:
            results.setdefault(task, []).append((key, handlers.jsonable(out.value)))
        pending += [(child, (*key, j), item) for child, j, item in children_items(app, task, out.forward)]
    return ordered(results, app)


# ---------------------------------------------------------------------------------------------- sample images


def sample_images(n: int, size: int = 224, seed: int = 0) -> list[bytes]:
    """``n`` PNG images of ``size`` x ``size``: a random gradient with random boxes and discs on it (real files for
    load generation and tests; no data set to download)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y, x = np.mgrid[0:size, 0:size] / size
        base = rng.uniform(0, 255, (2, 3))
        pixels = (base[0] * (1 - (x + y)[..., None] / 2) + base[1] * ((x + y)[..., None] / 2)).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 9))):
            x0, y0 = rng.uniform(0, size * 0.8, 2)
            w, h = rng.uniform(size * 0.05, size * 0.4, 2)
            shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape([x0, y0, min(size - 1, x0 + w), min(size - 1, y0 + h)], fill=colour)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def sample_inputs(app: App, n: int, seed: int = 0) -> list[tuple[bytes, str]]:
    """``n`` request bodies for ``app`` with their Content-Type: PNG images, or JSON inputs for an app whose
    sources take embeddings (the language family)."""
    if all(app.task(t).family == "language" for t in app.sources):
        from jigsaw.profiles.models import TOKENS_SHAPE

        rng = np.random.default_rng(seed)
        return [(json.dumps({"inputs": rng.normal(size=TOKENS_SHAPE).round(4).tolist()}).encode(), "application/json")
                for _ in range(n)]
    return [(png, "image/png") for png in sample_images(n, seed=seed)]


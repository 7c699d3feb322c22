"""Model handlers: what a worker runs on a batch of real inputs.

A variant's handler (``HandlerSpec``, named in the catalog) is made once per worker by its factory,
``factory(variant, weights=None, device="cpu", **options)``, and maps a batch — a list of inputs, numpy arrays: an
image is uint8 ``[H, W, 3]``, JSON inputs are float32 — to a list with one output per input. An output is a plain
value (numbers, lists, dicts, numpy or torch arrays), and then the task's children each take the same input as one
item; or an ``Output`` that says what the children take: a detector's crops, each with its label, become one
child item each, so a task graph's fan-out comes from the data. A handler may carry ``example``, an input to warm
up and profile with (default: ``EXAMPLE_IMAGE``). A handler that refuses an input raises ``ValueError`` or
``TypeError`` (the request is answered 422); anything else it raises is its own failure (500).

The built-in handler (``jigsaw.profiles.builtin_handlers:builtin``, the default) serves the catalog's families.
This module imports no torch: the daemon and the command line check handlers without loading a model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jigsaw.profiles.errors import CatalogError
from jigsaw.profiles.types import HandlerSpec

Handler = Callable[[Sequence[np.ndarray]], Sequence[Any]]
EXAMPLE_IMAGE = np.full((224, 224, 3), 128, dtype=np.uint8)


@dataclass
class Output:
    """One input's result (``value``, JSON-able once ``jsonable``) and its children's items: per item a label (None:
    every child takes it; else the children whose edge lists the label) and the child's input."""

    value: Any
    forward: list[tuple[str | None, np.ndarray]]


class HandlerError(CatalogError):
    """A handler that cannot be made: its module or factory does not import, or the factory raised."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="handler", fix="check the handler's module:factory, its weights and options")


def importable(spec: HandlerSpec) -> Callable[..., Handler]:
    """``spec``'s factory, imported; ``HandlerError`` saying why when it does not import."""
    module_name, _, attr = spec.factory.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except Exception as e:  # ImportError, AttributeError, or whatever a user's module raises on import
        raise HandlerError(f"cannot import handler {spec.factory} ({type(e).__name__}: {e})") from None
    if not callable(target):
        raise HandlerError(f"handler {spec.factory} is a {type(target).__name__}, not a factory")
    return target


def load(spec: HandlerSpec, variant: str, device: str = "cpu") -> Handler:
    """The handler ``spec`` makes for ``variant`` on ``device``; ``HandlerError`` saying why when it cannot."""
    target = importable(spec)
    try:
        handler = target(variant, weights=spec.weights, device=device, **dict(spec.options))
    except Exception as e:  # a user's factory: any failure is reported, in one line
        raise HandlerError(f"handler {spec.factory} failed to load {variant} ({type(e).__name__}: {e})") from None
    if not callable(handler):
        raise HandlerError(f"handler {spec.factory} returned {type(handler).__name__}, not a callable")
    return handler


def outputs(handler: Handler, inputs: Sequence[np.ndarray]) -> list[Output]:
    """Run ``handler`` on a batch and give every output its children's items (a plain value passes its input on)."""
    results = list(handler(inputs))
    if len(results) != len(inputs):
        raise RuntimeError(f"the handler answered {len(results)} outputs for {len(inputs)} inputs")
    return [r if isinstance(r, Output) else Output(r, [(None, x)]) for r, x in zip(results, inputs, strict=True)]


def example_input(handler: Handler) -> np.ndarray:
    return getattr(handler, "example", EXAMPLE_IMAGE)


def jsonable(value: Any) -> Any:
    """``value`` with numpy and torch arrays and scalars as lists and numbers (what ``json.dumps`` takes)."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor (torch is not imported here)
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value

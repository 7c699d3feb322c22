"""Backends: ``cpu`` (stand-in models on this machine's cores), ``mps`` (whole GPUs shared through one MPS
daemon), ``mig`` (workers pinned to the MIG instances present), ``ray`` (Ray actors across a cluster's nodes;
the optional ``jigsaw[ray]`` extra). The interface is in ``base``."""

from __future__ import annotations

from pathlib import Path

from jigsaw.profiles.errors import ShimError
from jigsaw.serving_shim.backends.base import (
    Backend,
    Health,
    Placement,
    ProcessBackend,
    ProcessHandle,
    WorkerHandle,
    WorkerSpec,
)
from jigsaw.serving_shim.backends.cpu import CpuBackend
from jigsaw.serving_shim.backends.mig import MigBackend
from jigsaw.serving_shim.backends.mps import MpsBackend

BACKENDS = ("cpu", "mps", "mig", "ray")

__all__ = ["BACKENDS", "Backend", "CpuBackend", "Health", "MigBackend", "MpsBackend", "Placement", "ProcessBackend",
           "ProcessHandle", "WorkerHandle", "WorkerSpec", "make_backend"]


def make_backend(name: str, run_dir: Path, *, max_workers: int | None = None, model: str | None = None,
                 ray_address: str = "auto") -> Backend:
    """The backend called ``name``; ``max_workers`` applies to ``cpu`` only, ``model`` to ``cpu`` and ``ray``,
    ``ray_address`` to ``ray``."""
    if name == "cpu":
        return CpuBackend(run_dir, max_workers=max_workers, model=model)
    if name == "mps":
        return MpsBackend(run_dir)
    if name == "mig":
        return MigBackend(run_dir)
    if name == "ray":
        try:
            from jigsaw.serving_shim.backends.ray import RayBackend
        except ImportError:
            raise ShimError("the ray backend needs Ray, which is not installed", field="--backend",
                            fix="pip install 'jigsaw[ray]' (in the checkout: .venv/bin/pip install -e '.[ray]')") from None
        return RayBackend(run_dir, ray_address, model)
    raise ShimError(f"unknown backend '{name}'", field="--backend", fix=f"use one of {', '.join(BACKENDS)}")

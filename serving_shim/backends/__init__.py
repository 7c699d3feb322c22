"""Backends: ``cpu`` (stand-in models on this machine's cores), ``mps`` (whole GPUs shared through one MPS
daemon), ``mig`` (workers pinned to the MIG instances present). The interface is in ``base``."""

from __future__ import annotations

from pathlib import Path

from jigsaw.profiles.errors import ShimError
from jigsaw.serving_shim.backends.base import Backend, Health, Placement, WorkerHandle, WorkerSpec
from jigsaw.serving_shim.backends.cpu import CpuBackend
from jigsaw.serving_shim.backends.mig import MigBackend
from jigsaw.serving_shim.backends.mps import MpsBackend

BACKENDS = ("cpu", "mps", "mig")

__all__ = ["BACKENDS", "Backend", "CpuBackend", "Health", "MigBackend", "MpsBackend", "Placement", "WorkerHandle",
           "WorkerSpec", "make_backend"]


def make_backend(name: str, run_dir: Path, *, max_workers: int | None = None, model: str | None = None) -> Backend:
    """The backend called ``name``; ``max_workers`` and ``model`` apply to ``cpu`` only."""
    if name == "cpu":
        return CpuBackend(run_dir, max_workers=max_workers, model=model)
    if name == "mps":
        return MpsBackend(run_dir)
    if name == "mig":
        return MigBackend(run_dir)
    raise ShimError(f"unknown backend '{name}'", field="--backend", fix=f"use one of {', '.join(BACKENDS)}")

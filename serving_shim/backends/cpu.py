"""The ``cpu`` backend: real worker processes running the plain-torch stand-ins on this machine's cores.

The stand-in for tests and laptops. A plan sized for GPUs can ask for more processes than a laptop should
run, so the total is capped at ``max_workers`` (default: the core count, at least 2): every task keeps at
least one worker and the rest are scaled down in proportion, and the placement says so. A segment's
compute slices per worker become torch threads, within the cores left per worker.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from jigsaw.env.plan import Plan
from jigsaw.profiles.errors import ShimError
from jigsaw.profiles.types import GpuType
from jigsaw.serving_shim.backends.base import Placement, ProcessBackend, WorkerSpec


def default_max_workers() -> int:
    return max(2, os.cpu_count() or 1)


class CpuBackend(ProcessBackend):
    name = "cpu"

    def __init__(self, run_dir: Path, *, max_workers: int | None = None, model: str | None = None) -> None:
        """:param max_workers: cap on worker processes (default ``default_max_workers()``)
        :param model: load this stand-in in every worker instead of the plan's variant (``noop`` for benchmarks)"""
        super().__init__(run_dir)
        self.max_workers = default_max_workers() if max_workers is None else max_workers
        if self.max_workers < 1:
            raise ShimError(f"{self.max_workers} workers", field="--max-workers", fix="give a whole number >= 1")
        self.model = model
        self.cores = os.cpu_count() or 1

    def devices(self) -> list[dict[str, Any]]:
        return [{"kind": "cpu", "cores": self.cores, "max_workers": self.max_workers}]

    def place(self, plan: Plan, gpu: GpuType) -> Placement:
        configs = [(app, task, cfg) for app, tasks in plan.apps.items() for task, cfg in tasks.items()]
        wanted = sum(cfg.replicas for *_, cfg in configs)
        scale = min(1.0, self.max_workers / wanted) if wanted else 1.0
        counts = [max(1, math.floor(cfg.replicas * scale)) for *_, cfg in configs]
        notes = []
        if sum(counts) < wanted:
            notes.append(f"plan asks for {wanted} workers; running {sum(counts)} (max_workers {self.max_workers}, "
                         "at least one per task)")
        threads_cap = max(1, self.cores // max(1, sum(counts)))
        specs = []
        for (app, task, cfg), n in zip(configs, counts, strict=True):
            slices = gpu.mig_profiles[gpu.profile_index(cfg.segment)].compute_slices / cfg.mps_workers
            threads = min(threads_cap, max(1, round(slices)))
            specs += [WorkerSpec(app, task, cfg.variant, self.model or cfg.variant, threads, "cpu",
                                 place=f"cpu x{threads}", batch=cfg.batch)] * n
            if n < cfg.replicas:
                notes.append(f"{app}/{task}: {cfg.replicas} replicas scaled to {n}")
        return Placement(tuple(specs), tuple(notes))

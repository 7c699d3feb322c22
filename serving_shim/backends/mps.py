"""The ``mps`` backend: whole GPUs shared through one MPS control daemon.

``open`` starts the daemon (pipe and log directories under the run directory) and ``close`` stops it.
Every worker of the plan runs on its GPU with ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` = its segment's share
of the GPU's SMs (a 3g instance shared by 2 workers: 60 of 132 SMs -> 46 %). The plan's MIG geometry
becomes SM shares only: MPS caps each worker's SMs but does not isolate memory bandwidth as MIG does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jigsaw.env.plan import Plan
from jigsaw.profiles.types import GpuType
from jigsaw.serving_shim.backends.base import Placement, ProcessBackend, WorkerSpec
from jigsaw.serving_shim.backends.nvidia import Gpu, MpsDaemon, discover


def sm_percentage(gpu: GpuType, profile: str, mps_workers: int) -> int:
    """A worker's share of the whole GPU's SMs, in whole percent (1..100)."""
    whole = max(p.sms for p in gpu.mig_profiles)
    sms = gpu.mig_profiles[gpu.profile_index(profile)].sms / mps_workers
    return min(100, max(1, math.ceil(100.0 * sms / whole)))


def plan_workers(plan: Plan) -> list[tuple[int, str, int, str]]:
    """(GPU index, MIG profile, workers on that instance, "app/task") for every worker the plan places."""
    return [(g, profile, len(workers), w) for g, layout in enumerate(plan.gpus)
            for profile, workers in zip(layout.partition, layout.workers, strict=True) for w in workers]


def spec_for(plan: Plan, worker: str, env: dict[str, str], place: str) -> WorkerSpec:
    app, task = worker.split("/", 1)
    cfg = plan.apps[app][task]
    return WorkerSpec(app, task, cfg.variant, cfg.variant, 1, "cuda", tuple(sorted(env.items())), place, cfg.batch)


class MpsBackend(ProcessBackend):
    name = "mps"

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self.daemon = MpsDaemon(self.run_dir, self.name)
        self.gpus: list[Gpu] = []

    def open(self) -> None:
        self.gpus = discover(self.name)
        self.daemon.start()

    def close(self) -> None:
        self.daemon.stop()

    def devices(self) -> list[dict[str, Any]]:
        return [{"kind": "gpu", "index": g.index, "name": g.name, "uuid": g.uuid, "mig": g.mig_enabled} for g in self.gpus]

    def place(self, plan: Plan, gpu: GpuType) -> Placement:
        specs, notes = [], []
        for g, profile, sharing, worker in plan_workers(plan):
            if g >= len(self.gpus):
                notes.append(f"{worker}: the plan puts it on GPU {g}, this machine has {len(self.gpus)}; not started")
                continue
            pct = sm_percentage(gpu, profile, sharing)
            env = {**self.daemon.env, "CUDA_VISIBLE_DEVICES": self.gpus[g].uuid,
                   "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(pct)}
            specs.append(spec_for(plan, worker, env, f"gpu{g} {pct}% SMs ({profile}/{sharing})"))
        return Placement(tuple(specs), tuple(notes))

"""The ``mig`` backend: workers pinned to the MIG instances present, found through NVML.

Every worker of the plan runs on a present MIG instance of its planned GPU and profile, with
``CUDA_VISIBLE_DEVICES=MIG-<uuid>``. The geometry is never changed here: ``difference`` compares the plan's
partitions with the present ones, and a worker with no matching instance is reported, not started. Where they
differ, the plan's layout is written as an ``nvidia-mig-parted`` config (``MIG_CONFIG_FILE`` in the run dir) for
the fleet's tooling, and the nvidia-smi commands that would repartition are printed (``repartition_commands``),
for an administrator to apply on idle GPUs, opt-in. Workers sharing one instance (mps_workers > 1) share it
time-sliced: no MPS daemon is started inside MIG instances.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from jigsaw.env.plan import MIG_CONFIG_NAME, Plan
from jigsaw.profiles.errors import ShimError, write_text
from jigsaw.profiles.types import GpuType
from jigsaw.serving_shim.backends.base import Placement, ProcessBackend
from jigsaw.serving_shim.backends.mps import spec_for
from jigsaw.serving_shim.backends.nvidia import Gpu, discover

MIG_CONFIG_FILE = "mig-config.yaml"  # in the run dir: the plan's layout for nvidia-mig-parted, when it differs


def difference(plan: Plan, gpus: list[Gpu]) -> list[str]:
    """One line per GPU whose present MIG instances differ from the plan's partition (empty: they match)."""
    out = []
    for g, layout in enumerate(plan.gpus):
        present = Counter(d.profile for d in gpus[g].mig_devices) if g < len(gpus) else Counter()
        wanted = Counter(layout.partition)
        if present != wanted:
            where = f"GPU {g}" if g < len(gpus) else f"GPU {g} (absent)"
            out.append(f"{where}: plan {sorted(wanted.elements())}, present {sorted(present.elements())}")
    return out


def repartition_commands(plan: Plan) -> list[str]:
    """The nvidia-smi commands that would cut every GPU as the plan says (all its work stopped first)."""
    return [f"nvidia-smi mig -i {g} -dci && nvidia-smi mig -i {g} -dgi && "
            f"nvidia-smi mig -i {g} -cgi {','.join(layout.partition)} -C"
            for g, layout in enumerate(plan.gpus) if layout.partition]


class MigBackend(ProcessBackend):
    name = "mig"

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self.gpus: list[Gpu] = []

    def open(self) -> None:
        self.gpus = discover(self.name)
        if not any(g.mig_enabled for g in self.gpus):
            raise ShimError("no GPU has MIG mode enabled", field="--backend",
                            fix="an administrator enables it (nvidia-smi -i N -mig 1) and creates instances, "
                                "or use --backend mps")

    def devices(self) -> list[dict[str, Any]]:
        return [{"kind": "gpu", "index": g.index, "name": g.name, "uuid": g.uuid, "mig": g.mig_enabled,
                 "instances": [{"profile": d.profile, "uuid": d.uuid} for d in g.mig_devices]} for g in self.gpus]

    def place(self, plan: Plan, gpu: GpuType) -> Placement:
        notes = [f"MIG layout differs from the plan: {d}" for d in difference(plan, self.gpus)]
        if notes:
            config = self.run_dir / MIG_CONFIG_FILE
            write_text(config, yaml.safe_dump(plan.mig_parted_config(len(self.gpus)), sort_keys=False), "run dir")
            notes.append(f"not repartitioned (opt-in, on idle GPUs): nvidia-mig-parted apply -f {config} -c "
                         f"{MIG_CONFIG_NAME}, or " + " ; ".join(repartition_commands(plan)))
        free = {g.index: list(g.mig_devices) for g in self.gpus}
        specs = []
        for g, layout in enumerate(plan.gpus):
            for profile, workers in zip(layout.partition, layout.workers, strict=True):
                match = next((d for d in free.get(g, []) if d.profile == profile), None) if workers else None
                if match is None:
                    if workers:
                        notes.append(f"{', '.join(workers)}: no free {profile} instance on GPU {g}; not started")
                    continue
                free[g].remove(match)
                specs += [spec_for(plan, w, {"CUDA_VISIBLE_DEVICES": match.uuid},
                                   f"gpu{g} {profile} {match.uuid} ({len(workers)} sharing)") for w in workers]
        return Placement(tuple(specs), tuple(notes))

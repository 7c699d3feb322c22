"""The decision: per task a configuration, plus how each GPU is cut. A plain, JSON-serialisable document
(the daemon persists it, the shim applies it, another scheduler can carry it)."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from jigsaw.profiles.documents import parse_json, read_text
from jigsaw.profiles.errors import PlanError

MIG_CONFIG_NAME = "jigsaw"  # the config's name in ``Plan.mig_parted_config``


@dataclass(frozen=True)
class TaskConfig:
    variant: str
    segment: str  # MIG profile name, e.g. "3g.40gb"
    mps_workers: int  # workers sharing one instance of that profile (1 = the whole instance)
    batch: int
    replicas: int
    budget_ms: float  # this task's share of the end-to-end latency SLO


@dataclass(frozen=True)
class GpuLayout:
    """One GPU: the MIG instances carved, and for each the workers it hosts (``app/task`` per MPS worker)."""

    partition: tuple[str, ...]
    workers: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Plan:
    gpu_type: str
    apps: dict[str, dict[str, TaskConfig]]
    gpus: tuple[GpuLayout, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"gpu_type": self.gpu_type,
                "apps": {a: {t: asdict(c) for t, c in tasks.items()} for a, tasks in self.apps.items()},
                "gpus": [{"partition": list(g.partition), "workers": [list(w) for w in g.workers]} for g in self.gpus]}

    @classmethod
    def from_dict(cls, doc: Any, source: str = "plan") -> Plan:
        """A plan document, checked field by field (types, whole numbers, finite budgets); the output of
        ``jigsaw solve --json`` is accepted too (its ``plan``). Whether it fits a catalog is ``compile_plan``'s
        to say."""
        if isinstance(doc, dict) and isinstance(doc.get("plan"), dict):
            doc = doc["plan"]
        fix = "write it with `jigsaw solve --json > plan.json` or Plan.to_json"
        if not isinstance(doc, dict) or not {"gpu_type", "apps", "gpus"} <= set(doc):
            raise PlanError("not a plan document (it needs gpu_type, apps and gpus)", file=source, fix=fix)
        gpu_type, apps, gpus = doc["gpu_type"], doc["apps"], doc["gpus"]
        if not isinstance(gpu_type, str):
            raise PlanError(f"expected a name, got {gpu_type!r}", file=source, field="gpu_type", fix=fix)
        if not isinstance(apps, dict) or not all(isinstance(t, dict) for t in apps.values()):
            raise PlanError("expected {app: {task: configuration}}", file=source, field="apps", fix=fix)
        configs = {str(a): {str(t): _task_config(c, f"apps.{a}.{t}", source) for t, c in tasks.items()}
                   for a, tasks in apps.items()}
        if not isinstance(gpus, list):
            raise PlanError("expected a list of GPUs", file=source, field="gpus", fix=fix)
        return cls(gpu_type, configs, tuple(_gpu_layout(g, f"gpus[{i}]", source) for i, g in enumerate(gpus)))

    def layout_mismatch(self) -> str:
        """Empty when the MIG layout hosts exactly each task's replicas, on instances of its segment; else the
        first task that it does not, said in words."""
        hosted: dict[str, dict[str, int]] = {}
        for g in self.gpus:
            for profile, workers in zip(g.partition, g.workers, strict=True):
                for w in workers:
                    hosted.setdefault(w, {}).setdefault(profile, 0)
                    hosted[w][profile] += 1
        for app, tasks in self.apps.items():
            for task, c in tasks.items():
                on = hosted.get(f"{app}/{task}", {})
                if on != {c.segment: c.replicas}:
                    return f"{app}/{task}: {c.replicas} replicas on {c.segment}, the layout hosts {on or 'none'}"
        return ""

    def mig_parted_config(self, n_gpus: int | None = None, name: str = MIG_CONFIG_NAME) -> dict[str, Any]:
        """The plan's per-GPU MIG layout as an ``nvidia-mig-parted`` config (``version: v1``, one named config),
        for the fleet's own tooling to apply (``nvidia-mig-parted apply -f FILE -c NAME``, or the GPU operator's
        MIG manager): GPUs cut alike share an entry; the cluster's GPUs the plan leaves empty (``n_gpus`` of
        them in all) keep MIG enabled with no instances."""
        cuts: dict[tuple[tuple[str, int], ...], list[int]] = {}
        for g in range(max(len(self.gpus), n_gpus or 0)):
            partition = self.gpus[g].partition if g < len(self.gpus) else ()
            cuts.setdefault(tuple(sorted(Counter(partition).items())), []).append(g)
        entries = [{"devices": devices, "mig-enabled": True, "mig-devices": dict(cut)} for cut, devices in cuts.items()]
        return {"version": "v1", "mig-configs": {name: entries}}

    def to_json(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)  # atomic: a crash never leaves half a plan

    @classmethod
    def from_json(cls, path: Path) -> Plan:
        return cls.from_dict(parse_json(read_text(path, PlanError, "plan"), str(path), PlanError), str(path))


_CONFIG_FIELDS = tuple(f.name for f in fields(TaskConfig))


def _task_config(doc: Any, where: str, source: str) -> TaskConfig:
    if not isinstance(doc, dict) or set(doc) != set(_CONFIG_FIELDS):
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise PlanError(f"expected the fields {', '.join(_CONFIG_FIELDS)}, got {got}", file=source, field=where,
                        fix="give each task exactly these fields")
    for name in ("variant", "segment"):
        if not (isinstance(doc[name], str) and doc[name]):
            raise PlanError(f"expected a name, got {doc[name]!r}", file=source, field=f"{where}.{name}",
                            fix="see `jigsaw solve --json` for the names")
    for name in ("mps_workers", "batch", "replicas"):
        if isinstance(doc[name], bool) or not isinstance(doc[name], int) or doc[name] < 1:
            raise PlanError(f"expected a whole number >= 1, got {doc[name]!r}", file=source, field=f"{where}.{name}",
                            fix="write it without a decimal point, e.g. 4")
    budget = doc["budget_ms"]
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not (math.isfinite(budget) and budget > 0):
        raise PlanError(f"expected a number of ms > 0, got {budget!r}", file=source, field=f"{where}.budget_ms",
                        fix="give the task's latency budget in ms, as a number")
    return TaskConfig(**doc)


def _gpu_layout(doc: Any, where: str, source: str) -> GpuLayout:
    def names(x: Any) -> bool:
        return isinstance(x, list) and all(isinstance(n, str) for n in x)

    if not (isinstance(doc, dict) and names(doc.get("partition")) and isinstance(doc.get("workers"), list)
            and all(names(w) for w in doc["workers"])):
        raise PlanError("expected {partition: [MIG profile, ...], workers: [[app/task, ...], ...]}", file=source,
                        field=where, fix="see `jigsaw solve --json` for the layout")
    if len(doc["workers"]) != len(doc["partition"]):
        raise PlanError("each MIG instance needs its (possibly empty) worker list", file=source,
                        field=f"{where}.workers", fix="one list per entry of partition")
    return GpuLayout(tuple(doc["partition"]), tuple(tuple(w) for w in doc["workers"]))

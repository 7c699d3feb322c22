"""The decision: per task a configuration, plus how each GPU is cut. A plain, JSON-serialisable document
(the daemon persists it, the shim applies it, another scheduler can carry it)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jigsaw.profiles.errors import PlanError


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
        try:
            apps = {a: {t: TaskConfig(**c) for t, c in tasks.items()} for a, tasks in doc["apps"].items()}
            gpus = tuple(GpuLayout(tuple(g["partition"]), tuple(tuple(w) for w in g["workers"])) for g in doc["gpus"])
            plan = cls(str(doc["gpu_type"]), apps, gpus)
        except (KeyError, TypeError, AttributeError) as e:
            raise PlanError(f"not a plan document ({type(e).__name__}: {e})", file=source,
                            fix="write it with Plan.to_json / `jigsaw solve --json`") from None
        for g in plan.gpus:
            if len(g.workers) != len(g.partition):
                raise PlanError("each MIG instance needs its (possibly empty) worker list", file=source,
                                field="gpus[].workers", fix="one list per entry of partition")
        return plan

    def to_json(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)  # atomic: a crash never leaves half a plan

    @classmethod
    def from_json(cls, path: Path) -> Plan:
        try:
            return cls.from_dict(json.loads(path.read_text()), str(path))
        except OSError as e:
            raise PlanError(f"cannot read ({e.strerror})", file=str(path), fix="check the path") from None
        except json.JSONDecodeError as e:
            raise PlanError(f"not valid JSON ({e.msg}, line {e.lineno})", file=str(path), fix="fix the syntax") from None

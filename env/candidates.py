"""What the exact planner and the decision space both start from: each task's usable configurations.

A configuration is (variant, segment type, batch) of one task, with its profiled p95 and throughput. Under the
paper's levers (``Features``) and the planner's settings (``SolverOptions``), ``candidates`` keeps those that can
be part of a plan meeting the app's SLOs and drops the dominated ones. ``jigsaw.agents.ilp`` chooses among them
exactly; ``jigsaw.env.space`` decodes the agent's levels into them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from jigsaw.profiles.catalog import LATENCY_ALLOWANCE, Catalog
from jigsaw.profiles.errors import SolverError
from jigsaw.profiles.types import App, GpuType

FEATURE_SETS = ("none", "A", "S", "T", "A+T", "S+T", "A+S", "A+S+T")


@dataclass(frozen=True)
class Features:
    """The paper's levers: A accuracy scaling, S spatial partitioning, T task-graph budgeting."""

    accuracy: bool = True
    spatial: bool = True
    budgeting: bool = True

    @classmethod
    def parse(cls, text: str) -> Features:
        """``"A,S,T"``, ``"A+T"`` or ``"none"``."""
        letters = {p.strip().upper() for p in text.replace("+", ",").split(",") if p.strip()}
        if not letters:
            raise SolverError("no feature named", field="--features", fix="combine A, S and T, e.g. A,S,T, or 'none'")
        if letters == {"NONE"}:
            letters = set()
        if not letters <= {"A", "S", "T"}:
            raise SolverError(f"unknown feature(s) {', '.join(sorted(letters - {'A', 'S', 'T'}))}",
                              field="--features", fix="combine A, S and T, e.g. A,S,T or A+T, or 'none'")
        return cls("A" in letters, "S" in letters, "T" in letters)

    @property
    def name(self) -> str:
        return "+".join(x for x, on in (("A", self.accuracy), ("S", self.spatial), ("T", self.budgeting)) if on) or "none"


MAX_TIME_LIMIT_S = 86_400.0  # a day
MAX_HEADROOM = 100.0


@dataclass(frozen=True)
class SolverOptions:
    headroom: float = 1.2  # capacity provisioned per unit of (forecast) demand: 1.1 left 4% of requests late at
    # steady demand in env.sim, from Poisson overflow into batches whose service nearly fills the budget
    latency_allowance: float = LATENCY_ALLOWANCE  # budget covers allowance x p95 (queueing slack)
    time_limit_s: float = 20.0  # hard wall-clock bound on one solve
    mip_gap: float = 1e-4  # relative gap at which HiGHS may stop
    change_penalty: float = 0.0  # slices charged per task whose worker kind (variant, segment) the plan changes

    def __post_init__(self) -> None:
        """Refuse values no solve can use: nan, <= 0, or beyond what is sane (a time limit of 1e10 s aborted the
        process inside HiGHS's wait)."""
        for name, flag, value, high in (("time limit", "--time-limit", self.time_limit_s, MAX_TIME_LIMIT_S),
                                        ("headroom", "--headroom", self.headroom, MAX_HEADROOM),
                                        ("latency allowance", "latency_allowance", self.latency_allowance,
                                         MAX_HEADROOM)):
            if not 0 < value <= high:  # also refuses nan
                raise SolverError(f"{name} {value:g} is out of range", field=flag,
                                  fix=f"give a number > 0 and <= {high:g}")
        if not 0 <= self.change_penalty <= MAX_HEADROOM * 1000:  # also refuses nan
            raise SolverError(f"change penalty {self.change_penalty:g} is out of range", field="change_penalty",
                              fix="give slices >= 0, e.g. 2")
        if not 0 <= self.mip_gap < 1:
            raise SolverError(f"gap {self.mip_gap:g} is out of range", field="--gap",
                              fix="give a number in [0, 1), e.g. 1e-4")


@dataclass
class Candidates:
    """The configurations one task may use, as parallel arrays."""

    app: App
    task: str
    variant: np.ndarray  # index into the task's variant ladder
    segment: np.ndarray  # index into GpuType.segments
    batch: np.ndarray
    p95_ms: np.ndarray
    throughput_rps: np.ndarray
    log_accuracy: np.ndarray
    kind: np.ndarray


def candidates(catalog: Catalog, gpu: GpuType, app: App, features: Features, opts: SolverOptions,
               keep: dict[str, tuple[str, str, int, int]] | None = None) -> tuple[list[Candidates], str]:
    """Each task's usable configurations under ``features``, with dominated ones removed; and, if some task
    is left with none, the reason. ``keep`` (task -> variant, segment, workers, batch) survives dominance."""
    paths = app.paths()
    longest = {t: max(len(p) for p in paths if t in p) for t in app.task_names}
    out = []
    for task in app.tasks:
        table = catalog.table(gpu.name, app.name, task.name)
        ok = table.usable.copy()
        if not features.accuracy:
            ok[:-1] = False  # the ladder is sorted: the last variant is the most accurate
        if not features.spatial:
            ok[:, [s for s in range(len(gpu.segments)) if s != gpu.whole_gpu_segment]] = False
        if not features.budgeting:
            ok &= opts.latency_allowance * np.nan_to_num(table.p95_ms, nan=np.inf) <= app.latency_slo_ms / longest[task.name]
        v, s, b = np.nonzero(ok)
        acc = np.array([x.accuracy for x in task.variants])[v]
        out.append(Candidates(app, task.name, v, s, np.array(table.batches)[b], table.p95_ms[v, s, b],
                              table.throughput_rps[v, s, b], np.log(acc), table.kind[v, s, b]))
    for c in out:  # what the rest of each path can do at best bounds what this task may use
        for p in (p for p in paths if c.task in p):
            others = [o for o in out if o.task in p and o is not c]
            if any(len(o.p95_ms) == 0 for o in others):
                continue
            if features.budgeting:
                rest = sum(opts.latency_allowance * o.p95_ms.min() for o in others)
                _select(c, opts.latency_allowance * c.p95_ms + rest <= app.latency_slo_ms + 1e-9)
            rest_acc = sum(o.log_accuracy.max() for o in others)
            _select(c, c.log_accuracy + rest_acc >= math.log(app.accuracy_slo) - 1e-9)
    for c in out:
        _select(c, _undominated(c, gpu, (keep or {}).get(c.task)))
    for c in out:
        if len(c.p95_ms) == 0:
            share = (f"its fixed share {app.latency_slo_ms / longest[c.task]:.1f} ms (T off)" if not features.budgeting
                     else f"the latency SLO {app.latency_slo_ms:g} ms")
            return out, (f"app {app.name}, task {c.task}: no configuration meets {share} and accuracy "
                         f"{app.accuracy_slo} with features {features.name}")
    return out, ""


def _select(c: Candidates, mask: np.ndarray) -> None:
    for name in ("variant", "segment", "batch", "p95_ms", "throughput_rps", "log_accuracy", "kind"):
        setattr(c, name, getattr(c, name)[mask])


def _undominated(c: Candidates, gpu: GpuType, keep: tuple[str, str, int, int] | None) -> np.ndarray:
    """Within one (variant, segment type), a configuration with no lower p95 and no higher throughput
    than another can be swapped for it in any plan; drop it."""
    mask = np.zeros(len(c.p95_ms), dtype=bool)
    for key in set(zip(c.variant.tolist(), c.segment.tolist(), strict=True)):
        idx = np.nonzero((c.variant == key[0]) & (c.segment == key[1]))[0]
        idx = idx[np.lexsort((-c.throughput_rps[idx], c.p95_ms[idx]))]
        best = -np.inf
        for i in idx:
            if c.throughput_rps[i] > best:
                mask[i] = True
                best = c.throughput_rps[i]
    if keep is not None:
        mask |= [describe(gpu, c, i) == keep for i in range(len(mask))]
    return mask


def describe(gpu: GpuType, c: Candidates, k: int) -> tuple[str, str, int, int]:
    seg = gpu.segments[c.segment[k]]
    return c.app.task(c.task).variants[c.variant[k]].name, seg.mig_profile.name, seg.mps_workers, int(c.batch[k])

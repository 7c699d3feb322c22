"""Maximum serviceable demand per feature set: the JigsawServe paper's ablation, by bisection on the
MILP's feasibility (every app at the same rate)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from jigsaw.env.candidates import FEATURE_SETS, Features, SolverOptions
from jigsaw.profiles.catalog import Catalog
from jigsaw.profiles.errors import SolverError
from jigsaw.profiles.tables import ConfigKind
from jigsaw.profiles.types import GpuType

from .ilp import AppBlock, check_request, is_feasible, prepare

# The paper's analytical table (120 H100 = 840 slices), capacity relative to no lever.
PAPER_RATIOS = {"none": 1.0, "A": 1.6, "S": 5.25, "T": 1.1, "A+T": 1.9, "S+T": 7.8, "A+S": 12.1, "A+S+T": 21.6}
PAPER_AST_OVER_AT = 11.3


@dataclass
class CapacityResult:
    features: Features
    max_rps: float  # total over the apps, each at max_rps / len(apps); 0 if not even a trickle fits
    reason: str = ""  # why nothing fits, when max_rps is 0
    checks: int = 0  # feasibility MILPs solved
    undecided: int = 0  # checks that hit the time limit, counted infeasible (max_rps is then a lower bound)
    configs: dict[str, int] = field(default_factory=dict)  # candidate configurations used, by kind
    whole_gpu_configs: int = 0  # of those, on the whole GPU with one worker


def upper_bound(gpu: GpuType, blocks: list[AppBlock], gpus: int, headroom: float) -> float:
    """Per-app rate no plan can exceed: each task needs at least headroom * rate * F_t / (its best
    items/s per slice) slices, and the cluster has gpus * compute_slices."""
    slices = np.array([s.slices for s in gpu.segments])
    need = 0.0
    for b in blocks:
        for c, (const, terms) in zip(b.cands, b.terms, strict=True):
            fewest_items = const + sum(coef.min() for _, coef in terms)
            need += headroom * fewest_items / float((c.throughput_rps / slices[c.segment]).max())
    return gpus * gpu.compute_slices / need


def max_serviceable_demand(catalog: Catalog, gpu_type: str, apps: list[str], gpus: int, features: Features,
                           opts: SolverOptions = SolverOptions(), rel_tol: float = 0.01,
                           known_feasible_rps: float = 0.0,
                           on_check: Callable[[], None] | None = None) -> CapacityResult:
    """The largest total req/s (apps at equal rates) a feasible plan serves on ``gpus`` GPUs, to ``rel_tol``.

    :param known_feasible_rps: a total rate already shown feasible with a subset of these features (a
        plan that needs fewer levers stays feasible with more), where the bisection may start.
    :param on_check: called after each feasibility MILP (progress).
    """
    check_request(gpus, dict.fromkeys(apps, 0.0))
    if not 0 < rel_tol < 1:  # 0 bisects forever; nan stops at once and reports 0
        raise SolverError(f"tolerance {rel_tol:g} is out of range", field="--tolerance",
                          fix="give a relative tolerance in (0, 1), e.g. 0.01")
    gpu = catalog.gpu(gpu_type)
    blocks, reason = prepare(catalog, gpu, dict.fromkeys(apps, 1.0), features, opts)
    if reason:
        return CapacityResult(features, 0.0, reason)
    kinds = np.concatenate([c.kind for b in blocks for c in b.cands])
    result = CapacityResult(features, 0.0, configs={k.name.lower(): int((kinds == k).sum()) for k in ConfigKind
                                                    if (kinds == k).any()},
                            whole_gpu_configs=sum(int((c.segment == gpu.whole_gpu_segment).sum())
                                                  for b in blocks for c in b.cands))
    high = upper_bound(gpu, blocks, gpus, opts.headroom)
    low = min(known_feasible_rps / len(apps), high)
    trickle = rel_tol * high  # nothing fits if not even this does (bisecting on towards 0 took ~1,000 checks)
    while high - low > rel_tol * high and high > trickle:
        rate = (low + high) / 2
        status = is_feasible(gpu, blocks, rate, gpus, opts)
        result.checks += 1
        result.undecided += status == "timeout"
        if status in ("optimal", "feasible"):
            low = rate
        else:
            high = rate
        if on_check:
            on_check()
    result.max_rps = low * len(apps)
    if low == 0.0:
        result.reason = f"no plan fits {gpus} GPUs even at {high * len(apps):.3g} req/s"
    return result


def ablation(catalog: Catalog, gpu_type: str, apps: list[str], gpus: int, opts: SolverOptions = SolverOptions(),
             rel_tol: float = 0.01, on_check: Callable[[], None] | None = None) -> dict[str, CapacityResult]:
    """``max_serviceable_demand`` for all eight feature sets, each started from its subsets' results."""
    results: dict[str, CapacityResult] = {}
    for name in FEATURE_SETS:  # ordered so that every subset comes first
        features = Features.parse(name)
        known = max((r.max_rps for r in results.values() if _subset(r.features, features)), default=0.0)
        results[name] = max_serviceable_demand(catalog, gpu_type, apps, gpus, features, opts, rel_tol, known, on_check)
    return results


def expected_checks(rel_tol: float) -> int | None:
    """About how many feasibility MILPs ``ablation`` solves (a progress bar's total): each feature set's bisection
    halves its bracket until it is ``rel_tol`` of the bound, ~log2(1/rel_tol) times. None for a tolerance out of
    range (refused by the bisection)."""
    return len(FEATURE_SETS) * math.ceil(math.log2(1 / rel_tol)) if 0 < rel_tol < 1 else None


def _subset(a: Features, b: Features) -> bool:
    return all(x <= y for x, y in ((a.accuracy, b.accuracy), (a.spatial, b.spatial), (a.budgeting, b.budgeting)))

"""Plan changes take time: the rules the simulator, the environment and the shim's reconciler share.

A change from the workers in force to a new plan, made at time t0:

* **Kinds.** A worker's kind is (variant, segment: MIG profile and MPS workers per instance); workers of one kind
  are interchangeable. A task whose kind stays keeps min(old, new) workers, and the rest of its new workers are
  *arrivals* (its old surplus *leaves*); a task whose kind changes gets all its new workers as arrivals and all
  its old ones leave. Batch sizes and latency budgets are the router's settings: they change at the switch, free.
* **Start-up.** An arrival serves ``startup_s`` of its variant after it starts (catalog ``transitions``).
* **MIG geometry.** A MIG profile with more instances in the new plan than in force needs a repartition: its new
  instances exist ``repartition_s`` after t0. They are cut from the cluster's free slices; where those do not
  suffice, instances of the profiles whose count falls (largest first) are drained for them at t0: the leaving
  workers on them stop at once (in share units: a worker holds 1 / its MPS workers of an instance).
* **Make-before-break needs room.** Arrivals start at t0 only in instance shares free beside the workers still
  there (kept and leaving ones). Arrivals that find no room take the repartition's new instances, else new
  instances cut from the cluster's free slices (both a repartition: they start ``repartition_s`` later), else
  leaving workers of the profile stop at t0 to make room (surplus ones first): on a full cluster the transition
  itself serves less, and can violate SLOs.
* **The switch.** All traffic moves to the new plan at once, when its last arrival is ready (the reconciler's
  one switch): ``delay_s`` = the latest arrival's start wait + start-up (0 without arrivals). Until then the old
  plan serves, less the leaving workers stopped early; then the new one, and the leaving workers drain.
* **One change at a time.** A decision made while a change is under way waits for it and applies when it
  completes (the reconciler applies one plan at a time); a later decision supersedes a waiting one.

The model counts instances per profile, not their places on GPUs: it does not see that the free instances of a
profile may lie on other GPUs than the leaving workers (free is free), and a plan's geometry is the instances
its workers need (a GPU's instances left empty by a plan are not counted as free room).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np

from jigsaw.env.plan import Plan
from jigsaw.profiles.catalog import Catalog
from jigsaw.profiles.types import GpuType

_EPS = 1e-9


@dataclass(frozen=True)
class Fleet:
    """The workers of a plan, per task in a fixed task order."""

    kind: np.ndarray  # [n_tasks] int, equal kinds are interchangeable workers; -1: the task has none
    replicas: np.ndarray  # [n_tasks] int
    profile: np.ndarray  # [n_tasks] MIG profile index of the kind's instances
    share: np.ndarray  # [n_tasks] an instance's share per worker: 1 / MPS workers per instance
    instances: np.ndarray  # [n_profiles] MIG instances the workers occupy
    slices: np.ndarray  # [n_tasks] compute slices per worker


@dataclass(frozen=True)
class Change:
    """How a change from one fleet to another happens (see the module docstring)."""

    delay_s: float  # from the change until the new plan serves
    serving: np.ndarray  # [n_tasks] old workers serving until then
    started: np.ndarray  # [n_tasks] workers started (arrivals)
    stopped: np.ndarray  # [n_tasks] old workers that stop (leaving and surplus), early or at the switch
    stopped_early: np.ndarray  # [n_tasks] of those, the ones stopped at t0 (for a repartition or for room)
    created: np.ndarray  # [n_profiles] MIG instances created by a repartition (all 0: none)
    waits: np.ndarray  # [n_tasks] bool: its arrivals start only once the repartition is done

    @property
    def workers_changed(self) -> bool:
        return bool(self.started.any() or self.stopped.any())

    def held_slices(self, old_slices: float, old: Fleet, new: Fleet) -> float:
        """Compute slices held during the change, from the old plan's ``old_slices``: less the workers stopped early,
        plus the arrivals starting."""
        return old_slices - float(self.stopped_early @ old.slices) + float(self.started @ new.slices)


def instant(fleet: Fleet) -> Change:
    """No change: the fleet serves as it is."""
    zeros = np.zeros_like(fleet.replicas)
    return Change(0.0, fleet.replicas.copy(), zeros, zeros, zeros, np.zeros_like(fleet.instances), zeros > 0)


def change(old: Fleet, new: Fleet, startup_s: np.ndarray, repartition_s: float, instance_slices: np.ndarray,
           total_slices: float) -> Change:
    """The change from ``old`` (in force) to ``new`` on a cluster of ``total_slices`` compute slices;
    ``startup_s`` per task for its new kind, ``instance_slices`` per MIG profile (module docstring)."""
    delay, stop, arrivals, surplus, created, waits = _change(
        old.kind, old.replicas, old.profile, old.share, old.instances, new.kind, new.replicas, new.profile, new.share,
        new.instances, np.asarray(startup_s, dtype=float), float(repartition_s), instance_slices, float(total_slices))
    return Change(delay, old.replicas - stop, arrivals, surplus, stop, created, waits)


@numba.njit(cache=True)
def _stop_on(q, share_needed, order, profile, share, surplus, stop):  # pragma: no cover - compiled
    """Stop leaving workers on profile q (in ``order``) until ``share_needed`` of an instance is free; the share
    freed."""
    freed = 0.0
    for t in order:
        if freed >= share_needed - _EPS:
            break
        if profile[t] != q or surplus[t] - stop[t] <= 0:
            continue
        take = min(surplus[t] - stop[t], int(np.ceil((share_needed - freed) / share[t] - _EPS)))
        stop[t] += take
        freed += take * share[t]
    return freed


@numba.njit(cache=True)
def _change(old_kind, old_replicas, old_profile, old_share, old_instances, new_kind, new_replicas, new_profile,
            new_share, new_instances, startup_s, repartition_s, instance_slices, total_slices
            ):  # pragma: no cover - compiled
    """``change`` as arrays: (delay, stopped early, arrivals, leaving, instances created, waits) per task / profile."""
    n = old_kind.size
    kept = np.zeros(n, dtype=np.int64)
    for t in range(n):
        if old_kind[t] == new_kind[t] and new_kind[t] >= 0:
            kept[t] = min(old_replicas[t], new_replicas[t])
    arrivals = new_replicas - kept
    surplus = old_replicas - kept  # leaving workers; those of a kept kind are the scale-down's surplus
    created = np.maximum(new_instances - old_instances, 0)
    stop = np.zeros(n, dtype=np.int64)
    room = old_instances.astype(np.float64)
    for t in range(n):
        room[old_profile[t]] -= old_share[t] * old_replicas[t]
    order = np.concatenate((np.flatnonzero(kept > 0), np.flatnonzero(kept == 0)))  # surplus of kept kinds first
    free_slices = total_slices - float(np.sum(old_instances * instance_slices))
    deficit = float(np.sum(created * instance_slices)) - free_slices
    for q in np.argsort(-instance_slices, kind="mergesort"):  # the new geometry needs the slices of instances that go
        destroyed = old_instances[q] - new_instances[q]
        if deficit <= _EPS or destroyed <= 0:
            continue
        k = min(destroyed, int(np.ceil(deficit / instance_slices[q] - _EPS)))
        room[q] += _stop_on(q, float(k), order, old_profile, old_share, surplus, stop) - k  # drained, then destroyed
        deficit -= k * instance_slices[q]
    free_slices = max(0.0, -deficit)
    later = created.astype(np.float64)
    delay = 0.0
    waits = np.zeros(n, dtype=np.bool_)
    for t in range(n):
        if arrivals[t] <= 0:
            continue
        q = new_profile[t]
        need = arrivals[t] * new_share[t]
        wait = 0.0
        short = need - max(room[q], 0.0)
        if short > _EPS:  # no room beside the workers still there: the repartition's new instances, ...
            taken = min(later[q], short)
            later[q] -= taken
            room[q] += taken
            short -= taken
            if taken > _EPS:
                wait = repartition_s
            extra = 0
            if short > _EPS:
                extra = min(int(np.ceil(short - _EPS)), int((free_slices + _EPS) // instance_slices[q]))
            if extra > 0:  # ... instances cut from free slices, ...
                free_slices -= extra * instance_slices[q]
                room[q] += extra
                created[q] += extra
                short -= extra
                wait = repartition_s
            if short > _EPS:  # ... or room made by stopping leaving workers at t0
                room[q] += _stop_on(q, short, order, old_profile, old_share, surplus, stop)
        room[q] -= need
        waits[t] = wait > 0
        delay = max(delay, wait + startup_s[t])
    return delay, stop, arrivals, surplus, created, waits


@dataclass(frozen=True)
class Span:
    """From ``start_s`` on (until the next span), each task is served by ``replicas[t]`` workers configured as
    in decision ``source``."""

    start_s: float
    source: int  # the decision whose configurations serve
    replicas: np.ndarray  # [n_tasks]
    in_transition: bool  # a change is under way (between its decision's application and its switch)


@dataclass(frozen=True)
class Applied:
    """What became of one decision."""

    applied_s: float  # nan: superseded by a later decision while a change was under way
    serving_s: float  # when its plan serves (nan if superseded)
    change: Change | None


def schedule(times_s: Sequence[float], fleets: Sequence[Fleet], startup_s: Sequence[np.ndarray],
             repartition_s: float, instance_slices: np.ndarray, total_slices: float) -> tuple[list[Span], list[Applied]]:
    """The spans of workers in force when decision k (fleet ``fleets[k]``, made at ``times_s[k]``, increasing) is
    applied under the rules of the module docstring. Decision 0 is in force at ``times_s[0]``, warm."""
    n = len(fleets)
    first = fleets[0]
    spans = [Span(float(times_s[0]), 0, first.replicas, False)]
    applied = [Applied(float(times_s[0]), float(times_s[0]), instant(first))]
    current, free_s, k = 0, float(times_s[0]), 1
    while k < n:
        at = max(float(times_s[k]), free_s)
        while k + 1 < n and times_s[k + 1] <= at:  # superseded while the change before was under way
            applied.append(Applied(float("nan"), float("nan"), None))
            k += 1
        c = change(fleets[current], fleets[k], startup_s[k], repartition_s, instance_slices, total_slices)
        if c.delay_s > 0:
            spans.append(Span(at, current, c.serving, True))
        spans.append(Span(at + c.delay_s, k, fleets[k].replicas, False))
        applied.append(Applied(at, at + c.delay_s, c))
        current, free_s, k = k, at + c.delay_s, k + 1
    return spans, applied


def task_order(catalog: Catalog, apps: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """The (app, task) order of fleets built for ``apps``."""
    return tuple((a, t) for a in apps for t in catalog.app(a).task_names)


class FleetBuilder:
    """Fleets of plans for one cluster's apps, with worker kinds numbered alike across the plans."""

    def __init__(self, catalog: Catalog, gpu: GpuType, apps: Sequence[str], device: str | None = None) -> None:
        """:param device: whose start-up times count (a GPU type, or "cpu" for the CPU stand-in workers; default
        the GPU type)."""
        self.gpu, self.task_keys = gpu, task_order(catalog, apps)
        self.times = catalog.transitions_for(device or gpu.name)
        self.kinds: dict[tuple[str, str, int], int] = {}
        self.instance_slices = np.array([p.compute_slices for p in gpu.mig_profiles], dtype=float)

    @property
    def repartition_s(self) -> float:
        return self.times.repartition_s

    def fleet(self, plan: Plan) -> Fleet:
        configs = [plan.apps[a][t] for a, t in self.task_keys]
        profile = np.array([self.gpu.profile_index(c.segment) for c in configs], dtype=np.int64)
        mps = np.array([c.mps_workers for c in configs], dtype=float)
        instances = np.zeros(len(self.gpu.mig_profiles), dtype=np.int64)
        for layout in plan.gpus:
            for name, workers in zip(layout.partition, layout.workers, strict=True):
                if workers:
                    instances[self.gpu.profile_index(name)] += 1
        return Fleet(np.array([self.kinds.setdefault((c.variant, c.segment, c.mps_workers), len(self.kinds))
                               for c in configs], dtype=np.int64),
                     np.array([c.replicas for c in configs], dtype=np.int64), profile, 1.0 / mps, instances,
                     self.instance_slices[profile] / mps)

    def startup_s(self, plan: Plan) -> np.ndarray:
        return np.array([self.times.startup(plan.apps[a][t].variant) for a, t in self.task_keys])

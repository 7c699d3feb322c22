"""Decode: what levels mean at a forecast -- per task a latency budget, a configuration and replicas, and the
plan's MIG instances, slices and GPUs.

* **Budget**: a task's share of its app's SLO along its heaviest path:
  budget_t = SLO * w_t / max_{P through t} sum_{u in P} w_u, so every path's budgets sum to at most the SLO;
  raising w_t moves budget from the other tasks on t's paths to t.
* **Load**: the forecast req/s x F_t (items per app request reaching t) x headroom x provisioning level;
  replicas = max(1, ceil(load / throughput)), so no level proposes a plan the controller's check must refuse
  for capacity.
* **Configuration**: the fewest-slices rule. Among the task's configurations whose allowance x p95 fits the
  budget (floored to BUDGET_RESOLUTION_MS), the one whose workers for the load take the smallest share of the
  GPUs: max(1, ceil(load / throughput)) x a worker's share; ties go to the most items/s per slice. A worker's
  share is its compute slices (what a plan is charged) where the plan so sized fits the GPUs; otherwise memory
  counts too, as little as makes it fit: share = compute + lambda x (its share in memory slots, where those
  are scarcer, - compute), lambda the least step of SHARE_LADDER that fits (1g.20gb holds a seventh of an H100's
  compute but a quarter of its memory). Every step of the ladder is sized and packed in one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from jigsaw.env.packing import greedy_gpus
from jigsaw.env.space.levels import BUDGET_RESOLUTION_MS, kernel
from jigsaw.env.space.tables import Accuracy, fitting_of, sizing_of


@dataclass(frozen=True)
class Decoded:
    """What levels mean at a forecast: a configuration per task and its footprint."""

    config: np.ndarray  # [n_tasks] index into the flat candidate arrays, -1 where none fits the budget
    budget_ms: np.ndarray
    items: np.ndarray  # F_t, items per app request
    replicas: np.ndarray
    counts: tuple[int, ...]  # MIG instances per profile
    slices: float
    gpus: int
    app_ok: np.ndarray  # [n_apps] every task configured and every path meets the accuracy SLO
    overloaded: bool  # replicas were scaled down below what the forecast needs to fit the GPUs
    forecast_rps: np.ndarray  # the demand the replicas were sized for
    share_level: int  # the index into SHARE_LADDER the configurations were chosen with


class Sized(NamedTuple):
    """A decode kernel's result (``Decoded`` less what the caller knows)."""

    budget_ms: np.ndarray  # [n_tasks]
    items: np.ndarray  # [n_tasks]
    config: np.ndarray  # [n_tasks] -1 where none fits
    replicas: np.ndarray  # [n_tasks]
    counts: np.ndarray  # [profiles] MIG instances
    slices: float
    gpus: int
    level: int  # the row of the share ladder chosen
    app_ok: np.ndarray  # [n_apps]


@kernel
def budgets(weight, budgeting):  # pragma: no cover - compiled
    """Per task its latency budget (ms) for budget ``weight``s: its share of its heaviest path's SLO."""
    if budgeting.fixed_ms.size:
        return budgeting.fixed_ms.copy()
    incidence = budgeting.incidence
    n_paths, n = incidence.shape
    path_weight = np.zeros(n_paths)
    for p in range(n_paths):
        for t in range(n):
            path_weight[p] += incidence[p, t] * weight[t]
    budget = np.empty(n)
    for t in range(n):
        heaviest = 0.0
        for p in range(n_paths):
            heaviest = max(heaviest, incidence[p, t] * path_weight[p])
        budget[t] = budgeting.slo_ms[t] * weight[t] / heaviest
    return budget


@kernel
def items(variant, chains):  # pragma: no cover - compiled
    """F_t: per task the sum over its chains from a source of the product of the edges' fan-outs."""
    out = np.zeros(variant.size)
    for c in range(chains.chain.shape[0]):
        x = 1.0
        for e in chains.chain[c]:
            x *= chains.edge_fan[e, variant[chains.edge_parent[e]]]
        out[chains.chain_task[c]] += x
    return out


@kernel
def loads(items, provision, forecast, lookup):  # pragma: no cover - compiled
    """Per task the items/s to provision for: the forecast reaching it x headroom x its provisioning level."""
    load = np.empty(items.size)
    for t in range(items.size):
        load[t] = forecast[lookup.task_app[t]] * items[t] * lookup.capacity_factor[provision[t]]
    return load


@kernel
def cell(budget_ms):  # pragma: no cover - compiled
    """The cell of BUDGET_RESOLUTION_MS a budget falls in (floored): configurations are looked up by it."""
    return int(budget_ms * (1.0 / BUDGET_RESOLUTION_MS) + 1e-9)


@kernel
def replicas_for(config, load, inv_thr):  # pragma: no cover - compiled
    return max(1, int(np.ceil(load * inv_thr[config] - 1e-9)))


@kernel
def cheapest(t, variant, budget, load, lookup, shares, best, best_cost):  # pragma: no cover - compiled
    """Into ``best``, per row of ``shares``, the fewest-slices configuration of task t for ``variant`` at
    ``budget`` serving ``load`` items/s; -1 where none fits. ``best_cost`` is scratch of the same length (the
    callers' arrays: allocations are a good part of a kernel's time here)."""
    inv_thr = lookup.inv_thr
    levels, none = shares.shape[0], inv_thr.size - 1
    best[:] = -1
    best_cost[:] = np.inf
    for k in lookup.by_segment[t, variant, cell(budget)]:
        workers = max(1.0, np.ceil(load * inv_thr[k] - 1e-9))
        for level in range(levels):
            cost = workers * shares[level, k]
            if cost < best_cost[level]:
                best[level], best_cost[level] = k, cost
    for level in range(levels):
        if best[level] >= none:
            best[level] = -1


@kernel
def size(variant, budget, items, provision, forecast, lookup, shares):  # pragma: no cover - compiled
    """Per task the items/s to provision for, and per row of ``shares`` the configurations (-1: none fits) and
    their replicas ([rows, n_tasks])."""
    n, levels = variant.size, shares.shape[0]
    load = loads(items, provision, forecast, lookup)
    config, replicas = np.empty((levels, n), dtype=np.int64), np.empty((levels, n), dtype=np.int64)
    best, scratch = np.empty(levels, dtype=np.int64), np.empty(levels)
    for t in range(n):
        cheapest(t, variant[t], budget[t], load[t], lookup, shares, best, scratch)
        config[:, t] = best
        for level in range(levels):
            replicas[level, t] = replicas_for(max(config[level, t], 0), load[t], lookup.inv_thr)
    return load, config, replicas


@kernel
def instances(config, replicas, counting, counts, workers):  # pragma: no cover - compiled
    """Into ``counts``, MIG instances per profile for ``replicas`` workers of ``config`` (-1: counted as the first
    configuration, harmless for a plan that is refused anyway); their compute slices. ``workers``: scratch."""
    workers[:] = 0.0
    for t in range(config.size):
        workers[counting.config_segment[max(config[t], 0)]] += replicas[t]
    counts[:] = 0
    for s in range(counting.seg_workers.size):
        counts[counting.seg_profile[s]] += int(np.ceil(workers[s] / counting.seg_workers[s] - 1e-9))
    slices = 0.0
    for m in range(counts.size):
        slices += counts[m] * counting.profile_slices[m]
    return slices


@kernel
def footprints(config, replicas, counting):  # pragma: no cover - compiled
    """Per row of (config, replicas) [levels, n_tasks]: MIG instances per profile and their compute slices."""
    levels = config.shape[0]
    counts, slices = np.empty((levels, counting.profile_slices.size), dtype=np.int64), np.empty(levels)
    workers = np.empty(counting.seg_workers.size)
    for level in range(levels):
        slices[level] = instances(config[level], replicas[level], counting, counts[level], workers)
    return counts, slices


@kernel
def gpus_of(counts, packing):  # pragma: no cover - compiled
    """GPUs the MIG instance ``counts`` pack onto (``jigsaw.env.packing``)."""
    return greedy_gpus(counts, packing.parts, packing.score, packing.waste)


@kernel
def _fits(level, counts, slices, packing, gpus):  # pragma: no cover - compiled
    if slices[level] <= packing.total_slices:
        gpus[level] = gpus_of(counts[level], packing)
    return gpus[level] <= packing.n_gpus


@kernel
def first_fitting(config, replicas, fitting):  # pragma: no cover - compiled
    """Of the rows of (config, replicas) [levels, n_tasks], the share ladder's, the first whose MIG instances fit
    the GPUs, else the last (bisected: fitting is about monotone in the level): its instance counts, slices,
    GPUs and row. A row of more compute slices than the cluster's never fits and is not packed (its GPUs
    n_gpus + 1), unless nothing fits: the caller repairs by the true count."""
    packing = fitting.packing
    counts, slices = footprints(config, replicas, fitting.counting)
    gpus = np.full(slices.size, packing.n_gpus + 1, dtype=np.int64)
    low, high = 0, slices.size - 1
    if _fits(low, counts, slices, packing, gpus):
        high = low
    elif _fits(high, counts, slices, packing, gpus):
        while high - low > 1:  # low does not fit, high does
            mid = (low + high) // 2
            if _fits(mid, counts, slices, packing, gpus):
                high = mid
            else:
                low = mid
    elif slices[high] > packing.total_slices:
        gpus[high] = gpus_of(counts[high], packing)
    return counts[high], slices[high], gpus[high], high


@kernel
def apps_ok(variant, config, accuracy):  # pragma: no cover - compiled
    """Per app: every task configured (``config`` >= 0) and every path within its accuracy SLO."""
    app_ok = np.ones(accuracy.n_apps, dtype=np.bool_)
    for t in range(variant.size):
        if config[t] < 0:
            app_ok[accuracy.task_app[t]] = False
    incidence = accuracy.incidence
    for p in range(incidence.shape[0]):
        x = 0.0
        for t in range(variant.size):
            x += incidence[p, t] * accuracy.log_accuracy[t, variant[t]]
        if x < accuracy.log_slo[p] - 1e-9:
            app_ok[accuracy.path_app[p]] = False
    return app_ok


@kernel
def decode(variant, weight, provision, forecast, shares, sizing, accuracy, fitting):  # pragma: no cover - compiled
    """``DecisionSpace.decode``: the configurations at every level of the share ladder (rows of ``shares``), and of
    the first level that fits the plan's configurations, replicas, instance counts, slices, GPUs and level; and
    the budgets, items and app verdicts (the same at every level: a budget no configuration fits is one at any
    share). A ``Sized`` as a plain tuple: numba returns a named tuple to Python by calling its class."""
    sizing, accuracy, fitting = sizing_of(sizing), Accuracy(*accuracy), fitting_of(fitting)  # named (``tables``)
    budget = budgets(weight, sizing.budgeting)
    f = items(variant, sizing.chains)
    _, config, replicas = size(variant, budget, f, provision, forecast, sizing.lookup, shares)
    counts, slices, gpus, level = first_fitting(config, replicas, fitting)
    return Sized(budget, f, config[level], replicas[level], counts, slices, gpus, level,
                 apps_ok(variant, config[0], accuracy))[:]

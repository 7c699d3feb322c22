"""The decision space's precomputed tables: every configuration of every task as flat arrays, and what the
kernels read, as named tuples, each no larger than what its readers read.

A configuration is one of a task's candidates (``jigsaw.env.candidates``: variant, segment type, batch). Tasks
are flat, app by app; ``n_configs`` indexes "none fits" in the tables that may hold it.

Two costs of numba shape the tuples, both of which would be a good part of a step's time. A compiled call takes
a reference to every array of a tuple argument, so a helper called in a loop gets a small tuple (``Lookup``,
``Counting``) and a kernel the tuples of its helpers (``Sizing``, ``Fitting``). And numba types a named tuple
argument from Python by reading its class and field names on every call, so Python hands the kernels plain tuples
(``plain``), which they name on entry (``sizing_of``, ``Accuracy(*accuracy)``; free in compiled code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np

from jigsaw.env.candidates import Features, SolverOptions, candidates
from jigsaw.env.space.levels import BUDGET_RESOLUTION_MS, NONE, SHARE_LADDER
from jigsaw.profiles.catalog import Catalog
from jigsaw.profiles.errors import SolverError
from jigsaw.profiles.types import GpuType


class Budgeting(NamedTuple):
    """What turns budget weights into budgets (``decode.budgets``)."""

    fixed_ms: np.ndarray  # [n_tasks] the budgets where budgeting is off; empty where the weights set them
    incidence: np.ndarray  # [n_paths, n_tasks] 1.0 where the path runs through the task
    slo_ms: np.ndarray  # [n_tasks] the latency SLO of the task's app


class Chains(NamedTuple):
    """What turns variants into the items reaching each task (``decode.items``)."""

    edge_fan: np.ndarray  # [n_edges + 1, v_max] per edge its fan-out by the parent's variant; a last row of ones pads
    edge_parent: np.ndarray  # [n_edges + 1]
    chain: np.ndarray  # [n_chains, depth] the edges from a source down to chain_task (padded with the last row)
    chain_task: np.ndarray  # [n_chains]


class Lookup(NamedTuple):
    """What turns items into loads, and a budget and a load into a configuration and replicas (``decode.size``)."""

    task_app: np.ndarray  # [n_tasks]
    capacity_factor: np.ndarray  # [len(PROVISION_LEVELS)] the headroom x the provisioning level
    by_segment: np.ndarray  # [n_tasks, v_max, budget cells, segment types] configuration, or n_configs (``decode``)
    inv_thr: np.ndarray  # [n_configs + 1] s per item; 0 for none


class Sizing(NamedTuple):
    """What turns levels into budgets, loads, configurations and replicas (``decode``)."""

    budgeting: Budgeting
    chains: Chains
    lookup: Lookup


class Counting(NamedTuple):
    """What counts a plan's MIG instances and their compute slices."""

    config_segment: np.ndarray  # [n_configs] segment type
    seg_workers: np.ndarray  # [segment types] MPS workers per instance
    seg_profile: np.ndarray  # [segment types] MIG profile
    profile_slices: np.ndarray  # [profiles] compute slices


class Packing(NamedTuple):
    """What packs MIG instances onto the cluster's GPUs (``jigsaw.env.packing``)."""

    parts: np.ndarray  # Packer.tables
    score: np.ndarray
    waste: np.ndarray
    total_slices: float  # the cluster's compute slices
    n_gpus: int


class Fitting(NamedTuple):
    """What turns configurations and replicas into MIG instances, slices and GPUs."""

    counting: Counting
    packing: Packing


class Accuracy(NamedTuple):
    """What decides whether an app's variants keep every path within its accuracy SLO."""

    task_app: np.ndarray  # [n_tasks]
    incidence: np.ndarray  # [n_paths, n_tasks]
    log_accuracy: np.ndarray  # [n_tasks, v_max]
    log_slo: np.ndarray  # [n_paths] the log accuracy SLO of the path's app
    path_app: np.ndarray  # [n_paths]
    n_apps: int


class Neighbours(NamedTuple):
    """Per (task, variant) the variants a step down and up (clipped to the ladder), [n_tasks, v_max, 2] each."""

    variant: np.ndarray
    min_budget_ms: np.ndarray  # the least budget the variant's configurations need; inf: off the ladder
    accuracy_drop: np.ndarray  # log-accuracy lost by the step


class Steps(NamedTuple):
    """What one variant step can reach: read by repair's variant steps and by polish's moves."""

    neighbours: Neighbours
    n_variants: np.ndarray  # [n_tasks]
    instance_slices: np.ndarray  # [n_configs] compute slices of the configuration's MIG instance
    co_path: np.ndarray  # [n_tasks, n_tasks] bool, another task on a path through the task


class SplitTables(NamedTuple):
    """What the exact budget split (``polish.split``) reads: each app's tree of tasks, configurations by need."""

    by_need: np.ndarray  # [n_tasks, v_max, most] a variant's configurations, least need first; n_configs pads
    need_cell: np.ndarray  # [n_configs] cells of BUDGET_RESOLUTION_MS the configuration's allowance x p95 needs
    order: np.ndarray  # [n_tasks] each app's tasks in topological order
    parent: np.ndarray  # [n_tasks] the task's parent, -1 for a source or a task not free
    free: np.ndarray  # [n_tasks] bool, the split sets its budget (its app is a tree, budgeting is on)
    slo_cells: np.ndarray  # [n_tasks] the app's latency SLO in cells


class Scales(NamedTuple):
    """What the observation divides by (``observation``)."""

    inv_top_variant: np.ndarray  # [n_tasks] 1 / the top variant's index
    slo_ms: np.ndarray  # [n_tasks]
    config_features: np.ndarray  # [2, n_configs] slices per worker over a GPU's, log2 batch over the largest's
    config_slices: np.ndarray  # [n_configs]
    total_slices: float
    n_gpus: int
    path_slo_ms: np.ndarray  # [n_paths]


class Tables(NamedTuple):
    """A ``DecisionSpace``'s kernel tables (Python's view: the kernels get them ``plain``)."""

    sizing: Sizing
    accuracy: Accuracy
    fitting: Fitting
    steps: Steps
    split: SplitTables
    scales: Scales


def plain(t: tuple) -> tuple:
    """``t`` with it and every named tuple inside it plain (the module docstring says why)."""
    return tuple(plain(x) if isinstance(x, tuple) else x for x in t)


@numba.njit(cache=True, inline="always")  # inlined: a call would take a reference to every array
def sizing_of(sizing):  # pragma: no cover - compiled
    """A plain ``Sizing`` named."""
    budgeting, chains, lookup = sizing
    return Sizing(Budgeting(*budgeting), Chains(*chains), Lookup(*lookup))


@numba.njit(cache=True, inline="always")  # inlined: a call would take a reference to every array
def fitting_of(fitting):  # pragma: no cover - compiled
    """A plain ``Fitting`` named."""
    counting, packing = fitting
    return Fitting(Counting(*counting), Packing(*packing))


@numba.njit(cache=True, inline="always")  # inlined: a call would take a reference to every array
def steps_of(steps):  # pragma: no cover - compiled
    """A plain ``Steps`` named."""
    return Steps(Neighbours(*steps[0]), *steps[1:])


@dataclass(frozen=True)
class Configurations:
    """Every task's configurations as flat arrays, and the lookups by budget and by need."""

    task: np.ndarray  # [n_configs] int
    variant: np.ndarray  # int
    segment: np.ndarray  # int, index into the GPU's segment types
    batch: np.ndarray  # int
    p50_ms: np.ndarray
    p95_ms: np.ndarray
    thr_rps: np.ndarray  # items/s of one worker
    slices: np.ndarray  # compute slices of one worker
    min_budget_ms: np.ndarray  # [n_tasks, v_max] the least allowance x p95 of a variant's configurations; inf: none
    by_segment: np.ndarray  # Lookup.by_segment
    by_need: np.ndarray  # SplitTables.by_need
    need_cell: np.ndarray  # SplitTables.need_cell
    shares: np.ndarray  # [len(SHARE_LADDER), n_configs + 1] a worker's share of a GPU in slices; NONE for none
    inv_thr: np.ndarray  # Lookup.inv_thr


def configurations(catalog: Catalog, gpu: GpuType, apps: list[str], index: dict[tuple[str, str], int], v_max: int,
                   features: Features, opts: SolverOptions) -> Configurations:
    """The configurations of ``apps``' tasks (``index``: (app, task) -> flat task) on ``gpu``. Raises SolverError
    for an app whose SLOs no configuration meets."""
    cols: dict[str, list[float]] = {k: [] for k in ("task", "variant", "segment", "batch", "p95", "p50", "thr", "slices")}
    min_budget = np.full((len(index), v_max), np.inf)
    # (task, variant) -> its configurations, least need first (of equal items/s, the faster one is kept)
    configs_of: dict[tuple[int, int], np.ndarray] = {}
    rank: dict[int, int] = {}  # configuration -> its place by items/s per slice within its (task, variant)
    # a worker's share of a GPU in compute slices, or in memory slots where those are scarcer: H100 holds
    # seven 1g.10gb but only four 1g.20gb instances, so per compute slice the latter packs 1.75x worse
    gpu_share = np.array([s.slices * max(1.0, s.mig_profile.width * gpu.compute_slices
                                         / (gpu.memory_slots * s.mig_profile.compute_slices)) for s in gpu.segments])
    for a in apps:
        cands, reason = candidates(catalog, gpu, catalog.app(a), features, opts)
        if reason:
            raise SolverError(reason, field="--app", fix="choose apps whose SLOs the catalog can meet")
        for c in cands:
            ti = index[(a, c.task)]
            table = catalog.table(gpu.name, a, c.task)
            start = len(cols["task"])
            for k in range(len(c.p95_ms)):
                seg = gpu.segments[c.segment[k]]
                b = table.batches.index(int(c.batch[k]))
                for key, value in (("task", ti), ("variant", c.variant[k]), ("segment", c.segment[k]),
                                   ("batch", c.batch[k]), ("p95", c.p95_ms[k]),
                                   ("p50", table.p50_ms[c.variant[k], c.segment[k], b]),
                                   ("thr", c.throughput_rps[k]), ("slices", seg.slices)):
                    cols[key].append(float(value))
            ids = np.arange(start, len(cols["task"]))
            need = opts.latency_allowance * np.array(cols["p95"])[ids]
            per_slice = np.array(cols["thr"])[ids] / gpu_share[c.segment]
            for v in np.unique(c.variant):
                mine = ids[c.variant == v]
                min_budget[ti, v] = need[mine - start].min()
                by_slice = mine[np.lexsort((need[mine - start], -per_slice[mine - start]))]
                rank.update((int(k), r) for r, k in enumerate(by_slice))
                configs_of[(ti, int(v))] = mine[np.argsort(need[mine - start], kind="stable")]
    arr = {k: np.array(v) for k, v in cols.items()}
    segment, p95, thr = arr["segment"].astype(np.int64), arr["p95"], arr["thr"]
    # per (task, variant, budget cell, segment type) the configuration with the most items/s whose need fits the
    # cell's budget: for any load, the cheapest of a segment type's configurations (budgets never exceed the SLO:
    # one spare cell absorbs rounding). Where none fits, the index after the last configuration, which costs NONE
    cells = math.ceil(max(catalog.app(a).latency_slo_ms for a in apps) / BUDGET_RESOLUTION_MS) + 2
    none = len(arr["task"])
    by_segment = np.full((len(index), v_max, cells, len(gpu.segments)), none, dtype=np.int64)
    need_cell = np.ceil((opts.latency_allowance * p95 - 1e-9) / BUDGET_RESOLUTION_MS).astype(np.int64)
    by_need = np.full((len(index), v_max, max(map(len, configs_of.values()))), none, dtype=np.int64)
    for (ti, v), ks in configs_of.items():
        by_need[ti, v, :len(ks)] = ks
        for k, cell in zip(ks, need_cell[ks], strict=True):
            column = by_segment[ti, v, cell:, segment[k]]  # the budgets k fits
            column[(column == none) | (thr[np.minimum(column, none - 1)] < thr[k])] = k
    # a worker's share of a GPU per step of SHARE_LADDER: its compute slices plus that much of the excess of its
    # memory share (sized by compute alone, plans of 1g.20gb fill the GPUs at 4 of 7 slices each), plus a millionth
    # per place in the items/s-per-slice ranking (ties go to the most items/s per slice)
    compute = np.array([s.slices for s in gpu.segments])[segment]
    shares = (compute + SHARE_LADDER[:, None] * (gpu_share[segment] - compute)
              + 1e-6 * np.array([rank[k] for k in range(none)]))
    return Configurations(
        task=arr["task"].astype(np.int64), variant=arr["variant"].astype(np.int64), segment=segment,
        batch=arr["batch"].astype(np.int64), p50_ms=arr["p50"], p95_ms=p95, thr_rps=thr, slices=arr["slices"],
        min_budget_ms=min_budget, by_segment=by_segment, by_need=by_need, need_cell=need_cell,
        shares=np.hstack([shares, np.full((len(SHARE_LADDER), 1), NONE)]), inv_thr=np.append(1.0 / thr, 0.0))


def chains(edges: list[tuple[int, int, np.ndarray]], sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every chain of ``edges`` (topologically ordered) from a source down to a task, padded with the index after
    the last edge, and the task it reaches: F_t sums the product of fan-outs over the task's chains (several
    where paths join)."""
    n = sources.size
    found: list[list[list[int]]] = [[[]] if sources[t] else [] for t in range(n)]
    for e, (u, v, _) in enumerate(edges):  # topological order: the parent's chains are complete
        found[v] += [[*c, e] for c in found[u]]
    flat = [(t, c) for t in range(n) for c in found[t]]
    depth = max(len(c) for _, c in flat)
    chain = np.array([c + [len(edges)] * (depth - len(c)) for _, c in flat], dtype=np.int64).reshape(len(flat), depth)
    return chain, np.array([t for t, _ in flat], dtype=np.int64)


def steps(n_variants: np.ndarray, instance_slices: np.ndarray, min_budget_ms: np.ndarray, log_accuracy: np.ndarray,
          co_path: np.ndarray) -> Steps:
    """Per (task, variant) its neighbours on the ladder."""
    n, v_max = min_budget_ms.shape
    ladder = np.arange(v_max)[None, :, None] + np.array([-1, 1])[None, None, :]
    neighbour = np.minimum(np.maximum(ladder, 0), (n_variants - 1)[:, None, None])  # [n, v_max, 2]
    has_neighbour = (ladder >= 0) & (ladder < n_variants[:, None, None])
    at = np.arange(n)[:, None, None], neighbour
    neighbours = Neighbours(variant=neighbour, min_budget_ms=np.where(has_neighbour, min_budget_ms[at], np.inf),
                            accuracy_drop=log_accuracy[:, :, None] - log_accuracy[at])
    return Steps(neighbours=neighbours, n_variants=n_variants, instance_slices=instance_slices, co_path=co_path)

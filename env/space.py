"""The decision space the agent acts in: per task a variant, a budget weight and a provisioning level.

Shared by the Gymnasium environment (``jigsaw.env.gym_env``) and the controller's policy proposer. ``decode`` and
``masks`` run as compiled (numba) kernels: numpy, at about a microsecond a call on ~10-task arrays, cost 45 and
100 us per call, the kernels 7 and 6 (decode 16 at all nine levels of SHARE_LADDER, packing the levels it tries
inside the kernel); ``evaluate`` predicts a decoded plan's metrics in one compiled call (18 us, where building the
plan's ``CompiledPlan`` and evaluating it took 31).

* **Variant**: an index into the task's ladder (least to most accurate); a step moves it by one.
* **Budget**: an integer weight w_t in 1..BUDGET_LEVELS. A task's latency budget is its share of its app's
  SLO along its heaviest path: budget_t = SLO * w_t / max_{P through t} sum_{u in P} w_u, so every path's
  budgets sum to at most the SLO. Raising w_t moves budget from the other tasks on t's paths to t.
* **Segment and batch** follow from (variant, budget, the load to provision for) by the fewest-slices rule:
  among the task's configurations (the ILP's candidates, ``jigsaw.env.candidates``) whose allowance x p95
  fits the budget (floored to BUDGET_RESOLUTION_MS), the one whose workers for the load take the smallest share
  of the GPUs:
  max(1, ceil(load / throughput)) x a worker's share; ties go to the most items/s per slice. A worker's share
  is its compute slices (what the plan is charged) if the plan so sized fits the GPUs; otherwise memory counts
  too, as little as makes it fit: share = compute + lambda x (the share in memory slots where those are
  scarcer - compute), lambda the least of SHARE_LADDER that fits (1g.20gb holds a seventh of an H100's compute
  but a quarter of its memory: sized by compute alone, plans of 1g.20gb filled the GPUs at 4 of 7 slices each).
  With the ILP's own variants and budgets, plans took 1.4-1.6x the ILP's slices under the load-blind rule (most
  items/s per slice), 1.2x under this rule with memory always counted (lambda = 1), 1.05x with the ladder.
* **Provisioning**: an index into PROVISION_LEVELS, capacity over the forecast items/s beyond the headroom
  (``SolverOptions.headroom``, the capacity the controller's check demands); replicas =
  max(1, ceil(forecast_rps * F_t * headroom * level / throughput)), so no level proposes a plan the check
  must refuse for capacity (below the headroom, every plan was). The slice-count action steps this level, so a
  task's slices follow demand between decisions and the agent learns how much spare capacity each task
  needs, not the demand curve itself (DESIGN.md's "slice step" moves replicas directly; stepping the
  level instead keeps one action meaning the same thing at 4 and at 120 GPUs).

Instances: workers of one segment type share instances (ceil(workers / MPS workers per instance)), packed
greedily onto GPUs (``jigsaw.env.packing``). A step that makes an app infeasible (no configuration fits a budget,
or a path under the accuracy SLO) is undone for that app; one that does not fit the GPUs has its
provisioning undone, then drops to the lowest level, then has its variant raises undone, then steps variants
down (one task at a time, the one taking the most slices whose variant a step down keeps its paths within the
accuracy SLOs and frees slices: cheaper variants, as the ILP would choose), then, if demand alone exceeds the
cluster, scales all replicas down until the plan fits (the plan is then overloaded: the performance model counts
the excess as violated); if even one replica per task does not fit, it starts once more from the previous
variants and budgets (``_repair``, one compiled call).

``polish`` is a local search the controller's policy proposer runs on each proposal (not the environment's steps:
at 0.3-1 ms it costs several of them). It splits each app's latency SLO between its tasks exactly, for the
proposal's variants and provisioning (``decode(split=True)``: ``_split``, a dynamic programme over the app's tree of
tasks for the fewest workers x share; the five weight levels cannot say the ILP's 151 / 8 / 41 ms along a chain),
then steps single variants down, and a variant down with another on the same path up (and, in an app whose paths
join, which keeps its weights' budgets, budget weights by one), while they save slices, fit and keep every path's
predicted p95 within its SLO. The policy's single-level steps under the accuracy masks stall
on costly variant mixes (a path's accuracy held by its most expensive task) and, at the cluster's edge, on plans
that only fit squeezed. On the held-out default traces (45 intervals, decisions only) polishing by weights took the
policy from 1.13x to 1.08x the ILP's slices; with the split, to 1.04x (5 to 4 fallbacks both).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from jigsaw.env.candidates import Features, SolverOptions, candidates
from jigsaw.env.packing import Packer, greedy_gpus
from jigsaw.env.perf import CompiledPlan, Metrics, compile_plan, config_table, evaluate_configs, service_rows, with_configs
from jigsaw.env.plan import Plan, TaskConfig
from jigsaw.env.transitions import Fleet
from jigsaw.profiles.catalog import Catalog
from jigsaw.profiles.errors import SolverError

ACTION_NVEC = (3, 3, 5)  # per task: variant step -1..+1, budget step -1..+1, provisioning step -2..+2
BUDGET_LEVELS = 5
PROVISION_LEVELS = np.array([1.0, 1.05, 1.1, 1.15, 1.2, 1.3, 1.4, 1.5, 1.75, 2.0])
BUDGET_RESOLUTION_MS = 0.5  # budgets are floored to this grid when configurations are looked up
_NONE = 1e12  # the cost of "no configuration fits": more than any plan's slices
HISTORY = 2  # intervals of measured demand the forecast and the observation see
OBS_HIGH = 4.0  # observation features are scaled to about [0, 1] and clipped to [0, OBS_HIGH]
SQUEEZE_STEP, SQUEEZE_TRIES = 0.95, 40  # an overloaded plan shrinks 5 % at a time (0.95^40 = 0.13)
POLISH_ROUNDS, POLISH_TRIES = 6, 4  # DecisionSpace.polish: rounds of moves; full decodes tried per round
SHARE_LADDER = np.linspace(0.0, 1.0, 9)  # how much memory counts in a worker's share (the module docstring)


def forecast_rps(history: np.ndarray, peak: np.ndarray | None = None) -> np.ndarray:
    """Next interval's req/s per app from ``history`` ([..., HISTORY, n_apps] interval means, oldest first): the
    last rate, or its linear extrapolation when demand is rising (falling demand is followed one interval late:
    safe), and at least ``peak`` ([..., n_apps]), the last interval's busiest sub-interval (a trace bin, or the
    daemon's PEAK_WINDOW_S), where it is known: sized for the mean, a plan drops the bursts inside the interval."""
    last, before = history[..., -1, :], history[..., -2, :]
    rising = np.maximum(last, 2.0 * last - before)
    return rising if peak is None else np.maximum(rising, peak)


@dataclass(frozen=True, eq=False)
class Levels:
    """The agent's state of the decision, per task (in ``DecisionSpace.tasks`` order)."""

    variant: np.ndarray  # int, index into the task's ladder
    weight: np.ndarray  # int, 1..BUDGET_LEVELS
    provision: np.ndarray  # int, index into PROVISION_LEVELS

    def replace(self, **changes: np.ndarray) -> Levels:
        return Levels(**{**{"variant": self.variant, "weight": self.weight, "provision": self.provision}, **changes})

    def same_configuration(self, other: Levels) -> bool:
        """Same variants and budget weights (provisioning may differ)."""
        return np.array_equal(self.variant, other.variant) and np.array_equal(self.weight, other.weight)


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


class DecisionSpace:
    """Precomputed tables for ``apps`` on ``gpus`` GPUs of ``gpu_type`` (tasks flat, app by app)."""

    def __init__(self, catalog: Catalog, gpu_type: str, apps: list[str], gpus: int,
                 features: Features = Features(), opts: SolverOptions = SolverOptions()) -> None:
        self.catalog, self.gpu, self.apps, self.n_gpus = catalog, catalog.gpu(gpu_type), list(apps), gpus
        self.features, self.opts = features, opts
        gpu = self.gpu
        self.tasks = [(a, t) for a in self.apps for t in catalog.app(a).task_names]
        index = {k: i for i, k in enumerate(self.tasks)}
        n = len(self.tasks)
        self.task_app = np.array([self.apps.index(a) for a, _ in self.tasks])
        self.n_variants = np.array([len(catalog.app(a).task(t).variants) for a, t in self.tasks])
        v_max = int(self.n_variants.max())
        self.accuracy = np.ones((n, v_max))
        paths = [(a, p) for a in self.apps for p in catalog.app(a).paths()]
        self.incidence = np.zeros((len(paths), n))
        for pi, (a, p) in enumerate(paths):
            self.incidence[pi, [index[(a, t)] for t in p]] = 1.0
        self.path_app = np.array([self.apps.index(a) for a, _ in paths])
        self.slo_task = np.array([catalog.app(a).latency_slo_ms for a, _ in self.tasks])
        self.acc_slo = np.array([catalog.app(a).accuracy_slo for a in self.apps])
        share = self.incidence.T @ self.incidence
        self.co_path = (share > 0) & ~np.eye(n, dtype=bool)  # other tasks on a path through t
        longest = (self.incidence * self.incidence.sum(axis=1, keepdims=True)).max(axis=0)
        self.fixed_budget = None if features.budgeting else self.slo_task / longest
        # fan-outs: (parent, child, per parent variant) in topological order
        self.edges: list[tuple[int, int, np.ndarray]] = []
        self.sources = np.zeros(n, dtype=bool)
        cols: dict[str, list[float]] = defaultdict(list)
        self.min_budget = np.full((n, v_max), np.inf)
        # (task, variant) -> its configurations, least need first (of equal items/s, the faster one is kept)
        configs_of: dict[tuple[int, int], np.ndarray] = {}
        rank: dict[int, int] = {}  # configuration -> its place by items/s per slice within its (task, variant)
        order: list[int] = []  # tasks, each app's in topological order
        # a worker's share of a GPU in compute slices, or in memory slots where those are scarcer: H100 holds
        # seven 1g.10gb but only four 1g.20gb instances, so per compute slice the latter packs 1.75x worse
        gpu_share = np.array([s.slices * max(1.0, s.mig_profile.width * gpu.compute_slices
                                             / (gpu.memory_slots * s.mig_profile.compute_slices)) for s in gpu.segments])
        for a in self.apps:
            app = catalog.app(a)
            cands, reason = candidates(catalog, gpu, app, features, opts)
            if reason:
                raise SolverError(reason, field="--app", fix="choose apps whose SLOs the catalog can meet")
            for t in app.topological_order:
                ti = index[(a, t)]
                order.append(ti)
                self.sources[ti] = all(v != t for _, v in app.edges)
                ladder = [x.name for x in app.task(t).variants]
                self.accuracy[ti, :len(ladder)] = [x.accuracy for x in app.task(t).variants]
                for (u, v) in app.edges:
                    if u == t:
                        self.edges.append((ti, index[(a, v)], np.array([app.fanout(u, v, x) for x in ladder]
                                                                       + [1.0] * (v_max - len(ladder)))))
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
                    self.min_budget[ti, v] = need[mine - start].min()
                    by_slice = mine[np.lexsort((need[mine - start], -per_slice[mine - start]))]
                    rank.update((int(k), r) for r, k in enumerate(by_slice))
                    configs_of[(ti, int(v))] = mine[np.argsort(need[mine - start], kind="stable")]
        arr = {k: np.array(v) for k, v in cols.items()}
        self.c_variant, self.c_segment = arr["variant"].astype(np.int64), arr["segment"].astype(np.int64)
        self.c_batch, self.c_p50, self.c_p95 = arr["batch"].astype(np.int64), arr["p50"], arr["p95"]
        self.c_thr, self.c_slices = arr["thr"], arr["slices"]
        self.c_task = arr["task"].astype(np.int64)
        # lookup(): per (task, variant, budget cell, segment type) the configuration with the most items/s whose
        # need fits the cell's budget: for any load, the cheapest of a segment type's configurations (budgets
        # never exceed the SLO: one spare cell absorbs rounding). Where none fits, the index after the last
        # configuration, which costs _NONE slices
        cells = math.ceil(self.slo_task.max() / BUDGET_RESOLUTION_MS) + 2
        none = len(arr["task"])
        self._by_segment = np.full((n, v_max, cells, len(gpu.segments)), none, dtype=np.int64)
        self._need_cell = np.ceil((opts.latency_allowance * self.c_p95 - 1e-9) / BUDGET_RESOLUTION_MS).astype(np.int64)
        self._by_need = np.full((n, v_max, max(map(len, configs_of.values()))), none, dtype=np.int64)
        for (ti, v), ks in configs_of.items():
            self._by_need[ti, v, :len(ks)] = ks
            for k, cell in zip(ks, self._need_cell[ks], strict=True):
                column = self._by_segment[ti, v, cell:, self.c_segment[k]]  # the budgets k fits
                column[(column == none) | (self.c_thr[np.minimum(column, none - 1)] < self.c_thr[k])] = k
        # per configuration (and none): 1 / items/s, and per step of SHARE_LADDER a worker's share of a GPU in
        # slices (see the module docstring) plus a millionth per place in the items/s-per-slice ranking (ties)
        self._c_inv_thr = np.append(1.0 / self.c_thr, 0.0)
        compute = np.array([s.slices for s in gpu.segments])[self.c_segment]
        shares = (compute + SHARE_LADDER[:, None] * (gpu_share[self.c_segment] - compute)
                  + 1e-6 * np.array([rank[k] for k in range(none)]))
        self._shares = np.hstack([shares, np.full((len(SHARE_LADDER), 1), _NONE)])
        self.c_service = service_rows(self.c_p95, self.c_thr, self.c_batch)
        # what compiled() reads of each configuration, one row per quantity: a plan's columns in one gather
        c_accuracy = self.accuracy[self.c_task, self.c_variant]
        self._c_columns = np.vstack([self.c_p50, self.c_p95, self.c_thr, c_accuracy, self.c_service])
        self._c_table = config_table(self.c_p95, c_accuracy, self.c_service)  # what evaluate() reads
        self.seg_profile = np.array([gpu.profile_index(s.mig_profile.name) for s in gpu.segments])
        self.seg_workers = np.array([s.mps_workers for s in gpu.segments], dtype=float)
        self.profile_slices = np.array([p.compute_slices for p in gpu.mig_profiles], dtype=float)
        self.total_slices = float(gpus * gpu.compute_slices)
        self.packer = Packer(gpu)
        self._fitting = (self.total_slices, gpus, *self.packer.tables)  # what decode's kernels pack with
        self.log_accuracy = np.log(self.accuracy)
        self.log_acc_slo = np.log(self.acc_slo[self.path_app])
        self._on_path = self.incidence > 0
        self.path_slo_ms = self.slo_task[self.incidence.argmax(axis=1)]
        self._fanout_tasks = np.array(sorted({u for u, _, fan in self.edges if np.ptp(fan[:self.n_variants[u]]) > 0}),
                                      dtype=np.int64)
        self.c_instance_slices = np.array([gpu.segments[s].mig_profile.compute_slices for s in self.c_segment], float)
        self._path_in_app = (self.path_app[:, None] == np.arange(len(self.apps))[None, :]).astype(float)
        self._variant_steps = np.array([-1, 1])
        self._step_zero = np.array([1, 1, 2])  # the no-change choice of each head of ACTION_NVEC
        self._level_low = np.array([0, 1, 0])
        self._level_high = np.stack([self.n_variants - 1, np.full(n, BUDGET_LEVELS), np.full(n, len(PROVISION_LEVELS) - 1)],
                                    axis=1)
        self._provision_steps = np.array([-2, -1, 1, 2])
        self._capacity_factor = PROVISION_LEVELS * opts.headroom  # the lowest level is the controller's headroom
        self._structure: CompiledPlan | None = None
        # items(): per edge its fan-out by the parent's variant (a last row of ones pads), and every chain of edges
        # from a source down to a task (padded with that row): F_t is the sum over the task's chains (several where
        # paths join) of the product of their fan-outs
        self._edge_fan = np.vstack([*(fan for _, _, fan in self.edges), np.ones(v_max)])
        self._edge_parent = np.array([u for u, _, _ in self.edges] + [0], dtype=np.int64)
        # polish's exact budget split (_split) runs over each app's tree of tasks: per task its parent (-1: a source).
        # An app where paths join (a task with two parents) is no tree: its tasks keep their weights' budgets
        parent, parents = np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int64)
        for u, v, _ in self.edges:
            parent[v], parents[v] = u, parents[v] + 1
        joined = np.isin(self.task_app, self.task_app[parents > 1])
        self._split_free = ~joined & features.budgeting
        self._split_parent = np.where(self._split_free, parent, -1)
        self._split_order = np.array(order, dtype=np.int64)
        self._slo_cells = np.floor(self.slo_task / BUDGET_RESOLUTION_MS + 1e-9).astype(np.int64)
        self._split_tables = (self._by_need, self._need_cell, self._split_order, self._split_parent, self._split_free,
                              self._slo_cells)
        chains: list[list[list[int]]] = [[[]] if self.sources[t] else [] for t in range(n)]
        for e, (u, v, _) in enumerate(self.edges):  # topological order: the parent's chains are complete
            chains[v] += [[*c, e] for c in chains[u]]
        flat = [(t, c) for t in range(n) for c in chains[t]]
        depth = max(len(c) for _, c in flat)
        self._chain = np.array([c + [len(self.edges)] * (depth - len(c)) for _, c in flat], dtype=np.int64
                               ).reshape(len(flat), depth)
        self._chain_task = np.array([t for t, _ in flat], dtype=np.int64)
        # masks(): per (task, variant) the variants one step down and up (clipped) and whether they exist
        ladder = np.arange(v_max)[None, :, None] + self._variant_steps[None, None, :]
        self._neighbour = np.minimum(np.maximum(ladder, 0), (self.n_variants - 1)[:, None, None])  # [n, v_max, 2]
        has_neighbour = (ladder >= 0) & (ladder < self.n_variants[:, None, None])
        at = np.arange(n)[:, None, None], self._neighbour  # [n, v_max, 2]: per (task, variant) its neighbours'...
        self._neighbour_min_budget = np.where(has_neighbour, self.min_budget[at], np.inf)  # (inf: none)
        self._neighbour_accuracy_drop = self.log_accuracy[:, :, None] - self.log_accuracy[at]  # log-accuracy lost
        level = np.arange(len(PROVISION_LEVELS))[:, None] + self._provision_steps[None, :]
        clipped = np.minimum(np.maximum(level, 0), len(PROVISION_LEVELS) - 1)
        self._provision_ok = level == clipped  # [levels, 4] the step stays on the levels
        self._provision_ratio = PROVISION_LEVELS[clipped] / PROVISION_LEVELS[:, None] - 1.0  # replicas' growth
        self._provision_down = self._provision_steps < 0
        self._path_app_acc_slo = list(zip(self.path_app.tolist(), self.acc_slo[self.path_app].tolist(), strict=True))
        self._inv_top_variant = 1.0 / np.maximum(self.n_variants - 1, 1)
        # what decode() and masks() hand their compiled kernels, in the kernels' argument order
        self._sizing = (np.empty(0) if self.fixed_budget is None else self.fixed_budget, self.incidence, self.slo_task,
                        self._edge_fan, self._edge_parent, self._chain, self._chain_task, self.task_app,
                        self._capacity_factor, self._by_segment, self._c_inv_thr, self.c_segment,
                        self.seg_workers, self.seg_profile, self.profile_slices)
        # the split's kernels look configurations up by need (_split_tables), not by budget cell: no by_segment
        self._split_sizing = self._sizing[:9] + self._sizing[10:]
        self._c_obs = np.stack([self.c_slices / gpu.compute_slices,
                                np.log2(self.c_batch) / math.log2(max(self.c_batch.max(), 2))])  # per configuration

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @functools.cached_property
    def capacity_rps(self) -> np.ndarray:
        """Per app, the req/s it alone could never exceed on the cluster: every task at its best items/s per
        compute slice, with the fewest items any variant sends downstream (the scale the observation uses)."""
        per_item = np.full(self.n_tasks, np.inf)
        np.minimum.at(per_item, self.c_task, self.c_slices / self.c_thr)
        fewest = self.items(np.array([int(np.argmin(self._fanout_of(t))) for t in range(self.n_tasks)]))
        need = np.bincount(self.task_app, weights=fewest * per_item, minlength=len(self.apps))
        return self.total_slices / need

    def _fanout_of(self, t: int) -> np.ndarray:
        """Items task t sends downstream per item, by its variant (ones when it has no per-variant fan-out)."""
        total = np.zeros(self.n_variants[t])
        for u, _, fan in self.edges:
            if u == t:
                total += fan[:self.n_variants[t]]
        return total

    # ---- levels -> configuration

    def budgets(self, weight: np.ndarray) -> np.ndarray:
        return _budgets(weight, *self._sizing[:3])

    def items(self, variant: np.ndarray) -> np.ndarray:
        """Items per app request reaching each task, for variants [n_tasks]."""
        return _items(variant, self._edge_fan, self._edge_parent, self._chain, self._chain_task, self.n_tasks)

    def decode(self, levels: Levels, forecast_rps: np.ndarray, split: bool = False,
               share_level: int | None = None) -> Decoded:
        """The configuration ``levels`` imply at ``forecast_rps`` (req/s per app), unrepaired: per task its budget,
        the items reaching it, the fewest-slices configuration (the module docstring) for its load, its replicas;
        and whether each app is configured and meets its accuracy SLO. With ``split``, the budgets are not the
        weights' but the split of each path's SLO that takes the fewest slices (``polish``); with ``share_level``,
        the configurations are chosen at that step of SHARE_LADDER only (fitting or not)."""
        first = 0 if share_level is None else share_level
        shares = self._shares if share_level is None else self._shares[first:first + 1]
        if split:
            budget, items, config, replicas, counts, slices, gpus, level, app_ok = _decode_split(
                levels.variant, levels.weight, levels.provision, forecast_rps, shares, *self._split_sizing,
                self.log_accuracy, self.log_acc_slo, self.path_app, len(self.apps), *self._fitting,
                *self._split_tables)
        else:
            budget, items, config, replicas, counts, slices, gpus, level, app_ok = _decode(
                levels.variant, levels.weight, levels.provision, forecast_rps, shares, *self._sizing,
                self.log_accuracy, self.log_acc_slo, self.path_app, len(self.apps), *self._fitting)
        return Decoded(config, budget, items, replicas, tuple(counts.tolist()), slices, gpus, app_ok, False,
                       forecast_rps, first + level)

    # ---- actions

    def step(self, levels: Levels, action: np.ndarray, forecast_rps: np.ndarray) -> tuple[Levels, Decoded, int]:
        """Apply ``action`` ([n_tasks, 3] or flat, MultiDiscrete ACTION_NVEC per task) to ``levels``: the new
        levels, what they decode to (repaired as the module docstring says), and how many repairs it took."""
        a = np.asarray(action, dtype=np.int64).reshape(-1)
        if a.size != 3 * self.n_tasks:
            raise ValueError(f"action has {a.size} entries; the space takes 3 per task, {3 * self.n_tasks}")
        proposed = Levels(*_stepped(levels.variant, levels.weight, levels.provision, a, self._step_zero,
                                    self._level_low, self._level_high))
        return self.repair(levels, proposed, forecast_rps)

    def repair(self, previous: Levels, proposed: Levels, forecast_rps: np.ndarray) -> tuple[Levels, Decoded, int]:
        """``proposed`` made valid against ``previous`` (which must be valid), as the module docstring says: the
        levels, what they decode to, and how many repairs it took. One compiled call (``_repair``): a repair decodes
        up to a dozen times, and each decode from Python cost more in calling than in computing."""
        *levels, budget, items, config, replicas, counts, slices, gpus, level, app_ok, overloaded, repairs = _repair(
            previous.variant, previous.weight, previous.provision, proposed.variant, proposed.weight,
            proposed.provision, forecast_rps, self._shares, *self._sizing, self.log_accuracy, self.log_acc_slo,
            self.path_app, len(self.apps), *self._fitting, self._neighbour_min_budget, self._neighbour_accuracy_drop,
            self.c_instance_slices)
        return (Levels(*levels), Decoded(config, budget, items, replicas, tuple(counts.tolist()), slices, gpus, app_ok,
                                         overloaded, forecast_rps, level), repairs)

    def polish(self, levels: Levels, decoded: Decoded, forecast_rps: np.ndarray) -> tuple[Levels, Decoded]:
        """A local search from ``levels`` for fewer slices, with each app's latency SLO split exactly between its
        tasks (``decode(split=True)``: for the variants and loads, the budgets of the fewest slices, as the ILP splits
        them; the weights' five levels cannot say 151 / 8 / 41 ms). Each round ranks every move of one variant down and
        of one variant down and another on a shared path up (accuracy traded along the path, as the ILP trades it),
        and where paths join (no split) of one budget weight by one, by its slices at the current share level
        without packing (one compiled call), and takes the first of the POLISH_TRIES cheapest whose full decode fits
        the GPUs unsqueezed and keeps every app within its SLOs. From a squeezed plan, any move that fits is better.
        Provisioning is the policy's to choose and stays. Rounds stop at no such move or after POLISH_ROUNDS. The
        plan returned has split budgets; the levels are the policy's to step from."""
        n_gpus = self.n_gpus

        def better(d: Decoded, than: Decoded) -> bool:  # a split plan can be one the check refuses: evaluate it
            return (d.app_ok.all() and d.gpus <= n_gpus and (than.gpus > n_gpus or d.slices < than.slices)
                    and bool((self.evaluate(d, forecast_rps).path_p95_ms <= self.path_slo_ms).all()))

        current = self.decode(levels, forecast_rps) if decoded.overloaded else decoded
        split = self.decode(levels, forecast_rps, split=True)
        current = split if better(split, current) else current
        for _ in range(POLISH_ROUNDS):
            share = self._shares[current.share_level:current.share_level + 1]
            variants, weights, slices, ok = _polish_moves(
                levels.variant, levels.weight, levels.provision, forecast_rps, share, *self._split_sizing, self.log_accuracy,
                self.log_acc_slo, self.path_app, len(self.apps), self.co_path, self.n_variants, *self._split_tables)
            cheaper = np.flatnonzero(ok & (slices < current.slices - 1e-9))
            for i in cheaper[np.argsort(slices[cheaper], kind="stable")][:POLISH_TRIES]:
                trial = levels.replace(variant=variants[i], weight=weights[i])
                d = self.decode(trial, forecast_rps, split=True, share_level=current.share_level)
                if better(d, current):
                    levels, current = trial, d
                    break
            else:
                break
        for level in range(current.share_level):  # fewer slices may now fit with memory counted less
            d = self.decode(levels, forecast_rps, split=True, share_level=level)
            if better(d, current):
                current = d
                break
        return (levels, current) if current.gpus <= n_gpus else (levels, decoded)

    def masks(self, levels: Levels, decoded: Decoded) -> np.ndarray:
        """[n_tasks, 11] booleans, per task the 3 + 3 + 5 choices of ACTION_NVEC that are allowed. Conservative
        per head (a head's mask cannot see the others' choices; ``repair`` handles joint effects): a variant
        step off the ladder, to a variant with no configuration at the current budget or under the accuracy
        SLO; a budget step off 1..BUDGET_LEVELS, leaving this task or another on its paths with no
        configuration; a provisioning step off the levels or one whose extra slices exceed the free ones."""
        return _masks(levels.variant, levels.weight, levels.provision, decoded.budget_ms, decoded.items,
                      decoded.config, decoded.replicas, decoded.slices, decoded.forecast_rps,
                      self._shares[decoded.share_level:decoded.share_level + 1], *self._sizing,
                      self.total_slices, self.log_accuracy, self.log_acc_slo, self._neighbour,
                      self._neighbour_min_budget, self._neighbour_accuracy_drop, self.c_instance_slices,
                      self._fanout_tasks, self.min_budget, self.co_path, self._provision_ratio, self._provision_ok,
                      self._provision_down, self.fixed_budget is not None)

    # ---- configuration -> plan

    def structure(self) -> CompiledPlan:
        if self._structure is None:
            self._structure = compile_plan(self.catalog, self.plan(self.initial(), self.decode(
                self.initial(), np.zeros(len(self.apps)))))
        return self._structure

    def compiled(self, d: Decoded) -> CompiledPlan:
        """The decoded plan as ``jigsaw.env.perf`` arrays, without building a ``Plan``."""
        p50, p95, thr, accuracy, *_ = columns = self._c_columns[:, d.config]
        return with_configs(self.structure(), p50_ms=p50, p95_ms=p95, throughput_rps=thr, replicas=d.replicas,
                            batch=self.c_batch[d.config], budget_ms=d.budget_ms, items_per_request=d.items,
                            accuracy=accuracy, slices_used=d.slices, gpus_used=d.gpus, service=columns[4:])

    def evaluate(self, d: Decoded, demand_rps: np.ndarray) -> Metrics:
        """``jigsaw.env.perf.evaluate(self.compiled(d), demand_rps)`` in one compiled call, without the plan's arrays."""
        return evaluate_configs(self.structure(), self._c_table, d.config, d.replicas, d.budget_ms, d.items, d.slices,
                                d.gpus, demand_rps)

    def plan(self, levels: Levels, d: Decoded) -> Plan:
        """The decoded configuration as a ``Plan`` with a packed MIG layout."""
        gpu = self.gpu
        apps: dict[str, dict[str, TaskConfig]] = {a: {} for a in self.apps}
        workers: dict[int, list[str]] = defaultdict(list)
        for i, (a, t) in enumerate(self.tasks):
            k = int(d.config[i])
            seg = gpu.segments[int(self.c_segment[k])]
            apps[a][t] = TaskConfig(self.catalog.app(a).task(t).variants[int(levels.variant[i])].name,
                                    seg.mig_profile.name, seg.mps_workers, int(self.c_batch[k]), int(d.replicas[i]),
                                    round(float(d.budget_ms[i]), 3))
            workers[int(self.c_segment[k])] += [f"{a}/{t}"] * int(d.replicas[i])
        instances: dict[str, list[tuple[str, ...]]] = defaultdict(list)
        for s, names in sorted(workers.items()):
            m = gpu.segments[s].mps_workers
            instances[gpu.segments[s].mig_profile.name] += [tuple(names[i:i + m]) for i in range(0, len(names), m)]
        return Plan(gpu.name, apps, self.packer.layout(instances))

    def fleet(self, d: Decoded) -> Fleet:
        """The decoded plan's workers, for ``jigsaw.env.transitions`` (a kind per (variant, segment type))."""
        segment = self.c_segment[d.config]
        share = 1.0 / self.seg_workers[segment]
        profile = self.seg_profile[segment]
        return Fleet(self.c_variant[d.config] * len(self.gpu.segments) + segment, d.replicas, profile, share,
                     np.asarray(d.counts, dtype=np.int64), self.profile_slices[profile] * share)

    def levels_of(self, plan: Plan) -> Levels:
        """The levels nearest ``plan`` (one of these apps' on this GPU type, e.g. the ILP's): its variants, budget
        weights in proportion to its budgets (the largest on a path at BUDGET_LEVELS), the lowest provisioning
        level. Raises KeyError or ValueError for a plan of other apps, tasks or variants."""
        variant = np.array([[v.name for v in self.catalog.app(a).task(t).variants].index(plan.apps[a][t].variant)
                            for a, t in self.tasks])
        budget = np.array([plan.apps[a][t].budget_ms for a, t in self.tasks])
        largest = np.where(self._on_path, budget, 0.0).max(axis=1)  # per path
        near = np.where(self._on_path, largest[:, None], 0.0).max(axis=0)  # per task, over its paths
        weight = np.clip(np.rint(BUDGET_LEVELS * budget / near), 1, BUDGET_LEVELS).astype(np.int64)
        return Levels(variant, weight, np.zeros(self.n_tasks, dtype=np.int64))

    def initial(self) -> Levels:
        """Middle budgets, the lowest provisioning level (capacity = forecast x headroom, as the ILP plans), and
        per task the most accurate variant that has a configuration at its budget."""
        weight = np.full(self.n_tasks, (BUDGET_LEVELS + 1) // 2, dtype=np.int64)
        budget = self.budgets(weight)
        fits = self.min_budget <= budget[:, None] + 1e-9
        variant = np.where(fits.any(axis=1), self.min_budget.shape[1] - 1 - fits[:, ::-1].argmax(axis=1), 0)
        return Levels(variant.astype(np.int64), weight, np.zeros(self.n_tasks, dtype=np.int64))

    # ---- what the agent sees

    @property
    def observation_size(self) -> int:
        return (HISTORY + 1) * len(self.apps) + 8 * self.n_tasks + 2 * self.incidence.shape[0] + 2

    def demand_features(self, history: np.ndarray, forecast: np.ndarray) -> np.ndarray:
        """The observation's demand part, for histories [..., HISTORY, n_apps] of measured req/s and their
        forecasts [..., n_apps]: per app the last HISTORY intervals' and the forecast req/s over
        ``capacity_rps`` ([..., (HISTORY + 1) * n_apps])."""
        both = np.concatenate([history, forecast[..., None, :]], axis=-2) / self.capacity_rps
        return both.reshape(*history.shape[:-2], -1)

    def observation(self, levels: Levels, d: Decoded, metrics: Any, demand_features: np.ndarray) -> np.ndarray:
        """The agent's observation: ``demand_features``; per task variant, weight, budget / SLO, slices per
        worker, log batch, provisioning level, utilisation (``metrics`` of the last interval) and share of the
        cluster; per path p95 / SLO and violation; slices and GPUs used over the cluster's. Scaled to about
        [0, 1], clipped to [0, OBS_HIGH], float32."""
        return _observation(self.observation_size, demand_features, levels.variant, levels.weight, levels.provision,
                            d.budget_ms, d.config, d.replicas, float(d.slices), d.gpus, metrics.utilisation,
                            metrics.path_p95_ms, metrics.path_violation, self._inv_top_variant, self.slo_task,
                            self._c_obs, self.c_slices, self.total_slices, self.n_gpus, self.path_slo_ms)

    def accuracy_shortfall(self, path_accuracy: np.ndarray) -> float:
        """The mean over apps of max(0, SLO - the least accurate path's accuracy) / SLO (a Python loop: a few paths,
        where numpy's calls cost microseconds each)."""
        short = [0.0] * len(self.apps)
        for (app, slo), accuracy in zip(self._path_app_acc_slo, path_accuracy.tolist(), strict=True):
            short[app] = max(short[app], 1.0 - accuracy / slo)
        return sum(short) / len(self.apps)


# ---- compiled kernels: decode() and masks() run every environment step on arrays of ~10 tasks, where each numpy
# call costs about a microsecond; compiled loops do the same arithmetic in a few. Arguments: see ``_sizing``.

_jit = numba.njit(cache=True, error_model="numpy")


@_jit
def _items(variant, edge_fan, edge_parent, chain, chain_task, n):  # pragma: no cover - compiled
    """F_t: per task the sum over its chains from a source of the product of the edges' fan-outs."""
    items = np.zeros(n)
    for c in range(chain.shape[0]):
        x = 1.0
        for e in chain[c]:
            x *= edge_fan[e, variant[edge_parent[e]]]
        items[chain_task[c]] += x
    return items


@_jit
def _stepped(variant, weight, provision, action, step_zero, low, high):  # pragma: no cover - compiled
    """``DecisionSpace.step``'s new levels: per task each level moved by its head's choice less the no-change one,
    clipped to the level's range (``low`` per head, ``high`` [n_tasks, 3])."""
    out = np.empty((3, variant.size), dtype=np.int64)
    for t in range(variant.size):
        for h, level in enumerate((variant, weight, provision)):
            out[h, t] = min(max(level[t] + action[3 * t + h] - step_zero[h], low[h]), high[t, h])
    return out[0], out[1], out[2]


@_jit
def _budgets(weight, fixed_budget, incidence, slo_task):  # pragma: no cover - compiled
    if fixed_budget.size:
        return fixed_budget.copy()
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
        budget[t] = slo_task[t] * weight[t] / heaviest
    return budget


@_jit
def _cell(budget_ms):  # pragma: no cover - compiled
    """The cell of BUDGET_RESOLUTION_MS a budget falls in (floored): configurations are looked up by it."""
    return int(budget_ms * (1.0 / BUDGET_RESOLUTION_MS) + 1e-9)


@_jit
def _cheapest(t, variant, budget, load, by_segment, inv_thr, shares, none, best, best_cost
              ):  # pragma: no cover - compiled
    """Into ``best``, per row of ``shares``, the fewest-slices configuration of task t for ``variant`` at
    ``budget`` serving ``load`` items/s; -1 where none fits (the table holds ``none`` there). ``best_cost`` is
    scratch of the same length (the callers' arrays: allocations are a good part of a kernel's time here)."""
    levels = shares.shape[0]
    best[:] = -1
    best_cost[:] = np.inf
    for k in by_segment[t, variant, _cell(budget)]:
        workers = max(1.0, np.ceil(load * inv_thr[k] - 1e-9))
        for level in range(levels):
            cost = workers * shares[level, k]
            if cost < best_cost[level]:
                best[level], best_cost[level] = k, cost
    for level in range(levels):
        if best[level] >= none:
            best[level] = -1


@_jit
def _replicas(config, load, inv_thr):  # pragma: no cover - compiled
    return max(1, int(np.ceil(load * inv_thr[config] - 1e-9)))


@_jit
def _instances(config, replicas, c_segment, seg_workers, seg_profile, profile_slices, counts, workers
               ):  # pragma: no cover - compiled
    """Into ``counts``, MIG instances per profile for ``replicas`` workers of ``config`` (-1: counted as the first
    configuration, harmless for a plan that is refused anyway); their compute slices. ``workers``: scratch."""
    workers[:] = 0.0
    for t in range(config.size):
        workers[c_segment[max(config[t], 0)]] += replicas[t]
    counts[:] = 0
    for s in range(seg_workers.size):
        counts[seg_profile[s]] += int(np.ceil(workers[s] / seg_workers[s] - 1e-9))
    slices = 0.0
    for m in range(counts.size):
        slices += counts[m] * profile_slices[m]
    return slices


@_jit
def _loads(items, provision, forecast, task_app, capacity_factor):  # pragma: no cover - compiled
    """Per task the items/s to provision for: the forecast reaching it x headroom x its provisioning level."""
    load = np.empty(items.size)
    for t in range(items.size):
        load[t] = forecast[task_app[t]] * items[t] * capacity_factor[provision[t]]
    return load


@_jit
def _variant_steps_ok(variant, budget, incidence, log_accuracy, log_acc_slo, neighbour_min_budget,
                      neighbour_accuracy_drop):  # pragma: no cover - compiled
    """[n_tasks, 2]: whether the variant a step down, up has a configuration at the task's budget and keeps the
    tightest path through the task within its accuracy SLO."""
    n, n_paths = variant.size, incidence.shape[0]
    room = np.full(n, np.inf)  # how far each task's accuracy may drop
    for p in range(n_paths):
        x = 0.0
        for t in range(n):
            x += incidence[p, t] * log_accuracy[t, variant[t]]
        for t in range(n):
            if incidence[p, t] > 0:
                room[t] = min(room[t], x - log_acc_slo[p])
    ok = np.empty((n, 2), dtype=np.bool_)
    for t in range(n):
        for j in range(2):
            ok[t, j] = (neighbour_min_budget[t, variant[t], j] <= budget[t] + 1e-9
                        and neighbour_accuracy_drop[t, variant[t], j] <= room[t] + 1e-9)
    return ok


@_jit
def _size(variant, budget, items, provision, forecast, task_app, capacity_factor, by_segment, inv_thr, shares,
          none):  # pragma: no cover - compiled
    """Per task the items/s to provision for, and per row of ``shares`` the configurations (-1: none fits) and
    their replicas ([rows, n_tasks])."""
    n, levels = variant.size, shares.shape[0]
    load = _loads(items, provision, forecast, task_app, capacity_factor)
    config, replicas = np.empty((levels, n), dtype=np.int64), np.empty((levels, n), dtype=np.int64)
    best, scratch = np.empty(levels, dtype=np.int64), np.empty(levels)
    for t in range(n):
        _cheapest(t, variant[t], budget[t], load[t], by_segment, inv_thr, shares, none, best, scratch)
        config[:, t] = best
        for level in range(levels):
            replicas[level, t] = _replicas(max(config[level, t], 0), load[t], inv_thr)
    return load, config, replicas


@_jit
def _split(variant, budget, load, share, by_need, need_cell, inv_thr, order, parent, free, slo_cells, app, task_app,
           config, cells):  # pragma: no cover - compiled
    """Into ``config`` and ``cells``, per task the configuration of its ``variant`` and its budget in cells of
    BUDGET_RESOLUTION_MS that together take the fewest workers x ``share`` (one row of the ladder) for ``load``, over
    every split of each path's SLO between its tasks; tasks not ``free`` keep ``budget``. A dynamic programme over
    each app's tree, leaves first: the least cost of a task's subtree for every number of cells left to it, where
    the task takes the cells of one of its breakpoints (a configuration that costs less than every one needing fewer
    cells). -1 where no split fits. Only the tasks of ``app`` (-1: every app's); the others' entries stay."""
    n, none = variant.size, inv_thr.size - 1
    below = np.zeros((n, slo_cells.max() + 1))  # the children's least cost with r cells left under a task
    choice = np.full(below.shape, -1, dtype=np.int64)  # the breakpoint taken with r cells left
    option = np.empty((n, by_need.shape[2]), dtype=np.int64)
    cost = np.empty((n, by_need.shape[2]))
    top = np.empty(n, dtype=np.int64)  # the cells a source (or a task at its own budget) has
    inner = np.zeros(n, dtype=np.bool_)  # a task with children
    for t in range(n):
        if parent[t] >= 0:
            inner[parent[t]] = True
    for i in range(n - 1, -1, -1):
        t = order[i]
        if app >= 0 and task_app[t] != app:
            continue
        top[t] = slo_cells[t] if free[t] else _cell(budget[t])
        m, least = 0, np.inf
        for k in by_need[t, variant[t]]:  # by need: the breakpoints
            if k >= none or need_cell[k] > top[t]:
                break
            c = max(1.0, np.ceil(load[t] * inv_thr[k] - 1e-9)) * share[k]
            if c < least:
                option[t, m], cost[t, m], least, m = k, c, c, m + 1
        if not inner[t]:  # a leaf: its least cost falls with the cells left, breakpoint by breakpoint
            j = -1
            for r in range(top[t] if parent[t] < 0 else 0, top[t] + 1):
                while j + 1 < m and need_cell[option[t, j + 1]] <= r:
                    j += 1
                choice[t, r] = j
                if parent[t] >= 0:
                    below[parent[t], r] += cost[t, j] if j >= 0 else np.inf
            continue
        for r in range(top[t] if parent[t] < 0 else 0, top[t] + 1):
            best = np.inf
            for j in range(m):
                c = need_cell[option[t, j]]
                if c > r:
                    break
                x = cost[t, j] + below[t, r - c]
                if x < best:
                    best, choice[t, r] = x, j
            if parent[t] >= 0:
                below[parent[t], r] += best
    left = np.empty(n, dtype=np.int64)
    for i in range(n):
        t = order[i]
        if app >= 0 and task_app[t] != app:
            continue
        left[t] = top[t] if parent[t] < 0 else left[parent[t]] - cells[parent[t]]
        j = choice[t, left[t]]
        config[t], cells[t] = (option[t, j], need_cell[option[t, j]]) if j >= 0 else (-1, 0)


@_jit
def _decode(variant, weight, provision, forecast, shares, fixed_budget, incidence, slo_task, edge_fan, edge_parent,
            chain, chain_task, task_app, capacity_factor, by_segment, inv_thr, c_segment, seg_workers, seg_profile,
            profile_slices, log_accuracy, log_acc_slo, path_app, n_apps, total, n_gpus, parts, score, waste
            ):  # pragma: no cover - compiled
    """``DecisionSpace.decode``: the configurations at every level of the share ladder (rows of ``shares``), and of
    the first level that fits (``_fitting``) the configurations, replicas, instance counts, slices, GPUs and the
    level; and the budgets, items and app verdicts (the same at every level: a budget no configuration fits is one
    at any share)."""
    n = variant.size
    budget = _budgets(weight, fixed_budget, incidence, slo_task)
    items = _items(variant, edge_fan, edge_parent, chain, chain_task, n)
    _, config, replicas = _size(variant, budget, items, provision, forecast, task_app, capacity_factor, by_segment,
                                inv_thr, shares, c_segment.size)
    counts, slices, gpus, level = _fitting(config, replicas, c_segment, seg_workers, seg_profile, profile_slices,
                                           total, n_gpus, parts, score, waste)
    return (budget, items, config[level], replicas[level], counts, slices, gpus, level,
            _apps_ok(variant, config[0], task_app, incidence, log_accuracy, log_acc_slo, path_app, n_apps))


@_jit
def _decode_split(variant, weight, provision, forecast, shares, fixed_budget, incidence, slo_task, edge_fan,
                  edge_parent, chain, chain_task, task_app, capacity_factor, inv_thr, c_segment, seg_workers,
                  seg_profile, profile_slices, log_accuracy, log_acc_slo, path_app, n_apps, total, n_gpus, parts, score,
                  waste, by_need, need_cell, order, parent, free, slo_cells):  # pragma: no cover - compiled
    """``_decode`` with each level's budgets ``_split``'s (its cells; the weights' where not ``free``). Its own
    kernel: the environment's decode is not charged the split's arguments."""
    n, levels = variant.size, shares.shape[0]
    budget = _budgets(weight, fixed_budget, incidence, slo_task)
    items = _items(variant, edge_fan, edge_parent, chain, chain_task, n)
    load = _loads(items, provision, forecast, task_app, capacity_factor)
    config, replicas = np.empty((levels, n), dtype=np.int64), np.empty((levels, n), dtype=np.int64)
    budgets, cells = np.empty((levels, n)), np.empty(n, dtype=np.int64)
    for level in range(levels):
        _split(variant, budget, load, shares[level], by_need, need_cell, inv_thr, order, parent, free, slo_cells, -1,
               task_app, config[level], cells)
        for t in range(n):
            replicas[level, t] = _replicas(max(config[level, t], 0), load[t], inv_thr)
            budgets[level, t] = cells[t] * BUDGET_RESOLUTION_MS if free[t] and cells[t] > 0 else budget[t]
    counts, slices, gpus, level = _fitting(config, replicas, c_segment, seg_workers, seg_profile, profile_slices,
                                           total, n_gpus, parts, score, waste)
    return (budgets[level], items, config[level], replicas[level], counts, slices, gpus, level,
            _apps_ok(variant, config[0], task_app, incidence, log_accuracy, log_acc_slo, path_app, n_apps))


@_jit
def _footprints(config, replicas, c_segment, seg_workers, seg_profile, profile_slices):  # pragma: no cover - compiled
    """Per row of (config, replicas) [levels, n_tasks]: MIG instances per profile and their compute slices."""
    levels = config.shape[0]
    counts, slices = np.empty((levels, profile_slices.size), dtype=np.int64), np.empty(levels)
    workers = np.empty(seg_workers.size)
    for level in range(levels):
        slices[level] = _instances(config[level], replicas[level], c_segment, seg_workers, seg_profile,
                                   profile_slices, counts[level], workers)
    return counts, slices


@_jit
def _repair(prev_variant, prev_weight, prev_provision, variant, weight, provision, forecast, shares, fixed_budget,
            incidence, slo_task, edge_fan, edge_parent, chain, chain_task, task_app, capacity_factor, by_segment, inv_thr,
            c_segment, seg_workers, seg_profile, profile_slices, log_accuracy, log_acc_slo, path_app, n_apps, total,
            n_gpus, parts, score, waste, neighbour_min_budget, neighbour_accuracy_drop, c_instance_slices
            ):  # pragma: no cover - compiled
    """``DecisionSpace.repair``: the repaired levels, ``_decode``'s outputs for them (squeezed, ``overloaded``, where
    even that did not fit), and the repairs counted. A plan that fits at none of it, at one replica per task, is
    tried again from the previous configuration (at the provisioning reached), once."""
    sizing = (fixed_budget, incidence, slo_task, edge_fan, edge_parent, chain, chain_task, task_app, capacity_factor,
              by_segment, inv_thr, c_segment, seg_workers, seg_profile, profile_slices, log_accuracy, log_acc_slo,
              path_app, n_apps, total, n_gpus, parts, score, waste)
    variant, weight, provision = variant.copy(), weight.copy(), provision.copy()
    repairs = 0
    for attempt in range(2):
        overloaded = False
        d = _decode(variant, weight, provision, forecast, shares, *sizing)
        if not d[8].all():  # undo the failing apps' variant and budget moves
            for t in range(variant.size):
                if not d[8][task_app[t]]:
                    variant[t], weight[t] = prev_variant[t], prev_weight[t]
            repairs += int((~d[8]).sum())
            d = _decode(variant, weight, provision, forecast, shares, *sizing)
        if d[6] <= n_gpus:
            break
        provision = np.minimum(provision, prev_provision)  # the provisioning raises undone, then the lowest level
        repairs += 1
        d = _decode(variant, weight, provision, forecast, shares, *sizing)
        if d[6] <= n_gpus:
            break
        provision = np.zeros_like(provision)
        repairs += 1
        d = _decode(variant, weight, provision, forecast, shares, *sizing)
        if d[6] <= n_gpus:
            break
        lowered = np.minimum(variant, prev_variant)
        if (lowered != variant).any():  # undo this step's variant raises
            e = _decode(lowered, weight, provision, forecast, shares, *sizing)
            if e[8].all():
                variant, d, repairs = lowered, e, repairs + 1
        while d[6] > n_gpus:  # variants down, each time the task taking the most slices whose step down frees some
            can = (variant > 0) & _variant_steps_ok(variant, d[0], incidence, log_accuracy, log_acc_slo,
                                                    neighbour_min_budget, neighbour_accuracy_drop)[:, 0]
            candidates = np.flatnonzero(can)
            taken = d[3][candidates] * c_instance_slices[np.maximum(d[2][candidates], 0)]
            stepped = False
            for t in candidates[np.argsort(-taken, kind="mergesort")]:
                trial = variant.copy()
                trial[t] -= 1
                e = _decode(trial, weight, provision, forecast, shares, *sizing)
                if e[8].all() and e[5] < d[5]:
                    variant, d, repairs, stepped = trial, e, repairs + 1, True
                    break
            if not stepped:
                break
        if d[6] > n_gpus:
            d, overloaded = _squeeze(d, total, n_gpus, c_segment, seg_workers, seg_profile, profile_slices, parts,
                                     score, waste), True
        if d[6] <= n_gpus or attempt or ((variant == prev_variant).all() and (weight == prev_weight).all()):
            break
        repairs += 1  # one replica each is too much: keep the previous configuration, which fitted
        variant, weight, prev_provision = prev_variant.copy(), prev_weight.copy(), provision
    return (variant, weight, provision, *d, overloaded, repairs)


@_jit
def _squeeze(d, total, n_gpus, c_segment, seg_workers, seg_profile, profile_slices, parts, score, waste
             ):  # pragma: no cover - compiled
    """``_decode``'s outputs ``d`` with the replicas scaled down by a common factor, from the share of slices that
    fit, until the plan fits (or SQUEEZE_TRIES)."""
    budget, items, config, replicas, counts, slices, gpus, level, app_ok = d
    factor = min(1.0, total / max(slices, 1e-9))
    config_or_first = np.maximum(config, 0)
    reps = np.empty_like(replicas)
    counts, workers = np.empty_like(counts), np.empty(seg_workers.size)
    for _ in range(SQUEEZE_TRIES):
        for t in range(reps.size):
            reps[t] = max(1.0, math.floor(replicas[t] * factor))
        slices = _instances(config_or_first, reps, c_segment, seg_workers, seg_profile, profile_slices, counts, workers)
        gpus = greedy_gpus(counts, parts, score, waste)
        if gpus <= n_gpus:
            break
        factor *= SQUEEZE_STEP
    return budget, items, config, reps, counts, slices, gpus, level, app_ok


@_jit
def _fitting(config, replicas, c_segment, seg_workers, seg_profile, profile_slices, total, n_gpus, parts, score, waste
             ):  # pragma: no cover - compiled
    """Of the rows of (config, replicas) [levels, n_tasks], the share ladder's, the first whose MIG instances fit
    ``n_gpus`` GPUs, else the last (bisected: fitting is about monotone in the level): its instance counts, slices,
    GPUs and row. A row of more compute slices than the cluster's ``total`` never fits and is not packed (its GPUs
    n_gpus + 1), unless nothing fits: the caller repairs by the true count."""
    counts, slices = _footprints(config, replicas, c_segment, seg_workers, seg_profile, profile_slices)
    gpus = np.full(slices.size, n_gpus + 1, dtype=np.int64)
    low, high = 0, slices.size - 1
    if _fits(low, counts, slices, total, n_gpus, gpus, parts, score, waste):
        high = low
    elif _fits(high, counts, slices, total, n_gpus, gpus, parts, score, waste):
        while high - low > 1:  # low does not fit, high does
            mid = (low + high) // 2
            if _fits(mid, counts, slices, total, n_gpus, gpus, parts, score, waste):
                high = mid
            else:
                low = mid
    elif slices[high] > total:
        gpus[high] = greedy_gpus(counts[high], parts, score, waste)
    return counts[high], slices[high], gpus[high], high


@_jit
def _fits(level, counts, slices, total, n_gpus, gpus, parts, score, waste):  # pragma: no cover - compiled
    if slices[level] <= total:
        gpus[level] = greedy_gpus(counts[level], parts, score, waste)
    return gpus[level] <= n_gpus


@_jit
def _apps_ok(variant, config, task_app, incidence, log_accuracy, log_acc_slo, path_app, n_apps
             ):  # pragma: no cover - compiled
    """Per app: every task configured (``config`` >= 0) and every path within its accuracy SLO."""
    app_ok = np.ones(n_apps, dtype=np.bool_)
    for t in range(variant.size):
        if config[t] < 0:
            app_ok[task_app[t]] = False
    for p in range(incidence.shape[0]):
        x = 0.0
        for t in range(variant.size):
            x += incidence[p, t] * log_accuracy[t, variant[t]]
        if x < log_acc_slo[p] - 1e-9:
            app_ok[path_app[p]] = False
    return app_ok


@_jit
def _polish_moves(variant, weight, provision, forecast, share, fixed_budget, incidence, slo_task, edge_fan,
                  edge_parent, chain, chain_task, task_app, capacity_factor, inv_thr, c_segment, seg_workers,
                  seg_profile, profile_slices, log_accuracy, log_acc_slo, path_app, n_apps, co_path, n_variants,
                  by_need, need_cell, order, parent, free, slo_cells
                  ):  # pragma: no cover - compiled
    """``DecisionSpace.polish``'s moves from (variant, weight) as rows of variants and weights, each with its
    slices, budgets split (``_split`` of the one row ``share``: a move re-splits only its own app), and whether
    every app is configured and within its accuracy SLO. Weights move only where they set the budgets (not
    ``free``: the split ignores them), and not under fixed budgets."""
    n = variant.size
    most = n + n * n + 2 * n
    variants, weights = np.empty((most, n), dtype=np.int64), np.empty((most, n), dtype=np.int64)
    moved_app = np.empty(most, dtype=np.int64)
    k = 0
    for t in range(n):
        if variant[t] == 0:
            continue
        for u in range(-1, n):  # -1: t down alone; else t down and u, on a path with t, up
            if u >= 0 and not (co_path[t, u] and variant[u] < n_variants[u] - 1):
                continue
            variants[k], weights[k], moved_app[k] = variant, weight, task_app[t]
            variants[k, t] -= 1
            if u >= 0:
                variants[k, u] += 1
            k += 1
    for t in range(n):
        if fixed_budget.size == 0 and not free[t]:
            for step in (-1, 1):
                if 1 <= weight[t] + step <= BUDGET_LEVELS:
                    variants[k], weights[k], moved_app[k] = variant, weight, task_app[t]
                    weights[k, t] += step
                    k += 1
    base, cells = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    _split(variant, _budgets(weight, fixed_budget, incidence, slo_task),
           _loads(_items(variant, edge_fan, edge_parent, chain, chain_task, n), provision, forecast, task_app,
                  capacity_factor),
           share[0], by_need, need_cell, inv_thr, order, parent, free, slo_cells, -1, task_app, base, cells)
    slices, ok = np.empty(k), np.empty(k, dtype=np.bool_)
    config, replicas = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    counts, workers = np.empty(profile_slices.size, dtype=np.int64), np.empty(seg_workers.size)
    for i in range(k):
        load = _loads(_items(variants[i], edge_fan, edge_parent, chain, chain_task, n), provision, forecast, task_app,
                      capacity_factor)
        config[:] = base
        _split(variants[i], _budgets(weights[i], fixed_budget, incidence, slo_task), load, share[0], by_need,
               need_cell, inv_thr, order, parent, free, slo_cells, moved_app[i], task_app, config, cells)
        for t in range(n):
            replicas[t] = _replicas(max(config[t], 0), load[t], inv_thr)
        slices[i] = _instances(config, replicas, c_segment, seg_workers, seg_profile, profile_slices, counts, workers)
        ok[i] = _apps_ok(variants[i], config, task_app, incidence, log_accuracy, log_acc_slo, path_app, n_apps).all()
    return variants[:k], weights[:k], slices, ok


@_jit
def _masks(variant, weight, provision, budget, items, config, replicas, slices, forecast, share, fixed_budget,
           incidence, slo_task, edge_fan, edge_parent, chain, chain_task, task_app, capacity_factor, by_segment, inv_thr,
           c_segment, seg_workers, seg_profile, profile_slices, total_slices, log_accuracy, log_acc_slo,
           neighbour, neighbour_min_budget, neighbour_accuracy_drop, instance_slices, fanout_tasks, min_budget,
           co_path, provision_ratio, provision_ok, provision_down, budget_fixed):  # pragma: no cover - compiled
    """``DecisionSpace.masks``: [n_tasks, 11] per task the allowed choices of ACTION_NVEC."""
    n = variant.size
    out = np.ones((n, 11), dtype=np.bool_)
    free = total_slices - slices + 1e-9
    steps_ok = _variant_steps_ok(variant, budget, incidence, log_accuracy, log_acc_slo, neighbour_min_budget,
                                 neighbour_accuracy_drop)
    per_replica, cost = np.empty(n), np.empty(n)
    for t in range(n):
        per_replica[t] = instance_slices[max(config[t], 0)]
        cost[t] = replicas[t] * per_replica[t]  # growth is charged whole instances
    total_cost = cost.sum()
    load = _loads(items, provision, forecast, task_app, capacity_factor)  # share: the plan's row of the ladder
    pick, scratch = np.empty(1, dtype=np.int64), np.empty(1)
    is_fanout = np.zeros(n, dtype=np.bool_)
    is_fanout[fanout_tasks] = True
    for t in range(n):
        for j in range(2):  # a variant step down, up
            nv = neighbour[t, variant[t], j]
            ok = steps_ok[t, j]
            if ok and not is_fanout[t]:  # its own items do not depend on its variant
                _cheapest(t, nv, budget[t], load[t], by_segment, inv_thr, share, c_segment.size, pick, scratch)
                k = max(pick[0], 0)
                ok = _replicas(k, load[t], inv_thr) * instance_slices[k] - cost[t] <= free
            elif ok:  # a fan-out source's variant also changes the items downstream: the whole plan re-sized
                moved = variant.copy()
                moved[t] = nv
                moved_items = _items(moved, edge_fan, edge_parent, chain, chain_task, n)
                _, moved_config, moved_replicas = _size(moved, budget, moved_items, provision, forecast, task_app,
                                                        capacity_factor, by_segment, inv_thr, share, c_segment.size)
                whole = 0.0
                for u in range(n):
                    whole += moved_replicas[0, u] * instance_slices[max(moved_config[0, u], 0)]
                ok = whole - total_cost <= free
            out[t, 2 * j] = ok
    if budget_fixed:
        out[:, 3] = False
        out[:, 5] = False
    else:
        need, short = np.empty(n), np.empty(n, dtype=np.bool_)
        path_weight = incidence @ weight.astype(np.float64)
        for t in range(n):
            heaviest = 0.0  # the weight sum budgets() divides by (not read off the budget: a polished plan's is split)
            for p in range(path_weight.size):
                heaviest = max(heaviest, incidence[p, t] * path_weight[p])
            need[t] = min_budget[t, variant[t]] - 1e-9
            out[t, 3] = weight[t] > 1 and need[t] <= slo_task[t] * (weight[t] - 1) / max(heaviest - 1, 1e-9)
            short[t] = need[t] > slo_task[t] * weight[t] / (heaviest + 1)
        for t in range(n):
            # raising w_t grows the heaviest path of every task sharing a path with t by at most one
            ok = weight[t] < BUDGET_LEVELS
            for u in range(n):
                ok = ok and not (co_path[t, u] and short[u])
            out[t, 5] = ok
    for t in range(n):
        for k in range(4):  # provisioning steps -2, -1, +1, +2: columns 6, 7, 9, 10
            grow = cost[t] * provision_ratio[provision[t], k] + per_replica[t]
            out[t, 6 + k + (k >= 2)] = provision_ok[provision[t], k] and (provision_down[k] or grow <= free)
    return out


@_jit
def _observation(size, demand_features, variant, weight, provision, budget, config, replicas, slices, gpus,
                 utilisation, path_p95, path_violation, inv_top_variant, slo_task, c_obs, c_slices, total_slices,
                 n_gpus, path_slo):  # pragma: no cover - compiled
    """``DecisionSpace.observation``'s vector, in its order."""
    n, n_paths, head = variant.size, path_slo.size, demand_features.size
    obs = np.empty(size)
    obs[:head] = demand_features
    for t in range(n):
        k = config[t]
        obs[head + t] = variant[t] * inv_top_variant[t]
        obs[head + n + t] = weight[t] * (1.0 / BUDGET_LEVELS)
        obs[head + 2 * n + t] = budget[t] / slo_task[t]
        obs[head + 3 * n + t] = c_obs[0, k]  # slices per worker
        obs[head + 4 * n + t] = c_obs[1, k]  # log batch
        obs[head + 5 * n + t] = provision[t] * (1.0 / (PROVISION_LEVELS.size - 1))
        obs[head + 6 * n + t] = utilisation[t]
        obs[head + 7 * n + t] = replicas[t] * c_slices[k] * (1.0 / total_slices)
    rest = head + 8 * n
    for p in range(n_paths):
        x = path_p95[p] / path_slo[p]
        obs[rest + p] = x if x < OBS_HIGH else OBS_HIGH  # as np.fmin: NaN (nothing served) reads as the cap
        obs[rest + n_paths + p] = path_violation[p]
    obs[-2] = slices / total_slices
    obs[-1] = gpus / n_gpus
    return np.minimum(np.maximum(obs, 0.0), OBS_HIGH).astype(np.float32)

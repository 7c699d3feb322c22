"""The decision space the agent acts in: per task a variant, a budget weight and a provisioning level.

Shared by the Gymnasium environment (``env.gym_env``) and the controller's policy proposer, numpy only.

* **Variant**: an index into the task's ladder (least to most accurate); a step moves it by one.
* **Budget**: an integer weight w_t in 1..BUDGET_LEVELS. A task's latency budget is its share of its app's
  SLO along its heaviest path: budget_t = SLO * w_t / max_{P through t} sum_{u in P} w_u, so every path's
  budgets sum to at most the SLO. Raising w_t moves budget from the other tasks on t's paths to t.
* **Segment and batch** follow from (variant, budget, the load to provision for) by the fewest-slices rule:
  among the task's configurations (the ILP's candidates, ``agents.ilp.candidates``) whose allowance x p95
  fits the budget (floored to BUDGET_RESOLUTION_MS), the one whose workers for the load take the smallest share
  of the GPUs:
  max(1, ceil(load / throughput)) x a worker's share, in compute slices or memory slots where those are
  scarcer (a 1g.20gb instance holds a seventh of an H100's compute but a quarter of its memory; counted by
  compute alone, plans of 1g.20gb filled the GPUs at 4 of 7 slices each); ties go to the most items/s per
  slice. (The load-blind rule, the most items/s per slice, put a light task on one worker of a big segment:
  with the ILP's own variants and budgets, its plans took 1.4-1.6x the ILP's slices; this rule, 1.1-1.4x.)
* **Provisioning**: an index into PROVISION_LEVELS, capacity over the forecast items/s beyond the headroom
  (``SolverOptions.headroom``, the capacity the controller's check demands); replicas =
  max(1, ceil(forecast_rps * F_t * headroom * level / throughput)), so no level proposes a plan the check
  must refuse for capacity (below the headroom, every plan was). The slice-count action steps this level, so a
  task's slices follow demand between decisions and the agent learns how much spare capacity each task
  needs, not the demand curve itself (DESIGN.md's "slice step" moves replicas directly; stepping the
  level instead keeps one action meaning the same thing at 4 and at 120 GPUs).

Instances: workers of one segment type share instances (ceil(workers / MPS workers per instance)), packed
greedily onto GPUs (``env.packing``). A step that makes an app infeasible (no configuration fits a budget,
or a path under the accuracy SLO) is undone for that app; one that does not fit the GPUs has its
provisioning undone, then drops to the lowest level, then, if demand alone exceeds the cluster, scales all
replicas down until the plan fits (the plan is then overloaded: the performance model counts the excess
as violated).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.ilp import Features, SolverOptions, candidates
from env.packing import Packer
from env.perf import CompiledPlan, compile_plan, service_rows, with_configs
from env.plan import Plan, TaskConfig
from profiles.catalog import Catalog
from profiles.errors import SolverError

ACTION_NVEC = (3, 3, 5)  # per task: variant step -1..+1, budget step -1..+1, provisioning step -2..+2
BUDGET_LEVELS = 5
PROVISION_LEVELS = np.array([1.0, 1.05, 1.1, 1.15, 1.2, 1.3, 1.4, 1.5, 1.75, 2.0])
BUDGET_RESOLUTION_MS = 0.5  # budgets are floored to this grid when configurations are looked up
_NONE = 1e12  # the cost of "no configuration fits": more than any plan's slices
HISTORY = 2  # intervals of measured demand the forecast and the observation see
OBS_HIGH = 4.0  # observation features are scaled to about [0, 1] and clipped to [0, OBS_HIGH]
SQUEEZE_STEP, SQUEEZE_TRIES = 0.95, 40  # an overloaded plan shrinks 5 % at a time (0.95^40 = 0.13)


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
        for (ti, v), ks in configs_of.items():
            first = np.ceil((opts.latency_allowance * self.c_p95[ks] - 1e-9) / BUDGET_RESOLUTION_MS).astype(np.int64)
            for k, cell in zip(ks, first, strict=True):
                column = self._by_segment[ti, v, cell:, self.c_segment[k]]  # the budgets k fits
                column[(column == none) | (self.c_thr[np.minimum(column, none - 1)] < self.c_thr[k])] = k
        # per configuration (and none): 1 / items/s, and a worker's share of a GPU in slices (see the module
        # docstring) plus a millionth per place in the items/s-per-slice ranking, which breaks ties
        self._c_inv_thr = np.append(1.0 / self.c_thr, 0.0)
        self._c_share = np.append(gpu_share[self.c_segment] + 1e-6 * np.array([rank[k] for k in range(none)]), _NONE)
        self.c_service = service_rows(self.c_p95, self.c_thr, self.c_batch)
        self.seg_profile = np.array([gpu.profile_index(s.mig_profile.name) for s in gpu.segments])
        self.seg_workers = np.array([s.mps_workers for s in gpu.segments], dtype=float)
        self.profile_slices = np.array([p.compute_slices for p in gpu.mig_profiles], dtype=float)
        self.seg_profile_matrix = (self.seg_profile[:, None] == np.arange(len(gpu.mig_profiles))[None, :]).astype(float)
        self.total_slices = float(gpus * gpu.compute_slices)
        self.packer = Packer(gpu)
        self.log_accuracy = np.log(self.accuracy)
        self.log_acc_slo = np.log(self.acc_slo[self.path_app])
        self._on_path = self.incidence > 0
        self._rows = np.arange(n)
        self.path_slo_ms = self.slo_task[self.incidence.argmax(axis=1)]
        self._fanout_tasks = np.array(sorted({u for u, _, fan in self.edges if np.ptp(fan[:self.n_variants[u]]) > 0}),
                                      dtype=np.int64)
        self.c_instance_slices = np.array([gpu.segments[s].mig_profile.compute_slices for s in self.c_segment], float)
        self._task_in_app = (self.task_app[:, None] == np.arange(len(self.apps))[None, :]).astype(float)
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
        # from a source down to a task (padded with that row): F_t is a gather, a product per chain, and the sum
        # of the task's chains (several where paths join)
        self._edge_fan = np.vstack([*(fan for _, _, fan in self.edges), np.ones(v_max)])
        self._edge_parent = np.array([u for u, _, _ in self.edges] + [0], dtype=np.int64)
        self._rows_edges = np.arange(len(self.edges) + 1)
        chains: list[list[list[int]]] = [[[]] if self.sources[t] else [] for t in range(n)]
        for e, (u, v, _) in enumerate(self.edges):  # topological order: the parent's chains are complete
            chains[v] += [[*c, e] for c in chains[u]]
        flat = [(t, c) for t in range(n) for c in chains[t]]
        depth = max(len(c) for _, c in flat)
        self._chain = np.array([c + [len(self.edges)] * (depth - len(c)) for _, c in flat], dtype=np.int64
                               ).reshape(len(flat), depth)
        self._chain_task = (np.array([t for t, _ in flat])[:, None] == self._rows[None, :]).astype(float)
        # masks(): per (task, variant) the variants one step down and up (clipped) and whether they exist
        ladder = np.arange(v_max)[None, :, None] + self._variant_steps[None, None, :]
        self._neighbour = np.minimum(np.maximum(ladder, 0), (self.n_variants - 1)[:, None, None])  # [n, v_max, 2]
        has_neighbour = (ladder >= 0) & (ladder < self.n_variants[:, None, None])
        at = self._rows[:, None, None], self._neighbour  # [n, v_max, 2]: per (task, variant) its neighbours'...
        self._neighbour_min_budget = np.where(has_neighbour, self.min_budget[at], np.inf)  # (inf: none)
        self._neighbour_accuracy_drop = self.log_accuracy[:, :, None] - self.log_accuracy[at]  # log-accuracy lost
        self._off_path = np.where(self._on_path, 0.0, np.inf)  # [n_paths, n_tasks]: + then min = min over paths
        self._mask_template = np.ones((n, 11), dtype=bool)
        self._co_path_f = self.co_path.astype(float)
        level = np.arange(len(PROVISION_LEVELS))[:, None] + self._provision_steps[None, :]
        clipped = np.minimum(np.maximum(level, 0), len(PROVISION_LEVELS) - 1)
        self._provision_ok = level == clipped  # [levels, 4] the step stays on the levels
        self._provision_ratio = PROVISION_LEVELS[clipped] / PROVISION_LEVELS[:, None] - 1.0  # replicas' growth
        self._provision_down = self._provision_steps < 0
        self._fanout_rows = np.arange(2 * self._fanout_tasks.size)
        self._fanout_cols = np.concatenate([self._fanout_tasks, self._fanout_tasks])
        self._app_off_path = np.where(self._path_in_app.T > 0, 0.0, np.inf)  # [n_apps, n_paths]
        self._inv_top_variant = 1.0 / np.maximum(self.n_variants - 1, 1)
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
        if self.fixed_budget is not None:
            return self.fixed_budget
        heaviest = (self.incidence * (self.incidence @ weight)[:, None]).max(axis=0)
        return self.slo_task * weight / heaviest

    def lookup(self, variant: np.ndarray, budget: np.ndarray, load: np.ndarray) -> np.ndarray:
        """The configuration of each task (last axis) for its variant at its budget (floored to
        BUDGET_RESOLUTION_MS) that serves ``load`` (items/s to provision for) on the smallest share of the GPUs;
        -1 where none fits the budget."""
        ids = self._by_segment[self._rows, variant, (budget * (1.0 / BUDGET_RESOLUTION_MS) + 1e-9).astype(np.int64)]
        cost = np.maximum(1.0, np.ceil(load[..., None] * self._c_inv_thr[ids] - 1e-9)) * self._c_share[ids]
        flat = ids.reshape(-1, ids.shape[-1])  # np.take_along_axis costs 15 us here, plain indexing 1
        config = flat[np.arange(len(flat)), cost.reshape(flat.shape).argmin(axis=1)].reshape(ids.shape[:-1])
        return np.where(config < len(self.c_task), config, -1)

    def load(self, items: np.ndarray, provision: np.ndarray, forecast_rps: np.ndarray) -> np.ndarray:
        """Items/s each task is provisioned for: the forecast reaching it x headroom x its provisioning level."""
        return forecast_rps[self.task_app] * items * self._capacity_factor[provision]

    def items(self, variant: np.ndarray) -> np.ndarray:
        """Items per app request reaching each task (last axis), for variants [..., n_tasks]."""
        fan = self._edge_fan[self._rows_edges, variant[..., self._edge_parent]]
        return fan[..., self._chain].prod(axis=-1) @ self._chain_task

    def app_ok(self, variant: np.ndarray, config: np.ndarray) -> np.ndarray:
        path_low = self.incidence @ self.log_accuracy[self._rows, variant] < self.log_acc_slo - 1e-9
        return ((config < 0) @ self._task_in_app == 0) & (path_low @ self._path_in_app == 0)

    def footprint(self, config: np.ndarray, replicas: np.ndarray) -> tuple[tuple[int, ...], float, int]:
        workers = np.bincount(self.c_segment[config], weights=replicas, minlength=len(self.seg_workers))
        counts = np.ceil(workers / self.seg_workers - 1e-9) @ self.seg_profile_matrix
        key = tuple(counts.astype(np.int64).tolist())
        return key, float(counts @ self.profile_slices), self.packer.gpus_needed(key)

    def replicas(self, config: np.ndarray, load: np.ndarray) -> np.ndarray:
        return np.maximum(1, np.ceil(load * self._c_inv_thr[config] - 1e-9)).astype(np.int64)

    def decode(self, levels: Levels, forecast_rps: np.ndarray) -> Decoded:
        """The configuration ``levels`` imply at ``forecast_rps`` (req/s per app), unrepaired."""
        budget = self.budgets(levels.weight)
        items = self.items(levels.variant)
        load = self.load(items, levels.provision, forecast_rps)
        config = self.lookup(levels.variant, budget, load)
        safe = np.maximum(config, 0)  # the footprint of unconfigured tasks is meaningless but harmless
        replicas = self.replicas(safe, load)
        counts, slices, gpus = self.footprint(safe, replicas)
        return Decoded(config, budget, items, replicas, counts, slices, gpus, self.app_ok(levels.variant, config),
                       False, forecast_rps)

    # ---- actions

    def step(self, levels: Levels, action: np.ndarray, forecast_rps: np.ndarray) -> tuple[Levels, Decoded, int]:
        """Apply ``action`` ([n_tasks, 3] or flat, MultiDiscrete ACTION_NVEC per task) to ``levels``: the new
        levels, what they decode to (repaired as the module docstring says), and how many repairs it took."""
        a = np.asarray(action, dtype=np.int64).reshape(self.n_tasks, 3) - self._step_zero
        lo, hi = self._level_low, self._level_high
        proposed = Levels(np.minimum(np.maximum(levels.variant + a[:, 0], 0), hi[:, 0]),
                          np.minimum(np.maximum(levels.weight + a[:, 1], lo[1]), hi[:, 1]),
                          np.minimum(np.maximum(levels.provision + a[:, 2], 0), hi[:, 2]))
        return self.repair(levels, proposed, forecast_rps)

    def repair(self, previous: Levels, proposed: Levels, forecast_rps: np.ndarray) -> tuple[Levels, Decoded, int]:
        """``proposed`` made valid against ``previous`` (which must be valid): see the module docstring."""
        repairs = 0
        decoded = self.decode(proposed, forecast_rps)
        if not decoded.app_ok.all():  # undo the failing apps' variant and budget moves
            back = ~decoded.app_ok[self.task_app]
            proposed = proposed.replace(variant=np.where(back, previous.variant, proposed.variant),
                                        weight=np.where(back, previous.weight, proposed.weight))
            repairs += int((~decoded.app_ok).sum())
            decoded = self.decode(proposed, forecast_rps)
        if decoded.gpus > self.n_gpus:
            for provision in (np.minimum(proposed.provision, previous.provision), np.zeros(self.n_tasks, np.int64)):
                repairs += 1
                proposed = proposed.replace(provision=provision)
                decoded = self.decode(proposed, forecast_rps)
                if decoded.gpus <= self.n_gpus:
                    break
            else:
                decoded = self._squeeze(decoded)
                if decoded.gpus > self.n_gpus and not proposed.same_configuration(previous):
                    # one replica each is too much: keep the previous configuration, which fitted
                    repairs += 1
                    previous = previous.replace(provision=proposed.provision)
                    proposed, decoded, more = self.repair(previous, previous, forecast_rps)
                    repairs += more
        return proposed, decoded, repairs

    def _squeeze(self, d: Decoded) -> Decoded:
        """Scale replicas down by a common factor, from the share of slices that fit, until the plan fits."""
        factor = min(1.0, self.total_slices / max(d.slices, 1e-9))
        config = np.maximum(d.config, 0)
        for _ in range(SQUEEZE_TRIES):
            reps = np.maximum(1, np.floor(d.replicas * factor)).astype(np.int64)
            counts, slices, gpus = self.footprint(config, reps)
            if gpus <= self.n_gpus:
                break
            factor *= SQUEEZE_STEP
        return Decoded(d.config, d.budget_ms, d.items, reps, counts, slices, gpus, d.app_ok, True, d.forecast_rps)

    def masks(self, levels: Levels, decoded: Decoded) -> np.ndarray:
        """[n_tasks, 11] booleans, per task the 3 + 3 + 5 choices of ACTION_NVEC that are allowed. Conservative
        per head (a head's mask cannot see the others' choices; ``repair`` handles joint effects): a variant
        step off the ladder, to a variant with no configuration at the current budget or under the accuracy
        SLO; a budget step off 1..BUDGET_LEVELS, leaving this task or another on its paths with no
        configuration; a provisioning step off the levels or one whose extra slices exceed the free ones."""
        rows = self._rows
        out = self._mask_template.copy()
        v, w, budget = levels.variant, levels.weight, decoded.budget_ms
        # how far each task's accuracy may drop: the tightest path through it stays at the SLO
        room = ((self.incidence @ self.log_accuracy[rows, v] - self.log_acc_slo)[:, None] + self._off_path).min(axis=0)
        variant_ok = ((self._neighbour_min_budget[rows, v] <= (budget + 1e-9)[:, None])
                      & (self._neighbour_accuracy_drop[rows, v] <= (room + 1e-9)[:, None]))
        nvc = self._neighbour[rows, v].T  # [2, n_tasks]: the variant a step down, a step up
        load = self.load(decoded.items, levels.provision, decoded.forecast_rps)
        moved = np.maximum(self.lookup(nvc, budget, load), 0)  # its own items do not depend on its variant
        free = self.total_slices - decoded.slices
        config = np.maximum(decoded.config, 0)
        per_replica = self.c_instance_slices[config]
        cost = decoded.replicas * per_replica  # growth is charged whole instances
        grow = self.replicas(moved, load) * self.c_instance_slices[moved] - cost
        if self._fanout_tasks.size:  # a fan-out source's variant also changes the items downstream: one row per
            ft, r, c = self._fanout_tasks, self._fanout_rows, self._fanout_cols  # (step, fan-out task), re-sized
            variant = v[None, :].repeat(r.size, axis=0)
            variant[r, c] = nvc[:, ft].ravel()
            load_r = self.load(self.items(variant), levels.provision, decoded.forecast_rps)
            cfg = np.maximum(self.lookup(variant, budget, load_r), 0)
            whole = (self.replicas(cfg, load_r) * self.c_instance_slices[cfg]).sum(axis=1) - cost.sum()
            grow[:, ft] = whole.reshape(2, ft.size)
        out[:, 0:3:2] = variant_ok & (grow <= free + 1e-9).T
        if self.fixed_budget is not None:
            out[:, 3:6:2] = False
        else:
            heaviest = np.rint(self.slo_task * w / budget)  # the integer weight sum budgets() divided by
            need = self.min_budget[rows, v] - 1e-9
            out[:, 3] = (w > 1) & (need <= self.slo_task * (w - 1) / np.maximum(heaviest - 1, 1e-9))
            # raising w_t grows the heaviest path of every task sharing a path with t by at most one
            others_short = need > self.slo_task * w / (heaviest + 1)
            out[:, 5] = (w < BUDGET_LEVELS) & (self._co_path_f @ others_short == 0)
        grow = cost[:, None] * self._provision_ratio[levels.provision] + per_replica[:, None]
        ok = self._provision_ok[levels.provision] & (self._provision_down | (grow <= free + 1e-9))
        out[:, 6:8] = ok[:, :2]
        out[:, 9:] = ok[:, 2:]
        return out

    # ---- configuration -> plan

    def structure(self) -> CompiledPlan:
        if self._structure is None:
            self._structure = compile_plan(self.catalog, self.plan(self.initial(), self.decode(
                self.initial(), np.zeros(len(self.apps)))))
        return self._structure

    def compiled(self, d: Decoded) -> CompiledPlan:
        """The decoded plan as ``env.perf`` arrays, without building a ``Plan``."""
        c = d.config
        return with_configs(self.structure(), p50_ms=self.c_p50[c], p95_ms=self.c_p95[c], throughput_rps=self.c_thr[c],
                            replicas=d.replicas, batch=self.c_batch[c], budget_ms=d.budget_ms, items_per_request=d.items,
                            accuracy=self.accuracy[np.arange(self.n_tasks), self.c_variant[c]],
                            slices_used=d.slices, gpus_used=d.gpus, service=self.c_service[:, c])

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
        n, n_paths, head = self.n_tasks, self.incidence.shape[0], demand_features.shape[-1]
        obs = np.empty(self.observation_size)
        obs[:head] = demand_features
        task = obs[head:head + 8 * n].reshape(8, n)
        task[0] = levels.variant * self._inv_top_variant
        task[1] = levels.weight * (1.0 / BUDGET_LEVELS)
        task[2] = d.budget_ms / self.slo_task
        task[3:5] = self._c_obs[:, d.config]  # slices per worker, log batch
        task[5] = levels.provision * (1.0 / (len(PROVISION_LEVELS) - 1))
        task[6] = metrics.utilisation
        task[7] = d.replicas * self.c_slices[d.config] * (1.0 / self.total_slices)
        rest = head + 8 * n
        obs[rest:rest + n_paths] = np.fmin(metrics.path_p95_ms / self.path_slo_ms, OBS_HIGH)
        obs[rest + n_paths:rest + 2 * n_paths] = metrics.path_violation
        obs[-2:] = d.slices / self.total_slices, d.gpus / self.n_gpus
        return np.minimum(np.maximum(obs, 0.0), OBS_HIGH).astype(np.float32)

    def worst_accuracy(self, path_accuracy: np.ndarray) -> np.ndarray:
        """Per app, the accuracy of its least accurate path."""
        return (path_accuracy + self._app_off_path).min(axis=-1)

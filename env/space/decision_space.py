"""``DecisionSpace``: the decision space for some apps on a cluster -- its tables, built once, and the kernels of
``decode``, ``repair``, ``polish`` and ``observation`` called with them. Shared by the
Gymnasium environment (``jigsaw.env.gym_env``) and the controller's policy proposer."""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from typing import Any

import numpy as np

from jigsaw.env.candidates import Features, SolverOptions
from jigsaw.env.packing import Packer
from jigsaw.env.perf import CompiledPlan, Metrics, compile_plan, config_table, evaluate_configs, service_rows, with_configs
from jigsaw.env.plan import Plan, TaskConfig
from jigsaw.env.space import decode as dec
from jigsaw.env.space import observation as obs
from jigsaw.env.space import polish as pol
from jigsaw.env.space import repair as rep
from jigsaw.env.space.decode import Decoded
from jigsaw.env.space.levels import (
    BUDGET_LEVELS,
    BUDGET_RESOLUTION_MS,
    POLISH_ROUNDS,
    POLISH_TRIES,
    PROVISION_LEVELS,
    Levels,
)
from jigsaw.env.space.tables import (
    Accuracy,
    Budgeting,
    Chains,
    Counting,
    Fitting,
    Lookup,
    Packing,
    Scales,
    Sizing,
    SplitTables,
    Tables,
    chains,
    configurations,
    plain,
    steps,
)
from jigsaw.env.transitions import Fleet
from jigsaw.profiles.catalog import Catalog


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
        # per task its accuracy by variant (1 pads), and the fan-outs (parent, child, per parent variant, 1 pads),
        # each app's tasks in topological order
        self.accuracy = np.ones((n, v_max))
        self.edges: list[tuple[int, int, np.ndarray]] = []
        self.sources = np.zeros(n, dtype=bool)
        order: list[int] = []
        for a in self.apps:
            app = catalog.app(a)
            for t in app.topological_order:
                ti = index[(a, t)]
                order.append(ti)
                self.sources[ti] = t in app.sources
                ladder = [x.name for x in app.task(t).variants]
                self.accuracy[ti, :len(ladder)] = [x.accuracy for x in app.task(t).variants]
                for u, v in app.edges:
                    if u == t:
                        fan = [app.fanout(u, v, x) for x in ladder] + [1.0] * (v_max - len(ladder))
                        self.edges.append((ti, index[(a, v)], np.array(fan)))
        c = configurations(catalog, gpu, self.apps, index, v_max, features, opts)
        self.min_budget = c.min_budget_ms
        self.c_task, self.c_variant, self.c_segment, self.c_batch = c.task, c.variant, c.segment, c.batch
        self.c_p50, self.c_p95, self.c_thr, self.c_slices = c.p50_ms, c.p95_ms, c.thr_rps, c.slices
        self._shares = c.shares  # [len(SHARE_LADDER), n_configs + 1]
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
        self.log_accuracy = np.log(self.accuracy)
        self.log_acc_slo = np.log(self.acc_slo[self.path_app])
        self._on_path = self.incidence > 0
        self.path_slo_ms = self.slo_task[self.incidence.argmax(axis=1)]
        self.c_instance_slices = np.array([gpu.segments[s].mig_profile.compute_slices for s in self.c_segment], float)
        self._structure: CompiledPlan | None = None
        self._path_app_acc_slo = list(zip(self.path_app.tolist(), self.acc_slo[self.path_app].tolist(), strict=True))
        # the kernels' tables (``tables``)
        chain, chain_task = chains(self.edges, self.sources)
        sizing = Sizing(
            budgeting=Budgeting(fixed_ms=np.empty(0) if self.fixed_budget is None else self.fixed_budget,
                                incidence=self.incidence, slo_ms=self.slo_task),
            chains=Chains(edge_fan=np.vstack([*(fan for _, _, fan in self.edges), np.ones(v_max)]),
                          edge_parent=np.array([u for u, _, _ in self.edges] + [0], dtype=np.int64), chain=chain,
                          chain_task=chain_task),
            lookup=Lookup(task_app=self.task_app,
                          capacity_factor=PROVISION_LEVELS * opts.headroom,  # the lowest level is the controller's headroom
                          by_segment=c.by_segment, inv_thr=c.inv_thr))
        fitting = Fitting(counting=Counting(config_segment=self.c_segment, seg_workers=self.seg_workers,
                                            seg_profile=self.seg_profile, profile_slices=self.profile_slices),
                          packing=Packing(*self.packer.tables, total_slices=self.total_slices, n_gpus=gpus))
        accuracy = Accuracy(task_app=self.task_app, incidence=self.incidence, log_accuracy=self.log_accuracy,
                            log_slo=self.log_acc_slo, path_app=self.path_app, n_apps=len(self.apps))
        # the exact budget split runs over each app's tree of tasks: per task its parent (-1: a source). An app
        # where paths join (a task with two parents) is no tree: its tasks keep their weights' budgets
        parent, parents = np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int64)
        for u, v, _ in self.edges:
            parent[v], parents[v] = u, parents[v] + 1
        free = ~np.isin(self.task_app, self.task_app[parents > 1]) & features.budgeting
        split = SplitTables(by_need=c.by_need, need_cell=c.need_cell, order=np.array(order, dtype=np.int64),
                            parent=np.where(free, parent, -1), free=free,
                            slo_cells=np.floor(self.slo_task / BUDGET_RESOLUTION_MS + 1e-9).astype(np.int64))
        scales = Scales(inv_top_variant=1.0 / np.maximum(self.n_variants - 1, 1), slo_ms=self.slo_task,
                        config_features=np.stack([self.c_slices / gpu.compute_slices,
                                                  np.log2(self.c_batch) / math.log2(max(self.c_batch.max(), 2))]),
                        config_slices=self.c_slices, total_slices=self.total_slices, n_gpus=gpus,
                        path_slo_ms=self.path_slo_ms)
        self._tables = Tables(sizing=sizing, accuracy=accuracy, fitting=fitting,
                              steps=steps(self.n_variants, self.c_instance_slices, self.min_budget, self.log_accuracy,
                                          self.co_path),
                              split=split, scales=scales)
        # what the kernels are called with: the same, plain (``tables`` says why)
        self._sizing, self._accuracy, self._fitting, self._steps, self._split, self._scales = map(
            plain, self._tables)

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
        """Per task its latency budget (ms) for budget weights [n_tasks] (``decode``)."""
        return dec.budgets(weight, self._tables.sizing.budgeting)

    def items(self, variant: np.ndarray) -> np.ndarray:
        """Items per app request reaching each task, for variants [n_tasks]."""
        return dec.items(variant, self._tables.sizing.chains)

    def decode(self, levels: Levels, forecast_rps: np.ndarray, split: bool = False,
               share_level: int | None = None) -> Decoded:
        """The configuration ``levels`` imply at ``forecast_rps`` (req/s per app), unrepaired: per task its budget,
        the items reaching it, the fewest-slices configuration (``jigsaw.env.space.decode``) for its load, its
        replicas; and whether each app is configured and meets its accuracy SLO. With ``split``, the budgets are not
        the weights' but the split of each path's SLO that takes the fewest slices (``polish``); with
        ``share_level``, the configurations are chosen at that step of SHARE_LADDER only (fitting or not)."""
        first = 0 if share_level is None else share_level
        shares = self._shares if share_level is None else self._shares[first:first + 1]
        if split:
            s = pol.decode_split(levels.variant, levels.weight, levels.provision, forecast_rps, shares, self._sizing,
                                 self._accuracy, self._fitting, self._split)
        else:
            s = dec.decode(levels.variant, levels.weight, levels.provision, forecast_rps, shares, self._sizing,
                           self._accuracy, self._fitting)
        return _decoded(s, False, forecast_rps, first)

    def repair(self, previous: Levels, proposed: Levels, forecast_rps: np.ndarray) -> tuple[Levels, Decoded, int]:
        """``proposed`` made valid against ``previous`` (which must be valid), as ``jigsaw.env.space.repair`` says:
        the levels, what they decode to, and how many repairs it took."""
        variant, weight, provision, s, overloaded, repairs = rep.repair(
            previous.variant, previous.weight, previous.provision, proposed.variant, proposed.weight,
            proposed.provision, forecast_rps, self._shares, self._sizing, self._accuracy, self._fitting, self._steps)
        return Levels(variant, weight, provision), _decoded(s, overloaded, forecast_rps, 0), repairs

    def polish(self, levels: Levels, decoded: Decoded, forecast_rps: np.ndarray) -> tuple[Levels, Decoded]:
        """A local search from ``levels`` for fewer slices (``jigsaw.env.space.polish``), with each app's latency SLO
        split exactly between its tasks (``decode(split=True)``). Each round ranks every move of one variant down and
        of one variant down and another on a shared path up, and where paths join (no split) of one budget weight
        by one, by its slices at the current share level without packing (one compiled call), and takes the first
        of the POLISH_TRIES cheapest whose full decode fits the GPUs unsqueezed and keeps every app within its SLOs.
        From a squeezed plan, any move that fits is better. Provisioning is the policy's to choose and stays. Rounds
        stop at no such move or after POLISH_ROUNDS. The plan returned has split budgets; the levels are the
        policy's to step from."""
        n_gpus = self.n_gpus

        def better(d: Decoded, than: Decoded) -> bool:  # a split plan can be one the check refuses: evaluate it
            return (d.app_ok.all() and d.gpus <= n_gpus and (than.gpus > n_gpus or d.slices < than.slices)
                    and bool((self.evaluate(d, forecast_rps).path_p95_ms <= self.path_slo_ms).all()))

        current = self.decode(levels, forecast_rps) if decoded.overloaded else decoded
        split = self.decode(levels, forecast_rps, split=True)
        current = split if better(split, current) else current
        for _ in range(POLISH_ROUNDS):
            share = self._shares[current.share_level:current.share_level + 1]
            variants, weights, slices, ok = pol.moves(levels.variant, levels.weight, levels.provision, forecast_rps,
                                                      share, self._sizing, self._accuracy, self._fitting, self._split,
                                                      self._steps)
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
        return obs.observation_size(len(self.apps), self.n_tasks, self.incidence.shape[0])

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
        return obs.observation(self.observation_size, demand_features, levels.variant, levels.weight, levels.provision,
                               d.budget_ms, d.config, d.replicas, float(d.slices), d.gpus, metrics.utilisation,
                               metrics.path_p95_ms, metrics.path_violation, self._scales)

    def accuracy_shortfall(self, path_accuracy: np.ndarray) -> float:
        """The mean over apps of max(0, SLO - the least accurate path's accuracy) / SLO (a Python loop: a few paths,
        where numpy's calls cost microseconds each)."""
        short = [0.0] * len(self.apps)
        for (app, slo), accuracy in zip(self._path_app_acc_slo, path_accuracy.tolist(), strict=True):
            short[app] = max(short[app], 1.0 - accuracy / slo)
        return sum(short) / len(self.apps)


def _decoded(sized: tuple, overloaded: bool, forecast_rps: np.ndarray, first_level: int) -> Decoded:
    """A kernel's plan (a ``Sized`` as a plain tuple) as ``Decoded``, its share level counted from ``first_level``."""
    budget, items, config, replicas, counts, slices, gpus, level, app_ok = sized
    return Decoded(config, budget, items, replicas, tuple(counts.tolist()), slices, gpus, app_ok, overloaded,
                   forecast_rps, first_level + level)

"""The exact planner: one mixed-integer program over every app sharing a cluster, solved with HiGHS.

Per task t and candidate configuration k = (variant, segment type, batch):
  y[t,k] binary (one per task), n[t,k] integer replicas, n <= M_k y;
  throughput    sum_k thr_k n[t,k] >= headroom * rate_app * F_t   (F_t: items reaching t per request;
                F_t is linear in the upstream y where an edge's fan-out depends on the upstream variant);
  latency       for each path P: sum_{t in P} sum_k allowance * p95_k y[t,k] <= SLO   (T on; with T off
                each task instead gets a fixed equal share SLO / longest path through it);
  accuracy      for each path P: sum_{t in P} sum_k log acc_k y[t,k] >= log accuracy_slo;
  MIG packing   inst[s] >= (replicas on segment type s) / MPS workers of s, per segment type;
                sum_{s of profile q} inst[s] <= sum_p count[p,q] w[p];  sum_p w[p] <= GPUs,
                w[p] = GPUs cut in valid partition p (exact packing, no greedy step afterwards).
Objective: compute slices of the instances used, then (small weights) higher accuracy, fewer GPUs
cut, and fewer changes against the current plan.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import highspy
import numpy as np
from scipy import sparse

from jigsaw.env.candidates import Candidates, Features, SolverOptions, candidates, describe
from jigsaw.env.plan import GpuLayout, Plan, TaskConfig
from jigsaw.profiles.catalog import Catalog
from jigsaw.profiles.errors import SolverError
from jigsaw.profiles.tables import ConfigKind
from jigsaw.profiles.types import App, GpuType, SegmentType

# Bounds on a request: beyond them a number is a typo, and the model's arrays would overflow.
MAX_GPUS = 100_000
MAX_RATE_RPS = 1e9
MIN_RUN_S = 0.01  # the least time a solver run is given (a limit of 0 would not stop it sooner)
_CANCEL_GRACE_S = 1.0  # after cancelSolve, how long the interrupt callbacks get before we abandon the thread
_STDOUT_LOCK = threading.Lock()


@dataclass
class TaskChoice:
    app: str
    task: str
    variant: str
    segment: SegmentType
    batch: int
    replicas: int
    p95_ms: float
    throughput_rps: float  # of one replica, items/s
    demand_rps: float  # items/s reaching this task (before headroom)
    budget_ms: float
    kind: str  # measured / modelled / estimated


@dataclass
class SolveResult:
    status: str  # optimal | feasible | infeasible | timeout
    reason: str  # why: the binding constraint, or the gap left
    solve_seconds: float
    plan: Plan | None = None
    choices: list[TaskChoice] = field(default_factory=list)
    slices_used: int = 0
    gpus_used: int = 0
    gap: float = math.nan
    path_latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # app -> "a>b" -> ms
    path_accuracy: dict[str, dict[str, float]] = field(default_factory=dict)


def demand_terms(app: App, cands: list[Candidates]) -> list[tuple[float, list[tuple[int, np.ndarray]]]]:
    """Items reaching each task per request: a constant plus, for per-variant fan-outs, a coefficient on
    each upstream candidate's y. The catalog guarantees such an edge's source gets fixed demand."""
    index = {c.task: i for i, c in enumerate(cands)}
    const = {t: 0.0 for t in app.task_names}
    terms: dict[str, list[tuple[int, np.ndarray]]] = {t: [] for t in app.task_names}
    for t in app.topological_order:
        if t in app.sources:
            const[t] = 1.0
        for (u, v), f in app.edges.items():
            if u != t:
                continue
            if isinstance(f, dict):
                ladder = [x.name for x in app.task(u).variants]
                per = np.array([f[ladder[i]] for i in cands[index[u]].variant])
                terms[v].append((index[u], const[u] * per))
            else:
                const[v] += f * const[u]
                terms[v].extend((i, f * coef) for i, coef in terms[u])
    return [(const[c.task], terms[c.task]) for c in cands]


@dataclass
class AppBlock:
    """One app's part of the program: its rate, candidates and demand terms."""

    app: App
    rate_rps: float
    cands: list[Candidates]
    terms: list[tuple[float, list[tuple[int, np.ndarray]]]]


@dataclass
class _Model:
    blocks: list[AppBlock]
    y: list[list[int]]  # first y column of each task, per app
    n: list[list[int]]
    inst: dict[int, int]  # segment type index -> its column
    w: int  # first partition column
    cost: np.ndarray
    upper: np.ndarray
    matrix: sparse.csc_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray


class _Rows:
    """Constraint rows gathered as COO triplets."""

    def __init__(self) -> None:
        self.r: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.lower: list[float] = []
        self.upper: list[float] = []

    def add(self, cols: np.ndarray, vals: np.ndarray, lower: float, upper: float) -> None:
        self.r.append(np.full(len(cols), len(self.lower)))
        self.c.append(np.asarray(cols, dtype=np.int64))
        self.v.append(np.asarray(vals, dtype=float))
        self.lower.append(lower)
        self.upper.append(upper)


def _build(gpu: GpuType, blocks: list[AppBlock], gpus: int | None, opts: SolverOptions, objective: str,
           current: dict[tuple[str, str], int] | None = None, current_cuts: dict[int, int] | None = None) -> _Model:
    """``objective``: "plan" (slices, then accuracy, GPUs, changes), "feasibility" (none: stop at the
    first feasible point) or "gpus" (fewest GPUs, for diagnosing a cluster that is too small).
    ``current`` ((app, task) -> candidate index) and ``current_cuts`` (maximal partition index -> GPUs cut so
    now) earn a small reward for keeping what runs, so an unchanged demand never re-cuts a GPU."""
    inf = highspy.kHighsInf
    col = 0
    y_cols: list[list[int]] = []
    n_cols: list[list[int]] = []
    for b in blocks:
        y_cols.append([])
        n_cols.append([])
        for c in b.cands:
            y_cols[-1].append(col)
            n_cols[-1].append(col + len(c.p95_ms))
            col += 2 * len(c.p95_ms)
    used_segments = sorted({int(s) for b in blocks for c in b.cands for s in c.segment})
    inst = {s: col + i for i, s in enumerate(used_segments)}
    col += len(inst)
    parts = gpu.maximal_partitions
    w = col
    col += len(parts)
    kept_cuts = {p: col + i for i, p in enumerate(sorted(current_cuts or {}))}  # kept[p] <= min(w[p], now[p])
    col += len(kept_cuts)
    most = np.max([p.counts for p in parts], axis=0)  # instances of each profile one GPU can hold
    workers_per_gpu = np.array([most[gpu.profile_index(s.mig_profile.name)] * s.mps_workers for s in gpu.segments])
    gpu_cap = gpus if gpus is not None else inf
    cost, upper = np.zeros(col), np.full(col, inf)
    upper[w:w + len(parts)] = gpu_cap
    rows = _Rows()
    most_replicas = 0.0  # a bound on the GPUs a plan can cut: each cut GPU hosts at least one replica
    accuracy_scale = sum(-c.log_accuracy.min() for b in blocks for c in b.cands) + 1e-9
    for b, ys, ns in zip(blocks, y_cols, n_cols, strict=True):
        for c, y0, n0, (const, terms) in zip(b.cands, ys, ns, b.terms, strict=True):
            k = len(c.p95_ms)
            y, n = np.arange(y0, y0 + k), np.arange(n0, n0 + k)
            upper[y] = 1
            rows.add(y, np.ones(k), 1, 1)
            peak = opts.headroom * b.rate_rps * (const + sum(coef.max() for _, coef in terms))
            # at least one replica: an app without demand still serves (a plan never leaves a task bare)
            big_m = np.maximum(np.minimum(np.ceil(peak / c.throughput_rps), workers_per_gpu[c.segment] * gpu_cap), 1)
            upper[n] = big_m
            most_replicas += float(big_m.max())
            # L y <= n <= M y. L, the fewest replicas any choice upstream leaves this config, is a valid cut
            # that lifts the LP bound from fractional replicas (root bound 14.7 -> 22 of an optimum of 22).
            fewest = opts.headroom * b.rate_rps * (const + sum(coef.min() for _, coef in terms))
            at_least = np.maximum(np.minimum(np.ceil(fewest / c.throughput_rps - 1e-9), big_m), 1)
            for j in range(k):
                rows.add(np.array([n[j], y[j]]), np.array([1.0, -big_m[j]]), -inf, 0)
                rows.add(np.array([n[j], y[j]]), np.array([1.0, -at_least[j]]), 0, inf)
            dem_cols, dem_vals = [n], [c.throughput_rps]
            for ui, coef in terms:
                dem_cols.append(np.arange(ys[ui], ys[ui] + len(coef)))
                dem_vals.append(-opts.headroom * b.rate_rps * coef)
            rows.add(np.concatenate(dem_cols), np.concatenate(dem_vals), opts.headroom * b.rate_rps * const, inf)
            if objective == "plan":
                cost[y] = -c.log_accuracy * 0.1 / accuracy_scale
                if current and (b.app.name, c.task) in current:
                    now = current[(b.app.name, c.task)]
                    cost[y0 + now] -= 1e-4 / len(ys)
                    if opts.change_penalty:  # keeping the workers' kind saves their start-up: worth that many slices
                        same = (c.variant == c.variant[now]) & (c.segment == c.segment[now])
                        cost[y[same]] -= opts.change_penalty
        index = {c.task: i for i, c in enumerate(b.cands)}
        for path in b.app.paths():
            cols = np.concatenate([np.arange(ys[index[t]], ys[index[t]] + len(b.cands[index[t]].p95_ms)) for t in path])
            lat = np.concatenate([opts.latency_allowance * b.cands[index[t]].p95_ms for t in path])
            acc = np.concatenate([b.cands[index[t]].log_accuracy for t in path])
            rows.add(cols, lat, -inf, b.app.latency_slo_ms)
            rows.add(cols, acc, math.log(b.app.accuracy_slo) - 1e-9, inf)
    for s, s_col in inst.items():
        seg = gpu.segments[s]
        cols, vals = [np.array([s_col])], [np.array([-float(seg.mps_workers)])]
        for b, ns in zip(blocks, n_cols, strict=True):
            for c, n0 in zip(b.cands, ns, strict=True):
                on = np.nonzero(c.segment == s)[0]
                cols.append(n0 + on)
                vals.append(np.ones(len(on)))
        rows.add(np.concatenate(cols), np.concatenate(vals), -inf, 0)
        if objective == "plan":
            cost[s_col] = seg.mig_profile.compute_slices
    for q, profile in enumerate(gpu.mig_profiles):
        mine = [s_col for s, s_col in inst.items() if gpu.segments[s].mig_profile is profile]
        if mine:
            counts = np.array([p.counts[q] for p in parts], dtype=float)
            rows.add(np.concatenate([mine, w + np.arange(len(parts))]), np.concatenate([np.ones(len(mine)), -counts]),
                     -inf, 0)
    rows.add(w + np.arange(len(parts)), np.ones(len(parts)), -inf, gpu_cap)
    for p, k_col in kept_cuts.items():
        rows.add(np.array([k_col, w + p]), np.array([1.0, -1.0]), -inf, 0)
        upper[k_col] = (current_cuts or {})[p]
    if objective == "plan":  # per GPU, so that the terms stay below one slice, yet above the MIP gap
        cut_bound = max(1.0, min(gpu_cap, most_replicas))
        cost[w:w + len(parts)] = 1e-3 / cut_bound
        cost[list(kept_cuts.values())] = -1e-4 / cut_bound
    elif objective == "gpus":
        cost[w:w + len(parts)] = 1.0
    matrix = sparse.csc_matrix((np.concatenate(rows.v), (np.concatenate(rows.r), np.concatenate(rows.c))),
                               shape=(len(rows.lower), col))
    return _Model(blocks, y_cols, n_cols, inst, w, cost, upper, matrix, np.array(rows.lower),
                  np.array(rows.upper))


def _quiet_highs() -> highspy.Highs:
    """A silent ``highspy.Highs``. highspy >= 1.16 prints its banner to file descriptor 1 inside the constructor,
    before ``output_flag`` can be set, which would corrupt ``jigsaw solve --json``; so fd 1 points at /dev/null
    for the constructor's duration (under a lock: solves may run in threads)."""
    with _STDOUT_LOCK, open(os.devnull, "w") as null:
        with contextlib.suppress(ValueError, OSError):
            sys.stdout.flush()
        saved = os.dup(1)
        try:
            os.dup2(null.fileno(), 1)
            h = highspy.Highs()
            h.setOptionValue("output_flag", False)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
    return h


def _run(model: _Model, time_limit_s: float, mip_gap: float) -> tuple[str, np.ndarray | None, float]:
    """Solve with HiGHS under a hard wall-clock bound: HiGHS's own time limit can overrun, so the solve
    runs in HiGHS's solver thread and is cancelled (then abandoned) at the deadline."""
    h = _quiet_highs()
    h.setOptionValue("time_limit", float(time_limit_s))
    h.setOptionValue("mip_rel_gap", float(mip_gap))
    # Presolve's probing spent 75% of the time on these big-M models (1.7 -> 0.85 s at 4 GPUs,
    # 7.0 -> 3.5 s at 120, same optima): the model is already tight, so skip it.
    h.setOptionValue("presolve", "off")
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = model.matrix.shape[1], model.matrix.shape[0]
    lp.col_cost_ = model.cost
    lp.col_lower_ = np.zeros(lp.num_col_)
    lp.col_upper_ = model.upper
    lp.row_lower_, lp.row_upper_ = model.row_lower, model.row_upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = model.matrix.indptr
    lp.a_matrix_.index_ = model.matrix.indices
    lp.a_matrix_.value_ = model.matrix.data
    lp.integrality_ = [highspy.HighsVarType.kInteger] * lp.num_col_
    h.passModel(lp)
    h.HandleUserInterrupt = True
    h.startSolve()
    done, _ = h.wait(time_limit_s)
    if not done:
        h.cancelSolve()
        done, _ = h.wait(_CANCEL_GRACE_S)
        if not done:  # the thread is a daemon; leave it and answer within the bound
            return "timeout", None, math.nan
    status = h.getModelStatus()
    info = h.getInfo()
    if status == highspy.HighsModelStatus.kOptimal:
        return "optimal", np.array(h.getSolution().col_value), float(info.mip_gap)
    if status in (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible):
        return "infeasible", None, math.nan
    if info.primal_solution_status == 2:  # a feasible incumbent, stopped by the time limit or the cancel
        return "feasible", np.array(h.getSolution().col_value), float(info.mip_gap)
    return "timeout", None, math.nan


def prepare(catalog: Catalog, gpu: GpuType, demand: dict[str, float], features: Features, opts: SolverOptions,
            current: Plan | None = None) -> tuple[list[AppBlock], str]:
    """Candidates and demand terms for every app; a non-empty reason if some task has no candidate."""
    blocks = []
    for name, rate in demand.items():
        app = catalog.app(name)
        if not catalog.serves(gpu.name, name):
            raise SolverError(f"app '{name}' has tasks with no profile on {gpu.name}", field="--app",
                              fix=f"use an app of {', '.join(catalog.apps_for(gpu.name))} or another --gpu-type")
        keep = None
        if current is not None and name in current.apps:
            keep = {t: (c.variant, c.segment, c.mps_workers, c.batch) for t, c in current.apps[name].items()}
        cands, reason = candidates(catalog, gpu, app, features, opts, keep)
        if reason:
            return [], reason
        blocks.append(AppBlock(app, float(rate), cands, demand_terms(app, cands)))
    return blocks, ""


def check_request(gpus: int, demand: dict[str, float]) -> None:
    if not demand:
        raise SolverError("no app given", field="--app", fix="name at least one app")
    if not 1 <= gpus <= MAX_GPUS:
        raise SolverError(f"{gpus} GPUs", field="--gpus", fix=f"give 1 to {MAX_GPUS:,} GPUs")
    for name, rate in demand.items():
        if not 0 <= rate <= MAX_RATE_RPS:
            raise SolverError(f"rate {rate:g} for app '{name}' is not a number in [0, {MAX_RATE_RPS:g}]", field="--rps",
                              fix="give req/s as non-negative numbers")


def solve(catalog: Catalog, gpu_type: str, demand: dict[str, float], gpus: int, features: Features = Features(),
          opts: SolverOptions = SolverOptions(), current: Plan | None = None) -> SolveResult:
    """The cheapest plan that serves ``demand`` (app -> req/s) on ``gpus`` GPUs within every SLO.

    :param current: the plan in force; among equally cheap plans the one with fewer changes wins.
    """
    check_request(gpus, demand)
    gpu = catalog.gpu(gpu_type)
    start = time.perf_counter()
    deadline = start + opts.time_limit_s  # the limit bounds the whole call: building, solving, diagnosing

    def left() -> float:
        return max(MIN_RUN_S, deadline - time.perf_counter())

    blocks, reason = prepare(catalog, gpu, demand, features, opts, current)
    if reason:
        return SolveResult("infeasible", reason, time.perf_counter() - start)
    keep, cuts = _current_choices(gpu, blocks, current) if current is not None else (None, None)
    model = _build(gpu, blocks, gpus, opts, "plan", keep, cuts)
    status, x, gap = _run(model, left(), opts.mip_gap)
    if x is None:
        reason = (_diagnose(gpu, blocks, gpus, dataclasses.replace(opts, time_limit_s=left()))
                  if status == "infeasible" else f"no feasible plan found within the {opts.time_limit_s:g} s time limit")
        return SolveResult(status, reason, time.perf_counter() - start)
    result = _extract(gpu, model, x, gpus, features, opts, current)
    result.status, result.gap, result.solve_seconds = status, gap, time.perf_counter() - start
    gap_text = f"proven optimal (gap {gap:.2g})" if status == "optimal" else f"time limit hit, gap {gap:.2%}"
    result.reason = gap_text + (f"; binding: {result.reason}" if result.reason else "")
    return result


def is_feasible(gpu: GpuType, blocks: list[AppBlock], rate_rps: float, gpus: int, opts: SolverOptions) -> str:
    """Whether some plan serves every app of ``blocks`` at ``rate_rps`` on ``gpus`` GPUs: the solver status
    ("optimal" = feasible, "infeasible", or "timeout" when the time limit left it undecided)."""
    scaled = [AppBlock(b.app, rate_rps, b.cands, b.terms) for b in blocks]
    return _run(_build(gpu, scaled, gpus, opts, "feasibility"), opts.time_limit_s, opts.mip_gap)[0]


def _current_choices(gpu: GpuType, blocks: list[AppBlock],
                     current: Plan) -> tuple[dict[tuple[str, str], int], dict[int, int]]:
    """(app, task) -> index of the candidate the current plan runs, where it is still a candidate; and
    maximal partition index -> how many GPUs the current plan cuts that way."""
    cuts: dict[int, int] = {}
    for layout in current.gpus:
        p = next((i for i, p in enumerate(gpu.maximal_partitions) if sorted(p.names(gpu)) == sorted(layout.partition)),
                 None)
        if p is not None:
            cuts[p] = cuts.get(p, 0) + 1
    found = {}
    for b in blocks:
        for c in b.cands:
            cfg = current.apps.get(b.app.name, {}).get(c.task)
            if cfg is None:
                continue
            wanted = (cfg.variant, cfg.segment, cfg.mps_workers, cfg.batch)
            k = next((k for k in range(len(c.p95_ms)) if describe(gpu, c, k) == wanted), None)
            if k is not None:
                found[(b.app.name, c.task)] = k
    return found, cuts


def _diagnose(gpu: GpuType, blocks: list[AppBlock], gpus: int, opts: SolverOptions) -> str:
    """Which constraint makes the request infeasible: the cluster size, or one app's SLOs, within the time
    ``opts`` leaves (``solve`` gives it what its own limit has left after proving infeasibility)."""
    deadline = time.perf_counter() + opts.time_limit_s
    model = _build(gpu, blocks, None, opts, "gpus")
    status, x, _ = _run(model, opts.time_limit_s, opts.mip_gap)
    if x is not None:
        needed = round(x[model.w:model.w + len(gpu.maximal_partitions)].sum())
        exact = "" if status == "optimal" else "at most "
        return f"GPU capacity: serving this demand within the SLOs needs {exact}{needed} GPUs, the cluster has {gpus}"
    for b in blocks:
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        idle = AppBlock(b.app, 0.0, b.cands, b.terms)
        if _run(_build(gpu, [idle], None, opts, "feasibility"), left, opts.mip_gap)[0] == "infeasible":
            return (f"app {b.app.name}: no configuration meets latency {b.app.latency_slo_ms:g} ms and accuracy "
                    f"{b.app.accuracy_slo} on every path together")
    return (f"GPU capacity: no plan found on any number of GPUs within the {opts.time_limit_s:g} s time limit "
            "(the SLOs of each app alone were not shown unmeetable)")


def _extract(gpu: GpuType, model: _Model, x: np.ndarray, gpus: int, features: Features,
             opts: SolverOptions, current: Plan | None = None) -> SolveResult:
    """Turn a solution vector into choices, a plan with its MIG layout, and what binds."""
    result = SolveResult("", "", 0.0)
    binding: list[str] = []
    replicas_on: dict[int, list[str]] = {}
    apps: dict[str, dict[str, TaskConfig]] = {}
    for b, ys, ns in zip(model.blocks, model.y, model.n, strict=True):
        picks = [int(np.argmax(x[y0:y0 + len(c.p95_ms)])) for c, y0 in zip(b.cands, ys, strict=True)]
        index = {c.task: i for i, c in enumerate(b.cands)}
        paths = b.app.paths()
        lat = {c.task: opts.latency_allowance * float(c.p95_ms[k]) for c, k in zip(b.cands, picks, strict=True)}
        path_lat = {">".join(p): sum(lat[t] for t in p) for p in paths}
        path_acc = {">".join(p): math.exp(sum(float(b.cands[index[t]].log_accuracy[picks[index[t]]]) for t in p))
                    for p in paths}
        result.path_latency_ms[b.app.name], result.path_accuracy[b.app.name] = path_lat, path_acc
        apps[b.app.name] = {}
        variants = {c.task: b.app.task(c.task).variants[c.variant[k]].name for c, k in zip(b.cands, picks, strict=True)}
        items_per_request = b.app.items_per_request(variants)
        for ti, (c, k) in enumerate(zip(b.cands, picks, strict=True)):
            items = items_per_request[c.task]
            if features.budgeting:
                budget = lat[c.task] * min(b.app.latency_slo_ms / path_lat[">".join(p)] for p in paths if c.task in p)
            else:
                budget = b.app.latency_slo_ms / max(len(p) for p in paths if c.task in p)
            n = round(x[ns[ti] + k])
            variant, profile, workers, batch = describe(gpu, c, k)
            seg = gpu.segments[c.segment[k]]
            result.choices.append(TaskChoice(b.app.name, c.task, variant, seg, batch, n, float(c.p95_ms[k]),
                                             float(c.throughput_rps[k]), b.rate_rps * items, budget,
                                             ConfigKind(int(c.kind[k])).name.lower()))
            apps[b.app.name][c.task] = TaskConfig(variant, profile, workers, batch, n, round(budget, 3))
            replicas_on.setdefault(int(c.segment[k]), []).extend([f"{b.app.name}/{c.task}"] * n)
        binding += [f"{b.app.name} latency {p} {v:.1f}/{b.app.latency_slo_ms:g} ms" for p, v in path_lat.items()
                    if v >= 0.95 * b.app.latency_slo_ms]
        binding += [f"{b.app.name} accuracy {p} {v:.3f}/{b.app.accuracy_slo:g}" for p, v in path_acc.items()
                    if v <= 1.005 * b.app.accuracy_slo]
    counts = np.round(x[model.w:model.w + len(gpu.maximal_partitions)]).astype(int)
    cut = [tuple(p.names(gpu)) for p, c in zip(gpu.maximal_partitions, counts, strict=True) for _ in range(c)]
    chunks = []  # (MIG profile, the workers sharing one instance of it)
    for s, workers in sorted(replicas_on.items()):
        m, profile = gpu.segments[s].mps_workers, gpu.segments[s].mig_profile.name
        chunks += [(profile, tuple(workers[i:i + m])) for i in range(0, len(workers), m)]
    slots, cut = _keep_current(cut, chunks, current)
    free = {q.name: deque((g, i) for g, names in enumerate(cut) for i, n in enumerate(names)
                          if n == q.name and slots[g][i] is None) for q in gpu.mig_profiles}
    for profile, workers in chunks:
        g, i = free[profile].popleft()
        slots[g][i] = workers
    layouts = [GpuLayout(names, tuple(w or () for w in ws)) for names, ws in zip(cut, slots, strict=True) if any(ws)]
    result.plan = Plan(gpu.name, apps, tuple(layouts))
    result.gpus_used = len(layouts)
    result.slices_used = sum(gpu.mig_profiles[gpu.profile_index(name)].compute_slices
                             for lay in layouts for name, ws in zip(lay.partition, lay.workers, strict=True) if ws)
    if result.gpus_used == gpus:
        binding.append(f"GPUs {gpus}/{gpus}")
    result.reason = "; ".join(binding)
    return result


def _keep_current(cut: list[tuple[str, ...]], chunks: list[tuple[str, tuple[str, ...]]],
                  current: Plan | None) -> tuple[list[list[tuple[str, ...] | None]], list[tuple[str, ...]]]:
    """Order the GPUs cut so that a GPU cut as before keeps its place, and let every instance that already
    hosts exactly the workers a chunk needs keep them (taking those chunks out of ``chunks``)."""
    order: list[tuple[str, ...] | None] = [None] * len(cut)
    rest = list(cut)
    for g, layout in enumerate(current.gpus if current else ()):
        if g < len(order) and layout.partition in rest:
            order[g] = layout.partition
            rest.remove(layout.partition)
    cut = [p if p is not None else rest.pop(0) for p in order]
    slots: list[list[tuple[str, ...] | None]] = [[None] * len(p) for p in cut]
    for g, layout in enumerate(current.gpus[:len(cut)] if current else ()):
        if layout.partition != cut[g]:
            continue
        for i, (profile, workers) in enumerate(zip(layout.partition, layout.workers, strict=True)):
            if workers and (profile, tuple(workers)) in chunks:
                chunks.remove((profile, tuple(workers)))
                slots[g][i] = tuple(workers)
    return slots, cut

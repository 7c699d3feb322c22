"""The analytic performance model: a plan and a demand in, utilisation, latency, SLO violations out.

``compile_plan(catalog, plan)`` turns a plan into flat arrays once (it may loop); ``evaluate(compiled,
demand_rps)`` reads only those arrays, for any number of demands at once, in one compiled (numba) kernel: the RL
environment calls it thousands of times a second on ~10 tasks, where numpy's per-call overhead was most of the
cost (a 6-demand evaluation took 130 us as numpy array calls, 18 us compiled). ``jigsaw.env.sim`` is the ground truth
this approximates: the model follows its mechanics (round-robin replicas, batching with a timeout, early drops at
the deadline).

The model, per task t of app a (times in ms, rates in items/s):

* Arrivals. An app request brings F_t items to t (the product of the fan-outs along the edges into t,
  with the fan-out of the plan's chosen upstream variant). lam_t = rate_a * F_t, dealt round-robin to the
  n_t replicas: lam_r = lam_t / n_t. Utilisation rho_t = lam_t / (n_t * thr_t), thr_t the profile's
  items/s of one worker at the plan's batch b_t.
* Service. The batch's service time S is a shifted exponential d_t + Exp(mean m_t) with the mean the
  profile's throughput implies, mu_t = 1000 b_t / thr_t (so that rho is the server's busy fraction), and
  the profile's p95: m_t = max(0, p95_t - mu_t) / (ln 20 - 1), d_t = max(0, mu_t - m_t) (then
  P(S > p95_t) = 5%). E[S] = mu_t, squared coefficient of variation cs2 = (m_t / mu_t)^2. Every batch is
  charged the full batch's service (conservative where a timeout sends a partial batch, which the simulator
  runs as a smaller profiled batch). (The profile's p50 is not used.)
* Waiting for the server: a heavy-traffic (diffusion) queue with impatience, M/G/1+D. The wait V an item
  would have has an atom at 0 and density c e^{-g x}, with g = 2 (1 - rho) / (k E[S]) and c = 2 rho / (k E[S])
  (unnormalised; for rho < 1 and no deadline this is the exponential wait with Kingman's mean
  k / 2 * rho / (1 - rho) E[S], and it stays finite at and beyond rho = 1). k = ca2 + cs2, the batches'
  arrival variability: a source task's replica gets every n_t-th of Poisson arrivals and every b_t of
  those make a batch, ca2 = 1 / (n_t b_t); a downstream task's items come in clumps (a parent's batch
  completing), so round-robin smooths nothing there: ca2 = 1 / b_t. Early drop (as in the simulator): an
  item whose wait would exceed its patience P_t = SLO - rem_t - up_t is dropped (rem_t: the chain of
  minimum service times d from t to the sink, longest branch; up_t: the ancestors' fill + mean service,
  summed), so the density lives on [0, P_t]; the work beyond P_t (what the dropped items see) has mass
  c e^{-g P} o with o_t = k E[S] / 2, the mean overshoot of the work over a level ((1 + cs2) E[S] / 2 for
  b = 1, the M/G/1 residual). Normalising, Z = 1 + c (1 - e^{-g P}) / g + c e^{-g P} o: the drop fraction is
  c e^{-g P} o / Z, and the wait of an item served is 0 w.p. 1 / J, else on (0, P) with density
  c e^{-g x} / J, J = Z - c e^{-g P} o. Its mean is W_t = c (1 - e^{-g P} (1 + g P)) / (g^2 J).
  Overload needs no special case: beyond rho = 1 the drop fraction tends to 1 - 1/rho as P grows (that
  o makes o |g| = rho - 1), the share a server at full speed cannot serve.
* Batching wait. A replica fills a batch of b_t: from Poisson arrivals the k-th of its items waits for
  b_t - k more, an Erlang(b_t - k) time, so a random item's wait is an equal mixture of Erlang(0 .. b_t - 1)
  at rate lam_q, whose p95 is exactly kappa_b / lam_q (kappa_b solves (1/b) sum_{j<b} P(Poisson(kappa) < j)
  = 0.05; kappa_1 = 0, kappa_2 = ln 10, kappa_4 = 4.79, kappa_64 = 62.9). The batch timeout tau_t =
  BATCH_TIMEOUT_SHARE * max(0, budget_t - p95_t) bounds it: F_t = min(1000 kappa_b / lam_q, tau_t),
  lam_q = min(lam_r, RHO_MAX thr_t) (the fill stops shrinking near saturation). A batch fills while the
  server is busy, so an item waits max(F, V), not F + V; for constant F, E[max(F, V)] = E[V] +
  int_0^F P(V <= x) dx, and the fill is charged as the fixed delay fill_t = F P(V <= F / 2) (midpoint rule).
* Violation. A request is late on a path if some task's wait (plus its own service tail) exceeds what the
  rest of the path leaves it: for each task t, Q_t = SLO - (the longest path's mean latency through t
  without t's wait and service tail), the mean latency of a task being fill + E[S] + W. fail_t =
  P(V + T > Q_t) in the truncated wait (T ~ Exp(m_t) the task's service tail; closed form), and the path
  violation v_P = 1 - prod_{t in P} (1 - fail_t): each task's wait against the others at their means. (To
  first order in the others' spread this is exact where V's density is flat near Q, i.e. near saturation.)
* p95 of a path over the requests served: D_P + theta_P ln(pi_P / 0.05) (D_P if pi_P <= 0.05), with D_P =
  sum_t (fill_t + d_t) fixed and the rest (waits and service tails) taken as 0 w.p. 1 - pi_P and otherwise
  exponential with their summed mean: pi_P = 1 - prod_t (1 - pi_t) (pi_t = 1 if t's service has a tail,
  else the chance of waiting), theta_P = sum_t (W_t + m_t) / pi_P. Capped at SLO + p95 - d of the path's
  last task: a request served started its last batch no later than its deadline minus d.
* An app request is late if any of its paths is: v_a = 1 - prod_{P of a} (1 - v_P) (paths as independent).
* Accuracy of a path = product of the chosen variants' normalised accuracies.

Approximations to keep in mind: every item is charged the full batch's service time and the fill's p95
(capped by the timeout); throughput is the full batch's; replicas share load evenly; paths are treated as
independent although they share tasks (overstates v_a); upstream latency enters a task's patience at its
mean; a request's items behind a fan-out are treated as one item (the slowest of k is not modelled);
the diffusion queue ignores that a bulk server's queue empties often at low load (overstates waits there).
Against ``jigsaw.env.sim`` on ILP plans of the three H100 apps solved at a quarter and half of the 4-GPU demand
bound (8-s runs, u = the busiest task's rho; tests/test_sim.py asserts the tolerance): path p95 is 0.75-1.57x
the simulated one (the low end: the 1-2 ms path of a batch-1 task, within 1 ms; the high end: detector paths at
low load, where the simulator runs timeout-sent partial batches as smaller, faster ones), 1.0-1.3x from u = 0.6
to saturation. The app violation fraction is never below the simulated one by more than 0.005 and overstates it
as the queue nears saturation: u = 0.9: <= 0.034 vs 0.006-0.025; u = 0.95: <= 0.14 vs 0.02-0.07; u = 1: 0.4-0.8
vs 0.07-0.14. In overload it is pessimistic (u = 1.1: 1.0 vs 0.35-0.56; u = 2: 0.7-1.0 vs 0.6-0.99): a task
behind a dropping one is evaluated at the full demand, not at what its parent passes on.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numba
import numpy as np
from scipy.stats import poisson

from jigsaw.env.plan import GpuLayout, Plan
from jigsaw.profiles.catalog import Catalog
from jigsaw.profiles.errors import PlanError
from jigsaw.profiles.tables import ConfigKind
from jigsaw.profiles.types import App, GpuType

BATCH_TIMEOUT_SHARE = 0.5  # share of (budget - p95) a replica waits for its batch to fill
RHO_MAX = 0.95  # the batch fill is evaluated at no more than this utilisation (see the module docstring)
_TAIL = 0.05  # p95: the 5% tail
_TINY = 1e-300
_EXP_MAX = 300.0  # exponents are clipped to +-this: the wait's terms saturate long before, and nothing overflows
_ONE_UP = 1.0 + 1e-9  # the wait's decay rate is k (_ONE_UP - rho): never exactly 0


@dataclass(frozen=True)
class CompiledPlan:
    """A plan as flat arrays. Tasks are every (app, task) of the plan; paths every source-to-sink path."""

    app_names: tuple[str, ...]
    task_keys: tuple[tuple[str, str], ...]  # (app, task), task order of every per-task array
    path_keys: tuple[tuple[str, tuple[str, ...]], ...]  # (app, task names), path order
    # per task [n_tasks]
    task_app: np.ndarray  # index into app_names
    p50_ms: np.ndarray  # one replica's batch service time at the plan's batch
    p95_ms: np.ndarray
    throughput_rps: np.ndarray  # items/s of one replica
    replicas: np.ndarray
    batch: np.ndarray
    budget_ms: np.ndarray
    items_per_request: np.ndarray  # F_t
    accuracy: np.ndarray  # normalised accuracy of the chosen variant
    # per path [n_paths]
    incidence: np.ndarray  # [n_paths, n_tasks], 0/1
    path_app: np.ndarray
    latency_slo_ms: np.ndarray
    path_accuracy: np.ndarray
    # per app [n_apps]
    accuracy_slo: np.ndarray
    slices_used: float  # compute slices of MIG instances hosting >= 1 worker
    gpus_used: int  # GPUs hosting >= 1 worker
    # derived for evaluate (see the module docstring); structure (fixed per set of apps):
    _inc_t: np.ndarray  # incidence.T, float [n_tasks, n_paths]
    _path_in_app: np.ndarray  # [n_paths, n_apps], 0/1
    _on_path: np.ndarray  # [n_tasks, n_paths]: 0 where the task is on the path, -inf elsewhere
    _downstream: np.ndarray  # [n_tasks, n_tasks * n_paths]: x @ it = per (task, path) the sum of x from the task on
    _ancestors: np.ndarray  # [n_tasks, n_tasks]: x @ it = per task the sum of x over its ancestors
    _source: np.ndarray  # 1 where the task has no parent
    _task_slo_ms: np.ndarray  # the latency SLO of the task's app
    _sink: np.ndarray  # [n_paths] the task that ends the path
    # per configuration:
    _lam_matrix: np.ndarray  # [n_apps, n_tasks] demand @ it = items/s reaching one replica (F_t / n_t in t's app row)
    _per_task: np.ndarray  # [13, n_tasks]: per task the rows _derive names (1 / thr, 1000 kappa_b, ...)
    _p95_cap_ms: np.ndarray  # [n_paths] SLO + p95 - d of the path's last task
    _fixed_outputs: tuple[np.ndarray, np.ndarray, np.ndarray]  # read-only path accuracy, slices, GPUs

    @property
    def n_apps(self) -> int:
        return len(self.app_names)


@dataclass(frozen=True)
class Metrics:
    """What ``evaluate`` predicts. ``...`` is the demand's leading shape (none for one demand, [n_demands]
    for a batch); arrays that do not depend on demand are read-only broadcast views."""

    utilisation: np.ndarray  # [..., n_tasks] rho: arriving items/s over the replicas' capacity
    path_p95_ms: np.ndarray  # [..., n_paths] p95 end-to-end latency of admitted requests
    path_violation: np.ndarray  # [..., n_paths] fraction of requests over the latency SLO (or not admitted)
    app_violation: np.ndarray  # [..., n_apps] fraction of the app's requests that miss the SLO
    app_violated_rps: np.ndarray  # [..., n_apps] req/s that miss: demand x app_violation
    violation: np.ndarray  # [...] demand-weighted violation over all apps (0 when there is no demand)
    path_accuracy: np.ndarray  # [..., n_paths] product of the variants' normalised accuracies
    slices_used: np.ndarray  # [...] compute slices
    gpus_used: np.ndarray  # [...]


def _fail(message: str, field: str, fix: str) -> PlanError:
    return PlanError(message, file="plan", field=field, fix=fix)


def compile_plan(catalog: Catalog, plan: Plan) -> CompiledPlan:
    """Resolve ``plan`` against ``catalog`` into the arrays ``evaluate`` reads. Raises ``PlanError`` (naming the
    field and the fix) for an unknown GPU type, app, task, variant, segment or batch, a configuration with no
    usable profile, a bad replica count or budget, or a MIG layout the GPU type cannot hold."""
    if plan.gpu_type not in catalog.gpus:
        raise _fail(f"unknown GPU type '{plan.gpu_type}'", "gpu_type", f"use one of {', '.join(catalog.gpus)}")
    gpu = catalog.gpus[plan.gpu_type]
    if not plan.apps:
        raise _fail("the plan serves no app", "apps", "give every app a configuration per task")
    app_names = tuple(plan.apps)
    cols: dict[str, list[float]] = {k: [] for k in ("p50", "p95", "thr", "n", "b", "budget", "F", "acc")}
    task_keys: list[tuple[str, str]] = []
    for name in app_names:
        if name not in catalog.apps:
            raise _fail(f"unknown app '{name}'", "apps", f"use one of {', '.join(catalog.apps)}")
        app = catalog.apps[name]
        configs = plan.apps[name]
        missing = [t for t in app.task_names if t not in configs]
        extra = [t for t in configs if t not in app.task_names]
        if missing or extra:
            raise _fail(f"app '{name}': tasks {sorted(extra)} unknown, {sorted(missing)} missing", f"apps.{name}",
                        f"configure exactly the tasks {', '.join(app.task_names)}")
        items = app.items_per_request({t: c.variant for t, c in configs.items()})
        for t in app.task_names:
            cfg, where = configs[t], f"apps.{name}.{t}"
            table = catalog.table(gpu.name, name, t)
            if cfg.variant not in table.variants:
                raise _fail(f"unknown variant '{cfg.variant}'", f"{where}.variant",
                            f"use one of {', '.join(table.variants)}")
            s = next((i for i, g in enumerate(table.segments)
                      if g.mig_profile.name == cfg.segment and g.mps_workers == cfg.mps_workers), None)
            if s is None:
                raise _fail(f"no segment '{cfg.segment}' with {cfg.mps_workers} MPS worker(s) on {gpu.name}",
                            f"{where}.segment", f"use one of {', '.join(g.name for g in table.segments)}")
            if cfg.batch not in table.batches:
                raise _fail(f"batch {cfg.batch} is not profiled", f"{where}.batch",
                            f"use one of {', '.join(map(str, table.batches))}")
            v, b = table.variants.index(cfg.variant), table.batches.index(cfg.batch)
            if not table.usable[v, s, b]:
                kind = ConfigKind(int(table.kind[v, s, b])).name.lower()
                raise _fail(f"{cfg.variant} on {table.segments[s].name} at batch {cfg.batch} has no usable profile "
                            f"({kind})", where, "choose a configuration the profile table holds (see `jigsaw solve`)")
            if not (isinstance(cfg.replicas, int) and cfg.replicas >= 1):
                raise _fail(f"{cfg.replicas} replicas", f"{where}.replicas", "give a whole number >= 1")
            if not (math.isfinite(cfg.budget_ms) and cfg.budget_ms > 0):
                raise _fail(f"budget {cfg.budget_ms} ms", f"{where}.budget_ms", "give a finite number of ms > 0")
            task_keys.append((name, t))
            for key, value in (("p50", table.p50_ms[v, s, b]), ("p95", table.p95_ms[v, s, b]),
                               ("thr", table.throughput_rps[v, s, b]), ("n", cfg.replicas), ("b", cfg.batch),
                               ("budget", cfg.budget_ms), ("F", items[t]),
                               ("acc", app.task(t).variants[v].accuracy)):
                cols[key].append(float(value))
    slices, gpus_used = _layout_usage(plan, gpu, set(task_keys))
    arr = {k: np.array(v) for k, v in cols.items()}
    structure = _structure(tuple(catalog.apps[a] for a in app_names))
    return with_configs(structure, p50_ms=arr["p50"], p95_ms=arr["p95"], throughput_rps=arr["thr"],
                        replicas=arr["n"].astype(np.int64), batch=arr["b"].astype(np.int64), budget_ms=arr["budget"],
                        items_per_request=arr["F"], accuracy=arr["acc"], slices_used=slices, gpus_used=gpus_used)


@functools.lru_cache(maxsize=64)
def _structure(apps: tuple[App, ...]) -> CompiledPlan:
    """The per-plan-independent part of ``compile_plan`` for these apps in this order (tasks, paths and the
    matrices ``evaluate`` reads), built once: a 120-GPU check spent half its time rebuilding it. Keyed by the apps
    themselves, so an app of a reloaded catalog that differs builds its own."""
    app_names = tuple(a.name for a in apps)
    task_keys = [(a.name, t) for a in apps for t in a.task_names]
    path_keys = [(a.name, p) for a in apps for p in a.paths()]
    index = {k: i for i, k in enumerate(task_keys)}
    incidence = np.zeros((len(path_keys), len(task_keys)))
    for pi, (name, path) in enumerate(path_keys):
        incidence[pi, [index[(name, t)] for t in path]] = 1.0
    path_app = np.array([app_names.index(a) for a, _ in path_keys])
    parents = {(a.name, v): (a.name, u) for a in apps for (u, v) in a.edges}
    n_tasks, n_paths = len(task_keys), len(path_keys)
    on_path = np.full((n_tasks, n_paths), -np.inf)
    downstream = np.zeros((n_tasks, n_paths, n_tasks))
    for pi, (name, path) in enumerate(path_keys):
        ids = [index[(name, t)] for t in path]
        for j, ti in enumerate(ids):
            on_path[ti, pi] = 0.0
            downstream[ti, pi, ids[j:]] = 1.0
    ancestors = np.zeros((n_tasks, n_tasks))
    for ti, key in enumerate(task_keys):
        up = key
        while up in parents:  # a task with several parents counts the first chain (the apps are trees)
            up = parents[up]
            ancestors[index[up], ti] = 1.0
    by_name = {a.name: a for a in apps}
    structure = CompiledPlan(
        app_names=app_names, task_keys=tuple(task_keys), path_keys=tuple(path_keys),
        task_app=np.array([app_names.index(a) for a, _ in task_keys], dtype=np.intp),
        incidence=incidence.astype(np.int8), path_app=path_app,
        latency_slo_ms=np.array([by_name[a].latency_slo_ms for a, _ in path_keys]),
        accuracy_slo=np.array([a.accuracy_slo for a in apps]),
        _inc_t=np.ascontiguousarray(incidence.T),
        _path_in_app=(path_app[:, None] == np.arange(len(app_names))[None, :]).astype(float),
        _on_path=on_path, _downstream=np.ascontiguousarray(downstream.reshape(n_tasks * n_paths, n_tasks).T),
        _ancestors=ancestors, _source=np.array([float(k not in parents) for k in task_keys]),
        _task_slo_ms=np.array([by_name[a].latency_slo_ms for a, _ in task_keys]),
        _sink=np.array([index[(a, p[-1])] for a, p in path_keys], dtype=np.intp),
        **{f.name: None for f in fields(CompiledPlan) if f.name in _PER_PLAN})  # type: ignore[arg-type]
    for value in vars(structure).values():  # every compiled plan of these apps shares them
        if isinstance(value, np.ndarray):
            _read_only(value)
    return structure


# the fields with_configs derives; the rest is the plan's structure (apps, tasks, paths), fixed per app set
_PER_PLAN = frozenset({"p50_ms", "p95_ms", "throughput_rps", "replicas", "batch", "budget_ms", "items_per_request",
                       "accuracy", "path_accuracy", "slices_used", "gpus_used", "_lam_matrix", "_per_task",
                       "_p95_cap_ms", "_fixed_outputs"})


def service_rows(p95_ms: np.ndarray, throughput_rps: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """What ``evaluate`` needs of each configuration that follows from its profile alone, stacked [10, ...]:
    E[S], m, d, 1 / thr, the fill's load cap, 1000 kappa_b, 1 / m, 1 where m > 0, cs2, 1 / b (the module
    docstring's symbols). The RL environment computes them once per candidate configuration; its steps gather
    a plan's columns in one indexing."""
    mu = 1000.0 * batch / throughput_rps
    tail = np.maximum(0.0, p95_ms - mu) / (math.log(1.0 / _TAIL) - 1.0)
    fill = np.array([fill_p95_arrivals(int(b)) for b in np.ravel(batch)]).reshape(np.shape(batch))
    return np.stack([mu, tail, np.maximum(0.0, mu - tail), 1.0 / throughput_rps, RHO_MAX * throughput_rps,
                     1000.0 * fill, 1.0 / np.maximum(tail, _TINY), (tail > 0).astype(float), (tail / mu) ** 2,
                     1.0 / batch])



def with_configs(structure: CompiledPlan, *, p50_ms: np.ndarray, p95_ms: np.ndarray, throughput_rps: np.ndarray,
                 replicas: np.ndarray, batch: np.ndarray, budget_ms: np.ndarray, items_per_request: np.ndarray,
                 accuracy: np.ndarray, slices_used: float, gpus_used: int, service: np.ndarray | None = None
                 ) -> CompiledPlan:
    """``structure``'s apps, tasks and paths with new per-task configurations (arrays in task order), without
    resolving a ``Plan``: the RL environment's per-step path (``compile_plan`` resolves names and loops).
    ``service``: these configurations' ``service_rows`` when the caller has them precomputed."""
    s = structure
    if service is None:
        service = service_rows(p95_ms, throughput_rps, batch)
    per_task, lam_matrix, p95_cap, path_acc = _derive(
        service, replicas, budget_ms, p95_ms, items_per_request, accuracy, s._source, s.task_app, len(s.app_names),
        s._task_slo_ms, s._inc_t, s._downstream, s._on_path, s.latency_slo_ms, s._sink)
    out = object.__new__(CompiledPlan)  # dataclasses.replace costs ~10 us on this many fields; the hot path
    out.__dict__.update(s.__dict__)
    out.__dict__.update(
        p50_ms=p50_ms, p95_ms=p95_ms, throughput_rps=throughput_rps, replicas=replicas, batch=batch,
        budget_ms=budget_ms, items_per_request=items_per_request, accuracy=accuracy, path_accuracy=path_acc,
        slices_used=slices_used, gpus_used=gpus_used, _lam_matrix=lam_matrix, _per_task=per_task,
        _p95_cap_ms=p95_cap,
        _fixed_outputs=(_read_only(path_acc), _read_only(np.array(slices_used)), _read_only(np.array(gpus_used))))
    return out


@numba.njit(cache=True, error_model="numpy")
def _derive(service, replicas, budget_ms, p95_ms, items, accuracy, source, task_app, n_apps, task_slo_ms, inc_t,
            downstream, on_path, latency_slo_ms, sink):  # pragma: no cover - compiled
    """What ``evaluate`` reads of a plan's configurations (the module docstring's symbols): per task the rows
    1 / thr, 1000 kappa_b, the fill's load cap, tau, SLO - rem, E[S], 2 / (k E[S]), o = k E[S] / 2, SLO + m,
    1 / m, d, m, 1 where m > 0; the arrival matrix; per path the p95 cap and the accuracy."""
    mu, tail, fixed, inv_thr, lam_cap, fill_ms_rps, inv_tail, tail_flag, cs2, inv_batch = service
    n, n_paths = inc_t.shape
    per_task = np.empty((13, n))
    lam_matrix = np.zeros((n_apps, n))
    for t in range(n):
        ca2 = inv_batch[t] / (1.0 + (replicas[t] - 1.0) * source[t])
        coef = 2.0 / ((ca2 + cs2[t]) * mu[t])  # 2 / (k E[S])
        rem = -np.inf  # the longest chain of fixed service times from t to a sink
        for p in range(n_paths):
            if on_path[t, p] == 0.0:
                x = 0.0
                for u in range(n):
                    x += fixed[u] * downstream[u, t * n_paths + p]
                rem = max(rem, x)
        row = (inv_thr[t], fill_ms_rps[t], lam_cap[t], BATCH_TIMEOUT_SHARE * max(0.0, budget_ms[t] - p95_ms[t]),
               task_slo_ms[t] - rem, mu[t], coef, 1.0 / coef, task_slo_ms[t] + tail[t], inv_tail[t], fixed[t], tail[t],
               tail_flag[t])
        for k in range(13):
            per_task[k, t] = row[k]
        lam_matrix[task_app[t], t] = items[t] / replicas[t]
    p95_cap, path_acc = np.empty(n_paths), np.empty(n_paths)
    for p in range(n_paths):
        p95_cap[p] = latency_slo_ms[p] + (p95_ms[sink[p]] - fixed[sink[p]])
        x = 0.0
        for t in range(n):
            x += math.log(accuracy[t]) * inc_t[t, p]
        path_acc[p] = math.exp(x)
    return per_task, lam_matrix, p95_cap, path_acc


def _read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _repeated(x: np.ndarray, lead: tuple[int, ...]) -> np.ndarray:
    """``x`` for every demand: a filled copy costs 0.6 us where ``np.broadcast_to`` costs 5 (small arrays)."""
    out = np.empty(lead + x.shape, dtype=x.dtype)
    out[...] = x
    return out


@functools.cache
def fill_p95_arrivals(batch: int) -> float:
    """kappa_b: the p95 of a random item's wait for its batch of ``batch`` to fill, in mean inter-arrival
    times (an equal mixture of Erlang(0 .. batch - 1)). Solved by bisection; 0 for batch 1."""
    if batch <= 1:
        return 0.0
    lo, hi = 0.0, 10.0 * batch + 50.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if float(poisson.cdf(np.arange(batch) - 1, mid).mean()) > _TAIL:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _layout_usage(plan: Plan, gpu: GpuType, tasks: set[tuple[str, str]]) -> tuple[float, int]:
    """Compute slices of MIG instances hosting >= 1 worker, and GPUs hosting >= 1 worker (every MIG instance has
    compute slices). Each distinct partition and each distinct GPU layout is judged once: a large cluster repeats a
    few over and over, and hashing one costs less than walking it."""
    profiles = {p.name: p for p in gpu.mig_profiles}
    valid = {p.counts for p in gpu.partitions}
    names = {f"{a}/{t}" for a, t in tasks}
    partitions: set[tuple[str, ...]] = set()
    judged: dict[GpuLayout, float] = {}
    slices, used = 0.0, 0
    for g, layout in enumerate(plan.gpus):
        hosted = judged.get(layout)
        if hosted is None:
            where = f"gpus[{g}]"
            if layout.partition not in partitions:
                unknown = [n for n in layout.partition if n not in profiles]
                if unknown:
                    raise _fail(f"unknown MIG profile(s) {', '.join(unknown)}", f"{where}.partition",
                                f"use profiles of {gpu.name}: {', '.join(profiles)}")
                counts = tuple(layout.partition.count(p.name) for p in gpu.mig_profiles)
                if layout.partition and counts not in valid:
                    raise _fail(f"{list(layout.partition)} is not a valid {gpu.name} partition", f"{where}.partition",
                                "use a partition the GPU's placement rules allow")
                partitions.add(layout.partition)
            if len(layout.workers) != len(layout.partition):
                raise _fail("each MIG instance needs its (possibly empty) worker list", f"{where}.workers",
                            "one list per entry of partition")
            hosted = 0.0
            for name, workers in zip(layout.partition, layout.workers, strict=True):
                if workers:
                    if not names.issuperset(workers):
                        stranger = next(w for w in workers if w not in names)
                        raise _fail(f"worker '{stranger}' is no task of the plan", f"{where}.workers",
                                    "name workers app/task")
                    hosted += profiles[name].compute_slices
            judged[layout] = hosted
        slices += hosted
        used += hosted > 0
    return slices, used


def evaluate(compiled: CompiledPlan, demand_rps: np.ndarray) -> Metrics:
    """Predict the plan's behaviour under ``demand_rps`` (req/s per app, in ``compiled.app_names`` order).

    :param demand_rps: shape [n_apps] or [n_demands, n_apps]; finite and >= 0 (not checked, for speed).
    :return: ``Metrics`` whose arrays carry the demand's leading shape (see the module docstring for the model).
    """
    c = compiled
    d = _demand_rows(demand_rps, len(c.app_names))
    rows = _evaluate_rows(d, c._lam_matrix, c._per_task, c._ancestors, c._inc_t, c._on_path, c._p95_cap_ms,
                          c._path_in_app)
    return _metrics(np.shape(demand_rps)[:-1], rows, c._fixed_outputs)


def config_table(p95_ms: np.ndarray, accuracy: np.ndarray, service: np.ndarray) -> np.ndarray:
    """What ``evaluate_configs`` reads of each of a set of configurations, stacked [12, n_configs]: the p95, the
    variant's normalised accuracy, then the ``service_rows``."""
    return np.vstack([p95_ms, accuracy, service])


def evaluate_configs(structure: CompiledPlan, table: np.ndarray, config: np.ndarray, replicas: np.ndarray,
                     budget_ms: np.ndarray, items_per_request: np.ndarray, slices_used: float, gpus_used: int,
                     demand_rps: np.ndarray) -> Metrics:
    """``evaluate(with_configs(structure, ...), demand_rps)`` for per-task configurations picked from a
    ``config_table`` (``config`` [n_tasks] indexes its columns) in one compiled call, without the plan: the RL
    environment's step needs the metrics alone (two calls and the plan's assembly took twice as long)."""
    s = structure
    d = _demand_rows(demand_rps, len(s.app_names))
    *rows, path_acc = _evaluate_configs(
        table, config, replicas, budget_ms, items_per_request, d, s._source, s.task_app, len(s.app_names),
        s._task_slo_ms, s._inc_t, s._downstream, s._on_path, s.latency_slo_ms, s._sink, s._ancestors, s._path_in_app)
    return _metrics(np.shape(demand_rps)[:-1], rows, (path_acc, np.array(slices_used), np.array(gpus_used)))


def _demand_rows(demand_rps: np.ndarray, n_apps: int) -> np.ndarray:
    d = np.asarray(demand_rps, dtype=float)
    if d.shape[-1:] != (n_apps,):
        raise ValueError(f"demand_rps has shape {d.shape}; the last axis must be the {n_apps} apps")
    return np.ascontiguousarray(d.reshape(-1, n_apps))


def _metrics(lead: tuple[int, ...], rows: Sequence[np.ndarray], fixed: tuple[np.ndarray, ...]) -> Metrics:
    """``Metrics`` from ``_evaluate_rows``' outputs (one row per demand) reshaped to the demands' ``lead``ing shape,
    with the demand-independent path accuracy, slices and GPUs (as they are for one demand, else repeated)."""
    rho, p95, path_v, app_v, violated, violation = (x.reshape(lead + x.shape[1:]) for x in rows)
    accuracy, slices, gpus = fixed if not lead else (_repeated(x, lead) for x in fixed)
    return Metrics(utilisation=rho, path_p95_ms=p95, path_violation=path_v, app_violation=app_v,
                   app_violated_rps=violated, violation=violation, path_accuracy=accuracy, slices_used=slices,
                   gpus_used=gpus)


@numba.njit(cache=True, error_model="numpy")
def _evaluate_configs(table, config, replicas, budget_ms, items, d, source, task_app, n_apps, task_slo_ms, inc_t,
                      downstream, on_path, latency_slo_ms, sink, ancestors, path_in_app):  # pragma: no cover - compiled
    """``evaluate_configs``: the configurations' columns gathered (-1 wraps to the last, as numpy indexing does),
    ``_derive`` and ``_evaluate_rows``; and the path accuracy."""
    columns = np.empty((table.shape[0], config.size))
    for t in range(config.size):
        columns[:, t] = table[:, config[t]]
    per_task, lam_matrix, p95_cap, path_acc = _derive(columns[2:], replicas, budget_ms, columns[0], items, columns[1],
                                                      source, task_app, n_apps, task_slo_ms, inc_t, downstream,
                                                      on_path, latency_slo_ms, sink)
    rho, p95, path_v, app_v, violated, violation = _evaluate_rows(d, lam_matrix, per_task, ancestors, inc_t, on_path,
                                                                  p95_cap, path_in_app)
    return rho, p95, path_v, app_v, violated, violation, path_acc


@numba.njit(cache=True, error_model="numpy")
def _evaluate_rows(d, lam_matrix, per_task, ancestors, inc_t, on_path, p95_cap_ms, path_in_app
                   ):  # pragma: no cover - compiled
    """``evaluate`` for demands [n_demands, n_apps], one row at a time: the module docstring's model, in its
    symbols. Compiled: on 9 tasks the same arithmetic as numpy array calls took ~60 calls of ~1 us each."""
    (inv_thr, fill_ms_rps, lam_cap, timeout_ms, slack_ms, mean_ms, coef, over_ms, slo_tail_ms, inv_tail, fixed_ms,
     tail_ms, tail_flag) = per_task
    n_d, n_apps = d.shape
    n, n_paths = inc_t.shape
    rho = np.empty((n_d, n))
    p95 = np.empty((n_d, n_paths))
    path_v = np.empty((n_d, n_paths))
    app_v = np.empty((n_d, n_apps))
    violated = np.empty((n_d, n_apps))
    violation = np.empty(n_d)
    lam_r, fill_p95, patience, g, cw, c_g, neg_x, e_p, over, body, inv_z, served, wait, fill, mean_t = (
        np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n),
        np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n))
    path_mean, fixed_p, spread_p, log_ok, log_calm = (np.empty(n_paths), np.empty(n_paths), np.empty(n_paths),
                                                      np.empty(n_paths), np.empty(n_paths))
    for i in range(n_d):
        for t in range(n):
            x = 0.0
            for a in range(n_apps):
                x += d[i, a] * lam_matrix[a, t]
            lam_r[t] = x  # items/s reaching one replica
            rho[i, t] = x * inv_thr[t]
            fill_p95[t] = min(fill_ms_rps[t] / max(min(x, lam_cap[t]), _TINY), timeout_ms[t])
        for t in range(n):
            up = 0.0
            for u in range(n):
                up += (fill_p95[u] + mean_ms[u]) * ancestors[u, t]
            patience[t] = max(slack_ms[t] - up, _TINY)
            r = rho[i, t]
            g[t] = coef[t] * (_ONE_UP - r)  # never 0 at rho = 1 exactly (the closed forms' removable singularity)
            cw[t] = coef[t] * r
            c_g[t] = cw[t] / g[t]
            neg_x[t] = min(g[t] * -patience[t], _EXP_MAX)  # -g P
            e_p[t] = math.exp(neg_x[t])
            em = -math.expm1(neg_x[t])
            over[t] = cw[t] * e_p[t] * over_ms[t]  # mass of the dropped
            body[t] = c_g[t] * em  # mass of the waits in (0, P)
            inv_z[t] = 1.0 / (1.0 + body[t] + over[t])
            served[t] = 1.0 + body[t]
            wait[t] = c_g[t] * (em + neg_x[t] * e_p[t]) / (g[t] * served[t])
            fill[t] = fill_p95[t] * (1.0 - (c_g[t] * (math.exp(min(-0.5 * g[t] * fill_p95[t], _EXP_MAX)) - e_p[t])
                                            + over[t]) * inv_z[t])
            mean_t[t] = fill[t] + mean_ms[t] + wait[t]
        for p in range(n_paths):
            x = 0.0
            for t in range(n):
                x += mean_t[t] * inc_t[t, p]
            path_mean[p] = x
            fixed_p[p] = spread_p[p] = log_ok[p] = log_calm[p] = 0.0
        for t in range(n):
            through = -np.inf
            for p in range(n_paths):
                through = max(through, path_mean[p] + on_path[t, p])
            q = min(max(slo_tail_ms[t] - through + wait[t], 0.0), patience[t])
            e_q = math.exp(min(-g[t] * q, _EXP_MAX))
            e_t = math.exp(-q * inv_tail[t])
            a = inv_tail[t] - g[t]
            if a == 0.0:  # the removable singularity g = 1 / m (then e_q = e_t)
                a = _TINY
            fail = min((c_g[t] * (e_q - e_p[t]) + cw[t] * (e_q - e_t) / a + over[t] + e_t) * inv_z[t], 1.0)
            # per task, summed along each path: the fixed delay, the spread (waits and service tails),
            # log P(on time) and log P(no wait or tail)
            ok = math.log(max(1.0 - fail, _TINY))
            calm = math.log(max(1.0 - max(body[t] / served[t], tail_flag[t]), _TINY))
            for p in range(n_paths):
                w = inc_t[t, p]
                fixed_p[p] += (fill[t] + fixed_ms[t]) * w
                spread_p[p] += (wait[t] + tail_ms[t]) * w
                log_ok[p] += ok * w
                log_calm[p] += calm * w
        for p in range(n_paths):
            path_v[i, p] = 1.0 - math.exp(log_ok[p])
            pi_p = max(1.0 - math.exp(log_calm[p]), _TAIL)  # at least 5%: then theta's log factor below is 0
            p95[i, p] = min(fixed_p[p] + spread_p[p] * math.log(pi_p * (1.0 / _TAIL)) / pi_p, p95_cap_ms[p])
        total = lost = 0.0
        for a in range(n_apps):
            x = 0.0
            for p in range(n_paths):
                x += log_ok[p] * path_in_app[p, a]
            app_v[i, a] = 1.0 - math.exp(x)
            violated[i, a] = d[i, a] * app_v[i, a]
            total += d[i, a]
            lost += violated[i, a]
        violation[i] = lost / max(total, _TINY)
    return rho, p95, path_v, app_v, violated, violation

"""The discrete-event simulator: the ground truth that ``jigsaw.env.perf`` approximates.

Request by request, but vectorised where the model allows it: the task graph of every app is feed-forward,
so the simulation runs task by task in topological order, and only the per-replica batching queue is a Python
loop (one iteration per batch, or per item dropped at the head of a queue). Times are in ms.

The model, per task t of app a (the plan's variant, batch b_t, replicas n_t and budget):

* Arrivals. Requests arrive at the given times. A source task (no incoming edge) gets one item per request,
  at the request's arrival. An item completed at u sends floor(f) + Bernoulli(frac(f)) items to each child v,
  f = App.fanout(u, v, the plan's variant of u), drawn per item of u (per request when u has one item per
  request), each arriving at v when its parent item completes. A dropped item sends nothing downstream.
* Dispatch. Round-robin: the items reaching t, in arrival order, go to replica k mod n_t (the k-th item to
  replica k mod n_t). Each replica is its own FIFO batching server, as ``jigsaw.env.perf`` assumes.
* Batching. A replica that is free, with items waiting, starts a batch as soon as either b_t items are waiting
  or the oldest has waited tau_t = BATCH_TIMEOUT_SHARE * max(0, budget_t - p95_t) (as in ``jigsaw.env.perf``); a
  replica that becomes free with items waiting starts at once if the oldest has waited tau_t already. A batch
  takes the up to b_t oldest waiting items (never more than b_t).
* Service. A batch's service time is lognormal through the profile's p50 and p95 (sigma = ln(p95 / p50) /
  z_0.95), its normal draw clipped below at its 1st percentile (so a minimum service time exists), scaled so
  that its mean is the full batch's mean mu_t = 1000 b_t / thr_t. A partial batch of k < b_t items is padded
  to the smallest profiled batch size >= k that the table holds for the same variant and segment (an engine
  with batch-size buckets): its time is the same draw scaled by mu(bucket) / mu_t, mu(x) = 1000 x / thr(x).
  (Only a full batch runs at the plan's throughput, so a replica's busy fraction may exceed the analytic
  rho_t where timeouts send partial batches.) p50 = p95 gives a constant service time mu_t.
* Early drop. An item's deadline is its request's arrival + the app's latency SLO. rem_t is the minimum
  service time of t plus the longest chain of minimum service times below t. An item is dropped on arrival at t
  if arrival + rem_t > deadline, and at the head of its queue when the batch it would join starts too late
  (start + rem_t > deadline): it can no longer make it. A request with any dropped item is violated.
* Outputs. A path's latency for a request is the last completion of its items on the path's tasks minus its
  arrival; the app's latency the last over all its tasks. A request violates a path (the app) if one of its
  items on the path (in the app) was dropped or its latency exceeds the SLO. p95s are over requests that were
  not dropped; utilisation is busy time / (horizon * replicas); histograms count the app latencies of requests
  not dropped in N_BINS equal bins over [0, 2 SLO], the last bin also counting everything beyond.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from jigsaw.env.perf import BATCH_TIMEOUT_SHARE, CompiledPlan, compile_plan
from jigsaw.env.plan import Plan
from jigsaw.env.traces import Trace
from jigsaw.profiles.catalog import Catalog

N_BINS = 40  # histogram bins per app over [0, 2 SLO]
_Z95 = 1.6448536269514722  # standard normal 95th percentile
_Z_CLIP = 2.3263478740408408  # draws are clipped below at the 1st percentile


@dataclass(frozen=True)
class SimMetrics:
    """What ``simulate`` measured. Fields named as in ``jigsaw.env.perf.Metrics`` mean the same thing."""

    utilisation: np.ndarray  # [n_tasks] busy time / (horizon * replicas)
    path_p95_ms: np.ndarray  # [n_paths] p95 path latency of requests not dropped (nan if none)
    path_violation: np.ndarray  # [n_paths] fraction of requests dropped on the path or over the SLO
    app_violation: np.ndarray  # [n_apps] fraction of the app's requests dropped or over the SLO
    app_violated_rps: np.ndarray  # [n_apps] violated requests / horizon
    violation: float  # violated requests / requests over all apps (0 when there are none)
    path_accuracy: np.ndarray  # [n_paths]
    slices_used: float
    gpus_used: int
    # simulator-only
    app_p95_ms: np.ndarray  # [n_apps] p95 end-to-end latency of requests not dropped (nan if none)
    histograms: np.ndarray  # [n_apps, N_BINS] counts of end-to-end latencies (requests not dropped)
    histogram_edges_ms: np.ndarray  # [n_apps, N_BINS + 1], 0 .. 2 SLO
    requests: np.ndarray  # [n_apps] requests simulated
    dropped: np.ndarray  # [n_apps] requests with a dropped item
    demand_rps: np.ndarray  # [n_apps] requests / horizon
    items: np.ndarray  # [n_tasks] items that reached each task (dropped on arrival included)
    items_dropped: np.ndarray  # [n_tasks]
    batches: np.ndarray  # [n_tasks]
    max_batch: np.ndarray  # [n_tasks] largest batch served (0 if none)
    mean_batch: np.ndarray  # [n_tasks] items per batch (nan if none)
    mean_wait_ms: np.ndarray  # [n_tasks] mean time from an item's arrival to its batch's start (nan if none)
    horizon_s: float


def service_params(compiled: CompiledPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per task (scale_ms, sigma, min_ms) of the clipped lognormal: service = scale * exp(sigma * max(Z, -c))."""
    c = compiled
    mu = 1000.0 * c.batch / c.throughput_rps
    ratio = np.maximum(c.p95_ms / np.maximum(c.p50_ms, 1e-12), 1.0)
    sigma = np.log(ratio) / _Z95
    phi = np.vectorize(lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0))))
    # E[exp(sigma max(Z, -c))] = Phi(-c) exp(-sigma c) + exp(sigma^2 / 2) Phi(c + sigma)
    mean_unit = phi(-_Z_CLIP) * np.exp(-sigma * _Z_CLIP) + np.exp(sigma**2 / 2.0) * phi(_Z_CLIP + sigma)
    scale = mu / mean_unit
    return scale, sigma, scale * np.exp(-sigma * _Z_CLIP)


def bucket_factors(catalog: Catalog, plan: Plan, compiled: CompiledPlan) -> list[list[float]]:
    """Per task, for k = 0 .. b: the service time of a batch of k relative to a full one (see the docstring)."""
    out = []
    for ti, (app, task) in enumerate(compiled.task_keys):
        cfg = plan.apps[app][task]
        table = catalog.table(plan.gpu_type, app, task)
        v = table.variants.index(cfg.variant)
        s = next(i for i, g in enumerate(table.segments)
                 if g.mig_profile.name == cfg.segment and g.mps_workers == cfg.mps_workers)
        b = int(compiled.batch[ti])
        full = b / float(compiled.throughput_rps[ti])
        usable = table.usable[v, s]
        sizes = [(x, x / float(table.throughput_rps[v, s, j])) for j, x in enumerate(table.batches)
                 if usable[j] and x <= b and table.throughput_rps[v, s, j] > 0]
        fac = [1.0] * (b + 1)
        for k in range(1, b + 1):
            fac[k] = min((m for x, m in sizes if x >= k), default=full) / full
        out.append(fac)
    return out


def _replica(a: list[float], dl: list[float], rem: float, b: int, tau: float, svc: list[float],
             fac: list[float]) -> tuple[list[int], list[int], list[float], list[float], list[int]]:
    """One FIFO batching server over its items (arrival times ``a`` sorted, deadlines ``dl``). Returns per batch
    (first item, size, start, end) and the items dropped at the head of the queue. A batch of k takes
    ``svc[batch number] * fac[k]``."""
    n = len(a)
    firsts: list[int] = []
    sizes: list[int] = []
    starts: list[float] = []
    ends: list[float] = []
    drops: list[int] = []
    free = -math.inf
    i = 0
    nb = 0
    while i < n:
        s = a[i] + tau
        j = i + b - 1
        if j < n and a[j] < s:
            s = a[j]
        if free > s:
            s = free
        if s + rem > dl[i]:  # the oldest item can no longer make its deadline
            drops.append(i)
            i += 1
            continue
        hi = i + b
        k = bisect_right(a, s, i, hi if hi < n else n) - i
        e = s + svc[nb] * fac[k]
        nb += 1
        firsts.append(i)
        sizes.append(k)
        starts.append(s)
        ends.append(e)
        free = e
        i += k
    return firsts, sizes, starts, ends, drops


def _serve(arr: np.ndarray, dl: np.ndarray, rem: float, b: int, tau: float, n_rep: int,
           svc: np.ndarray, fac: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int, int]:
    """All replicas of one task, items sorted by arrival. Returns per item (start, end, dropped) (start/end nan
    where dropped), busy time, batches, largest batch."""
    n = arr.size
    start = np.full(n, np.nan)
    end = np.full(n, np.nan)
    dropped = np.ones(n, dtype=bool)
    busy, n_batches, max_b = 0.0, 0, 0
    for r in range(min(n_rep, n)):
        sub_a, sub_dl = arr[r::n_rep], dl[r::n_rep]
        firsts, sizes, starts, ends, _ = _replica(sub_a.tolist(), sub_dl.tolist(), rem, b, tau,
                                                  svc[r::n_rep].tolist(), fac)
        if not firsts:
            continue
        f = np.asarray(firsts, dtype=np.int64)
        k = np.asarray(sizes, dtype=np.int64)
        st, en = np.asarray(starts), np.asarray(ends)
        offs = np.cumsum(k) - k
        local = np.repeat(f - offs, k) + np.arange(int(k.sum()))  # item positions within the replica
        glob = r + n_rep * local
        start[glob] = np.repeat(st, k)
        end[glob] = np.repeat(en, k)
        dropped[glob] = False
        busy += float((en - st).sum())
        n_batches += len(firsts)
        max_b = max(max_b, int(k.max()))
    return start, end, dropped, busy, n_batches, max_b


def simulate(compiled: CompiledPlan, catalog: Catalog, plan: Plan, arrivals_s: np.ndarray, app_index: np.ndarray,
             seed: int, horizon_s: float | None = None) -> SimMetrics:
    """Simulate ``plan`` (compiled as ``compiled``) serving requests arriving at ``arrivals_s`` (seconds) for the
    apps ``app_index`` (into ``compiled.app_names``). Deterministic given ``seed``.

    :param horizon_s: the time the arrivals span, for utilisation and rates (default: last - first arrival).
    """
    c = compiled
    arr_s = np.asarray(arrivals_s, dtype=float)
    apps_of = np.asarray(app_index, dtype=np.int64)
    if arr_s.shape != apps_of.shape or arr_s.ndim != 1:
        raise ValueError("arrivals_s and app_index must be 1-D arrays of the same length")
    if apps_of.size and (apps_of.min() < 0 or apps_of.max() >= c.n_apps):
        raise ValueError(f"app_index must lie in [0, {c.n_apps})")
    if horizon_s is None:
        horizon_s = float(arr_s.max() - arr_s.min()) if arr_s.size > 1 else 0.0
    horizon = max(float(horizon_s), 1e-9)
    rng = np.random.default_rng(seed)
    scale, sigma, min_ms = service_params(c)
    tau = BATCH_TIMEOUT_SHARE * np.maximum(0.0, c.budget_ms - c.p95_ms)
    factors = bucket_factors(catalog, plan, c)
    index = {k: i for i, k in enumerate(c.task_keys)}
    n_tasks, n_apps = len(c.task_keys), c.n_apps
    util = np.zeros(n_tasks)
    items_n = np.zeros(n_tasks, dtype=np.int64)
    items_drop = np.zeros(n_tasks, dtype=np.int64)
    batches = np.zeros(n_tasks, dtype=np.int64)
    max_batch = np.zeros(n_tasks, dtype=np.int64)
    mean_batch = np.full(n_tasks, np.nan)
    mean_wait = np.full(n_tasks, np.nan)
    task_end: list[np.ndarray] = [np.empty(0)] * n_tasks  # per task, per request of its app: last completion
    task_drop: list[np.ndarray] = [np.empty(0, dtype=bool)] * n_tasks
    req_arr: list[np.ndarray] = []
    slo = np.zeros(n_apps)
    for ai, name in enumerate(c.app_names):
        app = catalog.apps[name]
        slo[ai] = app.latency_slo_ms
        configs = plan.apps[name]
        ra = arr_s[apps_of == ai] * 1000.0  # sorted if the input is
        ra = np.sort(ra)
        req_arr.append(ra)
        n_req = ra.size
        children = {t: [v for (u, v) in app.edges if u == t] for t in app.task_names}
        rem: dict[str, float] = {}
        for t in reversed(app.topological_order):
            rem[t] = float(min_ms[index[(name, t)]]) + max((rem[v] for v in children[t]), default=0.0)
        done: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # task -> (completion, request) of served items
        for t in app.topological_order:
            ti = index[(name, t)]
            parents = [u for (u, v) in app.edges if v == t]
            if not parents:
                item_arr, item_req = ra, np.arange(n_req)
            else:
                parts_a, parts_r = [], []
                for u in parents:
                    comp_u, req_u = done[u]
                    f = app.fanout(u, t, configs[u].variant)
                    k = math.floor(f) + (rng.random(comp_u.size) < f - math.floor(f))
                    parts_a.append(np.repeat(comp_u, k))
                    parts_r.append(np.repeat(req_u, k))
                item_arr, item_req = np.concatenate(parts_a), np.concatenate(parts_r)
                order = np.argsort(item_arr, kind="stable")
                item_arr, item_req = item_arr[order], item_req[order]
            deadline = ra[item_req] + slo[ai]
            late = item_arr + rem[t] > deadline  # cannot make it even if served at once: dropped on arrival
            q_arr, q_req, q_dl = item_arr[~late], item_req[~late], deadline[~late]
            z = np.maximum(rng.standard_normal(q_arr.size), -_Z_CLIP)
            svc = scale[ti] * np.exp(sigma[ti] * z)
            start, end, dropped, busy, nb, mb = _serve(q_arr, q_dl, rem[t], int(c.batch[ti]), float(tau[ti]),
                                                       int(c.replicas[ti]), svc, factors[ti])
            served = ~dropped
            done[t] = (end[served], q_req[served])
            tend = np.full(n_req, -np.inf)
            np.maximum.at(tend, q_req[served], end[served])
            tdrop = np.zeros(n_req, dtype=bool)
            tdrop[item_req[late]] = True
            tdrop[q_req[dropped]] = True
            task_end[ti], task_drop[ti] = tend, tdrop
            items_n[ti] = item_arr.size
            items_drop[ti] = int(late.sum()) + int(dropped.sum())
            util[ti] = busy / (horizon * 1000.0 * c.replicas[ti])
            batches[ti], max_batch[ti] = nb, mb
            if nb:
                mean_batch[ti] = served.sum() / nb
                mean_wait[ti] = float((start[served] - q_arr[served]).mean())
    # paths and apps
    n_paths = len(c.path_keys)
    path_p95 = np.full(n_paths, np.nan)
    path_v = np.zeros(n_paths)
    for pi, (name, path) in enumerate(c.path_keys):
        ai = c.app_names.index(name)
        ra = req_arr[ai]
        if not ra.size:
            continue
        tids = [index[(name, t)] for t in path]
        end = np.max([task_end[i] for i in tids], axis=0)
        drop = np.any([task_drop[i] for i in tids], axis=0)
        lat = end - ra
        path_v[pi] = float((drop | (lat > slo[ai])).mean())
        if (~drop).any():
            path_p95[pi] = float(np.percentile(lat[~drop], 95))
    requests = np.array([r.size for r in req_arr], dtype=np.int64)
    dropped_n = np.zeros(n_apps, dtype=np.int64)
    app_v = np.zeros(n_apps)
    app_p95 = np.full(n_apps, np.nan)
    hists = np.zeros((n_apps, N_BINS), dtype=np.int64)
    edges = np.stack([np.linspace(0.0, 2.0 * s, N_BINS + 1) for s in slo]) if n_apps else np.zeros((0, N_BINS + 1))
    for ai in range(n_apps):
        ra = req_arr[ai]
        if not ra.size:
            continue
        tids = [i for i in range(n_tasks) if c.task_app[i] == ai]
        end = np.max([task_end[i] for i in tids], axis=0)
        drop = np.any([task_drop[i] for i in tids], axis=0)
        lat = end - ra
        dropped_n[ai] = int(drop.sum())
        app_v[ai] = float((drop | (lat > slo[ai])).mean())
        ok = lat[~drop]
        if ok.size:
            app_p95[ai] = float(np.percentile(ok, 95))
            hists[ai] = np.histogram(np.minimum(ok, edges[ai, -1]), bins=edges[ai])[0]
    violated = app_v * requests
    total = int(requests.sum())
    return SimMetrics(
        utilisation=util, path_p95_ms=path_p95, path_violation=path_v, app_violation=app_v,
        app_violated_rps=violated / horizon, violation=float(violated.sum() / total) if total else 0.0,
        path_accuracy=np.array(c.path_accuracy), slices_used=float(c.slices_used), gpus_used=int(c.gpus_used),
        app_p95_ms=app_p95, histograms=hists, histogram_edges_ms=edges, requests=requests, dropped=dropped_n,
        demand_rps=requests / horizon, items=items_n, items_dropped=items_drop, batches=batches,
        max_batch=max_batch, mean_batch=mean_batch, mean_wait_ms=mean_wait, horizon_s=horizon)


def simulate_trace(catalog: Catalog, plan: Plan, trace: Trace, start_s: float, end_s: float, seed: int) -> SimMetrics:
    """Simulate ``plan`` over the trace's Poisson arrivals in ``[start_s, end_s)`` (apps the plan does not serve
    are left out; apps the plan serves but the trace lacks get no requests)."""
    compiled = compile_plan(catalog, plan)
    rng = np.random.default_rng(seed)
    times, app = trace.arrivals(rng, start_s, end_s)
    to_plan = np.array([compiled.app_names.index(a) if a in compiled.app_names else -1 for a in trace.apps],
                       dtype=np.int64)
    mapped = to_plan[app] if app.size else app
    keep = mapped >= 0
    return simulate(compiled, catalog, plan, times[keep], mapped[keep], seed + 1, horizon_s=end_s - start_s)

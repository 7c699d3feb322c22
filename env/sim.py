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
* Spans. ``simulate_spans`` runs a whole trace segment at once over the workers in force through time
  (``jigsaw.env.transitions.schedule``): an item goes to the workers of the span it arrives in (round-robin
  among them; a task without workers drops it), with that span's configuration; a worker kept from one span to
  the next (same kind) keeps its queue, and a worker that leaves finishes the items it was given. Early drop
  uses the span's chain of minimum service times. ``simulate`` is one span from empty queues.
* Outputs. A path's latency for a request is the last completion of its items on the path's tasks minus its
  arrival; the app's latency the last over all its tasks. A request violates a path (the app) if one of its
  items on the path (in the app) was dropped or its latency exceeds the SLO. p95s are over requests that were
  not dropped; utilisation is busy time / (horizon * replicas); histograms count the app latencies of requests
  not dropped in N_BINS equal bins over [0, 2 SLO], the last bin also counting everything beyond.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jigsaw.env.perf import BATCH_TIMEOUT_SHARE, CompiledPlan, compile_plan
from jigsaw.env.plan import Plan
from jigsaw.env.traces import Trace
from jigsaw.env.transitions import Span, task_order
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
             fac: list[float], free: float) -> tuple[list[int], list[int], list[float], list[float], float]:
    """One FIFO batching server over its items (arrival times ``a`` sorted, deadlines ``dl``), free from ``free`` on.
    Returns per batch (first item, size, start, end) and when it is free again. A batch of k takes
    ``svc[batch number] * fac[k]``; items never batched were dropped at the head of the queue."""
    n = len(a)
    firsts: list[int] = []
    sizes: list[int] = []
    starts: list[float] = []
    ends: list[float] = []
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
    return firsts, sizes, starts, ends, free


def _serve(arr: np.ndarray, dl: np.ndarray, rem: float, b: int, tau: float, free: np.ndarray,
           svc: np.ndarray, fac: list[float], start: np.ndarray, end: np.ndarray, dropped: np.ndarray
           ) -> tuple[float, int, int]:
    """Items sorted by arrival, dealt round-robin to the replicas whose free times are ``free`` (updated); writes
    per item start, end and dropped (left True where dropped) into the given arrays. Returns busy time, batches,
    largest batch."""
    n_rep = free.size
    busy, n_batches, max_b = 0.0, 0, 0
    for r in range(min(n_rep, arr.size)):
        firsts, sizes, starts, ends, free[r] = _replica(arr[r::n_rep].tolist(), dl[r::n_rep].tolist(), rem, b, tau,
                                                        svc[r::n_rep].tolist(), fac, float(free[r]))
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
    return busy, n_batches, max_b


@dataclass(frozen=True)
class _Served:
    """What one run of the simulator measured, before it is summed up (per app, per request; per task)."""

    req_arrival: list[np.ndarray]  # [n_apps] ms, sorted
    task_end: list[np.ndarray]  # [n_tasks] per request of the task's app: its last completion there (-inf: none)
    task_drop: list[np.ndarray]  # [n_tasks] per request of the task's app: an item dropped there
    busy_ms: np.ndarray
    replica_ms: np.ndarray  # replicas x time in force, ms
    items: np.ndarray
    items_dropped: np.ndarray
    batches: np.ndarray
    max_batch: np.ndarray
    mean_batch: np.ndarray
    mean_wait_ms: np.ndarray


@dataclass(frozen=True)
class _PlanTables:
    """One decision's plan, as the simulator reads it per task."""

    plan: Plan
    index: dict[tuple[str, str], int]  # (app, task) -> its row
    batch: np.ndarray
    scale: np.ndarray
    sigma: np.ndarray
    min_ms: np.ndarray
    tau: np.ndarray
    factors: list[list[float]]

    @classmethod
    def of(cls, catalog: Catalog, plan: Plan, compiled: CompiledPlan) -> _PlanTables:
        scale, sigma, min_ms = service_params(compiled)
        return cls(plan, {k: i for i, k in enumerate(compiled.task_keys)}, compiled.batch, scale, sigma, min_ms,
                   BATCH_TIMEOUT_SHARE * np.maximum(0.0, compiled.budget_ms - compiled.p95_ms),
                   bucket_factors(catalog, plan, compiled))


def _run(catalog: Catalog, task_keys: tuple[tuple[str, str], ...], app_names: tuple[str, ...],
         tables: list[_PlanTables], spans: list[Span], kinds: np.ndarray, arr_s: np.ndarray, apps_of: np.ndarray,
         rng: np.random.Generator, end_ms: float) -> _Served:
    """Serve the arrivals with the workers of ``spans`` (``kinds[span, task]``: equal kinds carry their replicas'
    queues from one span to the next), task by task in topological order (see the module docstring)."""
    index = {k: i for i, k in enumerate(task_keys)}
    n_tasks = len(task_keys)
    span_ms = np.array([1000.0 * s.start_s for s in spans])
    span_source = np.array([s.source for s in spans], dtype=np.int64)
    span_end = np.append(span_ms[1:], max(end_ms, span_ms[-1]))
    busy, replica_ms = np.zeros(n_tasks), np.zeros(n_tasks)
    items_n, items_drop = np.zeros(n_tasks, dtype=np.int64), np.zeros(n_tasks, dtype=np.int64)
    batches, max_batch = np.zeros(n_tasks, dtype=np.int64), np.zeros(n_tasks, dtype=np.int64)
    mean_batch, mean_wait = np.full(n_tasks, np.nan), np.full(n_tasks, np.nan)
    task_end: list[np.ndarray] = [np.empty(0)] * n_tasks
    task_drop: list[np.ndarray] = [np.empty(0, dtype=bool)] * n_tasks
    req_arr: list[np.ndarray] = []
    for ai, name in enumerate(app_names):
        app = catalog.apps[name]
        slo = app.latency_slo_ms
        ra = np.sort(arr_s[apps_of == ai] * 1000.0)
        req_arr.append(ra)
        n_req = ra.size
        children = {t: [v for (u, v) in app.edges if u == t] for t in app.task_names}
        # per span, the chain of minimum service times from each task on (early drop), and each edge's fan-out
        rem = [dict[str, float]() for _ in tables]
        for k, tab in enumerate(tables):
            for t in reversed(app.topological_order):
                rem[k][t] = float(tab.min_ms[tab.index[(name, t)]]) + max((rem[k][v] for v in children[t]),
                                                                          default=0.0)
        done: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # task -> (completion, request, span)
        for t in app.topological_order:
            ti = index[(name, t)]
            parents = [u for (u, v) in app.edges if v == t]
            if not parents:
                item_arr, item_req = ra, np.arange(n_req)
            else:
                parts_a, parts_r = [], []
                for u in parents:
                    comp_u, req_u, span_u = done[u]
                    fan = np.array([app.fanout(u, t, tab.plan.apps[name][u].variant) for tab in tables])
                    f = fan[span_source][span_u]
                    k = np.floor(f).astype(np.int64) + (rng.random(comp_u.size) < f - np.floor(f))
                    parts_a.append(np.repeat(comp_u, k))
                    parts_r.append(np.repeat(req_u, k))
                item_arr, item_req = np.concatenate(parts_a), np.concatenate(parts_r)
                order = np.argsort(item_arr, kind="stable")
                item_arr, item_req = item_arr[order], item_req[order]
            deadline = ra[item_req] + slo
            span_of = np.searchsorted(span_ms, item_arr, side="right") - 1
            np.maximum(span_of, 0, out=span_of)
            rem_t = np.array([rem[k][t] for k in span_source])
            late = item_arr + rem_t[span_of] > deadline  # cannot make it even if served at once: dropped on arrival
            q_arr, q_req, q_dl, q_span = item_arr[~late], item_req[~late], deadline[~late], span_of[~late]
            z = np.maximum(rng.standard_normal(q_arr.size), -_Z_CLIP)
            start, end = np.full(q_arr.size, np.nan), np.full(q_arr.size, np.nan)
            dropped = np.ones(q_arr.size, dtype=bool)
            cuts = np.searchsorted(q_span, np.arange(len(spans) + 1))
            free = np.empty(0)
            nb = mb = 0
            for j, span in enumerate(spans):
                tab = tables[span.source]
                row = tab.index[(name, t)]
                n_rep = int(span.replicas[ti])
                carried = free[:n_rep] if j and kinds[j, ti] == kinds[j - 1, ti] else np.empty(0)
                free = np.concatenate([carried, np.full(n_rep - carried.size, span_ms[j])])
                replica_ms[ti] += n_rep * (span_end[j] - span_ms[j])
                lo, hi = cuts[j], cuts[j + 1]
                if hi == lo or n_rep == 0:
                    continue
                b, sl = int(tab.batch[row]), slice(lo, hi)
                busy_j, nb_j, mb_j = _serve(q_arr[sl], q_dl[sl], rem[span.source][t], b, float(tab.tau[row]), free,
                                            tab.scale[row] * np.exp(tab.sigma[row] * z[sl]), tab.factors[row],
                                            start[sl], end[sl], dropped[sl])
                busy[ti] += busy_j
                nb += nb_j
                mb = max(mb, mb_j)
            served = ~dropped
            done[t] = (end[served], q_req[served], q_span[served])
            tend = np.full(n_req, -np.inf)
            np.maximum.at(tend, q_req[served], end[served])
            tdrop = np.zeros(n_req, dtype=bool)
            tdrop[item_req[late]] = True
            tdrop[q_req[dropped]] = True
            task_end[ti], task_drop[ti] = tend, tdrop
            items_n[ti] = item_arr.size
            items_drop[ti] = int(late.sum()) + int(dropped.sum())
            batches[ti], max_batch[ti] = nb, mb
            if nb:
                mean_batch[ti] = served.sum() / nb
                mean_wait[ti] = float((start[served] - q_arr[served]).mean())
    return _Served(req_arr, task_end, task_drop, busy, replica_ms, items_n, items_drop, batches, max_batch,
                   mean_batch, mean_wait)


def _outcomes(served: _Served, task_app: np.ndarray, app: int, slo_ms: float,
              tasks: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per request of app ``app``: latency (ms), dropped, violated, over ``tasks`` (default: all of the app's)."""
    ra = served.req_arrival[app]
    tids = tasks if tasks is not None else [i for i in range(task_app.size) if task_app[i] == app]
    end = np.max([served.task_end[i] for i in tids], axis=0)
    drop = np.any([served.task_drop[i] for i in tids], axis=0)
    lat = end - ra
    return lat, drop, drop | (lat > slo_ms)


def simulate(compiled: CompiledPlan, catalog: Catalog, plan: Plan, arrivals_s: np.ndarray, app_index: np.ndarray,
             seed: int, horizon_s: float | None = None) -> SimMetrics:
    """Simulate ``plan`` (compiled as ``compiled``) serving requests arriving at ``arrivals_s`` (seconds) for the
    apps ``app_index`` (into ``compiled.app_names``), from empty queues. Deterministic given ``seed``.

    :param horizon_s: the time the arrivals span, for utilisation and rates (default: last - first arrival).
    """
    c = compiled
    arr_s, apps_of = _checked(arrivals_s, app_index, c.n_apps)
    if horizon_s is None:
        horizon_s = float(arr_s.max() - arr_s.min()) if arr_s.size > 1 else 0.0
    horizon = max(float(horizon_s), 1e-9)
    first = float(arr_s.min()) if arr_s.size else 0.0
    spans = [Span(first, 0, c.replicas, False)]
    served = _run(catalog, c.task_keys, c.app_names, [_PlanTables.of(catalog, plan, c)], spans,
                  np.zeros((1, len(c.task_keys)), dtype=np.int64), arr_s, apps_of, np.random.default_rng(seed),
                  1000.0 * (first + horizon))
    n_apps = c.n_apps
    slo = np.array([catalog.apps[name].latency_slo_ms for name in c.app_names])
    index = {k: i for i, k in enumerate(c.task_keys)}
    n_paths = len(c.path_keys)
    path_p95 = np.full(n_paths, np.nan)
    path_v = np.zeros(n_paths)
    for pi, (name, path) in enumerate(c.path_keys):
        ai = c.app_names.index(name)
        if not served.req_arrival[ai].size:
            continue
        lat, drop, violated = _outcomes(served, c.task_app, ai, slo[ai], [index[(name, t)] for t in path])
        path_v[pi] = float(violated.mean())
        if (~drop).any():
            path_p95[pi] = float(np.percentile(lat[~drop], 95))
    requests = np.array([r.size for r in served.req_arrival], dtype=np.int64)
    dropped_n = np.zeros(n_apps, dtype=np.int64)
    app_v = np.zeros(n_apps)
    app_p95 = np.full(n_apps, np.nan)
    hists = np.zeros((n_apps, N_BINS), dtype=np.int64)
    edges = np.stack([np.linspace(0.0, 2.0 * s, N_BINS + 1) for s in slo]) if n_apps else np.zeros((0, N_BINS + 1))
    for ai in range(n_apps):
        if not requests[ai]:
            continue
        lat, drop, violated = _outcomes(served, c.task_app, ai, slo[ai])
        dropped_n[ai] = int(drop.sum())
        app_v[ai] = float(violated.mean())
        ok = lat[~drop]
        if ok.size:
            app_p95[ai] = float(np.percentile(ok, 95))
            hists[ai] = np.histogram(np.minimum(ok, edges[ai, -1]), bins=edges[ai])[0]
    violated_n = app_v * requests
    total = int(requests.sum())
    return SimMetrics(
        utilisation=served.busy_ms / (horizon * 1000.0 * c.replicas), path_p95_ms=path_p95, path_violation=path_v,
        app_violation=app_v, app_violated_rps=violated_n / horizon,
        violation=float(violated_n.sum() / total) if total else 0.0,
        path_accuracy=np.array(c.path_accuracy), slices_used=float(c.slices_used), gpus_used=int(c.gpus_used),
        app_p95_ms=app_p95, histograms=hists, histogram_edges_ms=edges, requests=requests, dropped=dropped_n,
        demand_rps=requests / horizon, items=served.items, items_dropped=served.items_dropped,
        batches=served.batches, max_batch=served.max_batch, mean_batch=served.mean_batch,
        mean_wait_ms=served.mean_wait_ms, horizon_s=horizon)


def _checked(arrivals_s: np.ndarray, app_index: np.ndarray, n_apps: int) -> tuple[np.ndarray, np.ndarray]:
    arr_s = np.asarray(arrivals_s, dtype=float)
    apps_of = np.asarray(app_index, dtype=np.int64)
    if arr_s.shape != apps_of.shape or arr_s.ndim != 1:
        raise ValueError("arrivals_s and app_index must be 1-D arrays of the same length")
    if apps_of.size and (apps_of.min() < 0 or apps_of.max() >= n_apps):
        raise ValueError(f"app_index must lie in [0, {n_apps})")
    return arr_s, apps_of


def arrivals_of(trace: Trace, apps: Sequence[str], rng: np.random.Generator, start_s: float,
                end_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The trace's Poisson arrivals in ``[start_s, end_s)`` for ``apps``: (times in s, index into ``apps``); the
    trace's other apps are left out, and apps the trace lacks get no requests."""
    times, app = trace.arrivals(rng, start_s, end_s)
    to_apps = np.array([apps.index(a) if a in apps else -1 for a in trace.apps], dtype=np.int64)
    mapped = to_apps[app] if app.size else app
    keep = mapped >= 0
    return times[keep], mapped[keep]


def simulate_trace(catalog: Catalog, plan: Plan, trace: Trace, start_s: float, end_s: float, seed: int) -> SimMetrics:
    """Simulate ``plan`` over the trace's Poisson arrivals in ``[start_s, end_s)`` (apps the plan does not serve
    are left out; apps the plan serves but the trace lacks get no requests)."""
    compiled = compile_plan(catalog, plan)
    times, app = arrivals_of(trace, compiled.app_names, np.random.default_rng(seed), start_s, end_s)
    return simulate(compiled, catalog, plan, times, app, seed + 1, horizon_s=end_s - start_s)


def simulate_spans(catalog: Catalog, plans: list[Plan], spans: list[Span], arrivals_s: np.ndarray,
                   app_index: np.ndarray, app_names: tuple[str, ...], seed: int, end_s: float
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """One continuous simulation of the workers in force over time (``jigsaw.env.transitions.schedule``: span by
    span, each task served by the span's replicas configured as in its decision's plan; queues carry over, and a
    worker kept from one span to the next keeps its queue). Every plan serves ``app_names``; ``app_index`` indexes
    them; the spans' replicas are in ``task_order(catalog, app_names)``. Returns per app (arrival times in s, sorted;
    violated: dropped or over the SLO) of its requests."""
    arr_s, apps_of = _checked(arrivals_s, app_index, len(app_names))
    compiled = [compile_plan(catalog, p) for p in plans]
    task_keys = task_order(catalog, app_names)
    tables = [_PlanTables.of(catalog, p, c) for p, c in zip(plans, compiled, strict=True)]
    kind_ids: dict[tuple[str, str, int], int] = {}
    kinds = np.array([[kind_ids.setdefault((c.variant, c.segment, c.mps_workers), len(kind_ids))
                       for c in (plans[s.source].apps[a][t] for a, t in task_keys)] for s in spans], dtype=np.int64)
    served = _run(catalog, task_keys, app_names, tables, spans, kinds, arr_s, apps_of, np.random.default_rng(seed),
                  1000.0 * end_s)
    task_app = np.array([app_names.index(a) for a, _ in task_keys])
    return [(served.req_arrival[ai] / 1000.0, _outcomes(served, task_app, ai, catalog.apps[name].latency_slo_ms)[2])
            if served.req_arrival[ai].size else (np.empty(0), np.empty(0, dtype=bool))
            for ai, name in enumerate(app_names)]

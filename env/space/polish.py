"""Polish: a local search for fewer slices that the controller's policy proposer runs on each proposal (not the
environment's steps by default: it costs several of them).

It splits each app's latency SLO between its tasks exactly, for the proposal's variants and provisioning
(``split``: a dynamic programme over the app's tree of tasks for the fewest workers x share; the five weight
levels cannot say the ILP's 151 / 8 / 41 ms along a chain), then steps single variants down, and a variant down
with another on the same path up (and, in an app whose paths join, which keeps its weights' budgets, budget
weights by one), while they save slices, fit and keep every path's predicted p95 within its SLO. The policy's
single-level steps under the accuracy masks stall on costly variant mixes (a path's accuracy held by its most
expensive task) and, at the cluster's edge, on plans that only fit squeezed. ``DecisionSpace.polish`` runs the
search; this module holds its kernels.
"""

from __future__ import annotations

import numpy as np

from jigsaw.env.space.decode import Sized, apps_ok, budgets, cell, first_fitting, instances, items, loads, replicas_for
from jigsaw.env.space.levels import BUDGET_LEVELS, BUDGET_RESOLUTION_MS, kernel
from jigsaw.env.space.tables import Accuracy, SplitTables, fitting_of, sizing_of, steps_of


@kernel
def split(variant, budget, load, share, lookup, tree, app, config, cells):  # pragma: no cover - compiled
    """Into ``config`` and ``cells``, per task the configuration of its ``variant`` and its budget in cells of
    BUDGET_RESOLUTION_MS that together take the fewest workers x ``share`` (one row of the ladder) for ``load``, over
    every split of each path's SLO between its tasks; tasks not ``free`` keep ``budget``. A dynamic programme over
    each app's tree, leaves first: the least cost of a task's subtree for every number of cells left to it, where
    the task takes the cells of one of its breakpoints (a configuration that costs less than every one needing fewer
    cells). -1 where no split fits. Only the tasks of ``app`` (-1: every app's); the others' entries stay."""
    by_need, need_cell, order, parent, free, slo_cells = (tree.by_need, tree.need_cell, tree.order, tree.parent,
                                                          tree.free, tree.slo_cells)
    inv_thr, task_app = lookup.inv_thr, lookup.task_app
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
        top[t] = slo_cells[t] if free[t] else cell(budget[t])
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


@kernel
def decode_split(variant, weight, provision, forecast, shares, sizing, accuracy, fitting, tree
                 ):  # pragma: no cover - compiled
    """``decode`` with each level's budgets ``split``'s (its cells; the weights' where not ``free``). Its own
    kernel, so that the environment's decode neither takes nor types the split's tables."""
    sizing, accuracy, fitting, tree = sizing_of(sizing), Accuracy(*accuracy), fitting_of(fitting), SplitTables(*tree)
    lookup = sizing.lookup
    n, levels = variant.size, shares.shape[0]
    budget = budgets(weight, sizing.budgeting)
    f = items(variant, sizing.chains)
    load = loads(f, provision, forecast, lookup)
    config, replicas = np.empty((levels, n), dtype=np.int64), np.empty((levels, n), dtype=np.int64)
    split_budgets, cells = np.empty((levels, n)), np.empty(n, dtype=np.int64)
    for level in range(levels):
        split(variant, budget, load, shares[level], lookup, tree, -1, config[level], cells)
        for t in range(n):
            replicas[level, t] = replicas_for(max(config[level, t], 0), load[t], lookup.inv_thr)
            split_budgets[level, t] = cells[t] * BUDGET_RESOLUTION_MS if tree.free[t] and cells[t] > 0 else budget[t]
    counts, slices, gpus, level = first_fitting(config, replicas, fitting)
    return Sized(split_budgets[level], f, config[level], replicas[level], counts, slices, gpus, level,
                 apps_ok(variant, config[0], accuracy))[:]  # plain: see decode


@kernel
def moves(variant, weight, provision, forecast, share, sizing, accuracy, fitting, tree, steps
          ):  # pragma: no cover - compiled
    """``DecisionSpace.polish``'s moves from (variant, weight) as rows of variants and weights, each with its
    slices, budgets split (``split`` of the one row ``share``: a move re-splits only its own app), and whether
    every app is configured and within its accuracy SLO. Weights move only where they set the budgets (not
    ``tree.free``: the split ignores them), and not under fixed budgets."""
    sizing, accuracy, fitting = sizing_of(sizing), Accuracy(*accuracy), fitting_of(fitting)  # named (``tables``)
    tree, steps = SplitTables(*tree), steps_of(steps)
    budgeting, chains, lookup, counting = sizing.budgeting, sizing.chains, sizing.lookup, fitting.counting
    n, task_app = variant.size, lookup.task_app
    most = n + n * n + 2 * n
    variants, weights = np.empty((most, n), dtype=np.int64), np.empty((most, n), dtype=np.int64)
    moved_app = np.empty(most, dtype=np.int64)
    k = 0
    for t in range(n):
        if variant[t] == 0:
            continue
        for u in range(-1, n):  # -1: t down alone; else t down and u, on a path with t, up
            if u >= 0 and not (steps.co_path[t, u] and variant[u] < steps.n_variants[u] - 1):
                continue
            variants[k], weights[k], moved_app[k] = variant, weight, task_app[t]
            variants[k, t] -= 1
            if u >= 0:
                variants[k, u] += 1
            k += 1
    for t in range(n):
        if budgeting.fixed_ms.size == 0 and not tree.free[t]:
            for step in (-1, 1):
                if 1 <= weight[t] + step <= BUDGET_LEVELS:
                    variants[k], weights[k], moved_app[k] = variant, weight, task_app[t]
                    weights[k, t] += step
                    k += 1
    base, cells = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    split(variant, budgets(weight, budgeting), loads(items(variant, chains), provision, forecast, lookup), share[0],
          lookup, tree, -1, base, cells)
    slices, ok = np.empty(k), np.empty(k, dtype=np.bool_)
    config, replicas = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    counts, workers = np.empty(counting.profile_slices.size, dtype=np.int64), np.empty(counting.seg_workers.size)
    for i in range(k):
        load = loads(items(variants[i], chains), provision, forecast, lookup)
        config[:] = base
        split(variants[i], budgets(weights[i], budgeting), load, share[0], lookup, tree, moved_app[i], config, cells)
        for t in range(n):
            replicas[t] = replicas_for(max(config[t], 0), load[t], lookup.inv_thr)
        slices[i] = instances(config, replicas, counting, counts, workers)
        ok[i] = apps_ok(variants[i], config, accuracy).all()
    return variants[:k], weights[:k], slices, ok

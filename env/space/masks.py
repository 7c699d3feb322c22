"""Action masks: per task which of the 3 + 3 + 5 choices of ACTION_NVEC may be taken from the current plan.

A head's mask cannot see the other heads' choices, so masks are conservative per head and ``repair`` handles
the joint effects: a policy that only ever sees allowed choices learns from plans that mean what it chose.
"""

from __future__ import annotations

import numpy as np

from jigsaw.env.space.decode import cheapest, items, loads, replicas_for, size
from jigsaw.env.space.levels import BUDGET_LEVELS, kernel
from jigsaw.env.space.tables import Accuracy, fitting_of, sizing_of, steps_of


@kernel
def variant_steps_ok(variant, budget, accuracy, neighbours):  # pragma: no cover - compiled
    """[n_tasks, 2]: whether the variant a step down, up has a configuration at the task's budget and keeps the
    tightest path through the task within its accuracy SLO."""
    incidence = accuracy.incidence
    n, n_paths = variant.size, incidence.shape[0]
    room = np.full(n, np.inf)  # how far each task's accuracy may drop
    for p in range(n_paths):
        x = 0.0
        for t in range(n):
            x += incidence[p, t] * accuracy.log_accuracy[t, variant[t]]
        for t in range(n):
            if incidence[p, t] > 0:
                room[t] = min(room[t], x - accuracy.log_slo[p])
    ok = np.empty((n, 2), dtype=np.bool_)
    for t in range(n):
        for j in range(2):
            ok[t, j] = (neighbours.min_budget_ms[t, variant[t], j] <= budget[t] + 1e-9
                        and neighbours.accuracy_drop[t, variant[t], j] <= room[t] + 1e-9)
    return ok


@kernel
def masks(variant, weight, provision, budget, items_, config, replicas, slices, forecast, share, sizing, accuracy,
          fitting, steps):  # pragma: no cover - compiled
    """``DecisionSpace.masks``: [n_tasks, 11] per task the allowed choices of ACTION_NVEC, for the plan (budget ..
    slices) decoded from the levels at ``forecast``, sized at its row ``share`` of the share ladder."""
    sizing, accuracy, steps = sizing_of(sizing), Accuracy(*accuracy), steps_of(steps)  # named (``tables``)
    budgeting, lookup, instance_slices = sizing.budgeting, sizing.lookup, steps.instance_slices
    n = variant.size
    out = np.ones((n, 11), dtype=np.bool_)
    free = fitting_of(fitting).packing.total_slices - slices + 1e-9
    steps_ok = variant_steps_ok(variant, budget, accuracy, steps.neighbours)
    per_replica, cost = np.empty(n), np.empty(n)
    for t in range(n):
        per_replica[t] = instance_slices[max(config[t], 0)]
        cost[t] = replicas[t] * per_replica[t]  # growth is charged whole instances
    total_cost = cost.sum()
    load = loads(items_, provision, forecast, lookup)
    pick, scratch = np.empty(1, dtype=np.int64), np.empty(1)
    is_fanout = np.zeros(n, dtype=np.bool_)
    is_fanout[steps.fanout_tasks] = True
    for t in range(n):
        for j in range(2):  # a variant step down, up
            nv = steps.neighbours.variant[t, variant[t], j]
            ok = steps_ok[t, j]
            if ok and not is_fanout[t]:  # its own items do not depend on its variant
                cheapest(t, nv, budget[t], load[t], lookup, share, pick, scratch)
                k = max(pick[0], 0)
                ok = replicas_for(k, load[t], lookup.inv_thr) * instance_slices[k] - cost[t] <= free
            elif ok:  # a fan-out source's variant also changes the items downstream: the whole plan re-sized
                moved = variant.copy()
                moved[t] = nv
                _, moved_config, moved_replicas = size(moved, budget, items(moved, sizing.chains), provision, forecast,
                                                       lookup, share)
                whole = 0.0
                for u in range(n):
                    whole += moved_replicas[0, u] * instance_slices[max(moved_config[0, u], 0)]
                ok = whole - total_cost <= free
            out[t, 2 * j] = ok
    if budgeting.fixed_ms.size:
        out[:, 3] = False
        out[:, 5] = False
    else:
        incidence, slo_ms = budgeting.incidence, budgeting.slo_ms
        need, short = np.empty(n), np.empty(n, dtype=np.bool_)
        path_weight = incidence @ weight.astype(np.float64)
        for t in range(n):
            heaviest = 0.0  # the weight sum budgets() divides by (not read off the budget: a polished plan's is split)
            for p in range(path_weight.size):
                heaviest = max(heaviest, incidence[p, t] * path_weight[p])
            need[t] = steps.min_budget_ms[t, variant[t]] - 1e-9
            out[t, 3] = weight[t] > 1 and need[t] <= slo_ms[t] * (weight[t] - 1) / max(heaviest - 1, 1e-9)
            short[t] = need[t] > slo_ms[t] * weight[t] / (heaviest + 1)
        for t in range(n):
            # raising w_t grows the heaviest path of every task sharing a path with t by at most one
            ok = weight[t] < BUDGET_LEVELS
            for u in range(n):
                ok = ok and not (steps.co_path[t, u] and short[u])
            out[t, 5] = ok
    for t in range(n):
        for k in range(4):  # provisioning steps -2, -1, +1, +2: columns 6, 7, 9, 10
            grow = cost[t] * steps.provision_ratio[provision[t], k] + per_replica[t]
            out[t, 6 + k + (k >= 2)] = steps.provision_ok[provision[t], k] and (steps.provision_down[k] or grow <= free)
    return out

"""Repair: proposed levels made valid against the previous, valid ones, so that every step yields a plan the
controller could serve.

A step that makes an app infeasible (no configuration fits a budget, or a path under the accuracy SLO) is
undone for that app. One that does not fit the GPUs has its provisioning raises undone, then drops to the lowest
level, then has its variant raises undone, then steps variants down: one task at a time, the one taking the most
slices whose step down keeps its paths within the accuracy SLOs and frees slices (cheaper variants, as the ILP
would choose). If demand alone exceeds the cluster, all replicas are then scaled down until the plan fits: the
plan is overloaded, and the performance model counts the excess as violated. If even one replica per task does
not fit, repair starts once more from the previous variants and budgets. One compiled call: a repair decodes up
to a dozen times, and each decode from Python would cost more in calling than in computing.
"""

from __future__ import annotations

import math

import numpy as np

from jigsaw.env.space.decode import Sized, decode, gpus_of, instances
from jigsaw.env.space.levels import SQUEEZE_STEP, SQUEEZE_TRIES, kernel
from jigsaw.env.space.tables import Accuracy, fitting_of, steps_of


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
def squeeze(d, fitting):  # pragma: no cover - compiled
    """``decode``'s plan ``d`` with the replicas scaled down by a common factor, from the share of slices that
    fit, until the plan fits (or SQUEEZE_TRIES)."""
    counting, packing = fitting
    factor = min(1.0, packing.total_slices / max(d.slices, 1e-9))
    config_or_first = np.maximum(d.config, 0)
    reps = np.empty_like(d.replicas)
    counts, workers = np.empty_like(d.counts), np.empty(counting.seg_workers.size)
    slices, gpus = d.slices, d.gpus
    for _ in range(SQUEEZE_TRIES):
        for t in range(reps.size):
            reps[t] = max(1.0, math.floor(d.replicas[t] * factor))
        slices = instances(config_or_first, reps, counting, counts, workers)
        gpus = gpus_of(counts, packing)
        if gpus <= packing.n_gpus:
            break
        factor *= SQUEEZE_STEP
    return Sized(d.budget_ms, d.items, d.config, reps, counts, slices, gpus, d.level, d.app_ok)


@kernel
def repair(prev_variant, prev_weight, prev_provision, variant, weight, provision, forecast, shares, sizing, accuracy,
           fitting, steps):  # pragma: no cover - compiled
    """``DecisionSpace.repair``: the repaired levels, ``decode``'s plan for them (squeezed, ``overloaded``, where
    even that did not fit), and the repairs counted. A plan that fits at none of it, at one replica per task, is
    tried again from the previous configuration (at the provisioning reached), once."""
    tables = sizing, accuracy, fitting  # decode's, as Python passes them: decode compiles once
    accuracy, fitting, steps = Accuracy(*accuracy), fitting_of(fitting), steps_of(steps)  # named (``tables``)
    task_app, n_gpus = accuracy.task_app, fitting.packing.n_gpus
    variant, weight, provision = variant.copy(), weight.copy(), provision.copy()
    repairs = 0
    for attempt in range(2):
        overloaded = False
        d = Sized(*decode(variant, weight, provision, forecast, shares, *tables))
        if not d.app_ok.all():  # undo the failing apps' variant and budget moves
            for t in range(variant.size):
                if not d.app_ok[task_app[t]]:
                    variant[t], weight[t] = prev_variant[t], prev_weight[t]
            repairs += int((~d.app_ok).sum())
            d = Sized(*decode(variant, weight, provision, forecast, shares, *tables))
        if d.gpus <= n_gpus:
            break
        provision = np.minimum(provision, prev_provision)  # the provisioning raises undone, then the lowest level
        repairs += 1
        d = Sized(*decode(variant, weight, provision, forecast, shares, *tables))
        if d.gpus <= n_gpus:
            break
        provision = np.zeros_like(provision)
        repairs += 1
        d = Sized(*decode(variant, weight, provision, forecast, shares, *tables))
        if d.gpus <= n_gpus:
            break
        lowered = np.minimum(variant, prev_variant)
        if (lowered != variant).any():  # undo this step's variant raises
            e = Sized(*decode(lowered, weight, provision, forecast, shares, *tables))
            if e.app_ok.all():
                variant, d, repairs = lowered, e, repairs + 1
        while d.gpus > n_gpus:  # variants down, each time the task taking the most slices whose step down frees some
            can = (variant > 0) & variant_steps_ok(variant, d.budget_ms, accuracy, steps.neighbours)[:, 0]
            candidates = np.flatnonzero(can)
            taken = d.replicas[candidates] * steps.instance_slices[np.maximum(d.config[candidates], 0)]
            stepped = False
            for t in candidates[np.argsort(-taken, kind="mergesort")]:
                trial = variant.copy()
                trial[t] -= 1
                e = Sized(*decode(trial, weight, provision, forecast, shares, *tables))
                if e.app_ok.all() and e.slices < d.slices:
                    variant, d, repairs, stepped = trial, e, repairs + 1, True
                    break
            if not stepped:
                break
        if d.gpus > n_gpus:
            d, overloaded = squeeze(d, fitting), True
        if d.gpus <= n_gpus or attempt or ((variant == prev_variant).all() and (weight == prev_weight).all()):
            break
        repairs += 1  # one replica each is too much: keep the previous configuration, which fitted
        variant, weight, prev_provision = prev_variant.copy(), prev_weight.copy(), provision
    return variant, weight, provision, d[:], overloaded, repairs  # plain: see decode

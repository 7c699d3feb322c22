"""The policy's proposer, one decision: the same code steps the environment (``JigsawEnv.step``) and proposes in
deployment (``jigsaw.agents.ppo.Policy.proposer``), so that a policy trains on the plans it will propose.

The agent decides what an interval-by-interval optimiser cannot know, because its value shows only across
intervals where changes take time (``jigsaw.env.transitions``); the exact parts beneath it do the rest. Per app,
two choices:

* **capacity**: how much to provision above the forecast x headroom, one of APP_CAPACITY (every task of the app
  at that level of ``jigsaw.env.space.PROVISION_LEVELS``): spare capacity ahead of a rise or a burst;
* **hold**: ``replan``: the app takes a fresh plan -- the space's levels repaired for the forecast and
  polished (``DecisionSpace.polish``: variants traded down and the SLO split exactly while they save slices), so
  its variants and segment types may change and workers restart; ``follow``: the app keeps the kinds of workers
  in force (variant, segment type, batch and budget per task) and only its replica counts follow the forecast
  x headroom x capacity: added workers start beside the ones serving, removed ones stop, nobody restarts;
  ``hold``: as ``follow``, but never fewer replicas than in force (capacity released only by a later
  ``follow`` or ``replan``: hysteresis, chosen by the agent).

A held plan that does not fit the GPUs drops its holds (``hold`` to ``follow``, then to ``replan``): the fresh
plan always fits. The observation adds per app how well the workers in force cover the forecast and the slices
they take, the two figures a hold decision weighs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from jigsaw.env.plan import Plan
from jigsaw.env.space import HISTORY, OBS_HIGH, PROVISION_LEVELS, DecisionSpace, Decoded, Levels

HOLD_CHOICES = ("follow", "hold", "replan")  # "hold", in the middle, is the no-change choice: nothing restarts or goes
FOLLOW, HOLD, REPLAN = range(len(HOLD_CHOICES))
APP_CAPACITY = np.array([0, 2, 5, 7, 9])  # indices into PROVISION_LEVELS: 1.0, 1.1, 1.3, 1.5, 2.0 x headroom
HOLD_FEATURES = 3  # per app: the forecast's coverage by the workers in force, their slices, a replan's saving


@dataclass(frozen=True)
class Proposal:
    levels: Levels  # the fresh plan's levels, the next step's start (held apps keep their workers, not levels)
    decoded: Decoded  # the plan proposed: the fresh plan with the held apps' workers kept
    repairs: int
    held: np.ndarray  # [n_apps] the hold choice applied (after any dropped for the GPUs)


class Proposer:
    """The proposer's decision on one ``DecisionSpace``: per app its capacity level and hold choice applied. The
    action is flat: the hold choice of every app, then the capacity choice (an index into APP_CAPACITY) of every
    app."""

    def __init__(self, space: DecisionSpace, polish: bool = True) -> None:
        self.space, self.polish = space, polish
        n_apps = len(space.apps)
        self.nvec = np.array([len(HOLD_CHOICES)] * n_apps + [len(APP_CAPACITY)] * n_apps, dtype=np.int64)
        self.observation_size = space.observation_size + HOLD_FEATURES * n_apps
        self._capacity_factor = PROVISION_LEVELS * space.opts.headroom
        self._n_segments = len(space.gpu.segments)
        self._n_profiles = len(space.profile_slices)
        self._task_slices = space.c_slices  # a worker's compute slices, per configuration
        self._config_of: dict[tuple[int, int, int, int], int] | None = None  # decoded_of's lookup, built once

    def step(self, levels: Levels, in_force: Decoded | None, action: np.ndarray, forecast: np.ndarray) -> Proposal:
        """``action`` (flat, ``nvec``) applied from ``levels`` at ``forecast`` (req/s per app), holding the workers
        of ``in_force`` (None: nothing to hold) where it says so."""
        space = self.space
        a = np.asarray(action, dtype=np.int64).reshape(-1)
        if a.size != self.nvec.size:
            raise ValueError(f"action has {a.size} entries; the space takes {self.nvec.size}")
        n_apps = len(space.apps)
        capacity = APP_CAPACITY[np.clip(a[n_apps:], 0, len(APP_CAPACITY) - 1)]
        levels, fresh, repairs = space.repair(levels, levels.replace(provision=capacity[space.task_app]), forecast)
        if self.polish:
            levels, fresh = space.polish(levels, fresh, forecast)
        held = np.full(n_apps, REPLAN) if in_force is None else np.clip(a[:n_apps], 0, len(HOLD_CHOICES) - 1)
        while (held != REPLAN).any():
            decoded = self.held(fresh, levels, in_force, held, forecast)
            if decoded.gpus <= space.n_gpus:
                return Proposal(levels, decoded, repairs, held)
            held = np.where(held == HOLD, FOLLOW, REPLAN) if (held == HOLD).any() else np.full_like(held, REPLAN)
        return Proposal(levels, fresh, repairs, held)

    def warm_up(self) -> None:
        """Run every compiled kernel a decision calls, once, on a unit forecast: numba compiles them on their first
        use in a process, or loads them from its cache (seconds either way), which no decision's time should hold."""
        space, n_apps = self.space, len(self.space.apps)
        f = np.ones(n_apps)
        levels, decoded, _ = space.repair(space.initial(), space.initial(), f)
        metrics = space.evaluate(decoded, f)
        self.observation(levels, decoded, metrics, space.demand_features(np.ones((HISTORY, n_apps)), f), decoded, f)
        for choice in (FOLLOW, HOLD, REPLAN):
            self.step(levels, decoded, np.r_[np.full(n_apps, choice), np.zeros(n_apps, dtype=np.int64)], f)
        self.plan(levels, decoded)

    def held(self, fresh: Decoded, levels: Levels, in_force: Decoded, held: np.ndarray,
             forecast: np.ndarray) -> Decoded:
        """``fresh`` with the tasks of apps ``held`` (per app a HOLD_CHOICES index) on ``in_force``'s workers: its
        configurations, budgets and items; replicas for the forecast x headroom x level (``hold``: at least those
        in force); the instances, slices and GPUs recounted (unpacked GPUs: ``gpus`` says whether it fits)."""
        space = self.space
        task_hold = held[space.task_app]
        kept = task_hold != REPLAN
        config = np.where(kept, in_force.config, fresh.config)
        load = forecast[space.task_app] * in_force.items * self._capacity_factor[levels.provision]
        need = np.maximum(1, np.ceil(load / space.c_thr[in_force.config] - 1e-9)).astype(np.int64)
        need = np.where(task_hold == HOLD, np.maximum(need, in_force.replicas), need)
        replicas = np.where(kept, need, fresh.replicas)
        counts, slices = self.footprint(config, replicas)
        return replace(fresh, config=config, budget_ms=np.where(kept, in_force.budget_ms, fresh.budget_ms),
                       items=np.where(kept, in_force.items, fresh.items), replicas=replicas, counts=counts,
                       slices=slices, gpus=space.packer.gpus_needed(counts),
                       app_ok=fresh.app_ok | (held != REPLAN), overloaded=fresh.overloaded and not kept.all())

    def plan(self, levels: Levels, d: Decoded) -> Plan:
        """``d`` as a ``Plan``: each task's variant is its configuration's (a held task's is the one in force, not
        the levels')."""
        return self.space.plan(levels.replace(variant=self.space.c_variant[d.config]), d)

    def footprint(self, config: np.ndarray, replicas: np.ndarray) -> tuple[tuple[int, ...], float]:
        """MIG instances per profile for ``replicas`` workers of each task's ``config`` (workers of one segment
        type share instances), and their compute slices."""
        space = self.space
        workers = np.bincount(space.c_segment[config], weights=replicas, minlength=self._n_segments)
        instances = np.ceil(workers / space.seg_workers - 1e-9)
        counts = np.bincount(space.seg_profile, weights=instances, minlength=self._n_profiles).astype(np.int64)
        return tuple(counts.tolist()), float(counts @ space.profile_slices)

    def masks(self) -> np.ndarray:
        """Flat booleans for MaskablePPO: every choice (a hold the GPUs cannot take is dropped, and capacity the
        cluster cannot hold is repaired down, by ``step``: no choice is ever invalid)."""
        return np.ones(int(self.nvec.sum()), dtype=bool)

    def observation(self, levels: Levels, decoded: Decoded, metrics: object, demand_features: np.ndarray,
                    in_force: Decoded, forecast: np.ndarray) -> np.ndarray:
        """The space's observation of ``decoded`` (the agent's last proposal) and, per app, what a hold weighs: the
        capacity of the workers in force over the forecast x headroom at its least covered task (a hold needs
        replicas added below 1), their compute slices over the cluster's, and the slices a replan at the levels
        (repaired, unpolished) would save over the cluster's (0 where it saves none)."""
        space = self.space
        load = forecast[space.task_app] * in_force.items * space.opts.headroom
        cover = np.where(load > 0, in_force.replicas * space.c_thr[in_force.config] / np.maximum(load, 1e-12), OBS_HIGH)
        per_app = np.full(len(space.apps), OBS_HIGH)
        np.minimum.at(per_app, space.task_app, cover)
        slices = self._app_slices(in_force)
        saving = slices - self._app_slices(space.repair(levels, levels, forecast)[1])
        extra = np.clip(np.concatenate([per_app / 2.0, slices, saving]), 0.0, OBS_HIGH).astype(np.float32)
        return np.concatenate([space.observation(levels, decoded, metrics, demand_features), extra])

    def _app_slices(self, d: Decoded) -> np.ndarray:
        """Per app, its workers' compute slices over the cluster's."""
        space = self.space
        return np.bincount(space.task_app, weights=d.replicas * self._task_slices[d.config],
                           minlength=len(space.apps)) / space.total_slices

    def decoded_of(self, plan: Plan, forecast: np.ndarray) -> Decoded | None:
        """``plan`` (one of these apps', e.g. the ILP's after a fallback) as a ``Decoded`` whose workers can be held;
        None when a task's configuration is none of the space's (the plan holds nothing)."""
        space = self.space
        if self._config_of is None:
            self._config_of = {(int(t), int(v), int(s), int(b)): k for k, (t, v, s, b) in enumerate(zip(
                space.c_task, space.c_variant, space.c_segment, space.c_batch, strict=True))}
        segments = {(s.mig_profile.name, s.mps_workers): i for i, s in enumerate(space.gpu.segments)}
        config, replicas, budget, variant = [], [], [], []
        try:
            for i, (a, t) in enumerate(space.tasks):
                tc = plan.apps[a][t]
                v = [x.name for x in space.catalog.app(a).task(t).variants].index(tc.variant)
                config.append(self._config_of[(i, v, segments[(tc.segment, tc.mps_workers)], tc.batch)])
                replicas.append(tc.replicas)
                budget.append(tc.budget_ms)
                variant.append(v)
        except (KeyError, ValueError):
            return None
        c, r = np.array(config, dtype=np.int64), np.array(replicas, dtype=np.int64)
        counts, slices = self.footprint(c, r)
        return Decoded(c, np.array(budget, dtype=float), space.items(np.array(variant, dtype=np.int64)), r, counts,
                       slices, space.packer.gpus_needed(counts), np.ones(len(space.apps), dtype=bool), False, forecast, 0)

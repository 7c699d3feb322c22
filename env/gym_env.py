"""``jigsaw/JigsawServe-v0``: the Gymnasium environment. One step is one control interval of a demand trace.

The agent's decision is the proposer's (``jigsaw.env.propose``: per task a variant, budget weight and
provisioning level of ``jigsaw.env.space``; per app whether to replan, follow the forecast with the workers in
force, or hold them). Each step runs the proposer the controller deploys (stepped, repaired, polished unless
``polish`` is off, holds applied) against the forecast demand (``forecast_rps``: the last interval's rate, or its
linear trend when demand rises, and at least the last interval's busiest trace bin, as the controller
forecasts); the plan is then judged against the demand that actually arrives in the interval: by
``jigsaw.env.perf`` (mode ``perf``, for training: every trace bin of the interval evaluated at once) or by
``jigsaw.env.sim`` (mode ``sim``: Poisson arrivals, request by request).

Plan changes take time (``jigsaw.env.transitions``): each step's plan is applied to the plan in force as the
reconciler applies it, and the change still under way, with its completion time, carries to the next step (a
decision made during a change waits; one still under way at the interval's end keeps the step's decision
waiting). In ``perf`` mode each trace bin is judged with the workers serving at its middle; in ``sim`` mode the
interval is simulated over them (``simulate_spans``, from empty queues: with early drops a queue holds at most
one SLO of work). ``info`` says whether workers changed and how long a change was under way (``changing_s``).

Reward = -slices held / cluster slices (time-weighted: during a change the old and the starting workers' slices) -
alpha * violation - beta * accuracy shortfall - delta * refused, with violation the demand-weighted share of
requests over the latency SLO (a change's cost shows here and in the slices held, not as a count of changes),
shortfall the mean over apps of max(0, SLO - worst path accuracy) / SLO, and refused 1 for a plan the controller's
check would hand to the ILP (``info["unsafe"]``: capacity under the forecast x headroom, which only a plan squeezed
to fit the GPUs has, or a path's p95 at the forecast over its SLO). Deployed, such a plan is never applied: without delta the
policy learned to sit on squeezed plans of accurate variants, which the controller refused half the time.

Traces are scaled so that the busiest bin of the training part needs ``load`` of the cluster's slices at
the best items/s per slice any configuration offers (``DecisionSpace.capacity_rps``): one number that
means the same on 4 and on 120 GPUs. With ``max_gpus`` each episode draws its cluster from ``gpus..max_gpus`` and
sees the demand scaled with it, so one policy learns to serve the range. ``part`` picks the train part (first 75 %), the
held-out part, or all of it; reset starts at a seeded random interval of a seeded random trace.

Registered as ``jigsaw/JigsawServe-v0`` on import of ``jigsaw.env`` (idempotent), so fresh processes
(SubprocVecEnv children) find it too; this module is imported only when the environment is made.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from jigsaw.env.plan import Plan
from jigsaw.env.propose import REPLAN, Proposer
from jigsaw.env.sim import arrivals_of, simulate_spans
from jigsaw.env.space import (
    BUDGET_LEVELS,
    HISTORY,
    OBS_HIGH,
    PROVISION_LEVELS,
    DecisionSpace,
    Decoded,
    Levels,
    forecast_rps,
)
from jigsaw.env.traces import DEFAULT_TRACE_DIR, H100_APPS, Trace, load_trace
from jigsaw.env.transitions import Span, change
from jigsaw.profiles.catalog import Catalog, load_catalog
from jigsaw.profiles.errors import ConfigError

DEFAULT_TRACES = tuple(str(DEFAULT_TRACE_DIR / f) for f in ("diurnal_3apps.csv", "bursty_3apps.csv", "spikes_3apps.csv",
                                                             "azure_code_3apps.csv"))


@dataclass(frozen=True)
class EnvConfig:
    apps: tuple[str, ...] = H100_APPS
    gpus: int = 4  # the cluster; with max_gpus, the smallest of the range an episode draws from
    max_gpus: int | None = None  # each episode draws its cluster from gpus..max_gpus (a policy serves the range)
    gpu_type: str = "h100"
    catalog: str | None = None  # a catalog directory or file; None: the built-in one
    traces: tuple[str, ...] = DEFAULT_TRACES
    part: str = "train"  # train | held_out | all
    interval_s: float = 60.0
    episode_intervals: int = 30
    load: float = 0.4  # the training part's busiest interval needs this share of the slices (best case)
    mode: str = "perf"  # perf | sim
    violation_weight: float = 10.0  # alpha
    accuracy_weight: float = 1.0  # beta
    fallback_weight: float = 1.0  # delta
    random_levels: bool = True  # reset from random valid levels (exploration), else from DecisionSpace.initial
    polish: bool = True  # polish each step's plan as the deployed proposer does (DecisionSpace.polish; slower)
    seed_offset: int = 0  # added to the simulator's seeds

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "env config") -> EnvConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(unknown)}", file=source, field="env",
                              fix=f"use keys of {', '.join(sorted(known))}")
        values = dict(doc)
        for key in ("apps", "traces"):
            if key in values and isinstance(values[key], str):
                values[key] = tuple(x.strip() for x in values[key].split(",") if x.strip())
            elif key in values:
                values[key] = tuple(values[key])
        config = cls(**values)
        config.validate(source)
        return config

    def validate(self, source: str = "env config") -> None:
        checks = (
            ("apps", bool(self.apps), "name at least one app"),
            ("gpus", isinstance(self.gpus, int) and self.gpus >= 1, "give a whole number of GPUs >= 1"),
            ("max_gpus", self.max_gpus is None or (isinstance(self.max_gpus, int) and isinstance(self.gpus, int)
                                                    and self.max_gpus >= self.gpus),
             f"give a whole number of GPUs >= gpus ({self.gpus}), or leave it out for one cluster size"),
            ("traces", bool(self.traces), "give at least one trace file"),
            ("part", self.part in ("train", "held_out", "all"), "use train, held_out or all"),
            ("interval_s", _positive(self.interval_s), "give seconds > 0"),
            ("episode_intervals", isinstance(self.episode_intervals, int) and self.episode_intervals >= 1,
             "give a whole number >= 1"),
            ("load", _positive(self.load) and self.load <= 1.0, "give a share in (0, 1]"),
            ("mode", self.mode in ("perf", "sim"), "use perf or sim"),
            ("random_levels", isinstance(self.random_levels, bool), "give true or false"),
            ("polish", isinstance(self.polish, bool), "give true or false"),
        )
        for key, ok, fix in checks:
            if not ok:
                raise ConfigError(f"bad value {getattr(self, key)!r}", file=source, field=key, fix=fix)
        for key in ("violation_weight", "accuracy_weight", "fallback_weight"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"bad value {value!r}", file=source, field=key, fix="give a finite number >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _positive(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@functools.cache
def _catalog(path: str | None) -> Catalog:
    return load_catalog(path)


def rate_scale(space: DecisionSpace, trace: Trace, load: float) -> float:
    """The factor that makes ``trace``'s busiest bin need ``load`` of the cluster at the best case."""
    per_rps = np.array([1.0 / space.capacity_rps[space.apps.index(a)] if a in space.apps else 0.0 for a in trace.apps])
    peak = float((trace.rates_rps @ per_rps).max())
    if peak <= 0:
        raise ConfigError("the trace has no demand for the configured apps", file=trace.source, field="traces",
                          fix="use a trace with the apps' names")
    return load / peak


class JigsawEnv(gym.Env[np.ndarray, np.ndarray]):
    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, config: EnvConfig | dict[str, Any] | None = None, **overrides: Any) -> None:
        if config is None or isinstance(config, dict):
            config = EnvConfig.from_dict({**(config or {}), **overrides})
        elif overrides:
            config = EnvConfig.from_dict({**config.to_dict(), **overrides})
        else:
            config.validate()
        self.config = cfg = config
        self.catalog = _catalog(cfg.catalog)
        sizes = range(cfg.gpus, (cfg.max_gpus or cfg.gpus) + 1)
        self._proposers = {g: Proposer(DecisionSpace(self.catalog, cfg.gpu_type, list(cfg.apps), g), cfg.polish)
                           for g in sizes}
        self.proposer = self._proposers[cfg.gpus]
        self.space = base = self.proposer.space
        smallest = base.decode(base.initial(), np.zeros(len(cfg.apps)))
        if smallest.gpus > cfg.gpus:
            raise ConfigError(f"the apps need {smallest.gpus} GPUs at one replica per task", field="gpus",
                              fix=f"give at least {smallest.gpus} GPUs or fewer apps")
        self.traces, self.demand = self._load_traces()
        n_apps = len(cfg.apps)
        self.action_space = gym.spaces.MultiDiscrete(self.proposer.nvec)
        self.observation_space = gym.spaces.Box(0.0, OBS_HIGH, shape=(self.proposer.observation_size,),
                                                dtype=np.float32)
        self.interval_demand = [d.mean(axis=1) for d in self.demand]  # [n_intervals, n_apps] per trace
        # per trace and interval t, what the step needs of the measured history (intervals t - HISTORY .. t - 1):
        # the forecast, the observation's demand features, and each bin's share of the interval's requests
        windows = [np.lib.stride_tricks.sliding_window_view(d, HISTORY, axis=0).swapaxes(1, 2)
                   for d in self.interval_demand]  # [n_intervals - HISTORY + 1, HISTORY, n_apps]
        forecasts = [forecast_rps(w, d.max(axis=1)[HISTORY - 1:]) for w, d in zip(windows, self.demand, strict=True)]
        self._forecasts = [_from_history(f) for f in forecasts]
        self._demand_features = [_from_history(base.demand_features(w, f))
                                 for w, f in zip(windows, forecasts, strict=True)]
        # a trace whose bins are as long as the interval is judged on one demand, not a batch of one (a third
        # cheaper in env.perf): its steps see [n_apps] demands and the bin share 1
        self._step_demand = [d[:, 0] if d.shape[1] == 1 else d for d in self.demand]
        self._bin_share = [_shares(d.sum(axis=2)) for d in self.demand]
        # the demand is the base cluster's; a cluster of g GPUs sees it x g / gpus (``load`` is a share of the
        # cluster, and a cluster's capacity is proportional to its GPUs), the demand features unchanged
        self._scale = 1.0
        times = self.catalog.transitions_for(cfg.gpu_type)
        self._repartition_s = times.repartition_s
        self._startup = np.zeros(base.accuracy.shape)  # [n_tasks, variants] start-up s of a new worker
        for i, (a, t) in enumerate(base.tasks):
            for v, variant in enumerate(self.catalog.app(a).task(t).variants):
                self._startup[i, v] = times.startup(variant.name)
        self._trace = self._t = self._end = 0
        self._levels = base.initial()
        self._decoded = self._serving = base.decode(self._levels, np.zeros(n_apps))
        self._metrics: Any = None

    def _load_traces(self) -> tuple[list[Trace], list[np.ndarray]]:
        """Each trace scaled, cut to ``part``, and its demand per interval sampled at every bin:
        [n_intervals, samples per interval, n_apps] in the config's app order."""
        cfg = self.config
        traces, demand = [], []
        for path in cfg.traces:
            if not Path(path).exists():
                raise ConfigError("no such trace file", file=path, field="traces", fix="give an existing trace")
            trace = load_trace(path)
            missing = [a for a in cfg.apps if a not in trace.apps]
            if missing:
                raise ConfigError(f"the trace has no rates for {', '.join(missing)}", file=path, field="traces",
                                  fix="use a trace naming every configured app")
            train, held = trace.split()
            scale = rate_scale(self.space, train, cfg.load)
            part = {"train": train, "held_out": held, "all": trace}[cfg.part].scaled(rate_scale=scale)
            per = max(1, round(cfg.interval_s / min(part.bin_s, cfg.interval_s)))
            n_int = int(part.duration_s // cfg.interval_s)
            if n_int < HISTORY + 1:
                raise ConfigError(f"the {cfg.part} part has {n_int} intervals of {cfg.interval_s:g} s",
                                  file=path, field="interval_s", fix=f"use a longer trace or intervals "
                                  f"(at least {HISTORY + 1} per part)")
            t = part.times_s[0] + (np.arange(n_int)[:, None] + (np.arange(per)[None, :] + 0.5) / per) * cfg.interval_s
            cols = [part.apps.index(a) for a in cfg.apps]
            traces.append(part)
            demand.append(part.rate_at(t)[..., cols])
        return traces, demand

    # ---- gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        rng = self.np_random
        self._trace = int(rng.integers(len(self.demand)))
        n_int = len(self.demand[self._trace])
        length = min(self.config.episode_intervals, n_int - HISTORY)
        self._t = int(rng.integers(HISTORY, n_int - length + 1))
        self._end = self._t + length
        gpus = int(rng.integers(self.config.gpus, (self.config.max_gpus or self.config.gpus) + 1))
        self.proposer = self._proposers[gpus]
        self.space = space = self.proposer.space
        self._scale = gpus / self.config.gpus
        start = space.initial()
        if self.config.random_levels:
            proposed = Levels(rng.integers(0, space.n_variants),
                              rng.integers(1, BUDGET_LEVELS + 1, size=space.n_tasks),
                              rng.integers(0, len(PROVISION_LEVELS), size=space.n_tasks))
            start = space.repair(start, proposed, self._forecast())[0]
        self._levels, self._decoded, _ = space.repair(start, start, self._forecast())
        self._metrics = space.evaluate(self._decoded, self._forecast())
        self._serving = self._decoded  # in force, warm, at the episode's start
        self._serving_plan = space.plan(self._levels, self._decoded) if self.config.mode == "sim" else None
        self._transit: _Piece | None = None  # the old workers serving while a change is under way
        self._ready_s = self._t * self.config.interval_s  # when the change to the plan in force completes
        return self._observation(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._t >= self._end:  # past the trace part's end there is no demand to step on
            raise gym.error.ResetNeeded("the episode has ended (truncated): call reset() before step()")
        cfg, space = self.config, self.space
        proposal = self.proposer.step(self._levels, self._serving, action, self._forecast())
        self._levels, self._decoded = proposal.levels, proposal.decoded
        d = self._decoded
        t0 = self._t * cfg.interval_s
        pieces, changed = self._apply(d, t0)
        rows = self._step_demand[self._trace][self._t] * self._scale
        if cfg.mode == "perf":  # one row per trace bin of the interval
            metrics = space.evaluate(d, rows)
            violation = self._perf_violation(pieces, metrics, t0)
            self._metrics = _last(metrics) if metrics.violation.ndim else metrics
        else:
            metrics = None
            violation = self._sim_violation(pieces, t0)
            self._metrics = space.evaluate(d, rows[-1] if rows.ndim > 1 else rows)
        # what the controller's check refuses, judged as it judges: against the forecast, not the demand that came
        unsafe = d.overloaded or bool((space.evaluate(d, self._forecast()).path_p95_ms > space.path_slo_ms).any())
        shortfall = space.accuracy_shortfall(self._metrics.path_accuracy)
        held = _time_weighted([(p.start_s, p.held_slices) for p in pieces], t0, t0 + cfg.interval_s)
        reward = (-held / space.total_slices - cfg.violation_weight * violation
                  - cfg.accuracy_weight * shortfall - cfg.fallback_weight * unsafe)
        full = metrics or self._metrics
        info = {"metrics": dict(vars(full)), "violation": violation, "slices": d.slices, "held_slices": held,
                "gpus": d.gpus, "accuracy": float(self._metrics.path_accuracy.sum()) / len(space.path_app),
                "accuracy_shortfall": shortfall, "repairs": proposal.repairs, "unsafe": unsafe, "gpus_cluster": space.n_gpus,
                "held_apps": int((proposal.held != REPLAN).sum()),
                "overloaded": d.overloaded, "workers_changed": changed,
                "changing_s": _time_weighted([(p.start_s, float(p.transit)) for p in pieces], t0,
                                             t0 + cfg.interval_s) * cfg.interval_s,
                "demand_rps": self.interval_demand[self._trace][self._t] * self._scale}
        self._t += 1
        return self._observation(), float(reward), False, self._t >= self._end, info

    def _apply(self, d: Decoded, t0: float) -> tuple[list[_Piece], bool]:
        """Apply ``d`` at ``t0`` as the reconciler would (``jigsaw.env.transitions``): the pieces of the interval
        (from when, which workers serve) and whether workers change. A change still under way at the interval's
        end keeps the decision waiting (the next step decides again)."""
        cfg, space = self.config, self.space
        t1 = t0 + cfg.interval_s
        pieces = [] if self._transit is None or self._ready_s <= t0 else [self._transit]
        if not pieces or self._ready_s >= t1:
            pieces.append(_Piece(t0 if not pieces else self._ready_s, self._serving, self._serving.slices,
                                 plan=self._serving_plan))
        if self._ready_s >= t1:
            return pieces, False
        at = max(t0, self._ready_s)
        old, new = space.fleet(self._serving), space.fleet(d)
        startup = self._startup[np.arange(space.n_tasks), space.c_variant[d.config]]
        c = change(old, new, startup, self._repartition_s, space.profile_slices, space.total_slices)
        pieces = [p for p in pieces if p.start_s < at]
        self._transit = None
        if c.delay_s > 0:
            self._transit = _Piece(at, replace(self._serving, replicas=c.serving),
                                   c.held_slices(self._serving.slices, old, new), transit=True, plan=self._serving_plan)
            pieces.append(self._transit)
        self._serving, self._ready_s = d, at + c.delay_s
        self._serving_plan = self.proposer.plan(self._levels, d) if cfg.mode == "sim" else None
        pieces.append(_Piece(self._ready_s, d, d.slices, plan=self._serving_plan))
        return pieces, c.workers_changed

    def _bin_times(self, t0: float) -> np.ndarray:
        n = np.atleast_2d(self._step_demand[self._trace][self._t]).shape[0]
        return t0 + (np.arange(n) + 0.5) / n * self.config.interval_s

    def _perf_violation(self, pieces: list[_Piece], target: Any, t0: float) -> float:
        """The demand-weighted violation over the interval's bins, each judged with the workers serving then."""
        share = self._bin_share[self._trace][self._t]
        if len(pieces) == 1 and pieces[0].decoded is self._decoded:
            return float(np.dot(target.violation, share))
        rows = np.atleast_2d(self._step_demand[self._trace][self._t]) * self._scale
        share = np.atleast_1d(share)
        which = np.searchsorted([p.start_s for p in pieces], self._bin_times(t0), side="right") - 1
        per_bin = np.atleast_1d(target.violation).astype(float).copy()
        for i, piece in enumerate(pieces):
            on = which == i
            if on.any() and piece.decoded is not self._decoded:
                per_bin[on] = _violation(self.space, piece.decoded, rows[on])
        return float(per_bin @ share)

    def _sim_violation(self, pieces: list[_Piece], t0: float) -> float:
        """The violated share of the interval's requests, simulated (``simulate_spans``) from empty queues."""
        cfg = self.config
        trace = self.traces[self._trace] if self._scale == 1 else self.traces[self._trace].scaled(rate_scale=self._scale)
        start = float(trace.times_s[0]) + t0
        rng = np.random.default_rng(cfg.seed_offset + int(self.np_random.integers(2**31)))
        times, app = arrivals_of(trace, cfg.apps, rng, start, start + cfg.interval_s)
        plans = [p.plan for p in pieces if p.plan is not None]
        spans = [Span(start + max(0.0, p.start_s - t0), i, p.decoded.replicas, p.transit) for i, p in enumerate(pieces)]
        outcomes = simulate_spans(self.catalog, plans, spans, times, app, cfg.apps,
                                  int(rng.integers(2**31)), start + cfg.interval_s)
        requests = sum(v.size for _, v in outcomes)
        return float(sum(int(v.sum()) for _, v in outcomes) / requests) if requests else 0.0

    def action_masks(self) -> np.ndarray:
        """Flat booleans for MaskablePPO (``Proposer.masks``)."""
        return self.proposer.masks()

    # ---- internals

    def _forecast(self) -> np.ndarray:
        return self._forecasts[self._trace][self._t] * self._scale

    def _observation(self) -> np.ndarray:
        return self.proposer.observation(self._levels, self._decoded, self._metrics,
                                         self._demand_features[self._trace][self._t], self._serving, self._forecast())


@dataclass(frozen=True)
class _Piece:
    """From ``start_s`` on (interval time), the workers of ``decoded`` serve, holding ``held_slices``."""

    start_s: float
    decoded: Decoded
    held_slices: float
    transit: bool = False  # the old workers of a change under way
    plan: Plan | None = None  # sim mode: ``decoded`` as a plan


def _time_weighted(steps: list[tuple[float, float]], t0: float, t1: float) -> float:
    """The mean over [t0, t1) of the step function that is ``value`` from ``start`` on."""
    total = 0.0
    for (a, value), (b, _) in itertools.pairwise([*steps, (math.inf, 0.0)]):
        total += value * max(0.0, min(b, t1) - max(a, t0))
    return total / (t1 - t0)


def _violation(space: DecisionSpace, d: Decoded, rows: np.ndarray) -> np.ndarray:
    """Per demand row, the demand-weighted violation of ``d``; an app with a task without workers violates all its
    requests (``jigsaw.env.perf`` needs a replica per task)."""
    empty = d.replicas == 0
    if not empty.any():
        return np.atleast_1d(space.evaluate(d, rows).violation)
    m = space.evaluate(replace(d, replicas=np.maximum(d.replicas, 1)), rows)
    dead = np.zeros(len(space.apps), dtype=bool)
    dead[space.task_app[empty]] = True
    violated = np.where(dead, rows, m.app_violated_rps).sum(axis=-1)
    total = rows.sum(axis=-1)
    return np.where(total > 0, violated / np.where(total > 0, total, 1.0), 0.0)


def _from_history(per_window: np.ndarray) -> np.ndarray:
    """Per-window values (window w: intervals w .. w + HISTORY - 1) indexed by the interval after the window,
    up to one past the last (where an episode's final observation is made); the first HISTORY intervals,
    which have no full history, are never stepped from (zeros)."""
    return np.concatenate([np.zeros((HISTORY, *per_window.shape[1:])), per_window])


def _shares(requests: np.ndarray) -> np.ndarray:
    """Each bin's share of its interval's requests ([n_intervals, bins]; one bin: [n_intervals] of 1)."""
    if requests.shape[1] == 1:
        return np.ones(len(requests))
    total = requests.sum(axis=1, keepdims=True)
    return requests / np.where(total > 0, total, 1.0)


def _last(metrics: Any) -> Any:
    """Per-sample metrics reduced to the interval's last sample (what the observation shows)."""
    return type(metrics)(**{name: value[-1] for name, value in vars(metrics).items()})


"""``jigsaw/JigsawServe-v0``: the Gymnasium environment. One step is one control interval of a demand trace.

The agent's decision lives in ``jigsaw.env.space`` (per task: variant, budget weight, provisioning level). Each
step the action moves those levels, the plan is sized against the forecast demand (``forecast_rps``: the
last interval's rate, or its linear trend when demand rises, and at least the last interval's busiest trace
bin, as the controller forecasts), and then judged against the demand that
actually arrives in the interval: by ``jigsaw.env.perf`` (mode ``perf``, for training: every trace bin of the
interval evaluated at once) or by ``jigsaw.env.sim`` (mode ``sim``, for evaluation: Poisson arrivals, request by
request). With ``polish``, each step's plan is then polished as the controller's policy proposer polishes its
proposals (``DecisionSpace.polish``), so that a policy trains on the plans it will propose; steps cost up to 9x
as much under random actions (0.3 -> 2.8 ms a step, 2026-12-02), which start far from any local optimum.

Reward = -slices / cluster slices - alpha * violation - beta * accuracy shortfall - gamma * repartitions / GPUs
- delta * refused, with violation the demand-weighted share of requests over the latency SLO, shortfall the mean
over apps of max(0, SLO - worst path accuracy) / SLO, repartitions the MIG instances created or destroyed, and
refused 1 for a plan the controller's check would hand to the ILP (``info["unsafe"]``: capacity under the
forecast x headroom, which only a plan squeezed to fit the GPUs has, or a path's p95 over its SLO). Deployed,
such a plan is never applied: without delta the policy learned to sit on squeezed plans of accurate variants,
which the controller refused half the time.

Traces are scaled so that the busiest bin of the training part needs ``load`` of the cluster's slices at
the best items/s per slice any configuration offers (``DecisionSpace.capacity_rps``): one number that
means the same on 4 and on 120 GPUs. ``part`` picks the train part (first 75 %), the
held-out part, or all of it; reset starts at a seeded random interval of a seeded random trace.

Registered as ``jigsaw/JigsawServe-v0`` on import of ``jigsaw.env`` (idempotent), so fresh processes
(SubprocVecEnv children) find it too; this module is imported only when the environment is made.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from jigsaw.env.sim import simulate_trace
from jigsaw.env.space import (
    ACTION_NVEC,
    BUDGET_LEVELS,
    HISTORY,
    OBS_HIGH,
    PROVISION_LEVELS,
    DecisionSpace,
    Levels,
    forecast_rps,
)
from jigsaw.env.traces import DEFAULT_TRACE_DIR, H100_APPS, Trace, load_trace
from jigsaw.profiles.catalog import Catalog, load_catalog
from jigsaw.profiles.errors import ConfigError

DEFAULT_TRACES = tuple(str(DEFAULT_TRACE_DIR / f) for f in ("diurnal_3apps.csv", "bursty_3apps.csv", "spikes_3apps.csv"))


@dataclass(frozen=True)
class EnvConfig:
    apps: tuple[str, ...] = H100_APPS
    gpus: int = 4
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
    repartition_weight: float = 0.02  # gamma
    fallback_weight: float = 1.0  # delta
    random_levels: bool = True  # reset from random valid levels (exploration), else from DecisionSpace.initial
    polish: bool = False  # polish each step's plan as the controller's proposer does (DecisionSpace.polish; slower)
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
        for key in ("violation_weight", "accuracy_weight", "repartition_weight", "fallback_weight"):
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
        self.space = DecisionSpace(self.catalog, cfg.gpu_type, list(cfg.apps), cfg.gpus)
        smallest = self.space.decode(self.space.initial(), np.zeros(len(cfg.apps)))
        if smallest.gpus > cfg.gpus:
            raise ConfigError(f"the apps need {smallest.gpus} GPUs at one replica per task", field="gpus",
                              fix=f"give at least {smallest.gpus} GPUs or fewer apps")
        self.traces, self.demand = self._load_traces()
        n, n_apps = self.space.n_tasks, len(cfg.apps)
        self.action_space = gym.spaces.MultiDiscrete(np.tile(ACTION_NVEC, n))
        self.observation_space = gym.spaces.Box(0.0, OBS_HIGH, shape=(self.space.observation_size,), dtype=np.float32)
        self.interval_demand = [d.mean(axis=1) for d in self.demand]  # [n_intervals, n_apps] per trace
        # per trace and interval t, what the step needs of the measured history (intervals t - HISTORY .. t - 1):
        # the forecast, the observation's demand features, and each bin's share of the interval's requests
        windows = [np.lib.stride_tricks.sliding_window_view(d, HISTORY, axis=0).swapaxes(1, 2)
                   for d in self.interval_demand]  # [n_intervals - HISTORY + 1, HISTORY, n_apps]
        forecasts = [forecast_rps(w, d.max(axis=1)[HISTORY - 1:]) for w, d in zip(windows, self.demand, strict=True)]
        self._forecasts = [_from_history(f) for f in forecasts]
        self._demand_features = [_from_history(self.space.demand_features(w, f))
                                 for w, f in zip(windows, forecasts, strict=True)]
        # a trace whose bins are as long as the interval is judged on one demand, not a batch of one (a third
        # cheaper in env.perf): its steps see [n_apps] demands and the bin share 1
        self._step_demand = [d[:, 0] if d.shape[1] == 1 else d for d in self.demand]
        self._bin_share = [_shares(d.sum(axis=2)) for d in self.demand]
        self._trace = self._t = self._end = 0
        self._levels = self.space.initial()
        self._decoded = self.space.decode(self._levels, np.zeros(n_apps))
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
        start = self.space.initial()
        if self.config.random_levels:
            proposed = Levels(rng.integers(0, self.space.n_variants),
                              rng.integers(1, BUDGET_LEVELS + 1, size=self.space.n_tasks),
                              rng.integers(0, len(PROVISION_LEVELS), size=self.space.n_tasks))
            start = self.space.repair(start, proposed, self._forecast())[0]
        self._levels, self._decoded, _ = self.space.repair(start, start, self._forecast())
        self._metrics = self.space.evaluate(self._decoded, self._forecast())
        return self._observation(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._t >= self._end:  # past the trace part's end there is no demand to step on
            raise gym.error.ResetNeeded("the episode has ended (truncated): call reset() before step()")
        cfg, space = self.config, self.space
        previous = self._decoded
        self._levels, self._decoded, repairs = space.step(self._levels, action, self._forecast())
        if cfg.polish:
            self._levels, self._decoded = space.polish(self._levels, self._decoded, self._forecast())
        d = self._decoded
        if cfg.mode == "perf":  # one row per trace bin of the interval
            metrics = space.evaluate(d, self._step_demand[self._trace][self._t])
            violation = float(np.dot(metrics.violation, self._bin_share[self._trace][self._t]))
            self._metrics = _last(metrics) if metrics.violation.ndim else metrics
        else:
            metrics = None
            start = float(self.traces[self._trace].times_s[0]) + self._t * cfg.interval_s
            self._metrics = simulate_trace(self.catalog, space.plan(self._levels, d), self.traces[self._trace],
                                           start, start + cfg.interval_s,
                                           seed=cfg.seed_offset + int(self.np_random.integers(2**31)))
            violation = float(self._metrics.violation)
        unsafe = d.overloaded or bool(((metrics or self._metrics).path_p95_ms > space.path_slo_ms).any())
        shortfall = space.accuracy_shortfall(self._metrics.path_accuracy)
        repartitions = sum(map(abs, map(operator.sub, d.counts, previous.counts)))
        reward = (-d.slices / space.total_slices - cfg.violation_weight * violation
                  - cfg.accuracy_weight * shortfall - cfg.repartition_weight * repartitions / cfg.gpus
                  - cfg.fallback_weight * unsafe)
        full = metrics or self._metrics
        info = {"metrics": dict(vars(full)), "violation": violation, "slices": d.slices, "gpus": d.gpus,
                "accuracy": float(self._metrics.path_accuracy.sum()) / len(space.path_app), "accuracy_shortfall": shortfall,
                "repartitions": repartitions, "repairs": repairs, "unsafe": unsafe, "overloaded": d.overloaded,
                "demand_rps": self.interval_demand[self._trace][self._t]}
        self._t += 1
        return self._observation(), float(reward), False, self._t >= self._end, info

    def action_masks(self) -> np.ndarray:
        """Flat [n_tasks * 11] booleans for MaskablePPO (see ``DecisionSpace.masks``)."""
        return self.space.masks(self._levels, self._decoded).reshape(-1)

    # ---- internals

    def _forecast(self) -> np.ndarray:
        return self._forecasts[self._trace][self._t]

    def _observation(self) -> np.ndarray:
        return self.space.observation(self._levels, self._decoded, self._metrics,
                                      self._demand_features[self._trace][self._t])


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


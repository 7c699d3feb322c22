"""The systems ``jigsaw.agents.evaluate`` compares. Each is a fresh object per evaluated trace segment with one method,
``decide(measured req/s per app of the last interval, those of its busiest trace bin) -> Decision``; all but
``static_peak`` are ``jigsaw.agents.controller.Controller``s, so they forecast, check and fall back the same way.

* ``ilp``: no proposer, the ILP re-solved every interval on the cluster (the paper's controller, our reference).
* ``ilp_sticky``: the ILP that knows changes cost: every task whose worker kind it keeps saves
  ``change_penalty`` slices in its objective, at a headroom chosen on the training part of the traces
  (``agents/hyperparams/ilp_sticky.yml``, written by ``scripts/tune_ilp_sticky.py``).
* ``ilp_window``: the hand-tuned autoscaling rule, on ``ilp_sticky``: scale up at once, scale down only once demand
  has stayed lower for a window of intervals (Kubernetes HPA's scale-down stabilisation window): each interval's
  ILP plans for the largest forecast of the last ``window`` intervals. Window, headroom and change penalty chosen on
  the training part (``agents/hyperparams/ilp_sticky.yml``).
* ``static_peak``: one ILP plan for the segment's peak interval demand, never changed (it knows the peak in
  advance: the classic over-provisioning baseline). If the peak does not fit the cluster, the peak scaled down
  by STATIC_BACKOFF steps until it does (the most a static plan could provision).
* ``a_t`` (Loki-like: whole GPUs), ``s_t``, ``a_s``: the ILP every interval with one lever off. They get
  ABLATION_GPU_FACTOR times the cluster's GPUs, so that their slices measure what the missing lever costs at
  the same demand and SLOs (on the cluster itself they mostly cannot serve the held-out demand at all).
* ``greedy``: a reactive, SlackFit-like rule, ``Greedy``, on its own, as such systems run: its plan is applied
  whenever it fits the catalog and the GPUs, without the performance check (through the check, the ILP took
  every interval of the shipped held-out traces at load 0.4 on 4 GPUs, and the row only repeated the ILP's).
  Per task, on ``jigsaw.env.space.DecisionSpace``:
    1. latency budget = the task's equal share of its paths' SLO (middle budget weights), and the most
       accurate variant with a configuration within that budget;
    2. segment type and batch: the decision space's rule (the fewest slices for the forecast within the budget);
    3. replicas = ceil(forecast req/s x F_t x headroom / throughput) (F_t: items per request reaching t);
    4. while the plan needs more GPUs than the cluster has (``DecisionSpace.repair``): step a variant down, of the
       task taking the most slices whose step keeps every path within its accuracy SLO and frees slices;
    5. still too big: scale replicas down (an overloaded plan: what it cannot serve is violated).
* ``policy`` / ``policy_alone``: the trained policy's proposer through the controller with / without the
  safety check (``policy_alone`` applies whatever fits the catalog and the GPUs).
* ``zero_actor`` / ``random_actor``: the policy's controller, proposer and polish included, with its actor
  swapped for one that always takes the no-change action (every app ``hold``s its workers in force at the middle
  capacity, adding replicas as the forecast needs and releasing none) / a uniformly random allowed action (seeded
  per evaluation seed): the ablation of what the learned part adds.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from jigsaw.agents.controller import Controller, Decision
from jigsaw.agents.ilp import solve
from jigsaw.env.candidates import Features, SolverOptions
from jigsaw.env.gym_env import EnvConfig
from jigsaw.env.plan import Plan
from jigsaw.env.space import DecisionSpace
from jigsaw.profiles.catalog import Catalog
from jigsaw.profiles.documents import parse_yaml, read_text
from jigsaw.profiles.errors import ConfigError

SYSTEM_NAMES = ("policy", "policy_alone", "zero_actor", "random_actor", "ilp", "ilp_sticky", "ilp_window",
                "static_peak", "a_t", "s_t", "a_s", "greedy")
POLICY_SYSTEMS = ("policy", "policy_alone", "zero_actor", "random_actor")
SEEDED_SYSTEMS = ("random_actor",)  # systems whose decisions depend on the evaluation's seed
STICKY_SETTINGS = Path(__file__).parent / "hyperparams" / "ilp_sticky.yml"
ABLATIONS = {"a_t": Features(accuracy=True, spatial=False, budgeting=True),
             "s_t": Features(accuracy=False, spatial=True, budgeting=True),
             "a_s": Features(accuracy=True, spatial=True, budgeting=False)}
ABLATION_GPU_FACTOR = 8  # A+T needs ~4x the GPUs of A+S+T on the shipped traces; 8x leaves room for spikes
STATIC_BACKOFF, STATIC_MIN_SCALE = 0.8, 0.1


class Decider(Protocol):
    def decide(self, measured: Mapping[str, float], peak: Mapping[str, float] | None = None) -> Decision: ...


# (the segment's peak req/s per app (only static_peak uses it), the evaluation's seed) -> a fresh system
SystemFactory = Callable[[Mapping[str, float], int], Decider]


class PolicyLike(Protocol):
    """What ``jigsaw.agents.ppo.load_policy`` returns, as far as the evaluation needs it."""

    version: str

    def proposer(self, history: np.ndarray, forecast: Mapping[str, float], current: Plan | None,
                 gpus: int) -> Plan: ...

    def reset(self) -> None: ...

    def for_gpus(self, gpus: int) -> Any: ...

    def with_actor(self, actor: Actor) -> PolicyLike: ...


class Actor(Protocol):
    def act(self, obs: np.ndarray, mask: np.ndarray, nvec: np.ndarray) -> np.ndarray: ...


class ZeroActor:
    """Always the no-change action: the middle choice of every head (per app: ``hold`` at the middle capacity)."""

    def act(self, obs: np.ndarray, mask: np.ndarray, nvec: np.ndarray) -> np.ndarray:
        return np.asarray(nvec) // 2


class RandomActor:
    """Per head, a uniformly random choice among the allowed ones."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, mask: np.ndarray, nvec: np.ndarray) -> np.ndarray:
        return np.array([self.rng.choice(np.flatnonzero(mask[a:b])) if mask[a:b].any() else (b - a) // 2
                         for a, b in itertools.pairwise(np.cumsum((0, *nvec)).tolist())])


class WindowedController(Controller):
    """A controller that plans for the largest forecast of the last ``window`` intervals (``ilp_window``)."""

    def __init__(self, *args: Any, window: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recent: deque[dict[str, float]] = deque(maxlen=window)

    def observe(self, measured: Mapping[str, float], peak: Mapping[str, float] | None = None) -> dict[str, float]:
        self.recent.append(super().observe(measured, peak))
        return {a: max(f[a] for f in self.recent) for a in self.apps}


def sticky_settings(opts: SolverOptions, path: Path = STICKY_SETTINGS) -> tuple[SolverOptions, int]:
    """``opts`` with the tuned headroom and change penalty of ``ilp_sticky``, and ``ilp_window``'s window."""
    doc = parse_yaml(read_text(path, ConfigError, "ilp_sticky settings"), str(path), ConfigError)
    try:
        window = int(doc["window"])
        if window < 1:
            raise ValueError(f"window {window} < 1")
        return replace(opts, headroom=float(doc["headroom"]), change_penalty=float(doc["change_penalty"])), window
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"bad settings ({e})", file=str(path), field="headroom/change_penalty/window",
                          fix="rerun scripts/tune_ilp_sticky.py to write them") from None


class StaticPeak:
    """One ILP plan for ``peak_rps`` (req/s per app), returned every interval with source ``static``."""

    def __init__(self, catalog: Catalog, gpu_type: str, gpus: int, peak_rps: Mapping[str, float],
                 opts: SolverOptions) -> None:
        self.scale = 1.0
        while True:
            result = solve(catalog, gpu_type, {a: r * self.scale for a, r in peak_rps.items()}, gpus, Features(), opts)
            if result.plan is not None or self.scale * STATIC_BACKOFF < STATIC_MIN_SCALE:
                break
            self.scale *= STATIC_BACKOFF
        self.plan, self.slices, self.status = result.plan, float(result.slices_used), result.status

    def decide(self, measured: Mapping[str, float], peak: Mapping[str, float] | None = None) -> Decision:
        start = time.perf_counter()
        return Decision(self.plan, "static", "no proposer", math.nan, self.slices if self.plan else math.nan, math.nan,
                        f"{self.status} at {self.scale:.2g} x peak", 1000.0 * (time.perf_counter() - start), "")


class Greedy:
    """The SlackFit-like rule of the module docstring, as a ``Proposer``."""

    def __init__(self, catalog: Catalog, gpu_type: str, apps: list[str], opts: SolverOptions) -> None:
        self.space = functools.cache(functools.partial(DecisionSpace, catalog, gpu_type, apps, opts=opts))  # per GPUs

    def __call__(self, history: np.ndarray, forecast: Mapping[str, float], current: Plan | None, gpus: int) -> Plan:
        space = self.space(gpus)
        f = np.array([forecast[a] for a in space.apps])
        levels = space.initial()  # the lowest provisioning level: capacity = forecast x headroom
        levels, decoded, _ = space.repair(levels, levels, f)  # steps 4 and 5 of the module docstring
        return space.plan(levels, decoded)


def build_systems(catalog: Catalog, config: EnvConfig, names: list[str], opts: SolverOptions,
                  policy: PolicyLike | None = None) -> dict[str, SystemFactory]:
    """A factory per system in ``names`` (of SYSTEM_NAMES) for ``config``'s apps and cluster; the policy systems
    need ``policy`` (its state is reset for every segment)."""
    unknown = [n for n in names if n not in SYSTEM_NAMES]
    if unknown:
        raise ConfigError(f"unknown system(s) {', '.join(unknown)}", field="--systems",
                          fix=f"choose from {','.join(SYSTEM_NAMES)}")
    if policy is None and any(n in POLICY_SYSTEMS for n in names):
        raise ConfigError("the policy systems need a policy", field="--systems",
                          fix=f"give --policy FILE, or leave out {', '.join(POLICY_SYSTEMS)}")
    apps, gpus, gpu_type = list(config.apps), config.gpus, config.gpu_type

    def controller(proposer: Callable | None = None, version: str = "", safety_check: bool = True,
                   features: Features = Features(), cluster_gpus: int = gpus) -> Controller:
        return Controller(catalog, gpu_type, apps, cluster_gpus, proposer=proposer, policy_version=version,
                          safety_check=safety_check, opts=opts, features=features)

    def with_policy(policy: PolicyLike, safety_check: bool = True,
                    actor: Callable[[int], Actor] | None = None) -> SystemFactory:
        def make(_peak: Mapping[str, float], seed: int) -> Decider:
            proposer = policy.with_actor(actor(seed)) if actor is not None else policy
            proposer.reset()
            proposer.for_gpus(gpus)  # built and warm before the first decision's clock starts
            return controller(proposer.proposer, proposer.version, safety_check)
        return make

    greedy = Greedy(catalog, gpu_type, apps, opts) if "greedy" in names else None  # stateless: shared
    sticky, window = sticky_settings(opts) if {"ilp_sticky", "ilp_window"} & set(names) else (opts, 1)
    factories: dict[str, SystemFactory] = {
        "ilp": lambda _peak, _seed: controller(),
        "ilp_sticky": lambda _peak, _seed: Controller(catalog, gpu_type, apps, gpus, opts=sticky),
        "ilp_window": lambda _peak, _seed: WindowedController(catalog, gpu_type, apps, gpus, opts=sticky, window=window),
        "static_peak": lambda peak, _seed: StaticPeak(catalog, gpu_type, gpus, peak, opts),
        "greedy": lambda _peak, _seed: controller(greedy, "greedy", safety_check=False),
        **{name: (lambda _peak, _seed, f=f: controller(features=f, cluster_gpus=gpus * ABLATION_GPU_FACTOR))
           for name, f in ABLATIONS.items()},
    }
    if policy is not None:  # one policy object serves both: the evaluation runs systems one after another
        factories |= {"policy": with_policy(policy), "policy_alone": with_policy(policy, False),
                      "zero_actor": with_policy(policy, actor=lambda _seed: ZeroActor()),
                      "random_actor": with_policy(policy, actor=RandomActor)}
    return {n: factories[n] for n in names}

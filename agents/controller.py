"""The controller: one decision per control interval, the same in evaluation and in the daemon.

``Controller.decide(demand)`` returns a ``Decision``: a proposer (the trained policy, when one is given)
suggests a plan; ``check`` tests it with ``jigsaw.env.perf`` against the forecast demand (the plan compiles against
the catalog with a valid MIG layout on at most the cluster's GPUs, every path's predicted p95 is within its
SLO, every path meets its app's accuracy SLO, and every task has capacity >= demand x headroom). A plan that
fails, or a proposer that raises, hands the interval to the ILP (time-limited). A forecast the cluster
cannot hold at all gets the ILP's plan for the largest share of it that fits (bisection), not the plan
sized for the interval before; if the ILP has no plan in time, the last good plan holds. Every decision
records its source, the verdict and its reason, both costs and the gap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from jigsaw.agents.ilp import SolveResult, solve
from jigsaw.env.candidates import Features, SolverOptions
from jigsaw.env.perf import compile_plan, evaluate
from jigsaw.env.plan import Plan
from jigsaw.env.space import HISTORY, forecast_rps
from jigsaw.profiles.catalog import Catalog
from jigsaw.profiles.errors import JigsawError

# A proposer maps (measured req/s per app over the last HISTORY intervals [HISTORY, n_apps] in the controller's
# app order, the forecast req/s per app, the plan in force, the cluster's GPUs now) to a plan; it may raise.
Proposer = Callable[[np.ndarray, Mapping[str, float], Plan | None, int], Plan]

BACKOFF_SOLVES = 4  # ILP solves that look for the share of an infeasible forecast the cluster holds (to 1/16)
MIN_SOLVE_S = 0.05  # a solve given less time than this is not started (a time-limited one has no answer)



@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # "" when ok
    slices: float  # compute slices the plan uses (nan if it does not compile)


@dataclass(frozen=True)
class Decision:
    plan: Plan | None  # None only before any plan was ever found
    source: str  # "policy" | "ilp" | "hold"
    verdict: str  # the check of the proposal: "ok", or why it failed ("no proposer" without a policy)
    policy_slices: float  # nan without a proposal that compiles
    ilp_slices: float  # nan when the ILP did not run or found nothing
    gap: float  # policy_slices / ilp_slices - 1 when both exist, else nan
    ilp_status: str  # "" when the ILP did not run
    decide_ms: float
    policy_version: str  # which policy proposed ("" without one)


class Controller:
    """Decisions for ``apps`` on ``gpus`` GPUs of ``gpu_type``. ``proposer`` is the policy (None: ILP only);
    ``safety_check=False`` applies every proposal that fits the catalog and the GPUs unchecked (the
    policy-alone system of the evaluation)."""

    def __init__(self, catalog: Catalog, gpu_type: str, apps: list[str], gpus: int, *,
                 proposer: Proposer | None = None, policy_version: str = "", safety_check: bool = True,
                 opts: SolverOptions = SolverOptions(time_limit_s=10.0), features: Features = Features()) -> None:
        self.catalog, self.gpu_type, self.apps, self.gpus = catalog, gpu_type, list(apps), gpus
        self.proposer, self.policy_version, self.safety_check = proposer, policy_version, safety_check
        self.opts, self.features = opts, features
        self.current: Plan | None = None
        self.history: np.ndarray | None = None  # [HISTORY, n_apps] measured req/s, oldest first

    def check(self, plan: Plan, demand: Mapping[str, float], performance: bool = True) -> Verdict:
        """Whether ``plan`` is safe to apply under ``demand`` (see the module docstring); with ``performance``
        False only whether it fits the catalog and the cluster."""
        try:
            compiled = compile_plan(self.catalog, plan)
        except JigsawError as e:
            return Verdict(False, f"does not fit the catalog: {e}", math.nan)
        if plan.gpu_type != self.gpu_type:
            return Verdict(False, f"plan is for {plan.gpu_type}, the cluster has {self.gpu_type}", math.nan)
        missing = [a for a in self.apps if a not in compiled.app_names]
        if missing:
            return Verdict(False, f"serves no plan for {', '.join(missing)}", compiled.slices_used)
        if compiled.gpus_used > self.gpus or len(plan.gpus) > self.gpus:
            return Verdict(False, f"needs {max(compiled.gpus_used, len(plan.gpus))} GPUs, the cluster has "
                           f"{self.gpus}", compiled.slices_used)
        if not performance:
            return Verdict(True, "", compiled.slices_used)
        d = np.array([float(demand.get(a, 0.0)) for a in compiled.app_names])
        m = evaluate(compiled, d * self.opts.headroom)
        over = np.flatnonzero(m.utilisation > 1.0)
        if over.size:
            app, task = compiled.task_keys[int(over[0])]
            return Verdict(False, f"{app}/{task} at {m.utilisation[over[0]]:.2f} of its capacity with headroom "
                           f"{self.opts.headroom:g}", compiled.slices_used)
        m = evaluate(compiled, d)
        late = np.flatnonzero(m.path_p95_ms > compiled.latency_slo_ms)
        if late.size:
            app, path = compiled.path_keys[int(late[0])]
            return Verdict(False, f"{app} path {'>'.join(path)}: predicted p95 {m.path_p95_ms[late[0]]:.1f} ms over "
                           f"the {compiled.latency_slo_ms[late[0]]:g} ms SLO", compiled.slices_used)
        low = np.flatnonzero(compiled.path_accuracy < compiled.accuracy_slo[compiled.path_app] - 1e-9)
        if low.size:
            app, path = compiled.path_keys[int(low[0])]
            return Verdict(False, f"{app} path {'>'.join(path)}: accuracy {compiled.path_accuracy[low[0]]:.4f} under "
                           f"the SLO {compiled.accuracy_slo[compiled.path_app[low[0]]]:g}", compiled.slices_used)
        return Verdict(True, "", compiled.slices_used)

    def observe(self, measured: Mapping[str, float], peak: Mapping[str, float] | None = None) -> dict[str, float]:
        """Record the last interval's measured req/s per app (and, where known, its busiest sub-interval's);
        return the forecast for the next one (``jigsaw.env.space.forecast_rps``)."""
        rates = np.array([max(0.0, float(measured.get(a, 0.0))) for a in self.apps])
        self.history = (np.repeat(rates[None, :], HISTORY, axis=0) if self.history is None
                        else np.vstack([self.history[1:], rates]))
        busiest = None if peak is None else np.array([max(0.0, float(peak.get(a, 0.0))) for a in self.apps])
        return dict(zip(self.apps, forecast_rps(self.history, busiest).tolist(), strict=True))

    def decide(self, measured: Mapping[str, float], peak: Mapping[str, float] | None = None) -> Decision:
        """The plan for the next interval, given the last interval's measured req/s per app and, where known,
        those of its busiest sub-interval (``observe``)."""
        start = time.perf_counter()
        demand = self.observe(measured, peak)
        verdict = Verdict(False, "no proposer", math.nan)
        if self.proposer is not None:
            try:
                proposal = self.proposer(self.history, demand, self.current, self.gpus)
            except Exception as e:  # a policy's failure is a fallback, never the controller's death
                verdict = Verdict(False, f"policy raised {type(e).__name__}: {e}", math.nan)
            else:
                verdict = self.check(proposal, demand, performance=self.safety_check)
                if verdict.ok:
                    self.current = proposal
                    return self._decision(proposal, "policy", verdict, math.nan, "", start)
        deadline = start + self.opts.time_limit_s  # the limit bounds the whole decision, back-off included
        result = solve(self.catalog, self.gpu_type, demand, self.gpus, self.features, self._until(deadline),
                       self.current)
        status = result.status
        if result.status == "infeasible":
            result, scale = self._back_off(demand, deadline)
            status = f"{result.status} for {scale:.3g} x the forecast (the whole forecast is infeasible)"
        if result.plan is not None:
            self.current = result.plan
            return self._decision(result.plan, "ilp", verdict, float(result.slices_used), status, start)
        return self._decision(self.current, "hold", verdict, math.nan, f"{result.status}: {result.reason}", start)

    def _until(self, deadline: float) -> SolverOptions:
        """The solver's options with the time left before ``deadline`` as its limit (``solve`` keeps to it)."""
        return replace(self.opts, time_limit_s=max(MIN_SOLVE_S, deadline - time.perf_counter()))

    def _back_off(self, demand: Mapping[str, float], deadline: float) -> tuple[SolveResult, float]:
        """The ILP plan for the largest share of ``demand`` the cluster can serve, to BACKOFF_SOLVES halvings
        while time is left before ``deadline``: a plan that serves most of a spike beats holding one sized for
        the interval before it."""
        best, low, high = SolveResult("infeasible", "no share of the forecast fits", 0.0), 0.0, 1.0
        for _ in range(BACKOFF_SOLVES):
            if deadline - time.perf_counter() < MIN_SOLVE_S:
                break
            scale = (low + high) / 2
            result = solve(self.catalog, self.gpu_type, {a: r * scale for a, r in demand.items()}, self.gpus,
                           self.features, self._until(deadline), self.current)
            if result.plan is not None:
                best, low = result, scale
            elif result.status == "infeasible":
                high = scale
            else:  # out of time: no answer either way
                break
        return best, low

    def _decision(self, plan: Plan | None, source: str, verdict: Verdict, ilp_slices: float, ilp_status: str,
                  start: float) -> Decision:
        gap = verdict.slices / ilp_slices - 1.0 if ilp_slices > 0 and math.isfinite(verdict.slices) else math.nan
        return Decision(plan, source, "ok" if verdict.ok else verdict.reason, verdict.slices, ilp_slices, gap,
                        ilp_status, 1000.0 * (time.perf_counter() - start),
                        self.policy_version if self.proposer is not None else "")

"""Decision time of the controller's fast path -- the policy proposes, ``Controller.check`` judges the plan with
``jigsaw.env.perf`` -- against the ILP's solve time, for the 3-app default on 4, 16 and 120 GPUs.

The demands are the held-out default traces' interval means, scaled to each cluster as in training (``load``),
fed interval by interval as the daemon would. The shipped policy serves 2..16 GPUs; at 120 its weights act on the
120-GPU decision space outside the sizes it was trained for (the observation is scaled per cluster, so its size
and meaning do not change with the GPU count; the daemon would hand such a cluster to the ILP): that figure is the
time the proposer takes at that size, not a claim about its plans. Medians; the ILP gets a 10 s limit (the
daemon's). The last line is one JSON object:
{"decide_ms_p50": {"4": x, "16": x, "120": x}, "ilp_s": {...}, "ratio_120": x} (ratio: ILP time over decision).
Usage: python scripts/bench_decide.py [--policy agents/policies/default.npz] [--intervals 40] [--ilp-solves 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import numpy as np

from jigsaw.agents.controller import Controller
from jigsaw.agents.ilp import solve
from jigsaw.agents.ppo import DEFAULT_POLICY, Policy, load_policy
from jigsaw.env.candidates import SolverOptions
from jigsaw.env.gym_env import JigsawEnv
from jigsaw.env.space import HISTORY
from jigsaw.profiles.catalog import load_catalog

GPUS = (4, 16, 120)


def held_out_demand(gpus: int, load: float) -> np.ndarray:
    """[intervals, n_apps] req/s: every held-out default trace's interval means, one after another."""
    env = JigsawEnv(gpus=gpus, part="held_out", load=load)
    return np.concatenate(env.interval_demand)


def decide_times_ms(policy: Policy, gpus: int, demand: np.ndarray, intervals: int) -> tuple[list[float], int]:
    """Per interval, the ms of one proposal plus its check; and how many proposals passed the check."""
    config = replace(policy.env_config, gpus=gpus, max_gpus=None)  # timing only where the policy was not trained
    acting = Policy(policy.actor, config, policy.catalog, policy.version)
    ctl = Controller(policy.catalog, config.gpu_type, list(config.apps), gpus)
    times, passed = [], 0
    for rates in demand[:intervals]:
        forecast = ctl.observe(dict(zip(config.apps, rates.tolist(), strict=True)))
        start = time.perf_counter()
        plan = acting.proposer(ctl.history, forecast, ctl.current, gpus)
        verdict = ctl.check(plan, forecast)
        times.append(1000.0 * (time.perf_counter() - start))
        if verdict.ok:
            ctl.current = plan
            passed += 1
    return times, passed


def ilp_seconds(policy: Policy, gpus: int, demand: np.ndarray, solves: int) -> list[float]:
    config = policy.env_config
    picks = np.linspace(HISTORY, len(demand) - 1, solves).round().astype(int)
    out = []
    for i in picks:
        start = time.perf_counter()
        solve(policy.catalog, config.gpu_type, dict(zip(config.apps, demand[i].tolist(), strict=True)), gpus,
              opts=SolverOptions(time_limit_s=10.0))
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=str(DEFAULT_POLICY))
    parser.add_argument("--intervals", type=int, default=40, help="decisions timed per cluster size")
    parser.add_argument("--ilp-solves", type=int, default=5, help="ILP solves timed per cluster size")
    args = parser.parse_args()
    policy = load_policy(args.policy, load_catalog())
    out: dict[str, dict[str, float] | float] = {"decide_ms_p50": {}, "ilp_s": {}}
    for gpus in GPUS:
        demand = held_out_demand(gpus, policy.env_config.load)
        times, passed = decide_times_ms(policy, gpus, demand, args.intervals)
        ilp = statistics.median(ilp_seconds(policy, gpus, demand, args.ilp_solves))
        p50, p99 = np.percentile(times, [50, 99])
        print(f"{gpus:4d} GPUs: policy + check p50 {p50:.3f} ms, p99 {p99:.3f} ms ({passed}/{len(times)} passed the "
              f"check); ILP {ilp:.3f} s")
        out["decide_ms_p50"][str(gpus)] = round(float(p50), 4)  # type: ignore[index]
        out["ilp_s"][str(gpus)] = round(ilp, 4)  # type: ignore[index]
    out["ratio_120"] = round(out["ilp_s"]["120"] * 1000.0 / out["decide_ms_p50"]["120"], 1)  # type: ignore[index]
    print(json.dumps(out))


if __name__ == "__main__":
    main()

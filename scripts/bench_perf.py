"""Evaluations per second of the analytic model ``jigsaw.env.perf.evaluate`` on the 3-app default plan (the H100
defaults of scripts/bench_ilp.py, solved at 50% of the demand upper bound) on 4 and 120 GPUs: one demand
per call, and batches of 64 demands per call (counted as 64 evaluations). Median of repeats.
The last line is one JSON object: {"evals_per_s_4": x, "evals_per_s_120": x, "evals_per_s_batch64_120": x}.
Usage: python scripts/bench_perf.py [--repeats 5] [--calls 20000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from jigsaw.agents.capacity import upper_bound
from jigsaw.agents.ilp import prepare, solve
from jigsaw.env.candidates import Features, SolverOptions
from jigsaw.env.perf import CompiledPlan, compile_plan, evaluate
from jigsaw.profiles.catalog import load_catalog

APPS = ["social_media", "traffic_analysis", "ar_assistant"]


def rate_per_s(compiled: CompiledPlan, demand: np.ndarray, calls: int, repeats: int) -> float:
    """Median over ``repeats`` of evaluations/s (``calls`` calls each; a batch of k demands counts k)."""
    per_call = demand.shape[0] if demand.ndim == 2 else 1
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            evaluate(compiled, demand)
        rates.append(calls * per_call / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    catalog = load_catalog()
    gpu = catalog.gpu("h100")
    opts = SolverOptions()
    blocks, _ = prepare(catalog, gpu, dict.fromkeys(APPS, 1.0), Features(), opts)
    figures: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for gpus in (4, 120):
        rate = 0.5 * upper_bound(gpu, blocks, gpus, opts.headroom)
        result = solve(catalog, "h100", dict.fromkeys(APPS, rate), gpus, opts=opts)
        if result.plan is None:
            raise SystemExit(f"no plan at {gpus} GPUs: {result.reason}")
        compiled = compile_plan(catalog, result.plan)
        single = np.full(len(APPS), rate)
        figures[f"evals_per_s_{gpus}"] = round(rate_per_s(compiled, single, args.calls, args.repeats))
        print(f"{gpus:>4} GPUs  {len(compiled.task_keys)} tasks  one demand per call: "
              f"{figures[f'evals_per_s_{gpus}']:>10,} evaluations/s", flush=True)
        if gpus == 120:
            batch = rate * rng.uniform(0.0, 2.0, size=(64, len(APPS)))
            figures["evals_per_s_batch64_120"] = round(rate_per_s(compiled, batch, args.calls // 8, args.repeats))
            print(f"{gpus:>4} GPUs  64 demands per call:  {figures['evals_per_s_batch64_120']:>10,} evaluations/s",
                  flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

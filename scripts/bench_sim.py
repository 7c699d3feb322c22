"""Simulated requests per second of the discrete-event simulator ``jigsaw.env.sim.simulate`` on the 3-app default plan
(the H100 defaults of scripts/bench_ilp.py, solved at 50% of the demand upper bound) on 4 and 120 GPUs, under
Poisson arrivals scaled so that the busiest task is at ~70% utilisation (by ``jigsaw.env.perf``); and of
``simulate_spans``, the continuous simulation with carried state, over the same seconds split into four
intervals whose plans alternate between that plan and the ILP's for half the demand (three decisions, applied
by ``jigsaw.env.transitions``: start-up times, make-before-break, a change under way defers the next). Median of
repeats.
The last line is one JSON object: {"sim_requests_per_s_4": x, "sim_requests_per_s_120": x,
"carried_requests_per_s_4": x, "carried_requests_per_s_120": x}.
Usage: python scripts/bench_sim.py [--repeats 3] [--seconds 20]
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
from jigsaw.env.perf import compile_plan, evaluate
from jigsaw.env.sim import simulate, simulate_spans
from jigsaw.env.traces import poisson
from jigsaw.env.transitions import FleetBuilder, schedule
from jigsaw.profiles.catalog import load_catalog

APPS = ["social_media", "traffic_analysis", "ar_assistant"]
UTILISATION = 0.7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="simulated seconds of trace per run")
    args = parser.parse_args()
    catalog = load_catalog()
    gpu = catalog.gpu("h100")
    opts = SolverOptions()
    blocks, _ = prepare(catalog, gpu, dict.fromkeys(APPS, 1.0), Features(), opts)
    figures: dict[str, float] = {}
    for gpus in (4, 120):
        rate = 0.5 * upper_bound(gpu, blocks, gpus, opts.headroom)
        result = solve(catalog, "h100", dict.fromkeys(APPS, rate), gpus, opts=opts)
        if result.plan is None:
            raise SystemExit(f"no plan at {gpus} GPUs: {result.reason}")
        compiled = compile_plan(catalog, result.plan)
        base = np.full(len(APPS), rate)
        demand = base * UTILISATION / float(evaluate(compiled, base).utilisation.max())
        trace = poisson(APPS, demand.tolist(), args.seconds, bin_s=args.seconds)
        times, apps = trace.arrivals(np.random.default_rng(0))
        rates, viol = [], 0.0
        for r in range(args.repeats):
            start = time.perf_counter()
            m = simulate(compiled, catalog, result.plan, times, apps, r, args.seconds)
            rates.append(times.size / (time.perf_counter() - start))
            viol = m.violation
        figures[f"sim_requests_per_s_{gpus}"] = round(statistics.median(rates))
        print(f"{gpus:>4} GPUs  {len(compiled.task_keys)} tasks  {times.size:,} requests  violation {viol:.4f}: "
              f"{figures[f'sim_requests_per_s_{gpus}']:>10,} simulated requests/s", flush=True)
        smaller = solve(catalog, "h100", dict.fromkeys(APPS, 0.5 * rate), gpus, opts=opts).plan
        if smaller is None:
            raise SystemExit(f"no plan at {gpus} GPUs for half the demand")
        plans = [result.plan, smaller, result.plan, smaller]
        builder = FleetBuilder(catalog, gpu, APPS)
        fleets = [builder.fleet(p) for p in plans]
        starts = list(np.arange(4) * args.seconds / 4)
        spans, _ = schedule(starts, fleets, [builder.startup_s(p) for p in plans], builder.repartition_s,
                            builder.instance_slices, gpus * gpu.compute_slices)
        carried = []
        for r in range(args.repeats):
            start = time.perf_counter()
            simulate_spans(catalog, plans, spans, times, apps, tuple(APPS), r, args.seconds)
            carried.append(times.size / (time.perf_counter() - start))
        figures[f"carried_requests_per_s_{gpus}"] = round(statistics.median(carried))
        under_way = sum(s.in_transition for s in spans)
        print(f"{gpus:>4} GPUs  {len(spans)} spans ({under_way} changes under way): "
              f"{figures[f'carried_requests_per_s_{gpus}']:>10,} simulated requests/s with carried state", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

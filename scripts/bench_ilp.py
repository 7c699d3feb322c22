"""Solve time of the exact planner: 1 app (ar_assistant) and 3 apps (the H100 defaults) at 4-512 GPUs.

Demand per app = 50% of the rate no plan can exceed on that cluster (``capacity.upper_bound``), so
every size is loaded alike. Prints a table, then one JSON line:
{"solve_s": {"1app": {"4": s, ...}, "3apps": {...}}, "status": {...}, "slices": {...},
 "bound_check": {"limit_s": 1, "wall_s": s, "status": ...}}.
Usage: python scripts/bench_ilp.py [--repeats 3] [--sizes 4,16,64,120,512] [--time-limit 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from jigsaw.agents.capacity import upper_bound
from jigsaw.agents.ilp import prepare, solve
from jigsaw.env.candidates import Features, SolverOptions
from jigsaw.profiles.catalog import load_catalog

WORKLOADS = {"1app": ["ar_assistant"], "3apps": ["social_media", "traffic_analysis", "ar_assistant"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="4,16,64,120,512")
    parser.add_argument("--time-limit", type=float, default=60.0)
    args = parser.parse_args()
    catalog = load_catalog()
    gpu = catalog.gpu("h100")
    opts = SolverOptions(time_limit_s=args.time_limit)
    figures: dict[str, dict[str, dict[str, float | str | int]]] = {"solve_s": {}, "status": {}, "slices": {}}
    for name, apps in WORKLOADS.items():
        for key in figures:
            figures[key][name] = {}
        for gpus in (int(s) for s in args.sizes.split(",")):
            blocks, _ = prepare(catalog, gpu, dict.fromkeys(apps, 1.0), Features(), opts)
            rate = 0.5 * upper_bound(gpu, blocks, gpus, opts.headroom)
            runs = [solve(catalog, "h100", dict.fromkeys(apps, rate), gpus, opts=opts) for _ in range(args.repeats)]
            median = statistics.median(r.solve_seconds for r in runs)
            figures["solve_s"][name][str(gpus)] = round(median, 3)
            figures["status"][name][str(gpus)] = runs[0].status
            figures["slices"][name][str(gpus)] = runs[0].slices_used
            print(f"{name:6} {gpus:>4} GPUs  {rate:>9.1f} req/s per app  median {median:7.3f} s  "
                  f"{runs[0].status:10} {runs[0].slices_used} slices", flush=True)
    # The hard bound: a large solve under a 1 s limit must answer in about 1 s (plus the cancel grace).
    apps = WORKLOADS["3apps"]
    blocks, _ = prepare(catalog, gpu, dict.fromkeys(apps, 1.0), Features(), opts)
    rate = 0.5 * upper_bound(gpu, blocks, 512, opts.headroom)
    start = time.perf_counter()
    bounded = solve(catalog, "h100", dict.fromkeys(apps, rate), 512, opts=SolverOptions(time_limit_s=1.0))
    figures["bound_check"] = {"limit_s": 1.0, "wall_s": round(time.perf_counter() - start, 3), "status": bounded.status}
    print(f"3apps 512 GPUs under a 1 s limit: answered in {figures['bound_check']['wall_s']} s, {bounded.status}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

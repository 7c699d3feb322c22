"""Choose ``ilp_sticky``'s headroom and change penalty, then ``ilp_window``'s window, on the TRAINING part of the
default traces (never the held-out part the evaluation reports on), and write them to
``agents/hyperparams/ilp_sticky.yml``.

Each candidate runs as the evaluation runs (transitions on, continuous simulation) on the first ``--intervals``
intervals of every trace's training part; the least slices / cluster slices + 10 x violated share (the
environment's reward weights) wins. Stage 1: headroom x change penalty at window 1 (``--skip-grid`` keeps the
file's); stage 2: the windows of ``--windows`` at stage 1's winner.
The last line is one JSON object: {"headroom": h, "change_penalty": p, "window": w, "grid": [...], "windows": [...]}.
Usage: python scripts/tune_ilp_sticky.py [--intervals 30] [--skip-grid] [--windows 1,2,3,5,8] [--write]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import replace
from typing import Any

from tqdm import tqdm

from jigsaw.agents.baselines import STICKY_SETTINGS, WindowedController, sticky_settings
from jigsaw.agents.evaluate import evaluate_systems
from jigsaw.env.candidates import SolverOptions
from jigsaw.env.gym_env import EnvConfig
from jigsaw.profiles.catalog import Catalog, load_catalog

HEADROOMS = (1.1, 1.2, 1.3)
PENALTIES = (0.5, 2.0, 5.0)
VIOLATION_WEIGHT = 10.0  # EnvConfig.violation_weight


def _run(catalog: Catalog, config: EnvConfig, candidates: list[tuple[float, float, int]], intervals: int,
         time_limit_s: float) -> list[dict[str, Any]]:
    """Score each (headroom, change penalty, window) on the training part."""
    capacity = config.gpus * catalog.gpu(config.gpu_type).compute_slices
    systems = {f"{h}/{c}/{w}": (lambda _peak, _seed, h=h, c=c, w=w: WindowedController(
        catalog, config.gpu_type, list(config.apps), config.gpus, window=w,
        opts=replace(SolverOptions(time_limit_s=time_limit_s), headroom=h, change_penalty=c)))
        for h, c, w in candidates}
    ev = evaluate_systems(catalog, config, systems, intervals, (0,), part="train",
                          progress=lambda jobs, what: tqdm(jobs, desc=what, file=sys.stderr))
    out = []
    for (h, c, w), name in zip(candidates, systems, strict=True):
        s = ev.summaries[name].mean
        out.append({"headroom": h, "change_penalty": c, "window": w, "slices_mean": round(s.slices_mean, 3),
                    "violation_pct": round(s.violation_pct, 3), "reconfigs_per_h": round(s.reconfigs_per_h, 1),
                    "score": round(s.slices_mean / capacity + VIOLATION_WEIGHT * s.violation_pct / 100.0, 4)})
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, default=30, help="per trace's training part (default 30)")
    parser.add_argument("--time-limit", type=float, default=5.0, help="ILP wall-clock bound per decision, s")
    parser.add_argument("--skip-grid", action="store_true", help="keep the file's headroom and change penalty")
    parser.add_argument("--windows", default="1,2,3,5,8", help="windows tried in stage 2 (default %(default)s)")
    parser.add_argument("--write", action="store_true", help=f"write the winners to {STICKY_SETTINGS}")
    args = parser.parse_args()
    catalog = load_catalog()
    config = EnvConfig(mode="sim")
    grid: list[dict[str, Any]] = []
    if args.skip_grid:
        opts, _ = sticky_settings(SolverOptions())
        headroom, penalty = opts.headroom, opts.change_penalty
    else:
        grid = _run(catalog, config, [(h, c, 1) for h, c in itertools.product(HEADROOMS, PENALTIES)], args.intervals,
                    args.time_limit)
        best = min(grid, key=lambda g: g["score"])
        headroom, penalty = best["headroom"], best["change_penalty"]
    windows = _run(catalog, config, [(headroom, penalty, int(w)) for w in args.windows.split(",")], args.intervals,
                   args.time_limit)
    window = min(windows, key=lambda g: g["score"])["window"]
    if args.write:
        lines = ["# ilp_sticky and ilp_window (jigsaw.agents.baselines): the ILP with a change penalty (slices per task",
                 "# whose worker kind it changes) and, for ilp_window, a scale-down window (intervals), chosen on the",
                 f"# TRAINING part of the default traces by `python scripts/tune_ilp_sticky.py --intervals {args.intervals}"
                 f"{' --skip-grid' if args.skip_grid else ''} --write`",
                 "# (score = slices / cluster + 10 x violated share; lower wins):"]
        lines += [f"#   {json.dumps(g)}" for g in grid + windows]
        lines += [f"headroom: {headroom}", f"change_penalty: {penalty}", f"window: {window}"]
        STICKY_SETTINGS.write_text("\n".join(lines) + "\n")
    print(json.dumps({"headroom": headroom, "change_penalty": penalty, "window": window, "grid": grid,
                      "windows": windows}))


if __name__ == "__main__":
    main()

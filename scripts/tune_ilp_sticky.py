"""Choose ``ilp_sticky``'s headroom and change penalty on the TRAINING part of the default traces (never the
held-out part the evaluation reports on) and write them to ``agents/hyperparams/ilp_sticky.yml``.

Each (headroom, change penalty) of the grid runs as the evaluation runs (transitions on, continuous simulation)
on the first ``--intervals`` intervals of every trace's training part; the pair with the least
slices / cluster slices + 10 x violated share (the environment's reward weights) wins.
The last line is one JSON object: {"headroom": h, "change_penalty": p, "score": s, "grid": [...]}.
Usage: python scripts/tune_ilp_sticky.py [--intervals 40] [--write]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import replace

from tqdm import tqdm

from jigsaw.agents.baselines import STICKY_SETTINGS
from jigsaw.agents.controller import Controller
from jigsaw.agents.evaluate import evaluate_systems
from jigsaw.env.candidates import SolverOptions
from jigsaw.env.gym_env import EnvConfig
from jigsaw.profiles.catalog import load_catalog

HEADROOMS = (1.1, 1.2, 1.3)
PENALTIES = (0.5, 2.0, 5.0)
VIOLATION_WEIGHT = 10.0  # EnvConfig.violation_weight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, default=40, help="per trace's training part (default 40)")
    parser.add_argument("--time-limit", type=float, default=5.0, help="ILP wall-clock bound per decision, s")
    parser.add_argument("--write", action="store_true", help=f"write the winner to {STICKY_SETTINGS}")
    args = parser.parse_args()
    catalog = load_catalog()
    config = EnvConfig(mode="sim")
    capacity = config.gpus * catalog.gpu(config.gpu_type).compute_slices
    pairs = list(itertools.product(HEADROOMS, PENALTIES))
    systems = {f"{h}/{c}": (lambda _peak, _seed, h=h, c=c: Controller(
        catalog, config.gpu_type, list(config.apps), config.gpus,
        opts=replace(SolverOptions(time_limit_s=args.time_limit), headroom=h, change_penalty=c))) for h, c in pairs}
    ev = evaluate_systems(catalog, config, systems, args.intervals, (0,), part="train",
                          progress=lambda jobs, what: tqdm(jobs, desc=what, file=sys.stderr))
    grid = []
    for (headroom, penalty), name in zip(pairs, systems, strict=True):
        s = ev.summaries[name].mean
        score = s.slices_mean / capacity + VIOLATION_WEIGHT * s.violation_pct / 100.0
        grid.append({"headroom": headroom, "change_penalty": penalty, "slices_mean": round(s.slices_mean, 3),
                     "violation_pct": round(s.violation_pct, 3), "reconfigs_per_h": round(s.reconfigs_per_h, 1),
                     "score": round(score, 4)})
        print(json.dumps(grid[-1]), file=sys.stderr, flush=True)
    best = min(grid, key=lambda g: g["score"])
    if args.write:
        STICKY_SETTINGS.write_text(
            "# ilp_sticky (jigsaw.agents.baselines): the ILP with a change penalty (slices per task whose worker kind it\n"
            f"# changes), chosen on the TRAINING part of the default traces by `python scripts/tune_ilp_sticky.py "
            f"--intervals {args.intervals} --write`\n# (score = slices / cluster + 10 x violated share; grid "
            f"headroom {list(HEADROOMS)} x penalty {list(PENALTIES)}).\n"
            f"# winner: {best['slices_mean']} slices, {best['violation_pct']} % violated, "
            f"{best['reconfigs_per_h']} reconfigurations / h\n"
            f"headroom: {best['headroom']}\nchange_penalty: {best['change_penalty']}\n")
    print(json.dumps({**{k: best[k] for k in ("headroom", "change_penalty", "score")}, "grid": grid}))


if __name__ == "__main__":
    main()

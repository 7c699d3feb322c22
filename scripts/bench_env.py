"""Steps per second of ``jigsaw/JigsawServe-v0`` for the 3-app default on 4 and 120 GPUs: in ``perf`` mode
(one env in this process, and 2 envs in SB3's SubprocVecEnv), unpolished (the environment's own cost), and with the
deployed proposer's polish, as training runs it (``proposer_steps_per_s``, one env); and simulated requests per
second in ``sim`` mode. Actions are random among the unmasked ones, masks fetched every step as MaskablePPO does.
The single env is timed inside its calls (masks, step, reset), not the drawing of actions; the 2-process figure
is wall-clock, draws, pipes and all. Medians of repeats. The last line is one JSON object:
{"perf_steps_per_s": {"4": x, "120": x}, "perf_steps_per_s_vec2": {...}, "proposer_steps_per_s": {...},
"sim_requests_per_s": {...}}.
Usage: python scripts/bench_env.py [--steps 4000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
from stable_baselines3.common.vec_env import SubprocVecEnv

from jigsaw.env.gym_env import JigsawEnv

GPUS = (4, 120)


def random_actions(masks: np.ndarray, nvec: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One allowed choice per head: masks [..., sum(nvec)] -> actions [..., len(nvec)]."""
    score = rng.random(masks.shape) * masks
    heads = [score[..., a:b].argmax(axis=-1) for a, b in itertools.pairwise(np.cumsum((0, *nvec)).tolist())]
    return np.stack(heads, axis=-1)


def single(gpus: int, steps: int, mode: str = "perf", polish: bool = False) -> tuple[float, float]:
    """(steps/s, simulated requests/s) of one env, timing the env's own calls (masks, step, reset): the
    random choice of actions stands in for the agent's, whose time is not the environment's."""
    env = JigsawEnv(gpus=gpus, mode=mode, polish=polish)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    requests = elapsed = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        masks = env.action_masks()
        elapsed += time.perf_counter() - start
        action = random_actions(masks, env.action_space.nvec, rng)
        start = time.perf_counter()
        _, _, _, truncated, info = env.step(action)
        if truncated:
            env.reset()
        elapsed += time.perf_counter() - start
        requests += float(info["demand_rps"].sum()) * env.config.interval_s
    return steps / elapsed, requests / elapsed


def _make(gpus: int) -> Callable[[], JigsawEnv]:
    return lambda: JigsawEnv(gpus=gpus, polish=False)


def vectorised(gpus: int, steps: int) -> float:
    """Env steps/s (summed over both envs) of a 2-process SubprocVecEnv."""
    vec = SubprocVecEnv([_make(gpus), _make(gpus)])
    try:
        vec.seed(0)
        vec.reset()
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for _ in range(steps // 2):
            masks = np.stack(vec.env_method("action_masks"))
            vec.step(random_actions(masks, vec.action_space.nvec, rng))
        return 2 * (steps // 2) / (time.perf_counter() - start)
    finally:
        vec.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sim-steps", type=int, default=20)
    args = parser.parse_args()
    out: dict[str, dict[str, float]] = {"perf_steps_per_s": {}, "perf_steps_per_s_vec2": {}, "proposer_steps_per_s": {},
                                        "sim_requests_per_s": {}}
    for gpus in GPUS:
        perf = statistics.median(single(gpus, args.steps)[0] for _ in range(args.repeats))
        vec = statistics.median(vectorised(gpus, args.steps) for _ in range(args.repeats))
        proposer = statistics.median(single(gpus, args.steps // 4, polish=True)[0] for _ in range(args.repeats))
        sim = statistics.median(single(gpus, args.sim_steps, "sim")[1] for _ in range(args.repeats))
        print(f"{gpus:4d} GPUs: perf {perf:,.0f} steps/s, 2 processes {vec:,.0f} steps/s, with the proposer's polish "
              f"{proposer:,.0f} steps/s, sim {sim:,.0f} requests/s")
        out["perf_steps_per_s"][str(gpus)] = round(perf)
        out["perf_steps_per_s_vec2"][str(gpus)] = round(vec)
        out["proposer_steps_per_s"][str(gpus)] = round(proposer)
        out["sim_requests_per_s"][str(gpus)] = round(sim)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

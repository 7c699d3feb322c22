"""The agent's observation: demand, its levels, the plan they decoded to and how the plan served, as one float32
vector scaled to about [0, 1] and clipped to [0, OBS_HIGH] (``DecisionSpace.observation`` lists the features)."""

from __future__ import annotations

import numpy as np

from jigsaw.env.space.levels import BUDGET_LEVELS, HISTORY, OBS_HIGH, PROVISION_LEVELS, kernel
from jigsaw.env.space.tables import Scales


def observation_size(n_apps: int, n_tasks: int, n_paths: int) -> int:
    """Demand (HISTORY + forecast per app), 8 features per task, 2 per path, slices and GPUs."""
    return (HISTORY + 1) * n_apps + 8 * n_tasks + 2 * n_paths + 2


@kernel
def observation(size, demand_features, variant, weight, provision, budget, config, replicas, slices, gpus,
                utilisation, path_p95, path_violation, scales):  # pragma: no cover - compiled
    """``DecisionSpace.observation``'s vector, in its order."""
    scales = Scales(*scales)  # named on entry (``tables``)
    n, n_paths, head = variant.size, scales.path_slo_ms.size, demand_features.size
    obs = np.empty(size)
    obs[:head] = demand_features
    for t in range(n):
        k = config[t]
        obs[head + t] = variant[t] * scales.inv_top_variant[t]
        obs[head + n + t] = weight[t] * (1.0 / BUDGET_LEVELS)
        obs[head + 2 * n + t] = budget[t] / scales.slo_ms[t]
        obs[head + 3 * n + t] = scales.config_features[0, k]  # slices per worker
        obs[head + 4 * n + t] = scales.config_features[1, k]  # log batch
        obs[head + 5 * n + t] = provision[t] * (1.0 / (PROVISION_LEVELS.size - 1))
        obs[head + 6 * n + t] = utilisation[t]
        obs[head + 7 * n + t] = replicas[t] * scales.config_slices[k] * (1.0 / scales.total_slices)
    rest = head + 8 * n
    for p in range(n_paths):
        x = path_p95[p] / scales.path_slo_ms[p]
        obs[rest + p] = x if x < OBS_HIGH else OBS_HIGH  # as np.fmin: NaN (nothing served) reads as the cap
        obs[rest + n_paths + p] = path_violation[p]
    obs[-2] = slices / scales.total_slices
    obs[-1] = gpus / scales.n_gpus
    return np.minimum(np.maximum(obs, 0.0), OBS_HIGH).astype(np.float32)

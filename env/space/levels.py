"""The levels a plan is decoded from: per task a variant, a budget weight and a provisioning level; the constants
every part of the decision space shares; the demand forecast.

* **Variant**: an index into the task's ladder (least to most accurate).
* **Budget weight**: w_t in 1..BUDGET_LEVELS; the task's share of its app's latency SLO (``decode``).
* **Provisioning**: an index into PROVISION_LEVELS, capacity over the forecast items/s beyond the controller's
  headroom: a level rather than a replica count, so that it means the same thing at 4 and at 120 GPUs (the
  proposer, ``jigsaw.env.propose``, sets it per app).

``kernel`` is how every compiled function of the package compiles. numba caches each function's machine code
beside its own file and does not notice a change in another file it calls or a constant it reads
(numba/numba#1833): after editing a kernel or a constant here, delete ``env/space/__pycache__``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

BUDGET_LEVELS = 5
PROVISION_LEVELS = np.array([1.0, 1.05, 1.1, 1.15, 1.2, 1.3, 1.4, 1.5, 1.75, 2.0])
BUDGET_RESOLUTION_MS = 0.5  # budgets are floored to this grid when configurations are looked up
NONE = 1e12  # the cost of "no configuration fits": more than any plan's slices
HISTORY = 2  # intervals of measured demand the forecast and the observation see
OBS_HIGH = 4.0  # observation features are scaled to about [0, 1] and clipped to [0, OBS_HIGH]
SQUEEZE_STEP, SQUEEZE_TRIES = 0.95, 40  # an overloaded plan shrinks 5 % at a time (0.95^40 = 0.13)
POLISH_ROUNDS, POLISH_TRIES = 6, 4  # DecisionSpace.polish: rounds of moves; full decodes tried per round
SHARE_LADDER = np.linspace(0.0, 1.0, 9)  # how much memory counts in a worker's share (``decode``)

# the kernels run every environment step on arrays of ~10 tasks, where numpy's cost per call would outweigh the
# arithmetic
kernel = numba.njit(cache=True, error_model="numpy")


def forecast_rps(history: np.ndarray, peak: np.ndarray | None = None) -> np.ndarray:
    """Next interval's req/s per app from ``history`` ([..., HISTORY, n_apps] interval means, oldest first): the
    last rate, or its linear extrapolation when demand is rising (falling demand is followed one interval late:
    safe), and at least ``peak`` ([..., n_apps]), the last interval's busiest sub-interval (a trace bin, or the
    daemon's PEAK_WINDOW_S), where it is known: sized for the mean, a plan drops the bursts inside the interval."""
    last, before = history[..., -1, :], history[..., -2, :]
    rising = np.maximum(last, 2.0 * last - before)
    return rising if peak is None else np.maximum(rising, peak)


@dataclass(frozen=True, eq=False)
class Levels:
    """The agent's state of the decision, per task (in ``DecisionSpace.tasks`` order)."""

    variant: np.ndarray  # int, index into the task's ladder
    weight: np.ndarray  # int, 1..BUDGET_LEVELS
    provision: np.ndarray  # int, index into PROVISION_LEVELS

    def replace(self, **changes: np.ndarray) -> Levels:
        return Levels(**{**{"variant": self.variant, "weight": self.weight, "provision": self.provision}, **changes})

    def same_configuration(self, other: Levels) -> bool:
        """Same variants and budget weights (provisioning may differ)."""
        return np.array_equal(self.variant, other.variant) and np.array_equal(self.weight, other.weight)

"""The decision space the agent acts in: per task a variant, a budget weight and a provisioning level
(``levels``), what they mean at a forecast (``decode``), made valid (``repair``), improved for the controller
(``polish``) and what the agent sees (``observation``); ``DecisionSpace``
holds the tables (``tables``) and calls the kernels with them."""

from jigsaw.env.space.decision_space import DecisionSpace
from jigsaw.env.space.decode import Decoded
from jigsaw.env.space.levels import (
    BUDGET_LEVELS,
    BUDGET_RESOLUTION_MS,
    HISTORY,
    OBS_HIGH,
    POLISH_ROUNDS,
    POLISH_TRIES,
    PROVISION_LEVELS,
    SHARE_LADDER,
    SQUEEZE_STEP,
    SQUEEZE_TRIES,
    Levels,
    forecast_rps,
)

__all__ = ["BUDGET_LEVELS", "BUDGET_RESOLUTION_MS", "HISTORY", "OBS_HIGH", "POLISH_ROUNDS",
           "POLISH_TRIES", "PROVISION_LEVELS", "SHARE_LADDER", "SQUEEZE_STEP", "SQUEEZE_TRIES", "DecisionSpace",
           "Decoded", "Levels", "forecast_rps"]

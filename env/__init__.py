"""The model of serving: plans, traces, the performance model, the simulator, the decision space, and the
Gymnasium environment, registered here as ``jigsaw/JigsawServe-v0`` (idempotently; the environment's module is
imported only when one is made)."""

import gymnasium

ENV_ID = "jigsaw/JigsawServe-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="jigsaw.env.gym_env:JigsawEnv")

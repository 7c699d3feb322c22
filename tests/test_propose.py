"""The proposer's per-app hold choices (``jigsaw.env.propose``), the environment over a range of cluster sizes, and a
policy asked to serve outside its range."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from jigsaw.agents.controller import Controller
from jigsaw.env.gym_env import DEFAULT_TRACES, JigsawEnv
from jigsaw.env.propose import APP_CAPACITY, FOLLOW, HOLD, REPLAN, Proposer
from jigsaw.env.space import PROVISION_LEVELS, DecisionSpace
from jigsaw.env.transitions import change
from jigsaw.profiles.catalog import load_catalog
from jigsaw.profiles.errors import ConfigError

APPS = ["social_media", "traffic_analysis", "ar_assistant"]


@pytest.fixture(scope="module")
def proposer() -> Proposer:
    return Proposer(DecisionSpace(load_catalog(), "h100", APPS, 4))


def _action(p: Proposer, hold: int, capacity: int = 0) -> np.ndarray:
    """Every app at ``hold`` and at ``capacity`` (an index into APP_CAPACITY)."""
    n_apps = len(p.space.apps)
    return np.array([hold] * n_apps + [capacity] * n_apps)


def _start(p: Proposer, forecast: np.ndarray):
    levels = p.space.initial()
    return p.step(levels, None, _action(p, REPLAN), forecast)


def test_follow_keeps_the_kinds_and_sizes_replicas_for_the_forecast(proposer: Proposer) -> None:
    """Under ``follow`` every task keeps its configuration and budget, and its replicas are
    max(1, ceil(forecast x items x headroom x level / throughput)), worked here by hand from the tables; the
    change starts workers beside the ones serving and restarts none."""
    space = proposer.space
    low = proposer.space.capacity_rps * 0.01
    high = 2 * low
    start = _start(proposer, low)
    step = proposer.step(start.levels, start.decoded, _action(proposer, FOLLOW, capacity=3), high)
    d, old = step.decoded, start.decoded
    assert (step.held == FOLLOW).all()
    assert np.array_equal(d.config, old.config) and np.array_equal(d.budget_ms, old.budget_ms)
    for t, (a, _) in enumerate(space.tasks):
        load = high[space.apps.index(a)] * old.items[t] * space.opts.headroom * PROVISION_LEVELS[APP_CAPACITY[3]]
        assert d.replicas[t] == max(1, math.ceil(load / space.c_thr[old.config[t]] - 1e-9))
    assert d.replicas.sum() > old.replicas.sum()
    startup = np.full(space.n_tasks, 10.0)
    c = change(space.fleet(old), space.fleet(d), startup, 10.0, space.profile_slices, space.total_slices)
    assert (c.serving == old.replicas).all()  # every worker serving keeps serving while the new ones start


def test_hold_never_releases_and_follow_does(proposer: Proposer) -> None:
    high = proposer.space.capacity_rps * 0.03
    low = high / 3
    start = _start(proposer, high)
    held = proposer.step(start.levels, start.decoded, _action(proposer, HOLD), low).decoded
    followed = proposer.step(start.levels, start.decoded, _action(proposer, FOLLOW), low).decoded
    assert np.array_equal(held.replicas, start.decoded.replicas)
    assert (followed.replicas <= start.decoded.replicas).all() and followed.slices < held.slices


def test_a_hold_the_gpus_cannot_take_is_dropped(proposer: Proposer) -> None:
    """Holding the most accurate variants through a rise that needs cheaper ones would overflow 4 GPUs: the holds
    are dropped (hold -> follow -> replan) and the plan fits."""
    space = proposer.space
    start = proposer.step(space.initial(), None, _action(proposer, REPLAN), np.array([20.0, 8.0, 3.0]))
    step = proposer.step(start.levels, start.decoded, _action(proposer, HOLD), space.capacity_rps * 0.3)
    assert step.decoded.gpus <= space.n_gpus
    assert (step.held != HOLD).all()


def test_a_plan_in_force_reads_back_as_what_it_was_decoded_from(proposer: Proposer) -> None:
    start = _start(proposer, np.array([200.0, 80.0, 30.0]))
    plan = proposer.space.plan(start.levels, start.decoded)
    back = proposer.decoded_of(plan, start.decoded.forecast_rps)
    assert back is not None
    for field in ("config", "replicas", "budget_ms", "items"):
        assert np.allclose(getattr(back, field), getattr(start.decoded, field)), field
    assert (back.counts, back.slices, back.gpus) == (start.decoded.counts, start.decoded.slices, start.decoded.gpus)


def test_replan_provisions_the_capacity_chosen() -> None:
    """A replan sizes every task of an app for the forecast x headroom x its capacity level: more capacity, more
    replicas (unpolished: polish, a local search, may find cheaper variants from one level than from another);
    the action has one hold and one capacity choice per app."""
    proposer = Proposer(DecisionSpace(load_catalog(), "h100", APPS, 4), polish=False)
    space = proposer.space
    forecast = space.capacity_rps * 0.012
    start = _start(proposer, forecast)
    low = proposer.step(start.levels, start.decoded, _action(proposer, REPLAN, 0), forecast)
    high = proposer.step(start.levels, start.decoded, _action(proposer, REPLAN, 2), forecast)
    assert (low.levels.provision == APP_CAPACITY[0]).all() and (high.levels.provision == APP_CAPACITY[2]).all()
    assert high.decoded.slices > low.decoded.slices and high.decoded.replicas.sum() > low.decoded.replicas.sum()
    assert proposer.nvec.tolist() == [3] * len(space.apps) + [len(APP_CAPACITY)] * len(space.apps)
    assert proposer.masks().size == proposer.nvec.sum()
    with pytest.raises(ValueError, match="entries"):
        proposer.step(start.levels, None, np.zeros(3, dtype=int), forecast)


def test_episodes_draw_their_cluster_from_the_range_and_scale_the_demand() -> None:
    env = JigsawEnv(traces=DEFAULT_TRACES[:1], max_gpus=16, random_levels=False, polish=False)
    check_env(env, skip_render_check=True)
    seen = {}
    for seed in range(12):
        env.reset(seed=seed)
        _, _, _, _, info = env.step(env.action_space.nvec // 2)
        seen[info["gpus_cluster"]] = (env._t - 1, env._trace, info["demand_rps"])
        assert info["gpus"] <= info["gpus_cluster"]
    assert len(seen) >= 4 and min(seen) >= 4 and max(seen) <= 16
    base = JigsawEnv(traces=DEFAULT_TRACES[:1], polish=False)
    for gpus, (t, trace, demand) in seen.items():  # load is a share of the cluster: demand grows with it
        assert np.allclose(demand, base.interval_demand[trace][t] * gpus / 4)


def test_a_range_below_its_smallest_cluster_is_refused() -> None:
    with pytest.raises(ConfigError) as e:
        JigsawEnv(gpus=8, max_gpus=4)
    assert e.value.field == "max_gpus"


def test_a_policy_outside_its_sizes_is_refused_and_the_ilp_plans_a_cluster_that_shrank_out_of_them() -> None:
    from jigsaw.agents.policy_file import PolicyError
    from jigsaw.agents.ppo import DEFAULT_POLICY, load_policy

    catalog = load_catalog()
    policy = load_policy(DEFAULT_POLICY, catalog)
    low, high = policy.sizes.start, policy.sizes.stop - 1
    policy.check_serves(tuple(APPS), high, "h100", "p")
    for gpus in (low - 1, high + 1):
        with pytest.raises(PolicyError, match="trained for"):
            policy.check_serves(tuple(APPS), gpus, "h100", "p")
    with pytest.raises(PolicyError, match="trained for"):
        policy.check_serves(("social_media",), high, "h100", "p")
    ctl = Controller(catalog, "h100", APPS, high, proposer=policy.proposer)
    rates = {"social_media": 200.0, "traffic_analysis": 80.0, "ar_assistant": 30.0}
    assert ctl.decide(rates).source in ("policy", "ilp")
    ctl.gpus = high + 1  # the cluster gained a GPU past the policy's sizes: the ILP plans it, nothing dies
    decision = ctl.decide(rates)
    assert decision.source == "ilp" and "trained for" in decision.verdict

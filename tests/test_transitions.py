"""Plan changes take time (``jigsaw.env.transitions``): the rules against hand-worked cases, the schedule of
decisions, and the continuous simulation across a change."""

from __future__ import annotations

import numpy as np
import pytest

from jigsaw.agents.ilp import solve
from jigsaw.env.perf import compile_plan
from jigsaw.env.sim import simulate, simulate_spans
from jigsaw.env.traces import poisson
from jigsaw.env.transitions import Fleet, FleetBuilder, Span, change, schedule
from jigsaw.profiles.catalog import load_catalog

STARTUP, REPARTITION = 10.0, 5.0
SLICES = np.array([1.0, 3.0])  # two MIG profiles: a 1-slice and a 3-slice instance


def fleet(kind: list[int], replicas: list[int], profile: list[int], instances: list[int],
          mps: list[int] | None = None) -> Fleet:
    share = 1.0 / np.array(mps or [1] * len(kind), dtype=float)
    prof = np.array(profile)
    return Fleet(np.array(kind), np.array(replicas), prof, share, np.array(instances), SLICES[prof] * share)


def changed(old: Fleet, new: Fleet, total: float = 7.0):
    return change(old, new, np.full(old.kind.size, STARTUP), REPARTITION, SLICES, total)


def test_scale_up_with_room_waits_only_for_start_up_and_keeps_serving() -> None:
    c = changed(fleet([0], [2], [0], [2, 0]), fleet([0], [3], [0], [3, 0]))  # a third 1g worker; 5 slices free
    assert c.delay_s == STARTUP + REPARTITION  # its instance is new: cut from free slices
    assert c.serving.tolist() == [2] and c.started.tolist() == [1] and c.stopped_early.tolist() == [0]


def test_scale_down_and_batch_changes_are_instant() -> None:
    old = fleet([0, 1], [3, 1], [0, 1], [3, 1])
    assert changed(old, fleet([0, 1], [2, 1], [0, 1], [2, 1])).delay_s == 0.0
    same = changed(old, old)  # e.g. only batch sizes or budgets differ: router settings
    assert same.delay_s == 0.0 and not same.workers_changed


def test_kind_change_with_free_slices_is_make_before_break() -> None:
    # task 0 moves from two 1g workers to one 3g worker; 7 - 2 = 5 slices free for the new instance
    c = changed(fleet([0], [2], [0], [2, 0]), fleet([1], [1], [1], [0, 1]))
    assert c.delay_s == REPARTITION + STARTUP
    assert c.serving.tolist() == [2] and c.stopped_early.tolist() == [0] and c.stopped.tolist() == [2]
    assert c.created.tolist() == [0, 1]


def test_kind_change_on_a_full_cluster_breaks_first() -> None:
    # 7 workers on seven 1g instances, the variant changes in place: no room, no free slices
    c = changed(fleet([0], [7], [0], [7, 0]), fleet([1], [7], [0], [7, 0]))
    assert c.delay_s == STARTUP
    assert c.serving.tolist() == [0] and c.stopped_early.tolist() == [7]  # the task serves nothing meanwhile


def test_partly_full_cluster_breaks_only_what_it_must() -> None:
    # 6 of 7 slices used by task 0 (1g each), one free: task 0 changes variant in place -> one new instance cut
    # from the free slice, the other 5 arrivals need room made by stopping old workers
    c = changed(fleet([0], [6], [0], [6, 0]), fleet([1], [6], [0], [6, 0]))
    assert c.stopped_early.tolist() == [5] and c.serving.tolist() == [1]
    assert c.delay_s == REPARTITION + STARTUP


def test_repartition_drains_the_instances_that_go() -> None:
    # task 0: three 1g workers leave for a 3g one (the geometry's 1g count falls, 3g rises, no free slices);
    # task 1 keeps its four 1g workers
    old = fleet([0, 2], [3, 4], [0, 0], [7, 0])
    new = fleet([1, 2], [1, 4], [1, 0], [4, 1])
    c = changed(old, new)
    assert c.created.tolist() == [0, 1]
    assert c.stopped_early.tolist() == [3, 0]  # drained for the repartition: the 1g instances that go
    assert c.serving.tolist() == [0, 4] and c.delay_s == REPARTITION + STARTUP


def test_mps_workers_count_in_instance_shares() -> None:
    # two workers sharing one 1g instance (MPS 2) -> a third worker of the same kind: half an instance free
    # is not enough for it alone? It is: the instance holds 2, the third needs half of a new one
    c = changed(fleet([0], [2], [0], [1, 0], [2]), fleet([0], [3], [0], [2, 0], [2]))
    assert c.serving.tolist() == [2] and c.stopped_early.tolist() == [0]
    assert c.delay_s == REPARTITION + STARTUP  # its instance is cut from free slices


def test_schedule_defers_and_supersedes_decisions_made_during_a_change() -> None:
    a = fleet([0], [2], [0], [2, 0])
    b = fleet([1], [2], [1], [0, 2])  # a kind change: 5 + 10 s
    c = fleet([1], [3], [1], [0, 3])
    startup = [np.full(1, STARTUP)] * 4
    spans, applied = schedule([0.0, 60.0, 62.0, 64.0], [a, b, a, c], startup, REPARTITION, SLICES, 21.0)
    assert applied[1].applied_s == 60.0 and applied[1].serving_s == 75.0
    assert np.isnan(applied[2].applied_s)  # superseded by decision 3 while decision 1's change ran
    assert applied[3].applied_s == 75.0
    assert [(s.start_s, s.source, s.in_transition) for s in spans] == [
        (0.0, 0, False), (60.0, 0, True), (75.0, 1, False), (75.0, 1, True), (90.0, 3, False)]


@pytest.fixture(scope="module")
def small_plan():
    catalog = load_catalog()
    result = solve(catalog, "h100", {"social_media": 20.0}, 1)
    return catalog, result.plan


def test_one_span_is_the_plain_simulation(small_plan) -> None:
    catalog, plan = small_plan
    compiled = compile_plan(catalog, plan)
    times, apps = poisson(["social_media"], [25.0], 20.0, bin_s=20.0).arrivals(np.random.default_rng(1))
    builder = FleetBuilder(catalog, catalog.gpu("h100"), ["social_media"])
    plain = simulate(compiled, catalog, plan, times, apps, 4, 20.0)
    spans = [Span(0.0, 0, builder.fleet(plan).replicas, False)]
    (arrival, violated), = simulate_spans(catalog, [plan], spans, times, apps, ("social_media",), 4, 20.0)
    assert arrival.size == plain.requests[0]
    assert violated.mean() == pytest.approx(plain.app_violation[0])


def test_a_task_without_workers_violates_what_arrives_meanwhile(small_plan) -> None:
    catalog, plan = small_plan
    times, apps = poisson(["social_media"], [10.0], 30.0, bin_s=30.0).arrivals(np.random.default_rng(2))
    builder = FleetBuilder(catalog, catalog.gpu("h100"), ["social_media"])
    serving = builder.fleet(plan).replicas
    gap = serving.copy()
    gap[0] = 0  # the first task loses its workers from 10 s to 20 s
    spans = [Span(0.0, 0, serving, False), Span(10.0, 0, gap, True), Span(20.0, 0, serving, False)]
    (arrival, violated), = simulate_spans(catalog, [plan], spans, times, apps, ("social_media",), 0, 30.0)
    inside = (arrival >= 10.0) & (arrival < 20.0)
    assert violated[inside].all()
    assert violated[arrival < 9.0].mean() < 0.05 and violated[arrival > 21.0].mean() < 0.05

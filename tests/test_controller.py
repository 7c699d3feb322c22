"""The controller's forecast and its answer to a forecast the cluster cannot hold (hand-checked cases)."""

from __future__ import annotations

import time

from jigsaw.agents.baselines import WindowedController
from jigsaw.agents.controller import BACKOFF_SOLVES, Controller
from jigsaw.env.candidates import SolverOptions
from jigsaw.env.perf import compile_plan, evaluate
from jigsaw.profiles.catalog import Catalog

APP = "ar_assistant"


def test_the_busiest_window_raises_the_forecast(builtin_catalog: Catalog) -> None:
    ctl = Controller(builtin_catalog, "h100", [APP], 1)
    assert ctl.observe({APP: 10.0}) == {APP: 10.0}
    assert ctl.observe({APP: 10.0}, {APP: 30.0}) == {APP: 30.0}  # the bursts inside the interval, not its mean
    assert ctl.observe({APP: 12.0}, {APP: 11.0}) == {APP: 14.0}  # a rising mean's trend beats a lower peak
    mean_only = Controller(builtin_catalog, "h100", [APP], 1).decide({APP: 20.0})
    with_peak = Controller(builtin_catalog, "h100", [APP], 1).decide({APP: 20.0}, {APP: 150.0})
    assert with_peak.ilp_slices > mean_only.ilp_slices


def test_an_infeasible_forecast_gets_the_plan_for_the_share_that_fits(builtin_catalog: Catalog) -> None:
    ctl = Controller(builtin_catalog, "h100", [APP], 1)
    held = ctl.decide({APP: 5.0}).plan
    d = ctl.decide({APP: 1000.0})  # a few times what one GPU holds
    assert d.source == "ilp" and d.plan is not None and d.plan != held
    assert "x the forecast" in d.ilp_status
    m = evaluate(compile_plan(builtin_catalog, d.plan), [1000.0])
    assert m.gpus_used <= 1 and m.utilisation.max() > 1.0  # it fits the GPU and cannot serve it all
    share = float(d.ilp_status.split(" for ")[1].split(" x ")[0])
    assert 0 < share <= 1 - 0.5 ** BACKOFF_SOLVES


def test_the_window_rule_scales_up_at_once_and_down_only_after_the_window(builtin_catalog: Catalog) -> None:
    """ilp_window: a rise is planned for at once; after a fall the plan holds until the high interval has left
    the window (3 decisions), then scales down."""
    apps = ["image_classify"]
    demand = [100.0, 3000.0, 100.0, 100.0, 100.0, 100.0]
    plain, windowed = ([ctl.decide({"image_classify": r}).ilp_slices for r in demand] for ctl in (
        Controller(builtin_catalog, "h100", apps, 2), WindowedController(builtin_catalog, "h100", apps, 2, window=3)))
    assert plain == [1.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    assert windowed == [1.0, 2.0, 2.0, 2.0, 1.0, 1.0]


STOPPING_S = 0.25  # past its limit, the solver stops at its next check of the clock


def test_the_time_limit_bounds_the_whole_decision_back_off_included(builtin_catalog: Catalog) -> None:
    apps = ["social_media", "traffic_analysis", "ar_assistant"]
    for limit in (0.5, 1.5):
        ctl = Controller(builtin_catalog, "h100", apps, 4, opts=SolverOptions(time_limit_s=limit))
        start = time.perf_counter()
        d = ctl.decide({"social_media": 50_000.0, "traffic_analysis": 5_000.0, "ar_assistant": 5_000.0})
        assert time.perf_counter() - start <= limit + STOPPING_S, d.ilp_status  # no back-off beyond it

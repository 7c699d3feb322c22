"""The shim's reconciler follows ``jigsaw.env.transitions`` as the simulator does: the same plan change replayed
with real cpu workers and in the model, compared on when capacity leaves and when it arrives.

Tolerance: the switch (new workers serving) comes no earlier than 0.5 s before the model's prediction and no
later than 6 s after it; the prediction uses the catalog's measured cpu start-up (one worker alone, ~1.2 s),
and on a loaded 2-core machine several workers starting together take a few seconds longer."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from jigsaw.env.plan import GpuLayout, Plan, TaskConfig
from jigsaw.env.transitions import FleetBuilder, change, schedule
from jigsaw.serving_shim.backends import CpuBackend, WorkerHandle, WorkerSpec
from jigsaw.serving_shim.reconciler import Reconciler
from jigsaw.serving_shim.router import Router

APP, TASK = "image_classify", "classify"
KEY = f"{APP}/{TASK}"
REPARTITION_S = 2.0  # the emulated repartition, short for the test
EARLY_S, LATE_S = 0.5, 6.0


def plan(variant: str, segment: str, replicas: int) -> Plan:
    cfg = TaskConfig(variant, segment, 1, 1, replicas, 100.0)
    return Plan("h100", {APP: {TASK: cfg}}, (GpuLayout((segment,) * replicas, ((KEY,),) * replicas),))


class StampedBackend(CpuBackend):
    """The cpu backend, stamping every worker start and stop (monotonic s)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.starts: list[tuple[str, float]] = []
        self.stops: list[tuple[str, float]] = []

    def start(self, spec: WorkerSpec) -> WorkerHandle:
        self.starts.append((spec.variant, time.monotonic()))
        return super().start(spec)

    def stop(self, handle: WorkerHandle, grace_s: float = 5.0) -> None:
        self.stops.append((handle.spec.variant, time.monotonic()))
        super().stop(handle, grace_s)


@pytest.mark.parametrize(("before", "after", "early"), [
    # 2 x 1g of 7 slices: room for the new kind beside the old -> make-before-break after a repartition
    (("resnet101", "1g.10gb", 2), ("resnet50", "1g.10gb", 2), 0),
    # 3 x 2g = 6 of 7 slices: no room for a 2g beside them -> the old workers stop first
    (("resnet101", "2g.20gb", 3), ("resnet50", "2g.20gb", 3), 3),
])
def test_a_plan_change_on_real_workers_matches_the_model(builtin_catalog, tmp_path, before, after, early) -> None:
    gpu = builtin_catalog.gpu("h100")
    fleets = FleetBuilder(builtin_catalog, gpu, [APP], device="cpu")
    old, new = plan(*before), plan(*after)
    model = change(fleets.fleet(old), fleets.fleet(new), fleets.startup_s(new), REPARTITION_S,
                   fleets.instance_slices, gpu.compute_slices)
    spans, _ = schedule([0.0, 60.0], [fleets.fleet(old), fleets.fleet(new)], [fleets.startup_s(old),
                        fleets.startup_s(new)], REPARTITION_S, fleets.instance_slices, gpu.compute_slices)
    assert int(model.stopped_early.sum()) == early
    assert spans[-1].start_s == pytest.approx(60.0 + model.delay_s)  # the simulator's switch is the model's
    backend = StampedBackend(tmp_path, max_workers=3)
    router = Router(builtin_catalog, [APP])

    async def scenario() -> None:
        rec = Reconciler(backend, router, gpu, fleets=fleets, cluster_slices=gpu.compute_slices,
                         repartition_wait_s=REPARTITION_S)
        try:
            first = await rec.apply(old)
            assert first.started == before[2] and not first.failed
            began = time.monotonic()
            report = await rec.apply(new)
            assert report.started == after[2] and not report.failed
            assert report.stopped_early == early and report.predicted_switch_s == pytest.approx(model.delay_s)
            print(f"{before} -> {after}: switched after {report.switch_s:.2f} s, model {model.delay_s:.2f} s; "
                  f"{early} stopped early")
            assert model.delay_s - EARLY_S <= report.switch_s <= model.delay_s + LATE_S
            new_starts = [t - began for v, t in backend.starts if v == after[0]]
            old_stops = [t - began for v, t in backend.stops if v == before[0]]
            assert len(old_stops) == before[2]
            # capacity leaves: early-stopped workers before any new one starts, the others only after the switch
            assert sorted(old_stops)[:early] == [s for s in old_stops if s < min(new_starts)]
            assert all(s >= report.switch_s - 0.05 for s in sorted(old_stops)[early:])
            # capacity arrives: new workers wait for the repartition only where the model says so
            waited = bool(model.waits.any())
            assert (min(new_starts) >= REPARTITION_S - 0.05) == waited
        finally:
            await rec.shutdown()

    asyncio.run(scenario())
    assert np.isfinite(model.delay_s)

"""The shim with real workers: a request through a depth-3 app, a plan change under load, a worker killed under
load, a worker stopped (hung) under load, the cluster resized under load. Each runs on the cpu backend (worker
processes) and on the ray backend (Ray actors on a local two-node cluster; skipped without the ``ray`` extra).
One daemon per backend (in this process, on its own event loop thread) serves the module; the load generator
runs on the test's thread. No timing assertions: outcomes only."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine
from typing import Any

import numpy as np
import pytest
from conftest import daemon_in_thread, seat_each_replica

from jigsaw.agents.controller import Controller
from jigsaw.env.plan import Plan
from jigsaw.env.traces import Trace
from jigsaw.profiles.errors import ShimError
from jigsaw.serving_shim.daemon import Daemon, DaemonConfig
from jigsaw.serving_shim.loadgen import Body, LoadReport, replay, request_bodies, trace_arrivals
from jigsaw.serving_shim.reconciler import HEALTH_DEADLINE_S

APP = "ar_assistant"
# ~8 items a request (detect, then recognise and segment per crop): 100 items/s on 2 cores. Through Ray each item
# costs more of them (its arrays through the object store, the nodes' raylets): 12 req/s is near the local
# cluster's capacity there, and half of it leaves the same room as the cpu backend's
LOAD_RPS = {"cpu": 12.0, "ray": 6.0}
START_TIMEOUT_S = 180.0  # workers import torch: slow on a loaded CI machine


class Shim:
    def __init__(self, daemon: Daemon, loop: asyncio.AbstractEventLoop, plan: Plan, bodies: list[Body]) -> None:
        self.daemon, self.loop, self.plan, self.bodies = daemon, loop, plan, bodies
        self.load_rps = LOAD_RPS[daemon.cfg.backend]

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.daemon.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, body: bytes, content_type: str = "image/png", rid: str = "") -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(f"{self.daemon.url}/v1/apps/{APP}/infer", data=body, method="POST",
                                     headers={"Content-Type": content_type, **({"X-Request-Id": rid} if rid else {})})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())

    def in_daemon(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        """Run ``coro`` on the daemon's loop; awaitable from the test's loop."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def under_load(self, seconds: float, during: Any) -> LoadReport:
        """Replay ``load_rps`` for ``seconds``; one second in, run ``during()`` (a coroutine function)."""
        trace = Trace(np.array([0.0]), (APP,), np.array([[self.load_rps]]), seconds)
        times, apps = trace_arrivals(trace, None, seed=1)

        async def scenario() -> LoadReport:
            load = asyncio.get_running_loop().create_task(replay(self.daemon.url, times, apps, trace.apps,
                                                                    {APP: self.bodies}))
            await asyncio.sleep(1.0)
            await during()
            return await load

        return asyncio.run(scenario())


@pytest.fixture(scope="module", params=["cpu", "ray"])
def shim(request, tmp_path_factory, builtin_catalog):
    run_dir = tmp_path_factory.mktemp("shim")
    plan = Controller(builtin_catalog, "h100", [APP], 1).decide({APP: 5.0}).plan
    plan = seat_each_replica(plan, APP, recognise={"replicas": 2})
    plan.to_json(run_dir / "start.json")
    where = ({"max_workers": 8} if request.param == "cpu" else
             {"ray_address": request.getfixturevalue("ray_cluster").address})
    cfg = DaemonConfig(backend=request.param, apps=(APP,), run_dir=run_dir, port=0, interval_s=3600.0,
                       plan_file=str(run_dir / "start.json"), **where)
    with daemon_in_thread(cfg) as (daemon, loop):
        yield Shim(daemon, loop, plan, request_bodies(builtin_catalog, [APP])[APP])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _all_gone(pids: list[int], within_s: float = 10.0) -> bool:
    """The processes have exited (a stopped Ray actor's slices are free at once; its process goes a moment later)."""
    deadline = time.monotonic() + within_s
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(_alive(pid) for pid in pids)


def test_a_request_runs_through_the_depth_3_app(shim):
    status, doc = shim.post(shim.bodies[0][0], rid="first")
    assert status == 200 and doc["status"] in ("ok", "violated") and doc["id"] == "first"
    assert set(doc["outputs"]) == {"segment"}  # the sink's results: one per crop the detector passed on
    assert doc["items"] == 1 + 2 * len(doc["outputs"]["segment"])  # detect, then recognise and segment per crop
    metrics = urllib.request.urlopen(shim.daemon.url + "/metrics", timeout=30).read().decode()
    assert f'jigsaw_requests_total{{app="{APP}"}} 1' in metrics
    assert "jigsaw_request_latency_seconds_bucket" in metrics


def test_a_plan_change_under_load_loses_nothing(shim):
    before = shim.get("/status")["workers"]
    new = seat_each_replica(shim.plan, APP, detect={"replicas": 2}, recognise={"variant": "resnet50"})

    async def change() -> None:
        await shim.in_daemon(shim.daemon.apply(new))

    summary = shim.under_load(5.0, change).summary()
    print(f"plan change under load: {summary}")
    assert summary["lost"] == 0 and summary["errors"] == 0, summary
    assert summary["ok"] + summary["violated"] > 0
    workers = shim.get("/status")["workers"]
    assert sorted((w["task"], w["variant"]) for w in workers) == sorted(
        [("detect", new.apps[APP]["detect"].variant)] * 2 + [("recognise", "resnet50")] * 2
        + [("segment", new.apps[APP]["segment"].variant)])
    assert all(w["state"] == "ready" for w in workers)
    retired = [w["pid"] for w in before if w["task"] == "recognise"]
    assert _all_gone(retired)  # the old variant's workers were drained and stopped
    assert shim.get("/status")["plan"] == json.loads(json.dumps(new.to_dict()))
    shim.plan = new


def test_a_killed_worker_is_replaced_under_load(shim):
    workers = shim.get("/status")["workers"]
    victim = next(w for w in workers if w["task"] == "recognise")

    async def kill() -> None:
        os.kill(victim["pid"], signal.SIGKILL)

    summary = shim.under_load(5.0, kill).summary()
    print(f"worker killed under load: {summary}")
    assert summary["lost"] == 0 and summary["errors"] == 0, summary
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        status = shim.get("/status")
        fresh = [w for w in status["workers"] if w["restarts"] == 1 and w["state"] == "ready"]
        if fresh and len(status["workers"]) == len(workers):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the killed worker was not replaced: {status['workers']}")
    assert status["worker_restarts"] == 1
    assert fresh[0]["task"] == "recognise" and fresh[0]["pid"] != victim["pid"]
    print(f"replacement ready {fresh[0]['ready_s']:.2f} s after its launch")
    status_code, doc = shim.post(shim.bodies[0][0])
    assert status_code == 200 and doc["status"] in ("ok", "violated")


def test_a_stopped_worker_is_declared_hung_and_replaced_under_load(shim):
    workers = shim.get("/status")["workers"]
    victim = next(w for w in workers if w["task"] == "recognise")
    times: dict[str, float] = {}

    async def stop() -> None:
        os.kill(victim["pid"], signal.SIGSTOP)
        times["stopped"] = time.monotonic()
        deadline = time.monotonic() + HEALTH_DEADLINE_S + 10.0
        while time.monotonic() < deadline:
            if (await asyncio.to_thread(shim.get, "/status"))["worker_restarts_by_cause"]["hung"] == 1:
                times["hung"] = time.monotonic()
                return
            await asyncio.sleep(0.1)

    try:
        summary = shim.under_load(HEALTH_DEADLINE_S + 7.0, stop).summary()
    finally:
        if _alive(victim["pid"]):
            os.kill(victim["pid"], signal.SIGCONT)  # never leave a stopped process behind a failed test
    print(f"worker stopped under load: {summary}")
    assert "hung" in times, "the stopped worker was not declared hung"
    print(f"declared hung {times['hung'] - times['stopped']:.2f} s after SIGSTOP")
    assert summary["lost"] == 0 and summary["errors"] == 0, summary
    assert summary["ok"] + summary["violated"] >= 0.8 * summary["sent"], summary
    assert _all_gone([victim["pid"]])  # killed, not left stopped
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        status = shim.get("/status")
        fresh = [w for w in status["workers"] if w["pid"] not in {v["pid"] for v in workers}]
        if fresh and fresh[0]["state"] == "ready" and len(status["workers"]) == len(workers):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the stopped worker was not replaced: {status['workers']}")
    assert fresh[0]["task"] == "recognise" and status["worker_restarts_by_cause"]["hung"] == 1
    print(f"replacement ready {fresh[0]['ready_s']:.2f} s after its launch")
    metrics = urllib.request.urlopen(shim.daemon.url + "/metrics", timeout=30).read().decode()
    assert 'jigsaw_worker_restarts_total{cause="hung"} 1' in metrics
    status_code, doc = shim.post(shim.bodies[0][0])
    assert status_code == 200 and doc["status"] in ("ok", "violated")


def test_the_cluster_can_change_size_mid_run(shim):
    """An operator tells the daemon its cluster changed (``PUT /v1/cluster``): the controller re-plans for the new
    size at once, under load, losing nothing; a body without a whole number of GPUs is a 400, nothing changes."""
    decided = len(shim.daemon.decisions)

    async def grow() -> None:
        await shim.in_daemon(shim.daemon.resize(2))

    summary = shim.under_load(4.0, grow).summary()
    assert summary["lost"] == 0 and summary["errors"] == 0, summary
    status = shim.get("/status")
    assert status["gpus"] == 2 and shim.daemon.controller.gpus == 2
    assert len(shim.daemon.decisions) == decided + 1 and status["decisions"][-1]["source"] in ("ilp", "hold")
    for body in (b'{"gpus": 0}', b'{"gpus": "two"}', b"not json"):
        req = urllib.request.Request(shim.daemon.url + "/v1/cluster", data=body, method="PUT")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 400
    req = urllib.request.Request(shim.daemon.url + "/v1/cluster", data=b'{"gpus": 1}', method="PUT")
    with urllib.request.urlopen(req, timeout=60) as r:
        assert json.loads(r.read())["gpus"] == 1
    shim.plan = Plan.from_dict(shim.get("/status")["plan"])


def test_loadgen_skips_the_apps_the_daemon_does_not_serve(shim, builtin_catalog):
    other = "social_media"
    trace = Trace(np.array([0.0]), (APP, other), np.array([[5.0, 5.0]]), 2.0)
    times, apps = trace_arrivals(trace, None, seed=3)
    bodies = request_bodies(builtin_catalog, trace.apps)
    report = asyncio.run(replay(shim.daemon.url, times, apps, trace.apps, bodies))
    assert report.skipped == {other: int((apps == 1).sum())} and report.skipped[other] > 0
    assert report.sent == int((apps == 0).sum()) and report.counts["errors"] == 0 and report.lost == 0
    only_other = Trace(np.array([0.0]), (other,), np.array([[5.0]]), 1.0)
    with pytest.raises(ShimError, match="none of the trace's apps"):
        asyncio.run(replay(shim.daemon.url, *trace_arrivals(only_other, None, seed=3), only_other.apps, bodies))

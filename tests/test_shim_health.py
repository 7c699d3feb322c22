"""Workers that stop answering: the reconciler's health checks against real worker processes on the cpu backend
(a long batch is no hang; a SIGSTOPped replica is declared hung, killed and replaced, and every request sent
meanwhile is answered), stopping a stopped process, and the worker sockets a killed daemon left behind."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from jigsaw.env.plan import GpuLayout, Plan, TaskConfig
from jigsaw.serving_shim import ipc
from jigsaw.serving_shim.backends import CpuBackend, Health, ProcessHandle, WorkerHandle, WorkerSpec
from jigsaw.serving_shim.backends.base import STOP_GRACE_S
from jigsaw.serving_shim.reconciler import Reconciler
from jigsaw.serving_shim.router import STATUSES, Router

APP, TASK = "image_classify", "classify"
EVERY_S, TIMEOUT_S, DEADLINE_S = 0.2, 0.5, 1.5  # health checks, seconds: small for the test
LONG_BATCH_S = 2.5 * DEADLINE_S  # a legitimate batch this long (unloaded) must not look hung
LOAD_RPS = 20.0


def test_stale_worker_sockets_are_removed_at_start(tmp_path):
    sock_dir = tmp_path / "sock"
    sock_dir.mkdir()
    orphan = socket.socket(socket.AF_UNIX)  # a worker of a killed generation, still listening (e.g. stopped)
    orphan.bind(str(sock_dir / "w0.sock"))
    orphan.listen()
    dead = socket.socket(socket.AF_UNIX)  # a socket file whose process is gone
    dead.bind(str(sock_dir / "w12.sock"))
    dead.close()
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(sock_dir / "mps.sock"))
    other.close()
    for name in ("notes.txt", "w3.sock.bak", "w4.sock"):  # w4.sock: a regular file, not one of our sockets
        (sock_dir / name).write_text("keep me")
    try:
        backend = CpuBackend(tmp_path)
        assert backend.socket_dir == sock_dir
        assert sorted(p.name for p in sock_dir.iterdir()) == ["mps.sock", "notes.txt", "w3.sock.bak", "w4.sock"]
        with socket.socket(socket.AF_UNIX) as probe, pytest.raises(FileNotFoundError):
            probe.connect(str(sock_dir / "w0.sock"))  # a new worker's checks can no longer reach the orphan
    finally:
        orphan.close()


def test_stop_does_not_wait_on_a_stopped_process(tmp_path):
    backend = CpuBackend(tmp_path)
    spec = WorkerSpec(APP, TASK, "resnet50", "noop", 1, "cpu")
    for grace_s, signum in ((STOP_GRACE_S, signal.SIGTERM), (0.0, signal.SIGKILL)):
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        handle = ProcessHandle("stopped", spec, str(tmp_path / "log"), time.monotonic(),
                               str(backend.socket_dir / "w99.sock"), process)
        os.kill(process.pid, signal.SIGSTOP)
        start = time.monotonic()
        backend.stop(handle, grace_s)
        elapsed_s = time.monotonic() - start
        print(f"stop(grace {grace_s:g} s) of a stopped process: {elapsed_s:.3f} s, exit {process.returncode}")
        assert process.returncode == -signum and elapsed_s < STOP_GRACE_S / 2


class TimedBackend(CpuBackend):
    """The cpu backend, recording each health check: (worker name, answered, seconds)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.checks: list[tuple[str, bool, float]] = []

    async def health(self, handle: WorkerHandle, timeout_s: float = 1.0) -> Health:
        start = time.monotonic()
        health = await super().health(handle, timeout_s)
        self.checks.append((handle.name, health.ready, time.monotonic() - start))
        return health


def _plan() -> Plan:
    cfg = TaskConfig("resnet152", "1g.10gb", 1, 4, 2, 100.0)  # the biggest stand-in: a long batch is easy to make
    return Plan("h100", {APP: {TASK: cfg}}, (GpuLayout(("1g.10gb", "1g.10gb"), ((f"{APP}/{TASK}",),) * 2),))


async def _until(condition, timeout_s: float, what: str) -> float:
    """Wait for ``condition()``; the time it became true (monotonic s)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:g} s")
        await asyncio.sleep(0.02)
    return time.monotonic()


def test_a_long_batch_is_no_hang_and_a_stopped_replica_is_replaced_under_load(tmp_path, builtin_catalog):
    backend = TimedBackend(tmp_path, max_workers=2)
    router = Router(builtin_catalog, [APP])

    async def scenario() -> None:
        rec = Reconciler(backend, router, builtin_catalog.gpu("h100"), health_every_s=EVERY_S,
                         health_timeout_s=TIMEOUT_S, health_deadline_s=DEADLINE_S)
        report = await rec.apply(_plan())
        assert report.started == 2 and not report.failed
        supervisor = asyncio.create_task(rec.supervise())
        try:
            await _long_batch(rec)
            await _stopped_replica(rec)
        finally:
            supervisor.cancel()
            await rec.shutdown()
        assert not rec.workers

    asyncio.run(scenario())


async def _long_batch(rec: Reconciler) -> None:
    busy = rec.serving[0]
    pids = {w.handle.pid for w in rec.serving}
    per_item_ms = busy.warm_ms / busy.spec.batch
    n = min(4000, math.ceil(1000 * LONG_BATCH_S / per_item_ms))
    backend: TimedBackend = rec.backend  # type: ignore[assignment]
    backend.checks.clear()
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    answer = await ipc.request(busy.handle.socket, {"op": "infer", "id": 1}, 120.0, [image] * n)
    during = [s for name, ok, s in backend.checks if name == busy.handle.name]
    print(f"long batch: {n} items in {answer['ms'] / 1000:.2f} s; {len(during)} health checks meanwhile, "
          f"slowest answer {1000 * max(during, default=0):.1f} ms, failed "
          f"{sum(not ok for name, ok, _ in backend.checks if name == busy.handle.name)}")
    assert answer["ok"] and answer["ms"] > 1000 * 2 * DEADLINE_S
    assert rec.restarts == 0 and {w.handle.pid for w in rec.serving} == pids and busy.state == "ready"
    assert len(during) >= 2 * DEADLINE_S / EVERY_S  # it was checked all along, and always answered in time


async def _stopped_replica(rec: Reconciler) -> None:
    victim, other = rec.serving
    sent: list[asyncio.Task] = []
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    replaced = asyncio.Event()

    async def load() -> None:  # open loop until a second after the replacement serves
        while not replaced.is_set() or time.monotonic() < replaced_s + 1.0:
            sent.append(asyncio.create_task(rec.router.infer(APP, str(len(sent)), image)))
            await asyncio.sleep(1 / LOAD_RPS)

    replaced_s = math.inf
    loader = asyncio.create_task(load())
    await asyncio.sleep(1.0)
    os.kill(victim.handle.pid, signal.SIGSTOP)
    stopped_s = time.monotonic()
    try:
        hung_s = await _until(lambda: rec.restarts_by_cause["hung"] == 1, DEADLINE_S + 5.0, "declared hung")
        replaced_s = await _until(lambda: len(rec.serving) == 2 and all(w.replica for w in rec.serving), 180.0,
                                  "replaced")
        replaced.set()
        await loader
    finally:
        if victim.handle.process.poll() is None:
            os.kill(victim.handle.pid, signal.SIGKILL)
    answers = await asyncio.wait_for(asyncio.gather(*sent, return_exceptions=True), 30.0)
    docs = [json.loads(a.body) for a in answers if not isinstance(a, BaseException)]
    counts = Counter(d["status"] for d in docs)
    reasons = Counter(d.get("reason", "") for d in docs if d["status"] not in ("ok", "violated"))
    fresh = next(w for w in rec.serving if w is not other)
    print(f"SIGSTOP: declared hung after {hung_s - stopped_s:.2f} s, replacement serving after "
          f"{replaced_s - stopped_s:.2f} s (ready {fresh.ready_s:.2f} s after its launch); {len(sent)} requests: "
          f"{dict(counts)}, lost {len(sent) - len(docs)}; {dict(reasons)}")
    assert DEADLINE_S - TIMEOUT_S <= hung_s - stopped_s <= DEADLINE_S + EVERY_S + TIMEOUT_S + 2.0
    assert victim.handle.process.returncode == -signal.SIGKILL  # killed, not left stopped
    assert fresh.handle.pid not in (victim.handle.pid, other.handle.pid) and fresh.restarts == 1
    assert rec.restarts_by_cause == {"died": 0, "hung": 1}
    assert len(docs) == len(sent) and set(counts) <= set(STATUSES)  # every request answered: none lost
    assert counts["error"] == 0  # its batches were retried at once, not left to the router's 504 fallback
    assert counts["ok"] + counts["violated"] >= 0.8 * len(sent)

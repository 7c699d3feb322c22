"""The reconciler: makes the running workers match a plan, make-before-break, and keeps them running.

``apply(plan)``: the backend places the plan (worker specs); specs already running are kept; the missing
workers are started and awaited until ready; then traffic switches (the router takes the plan's batch sizes
and budgets and the new workers); then the workers the plan no longer needs are drained (no new batches,
their batches in flight finish) and stopped. A task whose new workers all fail to start keeps its old ones.
``supervise()`` restarts every worker that dies with the same spec (the router has already retried its
batches on the other replicas).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from jigsaw.env.plan import Plan
from jigsaw.profiles.types import GpuType
from jigsaw.serving_shim.backends.base import Backend, WorkerHandle, WorkerSpec
from jigsaw.serving_shim.router import Replica, Router

log = logging.getLogger("jigsaw.reconciler")

READY_TIMEOUT_S = 180.0  # importing torch and warming a model on a loaded 2-core machine
_POLL_S = 0.1
SUPERVISE_EVERY_S = 0.25


@dataclass(eq=False)
class Worker:
    handle: WorkerHandle
    state: str = "starting"  # starting | ready | draining | stopped | failed
    replica: Replica | None = None
    restarts: int = 0
    ready_s: float = 0.0  # seconds from launch to ready
    warm_ms: float = 0.0  # its batch's service time after warm-up

    @property
    def spec(self) -> WorkerSpec:
        return self.handle.spec


@dataclass
class ApplyReport:
    started: int = 0
    kept: int = 0
    stopped: int = 0
    failed: list[str] = field(default_factory=list)
    notes: tuple[str, ...] = ()


class Reconciler:
    def __init__(self, backend: Backend, router: Router, gpu: GpuType) -> None:
        self.backend, self.router, self.gpu = backend, router, gpu
        self.workers: list[Worker] = []
        self.notes: tuple[str, ...] = ()
        self.failed: list[str] = []  # workers of the last apply that did not start (the next apply retries them)
        self.restarts = 0
        self._lock = asyncio.Lock()

    @property
    def serving(self) -> list[Worker]:
        return [w for w in self.workers if w.state == "ready"]

    async def apply(self, plan: Plan) -> ApplyReport:
        async with self._lock:
            placement = self.backend.place(plan, self.gpu)
            self.notes = placement.notes
            for note in placement.notes:
                log.info("placement: %s", note)
            wanted = Counter(placement.specs)
            keep: list[Worker] = []
            old: list[Worker] = []
            for w in self.serving:
                if wanted[w.spec] > 0:
                    wanted[w.spec] -= 1
                    keep.append(w)
                else:
                    old.append(w)
            new = [Worker(self.backend.start(spec)) for spec, n in wanted.items() for _ in range(n)]
            self.workers += new
            await asyncio.gather(*(self._until_ready(w) for w in new))
            ready = [w for w in new if w.state == "ready"]
            self.router.configure(plan)
            for w in ready:
                await self._attach(w)
            covered = {w.spec.key for w in keep + ready}
            retire = [w for w in old if w.spec.key in covered]  # make-before-break: never leave a task bare
            await asyncio.gather(*(self._retire(w) for w in retire))
            self.workers = [w for w in self.workers if w.state in ("starting", "ready")]
            self.failed = [w.handle.name for w in new if w.state == "failed"]
            report = ApplyReport(len(ready), len(keep), len(retire), self.failed, placement.notes)
            log.info("applied plan: %d started, %d kept, %d stopped, %d failed", report.started, report.kept,
                     report.stopped, len(report.failed))
            return report

    async def supervise(self) -> None:
        """Forever: restart workers whose process died."""
        while True:
            await asyncio.sleep(SUPERVISE_EVERY_S)
            if any(w.handle.process.poll() is not None for w in self.serving):
                await self.restart_dead()

    async def restart_dead(self) -> None:
        async with self._lock:
            dead = [w for w in self.serving if w.handle.process.poll() is not None]
            await asyncio.gather(*(self._restart(w) for w in dead))
            self.workers = [w for w in self.workers if w.state in ("starting", "ready")]

    async def shutdown(self) -> None:
        """Drain and stop every worker."""
        async with self._lock:
            await asyncio.gather(*(self._retire(w) for w in self.workers if w.state in ("starting", "ready")))
            self.workers = []

    def status(self) -> list[dict[str, Any]]:
        return [{"name": w.handle.name, "app": w.spec.app, "task": w.spec.task, "variant": w.spec.variant,
                 "model": w.spec.model, "place": w.spec.place, "threads": w.spec.threads, "pid": w.handle.pid,
                 "state": w.state, "restarts": w.restarts, "ready_s": round(w.ready_s, 3),
                 "batches_in_flight": len(w.replica.in_flight) if w.replica else 0} for w in self.workers]

    # ------------------------------------------------------------------------------------------------ internals

    async def _until_ready(self, w: Worker) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            health = await asyncio.to_thread(self.backend.health, w.handle)
            if health.ready:
                w.state, w.ready_s = "ready", time.monotonic() - w.handle.started_s
                w.warm_ms = float(health.detail.get("warm_ms", 0.0))
                return
            if not health.alive:
                break
            await asyncio.sleep(_POLL_S)
        w.state = "failed"
        log.error("worker %s failed to start (%s); see %s", w.handle.name,
                  "it exited" if w.handle.process.poll() is not None else "not ready in time", w.handle.log)
        await asyncio.to_thread(self.backend.stop, w.handle)

    async def _attach(self, w: Worker) -> None:
        s = w.spec
        try:
            w.replica = await self.router.add_replica(s.app, s.task, w.handle.name, s.variant, w.handle.socket,
                                                      w.warm_ms)
        except OSError as e:  # it died between its health check and now: the supervisor restarts it
            log.warning("worker %s: cannot connect (%s)", w.handle.name, e)

    async def _retire(self, w: Worker) -> None:
        w.state = "draining"
        if w.replica is not None:
            await self.router.drain(w.replica)
        await asyncio.to_thread(self.backend.stop, w.handle)
        w.state = "stopped"

    async def _restart(self, dead: Worker) -> None:
        log.warning("worker %s (pid %d) died with code %s; restarting it", dead.handle.name, dead.handle.pid,
                    dead.handle.process.returncode)
        dead.state = "stopped"
        if dead.replica is not None:
            self.router.detach(dead.replica, "worker died")
        await asyncio.to_thread(self.backend.stop, dead.handle)  # reap it, remove its socket
        fresh = Worker(self.backend.start(dead.spec), restarts=dead.restarts + 1)
        self.workers.append(fresh)
        self.restarts += 1
        await self._until_ready(fresh)
        if fresh.state == "ready":
            await self._attach(fresh)

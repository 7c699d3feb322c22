"""The reconciler: makes the running workers match a plan, make-before-break, and keeps them running.

``apply(plan)``: the backend places the plan (worker specs); specs already running are kept; the missing
workers are started and awaited until ready; then traffic switches (the router takes the plan's batch sizes
and budgets and the new workers); then the workers the plan no longer needs are drained (no new batches,
their batches in flight finish) and stopped. A task whose new workers all fail to start keeps its old ones.
Given the cluster's ``FleetBuilder``, the change follows ``jigsaw.env.transitions`` as the simulator does: the
leaving workers it stops early (room for new ones on a full cluster, instances drained for a repartition) are
drained and stopped before any new worker starts, and the new workers that wait for a repartition start
``repartition_wait_s`` later (the cpu backend emulates the GPU's repartition time; MPS shares need none). Each
report gives the switch's time beside the one the model predicts.

``supervise()`` keeps the serving workers serving. It checks each one's health every ``health_every_s`` on a
connection of its own (the worker answers beside a running batch, so a long batch is no failure; see
``ipc``), and replaces a worker that *died* (its process or actor exited) or is *hung*: its checks have failed (no
answer within ``health_timeout_s``) for ``health_deadline_s`` on ``clock``, i.e. about three missed checks by
default — a stopped, deadlocked or swapping process, or one stuck in a driver call. Either way the router
detaches it at once (its batches in flight are retried on the other replicas), the process is killed and
reaped (SIGKILL: a hung process may never act on SIGTERM), and a worker of the same spec starts at once
(make-before-break is impossible here); it serves once ready, unless a plan applied meanwhile covers its
task without it. Restarts are counted by cause (``died``, ``hung``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from jigsaw.env.plan import Plan
from jigsaw.env.transitions import Change, FleetBuilder, change
from jigsaw.profiles.types import GpuType
from jigsaw.serving_shim.backends.base import Backend, WorkerHandle, WorkerSpec
from jigsaw.serving_shim.errorlog import ErrorLog
from jigsaw.serving_shim.ipc import HANDLER_EXIT
from jigsaw.serving_shim.router import Replica, Router

log = logging.getLogger("jigsaw.reconciler")

READY_TIMEOUT_S = 180.0  # importing torch and warming a model on a loaded 2-core machine
_POLL_S = 0.1
SUPERVISE_EVERY_S = 0.25
HEALTH_EVERY_S = 1.0  # one health check per serving worker this often
HEALTH_TIMEOUT_S = 1.0  # a check not answered within this failed (an idle worker answers in well under 10 ms)
HEALTH_DEADLINE_S = 3.0  # checks failing for this long: the worker is hung
RESTART_CAUSES = ("died", "hung")


@dataclass(eq=False)
class Worker:
    handle: WorkerHandle
    state: str = "starting"  # starting | ready | draining | stopped | failed
    why: str = ""  # why it failed to start, where the worker said (its handler did not load)
    replica: Replica | None = None
    restarts: int = 0
    ready_s: float = 0.0  # seconds from launch to ready
    warm_ms: float = 0.0  # its batch's service time after warm-up
    checking: bool = False  # a health check is under way
    checked_s: float = -math.inf  # when the last health check began (the reconciler's clock)
    failing_since_s: float | None = None  # when the first of its failing health checks began; None: they pass

    @property
    def spec(self) -> WorkerSpec:
        return self.handle.spec

    def hung(self, now_s: float, deadline_s: float) -> bool:
        return self.failing_since_s is not None and now_s - self.failing_since_s >= deadline_s


@dataclass
class ApplyReport:
    started: int = 0
    kept: int = 0
    stopped: int = 0
    failed: list[str] = field(default_factory=list)
    notes: tuple[str, ...] = ()
    stopped_early: int = 0  # of the stopped, those stopped before any new worker started (break-before-make)
    switch_s: float = 0.0  # from the apply's start until traffic switched to the new workers
    predicted_switch_s: float = math.nan  # what jigsaw.env.transitions predicts for it (nan: no model given)


class Reconciler:
    def __init__(self, backend: Backend, router: Router, gpu: GpuType, *, clock: Callable[[], float] = time.monotonic,
                 health_every_s: float = HEALTH_EVERY_S, health_timeout_s: float = HEALTH_TIMEOUT_S,
                 health_deadline_s: float = HEALTH_DEADLINE_S, fleets: FleetBuilder | None = None,
                 cluster_slices: float = math.inf, repartition_wait_s: float = 0.0) -> None:
        """:param fleets: the cluster's worker kinds and start-up times: changes follow ``jigsaw.env.transitions``
        (None: every change is make-before-break, nothing waits)
        :param cluster_slices: the cluster's compute slices (make-before-break needs free ones)
        :param repartition_wait_s: how long new workers on a repartitioned geometry wait before they start, s
        :param clock: seconds, for the health deadline
        :param health_every_s: a health check per serving worker this often, s
        :param health_timeout_s: a check not answered within this failed, s
        :param health_deadline_s: a worker whose checks have failed for this long is hung, s"""
        self.backend, self.router, self.gpu = backend, router, gpu
        self.clock = clock
        self.health_every_s, self.health_timeout_s = health_every_s, health_timeout_s
        self.health_deadline_s = health_deadline_s
        self.workers: list[Worker] = []
        self.notes: tuple[str, ...] = ()
        self.failed: list[str] = []  # workers that did not start (the next apply retries them)
        self.unloadable: list[str] = []  # of all workers ever started, those whose handler did not load, and why
        self.errors = ErrorLog(log)
        self.placed: Counter[WorkerSpec] = Counter()  # the workers the last apply meant to leave serving
        self.restarts_by_cause: Counter[str] = Counter(dict.fromkeys(RESTART_CAUSES, 0))
        self.fleets, self.cluster_slices, self.repartition_wait_s = fleets, cluster_slices, repartition_wait_s
        self.in_force: Plan | None = None  # the last plan applied
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()  # health checks and restarts under way

    @property
    def serving(self) -> list[Worker]:
        return [w for w in self.workers if w.state == "ready"]

    @property
    def restarts(self) -> int:
        return sum(self.restarts_by_cause.values())

    def _with_handler(self, spec: WorkerSpec) -> WorkerSpec:
        """``spec`` with its variant's handler from the catalog (a stand-in chosen in its place keeps the built-in)."""
        if spec.model != spec.variant or spec.app not in self.router.apps:
            return spec
        task = self.router.apps[spec.app].task(spec.task)
        return dataclasses.replace(spec, handler=next(v.handler for v in task.variants if v.name == spec.variant))

    async def apply(self, plan: Plan) -> ApplyReport:
        async with self._lock:
            began = time.monotonic()
            placement = self.backend.place(plan, self.gpu)
            self.notes = placement.notes
            for note in placement.notes:
                log.info("placement: %s", note)
            wanted = Counter(self._with_handler(s) for s in placement.specs)
            keep: list[Worker] = []
            old: list[Worker] = []
            for w in self.serving:
                if wanted[w.spec] > 0:
                    wanted[w.spec] -= 1
                    keep.append(w)
                else:
                    old.append(w)
            change = self._change(plan)
            early = self._stopped_early(change, old) if change is not None else []
            await asyncio.gather(*(self._retire(w) for w in early))  # capacity leaves before any arrives
            old = [w for w in old if w not in early]
            waiting = self._waiting(change) if change is not None else set()
            specs = [spec for spec, n in wanted.items() for _ in range(n)]
            if specs:
                log.info("starting %d worker(s) on the %s backend (%d kept); each serves once its model is loaded and "
                         "warm", len(specs), self.backend.name, len(keep))
            new = [Worker(self.backend.start(spec)) for spec in specs if spec.key not in waiting]
            if any(spec.key in waiting for spec in specs):
                await asyncio.sleep(self.repartition_wait_s)
                new += [Worker(self.backend.start(spec)) for spec in specs if spec.key in waiting]
            self.workers += new
            await asyncio.gather(*(self._until_ready(w) for w in new))
            ready = [w for w in new if w.state == "ready"]
            self.router.configure(plan)
            for w in ready:
                await self._attach(w)
            switch_s = time.monotonic() - began
            covered = {w.spec.key for w in keep + ready if w.state == "ready"}
            retire = [w for w in old if w.spec.key in covered]  # make-before-break: never leave a task bare
            await asyncio.gather(*(self._retire(w) for w in retire))
            self.placed = Counter(placement.specs) + Counter(w.spec for w in old if w not in retire)
            self.workers = [w for w in self.workers if w.state in ("starting", "ready")]
            self.failed = [w.handle.name + (f" ({w.why})" if w.why else "") for w in new if w.state == "failed"]
            self.in_force = plan
            report = ApplyReport(len(ready), len(keep), len(retire) + len(early), self.failed, placement.notes,
                                 len(early), switch_s, change.delay_s if change is not None else math.nan)
            log.info("applied plan: %d started, %d kept, %d stopped (%d before the new ones started), %d failed; "
                     "switched after %.1f s%s", report.started, report.kept, report.stopped, report.stopped_early,
                     len(report.failed), report.switch_s, "" if math.isnan(report.predicted_switch_s) else
                     f" (predicted {report.predicted_switch_s:.1f} s)")
            return report

    def _change(self, plan: Plan) -> Change | None:
        """The change to ``plan`` from the plan in force, by ``jigsaw.env.transitions`` (None: no model, or no plan
        in force, or a plan of other apps)."""
        if self.fleets is None or self.in_force is None:
            return None
        try:
            return change(self.fleets.fleet(self.in_force), self.fleets.fleet(plan), self.fleets.startup_s(plan),
                          self.repartition_wait_s, self.fleets.instance_slices, self.cluster_slices)
        except KeyError:  # a task the model does not know: apply without it
            return None

    def _stopped_early(self, change: Change, old: list[Worker]) -> list[Worker]:
        """The leaving workers ``change`` stops before new ones start: per task, that many of its leaving ones."""
        assert self.fleets is not None
        early: list[Worker] = []
        for (app, task), n in zip(self.fleets.task_keys, change.stopped_early.tolist(), strict=True):
            early += [w for w in old if w.spec.key == f"{app}/{task}"][:n]
        return early

    def _waiting(self, change: Change) -> set[str]:
        assert self.fleets is not None
        return {f"{app}/{task}" for (app, task), waits in zip(self.fleets.task_keys, change.waits.tolist(), strict=True)
                if waits}

    async def supervise(self) -> None:
        """Forever: check the serving workers' health; replace those that died or hung."""
        while True:
            await asyncio.sleep(SUPERVISE_EVERY_S)
            try:
                self._supervise_once()
            except Exception:  # the supervisor outlives any one worker's trouble
                log.exception("supervising the workers failed; going on")

    async def shutdown(self) -> None:
        """Stop the health checks and restarts under way; drain and stop every worker."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        async with self._lock:
            await asyncio.gather(*(self._retire(w) for w in self.workers if w.state in ("starting", "ready")))
            self.workers = []

    def status(self) -> list[dict[str, Any]]:
        return [{"name": w.handle.name, "app": w.spec.app, "task": w.spec.task, "variant": w.spec.variant,
                 "model": w.spec.model, "place": w.spec.place, "node": w.handle.node, "threads": w.spec.threads,
                 "pid": w.handle.pid,
                 "state": w.state, "restarts": w.restarts, "ready_s": round(w.ready_s, 3),
                 "failing_s": round(self.clock() - w.failing_since_s, 3) if w.failing_since_s is not None else 0.0,
                 "batches_in_flight": len(w.replica.in_flight) if w.replica else 0} for w in self.workers]

    # ------------------------------------------------------------------------------------------------ internals

    async def _until_ready(self, w: Worker) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            health = await self.backend.health(w.handle)
            if health.ready:
                w.state, w.ready_s = "ready", time.monotonic() - w.handle.started_s
                w.warm_ms = float(health.detail.get("warm_ms", 0.0))
                return
            if not health.alive:
                break
            await asyncio.sleep(_POLL_S)
        w.state = "failed"
        code = w.handle.exit_code()
        if code == HANDLER_EXIT:
            w.why = w.handle.last_words()
            self.unloadable.append(f"{w.handle.name} ({w.why})")
        log.error("worker %s failed to start (%s); see %s", w.handle.name,
                  w.why or ("it exited" if code is not None else "not ready in time"), w.handle.log)
        await asyncio.to_thread(self.backend.stop, w.handle)

    async def _attach(self, w: Worker) -> None:
        s = w.spec
        try:
            channel = await self.backend.connect(w.handle)
        except (OSError, ConnectionError) as e:  # it died between its health check and now: the supervisor restarts it
            log.warning("worker %s: cannot connect (%s)", w.handle.name, e)
            return
        w.replica = self.router.add_replica(s.app, s.task, w.handle.name, s.variant, channel, w.warm_ms)

    async def _retire(self, w: Worker) -> None:
        w.state = "draining"
        if w.replica is not None:
            await self.router.drain(w.replica)
        await asyncio.to_thread(self.backend.stop, w.handle)
        w.state = "stopped"

    def _supervise_once(self) -> None:
        now = self.clock()
        for w in self.serving:
            if w.handle.exit_code() is not None:
                self._replace(w, "died")
            elif w.hung(now, self.health_deadline_s):
                self._replace(w, "hung")
            elif not w.checking and now - w.checked_s >= self.health_every_s:
                w.checking, w.checked_s = True, now
                self._spawn(self._check(w, now))

    async def _check(self, w: Worker, began_s: float) -> None:
        try:
            health = await self.backend.health(w.handle, self.health_timeout_s)
        except OSError as e:  # out of descriptors here: no verdict on the worker (else every worker looks hung)
            self.errors.record("health_check", e, "a health check")
            return
        finally:
            w.checking = False
        if health.ready and w.failing_since_s is not None:
            log.info("worker %s answers health checks again after %.1f s", w.handle.name,
                     self.clock() - w.failing_since_s)
            w.failing_since_s = None
        elif not health.ready and health.alive and w.failing_since_s is None:
            log.warning("worker %s failed a health check (%s); hung if its checks fail for %g s", w.handle.name,
                        health.detail.get("error", health.detail), self.health_deadline_s)
            w.failing_since_s = began_s

    def _replace(self, old: Worker, cause: str) -> None:
        """Take ``old`` out of service now (the router retries its batches in flight), restart it in the background."""
        if cause == "died":
            log.warning("worker %s (pid %s) died with code %s; restarting it", old.handle.name, old.handle.pid,
                        old.handle.exit_code())
        else:
            log.warning("worker %s (pid %s) is hung: its health checks have failed for %.1f s; killing and "
                        "replacing it", old.handle.name, old.handle.pid, self.clock() - (old.failing_since_s or 0.0))
        old.state = "stopped"
        self.workers.remove(old)
        self.restarts_by_cause[cause] += 1
        if old.replica is not None:
            self.router.detach(old.replica, f"worker {cause}")
        self._spawn(self._restart(old))

    async def _restart(self, old: Worker) -> None:
        await asyncio.to_thread(self.backend.stop, old.handle, 0.0)  # dead or hung: reap (SIGKILL), remove its socket
        spec = self.backend.replacement(old.spec, old.handle.node)
        if spec != old.spec:  # its place is gone (a lost node's MIG instance): it serves from the new one
            self.placed[old.spec] -= 1
            self.placed[spec] += 1
        try:
            fresh = Worker(self.backend.start(spec), restarts=old.restarts + 1)
        except OSError as e:  # e.g. no descriptors for its pipes: the next apply retries it
            log.error("cannot restart worker %s (%s); the next decision retries it", old.handle.name, e.strerror or e)
            self.failed.append(old.handle.name)
            return
        self.workers.append(fresh)
        await self._until_ready(fresh)
        async with self._lock:  # an apply may have changed what the task needs while it started
            if fresh.state == "failed":
                self.failed.append(fresh.handle.name)
            elif fresh.state == "ready":
                others = sum(1 for w in self.serving if w.spec == fresh.spec and w is not fresh)
                if others < self.placed[fresh.spec]:
                    await self._attach(fresh)
                else:
                    await self._retire(fresh)
            self.workers = [w for w in self.workers if w.state in ("starting", "ready")]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a worker's health check or restart failed", exc_info=task.exception())

"""The router: the front end that runs every request through its app's task graph on the workers.

``POST /v1/apps/{app}/infer`` with an image (``Content-Type: image/png|jpeg``) or JSON ``{"inputs": ...,
"id": ...}`` (``jigsaw.serving_shim.payloads``; an ``X-Request-Id`` header names an image's request) answers,
exactly once per request:

* 200 ``{"status": "ok", "outputs": {sink task: [results]}, "latency_ms": ...}`` — served within the app's
  latency SLO, or ``"violated"`` — served late;
* 503 ``{"status": "dropped", "reason": ...}`` — dropped early because its deadline could no longer be met
  (counted as a violation), or because no plan serves the app yet;
* 502/504 ``{"status": "error", ...}`` — a batch failed twice, or no worker answered within
  ``ANSWER_GRACE_S`` after the deadline;
* 422/500 ``{"status": "error", ...}`` — a handler refused the input (``ValueError``/``TypeError``), or failed
  on it; the rest of its batch is served;
* 400/404/405/413/415 for a malformed request or a body that does not decode, an unknown app, a wrong method,
  an oversized body or image, a media type not served.

Per task of every app (times from the event loop's monotonic clock, seconds):

* Queue and dynamic batching. Items wait in one FIFO per task. A batch leaves when the plan's batch size
  is waiting, or when the oldest item has waited ``BATCH_TIMEOUT_SHARE x (budget - service time)`` (the rule
  of ``jigsaw.env.perf`` and ``jigsaw.env.sim``, with the service time measured on the workers), and a replica can take it.
* Least-loaded replica. A batch goes to the replica with the fewest batches in flight (at most
  ``MAX_IN_FLIGHT``, so that the next batch waits at the worker while one runs; ties: the one that
  has served fewest batches). Draining replicas take no new batches.
* Fan-out from the data. An item done at u sends its output's items to its children (a detector's crops, one
  item each, to the children whose edge takes their label); an item's key is its path of output indices, so a
  sink's results are answered in a fixed order. Per edge and variant the router counts the items sent per item
  served (``fanout_counts``): the measured fan-out the daemon exports and gives the controller.
* Deadlines and early drop. A request's deadline is its arrival + the app's SLO. An item is dropped on
  arrival at a task, and at the head of its queue, when now + the remaining service time (this task's and
  the longest chain below it, each the fastest recent batch) passes the deadline; at the deadline a request
  with an item still queued is dropped. A dropped item drops its request: answered at once, the rest of its
  items are skipped.
* Failures. When a worker dies (its channel ends), fails a batch, or is detached as hung (the reconciler's
  health checks), the batch's items go back to the head of the queue to be retried once on another replica;
  an item that fails twice ends its request with 502, one whose deadline can no longer be met is dropped
  (503) at once, saying why.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jigsaw.env.perf import BATCH_TIMEOUT_SHARE
from jigsaw.env.plan import Plan
from jigsaw.profiles.catalog import Catalog
from jigsaw.profiles.types import App
from jigsaw.serving_shim import ipc, payloads
from jigsaw.serving_shim.http import Request, Response
from jigsaw.serving_shim.metrics import Histogram

log = logging.getLogger("jigsaw.router")

MAX_IN_FLIGHT = 2  # batches per replica
ANSWER_GRACE_S = 5.0  # past its deadline, a request whose items are all at workers waits this long, then 504
_RECENT_BATCHES = 16  # the service-time estimate is the fastest of this many recent batches
_OVERHEAD_KEPT = 100_000
STATUSES = ("ok", "violated", "dropped", "error")


@dataclass(eq=False)
class InferRequest:
    rid: str
    app: str
    arrival_s: float
    deadline_s: float
    future: asyncio.Future[Response]
    open_items: int = 0  # items created and not yet done
    queued: int = 0  # of those, waiting in a task queue
    items: int = 0  # items served
    results: dict[str, list[tuple[tuple[int, ...], Any]]] = field(default_factory=dict)  # sink -> (key, result)
    critical_ms: float = 0.0  # the longest chain of worker service times over its items
    done: bool = False
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class Item:
    request: InferRequest
    enqueued_s: float
    path_ms: float  # worker service time along its chain so far
    payload: np.ndarray  # the task's input
    key: tuple[int, ...] = ()  # output indices from the request to this item
    retried: bool = False


@dataclass(eq=False)
class TaskQueue:
    app: App
    task: str
    children: tuple[str, ...]
    batch: int = 1
    budget_ms: float = 0.0
    queue: deque[Item] = field(default_factory=deque)
    replicas: list[Replica] = field(default_factory=list)
    recent_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_RECENT_BATCHES))
    service_s: float = 0.0  # fastest recent batch
    rem_s: float = 0.0  # service_s + the longest chain of service_s below this task
    timer: asyncio.TimerHandle | None = None

    @property
    def timeout_s(self) -> float:
        return BATCH_TIMEOUT_SHARE * max(0.0, self.budget_ms / 1000.0 - self.service_s)


class Replica:
    """The router's connection to one worker."""

    def __init__(self, name: str, variant: str, queue: TaskQueue, channel: ipc.Channel, router: Router) -> None:
        self.name, self.variant, self.queue = name, variant, queue
        self.channel, self.router = channel, router
        self.in_flight: dict[int, list[Item]] = {}
        self.served = 0
        self.draining = False
        self.closed = False
        self.idle = asyncio.Event()
        self.idle.set()
        self.reading = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                self.router._on_reply(self, *await self.channel.receive())
        except (EOFError, ConnectionError, OSError, ValueError) as e:
            if not self.closed:
                self.router._on_lost(self, f"{type(e).__name__}: {e}")

    def send(self, bid: int, items: list[Item]) -> None:
        self.in_flight[bid] = items
        self.idle.clear()
        self.served += 1
        self.channel.send({"op": "infer", "id": bid}, [item.payload for item in items])

    def close(self) -> None:
        self.closed = True
        self.channel.close()
        self.reading.cancel()


class AppStats:
    def __init__(self) -> None:
        self.arrivals = 0
        self.answers: Counter[str] = Counter()
        self.latency = Histogram()  # served requests (ok + violated), seconds


class Router:
    """Requests in, task graphs through workers, answers out. ``configure`` takes a plan's batch sizes and
    budgets; ``add_replica``/``drain`` change the workers behind a task (the reconciler calls them)."""

    def __init__(self, catalog: Catalog, apps: list[str]) -> None:
        self.apps = {name: catalog.app(name) for name in apps}
        self.queues: dict[tuple[str, str], TaskQueue] = {}
        for name, app in self.apps.items():
            for t in app.task_names:
                self.queues[(name, t)] = TaskQueue(app, t, tuple(v for u, v in app.edges if u == t))
        self.configured: set[str] = set()
        self.stats = {name: AppStats() for name in self.apps}
        self.overhead_ms: deque[float] = deque(maxlen=_OVERHEAD_KEPT)  # in-router time minus worker time
        self.overhead = Histogram((0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1))
        self.pending: set[InferRequest] = set()
        self.accepting = True  # False while shutting down: new requests are dropped at once
        # (app, u, v, variant of u) -> [items served at u, items sent to v]: the measured fan-out
        self.fanout_counts: dict[tuple[str, str, str, str], list[int]] = {}
        self._bids = itertools.count()
        self._rids = itertools.count()

    # ---------------------------------------------------------------------------------------- configuration

    def configure(self, plan: Plan) -> None:
        """Take the plan's batch sizes and budgets for the apps this router serves."""
        for name in self.apps:
            for task, cfg in plan.apps.get(name, {}).items():
                tq = self.queues[(name, task)]
                tq.batch, tq.budget_ms = cfg.batch, cfg.budget_ms
                self.configured.add(name)
        for tq in self.queues.values():
            self._pump(tq)

    def add_replica(self, app: str, task: str, name: str, variant: str, channel: ipc.Channel, warm_ms: float
                    ) -> Replica:
        """Send batches to the ready worker behind ``channel``; ``warm_ms`` seeds the service estimate."""
        tq = self.queues[(app, task)]
        replica = Replica(name, variant, tq, channel, self)
        if not tq.recent_ms:
            self._note_service(tq, warm_ms)
        tq.replicas.append(replica)
        self._pump(tq)
        return replica

    async def drain(self, replica: Replica, timeout_s: float = 30.0) -> None:
        """Send ``replica`` no new batches, wait for its batches in flight, then disconnect it."""
        replica.draining = True
        try:
            await asyncio.wait_for(replica.idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("%s: still busy after %g s of draining; its batches are retried", replica.name, timeout_s)
        self.detach(replica, "drained")

    def measured_fanouts(self) -> list[dict[str, Any]]:
        """Per edge and variant of its parent: items served at the parent, items sent on, their ratio (the
        measured fan-out) and the catalog's figure."""
        out = []
        for (app, u, v, variant), (served, sent) in sorted(self.fanout_counts.items()):
            out.append({"app": app, "from": u, "to": v, "variant": variant, "served": served, "sent": sent,
                        "measured": sent / served if served else None,
                        "catalog": self.apps[app].fanout(u, v, variant)})
        return out

    # ------------------------------------------------------------------------------------------------- requests

    async def handle(self, request: Request) -> Response | None:
        """Answer ``/v1/apps/{app}/infer``; None for any other path."""
        parts = request.path.split("?", 1)[0].strip("/").split("/")
        if len(parts) != 4 or parts[:2] != ["v1", "apps"] or parts[3] != "infer":
            return None
        if request.method != "POST":
            return Response.error(405, "use POST")
        if parts[2] not in self.apps:
            return Response.error(404, f"unknown app '{parts[2]}'; served: {', '.join(self.apps)}")
        kind = request.headers.get("content-type", "")
        try:  # an image decodes off the event loop: a large one takes milliseconds
            payload, rid = (await asyncio.to_thread(payloads.decode, request.body, kind)
                            if payloads.media_type(kind) in payloads.IMAGE_TYPES else payloads.decode(request.body, kind))
        except payloads.PayloadError as e:
            return Response.error(e.status, str(e))
        rid = rid or request.headers.get("x-request-id") or str(next(self._rids))
        return await self.infer(parts[2], rid, payload)

    async def infer(self, app: str, rid: str, payload: np.ndarray) -> Response:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.stats[app].arrivals += 1
        req = InferRequest(rid, app, now, now + self.apps[app].latency_slo_ms / 1000.0, loop.create_future())
        if app not in self.configured or not self.accepting:
            self._finish(req, "dropped", 503, "shutting down" if not self.accepting else "no plan serves this app yet")
            return await req.future
        self.pending.add(req)
        req.timer = loop.call_at(req.deadline_s, self._expire, req)
        for task in self.apps[app].sources:
            self._enqueue(self.queues[(app, task)], Item(req, now, 0.0, payload))
        return await req.future

    def abort_all(self, reason: str) -> None:
        """Answer every pending request (shutdown)."""
        for req in list(self.pending):
            self._finish(req, "error", 503, reason)

    # ----------------------------------------------------------------------------------------------- internals

    def _enqueue(self, tq: TaskQueue, item: Item) -> None:
        req = item.request
        if req.done:
            return
        if asyncio.get_running_loop().time() + tq.rem_s > req.deadline_s:
            self._finish(req, "dropped", 503, f"deadline unreachable at {tq.task}")
            return
        req.open_items += 1
        req.queued += 1
        tq.queue.append(item)
        self._pump(tq)

    def _pump(self, tq: TaskQueue) -> None:
        """Send every batch that is due to a replica that can take it; arm the batch timer otherwise."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        queue = tq.queue
        while True:
            while queue and (queue[0].request.done or now + tq.rem_s > queue[0].request.deadline_s):
                head = queue.popleft()
                head.request.queued -= 1
                self._finish(head.request, "dropped", 503, f"deadline unreachable at {tq.task}")
            if not queue:
                return
            due_s = queue[0].enqueued_s + tq.timeout_s
            if len(queue) < tq.batch and now < due_s:
                if tq.timer is None or tq.timer.when() > due_s:
                    if tq.timer is not None:
                        tq.timer.cancel()
                    tq.timer = loop.call_at(due_s, self._on_timer, tq)
                return
            free = [r for r in tq.replicas if not r.draining and len(r.in_flight) < MAX_IN_FLIGHT]
            if not free:
                return  # a reply or a new replica pumps again
            replica = min(free, key=lambda r: (len(r.in_flight), r.served))
            items: list[Item] = []
            while queue and len(items) < tq.batch:
                item = queue.popleft()
                item.request.queued -= 1
                if not item.request.done:
                    items.append(item)
            if items:
                replica.send(next(self._bids), items)

    def _on_timer(self, tq: TaskQueue) -> None:
        tq.timer = None
        self._pump(tq)

    def _note_service(self, tq: TaskQueue, ms: float) -> None:
        tq.recent_ms.append(ms)
        fastest = min(tq.recent_ms) / 1000.0
        if fastest != tq.service_s:
            tq.service_s = fastest
            app = tq.app
            for t in reversed(app.topological_order):  # tiny graphs: recompute every remaining time
                q = self.queues[(app.name, t)]
                q.rem_s = q.service_s + max((self.queues[(app.name, c)].rem_s for c in q.children), default=0.0)

    def _on_reply(self, replica: Replica, message: dict[str, Any], blobs: list[np.ndarray]) -> None:
        items = replica.in_flight.pop(message.get("id"), None)  # type: ignore[arg-type]
        if not replica.in_flight:
            replica.idle.set()
        tq = replica.queue
        if items is None:
            return
        answers = message.get("out", ())
        if not message.get("ok") or len(answers) != len(items):
            self._retry(tq, items, str(message.get("error", "malformed answer")))
            self._pump(tq)
            return
        ms = float(message["ms"])
        self._note_service(tq, ms)
        now = asyncio.get_running_loop().time()
        app = tq.app
        for item, answer in zip(items, answers, strict=True):
            req = item.request
            if req.done:
                continue
            if "error" in answer:  # this input alone: a handler's verdict on it is not retried elsewhere
                refused = bool(answer.get("refused"))
                self._finish(req, "error", 422 if refused else 500,
                             f"{tq.task} {'refused the input' if refused else 'failed'}: {answer['error']}")
                continue
            try:
                forward = [(label, blobs[k]) for label, k in answer["forward"]]
            except (KeyError, IndexError, TypeError, ValueError):
                self._finish(req, "error", 502, f"{tq.task}: a malformed answer from worker {replica.name}")
                continue
            req.items += 1
            path_ms = item.path_ms + ms
            children = payloads.children_items(app, tq.task, forward)
            for child in tq.children:
                counts = self.fanout_counts.setdefault((app.name, tq.task, child, replica.variant), [0, 0])
                counts[0] += 1
                counts[1] += sum(1 for c, *_ in children if c == child)
            for child, j, x in children:
                self._enqueue(self.queues[(app.name, child)], Item(req, now, path_ms, x, (*item.key, j)))
            if req.done:
                continue
            if not tq.children:
                req.results.setdefault(tq.task, []).append((item.key, answer.get("value")))
            if not children:
                req.critical_ms = max(req.critical_ms, path_ms)
            req.open_items -= 1
            if req.open_items == 0:
                late = now > req.deadline_s
                self._finish(req, "violated" if late else "ok", 200)
        self._pump(tq)

    def _retry(self, tq: TaskQueue, items: list[Item], reason: str) -> None:
        now = asyncio.get_running_loop().time()
        for item in reversed(items):
            req = item.request
            if req.done:
                continue
            if item.retried:
                self._finish(req, "error", 502, f"a batch at {tq.task} failed twice ({reason})")
                continue
            if now + tq.rem_s > req.deadline_s:
                self._finish(req, "dropped", 503, f"deadline unreachable at {tq.task} after its batch failed ({reason})")
                continue
            item.retried = True
            req.queued += 1
            tq.queue.appendleft(item)

    def _on_lost(self, replica: Replica, why: str) -> None:
        log.warning("worker %s lost (%s); retrying its %d batch(es)", replica.name, why, len(replica.in_flight))
        self.detach(replica, why)  # the reconciler's supervisor restarts the process

    def detach(self, replica: Replica, why: str) -> None:
        tq = replica.queue
        if replica in tq.replicas:
            tq.replicas.remove(replica)
        for items in replica.in_flight.values():
            self._retry(tq, items, why)
        replica.in_flight.clear()
        replica.idle.set()
        replica.close()
        self._pump(tq)

    def _expire(self, req: InferRequest) -> None:
        if req.done:
            return
        if req.queued > 0:
            self._finish(req, "dropped", 503, "deadline passed while queued")
            return
        why = f"no worker answered within {ANSWER_GRACE_S:g} s of the deadline"
        req.timer = asyncio.get_running_loop().call_at(req.deadline_s + ANSWER_GRACE_S, self._finish, req, "error", 504, why)

    def _finish(self, req: InferRequest, status: str, code: int, reason: str = "") -> None:
        if req.done:
            return
        req.done = True
        if req.timer is not None:
            req.timer.cancel()
        self.pending.discard(req)
        latency_s = asyncio.get_running_loop().time() - req.arrival_s
        stats = self.stats[req.app]
        stats.answers[status] += 1
        doc: dict[str, Any] = {"id": req.rid, "app": req.app, "status": status, "latency_ms": round(1000 * latency_s, 3)}
        if status in ("ok", "violated"):
            stats.latency.observe(latency_s)
            overhead_ms = 1000 * latency_s - req.critical_ms
            self.overhead_ms.append(overhead_ms)
            self.overhead.observe(overhead_ms / 1000)
            doc |= {"outputs": payloads.ordered(req.results, self.apps[req.app]), "items": req.items,
                    "worker_ms": round(req.critical_ms, 3)}
        else:
            doc["reason"] = reason
        req.future.set_result(Response.json(code, doc))

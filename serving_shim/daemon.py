"""The daemon: the controller loop against live traffic.

    jigsaw daemon --backend cpu|mps|mig|ray --app A[,B…] [--policy FILE] [--plan FILE] [--port N] [--run-dir DIR]

Startup: check the options (a plan file must fit the catalog), open the backend (a machine without what it needs
fails here), listen (127.0.0.1 by default), then start the first plan: ``--plan FILE``, else the plan persisted in
the run directory by a previous run, else the controller's plan for ``min_rps`` per app. Then, every
``interval_s``: measure each app's arrival rate at the router over the interval and over its busiest
``PEAK_WINDOW_S`` window, ask the controller for a plan (in a thread: the ILP may take its time limit), and
reconcile when the plan changed (as ``jigsaw.env.transitions`` says a change happens: see the reconciler;
``/status``'s ``last_change`` gives its switch time beside the model's). A decision that raises is logged and the
current plan stays. Every applied plan is persisted (``plan.json``, atomically); every decision is logged to
TensorBoard (``tensorboard/``) and kept for ``/status``. ``/metrics`` serves Prometheus text (``exposition.py``),
``/healthz`` answers while the process lives, ``/ready`` only while a plan serves. The loop survives the failures
of its own side effects (TensorBoard, persisting, reconciling): each is logged (rate-limited), counted in
``/status`` and ``/metrics``, and the loop goes on. SIGTERM or SIGINT: stop accepting, answer what is pending,
drain and stop every worker, stop the backend's daemons.

Exposure: beyond loopback the daemon refuses to start without a bearer token (``--auth-token`` or
``$JIGSAW_AUTH_TOKEN``, then checked on every endpoint) unless ``--insecure`` says a proxy in front
authenticates. The run directory is created 0700, ``plan.json`` is written 0600, and ``jigsaw daemon`` runs
under umask 077 (logs, TensorBoard files, sockets), whatever the user's umask.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jigsaw.agents.controller import Controller, Decision, Proposer
from jigsaw.env.candidates import SolverOptions
from jigsaw.env.perf import compile_plan
from jigsaw.env.plan import Plan
from jigsaw.env.transitions import FleetBuilder
from jigsaw.profiles import handlers
from jigsaw.profiles.catalog import Catalog, load_catalog, with_fanout_ratios
from jigsaw.profiles.errors import PlanError, ShimError, ensure_writable_dir
from jigsaw.serving_shim import exposition, metrics
from jigsaw.serving_shim.access import authorized, check_exposure, private_dir, write_private
from jigsaw.serving_shim.backends import make_backend
from jigsaw.serving_shim.errorlog import ErrorLog
from jigsaw.serving_shim.http import Request, Response, Server, default_max_connections
from jigsaw.serving_shim.reconciler import Reconciler
from jigsaw.serving_shim.router import ANSWER_GRACE_S, Router

log = logging.getLogger("jigsaw.daemon")

PLAN_FILE = "plan.json"
PEAK_WINDOW_S = 10.0  # the windows an interval's busiest rate is measured over (the shipped traces' finest bins)
_KEPT_DECISIONS = 50
FANOUT_MIN_ITEMS = 100  # items served at an edge's parent before its measured fan-out replaces the catalog's
FANOUT_TOLERANCE = 0.1  # relative difference from the catalog's fan-out that counts as a difference
FANOUT_FLOOR = 1e-3  # a measured fan-out of 0 still plans a worker for the child (every task gets one)
_LOOP_ERRORS = ("control", "persist", "tensorboard")  # kinds of the control loop's survived errors


@dataclass(frozen=True)
class DaemonConfig:
    backend: str
    apps: tuple[str, ...]
    run_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port (printed at startup)
    interval_s: float = 30.0  # control interval, seconds
    min_rps: float = 1.0  # demand floor per app, req/s: an idle app keeps a minimal plan
    catalog: str | None = None
    gpu_type: str = "h100"
    gpus: int = 1
    policy: str | None = None
    plan_file: str | None = None
    max_workers: int | None = None  # cpu backend
    ray_address: str | None = None  # ray backend: the cluster's host:port, or "auto" (the default)
    model: str | None = None  # cpu and ray backends: one stand-in for every worker (e.g. "noop")
    solver: SolverOptions = field(default_factory=lambda: SolverOptions(time_limit_s=10.0))
    max_connections: int | None = None  # open HTTP connections at once (default: from the file limit)
    auth_token: str | None = None  # when set, every request needs "Authorization: Bearer <token>"
    insecure: bool = False  # beyond loopback without a token: a proxy in front authenticates
    advisory: bool = False  # after the starting plan, decisions are reported (``advice``), never applied


def load_policy(cfg: DaemonConfig, catalog: Catalog) -> tuple[Proposer, str]:
    """The trained policy of ``cfg.policy`` as the controller's proposer, with its version; refused (one line)
    when it was trained for other apps or another cluster than the daemon serves."""
    from jigsaw.agents.ppo import load_policy as load  # reads plain data (.npz + .json): never unpickles

    policy = load(cfg.policy, catalog)
    policy.check_serves(cfg.apps, cfg.gpus, cfg.gpu_type, cfg.policy)
    policy.for_gpus(cfg.gpus)  # its kernels compiled or loaded now, not in the first decision
    return policy.proposer, policy.version


class Daemon:
    def __init__(self, cfg: DaemonConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        """Checks everything that can be checked without touching the machine; raises ``JigsawError``."""
        self.cfg, self.clock = cfg, clock
        self.gpus = cfg.gpus  # the cluster now: an operator may change it mid-run (``resize``)
        self.catalog = load_catalog(cfg.catalog)
        self.gpu = self.catalog.gpu(cfg.gpu_type)
        if not cfg.apps:
            raise ShimError("no app to serve", field="--app", fix="name at least one app")
        for name in cfg.apps:
            self.catalog.app(name)
            if not self.catalog.serves(self.gpu.name, name):
                raise ShimError(f"app '{name}' has no profile on {self.gpu.name}", field="--app",
                                fix=f"use one of {', '.join(self.catalog.apps_for(self.gpu.name))}")
        if cfg.model is None:  # each variant's handler must import here before a worker tries
            for app in map(self.catalog.app, cfg.apps):
                for task in app.tasks:
                    for spec in {v.handler for v in task.variants}:
                        try:
                            handlers.importable(spec)
                        except handlers.HandlerError as e:
                            raise ShimError(f"{app.source_file}: {e}", field=f"tasks.{task.name}.handler",
                                            fix="install the handler's module where the daemon runs, or fix its name",
                                            ) from None
        if cfg.model is not None:
            known = {"noop"} | {x for a in cfg.apps for t in self.catalog.app(a).tasks
                                for x in (t.family, *(v.name for v in t.variants))}
            if cfg.model not in known:
                raise ShimError(f"no stand-in model '{cfg.model}'", field="--model",
                                fix="use noop, or a task family or variant of the apps served, e.g. resnet50")
        if not 0 <= cfg.port <= 65535:
            raise ShimError(f"port {cfg.port}", field="--port", fix="give a port in 0..65535 (0: any free port)")
        if not (cfg.interval_s > 0 and cfg.min_rps >= 0 and cfg.gpus >= 1):
            raise ShimError(f"interval {cfg.interval_s} s, min rate {cfg.min_rps} req/s, {cfg.gpus} GPUs",
                            field="--interval/--min-rps/--gpus", fix="interval > 0, min rate >= 0, GPUs >= 1")
        check_exposure(cfg.host, cfg.auth_token, cfg.insecure)
        max_connections = cfg.max_connections if cfg.max_connections is not None else default_max_connections()
        if max_connections < 1:
            raise ShimError(f"{max_connections} connections", field="--max-connections", fix="give 1 or more")
        proposer, version = load_policy(cfg, self.catalog) if cfg.policy else (None, "")
        self.controller = Controller(self.catalog, self.gpu.name, list(cfg.apps), cfg.gpus, proposer=proposer,
                                     policy_version=version, opts=cfg.solver)
        existed = cfg.run_dir.is_dir()
        ensure_writable_dir(cfg.run_dir, "--run-dir")
        if not existed:
            os.chmod(cfg.run_dir, 0o700)  # plan, logs, TensorBoard: this user's only
        elif cfg.run_dir.stat().st_mode & 0o077:  # not ours to narrow (it may be ".")
            log.warning("run dir %s is open to other users; its files are 0600, its subdirectories 0700",
                        cfg.run_dir)
        self.plan_path = cfg.run_dir / PLAN_FILE
        self.first_plan, self.plan_source = self._first_plan()
        self.controller.current = self.first_plan
        if cfg.ray_address is not None and cfg.backend != "ray":
            raise ShimError(f"--ray-address with --backend {cfg.backend}", field="--ray-address",
                            fix="use --backend ray, or leave the address out")
        self.backend = make_backend(cfg.backend, cfg.run_dir, max_workers=cfg.max_workers, model=cfg.model,
                                    ray_address=cfg.ray_address or "auto")
        self.router = Router(self.catalog, list(cfg.apps))
        # plan changes follow jigsaw.env.transitions: cpu workers start as measured for them and emulate the GPU's
        # MIG repartition time; MPS shares are set at a worker's start, so no geometry waits
        emulated = cfg.backend == "cpu"
        self.reconciler = Reconciler(
            self.backend, self.router, self.gpu,
            fleets=FleetBuilder(self.catalog, self.gpu, cfg.apps, device="cpu" if emulated else self.gpu.name),
            cluster_slices=float(cfg.gpus * self.gpu.compute_slices),
            repartition_wait_s=self.catalog.transitions_for(self.gpu.name).repartition_s if emulated else 0.0)
        private_dir(self.backend.log_dir)
        self.server = Server(self.handle, max_connections=max_connections)
        self.errors = ErrorLog(log)  # the control loop's survived errors, by kind (_LOOP_ERRORS)
        self.metrics = exposition.registry(self, _LOOP_ERRORS)  # /metrics, read from the state above at each scrape
        self.plan: Plan | None = None
        self.last_change: dict[str, Any] | None = None  # the last apply: what changed, its switch time and the model's
        self.slices_used = 0.0
        self.decisions: deque[dict[str, Any]] = deque(maxlen=_KEPT_DECISIONS)
        self.sources: Counter[str] = Counter()
        self.advice: dict[str, Any] | None = None  # advisory mode: the last decision, not applied
        self.advised = 0  # advisory mode: decisions that would have changed the plan
        self.fanout_ratios: dict[tuple[str, str, str], float] = {}  # the measured fan-outs in use (_measured_catalog)
        self.rates_rps = dict.fromkeys(cfg.apps, 0.0)
        self.url = ""
        self.started_s = clock()
        self._stop = asyncio.Event()
        self._writer: Any = None

    def _first_plan(self) -> tuple[Plan | None, str]:
        if self.cfg.plan_file:
            return self._checked(Plan.from_json(Path(self.cfg.plan_file)), self.cfg.plan_file), "file"
        if self.plan_path.exists():
            return self._checked(Plan.from_json(self.plan_path), str(self.plan_path)), "restored"
        return None, "controller"

    def _checked(self, plan: Plan, source: str) -> Plan:
        try:
            compiled = compile_plan(self.catalog, plan)
        except PlanError as e:
            raise PlanError(e.message, file=source, field=e.field, fix=e.fix) from None
        except KeyError as e:  # compile_plan resolves per-variant fan-outs before it checks the variant names
            raise PlanError(f"unknown name {e}", file=source, field="apps",
                            fix="use the catalog's tasks and variants (see `jigsaw solve --json`)") from None
        fix = f"write a plan for exactly these apps on {self.gpu.name} (jigsaw solve --json), or delete the file"
        if plan.gpu_type != self.gpu.name:
            raise PlanError(f"plan is for {plan.gpu_type}, the daemon runs {self.gpu.name}", file=source,
                            field="gpu_type", fix=fix)
        if set(compiled.app_names) != set(self.cfg.apps):
            raise PlanError(f"plan serves {sorted(compiled.app_names)}, the daemon serves {sorted(self.cfg.apps)}",
                            file=source, field="apps", fix=fix)
        mismatch = plan.layout_mismatch()
        if mismatch:
            raise PlanError(mismatch, file=source, field="gpus",
                            fix="list each replica once, as app/task, in an instance of its segment")
        if len(plan.gpus) > self.gpus:
            raise PlanError(f"plan uses {len(plan.gpus)} GPUs, the daemon has {self.gpus}", file=source,
                            field="gpus", fix="raise --gpus or use a smaller plan")
        return plan

    # --------------------------------------------------------------------------------------------------- running

    async def run(self, on_ready: Callable[[str], None] | None = None) -> int:
        """Serve until ``stop``; ``on_ready`` gets the URL once the first plan serves."""
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.backend.open)
        try:
            port = await self.server.start(self.cfg.host, self.cfg.port)
        except ShimError:
            self.backend.close()
            raise
        self.url = f"http://{self.cfg.host}:{port}"
        supervisor = loop.create_task(self.reconciler.supervise())
        try:
            if self.first_plan is not None:
                log.info("starting the %s plan", self.plan_source)
                await self.apply(self.first_plan)
            else:
                await self._decide({a: self.cfg.min_rps for a in self.cfg.apps})
            if self.reconciler.unloadable:  # a handler that does not load will not load on a retry either
                raise ShimError(f"a worker's handler did not load: {self.reconciler.unloadable[0]}", field="handler",
                                fix="fix the handler or its weights (the worker's log has the rest)")
            if on_ready is not None:
                on_ready(self.url)
            await self._control_loop()
        finally:
            supervisor.cancel()
            await self._shutdown()
        return 0

    def stop(self) -> None:
        """Make ``run`` shut down and return (from the daemon's event loop; other threads: call_soon_threadsafe)."""
        self._stop.set()

    async def _control_loop(self) -> None:
        """Every interval: the measured req/s per app, and those of its busiest PEAK_WINDOW_S window, to the
        controller (sized for the mean alone, a plan drops the bursts inside the interval)."""
        windows = max(1, round(self.cfg.interval_s / PEAK_WINDOW_S))
        last_s = window_s = self.clock()
        last = window = {a: s.arrivals for a, s in self.router.stats.items()}
        peak = dict.fromkeys(last, 0.0)
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.cfg.interval_s / windows)
                return
            except TimeoutError:
                pass
            now = self.clock()
            counts = {a: s.arrivals for a, s in self.router.stats.items()}
            span_s = max(now - window_s, 1e-9)
            peak = {a: max(peak[a], (counts[a] - window[a]) / span_s) for a in counts}
            window_s, window = now, counts
            if now - last_s < self.cfg.interval_s * (1 - 0.5 / windows):
                continue
            span_s = max(now - last_s, 1e-9)
            self.rates_rps = {a: (counts[a] - last[a]) / span_s for a in counts}
            last_s, last = now, counts
            busiest, peak = peak, dict.fromkeys(counts, 0.0)
            try:
                await self._decide({a: max(r, self.cfg.min_rps) for a, r in self.rates_rps.items()}, busiest)
            except Exception as e:  # reconciling, or a bug: the current plan stays, the loop goes on
                self.errors.record("control", e, "the control loop's step")

    async def resize(self, gpus: int) -> None:
        """The cluster lost or gained GPUs: the controller re-plans for ``gpus`` now, with the last measured rates
        (a policy trained for other sizes hands the decision to the ILP; nothing is refused)."""
        log.info("cluster resized from %d to %d GPUs; re-planning", self.gpus, gpus)
        self.gpus = self.controller.gpus = gpus
        self.reconciler.cluster_slices = float(gpus * self.gpu.compute_slices)
        await self._decide({a: max(r, self.cfg.min_rps) for a, r in self.rates_rps.items()})

    def _measured_catalog(self) -> Catalog:
        """The catalog with the fan-outs the router measured where they differ from it: per edge, over at least
        FANOUT_MIN_ITEMS items served at its parent, by more than FANOUT_TOLERANCE (relative)."""
        served: Counter[tuple[str, str, str]] = Counter()
        sent: Counter[tuple[str, str, str]] = Counter()
        expected: Counter[tuple[str, str, str]] = Counter()
        for row in self.router.measured_fanouts():
            edge = (row["app"], row["from"], row["to"])
            served[edge] += row["served"]
            sent[edge] += row["sent"]
            expected[edge] += row["served"] * row["catalog"]
        ratios = {e: max(FANOUT_FLOOR, sent[e] / expected[e]) for e in served
                  if served[e] >= FANOUT_MIN_ITEMS and abs(sent[e] / expected[e] - 1) > FANOUT_TOLERANCE}
        if ratios != self.fanout_ratios:
            log.info("measured fan-outs differ from the catalog's: %s", ", ".join(
                f"{a}/{u}->{v} x{r:.2f}" for (a, u, v), r in sorted(ratios.items())) or "none now")
            self.fanout_ratios = ratios
        return with_fanout_ratios(self.catalog, ratios) if ratios else self.catalog

    async def _decide(self, demand: dict[str, float], peak: dict[str, float] | None = None) -> None:
        self.controller.catalog = self._measured_catalog()
        try:
            decision = await asyncio.to_thread(self.controller.decide, demand, peak)
        except Exception as e:  # a failed decision keeps the current plan; the daemon lives on
            log.exception("decision failed; keeping the current plan")
            self._record(demand, None, f"{type(e).__name__}: {e}")
            return
        advising = self.cfg.advisory and self.plan is not None and decision.plan is not None
        if advising:
            self._advise(decision.plan)  # type: ignore[arg-type]
        self._record(demand, decision, "")
        if not advising and decision.plan is not None and (decision.plan != self.plan or self.reconciler.failed):
            await self.apply(decision.plan)

    def _advise(self, plan: Plan) -> None:
        """Advisory mode: report ``plan`` beside the plan in force, which stays (and stays the controller's)."""
        self.controller.current = self.plan
        changes = {f"{a}/{t}": {k: [getattr(now, k), getattr(new, k)] for k in ("variant", "segment", "replicas", "batch")
                                if getattr(now, k) != getattr(new, k)}
                   for a, tasks in plan.apps.items() for t, new in tasks.items()
                   if (now := self.plan.apps.get(a, {}).get(t)) is not None and now != new}  # type: ignore[union-attr]
        self.advice = {"time": time.time(), "slices": compile_plan(self.catalog, plan).slices_used,
                       "slices_in_force": self.slices_used, "changes": changes, "plan": plan.to_dict()}
        self.advised += int(bool(changes))
        log.info("advisory: the controller would %s", f"change {', '.join(changes)} ({self.advice['slices']:g} slices "
                 f"against {self.slices_used:g})" if changes else "keep the plan in force")

    async def apply(self, plan: Plan) -> None:
        """Reconcile to ``plan`` (make-before-break) and persist it."""
        report = await self.reconciler.apply(plan)
        self.last_change = {"time": time.time(), "started": report.started, "kept": report.kept,
                            "stopped": report.stopped, "stopped_early": report.stopped_early,
                            "switch_s": round(report.switch_s, 3), "predicted_switch_s": _finite(report.predicted_switch_s),
                            "failed": list(report.failed)}
        self.plan = plan
        self.slices_used = compile_plan(self.catalog, plan).slices_used
        try:
            write_private(self.plan_path, json.dumps(plan.to_dict(), indent=1))
        except Exception as e:  # the plan serves; only a restart would miss it
            self.errors.record("persist", e, f"persisting the plan to {self.plan_path}")

    def _record(self, demand: dict[str, float], d: Decision | None, error: str) -> None:
        source = d.source if d is not None else "error"
        self.sources[source] += 1
        entry: dict[str, Any] = {"time": time.time(), "demand_rps": demand, "source": source}
        if d is not None:
            entry |= {"verdict": d.verdict, "policy_slices": _finite(d.policy_slices),
                      "ilp_slices": _finite(d.ilp_slices), "gap": _finite(d.gap), "ilp_status": d.ilp_status,
                      "decide_ms": round(d.decide_ms, 3), "policy_version": d.policy_version}
        else:
            entry["error"] = error
        self.decisions.append(entry)
        log.info("decision %d: %s %s", sum(self.sources.values()), source, d.ilp_status if d else error)
        try:
            self._scalars(demand, d, source, sum(self.sources.values()))
        except Exception as e:  # e.g. EMFILE, a full disk: the decision stands, only its curve has a gap
            self.errors.record("tensorboard", e, "writing TensorBoard scalars")
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None  # its thread died with the error and fails every later write: a new one next time

    def _scalars(self, demand: dict[str, float], d: Decision | None, source: str, step: int) -> None:
        if self._writer is None:
            from tensorboard.summary import Writer  # the package's own writer: no torch in the daemon

            self._writer = Writer(str(private_dir(self.cfg.run_dir / "tensorboard")))
        w = self._writer
        for app, rps in demand.items():
            w.add_scalar(f"demand/{app}_rps", rps, step)
        for s in ("policy", "ilp", "hold", "error"):
            w.add_scalar(f"decision/source_{s}", float(s == source), step)
        if d is not None:
            w.add_scalar("decision/decide_ms", d.decide_ms, step)
            for tag, value in (("decision/policy_slices", d.policy_slices), ("decision/ilp_slices", d.ilp_slices),
                               ("decision/gap", d.gap)):
                if math.isfinite(value):
                    w.add_scalar(tag, value, step)
        for app, st in self.router.stats.items():
            w.add_scalar(f"requests/{app}_violated_total", st.answers["violated"] + st.answers["dropped"], step)
        if self.advice is not None:
            w.add_scalar("advice/slices", self.advice["slices"], step)
            w.add_scalar("advice/tasks_changed", len(self.advice["changes"]), step)
        w.flush()

    async def _shutdown(self) -> None:
        log.info("shutting down: answering pending requests, draining workers")
        self.server.stop_accepting()
        self.router.accepting = False
        limit_s = max(a.latency_slo_ms for a in self.router.apps.values()) / 1000 + ANSWER_GRACE_S + 1.0
        deadline = self.clock() + limit_s
        while self.router.pending and self.clock() < deadline:
            await asyncio.sleep(0.05)
        self.router.abort_all("shutting down")
        await self.server.close()
        await self.reconciler.shutdown()
        await asyncio.to_thread(self.backend.close)
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as e:
                self.errors.record("tensorboard", e, "closing the TensorBoard writer")
        log.info("stopped")

    # ---------------------------------------------------------------------------------------------- endpoints

    async def handle(self, request: Request) -> Response:
        if not authorized(request, self.cfg.auth_token):
            return Response(401, Response.error(401, "send Authorization: Bearer <token>").body,
                            headers=(("WWW-Authenticate", 'Bearer realm="jigsaw"'),))
        path = request.path.split("?", 1)[0]
        if path in ("/metrics", "/status", "/healthz", "/ready"):
            if request.method != "GET":
                return Response.error(405, "use GET")
            if path == "/metrics":
                return Response(200, metrics.render(self.metrics), metrics.CONTENT_TYPE)
            if path == "/ready":
                return Response.json(200, {"ready": True}) if self.ready() else Response.json(503, {"ready": False})
            return Response.json(200, self.status() if path == "/status" else {"ok": True})
        if path == "/v1/cluster":
            return await self._cluster(request)
        answer = await self.router.handle(request)
        return answer if answer is not None else Response.error(404, f"no endpoint {path}")

    async def _cluster(self, request: Request) -> Response:
        """``PUT /v1/cluster {"gpus": N}``: the cluster now has N GPUs (``resize``); the answer is the decision."""
        if request.method != "PUT":
            return Response.error(405, "use PUT with {\"gpus\": N}")
        try:
            gpus = json.loads(request.body)["gpus"]
        except (ValueError, KeyError, TypeError):
            gpus = None
        if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
            return Response.error(400, "send JSON {\"gpus\": N} with N a whole number >= 1")
        await self.resize(gpus)
        return Response.json(200, {"gpus": self.gpus, "decision": self.decisions[-1] if self.decisions else None})

    def ready(self) -> bool:
        """A plan serves: applied, every task with a worker to take its batches, and the daemon not shutting
        down (``/ready``; ``/healthz`` is liveness)."""
        return (self.plan is not None and self.router.accepting and set(self.cfg.apps) <= self.router.configured
                and all(any(not r.draining and not r.closed for r in tq.replicas) for tq in self.router.queues.values()))

    def status(self) -> dict[str, Any]:
        return {"backend": self.backend.name, "apps": list(self.cfg.apps), "gpus": self.gpus, "url": self.url,
                "uptime_s": round(self.clock() - self.started_s, 3), "plan_source": self.plan_source,
                "plan": self.plan.to_dict() if self.plan is not None else None, "slices_used": self.slices_used,
                "mig_config": self.plan.mig_parted_config(self.gpus) if self.plan is not None else None,
                "rates_rps": self.rates_rps, "workers": self.reconciler.status(),
                "worker_restarts": self.reconciler.restarts,
                "worker_restarts_by_cause": dict(self.reconciler.restarts_by_cause),
                "placement_notes": list(self.reconciler.notes), "last_change": self.last_change,
                "devices": self.backend.devices(),
                "decision_sources": dict(self.sources), "decisions": list(self.decisions)[-10:],
                "answers": {a: dict(s.answers) for a, s in self.router.stats.items()}, "ready": self.ready(),
                "fanouts": self.router.measured_fanouts(), "advisory": self.cfg.advisory, "advice": self.advice,
                "fanouts_in_use": [{"app": a, "from": u, "to": v, "ratio_to_catalog": round(r, 4)}
                                   for (a, u, v), r in sorted(self.fanout_ratios.items())],
                "loop_errors": {k: self.errors.counts[k] for k in _LOOP_ERRORS},
                "http": {"connections": len(self.server.connections), "max_connections": self.server.max_connections,
                         "errors": dict(self.server.errors.counts)}}


def _finite(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


def serve(cfg: DaemonConfig) -> int:
    """Run the daemon in the foreground (``jigsaw daemon``); logs go to stderr, the URL to stdout."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    daemon = Daemon(cfg)
    os.umask(0o077)  # what the daemon and its workers create (logs, TensorBoard, sockets) is this user's only

    def ready(url: str) -> None:
        print(f"jigsaw daemon: serving {', '.join(cfg.apps)} on {url} (backend {cfg.backend}, run dir {cfg.run_dir})",
              flush=True)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.stop)
        return await daemon.run(on_ready=ready)

    return asyncio.run(main())

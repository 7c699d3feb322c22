"""The ``ray`` backend: every worker of a plan is a Ray actor on a node of an existing Ray cluster.

    jigsaw daemon --backend ray --ray-address HOST:PORT|auto …   (pip install 'jigsaw[ray]')

Nodes say what they offer jigsaw as a Ray custom resource set when the node starts: ``jigsaw_slices``, its
compute slices (7 per H100: ``ray start --address … --resources '{"jigsaw_slices": 14}'`` for two). A worker on
a MIG instance of k compute slices shared by m workers asks for k/m of them, so Ray puts it on a node with room
and no node holds more than it offers; on a node with GPUs it also asks for that fraction of one GPU (Ray then
gives it one GPU in ``CUDA_VISIBLE_DEVICES``) and runs with ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` set to its share
of the SMs, as the ``mps`` backend does (the node's own MPS daemon: ``CUDA_MPS_PIPE_DIRECTORY`` in the environment
``ray start`` ran in). Workers are spread over the nodes with room (Ray's ``SPREAD``), so that a lost node takes
as few of a task's replicas as it can.

MIG nodes also offer each MIG instance present as a resource of its own, ``jigsaw_mig.<profile>.<uuid>``
(``jigsaw ray-resources`` on the node prints its resources as JSON; Ray knows nothing of MIG and hands out only
whole GPUs). Where the cluster offers any, each of the plan's instances goes on one of its profile: the one
where the same workers run now, else an idle one, else one whose workers the plan retires (shared, time-sliced,
until they drain: make-before-break, as on the ``mig`` backend). Its workers ask for a sliver of that resource,
which puts them on its node, and run with ``CUDA_VISIBLE_DEVICES=MIG-<uuid>``. A worker that died restarts on an
idle instance of its profile off the node it died on, where there is one (that node may be gone). Geometry is
never changed here.

The actor runs the same code as a worker process (``worker.Model``, ``worker.answer``): it loads and warms its
handler in its constructor and answers the same messages, which travel as Ray calls (arrays through Ray's
object store) instead of over a Unix socket. The router, deadlines, batching and the reconciler's
make-before-break, health checks and restarts are the code above ``Backend``. A lost node takes its actors with
it: each is a worker that died (its liveness call fails at once); its batches in flight are retried on the other
replicas and it is started again wherever slices are free. Actors belong to the daemon's Ray job, so a daemon
that exits leaves none behind. Every node needs jigsaw installed (the actors import it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayError

from jigsaw.env.plan import Plan
from jigsaw.profiles.errors import ShimError
from jigsaw.profiles.types import GpuType, HandlerSpec
from jigsaw.serving_shim import ipc
from jigsaw.serving_shim.backends.base import STOP_GRACE_S, Backend, Health, Placement, WorkerHandle, WorkerSpec
from jigsaw.serving_shim.backends.mps import plan_workers, sm_percentage
from jigsaw.serving_shim.backends.nvidia import Gpu

SLICES = "jigsaw_slices"  # the custom resource a node offers: its compute slices
MIG = "jigsaw_mig."  # a node's MIG instance, one unit each: jigsaw_mig.<profile>.<uuid>
_ON_INSTANCE = 0.001  # what a worker asks of its instance's resource: only where it is (sharers and a switch's
# old and new workers overlap on it, time-sliced, as on the mig backend)
_CONNECT_TIMEOUT_S = 3.0  # reaching the cluster's GCS port before ray.init (which retries for minutes)
_GONE_WAIT_S = 10.0  # for a killed actor's slices to be free again
_FIX_ADDRESS = ("start one (ray start --head --resources '{\"jigsaw_slices\": 7}') or give its address, "
                "e.g. --ray-address 10.0.0.5:6379")


class RayWorker:
    """A worker as a Ray actor: the handler loaded and warmed, answering ``ipc``'s messages as calls."""

    def __init__(self, model: str, handler: dict[str, Any], threads: int, device: str, batch: int,
                 env: dict[str, str]) -> None:
        os.environ.update(env)  # its device and SM share, before anything initialises CUDA
        import torch

        from jigsaw.profiles.handlers import HandlerError
        from jigsaw.serving_shim import worker

        torch.set_num_threads(max(1, threads))
        with contextlib.suppress(RuntimeError):  # set already in a reused process
            torch.set_num_interop_threads(1)
        self.answer = worker.answer
        self.unloadable = ""
        self.warm_ms = 0.0
        self.node = ray.get_runtime_context().get_node_id()
        try:
            self.model: Any = worker.Model(model, HandlerSpec(**handler), device)
        except HandlerError as e:
            self.unloadable = str(e)
            return
        self.warm_ms = self.model.warm_up(max(1, batch))

    def call(self, message: dict[str, Any], blobs: list[np.ndarray]) -> tuple[dict[str, Any], list[np.ndarray]]:
        if self.unloadable:
            return {"id": message.get("id"), "ok": False, "unloadable": self.unloadable}, []
        answer, out = self.answer(self.model, self.warm_ms, message, blobs)
        if message.get("op") == "health":
            answer["node"] = self.node
        return answer, out

    def park(self) -> None:
        """Never returns: the caller's reference fails when the actor dies, which is how its death is seen."""
        threading.Event().wait()


@dataclass
class RayHandle(WorkerHandle):
    actor: Any = None
    alive_ref: Any = None  # the actor's ``park`` call: done means dead
    checking: asyncio.Future[Any] | None = None  # a health call still unanswered (one at a time per actor)
    worker_pid: int | None = None
    node_id: str = ""  # the node it runs on, once it has answered
    code: int | None = None
    words: str = ""
    stopped: bool = False

    @property
    def pid(self) -> int | None:
        return self.worker_pid

    @property
    def node(self) -> str:
        return self.node_id

    def exit_code(self) -> int | None:
        if self.code is None and ray.wait([self.alive_ref], timeout=0)[0]:
            self.code = 1
            try:
                ray.get(self.alive_ref)
            except RayError as e:
                self.words = str(e).splitlines()[0][:300]
        return self.code

    def last_words(self) -> str:
        return self.words


def _seen(call: asyncio.Future[Any]) -> None:
    """Mark the call's failure as handled (else asyncio logs it as never retrieved)."""
    if not call.cancelled():
        call.exception()


class RayChannel:
    """An ``ipc.Channel`` of Ray calls to one actor; answers come back as each call completes."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.answers: asyncio.Queue[Any] = asyncio.Queue()
        self.calls: set[asyncio.Future[Any]] = set()

    def send(self, message: dict[str, Any], blobs: Sequence[np.ndarray] = ()) -> None:
        call = asyncio.wrap_future(self.actor.call.remote(message, list(blobs)).future())
        self.calls.add(call)
        call.add_done_callback(self._answered)

    def _answered(self, call: asyncio.Future[Any]) -> None:
        self.calls.discard(call)
        if not call.cancelled():
            self.answers.put_nowait(call.exception() or call.result())

    async def receive(self) -> ipc.Message:
        answer = await self.answers.get()
        if isinstance(answer, BaseException):  # the actor or its node is gone
            raise ConnectionError(f"{type(answer).__name__}: {str(answer).splitlines()[0][:200]}") from None
        message, blobs = answer
        return message, list(blobs)

    def close(self) -> None:
        for call in list(self.calls):
            call.cancel()


def mig_resource(profile: str, uuid: str) -> str:
    return f"{MIG}{profile}.{uuid}"


def mig_instance(resource: str) -> tuple[str, str] | None:
    """(profile, uuid) of a ``mig_resource`` name; None for any other resource."""
    if not resource.startswith(MIG) or ".MIG-" not in resource:
        return None
    profile, _, uuid = resource.removeprefix(MIG).partition(".MIG-")
    return profile, "MIG-" + uuid


def node_resources(gpus: Sequence[Gpu], gpu: GpuType) -> dict[str, float]:
    """The resources a node with ``gpus`` offers jigsaw (``ray start --resources``): its compute slices (a MIG GPU's,
    those of the instances present), and each MIG instance by profile and uuid."""
    slices = {p.name: p.compute_slices for p in gpu.mig_profiles}
    unknown = sorted({d.profile for g in gpus for d in g.mig_devices} - set(slices))
    if unknown:
        raise ShimError(f"MIG instances of profile(s) {', '.join(unknown)}, not {gpu.name}'s", field="--gpu-type",
                        fix="give the GPU type these GPUs are")
    out = {SLICES: float(sum(sum(slices[d.profile] for d in g.mig_devices) if g.mig_enabled else gpu.compute_slices
                             for g in gpus))}
    return out | {mig_resource(d.profile, d.uuid): 1.0 for g in gpus for d in g.mig_devices}


def _offered_instances(node: dict[str, Any]) -> list[tuple[str, str]]:
    """(profile, uuid) of each MIG instance a node (of ``ray.nodes()``) offers, sorted."""
    return sorted(filter(None, map(mig_instance, node["Resources"])))


def _instance_of(spec: WorkerSpec) -> tuple[str, str] | None:
    """(profile, uuid) of the MIG instance ``spec`` runs on; None off MIG."""
    return next(filter(None, (mig_instance(name) for name, _ in spec.resources)), None)


def cluster_address(address: str) -> str:
    """``address`` as host:port; ``auto`` is $RAY_ADDRESS, else the cluster ``ray start`` left on this machine."""
    if address != "auto":
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    current = Path("/tmp/ray/ray_current_cluster")  # where `ray start` records its address
    try:
        return current.read_text().strip()
    except OSError:
        raise ShimError("no Ray cluster on this machine (no $RAY_ADDRESS, no `ray start` here)", field="--ray-address",
                        fix=_FIX_ADDRESS) from None


def _reachable(address: str) -> bool:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), _CONNECT_TIMEOUT_S):
            return True
    except (OSError, ValueError):
        return False


class RayBackend(Backend):
    name = "ray"

    def __init__(self, run_dir: Path, address: str = "auto", model: str | None = None) -> None:
        """:param model: load this stand-in in every worker instead of the plan's variant (``noop`` for benchmarks)"""
        super().__init__(run_dir)
        self.address, self.model = address, model
        self.actor_class: Any = None
        self.hosting: dict[str, Counter[tuple[str, str, str]]] = {}  # MIG uuid -> (app, task, variant) started on it
        self._ids = 0

    def open(self) -> None:
        address = cluster_address(self.address)
        if not _reachable(address):
            raise ShimError(f"no Ray cluster answers at {address}", field="--ray-address", fix=_FIX_ADDRESS)
        # the daemon opens backends off its main thread, which keeps its own SIGTERM handler (on the main thread
        # Ray replaces it with sys.exit); Ray's warning that it did not is hushed
        init_log = logging.getLogger("ray._private.worker")
        level = init_log.level
        init_log.setLevel(logging.ERROR)
        try:
            ray.init(address=address, namespace="jigsaw", logging_level=logging.WARNING, log_to_driver=False,
                     configure_logging=False)
        except (ConnectionError, RuntimeError) as e:
            raise ShimError(f"cannot join the Ray cluster at {address} ({str(e).splitlines()[0][:200]})",
                            field="--ray-address", fix=_FIX_ADDRESS) from None
        finally:
            init_log.setLevel(level)
        if not self._nodes():
            ray.shutdown()
            raise ShimError(f"no node of the Ray cluster at {address} offers '{SLICES}'", field="--ray-address",
                            fix=f"start its nodes with --resources '{{\"{SLICES}\": N}}' (N: compute slices, 7 per "
                                "H100 or A100)")
        self.actor_class = ray.remote(RayWorker)

    def close(self) -> None:
        if ray.is_initialized():
            ray.shutdown()

    def _nodes(self) -> list[dict[str, Any]]:
        """The live nodes offering slices."""
        return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(SLICES, 0) > 0]

    def _instances(self, nodes: list[dict[str, Any]]) -> dict[str, list[tuple[str, str]]]:
        """The MIG instances ``nodes`` offer: profile -> [(uuid, node id)], in a fixed order."""
        out: dict[str, list[tuple[str, str]]] = {}
        for n in sorted(nodes, key=lambda n: n["NodeID"]):
            for profile, uuid in _offered_instances(n):
                out.setdefault(profile, []).append((uuid, n["NodeID"]))
        return out

    def devices(self) -> list[dict[str, Any]]:
        return [{"kind": "ray-node", "node_id": n["NodeID"], "address": n.get("NodeManagerAddress", ""),
                 "slices": n["Resources"][SLICES], "gpus": n["Resources"].get("GPU", 0.0),
                 "cpus": n["Resources"].get("CPU", 0.0),
                 "mig": [f"{profile} {uuid}" for profile, uuid in _offered_instances(n)]}
                for n in self._nodes()]

    def place(self, plan: Plan, gpu: GpuType) -> Placement:
        """On MIG instances where the nodes offer any, else on slices (MPS shares on GPU nodes)."""
        nodes = self._nodes()
        on_gpus = bool(nodes) and all(n["Resources"].get("GPU", 0) > 0 for n in nodes)
        instances = self._instances(nodes)
        return self._on_instances(plan, instances, on_gpus) if instances else self._on_slices(plan, gpu, nodes, on_gpus)

    def _on_instances(self, plan: Plan, instances: dict[str, list[tuple[str, str]]], on_gpus: bool) -> Placement:
        """Each of the plan's instances on an instance of its profile somewhere in the cluster: where the same
        workers run now (they stay), else an idle one, else one the plan in force's workers are leaving (shared,
        time-sliced, until they drain); among those, on the node with the fewest replicas of its tasks, so that a
        lost node takes few of any task's."""
        wanted = [(profile, workers) for layout in plan.gpus
                  for profile, workers in zip(layout.partition, layout.workers, strict=True) if workers]
        need = Counter(profile for profile, _ in wanted)
        short = [f"{n} x {p} (the nodes offer {len(instances.get(p, []))})" for p, n in sorted(need.items())
                 if n > len(instances.get(p, []))]
        if short:
            raise ShimError(f"plan needs {', '.join(short)} MIG instances", field="plan",
                            fix="advertise each node's instances (`jigsaw ray-resources` there, for `ray start "
                                "--resources`), or plan the instances present")

        def hosted(workers: tuple[str, ...]) -> Counter[tuple[str, str, str]]:
            return Counter((a, t, plan.apps[a][t].variant) for a, t in (w.split("/", 1) for w in workers))

        free = {p: [uuid for uuid, _ in instances[p]] for p in need}
        node_of = {uuid: node for listed in instances.values() for uuid, node in listed}
        on_node: Counter[tuple[str, str]] = Counter()  # (node, "app/task") placed so far: spread each task's
        chosen: list[str | None] = [None] * len(wanted)  # replicas over the nodes, as SPREAD does on slices

        def choose(i: int, uuid: str) -> None:
            chosen[i] = uuid
            free[wanted[i][0]].remove(uuid)
            on_node.update((node_of[uuid], w) for w in wanted[i][1])

        for i, (profile, workers) in enumerate(wanted):
            kept = next((u for u in free[profile] if self.hosting.get(u) == hosted(workers)), None)
            if kept is not None:
                choose(i, kept)
        for i, (profile, workers) in enumerate(wanted):
            if chosen[i] is None:
                choose(i, min(free[profile], key=lambda u: (
                    sum(self.hosting.get(u, Counter()).values()),  # idle instances first
                    sum(on_node[(node_of[u], w)] for w in workers),  # then nodes with fewest of these tasks
                    sum(n for (node, _), n in on_node.items() if node == node_of[u]))))  # then fewest workers
        specs = []
        for (profile, workers), uuid in zip(wanted, chosen, strict=True):
            for worker in workers:
                app, task = worker.split("/", 1)
                cfg = plan.apps[app][task]
                specs.append(WorkerSpec(app, task, cfg.variant, self.model or cfg.variant, 1,
                                        "cuda" if on_gpus else "cpu", (("CUDA_VISIBLE_DEVICES", str(uuid)),),
                                        f"ray {profile} {uuid} ({len(workers)} sharing)", cfg.batch,
                                        resources=((mig_resource(profile, str(uuid)), _ON_INSTANCE),)))
        return Placement(tuple(specs))

    def replacement(self, spec: WorkerSpec, node: str) -> WorkerSpec:
        """On MIG instances, a died worker restarts on an idle instance of its profile off the node it died on (that
        node may be gone), where there is one."""
        instance = _instance_of(spec)
        if instance is None:
            return spec
        profile, uuid = instance
        idle = [(u, n) for u, n in self._instances(self._nodes()).get(profile, []) if not self.hosting.get(u)]
        if not idle:
            return spec
        fresh, _ = min(idle, key=lambda c: (c[1] == node, c[0] != uuid))
        return dataclasses.replace(spec, env=(("CUDA_VISIBLE_DEVICES", fresh),), place=spec.place.replace(uuid, fresh),
                                   resources=((mig_resource(profile, fresh), _ON_INSTANCE),))

    def _on_slices(self, plan: Plan, gpu: GpuType, nodes: list[dict[str, Any]], on_gpus: bool) -> Placement:
        offered = [n["Resources"][SLICES] for n in nodes]
        cpus = min((n["Resources"].get("CPU", 1.0) for n in nodes), default=1.0)
        specs, need = [], 0.0
        for _, profile, sharing, worker in plan_workers(plan):
            app, task = worker.split("/", 1)
            cfg = plan.apps[app][task]
            slices = gpu.mig_profiles[gpu.profile_index(profile)].compute_slices / sharing
            if slices > max(offered, default=0.0):
                raise ShimError(f"{worker} needs {slices:g} slices on one node; the largest node of the Ray cluster "
                                f"offers {max(offered, default=0.0):g}", field="plan",
                                fix=f"add a node with more '{SLICES}', or plan smaller instances")
            need += slices
            resources: tuple[tuple[str, float], ...] = ((SLICES, round(slices, 4)),)
            if on_gpus:
                pct = sm_percentage(gpu, profile, sharing)
                resources += (("GPU", round(slices / gpu.compute_slices, 4)),)
                specs.append(WorkerSpec(app, task, cfg.variant, self.model or cfg.variant, 1, "cuda",
                                        (("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", str(pct)),),
                                        f"ray {pct}% SMs ({profile}/{sharing})", cfg.batch, resources=resources))
            else:
                threads = int(max(1, min(round(slices), cpus)))
                specs.append(WorkerSpec(app, task, cfg.variant, self.model or cfg.variant, threads, "cpu",
                                        place=f"ray cpu x{threads} ({slices:g} slices)", batch=cfg.batch,
                                        resources=resources))
        if need > sum(offered) + 1e-6:
            raise ShimError(f"plan needs {need:g} slices; the Ray cluster's nodes offer {sum(offered):g}", field="plan",
                            fix=f"add nodes offering '{SLICES}', or plan for fewer GPUs (--gpus)")
        return Placement(tuple(specs))

    def start(self, spec: WorkerSpec) -> RayHandle:
        name = f"{spec.app}.{spec.task}.{self._ids}"
        self._ids += 1
        resources = dict(spec.resources)
        actor = self.actor_class.options(
            num_cpus=0, num_gpus=resources.pop("GPU", 0.0), resources=resources, scheduling_strategy="SPREAD",
            max_restarts=0, max_concurrency=4,
        ).remote(spec.model, dataclasses.asdict(spec.handler), spec.threads, spec.device, spec.batch, dict(spec.env))
        log = f"Ray actor {actor._actor_id.hex()} (ray logs actor --id {actor._actor_id.hex()})"
        instance = _instance_of(spec)
        if instance is not None:
            self.hosting.setdefault(instance[1], Counter())[(spec.app, spec.task, spec.variant)] += 1
        return RayHandle(name, spec, log, time.monotonic(), actor, actor.park.remote())

    def stop(self, handle: WorkerHandle, grace_s: float = STOP_GRACE_S) -> None:
        """Kill the actor (the router has drained it) and wait until Ray has freed its slices."""
        assert isinstance(handle, RayHandle)
        with contextlib.suppress(RayError):
            ray.kill(handle.actor, no_restart=True)
        ray.wait([handle.alive_ref], timeout=_GONE_WAIT_S)
        instance, spec = _instance_of(handle.spec), handle.spec
        if instance is not None and not handle.stopped:
            self.hosting[instance[1]][(spec.app, spec.task, spec.variant)] -= 1
            self.hosting[instance[1]] = +self.hosting[instance[1]]
        handle.stopped = True

    async def health(self, handle: WorkerHandle, timeout_s: float = 1.0) -> Health:
        assert isinstance(handle, RayHandle)
        if handle.exit_code() is not None:
            return Health(False, False, {"exit_code": handle.code, "error": handle.words})
        if handle.checking is None:  # a call still queued behind the constructor is awaited again, not repeated
            handle.checking = asyncio.wrap_future(handle.actor.call.remote({"op": "health", "id": 0}, []).future())
            handle.checking.add_done_callback(_seen)  # its actor may be killed before anyone awaits it again
        try:
            answer, _ = await asyncio.wait_for(asyncio.shield(handle.checking), timeout_s)
        except TimeoutError:
            return Health(True, False, {"error": "TimeoutError"})
        except RayError as e:
            handle.checking = None
            return Health(handle.exit_code() is None, False, {"error": type(e).__name__})
        handle.checking = None
        if answer.get("unloadable"):
            handle.code, handle.words = ipc.HANDLER_EXIT, answer["unloadable"]
            self.stop(handle)
            return Health(False, False, answer)
        handle.worker_pid, handle.node_id = answer.get("pid", handle.worker_pid), answer.get("node", handle.node_id)
        return Health(True, bool(answer.get("ok")), answer)

    async def connect(self, handle: WorkerHandle) -> ipc.Channel:
        assert isinstance(handle, RayHandle)
        return RayChannel(handle.actor)


"""The backend interface: how a plan becomes workers, and the worker processes of this machine.

A backend ``open()``s (checks the machine or cluster, starts shared daemons; one without what it needs fails
here with a ``ShimError``, one line), ``place``s a plan (which workers, with which threads, devices, environment
and scheduler resources), ``start``s a worker from its spec (a handle at once; the worker is ready when
``health`` says so within a deadline), ``connect``s the router to a ready worker (an ``ipc.Channel``),
``stop``s it, reports ``devices()``, and ``close()``s. ``ProcessBackend`` runs workers as child processes
answering on Unix sockets (``cpu``, ``mps``, ``mig`` differ only in ``open``/``close``, ``place`` and
``devices``); the ``ray`` backend runs them as Ray actors across a cluster's nodes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jigsaw.env.plan import Plan
from jigsaw.profiles.types import GpuType, HandlerSpec
from jigsaw.serving_shim import ipc

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_SOCKET_PATH_MAX = 100  # AF_UNIX paths are limited to 104-108 bytes
STOP_GRACE_S = 5.0
_SOCKET_NAME = re.compile(r"w\d+\.sock")  # Backend.start's worker sockets


@dataclass(frozen=True)
class WorkerSpec:
    """One worker process: what it serves and where. Two workers with equal specs are interchangeable."""

    app: str
    task: str
    variant: str  # the plan's variant (it sets the fan-out downstream)
    model: str  # what the process loads: the variant, or a stand-in such as "noop"
    threads: int  # torch intra-op threads
    device: str  # torch device: "cpu" or "cuda"
    env: tuple[tuple[str, str], ...] = ()  # placement through the environment (CUDA_VISIBLE_DEVICES, MPS share)
    place: str = "cpu"  # where, for people: "cpu", "gpu0 3g.40gb (1/2)", "MIG-…"
    batch: int = field(default=1, compare=False)  # the plan's batch, warmed up before the worker is ready
    handler: HandlerSpec = field(default=HandlerSpec(), compare=False)  # the variant's, from the catalog
    resources: tuple[tuple[str, float], ...] = ()  # what a cluster's scheduler reserves for it (Ray resources)

    @property
    def key(self) -> str:
        return f"{self.app}/{self.task}"


@dataclass(frozen=True)
class Placement:
    """A plan as worker processes on this backend, and what the backend changed or could not place."""

    specs: tuple[WorkerSpec, ...]
    notes: tuple[str, ...] = ()


@dataclass
class WorkerHandle:
    """A started worker, as the reconciler sees it; each kind of backend has its own."""

    name: str
    spec: WorkerSpec
    log: str  # where its output goes, for people
    started_s: float

    @property
    def pid(self) -> int | None:
        return None

    @property
    def node(self) -> str:
        """The cluster node it runs on ("": this machine)."""
        return ""

    def exit_code(self) -> int | None:
        """None while the worker lives; its exit status once it is gone (``ipc.HANDLER_EXIT``: its handler did not
        load)."""
        raise NotImplementedError

    def last_words(self) -> str:
        """Why it ended, in one line, where the worker said so."""
        return ""


@dataclass
class ProcessHandle(WorkerHandle):
    socket: str
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        return self.process.poll()

    def last_words(self) -> str:
        try:
            lines = Path(self.log).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""


@dataclass(frozen=True)
class Health:
    alive: bool  # the process runs
    ready: bool  # it answers health checks (the model is loaded and warm)
    detail: dict[str, Any]  # the worker's health answer, or why there is none


class Backend:
    """Where workers run; the reconciler's only view of them."""

    name = "base"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir).resolve()  # workers run from the project root
        self.log_dir = self.run_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def open(self) -> None:
        """Check the machine and start what the workers share; raises ``ShimError`` when it cannot serve."""

    def close(self) -> None:
        """Stop what ``open`` started."""

    def devices(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def place(self, plan: Plan, gpu: GpuType) -> Placement:
        """The plan's workers here; raises ``ShimError`` for a plan this backend can never serve (the daemon
        refuses it and the plan in force stays)."""
        raise NotImplementedError

    def start(self, spec: WorkerSpec) -> WorkerHandle:
        """Launch a worker for ``spec``; it is ready when ``health`` says so."""
        raise NotImplementedError

    def replacement(self, spec: WorkerSpec, node: str) -> WorkerSpec:
        """The spec a worker of ``spec`` that died on ``node`` restarts with (the same, where its place remains)."""
        return spec

    def stop(self, handle: WorkerHandle, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the worker (at once when ``grace_s`` is 0: a hung one); blocks until it is gone."""
        raise NotImplementedError

    async def health(self, handle: WorkerHandle, timeout_s: float = 1.0) -> Health:
        """Not ready when no answer comes within ``timeout_s``."""
        raise NotImplementedError

    async def connect(self, handle: WorkerHandle) -> ipc.Channel:
        """The router's channel to a ready worker; ``OSError`` or ``ConnectionError`` when it is gone."""
        raise NotImplementedError


class ProcessBackend(Backend):
    """Workers as child processes of the daemon, each answering on a Unix socket of its own."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        sock = self.run_dir / "sock"
        if len(str(sock)) + 16 > _SOCKET_PATH_MAX:  # a deep run dir: keep sockets in a short private dir
            sock = Path(tempfile.mkdtemp(prefix="jigsaw-"))
        sock.mkdir(mode=0o700, parents=True, exist_ok=True)
        sock.chmod(0o700)  # an existing directory keeps its mode otherwise (0777 stays 0777)
        self.socket_dir = sock
        self._remove_stale_sockets()
        self._ids = itertools.count()

    def _remove_stale_sockets(self) -> None:
        """Remove the worker sockets a killed predecessor on this run dir left behind, so that no check of a new
        worker can reach an old one still listening there (a stopped orphan); other files stay."""
        for path in self.socket_dir.iterdir():
            if _SOCKET_NAME.fullmatch(path.name) and stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink(missing_ok=True)

    def start(self, spec: WorkerSpec) -> ProcessHandle:
        """Launch a worker process for ``spec``; it is ready when ``health`` says so."""
        n = next(self._ids)
        name = f"{spec.app}.{spec.task}.{n}"
        sock = str(self.socket_dir / f"w{n}.sock")  # _SOCKET_NAME
        log = self.log_dir / f"{name}.log"
        env = {**os.environ, **dict(spec.env)}
        cmd = [sys.executable, "-m", "jigsaw.serving_shim.worker", "--socket", sock, "--model", spec.model,
               "--threads", str(spec.threads), "--device", spec.device, "--batch", str(spec.batch)]
        if spec.handler != HandlerSpec():
            cmd += ["--handler", json.dumps(dataclasses.asdict(spec.handler))]
        with log.open("ab") as out:
            process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                       cwd=PROJECT_ROOT, start_new_session=True)  # a terminal's Ctrl-C is the daemon's
        return ProcessHandle(name, spec, str(log), time.monotonic(), sock, process)

    def stop(self, handle: WorkerHandle, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM (with SIGCONT: a stopped process acts on nothing else), then SIGKILL after ``grace_s``; 0 kills
        at once (a hung worker). Blocks until the process is gone."""
        assert isinstance(handle, ProcessHandle)
        process = handle.process
        if grace_s > 0 and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.send_signal(signal.SIGCONT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(grace_s)
        if process.poll() is None:
            process.kill()
            process.wait()
        Path(handle.socket).unlink(missing_ok=True)

    async def health(self, handle: WorkerHandle, timeout_s: float = 1.0) -> Health:
        """Ask the worker on a connection of its own; not ready when no answer comes within ``timeout_s``. Raises
        ``OSError`` (EMFILE, ENFILE) when this process cannot open the connection: the worker's health is unknown."""
        assert isinstance(handle, ProcessHandle)
        if handle.process.poll() is not None:
            return Health(False, False, {"exit_code": handle.process.returncode})
        try:
            answer = await ipc.request(handle.socket, {"op": "health", "id": 0}, timeout_s)
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):  # we are out of descriptors: says nothing of the worker
                raise
            return Health(True, False, {"error": f"{type(e).__name__}: {e}" if str(e) else type(e).__name__})
        except (EOFError, ValueError) as e:
            return Health(True, False, {"error": f"{type(e).__name__}: {e}" if str(e) else type(e).__name__})
        return Health(True, bool(answer.get("ok")), answer)

    async def connect(self, handle: WorkerHandle) -> ipc.Channel:
        assert isinstance(handle, ProcessHandle)
        return await ipc.SocketChannel.open(handle.socket)

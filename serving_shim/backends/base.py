"""The backend interface: how a plan becomes worker processes on this machine.

A backend ``open()``s (checks the machine, starts shared daemons; a machine without what it needs fails
here with a ``ShimError``, one line), ``place``s a plan (which worker processes, with which threads,
devices and environment), ``start``s a worker from its spec (a handle at once; the worker is ready when
``health`` says so: an answer on the worker's socket within a deadline), ``stop``s it, reports ``devices()``,
and ``close()``s. Starting, stopping and health checking processes is the same everywhere and lives here; the
backends differ in ``open``/``close``, ``place`` and ``devices``.
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
    name: str
    spec: WorkerSpec
    socket: str
    process: subprocess.Popen[bytes]
    log: Path
    started_s: float

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass(frozen=True)
class Health:
    alive: bool  # the process runs
    ready: bool  # it answers health checks (the model is loaded and warm)
    detail: dict[str, Any]  # the worker's health answer, or why there is none


class Backend:
    """Worker processes common to every backend; subclasses say where workers go."""

    name = "base"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir).resolve()  # workers run from the project root
        self.log_dir = self.run_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
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

    def open(self) -> None:
        """Check the machine and start what the workers share; raises ``ShimError`` when it cannot serve."""

    def close(self) -> None:
        """Stop what ``open`` started."""

    def devices(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def place(self, plan: Plan, gpu: GpuType) -> Placement:
        raise NotImplementedError

    def start(self, spec: WorkerSpec) -> WorkerHandle:
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
        return WorkerHandle(name, spec, sock, process, log, time.monotonic())

    def stop(self, handle: WorkerHandle, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM (with SIGCONT: a stopped process acts on nothing else), then SIGKILL after ``grace_s``; 0 kills
        at once (a hung worker). Blocks until the process is gone."""
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

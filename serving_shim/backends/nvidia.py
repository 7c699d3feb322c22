"""What the GPU backends share: NVML discovery of GPUs and MIG instances (through ``pynvml``, from the
``nvidia-ml-py`` package), and the MPS control daemon. Both fail with a ``ShimError`` (one line) on a
machine without an NVIDIA driver; nothing here ever changes a GPU's settings."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from jigsaw.profiles.errors import ShimError

MPS_CONTROL = "nvidia-cuda-mps-control"
_MPS_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class MigDevice:
    gpu: int  # index of the parent GPU
    uuid: str  # as CUDA_VISIBLE_DEVICES takes it: "MIG-…"
    profile: str  # e.g. "3g.40gb"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str
    mig_enabled: bool
    mig_devices: tuple[MigDevice, ...]


def _unavailable(backend: str, why: str) -> ShimError:
    return ShimError(f"the {backend} backend needs an NVIDIA GPU and driver: {why}", field="--backend",
                     fix="use --backend cpu on this machine")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def discover(backend: str) -> list[Gpu]:
    """The GPUs NVML sees, each with its MIG instances (empty when MIG is off)."""
    try:
        import pynvml
    except ImportError:
        raise _unavailable(backend, "pynvml is not installed (pip install nvidia-ml-py)") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise _unavailable(backend, f"NVML: {e}") from None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            try:
                mig_on = pynvml.nvmlDeviceGetMigMode(handle)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
            except pynvml.NVMLError:  # a GPU without MIG support
                mig_on = False
            migs = []
            for j in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle) if mig_on else 0):
                try:
                    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
                except pynvml.NVMLError:  # an empty slot
                    continue
                # The MIG device's name ends with its profile: "NVIDIA H100 80GB HBM3 MIG 3g.40gb".
                migs.append(MigDevice(i, _text(pynvml.nvmlDeviceGetUUID(mig)),
                                      _text(pynvml.nvmlDeviceGetName(mig)).rsplit(" ", 1)[-1]))
            gpus.append(Gpu(i, _text(pynvml.nvmlDeviceGetName(handle)), _text(pynvml.nvmlDeviceGetUUID(handle)),
                            mig_on, tuple(migs)))
    except pynvml.NVMLError as e:
        raise _unavailable(backend, f"NVML: {e}") from None
    finally:
        pynvml.nvmlShutdown()
    if not gpus:
        raise _unavailable(backend, "NVML sees no GPU")
    return gpus


class MpsDaemon:
    """One MPS control daemon whose pipe and log directories live under the run directory, so that it is
    ours alone: started by ``start``, told to quit by ``stop``. Workers join it through ``env``."""

    def __init__(self, run_dir: Path, backend: str) -> None:
        self.pipe_dir, self.log_dir = run_dir / "mps" / "pipe", run_dir / "mps" / "log"
        self.backend = backend
        self.running = False

    @property
    def env(self) -> dict[str, str]:
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir), "CUDA_MPS_LOG_DIRECTORY": str(self.log_dir)}

    def _control(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        exe = shutil.which(MPS_CONTROL)
        if exe is None:
            raise _unavailable(self.backend, f"{MPS_CONTROL} is not on PATH")
        try:
            return subprocess.run([exe, *args], input=stdin, capture_output=True, text=True,
                                  env={**os.environ, **self.env}, timeout=_MPS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ShimError(f"{MPS_CONTROL} {' '.join(args)} did not answer in {_MPS_TIMEOUT_S:g} s",
                            file=str(self.log_dir), fix="see control.log there") from None

    def start(self) -> None:
        self.pipe_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        done = self._control("-d")  # forks the daemon and returns
        if done.returncode != 0:
            raise ShimError(f"{MPS_CONTROL} -d failed: {(done.stderr or done.stdout).strip()[:200]}",
                            file=str(self.log_dir), fix="see control.log there; is another MPS daemon using the GPU?")
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._control(stdin="quit\n")
            self.running = False

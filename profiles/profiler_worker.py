"""One profiler worker process: measures (variant, batch) configurations for ``profiles/profiler.py``.

Launched as ``python -m jigsaw.profiles.profiler_worker`` with its share already decided by the parent: on CPU
``--threads`` and ``--cores`` (the segment's cores, shared by every worker of a co-located group); on CUDA
``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` and the MPS pipe directory in the environment. It speaks one JSON
object per line. It first prints ``hello`` with what it got (threads, or the SM count the device reports
under MPS). Then, for each ``{"cmd": "prepare", "variant", "batch"}`` it builds the model, warms it up
and prints ``ready`` (or ``skipped`` with a reason); it waits for ``{"cmd": "go"}`` (so that co-located
workers time the same window) or ``{"cmd": "abort"}``, times and prints ``result`` with the raw samples and the
window's wall time.
End of input ends it, so a killed parent leaves no worker behind. ``--probe`` prints ``hello`` and exits.
With ``--handler`` (a ``HandlerSpec`` as JSON) it times the handler a worker of the shim would run, on a batch of
its example input, eagerly: preprocessing and output handling count, as they do when serving.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from jigsaw.profiles import handlers
from jigsaw.profiles.models import build_model
from jigsaw.profiles.types import HandlerSpec

WARMUP_PASSES = 2  # eager passes before capture or timing (the h100-mps method)


def emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), flush=True)


def driver_version() -> str:
    """The NVIDIA driver version through NVML (read-only), or '' where NVML is missing."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # no NVML library or no driver: provenance only
        return ""


def hello(device: str) -> dict[str, Any]:
    """What this process got: ``units`` = threads (CPU) or SMs as the device reports them (CUDA)."""
    doc: dict[str, Any] = {"event": "hello", "device_type": device, "torch": torch.__version__}
    if device == "cpu":
        return {**doc, "units": torch.get_num_threads(), "available": True}
    if not torch.cuda.is_available():
        return {**doc, "available": False}
    props = torch.cuda.get_device_properties(0)
    return {**doc, "available": True, "units": props.multi_processor_count, "device_name": props.name,
            "memory_mib": props.total_memory / 2**20, "cuda": torch.version.cuda, "driver": driver_version(),
            "mps_pct": os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "")}


def sample(timed: Callable[[], float], min_iters: int, max_iters: int, seconds: float) -> list[float]:
    """Timed repetitions (ms): at least ``min_iters``, then as many as fit in ``seconds``, at most
    ``max_iters`` (0: no cap, so that co-located workers keep contending for the whole window)."""
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < min_iters or (time.perf_counter() < deadline and (max_iters == 0 or len(samples) < max_iters)):
        samples.append(timed())
    return samples


class Runner:
    """The model of the current variant and the step of the current configuration."""

    def __init__(self, device: str, memory_cap_mib: float | None, handler: HandlerSpec | None = None) -> None:
        self.device = device
        self.cap_mib = memory_cap_mib
        self.handler_spec = handler
        self.handler: handlers.Handler | None = None
        self.variant = ""
        self.model: torch.nn.Module | None = None
        self.shape: tuple[int, ...] = ()
        self.step: Callable[[], Any] | None = None
        self.exec_mode = "eager"
        self.keep: tuple[Any, ...] = ()  # static input and CUDA graph: alive while the step may replay
        if device == "cuda" and memory_cap_mib:
            total = torch.cuda.get_device_properties(0).total_memory / 2**20
            torch.cuda.set_per_process_memory_fraction(min(1.0, memory_cap_mib / total))

    def release(self) -> None:
        self.step, self.keep = None, ()
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def prepare(self, variant: str, batch: int) -> dict[str, Any]:
        self.release()
        try:
            if self.handler_spec is not None:
                return self._prepare_handler(variant, batch)
            if variant != self.variant:
                self.model, self.variant = None, ""
                model, self.shape = build_model(variant)
                if self.device == "cuda":
                    model = model.to("cuda", torch.float16)
                    if len(self.shape) == 3:  # images: channels_last, as the h100-mps method did for convnets
                        model = model.to(memory_format=torch.channels_last)
                self.model, self.variant = model, variant
            x = torch.randn(batch, *self.shape)
            if self.device == "cuda":
                x = x.to("cuda", torch.float16)
                if x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                torch.cuda.reset_peak_memory_stats()
            for _ in range(WARMUP_PASSES):
                self.model(x)  # type: ignore[misc]
            self.step, self.exec_mode = self._capture(x) if self.device == "cuda" else (lambda: self.model(x), "eager")
            return {"event": "ready"}
        except Exception as e:  # one configuration failing (OOM under the slice's cap, an op) skips only it
            self.release()
            return {"event": "skipped", "reason": self._reason(e)}

    def _prepare_handler(self, variant: str, batch: int) -> dict[str, Any]:
        assert self.handler_spec is not None
        if variant != self.variant:
            self.handler, self.variant = None, ""
            self.handler, self.variant = handlers.load(self.handler_spec, variant, self.device), variant
        handler = self.handler
        assert handler is not None
        inputs = [handlers.example_input(handler)] * batch
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(WARMUP_PASSES):
            handlers.outputs(handler, inputs)
        self.step, self.exec_mode = (lambda: handlers.outputs(handler, inputs)), "handler"
        return {"event": "ready"}

    def _capture(self, x: torch.Tensor) -> tuple[Callable[[], Any], str]:
        """CUDA-graph replay where the model allows it, else eager."""
        model = self.model
        assert model is not None
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                model(x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                model(x)
            graph.replay()
            torch.cuda.synchronize()
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError:  # data-dependent shapes or host syncs cannot be captured
            torch.cuda.synchronize()
            return (lambda: model(x)), "eager"
        self.keep = (x, graph)
        return graph.replay, "cuda_graph"

    def measure(self, min_iters: int, max_iters: int, seconds: float) -> dict[str, Any]:
        step = self.step
        assert step is not None
        try:
            if self.device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

                def timed() -> float:
                    start.record()
                    step()
                    end.record()
                    end.synchronize()
                    return start.elapsed_time(end)
            else:
                def timed() -> float:
                    t0 = time.perf_counter()
                    step()
                    return (time.perf_counter() - t0) * 1e3

            t0 = time.perf_counter()
            samples = sample(timed, min_iters, max_iters, seconds)
            wall_s = time.perf_counter() - t0
            # CUDA: allocator peak since the reset in prepare (an upper bound, see the h100-mps caveats);
            # CPU: the process's peak resident set so far (Linux reports KiB).
            peak = (torch.cuda.max_memory_allocated() / 2**20 if self.device == "cuda"
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            return {"event": "result", "samples_ms": samples, "wall_s": wall_s, "peak_mem_mib": peak,
                    "exec_mode": self.exec_mode}
        except Exception as e:
            return {"event": "skipped", "reason": self._reason(e)}
        finally:
            self.release()

    def _reason(self, e: Exception) -> str:
        if self.device == "cuda" and isinstance(e, torch.cuda.OutOfMemoryError):
            return f"out of memory under the {self.cap_mib:.0f} MiB cap" if self.cap_mib else "out of memory"
        first = str(e).splitlines()[0] if str(e) else ""
        return f"{type(e).__name__}: {first}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jigsaw.profiles.profiler_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True)
    parser.add_argument("--threads", type=int, default=0, help="CPU: torch threads")
    parser.add_argument("--cores", default="", help="CPU: comma-separated cores to run on (the segment)")
    parser.add_argument("--memory-cap-mib", type=float, default=0.0, help="CUDA: the slice's memory per worker")
    parser.add_argument("--min-iters", type=int, default=20)
    parser.add_argument("--max-iters", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=0.3, help="timing window per configuration")
    parser.add_argument("--probe", action="store_true", help="print what this process got and exit")
    parser.add_argument("--handler", default=None, help="time this handler (a HandlerSpec as JSON), not the model")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        if args.cores and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(1)
    facts = hello(args.device)
    emit(facts)
    if args.probe or not facts["available"]:
        return 0
    runner = Runner(args.device, args.memory_cap_mib or None,
                    HandlerSpec(**json.loads(args.handler)) if args.handler else None)
    with torch.inference_mode():
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["cmd"] == "prepare":
                emit(runner.prepare(cmd["variant"], int(cmd["batch"])))
            elif cmd["cmd"] == "go":
                emit(runner.measure(args.min_iters, args.max_iters, args.seconds))
            else:  # abort: another worker of the group skipped this configuration
                runner.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())

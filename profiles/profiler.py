"""``jigsaw profile``: measure a profile table (the catalog's CSV schema) on this machine's GPU, or its CPU.

One worker process (``profiles/profiler_worker.py``) per SM share, run one share after another:
* CUDA: an MPS control daemon with its pipe and log directories in a temporary directory (stopped with
  ``quit`` afterwards; no MIG, compute-mode or clock setting is touched). A MIG size is emulated by the
  ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` that gives its SM count, found by probing and verified inside the
  worker from ``multi_processor_count`` (the method of the shared h100-mps measurement). fp16, CUDA-graph
  replay where the model allows it (else eager, recorded per row), CUDA-event timing, the slice's memory as
  the worker's cap (a configuration over it is recorded as skipped).
* CPU (no GPU, e.g. CI): a share is a number of cores; the worker is pinned to them with as many torch
  threads. fp32, eager, ``time.perf_counter``. ``mig`` scales each MIG size's SM fraction to the cores.
Co-location: m workers at once on one segment, each with the segment's share / m (CPU: pinned to the
segment's cores; CUDA: MPS limits how many SMs, not which); rows with ``mps_workers = m``. Each is compared
with one worker alone at the same per-worker share (a row of its own): the factor goes to the sidecar.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, field
from importlib import metadata
from itertools import groupby
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .catalog import Catalog
from .errors import ProfilerError
from .profile_plan import (
    Group,
    ProfileSettings,
    Share,
    check_variants,
    colocation_factors,
    cpu_shares,
    cuda_shares,
    plan_groups,
    split_cpu,
    summarize,
)
from .profile_store import ProfileStore, check_writable, now
from .progress import progress_bar

ROOT = Path(__file__).resolve().parents[1]
MAX_ITERS = 100  # timed repetitions per configuration when alone (the h100-mps method: 20..100 in ~0.3 s)
METHOD = {
    "cpu": "one worker process per share, pinned (sched_setaffinity) to the share's cores with as many torch "
           "threads; co-located workers share the segment's cores with cores/m threads each; fp32, eager, "
           "torch.inference_mode; 2 warm-up passes; time.perf_counter around each synchronous batch; at least "
           "min_iters repetitions, then as many as fit in the window (at most 100 alone, no cap co-located); "
           "numpy percentiles over all workers' samples; throughput_rps = batch / p50; peak_mem_mib = the "
           "worker's peak resident set (an upper bound)",
    "cuda": "MPS control daemon (pipe/log dirs in a temp dir, quit afterwards); one client per share with "
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE probed to give the MIG size's SM count, verified from "
            "multi_processor_count in the worker; memory capped to the slice (set_per_process_memory_fraction); "
            "fp16, channels_last images, torch.inference_mode; 2 eager warm-up passes, CUDA-graph capture and "
            "one replay (eager where capture fails: exec_mode); CUDA events around each synchronous batch; at "
            "least min_iters repetitions, then as many as fit in the window (at most 100 alone, no cap "
            "co-located); numpy percentiles over all workers' samples; throughput_rps = batch / p50; "
            "peak_mem_mib = max_memory_allocated since a reset before the configuration (an upper bound); "
            "co-located clients each get the segment's percentage / m but are not confined to its SMs",
}


NOISY_SPREAD = 3.0  # a p95 this many times the p50: something else ran on the device (about 1.5x on an idle CPU here)


@dataclass
class ProfileSummary:
    device_type: str
    device_name: str
    out: Path
    measured: int = 0
    skipped: int = 0
    already: int = 0  # found in --out from an earlier run
    colocation: list[dict[str, Any]] = field(default_factory=list)
    noisy: list[str] = field(default_factory=list)  # configurations whose p95 exceeded NOISY_SPREAD x their p50
    files: list[Path] = field(default_factory=list)  # written: the table and its sidecars


# --------------------------------------------------------------------------------------------------
# Processes


class WorkerDied(Exception):
    pass


def _command(device: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jigsaw.profiles.profiler_worker", "--device", device, *extra]


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}


class WorkerProcess:
    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 -- lives as long as the worker; close() closes it
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env=env)

    def send(self, doc: dict[str, Any]) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(doc) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerDied(self.why()) from None

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):  # anything else a library printed is not ours
                return json.loads(line)
        raise WorkerDied(self.why())

    def why(self) -> str:
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        self.log.seek(0)
        lines = [x for x in self.log.read().splitlines() if x.strip()]
        return f"worker exited ({rc}): {lines[-1] if lines else 'no message'}"

    def end_input(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            with suppress(OSError):
                self.proc.stdin.close()  # the worker returns

    def close(self) -> None:
        self.end_input()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def close_all(pool: Sequence[WorkerProcess]) -> None:
    for w in pool:  # all first: the workers shut down side by side
        w.end_input()
    for w in pool:
        w.close()


def probe(device: str, env: dict[str, str]) -> dict[str, Any]:
    """What a fresh worker process gets under ``env`` (device facts, SMs under an MPS percentage)."""
    run = subprocess.run(_command(device, "--probe"), capture_output=True, text=True, env=_env(env), timeout=300)
    docs = [json.loads(x) for x in run.stdout.splitlines() if x.startswith("{")]
    if run.returncode != 0 or not docs:
        last = (run.stderr.strip().splitlines() or ["no message"])[-1]
        raise ProfilerError(f"the device probe failed ({last})", field="--device", fix="check the GPU, driver and torch")
    return docs[-1]


def cpu_facts() -> dict[str, Any]:
    name = platform.processor() or platform.machine()
    with suppress(OSError, StopIteration):
        name = next(x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                    if x.startswith("model name"))
    return {"device_type": "cpu", "device_name": f"cpu: {name}", "torch": metadata.version("torch"), "driver": "",
            "cuda": "", "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else list(range(os.cpu_count() or 1))}


def detect_device(requested: str) -> dict[str, Any]:
    """Facts of the device to measure: CUDA when asked for or (auto) when a GPU is visible, else the CPU."""
    if requested != "cpu":
        # A '+cpu' torch build has no CUDA: say so without starting a process.
        facts = ({"available": False, "torch": metadata.version("torch")} if "+cpu" in metadata.version("torch")
                 else probe("cuda", {}))
        if facts["available"]:
            return {**facts, "device_type": "cuda"}
        if requested == "cuda":
            raise ProfilerError(f"no CUDA device is visible to torch {facts['torch']}", field="--device",
                                fix="run on a machine with an NVIDIA GPU and a CUDA build of torch, or use --device cpu")
    return cpu_facts()


@contextmanager
def mps_daemon() -> Iterator[dict[str, str]]:
    """An MPS control daemon of our own (pipe and log dirs in a temp dir), stopped with ``quit``."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        raise ProfilerError("nvidia-cuda-mps-control is not on PATH", field="--device",
                            fix="install the NVIDIA driver's MPS tools, or use --device cpu")
    with tempfile.TemporaryDirectory(prefix="jigsaw-mps-") as tmp:
        env = {"CUDA_MPS_PIPE_DIRECTORY": f"{tmp}/pipe", "CUDA_MPS_LOG_DIRECTORY": f"{tmp}/log"}
        for d in env.values():
            os.mkdir(d)
        start = subprocess.run([control, "-d"], env=_env(env), capture_output=True, text=True, timeout=60)
        if start.returncode != 0:
            raise ProfilerError(f"the MPS control daemon did not start ({(start.stderr or start.stdout).strip()})",
                                field="--device", fix="check that no other MPS daemon owns the GPU")
        try:
            yield env
        finally:
            subprocess.run([control], input="quit\n", env=_env(env), capture_output=True, text=True, timeout=60)


# --------------------------------------------------------------------------------------------------
# The run


def _start_group(group: Group, settings: ProfileSettings, device: str, mps_env: dict[str, str],
                 cores: Sequence[int]) -> list[WorkerProcess]:
    max_iters = MAX_ITERS if group.workers == 1 else 0
    extra = ["--min-iters", str(settings.min_iters), "--max-iters", str(max_iters), "--seconds", str(settings.seconds)]
    if settings.handler is not None:
        extra += ["--handler", json.dumps(dataclasses.asdict(settings.handler))]
    env = dict(mps_env)
    if device == "cpu":
        extra += ["--threads", str(group.worker.units), "--cores", ",".join(map(str, cores[:group.segment.units]))]
    else:
        env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(group.worker.mps_pct)
        if group.worker.memory_mib:
            extra += ["--memory-cap-mib", f"{group.worker.memory_mib:.0f}"]
    pool = [WorkerProcess(_command(device, *extra), _env(env)) for _ in range(group.workers)]
    try:
        for w in pool:
            units = w.receive().get("units")
            if units != group.worker.units:
                raise ProfilerError(f"a worker for share {group.worker.label} got {units} "
                                    f"{'SMs' if device == 'cuda' else 'threads'}, not {group.worker.units}",
                                    field="--sm-shares", fix="another process may hold the GPU or the cores; retry")
    except BaseException as e:
        close_all(pool)
        if isinstance(e, WorkerDied):
            raise ProfilerError(f"a profiler worker failed to start ({e})", field="--device",
                                fix="check that `python -m jigsaw.profiles.profiler_worker --probe` runs") from None
        raise
    return pool


def _measure_once(pool: Sequence[WorkerProcess], variant: str, batch: int) -> dict[str, Any]:
    """One configuration on every worker of the group at once: prepare all, then time all together."""
    for w in pool:
        w.send({"cmd": "prepare", "variant": variant, "batch": batch})
    replies = [w.receive() for w in pool]
    skipped = [r for r in replies if r["event"] != "ready"]
    if skipped:
        for w, r in zip(pool, replies, strict=True):
            if r["event"] == "ready":
                w.send({"cmd": "abort"})
        return skipped[0]
    for w in pool:
        w.send({"cmd": "go"})
    results = [w.receive() for w in pool]
    skipped = [r for r in results if r["event"] != "result"]
    if skipped:
        return skipped[0]
    modes = {r["exec_mode"] for r in results}
    return {"event": "result", "samples_ms": [x for r in results for x in r["samples_ms"]],
            "achieved_rps": statistics.mean(batch * len(r["samples_ms"]) / r["wall_s"] for r in results),
            "peak_mem_mib": max(r["peak_mem_mib"] for r in results),
            "exec_mode": "eager" if "eager" in modes else modes.pop()}


def _row(settings: ProfileSettings, group: Group, variant: str, batch: int) -> dict[str, Any]:
    return {"task_family": settings.family, "model": variant, "sm_count": group.segment.units,
            "mps_pct": group.worker.mps_pct or "", "mig_equiv": group.segment.label, "mps_workers": group.workers,
            "batch": batch}


def run_profile(settings: ProfileSettings, catalog: Catalog, gpu_type: str, *, progress: bool = True) -> ProfileSummary:
    """Measure every (share group, variant, batch) not already in ``settings.out``, appending as it goes."""
    gpu = catalog.gpu(gpu_type)
    check_variants(catalog, settings.family, settings.variants)
    check_writable(settings.out)
    facts = detect_device(settings.device)
    device = facts["device_type"]
    store = ProfileStore(settings.out, facts["device_name"])
    summary = ProfileSummary(device, facts["device_name"], settings.out)
    with mps_daemon() if device == "cuda" else nullcontext({}) as mps_env:
        if device == "cuda":
            def sms_at(pct: int) -> int:
                return int(probe("cuda", {**mps_env, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(pct)})["units"])

            def split(share: Share, m: int) -> Share:
                pct = max(1, (share.mps_pct or 100) // m)
                return Share(f"{share.label}/{m}", sms_at(pct), pct, share.memory_mib / m if share.memory_mib else None)

            shares = cuda_shares(settings.shares, gpu, int(facts["units"]), sms_at)
        else:
            shares, split = cpu_shares(settings.shares, gpu, len(facts["cores"])), split_cpu
        groups = plan_groups(shares, settings.colocation, split)
        configs = [(g, v, b) for g in groups for v in settings.variants for b in settings.batches]
        todo = [(g, v, b) for g, v, b in configs
                if (settings.family, v, g.segment.units, g.workers, b) not in store.done]
        summary.already = len(configs) - len(todo)
        run = {"started": now(), "status": "running", **{k: v for k, v in facts.items() if k != "available"},
               "python": platform.python_version(), "method": METHOD[device],
               "settings": {**asdict(settings), "out": str(settings.out), "gpu_type": gpu.name},
               "groups": [asdict(g) for g in groups]}
        store.record_run(run)
        try:
            with progress_bar(total=len(configs), initial=summary.already, desc="profiling", unit="config",
                              quiet=not progress) as bar:
                for group, items in groupby(todo, key=lambda c: c[0]):
                    _run_group(group, [(v, b) for _, v, b in items], settings, device, mps_env, facts, store, summary, bar)
            run["status"] = "complete"
        except KeyboardInterrupt:
            run["status"] = "interrupted"
            raise
        finally:
            summary.colocation = colocation_factors(store.measured(), groups, settings.family, settings.variants,
                                                    settings.batches)
            store.record_run({**run, "finished": now(), "measured": summary.measured, "skipped": summary.skipped,
                              "colocation": summary.colocation})
            summary.files = [p for p in (store.out, store.meta_path, store.skipped_path) if p.exists()]
    return summary


def _run_group(group: Group, items: list[tuple[str, int]], settings: ProfileSettings, device: str,
               mps_env: dict[str, str], facts: dict[str, Any], store: ProfileStore, summary: ProfileSummary,
               bar: tqdm) -> None:
    pool: list[WorkerProcess] = []
    try:
        for variant, batch in items:
            # shown at the bar's next update: a refresh here drew the bar before its delay, a line per configuration in logs
            bar.set_postfix_str(f"{group.segment.label} x{group.workers} {variant} bs{batch}", refresh=False)
            if not pool:
                pool = _start_group(group, settings, device, mps_env, facts.get("cores", []))
            try:
                outcome = _measure_once(pool, variant, batch)
            except WorkerDied as e:  # a crash costs this configuration only; fresh workers take the next
                close_all(pool)
                pool, outcome = [], {"event": "skipped", "reason": str(e)}
            row = _row(settings, group, variant, batch)
            if outcome["event"] == "result":
                p50, p95, p99, thr = summarize(outcome["samples_ms"], batch)
                store.add_row({**row, "exec_mode": outcome["exec_mode"], "p50_ms": f"{p50:.6g}", "p95_ms": f"{p95:.6g}",
                               "p99_ms": f"{p99:.6g}", "throughput_rps": f"{thr:.6g}",
                               "peak_mem_mib": f"{outcome['peak_mem_mib']:.0f}", "iters": len(outcome["samples_ms"]),
                               "achieved_rps": f"{outcome['achieved_rps']:.6g}"})
                summary.measured += 1
                if p95 > NOISY_SPREAD * p50:
                    summary.noisy.append(f"{group.segment.label} x{group.workers} {variant} bs{batch}: p95 "
                                         f"{p95 / p50:.1f}x p50")
            else:
                store.add_skipped({**row, "reason": outcome["reason"]})
                summary.skipped += 1
            bar.update()
    finally:
        close_all(pool)

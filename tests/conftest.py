"""Shared helpers: writing small catalogs into a temporary directory, and an independent brute-force
enumeration of MIG partitions (used by test_mig and by the ILP brute force)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import csv
import dataclasses
import json
import selectors
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DAEMON_START_TIMEOUT_S = 180.0  # workers import torch: slow on a loaded CI machine

PROFILE_COLUMNS = ("task_family", "model", "sm_count", "mps_workers", "batch", "p50_ms", "p95_ms", "p99_ms",
                   "throughput_rps", "peak_mem_mib")


# --------------------------------------------------------------------------------------------------
# Writing catalogs


def profile_row(family: str, model: str, sm: int, batch: int, p95: float, thr: float, *, workers: int = 1,
                mem: float | str = "") -> dict[str, Any]:
    """One profile CSV row; p50/p99 are derived from p95 so that p50 <= p95 <= p99."""
    return {"task_family": family, "model": model, "sm_count": sm, "mps_workers": workers, "batch": batch,
            "p50_ms": round(p95 * 0.9, 6), "p95_ms": p95, "p99_ms": round(p95 * 1.05, 6),
            "throughput_rps": thr, "peak_mem_mib": mem}


def write_profile_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...] = PROFILE_COLUMNS) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


@dataclass
class CatalogSpec:
    """Everything a catalog directory holds, as plain data a test may corrupt before ``write``.

    ``apps`` maps a file name (``.yaml`` or ``.json``) to the app document, or to raw text written as is.
    ``raw`` maps a file name to text (or bytes) that replaces whatever ``write`` would have produced for it.
    """

    gpus: dict[str, dict[str, Any]]
    rows: dict[str, list[dict[str, Any]]]  # gpu name -> profile rows
    models: dict[str, float | str]  # model -> published metric ("" = not published)
    apps: dict[str, dict[str, Any] | str]
    raw: dict[str, str | bytes] = field(default_factory=dict)
    cpu_workers: dict[str, Any] | None = field(default_factory=lambda: copy.deepcopy(TOY_CPU_WORKERS))  # None: left out

    def copy(self) -> CatalogSpec:
        return copy.deepcopy(self)

    def write(self, root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        doc: dict[str, Any] = {"models": "models.csv", "gpus": {}, "apps": list(self.apps)}
        if self.cpu_workers is not None:
            doc["cpu_workers"] = self.cpu_workers
        for name, gdoc in self.gpus.items():
            gdoc = dict(gdoc)
            gdoc.setdefault("profiles", f"{name}_profiles.csv")
            doc["gpus"][name] = gdoc
            write_profile_csv(root / gdoc["profiles"], self.rows.get(name, []))
        with (root / "models.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["model", "metric_value"])
            for model, metric in self.models.items():
                w.writerow([model, metric])
        for fname, app in self.apps.items():
            if isinstance(app, str):
                text = app
            elif fname.endswith(".json"):
                text = json.dumps(app, indent=1)
            else:
                text = yaml.safe_dump(app, sort_keys=False)
            (root / fname).write_text(text)
        (root / "catalog.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        for fname, raw in self.raw.items():
            (root / fname).write_bytes(raw if isinstance(raw, bytes) else raw.encode())
        return root


# Start-up and repartition times (seconds) for test GPUs, and the cpu backend's start-up times.
TOY_TRANSITIONS = {"source": "test figures", "repartition_s": 10.0, "startup_s": {"default": 5.0}}
TOY_CPU_WORKERS = {"source": "test figures", "startup_s": {"default": 1.0}}

# The hand-computable toy GPU: a 1-slice profile (16 SMs) and the whole GPU (7 slices, 112 SMs).
TOY_GPU = {
    "device_name": "Toy GPU",
    "compute_slices": 7,
    "memory_slots": 7,
    "mps_workers": [1],
    "cuda_context_mib": 0,
    "colocation": {"measured": True},
    "transitions": TOY_TRANSITIONS,
    "mig_profiles": [
        {"name": "1g", "compute_slices": 1, "sms": 16, "memory_gib": 10, "width": 1, "starts": [0, 1, 2, 3, 4, 5, 6]},
        {"name": "7g", "compute_slices": 7, "sms": 112, "memory_gib": 80, "width": 7, "starts": [0]},
    ],
}

# (model, SMs, batch) -> (p95 ms, throughput items/s); family fa for task a, fb for task b.
TOY_PROFILE = {
    ("fa", "a_small", 16, 1): (10.0, 100.0),
    ("fa", "a_small", 112, 1): (3.0, 400.0),
    ("fa", "a_big", 16, 1): (20.0, 50.0),
    ("fa", "a_big", 112, 1): (5.0, 200.0),
    ("fb", "b_small", 16, 1): (10.0, 100.0),
    ("fb", "b_small", 16, 2): (35.0, 160.0),
    ("fb", "b_small", 112, 1): (3.0, 400.0),
    ("fb", "b_small", 112, 2): (4.0, 600.0),
    ("fb", "b_big", 16, 1): (46.0, 25.0),
    ("fb", "b_big", 112, 1): (8.0, 125.0),
}

TOY_MODELS = {"a_small": 80.0, "a_big": 100.0, "b_small": 90.0, "b_big": 100.0}

# a -> b with fan-out 3. Accuracy 0.85 rules out a_small (0.8 * 0.9 and 0.8 * 1.0).
TOY_APP = {
    "name": "chain",
    "latency_slo_ms": 100,
    "accuracy_slo": 0.85,
    "tasks": {
        "a": {"family": "fa", "variants": ["a_small", "a_big"]},
        "b": {"family": "fb", "variants": ["b_small", "b_big"]},
    },
    "edges": [{"from": "a", "to": "b", "fanout": 3}],
}


def toy_spec() -> CatalogSpec:
    rows = [profile_row(fam, model, sm, batch, p95, thr) for (fam, model, sm, batch), (p95, thr) in TOY_PROFILE.items()]
    return CatalogSpec(gpus={"toy": copy.deepcopy(TOY_GPU)}, rows={"toy": rows}, models=dict(TOY_MODELS),
                       apps={"chain.yaml": copy.deepcopy(TOY_APP)})


@pytest.fixture
def toy() -> CatalogSpec:
    """A minimal valid catalog (one GPU type, one two-task app) for a test to corrupt, then ``write``."""
    return toy_spec()


@pytest.fixture(scope="session")
def builtin_catalog():
    from jigsaw.profiles.catalog import load_catalog
    return load_catalog(None)


# --------------------------------------------------------------------------------------------------
# Independent brute force over MIG placements


def brute_force_partitions(gpu) -> set[tuple[int, ...]]:
    """Every distinct non-empty instance-count tuple reachable by a set of placements (profile, start
    slot) whose memory-slot ranges are disjoint and whose compute slices total at most the GPU's.

    Enumerates all 2^P subsets of the placement list at once with numpy bit masks."""
    places = [(q, s, p.width, p.compute_slices) for q, p in enumerate(gpu.mig_profiles)
              for s in p.starts if s + p.width <= gpu.memory_slots]
    n = len(places)
    assert n <= 22, "brute force is meant for small placement lists"
    subsets = np.arange(1 << n, dtype=np.int64)
    union = np.zeros(1 << n, dtype=np.int64)
    width_sum = np.zeros(1 << n, dtype=np.int64)
    compute = np.zeros(1 << n, dtype=np.int64)
    counts = np.zeros((1 << n, len(gpu.mig_profiles)), dtype=np.int64)
    for j, (q, start, width, slices) in enumerate(places):
        chosen = (subsets >> j) & 1
        union |= chosen * (((1 << width) - 1) << start)
        width_sum += chosen * width
        compute += chosen * slices
        counts[:, q] += chosen
    popcount = np.zeros(1 << n, dtype=np.int64)
    for bit in range(gpu.memory_slots):
        popcount += (union >> bit) & 1
    ok = (popcount == width_sum) & (compute <= gpu.compute_slices) & (subsets > 0)
    return {tuple(int(x) for x in row) for row in np.unique(counts[ok], axis=0)}


def counts_of(gpu, names: dict[str, int]) -> tuple[int, ...]:
    """Instance counts (in ``gpu.mig_profiles`` order) from {profile name: count}."""
    known = {p.name for p in gpu.mig_profiles}
    assert set(names) <= known, names
    return tuple(names.get(p.name, 0) for p in gpu.mig_profiles)


def start_daemon(*args: str, stderr: Any = subprocess.DEVNULL,
                 preexec_fn: Callable[[], None] | None = None) -> tuple[subprocess.Popen[str], str]:
    """``jigsaw daemon ARGS`` in a process of its own; returns it and the URL it printed once its plan serves."""
    proc = subprocess.Popen([sys.executable, "-m", "jigsaw.scripts.cli", "daemon", *args], stdout=subprocess.PIPE,
                            stderr=stderr, text=True, cwd=ROOT, preexec_fn=preexec_fn)
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(DAEMON_START_TIMEOUT_S):
            proc.kill()
            pytest.fail("the daemon did not start")
    line = proc.stdout.readline()
    assert " on http://" in line, line
    return proc, line.split(" on ")[1].split()[0]


def seat_each_replica(plan: Any, app: str, **changes: dict[str, Any]) -> Any:
    """``plan`` with some of ``app``'s tasks' fields changed, and a layout hosting each replica in an instance of
    its own (one GPU)."""
    from jigsaw.env.plan import GpuLayout

    tasks = {t: dataclasses.replace(c, **changes.get(t, {})) for t, c in plan.apps[app].items()}
    seats = [(c.segment, f"{app}/{t}") for t, c in tasks.items() for _ in range(c.replicas)]
    layout = GpuLayout(tuple(s for s, _ in seats), tuple((k,) for _, k in seats))
    return dataclasses.replace(plan, apps={app: tasks}, gpus=(layout,))


def status_of(url: str) -> dict[str, Any]:
    """A daemon's ``/status``."""
    with urllib.request.urlopen(url + "/status", timeout=30) as r:
        return json.loads(r.read())


def load_during(url: str, app: str, bodies: Any, rps: float, seconds: float, during: Callable[[], Any]
                ) -> dict[str, Any]:
    """Replay ``rps`` of ``app`` (Poisson) against ``url`` for ``seconds``; one second in, run ``during()`` (on a
    thread of its own); the load generator's summary."""
    from jigsaw.env.traces import Trace
    from jigsaw.serving_shim.loadgen import replay, trace_arrivals

    trace = Trace(np.array([0.0]), (app,), np.array([[rps]]), seconds)
    times, apps = trace_arrivals(trace, None, seed=2)

    async def scenario() -> dict[str, Any]:
        load = asyncio.get_running_loop().create_task(replay(url, times, apps, trace.apps, {app: bodies}))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(during)
        return (await load).summary()

    return asyncio.run(scenario())


def need_ray() -> None:
    """Skip the test where the ``ray`` extra is not installed. Asks for a module of Ray's own: under pytest the
    checkout's parent folder is on sys.path, and a folder there named ``ray`` (Ray's /tmp/ray) imports as an empty
    namespace package."""
    pytest.importorskip("ray.cluster_utils", reason="the ray backend's tests need the 'ray' extra "
                        "(pip install -e '.[ray]')")


RAY_NODE_SLICES = 7  # each node of the test Ray cluster offers one H100's compute slices


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A local Ray cluster on this machine's CPU (``ray.cluster_utils.Cluster``): a head offering nothing and two
    nodes offering RAY_NODE_SLICES each, as GPU nodes would; skipped where the ``ray`` extra is not installed."""
    need_ray()
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, resources={"jigsaw_slices": RAY_NODE_SLICES})
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


@contextlib.contextmanager
def daemon_in_thread(cfg: Any) -> Iterator[tuple[Any, asyncio.AbstractEventLoop]]:
    """A ``Daemon`` of ``cfg`` serving on an event loop thread of its own, until the block ends; yields it and its
    loop. Every worker it started is stopped at the end."""
    from jigsaw.serving_shim.daemon import Daemon

    daemon = Daemon(cfg)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(daemon.run(on_ready=lambda _: ready.set()),))
    thread.start()
    try:
        if not ready.wait(DAEMON_START_TIMEOUT_S):
            pytest.fail("the daemon did not start")
        yield daemon, loop
    finally:
        loop.call_soon_threadsafe(daemon.stop)
        thread.join(60)
    assert not thread.is_alive()
    assert not daemon.reconciler.workers  # every worker stopped

"""Benchmark of the serving shim with the no-op handler (the router's cost alone), on the cpu backend (worker
processes) or the ray backend (Ray actors on a local cluster of two nodes of 7 slices each, started here).

1. Router overhead: sequential requests to a one-task app (one worker, batch 1) carrying a one-number JSON
   input; per request, the time it spent in the router (HTTP request parsed -> answer ready) minus the worker's
   service time: queues, batching, the IPC round trip, bookkeeping. p50 and p99.
2. Payload costs: the round trip of one 224 x 224 RGB image (150 KB there and back: the no-op handler passes
   it on) less that of a one-number input, on a channel of its own to the worker (its Unix socket, or Ray calls),
   p50; and decoding a 224 x 224 PNG (what the router does per image request, off its event loop), p50.
3. Plan change: the time from a plan's apply until traffic switched to the worker it added (1 -> 2 replicas,
   each in an instance of its own: the cpu backend waits out the MIG repartition it emulates first, as the
   transition model says), and the added worker's start-up and warm-up alone (launch to ready).
4. Sustained rate: open-loop Poisson load from ``jigsaw loadgen`` in its own process sending generated 224 x 224
   PNG images (two workers, batch 8),
   doubling the rate; the highest rate at which nothing is lost, >= 99% of requests are served within the
   SLO, and the client-side p99 is within the SLO too (the load generator kept up). ``lost`` in the last line
   sums every step, the failing one included.

    python scripts/bench_shim.py [--backend cpu|ray] [--requests 2000] [--step-s 3] [--start-rps 250] [--max-rps 8000]

Last line: {"backend", "router_overhead_ms_p50", "router_overhead_ms_p99", "ipc_ms_per_image_p50",
"png_decode_ms_p50", "plan_change_switch_s", "new_worker_ready_s", "sustained_rps", "lost"}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
from jigsaw.agents.controller import Controller  # noqa: E402
from jigsaw.env.plan import GpuLayout, Plan  # noqa: E402
from jigsaw.profiles.catalog import load_catalog  # noqa: E402
from jigsaw.serving_shim import ipc, payloads  # noqa: E402
from jigsaw.serving_shim.daemon import Daemon, DaemonConfig  # noqa: E402
from jigsaw.serving_shim.http import Client  # noqa: E402

APP = "image_classify"


def with_task(plan: Plan, **changes: int) -> Plan:
    """``plan`` with its one task changed, each replica in an instance of its own on one GPU."""
    tasks = {t: dataclasses.replace(c, **changes) for t, c in plan.apps[APP].items()}
    ((task, cfg),) = tasks.items()
    layout = GpuLayout((cfg.segment,) * cfg.replicas, ((f"{APP}/{task}",),) * cfg.replicas)
    return dataclasses.replace(plan, apps={APP: tasks}, gpus=(layout,))


async def overhead(daemon: Daemon, n: int) -> tuple[float, float, float]:
    client = Client(daemon.url)
    body = json.dumps({"inputs": [0.0]}).encode()
    for _ in range(200):  # warm the path
        await client.call("POST", f"/v1/apps/{APP}/infer", body)
    daemon.router.overhead_ms.clear()
    latencies = []
    loop = asyncio.get_running_loop()
    for _ in range(n):
        start = loop.time()
        status, _ = await client.call("POST", f"/v1/apps/{APP}/infer", body)
        latencies.append(1000 * (loop.time() - start))
        assert status == 200, status
    await client.aclose()
    over = np.asarray(daemon.router.overhead_ms)
    return float(np.percentile(over, 50)), float(np.percentile(over, 99)), float(np.percentile(latencies, 50))


async def ipc_per_image(channel: ipc.Channel, n: int) -> float:
    """p50 of the round trip of one 224 x 224 image less that of one number, ms (worker service time excluded)."""
    image, number = np.zeros((224, 224, 3), dtype=np.uint8), np.zeros(1, dtype=np.float32)
    loop = asyncio.get_running_loop()
    times: dict[int, list[float]] = {0: [], 1: []}
    for i in range(2 * n):
        start = loop.time()
        channel.send({"op": "infer", "id": i}, [image if i % 2 else number])
        answer, _ = await channel.receive()
        times[i % 2].append(1000 * (loop.time() - start) - answer["ms"])
    channel.close()
    return float(np.median(times[1]) - np.median(times[0]))


def png_decode_ms(n: int) -> float:
    png = payloads.sample_images(1)[0]
    times = []
    for _ in range(n):
        start = time.perf_counter()
        payloads.decode_image(png)
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


async def loadgen(url: str, rps: float, seconds: float, trace: Path) -> dict[str, float]:
    trace.write_text(f"time_s,app,rps\n0,{APP},{rps}\n{seconds},{APP},{rps}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jigsaw.scripts.cli", "loadgen", "--trace", str(trace), "--url", url,
        "--duration", str(seconds), "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=ROOT)
    out, _ = await proc.communicate()
    return json.loads(out.decode().strip().splitlines()[-1])


async def bench(args: argparse.Namespace, run_dir: Path, ray_address: str | None) -> dict[str, float | str]:
    catalog = load_catalog()
    plan = Controller(catalog, "h100", [APP], 1).decide({APP: 10.0}).plan
    assert plan is not None
    plan_file = run_dir / "start.json"
    with_task(plan, batch=1, replicas=1).to_json(plan_file)
    cfg = DaemonConfig(backend=args.backend, apps=(APP,), run_dir=run_dir, port=0, interval_s=3600.0,
                       plan_file=str(plan_file), model="noop", ray_address=ray_address)
    daemon = Daemon(cfg)
    ready = asyncio.Event()
    running = asyncio.get_running_loop().create_task(daemon.run(on_ready=lambda _: ready.set()))
    await ready.wait()
    try:
        p50, p99, client_p50 = await overhead(daemon, args.requests)
        print(f"router overhead per request: p50 {p50:.3f} ms, p99 {p99:.3f} ms "
              f"(client-side latency p50 {client_p50:.3f} ms; {args.requests} sequential requests, no-op model)")
        ipc_ms = await ipc_per_image(await daemon.backend.connect(daemon.reconciler.serving[0].handle), 500)
        decode_ms = png_decode_ms(500)
        print(f"payloads: IPC round trip of a 224 x 224 image {ipc_ms:.3f} ms more than of one number (p50); "
              f"decoding a 224 x 224 PNG {decode_ms:.3f} ms (p50)")
        began = time.monotonic()
        await daemon.apply(with_task(plan, batch=8, replicas=2))
        assert daemon.last_change is not None and daemon.last_change["started"] == 1, daemon.last_change
        switch_s = daemon.last_change["switch_s"]
        ready_s = next(w.ready_s for w in daemon.reconciler.serving if w.handle.started_s >= began)
        print(f"plan change: traffic on the added worker {switch_s:.2f} s after the apply began (the model predicts "
              f"{daemon.last_change['predicted_switch_s']} s; the cpu backend waits out the GPU's repartition it "
              f"emulates); the worker ready {ready_s:.2f} s after its launch")
        sustained, lost, rps = 0.0, 0, args.start_rps
        slo_ms = catalog.apps[APP].latency_slo_ms
        while rps <= args.max_rps:
            s = await loadgen(daemon.url, rps, args.step_s, run_dir / "trace.csv")
            lost += s["lost"]
            good = s["lost"] == 0 and s["ok"] >= 0.99 * s["sent"] and (s["p99_ms"] or 0.0) <= slo_ms
            print(f"  {rps:7.0f} req/s offered: sent {s['sent']}, ok {s['ok']}, violated {s['violated']}, dropped "
                  f"{s['dropped']}, errors {s['errors']}, lost {s['lost']}, p99 {s['p99_ms']} ms -> "
                  f"{'sustained' if good else 'not sustained'}")
            if not good:
                break
            sustained, rps = rps, rps * 2
        print(f"sustained rate: {sustained:.0f} req/s of 224 x 224 PNG images (two no-op workers, batch 8, "
              f"{os.cpu_count()} cores)")
    finally:
        daemon.stop()
        await running
    return {"backend": args.backend, "router_overhead_ms_p50": round(p50, 4), "router_overhead_ms_p99": round(p99, 4),
            "ipc_ms_per_image_p50": round(ipc_ms, 4), "png_decode_ms_p50": round(decode_ms, 4),
            "plan_change_switch_s": switch_s, "new_worker_ready_s": round(ready_s, 3), "sustained_rps": sustained,
            "lost": lost}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("cpu", "ray"), default="cpu", help="where the workers run (default cpu)")
    p.add_argument("--requests", type=int, default=2000, help="sequential requests for the overhead")
    p.add_argument("--step-s", type=float, default=3.0, help="seconds per offered rate")
    p.add_argument("--start-rps", type=float, default=250.0, help="first offered rate (default %(default)s)")
    p.add_argument("--max-rps", type=float, default=8000.0, help="highest offered rate")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-shim-") as tmp, local_cluster(args.backend == "ray") as address:
        doc = asyncio.run(bench(args, Path(tmp), address))
    print(json.dumps(doc))


@contextlib.contextmanager
def local_cluster(wanted: bool) -> Iterator[str | None]:
    """A Ray cluster on this machine (a head offering nothing, two nodes of 7 slices) while the block runs."""
    if not wanted:
        yield None
        return
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, resources={"jigsaw_slices": 7})
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()

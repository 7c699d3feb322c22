"""The load generator: replays a trace's arrivals open-loop against a running daemon, with real payloads.

Each request of an app carries the next of its bodies in turn (``bodies``: images for the image apps, JSON
inputs for the others; ``jigsaw.serving_shim.payloads.sample_inputs`` makes them, or a folder of the user's).

Arrivals are the trace's non-homogeneous Poisson process (``Trace.arrivals``); each request is sent at its
time whether or not earlier ones were answered (open loop), over at most ``MAX_CONNECTIONS`` keep-alive
connections of one client (a request waits for a free one; that wait counts in its latency and its timeout). Every
request ends in one of: ``ok`` / ``violated`` (200, served within / over the SLO), ``dropped`` (503, shed
early), ``errors`` (any other answer), or ``lost`` (no answer at all: a broken connection or no reply within
``timeout_s``). A correct shim loses nothing. Latency percentiles are over served requests, client side.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jigsaw.env.traces import Trace
from jigsaw.profiles.catalog import Catalog
from jigsaw.profiles.errors import ShimError
from jigsaw.serving_shim import payloads
from jigsaw.serving_shim.http import Client

REQUEST_TIMEOUT_S = 30.0
WARM_CONNECTIONS = 32  # connections opened before the first request
MAX_CONNECTIONS = 256  # more only adds connection storms: the server answers one request per connection at a time


@dataclass
class LoadReport:
    sent: int = 0
    answered: int = 0
    counts: Counter[str] = field(default_factory=Counter)  # ok / violated / dropped / errors
    lost_reasons: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)  # served requests
    skipped: dict[str, int] = field(default_factory=dict)  # app -> arrivals not sent: the daemon does not serve it

    @property
    def lost(self) -> int:
        return self.sent - self.answered

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms)
        pct = {f"p{q}_ms": round(float(np.percentile(lat, q)), 3) if lat.size else None for q in (50, 95, 99)}
        return {"sent": self.sent, "answered": self.answered, "ok": self.counts["ok"],
                "violated": self.counts["violated"], "dropped": self.counts["dropped"], "errors": self.counts["errors"],
                "lost": self.lost, "skipped": self.skipped, **pct}


def trace_arrivals(trace: Trace, duration_s: float | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(send times in seconds from the start, app index) for the first ``duration_s`` of ``trace`` (all of it
    when None)."""
    start = float(trace.times_s[0])
    end = trace.end_s if duration_s is None else start + duration_s
    if not end > start:
        raise ShimError(f"duration {duration_s} s", field="--duration", fix="give a number of seconds > 0")
    times, app = trace.arrivals(np.random.default_rng(seed), start, min(end, trace.end_s))
    return times - start, app


Body = tuple[bytes, str]  # a request body and its Content-Type
SAMPLE_BODIES = 16  # generated bodies per app, sent in turn


def request_bodies(catalog: Catalog, apps: Sequence[str], images: Path | None = None) -> dict[str, list[Body]]:
    """Per app the bodies to send: the PNG/JPEG files of ``images`` for the apps that take images, else
    ``SAMPLE_BODIES`` generated ones (``payloads.sample_inputs``)."""
    files: list[Body] = []
    if images is not None:
        kinds = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
        try:
            files = [(f.read_bytes(), kinds[f.suffix.lower()]) for f in sorted(images.iterdir())
                     if f.suffix.lower() in kinds]
        except OSError as e:
            raise ShimError(f"cannot read {images} ({e.strerror})", field="--images",
                            fix="give a folder of images") from None
        if not files:
            raise ShimError(f"no .png/.jpg/.jpeg file in {images}", field="--images", fix="give a folder of images")
    out = {}
    for name in apps:
        if name not in catalog.apps:
            raise ShimError(f"the trace's app '{name}' is not in the catalog", field="--trace",
                            fix=f"use apps of the catalog: {', '.join(catalog.apps)}")
        generated = payloads.sample_inputs(catalog.app(name), SAMPLE_BODIES)
        out[name] = files if files and generated[0][1] != "application/json" else generated
    return out


async def replay(url: str, times_s: np.ndarray, app_index: np.ndarray, apps: Sequence[str],
                 bodies: Mapping[str, Sequence[Body]], *, timeout_s: float = REQUEST_TIMEOUT_S,
                 on_start: Callable[[int], None] = lambda _: None) -> LoadReport:
    """Send ``POST {url}/v1/apps/{app}/infer`` at each time (seconds from now), each with the app's next body;
    returns once every request is answered or given up. The apps the daemon's ``/status`` says it does not serve
    are skipped (``LoadReport.skipped``), not sent and counted as errors; none served is a ``ShimError``.
    ``on_start`` is called with the number of requests to send once the URL answers, before the first one."""
    missing = [a for a in apps if not bodies.get(a)]
    if missing:
        raise ShimError(f"no request bodies for {', '.join(missing)}", field="bodies",
                        fix="give each app at least one image or JSON input")
    if not 0 < timeout_s < math.inf:
        raise ShimError(f"timeout {timeout_s} s", field="--timeout", fix="give a number of seconds > 0")
    async with Client(url) as probe:  # check the URL, and that something answers there, before sending anything
        try:
            await asyncio.wait_for(probe.call("GET", "/healthz"), timeout_s)
            status, body = await asyncio.wait_for(probe.call("GET", "/status"), timeout_s)
        except (TimeoutError, OSError) as e:
            raise ShimError(f"nothing answers at {url} ({type(e).__name__}: {e})", field="--url",
                            fix="start the daemon (jigsaw daemon), or give its address") from None
    served = _served(status, body)
    skipped = [a for a in apps if served is not None and a not in served]
    if served is not None and len(skipped) == len(apps):
        raise ShimError(f"the daemon at {url} serves {', '.join(served) or 'no app'}, none of the trace's apps "
                        f"({', '.join(apps)})", field="--trace", fix="replay a trace of the apps it serves")
    keep = ~np.isin(app_index, [i for i, a in enumerate(apps) if a in skipped])
    async with Client(url, max_connections=MAX_CONNECTIONS) as client:
        # open connections before the clock starts (a new one costs its requests tens of ms), and keep what was
        # built so far out of the collector's way (a full collection paused requests by ~100 ms)
        await asyncio.gather(*(client.call("GET", "/healthz") for _ in range(WARM_CONNECTIONS)))
        gc.collect()
        gc.freeze()
        on_start(int(keep.sum()))
        report = await _send_all(client, times_s[keep], app_index[keep], apps,
                                 {a: itertools.cycle(bodies[a]) for a in apps if a not in skipped}, timeout_s)
    report.skipped = {a: int(((app_index == i) & ~keep).sum()) for i, a in enumerate(apps) if a in skipped}
    return report


def _served(status: int, body: bytes) -> list[str] | None:
    """The apps a ``/status`` answer lists; None when it lists none readable (another server, no token)."""
    try:
        apps = json.loads(body)["apps"] if status == 200 else None
    except (ValueError, KeyError, TypeError):
        return None
    return [str(a) for a in apps] if isinstance(apps, list) else None


async def _send_all(client: Client, times_s: np.ndarray, app_index: np.ndarray, apps: Sequence[str],
                    bodies: Mapping[str, Iterator[Body]], timeout_s: float) -> LoadReport:
    loop = asyncio.get_running_loop()
    report = LoadReport()

    async def one(app: str, rid: int) -> None:
        sent_s = loop.time()
        payload, kind = next(bodies[app])
        try:  # (a timeout cancels the request: the client closes its connection)
            status, body = await asyncio.wait_for(client.call(
                "POST", f"/v1/apps/{app}/infer", payload, headers={"content-type": kind, "x-request-id": str(rid)}),
                timeout_s)
        except (TimeoutError, OSError) as e:  # OSError: ConnectionError, the transport failed
            report.lost_reasons[type(e).__name__] += 1
            return
        report.answered += 1
        try:
            kind = json.loads(body).get("status")
        except (ValueError, AttributeError):
            kind = None
        if status == 200 and kind in ("ok", "violated"):
            report.counts[kind] += 1
            report.latencies_ms.append(1000 * (loop.time() - sent_s))
        elif status == 503 and kind == "dropped":
            report.counts["dropped"] += 1
        else:
            report.counts["errors"] += 1

    start = loop.time()
    tasks = []
    for t, a in zip(times_s.tolist(), app_index.tolist(), strict=True):
        delay = start + t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        report.sent += 1
        tasks.append(loop.create_task(one(apps[a], report.sent)))
    await asyncio.gather(*tasks)
    return report

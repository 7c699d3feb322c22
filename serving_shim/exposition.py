"""What the daemon's ``/metrics`` exports: its state, read at each scrape.

``DaemonCollector.collect`` lists the families, one ``yield`` each, named in Prometheus' conventions (counters
end in ``_total``, times are ``_seconds`` histograms, base units). To export something more, yield one more
family there, built with ``metrics.counter``, ``gauge`` or ``histogram``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from jigsaw.serving_shim.metrics import counter, gauge, histogram
from jigsaw.serving_shim.router import STATUSES

if TYPE_CHECKING:
    from jigsaw.serving_shim.daemon import Daemon


def registry(daemon: Daemon, loop_errors: Sequence[str]) -> CollectorRegistry:
    """A registry of ``daemon``'s families alone (no process or platform collectors)."""
    out = CollectorRegistry()
    out.register(DaemonCollector(daemon, loop_errors))
    return out


class DaemonCollector:
    """The daemon's metric families, read from its router, reconciler, control loop and HTTP server at each
    scrape (register one with a ``CollectorRegistry``)."""

    def __init__(self, daemon: Daemon, loop_errors: Sequence[str]) -> None:
        self.daemon, self.loop_errors = daemon, loop_errors  # the kinds of daemon.errors

    def collect(self) -> Iterator[Metric]:
        d = self.daemon
        stats = d.router.stats
        yield counter("jigsaw_requests_total", "Requests received per app.", ["app"],
                      {(a,): s.arrivals for a, s in stats.items()})
        yield counter("jigsaw_answers_total", "Requests answered, by app and status.", ["app", "status"],
                      {(a, st): s.answers[st] for a, s in stats.items() for st in STATUSES})
        yield gauge("jigsaw_request_rate_rps", "Arrival rate over the last control interval, requests per second.",
                    ["app"], {(a,): r for a, r in d.rates_rps.items()})
        yield counter("jigsaw_violations_total", "Requests over the SLO or dropped, per app.", ["app"],
                      {(a,): s.answers["violated"] + s.answers["dropped"] for a, s in stats.items()})
        yield counter("jigsaw_drops_total", "Requests dropped early, per app.", ["app"],
                      {(a,): s.answers["dropped"] for a, s in stats.items()})
        yield histogram("jigsaw_request_latency_seconds", "Latency of served requests.", ["app"],
                        (((a,), s.latency) for a, s in stats.items()))
        yield histogram("jigsaw_router_overhead_seconds",
                        "Time a served request spent in the router, outside workers' service.", [],
                        [((), d.router.overhead)])
        yield gauge("jigsaw_slices_used", "Compute slices (1/7 GPU) of the plan in force.", [], {(): d.slices_used})
        yield counter("jigsaw_decisions_total", "Controller decisions by source.", ["source"],
                      {(s,): d.sources[s] for s in ("policy", "ilp", "hold", "error")})
        yield gauge("jigsaw_workers", "Worker processes by state.", ["state"],
                    {(st,): n for st, n in Counter(w.state for w in d.reconciler.workers).items()})
        yield counter("jigsaw_worker_restarts_total", "Workers replaced, by cause: died or hung.", ["cause"],
                      {(c,): n for c, n in d.reconciler.restarts_by_cause.items()})
        yield counter("jigsaw_loop_errors_total",
                      "Errors the control loop survived, by kind (control, persist, tensorboard).", ["kind"],
                      {(k,): d.errors.counts[k] for k in self.loop_errors})
        yield gauge("jigsaw_http_connections", "Open HTTP connections.", [], {(): len(d.server.connections)})
        yield gauge("jigsaw_http_connections_max", "Open HTTP connections at most (the cap).", [],
                    {(): d.server.max_connections})
        fanouts = d.router.measured_fanouts()
        edge = ["app", "from_task", "to_task", "variant"]
        yield gauge("jigsaw_fanout_measured", "Items sent on per item served, per edge and variant of its parent.",
                    edge, {(f["app"], f["from"], f["to"], f["variant"]): f["measured"] for f in fanouts})
        yield gauge("jigsaw_fanout_catalog", "The catalog's fan-out of the same edge and variant.", edge,
                    {(f["app"], f["from"], f["to"], f["variant"]): f["catalog"] for f in fanouts})
        yield gauge("jigsaw_fanout_ratio_in_use",
                    "Measured over catalog fan-out the controller plans with, per edge (absent: the catalog's).",
                    ["app", "from_task", "to_task"], {k: r for k, r in d.fanout_ratios.items()})
        yield gauge("jigsaw_advisory", "1 when decisions are reported, not applied (--advisory).", [],
                    {(): float(d.cfg.advisory)})
        if d.advice is not None:
            yield gauge("jigsaw_advice_slices", "Compute slices of the plan the controller would apply (advisory).",
                        [], {(): d.advice["slices"]})
            yield gauge("jigsaw_advice_tasks_changed", "Tasks the advised plan would change (advisory).", [],
                        {(): len(d.advice["changes"])})
        yield counter("jigsaw_advised_changes_total", "Decisions that would have changed the plan (advisory).", [],
                      {(): d.advised})
        yield counter("jigsaw_http_errors_total",
                      "HTTP server errors survived, by kind (accept: EMFILE and kin; handler: answered 500).",
                      ["kind"], {(k,): d.server.errors.counts[k] for k in ("accept", "handler")})

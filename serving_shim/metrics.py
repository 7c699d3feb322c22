"""The pieces of ``/metrics``: latency histograms the router fills on its hot path, and Prometheus metric
families built from plain values at scrape time, written by prometheus_client (``exposition.py`` lists what
the daemon exports)."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

# Request latency buckets, seconds: 1 ms .. 10 s.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST  # of ``render``'s text


class Histogram:
    """Counts of seconds per bucket (upper bounds ``buckets_s``, then +Inf), their sum and count: cheap to
    ``observe`` on the router's hot path, exported as a Prometheus histogram by ``histogram``."""

    def __init__(self, buckets_s: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.buckets_s = buckets_s
        self.counts = [0] * (len(buckets_s) + 1)  # per bucket, not cumulative; the last one is +Inf
        self.sum_s = 0.0
        self.count = 0

    def observe(self, value_s: float) -> None:
        self.counts[bisect.bisect_left(self.buckets_s, value_s)] += 1
        self.sum_s += value_s
        self.count += 1


Labelled = Mapping[tuple[str, ...], float]  # label values (in the family's label order) -> sample value


def counter(name: str, documentation: str, labels: Sequence[str], values: Labelled) -> CounterMetricFamily:
    """A counter family; ``name`` ends in ``_total`` (prometheus_client writes it so)."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in values.items():
        family.add_metric(key, value)
    return family


def gauge(name: str, documentation: str, labels: Sequence[str], values: Labelled) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for key, value in values.items():
        family.add_metric(key, value)
    return family


def histogram(name: str, documentation: str, labels: Sequence[str],
              series: Iterable[tuple[tuple[str, ...], Histogram]]) -> HistogramMetricFamily:
    """A histogram family of seconds from ``Histogram`` objects, one per label values."""
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for key, h in series:
        bounds = [*map(floatToGoString, h.buckets_s), "+Inf"]
        family.add_metric(key, list(zip(bounds, itertools.accumulate(h.counts), strict=True)), h.sum_s)
    return family


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry`` (served as ``CONTENT_TYPE``)."""
    return generate_latest(registry)

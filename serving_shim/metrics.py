"""Counters and latency histograms in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping

# Request latency buckets, seconds: 1 ms .. 10 s.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Cumulative-bucket histogram of seconds (Prometheus ``_bucket``/``_sum``/``_count``)."""

    def __init__(self, buckets_s: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.buckets_s = buckets_s
        self.counts = [0] * (len(buckets_s) + 1)  # the last one is +Inf
        self.sum_s = 0.0
        self.count = 0

    def observe(self, value_s: float) -> None:
        self.counts[bisect.bisect_left(self.buckets_s, value_s)] += 1
        self.sum_s += value_s
        self.count += 1

    def lines(self, name: str, labels: str) -> Iterable[str]:
        running = 0
        for le, n in zip((*map(_number, self.buckets_s), "+Inf"), self.counts, strict=True):
            running += n
            yield f'{name}_bucket{{{labels}{"," if labels else ""}le="{le}"}} {running}'
        braced = f"{{{labels}}}" if labels else ""
        yield f"{name}_sum{braced} {_number(self.sum_s)}"
        yield f"{name}_count{braced} {self.count}"


def _number(x: float) -> str:
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return "NaN" if math.isnan(x) else "+Inf" if x > 0 else "-Inf"
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def labels(**values: str) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in values.items())


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def family(name: str, kind: str, help_text: str, samples: Mapping[str, float] | Iterable[str]) -> list[str]:
    """One metric family: HELP and TYPE lines, then ``samples`` ({labels: value}, or ready lines)."""
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    if isinstance(samples, Mapping):
        out += [f"{name}{{{lab}}} {_number(v)}" if lab else f"{name} {_number(v)}" for lab, v in samples.items()]
    else:
        out += list(samples)
    return out

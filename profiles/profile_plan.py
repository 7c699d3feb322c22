"""What ``jigsaw profile`` will measure, decided before any process starts: the request, the SM shares
(CPU: core counts) that emulate MIG sizes or percentages, the groups of worker processes that run at once,
and the figures made of their samples. Pure functions; ``profiles/profiler.py`` is the shell that runs them."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import Catalog
from .errors import ProfilerError
from .tables import RowKey
from .types import GpuType, HandlerSpec


@dataclass(frozen=True)
class Share:
    """A segment of the device: SMs under an MPS percentage (CUDA) or cores (CPU)."""

    label: str  # the mig_equiv column: the MIG profile it emulates, "pct<P>", or "<segment>/<m>"
    units: int  # SMs as the device reports them (CUDA), threads = cores (CPU): the sm_count column
    mps_pct: int | None = None  # CUDA only
    memory_mib: float | None = None  # the slice's memory (CUDA: the worker's cap); None for percentages


@dataclass(frozen=True)
class Group:
    """Worker processes that run at once: ``workers`` of them share ``segment``, each with ``worker``."""

    segment: Share
    workers: int
    worker: Share


@dataclass(frozen=True)
class ProfileSettings:
    family: str
    variants: tuple[str, ...]
    batches: tuple[int, ...]
    shares: str | tuple[int, ...]  # "mig", or percentages of the device's SMs / cores
    out: Path
    colocation: tuple[int, ...] = (1,)  # MPS workers per segment; 1 = alone only (co-location is opt-in)
    device: str = "auto"  # auto | cpu | cuda
    min_iters: int = 20
    seconds: float = 0.3  # timing window per configuration
    handler: HandlerSpec | None = None  # time the handler on its example input, not the model alone

    def __post_init__(self) -> None:
        if not 1 <= self.min_iters <= 1_000_000:
            raise ProfilerError(f"{self.min_iters} repetitions", field="--min-iters", fix="give 1..1000000, e.g. 20")
        if not 0 < self.seconds <= 3600:  # also refuses nan
            raise ProfilerError(f"{self.seconds} s per configuration", field="--time-per-config",
                                fix="give a number of seconds in (0, 3600], e.g. 0.3")



# --------------------------------------------------------------------------------------------------
# Input


def parse_positive_ints(text: str, flag: str, example: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4): whole numbers >= 1, no repeats, in the order given."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items or not all(x.isdigit() and int(x) >= 1 for x in items) or len(set(map(int, items))) != len(items):
        raise ProfilerError(f"'{text}' is not a list of distinct whole numbers >= 1", field=flag,
                            fix=f"e.g. {flag} {example}")
    return tuple(int(x) for x in items)


def parse_shares(text: str) -> str | tuple[int, ...]:
    if text.strip() == "mig":
        return "mig"
    pcts = parse_positive_ints(text, "--sm-shares", "mig, or 25,50,100")
    if max(pcts) > 100:
        raise ProfilerError(f"'{text}': a share is a percentage of the SMs (CPU: cores), at most 100",
                            field="--sm-shares", fix="e.g. --sm-shares 25,50,100, or mig")
    return pcts


def parse_colocation(text: str) -> tuple[int, ...]:
    workers = parse_positive_ints(text, "--colocation", "1,2,4")
    if 1 not in workers:
        raise ProfilerError(f"'{text}' lacks 1: co-location is measured against one worker alone",
                            field="--colocation", fix="e.g. --colocation 1,2,4 (or 1 for none)")
    return workers


def check_variants(catalog: Catalog, family: str, variants: Sequence[str]) -> None:
    """The family must have a stand-in model and every variant a name the catalog knows for that family,
    so that the rows land where the catalog looks for them."""
    from .models import FAMILIES  # torch: only once the request got this far

    if family not in FAMILIES:
        raise ProfilerError(f"no stand-in model for family '{family}'", field="--family",
                            fix=f"use one of {', '.join(FAMILIES)}")
    known = sorted({m for rows in catalog.rows.values() for f, m, *_ in rows if f == family})
    unknown = [v for v in variants if v not in known]
    if not variants or unknown:
        raise ProfilerError(f"unknown variant(s) {', '.join(unknown) or '(none given)'} of family '{family}'",
                            field="--variants", fix=f"use models the catalog lists for it: {', '.join(known)}")


# --------------------------------------------------------------------------------------------------
# Shares and groups (pure)


def _mig_sizes(gpu: GpuType) -> list[tuple[str, int, float]]:
    """(profile name, SMs, memory MiB) per distinct SM count, smallest first."""
    sizes: dict[int, tuple[str, int, float]] = {}
    for p in sorted(gpu.mig_profiles, key=lambda p: (p.sms, p.memory_gib)):
        sizes.setdefault(p.sms, (p.name, p.sms, p.memory_gib * 1024.0))
    return list(sizes.values())


def _distinct(shares: list[Share]) -> list[Share]:
    """One share per unit count (the first one named): a table holds one row per SM count."""
    seen: dict[int, Share] = {}
    for s in shares:
        seen.setdefault(s.units, s)
    return list(seen.values())


def cpu_shares(spec: str | tuple[int, ...], gpu: GpuType, cores: int) -> list[Share]:
    """Shares as core counts: a MIG size gets its fraction of the whole GPU's SMs, a percentage its part."""
    if spec == "mig":
        whole = max(p.sms for p in gpu.mig_profiles)
        return _distinct([Share(name, max(1, round(cores * sms / whole)), None, mem)
                          for name, sms, mem in _mig_sizes(gpu)])
    return _distinct([Share(f"pct{p}", max(1, round(cores * p / 100))) for p in spec])


def calibrate_pct(target_sms: int, total_sms: int, probe: Callable[[int], int], tries: int = 6) -> int:
    """The MPS percentage that gives ``target_sms``. MPS rounds a percentage down to whole TPCs, so
    ceil(100 target / total) is the usual answer (13/25/46/49/100 % for 16/32/60/64/132 of 132 SMs);
    the probe, a fresh client reporting its SM count, has the last word."""
    pct = min(100, max(1, math.ceil(100 * target_sms / total_sms)))
    seen: dict[int, int] = {}
    while len(seen) < tries:
        sms = seen[pct] = probe(pct)
        if sms == target_sms:
            return pct
        nxt = pct + (1 if sms < target_sms else -1)
        if not 1 <= nxt <= 100 or nxt in seen:
            break
        pct = nxt
    got = ", ".join(f"{p}% -> {s}" for p, s in sorted(seen.items()))
    raise ProfilerError(f"no MPS percentage gives {target_sms} SMs (probed {got})", field="--sm-shares",
                        fix="give percentages instead of 'mig'")


def cuda_shares(spec: str | tuple[int, ...], gpu: GpuType, total_sms: int, probe: Callable[[int], int]) -> list[Share]:
    if spec == "mig":
        whole = max(p.sms for p in gpu.mig_profiles)
        if whole != total_sms:
            raise ProfilerError(f"this GPU has {total_sms} SMs, the catalog's {gpu.name} has {whole}",
                                field="--sm-shares", fix="pass the --gpu-type of this GPU, or percentages")
        return _distinct([Share(name, sms, calibrate_pct(sms, total_sms, probe), mem) for name, sms, mem in _mig_sizes(gpu)])
    return _distinct([Share(f"pct{p}", probe(p), p) for p in spec])


def split_cpu(share: Share, workers: int) -> Share:
    return Share(f"{share.label}/{workers}", max(1, share.units // workers), None,
                 share.memory_mib / workers if share.memory_mib else None)


def plan_groups(shares: Sequence[Share], colocation: Sequence[int], split: Callable[[Share, int], Share]) -> list[Group]:
    """Every share alone first (the table), then per share and m > 1: one worker alone at the per-worker
    share (the co-location factor's baseline, a row like any other) and m workers together."""
    groups: dict[tuple[int, int], Group] = {}
    for s in shares:
        groups.setdefault((s.units, 1), Group(s, 1, s))
    for s in shares:
        for m in colocation:
            if m > 1:
                w = split(s, m)
                groups.setdefault((w.units, 1), Group(w, 1, w))
                groups.setdefault((s.units, m), Group(s, m, w))
    return list(groups.values())


def summarize(samples_ms: Sequence[float], batch: int) -> tuple[float, float, float, float]:
    """(p50, p95, p99 ms, throughput items/s) of one configuration's pooled samples."""
    p50, p95, p99 = (float(x) for x in np.percentile(np.asarray(samples_ms), [50, 95, 99]))
    return p50, p95, p99, batch * 1000.0 / p50


def colocation_factors(measured: dict[RowKey, tuple[float, float]], groups: Sequence[Group], family: str,
                       variants: Sequence[str], batches: Sequence[int]) -> list[dict[str, Any]]:
    """Per co-located group, against one worker alone at the same per-worker share: the p50 latency factor
    (m workers over alone) and the slowdown of achieved items/s per worker (alone over m workers) -- the
    catalog's ``slowdown_at_4_workers`` is the latter at m = 4."""
    out = []
    for g in groups:
        keys = {f"{v}@{b}": ((family, v, g.segment.units, g.workers, b), (family, v, g.worker.units, 1, b))
                for v in variants for b in batches if g.workers > 1}
        pairs = {k: (measured[m], measured[a]) for k, (m, a) in keys.items() if m in measured and a in measured}
        if pairs:
            p50 = {k: round(m[0] / alone[0], 4) for k, (m, alone) in pairs.items()}
            slow = {k: round(alone[1] / m[1], 4) for k, (m, alone) in pairs.items()}
            out.append({"segment": g.segment.label, "segment_units": g.segment.units, "workers": g.workers,
                        "worker_units": g.worker.units, "median_p50_factor": round(statistics.median(p50.values()), 4),
                        "median_slowdown": round(statistics.median(slow.values()), 4), "p50_factor": p50,
                        "slowdown": slow})
    return out

"""Profile tables: measured rows from CSV, and the per-task arrays the planner and the models read.

A profile row is (task family, model, SM count, MPS workers, batch) -> p50/p95/p99 latency (ms),
throughput (items/s per worker) and peak memory (MiB). A configuration the table lacks is never
invented silently: ``build_table`` fills it only by the documented models below and marks its kind.

* Co-location (``ColocationModel``): m MPS workers share a segment of S SMs; each gets S/m SMs. Where
  the table measured co-location (ParvaGPU's A100 rows) those rows are used as they are. Otherwise a
  worker's latency is its isolated latency at S/m SMs times ``1 + (s4 - 1)(m - 1)/3``, a line through
  the one measured point (s4 = 1.43: four resnet50 batch-8 clients at 25% ran +43% slower than one
  alone) -- memory-bandwidth contention that SM limits do not isolate.
* SM interpolation: where a (model, batch) lacks the needed SM count, latency is interpolated between
  the two measured SM counts around it with L(sm) = a + b/sm (a fixed part plus a part that divides
  over SMs), exact at both points. Never extrapolated: outside the measured range it stays missing.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np

from .documents import read_text
from .errors import CatalogError
from .types import GpuType, SegmentType, Task

MAX_BATCH = 4096  # items per batch: a worker allocates its inputs
REQUIRED_COLUMNS = ("task_family", "model", "sm_count", "batch", "p50_ms", "p95_ms", "p99_ms",
                    "throughput_rps")


class ConfigKind(IntEnum):
    MISSING = 0
    MEASURED = 1
    MODELLED = 2  # measured alone, co-location slowdown applied
    ESTIMATED = 3  # interpolated between measured SM counts
    OVER_MEMORY = 4  # known, but does not fit the worker's share of the slice's memory


@dataclass(frozen=True)
class ProfileRow:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput_rps: float
    peak_mem_mib: float  # nan when not measured


RowKey = tuple[str, str, int, int, int]  # family, model, sm_count, mps_workers, batch


@dataclass(frozen=True)
class ColocationModel:
    measured: bool  # the table holds co-located rows; use only those for m > 1
    slowdown_at_4: float = 1.0

    def slowdown(self, workers: int) -> float:
        return 1.0 + (self.slowdown_at_4 - 1.0) * (workers - 1) / 3.0


@dataclass(frozen=True)
class ProfileTable:
    """Arrays indexed [variant, segment, batch]; NaN where ``kind`` is MISSING."""

    gpu: str
    task: str
    variants: tuple[str, ...]
    segments: tuple[SegmentType, ...]
    batches: tuple[int, ...]
    p50_ms: np.ndarray
    p95_ms: np.ndarray
    p99_ms: np.ndarray
    throughput_rps: np.ndarray  # items/s of one worker
    memory_mib: np.ndarray
    kind: np.ndarray  # ConfigKind values, int8

    @functools.cached_property
    def usable(self) -> np.ndarray:
        """Read-only: computed once (compile_plan reads it per task of every plan it resolves)."""
        usable = np.isin(self.kind, (ConfigKind.MEASURED, ConfigKind.MODELLED, ConfigKind.ESTIMATED))
        usable.setflags(write=False)
        return usable


def _number(text: str | None, where: str, field: str, *, blank_ok: bool = False) -> float:
    if text is None:  # csv gives None for the cells of a short row
        raise CatalogError("the row has too few cells", file=where, field=field, fix="give every column a value")
    if blank_ok and text.strip() == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise CatalogError(f"'{text}' is not a number", file=where, field=field,
                           fix="write a plain decimal number") from None
    if not math.isfinite(value) or value < 0:
        raise CatalogError(f"{value} is negative or not finite", file=where, field=field,
                           fix="latency, throughput and memory must be finite and >= 0")
    return value


def load_profile_csv(path: Path) -> dict[RowKey, ProfileRow]:
    """Read a profile CSV (the schema of ``profiles/data/h100/profiles.csv``; extra columns ignored)."""
    rows: dict[RowKey, ProfileRow] = {}
    reader = csv.DictReader(io.StringIO(read_text(path, CatalogError, "profile table"), newline=""))
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise CatalogError(f"missing column(s) {', '.join(missing)}", file=str(path), field="header",
                           fix=f"the header must include {', '.join(REQUIRED_COLUMNS)}")
    for line, rec in enumerate(reader, start=2):
        where = f"{path}:{line}"
        sm = _number(rec["sm_count"], where, "sm_count")
        batch = _number(rec["batch"], where, "batch")
        workers = _number(rec.get("mps_workers") or "1", where, "mps_workers")
        whole = all(x.is_integer() for x in (sm, batch, workers))
        if not (whole and sm >= 1 and workers >= 1 and 1 <= batch <= MAX_BATCH):
            raise CatalogError(f"sm_count, batch and mps_workers must be whole numbers >= 1 (batch <= {MAX_BATCH})",
                               file=where, field="sm_count/batch/mps_workers", fix="correct the row")
        row = ProfileRow(*(_number(rec[c], where, c) for c in
                           ("p50_ms", "p95_ms", "p99_ms", "throughput_rps")),
                         _number(rec.get("peak_mem_mib") or "", where, "peak_mem_mib", blank_ok=True))
        if row.p50_ms <= 0 or row.throughput_rps <= 0:
            raise CatalogError("latency and throughput must be > 0", file=where, field="p50_ms/throughput_rps",
                               fix="drop rows that were not measured")
        if not row.p50_ms <= row.p95_ms <= row.p99_ms:
            raise CatalogError(f"percentiles decrease (p50 {row.p50_ms}, p95 {row.p95_ms}, p99 {row.p99_ms})",
                               file=where, field="p95_ms", fix="p50 <= p95 <= p99")
        key = (rec["task_family"], rec["model"], int(sm), int(workers), int(batch))
        if key in rows:
            raise CatalogError(f"duplicate row for {key[1]} at {key[2]} SMs, {key[3]} worker(s), batch {key[4]}",
                               file=where, field="model", fix="keep one measurement per configuration")
        rows[key] = row
    if not rows:
        raise CatalogError("profile table has no rows", file=str(path), fix="add measured rows")
    return rows


def _interpolate(points: dict[int, ProfileRow], sm: float) -> tuple[ProfileRow, bool] | None:
    """The row at ``sm`` SMs: (row, estimated). None outside the measured range."""
    if sm in points:
        return points[sm], False
    lower = [s for s in points if s < sm]
    upper = [s for s in points if s > sm]
    if not lower or not upper:
        return None
    s1, s2 = max(lower), min(upper)
    r1, r2 = points[s1], points[s2]

    def at(l1: float, l2: float) -> float:
        b = (l1 - l2) / (1.0 / s1 - 1.0 / s2)
        return l1 - b / s1 + b / sm

    p50, p95, p99 = (at(getattr(r1, f), getattr(r2, f)) for f in ("p50_ms", "p95_ms", "p99_ms"))
    ratio = r1.throughput_rps * r1.p50_ms  # = batch * 1000 for our tables; keeps the table's convention
    return ProfileRow(p50, max(p95, p50), max(p99, p95, p50), ratio / p50,
                      np.fmax(r1.peak_mem_mib, r2.peak_mem_mib)), True


def build_table(gpu: GpuType, task: Task, rows: dict[RowKey, ProfileRow], colocation: ColocationModel,
                cuda_context_mib: float) -> ProfileTable:
    """The [variant, segment, batch] arrays for one task on one GPU type."""
    variants = tuple(v.name for v in task.variants)
    batches = tuple(sorted({k[4] for k in rows if k[0] == task.family and k[1] in variants}))
    segments = gpu.segments
    shape = (len(variants), len(segments), len(batches))
    arrays = {f: np.full(shape, np.nan) for f in ("p50_ms", "p95_ms", "p99_ms", "throughput_rps", "memory_mib")}
    kind = np.zeros(shape, dtype=np.int8)
    isolated: dict[tuple[str, int], dict[int, ProfileRow]] = {}
    for (fam, model, sm, workers, batch), row in rows.items():
        if fam == task.family and workers == 1:
            isolated.setdefault((model, batch), {})[sm] = row
    for vi, model in enumerate(variants):
        for si, seg in enumerate(segments):
            m = seg.mps_workers
            for bi, batch in enumerate(batches):
                row = rows.get((task.family, model, seg.mig_profile.sms, m, batch))
                how = ConfigKind.MEASURED
                if row is None and (m == 1 or not colocation.measured):
                    found = _interpolate(isolated.get((model, batch), {}), seg.sms_per_worker)
                    if found is None:
                        continue
                    row, estimated = found
                    how = ConfigKind.ESTIMATED if estimated else ConfigKind.MEASURED if m == 1 else ConfigKind.MODELLED
                    if m > 1:
                        slow = colocation.slowdown(m)
                        row = ProfileRow(row.p50_ms * slow, row.p95_ms * slow, row.p99_ms * slow,
                                         row.throughput_rps / slow, row.peak_mem_mib)
                if row is None:
                    continue
                for f in ("p50_ms", "p95_ms", "p99_ms", "throughput_rps"):
                    arrays[f][vi, si, bi] = getattr(row, f)
                arrays["memory_mib"][vi, si, bi] = row.peak_mem_mib
                over = row.peak_mem_mib + cuda_context_mib > seg.memory_mib_per_worker
                kind[vi, si, bi] = ConfigKind.OVER_MEMORY if over else how
    return ProfileTable(gpu.name, task.name, variants, segments, batches, kind=kind, **arrays)

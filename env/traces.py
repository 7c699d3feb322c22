"""Demand traces: per-app request rates over time, loaded from files or generated, and arrivals drawn from them.

A ``Trace`` is piecewise constant: bin ``i`` covers ``[times_s[i], times_s[i] + bin_s)`` and carries one rate
(req/s) per app. Loaders read three formats (our long CSV ``time_s,app,rps``, the Azure LLM inference trace,
the Azure Functions per-minute invocation counts) and check everything at load: a bad file raises one
``TraceError`` naming ``file:line``, the field and the fix, and nothing is half-loaded.

Scaling, everywhere: ``time_scale`` multiplies the time axis (0.5 plays a trace twice as fast) and leaves the
rate levels alone; ``rate_scale`` multiplies the rates. So ``time_scale=0.5`` halves the total request count.

Generators are pure functions of their arguments and ``seed``; arrivals take a ``numpy.random.Generator``.
"""

from __future__ import annotations

import csv
import datetime
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from jigsaw.profiles.catalog import DEFAULT_CATALOG
from jigsaw.profiles.documents import read_text
from jigsaw.profiles.errors import TraceError

DEFAULT_TRACE_DIR = DEFAULT_CATALOG / "traces"
H100_APPS = ("social_media", "traffic_analysis", "ar_assistant")
MAX_BINS = 10_000_000  # a trace's time bins (115 days of 1-s bins): bounds a loader's memory
MAX_ARRIVALS = 20_000_000  # requests drawn at once (~1 GB)
HELD_OUT_FRACTION = 0.25  # the last quarter of every trace is held out for evaluation
_FUNCTIONS_KEYS = ("HashOwner", "HashApp", "HashFunction", "Trigger")
_TIMESTAMP = re.compile(r"^\s*(\d{4}-\d{2}-\d{2})[ T](\d{2}):(\d{2}):(\d{2}(?:\.\d+)?)\s*$")


@dataclass(frozen=True, eq=False)
class Trace:
    """Per-app request rates in uniform time bins.

    :param times_s: bin start times, seconds, shape [n_bins], strictly increasing with step ``bin_s``
    :param apps: app names, one per column of ``rates_rps``
    :param rates_rps: request rates, req/s, shape [n_bins, n_apps], finite and >= 0
    :param bin_s: bin width, seconds
    :param source: where the trace came from (a path or a generator call), used in error messages
    """

    times_s: np.ndarray
    apps: tuple[str, ...]
    rates_rps: np.ndarray
    bin_s: float
    source: str = ""

    def __post_init__(self) -> None:
        times = np.asarray(self.times_s, dtype=float)
        rates = np.asarray(self.rates_rps, dtype=float)
        object.__setattr__(self, "times_s", times)
        object.__setattr__(self, "rates_rps", rates)
        object.__setattr__(self, "apps", tuple(self.apps))
        bad = None
        if times.ndim != 1 or len(times) == 0:
            bad = "times_s must be a non-empty 1-D array"
        elif rates.shape != (len(times), len(self.apps)) or not self.apps:
            bad = f"rates_rps has shape {rates.shape}, expected ({len(times)}, {len(self.apps)}) with >= 1 app"
        elif len(set(self.apps)) != len(self.apps):
            bad = "app names repeat"
        elif not (math.isfinite(self.bin_s) and self.bin_s > 0):
            bad = f"bin_s {self.bin_s} must be > 0"
        elif not np.isfinite(times).all() or not np.allclose(np.diff(times), self.bin_s, rtol=1e-6, atol=1e-9):
            bad = f"times_s must be finite and evenly spaced by bin_s={self.bin_s}"
        elif not np.isfinite(rates).all() or (rates < 0).any():
            bad = "rates_rps must be finite and >= 0"
        if bad:
            raise TraceError(bad, file=self.source or None, field="trace", fix="build the trace from valid arrays")

    @property
    def duration_s(self) -> float:
        """Length covered by the bins, seconds."""
        return len(self.times_s) * self.bin_s

    @property
    def end_s(self) -> float:
        """End of the last bin, seconds."""
        return float(self.times_s[0]) + self.duration_s

    def rate_at(self, t_s: float | np.ndarray) -> np.ndarray:
        """Per-app rates (req/s) at time(s) ``t_s`` (seconds): shape [n_apps], or [*t_s.shape, n_apps] for an
        array. Zero outside ``[times_s[0], end_s)``."""
        t = np.asarray(t_s, dtype=float)
        idx = np.floor((t - self.times_s[0]) / self.bin_s).astype(np.int64)
        inside = (idx >= 0) & (idx < len(self.times_s))
        out = self.rates_rps[np.clip(idx, 0, len(self.times_s) - 1)]
        return np.where(inside[..., None], out, 0.0)

    def window(self, start_s: float, end_s: float) -> Trace:
        """The bins whose start lies in ``[start_s, end_s)`` (seconds)."""
        keep = (self.times_s >= start_s - 1e-9) & (self.times_s < end_s - 1e-9)
        if not keep.any():
            raise TraceError(f"no bins start in [{start_s}, {end_s}) s", file=self.source or None, field="window",
                             fix=f"choose a window inside [{self.times_s[0]}, {self.end_s}) s")
        return Trace(self.times_s[keep], self.apps, self.rates_rps[keep], self.bin_s, self.source)

    def split(self, held_out_fraction: float = HELD_OUT_FRACTION) -> tuple[Trace, Trace]:
        """(train, held_out) by time: the last ``held_out_fraction`` of the bins (rounded) is held out.
        Each part must keep at least 2 bins."""
        if not 0 < held_out_fraction < 1:
            raise TraceError(f"held_out_fraction {held_out_fraction} is not in (0, 1)", file=self.source or None,
                             field="held_out_fraction", fix="e.g. 0.25")
        n = len(self.times_s)
        n_held = round(n * held_out_fraction)
        if n_held < 2 or n - n_held < 2:
            raise TraceError(f"trace has no held-out part ({n} bins; each part needs >= 2)",
                             file=self.source or None, field="split", fix="use a longer trace or smaller bins")
        train = Trace(self.times_s[:-n_held], self.apps, self.rates_rps[:-n_held], self.bin_s, self.source)
        held = Trace(self.times_s[-n_held:], self.apps, self.rates_rps[-n_held:], self.bin_s, self.source)
        return train, held

    def scaled(self, time_scale: float = 1.0, rate_scale: float = 1.0) -> Trace:
        """Times and bin width multiplied by ``time_scale``, rates by ``rate_scale`` (both > 0)."""
        _check_scales(time_scale, rate_scale, self.source)
        with np.errstate(over="ignore"):
            times, rates = self.times_s * time_scale, self.rates_rps * rate_scale
        if not (np.isfinite(rates).all() and np.isfinite(times).all() and self.bin_s * time_scale > 0):
            raise TraceError(f"scaling by time {time_scale:g}, rate {rate_scale:g} leaves no finite trace",
                             file=self.source or None, field="time_scale/rate_scale", fix="use scales nearer 1")
        return Trace(times, self.apps, rates, self.bin_s * time_scale, self.source)

    def arrivals(self, rng: np.random.Generator, start_s: float | None = None,
                 end_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Request arrivals in ``[start_s, end_s)`` (default: the whole trace) as a non-homogeneous Poisson
        process with these piecewise-constant rates.

        :returns: (times_s float [n], app_index int [n] into ``apps``), sorted by time
        """
        lo_s = float(self.times_s[0]) if start_s is None else float(start_s)
        hi_s = self.end_s if end_s is None else float(end_s)
        lo = np.maximum(self.times_s, lo_s)
        length = np.clip(np.minimum(self.times_s + self.bin_s, hi_s) - lo, 0.0, None)  # [n_bins]
        expected = float((self.rates_rps * length[:, None]).sum())
        if not expected <= MAX_ARRIVALS:  # each arrival is held in memory
            raise TraceError(f"{expected:.3g} arrivals expected in [{lo_s:g}, {hi_s:g}) s", file=self.source or None,
                             field="rates", fix=f"draw at most {MAX_ARRIVALS:,}: a shorter window or lower rates")
        counts = rng.poisson(self.rates_rps * length[:, None])  # [n_bins, n_apps]
        flat = counts.ravel()
        cell = np.repeat(np.arange(flat.size), flat)
        b, app = np.divmod(cell, len(self.apps))
        times = lo[b] + rng.random(cell.size) * length[b]
        order = np.argsort(times, kind="stable")
        return times[order], app[order].astype(np.int64)

    def to_csv(self, path: str | Path) -> None:
        """Write the long format ``time_s,app,rps`` (one row per bin and app) that ``load_csv`` reads."""
        with Path(path).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["time_s", "app", "rps"])
            for i, t in enumerate(self.times_s):
                for j, app in enumerate(self.apps):
                    w.writerow([f"{t:.10g}", app, f"{self.rates_rps[i, j]:.6g}"])


# --------------------------------------------------------------------------------------------------- loaders


def _check_scales(time_scale: float, rate_scale: float, source: str) -> None:
    for name, value in (("time_scale", time_scale), ("rate_scale", rate_scale)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise TraceError(f"{name} {value!r} must be a number > 0", file=source or None, field=name,
                             fix="e.g. 0.5 plays twice as fast (time_scale) or halves the load (rate_scale)")


def _rows(path: Path, required: Sequence[str]) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header and an iterator of (line number, cells); checks the file exists, is not empty and has the
    ``required`` columns."""
    lines = read_text(path, TraceError, "trace").splitlines()
    reader = csv.reader(lines)
    header = [h.strip() for h in next(reader, [])]
    if not any(header):
        raise TraceError("empty file", file=str(path), line=1, field="header",
                         fix=f"start with the header {','.join(required)}" if required else
                         "start with a header: time_s,app,rps (CSV), TIMESTAMP,... (Azure LLM) or "
                         "HashOwner,HashApp,HashFunction,Trigger,1,... (Azure Functions)")
    missing = [c for c in required if c not in header]
    if missing:
        raise TraceError(f"missing column(s) {', '.join(missing)}", file=str(path), line=1, field="header",
                         fix=f"the header must include {','.join(required)}")
    body = ((i, row) for i, row in enumerate(reader, start=2) if any(c.strip() for c in row))
    return header, body


def _number(cell: str, path: Path, line: int, field: str, *, nonneg: bool) -> float:
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (nonneg and value < 0):
        raise TraceError(f"{cell.strip()!r} is not a {'number >= 0' if nonneg else 'finite number'}",
                         file=str(path), line=line, field=field,
                         fix="give a non-negative number" if nonneg else "give a number")
    return value


def _check_app(app: str, known_apps: Sequence[str] | None, path: Path, line: int | None, field: str) -> None:
    if not app:
        raise TraceError("empty app name", file=str(path), line=line, field=field, fix="name the app")
    if known_apps is not None and app not in known_apps:
        raise TraceError(f"unknown app '{app}'", file=str(path), line=line, field=field,
                         fix=f"use one of {', '.join(known_apps)}")


def load_csv(path: str | Path, *, time_scale: float = 1.0, rate_scale: float = 1.0,
             known_apps: Sequence[str] | None = None) -> Trace:
    """Our long format ``time_s,app,rps`` (seconds, name, req/s). Per app the times must strictly increase,
    and every app must cover the same times, evenly spaced (at least 2 bins)."""
    path = Path(path)
    _check_scales(time_scale, rate_scale, str(path))
    header, body = _rows(path, ("time_s", "app", "rps"))
    col = {c: header.index(c) for c in ("time_s", "app", "rps")}
    series: dict[str, dict[float, float]] = {}
    first_line: dict[tuple[str, float], int] = {}
    for line, row in body:
        if len(row) < len(header):
            raise TraceError(f"{len(row)} cells, header has {len(header)}", file=str(path), line=line, field="row",
                             fix="give time_s, app and rps on every row")
        t = _number(row[col["time_s"]], path, line, "time_s", nonneg=False)
        app = row[col["app"]].strip()
        _check_app(app, known_apps, path, line, "app")
        rps = _number(row[col["rps"]], path, line, "rps", nonneg=True)
        seen = series.setdefault(app, {})
        if seen:
            last = next(reversed(seen))
            if t <= last:
                what = "repeats" if t == last else "comes before"
                raise TraceError(f"time {t:g} s {what} time {last:g} s of app '{app}'", file=str(path), line=line,
                                 field="time_s", fix="sort rows by time, one row per app and time")
        seen[t] = rps
        first_line[(app, t)] = line
    if not series:
        raise TraceError("no rows after the header", file=str(path), line=2, field="rows",
                         fix="add rows time_s,app,rps")
    times = np.array(sorted({t for s in series.values() for t in s}))
    for app, s in series.items():
        if len(s) != len(times):
            gap = next(t for t in times if t not in s)
            raise TraceError(f"app '{app}' has no row for time {gap:g} s", file=str(path),
                             line=first_line[(app, next(iter(s)))], field="time_s",
                             fix="give every app a row at every time (rps 0 where idle)")
    if len(times) < 2:
        raise TraceError("a single time bin: the bin width is unknown", file=str(path), line=2, field="time_s",
                         fix="give at least 2 evenly spaced times")
    steps = np.diff(times)
    uneven = np.flatnonzero(~np.isclose(steps, steps[0], rtol=1e-6, atol=1e-9))
    if uneven.size:
        t = float(times[uneven[0] + 1])
        line = min(v for (_, tt), v in first_line.items() if tt == t)
        raise TraceError(f"time {t:g} s breaks the even spacing of {steps[0]:g} s", file=str(path), line=line,
                         field="time_s", fix="use evenly spaced bins shared by all apps")
    apps = tuple(series)
    rates = np.array([[series[a][t] for a in apps] for t in times])
    return Trace(times, apps, rates, float(steps[0]), str(path)).scaled(time_scale, rate_scale)


def _parse_timestamp(cell: str) -> tuple[int, float] | None:
    """``2023-11-16 18:17:03.9799600`` -> (proleptic day ordinal, seconds in the day); None if malformed."""
    m = _TIMESTAMP.match(cell)
    if not m:
        return None
    try:
        day = datetime.date.fromisoformat(m.group(1)).toordinal()
    except ValueError:
        return None
    h, mi, s = int(m.group(2)), int(m.group(3)), float(m.group(4))
    if h > 23 or mi > 59 or s >= 61:
        return None
    return day, h * 3600 + mi * 60 + s


def load_azure_llm(path: str | Path, app: str, *, bin_s: float = 1.0, time_scale: float = 1.0,
                   rate_scale: float = 1.0, known_apps: Sequence[str] | None = None) -> Trace:
    """The Azure LLM inference trace (``TIMESTAMP,ContextTokens,GeneratedTokens``, one row per request) as the
    rates of one ``app``: requests counted per ``bin_s``-second bin / ``bin_s``. Time 0 is the first request.
    Token columns are ignored. Timestamps must not decrease (ties are legitimate in a request log)."""
    path = Path(path)
    _check_scales(time_scale, rate_scale, str(path))
    if not (math.isfinite(bin_s) and bin_s > 0):
        raise TraceError(f"bin_s {bin_s} must be > 0", file=str(path), field="bin_s", fix="e.g. 1.0")
    _check_app(app, known_apps, path, None, "app")
    header, body = _rows(path, ("TIMESTAMP",))
    col = header.index("TIMESTAMP")
    days: list[int] = []
    secs: list[float] = []
    for line, row in body:
        parsed = _parse_timestamp(row[col]) if col < len(row) else None
        if parsed is None:
            raise TraceError(f"{(row[col] if col < len(row) else '')!r} is not a timestamp", file=str(path),
                             line=line, field="TIMESTAMP", fix="write YYYY-MM-DD HH:MM:SS[.fraction]")
        day, sec = parsed
        if days and (day, sec) < (days[-1], secs[-1]):
            raise TraceError(f"{row[col].strip()} is earlier than the row before", file=str(path), line=line,
                             field="TIMESTAMP", fix="sort the rows by TIMESTAMP")
        days.append(day)
        secs.append(sec)
        last_line = line
    if not days:
        raise TraceError("no requests after the header", file=str(path), line=2, field="rows",
                         fix="add one row per request")
    rel = (np.array(days) - days[0]) * 86400.0 + (np.array(secs) - secs[0])
    if rel[-1] / bin_s >= MAX_BINS:  # the bins are allocated: a typo'd year must not ask for terabytes
        raise TraceError(f"spans {rel[-1]:.0f} s: more than {MAX_BINS:,} bins of {bin_s:g} s", file=str(path),
                         line=last_line, field="TIMESTAMP", fix="check the last timestamps, or use a larger bin_s")
    counts = np.bincount(np.floor(rel / bin_s).astype(np.int64))
    times = np.arange(len(counts)) * float(bin_s)
    trace = Trace(times, (app,), (counts / bin_s)[:, None], float(bin_s), str(path))
    return trace.scaled(time_scale, rate_scale)


def load_azure_functions(path: str | Path, mapping: Mapping[str, Sequence[str] | Literal["sum"]], *,
                         time_scale: float = 1.0, rate_scale: float = 1.0,
                         known_apps: Sequence[str] | None = None) -> Trace:
    """Azure Functions invocation counts (``HashOwner,HashApp,HashFunction,Trigger,1,2,...,1440``: per-minute
    counts per function) as rates (count / 60 req/s per 60-second bin).

    :param mapping: app name -> HashFunction ids whose counts are summed into that app, or -> ``"sum"`` for
        the sum over every function in the file
    """
    path = Path(path)
    src = str(path)
    _check_scales(time_scale, rate_scale, src)
    if not mapping:
        raise TraceError("empty mapping", file=src, field="mapping", fix="map an app to HashFunction ids or 'sum'")
    for app, ids in mapping.items():
        _check_app(app, known_apps, path, None, f"mapping.{app}")
        if ids != "sum" and (isinstance(ids, str) or not ids or not all(isinstance(i, str) for i in ids)):
            raise TraceError(f"{ids!r} is neither a list of HashFunction ids nor 'sum'", file=src,
                             field=f"mapping.{app}", fix="give a non-empty list of ids, or 'sum'")
    header, body = _rows(path, _FUNCTIONS_KEYS)
    minutes = header[len(_FUNCTIONS_KEYS):]
    if header[:len(_FUNCTIONS_KEYS)] != list(_FUNCTIONS_KEYS) or len(minutes) < 2:
        raise TraceError("expected HashOwner,HashApp,HashFunction,Trigger then minute columns 1,2,...",
                         file=src, line=1, field="header", fix="use the Azure Functions 2019 invocation format")
    for k, name in enumerate(minutes, start=1):
        if name != str(k):
            what = "repeats" if name in minutes[:k - 1] else "is out of order"
            raise TraceError(f"minute column '{name}' {what} (expected '{k}')", file=src, line=1,
                             field="header", fix="number the minute columns 1,2,3,... in order")
    fn_col = header.index("HashFunction")
    wanted = {i for ids in mapping.values() if ids != "sum" for i in ids}
    by_function: dict[str, np.ndarray] = {}
    total = np.zeros(len(minutes))
    n_rows = 0
    for line, row in body:
        n_rows += 1
        if len(row) != len(header):
            raise TraceError(f"{len(row)} cells, header has {len(header)}", file=src, line=line, field="row",
                             fix="one count per minute column")
        counts = np.array([_number(c, path, line, f"minute {k}", nonneg=True)
                           for k, c in enumerate(row[len(_FUNCTIONS_KEYS):], start=1)])
        total += counts
        fn = row[fn_col].strip()
        if fn in wanted:
            by_function[fn] = by_function.get(fn, np.zeros(len(minutes))) + counts
    if not n_rows:
        raise TraceError("no functions after the header", file=src, line=2, field="rows",
                         fix="add one row of per-minute counts per function")
    missing = sorted(wanted - set(by_function))
    if missing:
        raise TraceError(f"HashFunction id(s) not in the file: {', '.join(missing[:3])}", file=src,
                         field="mapping", fix="map apps to ids present in the HashFunction column")
    apps = tuple(mapping)
    cols = [total if mapping[a] == "sum" else sum(by_function[i] for i in mapping[a]) for a in apps]
    rates = np.stack(cols, axis=1) / 60.0
    return Trace(np.arange(len(minutes)) * 60.0, apps, rates, 60.0, src).scaled(time_scale, rate_scale)


def load_trace(path: str | Path, *, time_scale: float = 1.0, rate_scale: float = 1.0,
               known_apps: Sequence[str] | None = None, app: str | None = None, bin_s: float = 1.0,
               mapping: Mapping[str, Sequence[str] | Literal["sum"]] | None = None) -> Trace:
    """Any supported trace, recognised by its header. ``app`` names the single app of an Azure LLM trace and
    ``mapping`` (default: everything summed into ``app``) serves an Azure Functions file; ``app`` defaults to
    the file's stem."""
    path = Path(path)
    header, _ = _rows(path, ())
    name = app or path.stem
    if {"time_s", "app", "rps"} <= set(header):
        return load_csv(path, time_scale=time_scale, rate_scale=rate_scale, known_apps=known_apps)
    if "TIMESTAMP" in header:
        return load_azure_llm(path, name, bin_s=bin_s, time_scale=time_scale, rate_scale=rate_scale,
                              known_apps=known_apps)
    if "HashFunction" in header:
        return load_azure_functions(path, mapping or {name: "sum"}, time_scale=time_scale, rate_scale=rate_scale,
                                    known_apps=known_apps)
    raise TraceError(f"unrecognised header {','.join(header)[:60]}", file=str(path), line=1, field="header",
                     fix="use time_s,app,rps; TIMESTAMP,...; or HashOwner,HashApp,HashFunction,Trigger,1,...")


# ------------------------------------------------------------------------------------------------ generators


def _per_app(value: float | Sequence[float], apps: Sequence[str], name: str) -> np.ndarray:
    """A rate given once for all apps or once per app, as an array [n_apps] of finite numbers >= 0."""
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        arr = np.full(len(apps), float(arr))
    if not apps or arr.shape != (len(apps),) or not np.isfinite(arr).all() or (arr < 0).any():
        raise TraceError(f"{name} must be one number >= 0 or one per app ({len(apps)} apps)", field=name,
                         fix="give a non-negative number, or a list as long as apps")
    return arr


def _bins(duration_s: float, bin_s: float) -> np.ndarray:
    """Bin start times for ``duration_s`` seconds at ``bin_s``-second bins (duration a whole number of bins)."""
    if not (bin_s > 0 and duration_s > 0) or not math.isclose(duration_s / bin_s, round(duration_s / bin_s)):
        raise TraceError(f"duration_s {duration_s} is not a positive whole number of bin_s {bin_s}",
                         field="duration_s", fix="make duration_s a multiple of bin_s")
    return np.arange(round(duration_s / bin_s)) * float(bin_s)


def poisson(apps: Sequence[str], rate_rps: float | Sequence[float], duration_s: float, bin_s: float = 60.0) -> Trace:
    """Constant rates (req/s, one for all apps or one per app); ``Trace.arrivals`` makes it a Poisson process."""
    times = _bins(duration_s, bin_s)
    rates = np.tile(_per_app(rate_rps, apps, "rate_rps"), (len(times), 1))
    return Trace(times, tuple(apps), rates, float(bin_s), f"poisson(rate_rps={rate_rps})")


def diurnal(apps: Sequence[str], mean_rps: float | Sequence[float], amplitude: float, period_s: float,
            noise_cv: float, duration_s: float, bin_s: float = 60.0, seed: int = 0) -> Trace:
    """Day-like cycles: ``mean * (1 - amplitude * cos(2π (t + shift) / period)) * noise`` at bin centres, so app 0
    is at its trough at t=0 and its peak at ``period_s / 2``; app i is shifted later by ``i * period_s / (4 n)``.
    Noise is independent per bin, Gamma with mean 1 and coefficient of variation ``noise_cv`` (0 = none).

    :param amplitude: 0..1, the relative swing (peak = mean * (1 + amplitude))
    """
    if not 0 <= amplitude <= 1 or noise_cv < 0 or period_s <= 0:
        raise TraceError("need 0 <= amplitude <= 1, noise_cv >= 0 and period_s > 0", field="amplitude",
                         fix="e.g. amplitude=0.6, noise_cv=0.1, period_s=3600")
    rng = np.random.default_rng(seed)
    times = _bins(duration_s, bin_s)
    mean = _per_app(mean_rps, apps, "mean_rps")
    shift = np.arange(len(apps)) * period_s / (4 * len(apps))
    phase = 2 * np.pi * (times[:, None] + bin_s / 2 - shift[None, :]) / period_s
    rates = mean * (1 - amplitude * np.cos(phase))
    if noise_cv > 0:
        k = 1 / noise_cv**2
        rates = rates * rng.gamma(k, 1 / k, size=rates.shape)
    return Trace(times, tuple(apps), rates, float(bin_s),
                 f"diurnal(mean_rps={mean_rps}, amplitude={amplitude}, period_s={period_s}, seed={seed})")


def gamma_arrivals(rate_rps: float, cv2: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (seconds, sorted, in ``[0, duration_s)``) of a renewal process with Gamma inter-arrival
    times of mean ``1 / rate_rps`` and squared coefficient of variation ``cv2`` (1 = Poisson, > 1 = bursty)."""
    if rate_rps < 0 or cv2 <= 0 or duration_s <= 0:
        raise TraceError("need rate_rps >= 0, cv2 > 0 and duration_s > 0", field="cv2", fix="e.g. cv2=4")
    if rate_rps == 0:
        return np.zeros(0)
    shape = 1 / cv2
    expected = rate_rps * duration_s
    chunks, t_end = [], 0.0
    while t_end < duration_s:
        n = int(expected + 6 * math.sqrt(expected * cv2 + 1) + 16)
        gaps = rng.gamma(shape, 1 / (rate_rps * shape), size=n)
        chunk = t_end + np.cumsum(gaps)
        chunks.append(chunk)
        t_end = float(chunk[-1])
    times = np.concatenate(chunks)
    return times[times < duration_s]


def bursty(apps: Sequence[str], mean_rps: float | Sequence[float], cv2: float, duration_s: float,
           bin_s: float = 60.0, seed: int = 0) -> Trace:
    """Gamma-renewal arrivals (``gamma_arrivals``, squared CV ``cv2``) per app, counted into bins -> rates."""
    rng = np.random.default_rng(seed)
    times = _bins(duration_s, bin_s)
    mean = _per_app(mean_rps, apps, "mean_rps")
    edges = np.append(times, times[-1] + bin_s)
    rates = np.stack([np.histogram(gamma_arrivals(m, cv2, duration_s, rng), edges)[0] / bin_s for m in mean], axis=1)
    return Trace(times, tuple(apps), rates, float(bin_s), f"bursty(mean_rps={mean_rps}, cv2={cv2}, seed={seed})")


def steps(apps: Sequence[str], levels_rps: Sequence[float] | np.ndarray, step_s: float, bin_s: float = 60.0) -> Trace:
    """A staircase: level k (req/s; a list for all apps, or an array [n_steps, n_apps]) holds for ``step_s``."""
    levels = np.asarray(levels_rps, dtype=float)
    levels = np.tile(levels[:, None], (1, len(apps))) if levels.ndim == 1 else levels
    if levels.ndim != 2 or levels.shape[1] != len(apps) or not len(levels) or not np.isfinite(levels).all() \
            or (levels < 0).any():
        raise TraceError("levels_rps must be non-negative, [n_steps] or [n_steps, n_apps]", field="levels_rps",
                         fix="e.g. [10, 20, 40]")
    per_step = len(_bins(step_s, bin_s))
    times = np.arange(len(levels) * per_step) * float(bin_s)
    return Trace(times, tuple(apps), np.repeat(levels, per_step, axis=0), float(bin_s), "steps")


def spikes(apps: Sequence[str], base_rps: float | Sequence[float], spike_rps: float | Sequence[float],
           n_spikes: int, spike_s: float, duration_s: float, bin_s: float = 60.0, seed: int = 0) -> Trace:
    """A base rate with ``n_spikes`` bursts per app (SuperServe-style: unpredictable) adding ``spike_rps`` for
    ``spike_s`` seconds each, starting at uniform random times; a bin partly covered gets the covered share."""
    if n_spikes < 0 or spike_s <= 0 or spike_s > duration_s:
        raise TraceError("need n_spikes >= 0 and 0 < spike_s <= duration_s", field="spike_s", fix="e.g. spike_s=120")
    rng = np.random.default_rng(seed)
    times = _bins(duration_s, bin_s)
    base, extra = _per_app(base_rps, apps, "base_rps"), _per_app(spike_rps, apps, "spike_rps")
    starts = rng.uniform(0, duration_s - spike_s, size=(n_spikes, len(apps)))  # [spike, app]
    overlap = np.clip(np.minimum(times[:, None, None] + bin_s, starts + spike_s)
                      - np.maximum(times[:, None, None], starts), 0, None).sum(axis=1)  # [bin, app], seconds
    rates = base + extra * overlap / bin_s
    return Trace(times, tuple(apps), rates, float(bin_s),
                 f"spikes(base_rps={base_rps}, spike_rps={spike_rps}, n_spikes={n_spikes}, seed={seed})")


# ------------------------------------------------------------------------------------------- shipped traces


def default_traces() -> dict[str, Trace]:
    """The synthetic traces shipped in ``profiles/data/traces/`` (file name -> trace), for the three H100 apps."""
    return {
        "diurnal_3apps.csv": diurnal(H100_APPS, mean_rps=[40.0, 20.0, 10.0], amplitude=0.6, period_s=3600.0,
                                     noise_cv=0.1, duration_s=7200.0, bin_s=60.0, seed=0),
        "bursty_3apps.csv": bursty(H100_APPS, mean_rps=[40.0, 20.0, 10.0], cv2=25.0, duration_s=7200.0,
                                   bin_s=10.0, seed=0),
        "spikes_3apps.csv": spikes(H100_APPS, base_rps=[20.0, 10.0, 5.0], spike_rps=[60.0, 30.0, 15.0], n_spikes=4,
                                   spike_s=120.0, duration_s=7200.0, bin_s=60.0, seed=0),
    }


AZURE_CODE_TRACE = DEFAULT_TRACE_DIR / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv"


def azure_3apps(bin_s: float = 10.0) -> Trace:
    """The real Azure LLM code trace (57 min) as demand for the three H100 apps: its request rate per ``bin_s``,
    rolled by a third of its length per app (app i starts i thirds in), so that every app sees the real
    arrivals' burstiness and the apps' peaks do not coincide."""
    one = load_azure_llm(AZURE_CODE_TRACE, H100_APPS[0], bin_s=bin_s)
    rates = one.rates_rps[:, 0]
    shift = len(rates) // len(H100_APPS)
    return Trace(one.times_s, H100_APPS, np.stack([np.roll(rates, -i * shift) for i in range(len(H100_APPS))], axis=1),
                 one.bin_s, f"azure_3apps({AZURE_CODE_TRACE.name})")


def write_default_traces(directory: str | Path = DEFAULT_TRACE_DIR) -> list[Path]:
    """Write ``default_traces()`` and ``azure_3apps()`` as CSV into ``directory``; returns the paths written."""
    out = []
    for name, trace in {**default_traces(), "azure_code_3apps.csv": azure_3apps()}.items():
        path = Path(directory) / name
        trace.to_csv(path)
        out.append(path)
    return out

"""Where ``jigsaw profile`` writes: the profile CSV (the catalog's schema), a CSV of configurations that
could not be measured, and a provenance sidecar. Rows are appended and flushed one configuration at a
time, so an interrupted run keeps what it measured; reopening the same files resumes (measured and
skipped configurations are not measured again)."""

from __future__ import annotations

import csv
import io
import json
import os
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import ProfilerError
from .tables import RowKey

# The schema of profiles/data/h100/profiles.csv, plus mps_workers (co-located rows; the loader reads it) and
# achieved_rps: items/s one worker completed over its timing window (batch x iters / window). throughput_rps
# keeps the table's convention, batch / p50; the two part where co-located workers time-slice (CPU).
COLUMNS = ("gpu", "task_family", "model", "exec_mode", "sm_count", "mps_pct", "mig_equiv", "mps_workers", "batch",
           "p50_ms", "p95_ms", "p99_ms", "throughput_rps", "peak_mem_mib", "iters", "achieved_rps")
SKIPPED_COLUMNS = ("gpu", "task_family", "model", "sm_count", "mps_pct", "mig_equiv", "mps_workers", "batch", "reason")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _key(rec: dict[str, str]) -> RowKey:
    return (rec["task_family"], rec["model"], int(rec["sm_count"]), int(rec["mps_workers"]), int(rec["batch"]))


class ProfileStore:
    """``out`` and its siblings ``<stem>.skipped.csv`` and ``<stem>.provenance.json``."""

    def __init__(self, out: Path, device_name: str) -> None:
        self.out = out
        self.skipped_path = out.with_name(out.stem + ".skipped.csv")
        self.meta_path = out.with_name(out.stem + ".provenance.json")
        self.device_name = device_name
        self.done: set[RowKey] = set()
        for path, columns in ((out, COLUMNS), (self.skipped_path, SKIPPED_COLUMNS)):
            check_writable(path)
            self.done |= self._resume(path, columns)
        self.meta: dict[str, Any] = {"csv": out.name, "runs": []}
        if self.meta_path.exists():
            with suppress(OSError, ValueError):  # a sidecar torn by a kill loses its runs, not the rows
                self.meta = json.loads(self.meta_path.read_text())

    def _resume(self, path: Path, columns: tuple[str, ...]) -> set[RowKey]:
        """The configurations ``path`` already holds; a last line torn by a kill is dropped."""
        if not path.exists() or path.stat().st_size == 0:
            return set()
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            data = data[:data.rfind(b"\n") + 1]
            path.write_bytes(data)
            if not data:  # killed while writing the header
                return set()
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != columns:
                raise ProfilerError("exists and is not a `jigsaw profile` output", file=str(path), field="header",
                                    fix="choose another --out, or move the file away")
            records = list(reader)
        others = {r["gpu"] for r in records} - {self.device_name}
        if others:
            raise ProfilerError(f"holds rows measured on {', '.join(sorted(others))}, not on {self.device_name}",
                                file=str(path), field="gpu", fix="give each device its own --out")
        return {_key(r) for r in records}

    def _append(self, path: Path, columns: tuple[str, ...], row: dict[str, Any]) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
        if not path.exists() or path.stat().st_size == 0:
            writer.writeheader()
        writer.writerow({"gpu": self.device_name, **row})
        with path.open("a", newline="") as f:
            f.write(text.getvalue())  # one write per configuration: a kill leaves whole lines (or one torn last line)
            f.flush()
            os.fsync(f.fileno())

    def add_row(self, row: dict[str, Any]) -> None:
        self._append(self.out, COLUMNS, row)
        self.done.add(_key({k: str(v) for k, v in row.items()}))

    def add_skipped(self, row: dict[str, Any]) -> None:
        self._append(self.skipped_path, SKIPPED_COLUMNS, row)
        self.done.add(_key({k: str(v) for k, v in row.items()}))

    def measured(self) -> dict[RowKey, tuple[float, float]]:
        """(p50 ms, achieved items/s) of every measured row (for the co-location factors)."""
        if not self.out.exists():
            return {}
        with self.out.open(newline="") as f:
            return {_key(r): (float(r["p50_ms"]), float(r["achieved_rps"])) for r in csv.DictReader(f)}

    def record_run(self, run: dict[str, Any]) -> None:
        """Add this run's provenance (first call) or update it (later calls); written atomically."""
        runs = self.meta.setdefault("runs", [])
        if runs and runs[-1].get("started") == run.get("started"):
            runs[-1] = run
        else:
            runs.append(run)
        tmp = self.meta_path.with_name(self.meta_path.name + ".tmp")
        tmp.write_text(json.dumps(self.meta, indent=1) + "\n")
        os.replace(tmp, self.meta_path)


def check_writable(path: Path) -> None:
    """Refuse an output we could not write before measuring anything."""
    parent = path.parent if str(path.parent) else Path(".")
    problem = ("its directory does not exist" if not parent.is_dir()
               else "is a directory" if path.is_dir()
               else "is not writable" if (path.exists() and not os.access(path, os.W_OK))
               or (not path.exists() and not os.access(parent, os.W_OK)) else "")
    if problem:
        raise ProfilerError(f"cannot write the profile table: {problem}", file=str(path), field="--out",
                            fix="give a writable file path")

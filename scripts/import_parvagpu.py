"""Convert ParvaGPU's A100 MIG x MPS tables (``Mig instance,Batch size,Workload Number,Throughput,Latency``)
into the catalog's profile schema. Reproduces ``profiles/data/a100/profiles.csv``:

    python scripts/import_parvagpu.py profiles/data/a100/parvagpu/prof_data profiles/data/a100/profiles.csv

ParvaGPU reports one latency per batch (seconds, rounded to 1 ms), so p50 = p95 = p99 = that figure;
throughput is per MPS process; ``0,0`` rows (not measured / out of memory) are dropped.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

SMS_PER_GPC = 14  # A100: a MIG slice is one GPC of 14 SMs (7g = 98 SMs)
FAMILY = {"bert": "language"}  # everything else ParvaGPU profiled is image classification


def main(src: Path, out: Path) -> None:
    rows, dropped = [], 0
    for path in sorted(src.glob("*.csv")):
        model = path.stem
        with path.open(newline="") as f:
            for r in csv.DictReader(f):
                latency_s, thr = float(r["Latency"]), float(r["Throughput"])
                if latency_s <= 0 or thr <= 0:
                    dropped += 1
                    continue
                ms = f"{latency_s * 1000:.3f}"
                rows.append([FAMILY.get(model, "classification"), model, int(r["Mig instance"]) * SMS_PER_GPC,
                             int(r["Workload Number"]), int(r["Batch size"]), ms, ms, ms, r["Throughput"], ""])
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task_family", "model", "sm_count", "mps_workers", "batch", "p50_ms", "p95_ms", "p99_ms",
                    "throughput_rps", "peak_mem_mib"])
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {out} ({dropped} unmeasured rows dropped)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

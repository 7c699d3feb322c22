"""`jigsaw profile` on the CPU: the output's schema and provenance, a catalog that loads it, incremental
writes, interrupted and killed runs that resume, and one-line refusals of bad input. Tiny configurations
(one small stand-in model, a few batches, a few ms per configuration) keep the file fast."""

from __future__ import annotations

import copy
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from jigsaw.profiles import profiler
from jigsaw.profiles.catalog import load_catalog
from jigsaw.profiles.errors import ProfilerError
from jigsaw.profiles.profile_plan import (
    Group,
    ProfileSettings,
    Share,
    calibrate_pct,
    colocation_factors,
    cpu_shares,
    parse_colocation,
    parse_positive_ints,
    parse_shares,
    plan_groups,
    split_cpu,
)
from jigsaw.profiles.profile_store import COLUMNS, ProfileStore
from jigsaw.profiles.profiler import run_profile
from jigsaw.profiles.tables import ConfigKind, load_profile_csv

ROOT = Path(__file__).resolve().parents[1]
FAST = {"min_iters": 3, "seconds": 0.01}


def settings(out: Path, **kw) -> ProfileSettings:
    base = {"family": "classification", "variants": ("resnet18",), "batches": (1,), "shares": (100,), "out": out,
            "colocation": (1,), "device": "cpu", **FAST}
    return ProfileSettings(**{**base, **kw})


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------------
# The pure parts


@pytest.mark.parametrize(("parse", "text"), [
    (lambda t: parse_positive_ints(t, "--batches", "1,2"), "1,x"),
    (lambda t: parse_positive_ints(t, "--batches", "1,2"), "0,1"),
    (lambda t: parse_positive_ints(t, "--batches", "1,2"), "2,2"),
    (lambda t: parse_positive_ints(t, "--batches", "1,2"), ""),
    (parse_shares, "150"),
    (parse_shares, "half"),
    (parse_colocation, "2,4"),
])
def test_bad_lists_are_refused(parse, text):
    with pytest.raises(ProfilerError):
        parse(text)


def test_mig_shares_on_cpu_scale_each_mig_size_to_the_cores(builtin_catalog):
    h100 = builtin_catalog.gpu("h100")
    shares = cpu_shares("mig", h100, 16)  # 16/26/32/60/64/132 of 132 SMs
    assert [(s.label, s.units) for s in shares] == [("1g.10gb", 2), ("1g.20gb", 3), ("2g.20gb", 4), ("3g.40gb", 7),
                                                    ("4g.40gb", 8), ("7g.80gb", 16)]
    assert shares[0].memory_mib == pytest.approx(9.75 * 1024)
    assert [(s.label, s.units) for s in cpu_shares("mig", h100, 2)] == [("1g.10gb", 1), ("7g.80gb", 2)]
    assert [s.units for s in cpu_shares((25, 50, 100), h100, 8)] == [2, 4, 8]


def test_mps_percentage_is_probed_to_the_exact_sm_count():
    def h100(pct: int) -> int:  # MPS hands out whole TPCs of 2 SMs
        return 2 * int(pct * 132 / 200)

    assert [calibrate_pct(t, 132, h100) for t in (16, 32, 60, 64, 132)] == [13, 25, 46, 49, 100]
    assert calibrate_pct(16, 132, lambda p: 2 * int((p - 1) * 132 / 200)) == 14  # the guess is off: step up
    with pytest.raises(ProfilerError, match="no MPS percentage gives 17 SMs"):
        calibrate_pct(17, 132, h100)


def test_groups_measure_every_share_alone_first_then_colocation_with_its_baseline():
    one, two = Share("a", 1), Share("b", 2)
    groups = plan_groups([one, two], (1, 2, 4), split_cpu)
    assert [(g.segment.units, g.workers, g.worker.units) for g in groups] == [
        (1, 1, 1), (2, 1, 2), (1, 2, 1), (1, 4, 1), (2, 2, 1), (2, 4, 1)]
    measured = {("f", "m", 1, 1, 1): (2.0, 500.0), ("f", "m", 2, 2, 1): (3.0, 250.0)}
    [factor] = colocation_factors(measured, [Group(two, 2, split_cpu(two, 2))], "f", ["m"], [1])
    assert factor["p50_factor"] == {"m@1": 1.5} and factor["slowdown"] == {"m@1": 2.0}


# --------------------------------------------------------------------------------------------------
# A real CPU run


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """A run interrupted at its second configuration, then the same command again: (csv, summary of the
    second run, the rows the first one left)."""
    out = tmp_path_factory.mktemp("profile") / "cpu.csv"
    request = settings(out, batches=(1, 2), colocation=(1, 2))
    real, calls = profiler._measure_once, []

    def interrupted(pool, variant, batch):
        calls.append(batch)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(pool, variant, batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(profiler, "_measure_once", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_profile(request, load_catalog(None), "h100", progress=False)
    left = read_rows(out)
    return out, run_profile(request, load_catalog(None), "h100", progress=False), left


def test_output_has_the_catalog_schema_and_says_which_device_measured_it(profiled):
    out, summary, _ = profiled
    rows = read_rows(out)
    assert tuple(rows[0]) == COLUMNS
    assert summary.device_type == "cpu" and summary.skipped == 0 and summary.measured == len(rows) - 1
    assert {r["gpu"] for r in rows} == {summary.device_name} and summary.device_name.startswith("cpu:")
    assert {r["exec_mode"] for r in rows} == {"eager"} and {r["mps_workers"] for r in rows} == {"1", "2"}
    table = load_profile_csv(out)  # the loader's own validation: numbers, percentiles in order, no duplicates
    assert len(table) == len(rows)
    for r in rows:
        assert float(r["throughput_rps"]) == pytest.approx(int(r["batch"]) * 1000 / float(r["p50_ms"]), rel=1e-4)
        assert int(r["iters"]) >= 3 and float(r["achieved_rps"]) > 0 and float(r["peak_mem_mib"]) > 0
    meta = json.loads(out.with_name("cpu.provenance.json").read_text())
    run = meta["runs"][-1]
    assert run["device_type"] == "cpu" and run["status"] == "complete" and run["torch"] and run["method"]
    assert run["settings"]["variants"] == ["resnet18"] and run["measured"] == len(rows) - 1
    assert [c["workers"] for c in run["colocation"]] == [2] and summary.colocation == run["colocation"]
    assert summary.files == [out, out.with_name("cpu.provenance.json")]  # named in `jigsaw profile`'s last line


def test_a_catalog_pointing_at_the_profiled_table_loads(profiled, tmp_path):
    out, _, _ = profiled
    sms = max(int(r["sm_count"]) for r in read_rows(out))
    times = {"source": "test figures", "startup_s": {"default": 1.0}}
    doc = {"models": "models.csv", "apps": ["app.yaml"], "cpu_workers": times, "gpus": {"laptop": {
        "compute_slices": 1, "memory_slots": 1, "mps_workers": [1, 2], "colocation": {"measured": True},
        "profiles": str(out), "transitions": {**copy.deepcopy(times), "repartition_s": 0},
        "mig_profiles": [{"name": "all", "compute_slices": 1, "sms": sms, "memory_gib": 64, "width": 1, "starts": [0]}]}}}
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "models.csv").write_text("model,metric_value\nresnet18,69.758\n")
    (tmp_path / "app.yaml").write_text(yaml.safe_dump({"name": "one", "latency_slo_ms": 10_000, "accuracy_slo": 0.5,
                                                       "tasks": {"classify": {"family": "classification",
                                                                              "variants": ["resnet18"]}}}))
    catalog = load_catalog(tmp_path)
    table = catalog.table("laptop", "one", "classify")  # "cpu" names the cpu_workers times
    assert table.batches == (1, 2)
    assert [s.name for s in table.segments] == ["all", "all/2"]
    assert (table.kind == ConfigKind.MEASURED).all()  # alone and two co-located workers, both measured


def test_an_interrupted_run_keeps_its_rows_and_resumes(profiled):
    out, summary, left = profiled
    assert [r["batch"] for r in left] == ["1"]  # the configuration measured before the interruption
    rows = read_rows(out)
    assert rows[:1] == left and summary.already == 1 and summary.measured == len(rows) - 1
    runs = json.loads(out.with_name("cpu.provenance.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["interrupted", "complete"] and runs[0]["measured"] == 1


def jigsaw_profile(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jigsaw.scripts.cli", "profile", "--family", "classification", "--variants", "resnet18",
            "--sm-shares", "100", "--colocation", "1", "--device", "cpu", "--min-iters", "3", "--out", str(out), *extra]


def test_a_killed_run_keeps_whole_rows_to_resume_from(tmp_path):
    out = tmp_path / "k.csv"
    proc = subprocess.Popen(jigsaw_profile(out, "--batches", "1,2,4,8,16,32", "--time-per-config", "0.2"), cwd=ROOT,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = read_rows(out)
    assert 1 <= len(kept) < 6
    with out.open("a") as f:
        f.write(kept[0]["gpu"] + ",classification,resn")  # as if the kill had landed mid-write
    store = ProfileStore(out, kept[0]["gpu"])  # what the same command does first (the resume itself: above)
    assert read_rows(out) == kept and len(load_profile_csv(out)) == len(kept)
    assert store.done == {("classification", "resnet18", int(r["sm_count"]), 1, int(r["batch"])) for r in kept}


# --------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2


@pytest.mark.parametrize(("change", "field"), [
    ({"family": "speech"}, "--family"),
    ({"variants": ("resnet18", "yolo_nonexistent")}, "--variants"),
    ({"variants": ("fcos_resnet50_fpn",)}, "--variants"),  # a detection model is not a classification variant
    ({"device": "cuda"}, "--device"),
    ({"out": Path("/nonexistent-dir/p.csv")}, "--out"),
])
def test_bad_requests_are_refused_before_measuring(tmp_path, change, field):
    if change.get("device") == "cuda" and "+cpu" not in profiler.metadata.version("torch"):
        pytest.skip("this torch build may see a GPU")
    with pytest.raises(ProfilerError) as e:
        run_profile(settings(**{"out": tmp_path / "p.csv", **change}), load_catalog(None), "h100", progress=False)
    assert e.value.field == field
    assert not (tmp_path / "p.csv").exists()


def test_an_output_from_elsewhere_is_not_appended_to(tmp_path):
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("a,b\n1,2\n")
    with pytest.raises(ProfilerError, match="not a `jigsaw profile` output"):
        ProfileStore(foreign, "cpu: x")
    other = tmp_path / "other.csv"
    other.write_text(",".join(COLUMNS) + "\n" + "NVIDIA H100,classification,resnet18,eager,16,13,1g,1,1,1,1,1,1000,1,20,1\n")
    with pytest.raises(ProfilerError, match="measured on NVIDIA H100"):
        ProfileStore(other, "cpu: x")


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    run = subprocess.run(jigsaw_profile(tmp_path / "p.csv", "--batches", "1,two"), cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr and "--batches" in run.stderr

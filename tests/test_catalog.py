"""The built-in catalog: apps, normalised accuracy, fan-outs, and the profile tables built from the CSVs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from jigsaw.profiles.catalog import DEFAULT_CATALOG, load_catalog
from jigsaw.profiles.errors import CatalogError
from jigsaw.profiles.tables import ConfigKind

H100_CSV = DEFAULT_CATALOG / "h100" / "profiles.csv"
A100_CSV = DEFAULT_CATALOG / "a100" / "profiles.csv"


@pytest.fixture(scope="module")
def cat(builtin_catalog):
    return builtin_catalog


def seg_index(table, profile: str, workers: int) -> int:
    return next(i for i, s in enumerate(table.segments) if s.mig_profile.name == profile and s.mps_workers == workers)


def cell(table, variant: str, profile: str, workers: int, batch: int) -> tuple[int, int, int]:
    return table.variants.index(variant), seg_index(table, profile, workers), table.batches.index(batch)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------- loading


def test_builtin_catalog_loads_from_dir_file_and_default():
    by_dir = load_catalog(DEFAULT_CATALOG)
    by_file = load_catalog(DEFAULT_CATALOG / "catalog.yaml")
    by_default = load_catalog(None)
    for c in (by_dir, by_file, by_default):
        assert set(c.gpus) == {"h100", "a100"}
        assert set(c.apps) == {"social_media", "traffic_analysis", "ar_assistant", "image_classify", "bert_qa"}


def test_missing_catalog_path_is_a_catalog_error(tmp_path):
    with pytest.raises(CatalogError) as e:
        load_catalog(tmp_path / "nope")
    assert "nope" in str(e.value)


def test_apps_for_h100(cat):
    apps = cat.apps_for("h100")
    assert {"social_media", "traffic_analysis", "ar_assistant"} <= set(apps)
    assert "bert_qa" not in apps  # profiled on the A100 only


def test_apps_for_a100(cat):
    assert "bert_qa" in cat.apps_for("a100")
    assert "image_classify" in cat.apps_for("a100")


def test_unknown_app_and_gpu_are_catalog_errors(cat):
    with pytest.raises(CatalogError, match="unknown app"):
        cat.app("nonexistent")
    with pytest.raises(CatalogError, match="unknown GPU"):
        cat.gpu("v100")


# ---------------------------------------------------------------------------------------------- task graphs


@pytest.mark.parametrize("app, depth", [("social_media", 1), ("traffic_analysis", 2), ("ar_assistant", 3)])
def test_depths(cat, app, depth):
    assert max(len(p) for p in cat.apps[app].paths()) == depth


def test_paths(cat):
    assert cat.apps["ar_assistant"].paths() == [("detect", "recognise", "segment")]
    assert sorted(cat.apps["traffic_analysis"].paths()) == [("detect", "car_classify"), ("detect", "person_classify")]
    assert sorted(cat.apps["social_media"].paths()) == [("moderate",), ("scene",), ("tag",)]


def test_topological_order_puts_sources_first(cat):
    for app in cat.apps.values():
        order = app.topological_order
        assert sorted(order) == sorted(app.task_names)
        for u, v in app.edges:
            assert order.index(u) < order.index(v)


def test_slos(cat):
    ar = cat.apps["ar_assistant"]
    assert ar.latency_slo_ms == 200 and ar.accuracy_slo == 0.75
    sm = cat.apps["social_media"]
    assert sm.latency_slo_ms == 50 and sm.accuracy_slo == 0.9


# ---------------------------------------------------------------------------------------------- accuracy


def test_best_variant_has_accuracy_one_and_ladder_ascends(cat):
    for app in cat.apps.values():
        for task in app.tasks:
            acc = [v.accuracy for v in task.variants]
            assert acc[-1] == 1.0
            assert acc == sorted(acc)
            assert all(0 < a <= 1 for a in acc)


def test_normalised_accuracy_by_hand(cat):
    tag = {v.name: v.accuracy for v in cat.apps["social_media"].task("tag").variants}
    assert tag["resnet50"] == pytest.approx(80.858 / 82.284, rel=1e-12)
    assert tag["resnet18"] == pytest.approx(69.758 / 82.284, rel=1e-12)
    assert tag["resnet152"] == 1.0
    detect = {v.name: v.accuracy for v in cat.apps["ar_assistant"].task("detect").variants}
    assert detect["fcos_resnet50_fpn"] == pytest.approx(39.2 / 46.7, rel=1e-12)
    # the ladder is ordered by accuracy, not by the order in the app file
    assert [v.name for v in cat.apps["social_media"].task("scene").variants] == [
        "mobilenet_v3_small", "mobilenet_v3_large", "vit_b_16"]


def test_single_variant_task_has_accuracy_one(cat):
    (v,) = cat.apps["bert_qa"].task("answer").variants
    assert v.name == "bert" and v.accuracy == 1.0


# ---------------------------------------------------------------------------------------------- fan-outs


def test_per_variant_fanout(cat):
    ta = cat.apps["traffic_analysis"]
    assert ta.fanout("detect", "car_classify", "fcos_resnet50_fpn") == 6.72
    assert ta.fanout("detect", "car_classify", "fasterrcnn_resnet50_fpn_v2") == 8.0
    assert ta.fanout("detect", "person_classify", "fasterrcnn_mobilenet_v3_large_fpn") == 2.11
    ar = cat.apps["ar_assistant"]
    assert ar.fanout("detect", "recognise", "retinanet_resnet50_fpn_v2") == 3.55


def test_constant_fanout_ignores_variant(cat):
    ar = cat.apps["ar_assistant"]
    for v in ar.task("recognise").variants:
        assert ar.fanout("recognise", "segment", v.name) == 0.25


# ---------------------------------------------------------------------------------------------- profile tables


def test_measured_h100_row_comes_back_exactly(cat):
    row = next(r for r in read_rows(H100_CSV)
               if r["model"] == "resnet50" and r["sm_count"] == "16" and r["batch"] == "8")
    assert float(row["p95_ms"]) == 3.2707  # the row this test is about
    t = cat.table("h100", "social_media", "tag")
    i = cell(t, "resnet50", "1g.10gb", 1, 8)
    assert t.kind[i] == ConfigKind.MEASURED
    assert t.p95_ms[i] == float(row["p95_ms"])
    assert t.p50_ms[i] == float(row["p50_ms"])
    assert t.p99_ms[i] == float(row["p99_ms"])
    assert t.throughput_rps[i] == float(row["throughput_rps"])
    assert t.memory_mib[i] == float(row["peak_mem_mib"])


def test_measured_row_at_whole_gpu(cat):
    t = cat.table("h100", "image_classify", "classify")
    i = cell(t, "resnet50", "7g.80gb", 1, 64)
    assert t.kind[i] == ConfigKind.MEASURED
    assert t.p95_ms[i] == 5.0230
    assert t.throughput_rps[i] == 12783.72


def test_1g20gb_is_interpolated_between_16_and_32_sms(cat):
    # resnet50 batch 8: p95 3.2707 ms at 16 SMs, 2.2926 ms at 32 SMs; 1g.20gb has 26 SMs.
    # L(sm) = a + b / sm through both points.
    b = (3.2707 - 2.2926) / (1 / 16 - 1 / 32)
    a = 3.2707 - b / 16
    p95_26 = a + b / 26
    b50 = (3.2304 - 2.2796) / (1 / 16 - 1 / 32)
    p50_26 = 3.2304 - b50 / 16 + b50 / 26
    thr_26 = 2476.45 * 3.2304 / p50_26  # throughput keeps items = thr * p50
    t = cat.table("h100", "social_media", "tag")
    i = cell(t, "resnet50", "1g.20gb", 1, 8)
    assert t.kind[i] == ConfigKind.ESTIMATED
    assert t.p95_ms[i] == pytest.approx(p95_26, rel=1e-12)
    assert t.p50_ms[i] == pytest.approx(p50_26, rel=1e-12)
    assert t.throughput_rps[i] == pytest.approx(thr_26, rel=1e-12)
    assert 2.2926 < t.p95_ms[i] < 3.2707
    assert t.memory_mib[i] == 291  # the larger of the two rows' peaks


def test_two_mps_workers_on_4g_use_the_32_sm_row_slowed_down(cat):
    slow = 1 + 0.43 / 3  # 1 + (1.43 - 1)(m - 1)/3 at m = 2
    assert slow == pytest.approx(1.143333, abs=1e-6)
    t = cat.table("h100", "social_media", "tag")
    i = cell(t, "resnet50", "4g.40gb", 2, 8)
    assert t.kind[i] == ConfigKind.MODELLED
    assert t.p95_ms[i] == pytest.approx(2.2926 * slow, rel=1e-12)
    assert t.p50_ms[i] == pytest.approx(2.2796 * slow, rel=1e-12)
    assert t.throughput_rps[i] == pytest.approx(3509.41 / slow, rel=1e-12)


def test_four_mps_workers_on_4g_use_the_16_sm_row_times_1_43(cat):
    t = cat.table("h100", "social_media", "tag")
    i = cell(t, "resnet50", "4g.40gb", 4, 8)
    assert t.kind[i] == ConfigKind.MODELLED
    assert t.p95_ms[i] == pytest.approx(3.2707 * 1.43, rel=1e-12)
    assert t.throughput_rps[i] == pytest.approx(2476.45 / 1.43, rel=1e-12)


def test_never_extrapolated_below_the_smallest_measured_sm_count(cat):
    t = cat.table("h100", "social_media", "tag")
    for workers in (2, 4):  # 8 and 4 SMs per worker on a 16-SM 1g.10gb
        i = cell(t, "resnet50", "1g.10gb", workers, 8)
        assert t.kind[i] == ConfigKind.MISSING
        assert math.isnan(t.p95_ms[i]) and math.isnan(t.throughput_rps[i])
        assert not t.usable[i]


def test_a100_colocation_is_measured_not_modelled(cat):
    t = cat.table("a100", "bert_qa", "answer")
    i = cell(t, "bert", "1g.10gb", 2, 1)
    assert t.kind[i] == ConfigKind.MEASURED
    assert t.p95_ms[i] == 19.0 and t.throughput_rps[i] == 52.42  # the co-located row as it is
    kinds = {int(k) for k in np.unique(t.kind)}
    assert ConfigKind.MODELLED not in kinds


def _expected_kinds(rows: list[dict[str, str]], gpu, task, colocation_measured: bool, context_mib: float):
    """An independent reading of the documented table rules, cell by cell."""
    family = task.family
    names = [v.name for v in task.variants]
    data: dict[tuple[str, int, int, int], dict[str, float]] = {}
    for r in rows:
        if r["task_family"] == family and r["model"] in names:
            key = (r["model"], int(r["sm_count"]), int(r.get("mps_workers") or 1), int(r["batch"]))
            data[key] = {k: float(r[k]) if r.get(k) not in (None, "") else math.nan
                         for k in ("p95_ms", "peak_mem_mib")}
    batches = sorted({k[3] for k in data})
    out = {}
    for v in names:
        for seg in gpu.segments:
            m = seg.mps_workers
            for b in batches:
                row = data.get((v, seg.mig_profile.sms, m, b))
                if row is not None:
                    kind, mem = ConfigKind.MEASURED, row["peak_mem_mib"]
                elif m > 1 and colocation_measured:
                    kind = ConfigKind.MISSING
                else:
                    sm = seg.mig_profile.sms / m
                    measured = {s: d for (mv, s, w, bb), d in data.items() if mv == v and w == 1 and bb == b}
                    if sm in measured:
                        kind, mem = (ConfigKind.MEASURED if m == 1 else ConfigKind.MODELLED), measured[sm]["peak_mem_mib"]
                    else:
                        lo = [s for s in measured if s < sm]
                        hi = [s for s in measured if s > sm]
                        if lo and hi:  # interpolated: ESTIMATED, with or without co-location on top
                            kind = ConfigKind.ESTIMATED
                            mem = np.fmax(measured[max(lo)]["peak_mem_mib"], measured[min(hi)]["peak_mem_mib"])
                        else:
                            kind = ConfigKind.MISSING
                if kind != ConfigKind.MISSING and mem + context_mib > seg.memory_mib_per_worker:
                    kind = ConfigKind.OVER_MEMORY
                out[(v, seg.name, b)] = kind
    return batches, out


@pytest.mark.parametrize("gpu_name, app, task", [
    ("h100", "social_media", "tag"), ("h100", "social_media", "moderate"), ("h100", "social_media", "scene"),
    ("h100", "traffic_analysis", "detect"), ("h100", "ar_assistant", "segment"),
    ("a100", "image_classify", "classify"), ("a100", "bert_qa", "answer"),
])
def test_config_kinds_counted(cat, gpu_name, app, task):
    gpu = cat.gpus[gpu_name]
    t = cat.table(gpu_name, app, task)
    rows = read_rows(H100_CSV if gpu_name == "h100" else A100_CSV)
    batches, expected = _expected_kinds(rows, gpu, cat.apps[app].task(task), cat.colocation[gpu_name].measured,
                                        cat.cuda_context_mib[gpu_name])
    assert list(t.batches) == batches
    got = {(v, s.name, b): ConfigKind(int(t.kind[vi, si, bi]))
           for vi, v in enumerate(t.variants) for si, s in enumerate(t.segments) for bi, b in enumerate(t.batches)}
    assert got == expected
    counts = {k: sum(1 for x in got.values() if x == k) for k in ConfigKind}
    assert sum(counts.values()) == t.kind.size
    assert counts[ConfigKind.MEASURED] > 0
    # the arrays are NaN exactly where the kind is MISSING
    assert np.array_equal(np.isnan(t.p95_ms), t.kind == ConfigKind.MISSING)
    assert np.array_equal(t.usable, np.isin(t.kind, (ConfigKind.MEASURED, ConfigKind.MODELLED, ConfigKind.ESTIMATED)))


def test_h100_kinds_where_expected(cat):
    t = cat.table("h100", "social_media", "tag")
    for si, seg in enumerate(t.segments):
        kinds = set(np.unique(t.kind[:, si, :]).tolist())
        if seg.mps_workers > 1:  # co-location is modelled on the H100, never measured
            assert ConfigKind.MEASURED not in kinds
        elif seg.mig_profile.name == "1g.20gb":
            assert kinds <= {ConfigKind.ESTIMATED, ConfigKind.OVER_MEMORY, ConfigKind.MISSING}
        else:
            assert ConfigKind.ESTIMATED not in kinds and ConfigKind.MODELLED not in kinds
    # every measured row of these variants lands in a 1-worker cell (measured or over memory)
    names = set(t.variants)
    n_rows = sum(1 for r in read_rows(H100_CSV) if r["task_family"] == "classification" and r["model"] in names)
    single = [si for si, s in enumerate(t.segments) if s.mps_workers == 1 and s.mig_profile.name != "1g.20gb"]
    sub = t.kind[:, single, :]
    assert int(np.isin(sub, (ConfigKind.MEASURED, ConfigKind.OVER_MEMORY)).sum()) == n_rows


def test_interpolated_and_colocated_is_estimated(cat):
    # 7g.80gb shared by 2 workers: 66 SMs each, between the 64- and 132-SM rows, then slowed down
    t = cat.table("h100", "social_media", "tag")
    i = cell(t, "resnet50", "7g.80gb", 2, 8)
    b = (1.6194 - 1.2606) / (1 / 64 - 1 / 132)
    p95_66 = 1.6194 - b / 64 + b / 66
    assert t.kind[i] == ConfigKind.ESTIMATED
    assert t.p95_ms[i] == pytest.approx(p95_66 * (1 + 0.43 / 3), rel=1e-12)


def test_over_memory_configs_are_known_but_unusable(toy, tmp_path):
    from conftest import profile_row
    # a_big at batch 1 needs 20000 MiB: more than a 10 GiB 1g worker, less than the 80 GiB 7g
    toy.rows["toy"] = [r for r in toy.rows["toy"] if r["model"] != "a_big"]
    toy.rows["toy"] += [profile_row("fa", "a_big", 16, 1, 20.0, 50.0, mem=20000),
                        profile_row("fa", "a_big", 112, 1, 5.0, 200.0, mem=20000)]
    c = load_catalog(toy.write(tmp_path))
    t = c.table("toy", "chain", "a")
    small_seg = cell(t, "a_big", "1g", 1, 1)
    whole = cell(t, "a_big", "7g", 1, 1)
    assert t.kind[small_seg] == ConfigKind.OVER_MEMORY and not t.usable[small_seg]
    assert t.p95_ms[small_seg] == 20.0  # known, just does not fit
    assert t.kind[whole] == ConfigKind.MEASURED and t.usable[whole]

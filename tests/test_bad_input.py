"""Bad input never gets past the loader as anything but a one-line CatalogError naming the file and field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from jigsaw.profiles.catalog import load_catalog
from jigsaw.profiles.errors import CatalogError, JigsawError


def load_error(spec, root: Path) -> CatalogError:
    spec.write(root)
    with pytest.raises(CatalogError) as e:
        load_catalog(root)
    text = str(e.value)
    assert "\n" not in text, "the message must be one line"
    assert "Traceback" not in text
    return e.value


def test_the_minimal_catalog_is_valid(toy, tmp_path):
    c = load_catalog(toy.write(tmp_path))
    assert set(c.apps) == {"chain"} and set(c.gpus) == {"toy"}
    assert c.apps["chain"].paths() == [("a", "b")]


# ---------------------------------------------------------------------------------------------- app specs


@pytest.mark.parametrize("missing", ["latency_slo_ms", "accuracy_slo", "name", "tasks"])
def test_app_missing_field(toy, tmp_path, missing):
    del toy.apps["chain.yaml"][missing]
    e = load_error(toy, tmp_path)
    assert e.file.endswith("chain.yaml") and e.field == missing
    assert str(e).startswith(f"{tmp_path / 'chain.yaml'}: {missing}: missing field")
    assert "(fix: add" in str(e)


def test_task_missing_family(toy, tmp_path):
    del toy.apps["chain.yaml"]["tasks"]["b"]["family"]
    e = load_error(toy, tmp_path)
    assert "chain.yaml" in str(e) and e.field == "tasks.b.family"


def test_wrong_type(toy, tmp_path):
    toy.apps["chain.yaml"]["latency_slo_ms"] = "fast"
    e = load_error(toy, tmp_path)
    assert e.field == "latency_slo_ms" and "expected" in e.message


def test_boolean_is_not_a_number(toy, tmp_path):
    toy.apps["chain.yaml"]["latency_slo_ms"] = True
    e = load_error(toy, tmp_path)
    assert e.field == "latency_slo_ms"


def test_negative_latency_slo(toy, tmp_path):
    toy.apps["chain.yaml"]["latency_slo_ms"] = -5
    e = load_error(toy, tmp_path)
    assert e.field == "latency_slo_ms" and "chain.yaml" in e.file


def test_variant_without_published_metric(toy, tmp_path):
    toy.apps["chain.yaml"]["tasks"]["a"]["variants"] = ["a_small", "a_typo"]
    e = load_error(toy, tmp_path)
    assert e.file.endswith("chain.yaml") and e.field == "tasks.a.variants"
    assert "a_typo" in e.message


def test_variant_with_metric_but_no_profile(toy, tmp_path):
    toy.models["a_typo"] = 120.0  # published, but no profile row anywhere
    toy.apps["chain.yaml"]["tasks"]["a"]["variants"] = ["a_small", "a_big", "a_typo"]
    toy.apps["chain.yaml"]["accuracy_slo"] = 0.5
    e = load_error(toy, tmp_path)
    assert e.file.endswith("chain.yaml") and e.field.startswith("tasks.a")
    assert "a_typo" in e.message


def test_task_whose_variants_have_no_profile(toy, tmp_path):
    toy.models["c_model"] = 50.0
    toy.apps["chain.yaml"]["tasks"]["c"] = {"family": "fc", "variants": ["c_model"]}
    e = load_error(toy, tmp_path)
    assert e.file.endswith("chain.yaml") and e.field.startswith("tasks")
    assert "profile" in e.message


def test_task_family_without_rows(toy, tmp_path):
    toy.apps["chain.yaml"]["tasks"]["b"]["family"] = "nosuchfamily"
    e = load_error(toy, tmp_path)
    assert e.file.endswith("chain.yaml") and e.field.startswith("tasks")


def test_empty_variant_list(toy, tmp_path):
    toy.apps["chain.yaml"]["tasks"]["a"]["variants"] = []
    e = load_error(toy, tmp_path)
    assert e.field == "tasks.a.variants"


def test_edge_to_unknown_task(toy, tmp_path):
    toy.apps["chain.yaml"]["edges"][0]["to"] = "zz"
    e = load_error(toy, tmp_path)
    assert e.field == "edges[0].to" and "zz" in e.message


def test_cycle_in_task_graph(toy, tmp_path):
    toy.apps["chain.yaml"]["edges"].append({"from": "b", "to": "a", "fanout": 1})
    e = load_error(toy, tmp_path)
    assert e.file.endswith("chain.yaml") and e.field == "edges"
    assert "cycle" in e.message


def test_self_loop_is_a_cycle(toy, tmp_path):
    toy.apps["chain.yaml"]["edges"].append({"from": "b", "to": "b", "fanout": 1})
    e = load_error(toy, tmp_path)
    assert e.field == "edges" and "cycle" in e.message


def test_negative_fanout(toy, tmp_path):
    toy.apps["chain.yaml"]["edges"][0]["fanout"] = -1
    e = load_error(toy, tmp_path)
    assert e.field == "edges[0].fanout"


def test_per_variant_fanout_must_name_every_variant(toy, tmp_path):
    toy.apps["chain.yaml"]["edges"][0]["fanout"] = {"a_big": 3}
    e = load_error(toy, tmp_path)
    assert e.field == "edges[0].fanout" and "a_small" in str(e)


def test_per_variant_fanout_loads(toy, tmp_path):
    toy.apps["chain.yaml"]["edges"][0]["fanout"] = {"a_small": 2, "a_big": 3.5}
    app = load_catalog(toy.write(tmp_path)).apps["chain"]
    assert app.fanout("a", "b", "a_small") == 2.0 and app.fanout("a", "b", "a_big") == 3.5


def test_latency_slo_no_configuration_can_meet(toy, tmp_path):
    # fastest accurate-enough path: a_big on 7g (5 ms) + b_small on 7g (3 ms), x2 allowance = 16 ms
    toy.apps["chain.yaml"]["latency_slo_ms"] = 15
    e = load_error(toy, tmp_path)
    assert e.file.endswith("chain.yaml") and e.field == "latency_slo_ms"
    assert "16" in e.fix


def test_latency_slo_just_reachable_loads(toy, tmp_path):
    toy.apps["chain.yaml"]["latency_slo_ms"] = 16
    load_catalog(toy.write(tmp_path))


@pytest.mark.parametrize("slo", [1.5, 0, -0.2])
def test_accuracy_slo_unreachable(toy, tmp_path, slo):
    toy.apps["chain.yaml"]["accuracy_slo"] = slo
    e = load_error(toy, tmp_path)
    assert e.file.endswith("chain.yaml") and e.field == "accuracy_slo"


def test_accuracy_slo_whose_variants_have_no_profile(toy, tmp_path):
    # the most accurate variant of b has no profile rows at all, so only b_small (0.9) can run;
    # an accuracy SLO of 0.95 is then unreachable: a CatalogError, not a crash
    toy.rows["toy"] = [r for r in toy.rows["toy"] if r["model"] != "b_big"]
    toy.apps["chain.yaml"]["accuracy_slo"] = 0.95
    e = load_error(toy, tmp_path)
    assert e.file.endswith("chain.yaml")
    assert e.field in ("accuracy_slo", "latency_slo_ms", "tasks.b.variants")


def test_duplicate_app_name(toy, tmp_path):
    toy.apps["copy.yaml"] = dict(toy.apps["chain.yaml"])
    e = load_error(toy, tmp_path)
    assert e.field == "name" and "twice" in e.message


def test_invalid_yaml_syntax(toy, tmp_path):
    toy.apps["chain.yaml"] = "name: chain\nlatency_slo_ms: [100\ntasks: {a: }\n"
    e = load_error(toy, tmp_path)
    assert e.file.endswith("chain.yaml") and "YAML" in e.message


def test_invalid_catalog_yaml(toy, tmp_path):
    toy.raw["catalog.yaml"] = "gpus: {toy: [unclosed\n"
    e = load_error(toy, tmp_path)
    assert e.file.endswith("catalog.yaml") and "YAML" in e.message


def test_catalog_top_level_not_a_mapping(toy, tmp_path):
    toy.raw["catalog.yaml"] = "- just\n- a list\n"
    e = load_error(toy, tmp_path)
    assert e.file.endswith("catalog.yaml")


def test_json_app_spec_loads(toy, tmp_path):
    toy.apps = {"chain.json": toy.apps["chain.yaml"]}
    c = load_catalog(toy.write(tmp_path))
    app = c.apps["chain"]
    assert app.source_file.endswith("chain.json")
    assert app.paths() == [("a", "b")] and app.fanout("a", "b", "a_big") == 3.0
    assert [v.accuracy for v in app.task("a").variants] == [0.8, 1.0]


def test_invalid_json_app_spec(toy, tmp_path):
    toy.apps = {"chain.json": json.dumps(toy.apps["chain.yaml"])[:-5]}
    e = load_error(toy, tmp_path)
    assert e.file.endswith("chain.json") and "JSON" in e.message


def test_catalog_given_as_json_file(toy, tmp_path):
    toy.write(tmp_path)
    doc = yaml.safe_load((tmp_path / "catalog.yaml").read_text())
    (tmp_path / "catalog.json").write_text(json.dumps(doc))
    assert set(load_catalog(tmp_path / "catalog.json").apps) == {"chain"}


def test_missing_app_file(toy, tmp_path):
    toy.write(tmp_path)
    (tmp_path / "chain.yaml").unlink()
    with pytest.raises(CatalogError) as e:
        load_catalog(tmp_path)
    assert "chain.yaml" in str(e.value)


def _metric_not_a_number(toy):
    toy.apps["chain.yaml"]["tasks"]["a"]["variants"] = {"a_small": "high", "a_big": 3}
    return "tasks.a.variants.a_small"


def _metric_missing(toy):
    toy.apps["chain.yaml"]["tasks"]["a"]["variants"] = {"a_small": None, "a_big": 3}
    return "tasks.a.variants.a_small"


def _fanout_not_a_number(toy):
    toy.apps["chain.yaml"]["edges"][0]["fanout"] = {"a_small": "x", "a_big": 3}
    return "edges[0].fanout.a_small"


def _fanout_a_list(toy):
    toy.apps["chain.yaml"]["edges"][0]["fanout"] = {"a_small": [1], "a_big": 3}
    return "edges[0].fanout.a_small"


def _variant_not_a_name(toy):
    toy.apps["chain.yaml"]["tasks"]["a"]["variants"] = [["a_small"], "a_big"]
    return "tasks.a.variants"


def _task_name_not_a_string(toy):
    toy.apps["chain.yaml"]["tasks"][1] = toy.apps["chain.yaml"]["tasks"].pop("b")
    return "tasks"


@pytest.mark.parametrize("corrupt", [_metric_not_a_number, _metric_missing, _fanout_not_a_number, _fanout_a_list,
                                     _variant_not_a_name, _task_name_not_a_string])
def test_malformed_app_values(toy, tmp_path, corrupt):
    field = corrupt(toy)
    e = load_error(toy, tmp_path)
    assert e.file.endswith("chain.yaml") and e.field.startswith(field.split(".")[0])


# ---------------------------------------------------------------------------------------------- profile CSV


def _set(toy, model: str, sm: int, batch: int, column: str, value) -> int:
    """Set one cell of the toy profile CSV; returns the CSV line number of that row (header = line 1)."""
    for i, row in enumerate(toy.rows["toy"]):
        if (row["model"], row["sm_count"], row["batch"]) == (model, sm, batch):
            row[column] = value
            return i + 2
    raise AssertionError("no such row")


def test_negative_latency_in_profile_csv(toy, tmp_path):
    line = _set(toy, "b_small", 16, 2, "p95_ms", -35.0)
    e = load_error(toy, tmp_path)
    assert e.file == f"{tmp_path / 'toy_profiles.csv'}:{line}"
    assert e.field == "p95_ms"
    assert str(e).startswith(f"{tmp_path / 'toy_profiles.csv'}:{line}: p95_ms: ")


@pytest.mark.parametrize("column", ["p50_ms", "p99_ms", "throughput_rps"])
def test_negative_value_names_its_column(toy, tmp_path, column):
    line = _set(toy, "a_big", 112, 1, column, -1)
    e = load_error(toy, tmp_path)
    assert e.file.endswith(f"toy_profiles.csv:{line}") and e.field == column


def test_non_numeric_value_in_profile_csv(toy, tmp_path):
    line = _set(toy, "a_small", 16, 1, "throughput_rps", "fast")
    e = load_error(toy, tmp_path)
    assert e.file.endswith(f"toy_profiles.csv:{line}") and e.field == "throughput_rps"
    assert "'fast'" in e.message


def test_non_finite_value_in_profile_csv(toy, tmp_path):
    line = _set(toy, "a_small", 16, 1, "p99_ms", "inf")
    e = load_error(toy, tmp_path)
    assert e.file.endswith(f"toy_profiles.csv:{line}") and e.field == "p99_ms"


def test_fractional_batch_in_profile_csv(toy, tmp_path):
    line = _set(toy, "a_small", 16, 1, "batch", 1.5)
    e = load_error(toy, tmp_path)
    assert e.file.endswith(f"toy_profiles.csv:{line}") and "batch" in e.field


def test_zero_throughput_in_profile_csv(toy, tmp_path):
    line = _set(toy, "a_small", 16, 1, "throughput_rps", 0)
    e = load_error(toy, tmp_path)
    assert e.file.endswith(f"toy_profiles.csv:{line}") and "throughput_rps" in e.field


def test_decreasing_percentiles(toy, tmp_path):
    line = _set(toy, "a_small", 16, 1, "p99_ms", 1.0)
    e = load_error(toy, tmp_path)
    assert e.file.endswith(f"toy_profiles.csv:{line}") and e.field == "p95_ms"


def test_short_row_in_profile_csv(toy, tmp_path):
    toy.write(tmp_path)
    path = tmp_path / "toy_profiles.csv"
    path.write_text(path.read_text() + "fa,a_small,16\n")
    line = len(toy.rows["toy"]) + 2
    with pytest.raises(CatalogError) as e:
        load_catalog(tmp_path)
    assert e.value.file.endswith(f"toy_profiles.csv:{line}")


def test_duplicate_profile_row(toy, tmp_path):
    toy.rows["toy"].append(dict(toy.rows["toy"][0]))
    e = load_error(toy, tmp_path)
    assert e.file.endswith(f"toy_profiles.csv:{len(toy.rows['toy']) + 1}") and "duplicate" in e.message


def test_missing_profile_column(toy, tmp_path):
    toy.write(tmp_path)
    path = tmp_path / "toy_profiles.csv"
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace("p95_ms", "p95")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CatalogError) as e:
        load_catalog(tmp_path)
    assert e.value.file.endswith("toy_profiles.csv") and e.value.field == "header" and "p95_ms" in e.value.message


def test_empty_profile_table(toy, tmp_path):
    toy.rows["toy"] = []
    e = load_error(toy, tmp_path)
    assert e.file.endswith("toy_profiles.csv")


def test_missing_profile_file(toy, tmp_path):
    toy.gpus["toy"]["profiles"] = "nowhere.csv"
    toy.write(tmp_path)
    (tmp_path / "nowhere.csv").unlink()
    with pytest.raises(CatalogError) as e:
        load_catalog(tmp_path)
    assert "nowhere.csv" in str(e.value)


def test_models_file_without_metric_column(toy, tmp_path):
    toy.raw["models.csv"] = "model,score\na_small,80\n"
    e = load_error(toy, tmp_path)
    # today the models file silently yields no metrics and the app's variants are then reported unknown
    assert e.file.endswith("models.csv") or e.field == "tasks.a.variants"


# ---------------------------------------------------------------------------------------------- GPU types


def test_gpu_missing_field(toy, tmp_path):
    del toy.gpus["toy"]["memory_slots"]
    e = load_error(toy, tmp_path)
    assert e.file.endswith("catalog.yaml") and e.field == "gpus.toy.memory_slots"


def test_mig_profile_missing_field(toy, tmp_path):
    del toy.gpus["toy"]["mig_profiles"][0]["sms"]
    e = load_error(toy, tmp_path)
    assert e.file.endswith("catalog.yaml") and e.field == "gpus.toy.mig_profiles[0].sms"


def test_start_slot_outside_memory(toy, tmp_path):
    toy.gpus["toy"]["mig_profiles"][0]["starts"] = [0, 7]
    e = load_error(toy, tmp_path)
    assert e.field == "gpus.toy.mig_profiles[0].starts"


def test_no_whole_gpu_profile(toy, tmp_path):
    toy.gpus["toy"]["mig_profiles"] = toy.gpus["toy"]["mig_profiles"][:1]
    e = load_error(toy, tmp_path)
    assert e.field == "gpus.toy.mig_profiles"


def test_mps_workers_must_include_one(toy, tmp_path):
    toy.gpus["toy"]["mps_workers"] = [2, 4]
    e = load_error(toy, tmp_path)
    assert e.field == "gpus.toy.mps_workers"


def test_colocation_slowdown_required_when_not_measured(toy, tmp_path):
    toy.gpus["toy"]["colocation"] = {"measured": False}
    e = load_error(toy, tmp_path)
    assert e.field == "gpus.toy.colocation.slowdown_at_4_workers"


def test_errors_share_one_hierarchy(toy, tmp_path):
    del toy.apps["chain.yaml"]["name"]
    assert isinstance(load_error(toy, tmp_path), JigsawError)


# ---------------------------------------------------------------------------------------------- the CLI


@pytest.mark.skipif(not (ROOT / "scripts" / "cli.py").exists(), reason="scripts/cli.py not written yet")
@pytest.mark.parametrize("corrupt", ["missing_slo", "negative_p95", "bad_yaml", "no_catalog",
                                     "short_csv_row"])
def test_cli_reports_bad_catalog_in_one_line(toy, tmp_path, corrupt):
    if corrupt == "missing_slo":
        del toy.apps["chain.yaml"]["latency_slo_ms"]
    elif corrupt == "negative_p95":
        _set(toy, "a_small", 16, 1, "p95_ms", -1)
    elif corrupt == "bad_yaml":
        toy.apps["chain.yaml"] = "name: [chain\n"
    root = toy.write(tmp_path / "cat")
    if corrupt == "short_csv_row":
        with (root / "toy_profiles.csv").open("a") as f:
            f.write("fa,a_small,16\n")
    if corrupt == "no_catalog":
        root = tmp_path / "does_not_exist"
    proc = subprocess.run([sys.executable, "-m", "jigsaw.scripts.cli", "solve", "--catalog", str(root), "--app", "x",
                           "--rps", "1", "--gpus", "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(tmp_path) in lines[0]


def _wide_app(latency_slo_ms: float) -> dict:
    """17 parallel copies of task 'a': 2^17 variant choices, beyond the joint search, so checked per path."""
    return {"name": "wide", "latency_slo_ms": latency_slo_ms, "accuracy_slo": 0.85,
            "tasks": {f"t{i}": {"family": "fa", "variants": ["a_small", "a_big"]} for i in range(17)}}


def test_wide_app_is_checked_path_by_path_not_truncated(toy, tmp_path):
    toy.apps["wide.yaml"] = _wide_app(100)
    toy.write(tmp_path)
    assert "wide" in load_catalog(tmp_path).apps


def test_wide_app_with_unreachable_latency_is_refused(toy, tmp_path):
    toy.apps["wide.yaml"] = _wide_app(0.01)
    e = load_error(toy, tmp_path)
    assert e.file.endswith("wide.yaml") and e.field == "latency_slo_ms"

"""Start-up and repartition times in the catalog: the built-in figures, their validation, the CLI's one line,
and the measuring script's pure parts (plus one short real run)."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CatalogSpec

from jigsaw.profiles.catalog import MAX_TRANSITION_S, load_catalog
from jigsaw.profiles.errors import CatalogError
from jigsaw.profiles.types import Transitions
from jigsaw.scripts.measure_startup import overrides, replace_block

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- built-in


def test_builtin_catalog_has_times_for_every_gpu_type_and_the_cpu(builtin_catalog):
    c = builtin_catalog
    assert set(c.transitions) == {*c.gpus, "cpu"}
    variants = {v.name for app in c.apps.values() for t in app.tasks for v in t.variants}
    for device, tr in c.transitions.items():
        assert c.transitions_for(device) is tr
        assert tr.source.strip() and set(tr.startup_s) <= variants
        assert all(0 < s <= MAX_TRANSITION_S for s in (tr.default_startup_s, *tr.startup_s.values()))
    assert c.transitions["cpu"].repartition_s == 0.0


def test_builtin_gpu_figures_are_plausible_estimates(builtin_catalog):
    h100 = builtin_catalog.transitions_for("h100")
    assert 1.0 <= h100.repartition_s <= 60.0 and 5.0 <= h100.default_startup_s <= 60.0
    assert "estimate" in h100.source
    assert h100.startup("resnet18") == h100.default_startup_s  # not listed: the default
    assert h100.startup("vit_b_16") == h100.startup_s["vit_b_16"] > h100.default_startup_s  # listed: its own
    # bigger models load longer (params_m: resnet101 44.6 M < resnet152 60.2 M < vit_b_16 86.6 M)
    assert h100.default_startup_s < h100.startup("resnet101") < h100.startup("resnet152") < h100.startup("vit_b_16")
    assert builtin_catalog.transitions_for("a100").startup("bert") > builtin_catalog.transitions_for("a100").startup(
        "resnet50")


def test_builtin_cpu_figures_say_where_and_when_they_were_measured(builtin_catalog):
    cpu = builtin_catalog.transitions_for("cpu")
    assert 0.1 <= cpu.default_startup_s <= 60.0  # a worker imports torch: about a second on this machine
    assert all(s in cpu.source for s in ("measured", "2026-12-06", "2-core CPU machine", "scripts/measure_startup.py"))
    assert cpu.startup("resnet50") == cpu.startup_s.get("resnet50", cpu.default_startup_s)


def test_unknown_device_is_a_one_line_catalog_error(builtin_catalog):
    with pytest.raises(CatalogError) as e:
        builtin_catalog.transitions_for("tpu")
    assert e.value.field == "transitions" and "h100" in e.value.fix and "\n" not in str(e.value)


def test_transitions_are_immutable(builtin_catalog):
    tr = builtin_catalog.transitions_for("h100")
    with pytest.raises(dataclasses.FrozenInstanceError):
        tr.repartition_s = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        tr.startup_s["resnet18"] = 1.0  # type: ignore[index]
    given = {"a": 1.0}
    mine = Transitions(0.0, given, 2.0, "t")
    given["a"] = 9.0  # the caller's dict is copied, not shared
    assert mine.startup("a") == 1.0


def test_transitions_pickle_and_stay_read_only(builtin_catalog):
    tr = builtin_catalog.transitions_for("h100")  # a catalog may be sent to worker processes
    back = pickle.loads(pickle.dumps(tr))
    assert back == tr and back.startup("vit_b_16") == tr.startup("vit_b_16")
    with pytest.raises(TypeError):
        back.startup_s["vit_b_16"] = 1.0  # type: ignore[index]


# ---------------------------------------------------------------------------------------------- a toy catalog


def test_overrides_and_defaults_load_as_written(toy, tmp_path):
    toy.gpus["toy"]["transitions"] = {"source": "t", "repartition_s": 0, "startup_s": {"default": 5, "a_big": 8.5}}
    toy.cpu_workers = {"source": "t", "startup_s": {"default": 1.5, "b_big": 2}}
    c = load_catalog(toy.write(tmp_path))
    assert c.transitions_for("toy") == Transitions(0.0, {"a_big": 8.5}, 5.0, "t")
    assert (c.transitions["toy"].startup("a_big"), c.transitions["toy"].startup("a_small")) == (8.5, 5.0)
    assert (c.transitions["cpu"].startup("b_big"), c.transitions["cpu"].startup("a_big")) == (2.0, 1.5)
    assert isinstance(c.transitions["cpu"].startup("b_big"), float)


def _gpu(path: str, value: object) -> Callable[[CatalogSpec], None]:
    """Set (or, with value ``...``, delete) ``gpus.toy.transitions.<path>``."""
    return _set(lambda s: s.gpus["toy"], f"transitions.{path}" if path else "transitions", value)


def _cpu(path: str, value: object) -> Callable[[CatalogSpec], None]:
    def corrupt(s: CatalogSpec) -> None:
        if not path:
            s.cpu_workers = None if value is ... else value  # type: ignore[assignment]
        else:
            _set(lambda s: s.cpu_workers, path, value)(s)
    return corrupt


def _set(root: Callable[[CatalogSpec], object], path: str, value: object) -> Callable[[CatalogSpec], None]:
    def corrupt(s: CatalogSpec) -> None:
        *parents, last = path.split(".")
        doc = root(s)
        for key in parents:
            doc = doc[key]  # type: ignore[index]
        if value is ...:
            del doc[last]  # type: ignore[attr-defined]
        else:
            doc[last] = value  # type: ignore[index]
    return corrupt


def _rename_gpu_to_cpu(s: CatalogSpec) -> None:
    s.gpus["cpu"], s.rows["cpu"] = s.gpus.pop("toy"), s.rows.pop("toy")


G = "gpus.toy.transitions"
BAD = {
    "no transitions block": (_gpu("", ...), G),
    "transitions a list": (_gpu("", [1, 2]), G),
    "no cpu_workers block": (_cpu("", ...), "cpu_workers"),
    "no source": (_gpu("source", ...), f"{G}.source"),
    "empty source": (_gpu("source", "  "), f"{G}.source"),
    "no startup_s": (_gpu("startup_s", ...), f"{G}.startup_s"),
    "startup_s a number": (_gpu("startup_s", 15), f"{G}.startup_s"),
    "no default": (_gpu("startup_s.default", ...), f"{G}.startup_s.default"),
    "no cpu default": (_cpu("startup_s.default", ...), "cpu_workers.startup_s.default"),
    "negative default": (_gpu("startup_s.default", -1.0), f"{G}.startup_s.default"),
    "nan default": (_gpu("startup_s.default", math.nan), f"{G}.startup_s.default"),
    "infinite default": (_gpu("startup_s.default", math.inf), f"{G}.startup_s.default"),
    "default over a day": (_gpu("startup_s.default", MAX_TRANSITION_S + 1), f"{G}.startup_s.default"),
    "text default": (_gpu("startup_s.default", "15 s"), f"{G}.startup_s.default"),
    "bool default": (_gpu("startup_s.default", True), f"{G}.startup_s.default"),
    "null default": (_gpu("startup_s.default", None), f"{G}.startup_s.default"),
    "negative cpu default": (_cpu("startup_s.default", -0.5), "cpu_workers.startup_s.default"),
    "negative variant": (_gpu("startup_s.a_big", -3), f"{G}.startup_s.a_big"),
    "bool variant": (_gpu("startup_s.a_big", False), f"{G}.startup_s.a_big"),
    "list variant": (_gpu("startup_s.a_big", [1]), f"{G}.startup_s.a_big"),
    "unknown variant": (_gpu("startup_s.a_bigg", 3.0), f"{G}.startup_s.a_bigg"),
    "unknown cpu variant": (_cpu("startup_s.resnet50", 3.0), "cpu_workers.startup_s.resnet50"),
    "numeric variant key": (_gpu("startup_s", {"default": 5.0, 7: 3.0}), f"{G}.startup_s"),
    "no repartition_s": (_gpu("repartition_s", ...), f"{G}.repartition_s"),
    "negative repartition_s": (_gpu("repartition_s", -1), f"{G}.repartition_s"),
    "nan repartition_s": (_gpu("repartition_s", math.nan), f"{G}.repartition_s"),
    "text repartition_s": (_gpu("repartition_s", "10"), f"{G}.repartition_s"),
    "bool repartition_s": (_gpu("repartition_s", True), f"{G}.repartition_s"),
    "huge repartition_s": (_gpu("repartition_s", 1e9), f"{G}.repartition_s"),
    "cpu repartition_s": (_cpu("repartition_s", 5.0), "cpu_workers.repartition_s"),
    "unknown field": (_gpu("startup", 5.0), f"{G}.startup"),
    "a GPU type called cpu": (_rename_gpu_to_cpu, "gpus.cpu"),
}


@pytest.mark.parametrize("corrupt, field", BAD.values(), ids=BAD.keys())
def test_bad_times_name_file_field_and_fix_in_one_line(toy, tmp_path, corrupt, field):
    toy.gpus["toy"]["transitions"]["startup_s"]["a_big"] = 8.0  # a valid override for the corruptions to hit
    corrupt(toy)
    toy.write(tmp_path)
    with pytest.raises(CatalogError) as e:
        load_catalog(tmp_path)
    err, text = e.value, str(e.value)
    assert err.file == str(tmp_path / "catalog.yaml") and err.field == field and err.fix
    assert err.file in text and field in text and "\n" not in text


def test_a_misspelt_variant_gets_a_suggestion(toy, tmp_path):
    toy.gpus["toy"]["transitions"]["startup_s"]["a_bigg"] = 3.0
    with pytest.raises(CatalogError) as e:
        load_catalog(toy.write(tmp_path))
    assert "'a_big'" in e.value.fix


def test_cli_with_bad_times_exits_2_with_one_line(toy, tmp_path):
    toy.gpus["toy"]["transitions"]["startup_s"]["default"] = -5
    toy.write(tmp_path)
    run = subprocess.run([sys.executable, "-m", "jigsaw.scripts.cli", "solve", "--catalog", str(tmp_path),
                          "--gpu-type", "toy", "--app", "chain", "--rps", "10", "--gpus", "1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert "catalog.yaml" in run.stderr and "gpus.toy.transitions.startup_s.default" in run.stderr


# ---------------------------------------------------------------------------------------------- measure_startup


CATALOG_TEXT = """gpus:
  toy: {}
cpu_workers:  # old
  source: "old"
  startup_s:
    default: 1.0

    a: 2.0
apps: [a.yaml]
"""


def test_replace_block_keeps_what_surrounds_it():
    new = "cpu_workers:\n  source: \"new\"\n  startup_s:\n    default: 3.0\n"
    assert replace_block(CATALOG_TEXT, new) == "gpus:\n  toy: {}\n" + new + "apps: [a.yaml]\n"
    without = "gpus:\n  toy: {}\napps: [a.yaml]\n"
    assert replace_block(without, new) == without + "\n" + new


def test_a_variant_is_listed_only_when_every_launch_differs_one_way():
    samples = {"slow": [2.0, 2.1, 1.9], "noisy": [0.8, 1.6, 1.0], "fast": [0.5, 0.6, 0.55]}
    medians = {"slow": 2.0, "noisy": 1.0, "fast": 0.55}
    assert overrides(samples, medians, 1.0, 0.1) == {"slow": 2.0, "fast": 0.55}
    assert overrides(samples, medians, 1.0, 1.5) == {}


def test_measure_startup_runs_a_real_worker():
    run = subprocess.run([sys.executable, "scripts/measure_startup.py", "--variants", "resnet18", "--repeats", "1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(doc["startup_s"]) == {"resnet18"} and doc["noop_s"] > 0 and 0 < doc["default_s"] < 180
    assert "cpu_workers:" in run.stderr and "resnet18" in run.stderr

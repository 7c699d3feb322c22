"""The package's shape users rely on: one import name, `jigsaw`, and layers whose imports point one way."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("profiles", "env", "agents", "serving_shim", "scripts")  # each may import only those before it


def _imported_layers(path: Path) -> set[str]:
    """The layers a module imports, absolute (``jigsaw.env…``) or relative (``.ilp``, ``..plan``)."""
    here = path.relative_to(ROOT).parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level]
                names = [".".join(("jigsaw", *base, *([node.module] if node.module else [])))]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] in LAYERS:
                raise AssertionError(f"{path.relative_to(ROOT)} imports {name!r}: import it as 'jigsaw.{name}'")
            if parts[0] == "jigsaw" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_no_import_runs_back_up_the_layers() -> None:
    backwards = []
    for rank, layer in enumerate(LAYERS):
        for path in sorted((ROOT / layer).rglob("*.py")):
            for imported in _imported_layers(path):
                if LAYERS.index(imported) > rank:
                    backwards.append(f"{path.relative_to(ROOT)} -> jigsaw.{imported}")
    assert not backwards, "imports against profiles <- env <- agents <- serving_shim <- scripts: " + ", ".join(backwards)


def test_tests_and_benchmarks_import_the_package_by_its_name() -> None:
    for path in [*(ROOT / "tests").glob("*.py"), *(ROOT / "scripts").glob("*.py")]:
        _imported_layers(path)  # raises on a bare 'env.…' or 'agents.…' import


def test_the_wheel_installs_one_top_level_name_and_ships_its_data(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                             "runs", ".pytest_cache", ".ruff_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("jigsaw-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"jigsaw"}
    for shipped in ("jigsaw/__init__.py", "jigsaw/env/gym_env.py", "jigsaw/env/space/decode.py",
                    "jigsaw/serving_shim/backends/cpu.py",
                    "jigsaw/agents/policies/default.npz", "jigsaw/agents/policies/default.json",
                    "jigsaw/agents/hyperparams/maskable_ppo.yml", "jigsaw/profiles/data/catalog.yaml",
                    "jigsaw/profiles/data/h100/profiles.csv"):
        assert shipped in names, shipped
    assert not any(n.startswith("jigsaw/agents/policies/") and n.endswith(".zip") for n in names)  # pickles: never
    assert not any(n.startswith("jigsaw/tests/") for n in names)
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "jigsaw = jigsaw.scripts.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()

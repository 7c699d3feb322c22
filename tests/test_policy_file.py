"""A policy file is plain data: loading one never runs code. A doctored SB3 .zip beside a genuine sidecar is refused
unopened by every loading path; a doctored .npz (an object array: a pickle) is refused with a matching digest; and
every other damage (digest, arrays, shapes, values, settings) is a ``PolicyError`` naming the file."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jigsaw.agents.policy_file import MAX_ACTOR_PARAMS
from jigsaw.agents.ppo import DEFAULT_POLICY, PolicyError, load_policy, sidecar_path
from jigsaw.profiles.catalog import load_catalog
from jigsaw.profiles.errors import JigsawError

APPS = ("--app", "social_media,traffic_analysis,ar_assistant", "--gpus", "4")


class Evil:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return open, (str(self.marker), "w")


def _evil_sb3_zip(path: Path, marker: Path) -> Path:
    """A zip in SB3's layout whose ``data`` holds a serialized (cloudpickled) object and whose ``policy.pth`` is a
    pickle, both running code when loaded."""
    payload = pickle.dumps(Evil(marker))
    data = {"policy_class": {":type:": "<class 'abc.ABCMeta'>", ":serialized:": base64.b64encode(payload).decode()}}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data", json.dumps(data))
        zf.writestr("policy.pth", payload)
        zf.writestr("pytorch_variables.pth", payload)
        zf.writestr("_stable_baselines3_version", "2.9.2")
    return path


def _write_policy(directory: Path, name: str = "p", arrays: Any = None, data: bytes | None = None,
                  edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """The shipped policy copied to ``directory``, optionally with other arrays (or raw bytes) and an edited sidecar;
    the sidecar's digest matches the weights written unless ``edit`` changes it."""
    if data is None:
        with np.load(DEFAULT_POLICY) as shipped:
            buf = io.BytesIO()
            np.savez(buf, **(arrays(dict(shipped)) if callable(arrays) else arrays or dict(shipped)))
        data = buf.getvalue()
    meta = json.loads(sidecar_path(DEFAULT_POLICY).read_text())
    meta["actor"]["sha256"] = hashlib.sha256(data).hexdigest()
    if edit is not None:
        edit(meta)
    out = directory / f"{name}.npz"
    out.write_bytes(data)
    sidecar_path(out).write_text(json.dumps(meta))
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch on the payload's pickle protocol
def test_the_attack_is_real(tmp_path: Path) -> None:
    """SB3 itself runs the doctored zip's payload: what the tests below show is never reached."""
    from sb3_contrib import MaskablePPO

    marker = tmp_path / "ran"
    with pytest.raises(Exception):  # noqa: B017 -- after the payload ran, SB3 fails however it fails
        MaskablePPO.load(str(_evil_sb3_zip(tmp_path / "evil.zip", marker)), device="cpu")
    assert marker.exists()


@pytest.mark.parametrize("named", ["evil.zip", "evil", "evil.json", "EVIL.ZIP"])
def test_load_policy_refuses_an_sb3_zip_unopened(named: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    _evil_sb3_zip(tmp_path / ("EVIL.ZIP" if named == "EVIL.ZIP" else "evil.zip"), marker)
    shutil.copy(sidecar_path(DEFAULT_POLICY), tmp_path / "evil.json")  # a genuine sidecar beside it
    with pytest.raises(PolicyError, match="an SB3 checkpoint, not a policy") as e:
        load_policy(tmp_path / named, load_catalog())
    assert "jigsaw export-policy" in str(e.value.fix)
    assert not marker.exists()


def test_an_sb3_zip_renamed_npz_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    data = _evil_sb3_zip(tmp_path / "evil.zip", marker).read_bytes()
    policy = _write_policy(tmp_path, "renamed", data=data)  # its digest matches
    with pytest.raises(PolicyError, match="expected the arrays w0"):
        load_policy(policy, load_catalog())
    assert not marker.exists()


@pytest.mark.parametrize("verb", [("evaluate", "--json", "--logdir", "{d}/ev"),
                                  ("daemon", "--port", "0", "--run-dir", "{d}/run", "--model", "noop", *APPS)])
def test_the_commands_refuse_an_sb3_zip_unopened(verb: tuple[str, ...], tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    _evil_sb3_zip(tmp_path / "evil.zip", marker)
    shutil.copy(sidecar_path(DEFAULT_POLICY), tmp_path / "evil.json")
    argv = [verb[0], "--policy", str(tmp_path / "evil.zip"), *(a.replace("{d}", str(tmp_path)) for a in verb[1:])]
    run = subprocess.run([sys.executable, "-m", "jigsaw.scripts.cli", *argv], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "an SB3 checkpoint, not a policy" in run.stderr and run.stdout == ""
    assert not marker.exists() and not (tmp_path / "run").exists()  # the daemon stopped before it made its run dir


def test_an_object_array_is_refused_unrun_though_its_digest_matches(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = np.full((64, 95), Evil(marker), dtype=object)
    policy = _write_policy(tmp_path, arrays=lambda a: {**a, "w0": evil})
    with pytest.raises(PolicyError, match=r"array w0 is object \(64, 95\), expected float64"):
        load_policy(policy, load_catalog())
    assert not marker.exists()
    with np.load(policy, allow_pickle=True) as npz:  # the file is what it claims: unpickled, it runs
        npz["w0"]
    assert marker.exists()


def test_the_weights_must_match_their_digest(tmp_path: Path) -> None:
    policy = _write_policy(tmp_path)
    data = bytearray(policy.read_bytes())
    data[len(data) // 2] ^= 1
    policy.write_bytes(bytes(data))
    with pytest.raises(PolicyError, match="sha256 differs") as e:
        load_policy(policy, load_catalog())
    assert e.value.file == str(policy) and e.value.field == "actor.sha256"


@pytest.mark.parametrize(("arrays", "message"), [
    (lambda a: {k: v for k, v in a.items() if k != "b2"}, "expected the arrays w0, b0, w1, b1, w2, b2"),
    (lambda a: {**a, "extra": np.zeros(3)}, "expected the arrays"),
    (lambda a: {**a, "w1": a["w1"][:, :63]}, r"array w1 is float64 \(64, 63\), expected float64 \(64, 64\)"),
    (lambda a: {**a, "b0": a["b0"].astype(np.float32)}, "array b0 is float32"),
    (lambda a: {**a, "w2": np.where(np.eye(*a["w2"].shape) > 0, np.nan, a["w2"])}, "non-finite"),
    (lambda a: {**a, "b1": np.full(64, np.inf)}, "non-finite"),
])
def test_wrong_arrays_are_refused(arrays: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=message):
        load_policy(_write_policy(tmp_path, arrays=arrays), load_catalog())


def test_truncated_and_oversized_weights_are_refused(tmp_path: Path) -> None:
    whole = _write_policy(tmp_path).read_bytes()
    for cut in (len(whole) // 2, 100, 0):
        with pytest.raises(PolicyError, match="corrupt weights"):
            load_policy(_write_policy(tmp_path, data=whole[:cut]), load_catalog())  # digest made to match
    with pytest.raises(PolicyError, match=r"more than the \d+ its declared shapes take"):
        load_policy(_write_policy(tmp_path, data=whole + bytes(1 << 20)), load_catalog())


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(meta: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            meta = meta[key]
        if value is KeyError:
            del meta[last]
        else:
            meta[last] = value
    return edit


@pytest.mark.parametrize(("edit", "message"), [
    (_set("format", 1), "format 1, expected 2"),
    (_set("format", True), "format True"),
    (_set("actor", KeyError), "actor: missing"),
    (_set("actor", []), "actor: missing, or not a JSON object"),
    (_set("actor.activation", "sigmoid"), "actor.activation"),
    (_set("actor.layers", [[64, 95], [64, 63], [99, 64]]), "do not chain"),
    (_set("actor.layers", [[64, 95], [True, 64], [99, 64]]), "actor.layers"),
    (_set("actor.layers", [[99, 95]]), "expected 2 to 16"),
    (_set("actor.layers", "64x64"), "actor.layers"),
    (_set("actor.layers", [[1 << 20, 95], [1 << 20, 1 << 20], [99, 1 << 20]]), f"more than {MAX_ACTOR_PARAMS}"),
    (_set("actor.layers", [[64, 96], [64, 64], [99, 64]]), "observation or action size"),
    (_set("actor.sha256", 12), "actor.sha256"),
    (_set("actor.sha256", "0" * 63), "actor.sha256"),
    (_set("version", None), "version: missing"),
    (_set("catalog_fingerprint", KeyError), "catalog_fingerprint: missing"),
    (_set("catalog_fingerprint", "0" * 16), "another catalog"),
    (_set("env_config", ["apps"]), "env_config"),
    (_set("env_config.apps", 7), "env_config"),
    (_set("env_config.gpus", "four"), "gpus"),
    (_set("env_config.colour", "red"), "unknown key"),
])
def test_bad_settings_are_refused(edit: Callable[[dict[str, Any]], None], message: str, tmp_path: Path) -> None:
    policy = _write_policy(tmp_path, edit=edit)
    with pytest.raises(JigsawError, match=message) as e:
        load_policy(policy, load_catalog())
    assert e.value.file in (str(policy), str(sidecar_path(policy)))


@pytest.mark.parametrize(("text", "message"), [
    (b"\xff\xfe\x00 not utf-8", "not UTF-8"), (b"{", "not valid JSON"), (b"[]", "expected a JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"), (b"", "not valid JSON"),
])
def test_unreadable_settings_are_refused(text: bytes, message: str, tmp_path: Path) -> None:
    policy = _write_policy(tmp_path)
    sidecar_path(policy).write_bytes(text)
    with pytest.raises(PolicyError, match=message):
        load_policy(policy, load_catalog())


def test_missing_files_are_refused(tmp_path: Path) -> None:
    policy = _write_policy(tmp_path)
    sidecar_path(policy).unlink()
    with pytest.raises(PolicyError, match="its settings file is missing"):
        load_policy(policy, load_catalog())
    for named in (tmp_path / "nothing.npz", tmp_path / "nothing", tmp_path / "nothing.json", tmp_path, "", "/"):
        with pytest.raises(PolicyError, match="no such policy file"):
            load_policy(named, load_catalog())


def test_the_shipped_policy_loads_by_any_of_its_names_without_sb3() -> None:
    code = ("import sys; from jigsaw.agents.ppo import DEFAULT_POLICY, load_policy; "
            "from jigsaw.profiles.catalog import load_catalog; "
            "[load_policy(p, load_catalog()) for p in (DEFAULT_POLICY, DEFAULT_POLICY.with_suffix('.json'), "
            "DEFAULT_POLICY.with_suffix(''))]; print(sorted({'torch', 'stable_baselines3'} & set(sys.modules)))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.strip() == "[]"

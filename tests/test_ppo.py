"""Training writes a policy and its settings; loading refuses what it cannot use; a loaded policy proposes plans
through the controller. (How well a policy learns is measured by `jigsaw evaluate`, not here.)"""

from __future__ import annotations

import hashlib
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import yaml

from jigsaw.agents.controller import Controller
from jigsaw.agents.ppo import (
    DEFAULT_POLICY,
    MODEL_FILE,
    PolicyError,
    TrainSettings,
    load_checkpoint,
    load_policy,
    sidecar_path,
)
from jigsaw.env import ENV_ID
from jigsaw.env.gym_env import JigsawEnv
from jigsaw.profiles.catalog import load_catalog
from jigsaw.profiles.errors import ConfigError
from jigsaw.scripts.cli import main

TINY = {"n_timesteps": 256, "n_envs": 1, "env_kwargs": {"gpus": 4, "episode_intervals": 5}, "n_steps": 128,
        "batch_size": 64, "n_epochs": 1, "eval_freq": 128, "eval_episodes": 1, "checkpoint_freq": 10**6}


@pytest.fixture(scope="module")
def train_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A tiny `jigsaw train` as a user runs it: the policy it wrote, its stdout and its stderr."""
    out = tmp_path_factory.mktemp("policy") / "tiny.zip"  # the suffix becomes .npz
    (out.parent / "tiny.yml").write_text(yaml.safe_dump({ENV_ID: TINY}))
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        assert main(["train", "--hyperparams", str(out.parent / "tiny.yml"), "--out", str(out), "--seed", "1",
                     "--logdir", str(out.parent / "tb"), "--no-progress"]) == 0
    summary = json.loads(stdout.getvalue())  # stdout is the summary alone
    assert summary["timesteps"] >= 256 and summary["out"] == str(out.with_suffix(".npz"))
    assert not out.exists() and (out.parent / "tiny_run" / MODEL_FILE).exists()  # SB3's model: a training artefact
    return out.with_suffix(".npz"), stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def trained(train_run: tuple[Path, str, str]) -> Path:
    return train_run[0]


def test_train_ends_saying_which_files_it_wrote(train_run: tuple[Path, str, str]) -> None:
    policy, _, err = train_run
    run_dir, tb = policy.parent / "tiny_run", policy.parent / "tb"
    assert err.rstrip().splitlines()[-1] == (
        f"wrote {policy} and {sidecar_path(policy)} (the policy), {run_dir}/ (SB3's model.zip and checkpoints/) and "
        f"TensorBoard logs in {tb}/ (tensorboard --logdir {tb})")
    assert policy.exists() and sidecar_path(policy).exists() and (run_dir / MODEL_FILE).exists() and tb.is_dir()


def test_trained_policy_loads_and_proposes(trained: Path) -> None:
    catalog = load_catalog()
    meta = json.loads(sidecar_path(trained).read_text())
    assert meta["env_config"]["gpus"] == 4 and meta["catalog_fingerprint"] and meta["format"] == 2
    assert "traces" not in meta["env_config"]  # the default traces: no path of this checkout in the sidecar
    assert any((trained.parent / "tb").rglob("events.out.tfevents.*"))
    policy = load_policy(trained, catalog)
    ctl = Controller(catalog, "h100", list(policy.env_config.apps), 4, proposer=policy.proposer,
                     policy_version=policy.version)
    for _ in range(3):
        d = ctl.decide({"social_media": 300.0, "traffic_analysis": 100.0, "ar_assistant": 50.0})
        assert d.plan is not None and d.source in ("policy", "ilp") and d.policy_version == policy.version
        assert np.isfinite(d.policy_slices)  # the policy's plan always fits the catalog; the check judges it


def test_refuses_another_catalog_and_corrupt_files(trained: Path, tmp_path: Path) -> None:
    catalog = load_catalog()
    other = tmp_path / "other.npz"
    other.write_bytes(trained.read_bytes())
    meta = json.loads(sidecar_path(trained).read_text())
    sidecar_path(other).write_text(json.dumps({**meta, "catalog_fingerprint": "0" * 16}))
    with pytest.raises(PolicyError, match="another catalog"):
        load_policy(other, catalog)
    other.write_bytes(b"not a zip")
    actor = {**meta["actor"], "sha256": hashlib.sha256(b"not a zip").hexdigest()}
    sidecar_path(other).write_text(json.dumps({**meta, "actor": actor}))
    with pytest.raises(PolicyError, match="corrupt weights"):
        load_policy(other, catalog)
    sidecar_path(other).write_text("{")
    with pytest.raises(PolicyError, match="not valid JSON"):
        load_policy(other, catalog)
    with pytest.raises(PolicyError, match="no such policy"):
        load_policy(tmp_path / "missing.npz", catalog)
    with pytest.raises(PolicyError, match="no such policy"):
        load_policy(tmp_path / "missing.zip", catalog)


def test_export_gives_the_checkpoint_s_actions(trained: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`export-policy` of the run dir's SB3 model (its settings found beside the run dir) acts as SB3 does."""
    checkpoint = trained.parent / "tiny_run" / MODEL_FILE
    assert main(["export-policy", str(checkpoint), "--out", str(tmp_path / "exported.npz")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["out"] == str(tmp_path / "exported.npz")
    assert err == f"wrote {tmp_path / 'exported.npz'} and {tmp_path / 'exported.json'}\n"
    exported = load_policy(tmp_path / "exported.npz", load_catalog())
    meta, trained_meta = (json.loads(sidecar_path(p).read_text()) for p in (tmp_path / "exported.npz", trained))
    assert {k: v for k, v in meta.items() if k != "actor"} == {k: v for k, v in trained_meta.items() if k != "actor"}
    model = load_checkpoint(checkpoint)
    env = JigsawEnv(exported.env_config.to_dict())
    obs, _ = env.reset(seed=3)
    for _ in range(20):
        mask = env.action_masks()
        expected, _ = model.predict(obs, action_masks=mask, deterministic=True)
        ours = exported.actor.act(obs, mask, env.action_space.nvec)
        assert (ours == expected).all()
        obs, _, terminated, truncated, _ = env.step(ours)
        if terminated or truncated:
            obs, _ = env.reset()
    with pytest.raises(PolicyError, match="not an SB3 checkpoint"):
        load_checkpoint(trained)


def test_bad_hyperparameters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "h.yml"
    bad.write_text("jigsaw/JigsawServe-v0: {n_timesteps: lots}\n")
    with pytest.raises(ConfigError):
        TrainSettings.from_yaml(bad)
    bad.write_text("other-env: {}\n")
    assert main(["train", "--hyperparams", str(bad), "--out", str(tmp_path / "p.npz")]) == 2
    assert "no entry for jigsaw/JigsawServe-v0" in capsys.readouterr().err
    bad.write_text("jigsaw/JigsawServe-v0: {not_a_ppo_argument: 1, n_timesteps: 10}\n")
    assert main(["train", "--hyperparams", str(bad), "--out", str(tmp_path / "p.npz"), "--no-progress",
                 "--logdir", str(tmp_path / "tb")]) == 2


@pytest.mark.parametrize("gpus", [2, 4, 16])
def test_the_shipped_policy_loads_and_decides_on_held_out_demand(gpus: int) -> None:
    """At each end of its range and at the default cluster, on the held-out demand scaled to the cluster."""
    catalog = load_catalog()
    policy = load_policy(DEFAULT_POLICY, catalog)
    config = policy.env_config
    assert config.apps == ("social_media", "traffic_analysis", "ar_assistant") and gpus in policy.sizes
    decisions = []
    env = JigsawEnv(config.to_dict() | {"part": "held_out", "gpus": gpus, "max_gpus": None})
    for demand in env.interval_demand:  # each trace, as evaluate
        policy.reset()
        ctl = Controller(catalog, config.gpu_type, list(config.apps), gpus, proposer=policy.proposer,
                         policy_version=policy.version)
        decisions += [ctl.decide(dict(zip(config.apps, rates.tolist(), strict=True))) for rates in demand[:6]]
    assert all(d.plan is not None and d.source in ("policy", "ilp") for d in decisions)
    assert all(d.policy_version == policy.version and np.isfinite(d.policy_slices) for d in decisions)
    accepted = [d for d in decisions if d.source == "policy"]
    assert accepted, [d.verdict for d in decisions]  # a trained policy's plans pass the safety check
    assert all(d.policy_slices <= gpus * catalog.gpu("h100").compute_slices for d in accepted)


def test_after_a_fallback_the_policy_continues_from_the_plan_in_force() -> None:
    catalog = load_catalog()
    policy = load_policy(DEFAULT_POLICY, catalog)
    config, space = policy.env_config, policy.for_gpus(4).space
    rates = {"social_media": 300.0, "traffic_analysis": 150.0, "ar_assistant": 60.0}
    ilp_plan = Controller(catalog, config.gpu_type, list(config.apps), 4).decide(rates).plan
    nearest = space.levels_of(ilp_plan)
    names = [catalog.app(a).task(t).variants[v].name for (a, t), v in zip(space.tasks, nearest.variant, strict=True)]
    assert names == [ilp_plan.apps[a][t].variant for a, t in space.tasks]
    assert ((nearest.weight >= 1) & (nearest.weight <= 5)).all() and (nearest.provision == 0).all()
    history = np.tile(np.array([list(rates.values())]), (2, 1))
    own = policy.proposer(history, rates, None, 4)
    policy.proposer(history, rates, own, 4)  # its own plan applied: it steps on from its levels
    policy.proposer(history, rates, ilp_plan, 4)  # the ILP's plan applied: one step from the ILP's levels
    assert (np.abs(policy.levels.variant - nearest.variant) <= 1).all()

"""Training and loading the policy: MaskablePPO (sb3-contrib) on ``jigsaw/JigsawServe-v0``.

``train`` runs vectorised environments (SubprocVecEnv for more than one), logs SB3's scalars plus ours
(per episode: cost as slices over the cluster, violation, accuracy, and the share of steps whose plan the
controller's check would refuse -- the fallback rate) to TensorBoard, evaluates periodically on fixed episodes of
the training part (the held-out part is left to ``jigsaw evaluate``) and keeps the best model, writes checkpoints,
and resumes from one. Exploration starts around the no-change action (NO_CHANGE_PRIOR: every app holds the workers
in force at the middle capacity, the ``zero_actor`` ablation), which the policy must learn to improve on.
Hyperparameters come from a YAML file in rl-zoo3's layout (``{env id: {n_timesteps, policy, n_envs, env_kwargs,
...PPO args}}``).

Its output is the deployable policy: the actor's weights as ``<name>.npz`` plus a JSON sidecar (``<name>.json``)
naming the catalog fingerprint, the environment settings, the version and the weights' digest
(``jigsaw.agents.policy_file``); ``load_policy`` refuses a policy trained for another catalog, and never executes
anything it reads. SB3's own model (``<name>_run/model.zip``, and its checkpoints) is a training artefact: loading
one unpickles it, so only ``--resume`` and ``export_policy`` do, on files the user trusts. A loaded ``Policy``
acts without SB3 (two small matrix products; ~10 us), and its ``proposer`` plugs into
``jigsaw.agents.controller.Controller``.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import time
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from jigsaw.agents.policy_file import (
    ACTIVATIONS,
    FORMAT,
    ActorWeights,
    PolicyError,
    actor_spec,
    policy_files,
    read_actor,
    read_settings,
    write_policy,
)
from jigsaw.env import ENV_ID
from jigsaw.env.gym_env import DEFAULT_TRACES, EnvConfig, JigsawEnv
from jigsaw.env.plan import Plan
from jigsaw.env.propose import Proposer
from jigsaw.env.space import DecisionSpace, Decoded, Levels
from jigsaw.profiles.catalog import Catalog, load_catalog
from jigsaw.profiles.documents import read_document
from jigsaw.profiles.errors import ConfigError, JigsawError, ensure_writable_dir
from jigsaw.profiles.progress import progress_bar

DEFAULT_HYPERPARAMS = Path(__file__).with_name("hyperparams") / "maskable_ppo.yml"
DEFAULT_POLICY = Path(__file__).with_name("policies") / "default.npz"  # shipped; trained by the default `jigsaw train`
MODEL_FILE = "model.zip"  # in the run dir: the SB3 model the policy was exported from


@dataclass(frozen=True)
class TrainSettings:
    """One training run: the YAML's entry for ENV_ID, with command-line overrides applied."""

    n_timesteps: int = 300_000
    n_envs: int = 2
    policy: str = "MlpPolicy"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    ppo_kwargs: dict[str, Any] = field(default_factory=dict)  # MaskablePPO's own arguments
    eval_freq: int = 10_000  # env steps (over all envs) between held-out evaluations
    eval_episodes: int = 6
    checkpoint_freq: int = 50_000

    def __post_init__(self) -> None:
        """Refuse settings no run can use, before any environment process starts."""
        for key in ("n_timesteps", "n_envs", "eval_freq", "eval_episodes", "checkpoint_freq"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{value!r} is not a whole number >= 1", field=key, fix="give a whole number >= 1")
        if self.n_envs > MAX_ENVS:
            raise ConfigError(f"{self.n_envs} environments (one process each)", field="n_envs",
                              fix=f"give at most {MAX_ENVS}; a few per CPU core is plenty")
        if not isinstance(self.env_kwargs, dict):
            raise ConfigError(f"expected a mapping, got {self.env_kwargs!r}", field="env_kwargs",
                              fix="give the environment's settings as key: value")
        for key, value in self.ppo_kwargs.items():
            if key in _PPO_RANGES:
                low, high, whole = _PPO_RANGES[key]
                number = not isinstance(value, bool) and isinstance(value, int if whole else int | float)
                if not (number and low <= value <= high):
                    raise ConfigError(f"{value!r} is out of range", field=key,
                                      fix=f"give a {'whole ' if whole else ''}number in [{low:g}, {high:g}]")

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainSettings:
        path = Path(path)
        doc = read_document(path, ConfigError, "hyperparameter YAML")
        entry = doc.get(ENV_ID, doc.get(ENV_ID.split("/")[-1])) if isinstance(doc, dict) else None
        if not isinstance(entry, dict):
            raise ConfigError(f"no entry for {ENV_ID}", file=str(path), field=ENV_ID,
                              fix=f"write the hyperparameters under the key '{ENV_ID}' (rl-zoo3 layout)")
        own = {f.name for f in fields(cls)} - {"ppo_kwargs"}
        values = {k: v for k, v in entry.items() if k in own}
        ppo = {k: v for k, v in entry.items() if k not in own}
        for key in ("n_timesteps", "n_envs", "eval_freq", "eval_episodes", "checkpoint_freq"):
            if isinstance(values.get(key), float | str):  # YAML reads 1e5 as a string, 1.5e5 as a float
                with contextlib.suppress(ValueError):
                    number = float(values[key])
                    values[key] = int(number) if number.is_integer() else number
        try:
            settings = cls(**values, ppo_kwargs=ppo)
        except ConfigError as e:
            raise ConfigError(e.message, file=str(path), field=e.field, fix=e.fix) from None
        EnvConfig.from_dict(settings.env_kwargs, str(path))  # validate now, not in a subprocess
        return settings


MAX_ENVS = 256
# MaskablePPO's numeric arguments: (low, high, whole number); the rest go to it unchecked.
_PPO_RANGES: dict[str, tuple[float, float, bool]] = {
    "n_steps": (2, 1e9, True), "batch_size": (2, 1e9, True), "n_epochs": (1, 1e6, True),
    "learning_rate": (1e-12, 10.0, False), "gamma": (0.0, 1.0, False), "gae_lambda": (0.0, 1.0, False),
    "ent_coef": (0.0, 1e3, False), "vf_coef": (0.0, 1e3, False), "clip_range": (1e-6, 1e3, False),
    "max_grad_norm": (1e-6, 1e6, False)}


def catalog_fingerprint(catalog: Catalog, config: EnvConfig) -> str:
    """A hash of everything in the catalog the policy's decisions depend on: the apps' graphs, SLOs and
    variants, and the profile tables of their tasks on the GPU type."""
    h = hashlib.sha256()
    gpu = catalog.gpu(config.gpu_type)
    h.update(repr([(p.name, p.compute_slices, p.sms) for p in gpu.mig_profiles]).encode())
    for name in config.apps:
        app = catalog.app(name)
        h.update(repr((app.name, app.latency_slo_ms, app.accuracy_slo, sorted(app.edges.items(), key=str),
                       [(t.name, [(v.name, round(v.accuracy, 9)) for v in t.variants]) for t in app.tasks])).encode())
        for t in app.task_names:
            table = catalog.table(gpu.name, name, t)
            for arr in (table.p95_ms, table.p50_ms, table.throughput_rps, table.kind):
                h.update(np.nan_to_num(np.asarray(arr, dtype=float), nan=-1.0).round(6).tobytes())
    return h.hexdigest()[:16]


# ---- acting without SB3

COLD_START_STEPS = 10  # a first decision's steps at its forecast (``Policy.proposer``)
NO_CHANGE_PRIOR = 2.0  # logit added to each head's no-change choice at the start of training (e^2: 7.4x as likely)


def export_actor(model: Any) -> ActorWeights:
    """The actor of a MaskablePPO MlpPolicy as numpy arrays (float64)."""
    policy = model.policy
    layers = [m for m in policy.mlp_extractor.policy_net if hasattr(m, "weight")]
    activation = policy.activation_fn.__name__.lower()
    if activation not in ACTIVATIONS:
        raise PolicyError(f"activation {policy.activation_fn.__name__}", field="policy_kwargs.activation_fn",
                          fix=f"train with one of {', '.join(ACTIVATIONS)}")
    as_np = lambda t: t.detach().cpu().numpy().astype(np.float64)  # noqa: E731
    return ActorWeights(tuple((as_np(m.weight), as_np(m.bias)) for m in layers),
                        (as_np(policy.action_net.weight), as_np(policy.action_net.bias)), activation)


class Policy:
    """A trained policy bound to a catalog: proposes plans from measured demand (``proposer``) on any cluster size
    it was trained for (``sizes``)."""

    def __init__(self, actor: Any, env_config: EnvConfig, catalog: Catalog, version: str) -> None:
        """:param actor: what maps an observation, its action mask and the heads' sizes to an action
        (``ActorWeights.act``)"""
        self.actor, self.env_config, self.version, self.catalog = actor, env_config, version, catalog
        self.sizes = range(env_config.gpus, (env_config.max_gpus or env_config.gpus) + 1)
        self._proposers: dict[int, Proposer] = {}
        self.reset()

    def reset(self) -> None:
        self.gpus: int | None = None  # the cluster the state below was proposed for
        self.levels: Levels | None = None
        self.decoded: Decoded | None = None  # the plan last proposed
        self.proposed: Plan | None = None  # the last plan this policy proposed

    def with_actor(self, actor: Any) -> Policy:
        """This policy's proposer with another actor (the ablations of ``jigsaw.agents.baselines``); the proposers
        (stateless, their kernels warm) are shared."""
        twin = Policy(actor, self.env_config, self.catalog, f"{self.version} with {type(actor).__name__}")
        twin._proposers = self._proposers
        return twin

    def for_gpus(self, gpus: int) -> Proposer:
        """The proposer on a cluster of ``gpus`` (built once per size); call it before timing decisions on that
        size, or the first decision holds the build and the kernels' compile or load (seconds)."""
        if gpus not in self._proposers:
            c = self.env_config
            proposer = Proposer(DecisionSpace(self.catalog, c.gpu_type, list(c.apps), gpus), c.polish)
            proposer.warm_up()  # the kernels' compile or load, here rather than in the first decision's time
            self._proposers[gpus] = proposer
        return self._proposers[gpus]

    def check_serves(self, apps: tuple[str, ...], gpus: int, gpu_type: str, source: str) -> None:
        """Refuse a cluster other than those the policy was trained for (its observation and actions are per task
        of those apps; its sizes, those it learned to serve)."""
        trained = self.env_config
        if (tuple(apps), gpu_type) != (tuple(trained.apps), trained.gpu_type) or gpus not in self.sizes:
            raise PolicyError(f"the policy was trained for {','.join(trained.apps)} on {_sizes(self.sizes)} x "
                              f"{trained.gpu_type}", file=source, field="--app/--gpus/--gpu-type",
                              fix=f"run with --app {','.join(trained.apps)}, --gpus in {_sizes(self.sizes)}, "
                                  f"--gpu-type {trained.gpu_type}, or leave them out where the command allows")

    def proposer(self, history: np.ndarray, forecast: Mapping[str, float], current: Plan | None, gpus: int) -> Plan:
        """The policy's plan for the next interval on ``gpus`` GPUs (``jigsaw.env.propose``, as in training). It
        continues from its own last proposal (its levels) when the controller applied it, else from the levels
        nearest the plan in force (the ILP's, after a fallback): from its own refused plan it stepped on squeezed
        plans, a single level at a time, for up to 10 intervals. With neither (a first decision, or a cluster that
        changed size), it starts from ``DecisionSpace.initial`` and takes COLD_START_STEPS steps at this forecast:
        one step from the most accurate variants was refused at two of the three held-out segments' starts. The
        workers it may hold are those of the plan in force. A size outside ``sizes`` raises: the controller
        re-plans with the ILP."""
        if gpus not in self.sizes:
            raise PolicyError(f"trained for {_sizes(self.sizes)} GPUs, the cluster has {gpus}", field="--gpus",
                              fix="the ILP plans this cluster; train a policy for its size")
        proposer = self.for_gpus(gpus)
        space = proposer.space
        f = np.array([forecast[a] for a in space.apps])
        if gpus != self.gpus:
            self.levels, self.gpus = None, gpus
        own = current is not None and current == self.proposed and self.levels is not None
        in_force = self.decoded if own else None if current is None else proposer.decoded_of(current, f)
        start, steps = (space.initial(), COLD_START_STEPS) if self.levels is None else (self.levels, 1)
        if current is not None and not own:
            with contextlib.suppress(KeyError, ValueError):  # a plan of other apps (a daemon's --plan): our own
                start, steps = space.levels_of(current), 1
        if start is not self.levels or self.decoded is None:
            self.levels, self.decoded, _ = space.repair(start, start, f)
        for _ in range(steps):
            metrics = space.evaluate(self.decoded, history[-1])
            obs = proposer.observation(self.levels, self.decoded, metrics, space.demand_features(history, f),
                                       self.decoded if in_force is None else in_force, f)
            action = self.actor.act(obs, proposer.masks(), proposer.nvec)
            proposal = proposer.step(self.levels, in_force, action, f)
            self.levels, self.decoded = proposal.levels, proposal.decoded
        self.proposed = proposer.plan(self.levels, self.decoded)
        return self.proposed


def _sizes(sizes: range) -> str:
    return f"{sizes.start}" if len(sizes) == 1 else f"{sizes.start}..{sizes.stop - 1}"


def sidecar_path(policy_path: Path) -> Path:
    return policy_path.with_suffix(".json")


def load_policy(path: str | Path, catalog: Catalog) -> Policy:
    """Load a policy: its weights (``.npz``; its ``.json`` or bare name also do) and its settings. Nothing read is
    executed: an SB3 ``.zip`` is refused unopened. Refuses a corrupt pair, or one trained for another catalog."""
    files = policy_files(path)
    meta = read_settings(files.settings)
    source = str(files.settings)
    spec = actor_spec(meta, source)
    try:
        config = EnvConfig.from_dict(meta["env_config"], source)
    except (TypeError, ValueError) as e:
        raise PolicyError(f"bad environment settings ({e})", file=source, field="env_config",
                          fix="restore the .json written with the policy, or re-train") from None
    try:
        expected = catalog_fingerprint(catalog, config)
    except JigsawError as e:
        raise PolicyError(f"trained for apps or a GPU type this catalog lacks ({e.message})", file=str(files.weights),
                          fix="use the catalog it was trained with, or re-train") from None
    if expected != meta["catalog_fingerprint"]:
        raise PolicyError(f"trained for another catalog (fingerprint {meta['catalog_fingerprint']}, this catalog "
                          f"{expected})", file=str(files.weights),
                          fix="use the catalog it was trained with, or re-train with `jigsaw train`")
    proposer = Proposer(DecisionSpace(catalog, config.gpu_type, list(config.apps), config.gpus))
    if (spec.observation_size, spec.n_logits) != (proposer.observation_size, int(proposer.nvec.sum())):
        raise PolicyError("its observation or action size does not match this version's environment", file=source,
                          field="actor.layers", fix="re-train with this version")
    return Policy(read_actor(files.weights, spec), config, catalog, meta["version"])


def load_checkpoint(path: Path, **kwargs: Any) -> Any:
    """An SB3 MaskablePPO checkpoint. TRUSTED INPUT ONLY: SB3 unpickles it, which runs any code it holds."""
    from sb3_contrib import MaskablePPO  # torch is only needed here and in training

    _check_checkpoint_path(path)
    try:
        return MaskablePPO.load(str(path), device="cpu", **kwargs)
    except (zipfile.BadZipFile, ValueError, KeyError, RuntimeError, EOFError, OSError, AssertionError) as e:
        raise PolicyError(f"corrupt checkpoint ({type(e).__name__}: {e})"[:300].replace("\n", " "), file=str(path),
                          fix="give an SB3 .zip written by `jigsaw train`") from None


def _check_checkpoint_path(path: Path) -> None:
    if path.suffix.lower() in (".npz", ".json"):
        raise PolicyError("a deployable policy, not an SB3 checkpoint", file=str(path),
                          fix="give the SB3 .zip: NAME_run/model.zip or one under NAME_run/checkpoints/")
    if not path.is_file():
        raise PolicyError("no such checkpoint", file=str(path),
                          fix="give an SB3 .zip written by `jigsaw train` (NAME_run/model.zip, NAME_run/checkpoints/)")


def export_policy(checkpoint: Path, out: Path, settings: Path | None = None) -> dict[str, Any]:
    """Write the deployable policy (``out`` as .npz, its .json beside it) of an SB3 checkpoint. TRUSTED INPUT ONLY:
    loading the checkpoint unpickles it, which runs any code it holds. ``settings`` (default: the .json beside the
    checkpoint, or NAME.json for one in NAME_run/; format 1 or 2) gives the sidecar's catalog fingerprint,
    environment settings and version."""
    _check_checkpoint_path(checkpoint)
    meta = read_settings(settings or _checkpoint_settings(checkpoint), formats=(1, FORMAT))
    ensure_writable_dir(out.parent, "--out")
    written = write_policy(out, export_actor(load_checkpoint(checkpoint)), meta)
    return {"out": str(written), "settings": str(sidecar_path(written)), "version": meta["version"]}


def _checkpoint_settings(checkpoint: Path) -> Path:
    """The settings of a checkpoint: the .json beside it, else, in a run dir ``NAME_run/`` (or its checkpoints/),
    the policy's ``NAME.json`` beside the run dir."""
    beside = checkpoint.with_suffix(".json")
    if beside.exists():
        return beside
    for run_dir in (checkpoint.parent, checkpoint.parent.parent):
        named = run_dir.parent / (run_dir.name.removesuffix("_run") + ".json")
        if run_dir.name.endswith("_run") and named.is_file():
            return named
    return beside


# ---- training


def _make_env(config: dict[str, Any], rank: int, seed: int) -> Any:
    def init() -> Any:
        from stable_baselines3.common.monitor import Monitor

        env = Monitor(JigsawEnv(config))
        env.reset(seed=seed + rank)
        return env
    return init


class _Progress:
    """A tqdm bar over timesteps with an ETA (SB3's own bar needs `rich`)."""

    def __init__(self, total: int, start: int) -> None:
        self.bar = progress_bar(total=total, initial=start, unit="step", desc="training")

    def update(self, now: int) -> None:
        self.bar.update(now - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def train(settings: TrainSettings, out: Path, *, catalog_path: str | None = None, seed: int = 0,
          logdir: Path | None = None, resume: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train, write the policy ``out`` (.npz, whatever suffix is given) and its sidecar, return a summary. SB3's
    model goes to the run dir ``<out stem>_run/`` (``model.zip``, the one exported; ``checkpoints/``). ``resume``
    is such a checkpoint: TRUSTED INPUT ONLY, loading it unpickles it. Ctrl-C saves a checkpoint first."""
    import torch
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    torch.set_num_threads(1)  # a small MLP: more threads only spin against the env processes on a 2-core machine
    env_doc = {**settings.env_kwargs, "catalog": catalog_path, "part": "train", "mode": "perf"}
    config = EnvConfig.from_dict(env_doc, "env_kwargs")
    catalog = load_catalog(catalog_path)
    out = out.with_suffix(".npz")
    run_dir = out.parent / (out.stem + "_run")
    for d, flag in ((out.parent, "--out"), (run_dir, "--out"), *(((logdir, "--logdir"),) if logdir else ())):
        ensure_writable_dir(d, flag)
    if resume is not None:
        _check_checkpoint_path(resume)
    JigsawEnv(config).close()  # a bad trace or setting is one line here, not a traceback from a subprocess
    env_fns = [_make_env(config.to_dict(), i, seed) for i in range(settings.n_envs)]
    venv = SubprocVecEnv(env_fns) if settings.n_envs > 1 else DummyVecEnv(env_fns)
    # the best model is chosen on fixed episodes of the training part: the held-out part is the evaluation's alone
    eval_doc = {**config.to_dict(), "random_levels": False}
    eval_env = DummyVecEnv([_make_env(eval_doc, 10_000, seed)])
    if resume is not None:
        try:
            model = load_checkpoint(resume, env=venv, tensorboard_log=str(logdir) if logdir else None)
        except PolicyError:
            venv.close()
            raise
    else:
        try:
            model = MaskablePPO(settings.policy, venv, seed=seed, device="cpu", verbose=0,
                                tensorboard_log=str(logdir) if logdir else None, **settings.ppo_kwargs)
        except (TypeError, ValueError) as e:
            venv.close()
            raise ConfigError(f"MaskablePPO refused the hyperparameters ({e})", field="hyperparameters",
                              fix="use MaskablePPO's argument names and types") from None
        with torch.no_grad():  # exploration starts around the no-change action (every app follows at the middle level)
            heads = np.cumsum((0, *venv.action_space.nvec[:-1]))
            model.policy.action_net.bias[heads + venv.action_space.nvec // 2] += NO_CHANGE_PRIOR
    gpu_slices = catalog.gpu(config.gpu_type).compute_slices
    bar = _Progress(settings.n_timesteps, model.num_timesteps) if progress else None

    class Ours(BaseCallback):
        """Per-episode means of our metrics (cost as slices over the cluster), and the progress bar."""

        def _on_training_start(self) -> None:
            self.sums = np.zeros((settings.n_envs, len(_TAGS) + 1))

        def _on_step(self) -> bool:
            for i, (info, done) in enumerate(zip(self.locals["infos"], self.locals["dones"], strict=True)):
                self.sums[i] += [info["slices"] / (info["gpus_cluster"] * gpu_slices), info["violation"],
                                 info["accuracy"], info["unsafe"], 1.0]
                if done:
                    for tag, value in zip(_TAGS, self.sums[i, :-1] / self.sums[i, -1], strict=True):
                        self.logger.record_mean(f"jigsaw/{tag}", float(value))
                    self.sums[i] = 0.0
            if bar is not None:
                bar.update(self.num_timesteps)
            return True

    class SameEpisodes(MaskableEvalCallback):
        """Every evaluation on the same held-out episodes (reseeded before each), so that the best model is
        chosen by what it learned, not by which episodes the evaluation happened to draw."""

        def _on_step(self) -> bool:
            if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
                self.eval_env.seed(seed + 10_000)
            return super()._on_step()

    per_env = max(1, settings.eval_freq // settings.n_envs)
    callbacks = CallbackList([
        Ours(),
        SameEpisodes(eval_env, best_model_save_path=str(run_dir), log_path=str(run_dir), eval_freq=per_env,
                     n_eval_episodes=settings.eval_episodes, deterministic=True, verbose=0),
        CheckpointCallback(max(1, settings.checkpoint_freq // settings.n_envs), str(run_dir / "checkpoints"),
                           name_prefix="jigsaw"),
    ])
    start = time.perf_counter()
    interrupted = False
    previous = signal.getsignal(signal.SIGINT)
    try:
        with warnings.catch_warnings():
            # SB3 warns on every run that the evaluation's env is not the training's kind: by design, training
            # steps its envs in subprocesses and the evaluation one env in this process (no pipes, same episodes)
            warnings.filterwarnings("ignore", message="Training and eval env are not of the same type")
            model.learn(settings.n_timesteps - (model.num_timesteps if resume else 0), callback=callbacks,
                        reset_num_timesteps=resume is None, tb_log_name=out.stem)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGINT, previous)
        if bar is not None:
            bar.close()
    if interrupted:
        checkpoint = run_dir / "checkpoints" / f"interrupted_{model.num_timesteps}_steps.zip"
        model.save(str(checkpoint))
        venv.close()
        raise KeyboardInterrupt(f"training interrupted at {model.num_timesteps} steps; checkpoint saved to "
                                f"{checkpoint} (continue with --resume {checkpoint})")
    best = run_dir / "best_model.zip"
    final = MaskablePPO.load(str(best), device="cpu") if best.exists() else model
    final.save(str(run_dir / MODEL_FILE))
    version = f"{out.stem}@{time.strftime('%Y-%m-%dT%H:%M:%S')}"
    meta = {"version": version, "catalog_fingerprint": catalog_fingerprint(catalog, config),
            "env_config": _portable(config),
            "n_timesteps": int(model.num_timesteps), "seed": seed, "train_seconds": round(time.perf_counter() - start),
            "hyperparameters": {"policy": settings.policy, "n_envs": settings.n_envs, **settings.ppo_kwargs}}
    write_policy(out, export_actor(final), meta)
    venv.close()
    return {"out": str(out), "settings": str(sidecar_path(out)), "run_dir": str(run_dir), "version": version,
            "timesteps": int(model.num_timesteps), "seconds": meta["train_seconds"],
            "best_eval_reward": _best_eval(run_dir)}


_TAGS = ("cost_slices", "violation", "accuracy", "fallback_rate")


def _portable(config: EnvConfig) -> dict[str, Any]:
    """The sidecar's environment settings: the shipped default traces are left to the default (their absolute
    paths name this checkout, and the policy must load from any other)."""
    doc = {**config.to_dict(), "catalog": None, "part": "train"}
    if [Path(t).resolve() for t in config.traces] == [Path(t).resolve() for t in DEFAULT_TRACES]:
        del doc["traces"]
    return doc


def _best_eval(run_dir: Path) -> float | None:
    """The best mean reward of the evaluations; None (JSON null) when the run ended before the first one."""
    path = run_dir / "evaluations.npz"
    if not path.exists():
        return None
    with np.load(path) as data:
        return float(data["results"].mean(axis=1).max())

"""The deployable policy on disk: plain data, which loading never executes.

``<name>.npz`` holds the actor's weights, float64 arrays ``w0, b0, ..., wN, bN`` (the last pair gives the action
logits), read with ``allow_pickle=False``. ``<name>.json``, the sidecar, holds its settings: the catalog fingerprint,
the environment settings, the version, and under ``actor`` the activation, the weight matrices' shapes and the sha256
of the .npz's bytes, which ties the two files together. Reading checks the digest before anything parses the .npz,
and every array's header (dtype, shape) before the array is read, so memory is bounded by the declared shapes.

An SB3 checkpoint (``.zip``) unpickles when loaded, so it can run code: it is refused by name, unopened;
``jigsaw export-policy`` converts a trusted one (``jigsaw.agents.ppo.export_policy``).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from jigsaw.profiles.documents import parse_json, read_text
from jigsaw.profiles.errors import JigsawError, OutputError

FORMAT = 2  # sidecar format version; format 1 named an SB3 .zip beside it
ACTIVATIONS = ("tanh", "relu")
MAX_LAYERS = 16
MAX_ACTOR_PARAMS = 1 << 25  # 256 MiB of float64; the shipped actor has ~17 k
_NPZ_OVERHEAD_BYTES = 1024  # per array: its zip entries and .npy header (~300 bytes as np.savez writes them)


class PolicyError(JigsawError):
    """A policy file that cannot be used: missing, corrupt, unsafe to open, or trained for another catalog or cluster."""


@dataclass(frozen=True)
class ActorWeights:
    """The actor of SB3's MlpPolicy: hidden layers (tanh or relu) then the action logits, as numpy arrays."""

    hidden: tuple[tuple[np.ndarray, np.ndarray], ...]
    logits: tuple[np.ndarray, np.ndarray]
    activation: str

    def act(self, obs: np.ndarray, mask: np.ndarray, nvec: np.ndarray) -> np.ndarray:
        """The deterministic action: per head (``nvec``: the choices of each, in order) the allowed choice with the
        highest logit."""
        h = obs.astype(np.float64)
        act = np.tanh if self.activation == "tanh" else (lambda x: np.maximum(x, 0.0))
        for w, b in self.hidden:
            h = act(w @ h + b)
        z = self.logits[0] @ h + self.logits[1]
        z = np.where(mask, z, -np.inf)
        return np.array([z[a:b].argmax() for a, b in itertools.pairwise(np.cumsum((0, *nvec)).tolist())])

    def arrays(self) -> dict[str, np.ndarray]:
        """The .npz's arrays: ``w<i>``, ``b<i>`` per layer, the logits last."""
        return {f"{kind}{i}": a for i, layer in enumerate((*self.hidden, self.logits))
                for kind, a in zip("wb", layer, strict=True)}


@dataclass(frozen=True)
class ActorSpec:
    """The sidecar's ``actor``: what the .npz must hold."""

    activation: str
    layers: tuple[tuple[int, int], ...]  # weight shapes (outputs, inputs); the last layer gives the action logits
    sha256: str

    @property
    def observation_size(self) -> int:
        return self.layers[0][1]

    @property
    def n_logits(self) -> int:
        return self.layers[-1][0]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: s for i, (o, n) in enumerate(self.layers) for k, s in ((f"w{i}", (o, n)), (f"b{i}", (o,)))}

    def max_bytes(self) -> int:
        """The largest .npz these shapes make (stored uncompressed)."""
        return sum(8 * int(np.prod(s)) + _NPZ_OVERHEAD_BYTES for s in self.shapes().values()) + _NPZ_OVERHEAD_BYTES


_NPZ_FIX = "give a policy .npz written by `jigsaw train` or `jigsaw export-policy`"


@dataclass(frozen=True)
class PolicyFiles:
    """A policy as the user named it (the .npz, the .json or the bare name), resolved to its two files."""

    weights: Path
    settings: Path


def policy_files(path: str | Path) -> PolicyFiles:
    """The policy's .npz and .json; an SB3 ``.zip`` (or a bare name with only a .zip) is refused unopened."""
    path = Path(path)
    if path.suffix.lower() == ".zip":
        _refuse_checkpoint(path)
    if path.suffix.lower() in (".npz", ".json"):
        files = PolicyFiles(path.with_suffix(".npz"), path.with_suffix(".json"))
    elif path.name:
        files = PolicyFiles(path.with_name(path.name + ".npz"), path.with_name(path.name + ".json"))
    else:  # "", ".", "/"
        raise PolicyError("no such policy file", file=str(path), fix=_NPZ_FIX)
    if not files.weights.is_file():
        if files.weights.with_suffix(".zip").is_file():
            _refuse_checkpoint(files.weights.with_suffix(".zip"))
        raise PolicyError("no such policy file", file=str(files.weights), fix=_NPZ_FIX)
    return files


def _refuse_checkpoint(path: Path) -> NoReturn:
    if not path.exists():
        raise PolicyError("no such policy file", file=str(path), fix=_NPZ_FIX)
    npz = path.with_suffix(".npz")
    fix = (f"give {npz} instead" if npz.is_file() else
           f"convert it once, only if you trust where it came from: jigsaw export-policy {path} --out {npz}")
    raise PolicyError("an SB3 checkpoint, not a policy: loading it would unpickle (run) whatever it holds, so "
                      "policies load only from .npz weights", file=str(path), fix=fix)


def read_settings(path: Path, formats: tuple[int, ...] = (FORMAT,)) -> dict[str, Any]:
    """A sidecar's settings, checked for the fields every policy needs (``formats``: those accepted)."""
    source = str(path)
    if not path.exists():
        raise PolicyError("its settings file is missing", file=source,
                          fix="keep the .json written with the policy (`jigsaw train`, `jigsaw export-policy`) beside it")
    meta = parse_json(read_text(path, PolicyError, "policy settings file"), source, PolicyError)
    if not isinstance(meta, dict):
        raise PolicyError(f"expected a JSON object, got {type(meta).__name__}", file=source,
                          fix="give the .json written with the policy")
    if meta.get("format") not in formats or isinstance(meta.get("format"), bool):
        fix = (f"these are an SB3 .zip's settings: convert the .zip, only if you trust it, with `jigsaw export-policy "
               f"{path.with_suffix('.zip')} --out {path.with_suffix('.npz')}`" if meta.get("format") == 1 else
               "give the .json written with the policy, or re-train")
        raise PolicyError(f"format {meta.get('format')!r}, expected {' or '.join(map(str, formats))}", file=source,
                          field="format", fix=fix)
    for key, kind in (("version", str), ("catalog_fingerprint", str), ("env_config", dict)):
        if not isinstance(meta.get(key), kind):
            raise PolicyError(f"missing, or not a {'JSON object' if kind is dict else 'string'}", file=source,
                              field=key, fix="restore the .json written with the policy, or re-train")
    return meta


def actor_spec(meta: Mapping[str, Any], source: str) -> ActorSpec:
    """The sidecar's ``actor``, validated: a known activation, 2..MAX_LAYERS shapes that chain, a sha256."""
    doc = meta.get("actor")

    def bad(field: str, message: str, fix: str = "restore the .json written with the policy") -> NoReturn:
        raise PolicyError(message, file=source, field=f"actor.{field}" if field else "actor", fix=fix)

    if not isinstance(doc, dict):
        bad("", "missing, or not a JSON object")
    if doc.get("activation") not in ACTIVATIONS:
        bad("activation", f"{doc.get('activation')!r}", f"use one of {', '.join(ACTIVATIONS)}")
    layers = doc.get("layers")
    if not (isinstance(layers, list) and 2 <= len(layers) <= MAX_LAYERS and all(
            isinstance(s, list) and len(s) == 2 and all(type(n) is int and n >= 1 for n in s) for s in layers)):
        bad("layers", f"expected 2 to {MAX_LAYERS} [outputs, inputs] pairs of whole numbers >= 1, got {layers!r}"[:200])
    shapes = tuple((o, n) for o, n in layers)
    if any(n != prev_o for (prev_o, _), (_, n) in itertools.pairwise(shapes)):
        bad("layers", f"shapes {shapes} do not chain (each layer's inputs are the previous one's outputs)")
    if sum(o * n + o for o, n in shapes) > MAX_ACTOR_PARAMS:
        bad("layers", f"more than {MAX_ACTOR_PARAMS} weights", "give the policy this was written with")
    if not (isinstance(doc.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", doc["sha256"])):
        bad("sha256", f"expected 64 lowercase hex digits, got {doc.get('sha256')!r}"[:200])
    return ActorSpec(doc["activation"], shapes, doc["sha256"])


def read_actor(path: Path, spec: ActorSpec) -> ActorWeights:
    """The weights of ``path``, which must be exactly what ``spec`` declares: its digest, arrays, dtypes, shapes."""
    source = str(path)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > spec.max_bytes():
                raise PolicyError(f"{size} bytes, more than the {spec.max_bytes()} its declared shapes take",
                                  file=source, fix="keep the .npz and .json written together")
            data = f.read(spec.max_bytes() + 1)
    except OSError as e:
        raise PolicyError(f"cannot read ({e.strerror or e})", file=source, fix="check the path") from None
    if hashlib.sha256(data).hexdigest() != spec.sha256:
        raise PolicyError("its sha256 differs from the one its settings name", file=source, field="actor.sha256",
                          fix="keep the .npz and .json written together (`jigsaw train`, `jigsaw export-policy`)")
    shapes = spec.shapes()
    try:
        if not data.startswith(b"PK\x03\x04"):  # else np.load would read it as one .npy, not an .npz
            raise ValueError("not an .npz (zip) file")
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = sorted(zf.namelist())
            if names != sorted(f"{k}.npy" for k in shapes):
                raise PolicyError(f"holds {', '.join(names)[:200]}, expected the arrays {', '.join(shapes)}",
                                  file=source, fix="keep the .npz and .json written together")
            for key, shape in shapes.items():
                with zf.open(f"{key}.npy") as member:
                    header = _array_header(member)
                if header != (shape, np.dtype(np.float64)):
                    raise PolicyError(f"array {key} is {header[1]} {header[0]}, expected float64 {shape}",
                                      file=source, field=key, fix="keep the .npz and .json written together")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in shapes}
    except (ValueError, OSError, EOFError, KeyError, NotImplementedError, zipfile.BadZipFile, zlib.error) as e:
        raise PolicyError(f"corrupt weights ({type(e).__name__}: {e})"[:300].replace("\n", " "), file=source,
                          fix="restore the file, or re-export it") from None
    for key, a in arrays.items():
        if not np.isfinite(a).all():
            raise PolicyError("holds non-finite weights", file=source, field=key, fix="re-train or re-export it")
    layers = [(arrays[f"w{i}"], arrays[f"b{i}"]) for i in range(len(spec.layers))]
    return ActorWeights(tuple(layers[:-1]), layers[-1], spec.activation)


def _array_header(member: Any) -> tuple[tuple[int, ...], np.dtype]:
    """An .npy member's shape and dtype, read from its header alone."""
    version = np.lib.format.read_magic(member)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f".npy format {version}")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(member)
    return tuple(shape), dtype


def write_policy(out: Path, actor: ActorWeights, meta: Mapping[str, Any]) -> Path:
    """Write the policy ``out`` (its suffix becomes .npz) and its sidecar, whose other settings are ``meta``'s;
    the sidecar goes last, so that a half-written pair fails its digest. Returns the .npz's path."""
    out = out.with_suffix(".npz")
    arrays = actor.arrays()
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise PolicyError("the actor holds non-finite weights", file=str(out), fix="export a model that trained")
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(a, dtype=np.float64) for k, a in arrays.items()})
    data = buf.getvalue()
    layers = [list(w.shape) for w, _ in (*actor.hidden, actor.logits)]
    doc = {"format": FORMAT, **{k: v for k, v in meta.items() if k not in ("format", "actor")},
           "actor": {"activation": actor.activation, "layers": layers, "sha256": hashlib.sha256(data).hexdigest()}}
    actor_spec(doc, str(out.with_suffix(".json")))  # what we write, we can read
    for path, body in ((out, data), (out.with_suffix(".json"), json.dumps(doc, indent=1).encode())):
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_bytes(body)
            os.replace(tmp, path)
        except OSError as e:
            raise OutputError(f"cannot write ({e.strerror or e})", file=str(path), field="--out",
                              fix="give a writable path") from None
    return out

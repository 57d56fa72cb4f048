"""The checkpoint file: one ``.npz`` that holds everything, and never runs code.

Format (``FORMAT_VERSION`` 1):

- ``model/<name>``: every parameter and buffer under PyTorch-style dotted names
  (``encoder.0.conv1.weight``, ``encoder.0.bn1.running_var``, ``head.bias``...), in the
  shapes PyTorch uses for the same layers.
- ``optim/<name>``: the optimiser state (step count, momentum or Adam moments), present in
  ``last.npz`` so that ``--resume`` continues exactly; absent from exported models.
- ``meta``: a uint8 array holding UTF-8 JSON with ``format_version``, ``model`` (the UNet
  constructor arguments), ``data`` (class names, mask values, ignore index, input channels,
  normalisation mean/std, image size), ``train`` (epoch, global step, best metric, the
  run's configuration) and anything else a caller adds.

The file is read with ``allow_pickle=False``: an array of Python objects (the one way an
``.npz`` can carry code) is refused, as are truncated files, newer format versions and
weights for another architecture, each with one clear line. Writes are atomic (temporary
file + rename), so an interrupted save leaves the previous checkpoint intact, and a save
that fails (a full disk) says so in one RunFailure line (``minunet.io.atomic``).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minunet.errors import CheckpointError
from minunet.io.atomic import save_npz_atomic

FORMAT_VERSION = 1
META_KEY = "meta"
MODEL_PREFIX = "model/"
OPTIM_PREFIX = "optim/"


@dataclass
class Checkpoint:
    """What a checkpoint file holds, as host arrays and plain JSON-able metadata."""

    model_state: dict[str, np.ndarray]
    meta: dict[str, Any]
    optim_state: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def model_config(self) -> dict[str, Any]:
        return self.meta["model"]

    @property
    def normalization(self) -> tuple[Any, Any]:
        """(mean, std) the model's inputs were normalised with (loader defaults if absent)."""
        from minunet.data.loader import DEFAULT_MEAN, DEFAULT_STD

        norm = self.meta.get("data", {}).get("normalization", {})
        return norm.get("mean", DEFAULT_MEAN), norm.get("std", DEFAULT_STD)


def save_checkpoint(
    path: str | os.PathLike,
    model_state: dict[str, np.ndarray],
    meta: dict[str, Any],
    optim_state: dict[str, np.ndarray] | None = None,
) -> None:
    """Write a checkpoint atomically. ``meta`` must contain ``model`` (the UNet config)."""
    if "model" not in meta:
        raise ValueError("checkpoint metadata needs the model configuration under 'model'")
    meta = {"format_version": FORMAT_VERSION, **meta}
    arrays = {MODEL_PREFIX + k: np.asarray(v) for k, v in model_state.items()}
    arrays.update({OPTIM_PREFIX + k: np.asarray(v) for k, v in (optim_state or {}).items()})
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    save_npz_atomic(path, arrays)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint, or raise one CheckpointError saying what is wrong."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file (e.g. {path}/best.npz)")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if META_KEY not in names:
                raise CheckpointError(f"{path}: not a minunet checkpoint (no '{META_KEY}' entry)")
            arrays = {name: npz[name] for name in names}
    except CheckpointError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise CheckpointError(
                f"{path}: refused: the file contains pickled Python objects, which could run "
                "code when loaded; a minunet checkpoint holds numeric arrays only"
            ) from None
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint ({type(exc).__name__}: {exc}); "
            "use another checkpoint (e.g. best.npz or last.npz) or retrain"
        ) from None
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt metadata ({exc})") from None
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this minunet "
            f"understands ({FORMAT_VERSION}); upgrade minunet"
        )
    if "model" not in meta:
        raise CheckpointError(f"{path}: checkpoint metadata lacks the model configuration")
    model = {k[len(MODEL_PREFIX) :]: v for k, v in arrays.items() if k.startswith(MODEL_PREFIX)}
    optim = {k[len(OPTIM_PREFIX) :]: v for k, v in arrays.items() if k.startswith(OPTIM_PREFIX)}
    return Checkpoint(model_state=model, meta=meta, optim_state=optim)


def build_model(ckpt: Checkpoint, *, dtype: Any = np.float32, path: str = "checkpoint") -> Any:
    """A UNet with the checkpoint's architecture and weights (on the host, in eval mode)."""
    from minunet.model import UNet

    try:
        model = UNet(**ckpt.model_config, dtype=dtype)
    except TypeError as exc:
        raise CheckpointError(f"{path}: model configuration not understood ({exc})") from None
    try:
        model.load_state_dict(ckpt.model_state)
    except ValueError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit the architecture it names: {exc}"
        ) from None
    return model.eval()


def load_model(path: str | os.PathLike, xp: Any = np) -> tuple[Checkpoint, Any]:
    """Read the checkpoint at ``path`` and build its model on ``xp`` (NumPy or CuPy).

    What a command that uses a trained model (predict, evaluate) does first. Returns
    ``(checkpoint, model)``: the model float32 and in eval mode, its weights on ``xp``'s
    device; the checkpoint for its metadata (mask values, normalisation, data options).
    Anything wrong with the file raises one CheckpointError line naming ``path``.
    """
    ckpt = load_checkpoint(path)
    return ckpt, build_model(ckpt, path=os.fspath(path)).to(xp)

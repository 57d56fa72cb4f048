"""Use a trained model elsewhere: export a checkpoint to PyTorch or ONNX, import it back.

    python -m minunet.export --checkpoint best.npz --to torch model.pt
    python -m minunet.export --checkpoint best.npz --to onnx model.onnx
    python -m minunet.export --from torch model.pt --config-from best.npz --out ckpt.npz
    python -m minunet.export --from torch model.pt --config '{"in_channels": 3, ...}' --out ckpt.npz

``--to torch`` writes a plain state dict (``torch.save`` of name -> tensor, nothing else)
that loads with ``strict=True`` into ``minunet.io.interop.torch_unet.TorchUNet(**config)``;
it is loaded into one before the file is written. ``--to onnx`` writes the graph of
``minunet.io.interop.onnx_export`` (input ``image``, output ``logits``). ``--from torch``
reads a state dict with ``torch.load(..., weights_only=True)`` (a file that needs
arbitrary unpickling is refused) and writes a minunet checkpoint; a state dict has no
architecture in it, so the config comes from another checkpoint (``--config-from``,
which also carries over its data metadata: class names, normalisation) or from JSON.

PyTorch and onnx are optional: they are imported only by the commands that need them, and
their absence is one line saying what to install. Every error is one line; the exit
codes are ``minunet.cli.EXIT_CODES`` (2: a bad flag or path, 1: a failure while writing).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np

from minunet.cli import EXIT_CODES, Parser, check_input_file, check_output_file, run_cli
from minunet.errors import MinunetError
from minunet.io.atomic import atomic_write
from minunet.io.checkpoint import Checkpoint, load_checkpoint, load_model, save_checkpoint

# The keys of UNet.config (the constructor's architecture arguments), all required by
# --config: padding and dropout cannot be read off the weights.
CONFIG_KEYS = (
    "in_channels",
    "num_classes",
    "base_channels",
    "depth",
    "padding",
    "batchnorm",
    "dropout",
)
# Prefixes PyTorch wrappers put on every key: DataParallel/DDP and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

USAGE = """
  python -m minunet.export --checkpoint CKPT --to {torch,onnx} PATH
  python -m minunet.export --from torch PATH (--config-from CKPT | --config JSON) --out CKPT"""

EPILOG = """\
examples:
  python -m minunet.export --checkpoint runs/pets/best.npz --to torch unet.pt
  python -m minunet.export --checkpoint runs/pets/best.npz --to onnx unet.onnx
  python -m minunet.export --from torch unet.pt --config-from runs/pets/best.npz --out tuned.npz
  python -m minunet.export --from torch unet.pt --out tuned.npz --config \\
      '{"in_channels": 3, "num_classes": 3, "base_channels": 32, "depth": 4,
        "padding": "same", "batchnorm": true, "dropout": 0.0}'

in PyTorch:
  from minunet.io.interop.torch_unet import TorchUNet
  net = TorchUNet(**config)   # config: the checkpoint's meta["model"]
  net.load_state_dict(torch.load("unet.pt", weights_only=True))

needs: --to torch / --from torch: pip install torch; --to onnx: pip install 'minunet[export]'

"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m minunet.export",
        usage=USAGE,
        description=(
            "Export a minunet checkpoint as a PyTorch state dict or an ONNX model, or import "
            "a PyTorch state dict of the same U-Net back into a minunet checkpoint."
        ),
        epilog=EPILOG + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    out = p.add_argument_group("export (minunet -> elsewhere)")
    out.add_argument("--checkpoint", metavar="CKPT", help="the minunet checkpoint (.npz) to export")
    out.add_argument(
        "--to",
        nargs=2,
        metavar=("FORMAT", "PATH"),
        help="'torch': a state dict for TorchUNet (torch.save of the tensors only); "
        "'onnx': an ONNX model, input 'image' (N, C, H, W) float32, output 'logits'",
    )
    back = p.add_argument_group("import (PyTorch -> minunet)")
    back.add_argument(
        "--from",
        dest="source",
        nargs=2,
        metavar=("FORMAT", "PATH"),
        help="'torch': a state dict saved from TorchUNet (read with weights_only=True)",
    )
    back.add_argument(
        "--config-from",
        metavar="CKPT",
        help="take the architecture (and the data metadata: class names, normalisation) "
        "from this minunet checkpoint",
    )
    back.add_argument(
        "--config",
        metavar="JSON",
        help=f"the architecture as a JSON object (or a .json file) with every key of "
        f"UNet's config: {', '.join(CONFIG_KEYS)}",
    )
    back.add_argument("--out", metavar="CKPT", help="the minunet checkpoint (.npz) to write")
    return p


# -- the optional libraries -----------------------------------------------------------------
def _torch() -> tuple[Any, Any]:
    """(torch, minunet.io.interop.torch_unet), or a MinunetError saying how to install torch."""
    try:
        import torch
    except ImportError:
        raise MinunetError(
            "this needs PyTorch, which is not installed: pip install torch"
        ) from None
    from minunet.io.interop import torch_unet

    return torch, torch_unet


def _onnx_export() -> Any:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise MinunetError(
            "ONNX export needs the onnx package, which is not installed: "
            "pip install 'minunet[export]'"
        ) from None
    from minunet.io.interop import onnx_export

    return onnx_export


# -- export ---------------------------------------------------------------------------------
def _load(path: str) -> tuple[Checkpoint, Any]:
    """A checkpoint and its model (float32, eval, on the host), every problem as one line."""
    try:
        return load_model(path, xp=np)
    except ValueError as exc:  # UNet's own checks (load_model words file problems itself)
        raise MinunetError(f"{path}: model configuration not accepted: {exc}") from None


def export_torch(checkpoint: str, out: str) -> str:
    """Write the checkpoint's weights as a PyTorch state dict; returns a summary line."""
    ckpt, model = _load(checkpoint)
    torch, torch_unet = _torch()
    sd = torch_unet.to_torch_state_dict(model.state_dict())
    # Load it once here, so a file that was written is known to load with strict=True.
    torch_unet.TorchUNet(**ckpt.model_config).load_state_dict(sd, strict=True)
    atomic_write(out, lambda f: torch.save(sd, f))
    return f"wrote {out}: {len(sd)} tensors for TorchUNet(**{json.dumps(ckpt.model_config)})"


def export_onnx(checkpoint: str, out: str) -> str:
    """Write the checkpoint as an ONNX model; returns a summary line."""
    ckpt, model = _load(checkpoint)
    onnx_export = _onnx_export()
    try:
        proto = onnx_export.unet_to_onnx(model.state_dict(), ckpt.model_config, ckpt.meta)
    except ValueError as exc:
        raise MinunetError(f"{checkpoint}: cannot export: {exc}") from None
    onnx_export.save_onnx(proto, out)
    return f"wrote {out}: ONNX opset {onnx_export.OPSET}, input 'image', output 'logits'"


# -- import ---------------------------------------------------------------------------------
def _config_from_json(text: str) -> dict[str, Any]:
    """--config: a JSON object, given inline or as the path of a .json file."""
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            text = f.read()
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MinunetError(f"--config is neither a JSON object nor a JSON file ({exc})") from None
    if not isinstance(config, dict):
        raise MinunetError(f"--config must be a JSON object, got {type(config).__name__}")
    missing = [k for k in CONFIG_KEYS if k not in config]
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if missing or unknown:
        raise MinunetError(
            f"--config needs exactly the keys {', '.join(CONFIG_KEYS)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(unknown)}" if unknown else "")
        )
    return config


def _read_torch_state(torch: Any, path: str) -> dict[str, Any]:
    """A name -> tensor dict from ``path``, loaded without running pickled code."""
    if not os.path.isfile(path):
        raise MinunetError(f"{path}: no such file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise MinunetError(
            f"{path}: refused: the file holds Python objects other than tensors, which "
            "torch.load(weights_only=True) will not unpickle (they could run code); "
            "save net.state_dict() itself"
        ) from None
    except Exception as exc:  # a corrupt or foreign file: RuntimeError, EOFError...
        first = (str(exc).splitlines() or [""])[0]
        raise MinunetError(
            f"{path}: not a loadable PyTorch state dict of tensors (torch.load with "
            f"weights_only=True: {type(exc).__name__}: {first})"
        ) from None
    if not isinstance(sd, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()
    ):
        raise MinunetError(
            f"{path}: expected a state dict (name -> tensor), got {type(sd).__name__}; "
            "save net.state_dict() itself"
        )
    for prefix in WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    # minunet's dropout call counter; a model trained in PyTorch may have no such buffer.
    sd.setdefault("dropout.calls", torch.zeros((), dtype=torch.int64))
    return sd


def import_torch(
    path: str, out: str, *, config_from: str | None = None, config_json: str | None = None
) -> str:
    """Write a minunet checkpoint holding the weights of a PyTorch state dict."""
    from minunet.model import UNet

    torch, torch_unet = _torch()
    if (config_from is None) == (config_json is None):
        raise MinunetError("--from torch needs exactly one of --config-from CKPT or --config JSON")
    meta: dict[str, Any] = {}
    if config_from is not None:
        source = load_checkpoint(config_from)
        config = source.model_config
        if "data" in source.meta:
            meta["data"] = source.meta["data"]
    else:
        config = _config_from_json(config_json)
    state = torch_unet.from_torch_state_dict(_read_torch_state(torch, path))
    try:
        model = UNet(**config)
    except (TypeError, ValueError) as exc:
        raise MinunetError(f"model configuration not accepted: {exc}") from None
    try:
        model.load_state_dict(state)
    except ValueError as exc:
        raise MinunetError(f"{path}: {exc} (config {json.dumps(config)})") from None
    meta = {"model": model.config, **meta, "imported": {"from": "torch", "file": path}}
    save_checkpoint(out, model.state_dict(), meta)
    return f"wrote {out}: minunet checkpoint of UNet(**{json.dumps(model.config)})"


# -- the command ----------------------------------------------------------------------------
def run(args: argparse.Namespace) -> str:
    """Check the combination of options and do the one thing they ask; returns a summary."""
    if (args.to is None) == (args.source is None):
        raise MinunetError(
            "give either --checkpoint CKPT --to FORMAT PATH (export) or "
            "--from torch PATH ... --out CKPT (import); see --help"
        )
    if args.to is not None:
        fmt, out = args.to
        if fmt not in ("torch", "onnx"):
            raise MinunetError(f"--to {fmt!r}: unknown format; choose 'torch' or 'onnx'")
        extra = [f for f in ("config_from", "config", "out") if getattr(args, f) is not None]
        if extra:
            flag = "--" + extra[0].replace("_", "-")
            raise MinunetError(f"{flag} belongs to --from (import), not to --to (export)")
        if args.checkpoint is None:
            raise MinunetError("--to needs --checkpoint CKPT, the checkpoint to export")
        if os.path.abspath(out) == os.path.abspath(args.checkpoint):
            raise MinunetError(f"{out}: refusing to overwrite the checkpoint being exported")
        check_input_file("--checkpoint", args.checkpoint)
        check_output_file("--to", out)
        if fmt == "torch":
            return export_torch(args.checkpoint, out)
        return export_onnx(args.checkpoint, out)
    fmt, path = args.source
    if fmt != "torch":
        raise MinunetError(
            f"--from {fmt!r}: only 'torch' state dicts can be imported "
            "(an ONNX graph is an export, not a training format)"
        )
    if args.checkpoint is not None:
        raise MinunetError("--checkpoint belongs to --to (export); for --from use --config-from")
    if args.out is None:
        raise MinunetError("--from torch needs --out CKPT, the minunet checkpoint to write")
    if os.path.abspath(args.out) == os.path.abspath(path):
        raise MinunetError(f"{args.out}: refusing to overwrite the file being imported")
    check_input_file("--from", path)
    if args.config_from is not None:
        check_input_file("--config-from", args.config_from)
    check_output_file("--out", args.out)
    return import_torch(path, args.out, config_from=args.config_from, config_json=args.config)


def _main(argv: Sequence[str] | None) -> int:
    print(run(build_parser().parse_args(argv)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 on success, else one ``error: ...`` line and the EXIT_CODES code."""
    return run_cli(_main, argv)

"""A trained minunet U-Net as an ONNX graph, built node by node with the ``onnx`` package.

No PyTorch and no tracing: the graph below is written from the U-Net's definition, one
ONNX node per minunet layer, with the weights stored under their checkpoint names
(``encoder.0.conv1.weight``...), so the file can be read side by side with the code.

    image (N, C, H, W) float32
      -> [Conv -> BatchNormalization -> Relu] x2 -> MaxPool       per encoder level
      -> [Conv -> BatchNormalization -> Relu] x2                  bottleneck
      -> ConvTranspose -> Concat(Slice(skip), up) -> block        per decoder level
      -> Conv 1x1 -> logits (N, num_classes, Ho, Wo)

Choices, and why:

- **BatchNorm stays a node** (``BatchNormalization`` in inference form, the running
  statistics as inputs) rather than being folded into the convolution. The exported
  numbers are then exactly the checkpoint's, each tensor keeps its checkpoint name, and
  nothing is lost: runtimes fold Conv + BatchNormalization themselves when they load the
  graph (onnxruntime's default graph optimisations do).
- **Dropout is left out**: in inference it is the identity.
- **Opset 17** (the oldest with everything used here in its current form) and the oldest
  IR version that carries it, so older runtimes can read the file too.
- **Dynamic sizes.** The batch is always dynamic (``N``). Height and width are dynamic
  too, for both paddings: ``H``/``W`` must be sizes the network accepts (multiples of
  ``2**depth`` for "same"; for "valid" the sizes ``geometry.input_size(depth, "valid", k)``),
  exactly as in minunet. A "valid" network's centre crops are constant Slices: the skip map and
  the upsampled map of a level both grow by ``2**level`` pixels per step between valid
  input sizes, so their difference, and with it the crop margin, does not depend on the
  input size. (The runtime does not check that a size is valid: MaxPool silently drops an
  odd row, and the Concat then fails on mismatched shapes.)

The model's ``doc_string`` and ``metadata_props`` say how the input must be normalised
(from the checkpoint's ``meta["data"]["normalization"]``), the class names, the sizes, and
the scale the network learned at (``minunet.infer.scale``, ``meta["data"]["input"]``): a
model trained on images resized to S x S wants its input resized to S x S and its logits
resized back to the image's size before the argmax, as ``minunet.predict`` does.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import minunet
from minunet.infer.scale import scale_from_meta
from minunet.io.atomic import atomic_write
from minunet.model import geometry

OPSET = 17
BN_EPS = 1e-5  # minunet's BatchNorm2d default, which UNet keeps (and PyTorch's)
INPUT_NAME, OUTPUT_NAME = "image", "logits"


# -- the graph ------------------------------------------------------------------------------
class _GraphBuilder:
    """Collects nodes and initializers; each method returns the name of its output."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._known: set[str] = set()

    def weight(self, name: str) -> str:
        """A checkpoint tensor as a float32 initializer under its checkpoint name."""
        if name not in self._known:
            if name not in self.state:
                raise ValueError(f"state dict lacks {name!r}, which this U-Net config needs")
            array = np.asarray(self.state[name], dtype=np.float32)
            self.initializers.append(numpy_helper.from_array(array, name))
            self._known.add(name)
        return name

    def ints(self, name: str, values: list[int]) -> str:
        """A constant int64 vector (Slice's starts, ends, axes)."""
        self.initializers.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def node(self, op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    # -- layers -----------------------------------------------------------------------------
    def conv(self, x: str, prefix: str, pad: int, bias: bool, out: str | None = None) -> str:
        w = self.weight(f"{prefix}.weight")
        inputs = [x, w] + ([self.weight(f"{prefix}.bias")] if bias else [])
        k = list(np.shape(self.state[w])[2:])
        return self.node("Conv", inputs, out or prefix, kernel_shape=k, pads=[pad] * 4)

    def batchnorm(self, x: str, prefix: str) -> str:
        params = [
            self.weight(f"{prefix}.{p}") for p in ("weight", "bias", "running_mean", "running_var")
        ]
        return self.node("BatchNormalization", [x, *params], prefix, epsilon=BN_EPS)

    def block(self, x: str, prefix: str, pad: int, batchnorm: bool) -> str:
        """minunet's ConvBlock: (conv 3x3 -> [BatchNorm] -> ReLU) twice."""
        for i in (1, 2):
            # The config, not the state dict, says whether there is a bias (none before BN),
            # so a state dict that lacks one is an error rather than a silent change.
            x = self.conv(x, f"{prefix}.conv{i}", pad, bias=not batchnorm)
            if batchnorm:
                x = self.batchnorm(x, f"{prefix}.bn{i}")
            x = self.node("Relu", [x], f"{prefix}.relu{i}")
        return x

    def centre_crop(self, x: str, margin: int, out: str) -> str:
        """x (N, C, H, W) -> x[:, :, m:H-m, m:W-m] (margin m > 0, the same on every side)."""
        starts = self.ints(f"{out}.starts", [margin, margin])
        ends = self.ints(f"{out}.ends", [-margin, -margin])  # negative: counted from the end
        axes = self.ints(f"{out}.axes", [2, 3])
        return self.node("Slice", [x, starts, ends, axes], out)


def _scale_text(meta: dict[str, Any]) -> str:
    """How to size an image for the network, from the checkpoint's record of training."""
    scale = scale_from_meta(meta)
    if scale.resized:
        return (
            f"trained on images resized to {scale.size}x{scale.size}: resize each image to "
            f"{scale.size}x{scale.size} (bilinear) before, and resize the logits back to the "
            "image's size (bilinear, half-pixel centres) before the argmax."
        )
    return "trained at native resolution" + (
        f" on {scale.crop} px crops: run it on the image as it is (tiled if large)."
        if scale.crop
        else ": run it on the image as it is."
    )


def _normalization_text(meta: dict[str, Any]) -> tuple[str, Any]:
    """(one sentence for the doc string, the recorded value or None) about the input."""
    norm = (meta.get("data") or {}).get("normalization")
    if isinstance(norm, dict) and "mean" in norm and "std" in norm:
        return (
            "normalised per channel as (pixel / 255 - mean) / std with "
            f"mean={norm['mean']}, std={norm['std']} (pixel values 0-255; channels in the "
            "order training read them, RGB for colour images)",
            norm,
        )
    if norm is not None:
        return f"normalised as the checkpoint records it: {json.dumps(norm)}", norm
    from minunet.data.loader import DEFAULT_MEAN, DEFAULT_STD

    return (
        "normalised as in training; the checkpoint does not record how (no "
        "meta['data']['normalization']): minunet's loader default is "
        f"(pixel / 255 - {DEFAULT_MEAN}) / {DEFAULT_STD}",
        None,
    )


def _size_text(config: dict[str, Any]) -> str:
    depth = config["depth"]
    if config["padding"] == "same":
        return (
            f"H and W must be multiples of {2**depth}; logits have the input's H and W. "
            "For other sizes mirror-pad the image (bottom and right) to the next multiple "
            "and crop the logits back, as minunet's predict does."
        )
    first, step = geometry.input_size(depth, "valid"), 2**depth
    border = geometry.border(depth, "valid")
    return (
        f"H and W must each be {first} + {step} * k (k = 0, 1, ...: {first}, {first + step}, "
        f"{first + 2 * step}, ...); logits are smaller: Ho = H - {2 * border}, "
        f"Wo = W - {2 * border} (padding 'valid', the paper's network). For logits "
        f"of a whole image, mirror-pad it by {border} pixels on every side "
        "first (and tile it for large images), as minunet's predict does."
    )


def unet_to_onnx(
    state: dict[str, Any],
    config: dict[str, Any],
    meta: dict[str, Any] | None = None,
    *,
    opset: int = OPSET,
) -> onnx.ModelProto:
    """Build and check the ONNX model of a U-Net in eval mode.

    state:  a minunet state dict (name -> array; e.g. ``build_model(ckpt).state_dict()``)
    config: ``UNet.config`` (the checkpoint's ``meta["model"]``)
    meta:   the checkpoint's metadata; ``data.normalization`` and ``data.class_names``
            are written into the model's doc string and ``metadata_props``.
    Returns a model with input ``image`` float32 (N, in_channels, H, W) and output
    ``logits`` float32 (N, num_classes, Ho, Wo); raises ValueError if ``state`` lacks a
    tensor the config needs.
    """
    meta = meta or {}
    depth, batchnorm = config["depth"], config["batchnorm"]
    same = config["padding"] == "same"
    pad = 1 if same else 0
    g = _GraphBuilder(state)

    x, skips = INPUT_NAME, []
    for lv in range(depth):
        x = g.block(x, f"encoder.{lv}", pad, batchnorm)
        skips.append(x)
        x = g.node("MaxPool", [x], f"pools.{lv}", kernel_shape=[2, 2], strides=[2, 2])
    x = g.block(x, "bottleneck", pad, batchnorm)  # dropout would follow: identity here
    # The crops are the same for every accepted size (see the module docstring).
    margins = geometry.trace(
        geometry.input_size(depth, config["padding"]), depth, config["padding"]
    ).crops
    for i in range(depth):  # decoder step i works at level depth - 1 - i
        up = g.node(
            "ConvTranspose",
            [x, g.weight(f"upconvs.{i}.weight"), g.weight(f"upconvs.{i}.bias")],
            f"upconvs.{i}",
            kernel_shape=[2, 2],
            strides=[2, 2],
        )
        skip = skips.pop()
        if not same:
            skip = g.centre_crop(skip, margins[i], f"concats.{i}.crop")
        x = g.node("Concat", [skip, up], f"concats.{i}", axis=1)
        x = g.block(x, f"decoder.{i}", pad, batchnorm)
    g.conv(x, "head", 0, bias=True, out=OUTPUT_NAME)

    c, k = config["in_channels"], config["num_classes"]
    out_hw = ["H", "W"] if same else ["H_out", "W_out"]
    graph = helper.make_graph(
        g.nodes,
        "minunet_unet",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", c, "H", "W"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", k, *out_hw])],
        g.initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="minunet",
        producer_version=minunet.__version__,
        # The oldest IR that carries this opset, so older runtimes can read the file.
        ir_version=helper.find_min_ir_version_for(opsets),
    )
    norm_text, norm = _normalization_text(meta)
    class_names = (meta.get("data") or {}).get("class_names")
    mask_values = (meta.get("data") or {}).get("mask_values")  # class index -> mask pixel
    model.doc_string = "\n".join(
        [
            f"minunet U-Net {json.dumps(config)}, in inference mode.",
            f"Input '{INPUT_NAME}': float32 (N, {c}, H, W), {norm_text}.",
            f"Sizes: {_size_text(config)}",
            f"Output '{OUTPUT_NAME}': float32 (N, {k}, Ho, Wo), one score per class before "
            "softmax; argmax over axis 1 is the class map"
            + (f" (classes {class_names})" if class_names else "")
            + (f"; class i is written as mask value {mask_values}[i]." if mask_values else "."),
            f"Scale: {_scale_text(meta)}",
            "BatchNorm is kept as inference-mode BatchNormalization with the running "
            "statistics; dropout (identity in inference) is omitted.",
        ]
    )
    helper.set_model_props(
        model,
        {
            "minunet.config": json.dumps(config),
            "minunet.normalization": json.dumps(norm),
            "minunet.class_names": json.dumps(class_names),
            "minunet.mask_values": json.dumps(mask_values),
            "minunet.input": json.dumps(scale_from_meta(meta).record()),
        },
    )
    onnx.checker.check_model(model, full_check=True)  # full: shape inference as well
    return model


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` atomically (the old file survives an interrupted write)."""
    data = model.SerializeToString()
    atomic_write(path, lambda f: f.write(data))

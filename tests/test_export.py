"""Model files that travel: minunet <-> PyTorch state dicts, ONNX export, and the CLI.

The PyTorch model must compute minunet's function exactly (float64, 1e-10) in both
directions of weight transfer; the ONNX graph must match minunet's eval forward in
float32 on several sizes and batch sizes, in onnxruntime. CI installs torch and the
``export`` extra (onnx, onnxruntime), so everything here runs there; the importorskips
only spare users without them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_cli import run_python

from minunet.io.checkpoint import load_checkpoint, save_checkpoint
from minunet.model import UNet, geometry

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'minunet[export]')")
ort = pytest.importorskip(
    "onnxruntime", reason="onnxruntime is not installed (pip install 'minunet[export]')"
)

from minunet.io import export as cli  # noqa: E402
from minunet.io.interop.onnx_export import unet_to_onnx  # noqa: E402
from minunet.io.interop.torch_unet import (  # noqa: E402
    TorchUNet,
    from_torch_state_dict,
    to_torch_state_dict,
)

REPO = Path(__file__).resolve().parents[1]
EXACT = dict(rtol=1e-10, atol=1e-10)
FLOAT32 = dict(rtol=1e-4, atol=1e-4)

# Small networks of every kind; sides are (H, W) pairs each network accepts, H != W.
CONFIGS = {
    "same-bn": dict(in_channels=3, num_classes=3, base_channels=4, depth=2, padding="same"),
    "same-nobn": dict(
        in_channels=1, num_classes=2, base_channels=3, depth=3, padding="same", batchnorm=False
    ),
    "valid-bn": dict(in_channels=2, num_classes=3, base_channels=4, depth=2, padding="valid"),
    "valid-nobn": dict(
        in_channels=1, num_classes=4, base_channels=3, depth=1, padding="valid", batchnorm=False
    ),
}
SIDES = {
    "same-bn": [(16, 24), (32, 8)],
    "same-nobn": [(16, 24), (8, 40)],
    "valid-bn": [(44, 48), (52, 60)],
    "valid-nobn": [(18, 22), (26, 20)],
}


def randomised(model: UNet, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The model's state with every float tensor random (BN statistics and biases too,
    which a fresh model holds at 0 and 1 and which would hide a mix-up)."""
    state = {}
    for name, a in model.state_dict().items():
        if a.dtype.kind != "f":
            state[name] = a
        elif name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 2.0, a.shape).astype(a.dtype)
        else:
            state[name] = (rng.standard_normal(a.shape) * 0.3).astype(a.dtype)
    return state


def minunet_model(key: str, dtype=np.float64, seed: int = 0, **extra) -> UNet:
    model = UNet(**CONFIGS[key], **extra, dtype=dtype, seed=seed)
    model.load_state_dict(randomised(model, np.random.default_rng(seed)))
    return model


def torch_forward(net: TorchUNet, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


# -- PyTorch ----------------------------------------------------------------------------------
@pytest.mark.parametrize("key", CONFIGS)
def test_state_dict_names_shapes_and_dtypes_are_the_same(key):
    ours = UNet(**CONFIGS[key], dropout=0.2).state_dict()
    theirs = TorchUNet(**CONFIGS[key], dropout=0.2).state_dict()
    assert set(ours) == set(theirs)
    for name, a in ours.items():
        assert tuple(a.shape) == tuple(theirs[name].shape), name
        assert torch.from_numpy(a).dtype == theirs[name].dtype, name


def test_torch_unet_takes_exactly_minunet_config():
    config = UNet(**CONFIGS["valid-bn"]).config
    assert TorchUNet(**config).config == config
    assert tuple(config) == cli.CONFIG_KEYS
    # Both check their settings through one function, each naming itself.
    for model in (UNet, TorchUNet):
        with pytest.raises(ValueError, match=rf"^{model.__name__} needs depth >= 1.*depth=0"):
            model(depth=0)
        with pytest.raises(ValueError, match="padding must be one of"):
            model(padding="full")


@pytest.mark.parametrize("key", CONFIGS)
def test_minunet_weights_in_torch_give_the_same_outputs(key):
    model = minunet_model(key).eval()
    net = TorchUNet(**model.config).double()
    net.load_state_dict(to_torch_state_dict(model.state_dict()), strict=True)
    net.eval()
    rng = np.random.default_rng(1)
    for batch, (h, w) in zip((1, 3), SIDES[key], strict=True):
        x = rng.standard_normal((batch, model.in_channels, h, w))
        np.testing.assert_allclose(torch_forward(net, x), model.forward(x), **EXACT)


@pytest.mark.parametrize("key", ["same-bn", "valid-bn"])
def test_training_mode_forward_and_running_statistics_agree(key):
    # Batch statistics in the forward, the same momentum and unbiased running variance.
    model = minunet_model(key).train()
    net = TorchUNet(**model.config).double()
    net.load_state_dict(to_torch_state_dict(model.state_dict()), strict=True)
    net.train()
    x = np.random.default_rng(2).standard_normal((2, model.in_channels, *SIDES[key][0]))
    np.testing.assert_allclose(torch_forward(net, x), model.forward(x), **EXACT)
    after = from_torch_state_dict(net.state_dict())
    for name, a in model.state_dict().items():
        np.testing.assert_allclose(after[name], a, **EXACT, err_msg=name)


@pytest.mark.parametrize("key", CONFIGS)
def test_torch_weights_in_minunet_give_the_same_outputs(key):
    torch.manual_seed(3)
    net = TorchUNet(**CONFIGS[key]).double()
    with torch.no_grad():  # PyTorch initialises BN at 0 / 1: make the statistics real
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.3)
                module.bias.normal_(0, 0.3)
    net.eval()
    state = from_torch_state_dict(net.state_dict())
    assert all(isinstance(a, np.ndarray) for a in state.values())
    model = UNet(**CONFIGS[key], dtype=np.float64)
    model.load_state_dict(state)
    model.eval()
    x = np.random.default_rng(4).standard_normal((2, model.in_channels, *SIDES[key][1]))
    np.testing.assert_allclose(model.forward(x), torch_forward(net, x), **EXACT)


def test_conversions_copy_so_the_two_sides_stay_independent():
    model = minunet_model("same-bn", dtype=np.float32)
    sd = to_torch_state_dict(model.state_dict())
    sd["head.bias"] += 1
    assert not np.allclose(model.state_dict()["head.bias"], sd["head.bias"].numpy())
    back = from_torch_state_dict(sd)
    back["head.bias"] += 1
    assert not np.allclose(back["head.bias"], sd["head.bias"].numpy())


# -- ONNX -------------------------------------------------------------------------------------
def test_valid_sizes_are_the_ones_unet_accepts():
    for depth in (1, 2, 3, 4):
        net = UNet(base_channels=1, depth=depth, padding="valid")
        first = geometry.input_size(depth, "valid")
        for k in range(3):
            side = geometry.input_size(depth, "valid", k)
            assert side == first + k * 2**depth
            assert net.output_size(side) == side - 2 * geometry.border(depth, "valid")
        for side in (first - 2**depth, first - 1, first + 1):
            with pytest.raises(Exception, match="does not fit"):
                net.output_size(side)
    assert 2 * geometry.border(4, "valid") == 572 - 388  # the paper's figure 1


@pytest.mark.parametrize("key", CONFIGS)
def test_onnx_matches_minunet_on_two_sizes_and_two_batch_sizes(key):
    model = minunet_model(key, dtype=np.float32).eval()
    meta = {
        "data": {
            "class_names": ["a", "b"],
            "mask_values": [0, 255],
            "normalization": {"mean": 0.5, "std": 0.25},
            "input": {"mode": "resized", "size": 64},
        }
    }
    proto = unet_to_onnx(model.state_dict(), model.config, meta)
    assert "resize each image to 64x64 (bilinear) before" in proto.doc_string
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.opset_import[0].version >= 17
    assert "(pixel / 255 - mean) / std with mean=0.5, std=0.25" in proto.doc_string
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["minunet.config"]) == model.config
    assert json.loads(props["minunet.mask_values"]) == [0, 255]
    assert json.loads(props["minunet.input"]) == {"mode": "resized", "size": 64}
    ops = {n.op_type for n in proto.graph.node}
    assert ("BatchNormalization" in ops) == model.config["batchnorm"]
    assert ("Slice" in ops) == (model.config["padding"] == "valid")

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for batch in (1, 3):
        for h, w in SIDES[key]:
            x = rng.standard_normal((batch, model.in_channels, h, w)).astype(np.float32)
            (logits,) = session.run(["logits"], {"image": x})
            np.testing.assert_allclose(logits, model.forward(x), **FLOAT32)


def test_minunet_imports_neither_torch_nor_onnx_until_asked():
    code = (
        "import sys, minunet.io.export, minunet.io.interop, minunet.io.checkpoint, minunet.model; "
        "print(sorted({'torch', 'onnx', 'onnxruntime'} & set(sys.modules)))"
    )
    done = run_python("-c", code)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_onnx_doc_string_says_when_the_checkpoint_lacks_its_normalisation():
    model = UNet(**CONFIGS["same-bn"])
    doc = unet_to_onnx(model.state_dict(), model.config, {}).doc_string
    assert "does not record" in doc and "(pixel / 255 - 0.5) / 0.25" in doc


def test_onnx_export_names_a_missing_tensor():
    model = UNet(**CONFIGS["same-nobn"])
    state = model.state_dict()
    del state["decoder.1.conv2.bias"]
    with pytest.raises(ValueError, match="decoder.1.conv2.bias"):
        unet_to_onnx(state, model.config)


# -- the command line ------------------------------------------------------------------------
def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m minunet.export *args`` run in ``cwd``, this checkout first on the path."""
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return run_python(
        "-m", "minunet.export", *args, cwd=cwd, extra_env={"PYTHONPATH": pythonpath}, timeout=120
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, UNet]:
    model = minunet_model("valid-bn", dtype=np.float32).eval()
    meta = {"model": model.config, "data": {"class_names": ["x", "y", "z"]}}
    save_checkpoint(tmp_path / "best.npz", model.state_dict(), meta)
    return tmp_path / "best.npz", model


def test_cli_round_trip_through_torch_and_onnx(tmp_path, checkpoint):
    ckpt, model = checkpoint
    x = np.random.default_rng(6).standard_normal((2, 2, 44, 48)).astype(np.float32)
    expected = model.forward(x)

    done = run_cli("--checkpoint", str(ckpt), "--to", "torch", "model.pt", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    sd = torch.load(tmp_path / "model.pt", weights_only=True)
    net = TorchUNet(**model.config)
    net.load_state_dict(sd, strict=True)
    np.testing.assert_allclose(torch_forward(net.eval(), x), expected, **FLOAT32)

    done = run_cli("--checkpoint", str(ckpt), "--to", "onnx", "model.onnx", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    onnx.checker.check_model(str(tmp_path / "model.onnx"), full_check=True)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"image": x})[0], expected, **FLOAT32)

    done = run_cli(
        "--from", "torch", "model.pt", "--config-from", str(ckpt), "--out", "back.npz", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    back = load_checkpoint(tmp_path / "back.npz")
    assert back.model_config == model.config
    assert back.meta["data"]["class_names"] == ["x", "y", "z"]  # carried over
    for name, a in model.state_dict().items():
        np.testing.assert_array_equal(back.model_state[name], a, err_msg=name)

    done = run_cli(
        "--from", "torch", "model.pt", "--config", json.dumps(model.config), "--out", "b2.npz",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    b2 = load_checkpoint(tmp_path / "b2.npz")
    assert b2.model_config == model.config and "data" not in b2.meta
    config = tmp_path / "config.json"  # --config also takes a file
    config.write_text(json.dumps(model.config))
    args = ["--from", "torch", str(tmp_path / "model.pt"), "--config", str(config)]
    assert cli.main([*args, "--out", str(tmp_path / "b3.npz")]) == 0
    assert load_checkpoint(tmp_path / "b3.npz").model_config == model.config


def test_cli_errors_are_one_line_in_a_real_process(tmp_path, checkpoint):
    ckpt, _ = checkpoint
    assert_one_line_error(
        run_cli("--checkpoint", "missing.npz", "--to", "torch", "m.pt", cwd=tmp_path),
        "missing.npz",
        "no such",
    )
    assert_one_line_error(
        run_cli("--checkpoint", str(ckpt), "--to", "tflite", "m.tfl", cwd=tmp_path),
        "'tflite'",
        "'torch' or 'onnx'",
    )
    assert_one_line_error(run_cli("--checkpoint", str(ckpt), cwd=tmp_path), "give either")


def test_cli_errors_are_one_line(tmp_path, checkpoint, capsys):
    # The same main() as above, called in this process to keep the test quick.
    ckpt, _ = checkpoint
    torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04 not really a zip")
    other = to_torch_state_dict(UNet(**CONFIGS["same-bn"]).state_dict())
    torch.save(other, tmp_path / "o.pt")
    model = UNet(**CONFIGS["same-bn"])
    bad = {"model": {**model.config, "padding": "bogus"}}  # UNet itself refuses this
    save_checkpoint(tmp_path / "bad.npz", model.state_dict(), bad)
    os.chdir(tmp_path)
    c = str(ckpt)
    cases = [
        (["--checkpoint", "bad.npz", "--to", "torch", "m.pt"],
         ["bad.npz", "model configuration not accepted", "padding"]),
        (["--checkpoint", c, "--to", "onnx"], ["expected 2 arguments"]),
        (["--checkpoint", c, "--to", "torch", "m.pt", "--out", "x.npz"], ["--out belongs"]),
        (["--checkpoint", c, "--to", "torch", c], ["refusing to overwrite"]),
        (["--to", "torch", "m.pt"], ["needs --checkpoint"]),
        (["--from", "onnx", "m.onnx", "--config-from", c, "--out", "c.npz"], ["only 'torch'"]),
        (["--from", "torch", "o.pt", "--out", "c.npz"], ["exactly one of"]),
        (["--from", "torch", "o.pt", "--config-from", c], ["needs --out"]),
        (["--from", "torch", "o.pt", "--config", '{"depth": 2}', "--out", "c.npz"],
         ["missing in_channels"]),
        (["--from", "torch", "o.pt", "--config", "{nope", "--out", "c.npz"], ["neither"]),
        (["--from", "torch", "none.pt", "--config-from", c, "--out", "c.npz"], ["no such file"]),
        (["--from", "torch", "pickled.pt", "--config-from", c, "--out", "c.npz"],
         ["refused", "weights_only"]),
        (["--from", "torch", "truncated.pt", "--config-from", c, "--out", "c.npz"],
         ["not a loadable"]),
        (["--from", "torch", "o.pt", "--config-from", c, "--out", "c.npz"],
         ["o.pt", "shape mismatch"]),
    ]  # fmt: skip
    for args, fragments in cases:
        assert cli.main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        for fragment in fragments:
            assert fragment in err, (args, err)
    assert not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize(
    "blocked, args, advice",
    [
        ("torch", ["--to", "torch", "m.pt"], "pip install torch"),
        ("onnx", ["--to", "onnx", "m.onnx"], "pip install 'minunet[export]'"),
    ],
)
def test_missing_libraries_are_one_line_with_the_install_command(
    monkeypatch, capsys, tmp_path, checkpoint, blocked, args, advice
):
    monkeypatch.setitem(sys.modules, blocked, None)  # makes `import <blocked>` fail
    assert cli.main(["--checkpoint", str(checkpoint[0]), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and advice in err


def test_import_accepts_wrapped_keys_and_a_missing_dropout_counter(tmp_path, checkpoint):
    # DataParallel prefixes every key with "module."; a PyTorch-trained model may lack
    # minunet's dropout counter.
    ckpt, model = checkpoint
    sd = {"module." + k: v for k, v in to_torch_state_dict(model.state_dict()).items()}
    del sd["module.dropout.calls"]
    torch.save(sd, tmp_path / "wrapped.pt")
    args = ["--from", "torch", str(tmp_path / "wrapped.pt"), "--config-from", str(ckpt)]
    assert cli.main([*args, "--out", str(tmp_path / "w.npz")]) == 0
    state = load_checkpoint(tmp_path / "w.npz").model_state
    np.testing.assert_array_equal(state["head.weight"], model.state_dict()["head.weight"])

"""Mutations for lessons 00-09: one plausible mistake per check, and the check it trips.

Read by ``tests/test_lesson_mutations.py`` (the format is described there). Each row breaks
one thing; the lesson must then stop with an AssertionError in the statement that
contains ``check``. Most rows break minunet's reference code (``minunet/nn``,
``minunet/core``, ``minunet/data``, ``minunet/model``); rows on ``minunet/accel`` say so in
their note. A check that compares two of the lesson's own derivations (or demonstrates a
property, like a loss whose true gradient is zero) is broken in the lesson itself: that
shows what the check would catch, since no library code feeds it.
"""

from __future__ import annotations


def _row(lesson: str, path: str, find: str, replace: str, check, note: str = "", **extra):
    row = dict(lesson=lesson, path=path, find=find, replace=replace, check=check, **extra)
    if note:
        row["note"] = note
    return row


L00 = "lessons/00_arrays_and_backend.py"
L01 = "lessons/01_convolution_im2col.py"
L02 = "lessons/02_backprop_conv.py"
L03 = "lessons/03_pool_and_upsample.py"
L04 = "lessons/04_unet.py"
L05 = "lessons/05_loss_and_metrics.py"
L06 = "lessons/06_data.py"
L07 = "lessons/07_training.py"
L08 = "lessons/08_gpu.py"
L09 = "lessons/09_fast_numpy.py"
IM2COL = "minunet/core/im2col.py"
CONV = "minunet/nn/conv.py"
BN = "minunet/nn/batchnorm.py"
CPU = "minunet/accel/cpu.py"

MUTATIONS = [
    # -- lesson 00: layouts, normalisation, broadcasting, the backend ----------------------
    _row(
        "00",
        L00,
        '"NHWC (channels last)": np.ascontiguousarray(tiny).ravel()',
        '"NHWC (channels last)": np.ascontiguousarray(tiny.transpose(1, 0, 2)).ravel()',
        'assert orders["NHWC (channels last)"]',
        "the figure's memory order, row-major NHWC, read in another order",
    ),
    _row(
        "00",
        L00,
        "np.ascontiguousarray(tiny.transpose(2, 0, 1)).ravel()",
        "np.ascontiguousarray(tiny.transpose(2, 1, 0)).ravel()",
        'assert orders["NCHW (channels first)"]',
        "channels first, but the plane stored column by column",
    ),
    _row(
        "00",
        "minunet/data/loader.py",
        "offset = (-mean_c / std_c)",
        "offset = (mean_c / std_c)",
        "np.testing.assert_allclose(x_lib, x_by_hand",
        "normalize adds the mean instead of subtracting it",
    ),
    _row(
        "00",
        "minunet/data/loader.py",
        "out = xp.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)",
        "out = images.transpose(0, 3, 1, 2).astype(np.float32)",
        'assert x_lib.flags["C_CONTIGUOUS"]',
        "astype of the transposed view keeps NHWC memory order: right values, wrong layout",
    ),
    _row(
        "00",
        L00,
        "shifted = x_lib + b[:, None, None]",
        "shifted = x_lib + b[::-1, None, None]",
        "assert np.allclose(shifted[:, c] - x_lib[:, c], b[c])",
    ),
    _row(
        "00",
        "minunet/core/backend.py",
        "            return cupy\n    return np\n",
        "            return cupy\n    import types\n\n    return types.SimpleNamespace(**vars(np))\n",
        "assert get_array_module(x_lib) is np",
        "a numpy look-alike instead of the numpy module: works, but is not numpy",
    ),
    _row(
        "00",
        "minunet/core/backend.py",
        '    if name == "numpy":\n        return np\n',
        '    if name == "numpy":\n        return np.random\n',
        'assert get_backend("numpy") is np',
    ),
    # -- lesson 01: convolution as im2col + matmul -----------------------------------------
    _row(
        "01",
        L01,
        "cols[:, :, oh * wo + ow] = patch.reshape(n, -1)",
        "cols[:, :, ow * ho + oh] = patch.reshape(n, -1)",
        "np.testing.assert_allclose(out_matmul, out_loops",
        "the loop im2col numbers its columns column-major: the matmul no longer matches",
    ),
    _row(
        "01",
        IM2COL,
        "return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1",
        "return (size + 2 * padding - dilation * (kernel - 1)) // stride + 1",
        'assert ho * wo == reference.shape[2], "conv_output_size"',
        "off by one in the output size",
    ),
    _row(
        "01",
        L01,
        "            cols[:, :, i, j] = x_pad[",
        "            cols[:, :, j, i] = x_pad[",
        "np.testing.assert_array_equal(im2col_offsets(",
        "the lesson's offset im2col swaps the kernel offsets",
    ),
    _row(
        "01",
        IM2COL,
        "            cols[:, :, i, j] = x_pad[",
        "            cols[:, :, j, i] = x_pad[",
        "np.testing.assert_array_equal(im2col(x, 3, 3, stride, padding), reference)",
        "im2col's rows in (c, j, i) order instead of the weight's (c, i, j)",
    ),
    _row(
        "01",
        CONV,
        "            out += bias[:, None]",
        "            out -= bias[:, None]",
        "np.testing.assert_allclose(out_lib, conv2d_loops(",
        "the reference (im2col) Conv2d subtracts its bias",
    ),
    _row(
        "01",
        L01,
        "im2col16 = weight16.reshape(4, -1) @ im2col(x16, 3, 3, 1, 1) + bias16[:, None]",
        "im2col16 = weight16.reshape(4, -1) @ im2col(x16, 3, 3, 1, 1) - bias16[:, None]",
        "np.testing.assert_allclose(im2col16.reshape(loops16.shape), loops16",
    ),
    _row(
        "01",
        CPU,
        "            for a in range(1, kh):\n                np.matmul(cols[a * wo",
        "            for a in range(2, kh):\n                np.matmul(cols[a * wo",
        ("conv16.forward(x16)", "cpu.conv2d_forward(x16"),
        "accelerated path (minunet.accel.cpu): one kernel row dropped. Today Conv2d takes it"
        " for 16 channels, so conv16.forward trips first; once Conv2d is the pure reference,"
        " the direct cpu.conv2d_forward call does",
    ),
    _row(
        "01",
        L01,
        "torch.from_numpy(bias), padding=1",
        "torch.from_numpy(-bias), padding=1",
        "np.testing.assert_allclose(out_loops, reference, atol=1e-12)",
        "PyTorch's second opinion disagrees (runs where torch is installed)",
        needs="torch",
    ),
    _row(
        "01",
        "minunet/model/summary.py",
        "    return int(sum(p.data.size for p in layer.parameters()))",
        "    return int(sum(p.data.size for p in layer.parameters())) + 1",
        "assert params == k_out * c_in_ * ksize * ksize + k_out",
        "summary's parameter count off by one",
    ),
    _row(
        "01",
        "minunet/model/summary.py",
        "flops = 2 * n * layer.out_channels * ho * wo * c * k * k",
        "flops = 2 * n * layer.out_channels * ho * wo * c * k",
        "assert 0.95 < share_3x3 < 0.97",
        "summary counts a k x k convolution's FLOPs with one k",
    ),
    # -- lesson 02: backprop through conv, ReLU, BatchNorm ---------------------------------
    _row(
        "02",
        IM2COL,
        "left : left + stride * wo : stride] += (",
        "left : left + stride * wo : stride] = (",
        "col2im_loops(dcols, x_shape, 3, 3, stride, padding)",
        "col2im overwrites where overlapping patches should add",
    ),
    _row(
        "02",
        IM2COL,
        "            cols[:, :, i, j] = x_pad[",
        "            cols[:, :, j, i] = x_pad[",
        "assert abs(lhs - rhs) < 1e-9 * max(1.0, abs(lhs))",
        "im2col and col2im no longer each other's adjoint (col2im's own check passes)",
    ),
    _row(
        "02",
        CONV,
        "cols.transpose(0, 2, 1)).sum(axis=0)",
        "cols.transpose(0, 2, 1))[0]",
        'np.testing.assert_allclose(conv.params["weight"].grad, dw_hand',
        "dW of the first image only: the sum over the batch forgotten",
    ),
    _row(
        "02",
        CONV,
        'self.params["bias"].grad += d.sum(axis=(0, 2))',
        'self.params["bias"].grad += d[0].sum(axis=1)',
        'np.testing.assert_allclose(conv.params["bias"].grad, db_hand',
        "db of the first image only",
    ),
    _row(
        "02",
        CONV,
        "dcols = cpu.batched_matmul(weight.data.reshape(kout, -1).T, d)",
        "dcols = cpu.batched_matmul(-weight.data.reshape(kout, -1).T, d)",
        'err_msg="Conv2d dx"',
        "the input gradient's sign flipped",
    ),
]

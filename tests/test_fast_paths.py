"""The CPU fast paths against the reference layers they replace, on the same inputs.

``FastConv2d`` (``minunet.accel.conv``) computes stride-1 convolutions in row blocks (each
tap a shift of the flattened padded rows) or blocks of whole images, over threads
(``minunet.accel.cpu``), and other geometries through im2col with
products split over threads; ``FastConvTranspose2d`` splits its products the same way.
Within the reference layers, ConvTranspose2d with kernel == stride skips col2im and
MaxPool2d 2x2 is a tournament. Each must agree with the reference (which
tests/test_torch_parity.py checks against PyTorch) or with a brute-force loop, for every
geometry it accepts.
"""

import copy
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minunet.accel import accelerate, cpu, fast_paths
from minunet.accel.conv import BlockedConvCache, FastConv2d, FastConvTranspose2d
from minunet.nn import Conv2d, ConvTranspose2d, MaxPool2d
from minunet.nn.conv import Im2colCache
from minunet.nn.optim import SGD, Adam, AdamW


def run(layer, x, dout):
    """(out, dx, *parameter gradients) of one forward and backward, from zeroed gradients."""
    for p in layer.params.values():
        p.grad[...] = 0
    out = layer.forward(x)
    dx = layer.backward(dout)
    return (out, dx, *(p.grad.copy() for p in layer.params.values()))


def nan_scratch(name, shape, dtype, _scratch=cpu.scratch):
    """``cpu.scratch`` handing out buffers full of NaN: a value that the fast paths read
    before writing it (a padding ring not zeroed, a column left over from the last block)
    then spreads NaN into the result, where a leftover finite value might hide."""
    buf = _scratch(name, shape, dtype)
    buf.fill(np.nan)
    return buf


def fast_and_reference(layer, x, dout, blocked=None):
    """``run`` for the accelerated copy of ``layer`` and for the reference ``layer`` itself;
    ``blocked`` (if not None) is whether the fast copy must take the blocked convolution."""
    fast = accelerate(copy.deepcopy(layer))
    assert type(fast) is not type(layer)  # a fast class is registered for it
    got = run(fast, x, dout)
    if blocked is not None:
        assert isinstance(fast._cache, BlockedConvCache) == blocked
    return got, run(layer, x, dout)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    cin=st.integers(1, 13),  # below and above cpu.ROW_GRAD_CHANNELS (12)
    cout=st.integers(1, 6),
    k=st.sampled_from([1, 2, 3, 5]),
    pad=st.integers(0, 4),
    h=st.integers(5, 11),
    w=st.integers(5, 11),
    bias=st.booleans(),
    block_bytes=st.sampled_from([1, 500, 1 << 20]),  # one row (or image) per block ... all
    small=st.booleans(),  # blocks of whole images with full columns, or blocks of rows
    rows=st.booleans(),  # those blocks of rows by _row_products, or by _blocked_products
    seed=st.integers(0, 2**16),
)
def test_conv2d_fast_path_matches_im2col(
    n, cin, cout, k, pad, h, w, bias, block_bytes, small, rows, seed
):
    pad = min(pad, k - 1)  # the fast path's condition; larger paddings use the reference
    rng = np.random.default_rng(seed)
    layer = Conv2d(cin, cout, k, padding=pad, bias=bias, dtype=np.float64, rng=rng)
    if bias:
        layer.params["bias"].data[...] = rng.standard_normal(cout)
    x = rng.standard_normal((n, cin, h, w))
    ho, wo = layer.output_shape(h, w)
    dout = rng.standard_normal((n, cout, ho, wo))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpu, "BLOCK_BYTES", block_bytes)
        mp.setattr(cpu, "IMAGE_BLOCK_BYTES", block_bytes)
        mp.setattr(cpu, "MIN_BLOCK_PIXELS", 1)  # let tiny images split into row blocks
        mp.setattr(cpu, "SMALL_PIXELS", 10**6 if small else 0)
        mp.setattr(cpu, "ROW_TAPS_BYTES", block_bytes)
        mp.setattr(cpu, "ROW_TAPS_WIDTH", 0 if rows else 10**6)
        mp.setattr(cpu, "scratch", nan_scratch)
        calls = spy(
            mp,
            "_row_products",
            "_blocked_products",
            "_image_products",
            "_image_weight_grad",
            "_row_taps_weight_grad",
            "_rows_weight_grad",
        )
        assert cpu.small_images(x, k, k, pad) == small
        fast, ref = fast_and_reference(layer, x, dout, blocked=True)
    # the forward, the weight gradient and the input gradient, each by the path asked for
    taken = "_image_products" if small else "_row_products" if rows else "_blocked_products"
    weight_grad = (
        "_image_weight_grad"
        if small
        else "_row_taps_weight_grad"
        if cin < cpu.ROW_GRAD_CHANNELS
        else "_rows_weight_grad"
    )
    assert calls == [taken, weight_grad, taken]
    for a, b in zip(fast, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def spy(mp, *names):
    """Wrap the named functions of ``cpu`` (through ``mp``) to record each call's name in
    the list returned, in call order."""
    calls = []

    def recorder(name):
        inner = getattr(cpu, name)

        def recorded(*args, **kwargs):
            calls.append(name)
            return inner(*args, **kwargs)

        return recorded

    for name in names:
        mp.setattr(cpu, name, recorder(name))
    return calls


def test_conv2d_fast_path_float32_strided_gradient_and_threads(monkeypatch):
    """float32, a U-Net-like shape, an output gradient that is a channel slice of a larger
    array (what Concat's backward hands over), and 1 or 3 worker threads, on each path."""
    rng = np.random.default_rng(0)
    layer = Conv2d(8, 6, 3, padding=1, bias=False, rng=rng)
    x = rng.standard_normal((2, 8, 16, 12), dtype=np.float32)
    dout = rng.standard_normal((2, 10, 16, 12), dtype=np.float32)[:, 2:8]
    for threads, small, rows, few in (
        ("1", False, False, False),
        ("3", False, False, False),
        ("1", False, True, False),
        ("3", False, True, False),
        ("1", True, False, False),
        ("3", True, False, False),
        ("1", False, True, True),  # the weight gradient by rows, as for RGB inputs
        ("3", False, True, True),
    ):
        monkeypatch.setenv("MINUNET_THREADS", threads)
        monkeypatch.setattr(cpu, "SMALL_PIXELS", 10**6 if small else 0)
        monkeypatch.setattr(cpu, "ROW_TAPS_WIDTH", 0 if rows else 10**6)
        monkeypatch.setattr(cpu, "ROW_GRAD_CHANNELS", 9 if few else 8)  # the layer has 8
        fast, ref = fast_and_reference(layer, x, dout, blocked=True)
        for a, b in zip(fast, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@given(
    n=st.integers(1, 3),
    threads=st.integers(2, 5),
    h=st.integers(1, 9),
    w=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=25, deadline=None)
def test_small_images_fewer_than_threads_split_their_rows(n, threads, h, w, seed):
    """With fewer images than threads (prediction's batch of 1) the whole-image path
    shares each image's output rows out between the threads; float64 against im2col,
    for image heights below, at and above the number of row ranges."""
    rng = np.random.default_rng(seed)
    layer = Conv2d(8, 5, 3, padding=1, bias=True, dtype=np.float64, rng=rng)
    layer.params["bias"].data[...] = rng.standard_normal(5)
    x = rng.standard_normal((n, 8, h, w))
    dout = rng.standard_normal((n, 5, h, w))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINUNET_THREADS", str(threads))
        mp.setattr(cpu, "SMALL_PIXELS", 10**6)
        fast, ref = fast_and_reference(layer, x, dout, blocked=True)
    for a, b in zip(fast, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@given(n=st.integers(1, 40), threads=st.integers(1, 5), cap=st.integers(1, 12))
def test_image_blocks_cover_the_batch_evenly_within_the_cap(n, threads, cap):
    """The whole-image blocks: every image once, in order, at most ``cap`` images (of
    IMAGE_BLOCK_BYTES) each, and ``parallel``'s contiguous chunks of them give the threads
    shares of the batch that differ by at most one block's worth (8 images in blocks of
    at most 3 were 3+3+2, one thread 5 images and the other 3)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINUNET_THREADS", str(threads))
        mp.setattr(cpu, "IMAGE_BLOCK_BYTES", cap * 1000)
        blocks = cpu._image_blocks(n, 1000)
    assert [i for i0, i1 in blocks for i in range(i0, i1)] == list(range(n))
    sizes = [i1 - i0 for i0, i1 in blocks]
    assert max(sizes) <= cap and max(sizes) - min(sizes) <= 1
    used = min(threads, len(blocks))
    bounds = [len(blocks) * t // used for t in range(used + 1)]  # parallel's chunks
    shares = [sum(sizes[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    assert max(shares) - min(shares) <= max(sizes)
    # no more blocks than the cap needs, per thread: ceil(ceil(n / threads) / cap) each
    per_thread = math.ceil(math.ceil(n / threads) / cap)
    assert len(blocks) <= threads * per_thread


def test_fast_path_is_skipped_where_it_does_not_apply():
    x = np.zeros((1, 8, 8, 8), np.float32)
    assert cpu.fast_conv_ok(x, 1, 1, 1, 3)
    assert not cpu.fast_conv_ok(x, 2, 1, 1, 3)  # stride
    assert not cpu.fast_conv_ok(x, 1, 2, 1, 3)  # dilation
    assert not cpu.fast_conv_ok(x, 1, 1, 3, 3)  # padding > k - 1
    assert not cpu.fast_conv_ok(x.astype(np.float16), 1, 1, 1, 3)
    assert cpu.fast_conv_ok(x[:, :1], 1, 1, 1, 3)  # few channels (an RGB input) too


def test_parallel_reraises_a_worker_error(monkeypatch):
    monkeypatch.setenv("MINUNET_THREADS", "2")

    def work(worker, chunk):
        if worker == 1:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cpu.parallel(work, [0, 1, 2, 3])


def test_parallel_runs_every_chunk_once_and_the_workers_serve_again_after_an_error(monkeypatch):
    """Each item reaches ``fn`` once, under the worker index of its chunk; after a worker
    raised, the next call's chunks all run; and when the caller's own chunk raises,
    ``parallel`` still waits for the workers' chunks before it re-raises."""
    monkeypatch.setenv("MINUNET_THREADS", "3")
    for _ in range(3):
        seen: list[tuple[int, int]] = []

        def work(worker, chunk, seen=seen):
            seen.extend((worker, item) for item in chunk)  # list.extend holds the GIL

        cpu.parallel(work, list(range(7)))
        assert sorted(item for _, item in seen) == list(range(7))
        assert sorted({w for w, _ in seen}) == [0, 1, 2]
        with pytest.raises(RuntimeError, match="worker 2"):

            def fail(worker, chunk):
                if worker == 2:
                    raise RuntimeError("worker 2")

            cpu.parallel(fail, list(range(7)))
    finished: list[int] = []

    def slow_workers(worker, chunk):
        if worker == 0:
            raise ValueError("caller")
        time.sleep(0.05)
        finished.append(worker)

    with pytest.raises(ValueError, match="caller"):
        cpu.parallel(slow_workers, list(range(6)))
    assert sorted(finished) == [1, 2]  # both done before parallel returned


def test_parallel_nested_or_from_two_threads_at_once_completes(monkeypatch):
    """A call made while the workers are busy (from inside a chunk, or from a second
    thread) runs its chunks on its own thread: every item done, nothing deadlocked."""
    import threading

    monkeypatch.setenv("MINUNET_THREADS", "2")
    totals = np.zeros(2, dtype=np.int64)

    def inner(worker, chunk):
        for i in chunk:
            totals[1] += i  # only ever on the calling thread: the workers are busy

    def outer(worker, chunk):
        for i in chunk:
            totals[0] += i
            if worker == 1:
                cpu.parallel(inner, list(range(4)))

    cpu.parallel(outer, list(range(4)))
    assert totals[0] == 6 and totals[1] == 2 * 6  # two items in worker 1's chunk

    results = {}

    def run(name):
        out = np.zeros(64)

        def fill(worker, chunk):
            for i in chunk:
                out[i] = i * i

        for _ in range(50):
            cpu.parallel(fill, list(range(64)))
        results[name] = out

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    for out in results.values():
        np.testing.assert_array_equal(out, np.arange(64.0) ** 2)


def test_on_every_worker_runs_once_in_each_pool_thread(monkeypatch):
    import threading

    monkeypatch.setenv("MINUNET_THREADS", "3")
    cpu.parallel(lambda worker, chunk: None, range(3))  # the pool has at least 2 workers
    names: list[str] = []
    cpu.on_every_worker(lambda: names.append(threading.current_thread().name))
    assert len(names) == len(set(names)) >= 2
    assert all(name.startswith("minunet") for name in names)
    with pytest.raises(KeyError):
        cpu.on_every_worker(lambda: {}["missing"])
    cpu.parallel(lambda worker, chunk: None, range(3))  # and the pool still serves


def test_single_threaded_blas_holds_blas_to_one_thread_and_restores_it():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    with cpu.single_threaded_blas():
        inside = [
            i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
        ]
    after = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    assert before and inside == [1] * len(before)
    assert after == before


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 3),
    cin=st.integers(1, 5),
    cout=st.integers(1, 5),
    k=st.integers(1, 3),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_conv_transpose_tiling_path_matches_col2im(n, cin, cout, k, h, w, seed):
    rng = np.random.default_rng(seed)
    layer = ConvTranspose2d(cin, cout, k, stride=k, dtype=np.float64, rng=rng)
    layer.params["bias"].data[...] = rng.standard_normal(cout)
    x = rng.standard_normal((n, cin, h, w))
    dout = rng.standard_normal((n, cout, h * k, w * k))
    results = []
    with pytest.MonkeyPatch.context() as mp:
        for tiled in (True, False):
            mp.setattr(ConvTranspose2d, "_patches_tile", lambda self, t=tiled: t)
            for p in layer.params.values():
                p.grad[...] = 0
            out = layer.forward(x)
            dx = layer.backward(dout)
            results.append((out, dx, *(p.grad.copy() for p in layer.params.values())))
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 3),
    stride=st.integers(1, 3),
    h=st.integers(2, 7),
    w=st.integers(2, 7),
    seed=st.integers(0, 2**16),
)
def test_maxpool_2x2_tournament_matches_brute_force_with_ties(n, c, stride, h, w, seed):
    """Values from {0, 1, 2} make ties common; the first maximum in row-major order wins
    and alone receives the gradient (PyTorch's rule)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, (n, c, h, w)).astype(np.float32)
    pool = MaxPool2d(2, stride)
    out = pool.forward(x)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = pool.backward(dout)
    ho, wo = out.shape[2:]
    want_out = np.zeros_like(out)
    want_dx = np.zeros_like(x)
    for i, j, oh, ow in np.ndindex(n, c, ho, wo):
        window = x[i, j, oh * stride : oh * stride + 2, ow * stride : ow * stride + 2]
        first = np.argmax(window)  # the first maximum, row-major
        want_out[i, j, oh, ow] = window.flat[first]
        a, b = divmod(first, 2)
        want_dx[i, j, oh * stride + a, ow * stride + b] += dout[i, j, oh, ow]
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    cin=st.integers(1, 10),
    cout=st.integers(1, 5),
    k=st.integers(1, 3),
    stride=st.integers(1, 3),
    pad=st.integers(0, 3),
    dilation=st.integers(1, 2),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fast_conv2d_matches_the_reference_on_every_geometry(
    n, cin, cout, k, stride, pad, dilation, bias, seed
):
    """FastConv2d on any geometry: blocked where it applies, im2col with threaded products
    elsewhere (strides, dilations, large paddings)."""
    rng = np.random.default_rng(seed)
    layer = Conv2d(cin, cout, k, stride, pad, bias, dilation, dtype=np.float64, rng=rng)
    x = rng.standard_normal((n, cin, 9, 8))
    ho, wo = layer.output_shape(9, 8)
    dout = rng.standard_normal((n, cout, ho, wo))
    blocked = cpu.fast_conv_ok(x, stride, dilation, pad, k)
    fast, ref = fast_and_reference(layer, x, dout, blocked=blocked)
    for a, b in zip(fast, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 3),
    cin=st.integers(1, 5),
    cout=st.integers(1, 5),
    k=st.integers(1, 3),
    stride=st.integers(1, 3),
    pad=st.integers(0, 1),
    seed=st.integers(0, 2**16),
)
def test_fast_conv_transpose2d_matches_the_reference(n, cin, cout, k, stride, pad, seed):
    """FastConvTranspose2d: the same products, split over images and threads."""
    rng = np.random.default_rng(seed)
    layer = ConvTranspose2d(cin, cout, k, stride, pad, dtype=np.float64, rng=rng)
    layer.params["bias"].data[...] = rng.standard_normal(cout)
    x = rng.standard_normal((n, cin, 4, 5))
    ho, wo = layer.output_shape(4, 5)
    if ho < 1 or wo < 1:
        return
    dout = rng.standard_normal((n, cout, ho, wo))
    fast, ref = fast_and_reference(layer, x, dout)
    for a, b in zip(fast, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make", [lambda: Conv2d(8, 4, 3, padding=1), lambda: Conv2d(3, 4, 3)])
def test_fast_conv_with_the_cpu_paths_off_is_the_reference_to_the_bit(make):
    """fast_paths(cpu=False): FastConv2d runs im2col and plain products, as Conv2d does."""
    rng = np.random.default_rng(4)
    layer = make()
    x = rng.standard_normal((2, layer.in_channels, 8, 8), dtype=np.float32)
    dout = rng.standard_normal((2, 4, *layer.output_shape(8, 8)), dtype=np.float32)
    fast = accelerate(copy.deepcopy(layer))
    assert isinstance(fast, FastConv2d)
    with fast_paths(cpu=False):
        got = run(fast, x, dout)
        assert isinstance(fast._cache, Im2colCache)
    for a, b in zip(got, run(layer, x, dout), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fast_conv_transpose_with_the_cpu_paths_off_is_the_reference_to_the_bit():
    rng = np.random.default_rng(5)
    layer = ConvTranspose2d(16, 8, 2, 2)
    x = rng.standard_normal((4, 16, 8, 8), dtype=np.float32)
    dout = rng.standard_normal((4, 8, 16, 16), dtype=np.float32)
    fast = accelerate(copy.deepcopy(layer))
    assert isinstance(fast, FastConvTranspose2d)
    with fast_paths(cpu=False):
        got = run(fast, x, dout)
    for a, b in zip(got, run(layer, x, dout), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", ["1", "3"])
@pytest.mark.parametrize(
    "a_shape, b_shape",
    [
        ((4, 5), (3, 5, 6)),
        ((3, 4, 5), (3, 5, 6)),
        ((3, 4, 5), (5, 6)),
        ((1, 4, 5), (5, 2)),  # fewer images than threads: split along the rows of a ...
        ((2, 5), (1, 5, 9)),  # ... or along the columns of b, the larger side
        ((1, 1, 3), (1, 3, 1)),  # a side shorter than the threads
    ],
)
def test_batched_matmul_matches_matmul(a_shape, b_shape, threads, monkeypatch):
    monkeypatch.setenv("MINUNET_THREADS", threads)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    np.testing.assert_allclose(cpu.batched_matmul(a, b), a @ b, rtol=1e-12, atol=1e-12)
    # a transposed view (what the layers' weight gradients pass) is read correctly too
    bt = np.ascontiguousarray(np.swapaxes(b, -1, -2))
    np.testing.assert_allclose(
        cpu.batched_matmul(a, np.swapaxes(bt, -1, -2)), a @ b, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("cin", [3, 8])  # FastConv2d: the im2col path and the blocked path
def test_conv2d_without_input_grad_keeps_parameter_grads(cin, fast):
    rng = np.random.default_rng(1)
    layer = Conv2d(cin, 4, 3, padding=1, dtype=np.float64, rng=rng)
    if fast:
        accelerate(layer)
    x = rng.standard_normal((2, cin, 6, 7))
    dout = rng.standard_normal((2, 4, 6, 7))
    grads = []
    for input_grad in (True, False):
        for p in layer.params.values():
            p.grad[...] = 0
        layer.forward(x)
        dx = layer.backward(dout, input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append([p.grad.copy() for p in layer.params.values()])
    for a, b in zip(*grads, strict=True):
        np.testing.assert_array_equal(a, b)


def test_unet_backward_without_input_grad_keeps_parameter_grads():
    from minunet.model import UNet

    rng = np.random.default_rng(2)
    net = UNet(3, 2, base_channels=8, depth=2, dtype=np.float64)
    x = rng.standard_normal((2, 3, 16, 16))
    dlogits = rng.standard_normal((2, 2, 16, 16))
    grads = []
    for input_grad in (True, False):
        net.zero_grad()
        net.forward(x, train=True)
        dx = net.backward(dlogits, input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append({k: p.grad.copy() for k, p in net.named_parameters()})
    for name in grads[0]:
        np.testing.assert_array_equal(grads[0][name], grads[1][name], err_msg=name)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 9),
    h=st.integers(1, 7),
    w=st.integers(2, 7),
    relu=st.booleans(),
    group_bytes=st.sampled_from([1, 200, 1 << 20]),  # one channel per group ... all of them
    threads=st.sampled_from(["1", "3"]),
    sliced=st.booleans(),  # dout a channel slice of a larger array, as Concat hands it back
    seed=st.integers(0, 2**16),
)
def test_threaded_batchnorm_matches_the_reference(
    n, c, h, w, relu, group_bytes, threads, sliced, seed
):
    """ThreadedBatchNorm2d (FastBatchNorm2d on NumPy) against BatchNorm2d in float64: the
    output, dx, dgamma, dbeta and the running statistics, over channel groups and threads."""
    from minunet.accel import batchnorm as fast_bn
    from minunet.nn import BatchNorm2d

    rng = np.random.default_rng(seed)
    layer = BatchNorm2d(c, relu=relu, dtype=np.float64)
    layer.params["weight"].data[...] = rng.standard_normal(c)
    layer.params["bias"].data[...] = rng.standard_normal(c)
    x = 3 + 2 * rng.standard_normal((n, c, h, w))
    dout = rng.standard_normal((n, c + 4, h, w))[:, 2 : 2 + c] if sliced else None
    dout = rng.standard_normal((n, c, h, w)) if dout is None else dout
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpu, "GROUP_BYTES", group_bytes)
        mp.setenv("MINUNET_THREADS", threads)
        fast = accelerate(copy.deepcopy(layer))
        assert isinstance(fast, fast_bn.ThreadedBatchNorm2d)
        got = run(fast, x, dout)
    want = run(layer, x, dout)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_allclose(fast.buffers[name], layer.buffers[name], rtol=1e-12, atol=0)


def test_threaded_batchnorm_leaves_eval_mode_and_switched_off_to_the_reference():
    """In eval mode, and with the CPU fast paths off, FastBatchNorm2d is the reference to
    the bit (the same code runs)."""
    from minunet.nn import BatchNorm2d

    rng = np.random.default_rng(1)
    layer = BatchNorm2d(5, relu=True)
    x = rng.standard_normal((2, 5, 4, 4), dtype=np.float32)
    dout = rng.standard_normal((2, 5, 4, 4), dtype=np.float32)
    for train, cpu_on in ((False, True), (True, False)):
        ref, fast = copy.deepcopy(layer), accelerate(copy.deepcopy(layer))
        ref.train(train)
        fast.train(train)
        with fast_paths(cpu=cpu_on):
            for a, b in zip(run(fast, x, dout), run(ref, x, dout), strict=True):
                np.testing.assert_array_equal(a, b)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 9),
    h=st.integers(2, 9),  # odd sizes: the forward runs here, the backward is the reference's
    w=st.integers(2, 9),
    group_bytes=st.sampled_from([1, 100, 1 << 20]),
    threads=st.sampled_from(["1", "3"]),
    seed=st.integers(0, 2**16),
)
def test_threaded_maxpool_matches_the_reference_with_ties(n, c, h, w, group_bytes, threads, seed):
    """ThreadedMaxPool2d (FastMaxPool2d on NumPy) against MaxPool2d: output, argmax and dx
    equal to the bit, on integer-valued inputs full of ties."""
    from minunet.accel.pool import ThreadedMaxPool2d

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, (n, c, h, w)).astype(np.float32)
    dout = rng.standard_normal((n, c, h // 2, w // 2), dtype=np.float32)
    layer = MaxPool2d(2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpu, "GROUP_BYTES", group_bytes)
        mp.setenv("MINUNET_THREADS", threads)
        fast = accelerate(copy.deepcopy(layer))
        assert isinstance(fast, ThreadedMaxPool2d)
        got = run(fast, x, dout) + (fast._cache.argmax,)
    want = run(layer, x, dout) + (layer._cache.argmax,)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", ["1", "2", "3"])
@pytest.mark.parametrize(
    "make",
    [
        lambda ps: SGD(ps, 0.1, momentum=0.9, weight_decay=1e-2, nesterov=True),
        lambda ps: Adam(ps, 1e-2, weight_decay=1e-3),
        lambda ps: AdamW(ps, 1e-2),
    ],
)
def test_threaded_optimizer_steps_are_the_reference_to_the_bit(make, threads, monkeypatch):
    """FastSGD/FastAdam/FastAdamW on NumPy: the reference's updates dealt out to threads,
    so parameters and state after several steps equal the reference's exactly."""
    from minunet.accel.optim import ThreadedOptimizer, balanced_bins
    from minunet.nn import Parameter

    monkeypatch.setenv("MINUNET_THREADS", threads)
    rng = np.random.default_rng(0)
    shapes = [(64, 32, 3, 3), (5,), (32, 16, 3, 3), (7, 3), (1,), (300,)]
    start = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    runs = []
    for fast in (False, True):
        params = [Parameter(a.copy()) for a in start]
        opt = make(params)
        if fast:
            opt = accelerate(opt)
            assert isinstance(opt, ThreadedOptimizer)
        grads = np.random.default_rng(1)
        for _ in range(4):
            for p in params:
                p.grad[...] = grads.standard_normal(p.data.shape, dtype=np.float32)
            opt.step()
        runs.append(([p.data for p in params], opt.state_dict()))
    (ref_params, ref_state), (fast_params, fast_state) = runs
    for a, b in zip(fast_params, ref_params, strict=True):
        np.testing.assert_array_equal(a, b)
    assert fast_state.keys() == ref_state.keys()
    for key in ref_state:
        np.testing.assert_array_equal(fast_state[key], ref_state[key], err_msg=key)
    bins = balanced_bins([int(np.prod(s)) for s in shapes], 2)
    assert sorted(i for b in bins for i in b) == list(range(len(shapes)))
    assert bins[0][0] == 0 and bins[1][0] == 2  # the two largest go to different threads


@pytest.mark.parametrize("threads", ["1", "3"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k", [2, 3])
def test_fast_conv_transpose2d_tiling_copies_match_the_reference(k, bias, threads, monkeypatch):
    """kernel == stride (the U-Net's upsampling): the interleaving copies over threads,
    the bias folded into them, against the reference, forward and backward."""
    monkeypatch.setenv("MINUNET_THREADS", threads)
    rng = np.random.default_rng(k)
    layer = ConvTranspose2d(4, 3, k, k, bias=bias, dtype=np.float64, rng=rng)
    if bias:
        layer.params["bias"].data[...] = rng.standard_normal(3)
    x = rng.standard_normal((3, 4, 5, 6))
    dout = rng.standard_normal((3, 3, 5 * k, 6 * k))
    fast, ref = fast_and_reference(layer, x, dout)
    for a, b in zip(fast, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)

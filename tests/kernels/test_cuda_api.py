"""The CUDA kernels' host functions refuse bad input with errors that name the argument, before touching a GPU.

These run in the test process without a GPU or the simulator: every check happens before the first copy to
the device. What the kernels compute, device-array inputs and the package's fused-op API are checked under
the simulator (test_cuda_sim.py); what they compile to on a real GPU by test_cuda_ptx.py.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kernels.cuda
from kernels.cuda import attention, ffn, softmax
from kernels.testing import attention_case, ffn_case
from minitx.ops import fused

ROOT = Path(__file__).resolve().parents[2]
ATTENTION = [(attention.attention_forward_v1, attention.attention_backward_v1),
             (attention.attention_forward_v2, attention.attention_backward_v2)]


@pytest.fixture
def case():
    return attention_case(np.random.default_rng(0), 2, 1, 5, 7, 4, np.float32)


@pytest.mark.parametrize("fn", [softmax.softmax_v2, softmax.softmax_v3])
@pytest.mark.parametrize("block_size", [6, 12])
def test_tree_reductions_refuse_block_sizes_that_are_not_powers_of_two(fn, block_size):
    with pytest.raises(ValueError, match="block_size must be a power of two"):
        fn(np.zeros((2, 5), np.float32), block_size=block_size)


@pytest.mark.parametrize("fn", [softmax.softmax_v1, softmax.softmax_v2, softmax.softmax_v3])
def test_softmax_refuses_more_than_1024_threads(fn):
    with pytest.raises(ValueError, match="block_size=2048 gives 2048 threads per block; the limit is 1024"):
        fn(np.zeros((2, 5), np.float32), block_size=2048)


@pytest.mark.parametrize("block_size", [0, 2048, 8.0])
@pytest.mark.parametrize("forward, backward", ATTENTION)
def test_attention_refuses_bad_block_sizes(forward, backward, block_size, case):
    q, k, v = case["q"], case["k"], case["v"]
    with pytest.raises(ValueError, match="block_size"):
        forward(q, k, v, block_size=block_size)
    o, lse = np.zeros_like(q), np.zeros(q.shape[:3], q.dtype)
    with pytest.raises(ValueError, match="block_size"):
        backward(q, k, v, o, lse, case["do"], block_size=block_size)


@pytest.mark.parametrize("block_size", [257, 512, 1024])
def test_attention_v2_refuses_blocks_its_registers_cannot_launch(block_size, case):
    """The v2 kernels use up to 255 registers per thread, and a block has 65536: more than 256 threads cannot
    launch (CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES on a GPU), so they are refused before any device work.
    test_cuda_ptx.py checks the limit against ptxas's register counts."""
    q, k, v = case["q"], case["k"], case["v"]
    message = rf"block_size={block_size} gives {block_size} threads per block; the limit is 256: .*registers"
    with pytest.raises(ValueError, match=message):
        attention.attention_forward_v2(q, k, v, block_size=block_size)
    o, lse = np.zeros_like(q), np.zeros(q.shape[:3], q.dtype)
    with pytest.raises(ValueError, match=message):
        attention.attention_backward_v2(q, k, v, o, lse, case["do"], block_size=block_size)


def test_ffn_refuses_tiles_of_more_than_1024_threads():
    c = ffn_case(np.random.default_rng(0), 5, 3, 4, np.float32)
    with pytest.raises(ValueError, match=r"tile=33 gives 1089 threads per block"):
        ffn.ffn_forward(c["x"], c["w1"], c["b1"], c["w2"], c["b2"], tile=33)


@pytest.mark.parametrize("forward, backward", ATTENTION)
def test_attention_names_the_argument_with_a_bad_shape_or_dtype(forward, backward, case):
    q, k, v, do = case["q"], case["k"], case["v"], case["do"]
    with pytest.raises(ValueError, match=r"k must have shape \(B, Hkv, Tk, D\) = \(2, \?, \?, 4\), got \(2, 1, 7, 3\)"):
        forward(q, k[..., :3], v)
    with pytest.raises(ValueError, match=r"v must have shape \(B, Hkv, Tk, D\) = \(2, 1, 7, 4\), got \(2, 1, 6, 4\)"):
        forward(q, k, v[:, :, :6])
    with pytest.raises(ValueError, match=r"H=1 must be a multiple of k's and v's Hkv=2"):
        forward(q, np.concatenate([k, k], axis=1), np.concatenate([v, v], axis=1))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, Tk\) = \(2, 7\)"):
        forward(q, k, v, np.zeros((2, 6), bool))
    with pytest.raises(TypeError, match="k has dtype float64 but q has float32"):
        forward(q, k.astype(np.float64), v)
    with pytest.raises(TypeError, match="q must be float32 or float64, got int64"):
        forward(q.astype(np.int64), k, v)
    with pytest.raises(TypeError, match="v must be a NumPy array or a CUDA device array"):
        forward(q, k, v.tolist())
    o = np.zeros_like(q)
    with pytest.raises(ValueError, match=r"lse must have shape \(B, H, Tq\) = \(2, 1, 5\), got \(2, 1, 5, 4\)"):
        backward(q, k, v, o, o, do)


def test_ffn_names_the_argument_with_a_bad_shape():
    c = ffn_case(np.random.default_rng(0), 5, 3, 4, np.float32)        # x (5, 3), w1 (4, 3), w2 (3, 4)
    params = [c["x"], c["w1"], c["b1"], c["w2"], c["b2"]]
    with pytest.raises(ValueError, match=r"w1 must have shape \(F, D\) = \(\?, 3\), got \(4, 2\)"):
        ffn.ffn_forward(params[0], params[1][:, :2], *params[2:])
    with pytest.raises(ValueError, match=r"w2 must have shape \(D, F\) = \(3, 4\), got \(4, 3\)"):
        ffn.ffn_forward(*params[:3], params[3].T, params[4])
    with pytest.raises(ValueError, match=r"dy must have shape \(N, D\) = \(5, 3\), got \(5, 4\)"):
        ffn.ffn_backward(*params, np.zeros((5, 4), np.float32), np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        ffn.ffn_forward(*params, activation="swish")


def test_softmax_mask_must_broadcast_to_x():
    with pytest.raises(ValueError, match=r"mask of shape \(3,\) does not broadcast to x's shape \(2, 5\)"):
        softmax.softmax_v3(np.zeros((2, 5), np.float32), mask=np.zeros(3, bool), block_size=8)


def test_flash_tiles_fit_in_48_kib_of_shared_memory():
    """Rows per tile = min(block_size, 48 KiB // ((2 D + 2) * itemsize)); the default block_size is 64."""
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    assert [attention._flash_tile(64, d, dt) for dt in (f32, f64) for d in (64, 128)] == [64, 47, 47, 23]
    assert attention._flash_tile(8, 128, f64) == 8
    with pytest.raises(ValueError, match="head dim D=4096 is too large"):
        attention._flash_tile(64, 4096, f64)


def test_fused_ops_use_the_package_for_cupy_arrays():
    cupy_array = type("ndarray", (), {"__module__": "cupy"})()        # what backend.device_of looks at
    module = fused.kernel_module(cupy_array)
    assert module is kernels.cuda
    for name in ("attention_forward", "attention_backward", "ffn_forward", "ffn_backward"):
        assert callable(getattr(module, name)), name


def test_the_package_imports_without_cupy():
    script = "import sys, kernels.cuda; assert 'cupy' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

"""The quantised layers (minitx/nn/quantized.py) and the one backend switch they go through: the fused op
QuantizedLinear takes the kernels of the input's device (minitx.ops.fused.kernel_module), as the fused
attention and FFN do. The CUDA path runs here only in Numba's simulator (no GPU, no CuPy): see
test_q4_1_linear_on_a_cuda_tensor_reaches_the_cuda_kernel."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import kernels.cpu
from kernels import reference
from kernels.testing import q4_1_case, q8_0_case
from minitx import Tensor
from minitx.nn.quantized import Q4_1Linear, Q8_0Linear
from minitx.ops import fused

ROOT = Path(__file__).resolve().parents[1]


def layers(rng):
    q4, q8 = q4_1_case(rng, 1, 5, 64, np.float32), q8_0_case(rng, 1, 5, 64, np.float32)
    return (Q4_1Linear(q4["scale"], q4["minimum"], q4["packed"]),
            reference.q4_1_weights(q4["scale"], q4["minimum"], q4["packed"])), \
        (Q8_0Linear(q8["scale"], q8["quants"]),
         (q8["scale"][..., None] * q8["quants"]).reshape(5, -1).astype(np.float32))


def test_quantized_layers_equal_the_float32_product_and_pass_no_gradient():
    x = Tensor(np.random.default_rng(1).standard_normal((2, 3, 64)).astype(np.float32), requires_grad=True)
    for layer, w in layers(np.random.default_rng(0)):
        y = layer(x)
        assert y.shape == (2, 3, 5) and y.dtype == np.float32 and not y.requires_grad
        np.testing.assert_allclose(y.data, x.data @ w.T, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match=r"expected x \(…, 64\), got shape \(2, 3, 32\)"):
            layer(Tensor(np.zeros((2, 3, 32), np.float32)))


def test_quantized_layers_take_the_kernels_of_the_input_device(monkeypatch):
    """The layers hold no `if cupy`: their product is QuantizedLinear, which asks kernel_module (the switch
    the fused attention and FFN use) for the kernels of x's device, and calls the one of the right format."""
    calls = []

    class Recorder:
        def q4_1_linear(self, x, scale, minimum, packed):
            calls.append(("q4_1", scale, packed))
            return kernels.cpu.q4_1_linear(x, scale, minimum, packed)

        def q8_0_linear(self, x, scale, quants):
            calls.append(("q8_0", scale, quants))
            return kernels.cpu.q8_0_linear(x, scale, quants)

    asked = []
    monkeypatch.setattr(fused, "kernel_module", lambda array: asked.append(array.shape) or Recorder())
    (q4, _), (q8, _) = layers(np.random.default_rng(0))
    q4(Tensor(np.ones((3, 64), np.float32))), q8(Tensor(np.ones((2, 1, 64), np.float32)))
    assert asked == [(3, 64), (2, 64)]
    assert [c[0] for c in calls] == ["q4_1", "q8_0"]
    assert calls[0][1] is q4.scale.data and calls[0][2] is q4.packed.data and calls[1][2] is q8.quants.data


def test_kernel_module_dispatch():
    """kernel_module: NumPy arrays get kernels.cpu, CuPy arrays (what a "cuda" Tensor holds) kernels.cuda."""
    import kernels.cuda

    class FakeCupyArray:   # backend.device_of reads the type's top-level module
        __module__ = "cupy._core.core"

    assert fused.kernel_module(np.zeros(2)) is kernels.cpu
    assert fused.kernel_module(FakeCupyArray()) is kernels.cuda
    assert kernels.cuda.q4_1_linear is kernels.cuda.quantized.q4_1_linear


SIMULATED = textwrap.dedent("""
    import types
    import numpy as np
    import kernels.cuda
    from kernels import reference
    from kernels.testing import q4_1_case
    from minitx import Tensor, backend
    from minitx.nn.quantized import Q4_1Linear
    from minitx.ops import fused

    # No CuPy under the simulator: the switch is told these NumPy arrays live on "cuda"; kernels.cuda takes
    # NumPy arrays too (copied to the simulated device and back).
    fused.backend = types.SimpleNamespace(device_of=lambda array: "cuda")
    calls, simulated = [], kernels.cuda.q4_1_linear
    kernels.cuda.q4_1_linear = lambda *args: calls.append(args[0].shape) or simulated(*args)
    c = q4_1_case(np.random.default_rng(0), 2, 3, 64, np.float32)
    layer = Q4_1Linear(c["scale"], c["minimum"], c["packed"])
    y = layer(Tensor(c["x"]))
    want = reference.q4_1_linear(c["x"], c["scale"], c["minimum"], c["packed"])
    print(calls, "|", float(np.abs(y.data - want).max() / np.abs(want).max()))
""")


@pytest.mark.cudasim
def test_q4_1_linear_on_a_cuda_tensor_reaches_the_cuda_kernel():
    """Q4_1Linear -> QuantizedLinear -> kernel_module -> kernels.cuda.q4_1_linear, run by Numba's CUDA
    simulator in a separate process. Not run here: CuPy itself (a real "cuda" Tensor) and a GPU."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", SIMULATED], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    calls, error = done.stdout.split("|")
    assert calls.strip() == "[(2, 64)]" and float(error) < 1e-5

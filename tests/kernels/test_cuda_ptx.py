"""Every CUDA kernel compiled for a real GPU (sm_90) by Numba's CUDA compiler, on a machine without one.

The simulator (test_cuda_sim.py) checks what the kernels compute, but it runs them as Python and never sees
what the GPU compiler makes of them. Here every kernel of every registered version (kernels/versions.py) is compiled for float32 and float64,
at the largest configuration its host functions accept (the versions' ``builds``: the largest block, so
the largest shared-memory tiles; head dims 64 and 128 for attention), through libNVVM to PTX, and the PTX is assembled
by ptxas. Three properties are asserted:

* ptxas accepts every kernel; in particular its static shared memory fits in the 48 KiB a block may have;
* every kernel can launch with the largest block its host function accepts: its registers per thread
  (ptxas -v), times the block's threads, fit in the 65536 registers of a block;
* float32 kernels contain no float64 instruction, not even a conversion (none is needed: libdevice's
  float32 exp, log, erf and tanh stay in float32). A Python float literal in a kernel (``0.0``,
  ``-math.inf``) is a float64 constant, and float32 op float64 is computed in float64, at 1/2 to 1/64 of
  the float32 rate depending on the GPU (see kernels/cuda/_common.py).

Needs the CUDA toolkit's libNVVM, libdevice and ptxas (found through CUDA_HOME, CUDA_PATH or
/usr/local/cuda*), not a GPU or a driver; skipped otherwise. The compilation runs in subprocesses, this
file run as ``python tests/kernels/test_cuda_ptx.py DTYPE OUT_DIR`` (one for float32, one for float64, at
the same time), because it patches three of Numba's device queries (see ``_compile_without_a_gpu``) and
NUMBA_ENABLE_CUDASIM must not be set there; neither may leak into the test process.
"""
import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARCH = (9, 0)
HEAD_DIMS = (64, 128)
STATIC_SHARED_LIMIT = 48 * 1024
REGISTERS_PER_BLOCK = 64 * 1024   # sm_90 (and every architecture since 5.0)
WARP, REGISTER_UNIT = 32, 256     # registers are allocated per warp, in units of 256
INTERNALS_MOVED = 3  # the subprocess's exit status when Numba's patched functions are not where they were
# an instruction whose type is f64 (add.f64, cvt.f64.f32, setp.lt.f64, ...); not the `.reg .f64` declarations
F64_INSTRUCTION = re.compile(r"^\s*(?:@!?%p\d+\s+)?[a-z][\w.]*\.f64\b", re.MULTILINE)


def find_toolkit():
    """The first CUDA toolkit directory holding ptxas, libNVVM and libdevice, or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda",
                  *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    def has(root, *patterns):
        return any(glob.glob(os.path.join(root, p)) for p in patterns)

    for root in filter(None, candidates):
        if (has(root, "bin/ptxas") and has(root, "nvvm/libdevice/libdevice*.bc")
                and has(root, "nvvm/lib64/libnvvm.so*", "lib64/libnvvm.so*", "lib/libnvvm.so*")):
            return root
    return None


# --------------------------------------------------------------- the subprocess: compile and assemble


def _compile_without_a_gpu():
    """Answer three queries Numba would otherwise put to a driver or to NVRTC, neither of which exists here.

    * ``dispatcher.get_current_device``: a device function called from a kernel is compiled for the
      current device's compute capability (asked of the driver); the answer is ARCH.
    * ``nvrtc.get_supported_ccs``: compile_ptx rounds the requested architecture to one NVRTC supports
      (asked of NVRTC); the answer is ARCH itself.
    * ``cuda_paths._get_nvrtc_path``: the toolkit lookup also resolves NVRTC and raises when it is missing,
      although compiling to PTX only uses libNVVM and libdevice; the answer is "not there".
    """
    import numba.cuda.cuda_paths as cuda_paths
    import numba.cuda.cudadrv.nvrtc as nvrtc
    import numba.cuda.dispatcher as dispatcher

    patched = ((dispatcher, "get_current_device"), (nvrtc, "get_supported_ccs"), (cuda_paths, "_get_nvrtc_path"),
               (cuda_paths, "_env_path_tuple"))
    missing = [f"{module.__name__}.{name}" for module, name in patched if not hasattr(module, name)]
    if missing:  # a numba-cuda release moved them: the check cannot run, which is not a kernel's fault
        print(f"numba-cuda no longer has {', '.join(missing)}", file=sys.stderr)
        sys.exit(INTERNALS_MOVED)
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=ARCH)
    nvrtc.get_supported_ccs = lambda: [ARCH]
    cuda_paths._get_nvrtc_path = lambda: cuda_paths._env_path_tuple("not needed", None)


def kernel_table(dtype):
    """(name, kernel, argument types, threads per block) for every kernel of every registered CUDA version, at
    the largest configuration its host functions accept (the versions' ``builds``, see kernels/versions.py)."""
    from kernels.versions import all_versions

    return [(f"{family} {version.name}: {label}", kernel, signature, threads)
            for family, version in all_versions("cuda") for label, kernel, signature, threads in version.builds(dtype)]


def _ptxas(toolkit, ptx_path):
    """(accepted, ptxas -v's report) for one PTX file."""
    done = subprocess.run([os.path.join(toolkit, "bin", "ptxas"), f"-arch=sm_{ARCH[0]}{ARCH[1]}", "-v",
                           str(ptx_path), "-o", os.devnull], capture_output=True, text=True)
    lines = [line.split(":", 2)[-1].strip() for line in done.stderr.splitlines() if "error" in line or "Used" in line]
    return done.returncode == 0, re.sub(r"Entry function '[^']*' ", "", " ".join(lines))   # drop mangled names


def _compile_all(dtype, out_dir):
    """Compile and assemble every kernel of ``dtype``; print one JSON record per kernel.

    Numba finds libNVVM and libdevice through CUDA_HOME, which the test sets to find_toolkit()'s answer.
    """
    toolkit = find_toolkit()
    _compile_without_a_gpu()
    from numba import cuda

    for name, kernel, signature, threads in kernel_table(dtype):
        ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=ARCH)
        path = Path(out_dir) / (re.sub(r"\W+", "_", f"{name}_{dtype}") + ".ptx")
        path.write_text(ptx)
        accepted, report = _ptxas(toolkit, path)
        smem = re.search(r"(\d+) bytes smem", report)
        registers = re.search(r"Used (\d+) registers", report)
        print(json.dumps({"kernel": name, "dtype": dtype, "f64_instructions": len(F64_INSTRUCTION.findall(ptx)),
                          "accepted": accepted, "shared_bytes": int(smem.group(1)) if smem else 0,
                          "registers": int(registers.group(1)) if registers else None, "threads": threads,
                          "ptxas": report}), flush=True)


# ------------------------------------------------------------------------------------------ the tests


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """One record per (kernel, dtype); float32 and float64 compile in two processes at the same time."""
    toolkit = find_toolkit()
    if toolkit is None:
        pytest.skip("no CUDA toolkit with ptxas, libNVVM and libdevice (set CUDA_HOME)")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["CUDA_HOME"] = toolkit
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))   # for `kernels`
    out_dir = tmp_path_factory.mktemp("ptx")
    runs = [subprocess.Popen([sys.executable, __file__, dtype, str(out_dir)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for dtype in ("float32", "float64")]
    records = []
    try:
        for run in runs:
            stdout, stderr = run.communicate(timeout=300)
            if run.returncode == INTERNALS_MOVED:
                pytest.skip(stderr.strip())
            assert run.returncode == 0, stderr[-4000:]
            records += [json.loads(line) for line in stdout.splitlines()]
    finally:
        for run in runs:
            run.kill()                                                  # nothing happens to a finished one
    return records


def _table(records):
    return "\n".join(f"  {r['kernel']} {r['dtype']}: {r['f64_instructions']} f64 instructions, "
                     f"{r['shared_bytes']} B shared, {r['registers']} registers x {r['threads']} threads; "
                     f"ptxas: {r['ptxas']}" for r in records)


def registers_per_block(registers_per_thread, threads):
    """Registers a block of ``threads`` takes: each warp's share is allocated in units of 256 registers."""
    warps = -(-threads // WARP)
    return warps * -(-registers_per_thread * WARP // REGISTER_UNIT) * REGISTER_UNIT


def test_ptxas_accepts_every_kernel(compiled):
    rejected = [r for r in compiled if not r["accepted"] or r["shared_bytes"] > STATIC_SHARED_LIMIT]
    assert not rejected, "ptxas rejected:\n" + _table(rejected)


def test_every_kernel_can_launch_with_the_largest_block_its_host_function_accepts(compiled):
    """A kernel launched with more threads than its registers allow fails on the GPU
    (CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES); the host functions refuse such block sizes before launching, and
    this keeps their limits true as the kernels change (the v2 attention kernels accepted 1024 threads while
    using 230-255 registers each)."""
    assert all(r["registers"] is not None for r in compiled), "ptxas -v reported no register counts"
    too_big = [r for r in compiled if registers_per_block(r["registers"], r["threads"]) > REGISTERS_PER_BLOCK]
    assert not too_big, "kernels that cannot launch with the block size their host function accepts:\n" + \
        _table(too_big)


def test_registers_per_block_counts_whole_allocation_units():
    assert registers_per_block(255, 256) == REGISTERS_PER_BLOCK      # 255 -> 256 per thread: exactly a block
    assert registers_per_block(64, 1024) == REGISTERS_PER_BLOCK
    assert registers_per_block(65, 1024) > REGISTERS_PER_BLOCK      # 65 -> 72 per thread
    assert registers_per_block(230, 512) > REGISTERS_PER_BLOCK


def test_float32_kernels_have_no_float64_instructions(compiled):
    promoted = [r for r in compiled if r["dtype"] == "float32" and r["f64_instructions"] > 0]
    assert not promoted, "float32 kernels computing in float64:\n" + _table(promoted)


if __name__ == "__main__":
    _compile_all(*sys.argv[1:])

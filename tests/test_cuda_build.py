"""What can be proven about the CUDA kernels on a machine without a GPU.

The kernels in csrc/cuda cannot run here. These tests check that the built extension carries
sm_80 and sm_90 machine code for every kernel, that no kernel spills registers (from the shipped
cubins and from ptxas -v), and that the CUDA implementations refuse CPU tensors with a clear error.
The row math those kernels share with the CPU epilogue is executed in test_row_math_native.py.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from gro_kernels import _ext

ROOT = Path(__file__).resolve().parents[1]
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
ARCHS = ("sm_80", "sm_90")
KERNELS = {
    "logprob_epilogue": ("row_stats_kernel", "finalize_kernel", "logit_grad_kernel"),
    "group_advantages": ("group_advantages_kernel", "poison_if_flagged_kernel"),
}


def _tool(name):
    """A CUDA binary tool from CUDA_HOME, PATH, or the copy that Triton ships."""
    for candidate in (CUDA_HOME / "bin" / name, shutil.which(name)):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        return str(bundled) if bundled.is_file() else None
    except ImportError:
        return None


NVCC = _tool("nvcc")
pytestmark = [
    pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA_HOME/bin or PATH): the CUDA build is off"),
    pytest.mark.skipif(os.environ.get("GRO_SKIP_CUDA_BUILD") == "1",
                       reason="GRO_SKIP_CUDA_BUILD=1: extension built without CUDA on purpose"),
]


@pytest.fixture(scope="module")
def library():
    assert _ext.NATIVE_IMPORT_ERROR is None, _ext.NATIVE_IMPORT_ERROR
    from gro_kernels import _C

    return _C.__file__


@pytest.fixture(scope="module")
def cuobjdump():
    tool = _tool("cuobjdump")
    assert tool is not None, "cuobjdump not found in CUDA_HOME/bin, PATH or triton/backends/nvidia/bin"
    return tool


def test_cuda_kernels_are_registered():
    for op in ("logprob_forward", "logit_grad_", "group_advantages"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"gro_C::{op}", "CUDA"), op
    assert _ext.native_available("cuda")


def test_library_holds_sm80_and_sm90_code(library, cuobjdump):
    listing = subprocess.run([cuobjdump, "--list-elf", library], capture_output=True, text=True, check=True).stdout
    found = set(re.findall(r"(\w+)\.(sm_\d+)\.cubin", listing))
    expected = {(source, arch) for source in KERNELS for arch in ARCHS}
    assert expected <= found, f"missing cubins {sorted(expected - found)} in:\n{listing}"


def _resource_usage(library, cuobjdump):
    """{(arch, function): {'REG': int, 'STACK': int, 'LOCAL': int, ...}} from cuobjdump -res-usage."""
    text = subprocess.run([cuobjdump, "-res-usage", library], capture_output=True, text=True, check=True).stdout
    usage, arch = {}, None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if m := re.match(r"arch = (sm_\d+)", line.strip()):
            arch = m.group(1)
        elif m := re.match(r"\s*Function (\S+):", line):
            usage[(arch, m.group(1))] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", lines[i + 1])}
    return usage


def test_no_kernel_spills_in_built_library(library, cuobjdump):
    usage = _resource_usage(library, cuobjdump)
    for arch in ARCHS:
        for kernel in (k for names in KERNELS.values() for k in names):
            hits = [res for (a, fn), res in usage.items() if a == arch and kernel in fn]
            assert len(hits) == 1, f"{kernel} for {arch}: {len(hits)} entries in {sorted(usage)}"
            # Spilled registers live in local memory (and the stack frame): both must be 0.
            assert hits[0]["LOCAL"] == 0 and hits[0]["STACK"] == 0, (arch, kernel, hits[0])


@pytest.mark.parametrize("source", sorted(KERNELS))
def test_ptxas_reports_zero_spills(source, tmp_path):
    """Compile each .cu for sm_80 + sm_90 with setup.py's nvcc flags (-O3, no fast math); read ptxas -v."""
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in ARCHS]
    out = subprocess.run([NVCC, "-std=c++20", "-O3", "-lineinfo", "-c", *gencode,
                          "-Xptxas", "-v", str(ROOT / "csrc" / "cuda" / f"{source}.cu"), "-o", str(tmp_path / "k.o")],
                         capture_output=True, text=True, check=True).stderr
    entries = re.findall(r"Compiling entry function '(\S+)' for '(sm_\d+)'", out)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    assert {arch for _, arch in entries} == set(ARCHS)
    assert len(entries) == len(KERNELS[source]) * len(ARCHS) == len(spills), out
    assert all(s == ("0", "0") for s in spills), out


def _cuda_impl(op_name):
    """The CUDA kernel of a gro_C op, called directly (CPU tensors would otherwise go to the CPU kernel)."""
    op = getattr(torch.ops.gro_C, op_name).default
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    return lambda *args: op.redispatch(keys, *args)


def test_cuda_logprob_forward_refuses_cpu_tensors():
    z, y = torch.randn(3, 10), torch.zeros(3, dtype=torch.long)
    with pytest.raises(RuntimeError, match="logits must be on cuda, got cpu"):
        _cuda_impl("logprob_forward")(z, y, 1.0, -100, torch.empty(3), torch.empty(3), None)


def test_cuda_logit_grad_refuses_cpu_tensors():
    z, y, row = torch.randn(3, 10), torch.zeros(3, dtype=torch.long), torch.zeros(3)
    with pytest.raises(RuntimeError, match="logits must be on cuda, got cpu"):
        _cuda_impl("logit_grad_")(z, y, 1.0, -100, row, None, row, None)


def test_cuda_group_advantages_refuses_cpu_tensors():
    with pytest.raises(RuntimeError, match="rewards must be on cuda, got cpu"):
        _cuda_impl("group_advantages")(torch.ones(4), torch.tensor([0, 2, 4]), "grpo", 1e-6)

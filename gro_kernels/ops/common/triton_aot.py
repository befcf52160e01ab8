"""Ahead-of-time compilation of the Triton kernels for NVIDIA targets, without a GPU.

Tooling for the AOT tests and benchmarks/triton_resources.py; no library module imports it.
Each op's triton_impl.compile_specs(target, dtype) lists its kernels with the launch configs the
launchers use; this module compiles them with triton.compile for GPUTarget("cuda", 80|90, 32)
and reads registers and spills from `ptxas -v` (the ptxas bundled with Triton), shared memory
from the compile metadata (Triton kernels use dynamic shared memory, which ptxas does not see).
"""

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas


@dataclass(frozen=True)
class KernelSpec:
    """One kernel variant: runtime argument types (all non-constexpr args), constexpr values,
    the args that get a 16-divisibility hint (pointers, H and row strides), and launch options."""
    name: str
    fn: object
    arg_types: dict
    constexprs: dict
    aligned: tuple
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class Resources:
    name: str
    arch: int
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    num_warps: int
    num_stages: int


def _source(spec: KernelSpec):
    names = spec.fn.arg_names
    missing = [a for a in names if a not in spec.arg_types and a not in spec.constexprs]
    if missing:
        raise ValueError(f"{spec.name}: no type or constexpr value for {missing}")
    signature = {a: spec.arg_types.get(a, "constexpr") for a in names}
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in spec.aligned}
    return triton.compiler.ASTSource(fn=spec.fn, signature=signature, constexprs=dict(spec.constexprs),
                                     attrs=attrs)


def compile_spec(spec: KernelSpec, arch: int):
    """The compiled kernel (asm["ptx"], metadata.shared, ...) for sm_<arch>."""
    return triton.compile(_source(spec), target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})


_REGS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_report(ptx: str, arch: int) -> str:
    """`ptxas -v` output for the PTX (the ptxas that ships with Triton)."""
    gpu = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1).rstrip(",")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        done = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name={gpu}", path, "-o",
                               os.path.join(tmp, "kernel.cubin")], capture_output=True, text=True, check=True)
    return done.stdout + done.stderr


def resources(spec: KernelSpec, arch: int) -> Resources:
    compiled = compile_spec(spec, arch)
    report = ptxas_report(compiled.asm["ptx"], arch)
    regs, spill = _REGS.search(report), _SPILL.search(report)
    if regs is None or spill is None:
        raise RuntimeError(f"cannot parse ptxas -v output for {spec.name}:\n{report}")
    return Resources(spec.name, arch, int(regs.group(1)), int(spill.group(1)), int(spill.group(2)),
                     int(compiled.metadata.shared), spec.num_warps, spec.num_stages)


def markdown_table(rows) -> str:
    lines = ["| kernel | arch | warps | stages | registers/thread | spill stores | spill loads | shared memory |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | sm_{r.arch} | {r.num_warps} | {r.num_stages} | {r.registers} | "
                     f"{r.spill_stores} B | {r.spill_loads} B | {r.shared_bytes / 1024:.1f} KiB |")
    return "\n".join(lines) + "\n"

"""Every Triton kernel, with its default config, compiles for sm_80 and sm_90 without a GPU, with
zero register spills (ptxas -v from Triton's bundled ptxas) and 64-bit address math on tiles."""

import re

import pytest
import torch

from gro_kernels.ops.common import triton_aot
from gro_kernels.ops.group_advantages import triton_impl as adv_triton
from gro_kernels.ops.linear_logprobs import triton_impl as lp_triton
from gro_kernels.ops.policy_loss import triton_impl as policy_triton

pytestmark = pytest.mark.aot

TARGETS = {"sm80": 80, "sm90": 90}


def _specs():
    out = []
    for target, arch in TARGETS.items():
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for spec in lp_triton.compile_specs(target, dtype):
                out.append(pytest.param(spec, arch, id=f"{spec.name}-sm{arch}"))
        for spec in policy_triton.compile_specs(target) + adv_triton.compile_specs(target):
            out.append(pytest.param(spec, arch, id=f"{spec.name}-sm{arch}"))
    return out


@pytest.mark.parametrize("spec,arch", _specs())
def test_compiles_without_spills(spec, arch):
    res = triton_aot.resources(spec, arch)
    assert res.spill_stores == 0 and res.spill_loads == 0, res
    assert 0 < res.registers <= 255
    limit = {80: 163 * 1024, 90: 227 * 1024}[arch]
    assert res.shared_bytes <= limit, res


_TENSOR_MUL = re.compile(r"arith\.muli .*: tensor<[0-9x]+x(i\d+)>")


@pytest.mark.parametrize("spec,arch", [p for p in _specs() if p.values[1] == 90])
def test_tile_address_math_is_64_bit(spec, arch):
    """index * stride on a tile is an int64 multiply in the IR; an int32 one could wrap at N*H >= 2^31."""
    ttir = triton_aot.compile_spec(spec, arch).asm["ttir"]
    widths = _TENSOR_MUL.findall(ttir)
    assert "i32" not in widths, [line for line in ttir.splitlines() if "arith.muli" in line]
    if spec.name.startswith(("lp_fwd[", "lp_bwd[")):
        assert "i64" in widths

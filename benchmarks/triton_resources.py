"""Registers, spills and shared memory of every Triton kernel with its default config, for sm_80
and sm_90, compiled ahead of time without a GPU (gro_kernels.ops.common.triton_aot; the same specs as the
aot-marked tests).

`python -m benchmarks.triton_resources` prints the table and writes
benchmarks/results/triton_resources.md.
"""

import argparse
import os

import torch
import triton

from benchmarks import common
from gro_kernels.ops.common import triton_aot
from gro_kernels.ops.group_advantages import triton_impl as adv_triton
from gro_kernels.ops.linear_logprobs import triton_impl as lp_triton
from gro_kernels.ops.policy_loss import triton_impl as policy_triton


def all_resources():
    out = []
    for target, arch in (("sm80", 80), ("sm90", 90)):
        specs = lp_triton.compile_specs(target, torch.bfloat16)
        for dtype in (torch.float16, torch.float32):
            specs += [s for s in lp_triton.compile_specs(target, dtype) if "merge" not in s.name]
        specs += policy_triton.compile_specs(target) + adv_triton.compile_specs(target)
        out.extend(triton_aot.resources(spec, arch) for spec in specs)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "triton_resources.md"))
    args = parser.parse_args()
    text = (f"Triton {triton.__version__}, torch {torch.__version__}; ptxas bundled with Triton; shared memory "
            f"from the compile metadata (dynamic shared memory).\n\n" + triton_aot.markdown_table(all_resources()))
    common.write_text(args.out, text)


if __name__ == "__main__":
    main()

"""Peak memory: the chunked backend's extra memory is O(C*V), not O(N*V).

Measured as docs/testing.md (Memory) says: reset the RSS high-water mark through /proc/self/clear_refs, run the
op, read VmHWM. Each measurement runs in a fresh interpreter so that allocator caches of earlier
tests do not hide or inflate anything.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")

SCRIPT = textwrap.dedent("""
    import json, sys, torch, gro_kernels
    n, h, v, chunk, backend = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    hidden = torch.randn(n, h, requires_grad=True)
    weight = (torch.randn(v, h) / h ** 0.5).requires_grad_()
    targets = torch.randint(0, v, (n,))
    upstream = torch.randn(n)
    hidden.grad = torch.zeros_like(hidden); weight.grad = torch.zeros_like(weight)  # outputs any method needs
    gro_kernels.linear_logprobs(hidden[:2], weight, targets[:2], backend=backend).sum().backward()  # warm-up
    open("/proc/self/clear_refs", "w").write("5")
    base = hwm()
    logprobs = gro_kernels.linear_logprobs(hidden, weight, targets, backend=backend, chunk_size=chunk)
    torch.autograd.backward(logprobs, upstream)
    print(json.dumps({"extra": hwm() - base}))
""")


def extra_bytes(n, h, v, chunk, backend):
    # A fixed glibc mmap threshold: otherwise it grows after the first large free, later buffers come
    # from the heap and stay resident, and the reading depends on allocation history.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(n), str(h), str(v), str(chunk), backend],
                         capture_output=True, text=True, timeout=300, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["extra"]


def test_chunked_extra_memory_is_bounded_by_chunk_not_tokens():
    h, v, chunk = 64, 32000, 64
    buffer_bytes = chunk * v * 4
    small = extra_bytes(512, h, v, chunk, "chunked")
    large = extra_bytes(4096, h, v, chunk, "chunked")
    naive = extra_bytes(4096, h, v, chunk, "naive")
    logits_bytes = 4096 * v * 4
    # Two chunk buffers (forward, backward) plus fp32 dW accumulation and O(N) vectors.
    bound = 2 * buffer_bytes + v * h * 4 + 16 * 2**20
    assert large <= bound, f"chunked extra {large / 2**20:.1f} MiB > bound {bound / 2**20:.1f} MiB"
    assert large - small <= 8 * 2**20, f"extra memory grew with N: {small / 2**20:.1f} -> {large / 2**20:.1f} MiB"
    assert naive >= logits_bytes, "the naive baseline should materialize [N, V] logits"
    assert large * 10 <= naive, f"chunked {large / 2**20:.1f} MiB vs naive {naive / 2**20:.1f} MiB"

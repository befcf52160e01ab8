"""torch.compile(fullgraph=True) sees linear_logprobs as custom ops and matches eager, fwd and bwd."""

import torch

import gro_kernels
from tests.support.helpers import make_inputs


def loss_fn(hidden, weight, targets, bias, upstream):
    logprobs, entropy = gro_kernels.linear_logprobs(hidden, weight, targets, bias, temperature=0.8,
                                                    return_entropy=True, chunk_size=16)
    return (logprobs * upstream).sum() - 0.01 * entropy.sum()


def test_compile_fullgraph_matches_eager():
    hidden, weight, targets, bias = make_inputs(40, 16, 301, bias=True, ignored=(3,))
    upstream = torch.randn(40)
    results = []
    for fn in (loss_fn, torch.compile(loss_fn, fullgraph=True, backend="inductor")):
        h, w, b = (t.clone().requires_grad_() for t in (hidden, weight, bias))
        loss = fn(h, w, targets, b, upstream)
        loss.backward()
        results.append((loss.detach(), h.grad, w.grad, b.grad))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)

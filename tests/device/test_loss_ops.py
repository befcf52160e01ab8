"""The loss-side ops on the device under test (GRO_TEST_DEVICE): exact_kl vs its fp64 spec, grad-in-forward
gro_loss vs the plain path, group_advantages vs its loop spec on each implementation, and the policy token
epilogue vs the torch path and the fp64 reference. Tiny shapes; Triton cases per tests/device/common.py."""

import pytest
import torch

import gro_kernels
from gro_kernels.losses import checks
from gro_kernels.losses import gro as gro_module
from gro_kernels.ops.exact_kl.naive import exact_kl_naive
from gro_kernels.ops.group_advantages import function as adv_function
from gro_kernels.ops.group_advantages.naive import group_advantages_naive
from gro_kernels.ops.policy_loss import function as policy_function
from tests.device.common import assert_within_naive_error, err, require_native, require_triton, triton_param
from tests.support import reference_losses as R
from tests.support.policy_batches import batch


# ---------------------------------------------------------------------------------------------- exact_kl
def _kl_case(n=65, h=24, h_ref=16, v=257, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * 0.6  # noqa: E731
    mask = torch.ones(n, dtype=torch.bool)
    mask[[0, 7, 64]] = False
    return (rnd(n, h), rnd(v, h), rnd(n, h_ref), rnd(v, h_ref), rnd(v), rnd(v)), mask, torch.randn(n, generator=g)


def _kl_run(tensors, mask, upstream, dtype, device, naive):
    hidden, weight, ref_hidden, ref_weight, bias, ref_bias = (t.to(device, dtype, copy=True) for t in tensors)
    leaves = [t.requires_grad_() for t in (hidden, weight, bias)]
    mask, upstream = mask.to(device), upstream.to(device)
    if naive:
        kl = exact_kl_naive(hidden, weight, ref_hidden, ref_weight, bias, ref_bias, temperature=0.7, mask=mask)
    else:
        kl = gro_kernels.exact_kl(hidden, weight, ref_hidden, ref_weight, bias=bias, ref_bias=ref_bias, mask=mask,
                                  temperature=0.7, chunk_size=16)
    (kl * upstream.to(kl.dtype)).sum().backward()
    return [kl.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_exact_kl_matches_fp64_spec(device, dtype):
    tensors, mask, upstream = _kl_case()
    ref = _kl_run(tensors, mask, upstream, torch.float64, "cpu", naive=True)
    naive_same_dtype = _kl_run(tensors, mask, upstream, dtype, device, naive=True)
    got = _kl_run(tensors, mask, upstream, dtype, device, naive=False)
    assert got[0].dtype == torch.float32 and got[0].device.type == device.type
    for i, name in enumerate(("kl", "dhidden", "dweight", "dbias")):
        assert_within_naive_error(got[i], naive_same_dtype[i], ref[i], dtype, name, gradient=i > 0)
    masked = (~mask).nonzero().flatten()
    assert (got[0].cpu()[masked] == 0).all() and (got[1].cpu()[masked] == 0).all()


# ------------------------------------------------------------------------- gro_loss grad-in-forward vs plain
def _dapo_batch(B=4, T=9, H=32, V=301, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g) * 0.5
    weight = torch.randn(V, H, generator=g) / H ** 0.5
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[1, 3] = -100
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[2, 5:] = False
    lp = gro_kernels.linear_logprobs_no_grad(hidden, weight, targets)
    extra = dict(advantages=torch.randn(B, generator=g), old_logprobs=lp + 0.2 * torch.randn(B, T, generator=g),
                 ref_logprobs=lp + 0.1 * torch.randn(B, T, generator=g))
    return hidden, weight, targets, mask, extra


_USE_FUSED = gro_module._use_fused  # spied on: did gro_loss take the grad-in-forward op?


def _gro(batch, dtype, device, grad_in_forward, entropy_coef, upstream, monkeypatch):
    """gro_loss dapo (backend chunked: where grad-in-forward runs); returns (loss, logprobs, dh, dw, fused?)."""
    hidden, weight, targets, mask, extra = batch
    h, w = (t.to(device, dtype, copy=True).requires_grad_() for t in (hidden, weight))
    used = []
    monkeypatch.setattr(gro_module, "_use_fused", lambda *a, **k: used.append(_USE_FUSED(*a, **k)) or used[-1])
    out = gro_kernels.gro_loss(h, w, targets.to(device), preset="dapo", mask=mask.to(device), beta=0.04,
                               entropy_coef=entropy_coef, grad_in_forward=grad_in_forward, backend="chunked",
                               **{k: v.to(device) for k, v in extra.items()})
    (out.loss * upstream).backward()
    return [out.loss.detach(), out.logprobs, h.grad, w.grad], used == [True]


@pytest.mark.parametrize("entropy_coef", [0.0, 0.01], ids=["no-entropy", "entropy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_grad_in_forward_matches_plain_path(device, dtype, entropy_coef, monkeypatch):
    """The fused op (3 GEMMs, gradient in the forward) against linear_logprobs + autograd of the same loss:
    its error vs the fp32 CPU plain path must be within 2x the device plain path's own (+ slack)."""
    batch, upstream = _dapo_batch(), -0.73
    rounded = [t.to(dtype).float() for t in batch[:2]]  # the oracle sees the same rounded inputs
    oracle, _ = _gro((*rounded, *batch[2:]), torch.float32, "cpu", False, entropy_coef, upstream, monkeypatch)
    plain, plain_fused = _gro(batch, dtype, device, False, entropy_coef, upstream, monkeypatch)
    fused, fused_ran = _gro(batch, dtype, device, None, entropy_coef, upstream, monkeypatch)
    assert fused_ran and not plain_fused, "grad-in-forward must run by default for dapo on the chunked backend"
    for i, name in enumerate(("loss", "logprobs", "dhidden", "dweight")):
        assert_within_naive_error(fused[i], plain[i], oracle[i], dtype, name, gradient=i > 1)


# ------------------------------------------------------------------------------------------ group advantages
SIZES = [1, 5, 8, 3, 40, 2, 1, 16]  # ragged, groups of one, one group beyond a warp
ADV_MODES = [("grpo", "group"), ("grpo", "batch"), ("grpo", "none"), ("dr_grpo", "group"), ("rloo", "group")]
# implementation -> the GRO_BACKEND value that forces it (ops/common/dispatch.py)
ADV_IMPLS = [pytest.param("torch", id="torch"), pytest.param("native", id="native"),
             triton_param("triton", id="triton")]
FORCE = {"torch": "naive", "native": "chunked", "triton": "triton"}


def _adv_batch(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.repeat_interleave(torch.arange(len(SIZES)) * 3 + 1, torch.tensor(SIZES))  # sparse ids
    if layout == "unsorted":
        ids = ids[torch.randperm(ids.numel(), generator=g)]
    rewards = torch.randn(ids.numel(), generator=g) * 3
    rewards[ids == 7] = 0.75  # group 2: identical rewards
    return rewards, ids


@pytest.mark.parametrize("layout", ["sorted", "unsorted"])
@pytest.mark.parametrize("mode,scale", ADV_MODES)
@pytest.mark.parametrize("impl", ADV_IMPLS)
def test_group_advantages_match_loop_spec(device, impl, mode, scale, layout, monkeypatch):
    if impl == "triton":
        require_triton(device)
    if impl == "native":
        require_native(device)
        if device.type == "cpu" and layout == "unsorted":
            pytest.skip("on CPU unsorted rows run in torch by design (function.select_impl)")
    monkeypatch.setenv("GRO_BACKEND", FORCE[impl])
    rewards, ids = _adv_batch(layout)
    index, _ = checks.group_index(ids.numel(), ids.to(device), None, device)
    assert adv_function.select_impl(index, mode) == impl
    got = gro_kernels.group_advantages(rewards.to(device), group_ids=ids.to(device), mode=mode, scale_rewards=scale)
    assert got.dtype == torch.float32 and got.device.type == device.type
    dense = torch.unique(ids, return_inverse=True)[1]
    spec = group_advantages_naive(rewards, dense, mode, eps=1e-6, scale_rewards=scale)
    assert err(got, spec) <= 1e-6 + 1e-5 * spec.abs().max().item()
    got = got.cpu()
    assert (got[rewards == 0.75] == 0).all(), "identical rewards must give exactly 0"
    if mode != "dr_grpo":
        assert (got[torch.bincount(dense)[dense] == 1] == 0).all(), "a group of one gets 0"


# ------------------------------------------------------------------------------------- policy token epilogue
# id: (policy_loss options, R.policy_per_token options, R.aggregate mode)
POLICY_CASES = {
    "dapo-clip-k3": (dict(loss_type="dapo", epsilon_high=0.28, beta=0.04),
                     dict(eps_high=0.28, kl_coef=0.04), "token_mean"),
    "dual-clip-entropy-tis-k2": (dict(loss_type="grpo", dual_clip=3.0, entropy_coef=0.01, tis_cap=1.5, beta=0.05,
                                      kl_estimator="k2"),
                                 dict(dual_clip=3.0, ent_coef=0.01, tis_cap=1.5, kl_coef=0.05, kl_estimator="k2"),
                                 "seq_mean_token_mean"),
    "cispo-k3st": (dict(loss_type="bnpo", surrogate="cispo", epsilon_high=1.2, beta=0.05, kl_estimator="k3_st"),
                   dict(surrogate="cispo", eps_high=1.2, kl_coef=0.05, kl_estimator="k3_st"), "token_mean"),
    "gspo-sequence": (dict(loss_type="grpo", importance_sampling_level="sequence", epsilon=0.1),
                      dict(is_level="sequence", eps_low=0.1, eps_high=0.1), "seq_mean_token_mean"),
}
POLICY_IMPLS = [pytest.param("auto", id="auto"), triton_param("triton", id="triton")]


def _policy(d, options, device, upstream):
    lp, ent = (d[k].float().to(device).requires_grad_() for k in ("lp", "ent"))
    loss, metrics = gro_kernels.policy_loss(lp, d["adv"].float().to(device), d["mask"].to(device),
                                            old_logprobs=d["old"].float().to(device),
                                            ref_logprobs=d["ref"].float().to(device),
                                            rollout_logprobs=d["rollout"].float().to(device), entropy=ent, **options)
    (loss * upstream).backward()
    return [loss.detach(), lp.grad, ent.grad], metrics


def _policy_reference(d, ref_options, aggregation, upstream):
    lp, ent = d["lp"].clone().requires_grad_(), d["ent"].clone().requires_grad_()
    x, _ = R.policy_per_token(lp, d["adv"], d["mask"], old=d["old"], ref=d["ref"], rollout=d["rollout"], ent=ent,
                              **ref_options)
    loss = R.aggregate(x, d["mask"], aggregation)
    (loss * upstream).backward()
    return [loss.detach(), lp.grad, torch.zeros_like(ent) if ent.grad is None else ent.grad]


@pytest.mark.parametrize("case", list(POLICY_CASES))
@pytest.mark.parametrize("impl", POLICY_IMPLS)
def test_policy_epilogue_matches_torch_path_and_fp64(device, impl, case, monkeypatch):
    """impl "auto": what the device picks (CUDA: the fused Triton epilogue; CPU: torch); "triton": forced."""
    if impl == "triton":
        require_triton(device)
    options, ref_options, aggregation = POLICY_CASES[case]
    d, upstream = batch(), 1.7
    reference = _policy_reference(d, ref_options, aggregation, upstream)
    monkeypatch.setenv("GRO_BACKEND", "naive")  # the torch path, on the same device
    torch_path, torch_metrics = _policy(d, options, device, upstream)
    monkeypatch.setenv("GRO_BACKEND", impl)
    expected = "triton" if impl == "triton" or (device.type == "cuda" and policy_function._triton_impl()) else "torch"
    assert policy_function.select_token_impl(device) == expected
    got, metrics = _policy(d, options, device, upstream)
    for name, a, t, r in zip(("loss", "dlogprobs", "dentropy"), got, torch_path, reference):
        a, t = (torch.zeros_like(r) if x is None else x for x in (a, t))
        assert err(t, r) <= 1e-6 + 1e-5 * r.abs().max().item(), f"{name}: torch path vs the fp64 reference"
        assert err(a, t) <= 1e-6 + 1e-5 * t.abs().max().item(), f"{name}: {expected} vs the torch path"
        assert err(a, r) <= 1e-6 + 1e-5 * r.abs().max().item(), f"{name}: {expected} vs the fp64 reference"
    for name, value in torch_metrics.items():
        assert err(metrics[name], value) <= 1e-6 + 1e-5 * abs(value.item()), f"metric {name}"
    masked = ~d["mask"]
    assert (got[1].cpu()[masked] == 0).all(), "masked tokens get exactly zero gradient"

"""Packed (padding-free) batches, issue #14: the same ragged sequences given (a) padded [B, T] with a mask and
(b) flat [N_total] with cu_seqlens give the same loss, metrics, logprobs and gradients, for every preset, on
the grad-in-forward and plain paths; and every bad cu_seqlens gets a clear error naming it."""

import pytest
import torch

import gro_kernels
from gro_kernels.losses import gro as _gro
from tests.losses.test_gro_loss import CHOSEN, DESIRABLE, GROUP_IDS, OFFLINE, OFFLINE_OPTIONS, ONLINE, PAIR_IDS
from tests.support import reference_losses as R

LENGTHS = [4, 0, 1, 5, 3, 2]        # an empty and a one-token sequence; T_max = 5
B, H, V = len(LENGTHS), 8, 37
T = max(LENGTHS)
TOKEN_INPUTS = ("mask", "old_logprobs", "ref_logprobs", "rollout_logprobs")
RTOL, ATOL = 1e-5, 1e-6


def cu_seqlens(lengths=LENGTHS, dtype=torch.int64):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=dtype)


class Batch:
    """One ragged batch in both layouts. Padding cells hold random hidden states and targets (never zeros), so a
    padded call that looked at them would differ."""

    def __init__(self, seed=0, width=T, bias=True):
        g = torch.Generator().manual_seed(seed)
        self.hidden = torch.randn(B, width, H, generator=g, dtype=torch.float64)
        self.weight = torch.randn(V, H, generator=g, dtype=torch.float64) / H ** 0.5
        self.bias = torch.randn(V, generator=g, dtype=torch.float64) * 0.3 if bias else None
        self.targets = torch.randint(0, V, (B, width), generator=g)
        valid = torch.arange(width) < torch.tensor(LENGTHS).unsqueeze(1)
        self.mask = valid.clone()
        self.mask[3, 1] = False            # a masked token inside a sequence
        self.targets[0, 2] = -100          # an ignored one
        self.cells = valid.reshape(-1).nonzero().squeeze(1)
        with torch.no_grad():
            lp, _, _ = R.token_logprobs(self.hidden, self.weight, self.bias, self.targets)
        noise = lambda s: lp + s * torch.randn(B, width, generator=g, dtype=torch.float64)  # noqa: E731
        self.old, self.ref, self.tiny_old, self.rollout = noise(0.15), noise(0.2), noise(3e-4), noise(0.1)
        self.rewards = torch.randn(B, generator=g, dtype=torch.float64).float()
        self.baseline = torch.randn(B, generator=g, dtype=torch.float64).float()
        self.adv = torch.randn(B, generator=g, dtype=torch.float64).float()
        self.token_adv = torch.randn(B, width, generator=g, dtype=torch.float64).float()

    def flat(self, x):
        """[B, T, ...] -> the packed tokens [N_total, ...]."""
        return x.reshape(B * x.shape[1], *x.shape[2:]).index_select(0, self.cells)


def _leaves(*ts):
    return [None if t is None else t.detach().float().clone().requires_grad_() for t in ts]


def run(batch, packed, preset=None, **kw):
    """gro_loss on one layout: (output, [dhidden (packed rows), dweight, dbias])."""
    h, w, b = _leaves(batch.hidden, batch.weight, batch.bias)
    targets, mask = batch.targets, batch.mask
    kw = dict(kw)
    if packed:
        h = h.detach().reshape(-1, H)[batch.cells].clone().requires_grad_()
        targets, mask = batch.flat(targets), batch.flat(mask)
        for name in TOKEN_INPUTS + ("advantages", "ref_hidden"):
            if name in kw and kw[name] is not None and kw[name].dim() >= 2:
                kw[name] = batch.flat(kw[name])
        kw["cu_seqlens"] = cu_seqlens()
    out = gro_kernels.gro_loss(h, w, targets, b, preset=preset, mask=mask, **kw)
    (out.loss * 0.7).backward()
    dh = h.grad if packed else batch.flat(h.grad)
    return out, [dh, w.grad] + ([b.grad] if b is not None else [])


def assert_same(batch, padded, packed, what):
    (po, pg), (ko, kg) = padded, packed
    torch.testing.assert_close(ko.loss, po.loss, rtol=RTOL, atol=ATOL, msg=f"{what}: loss")
    assert set(ko.metrics) == set(po.metrics), what
    for name in po.metrics:
        torch.testing.assert_close(ko.metrics[name], po.metrics[name], rtol=RTOL, atol=ATOL,
                                   msg=f"{what}: metric {name}")
    assert ko.logprobs.shape == (int(cu_seqlens()[-1]),)
    torch.testing.assert_close(ko.logprobs, batch.flat(po.logprobs), rtol=RTOL, atol=ATOL, msg=f"{what}: logprobs")
    if po.entropy is not None:
        torch.testing.assert_close(ko.entropy, batch.flat(po.entropy), rtol=RTOL, atol=ATOL, msg=f"{what}: ent")
    for i, (x, y) in enumerate(zip(kg, pg)):
        torch.testing.assert_close(x, y, rtol=RTOL, atol=ATOL, msg=f"{what}: grad {i}")


def check_both(batch, preset=None, **kw):
    padded, packed = run(batch, False, preset, **kw), run(batch, True, preset, **kw)
    assert_same(batch, padded, packed, preset or kw.get("config"))
    return padded, packed


def online_kwargs(preset, batch):
    old = batch.tiny_old if preset == "gspo" else batch.old
    kw = dict(old_logprobs=old.float(), ref_logprobs=batch.ref.float(), beta=0.04)
    if ONLINE[preset][0] == "given":
        kw["advantages"] = batch.adv
    else:
        kw.update(rewards=batch.rewards, group_ids=GROUP_IDS, baseline=batch.baseline)
    return kw


def offline_kwargs(preset, batch):
    kw = dict(ref_logprobs=batch.ref.float(), **OFFLINE_OPTIONS[preset])
    if preset == "kto":
        kw["desirable"] = DESIRABLE
    else:
        kw.update(pair_ids=PAIR_IDS, chosen=CHOSEN)
    return kw


@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["gif", "plain"])
@pytest.mark.parametrize("preset", list(ONLINE))
def test_online_preset_packed_equals_padded(preset, grad_in_forward):
    batch = Batch(seed=1)
    check_both(batch, preset, grad_in_forward=grad_in_forward, return_entropy=True, entropy_coef=0.01,
               **online_kwargs(preset, batch))


@pytest.mark.parametrize("preset", OFFLINE)
def test_offline_preset_packed_equals_padded(preset):
    batch = Batch(seed=2)
    check_both(batch, preset, **offline_kwargs(preset, batch))


@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["gif", "plain"])
def test_per_token_advantages_and_truncated_is(grad_in_forward):
    batch = Batch(seed=3)
    check_both(batch, "ppo", grad_in_forward=grad_in_forward, advantages=batch.token_adv,
               old_logprobs=batch.old.float(), rollout_logprobs=batch.rollout.float(), tis_cap=2.0, dual_clip=3.0)


@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["gif", "plain"])
def test_reinforce_pp_per_token_returns(grad_in_forward):
    """REINFORCE++ shapes a per-token return with the k1 KL (kl_in_reward): a per-token advantage grid."""
    batch = Batch(seed=4)
    check_both(batch, "reinforce_pp", grad_in_forward=grad_in_forward, rewards=batch.rewards, group_ids=GROUP_IDS,
               old_logprobs=batch.old.float(), ref_logprobs=batch.ref.float(), beta=0.05)
    # without old logprobs the return uses the current policy (plain path only)
    check_both(batch, "reinforce_pp", rewards=batch.rewards, group_ids=GROUP_IDS, ref_logprobs=batch.ref.float(),
               beta=0.05)


@pytest.mark.parametrize("level", ["sequence", "sequence_token"])
def test_gspo_sequence_ratios(level):
    batch = Batch(seed=5)
    check_both(batch, "gspo", importance_sampling_level=level, rewards=batch.rewards, group_ids=GROUP_IDS,
               old_logprobs=batch.tiny_old.float())


@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["gif", "plain"])
def test_ref_hidden_streaming(grad_in_forward):
    batch = Batch(seed=6)
    g = torch.Generator().manual_seed(9)
    ref_hidden = (batch.hidden + 0.3 * torch.randn(batch.hidden.shape, generator=g, dtype=torch.float64)).float()
    ref_weight = (batch.weight + 0.05).float()
    check_both(batch, "grpo", grad_in_forward=grad_in_forward, rewards=batch.rewards, group_ids=GROUP_IDS,
               old_logprobs=batch.old.float(), ref_hidden=ref_hidden, ref_weight=ref_weight, beta=0.1)
    check_both(batch, "dpo", pair_ids=PAIR_IDS, chosen=CHOSEN, ref_hidden=ref_hidden, ref_weight=ref_weight)


def test_exact_kl_on_packed_rows():
    batch = Batch(seed=7)
    ref_hidden = (batch.hidden * 0.9).float()
    check_both(batch, "grpo", rewards=batch.rewards, group_ids=GROUP_IDS, old_logprobs=batch.old.float(),
               kl_estimator="exact", ref_hidden=ref_hidden, beta=0.05)


def test_mixed_online_offline():
    batch = Batch(seed=8)
    cfg = gro_kernels.GROObjective(name="grpo+dpo", rows="mixed", kl_coef=0.04, preference_beta=0.2)
    rewards = batch.rewards.clone()
    rewards[4:] = float("nan")  # offline rows carry no reward
    for gif in (None, False):
        check_both(batch, config=cfg, online=torch.tensor([True, True, True, True, False, False]), rewards=rewards,
                   group_ids=torch.tensor([0, 0, 1, 1, -1, -1]), pair_ids=torch.tensor([-1, -1, -1, -1, 5, 5]),
                   chosen=torch.tensor([False] * 5 + [True]), old_logprobs=batch.old.float(),
                   ref_logprobs=batch.ref.float(), online_weight=0.7, offline_weight=1.9, grad_in_forward=gif)


@pytest.mark.parametrize("preset", ["grpo", "dr_grpo", "gspo", "dpo", "kto"])
@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["gif", "plain"])
def test_all_masked_batch(preset, grad_in_forward):
    batch = Batch(seed=9)
    batch.mask = torch.zeros_like(batch.mask)
    kw = offline_kwargs(preset, batch) if preset in OFFLINE else online_kwargs(preset, batch)
    padded, packed = check_both(batch, preset, grad_in_forward=grad_in_forward, **kw)
    assert packed[0].loss.item() == 0.0
    for g in packed[1]:
        assert torch.count_nonzero(g) == 0


def test_dr_grpo_length_defaults_to_the_longest_sequence():
    """The padded batch here is wider than T_max: packed equals it with max_completion_length=T_max, i.e. the
    default L of a packed batch is the width of the tightest padding."""
    batch = Batch(seed=10, width=T + 3)
    kw = dict(rewards=batch.rewards, group_ids=GROUP_IDS, old_logprobs=batch.old.float())
    padded = run(batch, False, "dr_grpo", max_completion_length=T, **kw)
    assert_same(batch, padded, run(batch, True, "dr_grpo", **kw), "dr_grpo")
    wide = run(batch, False, "dr_grpo", **kw)
    torch.testing.assert_close(wide[0].loss * (T + 3), padded[0].loss * T)


def test_int32_cu_seqlens_and_one_token_sequences():
    lengths = [1, 1, 2, 1]
    g = torch.Generator().manual_seed(11)
    hidden, weight = torch.randn(5, H, generator=g), torch.randn(V, H, generator=g)
    targets = torch.randint(0, V, (5,), generator=g)
    adv = torch.randn(4, generator=g)
    a = gro_kernels.gro_loss(hidden, weight, targets, advantages=adv, cu_seqlens=cu_seqlens(lengths, torch.int32))
    b = gro_kernels.gro_loss(hidden, weight, targets, advantages=adv, cu_seqlens=cu_seqlens(lengths))
    # one-token sequences: per-sequence and per-token advantages agree (B == N_total only with all lengths 1 here)
    c = gro_kernels.gro_loss(hidden, weight, targets, advantages=adv[torch.tensor([0, 1, 2, 2, 3])],
                             cu_seqlens=cu_seqlens(lengths))
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
    torch.testing.assert_close(c.loss, b.loss)
    assert a.logprobs.shape == b.logprobs.shape == (5,)
    torch.testing.assert_close(a.logprobs, b.logprobs)


def test_packed_grad_in_forward_runs_fused(monkeypatch):
    ftl = _gro._fused_module()
    decided, calls = [], []
    use_fused, fused = _gro._use_fused, ftl.fused_token_loss

    def spy_use(*args, **kwargs):
        decided.append(use_fused(*args, **kwargs))
        return decided[-1]

    def spy_fused(hidden, *args, **kwargs):
        calls.append(tuple(hidden.shape))
        return fused(hidden, *args, **kwargs)

    monkeypatch.setattr(_gro, "_use_fused", spy_use)
    monkeypatch.setattr(ftl, "fused_token_loss", spy_fused)
    batch = Batch(seed=12)
    run(batch, True, "grpo", **online_kwargs("grpo", batch))
    n_total = int(cu_seqlens()[-1])
    assert decided == [True] and calls == [(n_total, H)]  # the flat rows, never a padded [B * T, H]


def test_linear_logprobs_takes_cu_seqlens():
    batch = Batch(seed=13)
    h, t = batch.flat(batch.hidden).float(), batch.flat(batch.targets)
    w = batch.weight.float()
    plain = gro_kernels.linear_logprobs(h, w, t, return_entropy=True)
    packed = gro_kernels.linear_logprobs(h, w, t, return_entropy=True, cu_seqlens=cu_seqlens(dtype=torch.int32))
    for x, y in zip(plain, packed):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"cu_seqlens\[-1\] must equal N_total"):
        gro_kernels.linear_logprobs(h[:-1], w, t[:-1], cu_seqlens=cu_seqlens())


# ---- bad input ----

N_TOTAL = sum(LENGTHS)


@pytest.fixture
def flat():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N_TOTAL, H, generator=g), torch.randn(V, H, generator=g), torch.randint(0, V, (N_TOTAL,))


CU = cu_seqlens()
CU_CASES = [
    ("two_dim", CU.reshape(1, -1), ValueError, r"cu_seqlens must be a 1-D tensor \[B \+ 1\]"),
    ("empty", CU[:0], ValueError, r"cu_seqlens must be a 1-D tensor"),
    ("float", CU.float(), TypeError, r"cu_seqlens must be an int32 or int64 tensor.*float32"),
    ("device", CU.to("meta"), ValueError, r"cu_seqlens must be on hidden's device \(cpu\).*meta"),
    ("not_from_zero", CU + 1, ValueError, r"cu_seqlens must start at 0, got cu_seqlens\[0\] = 1"),
    ("decreasing", torch.tensor([0, 4, 3, 5, 10, 13, 15]), ValueError,
     r"cu_seqlens must be non-decreasing.*cu_seqlens\[1\] = 4 > cu_seqlens\[2\] = 3"),
    ("last", torch.tensor([0, 4, 4, 5, 10, 13, 14]), ValueError, r"cu_seqlens\[-1\] must equal N_total = 15.*14"),
    ("list", CU.tolist(), TypeError, r"cu_seqlens must be a torch.Tensor"),
]


@pytest.mark.parametrize("entry", ["gro_loss", "linear_logprobs"])
@pytest.mark.parametrize("name,cu,exc,pattern", CU_CASES, ids=[c[0] for c in CU_CASES])
def test_bad_cu_seqlens(flat, entry, name, cu, exc, pattern):
    hidden, weight, targets = flat
    with pytest.raises(exc, match=pattern):
        if entry == "gro_loss":
            gro_kernels.gro_loss(hidden, weight, targets, advantages=torch.randn(B), cu_seqlens=cu)
        else:
            gro_kernels.linear_logprobs(hidden, weight, targets, cu_seqlens=cu)


BAD_INPUTS = [
    ("hidden_3d", dict(hidden=torch.randn(1, N_TOTAL, H), targets=torch.randint(0, V, (1, N_TOTAL)),
                       advantages=torch.randn(B)), ValueError, r"hidden must be \[N_total, H\].*cu_seqlens"),
    ("advantages", dict(advantages=torch.randn(B + 1)), ValueError,
     rf"advantages must have shape \({B},\) \(per sequence\) or \({N_TOTAL},\) \(per token\)"),
    ("rewards", dict(rewards=torch.randn(N_TOTAL), group_size=1), ValueError, rf"rewards .*\({B},\).*\({N_TOTAL},\)"),
    ("group_ids", dict(rewards=torch.randn(B), group_ids=torch.zeros(N_TOTAL, dtype=torch.long)), ValueError,
     rf"group_ids must give a group to every row.*\({B},\)"),
    ("online", dict(advantages=torch.randn(B), online=torch.ones(N_TOTAL, dtype=torch.bool)), ValueError,
     rf"online must have shape \({B},\)"),
    ("chosen", dict(preset="dpo", ref_logprobs=torch.randn(N_TOTAL), pair_ids=torch.arange(B) // 2,
                    chosen=torch.ones(N_TOTAL, dtype=torch.bool)), ValueError, rf"chosen must have shape \({B},\)"),
    ("mask", dict(advantages=torch.randn(B), mask=torch.ones(B, T, dtype=torch.bool)), ValueError,
     rf"mask must have shape \({N_TOTAL},\)"),
    ("old_logprobs", dict(advantages=torch.randn(B), old_logprobs=torch.randn(B, T)), ValueError,
     rf"old_logprobs must have shape \({N_TOTAL},\) \(one value per token\)"),
    ("ref_hidden", dict(advantages=torch.randn(B), beta=0.1, ref_hidden=torch.randn(B, T, H)), ValueError,
     rf"ref_hidden must have the leading shape of hidden \({N_TOTAL},\)"),
    ("ref_logprobs", dict(preset="kto", desirable=torch.ones(B, dtype=torch.bool), ref_logprobs=torch.randn(B)),
     ValueError, rf"ref_logprobs must have shape \({N_TOTAL},\)"),
]


@pytest.mark.parametrize("name,kw,exc,pattern", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_packed_inputs(flat, name, kw, exc, pattern):
    hidden, weight, targets = flat
    kw = dict(kw)
    hidden, targets = kw.pop("hidden", hidden), kw.pop("targets", targets)
    with pytest.raises(exc, match=pattern):
        gro_kernels.gro_loss(hidden, weight, targets, cu_seqlens=CU, **kw)


def test_flat_tokens_without_cu_seqlens_say_so(flat):
    hidden, weight, targets = flat
    with pytest.raises(ValueError, match=r"gro_loss needs a \[B, T\] batch.*cu_seqlens="):
        gro_kernels.gro_loss(hidden, weight, targets, advantages=torch.randn(B))


@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["gif", "plain"])
def test_every_sequence_empty(grad_in_forward):
    hidden, weight = torch.randn(0, H, requires_grad=True), torch.randn(V, H, requires_grad=True)
    out = gro_kernels.gro_loss(hidden, weight, torch.zeros(0, dtype=torch.long), advantages=torch.randn(3),
                               cu_seqlens=torch.zeros(4, dtype=torch.int32), grad_in_forward=grad_in_forward)
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.logprobs.shape == (0,)
    assert torch.count_nonzero(weight.grad) == 0

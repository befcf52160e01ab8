"""TRL GRPO and verl policy losses under their own names vs plain-torch references of the peers' formulas
(tests/support/peer_policy_refs.py: TRL 1.16.0 trl/trainer/grpo_trainer.py GRPOTrainer._compute_loss and its
helpers; verl 0.9.1 verl/trainer/ppo/core_algos.py compute_policy_loss_<mode>, agg_loss, kl_penalty).
Losses and gradients, with masked tokens and an empty row."""

import pytest
import torch

import gro_kernels as G
from gro_kernels.presets import PRESETS
from tests.support import peer_policy_refs as ref

B, T = 5, 7


def _batch(seed=0, empty_row=True):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, T, generator=g) * 3 - 0.05
    old = lp + torch.randn(B, T, generator=g) * 0.3
    rollout = old + torch.randn(B, T, generator=g) * 0.2
    ref_lp = lp + torch.randn(B, T, generator=g) * 0.2
    adv = torch.randn(B, generator=g)
    entropy = torch.rand(B, T, generator=g) * 2
    mask = torch.rand(B, T, generator=g) > 0.25
    mask[0, 0] = True
    if empty_row:
        mask[-1] = False
    return dict(lp=lp, old=old, rollout=rollout, ref=ref_lp, adv=adv, entropy=entropy, mask=mask)


def _grad(fn, lp):
    x = lp.clone().requires_grad_()
    loss = fn(x)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g


def _close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{what}: {m}")


TRL_CASES = [
    ("sapo", {}, {}),
    ("luspo", {}, {}),
    ("cispo", dict(epsilon_high=1.5), dict(eps_high=1.5)),
    ("vespo", {}, {}),
    ("dapo", dict(delta=1.3), dict(delta=1.3)),
    ("grpo", dict(delta=1.25, epsilon_high=0.28), dict(delta=1.25, eps_high=0.28)),
    ("bnpo", dict(beta=0.1, use_bias_correction_kl=True), dict(beta=0.1, bias_correction_kl=True)),
    ("grpo", dict(beta=0.1, use_bias_correction_kl=False), dict(beta=0.1, bias_correction_kl=False)),
    ("sapo", dict(sapo_temperature_pos=2.0, sapo_temperature_neg=3.0), dict(sapo_pos=2.0, sapo_neg=3.0)),
]


@pytest.mark.parametrize("loss_type, ours, theirs", TRL_CASES)
def test_trl_loss_types(loss_type, ours, theirs):
    """TRL GRPOTrainer._compute_loss: loss_type sapo / luspo / cispo / vespo, delta, use_bias_correction_kl."""
    d = _batch()
    m = d["mask"].float()
    kw = dict(ref_logprobs=d["ref"]) if "beta" in ours else {}
    got = _grad(lambda x: G.policy_loss(x, d["adv"], d["mask"], old_logprobs=d["old"], loss_type=loss_type,
                                        **kw, **ours).loss, d["lp"])
    want = _grad(lambda x: ref.trl_grpo_loss(x, d["old"], d["adv"], m, loss_type=loss_type, ref=d["ref"],
                                             **theirs), d["lp"])
    _close(got[0], want[0], "loss")
    _close(got[1], want[1], "grad")


@pytest.mark.parametrize("loss_type", ["luspo", "sapo", "grpo"])
def test_trl_sequence_level_ratio(loss_type):
    """TRL importance_sampling_level='sequence' (LUSPO's recommended setup), with the ratio-weighted KL: the
    sequence ratio exp(mean_t r) weights the KL too."""
    d = _batch(14)
    m = d["mask"].float()
    got = _grad(lambda x: G.policy_loss(x, d["adv"], d["mask"], old_logprobs=d["old"], ref_logprobs=d["ref"],
                                        beta=0.05, use_bias_correction_kl=True, loss_type=loss_type,
                                        importance_sampling_level="sequence").loss, d["lp"])
    want = _grad(lambda x: ref.trl_grpo_loss(x, d["old"], d["adv"], m, loss_type=loss_type, beta=0.05, ref=d["ref"],
                                             importance_sampling_level="sequence"), d["lp"])
    _close(got[0], want[0], "loss")
    _close(got[1], want[1], "grad")


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
@pytest.mark.parametrize("clip_min", [None, 0.5])
def test_trl_vllm_importance_sampling_modes(mode, clip_min):
    """TRL vllm_importance_sampling_mode (+ clip_min / clip_max) multiplies the policy term only, not the KL."""
    d = _batch(1)
    m = d["mask"].float()
    d["rollout"][1] = d["old"][1] - 0.4  # a sequence whose ratio exceeds the cap
    is_ratio = ref.trl_vllm_is_ratio(d["old"], d["rollout"], m, mode, clip_min, 1.5)
    got = _grad(lambda x: G.policy_loss(x, d["adv"], d["mask"], old_logprobs=d["old"], rollout_logprobs=d["rollout"],
                                        ref_logprobs=d["ref"], beta=0.05, use_bias_correction_kl=True,
                                        vllm_importance_sampling_mode=mode, vllm_importance_sampling_clip_min=clip_min,
                                        vllm_importance_sampling_clip_max=1.5).loss, d["lp"])
    want = _grad(lambda x: ref.trl_grpo_loss(x, d["old"], d["adv"], m, beta=0.05, ref=d["ref"],
                                             is_ratio=is_ratio), d["lp"])
    _close(got[0], want[0], "loss")
    _close(got[1], want[1], "grad")


def test_trl_vespo_folds_is_ratio_into_phi():
    """TRL get_gamma_weights with importance_sampling_ratio (token_mask): phi reads it, the loss is not scaled."""
    d = _batch(2)
    m = d["mask"].float()
    is_ratio = ref.trl_vllm_is_ratio(d["old"], d["rollout"], m, "token_mask", None, 1.2)
    got = _grad(lambda x: G.policy_loss(x, d["adv"], d["mask"], old_logprobs=d["old"], rollout_logprobs=d["rollout"],
                                        loss_type="vespo", rollout_is_mode="token_mask", tis_cap=1.2).loss, d["lp"])
    want = _grad(lambda x: ref.trl_grpo_loss(x, d["old"], d["adv"], m, loss_type="vespo", is_ratio=is_ratio * m
                                             + (1 - m)), d["lp"])
    _close(got[0], want[0], "loss")
    _close(got[1], want[1], "grad")


@pytest.mark.parametrize("quantile", [0.2, 0.5])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_trl_top_entropy_quantile_and_token_mean_entropy_bonus(quantile, loss_type):
    """TRL get_high_entropy_mask (quantile 1 - q of the valid entropies) on the policy term, and its entropy bonus
    as a token mean over the same tokens (entropy_aggregation='token_mean'); gradients in l and H."""
    d = _batch(3)
    m = d["mask"].float()
    ent = d["entropy"].clone().requires_grad_()
    x = d["lp"].clone().requires_grad_()
    out = G.policy_loss(x, d["adv"], d["mask"], old_logprobs=d["old"], entropy=ent, loss_type=loss_type,
                        top_entropy_quantile=quantile, entropy_coef=0.1, entropy_aggregation="token_mean")
    g_l, g_h = torch.autograd.grad(out.loss, (x, ent))
    x2 = d["lp"].clone().requires_grad_()
    ent2 = d["entropy"].clone().requires_grad_()
    want = ref.trl_grpo_loss(x2, d["old"], d["adv"], m, loss_type=loss_type, entropy=ent2,
                             top_entropy_quantile=quantile, entropy_coef=0.1)
    w_l, w_h = torch.autograd.grad(want, (x2, ent2))
    _close(out.loss.detach(), want.detach(), "loss")
    _close(g_l, w_l, "grad logprobs")
    _close(g_h, w_h, "grad entropy")
    # Some valid token was dropped (else the test would not see the mask).
    assert bool(((w_l == 0) & d["mask"]).any())


def test_entropy_aggregation_loss_is_aggregated_like_the_policy_term():
    """gro / verl: the entropy term aggregated like pg (seq_mean_token_mean here), unlike TRL's token mean."""
    d = _batch(4)
    m = d["mask"].float()
    ent = d["entropy"]
    got = G.policy_loss(d["lp"], d["adv"], d["mask"], entropy=ent, entropy_coef=0.5, loss_type="grpo").loss
    base = G.policy_loss(d["lp"], d["adv"], d["mask"], loss_type="grpo").loss
    seq_mean = ((ent * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    _close(got - base, -0.5 * seq_mean, "entropy term")
    trl = G.policy_loss(d["lp"], d["adv"], d["mask"], entropy=ent, entropy_coef=0.5, loss_type="grpo",
                        entropy_aggregation="token_mean").loss
    _close(trl - base, -0.5 * (ent * m).sum() / m.sum(), "TRL entropy term")
    assert not torch.allclose(got, trl)


def test_trl_off_policy_mask():
    """TRL get_off_policy_mask: negative-advantage sequences whose mean sampling - current logprob exceeds the
    threshold are dropped."""
    d = _batch(5)
    m = d["mask"].float()
    d["adv"][:] = torch.tensor([-1.0, 0.5, -0.3, -2.0, 1.0])
    d["rollout"][0] = d["lp"][0] + 0.5  # far off-policy
    got = _grad(lambda x: G.policy_loss(x, d["adv"], d["mask"], old_logprobs=d["old"], rollout_logprobs=d["rollout"],
                                        off_policy_mask_threshold=0.1).loss, d["lp"])
    want = _grad(lambda x: ref.trl_grpo_loss(x, d["old"], d["adv"], m, off_policy_threshold=0.1,
                                             sampling=d["rollout"]), d["lp"])
    _close(got[0], want[0], "loss")
    _close(got[1], want[1], "grad")
    assert bool((got[1][0] == 0).all()) and not bool((got[1][1] == 0).all())


VERL_AGGS = ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
VERL_MODES = [("vanilla", {}), ("sapo", dict(tau_pos=1.5, tau_neg=2.0)), ("gpg", {}), ("cispo", {}),
              ("cispo", dict(clip_ratio_low=0.1, clip_ratio_high=0.3)), ("dppo_tv", {}), ("dppo_kl", {}),
              ("dppo_tv", dict(clip_ratio_c=1.1)), ("dro", dict(dro_beta=0.3)),
              ("vanilla", dict(clip_ratio_low=0.1, clip_ratio_high=0.28, clip_ratio_c=2.0))]


@pytest.mark.parametrize("agg", VERL_AGGS)
@pytest.mark.parametrize("mode, opts", VERL_MODES)
def test_verl_loss_modes(mode, opts, agg):
    """verl compute_policy_loss_<mode> + agg_loss(loss_agg_mode) (no empty row: see the next test).
    verl's sapo always aggregates seq-mean-token-mean; gro honours the loss_agg_mode it is given."""
    d = _batch(6, empty_row=False)
    m = d["mask"].float()
    adv_t = d["adv"].unsqueeze(1).expand(B, T)
    theirs = dict(low=opts.get("clip_ratio_low", 0.2), high=opts.get("clip_ratio_high", 0.2),
                  clip_ratio_c=opts.get("clip_ratio_c"), tau_pos=opts.get("tau_pos", 1.0),
                  tau_neg=opts.get("tau_neg", 1.05), dro_beta=opts.get("dro_beta"))
    got = _grad(lambda x: G.policy_loss(x, d["adv"], d["mask"], old_logprobs=d["old"], loss_mode=mode,
                                        loss_agg_mode=agg, **opts).loss, d["lp"])
    want = _grad(lambda x: ref.verl_agg_loss(ref.verl_pg_losses(d["old"], x, adv_t, mode, **theirs), m, agg), d["lp"])
    _close(got[0], want[0], "loss")
    _close(got[1], want[1], "grad")


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "seq-mean-token-sum"])
def test_verl_seq_mean_with_empty_rows_needs_num_sequences(agg):
    """verl agg_loss divides seq-mean by the non-empty sequences; gro by B (TRL's .mean()), or num_sequences=."""
    d = _batch(7, empty_row=True)
    m = d["mask"].float()
    adv_t = d["adv"].unsqueeze(1).expand(B, T)
    want = ref.verl_agg_loss(ref.verl_pg_losses(d["old"], d["lp"], adv_t, "gpg"), m, agg)
    plain = G.policy_loss(d["lp"], d["adv"], d["mask"], loss_mode="gpg", loss_agg_mode=agg).loss
    counted = G.policy_loss(d["lp"], d["adv"], d["mask"], loss_mode="gpg", loss_agg_mode=agg,
                            num_sequences=B - 1).loss
    _close(counted, want, "with num_sequences")
    assert not torch.allclose(plain, want)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_verl_dp_normalizers_are_per_rank_counts(agg):
    """verl agg_loss(dp_size=2, batch_num_tokens / global_batch_size = global counts) on each rank's half equals
    gro's loss with global_token_count / num_sequences = the global count / dp_size (docs/peer_names.md)."""
    d = _batch(15, empty_row=False)
    m = d["mask"].float()
    adv_t = d["adv"].unsqueeze(1).expand(B, T)
    tokens, seqs = m.sum(), float(B)
    for rank in (slice(0, 2), slice(2, B)):
        want = ref.verl_agg_loss(ref.verl_pg_losses(d["old"][rank], d["lp"][rank], adv_t[rank], "gpg"), m[rank], agg,
                                 dp_size=2, batch_num_tokens=tokens, global_batch_size=seqs)
        counts = dict(global_token_count=tokens / 2) if agg == "token-mean" else dict(num_sequences=seqs / 2)
        got = G.policy_loss(d["lp"][rank], d["adv"][rank], d["mask"][rank], loss_mode="gpg", loss_agg_mode=agg,
                            **counts).loss
        _close(got, want, f"rank {rank}")


@pytest.mark.parametrize("name", ["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "kl+", "k1+", "abs+", "mse+",
                                  "k2+", "low_var_kl+", "k3+"])
def test_verl_kl_loss_types(name):
    """verl kl_penalty(kl_loss_type) incl. its k3 clamp (a log ratio beyond 20, a value beyond 10) and the '+'
    straight-through; gro_loss-style options through policy_loss (kl_loss_type=, beta=) as a token mean."""
    d = _batch(8, empty_row=False)
    m = d["mask"].float()
    d["ref"][0, :3] = d["lp"][0, :3] + torch.tensor([25.0, 12.0, -3.0])
    got = _grad(lambda x: G.policy_loss(x, torch.zeros(B), d["mask"], ref_logprobs=d["ref"], beta=1.0,
                                        kl_loss_type=name, loss_agg_mode="token-mean").loss, d["lp"])
    want = _grad(lambda x: ref.verl_agg_loss(ref.verl_kl_penalty(x, d["ref"], name), m, "token-mean"), d["lp"])
    _close(got[0], want[0], "loss")
    _close(got[1], want[1], "grad")


@pytest.mark.parametrize("name", ["abs", "k1+", "abs+", "low_var_kl", "low_var_kl+", "mse", "kl"])
def test_kl_penalty_accepts_verl_names(name):
    """gro_kernels.kl_penalty (its naive autograd spec) = verl kl_penalty, value and gradient."""
    d = _batch(9)
    d["ref"][0, :2] = d["lp"][0, :2] + torch.tensor([25.0, 12.0])
    got = _grad(lambda x: G.kl_penalty(x, d["ref"], estimator=name).sum(), d["lp"])
    want = _grad(lambda x: ref.verl_kl_penalty(x, d["ref"], name).sum(), d["lp"])
    _close(got[0], want[0], "value")
    _close(got[1], want[1], "grad")


def test_presets_hold_the_peer_losses():
    for name in ("sapo", "vespo", "luspo", "gpg", "dppo_tv", "dppo_kl"):
        assert name in G.PRESETS
    assert not PRESETS["vespo"].token_separable and PRESETS["sapo"].token_separable


# ---- gro_loss on hidden states: grad-in-forward (token-separable options) vs the plain path ----

FUSED_CASES = [dict(loss_type="sapo"), dict(loss_type="luspo"), dict(loss_type="cispo", epsilon_high=2.0),
               dict(loss_agg_mode="seq-mean-token-sum-norm"), dict(loss_agg_mode="token-sum"),
               dict(loss_mode="dppo_tv"), dict(loss_mode="dppo_kl"), dict(loss_mode="dro", dro_beta=0.2),
               dict(loss_mode="cispo", clip_ratio_low=0.1), dict(loss_mode="vanilla"), dict(delta=1.2),
               dict(beta=0.1, use_bias_correction_kl=True), dict(beta=0.1, kl_loss_type="k3+"),
               dict(beta=0.1, kl_estimator="abs"),
               dict(vllm_importance_sampling_mode="sequence_mask", vllm_importance_sampling_clip_max=2.0),
               dict(vllm_importance_sampling_mode="token_truncate", vllm_importance_sampling_clip_min=0.9,
                    vllm_importance_sampling_clip_max=1.1),
               dict(entropy_coef=0.05, entropy_aggregation="token_mean")]


def _head(seed=0):
    g = torch.Generator().manual_seed(seed)
    H, V = 16, 40
    hidden = torch.randn(B, T, H, generator=g)
    weight = torch.randn(V, H, generator=g) * 0.3
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.2
    mask[-1] = False
    with torch.no_grad():
        lp = G.linear_logprobs(hidden, weight, targets)
    old = lp + torch.randn(B, T, generator=g) * 0.2
    return dict(hidden=hidden, weight=weight, targets=targets, mask=mask, old=old,
                rollout=old + torch.randn(B, T, generator=g) * 0.2, ref=lp + torch.randn(B, T, generator=g) * 0.2,
                adv=torch.randn(B, generator=g))


@pytest.mark.parametrize("opts", FUSED_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_gro_loss_fused_matches_plain(opts):
    d = _head()
    res = []
    for fused in (True, False):
        h = d["hidden"].clone().requires_grad_()
        w = d["weight"].clone().requires_grad_()
        out = G.gro_loss(h, w, d["targets"], mask=d["mask"], advantages=d["adv"], old_logprobs=d["old"],
                         rollout_logprobs=d["rollout"], ref_logprobs=d["ref"], grad_in_forward=fused, **opts)
        out.loss.backward()
        res.append((out.loss.detach(), h.grad, w.grad))
    for a, b, what in zip(res[0], res[1], ("loss", "dhidden", "dweight")):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{what}: {m}")


def test_gro_loss_plain_matches_policy_loss_for_coupled_options():
    """Sequence-coupled options (vespo, top_entropy_quantile, off_policy_mask_threshold) run the plain path: the
    same numbers as policy_loss on the head's logprobs."""
    d = _head(1)
    for opts in (dict(loss_type="vespo"), dict(top_entropy_quantile=0.5),
                 dict(off_policy_mask_threshold=0.0)):
        h = d["hidden"].clone().requires_grad_()
        out = G.gro_loss(h, d["weight"], d["targets"], mask=d["mask"], advantages=d["adv"], old_logprobs=d["old"],
                         rollout_logprobs=d["rollout"], **opts)
        lp, ent = G.linear_logprobs(d["hidden"], d["weight"], d["targets"], return_entropy=True)
        want = G.policy_loss(lp, d["adv"], d["mask"], old_logprobs=d["old"], rollout_logprobs=d["rollout"],
                             entropy=ent, **opts).loss
        _close(out.loss.detach(), want.detach(), str(opts))


# ---- bad input ----

@pytest.mark.parametrize("kwargs, words", [
    (dict(loss_mode="bypass_mode"), ["loss_mode", "bypass_mode", "not implemented"]),
    (dict(loss_mode="geo_mean", dual_clip=3.0), ["geo_mean", "dual_clip"]),
    (dict(loss_mode="nope"), ["loss_mode"]),
    (dict(loss_agg_mode="token_mean_x"), ["loss_agg_mode"]),
    (dict(kl_loss_type="k9"), ["kl_loss_type"]),
    (dict(delta=0.9), ["delta", "> 1"]),
    (dict(loss_mode="dro"), ["dro_beta"]),
    (dict(dro_beta=0.1), ["dro_beta", "surrogate"]),
    (dict(top_entropy_quantile=0.0), ["top_entropy_quantile"]),
    (dict(entropy_aggregation="sum"), ["entropy_aggregation"]),
    (dict(vllm_importance_sampling_mode="seq"), ["rollout_is_mode"]),
    (dict(rollout_is_min=0.5), ["rollout_is_min", "rollout_is_mode"]),
    (dict(loss_type="vespo", vllm_importance_sampling_mode="sequence_mask"), ["vespo", "rollout_is_mode"]),
    (dict(loss_agg_mode="token-mean", loss_type="dapo"), ["loss_agg_mode", "loss_type"]),
    (dict(clip_ratio_c=2.0, loss_mode="gpg"), ["clip_ratio_c"]),
    (dict(unknown_thing=1), ["unknown_thing"]),
])
def test_bad_peer_options_raise_naming_them(kwargs, words):
    d = _batch()
    with pytest.raises((ValueError, TypeError)) as info:
        G.policy_loss(d["lp"], d["adv"], d["mask"], old_logprobs=d["old"], **kwargs)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    h = _head()
    with pytest.raises((ValueError, TypeError)) as info:
        G.gro_loss(h["hidden"], h["weight"], h["targets"], advantages=h["adv"], old_logprobs=h["old"], **kwargs)
    assert words[0] in str(info.value)


def test_policy_loss_refuses_an_argument_and_its_peer_name_together():
    d = _batch()
    with pytest.raises(ValueError, match="epsilon_high=0.3 and a TRL / verl option"):
        G.policy_loss(d["lp"], d["adv"], d["mask"], epsilon_high=0.3, clip_ratio_high=0.28)
    with pytest.raises(ValueError, match="beta=0.1 and a TRL / verl option"):
        G.policy_loss(d["lp"], d["adv"], d["mask"], ref_logprobs=d["ref"], beta=0.1, kl_loss_coef=0.2)
    h = _head()
    with pytest.raises(ValueError, match="surrogate"):
        G.gro_loss(h["hidden"], h["weight"], h["targets"], advantages=h["adv"], surrogate="clip", loss_mode="sapo")
    # kl_estimator= takes verl's names too (mse = k2)
    a = G.policy_loss(d["lp"], d["adv"], d["mask"], ref_logprobs=d["ref"], beta=0.1, kl_estimator="mse").loss
    b = G.policy_loss(d["lp"], d["adv"], d["mask"], ref_logprobs=d["ref"], beta=0.1, kl_estimator="k2").loss
    _close(a, b, "mse = k2")


def test_vllm_modes_need_old_and_rollout_logprobs():
    d = _batch()
    with pytest.raises(ValueError, match="rollout_logprobs"):
        G.policy_loss(d["lp"], d["adv"], d["mask"], old_logprobs=d["old"], vllm_importance_sampling_mode="token_mask")
    h = _head()
    with pytest.raises(ValueError, match="old_logprobs"):
        G.gro_loss(h["hidden"], h["weight"], h["targets"], advantages=h["adv"], rollout_logprobs=h["rollout"],
                   vllm_importance_sampling_mode="token_mask")


# ---- Triton: options the epilogue lacks run the torch function (TRITON_INTERPRET=1 run) ----

@pytest.mark.interpreter
@pytest.mark.parametrize("cfg", [dict(surrogate="sapo"), dict(surrogate="dppo_kl"), dict(surrogate="dro", dro_beta=0.1),
                                 dict(delta=1.2), dict(surrogate="cispo", epsilon_high=2.0, cispo_ratio_min=0.8),
                                 dict(kl_estimator="low_var_kl+", kl_coef=0.1),
                                 dict(kl_ratio_weighted=True, kl_coef=0.1)], ids=str)
def test_triton_backend_routes_unsupported_options_to_torch(cfg, monkeypatch):
    """GRO_BACKEND=triton: the dispatcher (function.policy_token_terms) sends what the Triton epilogue does not
    implement to token_terms; options it does implement still run the kernel (a spy counts the calls)."""
    from gro_kernels.ops.policy_loss import function as fn
    from gro_kernels.ops.policy_loss import token_terms
    from gro_kernels.ops.policy_loss.token_terms import TokenLossConfig

    monkeypatch.setenv("GRO_BACKEND", "triton")
    triton_impl = fn._triton_impl()
    assert triton_impl is not None
    calls = []
    real = triton_impl.policy_token_terms
    monkeypatch.setattr(triton_impl, "policy_token_terms", lambda *a, **k: calls.append(1) or real(*a, **k))
    g = torch.Generator().manual_seed(0)
    n = 300
    lp = -torch.rand(n, generator=g) * 3
    args = (lp, torch.randn(n, generator=g), torch.full((n,), 1.0 / n), torch.rand(n, generator=g) > 0.2)
    opts = dict(old_logprobs=lp + 0.2 * torch.randn(n, generator=g), ref_logprobs=lp + 0.1)
    c = TokenLossConfig(**cfg)
    got = fn.policy_token_terms(*args, cfg=c, **opts)
    want = token_terms.policy_token_terms(*args, cfg=c, **opts)
    assert not calls
    torch.testing.assert_close(got.loss, want.loss)
    torch.testing.assert_close(got.grad_logprobs, want.grad_logprobs)
    fn.policy_token_terms(*args, cfg=TokenLossConfig(), **opts)
    assert calls  # the supported config still takes the kernel


# ---- verl's coupled losses (plain path) ----

@pytest.mark.parametrize("low, high", [(0.2, 0.2), (0.1, 0.4)])
def test_verl_geo_mean(low, high):
    """verl compute_policy_loss_geo_mean (GMPO): a mean over rows, whatever loss_agg_mode."""
    d = _batch(10)
    m = d["mask"].float()
    adv_t = d["adv"].unsqueeze(1).expand(B, T)
    got = _grad(lambda x: G.policy_loss(x, d["adv"], d["mask"], old_logprobs=d["old"], loss_mode="geo_mean",
                                        clip_ratio_low=low, clip_ratio_high=high).loss, d["lp"])
    want = _grad(lambda x: ref.verl_geo_mean(d["old"], x, adv_t, m, low, high), d["lp"])
    _close(got[0], want[0], "loss")
    _close(got[1], want[1], "grad")


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum-norm"])
def test_verl_kl_cov(agg):
    """verl compute_policy_loss_kl_cov: |l - old| * ppo_kl_coef on the top-cov tokens (ratio 0.1: several)."""
    d = _batch(11, empty_row=False)
    m = d["mask"].float()
    adv_t = d["adv"].unsqueeze(1).expand(B, T)
    opts = dict(kl_cov_ratio=0.1, ppo_kl_coef=0.5)
    got = _grad(lambda x: G.policy_loss(x, d["adv"], d["mask"], old_logprobs=d["old"], loss_mode="kl_cov",
                                        loss_agg_mode=agg, **opts).loss, d["lp"])
    want = _grad(lambda x: ref.verl_agg_loss(ref.verl_kl_cov(d["old"], x, adv_t, m, **opts), m, agg), d["lp"])
    plain = G.policy_loss(d["lp"], d["adv"], d["mask"], old_logprobs=d["old"], loss_mode="vanilla",
                          clip_ratio_c=1e9, clip_ratio=1e9, loss_agg_mode=agg).loss  # -A rho alone
    _close(got[0], want[0], "loss")
    _close(got[1], want[1], "grad")
    assert not torch.allclose(got[0], plain)


def test_verl_clip_cov():
    """verl compute_policy_loss_clip_cov with the same global RNG state (its random pick is torch.randperm);
    bounds wide enough that tokens are zeroed."""
    d = _batch(12, empty_row=False)
    m = d["mask"].float()
    adv_t = d["adv"].unsqueeze(1).expand(B, T)
    opts = dict(clip_cov_ratio=0.2, clip_cov_lb=-1.0, clip_cov_ub=5.0)
    torch.manual_seed(123)
    got = _grad(lambda x: G.policy_loss(x, d["adv"], d["mask"], old_logprobs=d["old"], loss_mode="clip_cov",
                                        loss_agg_mode="token-mean", **opts).loss, d["lp"])
    torch.manual_seed(123)
    want = _grad(lambda x: ref.verl_agg_loss(ref.verl_clip_cov(d["old"], x, adv_t, m, lb=-1.0, ub=5.0,
                                                               clip_cov_ratio=0.2), m, "token-mean"), d["lp"])
    _close(got[0], want[0], "loss")
    _close(got[1], want[1], "grad")
    assert bool(((got[1] == 0) & d["mask"]).any())  # some valid token was dropped


def test_gro_loss_coupled_verl_losses_take_the_plain_path():
    d = _head(2)
    for mode in ("geo_mean", "kl_cov"):
        assert not PRESETS[mode].token_separable
        out = G.gro_loss(d["hidden"], d["weight"], d["targets"], mask=d["mask"], advantages=d["adv"],
                         old_logprobs=d["old"], loss_mode=mode)
        lp = G.linear_logprobs(d["hidden"], d["weight"], d["targets"])
        want = G.policy_loss(lp, d["adv"], d["mask"], old_logprobs=d["old"], loss_mode=mode).loss
        _close(out.loss.detach(), want.detach(), mode)


# ---- straight against TRL's own static helpers (installed peer) ----

def test_gates_match_trl_static_helpers():
    """gates.off_policy_mask / vespo_phi vs TRL's GRPOTrainer.get_off_policy_mask / get_gamma_weights themselves."""
    trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
    from gro_kernels.ops.policy_loss import gates

    d = _batch(13)
    m = d["mask"]
    adv = d["adv"].unsqueeze(1)
    d["rollout"][0] = d["lp"][0] + 0.7
    want = trl_grpo.GRPOTrainer.get_off_policy_mask(adv, d["lp"], d["rollout"], m.float(), 0.1)
    got = gates.off_policy_mask(adv.expand(B, T), d["lp"], d["rollout"], m, 0.1)
    torch.testing.assert_close(got, want.expand(B, T))
    is_ratio = ref.trl_vllm_is_ratio(d["old"], d["rollout"], m.float(), "token_truncate", None, 2.0)
    want = trl_grpo.GRPOTrainer.get_gamma_weights(adv, d["lp"] - d["old"], m.float(), is_ratio)
    got = gates.vespo_phi(adv.expand(B, T), d["lp"] - d["old"], m, torch.where(m, is_ratio, 1.0),
                          (2.0, 3.0, 3.0, 2.0))
    torch.testing.assert_close(got, want.expand(B, T), rtol=1e-5, atol=1e-7)


# ---- packed batches and the module entry point ----

@pytest.mark.parametrize("opts", [dict(vllm_importance_sampling_mode="sequence_truncate",
                                       vllm_importance_sampling_clip_max=1.2),
                                  dict(loss_type="vespo"), dict(loss_mode="geo_mean"),
                                  dict(top_entropy_quantile=0.5, entropy_coef=0.1, entropy_aggregation="token_mean")],
                         ids=str)
@pytest.mark.parametrize("fused", [True, False])
def test_packed_matches_padded(opts, fused):
    """Sequence-level gates and coupled losses on cu_seqlens batches: the padded batch's loss and dhidden."""
    d = _head(3)
    lengths = d["mask"].sum(1)  # one empty row; each row's first `length` tokens form its sequence
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    flat = lambda t: t[mask]  # noqa: E731
    outs = []
    for packed in (False, True):
        h = (flat(d["hidden"]) if packed else d["hidden"]).clone().requires_grad_()
        kw = dict(old_logprobs=d["old"], rollout_logprobs=d["rollout"])
        if packed:
            kw = {k: flat(val) for k, val in kw.items()}
            out = G.gro_loss(h, d["weight"], flat(d["targets"]), cu_seqlens=cu, advantages=d["adv"],
                             grad_in_forward=fused, **kw, **opts)
        else:
            out = G.gro_loss(h, d["weight"], d["targets"], mask=mask, advantages=d["adv"], grad_in_forward=fused,
                             **kw, **opts)
        out.loss.backward()
        outs.append((out.loss.detach(), h.grad[mask] if not packed else h.grad))
    _close(outs[1][0], outs[0][0], "loss")
    _close(outs[1][1], outs[0][1], "dhidden")


def test_gro_loss_module_accepts_peer_names():
    d = _head(4)
    m = G.GROLoss(preset="grpo", loss_mode="dppo_kl", loss_agg_mode="seq-mean-token-sum")
    a = m(d["hidden"], d["weight"], d["targets"], mask=d["mask"], advantages=d["adv"], old_logprobs=d["old"]).loss
    b = G.gro_loss(d["hidden"], d["weight"], d["targets"], mask=d["mask"], advantages=d["adv"],
                   old_logprobs=d["old"], surrogate="dppo_kl", aggregation="seq_mean_token_sum").loss
    _close(a.detach(), b.detach(), "module")
    with pytest.raises(ValueError, match="loss_mode"):
        G.GROLoss(preset="grpo", loss_mode="bypass_mode")

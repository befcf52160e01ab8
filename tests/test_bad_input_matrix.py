"""The published bad-input matrix (issue #12, "Nothing silent"): what every public function answers to bad
values and contradicting options, on every path.

Each case is (function, what is passed, the call, the expected outcome): OK, or the exception type and a
regex its message must match (naming the argument, and what was expected or given). docs/bad_inputs.md is
rendered from this table and a test keeps it current; regenerate it with

    python -m tests.test_bad_input_matrix > docs/bad_inputs.md

Environment variables a case needs are set for that call only; GRO_BACKEND, GRO_CHUNK_SIZE,
GRO_DISABLE_NATIVE and TRITON_INTERPRET are unset around every call, so the outcome does not depend on the
caller's shell.
"""

import contextlib
import os
import pathlib
import types
from typing import Callable, NamedTuple, Optional

import pytest
import torch

import gro_kernels as G
from gro_kernels import GROObjective

OK = "ok"
DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"
ENV_VARS = ("GRO_BACKEND", "GRO_CHUNK_SIZE", "GRO_DISABLE_NATIVE", "TRITON_INTERPRET")


class Case(NamedTuple):
    function: str          # the public name under test
    given: str             # what is passed, as a caller would write it
    call: Callable
    expect: object         # OK, or (exception type, message regex)
    env: Optional[dict] = None


# ---- inputs: one small valid batch; each case breaks one thing ----

B, T, H, V = 4, 3, 8, 11
_g = torch.Generator().manual_seed(0)
HID = torch.randn(B, T, H, generator=_g)
W = torch.randn(V, H, generator=_g) / H ** 0.5
Y = torch.randint(0, V, (B, T), generator=_g)
H2, Y2 = HID.reshape(-1, H), Y.reshape(-1)
REF_H2 = H2 + 0.1 * torch.randn(H2.shape, generator=_g)
ADV = torch.randn(B, generator=_g)
REW = torch.tensor([0.0, 1.0, 0.5, 2.0])
LP = -torch.rand(B, T, generator=_g)
REF = LP + 0.1 * torch.randn(B, T, generator=_g)
ENT = torch.rand(B, T, generator=_g)
PAIRS = dict(pair_ids=torch.tensor([0, 0, 1, 1]), chosen=torch.tensor([True, False, True, False]))
DESIRABLE = torch.tensor([True, False, True, False])
Y_HIGH = Y.clone()
Y_HIGH[1, 1] = V
Y_LOW = Y2.clone()
Y_LOW[0] = -3
NAN = float("nan")


def meta(t):
    return t.to("meta")


def lp(**kw):
    args = dict(hidden=H2, weight=W, targets=Y2, bias=None)
    args.update({k: kw.pop(k) for k in list(kw) if k in args})
    return G.linear_logprobs(args["hidden"], args["weight"], args["targets"], args["bias"], **kw)


def kl(**kw):
    args = dict(hidden=H2, weight=W, ref_hidden=REF_H2, ref_weight=W)
    args.update({k: kw.pop(k) for k in list(kw) if k in args})
    return G.exact_kl(args["hidden"], args["weight"], args["ref_hidden"], args["ref_weight"], **kw)


def adv(**kw):
    return G.group_advantages(kw.pop("rewards", REW), **kw)


def pl(**kw):
    return G.policy_loss(kw.pop("logprobs", LP), kw.pop("advantages", ADV), **kw)


def pref(**kw):
    kw = {"ref_logprobs": REF, **PAIRS, **kw}
    return G.preference_loss(kw.pop("logprobs", LP), **{k: x for k, x in kw.items() if x is not None})


def gro(**kw):
    """gro_loss on the batch; advantages=ADV unless given (pass advantages=None to leave them out)."""
    hidden, weight, targets = kw.pop("hidden", HID), kw.pop("weight", W), kw.pop("targets", Y)
    kw = {"advantages": ADV, **kw}
    return G.gro_loss(hidden, weight, targets, **kw)


def empty_gro(preset, **kw):
    return G.gro_loss(HID[:0], W, Y[:0], preset=preset, **kw)


class TinyLM(torch.nn.Module):
    """The Hugging Face-style interface GROModelLoss needs: get_decoder() and get_output_embeddings()."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(V, H)
        self.head = torch.nn.Linear(H, V, bias=False)

    def get_decoder(self):
        return lambda input_ids, **_: types.SimpleNamespace(last_hidden_state=self.embed(input_ids))

    def get_output_embeddings(self):
        return self.head


IDS = torch.randint(0, V, (B, T + 1), generator=_g)


def model_loss(module, **kw):
    return module(IDS, targets=IDS[:, 1:], first_position=0, **{"advantages": ADV, **kw})


def head_loss(module, **kw):
    return module(HID, W, Y, **{"advantages": ADV, **kw})


def raises(exc, pattern):
    return (exc, pattern)


def _cases(function, rows):
    return [Case(function, given, call, expect, *env) for given, call, expect, *env in rows]


TEMP = r"temperature must be finite and > 0, got "
TRITON_CPU = r"backend='triton' needs CUDA tensors or TRITON_INTERPRET=1.*hidden is on cpu"
META = r"is on the meta device"
CHUNK_ENV = r"GRO_CHUNK_SIZE must be a positive int \(rows per chunk\) or unset, got "

CASES = []

CASES += _cases("linear_logprobs", [
    ("hidden=a list", lambda: lp(hidden=H2.tolist()), raises(TypeError, r"hidden must be a torch.Tensor, got list")),
    ("hidden int32", lambda: lp(hidden=H2.int()), raises(TypeError, r"hidden must have a floating dtype.*int32")),
    ("hidden 1-D", lambda: lp(hidden=H2[0]), raises(ValueError, r"hidden must be \[N, H\] or \[B, T, H\].*\(8,\)")),
    ("weight [V, H + 1]", lambda: lp(weight=torch.randn(V, H + 1)),
     raises(ValueError, r"weight must be \[V, H\] with H = hidden.shape\[-1\] = 8")),
    ("weight float64, hidden float32", lambda: lp(weight=W.double()),
     raises(TypeError, r"weight must have the dtype of hidden \(torch.float32\)")),
    ("weight on meta, hidden on cpu", lambda: lp(weight=meta(W)),
     raises(ValueError, r"weight must be on the same device as hidden \(cpu\).*meta")),
    ("every tensor on meta", lambda: lp(hidden=meta(H2), weight=meta(W), targets=meta(Y2)),
     raises(ValueError, r"hidden " + META)),
    ("bias [V - 1]", lambda: lp(bias=torch.randn(V - 1)), raises(ValueError, r"bias must be \[11\] of dtype")),
    ("targets float", lambda: lp(targets=Y2.float()), raises(TypeError, r"targets must be an integer tensor")),
    ("targets [N - 1]", lambda: lp(targets=Y2[:-1]), raises(ValueError, r"targets must have shape \(12,\)")),
    ("a target id == V", lambda: lp(targets=Y_HIGH.reshape(-1)),
     raises(ValueError, r"targets must be in \[0, 11\) or ignore_index=-100; row 4 has 11")),
    ("a target id -3", lambda: lp(targets=Y_LOW), raises(ValueError, r"targets must be in \[0, 11\).*row 0 has -3")),
    ("ignore_index='x'", lambda: lp(ignore_index="x"), raises(TypeError, r"ignore_index must be an int, got str")),
    ("temperature=0.0", lambda: lp(temperature=0.0), raises(ValueError, TEMP + "0.0")),
    ("temperature=-1.0", lambda: lp(temperature=-1.0), raises(ValueError, TEMP + "-1.0")),
    ("temperature=nan", lambda: lp(temperature=NAN), raises(ValueError, TEMP + "nan")),
    ("temperature=inf", lambda: lp(temperature=float("inf")), raises(ValueError, TEMP + "inf")),
    ("temperature=True", lambda: lp(temperature=True), raises(TypeError, r"temperature must be a number, got bool")),
    ("chunk_size=0", lambda: lp(chunk_size=0), raises(ValueError, r"chunk_size must be a positive int or None, got 0")),
    ("chunk_size=2.5", lambda: lp(chunk_size=2.5), raises(ValueError, r"chunk_size must be a positive int.*2.5")),
    ("backend='cuda-magic'", lambda: lp(backend="cuda-magic"),
     raises(ValueError, r"backend must be one of .*'cuda-magic'")),
    ("backend='triton', CPU tensors, no TRITON_INTERPRET", lambda: lp(backend="triton"),
     raises(ValueError, TRITON_CPU)),
    ("GRO_BACKEND=triton, CPU tensors", lambda: lp(),
     raises(ValueError, r"GRO_BACKEND=triton \(with backend='auto'\) needs CUDA tensors"), {"GRO_BACKEND": "triton"}),
    ("GRO_BACKEND=fastest", lambda: lp(), raises(ValueError, r"GRO_BACKEND must be one of .*'fastest'"),
     {"GRO_BACKEND": "fastest"}),
    ("GRO_CHUNK_SIZE=abc", lambda: lp(), raises(ValueError, CHUNK_ENV + "'abc'"), {"GRO_CHUNK_SIZE": "abc"}),
    ("GRO_CHUNK_SIZE=0", lambda: lp(), raises(ValueError, CHUNK_ENV + "'0'"), {"GRO_CHUNK_SIZE": "0"}),
    ("GRO_CHUNK_SIZE=-5", lambda: lp(), raises(ValueError, CHUNK_ENV + "'-5'"), {"GRO_CHUNK_SIZE": "-5"}),
    ("vocab_start=0 without process_group=", lambda: lp(vocab_start=0),
     raises(ValueError, r"vocab_start= is only meaningful with process_group=")),
    ("[B, T, H] batch with ignore_index rows", lambda: lp(hidden=HID, targets=Y.masked_fill(Y > 8, -100)), OK),
    ("GRO_CHUNK_SIZE=5 (not dividing N)", lambda: lp(), OK, {"GRO_CHUNK_SIZE": "5"}),
    ("backend='naive', return_entropy=True", lambda: lp(backend="naive", return_entropy=True), OK),
    ("final_logit_softcapping=0.0", lambda: lp(final_logit_softcapping=0.0),
     raises(ValueError, r"final_logit_softcapping must be finite and > 0, got 0.0")),
    ("logit_scale=-1.0", lambda: lp(logit_scale=-1.0), raises(ValueError, r"logit_scale must be finite and > 0")),
    ("final_logit_softcapping=30.0, backend='triton'", lambda: lp(final_logit_softcapping=30.0, backend="triton"),
     raises(ValueError, r"final_logit_softcapping is not supported by backend='triton'")),
    ("final_logit_softcapping=30.0, logit_scale=0.5, temperature=0.7",
     lambda: lp(final_logit_softcapping=30.0, logit_scale=0.5, temperature=0.7), OK),
])

CU = torch.tensor([0, 5, 5, 6, 12])  # a packed batch of B = 4 sequences over H2's N = 12 rows (one empty)

CASES += _cases("linear_logprobs", [
    ("cu_seqlens float", lambda: lp(cu_seqlens=CU.float()),
     raises(TypeError, r"cu_seqlens must be an int32 or int64 tensor")),
    ("cu_seqlens [1, B + 1]", lambda: lp(cu_seqlens=CU[None]), raises(ValueError, r"cu_seqlens must be a 1-D tensor")),
    ("cu_seqlens on meta, hidden on cpu", lambda: lp(cu_seqlens=meta(CU)),
     raises(ValueError, r"cu_seqlens must be on hidden's device \(cpu\)")),
    ("cu_seqlens[-1] != N", lambda: lp(cu_seqlens=CU.clamp(max=11)),
     raises(ValueError, r"cu_seqlens\[-1\] must equal N_total = 12.*got 11")),
    ("cu_seqlens with hidden [B, T, H]", lambda: lp(hidden=HID, targets=Y, cu_seqlens=CU),
     raises(ValueError, r"hidden must be \[N_total, H\] \(flat tokens\) when cu_seqlens is given")),
])

CASES += _cases("linear_logprobs_no_grad", [
    ("temperature=0.0", lambda: G.linear_logprobs_no_grad(H2, W, Y2, temperature=0.0), raises(ValueError, TEMP)),
    ("a target id == V", lambda: G.linear_logprobs_no_grad(HID, W, Y_HIGH), raises(ValueError, r"row 4 has 11")),
    ("misspelt option tempreature=", lambda: G.linear_logprobs_no_grad(H2, W, Y2, tempreature=1.0),
     raises(TypeError, r"unexpected keyword argument 'tempreature'")),
    ("every tensor on meta", lambda: G.linear_logprobs_no_grad(meta(H2), meta(W), meta(Y2)),
     raises(ValueError, r"hidden " + META)),
    ("GRO_CHUNK_SIZE=abc", lambda: G.linear_logprobs_no_grad(H2, W, Y2), raises(ValueError, CHUNK_ENV),
     {"GRO_CHUNK_SIZE": "abc"}),
    ("valid call", lambda: G.linear_logprobs_no_grad(H2, W, Y2), OK),
])

CASES += _cases("exact_kl", [
    ("ref_hidden [N + 1, H]", lambda: kl(ref_hidden=torch.randn(13, H)),
     raises(ValueError, r"ref_hidden must have the leading shape of hidden \(12,\)")),
    ("ref_weight [V + 1, H]", lambda: kl(ref_weight=torch.randn(V + 1, H)),
     raises(ValueError, r"ref_weight must have the vocabulary size of weight \(V = 11\)")),
    ("ref_hidden / ref_weight float64", lambda: kl(ref_hidden=REF_H2.double(), ref_weight=W.double()),
     raises(TypeError, r"ref_hidden must have the dtype of hidden")),
    ("ref_hidden on meta", lambda: kl(ref_hidden=meta(REF_H2)),
     raises(ValueError, r"ref_hidden must be on the same device as hidden")),
    ("every tensor on meta", lambda: kl(hidden=meta(H2), weight=meta(W), ref_hidden=meta(REF_H2), ref_weight=meta(W)),
     raises(ValueError, r"hidden " + META)),
    ("mask float", lambda: kl(mask=torch.ones(12)), raises(ValueError, r"mask must be a bool tensor of shape \(12,\)")),
    ("mask [N - 1]", lambda: kl(mask=torch.ones(11, dtype=torch.bool)), raises(ValueError, r"mask must be a bool")),
    ("bias [V - 1]", lambda: kl(bias=torch.zeros(V - 1)), raises(ValueError, r"bias must be \[11\]")),
    ("ref_bias float64", lambda: kl(ref_bias=torch.zeros(V).double()), raises(ValueError, r"ref_bias must be \[11\]")),
    ("temperature=0.0", lambda: kl(temperature=0.0), raises(ValueError, TEMP)),
    ("chunk_size=0", lambda: kl(chunk_size=0), raises(ValueError, r"chunk_size must be a positive int")),
    ("GRO_CHUNK_SIZE=abc", lambda: kl(), raises(ValueError, CHUNK_ENV), {"GRO_CHUNK_SIZE": "abc"}),
    ("valid call with a mask", lambda: kl(mask=torch.rand(12, generator=_g) > 0.5), OK),
])

CASES += _cases("selected_backend", [
    ("device='gpu0'", lambda: G.selected_backend("gpu0"),
     raises(ValueError, r"device must be a torch.device or a device name .*'gpu0'")),
    ("device=0", lambda: G.selected_backend(0), raises(TypeError, r"device must be a torch.device or a device name")),
    ("backend='fast'", lambda: G.selected_backend("cpu", "fast"), raises(ValueError, r"backend must be one of")),
    ("hidden_size=-1", lambda: G.selected_backend("cpu", hidden_size=-1),
     raises(ValueError, r"hidden_size must be a positive int, got -1")),
    ("hidden_size='big'", lambda: G.selected_backend("cpu", hidden_size="big"),
     raises(TypeError, r"hidden_size must be an int")),
    ("GRO_BACKEND=fastest", lambda: G.selected_backend("cpu"), raises(ValueError, r"GRO_BACKEND must be one of"),
     {"GRO_BACKEND": "fastest"}),
    ("device='cpu'", lambda: G.selected_backend("cpu"), OK),
    ("torch.device('cuda'), hidden_size=4096 (no GPU needed)",
     lambda: G.selected_backend(torch.device("cuda"), hidden_size=4096), OK),
])

CASES += _cases("group_advantages", [
    ("rewards=a list", lambda: adv(rewards=[1.0, 2.0], group_size=2),
     raises(TypeError, r"rewards must be a torch.Tensor")),
    ("rewards [B, 1]", lambda: adv(rewards=REW[:, None], group_size=2),
     raises(ValueError, r"rewards must be a 1-D floating tensor \[B\]")),
    ("rewards int64", lambda: adv(rewards=REW.long(), group_size=2),
     raises(ValueError, r"rewards must be a 1-D float")),
    ("rewards on meta", lambda: adv(rewards=meta(REW), group_size=2), raises(ValueError, r"rewards " + META)),
    ("mode='ppo'", lambda: adv(group_size=2, mode="ppo"), raises(ValueError, r"mode must be one of .*'ppo'")),
    ("eps=0", lambda: adv(group_size=2, eps=0), raises(ValueError, r"eps must be finite and > 0, got 0")),
    ("eps=nan", lambda: adv(group_size=2, eps=NAN), raises(ValueError, r"eps must be finite and > 0, got nan")),
    ("a NaN reward", lambda: adv(rewards=torch.tensor([0.0, 1.0, NAN, 1.0]), group_size=2),
     raises(ValueError, r"rewards must be finite; row 2 has nan")),
    ("group_size='4'", lambda: adv(group_size="4"),
     raises(TypeError, r"group_size must be an int .* or a list of int sizes, got str '4'")),
    ("group_size=2.0", lambda: adv(group_size=2.0), raises(TypeError, r"group_size must be an int .*got float 2.0")),
    ("group_size=[2.5, 1.5]", lambda: adv(group_size=[2.5, 1.5]), raises(TypeError, r"group_size must be an int")),
    ("group_size=True", lambda: adv(group_size=True), raises(TypeError, r"group_size must be an int .*got bool")),
    ("group_size=3 (does not divide 4 rows)", lambda: adv(group_size=3),
     raises(ValueError, r"group_size=3 must be > 0 and divide the batch of 4 rows")),
    ("group_size=0", lambda: adv(group_size=0), raises(ValueError, r"group_size=0 must be > 0")),
    ("group_size=[2, 1] (sums to 3)", lambda: adv(group_size=[2, 1]),
     raises(ValueError, r"group_size as sizes must be positive and sum to the batch of 4 rows, got \[2, 1\]")),
    ("group_ids= and group_size=", lambda: adv(group_size=2, group_ids=torch.tensor([0, 0, 1, 1])),
     raises(ValueError, r"pass either group_ids or group_size, not both")),
    ("group_ids float", lambda: adv(group_ids=torch.tensor([0.0, 0.0, 1.0, 1.0])),
     raises(TypeError, r"group_ids must be an integer tensor")),
    ("group_ids [B - 1]", lambda: adv(group_ids=torch.tensor([0, 0, 1])),
     raises(ValueError, r"group_ids must give a group to every row: shape \(4,\)")),
    ("mode='grpo' without groups", lambda: adv(), raises(ValueError, r"mode='grpo' needs group_ids=")),
    ("mode='remax' without baseline=", lambda: adv(mode="remax"), raises(ValueError, r"mode='remax' needs baseline=")),
    ("baseline [B - 1]", lambda: adv(mode="remax", baseline=REW[:3]),
     raises(ValueError, r"baseline must have one entry per row: shape \(4,\)")),
    ("baseline= with mode='grpo'", lambda: adv(group_size=2, baseline=REW),
     raises(ValueError, r"baseline= is used only by mode='remax'; mode='grpo' would ignore it")),
    ("mask= with mode='grpo'", lambda: adv(group_size=2, mask=torch.ones(B, T)),
     raises(ValueError, r"mask= is used only by mode='reinforce_pp'")),
    ("kl_coef=0.1 with mode='rloo'", lambda: adv(group_size=2, mode="rloo", kl_coef=0.1),
     raises(ValueError, r"kl_coef= is used only by mode='reinforce_pp'")),
    ("mode='reinforce_pp' without mask=", lambda: adv(mode="reinforce_pp"),
     raises(ValueError, r"mode='reinforce_pp' whitens over tokens and needs mask=")),
    ("reinforce_pp mask [B + 1, T]", lambda: adv(mode="reinforce_pp", mask=torch.ones(B + 1, T)),
     raises(ValueError, r"mask must be \[B, T\] with B = 4 rows")),
    ("reinforce_pp token_kl [B, T + 1]",
     lambda: adv(mode="reinforce_pp", mask=torch.ones(B, T), token_kl=torch.zeros(B, T + 1), kl_coef=0.1),
     raises(ValueError, r"token_kl must have shape \(4, 3\)")),
    ("reinforce_pp kl_coef=-1", lambda: adv(mode="reinforce_pp", mask=torch.ones(B, T), kl_coef=-1.0),
     raises(ValueError, r"kl_coef must be finite and >= 0, got -1.0")),
    ("scale_rewards='batchy'", lambda: adv(group_size=2, scale_rewards="batchy"),
     raises(ValueError, r"scale_rewards must be one of")),
    ("GRO_BACKEND=triton, CPU rewards", lambda: adv(group_size=2),
     raises(ValueError, r"GRO_BACKEND=triton needs CUDA tensors or TRITON_INTERPRET=1.*rewards is on cpu"),
     {"GRO_BACKEND": "triton"}),
    ("rewards ~1e19 (fp32 squares overflow)", lambda: adv(rewards=REW * 1e19 + 1e19, group_size=2), OK),
    ("rewards ~1e19, torch path (GRO_BACKEND=naive)", lambda: adv(rewards=REW * 1e19 + 1e19, group_size=4), OK,
     {"GRO_BACKEND": "naive"}),
    ("reinforce_pp, empty batch", lambda: adv(rewards=REW[:0], mode="reinforce_pp", mask=torch.ones(0, T)), OK),
])

CASES += _cases("kl_penalty", [
    ("logprobs=a list", lambda: G.kl_penalty(LP.tolist(), REF), raises(TypeError, r"logprobs must be a torch.Tensor")),
    ("logprobs int64", lambda: G.kl_penalty(LP.long(), REF), raises(TypeError, r"logprobs must be floating")),
    ("ref_logprobs [B, T - 1]", lambda: G.kl_penalty(LP, REF[:, :2]),
     raises(ValueError, r"ref_logprobs must have shape \(4, 3\)")),
    ("ref_logprobs=None", lambda: G.kl_penalty(LP, None), raises(ValueError, r"ref_logprobs must be a tensor")),
    ("estimator='exact'", lambda: G.kl_penalty(LP, REF, estimator="exact"),
     raises(ValueError, r"estimator must be one of .*gro_kernels.exact_kl")),
    ("logprobs on meta", lambda: G.kl_penalty(meta(LP), meta(REF)), raises(ValueError, r"logprobs " + META)),
    ("ref_logprobs on meta", lambda: G.kl_penalty(LP, meta(REF)), raises(ValueError, r"ref_logprobs " + META)),
    ("estimator='k2'", lambda: G.kl_penalty(LP, REF, estimator="k2"), OK),
])

CASES += _cases("policy_loss", [
    ("advantages [B + 1]", lambda: pl(advantages=torch.randn(B + 1)),
     raises(ValueError, r"advantages must have shape \(4,\) \(per sequence\) or \(4, 3\)")),
    ("advantages int64", lambda: pl(advantages=ADV.long()), raises(TypeError, r"advantages must be a floating tensor")),
    ("a NaN advantage", lambda: pl(advantages=torch.tensor([0.0, NAN, 1.0, 1.0])),
     raises(ValueError, r"advantages must be finite; row 1")),
    ("logprobs [B, T, 1]", lambda: pl(logprobs=LP[..., None]),
     raises(ValueError, r"logprobs must be a floating \[B, T\] tensor")),
    ("logprobs on meta", lambda: pl(logprobs=meta(LP), advantages=meta(ADV)), raises(ValueError, r"logprobs " + META)),
    ("mask [B, T + 1]", lambda: pl(mask=torch.ones(B, T + 1)), raises(ValueError, r"mask must have shape \(4, 3\)")),
    ("mask with 0.5", lambda: pl(mask=torch.full((B, T), 0.5)), raises(ValueError, r"mask must be bool or 0/1 valued")),
    ("old_logprobs [B]", lambda: pl(old_logprobs=LP[:, 0]), raises(ValueError, r"old_logprobs must have shape")),
    ("old_logprobs on meta", lambda: pl(old_logprobs=meta(LP)), raises(ValueError, r"old_logprobs " + META)),
    ("epsilon=-0.2", lambda: pl(epsilon=-0.2), raises(ValueError, r"epsilon must be finite and >= 0, got -0.2")),
    ("epsilon= and epsilon_low=", lambda: pl(epsilon=0.1, epsilon_low=0.3),
     raises(ValueError, r"epsilon=0.1 and epsilon_low=0.3 both set the lower clip bound")),
    ("epsilon_high=nan", lambda: pl(epsilon_high=NAN), raises(ValueError, r"epsilon_high must be finite and >= 0")),
    ("dual_clip=0.5", lambda: pl(dual_clip=0.5), raises(ValueError, r"dual_clip must be a finite number > 1.*0.5")),
    ("dual_clip=inf", lambda: pl(dual_clip=float("inf")), raises(ValueError, r"dual_clip must be a finite number > 1")),
    ("tis_cap=-1", lambda: pl(tis_cap=-1.0, rollout_logprobs=REF),
     raises(ValueError, r"tis_cap must be finite and > 0, got -1.0")),
    ("tis_cap=2 without rollout_logprobs=", lambda: pl(tis_cap=2.0),
     raises(ValueError, r"tis_cap \(truncated importance sampling\) needs rollout_logprobs=")),
    ("entropy_coef=nan", lambda: pl(entropy_coef=NAN, entropy=ENT),
     raises(ValueError, r"entropy_coef must be a finite number, got nan")),
    ("entropy_coef=0.01 without entropy=", lambda: pl(entropy_coef=0.01),
     raises(ValueError, r"entropy_coef=0.01 \(entropy bonus\) needs entropy=")),
    ("beta=0.1 without ref_logprobs=", lambda: pl(beta=0.1),
     raises(ValueError, r"beta > 0 \(KL penalty\) needs ref_logprobs=")),
    ("beta=-0.1", lambda: pl(beta=-0.1, ref_logprobs=REF), raises(ValueError, r"beta must be finite and >= 0")),
    ("kl_estimator='k9'", lambda: pl(kl_estimator="k9"), raises(ValueError, r"kl_estimator must be one of .*'k9'")),
    ("loss_type='mean'", lambda: pl(loss_type="mean"), raises(ValueError, r"loss_type must be one of .*'mean'")),
    ("importance_sampling_level='seq'", lambda: pl(importance_sampling_level="seq"),
     raises(ValueError, r"importance_sampling_level must be one of")),
    ("surrogate='ppo2'", lambda: pl(surrogate="ppo2"), raises(ValueError, r"surrogate must be one of .*'ppo2'")),
    ("global_token_count=0", lambda: pl(loss_type="dapo", global_token_count=0),
     raises(ValueError, r"global_token_count must be finite and > 0, got 0")),
    ("max_completion_length=0", lambda: pl(loss_type="dr_grpo", max_completion_length=0),
     raises(ValueError, r"max_completion_length must be finite and > 0, got 0")),
    ("num_sequences=-2", lambda: pl(num_sequences=-2), raises(ValueError, r"num_sequences must be finite and > 0")),
    ("num_sequences='4'", lambda: pl(num_sequences="4"), raises(TypeError, r"num_sequences must be a number, got str")),
    ("global_token_count=tensor of 2", lambda: pl(loss_type="dapo", global_token_count=torch.tensor([3.0, 4.0])),
     raises(ValueError, r"global_token_count must be a positive number or a one-element tensor")),
    ("GRO_BACKEND=triton, CPU tensors", lambda: pl(old_logprobs=LP),
     raises(ValueError, r"GRO_BACKEND=triton needs CUDA tensors or TRITON_INTERPRET=1.*logprobs is on cpu"),
     {"GRO_BACKEND": "triton"}),
    ("epsilon=0.2, epsilon_high=0.28 (TRL's asymmetric clip)", lambda: pl(epsilon=0.2, epsilon_high=0.28), OK),
    ("global_token_count=0-d tensor", lambda: pl(loss_type="dapo", global_token_count=torch.tensor(7.0)), OK),
    ("NaN old logprob in a live token (loss NaN, not dropped)", lambda: pl(old_logprobs=LP.masked_fill(LP < -0.5, NAN)),
     OK),
])

# issue #16 (policy side): the TRL / verl policy options
CASES += _cases("policy_loss", [
    ("loss_mode='bypass_mode' (verl)", lambda: pl(loss_mode="bypass_mode"),
     raises(ValueError, r"loss_mode='bypass_mode' \(verl\) is not implemented")),
    ("loss_agg_mode='mean'", lambda: pl(loss_agg_mode="mean"), raises(ValueError, r"loss_agg_mode must be one of")),
    ("loss_agg_mode= and loss_type=", lambda: pl(loss_agg_mode="token-mean", loss_type="dapo"),
     raises(ValueError, r"loss_agg_mode='token-mean' and loss_type='dapo' both set the aggregation")),
    ("kl_loss_type='k9'", lambda: pl(kl_loss_type="k9"), raises(ValueError, r"kl_loss_type must be one of")),
    ("delta=1.0", lambda: pl(delta=1.0), raises(ValueError, r"delta must be > 1")),
    ("loss_mode='dro' without dro_beta=", lambda: pl(loss_mode="dro"),
     raises(ValueError, r"surrogate='dro' needs dro_beta=")),
    ("top_entropy_quantile=0", lambda: pl(top_entropy_quantile=0.0, entropy=ENT),
     raises(ValueError, r"top_entropy_quantile must be in \(0, 1\]")),
    ("top_entropy_quantile=0.2 without entropy=", lambda: pl(top_entropy_quantile=0.2),
     raises(ValueError, r"top_entropy_quantile < 1 needs entropy=")),
    ("vllm_importance_sampling_mode without rollout_logprobs=",
     lambda: pl(old_logprobs=REF, vllm_importance_sampling_mode="token_mask"),
     raises(ValueError, r"needs old_logprobs= and rollout_logprobs=")),
    ("clip_ratio_c=2 with loss_mode='gpg'", lambda: pl(loss_mode="gpg", clip_ratio_c=2.0),
     raises(ValueError, r"clip_ratio_c applies to loss_mode 'vanilla'")),
    ("an unknown peer option", lambda: pl(sapo_temp=1.0),
     raises(TypeError, r"policy_loss got unexpected keyword argument\(s\) \['sapo_temp'\]")),
    ("loss_mode='geo_mean', kl_loss_type='k3+'", lambda: pl(loss_mode="geo_mean",
                                                                            kl_loss_type="k3+"), OK),
])

CASES += _cases("preference_loss", [
    ("loss_type='orpo'", lambda: pref(loss_type="orpo"), raises(ValueError, r"loss_type must be one of .*'orpo'")),
    ("beta=0", lambda: pref(beta=0), raises(ValueError, r"beta must be finite and > 0, got 0")),
    ("label_smoothing=0.7", lambda: pref(label_smoothing=0.7),
     raises(ValueError, r"label_smoothing must be in \[0, 0.5\), got 0.7")),
    ("label_smoothing=-0.1", lambda: pref(label_smoothing=-0.1),
     raises(ValueError, r"label_smoothing must be finite and >= 0")),
    ("misspelt option labl=", lambda: pref(labl=0.1),
     raises(TypeError, r"preference_loss got unexpected keyword argument\(s\) \['labl'\]")),
    ("loss='ipo' (the field name, not loss_type)", lambda: pref(loss="ipo"),
     raises(TypeError, r"unexpected keyword argument\(s\) \['loss'\]")),
    ("cpl_discount=0", lambda: pref(loss_type="cpl", cpl_discount=0.0),
     raises(ValueError, r"cpl_discount must be finite and > 0")),
    ("simpo_gamma=-1", lambda: pref(loss_type="simpo", simpo_gamma=-1.0),
     raises(ValueError, r"simpo_gamma must be finite and >= 0")),
    ("desirable_weight=nan", lambda: pref(loss_type="kto", desirable=DESIRABLE, desirable_weight=NAN),
     raises(ValueError, r"desirable_weight must be finite and >= 0")),
    ("kto without desirable=", lambda: pref(loss_type="kto"), raises(ValueError, r"loss_type='kto' needs desirable=")),
    ("dpo without pair_ids= / chosen=", lambda: pref(pair_ids=None, chosen=None),
     raises(ValueError, r"loss_type='dpo' needs pair_ids= and chosen=")),
    ("dpo without ref_logprobs=", lambda: pref(ref_logprobs=None), raises(ValueError, r"needs ref_logprobs=")),
    ("a pair id on three rows", lambda: pref(pair_ids=torch.tensor([0, 0, 0, 1])),
     raises(ValueError, r"pair_ids: pair 0 has 3 rows")),
    ("ref_logprobs on meta", lambda: pref(ref_logprobs=meta(REF)), raises(ValueError, r"ref_logprobs " + META)),
    ("kto_z0=nan", lambda: pref(loss_type="kto", desirable=DESIRABLE, kto_z0=NAN),
     raises(ValueError, r"kto_z0 must be a finite number, got nan")),
    ("dpo, label_smoothing=0.1", lambda: pref(label_smoothing=0.1), OK),
    ("simpo without ref_logprobs", lambda: pref(loss_type="simpo", ref_logprobs=None, beta=2.0), OK),
])

CASES += _cases("gro_loss", [
    # issue #12 item 1: the default (grad-in-forward) path runs the head checks too
    ("temperature=0.0 (grad-in-forward path)", lambda: gro(temperature=0.0), raises(ValueError, TEMP + "0.0")),
    ("temperature=-1 (grad-in-forward path)", lambda: gro(temperature=-1), raises(ValueError, TEMP + "-1")),
    ("temperature=0.0, grad_in_forward=False", lambda: gro(temperature=0.0, grad_in_forward=False),
     raises(ValueError, TEMP + "0.0")),
    ("chunk_size=0 (grad-in-forward path)", lambda: gro(chunk_size=0),
     raises(ValueError, r"chunk_size must be a positive int or None, got 0")),
    ("a target id == V (grad-in-forward path)", lambda: gro(targets=Y_HIGH),
     raises(ValueError, r"targets must be in \[0, 11\) or ignore_index=-100; row 4 has 11")),
    ("a target id == V, grad_in_forward=False", lambda: gro(targets=Y_HIGH, grad_in_forward=False),
     raises(ValueError, r"targets must be in \[0, 11\).*row 4 has 11")),
    ("ignore_index='x'", lambda: gro(ignore_index="x"), raises(TypeError, r"ignore_index must be an int")),
    ("GRO_CHUNK_SIZE=abc", lambda: gro(), raises(ValueError, CHUNK_ENV + "'abc'"), {"GRO_CHUNK_SIZE": "abc"}),
    ("backend='triton', CPU tensors, no TRITON_INTERPRET", lambda: gro(backend="triton"),
     raises(ValueError, TRITON_CPU)),
    ("GRO_BACKEND=triton with backend='chunked', CPU tensors", lambda: gro(backend="chunked"),
     raises(ValueError, r"GRO_BACKEND=triton needs CUDA tensors.*hidden is on cpu"), {"GRO_BACKEND": "triton"}),
    ("hidden [N, H] (not a [B, T] batch)", lambda: gro(hidden=H2, targets=Y2),
     raises(ValueError, r"gro_loss needs a \[B, T\] batch")),
    ("packed, cu_seqlens not from 0", lambda: gro(hidden=H2, targets=Y2, cu_seqlens=CU + 1),
     raises(ValueError, r"cu_seqlens must start at 0, got cu_seqlens\[0\] = 1")),
    ("packed, cu_seqlens decreasing", lambda: gro(hidden=H2, targets=Y2, cu_seqlens=torch.tensor([0, 6, 5, 6, 12])),
     raises(ValueError, r"cu_seqlens must be non-decreasing")),
    ("packed, old_logprobs [B, T]", lambda: gro(hidden=H2, targets=Y2, cu_seqlens=CU, old_logprobs=LP),
     raises(ValueError, r"old_logprobs must have shape \(12,\) \(one value per token\)")),
    ("packed, rewards [N_total]", lambda: gro(hidden=H2, targets=Y2, cu_seqlens=CU, advantages=None,
                                              rewards=torch.randn(12), group_size=2),
     raises(ValueError, r"rewards must have one entry per row: shape \(4,\)")),
    ("every tensor on meta", lambda: gro(hidden=meta(HID), weight=meta(W), targets=meta(Y), advantages=meta(ADV)),
     raises(ValueError, r"hidden " + META)),
    # item 2: two options that set the same thing
    ("advantages= and rewards=", lambda: gro(rewards=REW, group_size=2),
     raises(ValueError, r"advantages= and rewards= both given")),
    ("beta= and kl_coef=", lambda: gro(beta=0.1, kl_coef=0.2, ref_logprobs=REF),
     raises(ValueError, r"beta=0.1 and kl_coef=0.2 both set kl_coef")),
    ("epsilon= and epsilon_low=", lambda: gro(epsilon=0.1, epsilon_low=0.3),
     raises(ValueError, r"epsilon=0.1 and epsilon_low=0.3 both set epsilon_low")),
    ("ref_logprobs= and ref_hidden=", lambda: gro(beta=0.1, ref_logprobs=REF, ref_hidden=HID),
     raises(ValueError, r"ref_logprobs= and ref_hidden= both give the reference logprobs")),
    ("ref_weight= without ref_hidden=", lambda: gro(beta=0.1, ref_logprobs=REF, ref_weight=W),
     raises(ValueError, r"ref_weight= describes a reference head and needs ref_hidden=")),
    ("preset= and config=", lambda: gro(preset="dapo", config=GROObjective()),
     raises(ValueError, r"pass preset= or config=, not both: got preset='dapo'")),
    ("loss_type= and aggregation=", lambda: gro(loss_type="dapo", aggregation="seq_mean_token_sum"),
     raises(ValueError, r"loss_type='dapo' and aggregation='seq_mean_token_sum' both set aggregation")),
    ("scale_rewards= and magnitude=", lambda: gro(advantages=None, rewards=REW, group_size=2, scale_rewards="none",
                                                  magnitude="std"),
     raises(ValueError, r"scale_rewards='none' and magnitude='std' both set magnitude")),
    ("dpo: beta= and preference_beta=", lambda: gro(preset="dpo", advantages=None, ref_logprobs=REF, beta=0.1,
                                                    preference_beta=0.3, **PAIRS),
     raises(ValueError, r"beta=0.1 and preference_beta=0.3 both set preference_beta")),
    ("group_ids= and group_size=", lambda: gro(advantages=None, rewards=REW, group_size=2,
                                               group_ids=torch.tensor([0, 0, 1, 1])),
     raises(ValueError, r"pass either group_ids or group_size, not both")),
    ("online= marking an offline row, preset 'grpo'", lambda: gro(online=torch.tensor([True, False, True, True])),
     raises(ValueError, r"online= marks row 1 as offline, but config 'grpo' has only online rows")),
    ("mixed config with beta=", lambda: gro(config=GROObjective(rows="mixed"), beta=0.1),
     raises(ValueError, r"beta is ambiguous for a mixed online/offline config")),
    ("epsilon=0.2, epsilon_high=0.28 (TRL's asymmetric clip)", lambda: gro(epsilon=0.2, epsilon_high=0.28), OK),
    ("online= agreeing with an online preset", lambda: gro(online=torch.ones(B, dtype=torch.bool)), OK),
    ("kl_estimator='exact' with ref_hidden= and ref_logprobs=",
     lambda: gro(beta=0.1, kl_estimator="exact", ref_hidden=HID, ref_logprobs=REF), OK),
    # item 3: the option checks policy_loss / preference_loss share
    ("dual_clip=0.5", lambda: gro(dual_clip=0.5), raises(ValueError, r"dual_clip must be a finite number > 1")),
    ("tis_cap=-1", lambda: gro(tis_cap=-1.0, rollout_logprobs=REF),
     raises(ValueError, r"tis_cap must be finite and > 0")),
    ("entropy_coef=nan", lambda: gro(entropy_coef=NAN), raises(ValueError, r"entropy_coef must be a finite number")),
    ("global_token_count=0", lambda: gro(preset="dapo", global_token_count=0),
     raises(ValueError, r"global_token_count must be finite and > 0, got 0")),
    ("max_completion_length=0", lambda: gro(preset="dr_grpo", max_completion_length=0),
     raises(ValueError, r"max_completion_length must be finite and > 0, got 0")),
    ("num_sequences=-2", lambda: gro(num_sequences=-2), raises(ValueError, r"num_sequences must be finite and > 0")),
    ("dpo label_smoothing=0.7", lambda: gro(preset="dpo", advantages=None, ref_logprobs=REF, label_smoothing=0.7,
                                            **PAIRS),
     raises(ValueError, r"label_smoothing must be in \[0, 0.5\), got 0.7")),
    ("kl_estimator='k9'", lambda: gro(kl_estimator="k9"), raises(ValueError, r"kl_estimator must be one of")),
    ("epsilon_high=-1", lambda: gro(epsilon_high=-1.0), raises(ValueError, r"epsilon_high must be finite and >= 0")),
    ("eps=0", lambda: gro(advantages=None, rewards=REW, group_size=2, eps=0),
     raises(ValueError, r"eps must be finite and > 0")),
    ("tis_cap=2 without rollout_logprobs=", lambda: gro(tis_cap=2.0), raises(ValueError, r"needs rollout_logprobs=")),
    # item 5 and the rest
    ("group_size='4'", lambda: gro(advantages=None, rewards=REW, group_size="4"),
     raises(TypeError, r"group_size must be an int .*got str '4'")),
    ("grad_in_forward='yes'", lambda: gro(grad_in_forward="yes"),
     raises(TypeError, r"grad_in_forward must be True, False or None, got str")),
    ("return_entropy=None", lambda: gro(return_entropy=None),
     raises(TypeError, r"return_entropy must be True or False")),
    ("online_weight=nan", lambda: gro(online_weight=NAN), raises(ValueError, r"online_weight must be finite and >= 0")),
    ("offline_weight=-1", lambda: gro(preset="dpo", advantages=None, ref_logprobs=REF, offline_weight=-1.0, **PAIRS),
     raises(ValueError, r"offline_weight must be finite and >= 0")),
    ("misspelt option epsilon_hi=", lambda: gro(epsilon_hi=0.3),
     raises(TypeError, r"gro_loss got unexpected keyword argument\(s\) \['epsilon_hi'\]")),
    ("preset='grpoo'", lambda: gro(preset="grpoo"), raises(ValueError, r"preset must be one of .*'grpoo'")),
    ("config=a dict", lambda: gro(config={"rows": "online"}), raises(TypeError, r"config must be a GROObjective")),
    ("no advantages= or rewards=", lambda: gro(advantages=None), raises(ValueError, r"needs advantages= or rewards=")),
    ("advantages [B + 1]", lambda: gro(advantages=torch.randn(B + 1)),
     raises(ValueError, r"advantages must have shape")),
    ("mask [B, T + 1]", lambda: gro(mask=torch.ones(B, T + 1)), raises(ValueError, r"mask must have shape \(4, 3\)")),
    ("kto without desirable=", lambda: gro(preset="kto", advantages=None, ref_logprobs=REF),
     raises(ValueError, r"needs desirable=")),
    ("kto_z0=[1.0, 2.0]", lambda: gro(preset="kto", advantages=None, ref_logprobs=REF, desirable=DESIRABLE,
                                      kto_z0=torch.tensor([1.0, 2.0])),
     raises(ValueError, r"kto_z0 must be a number or a one-element floating tensor")),
    ("reinforce_pp, empty batch", lambda: empty_gro("reinforce_pp", rewards=REW[:0]), OK),
    ("ppo, empty batch, per-token advantages and old logprobs",
     lambda: empty_gro("ppo", advantages=LP[:0], old_logprobs=LP[:0]), OK),
    ("grpo, empty batch", lambda: empty_gro("grpo", rewards=REW[:0], group_size=[]), OK),
    ("defaults (grpo, grad-in-forward)", lambda: gro(), OK),
    ("grad_in_forward=True on gspo (runs the plain path: same result)", lambda: gro(preset="gspo",
                                                                                   grad_in_forward=True), OK),
])

CASES += _cases("GROLoss", [
    ("GROLoss('grpoo')", lambda: G.GROLoss("grpoo"), raises(ValueError, r"preset must be one of .*'grpoo'")),
    ("GROLoss('dapo', config=...)", lambda: G.GROLoss("dapo", config=GROObjective()),
     raises(ValueError, r"pass preset= or config=, not both")),
    ("GROLoss(config=GROObjective(dual_clip=0.5))", lambda: G.GROLoss(config=GROObjective(dual_clip=0.5)),
     raises(ValueError, r"dual_clip must be a finite number > 1")),
    ("GROLoss(temperature=0)", lambda: G.GROLoss(temperature=0), raises(ValueError, TEMP + "0")),
    ("GROLoss(backend='fast')", lambda: G.GROLoss(backend="fast"), raises(ValueError, r"backend must be one of")),
    ("GROLoss(epsilon_hi=0.3)", lambda: G.GROLoss(epsilon_hi=0.3),
     raises(TypeError, r"unexpected keyword argument\(s\) \['epsilon_hi'\]")),
    ("GROLoss(beta=0.1, kl_coef=0.2)", lambda: G.GROLoss(beta=0.1, kl_coef=0.2),
     raises(ValueError, r"beta=0.1 and kl_coef=0.2 both set kl_coef")),
    ("GROLoss(grad_in_forward='yes')", lambda: G.GROLoss(grad_in_forward="yes"),
     raises(TypeError, r"grad_in_forward must be True, False or None")),
    ("beta at construction and in forward", lambda: head_loss(G.GROLoss(beta=0.04), beta=0.1, ref_logprobs=REF),
     raises(TypeError, r"GROLoss got \['beta'\] both at construction and in forward")),
    ("forward with a target id == V", lambda: G.GROLoss()(HID, W, Y_HIGH, advantages=ADV),
     raises(ValueError, r"row 4 has 11")),
    ("forward with advantages= and rewards=", lambda: head_loss(G.GROLoss(), rewards=REW, group_size=2),
     raises(ValueError, r"advantages= and rewards= both given")),
    ("GROLoss('dapo', epsilon_high=0.3)", lambda: head_loss(G.GROLoss("dapo", epsilon_high=0.3)), OK),
])

CASES += _cases("GROModelLoss", [
    ("model=torch.nn.Linear (no get_decoder)", lambda: G.GROModelLoss(torch.nn.Linear(H, V)),
     raises(TypeError, r"model must be a causal LM with get_decoder\(\) and get_output_embeddings\(\)")),
    ("preset='grpoo'", lambda: G.GROModelLoss(TinyLM(), "grpoo"), raises(ValueError, r"preset must be one of")),
    ("preset= and config=", lambda: G.GROModelLoss(TinyLM(), "grpo", config=GROObjective()),
     raises(ValueError, r"pass preset= or config=, not both")),
    ("grad_in_forward='no'", lambda: G.GROModelLoss(TinyLM(), grad_in_forward="no"),
     raises(TypeError, r"grad_in_forward must be True, False or None")),
    ("temperature=-1", lambda: G.GROModelLoss(TinyLM(), temperature=-1.0), raises(ValueError, TEMP)),
    ("epsilon at construction and in forward", lambda: model_loss(G.GROModelLoss(TinyLM(), epsilon=0.2), epsilon=0.1),
     raises(TypeError, r"GROModelLoss got \['epsilon'\] both at construction and in forward")),
    ("forward with advantages [B + 1]", lambda: model_loss(G.GROModelLoss(TinyLM()), advantages=torch.randn(B + 1)),
     raises(ValueError, r"advantages must have shape")),
    ("forward, preset 'dapo'", lambda: model_loss(G.GROModelLoss(TinyLM(), "dapo")), OK),
])

CASES += _cases("LinearLogprobs", [
    ("LinearLogprobs(temperature=0)", lambda: G.LinearLogprobs(temperature=0), raises(ValueError, TEMP + "0")),
    ("LinearLogprobs(chunk_size=0)", lambda: G.LinearLogprobs(chunk_size=0),
     raises(ValueError, r"chunk_size must be a positive int")),
    ("LinearLogprobs(backend='fast')", lambda: G.LinearLogprobs(backend="fast"),
     raises(ValueError, r"backend must be one of")),
    ("LinearLogprobs(ignore_index=1.5)", lambda: G.LinearLogprobs(ignore_index=1.5),
     raises(TypeError, r"ignore_index must be an int")),
    ("LinearLogprobs(return_entropy='yes')", lambda: G.LinearLogprobs(return_entropy="yes"),
     raises(TypeError, r"return_entropy must be True or False")),
    ("forward with a target id == V", lambda: G.LinearLogprobs()(HID, W, Y_HIGH), raises(ValueError, r"row 4 has 11")),
    ("forward with weight float64", lambda: G.LinearLogprobs()(H2, W.double(), Y2),
     raises(TypeError, r"weight must have the dtype of hidden")),
    ("forward, return_entropy=True", lambda: G.LinearLogprobs(return_entropy=True)(H2, W, Y2), OK),
])


def cfg_loss(**fields):
    """gro_loss with config=GROObjective(**fields): where an objective's values are checked."""
    return gro(config=GROObjective(**fields))


CASES += _cases("GROObjective", [
    ("GROObjective(unknown=1)", lambda: GROObjective(unknown=1), raises(TypeError, r"unexpected keyword argument")),
    ("rows='both'", lambda: cfg_loss(rows="both"), raises(ValueError, r"rows must be one of .*'both'")),
    ("anchor='median'", lambda: cfg_loss(anchor="median"),
     raises(ValueError, r"GROObjective anchor/magnitude \('median', 'std'\) is not supported")),
    ("surrogate='ppo2'", lambda: cfg_loss(surrogate="ppo2"), raises(ValueError, r"surrogate must be one of")),
    ("dual_clip=0.5", lambda: cfg_loss(dual_clip=0.5), raises(ValueError, r"dual_clip must be a finite number > 1")),
    ("tis_cap=0.0", lambda: cfg_loss(tis_cap=0.0), raises(ValueError, r"tis_cap must be finite and > 0, got 0.0")),
    ("epsilon_low=-0.1", lambda: cfg_loss(epsilon_low=-0.1),
     raises(ValueError, r"epsilon_low must be finite and >= 0")),
    ("entropy_coef='0.01'", lambda: cfg_loss(entropy_coef="0.01"),
     raises(TypeError, r"entropy_coef must be a number, got str")),
    ("label_smoothing=0.5", lambda: cfg_loss(label_smoothing=0.5),
     raises(ValueError, r"label_smoothing must be in \[0, 0.5\), got 0.5")),
    ("aggregation='sum'", lambda: cfg_loss(aggregation="sum"), raises(ValueError, r"aggregation must be one of")),
    ("kl_estimator='k5'", lambda: cfg_loss(kl_estimator="k5"), raises(ValueError, r"kl_estimator must be one of")),
    ("rows='offline', preference_beta=0", lambda: cfg_loss(rows="offline", preference_beta=0.0),
     raises(ValueError, r"preference_beta \(beta\) must be finite and > 0")),
    ("rows='offline', offline_phi='hinge'", lambda: cfg_loss(rows="offline", offline_phi="hinge"),
     raises(ValueError, r"offline score/anchor/phi .* is not supported")),
    ("rows='offline', cpl with cpl_discount=0", lambda: cfg_loss(rows="offline", offline_score="discounted",
                                                                 cpl_discount=0.0),
     raises(ValueError, r"cpl_discount must be finite and > 0")),
    ("rows='mixed' without online=", lambda: gro(config=GROObjective(rows="mixed"), **PAIRS),
     raises(ValueError, r"mixes online and offline rows and needs online=")),
    ("leave_one_out / identity with rewards", lambda: gro(config=GROObjective(anchor="leave_one_out",
                                                                                magnitude="identity"),
                                                          advantages=None, rewards=REW, group_size=2), OK),
])


# ---- running a case ----

@contextlib.contextmanager
def case_env(env):
    saved = {k: os.environ.get(k) for k in set(ENV_VARS) | set(env or {})}
    for k in ENV_VARS:
        os.environ.pop(k, None)
    os.environ.update(env or {})
    try:
        yield
    finally:
        for k, value in saved.items():
            if value is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = value


def outcome(case):
    """(exception or None) of running the case in its environment."""
    with case_env(case.env):
        try:
            case.call()
        except Exception as exc:  # noqa: BLE001 - the matrix records whatever comes out
            return exc
    return None


def _case_id(case):
    return f"{case.function}: {case.given}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_gets_a_clear_answer(case):
    exc = outcome(case)
    if case.expect == OK:
        assert exc is None, f"expected success, got {type(exc).__name__}: {exc}"
        return
    kind, pattern = case.expect
    assert exc is not None, f"expected {kind.__name__} matching {pattern!r}, the call succeeded"
    assert isinstance(exc, kind), f"expected {kind.__name__}, got {type(exc).__name__}: {exc}"
    assert kind in (ValueError, TypeError), "the promise: bad input is a ValueError or TypeError"
    import re

    assert re.search(pattern, str(exc)), f"message {str(exc)!r} does not match {pattern!r}"


PUBLIC = ("linear_logprobs", "linear_logprobs_no_grad", "exact_kl", "selected_backend", "group_advantages",
          "kl_penalty", "policy_loss", "preference_loss", "gro_loss", "GROLoss", "GROModelLoss", "LinearLogprobs",
          "GROObjective")


def test_matrix_covers_every_public_function():
    covered = {c.function for c in CASES}
    assert set(PUBLIC) <= set(G.__all__)
    assert covered == set(PUBLIC), f"not covered: {set(PUBLIC) - covered}"
    assert len({_case_id(c) for c in CASES}) == len(CASES), "case descriptions must be unique"
    assert len(CASES) >= 100


# ---- docs/bad_inputs.md ----

def _cell(text, limit=240):
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def render() -> str:
    """docs/bad_inputs.md: every case by function, with the message it actually gets."""
    counts = {f: sum(c.function == f for c in CASES) for f in PUBLIC}
    lines = ["# What bad input gets",
             "",
             "Generated from `tests/test_bad_input_matrix.py` (`python -m tests.test_bad_input_matrix > "
             "docs/bad_inputs.md`); `pytest tests/test_bad_input_matrix.py` checks that this page is current.",
             "",
             "The promise: a bad value, a wrong shape, dtype or device, or two options that contradict each "
             "other get a `ValueError` or `TypeError` that names the argument and says what was expected and "
             "what came, on every path (grad-in-forward or not, any backend), before any kernel runs. Nothing "
             "is silently clamped, ignored or overridden. (`TritonDeviceError` is a `ValueError`, and also a "
             "`RuntimeError` for callers that caught the launcher's error before.) Cases marked *ok* are "
             "inputs that look suspicious but are valid.",
             "",
             f"{len(CASES)} cases: " + ", ".join(f"`{f}` {n}" for f, n in counts.items()) + ".",
             ""]
    for function in PUBLIC:
        lines += [f"## {function}", "", "| input | answer |", "|---|---|"]
        for case in (c for c in CASES if c.function == function):
            env = ", ".join(f"{k}={x}" for k, x in (case.env or {}).items() if f"{k}={x}" not in case.given)
            given = _cell(case.given) + (f" (env {env})" if env else "")
            exc = outcome(case)
            answer = "*ok*" if exc is None else f"`{type(exc).__name__}`: {_cell(exc)}"
            lines.append(f"| {given} | {answer} |")
        lines.append("")
    return "\n".join(lines)


def test_docs_page_is_current():
    assert DOC.exists() and DOC.read_text() == render(), \
        "docs/bad_inputs.md is stale: python -m tests.test_bad_input_matrix > docs/bad_inputs.md"


if __name__ == "__main__":
    print(render(), end="")

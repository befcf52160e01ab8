"""The verl seam: verl 0.9.1's own `torch` fused-kernel backend vs `impl_backend=gro`, both installed by verl's
`apply_monkey_patch` (the call its FSDP engine makes) on the same tiny model built from a config.

The reference is verl's code, not ours: verl/models/transformers/dense_common.py forward_with_torch_backend and
verl/utils/experimental/torch_functional.py FusedLinearForPPOFunction (materialized fp32 softmax per 512-row
chunk). Inputs follow verl/workers/engine/fsdp/transformer_impl.py FSDPEngineWithLMHead.prepare_model_inputs:
padded rows [B, L] with an attention mask and no shift_labels, or (use_remove_padding) one packed row [1, nnz]
with position ids restarting per sequence and shift_labels = the packed ids rolled by one.
"""

import copy
import logging
import os
import subprocess
import sys

import pytest
import torch
import verl
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from verl.models.transformers import monkey_patch
from verl.models.transformers.dense_common import CausalLMOutputForPPO

import gro_kernels.integrations.verl as gro_verl

LENGTHS = (12, 7, 4)
V = 300  # not a multiple of any block size


def tiny_model(arch, dtype):
    common = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False, attn_implementation="sdpa"))
    else:  # tied head: the gradient of lm_head.weight is the embedding's
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True, attn_implementation="sdpa"))
    with torch.no_grad():  # logits of O(1-10): the softmax is neither flat nor one-hot
        model.lm_head.weight.mul_(8.0)
    return model.to(dtype)


def engine_inputs(layout, seed=1):
    """Model kwargs as verl's FSDP engine builds them, and the mask of positions whose outputs verl uses."""
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(1, V, (n,), generator=g) for n in LENGTHS]
    if layout == "rmpad":
        ids = torch.cat(seqs)[None]
        pos = torch.cat([torch.arange(n) for n in LENGTHS])[None]
        kwargs = dict(input_ids=ids, attention_mask=None, position_ids=pos,
                      shift_labels=torch.roll(ids, shifts=-1, dims=1))
        return kwargs, torch.ones_like(ids, dtype=torch.bool)
    L = max(LENGTHS)
    ids = torch.zeros(len(LENGTHS), L, dtype=torch.long)  # pad_token_id 0, right padding (to_padded_tensor)
    mask = torch.zeros(len(LENGTHS), L, dtype=torch.long)
    pos = torch.zeros(len(LENGTHS), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)], pos[i, :len(s)] = s, 1, torch.arange(len(s))
    return dict(input_ids=ids, attention_mask=mask, position_ids=pos), mask.bool()


@pytest.fixture(autouse=True)
def restore_forwards():
    """verl patches the model *class*; put every class forward back after each test."""
    saved = {cls: cls.forward for cls in (LlamaForCausalLM, Qwen2ForCausalLM)}
    yield
    for cls, fwd in saved.items():
        cls.forward = fwd


def run_backend(model, backend, layout, temperature, use_entropy=True):
    """One verl forward + backward; returns log-probs, entropy, the decoder's last hidden, every parameter grad."""
    model = copy.deepcopy(model)
    monkey_patch.apply_monkey_patch(model, use_remove_padding=(layout == "rmpad"), use_fused_kernels=True,
                                    fused_kernels_backend=backend)
    assert model._verl_fused_kernels_backend == backend
    kwargs, mask = engine_inputs(layout)
    captured = {}

    def keep_hidden(module, args, output):  # returns None: a forward hook's return value replaces the output
        captured["hidden"] = output[0].detach()

    handle = model.model.register_forward_hook(keep_hidden)
    out = model(**kwargs, temperature=temperature, return_dict=True)
    handle.remove()
    assert isinstance(out, CausalLMOutputForPPO)
    g = torch.Generator().manual_seed(7)
    g_lp = torch.randn(mask.shape, generator=g) * mask
    g_ent = torch.randn(mask.shape, generator=g) * mask
    loss = (out.log_probs.float() * g_lp).sum() + (out.entropy.float() * g_ent).sum() * use_entropy
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.log_probs.detach(), out.entropy.detach(), captured["hidden"], grads, kwargs, mask


def rel_norm_err(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)).item()


CASES = [("llama", "padded", 1.0, True), ("llama", "rmpad", 1.0, True), ("llama", "padded", 0.7, True),
         ("llama", "rmpad", 1.6, True), ("qwen2", "rmpad", 0.7, True), ("llama", "rmpad", 0.7, False)]


@pytest.mark.parametrize("arch,layout,temperature,use_entropy", CASES,
                         ids=[f"{a}-{lay}-T{t}-{'ent' if e else 'no_ent'}" for a, lay, t, e in CASES])
def test_fp32_gro_matches_verl_torch_backend(arch, layout, temperature, use_entropy):
    """fp32: log-probs, entropy and every parameter gradient within 1e-5 relative of verl's torch backend."""
    model = tiny_model(arch, torch.float32)
    lp_v, ent_v, h_v, grads_v, _, mask = run_backend(model, "torch", layout, temperature, use_entropy)
    lp_g, ent_g, h_g, grads_g, _, _ = run_backend(model, "gro", layout, temperature, use_entropy)
    assert torch.equal(h_v, h_g), "the decoder must see the same inputs under both backends"
    assert lp_g.shape == lp_v.shape == mask.shape and ent_g.shape == mask.shape  # length T, the labels' shape
    assert lp_g.dtype == torch.float32 and ent_g.dtype == torch.float32
    torch.testing.assert_close(lp_g[mask], lp_v[mask], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ent_g[mask], ent_v[mask], rtol=1e-5, atol=1e-6)
    assert grads_g.keys() == grads_v.keys() and "lm_head.weight" in grads_v or arch == "qwen2"
    assert len(grads_v) == len(list(model.parameters()))
    for name in grads_v:
        assert rel_norm_err(grads_g[name], grads_v[name]) <= 1e-5, name
        torch.testing.assert_close(grads_g[name], grads_v[name], rtol=1e-5, atol=1e-5 * grads_v[name].abs().max())


def test_temperature_reaches_the_head():
    """A wrong temperature would still match verl if both ignored it: check against the logits directly."""
    model = tiny_model("llama", torch.float32)
    lp, _, hidden, _, kwargs, _ = run_backend(model, "gro", "rmpad", 0.7)
    logits = (hidden.double() @ model.lm_head.weight.double().T) / 0.7
    ref = torch.log_softmax(logits, -1).gather(-1, kwargs["shift_labels"][..., None])[..., 0]
    torch.testing.assert_close(lp.double(), ref, rtol=1e-5, atol=1e-6)
    lp1 = run_backend(model, "gro", "rmpad", 1.0)[0]
    assert (lp1 - lp).abs().max() > 1e-2


@pytest.mark.parametrize("layout", ["padded", "rmpad"])
def test_bf16_gro_is_as_close_to_the_truth_as_verl(layout):
    """bf16 model. verl's torch backend computes the logits in bf16 (rounded to 8 bits before its fp32 softmax)
    and returns a bf16 entropy; gro keeps the logits of the same bf16 inputs in fp32. So the two differ by about
    |logit| * 2^-9, and the fair test is against the truth, as in docs/testing.md: log-probs and entropy against
    fp64 math on the same bf16 hidden states and head (gro: within 2e-5 relative; verl's own error is printed
    beside it), and each parameter gradient, against the fp32 model holding the same (bf16-valued) weights,
    within 2x verl's error plus 1e-3 relative (the decoder's bf16 backward, common to both, dominates that)."""
    T = 0.7
    model = tiny_model("llama", torch.bfloat16)
    lp_v, ent_v, h_v, grads_v, kwargs, mask = run_backend(model, "torch", layout, T)
    lp_g, ent_g, h_g, grads_g, _, _ = run_backend(model, "gro", layout, T)
    assert torch.equal(h_v, h_g)
    labels = kwargs.get("shift_labels", torch.roll(kwargs["input_ids"], -1, -1))
    logits = (h_g.double() @ model.lm_head.weight.double().T) / T
    lp64 = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    ent64 = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    for name, got, verl_got, ref in (("log_probs", lp_g, lp_v, lp64), ("entropy", ent_g, ent_v, ent64)):
        err_g = ((got.double() - ref).abs() / (1 + ref.abs()))[mask].max().item()
        err_v = ((verl_got.double() - ref).abs() / (1 + ref.abs()))[mask].max().item()
        print(f"bf16 {layout} {name}: gro {err_g:.2e}, verl torch {err_v:.2e} (max |x - fp64| / (1 + |fp64|))")
        assert err_g <= 2e-5, name
        assert err_g <= err_v, name
    truth = run_backend(model.float(), "torch", layout, T)[3]
    for name, ref in truth.items():
        err_g, err_v = rel_norm_err(grads_g[name], ref), rel_norm_err(grads_v[name], ref)
        assert err_g <= 2 * err_v + 1e-3, f"{name}: gro {err_g:.2e}, verl {err_v:.2e}"


def test_autocast_bf16_as_verls_fsdp_engine_runs_it():
    """verl's FSDPEngine.forward_step runs fp32 parameters under torch.autocast(bf16) (mixed_precision
    param_dtype). There verl's head GEMM runs in bf16 while gro's head keeps the fp32 hidden states and weight in
    fp32 math (no autocast rule is registered for its custom op), so gro must be at least as close as verl to
    the fp32 run without autocast: log-probs and every gradient within 2x verl's error (docs/testing.md's rule)."""
    model = tiny_model("llama", torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp_v, _, h_v, grads_v, _, mask = run_backend(model, "torch", "rmpad", 0.7)
        lp_g, _, h_g, grads_g, _, _ = run_backend(model, "gro", "rmpad", 0.7)
    assert torch.equal(h_v, h_g)
    lp_t, _, _, grads_t, _, _ = run_backend(model, "torch", "rmpad", 0.7)
    err_g, err_v = (lp_g - lp_t)[mask].abs().max().item(), (lp_v - lp_t)[mask].abs().max().item()
    assert err_g <= 2 * err_v, (err_g, err_v)
    for name, ref in grads_t.items():
        err_g, err_v = rel_norm_err(grads_g[name], ref), rel_norm_err(grads_v[name], ref)
        assert err_g <= 2 * err_v, f"{name}: gro {err_g:.2e}, verl {err_v:.2e}"


def test_labels_follow_verls_precedence():
    """shift_labels (the engine's globally rolled ids) over labels rolled by one over input_ids rolled by one;
    each checked against log_softmax of the logits, so a wrong choice cannot pass."""
    model = tiny_model("llama", torch.float32)
    monkey_patch.apply_monkey_patch(model, use_remove_padding=True, use_fused_kernels=True, fused_kernels_backend="gro")
    kwargs, _ = engine_inputs("rmpad")
    ids = kwargs["input_ids"]
    other = torch.randint(0, V, ids.shape, generator=torch.Generator().manual_seed(3))
    shift = torch.randint(0, V, ids.shape, generator=torch.Generator().manual_seed(4))
    base = {k: kwargs[k] for k in ("input_ids", "attention_mask", "position_ids")}
    cases = ((dict(shift_labels=shift, labels=other), shift), (dict(labels=other), torch.roll(other, -1, -1)),
             ({}, torch.roll(ids, -1, -1)))
    with torch.no_grad():  # the decoder's output does not depend on the labels
        hidden = model.model(**base)[0]
    logits = hidden.double() @ model.lm_head.weight.double().T
    for extra, expected_labels in cases:
        with torch.no_grad():
            lp = model(**base, **extra, temperature=1.0, return_dict=True).log_probs
        ref = torch.log_softmax(logits, -1).gather(-1, expected_labels[..., None])[..., 0]
        assert torch.allclose(lp.double(), ref, rtol=1e-5, atol=1e-6), sorted(extra)


def test_the_plugin_is_loaded_by_import_verl_itself():
    """In a fresh process, `import verl` alone (verl's entry-point loop) installs the wrapper and logs it; with
    VERL_USE_EXTERNAL_PLUGINS=none it does not, so the load really comes from the entry point."""
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO); import verl; "
            "import verl.models.transformers.monkey_patch as m; "
            "print('wrapped', hasattr(m.patch_forward_with_backends, 'gro_wraps'), "
            "'gro_kernels.integrations.verl' in sys.modules)")
    for policy, expected in (("auto", "wrapped True True"), ("gro", "wrapped True True"),
                             ("none", "wrapped False False")):
        env = dict(os.environ, VERL_USE_EXTERNAL_PLUGINS=policy)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.strip().splitlines()[-1] == expected, (policy, out.stdout)
        assert ("gro-kernels verl plug-in loaded" in out.stderr) == (policy != "none"), out.stderr[-3000:]


def test_other_backends_still_go_to_verl(capsys):
    """The wrapper changes nothing for verl's own names, nor for unknown ones (verl skips them)."""
    from verl.models.transformers.dense_common import forward_with_torch_backend
    assert monkey_patch.patch_forward_with_backends.gro_wraps.__module__ == "verl.models.transformers.monkey_patch"
    model = tiny_model("llama", torch.float32)
    monkey_patch.patch_forward_with_backends(model, use_fused_kernels=True, fused_kernels_backend="torch")
    assert LlamaForCausalLM.forward is forward_with_torch_backend
    before = LlamaForCausalLM.forward
    monkey_patch.patch_forward_with_backends(model, use_fused_kernels=True, fused_kernels_backend="nonsense")
    monkey_patch.patch_forward_with_backends(model, use_fused_kernels=False, fused_kernels_backend="gro")
    assert LlamaForCausalLM.forward is before
    assert capsys.readouterr().out.count("Skipping monkey patch") == 2


def test_patching_logs_and_reimport_does_not_wrap_twice(caplog):
    model = tiny_model("llama", torch.float32)
    with caplog.at_level(logging.INFO, logger="gro_kernels.integrations.verl"):
        monkey_patch.patch_forward_with_backends(model, use_fused_kernels=True, fused_kernels_backend="gro")
    assert LlamaForCausalLM.forward is gro_verl.forward_with_gro_backend
    assert "LlamaForCausalLM.forward now computes" in caplog.text
    original = monkey_patch.patch_forward_with_backends.gro_wraps
    gro_verl._install()
    assert monkey_patch.patch_forward_with_backends.gro_wraps is original


def test_what_gro_cannot_honour_raises_naming_it():
    model = tiny_model("llama", torch.float32)
    fake_vlm = copy.deepcopy(model)
    fake_vlm.config.model_type = "qwen2_vl"
    with pytest.raises(ValueError, match="impl_backend=gro: model_type 'qwen2_vl'"):
        monkey_patch.patch_forward_with_backends(fake_vlm, use_fused_kernels=True, fused_kernels_backend="gro")
    with pytest.raises(ValueError, match="impl_backend=gro: Linear has no model / lm_head"):
        gro_verl.install_gro_forward(torch.nn.Linear(2, 2))
    monkey_patch.patch_forward_with_backends(model, use_fused_kernels=True, fused_kernels_backend="gro")
    kwargs, _ = engine_inputs("padded")
    with pytest.raises(TypeError, match=r"temperature: .* of shape \(3,\)"):
        model(**kwargs, temperature=torch.full((3,), 0.7), return_dict=True)
    with pytest.raises(ValueError, match="return_dict"):
        model(**kwargs, temperature=1.0, return_dict=False)
    with pytest.raises(ValueError, match="temperature"):
        model(**kwargs, temperature=0.0, return_dict=True)


def test_verl_version_is_the_one_the_seam_was_read_from():
    assert verl.__version__.startswith(gro_verl.SEAM_READ_FROM + ".")


def test_a_changed_seam_is_reported_not_silently_skipped(monkeypatch, caplog):
    """verl hides plug-in errors at DEBUG: the plug-in itself warns when the seam is gone or verl is newer."""
    import types
    monkeypatch.setattr(gro_verl, "_verl_monkey_patch", types.SimpleNamespace())
    with caplog.at_level(logging.WARNING, logger="gro_kernels.integrations.verl"):
        with pytest.raises(ImportError, match="has no verl.models.transformers.monkey_patch.patch_forward_with"):
            gro_verl._install()
    assert "plug-in not loaded" in caplog.text
    monkeypatch.setattr(gro_verl, "_verl_monkey_patch", monkey_patch)
    monkeypatch.setattr(verl, "__version__", "0.10.0")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gro_kernels.integrations.verl"):
        gro_verl._install()
    assert "written against verl 0.9.x, found 0.10.0" in caplog.text

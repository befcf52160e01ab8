"""Between the trainer loop and gro_loss: which GRO config a run uses, what it needs (reference, old
logprobs), advantages over the whole rollout batch, and micro-batches whose loss terms are normalized by
the whole mini-batch, so that accumulating micro-batch gradients equals one step on the full batch.
"""

import dataclasses
from typing import List, Optional

import torch

import gro_kernels
from gro_kernels import GROObjective as ObjectiveConfig

from . import distributed, packing, policy

PAIR_LOSSES = ("dpo", "ipo", "simpo", "cpl")
REFERENCE_LOSSES = ("dpo", "ipo", "kto")
SEQUENCE_AGGREGATIONS = ("seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")
ROW_KEYS = ("advantages", "online", "pair_ids", "chosen", "desirable")


def preset_for(config) -> ObjectiveConfig:
    """The GRO objective of a run: the preset, beta and the clip range (epsilon, epsilon_high), loss_options
    applied, mixed rows for hybrid. The one place where GROConfig's loss settings become the loss."""
    base = gro_kernels.PRESETS[config.preset]
    fields = {f.name for f in dataclasses.fields(ObjectiveConfig)} - {"name", "rows"}
    for key in config.loss_options:
        if key not in fields and key != "scale_rewards":
            raise ValueError(f"loss_options has unknown key '{key}'; allowed: {sorted(fields | {'scale_rewards'})}")
    options = {**_clip_range(base, config), **{k: v for k, v in config.loss_options.items() if k in fields}}
    if config.mode == "hybrid":
        off = gro_kernels.PRESETS[config.offline_preset]
        base = dataclasses.replace(base, name=f"{base.name}+{off.name}", rows="mixed",
                                   offline_score=off.offline_score, offline_anchor=off.offline_anchor,
                                   offline_phi=off.offline_phi, preference_beta=off.preference_beta,
                                   kl_coef=config.beta)
    elif base.rows == "online":
        base = dataclasses.replace(base, kl_coef=config.beta)
    else:
        base = dataclasses.replace(base, preference_beta=config.beta if config.beta > 0 else base.preference_beta)
    return dataclasses.replace(base, **options)


def _clip_range(online: ObjectiveConfig, config) -> dict:
    """epsilon / epsilon_high with gro_loss's (TRL's) meaning: epsilon is the lower clip, and the upper one too
    for symmetric presets (dapo, gspo and cispo keep their own upper clip); epsilon_high is the upper clip."""
    out = {}
    if config.epsilon is not None:
        out["epsilon_low"] = config.epsilon
        if online.epsilon_high == online.epsilon_low:
            out["epsilon_high"] = config.epsilon
    if config.epsilon_high is not None:
        out["epsilon_high"] = config.epsilon_high
    for name, key in (("epsilon", "epsilon_low"), ("epsilon_high", "epsilon_high")):
        if getattr(config, name) is not None and key in config.loss_options:
            raise ValueError(f"{key} is set twice: {name}={getattr(config, name)} and loss_options['{key}']="
                             f"{config.loss_options[key]}; set it once")
    return out


def needs_reference(preset: ObjectiveConfig, config) -> bool:
    if config.mode == "iterative_dpo":
        return True
    online = preset.has_online and preset.kl_coef > 0
    offline = preset.has_offline and preset.offline_loss in REFERENCE_LOSSES
    return online or offline


def reference_for(model, ref_model, preset: ObjectiveConfig, config):
    """The reference model, checked before the run starts (not mid-run)."""
    if ref_model is not None:
        policy.check_model(ref_model)
        return ref_model
    if config.mode == "iterative_dpo":
        return policy.copy_as_reference(model)  # refreshed from the policy at the start of every round
    if needs_reference(preset, config):
        why = f"beta={config.beta} (KL penalty)" if preset.has_online and preset.kl_coef > 0 else \
            f"the '{preset.offline_loss}' implicit reward"
        raise ValueError(f"preset '{preset.name}' needs a reference model for {why}, but ref_model is None; "
                         f"pass ref_model (e.g. a frozen copy of the initial policy)"
                         + (" or set beta: 0" if preset.has_online and preset.kl_coef > 0 else ""))
    return None


def needs_old(preset: ObjectiveConfig, config) -> bool:
    """Old logprobs are needed once the policy moves within a rollout batch, for REINFORCE++'s KL return,
    and for KTO's reference point z0 (estimated once per batch from the policy that sampled it)."""
    if preset.has_offline and preset.offline_loss == "kto":
        return True
    if not preset.has_online:
        return False
    several = config.num_iterations > 1 or config.mini_batch_size is not None
    return several or (preset.kl_in_reward and preset.kl_coef > 0)


def offline_records(data, config) -> Optional[list]:
    if config.mode != "hybrid":
        if data is not None:
            raise ValueError(f"offline_data is only used by mode 'hybrid', not '{config.mode}'")
        return None
    if not data:
        raise ValueError("mode 'hybrid' needs offline_data (preference pairs or labelled responses)")
    pairs = config.offline_preset in PAIR_LOSSES
    need = ("prompt", "chosen", "rejected") if pairs else ("prompt", "completion", "label")
    for i, rec in enumerate(data):
        missing = [k for k in need if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise ValueError(f"offline_data[{i}] lacks {missing}; offline_preset '{config.offline_preset}' needs "
                             f"records with keys {list(need)}")
    return list(data)


def prepare(tr, batch):
    """Advantages of the online rows over the whole rollout batch (groups are never split), and KTO's z0."""
    rows, preset = batch.rows, tr.preset
    if "rewards" in rows:
        mode, scale = preset.advantage_mode
        scale = tr.config.loss_options.get("scale_rewards", scale)
        online = rows.get("online")
        inputs = {"rewards": rows["rewards"], "group_ids": rows["group_ids"]}
        if mode == "reinforce_pp":
            mask = batch.rollout.completion_mask.bool()
            inputs["mask"] = mask & online[:, None] if online is not None else mask
            if preset.kl_coef > 0 and preset.kl_in_reward:
                inputs["token_kl"] = gro_kernels.kl_penalty(batch.old_logprobs, batch.ref_logprobs, estimator="k1")
        elif mode == "remax":
            inputs["baseline"] = rows["baseline"]
        adv = _advantages(inputs, mode, scale, preset.kl_coef, tr.dp, eps=preset.advantage_eps)
        if online is not None:
            adv = torch.where(online if adv.dim() == 1 else online[:, None], adv, 0.0)
        rows["advantages"] = adv
        batch.stats["advantage_std"] = float(adv[online].std() if online is not None else adv.std())
    if preset.has_offline and preset.offline_loss == "kto":
        off = ~rows["online"]
        g = ((batch.old_logprobs - batch.ref_logprobs) * batch.rollout.completion_mask).sum(1)
        total = torch.stack([g[off].sum(), off.sum().to(g.dtype)])
        if tr.dp.enabled:  # z0 is the mean over the offline rows of every rank
            torch.distributed.all_reduce(total)
        rows["kto_z0"] = (total[0] / total[1]).clamp(min=0.0)


def _advantages(inputs: dict, mode: str, scale: str, kl_coef: float, dp, eps: float = 1e-6) -> torch.Tensor:
    """group_advantages of this rank's rows. Data-parallel: computed on the union of every rank's rows
    (group ids made distinct per rank), so batch-wide statistics are global, then this rank's slice.
    eps: the preset's advantage_eps (TRL's 1e-4 for the TRL presets), as gro_loss would use."""
    start, count = 0, inputs["rewards"].shape[0]
    width = inputs["mask"].shape[1] if "mask" in inputs else None
    if dp.enabled:
        inputs, counts = distributed.gather_rows(inputs, dp)
        start = sum(counts[:dp.rank])
        # Group ids are per rank (prompt indices): shift each rank's past every earlier rank's.
        parts, shift = [], 0
        for ids in inputs["group_ids"].split(counts):
            parts.append(ids + shift)
            shift += int(ids.max()) + 1 if ids.numel() else 0
        inputs["group_ids"] = torch.cat(parts)
    kwargs = {}
    if mode == "reinforce_pp":
        kwargs = dict(mask=inputs["mask"], token_kl=inputs.get("token_kl"), kl_coef=kl_coef)
    elif mode == "remax":
        kwargs = dict(baseline=inputs["baseline"])
    adv = gro_kernels.group_advantages(inputs["rewards"], group_ids=inputs["group_ids"], mode=mode,
                                       scale_rewards=scale, eps=eps, **kwargs)
    adv = adv[start:start + count]
    return adv if adv.dim() == 1 else adv[:, :width]


def mini_batches(batch, config) -> List[List[int]]:
    """Units (single rows, or the two rows of a pair) packed in order into mini-batches of at most
    mini_batch_size rows (a unit larger than the limit gets its own mini-batch)."""
    return _pack(batch.units, config.mini_batch_size or batch.num_rows)


def micro_batches(batch, mini: List[int], size: int) -> List[List[int]]:
    inside = set(mini)
    return _pack([u for u in batch.units if u[0] in inside], size)


def _pack(units, limit) -> List[List[int]]:
    out, cur = [], []
    for unit in units:
        if cur and len(cur) + len(unit) > limit:
            out.append(cur)
            cur = []
        cur += unit
    if cur:
        out.append(cur)
    return out


def normalizers(batch, mini: List[int], preset: ObjectiveConfig) -> dict:
    """Denominators of the whole mini-batch: online rows and tokens, offline rows (pairs count two)."""
    idx = torch.tensor(mini)
    online = batch.rows.get("online")
    on = torch.full((len(mini),), preset.has_online) if online is None else online[idx]
    tokens = (batch.rollout.completion_mask[idx] * on[:, None].float()).sum()
    return {"online_rows": int(on.sum()), "online_tokens": float(tokens), "offline_rows": int((~on).sum())}


def loss_options(preset: ObjectiveConfig, config) -> dict:
    """The fixed gro_loss options of a run (the trainer's GROModelLoss is built with them)."""
    backend = "naive" if config.loss_impl == "materialized" else "auto"
    return dict(config=preset, temperature=config.temperature, ignore_index=policy.IGNORE_INDEX, return_entropy=True,
                backend=backend)


def micro_loss(tr, batch, rows: List[int], norms: dict):
    """gro_loss on the rows of one micro-batch, weighted so the sum over micro-batches is the mini-batch loss.
    It runs inside tr.loss_module's forward (decoder + fused loss), so DDP / FSDP2 see the head used."""
    preset, r = tr.preset, batch.rollout
    idx = torch.tensor(rows, device=r.input_ids.device)
    ids, attention = r.input_ids[idx], r.attention_mask[idx]
    # As policy.head_inputs: the hidden state at position p predicts token p + 1.
    targets = ids[:, r.prompt_width:].masked_fill(r.completion_mask[idx] == 0, policy.IGNORE_INDEX)
    inputs = {k: batch.rows[k][idx] for k in ROW_KEYS if k in batch.rows}
    if "kto_z0" in batch.rows:
        inputs["kto_z0"] = batch.rows["kto_z0"]
    for name, t in (("old_logprobs", batch.old_logprobs), ("ref_logprobs", batch.ref_logprobs)):
        if t is not None:
            inputs[name] = t[idx]
    on = inputs["online"] if "online" in inputs else torch.full((len(rows),), preset.has_online)
    weights = {}
    if preset.has_online:
        inputs.update(num_sequences=max(norms["online_rows"], 1), global_token_count=max(norms["online_tokens"], 1.0),
                      max_completion_length=r.completion_mask.shape[1])
        if preset.rows == "mixed" and preset.aggregation in SEQUENCE_AGGREGATIONS:
            weights["online_weight"] = int(on.sum()) / max(norms["online_rows"], 1)  # its seq mean is per call
    if preset.has_offline:
        weights["offline_weight"] = int((~on).sum()) / max(norms["offline_rows"], 1)  # pair/row mean per call
    inputs["mask"] = r.completion_mask[idx]
    # The mixing weight scales the offline term of the loss only; `weights` (returned) stay the row shares,
    # so the per-row metrics keep averaging to mini-batch values (accumulate).
    scaled = dict(weights)
    if preset.rows == "mixed":
        scaled["offline_weight"] = weights["offline_weight"] * tr.config.offline_weight
    if tr.config.padding_free:
        packed = packing.pack(ids, attention, r.completion_mask[idx], r.prompt_width)
        inputs = {k: packing.flatten(v, packed.keep) for k, v in inputs.items()}
        out = tr.loss_module(packed.input_ids, targets=packed.targets, targets_index=packed.index,
                             position_ids=packed.position_ids, cu_seqlens=packed.cu_seqlens, **scaled, **inputs)
    else:
        out = tr.loss_module(ids, attention, targets=targets, first_position=r.prompt_width - 1,
                             position_ids=policy.position_ids(attention), **scaled, **inputs)
    if "kl" not in out.metrics and "ref_logprobs" in inputs:  # preference presets report no KL of their own
        m = inputs["mask"]
        k3 = gro_kernels.kl_penalty(out.logprobs, inputs["ref_logprobs"], estimator="k3")
        out.metrics["kl"] = (k3 * m).sum() / m.sum().clamp(min=1.0)
        out.metrics["num_tokens"] = m.sum()
    return out, weights


TOKEN_METRICS = ("ratio", "clip_ratio_low", "clip_ratio_high", "clip_ratio", "kl", "entropy")


def accumulate(sums: dict, result, weights: dict):
    """Add one micro-batch: token-mean metrics weighted by their token counts; the online loss part and the
    per-row preference metrics by the micro-batch weights, so they add up to mini-batch values."""
    metrics = {k: float(v) for k, v in result.metrics.items()}
    tokens = metrics.pop("num_tokens", 0.0)
    _add(sums, "loss", float(result.loss.detach()))
    for k, v in metrics.items():
        if k in TOKEN_METRICS:
            _add(sums, k, v * tokens)
            _add(sums, "_w_" + k, tokens)
        elif k == "loss_online":
            _add(sums, k, v * weights.get("online_weight", 1.0))
        else:
            _add(sums, k, v * weights.get("offline_weight", 1.0))


def _add(sums, key, value):
    sums[key] = sums.get(key, 0.0) + value


def average(sums: dict, updates: int) -> dict:
    """Per-update means; token metrics divided by their total token weight."""
    out = {}
    for k, v in sums.items():
        if k.startswith("_w_"):
            continue
        out[k] = v / max(sums["_w_" + k], 1.0) if "_w_" + k in sums else v / max(updates, 1)
    return out

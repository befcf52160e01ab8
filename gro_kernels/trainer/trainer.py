"""GROTrainer: the loop (sample, score, advantages, old/ref logprobs, mini-batch updates), not the math."""

import logging
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch

from . import checkpoint as ckpt
from . import distributed as data_parallel
from . import metrics as mt
from . import modes, objective, packing, policy
from . import rewards as rw
from . import rollout as ro
from .config import GROConfig

logger = logging.getLogger("gro_kernels.trainer")
MODE_BUILDERS = {"online": modes.online, "iterative_dpo": modes.iterative_dpo,
                 "rejection_sampling": modes.rejection_sampling, "hybrid": modes.hybrid}


class GROTrainer:
    """Online GRO training of a Hugging Face causal LM with the fused (no [tokens, V] logits) loss.

    model / ref_model: causal LMs (ref_model frozen; may be None when the preset needs no reference;
    iterative DPO makes its own copy and refreshes it each round). reward_fns: callables
    fn(prompt, completion, **record_fields) -> float (or "module:function" specs), weighted by
    config.reward_weights. train_prompts: str or {"prompt": str, ...} records. offline_data (hybrid):
    {"prompt", "chosen", "rejected"} pairs or {"prompt", "completion", "label": bool} records.
    """

    def __init__(self, model, ref_model, tokenizer, reward_fns: Sequence, config: GROConfig,
                 train_prompts: Sequence, offline_data: Optional[Sequence] = None):
        if not isinstance(config, GROConfig):
            raise TypeError(f"config must be a gro_kernels.trainer.GROConfig, got {type(config).__name__}")
        policy.check_model(model)
        self.config, self.model, self.tokenizer = config, model, tokenizer
        ro.special_ids(tokenizer)
        fns = reward_fns if isinstance(reward_fns, (list, tuple)) else [reward_fns]
        self.reward_fns = [rw.resolve(f, f"reward_fns[{i}]") for i, f in enumerate(fns)]
        self.reward_weights = rw.check_weights(self.reward_fns, config.reward_weights)
        self.records = _prompt_records(train_prompts, "train_prompts")
        self.offline = objective.offline_records(offline_data, config)
        self.preset = objective.preset_for(config)
        self.ref_model = objective.reference_for(model, ref_model, self.preset, config)
        if config.padding_free:  # before any forward: an unsupported attention would silently mix sequences
            packing.check_model(model)
            if self.ref_model is not None:
                packing.check_model(self.ref_model, "reference model")
        # The loss runs inside one module forward (DDP-wrapped under torchrun): see distributed.py.
        self.dp = data_parallel.detect(next(model.parameters()).device)
        self.loss_module = data_parallel.loss_module(model, self.dp, **objective.loss_options(self.preset, config))
        _check_lengths(model, config)
        self.sample_fn: Callable = ro.sample
        # Dropout off everywhere: old/reference logprobs and the training forward must agree exactly.
        self.model.eval()
        if self.ref_model is not None:
            self.ref_model.eval().requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=config.adam_betas,
                                           eps=config.adam_eps, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(config))
        self.output_dir = Path(config.output_dir)
        if not config.resume:
            _claim_output_dir(self.output_dir, config, self.dp.rank == 0)
        self.log = mt.MetricsLog(self.output_dir / config.metrics_file)
        self.memory = mt.PeakMemory(next(model.parameters()).device)
        self.step = 0
        if config.resume:
            self.resume()
        else:
            random.seed(config.seed)
            torch.manual_seed(config.seed)

    # ----- the loop -----------------------------------------------------------------------------

    def train(self) -> List[dict]:
        """Run until config.max_steps; checkpoints every save_steps and at the end; returns the step records."""
        from tqdm.auto import tqdm

        c = self.config
        tty = sys.stderr.isatty()
        main_rank = self.dp.rank == 0  # under torchrun only rank 0 reports progress
        bar = tqdm(total=c.max_steps, initial=self.step, desc="gro",
                   disable=not (c.progress_bar and tty and main_rank))
        records = []
        try:
            while self.step < c.max_steps:
                record = self.train_step()
                records.append(record)
                bar.update(1)
                bar.set_postfix(reward=f"{record['reward_mean']:.3f}", loss=f"{record.get('loss', 0.0):.4f}")
                if not tty and main_rank:
                    logger.info(mt.summary_line(record))
                if c.save_steps and self.step % c.save_steps == 0 and self.step < c.max_steps:
                    self.save()
        finally:
            bar.close()
        self.save()
        if c.plot and self.dp.rank == 0:
            mt.plot_curves(self.log.read(), self.output_dir / "curves.png")
        return records

    def train_step(self) -> dict:
        """One rollout batch: sample, score, build the GRO batch, then num_iterations epochs of updates."""
        c = self.config
        start = time.perf_counter()
        self.memory.reset()
        if c.mode == "iterative_dpo" and self.step % c.ref_refresh_steps == 0:
            self.ref_model.load_state_dict(self.model.state_dict())  # a new round: reference := policy
        records, dataset_index = self._batch_records(self.step)
        batch = MODE_BUILDERS[c.mode](self, records, dataset_index)
        record = {"step": self.step + 1, "lr": self.scheduler.get_last_lr()[0]}
        # Data-parallel: a step is skipped on every rank if any rank has nothing to learn (no rank waits alone).
        if not data_parallel.every_rank(batch.rollout is not None, self.dp, self.memory.device):
            record["skipped"] = 1
        else:
            self._logprobs(batch)
            objective.prepare(self, batch)
            record.update(self._update(batch))
            record["tokens_per_s"] = batch.rollout.num_tokens() / max(time.perf_counter() - start, 1e-9)
        record.update(batch.stats)
        self.scheduler.step()  # the schedule counts rollout steps (also those with nothing to learn)
        self.step += 1
        record["step_time_s"] = time.perf_counter() - start
        peak = self.memory.peak_mb()
        if peak is not None:
            record["peak_mem_mb"] = peak
        if self.dp.rank == 0:
            self.log.write(record)
        return record

    def _logprobs(self, batch: "modes.TrainBatch"):
        c, r = self.config, batch.rollout
        args = (r.input_ids, r.attention_mask, r.completion_mask, r.prompt_width)
        opts = dict(temperature=c.temperature, micro_batch_size=c.micro_batch_size, padding_free=c.padding_free)
        if objective.needs_old(self.preset, c):
            batch.old_logprobs = policy.completion_logprobs(self.model, *args, **opts)
        if self.ref_model is not None:
            batch.ref_logprobs = policy.completion_logprobs(self.ref_model, *args, **opts)

    def _update(self, batch) -> dict:
        """num_iterations epochs; each epoch is `mini_batches` optimizer updates over micro-batches whose
        loss terms are normalized by the whole mini-batch (so accumulation equals one big batch)."""
        c = self.config
        sums, grad_norms = {}, []
        minis = objective.mini_batches(batch, c)
        for _ in range(c.num_iterations):
            for mini in minis:
                self.optimizer.zero_grad(set_to_none=True)
                # Denominators over every rank's rows; DDP averages gradients, hence the loss times P.
                norms = data_parallel.global_normalizers(objective.normalizers(batch, mini, self.preset), self.dp,
                                                         self.memory.device)
                micros = objective.micro_batches(batch, mini, c.micro_batch_size)
                for i, micro in enumerate(micros):
                    with data_parallel.sync_context(self.loss_module, last=i == len(micros) - 1):
                        result, weights = objective.micro_loss(self, batch, micro, norms)
                        (result.loss * self.dp.world).backward()
                    objective.accumulate(sums, result, weights)
                grad_norms.append(self._clip_and_step())
        out = objective.average(sums, len(grad_norms))
        out["grad_norm"] = float(sum(grad_norms) / len(grad_norms))
        return out

    def _clip_and_step(self) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not torch.isfinite(norm):
            raise FloatingPointError(f"non-finite gradient norm ({float(norm)}) at step {self.step + 1}; "
                                     f"the last checkpoint is intact")
        self.optimizer.step()
        return float(norm)

    def _batch_records(self, step: int):
        # Under data parallelism the step's stream holds every rank's prompts; this rank takes its share.
        picked = self.stream(len(self.records), self.config.prompts_per_step * self.dp.world, step)
        picked = data_parallel.rank_slice(picked, self.dp)
        return [self.records[i] for i in picked], picked

    def stream(self, n: int, k: int, step: int, salt: int = 0) -> List[int]:
        """Indices of the k items of `step` in a stream over seeded per-epoch permutations of n items:
        a pure function of the step, so a resumed run sees the same data."""
        picked = []
        for j in range(step * k, step * k + k):
            epoch, pos = divmod(j, n)
            gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + 7919 * salt + epoch)
            picked.append(int(torch.randperm(n, generator=gen)[pos]))
        return picked

    # ----- checkpoints --------------------------------------------------------------------------

    def save(self) -> Optional[Path]:
        """Rank 0 writes the checkpoint (the ranks' models are identical); other ranks return None."""
        if self.dp.rank != 0:
            return None
        ref = self.ref_model if self.config.mode == "iterative_dpo" else None
        return ckpt.save_checkpoint(self.output_dir, self.step, policy=self.model, optimizer=self.optimizer,
                                    scheduler=self.scheduler, config=self.config.to_dict(), trainer_state={},
                                    reference=ref, keep_last=self.config.save_total_limit)

    def resume(self, path=None) -> int:
        """Load the newest intact checkpoint, falling back past damaged ones with a warning (or exactly `path`,
        verified). Leftovers of an interrupted save are removed. The metrics log is not touched: the steps
        redone are appended, and readers take the last record of each step."""
        ckpt.clean_temporaries(self.output_dir)
        ref = self.ref_model if self.config.mode == "iterative_dpo" else None
        targets = dict(policy=self.model, optimizer=self.optimizer, scheduler=self.scheduler, reference=ref)
        if path is None:
            path, state = ckpt.load_newest_intact(self.output_dir, **targets)
        else:
            state = ckpt.load_checkpoint(path, **targets)
        self.step = int(state["step"])
        logger.info(f"resumed from {path} (step {self.step})")
        return self.step


def _claim_output_dir(path: Path, config: GROConfig, main_rank: bool):
    """A fresh run needs an empty output_dir: an old run's checkpoints would be pruned by step number along
    with the new ones (and be resumed as if they were the new run's), and its metrics mixed in. With
    overwrite_output_dir the trainer's own files (checkpoints, metrics, curves) go first; nothing else does."""
    held = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if not held:
        return
    if not config.overwrite_output_dir:
        shown = held[:5] + (["..."] if len(held) > 5 else [])
        raise ValueError(f"output_dir '{path}' is not empty (holds {shown}); a fresh run needs an empty one: pass "
                         f"resume=True (--resume) to continue the run there, or overwrite_output_dir=True "
                         f"(--set overwrite_output_dir=true) to delete its checkpoints and metrics first")
    if not main_rank:  # rank 0 alone deletes (and writes) in output_dir
        return
    for own in (ckpt.checkpoint_root(path), path / config.metrics_file, path / "curves.png"):
        if own.is_dir():
            shutil.rmtree(own)
        elif own.exists():
            own.unlink()
        else:
            continue
        logger.warning(f"overwrite_output_dir: removed {own}")


def _prompt_records(prompts, name) -> List[dict]:
    if prompts is None or len(prompts) == 0:
        raise ValueError(f"{name} must hold at least one prompt")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            out.append({"prompt": p})
        elif isinstance(p, dict) and isinstance(p.get("prompt"), str):
            out.append(dict(p))
        else:
            raise TypeError(f"{name}[{i}] must be a str or a dict with a 'prompt' str, got {type(p).__name__}")
    return out


def _check_lengths(model, config):
    limit = getattr(model.config, "max_position_embeddings", None)
    need = config.max_prompt_length + config.max_new_tokens
    if limit is not None and need > limit:
        raise ValueError(f"max_prompt_length + max_new_tokens = {need} exceeds the model context "
                         f"(max_position_embeddings={limit})")


def _lr_lambda(config: GROConfig):
    warm, total = config.warmup_steps, config.max_steps

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if config.lr_scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if config.lr_scheduler == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


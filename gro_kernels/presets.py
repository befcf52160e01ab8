"""GRO presets: every method as one frozen GROObjective (docs/math.md §5).

Online rows (rewards + groups): weight = magnitude(score - anchor), through a surrogate.
  anchor/magnitude: group_mean/std (GRPO), group_mean/batch_std (GRPO, scale_rewards="batch"),
  group_mean/identity (Dr. GRPO), leave_one_out/identity (RLOO), greedy/identity (ReMax),
  batch_mean/whiten (REINFORCE++), none/identity (given advantages, e.g. PPO with GAE).
Offline rows: the score is the policy's implicit reward; offline_score/offline_anchor/offline_phi:
  implicit/pair/sigmoid = DPO, implicit/pair/squared = IPO, length_normalized/pair/sigmoid = SimPO,
  discounted/pair/sigmoid = CPL, implicit/reference_point/sigmoid = KTO.
"""

import dataclasses
from dataclasses import dataclass
from typing import Optional

ADVANTAGE_MODES = {("group_mean", "std"): ("grpo", "group"), ("group_mean", "batch_std"): ("grpo", "batch"),
                   ("group_mean", "identity"): ("dr_grpo", "none"), ("leave_one_out", "identity"): ("rloo", "none"),
                   ("greedy", "identity"): ("remax", "none"), ("batch_mean", "whiten"): ("reinforce_pp", "none"),
                   ("none", "identity"): ("none", "none"),
                   # verl's further estimators (ops/group_advantages/estimators.py)
                   ("best_of_group", "std"): ("grpo_passk", "group"),
                   ("best_of_group", "identity"): ("grpo_passk", "none"),
                   ("length_weighted_mean", "identity"): ("opo", "none"),
                   ("group_mean", "nonzero_share"): ("gpg", "none"),
                   ("group_mean_score", "whiten"): ("reinforce_pp_baseline", "none"),
                   ("value", "whiten"): ("gae", "none"), ("none", "whiten"): ("reinforce_pp", "none"),
                   ("optimal_token", "identity"): ("optimal_token_baseline", "none"),
                   ("optimal_token_aligned", "identity"): ("tir_optimal_token_baseline", "none")}
# Surrogates whose per-token weight reads the whole sequence of current logprobs (plain path only).
SEQUENCE_SURROGATES = ("vespo", "geo_mean", "clip_cov", "kl_cov")
OFFLINE_LOSSES = {("implicit", "pair", "sigmoid"): "dpo", ("implicit", "pair", "squared"): "ipo",
                  ("length_normalized", "pair", "sigmoid"): "simpo", ("discounted", "pair", "sigmoid"): "cpl",
                  ("implicit", "reference_point", "sigmoid"): "kto"}


@dataclass(frozen=True)
class GROObjective:
    """One GRO objective. rows: which rows a batch may hold ("online", "offline" or "mixed")."""

    name: str = "custom"
    rows: str = "online"
    # online rows
    anchor: str = "group_mean"
    magnitude: str = "std"
    # surrogate: clip | cispo | reinforce | sapo | vespo | dppo_tv | dppo_kl | dro | geo_mean | clip_cov | kl_cov
    surrogate: str = "clip"
    importance_sampling_level: str = "token"  # token | sequence (GSPO) | sequence_token
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    dual_clip: Optional[float] = None
    tis_cap: Optional[float] = None
    aggregation: str = "seq_mean_token_mean"
    kl_coef: float = 0.0
    kl_estimator: str = "k3"                # k1 | k2 | k3 | k3_st | exact (streamed full-vocabulary KL)
    kl_in_reward: bool = False              # REINFORCE++: k1 shapes the return instead of entering the loss
    entropy_coef: float = 0.0
    # online rows: peer options (docs/math.md §3; docs/peer_names.md gives the TRL / verl names)
    delta: Optional[float] = None           # TRL two-sided clip: the unclipped ratio capped at delta (> 1 + eps_high)
    cispo_ratio_min: Optional[float] = None  # verl CISPO's lower ratio bound (1 - clip_ratio_low)
    sapo_tau_pos: float = 1.0               # sapo gate temperatures (TRL sapo_temperature_pos / verl tau_pos)
    sapo_tau_neg: float = 1.05
    dppo_ratio_cap: float = 20.0            # dppo_tv / dppo_kl truncated IS cap (verl clip_ratio_c)
    dro_beta: Optional[float] = None        # dro's quadratic log-ratio penalty (required by surrogate="dro")
    vespo_k_pos: float = 2.0                # vespo gamma weight phi(w) = exp(lambda + k log w - lambda w)
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0
    kl_ratio_weighted: bool = False         # TRL use_bias_correction_kl: KL term times the IS ratio
    entropy_aggregation: str = "loss"       # "loss": like the policy term (verl); "token_mean": TRL's
    top_entropy_quantile: float = 1.0       # TRL: train on the top-q entropy tokens only (1: all)
    off_policy_mask_threshold: Optional[float] = None  # TRL off-policy sequence mask
    rollout_is_mode: Optional[str] = None   # TRL vllm_importance_sampling_mode (None: tis_cap = token_truncate)
    rollout_is_min: Optional[float] = None  # TRL vllm_importance_sampling_clip_min (tis_cap is the max)
    clip_cov_ratio: float = 2e-4            # verl clip_cov / kl_cov options (verl PolicyLossConfig defaults)
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    kl_cov_ratio: float = 2e-4
    ppo_kl_coef: float = 0.1
    gamma: float = 1.0                      # discount of token-level returns (reinforce_pp, gae)
    lam: float = 1.0                        # GAE lambda
    handle_zero_tail: bool = True           # optimal_token_baseline: no baseline past the second-longest row
    advantage_eps: float = 1e-6             # eps of std divisions (TRL's presets: 1e-4); eps= overrides it
    normalize_advantages: bool = False      # TRL RLOO: whiten the sequence advantages over the batch
    # offline rows
    offline_score: str = "implicit"
    offline_anchor: str = "pair"
    offline_phi: str = "sigmoid"
    preference_beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    cpl_lambda: float = 0.5
    cpl_discount: float = 1.0
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    # TRL's DPOConfig / KTOConfig / CPOConfig (docs/math.md §4): offline_loss_type, when set, names the loss
    # (one gro preference loss, or a tuple of DPO loss types weighted by loss_weights) instead of the triple.
    offline_loss_type: Optional[object] = None
    loss_weights: Optional[tuple] = None
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5
    ld_alpha: Optional[float] = None
    use_weighting: bool = False             # WPO pair weights (needs log_sum_sq_probs=)
    discopop_tau: float = 0.05
    rpo_alpha: Optional[float] = None       # RPO: + rpo_alpha * NLL of the chosen responses
    cpo_alpha: float = 0.0                  # CPO's NLL term (TRL's CPOConfig default 1.0: the cpo preset)
    alpha: float = 0.0                      # AlphaPO reward shape of the CPO losses

    @property
    def has_online(self) -> bool:
        return self.rows in ("online", "mixed")

    @property
    def has_offline(self) -> bool:
        return self.rows in ("offline", "mixed")

    @property
    def advantage_mode(self):
        """(group_advantages mode, scale_rewards) for the online anchor/magnitude pair."""
        key = (self.anchor, self.magnitude)
        if key not in ADVANTAGE_MODES:
            raise ValueError(f"GROObjective anchor/magnitude {key} is not supported; "
                             f"supported: {sorted(ADVANTAGE_MODES)}")
        return ADVANTAGE_MODES[key]

    @property
    def offline_loss(self):
        if self.offline_loss_type is not None:
            return self.offline_loss_type
        key = (self.offline_score, self.offline_anchor, self.offline_phi)
        if key not in OFFLINE_LOSSES:
            raise ValueError(f"GROObjective offline score/anchor/phi {key} is not supported; "
                             f"supported: {sorted(OFFLINE_LOSSES)}")
        return OFFLINE_LOSSES[key]

    @property
    def token_separable(self) -> bool:
        """True when dLoss/dl_t is known per token (grad-in-forward applies): no sequence coupling."""
        return (self.rows == "online" and self.importance_sampling_level == "token"
                and self.kl_estimator != "exact" and self.surrogate not in SEQUENCE_SURROGATES
                and self.top_entropy_quantile >= 1.0 and self.off_policy_mask_threshold is None)


_GRPO = GROObjective(name="grpo", advantage_eps=1e-4)  # TRL's GRPOTrainer / RLOOTrainer: std + 1e-4
_VERL_EPS = dict(advantage_eps=1e-6)                    # verl's estimators (and OpenRLHF's REINFORCE++): 1e-6
PRESETS = {
    "grpo": _GRPO,
    "bnpo": dataclasses.replace(_GRPO, name="bnpo", aggregation="token_mean"),
    "dr_grpo": dataclasses.replace(_GRPO, name="dr_grpo", magnitude="identity",
                                   aggregation="seq_mean_token_sum_norm"),
    "dapo": dataclasses.replace(_GRPO, name="dapo", epsilon_high=0.28, aggregation="token_mean"),
    "rloo": dataclasses.replace(_GRPO, name="rloo", anchor="leave_one_out", magnitude="identity",
                                aggregation="token_mean"),
    "remax": dataclasses.replace(_GRPO, name="remax", anchor="greedy", magnitude="identity", aggregation="token_mean"),
    "reinforce_pp": dataclasses.replace(_GRPO, name="reinforce_pp", anchor="batch_mean", magnitude="whiten",
                                        aggregation="token_mean", kl_in_reward=True, kl_estimator="k1"),
    "ppo": dataclasses.replace(_GRPO, name="ppo", anchor="none", magnitude="identity", aggregation="token_mean"),
    "gspo": dataclasses.replace(_GRPO, name="gspo", importance_sampling_level="sequence", epsilon_low=3e-4,
                                epsilon_high=4e-4),
    "cispo": dataclasses.replace(_GRPO, name="cispo", surrogate="cispo", epsilon_high=5.0, aggregation="token_mean"),
    # TRL GRPOTrainer loss types, with TRL's defaults (epsilon 0.2 both sides, sapo temperatures 1.0 / 1.05,
    # use_bias_correction_kl on: matters once beta > 0)
    "sapo": dataclasses.replace(_GRPO, name="sapo", surrogate="sapo", kl_ratio_weighted=True),
    "vespo": dataclasses.replace(_GRPO, name="vespo", surrogate="vespo", aggregation="token_mean",
                                 kl_ratio_weighted=True),
    "luspo": dataclasses.replace(_GRPO, name="luspo", aggregation="seq_mean_token_sum", kl_ratio_weighted=True),
    # verl policy_loss.loss_mode (verl defaults: clip_ratio 0.2, token-mean)
    # GPG in verl is both an estimator (adv_estimator=gpg) and a policy loss (loss_mode=gpg, no ratio): one preset
    "gpg": dataclasses.replace(_GRPO, name="gpg", surrogate="reinforce", magnitude="nonzero_share",
                               aggregation="token_mean", advantage_eps=1e-6),
    "dppo_tv": dataclasses.replace(_GRPO, name="dppo_tv", surrogate="dppo_tv", aggregation="token_mean"),
    "dppo_kl": dataclasses.replace(_GRPO, name="dppo_kl", surrogate="dppo_kl", aggregation="token_mean"),
    "geo_mean": dataclasses.replace(_GRPO, name="geo_mean", surrogate="geo_mean"),
    "clip_cov": dataclasses.replace(_GRPO, name="clip_cov", surrogate="clip_cov", aggregation="token_mean"),
    "kl_cov": dataclasses.replace(_GRPO, name="kl_cov", surrogate="kl_cov", aggregation="token_mean"),
    # TRL's RLOOTrainer: beta 0.05 as k1 summed into the reward, exp(sum_t l - l_old) clipped per sequence, the mean
    # over sequences (seq_mean_token_mean of a per-sequence term), normalize_advantages off by default
    "trl_rloo": dataclasses.replace(_GRPO, name="trl_rloo", anchor="leave_one_out", magnitude="identity",
                                    importance_sampling_level="sequence_sum", kl_coef=0.05, kl_in_reward=True,
                                    kl_estimator="k1"),
    # verl adv_estimator names (docs/math.md §2), on verl's default loss_agg_mode token-mean
    "grpo_passk": dataclasses.replace(_GRPO, name="grpo_passk", anchor="best_of_group", aggregation="token_mean",
                                      **_VERL_EPS),
    "opo": dataclasses.replace(_GRPO, name="opo", anchor="length_weighted_mean", magnitude="identity",
                               aggregation="token_mean", **_VERL_EPS),
    "reinforce_pp_baseline": dataclasses.replace(_GRPO, name="reinforce_pp_baseline", anchor="group_mean_score",
                                                 magnitude="whiten", aggregation="token_mean", kl_in_reward=True,
                                                 kl_estimator="k1", **_VERL_EPS),
    "gae": dataclasses.replace(_GRPO, name="gae", anchor="value", magnitude="whiten", aggregation="token_mean",
                               **_VERL_EPS),
    "optimal_token_baseline": dataclasses.replace(_GRPO, name="optimal_token_baseline", anchor="optimal_token",
                                                  magnitude="identity", aggregation="token_mean", **_VERL_EPS),
    "tir_optimal_token_baseline": dataclasses.replace(_GRPO, name="tir_optimal_token_baseline",
                                                      anchor="optimal_token_aligned", magnitude="identity",
                                                      aggregation="token_mean", **_VERL_EPS),
    "dpo": GROObjective(name="dpo", rows="offline"),
    "ipo": GROObjective(name="ipo", rows="offline", offline_phi="squared"),
    "simpo": GROObjective(name="simpo", rows="offline", offline_score="length_normalized", preference_beta=2.0),
    "kto": GROObjective(name="kto", rows="offline", offline_anchor="reference_point"),
    "cpl": GROObjective(name="cpl", rows="offline", offline_score="discounted"),
}
# TRL's other DPOTrainer loss types, KTOTrainer's apo_zero_unpaired and CPOTrainer (TRL's defaults: beta 0.1;
# CPO cpo_alpha 1.0; exo_pair needs label_smoothing > 0, 1e-3 as the EXO paper suggests). "dpo_ipo" is TRL's
# IPO (log-ratios divided by the response length); "ipo" stays gro's (plain sums).
_TRL_DPO = {"dpo_ipo": "ipo_norm", "hinge": "hinge", "robust": "robust", "exo_pair": "exo_pair",
            "nca_pair": "nca_pair", "bco_pair": "bco_pair", "sppo_hard": "sppo_hard", "aot": "aot",
            "aot_unpaired": "aot_unpaired", "apo_zero": "apo_zero", "apo_down": "apo_down", "discopop": "discopop",
            "sigmoid_norm": "sigmoid_norm", "sft": "sft"}
for _name, _loss in _TRL_DPO.items():
    PRESETS[_name] = GROObjective(name=_name, rows="offline", offline_loss_type=_loss,
                                  label_smoothing=1e-3 if _loss == "exo_pair" else 0.0)
PRESETS["apo_zero_unpaired"] = GROObjective(name="apo_zero_unpaired", rows="offline",
                                            offline_loss_type="apo_zero_unpaired")
PRESETS["cpo"] = GROObjective(name="cpo", rows="offline", offline_loss_type="cpo", cpo_alpha=1.0)

# ReMax, REINFORCE++ and PPO follow verl / OpenRLHF, not TRL: their eps stays 1e-6.
for _name in ("remax", "reinforce_pp", "ppo"):
    PRESETS[_name] = dataclasses.replace(PRESETS[_name], **_VERL_EPS)


def get_preset(name: str) -> GROObjective:
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)} (or pass config=GROObjective(...)), got {name!r}")
    return PRESETS[name]

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
    surrogate: str = "clip"                 # clip | cispo | reinforce
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
    def offline_loss(self) -> str:
        key = (self.offline_score, self.offline_anchor, self.offline_phi)
        if key not in OFFLINE_LOSSES:
            raise ValueError(f"GROObjective offline score/anchor/phi {key} is not supported; "
                             f"supported: {sorted(OFFLINE_LOSSES)}")
        return OFFLINE_LOSSES[key]

    @property
    def token_separable(self) -> bool:
        """True when dLoss/dl_t is known per token (grad-in-forward applies): no sequence coupling."""
        return (self.rows == "online" and self.importance_sampling_level == "token"
                and self.kl_estimator != "exact")


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
    "gpg": dataclasses.replace(_GRPO, name="gpg", magnitude="nonzero_share", aggregation="token_mean", **_VERL_EPS),
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

# ReMax, REINFORCE++ and PPO follow verl / OpenRLHF, not TRL: their eps stays 1e-6.
for _name in ("remax", "reinforce_pp", "ppo"):
    PRESETS[_name] = dataclasses.replace(PRESETS[_name], **_VERL_EPS)


def get_preset(name: str) -> GROObjective:
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)} (or pass config=GROObjective(...)), got {name!r}")
    return PRESETS[name]

"""TRL's preference vocabulary (DPOConfig, KTOConfig, CPOConfig) on top of gro's preference losses: loss_type
names and lists, and the checks of the TRL-only options (docs/math.md §4, "TRL's loss types"), so that no
option is accepted and then left unused."""

from .. import _validate as v
from ..ops.preference_loss import cpo_family, dpo_family
from ..ops.preference_loss.function import LOSSES, UNPAIRED, loss_types
from . import checks as c

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
# TRL's loss_type values per trainer -> gro's loss names. Only "ipo" and "sigmoid" differ: TRL's DPO "ipo"
# divides each log-ratio by the response length (gro's "ipo" uses plain sums); CPO's are reference-free.
TRL_DPO = {**{n: n for n in dpo_family.DPO_LOSSES if n not in ("dpo", "ipo", "ipo_norm")},
           "sigmoid": "dpo", "ipo": "ipo_norm"}
TRL_KTO = {"kto": "kto", "apo_zero_unpaired": "apo_zero_unpaired"}
TRL_CPO = {"sigmoid": "cpo", "hinge": "cpo_hinge", "ipo": "cpo_ipo", "simpo": "simpo"}
# Option -> the losses that read it (anything else would leave it silently unused).
_READERS = {"f_divergence_type": dpo_family.F_DIVERGENCE_LOSSES, "ld_alpha": dpo_family.DPO_LOSSES,
            "use_weighting": tuple(n for n in dpo_family.DPO_LOSSES if n not in dpo_family.SORTED),
            "rpo_alpha": dpo_family.DPO_LOSSES, "cpo_alpha": cpo_family.CPO_LOSSES,
            "alpha": cpo_family.CPO_LOSSES, "discopop_tau": ("discopop",),
            "loss_weights": dpo_family.DPO_LOSSES,
            "label_smoothing": dpo_family.USES_LABEL_SMOOTHING + ("simpo", "cpo")}
_DEFAULTS = {"f_divergence_type": "reverse_kl", "ld_alpha": None, "use_weighting": False, "rpo_alpha": None,
             "cpo_alpha": 0.0, "alpha": 0.0, "discopop_tau": 0.05, "loss_weights": None, "label_smoothing": 0.0}


def gro_loss_type(loss_type, name="loss_type"):
    """preference_loss's loss_type: a gro name ("sigmoid" is accepted for "dpo"), or a list/tuple of DPO loss types
    (TRL's DPOConfig.loss_type list). Returns a name or a tuple of names."""
    if isinstance(loss_type, (list, tuple)):
        names = tuple("dpo" if n == "sigmoid" else n for n in loss_type)
        if not names:
            raise ValueError(f"{name} must name at least one loss, got {loss_type!r}")
        if len(names) == 1:
            return names[0]
        wrong = [n for n in names if n not in dpo_family.DPO_LOSSES]
        if wrong:
            raise ValueError(f"{name}: only DPO loss types combine in a list ({list(dpo_family.DPO_LOSSES)}), got "
                             f"{wrong} in {list(loss_type)}")
        return names
    return "dpo" if loss_type == "sigmoid" else loss_type


def trl_loss_type(base_loss, loss_type):
    """gro_loss(loss_type=...) on an offline preset: TRL's name in the trainer of the preset's loss (KTOTrainer for
    kto / apo_zero_unpaired, CPOTrainer for the cpo losses and simpo, DPOTrainer otherwise), as gro names."""
    first = loss_types_of(base_loss)[0]
    if first == "cpl":
        raise ValueError("loss_type does not apply to preset 'cpl' (no TRL trainer has it); pick another preset")
    table, trainer = ((TRL_KTO, "KTOConfig") if first in UNPAIRED else
                      (TRL_CPO, "CPOConfig") if first in cpo_family.CPO_LOSSES else (TRL_DPO, "DPOConfig"))
    names = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    wrong = [n for n in names if n not in table]
    if wrong or not names:
        raise ValueError(f"loss_type for this preset takes TRL's {trainer} values {sorted(table)}, got {loss_type!r}")
    out = tuple(table[n] for n in names)
    return out[0] if len(out) == 1 else gro_loss_type(out)


def loss_types_of(loss):
    return (loss,) if isinstance(loss, str) else tuple(loss)


def check_trl_options(cfg, name):
    """The TRL-only fields of a PreferenceConfig: values, and that the configured loss reads each one set."""
    types = loss_types(cfg)
    for t in types:
        if t not in LOSSES:
            raise ValueError(f"{name('loss')} must be one of {LOSSES} (or a list of DPO loss types), got {t!r}")
    if len(types) > 1 and any(t not in dpo_family.DPO_LOSSES for t in types):
        raise ValueError(f"{name('loss')}: only DPO loss types combine in a list, got {list(types)}")
    if cfg.f_divergence_type not in F_DIVERGENCES:
        raise ValueError(f"{name('f_divergence_type')} must be one of {F_DIVERGENCES}, got {cfg.f_divergence_type!r}")
    v.require_positive_finite(name("f_alpha_divergence_coef"), cfg.f_alpha_divergence_coef)
    v.require_positive_finite(name("discopop_tau"), cfg.discopop_tau)
    v.require_nonnegative(name("cpo_alpha"), cfg.cpo_alpha)
    if not (v.is_number(cfg.alpha) and abs(cfg.alpha) < float("inf")):
        raise ValueError(f"{name('alpha')} must be a finite number (AlphaPO; 0 = log-prob rewards), got {cfg.alpha!r}")
    if cfg.ld_alpha is not None and not (v.is_number(cfg.ld_alpha) and 0.0 <= cfg.ld_alpha <= 1.0):
        raise ValueError(f"{name('ld_alpha')} must be in [0, 1] or None, got {cfg.ld_alpha!r}")
    if cfg.rpo_alpha is not None:
        v.require_nonnegative(name("rpo_alpha"), cfg.rpo_alpha)
    v.require_bool(name("use_weighting"), cfg.use_weighting)
    if cfg.loss_weights is not None:
        weights = cfg.loss_weights
        if not isinstance(weights, (list, tuple)) or len(weights) != len(types):
            raise ValueError(f"{name('loss_weights')} must be a list with one weight per loss type ({len(types)}: "
                             f"{list(types)}), got {weights!r}")
        for w in weights:
            v.require_nonnegative(name("loss_weights"), w)
    shown = list(types) if len(types) > 1 else types[0]
    for option, readers in _READERS.items():
        value = getattr(cfg, option)
        if value != _DEFAULTS[option] and not any(t in readers for t in types):
            raise ValueError(f"{name(option)}={value!r} is not read by loss {shown!r}; it applies to {list(readers)}")
    if cfg.f_divergence_type != "reverse_kl":
        wrong = [t for t in types if t not in dpo_family.F_DIVERGENCE_LOSSES]
        if wrong:  # f-DPO's log Z(x) cancels only in a chosen-minus-rejected difference
            raise ValueError(f"{name('f_divergence_type')}={cfg.f_divergence_type!r} applies to "
                             f"{dpo_family.F_DIVERGENCE_LOSSES} only, not {wrong}")
    if cfg.use_weighting and any(t in dpo_family.SORTED for t in types):
        raise ValueError(f"{name('use_weighting')}=True: aot / aot_unpaired sort the pairs, so WPO's pair weights "
                         "would not line up")
    if "exo_pair" in types and cfg.label_smoothing <= 0.0:
        raise ValueError(f"{name('label_smoothing')} must be > 0 for exo_pair (log eps; EXO suggests 1e-3)")


TRL_FIELDS = ("loss_weights", "f_divergence_type", "f_alpha_divergence_coef", "ld_alpha", "use_weighting",
              "discopop_tau", "rpo_alpha", "cpo_alpha", "alpha")
_FIELD_DEFAULTS = {**_DEFAULTS, "f_alpha_divergence_coef": 0.5}


def objective_trl_fields(cfg) -> dict:
    """A GROObjective's TRL preference fields, for its PreferenceConfig (loss_weights as a tuple)."""
    out = {f: getattr(cfg, f) for f in TRL_FIELDS}
    if isinstance(out["loss_weights"], list):
        out["loss_weights"] = tuple(out["loss_weights"])
    return out


def reject_offline_only_fields(cfg):
    """An objective without offline rows would never read its preference options: refuse any one set."""
    for field in TRL_FIELDS + ("offline_loss_type",):
        value = getattr(cfg, field)
        if value != _FIELD_DEFAULTS.get(field) and not (field == "offline_loss_type" and value is None):
            raise ValueError(f"{field}={value!r} is a preference-loss option, but preset {cfg.name!r} has only online "
                             "rows; use an offline preset (dpo, kto, cpo, ...) or rows='mixed'")


def check_trl_inputs(cfg, inputs, shape, device):
    """The inputs only some TRL options read: log_sum_sq_probs [B, T] (WPO) and kl_logps / ref_kl_logps [K]
    (KTO's z0 from mismatched pairs). Missing ones raise; given but unread ones too."""
    lss = inputs.get("log_sum_sq_probs")
    if cfg.use_weighting and lss is None:
        raise ValueError("use_weighting=True (WPO) needs log_sum_sq_probs= [B, T]: per token log sum_v p_v^2 of the "
                         "policy (TRL's outputs.log_sum_sq_probs), no gradient needed; gro_loss computes it "
                         "itself from an unsharded head")
    if lss is not None and not cfg.use_weighting:
        raise ValueError("log_sum_sq_probs= is read only with use_weighting=True (WPO)")
    c.token_tensor("log_sum_sq_probs", lss, shape, device=device)
    if inputs.get("kto_z0") is not None and cfg.loss != "kto":
        raise ValueError(f"kto_z0= is KTO's reference point; loss {cfg.loss!r} does not read it")
    kl, ref_kl = inputs.get("kl_logps"), inputs.get("ref_kl_logps")
    if (kl is None) != (ref_kl is None):
        raise ValueError("kl_logps= and ref_kl_logps= go together (TRL's KL_logps and ref_KL_logps: sequence logprobs "
                         "of the mismatched prompt-completion pairs under the policy and the reference)")
    if kl is None:
        return
    if cfg.loss != "kto":
        raise ValueError(f"kl_logps= / ref_kl_logps= set KTO's reference point; loss {cfg.loss!r} has none")
    if inputs.get("kto_z0") is not None:
        raise ValueError("kto_z0= and kl_logps= both give KTO's reference point; pass one of them")
    for name, t in (("kl_logps", kl), ("ref_kl_logps", ref_kl)):
        v.require_tensor(name, t)
        v.require_data(name, t)
        if t.dim() != 1 or t.shape[0] == 0 or not t.is_floating_point():
            raise ValueError(f"{name} must be a non-empty 1-D floating tensor (one sequence logprob per mismatched "
                             f"pair), got {v.describe(t)}")
        if device is not None and t.device != device:
            raise ValueError(f"{name} must be on device {device}, got {v.describe(t)}")
    if kl.shape != ref_kl.shape:
        raise ValueError(f"kl_logps and ref_kl_logps must have one shape, got {v.describe(kl)} and "
                         f"{v.describe(ref_kl)}")


TRL_INPUTS = ("log_sum_sq_probs", "kl_logps", "ref_kl_logps")


def reject_offline_inputs(cfg, inputs):
    """Preference-only inputs given to an objective without offline rows: they would be dropped."""
    given = [n + "=" for n in TRL_INPUTS if inputs.get(n) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} feed preference losses; preset {cfg.name!r} has only online rows")

"""TRL's adaptive entropy coefficient (GRPOConfig use_adaptive_entropy, from Skywork-OR1) as a small controller
the caller steps: the loss itself takes a fixed entropy_coef per call, this says which one.

TRL 1.16 GRPOTrainer._compute_loss: every micro-batch of an optimizer step applies the coefficient decided at
the end of the previous step, and only while the last window-global mean entropy is <= entropy_target (the
first window: off, its entropy starts at +inf). At the step boundary the window's entropy sum and token count
(summed over ranks by the caller) give the mean H; coef += delta if H <= target else -= delta, clamped to
[coef_min, coef_max]."""

import math


class AdaptiveEntropyCoef:
    def __init__(self, entropy_coef=0.0, *, entropy_target=0.2, coef_min=0.0, coef_max=1.0, coef_delta=0.005):
        for name, value in (("entropy_coef", entropy_coef), ("entropy_target", entropy_target),
                            ("coef_min", coef_min), ("coef_max", coef_max), ("coef_delta", coef_delta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if coef_min > coef_max:
            raise ValueError(f"coef_min={coef_min} exceeds coef_max={coef_max}")
        self.coef = float(entropy_coef)
        self.entropy_target = float(entropy_target)
        self.coef_min, self.coef_max, self.coef_delta = float(coef_min), float(coef_max), float(coef_delta)
        self.last_world_entropy = math.inf
        self._sum, self._count = 0.0, 0.0

    @property
    def applied_coef(self) -> float:
        """The entropy_coef to pass to this step's loss calls."""
        return self.coef if self.last_world_entropy <= self.entropy_target else 0.0

    def accumulate(self, entropy_sum, token_count):
        """One micro-batch's sum of entropies over the tokens the bonus acts on, and their count (floats or
        0-d tensors; reading a tensor syncs with the device)."""
        self._sum += float(entropy_sum)
        self._count += float(token_count)

    def step(self) -> float:
        """At the optimizer-step boundary (after the caller summed the window over ranks, if any): update the
        coefficient for the next step; returns the window's mean entropy."""
        world = self._sum / max(self._count, 1.0)
        if world <= self.entropy_target:
            self.coef = min(self.coef + self.coef_delta, self.coef_max)
        else:
            self.coef = max(self.coef - self.coef_delta, self.coef_min)
        self.last_world_entropy = world
        self._sum, self._count = 0.0, 0.0
        return world

    def state_dict(self) -> dict:
        """TRL's checkpoint fields (entropy_ctrl_state.json)."""
        return {"entropy_coef": self.coef, "last_world_entropy": self.last_world_entropy}

    def load_state_dict(self, state: dict):
        self.coef = float(state["entropy_coef"])
        self.last_world_entropy = float(state["last_world_entropy"])

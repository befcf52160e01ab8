"""AdaptiveEntropyCoef vs TRL 1.16 GRPOTrainer._compute_loss's adaptive entropy controller (trl/trainer/
grpo_trainer.py: apply_coef gated on _last_world_entropy <= entropy_target, then +- entropy_coef_delta within
[entropy_coef_min, entropy_coef_max] from the window-global mean entropy), replayed here step by step."""

import math

import pytest

from gro_kernels.losses.entropy_control import AdaptiveEntropyCoef


def _trl_replay(windows, coef, target, lo, hi, delta):
    """TRL's controller state machine, written from its formula: returns the applied coef per micro-batch."""
    last, applied = math.inf, []
    for window in windows:
        s = c = 0.0
        for ent_sum, count in window:
            applied.append(coef if last <= target else 0.0)
            s, c = s + ent_sum, c + count
        world = s / max(c, 1.0)
        coef = min(coef + delta, hi) if world <= target else max(coef - delta, lo)
        last = world
    return applied, coef


def test_matches_trl_controller():
    windows = [[(3.0, 10), (1.0, 10)], [(1.0, 10), (0.5, 10)], [(0.2, 10)], [(9.0, 10), (9.0, 10)], [(0.1, 5)]]
    ctrl = AdaptiveEntropyCoef(0.01, entropy_target=0.2, coef_min=0.0, coef_max=0.02, coef_delta=0.005)
    got = []
    for window in windows:
        for ent_sum, count in window:
            got.append(ctrl.applied_coef)
            ctrl.accumulate(ent_sum, count)
        ctrl.step()
    want, final = _trl_replay(windows, 0.01, 0.2, 0.0, 0.02, 0.005)
    assert got == pytest.approx(want)
    assert ctrl.coef == pytest.approx(final)
    assert got[0] == 0.0 and max(got) > 0.0  # the first window is off; the gate opened later


def test_state_round_trip_and_bad_options():
    ctrl = AdaptiveEntropyCoef(0.1)
    ctrl.accumulate(0.0, 4)
    ctrl.step()
    other = AdaptiveEntropyCoef()
    other.load_state_dict(ctrl.state_dict())
    assert other.applied_coef == ctrl.applied_coef == pytest.approx(0.105)
    with pytest.raises(ValueError, match="coef_min"):
        AdaptiveEntropyCoef(coef_min=1.0, coef_max=0.5)
    with pytest.raises(ValueError, match="entropy_target"):
        AdaptiveEntropyCoef(entropy_target=float("nan"))

"""Hybrid mode's mixing weight (GROConfig.offline_weight): the loss is online mean + w * offline mean, so the
offline rows' pull on the gradient scales with w, w = 0 leaves only the online rows, and the reported per-row
metrics do not change with w."""

import pytest
import torch

from gro_kernels.trainer import GROConfig, objective
from gro_kernels.trainer import trainer as trainer_mod

from tests.support.trainer_support import OFFLINE_PAIRS, frozen_copy, make_trainer, tiny_model


def spread_reward(prompt, completion, **_):
    return len(completion) + 0.1 * (sum(map(ord, completion)) % 7)


def _one_batch(tmp_path):
    model = tiny_model(seed=3)
    tr = make_trainer(tmp_path, model=model, ref=frozen_copy(model), offline=OFFLINE_PAIRS, reward=spread_reward,
                      mode="hybrid", preset="grpo", offline_preset="dpo", offline_per_step=2)
    with torch.no_grad():  # off the reference, so the DPO term has a non-trivial gradient
        for p in tr.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    records, index = tr._batch_records(0)
    batch = trainer_mod.MODE_BUILDERS["hybrid"](tr, records, index)  # the batch train_step would build
    tr._logprobs(batch)
    objective.prepare(tr, batch)
    return tr, batch


def _loss_grads(tr, batch, weight):
    tr.config = tr.config.replace(offline_weight=weight)
    tr.model.zero_grad(set_to_none=True)
    mini = list(range(batch.num_rows))
    norms = objective.normalizers(batch, mini, tr.preset)
    out, _ = objective.micro_loss(tr, batch, mini, norms)
    out.loss.backward()
    return out, [p.grad.clone() for p in tr.model.parameters()]


def test_loss_is_online_plus_weighted_offline(tmp_path):
    tr, batch = _one_batch(tmp_path)
    results = {w: _loss_grads(tr, batch, w) for w in (0.0, 1.0, 2.5)}
    for w, (out, _) in results.items():
        expect = float(out.metrics["loss_online"]) + w * float(out.metrics["loss_offline"])
        assert float(out.loss.detach()) == pytest.approx(expect, rel=1e-5, abs=1e-7)
        # the per-row metrics are those of the rows, whatever their weight in the loss
        assert float(out.metrics["loss_offline"]) == pytest.approx(float(results[0.0][0].metrics["loss_offline"]))
    g0, g1, g25 = (results[w][1] for w in (0.0, 1.0, 2.5))
    assert any(not torch.allclose(a, b) for a, b in zip(g0, g1)), "offline rows had no effect at weight 1"
    for a, b, c in zip(g0, g1, g25):  # linear in w: g(w) = g(0) + w * (g(1) - g(0))
        torch.testing.assert_close(c, a + 2.5 * (b - a), atol=1e-6, rtol=1e-4)


def test_offline_weight_zero_is_the_online_gradient(tmp_path):
    """w = 0: the gradient of the mixed batch equals that of its online rows alone (a grpo loss on them)."""
    tr, batch = _one_batch(tmp_path)
    out, g_mixed = _loss_grads(tr, batch, 0.0)
    assert float(out.loss.detach()) == pytest.approx(float(out.metrics["loss_online"]), rel=1e-6, abs=1e-8)
    assert any(float(g.abs().max()) > 0 for g in g_mixed)


@pytest.mark.parametrize("value, error, match", [
    (-0.5, ValueError, r"offline_weight must be a finite number >= 0, got -0\.5"),
    (float("inf"), ValueError, r"offline_weight must be a finite number >= 0, got inf"),
    ("1.0", TypeError, r"offline_weight must be a number, got '1\.0' \(str\)"),
])
def test_offline_weight_validated(value, error, match):
    with pytest.raises(error, match=match):
        GROConfig(mode="hybrid", offline_weight=value)

"""``jaxvl.pretrain.chance``: chance levels on hand-computable batches, equal to the evaluation's own losses of
the input-blind predictor, and the learned / not learned verdicts."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvl.models.volta import objectives as obj
from jaxvl.pretrain.chance import (
    LEARNED_MARGIN,
    chance_levels,
    evaluation_targets,
    itm_chance,
    learned_table,
    mlm_chance,
    mrc_kl_chance,
    mrc_xe_chance,
    mrfr_chance,
    verdicts,
)
from jaxvl.pretrain.loss import ObjectiveConfig, mask_batch

LOG2 = math.log(2)


def test_hand_computed_levels():
    # MLM: masked tokens 3, 3, 5 -> q = (2/3, 1/3); one batch: their entropy
    h = -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)
    assert mlm_chance([np.array([[3, 3, -1], [5, -1, -1]])]) == pytest.approx(h)
    # two batches: each batch's mean, averaged (batch 1: -log(2/3), batch 2: the mean of -log(2/3), -log(1/3))
    two = mlm_chance([np.array([[3, -1]]), np.array([[3, 5]])])
    assert two == pytest.approx((-math.log(2 / 3) + (-math.log(2 / 3) - math.log(1 / 3)) / 2) / 2)
    assert mlm_chance([np.full((2, 3), -1)]) is None
    # ITM: half mismatched -> log 2; no negatives (objective 2) -> none
    assert itm_chance([np.array([0, 1, 0, 1])]) == pytest.approx(LOG2)
    assert itm_chance([np.array([0, 0, 0, 1])]) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert itm_chance([np.zeros(4, np.int32)]) is None
    # MRC-KL: two masked regions, one-hot on different classes -> mean (1/2, 1/2), KL log 2 each; unmasked ignored
    probs = np.array([[[1.0, 0.0], [0.0, 1.0], [0.3, 0.7]]])
    labels = np.array([[1, 1, -1]])
    assert mrc_kl_chance([probs], [labels]) == pytest.approx(LOG2)
    # MRC-XE: classes 0, 0, 1 with confidences 1, 1, 0.5 -> q = (2, 0.5) / 2.5
    ids, conf = np.array([[0, 0, 1, 1]]), np.array([[1.0, 1.0, 0.5, 0.9]])
    want = (-2 * math.log(0.8) - 0.5 * math.log(0.2)) / 3
    assert mrc_xe_chance([ids], [conf], [np.array([[1, 1, 1, 0]])]) == pytest.approx(want)
    # MRFR: features (0, 0) and (2, 2) -> mean (1, 1), squared error 1 per dim
    feats = np.array([[[0.0, 0.0], [2.0, 2.0], [9.0, 9.0]]])
    assert mrfr_chance([feats], [np.array([[1, 1, 0]])]) == pytest.approx(1.0)


def _constant_losses(targets: list[dict], k: int) -> dict[str, float]:
    """The evaluation's losses (``objectives``) of the blind predictor fit to ``targets``, batch means averaged."""
    tok = np.concatenate([t["token_labels"][t["token_labels"] >= 0] for t in targets])
    q_tok = np.bincount(tok, minlength=k) / tok.size
    regions = [t["region_labels"] == 1 for t in targets]
    m_kl = np.concatenate([t["cls_prob"][r] for t, r in zip(targets, regions, strict=True)]).mean(0)
    ids = np.concatenate([t["objects_id"][r] for t, r in zip(targets, regions, strict=True)])
    conf = np.concatenate([t["objects_conf"][r] for t, r in zip(targets, regions, strict=True)])
    q_xe = np.bincount(ids, weights=conf, minlength=k) / conf.sum()
    mean_feat = np.concatenate([t["original_features"][r] for t, r in zip(targets, regions, strict=True)]).mean(0)
    p = np.concatenate([t["is_mismatched"] for t in targets]).mean()

    def logits(q: np.ndarray, shape: tuple[int, ...]) -> jnp.ndarray:
        return jnp.broadcast_to(jnp.log(jnp.maximum(jnp.asarray(q, jnp.float32), 1e-30)), (*shape, len(q)))

    out: dict[str, list[float]] = {k: [] for k in ("mlm", "mrc_kl", "mrc_xe", "mrfr", "itm")}
    for t in targets:
        lab = jnp.asarray(t["region_labels"])
        out["mlm"].append(obj.mlm_loss(logits(q_tok, t["token_labels"].shape), jnp.asarray(t["token_labels"])))
        out["mrc_kl"].append(obj.mrc_kl_loss(logits(m_kl, lab.shape), jnp.asarray(t["cls_prob"]), lab))
        out["mrc_xe"].append(obj.mrc_xe_loss(logits(q_xe, lab.shape), jnp.maximum(jnp.asarray(t["objects_id"]), 0),
                                             jnp.asarray(t["objects_conf"]), lab))
        pred = jnp.broadcast_to(jnp.asarray(mean_feat, jnp.float32), t["original_features"].shape)
        out["mrfr"].append(obj.mrfr_loss(pred, jnp.asarray(t["original_features"]), lab))
        out["itm"].append(obj.itm_loss(logits(np.array([1 - p, p]), t["is_mismatched"].shape),
                                       jnp.asarray(t["is_mismatched"])))
    return {k: float(np.mean(v)) for k, v in out.items()}


def _batches(rng: np.random.Generator, n: int = 3, b: int = 8, t: int = 7, r: int = 5, k: int = 6,
             d: int = 4) -> list[dict]:
    out = []
    for _ in range(n):
        logits = rng.normal(size=(b, r, k + 1)) * 2
        cls_prob = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
        ids = np.concatenate([np.full((b, 1), 2), rng.integers(5, k, (b, t - 2)), np.full((b, 1), 3)], 1)
        out.append(dict(input_ids=ids.astype(np.int32), text_mask=np.ones((b, t), np.int32),
                        features=rng.normal(size=(b, r, d)).astype(np.float32),
                        boxes=np.tile(np.array([0, 0, 10, 10], np.float32), (b, r, 1)) + rng.uniform(0, 20, (b, r, 1)),
                        region_target_mask=np.ones((b, r), np.int32), cls_prob=cls_prob,
                        objects_id=cls_prob[..., 1:].argmax(-1).astype(np.int32),
                        objects_conf=cls_prob[..., 1:].max(-1).astype(np.float32)))
    return out


def test_levels_are_the_evaluation_losses_of_the_blind_predictor():
    """Through ``evaluation_targets`` (the real masking), each level equals the ``objectives`` loss of the
    constant prediction, averaged over batches as the evaluation averages; objective 2 has no ITM level."""
    batches = _batches(np.random.default_rng(0))
    ocfg = ObjectiveConfig(mask_id=4, cls_id=2, sep_id=3, objective=1, token_prob=0.4, region_prob=0.3)
    targets = evaluation_targets(batches, 7, ocfg, vocab_size=9, add_global=None)
    levels = chance_levels(targets)
    assert set(levels) == {"mlm", "mrc_kl", "mrc_xe", "mrfr", "itm"}
    want = _constant_losses(targets, 9)
    for name, value in levels.items():
        assert value == pytest.approx(want[name], rel=1e-5), name
    assert levels["mlm"] <= math.log(9)
    # one compiled masking program draws what mask_batch draws op by op (the evaluation's key of batch 0)
    mask_key, _ = jax.random.split(jax.random.fold_in(jax.random.key(7), 0))
    _, eager = mask_batch(mask_key, dict(batches[0]), ocfg, 9, None)
    for name, value in eager.items():
        np.testing.assert_array_equal(targets[0][name], np.asarray(value), err_msg=name)
    # the same seed gives the same draws; objective 2: no negatives, so no ITM level
    assert chance_levels(evaluation_targets(batches, 7, ocfg, 9, None)) == levels
    two = ObjectiveConfig(mask_id=4, cls_id=2, sep_id=3, objective=2, token_prob=0.4, region_prob=0.3)
    assert "itm" not in chance_levels(evaluation_targets(batches, 7, two, 9, None))
    no_text = chance_levels(evaluation_targets(batches, 7, two, 9, None, token_prob=0.0), ("mlm", "mrc_kl"))
    assert set(no_text) == {"mrc_kl"}


def test_verdicts_and_table():
    chance = {"mlm": 2.0, "itm": LOG2, "mrc_kl": 1.0, "mrc_xe": 1.5}
    losses = {"mlm": 0.5, "itm": 0.68, "mrc_kl": (1 - LEARNED_MARGIN) * 1.0, "mrc_xe": 0.2, "loss": 9.0}
    rows = verdicts(losses, chance, {"mlm", "itm", "mrc_kl"}, member="m")
    assert [(r.objective, r.verdict) for r in rows] == [("mlm", "learned"), ("mrc_kl", "learned"),
                                                        ("itm", "not learned")]
    assert rows[0].gain == pytest.approx(0.75) and rows[1].gain == pytest.approx(LEARNED_MARGIN)
    assert not verdicts({"mrc_kl": 0.96}, chance, {"mrc_kl"})[0].learned
    # an untrained model scores above chance: not learned
    assert not verdicts({"mlm": 2.3}, {"mlm": 2.0}, {"mlm"})[0].learned
    table = learned_table(rows, {"m": {"mrc_xe"}}, step=600)
    assert "at step 600" in table and "| m | ITM | 0.6800 | 0.6931 | +1.9% | not learned |" in table
    assert "m: not trained, so not judged: MRC-XE." in table
    assert all(len(line) <= 120 for line in table.splitlines())
    single = learned_table(verdicts(losses, chance, {"mlm"}))
    assert "| objective | eval loss |" in single and "| MLM | 0.5000 | 2.0000 | +75.0% | learned |" in single

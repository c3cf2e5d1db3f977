"""Matched controls and calibrated verdicts of the cross-modal ablation (issue 13, section 0).

(a) the control draws (``jaxvl.ablation.controls``): as many units as the condition removes, never an
aligned one, never ``[IMG]`` / ``[CLS]`` / ``[SEP]`` / padding, fixed per example whatever the batch;
(b) the verdict rule and the report's effect columns on hand-made numbers; (c) the calibration (slow):
tiny UNITERs trained on worlds with nothing planted (3 seeds x 2 recipes) give no ``found``, and a world
with both directions planted gives ``found`` for vis4lang and lang4vis (``tests/verdict_worlds.py``).
"""

import functools

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from verdict_worlds import Case, calibrate

from jaxvl.ablation.conditions import alignment, caption_positions, lang4vis_masked, vis4lang_ablated
from jaxvl.ablation.controls import draw_matched, unit_priorities
from jaxvl.ablation.data import AblationPipelineConfig, ablation_dataset, scan_ablation, world_ablation_source
from jaxvl.ablation.report import tidy_rows
from jaxvl.ablation.sweep import AblationResult, AblationSpec, check_ablation, run_ablation, stack_params
from jaxvl.ablation.verdicts import EFFECT_FLOOR_BITS, verdict, verdict_table
from jaxvl.configs import load_config
from jaxvl.data.synthetic import World, WorldConfig
from jaxvl.data.tokenizer import Tokenizer
from jaxvl.models import BatchError, get_model
from jaxvl.models.volta.presets import single_stream_plan
from jaxvl.runtime.compile import FAST_COMPILE
from jaxvl.runtime.sharding import make_mesh

T = 20


@functools.cache
def setup():
    """A world with several objects per image (phrases of 3 sub-words in captions of 5 to 9), its batches."""
    world = World(WorldConfig(num_images=8, seed=3))
    tok = Tokenizer.from_words(world.vocabulary())
    source = world_ablation_source(world, range(8))
    cfg = AblationPipelineConfig(batch_size=8, max_seq_length=T)
    index = scan_ablation(source, tok, cfg)
    return tok, source, cfg, index


def one_batch() -> dict[str, jnp.ndarray]:
    tok, source, cfg, index = setup()
    rows = list(ablation_dataset(source, tok, AblationPipelineConfig(batch_size=len(index), max_seq_length=T), index,
                                 shard=grain.sharding.NoSharding()))[0]
    return {k: jnp.asarray(v) for k, v in rows.items()}


# ------------------------------------------------------------------------------ (a) control draws


def test_draw_matched_takes_the_lowest_priorities_among_the_eligible():
    eligible = jnp.array([[1, 1, 0, 1, 1], [0, 1, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    priority = jnp.array([[0.5, 0.1, 0.0, 0.9, 0.3]] * 3)
    chosen = np.asarray(draw_matched(eligible, jnp.array([2, 3, 0]), priority))
    np.testing.assert_array_equal(chosen, [[0, 1, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]])  # row 1: short
    p = np.asarray(unit_priorities(jnp.array([7, 7, 8]), 5, 0))
    np.testing.assert_array_equal(p[0], p[1])  # keyed by the example, not its row
    assert not np.array_equal(p[0], p[2])
    assert not np.array_equal(p[0], np.asarray(unit_priorities(jnp.array([7]), 5, 1))[0])  # streams differ


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.9])
def test_region_controls_match_counts_and_avoid_aligned_rows(threshold):
    batch = one_batch()
    real = np.asarray(batch["region_target_mask"]).astype(bool)  # [IMG] and padding rows are 0
    aligned = np.asarray(alignment(batch, threshold))
    free = real & ~aligned
    control = np.asarray(vis4lang_ablated(batch, 1, threshold, True))
    assert not (control & ~free).any()  # never an aligned, [IMG] or padding row
    np.testing.assert_array_equal(control.sum(-1), np.minimum(aligned.sum(-1), free.sum(-1)))
    np.testing.assert_array_equal(np.asarray(vis4lang_ablated(batch, 2, threshold, True)), free)  # all: the rest
    assert not np.asarray(vis4lang_ablated(batch, 0, threshold, True)).any()
    np.testing.assert_array_equal(np.asarray(vis4lang_ablated(batch, 1, threshold, False)), aligned)
    np.testing.assert_array_equal(control, np.asarray(vis4lang_ablated(batch, 1, threshold, True)))  # fixed


def test_token_controls_match_counts_and_avoid_the_phrase():
    batch = one_batch()
    caption = np.asarray(caption_positions(batch["text_mask"]))  # no [CLS], [SEP] or padding
    # the first half of the examples get phrases of all but their first sub-word: too few others to match
    long_phrase = caption & (np.arange(T) > 1) & (np.arange(len(caption)) < len(caption) // 2)[:, None]
    batch["phrase_mask"] = jnp.where(jnp.asarray(long_phrase), 1, batch["phrase_mask"])
    phrase = np.asarray(batch["phrase_mask"]).astype(bool)
    free = caption & ~phrase
    control = np.asarray(lang4vis_masked(batch, 1, True))
    assert not (control & ~free).any()
    np.testing.assert_array_equal(control.sum(-1), np.minimum(phrase.sum(-1), free.sum(-1)))
    assert (control.sum(-1) == phrase.sum(-1)).any() and (free.sum(-1) < phrase.sum(-1)).any()  # both cases
    np.testing.assert_array_equal(np.asarray(lang4vis_masked(batch, 2, True)), free)
    np.testing.assert_array_equal(np.asarray(lang4vis_masked(batch, 1, False)), phrase)
    # the draw follows the example, not its row: reversed rows give reversed draws
    flipped = np.asarray(lang4vis_masked(jax.tree.map(lambda a: a[::-1], batch), 1, True))
    np.testing.assert_array_equal(flipped, control[::-1])


def test_spec_members_and_checks():
    spec = AblationSpec(3, thresholds=(0.3, 0.5), control_threshold=0.5)
    assert [(m.condition, m.threshold) for m in spec.members("vis4lang") if m.control] == [("object", 0.5),
                                                                                           ("all", 0.5)]
    assert [(m.condition, m.threshold) for m in spec.members("lang4vis") if m.control] == [("phrase", 0.5),
                                                                                           ("all", 0.5)]
    assert not any(m.control for m in AblationSpec(3).members("lang4vis"))  # no controls unless asked
    with pytest.raises(ValueError, match="control_threshold=0.7 is not one of the IoT thresholds"):
        AblationSpec(3, thresholds=(0.5,), control_threshold=0.7)


@functools.cache
def swept(batch_size: int) -> AblationResult:
    tok, source, _, index = setup()
    cfg = AblationPipelineConfig(batch_size=batch_size, max_seq_length=T)
    batches = list(ablation_dataset(source, tok, cfg, index, shard=grain.sharding.NoSharding()))
    model = get_model("uniter", tiny=True, vocab_size=tok.vocab_size, num_object_classes=20,
                      **single_stream_plan(1).to_dict())
    inputs = {k: batches[0][k][:1] for k in ("input_ids", "features", "locations")}
    init = jax.jit(model.init, compiler_options=FAST_COMPILE)
    params = stack_params([nn.meta.unbox(init(jax.random.key(0), **inputs)["params"])])
    spec = AblationSpec(tok.mask_id, thresholds=(0.5,), control_threshold=0.5)
    if batch_size == 8:
        with pytest.raises(BatchError, match="'example' is missing"):
            check_ablation(model, params, {k: v for k, v in batches[0].items() if k != "example"}, spec,
                           index.mean_feature)
    return run_ablation(model, params, batches, spec, index.mean_feature, make_mesh(), compiler_options=FAST_COMPILE)


def test_sweep_controls_do_not_depend_on_the_batch():
    small, large = swept(8), swept(16)
    for task in ("vis4lang", "lang4vis"):
        for metric, values in small.values[task].items():
            np.testing.assert_allclose(values, large.values[task][metric], atol=1e-4, err_msg=f"{task} {metric}")
    members = small.members["vis4lang"]
    obj, ctl = (next(i for i, m in enumerate(members) if m.condition == "object" and m.control == c)
                for c in (False, True))
    assert small.control_of("vis4lang", obj) == ctl and small.control_of("vis4lang", ctl) is None
    removed = small.stats["vis4lang_ablated"]
    assert (removed[ctl] <= removed[obj]).all() and (removed[ctl] == removed[obj]).any()
    np.testing.assert_array_equal(small.stats["vis4lang_ablated"], large.stats["vis4lang_ablated"])


# ------------------------------------------------------------------------------ (b) the verdict rule


def test_verdict_rule():
    f = EFFECT_FLOOR_BITS
    assert verdict(f + 0.01, f + 1.0) == "found"
    assert verdict(-f - 1.0, -f - 0.01) == "opposite"
    assert verdict(f / 10, f / 2) == "not found"  # excludes zero, not the floor: no finding
    assert verdict(-f / 2, -f / 10) == "not found"
    assert verdict(-1.0, 1.0) == "not found"
    assert verdict(None, None) is None
    assert verdict(0.3, 0.5, floor=0.4) == "not found"
    assert load_config("ablate").verdict_floor == EFFECT_FLOOR_BITS  # the config's default is the measured floor


N = 60


def hand_result() -> AblationResult:
    """One model; per example: vis4lang object +1.0 vs its control +0.2 (found), all +0.5 vs +0.5 (not found);
    lang4vis phrase -1.0 vs 0 (opposite), all +0.3 vs +0.25 (excludes zero, under the floor)."""
    spec = AblationSpec(4, thresholds=(0.5,), control_threshold=0.5)
    members = {t: spec.members(t) for t in ("vis4lang", "lang4vis")}
    rng = np.random.default_rng(0)
    base = rng.normal(5.0, 1.0, N)

    def noise():
        return rng.normal(0.0, 0.05, N)

    # vis4lang members: none, object, all, object control, all control
    mlm = np.stack([base, base + 1.0 + noise(), base + 0.5 + noise(), base + 0.2 + noise(), base + 0.5 + noise()])
    # lang4vis members: none, phrase, all, phrase control, all control
    kl = np.stack([base, base - 1.0 + noise(), base + 0.3 + noise(), base + noise(), base + 0.25 + noise()])
    short = np.arange(N) < 7  # 7 examples' phrase controls masked fewer sub-words
    stats = {"phrase_tokens": np.full(N, 3), "vis4lang_ablated": np.tile([[0], [2], [6], [2], [4]], (1, N)),
             "num_aligned": np.full((5, N), 2), "has_target": np.ones((5, N), bool),
             "target_index": np.ones((5, N), int),
             "text_masked": np.stack([np.zeros(N), np.full(N, 3), np.full(N, 5), np.where(short, 2, 3),
                                      np.full(N, 2)]).astype(int)}
    return AblationResult(("m",), members, np.arange(N), {"vis4lang": {"mlm": mlm[None]},
                                                          "lang4vis": {"mrc_kl": kl[None]}}, stats, spec.quirks)


def test_effects_and_verdicts_of_tidy_rows():
    res = hand_result()
    rows = {(r["task"], r["condition"]): r for r in tidy_rows(res, n_boot=500)}
    assert len(rows) == 6  # controls have no rows of their own
    mlm, kl = res.values["vis4lang"]["mlm"][0], res.values["lang4vis"]["mrc_kl"][0]
    expect = {("vis4lang", "object"): (mlm, 1, 3, "found", 0), ("vis4lang", "all"): (mlm, 2, 4, "not found", None),
              ("lang4vis", "phrase"): (kl, 1, 3, "opposite", 7), ("lang4vis", "all"): (kl, 2, 4, "not found", None)}
    for key, (values, m, c, want, short) in expect.items():
        r = rows[key]
        assert r["delta"] == pytest.approx((values[m] - values[0]).mean())
        assert r["control_delta"] == pytest.approx((values[c] - values[0]).mean())
        assert r["effect"] == pytest.approx(r["delta"] - r["control_delta"])
        assert r["effect_low"] < r["effect"] < r["effect_high"]
        assert (r["verdict"], r["control_shortfall"]) == (want, short), key
    lang_all = rows[("lang4vis", "all")]
    assert lang_all["effect_low"] > 0 and lang_all["effect_high"] < EFFECT_FLOOR_BITS  # significant, below the floor
    assert rows[("vis4lang", "none")]["verdict"] is None and rows[("vis4lang", "none")]["effect"] is None


def test_verdict_table():
    table = verdict_table(tidy_rows(hand_result(), n_boot=200))
    lines = table.splitlines()
    assert lines[0].startswith("Verdicts at IoT>0.5, in bits") and f"above {EFFECT_FLOOR_BITS:g} bits" in lines[1]
    body = [line.split(" | ") for line in lines if line.startswith("| m |")]
    assert [(b[1], b[-1]) for b in body] == [("MLM object", "found |"), ("MLM all", "not found |"),
                                             ("MRC-KL phrase", "opposite |"), ("MRC-KL all", "not found |")]
    assert "lang4vis phrase control had too few non-aligned units to match its condition in 7 of 60" in table
    assert max(len(line) for line in lines) <= 120


# ------------------------------------------------------------------------------ (c) calibration

@functools.cache
def calibration() -> list[dict]:
    """The demo's recipe on 3 worlds with nothing planted and one with both directions planted; VOLTA's
    default on 3 with nothing planted (1200 steps each; ``tests/verdict_worlds.py``)."""
    nothing = [Case("nothing", s) for s in range(3)]
    return calibrate({"demo": [*nothing, Case("planted", 0)], "volta": nothing})


@pytest.mark.slow
def test_worlds_with_nothing_planted_give_no_finding():
    rows = [r for r in calibration() if r["kind"] == "nothing" and r["verdict"] is not None]
    assert {(r["recipe"], r["seed"]) for r in rows} == {(p, s) for p in ("demo", "volta") for s in range(3)}
    found = [r for r in rows if r["verdict"] != "not found"]
    assert not found, found


@pytest.mark.slow
def test_a_world_with_both_directions_planted_gives_found():
    rows = {(r["task"], r["condition"], r["metric"]): r for r in calibration() if r["kind"] == "planted"}
    for key in (("vis4lang", "object", "mlm"), ("vis4lang", "all", "mlm"), ("lang4vis", "phrase", "mrc_kl"),
                ("lang4vis", "all", "mrc_kl")):
        assert rows[key]["verdict"] == "found", rows[key]

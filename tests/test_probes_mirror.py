"""The mirror probe: the box flip and the whole-word swap as pure functions, the compiled four-condition program
against a per-condition loop of the model (tiny UNITER and LXMERT, items of different text lengths and region
counts), the MLM targets per condition, summaries and verdicts, ORT's flip invariance, and `jaxvl probe mirror`
end to end with its bad inputs as one line."""

from __future__ import annotations

import csv
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvl.data.tokenizer import Tokenizer
from jaxvl.models import get_model
from jaxvl.models.volta.model import VLOutput
from jaxvl.probes.mirror import (
    CONDITIONS,
    FLIPPED,
    SWAPPED,
    MirrorProgram,
    MirrorResult,
    MirrorWords,
    flip_locations,
    flip_rows,
    parse_mirror_words,
    position_table,
    run_mirror,
    select_mirror_items,
    swap_words,
)
from jaxvl.probes.mirror_run import caption_filter
from jaxvl.probes.pairs import PairItems, itm_match_score
from jaxvl.runtime.compile import FAST_COMPILE

WORDS = ("a", "the", "cat", "dog", "left", "right", "of", "on", "is", "b", "##right", "##over", "up", "down")


@functools.cache
def tokenizer() -> Tokenizer:
    return Tokenizer.from_words(WORDS)


def boxes(rng: np.random.Generator, shape: tuple[int, ...], num_locs: int = 5) -> np.ndarray:
    """Valid normalised boxes [..., num_locs]: x1 < x2, y1 < y2 in [0, 1], the area last."""
    xy = rng.uniform(0.0, 0.6, (*shape, 2))
    x2y2 = xy + rng.uniform(0.01, 0.4, (*shape, 2))
    area = (x2y2 - xy).prod(-1, keepdims=True)
    return np.concatenate([xy, x2y2, area], -1)[..., :num_locs].astype(np.float32)


# ------------------------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("add_global", ["first", "last", None])
def test_flip_is_an_involution_that_leaves_global_and_padded_rows(add_global):
    rng = np.random.default_rng(0)
    locs = boxes(rng, (3, 6))
    mask = np.ones((3, 6), np.int32)
    g = {"first": 0, "last": -1, None: None}[add_global]
    pad = [3, 4] if add_global != "first" else [4, 5]
    mask[1, pad] = 0
    locs[1, pad] = 0.0  # padding rows are zeros, as the data pipeline writes them
    if g is not None:
        locs[:, g] = [0.0, 0.0, 1.0, 1.0, 1.0]
    rows = flip_rows(mask, add_global)
    assert rows.sum() == mask.sum() - (3 if g is not None else 0)
    out = flip_locations(locs, rows)
    np.testing.assert_array_equal(out[~rows], locs[~rows])  # global and padded rows untouched, bit for bit
    np.testing.assert_allclose(out[rows][:, 0], 1 - locs[rows][:, 2])
    np.testing.assert_allclose(out[rows][:, 2], 1 - locs[rows][:, 0])
    np.testing.assert_array_equal(out[rows][:, [1, 3, 4]], locs[rows][:, [1, 3, 4]])  # y and area kept
    assert (out[..., 2] >= out[..., 0]).all() and out.min() >= 0 and out.max() <= 1
    # an involution up to the rounding of 1 - x in float32 (half an ulp of 1: 2^-24)
    np.testing.assert_allclose(flip_locations(out, rows), locs, rtol=0, atol=2.0 ** -24)
    np.testing.assert_array_equal(flip_locations(flip_locations(out, rows), rows), out)  # exact on its image
    dyadic = np.round(locs * 64) / 64
    np.testing.assert_array_equal(flip_locations(flip_locations(dyadic, rows), rows), dyadic)
    # jax in, jax out: the same numbers (the compiled program uses this path)
    np.testing.assert_array_equal(np.asarray(jax.jit(flip_locations)(jnp.asarray(locs), jnp.asarray(rows))), out)


def test_flip_layouts():
    rng = np.random.default_rng(1)
    four = boxes(rng, (2, 3), num_locs=4)
    rows = np.ones((2, 3), bool)
    np.testing.assert_array_equal(flip_locations(four, rows), flip_locations(boxes(np.random.default_rng(1), (2, 3)),
                                                                             rows)[..., :4])
    for num_locs in (2, 3, 6, 7):
        with pytest.raises(ValueError, match=f"box locations with {num_locs} values: the mirror flip knows"):
            flip_locations(np.zeros((1, 2, num_locs), np.float32), np.ones((1, 2), bool))


def test_parse_mirror_words():
    assert parse_mirror_words("left:right") == (("left", "right"),)
    assert parse_mirror_words(" Left:Right , up:down,") == (("left", "right"), ("up", "down"))
    for bad, why in (("left", "not a pair"), ("left:left", "not a pair"), ("a:b:c", "not a pair"),
                     ("left:", "not a pair"), ("left:right,right:up", "'right' is in two pairs"), ("", "no word pair")):
        with pytest.raises(ValueError, match=f"config mirror.words=.*{why}"):
            parse_mirror_words(bad)


def encode(captions, max_len: int = 16) -> tuple[np.ndarray, np.ndarray]:
    tok = tokenizer()
    pairs = [tok.encode(c, max_len) for c in captions]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def test_whole_word_swap_leaves_pieces_and_substrings():
    tok = tokenizer()
    words = MirrorWords.from_tokenizer(tok, "left:right")
    caption = "the leftover cat is left of a bright dog on the right"
    assert tok.tokenize(caption) == ["the", "left", "##over", "cat", "is", "left", "of", "a", "b", "##right", "dog",
                                     "on", "the", "right"]
    ids, mask = encode([caption, "right", "a cat left", "leftover", "the dog on the up"])
    where = words.positions(ids, mask)
    # caption 0: the second "left" (position 6) and the last "right" (14), not "left ##over" nor "b ##right"
    assert np.flatnonzero(where[0]).tolist() == [6, 14]
    assert np.flatnonzero(where[1]).tolist() == [1] and np.flatnonzero(where[2]).tolist() == [3]
    assert not where[3].any() and not where[4].any() and not where[:, 0].any()  # never [CLS], [SEP] or padding
    swapped = swap_words(ids, where, words.table(tok.vocab_size))
    assert tok.decode(swapped[0]) == "the leftover cat is right of a bright dog on the left"
    assert [tok.decode(r) for r in swapped[1:]] == ["left", "a cat right", "leftover", "the dog on the up"]
    np.testing.assert_array_equal(swapped[~where], ids[~where])
    np.testing.assert_array_equal(swap_words(swapped, where, words.table(tok.vocab_size)), ids)  # an involution
    # two pairs; jax in, jax out
    both = MirrorWords.from_tokenizer(tok, "left:right,up:down")
    table = both.table(tok.vocab_size)
    w2 = both.positions(ids, mask)
    assert tok.decode(swap_words(ids, w2, table)[4]) == "the dog on the down"
    np.testing.assert_array_equal(np.asarray(swap_words(jnp.asarray(ids), jnp.asarray(w2), jnp.asarray(table))),
                                  swap_words(ids, w2, table))
    positions, valid = position_table(where)
    assert positions.shape == (5, 2) and positions[0].tolist() == [6, 14] and valid.sum(1).tolist() == [2, 1, 1, 0, 0]
    kept, index = select_mirror_items(PairItems.from_batch(dict(
        input_ids=ids, text_mask=mask, features=np.zeros((5, 2, 3)), locations=np.zeros((5, 2, 5)),
        region_mask=np.ones((5, 2)))), words)
    assert index.tolist() == [0, 1, 2] and kept.n == 3 and (kept.input_ids == ids[:3]).all()


def test_words_outside_the_vocabulary_are_one_error():
    tok = tokenizer()
    with pytest.raises(ValueError, match=r"config mirror.words: 'north', 'south' are not word tokens of the vocab"):
        MirrorWords.from_tokenizer(tok, "left:right,north:south")
    with pytest.raises(ValueError, match=r"config mirror.words: '##over' is not a word token"):
        MirrorWords.from_tokenizer(tok, "##over:left")
    with pytest.raises(ValueError, match=r"config mirror.words: '\[mask\]' is not a word token"):
        MirrorWords.from_tokenizer(tok, "[MASK]:left")
    ids, mask = encode(["a cat", "the dog"])
    items = PairItems.from_batch(dict(input_ids=ids, text_mask=mask, features=np.zeros((2, 2, 3)),
                                      locations=np.zeros((2, 2, 5)), region_mask=np.ones((2, 2))))
    with pytest.raises(ValueError, match="none of the 2 items' captions holds a mirror word .*config mirror.words"):
        select_mirror_items(items, MirrorWords.from_tokenizer(tok, "left:right"))


def test_caption_filter_takes_whole_words():
    keep = caption_filter((("left", "right"),))
    assert keep("A cat on the LEFT.") and keep("left-hand dog") and keep("dog,right") and keep("the dog_right")
    assert not keep("leftover cat") and not keep("a bright dog") and not keep("copyright")


# ------------------------------------------------------------------------------------------- tiny models

CAPTIONS = ("a cat left of a dog", "the dog on the right", "right", "the cat is left of a dog on the right",
            "a dog on the left of the cat")  # 5 items: the last block of 4 is padded
REGIONS = (3, 1, 4, 2, 3)
LT, LV = 14, 5  # a global [IMG] row + up to 4 regions


@functools.cache
def model_case(name: str) -> tuple:
    tok = tokenizer()
    model = get_model(name, tiny=True)
    cfg = model.cfg
    variables = jax.jit(model.init, compiler_options=FAST_COMPILE)(jax.random.key(2), **model.dummy_inputs(1, 4, 3))
    # BERT's init (std 0.02) barely mixes tokens and regions: redraw every kernel at unit gain (std 1 / sqrt(fan-in))
    # so that the boxes reach the text and a flip shows in the MLM and ITM outputs
    keys = iter(jax.random.split(jax.random.key(4), 1000))
    variables = jax.tree_util.tree_map_with_path(
        lambda p, x: jax.random.normal(next(keys), x.shape) / math.sqrt(x.shape[0])
        if "kernel" in jax.tree_util.keystr(p) else x, variables)
    rng = np.random.default_rng(3)
    n = len(CAPTIONS)
    ids, mask = encode(CAPTIONS, LT)
    lv = LV if cfg.add_global_imgfeat else LV - 1
    feats = rng.normal(size=(n, lv, cfg.v_feature_size)).astype(np.float32)
    locs, rm = boxes(rng, (n, lv)), np.zeros((n, lv), np.int32)
    off = 1 if cfg.add_global_imgfeat == "first" else 0
    for i, r in enumerate(REGIONS):
        rm[i, :r + off] = 1
        feats[i, r + off:], locs[i, r + off:] = 0.0, 0.0
        if off:
            locs[i, 0], feats[i, 0] = [0, 0, 1, 1, 1], feats[i, 1:r + 1].mean(0)
    items = PairItems.from_batch(dict(input_ids=ids, text_mask=mask, features=feats, locations=locs, region_mask=rm))
    return model, variables, items, tok


def loop_reference(model, variables, items: PairItems, words: MirrorWords, mask_id: int) -> dict[str, np.ndarray]:
    """Per item and condition, the model on that one input (trimmed to the item's own text length and region
    rows): mean -ln p of the condition's words at the masked mirror tokens, 2-way accuracy, ITM match score."""
    table = words.table(model.cfg.vocab_size)
    apply = jax.jit(lambda ids, feats, locs: model.apply(variables, ids, feats, locs), compiler_options=FAST_COMPILE)
    out = {k: np.zeros((4, items.n)) for k in ("mlm_nats", "mlm_acc", "itm")}
    for i in range(items.n):
        t, r = int(items.text_mask[i].sum()), int(items.region_mask[i].sum())
        ids, feats = items.input_ids[i:i + 1, :t], items.features[i:i + 1, :r]
        where = words.positions(ids, items.text_mask[i:i + 1, :t])
        pos = np.flatnonzero(where[0])
        rows = flip_rows(items.region_mask[i:i + 1, :r], model.cfg.add_global_imgfeat)
        for c, (flip, swap) in enumerate(zip(FLIPPED, SWAPPED, strict=True)):
            text = swap_words(ids, where, table) if swap else ids
            locs = items.locations[i:i + 1, :r]
            locs = flip_locations(locs, rows) if flip else locs
            masked = np.where(where, mask_id, text)
            lp = np.asarray(jax.nn.log_softmax(apply(masked, feats, locs).mlm_logits[0, pos], -1))
            target = text[0, pos]
            lt, lf = lp[np.arange(len(pos)), target], lp[np.arange(len(pos)), table[target]]
            out["mlm_nats"][c, i] = -lt.mean()
            out["mlm_acc"][c, i] = ((lt > lf) + 0.5 * (lt == lf)).mean()
            out["itm"][c, i] = float(itm_match_score(np.asarray(apply(text, feats, locs).itm_logits))[0])
    return out


@pytest.mark.parametrize("name", ["uniter", pytest.param("lxmert", marks=pytest.mark.slow)])
def test_program_equals_a_per_condition_loop(name):
    model, variables, items, tok = model_case(name)
    words = MirrorWords.from_tokenizer(tok, "left:right")
    program = MirrorProgram(model, tok.mask_id, block=4, compiler_options=FAST_COMPILE)
    result = program(variables, items, words)
    want = loop_reference(model, variables, items, words, tok.mask_id)
    assert result.mlm_nats.shape == (4, 5) and result.n_targets.tolist() == [1, 1, 1, 2, 1]
    for k in ("mlm_nats", "itm"):
        np.testing.assert_allclose(getattr(result, k), want[k], rtol=1e-5, atol=1e-5, err_msg=k)
    np.testing.assert_array_equal(result.mlm_acc, want["mlm_acc"])
    # the flip acts (the model reads box locations), and the swap's masked input is orig's: only the targets move
    assert np.abs(result.mlm_nats[1] - result.mlm_nats[0]).max() > 1e-3
    assert np.abs(result.itm[1] - result.itm[0]).max() > 1e-2
    np.testing.assert_array_equal(result.mlm_acc[2], 1 - result.mlm_acc[0])  # the same input, target and foil swapped
    np.testing.assert_array_equal(result.mlm_acc[3], 1 - result.mlm_acc[1])
    # one block of 8 (3 padding items), the same numbers
    again = MirrorProgram(model, tok.mask_id, block=8, compiler_options=FAST_COMPILE)(variables, items, words)
    np.testing.assert_allclose(again.itm, result.itm, atol=1e-5)


def test_mlm_targets_per_condition():
    """A word function that ignores the model: p(left) = 0.7, p(right) = 0.2 everywhere. orig / flip score the
    caption's own words, swap / flip+swap the swapped ones."""
    model, variables, items, tok = model_case("uniter")
    words = MirrorWords.from_tokenizer(tok, "left:right")
    left, right = tok.token_to_id("left"), tok.token_to_id("right")
    probs = np.full(model.cfg.vocab_size, 0.1 / (model.cfg.vocab_size - 2))
    probs[[left, right]] = 0.7, 0.2
    logp = jnp.log(jnp.asarray(probs, jnp.float32))

    def word_fn(out: VLOutput) -> jax.Array:
        return jnp.broadcast_to(logp, out.mlm_logits.shape)

    result = MirrorProgram(model, tok.mask_id, block=4, word_fn=word_fn, score_fn=lambda out: out.text[:, 0, 0],
                           compiler_options=FAST_COMPILE)(variables, items, words)
    a, b = -math.log(0.7), -math.log(0.2)
    # items: left, right, right, left + right, left
    own = np.array([a, b, b, (a + b) / 2, a])
    swapped = np.array([b, a, a, (a + b) / 2, b])
    np.testing.assert_allclose(result.mlm_nats, np.stack([own, own, swapped, swapped]), rtol=1e-6)
    np.testing.assert_array_equal(result.mlm_acc, [[1, 0, 0, 0.5, 1], [1, 0, 0, 0.5, 1], [0, 1, 1, 0.5, 0],
                                                   [0, 1, 1, 0.5, 0]])


def test_items_without_a_mirror_word_and_block_errors():
    model, variables, items, tok = model_case("uniter")
    words = MirrorWords.from_tokenizer(tok, "up:down")
    with pytest.raises(ValueError, match="5 of 5 items hold no mirror word"):
        MirrorProgram(model, tok.mask_id, block=4, compiler_options=FAST_COMPILE)(variables, items, words)
    with pytest.raises(ValueError, match="must be positive and 2 x block a multiple of the 8 devices"):
        MirrorProgram(model, tok.mask_id, block=3)
    result = run_mirror(model, variables, items, MirrorWords.from_tokenizer(tok, "left:right"), tok.mask_id, block=4,
                        compiler_options=FAST_COMPILE, itm_trained=False)
    assert result.n == 5 and result.dropped == 0 and not result.itm_trained and result.item_ids == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------------- summaries


def make_result(flip_shift: float, n: int = 40, seed: int = 0, itm_trained: bool = True) -> MirrorResult:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.5, 1.5, n)
    nats = np.stack([base, base + flip_shift + rng.normal(0, 0.05, n), base + 1.0, base + rng.normal(0, 0.05, n)])
    itm = np.stack([np.full(n, 2.0), 2.0 - 2 * flip_shift + rng.normal(0, 0.1, n), np.full(n, -1.0),
                    2.0 + rng.normal(0, 0.1, n)])
    return MirrorResult(nats, (nats[:, :] < 1.2).astype(float), itm, np.ones(n, np.int32), list(range(n)),
                        (("left", "right"),), itm_trained=itm_trained)


def test_summary_statistics_and_verdicts():
    r = make_result(1.0)
    s = r.summary(n_boot=200)
    assert s["n_items"] == 40 and s["n_targets"] == 40
    for c in range(4):
        assert s[f"mlm_nats/{CONDITIONS[c]}"] == pytest.approx(r.mlm_nats[c].mean())
    assert s["mlm_flip"] == pytest.approx((r.mlm_nats[1] - r.mlm_nats[0]).mean())
    assert s["mlm_swap"] == pytest.approx(1.0) and s["mlm_consistency"] == pytest.approx(
        np.abs(r.mlm_nats[3] - r.mlm_nats[0]).mean())
    assert s["mlm_flip_low"] <= s["mlm_flip"] <= s["mlm_flip_high"]
    assert s["itm_changed_swap"] == 1.0 and s["itm_changed_flip_swap"] == 0.0
    assert s["itm_contrast"] == pytest.approx((np.abs(r.itm[1] - 2) - np.abs(r.itm[3] - 2)).mean())
    v = r.verdict("m")
    assert v.startswith("MLM: m uses left/right geometry: flipping the boxes changes the loss of the caption's "
                        "left/right token by +1.0") and "the match score reads the side from the boxes" in v
    small = make_result(0.03)  # an interval above 0, but a mean under the 0.1-nat floor
    s = small.summary()
    assert s["mlm_flip_low"] > 0 and "MLM: no evidence that m uses left/right geometry" in small.verdict("m")
    assert "MLM: m uses" in small.verdict("m", floor=0.01)
    none = make_result(0.0)
    assert none.verdict("m").startswith("MLM: no evidence") and "ITM: no evidence" in none.verdict("m")
    untrained = make_result(1.0, itm_trained=False)
    assert "ITM: no verdict (an untrained head's scores)" in untrained.verdict("m")
    table = untrained.table("m")
    assert "UNTRAINED head" in table and "| flip+swap |" in table and "(untrained head)" in table
    rows = untrained.tidy_rows()
    assert len(rows) == 40 * 4 * 3 and rows[0] == dict(item=0, condition="orig", measure="mlm_nats",
                                                       value=float(untrained.mlm_nats[0, 0]))
    record = json.loads(json.dumps(untrained.as_dict()))
    assert len(record["items"]) == 40 and record["items"][0]["itm"]["flip+swap"] == untrained.itm[3, 0]
    assert record["units"]["mlm_nats"].startswith("nats") and "untrained" in record["units"]["itm"]


# ------------------------------------------------------------------------------------------- ORT captioner


@functools.cache
def captioner(legacy_plus_one: bool, legacy_size_ratio: bool):
    from jaxvl.models.ort.captioner import Captioner, CaptionerConfig

    model = Captioner(CaptionerConfig.tiny(legacy_plus_one=legacy_plus_one, legacy_size_ratio=legacy_size_ratio))
    return model, model.init(jax.random.key(0), **model.dummy_inputs())


def captioner_inputs(seed: int, dyadic: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    b, n = 3, 6
    relative = boxes(rng, (b, n), num_locs=4)
    if dyadic:
        relative = np.round(relative * 64) / 64
    mask = np.ones((b, n), np.int32)
    mask[1, -2:] = 0
    relative[1, -2:] = 0.0
    tokens = rng.integers(1, 20, (b, 7))
    tokens[:, 0] = 0
    return dict(features=rng.normal(size=(b, n, 16)).astype(np.float32), boxes=relative, mask=mask,
                tokens=tokens.astype(np.int32))


@pytest.mark.parametrize("legacy_plus_one", [True, False])
@pytest.mark.parametrize("legacy_size_ratio", [True, False])
def test_ort_captioner_is_flip_invariant(legacy_plus_one, legacy_size_ratio):
    """ORT's relative geometry (boxes [x_min, y_min, x_max, y_max] in [0, 1]; the flip x -> 1 - x gives
    x_min' = 1 - x_max, x_max' = 1 - x_min) sees only |cx_m - cx_n|, w, h and |cy_m - cy_n|: a box-only flip keeps
    the teacher-forced caption log-probs, in exact arithmetic, in both conventions. ``legacy_plus_one``'s
    w = x_max - x_min + 1 adds the same 1 to a width the flip keeps, so it stays invariant too (what it breaks is
    scale invariance, below).

    In float32: on boxes that are multiples of 1/64, 1 - x, the centres and the widths are exact, and the
    log-probs are bit for bit the same. On arbitrary boxes 1 - x rounds (2^-24 absolute), which the log-scaled
    displacement (times 100 in the sinusoid, and a log near the 1e-6 floor of the geometry term) amplifies: the
    log-probs then move by 1e-6 to 1e-2 over random draws (1e-5 to 1e-4 on this one, in every convention), as much
    as a 1-ulp jitter of the boxes moves them (checked), and far below the ~1 nat that moving one box by 0.3 of the
    image width makes (checked)."""
    model, variables = captioner(legacy_plus_one, legacy_size_ratio)
    run = jax.jit(lambda x: model.apply(variables, **x))
    for seed in range(3):
        x = captioner_inputs(seed, dyadic=True)
        flipped = dict(x, boxes=flip_locations(x["boxes"], x["mask"] > 0))
        assert not np.array_equal(flipped["boxes"], x["boxes"])
        np.testing.assert_array_equal(np.asarray(run(flipped)), np.asarray(run(x)))
    x = captioner_inputs(7, dyadic=False)
    base = np.asarray(run(x))
    flip = np.abs(np.asarray(run(dict(x, boxes=flip_locations(x["boxes"], x["mask"] > 0)))) - base).max()
    jitter = max(np.abs(np.asarray(run(dict(x, boxes=np.nextafter(x["boxes"], np.float32(d))))) - base).max()
                 for d in (0, 1))
    moved = x["boxes"].copy()
    moved[:, 0, [0, 2]] += 0.3  # one box moved right: a real change of the geometry
    real = np.abs(np.asarray(run(dict(x, boxes=moved))) - base).max()
    assert flip < 1e-3 and flip < 10 * jitter and real > 0.3 and real > 1000 * flip, (flip, jitter, real)


def test_ort_scale_invariance_is_what_legacy_plus_one_breaks():
    """A control that the geometry test can fail: scaling x by 1/2 keeps the paper convention's relative
    coordinates exactly (|dcx| / w and w_m / w_n are ratios) and changes ORT's legacy +1 ones."""
    from jaxvl.models.ort.geometry import box_relative_coordinates

    x = captioner_inputs(0, dyadic=True)["boxes"][:1, :4]
    half = x.copy()
    half[..., [0, 2]] *= 0.5
    rel = lambda b, p: np.asarray(box_relative_coordinates(jnp.asarray(b), legacy_plus_one=p))  # noqa: E731
    np.testing.assert_array_equal(rel(half, False)[..., [0, 2]], rel(x, False)[..., [0, 2]])
    assert np.abs(rel(half, True) - rel(x, True)).max() > 1e-2


# ------------------------------------------------------------------------------------------- the command

WORLD = "synthetic:num_images=32,val_images=8,spatial_relations=1"  # every caption says left or right
TINY = ["--config.fast_compile=True", "--config.progress=False", "--config.data.batch_size=8",
        "--config.data.max_seq_length=12", "--config.eval_every=0"]
PROBE = ["probe", "mirror", "--config", "probes:mirror,tiny", "--config.progress=False"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from jaxvl.cli import main

    run = tmp_path_factory.mktemp("mirror") / "uniter"
    assert main(["pretrain", "--config", "pretrain:uniter,tiny", "--workdir", str(run), "--config.steps=2",
                 f"--config.data.dataset={WORLD}", *TINY]) == 0
    return run


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxvl: error: "), err
    return lines[0]


@pytest.mark.slow
def test_probe_mirror_writes_the_report(checkpoint, tmp_path, capsys):
    from jaxvl.cli import main

    out = tmp_path / "mirror"
    assert main([*PROBE, "--workdir", str(out), f"--config.checkpoints={checkpoint}"]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "uniter" / "mirror.json").read_text())
    n = record["n_items"]
    assert 1 <= n <= 8 and len(record["items"]) == n and record["n_targets"] >= n
    assert record["split"] == "val" and record["max_seq_length"] == 12 and record["conditions"] == list(CONDITIONS)
    assert record["words"] == [["left", "right"]] and record["units"]["mlm_nats"].startswith("nats")
    assert len({r["image_id"] for r in record["items"]}) == n
    assert all(("left" in r["caption"].split()) or ("right" in r["caption"].split()) for r in record["items"])
    assert record["verdict"].startswith("MLM: ") and record["itm_trained"] is True
    with open(out / "uniter" / "mirror.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n * 4 * 3 and set(rows[0]) == {"item", "condition", "measure", "value"}
    assert {r["measure"] for r in rows} == {"mlm_nats", "mlm_acc", "itm"}
    assert {int(r["item"]) for r in rows} == {r["item"] for r in record["items"]}
    png = (out / "uniter" / "mirror.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "uniter" / "table.md").read_text()
    assert f"Mirror probe of uniter: n = {n} items" in table and "| flip+swap |" in table
    assert table.strip() in (out / "table.md").read_text() and "| MLM flip - orig (nats) |" in printed


@pytest.mark.slow
def test_probe_mirror_bad_inputs_are_one_line(checkpoint, tmp_path, capsys):
    from jaxvl.cli import main

    out = str(tmp_path / "out")
    args = [*PROBE, "--workdir", out, f"--config.checkpoints={checkpoint}"]
    assert main([*args, "--config.mirror.words=left:sideways"]) == 2
    assert "config mirror.words: 'sideways' is not a word token of the vocabulary" in _error_line(capsys)
    assert main([*args, "--config.mirror.words=left"]) == 2
    assert "config mirror.words='left': 'left' is not a pair" in _error_line(capsys)
    # "picture" and "shows" are world words, but spatial captions never use them
    assert main([*args, "--config.mirror.words=picture:shows"]) == 2
    line = _error_line(capsys)
    assert "captions with a whole-word picture/shows (config mirror.words) of 0 image(s)" in line
    assert main([*args, "--config.text_block=3"]) == 2
    assert "2 x block a multiple of the 8 devices" in _error_line(capsys)
    assert main(["probe", "mirror", "--config", "probes:emap,tiny", "--workdir", out,
                 f"--config.checkpoints={checkpoint}"]) == 2
    assert "`jaxvl probe mirror` runs probe 'mirror'" in _error_line(capsys)

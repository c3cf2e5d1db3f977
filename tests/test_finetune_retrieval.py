"""RetrievalProgram: blocked N x M scoring with on-device top-k and ranks equals a brute-force score matrix."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from jaxvl.data.regions import region_inputs
from jaxvl.data.synthetic import World, WorldConfig
from jaxvl.data.synthetic.foils import item_batch, labelled_items
from jaxvl.data.tokenizer import Tokenizer
from jaxvl.finetune.retrieval import (
    NO_INDEX,
    RetrievalProgram,
    count_ahead,
    itm_log_odds,
    itm_match_probability,
    merge_topk,
)
from jaxvl.metrics.retrieval import image_retrieval_ranks, score_matrix_metrics, text_retrieval_ranks
from jaxvl.models import get_model
from jaxvl.runtime.compile import FAST_COMPILE
from jaxvl.runtime.optimizer import OptimizerConfig, make_optimizer
from jaxvl.runtime.sharding import make_mesh

TEXT_LENS = (4, 6, 3, 5, 6, 4, 3)  # N = 7 captions
CAPTION_IMAGE = np.array([2, 0, 1, 3, 0, 2, 1])  # not grouped by image; images 0, 1, 2 have 2 captions
REGIONS = (3, 5, 4, 2)  # M = 4 images (regions include the global [IMG] row)
LT, LV = 7, 6


@functools.cache
def model_case(name: str) -> tuple:
    model = get_model(name, tiny=True)
    cfg = model.cfg
    variables = jax.jit(model.init, compiler_options=FAST_COMPILE)(jax.random.key(1), **model.dummy_inputs(1, 4, 3))
    rng = np.random.default_rng(5)
    n, m = len(TEXT_LENS), len(REGIONS)
    texts = [rng.integers(1, cfg.vocab_size, size=length).astype(np.int32) for length in TEXT_LENS]
    feats = [rng.normal(size=(r, cfg.v_feature_size)).astype(np.float32) for r in REGIONS]
    locs = [rng.uniform(size=(r, cfg.num_locs)).astype(np.float32) for r in REGIONS]
    text_batch = {"input_ids": np.full((n, LT), 7, np.int32), "text_mask": np.zeros((n, LT), np.int32)}
    image_batch = {"features": np.full((m, LV, cfg.v_feature_size), 5.0, np.float32),
                   "locations": np.zeros((m, LV, cfg.num_locs), np.float32), "region_mask": np.zeros((m, LV), np.int32)}
    for i, t in enumerate(texts):
        text_batch["input_ids"][i, :len(t)], text_batch["text_mask"][i, :len(t)] = t, 1
    for j, r in enumerate(REGIONS):
        image_batch["features"][j, :r], image_batch["locations"][j, :r] = feats[j], locs[j]
        image_batch["region_mask"][j, :r] = 1
    forward = jax.jit(lambda v, ids, f, loc: itm_match_probability(model.apply(v, ids, f, loc)),
                      compiler_options=FAST_COMPILE)
    dense = np.array([[float(forward(variables, texts[i][None], feats[j][None], locs[j][None])[0])
                       for j in range(m)] for i in range(n)])  # unpadded, one pair at a time
    return model, variables, text_batch, image_batch, dense


def program(name: str, k: int, **kw) -> RetrievalProgram:
    mesh = make_mesh(data=2, fsdp=2, devices=jax.devices()[:4])
    return RetrievalProgram(get_model(name, tiny=True), mesh, k=k, text_block=2, image_block=2,
                            compiler_options=FAST_COMPILE, **kw)


@functools.cache
def run(name: str, ties: str = "stable", cache_prefix: bool | None = None):
    model, variables, texts, images, _ = model_case(name)
    return program(name, len(REGIONS), ties=ties, cache_prefix=cache_prefix)(variables, texts, images,
                                                                               CAPTION_IMAGE)


def full_matrix(result) -> np.ndarray:
    """With k = M each caption's top-k holds all M images: the program's own score matrix."""
    s = np.full((len(TEXT_LENS), len(REGIONS)), np.nan)
    np.put_along_axis(s, result.text_topk_images, result.text_topk_scores, axis=1)
    assert not np.isnan(s).any()
    return s


def check_against_matrix(result, s: np.ndarray, ties: str) -> None:
    """Ranks, gold scores and both top-k lists equal numpy on the full matrix ``s``."""
    n = len(TEXT_LENS)
    k = result.text_topk_images.shape[1]
    np.testing.assert_array_equal(result.image_ranks, image_retrieval_ranks(s, CAPTION_IMAGE, ties))
    np.testing.assert_array_equal(result.text_ranks, text_retrieval_ranks(s, CAPTION_IMAGE, ties))
    np.testing.assert_array_equal(result.gold_scores, s[np.arange(n), CAPTION_IMAGE])
    rows = np.argsort(-s, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(result.text_topk_images, rows)
    cols = np.argsort(-s.T, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(result.image_topk_captions, cols)
    np.testing.assert_array_equal(result.image_topk_scores, np.take_along_axis(s.T, cols, 1))
    assert result.metrics() == pytest.approx(score_matrix_metrics(s, CAPTION_IMAGE, ties))


@pytest.mark.parametrize("name", ["uniter", pytest.param("lxmert", marks=pytest.mark.slow)])
def test_blocked_program_equals_brute_force(name):
    dense = model_case(name)[-1]
    result = run(name)
    s = full_matrix(result)
    np.testing.assert_allclose(s, dense, atol=2e-5)
    check_against_matrix(result, s, "stable")
    # the ranks against the per-pair loop's matrix, up to its float noise: candidates clearly above the gold score
    # count, clearly below do not (tiny random models score every pair near 0.5, so exact near-ties occur)
    tol, n = 3e-5, len(TEXT_LENS)
    gold = dense[np.arange(n), CAPTION_IMAGE][:, None]
    assert ((dense > gold + tol).sum(1) <= result.image_ranks).all()
    assert (result.image_ranks <= (dense > gold - tol).sum(1) - 1).all()
    best = [max(np.flatnonzero(CAPTION_IMAGE == j), key=lambda c: s[c, j]) for j in range(len(REGIONS))]
    best_gold = dense[best, np.arange(len(REGIONS))][None, :]
    assert ((dense > best_gold + tol).sum(0) <= result.text_ranks).all()
    assert (result.text_ranks <= (dense > best_gold - tol).sum(0) - 1).all()


@pytest.mark.slow
def test_prefix_cache_equals_whole_model():
    cached, whole = run("lxmert"), run("lxmert", cache_prefix=False)
    np.testing.assert_allclose(full_matrix(cached), full_matrix(whole), atol=1e-5)


def test_ties_counted_as_the_rule_says():
    """Scores rounded to 4 levels make many ties; both rules equal numpy on the program's own matrix."""
    model, variables, texts, images, _ = model_case("uniter")
    coarse = lambda out: jnp.round(itm_match_probability(out) * 4.0)  # noqa: E731
    for ties in ("stable", "optimistic"):
        result = program("uniter", len(REGIONS), ties=ties, score_fn=coarse)(variables, texts, images, CAPTION_IMAGE)
        s = full_matrix(result)
        assert len(np.unique(s)) < s.size // 2
        check_against_matrix(result, s, ties)


def test_smaller_k_keeps_the_best():
    model, variables, texts, images, _ = model_case("uniter")
    s = full_matrix(run("uniter"))
    pairs = []
    result = program("uniter", 2)(variables, texts, images, CAPTION_IMAGE, progress=pairs.append)
    check_against_matrix(result, s, "stable")
    assert sum(pairs) == len(TEXT_LENS) * len(REGIONS) and len(pairs) == 4 * 2  # 4 text x 2 image blocks


def test_merge_topk_across_blocks():
    rng = np.random.default_rng(0)
    r, c, k, blocks = 3, 4, 5, 4
    scores = rng.integers(0, 4, size=(r, c * blocks)).astype(np.float32)  # ties
    top_s, top_i = jnp.full((r, k), -jnp.inf), jnp.full((r, k), NO_INDEX, jnp.int32)
    for b in rng.permutation(blocks):  # any block order gives the same lists
        idx = jnp.arange(b * c, (b + 1) * c, dtype=jnp.int32)
        top_s, top_i = merge_topk(top_s, top_i, jnp.asarray(scores[:, b * c:(b + 1) * c]), idx)
    want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(np.asarray(top_i), want)
    np.testing.assert_array_equal(np.asarray(top_s), np.take_along_axis(scores, want, 1))
    # a padded candidate (-inf, NO_INDEX) never displaces a real one
    s2, i2 = merge_topk(jnp.full((1, 2), -jnp.inf), jnp.full((1, 2), NO_INDEX, jnp.int32),
                        jnp.array([[-jnp.inf, 1.0]]), jnp.array([NO_INDEX, 4], jnp.int32))
    assert np.asarray(i2).tolist() == [[4, NO_INDEX]] and np.asarray(s2)[0, 0] == 1.0


def test_count_ahead_rules():
    scores = jnp.array([[0.5, 0.7, 0.5, 0.5]])
    idx = jnp.arange(4)[None, :]
    valid = jnp.array([[True, True, True, False]])
    gold, gold_i = jnp.array([0.5]), jnp.array([2])
    assert int(count_ahead(scores, gold, gold_i, idx, valid, stable=True)[0]) == 2  # 0.7 and the earlier 0.5
    assert int(count_ahead(scores, gold, gold_i, idx, valid, stable=False)[0]) == 1


def test_log_odds_ranks_as_probability():
    model, variables, texts, images, _ = model_case("uniter")
    odds = program("uniter", len(REGIONS), score_fn=itm_log_odds)(variables, texts, images, CAPTION_IMAGE)
    prob = run("uniter")
    np.testing.assert_array_equal(odds.image_ranks, prob.image_ranks)
    np.testing.assert_array_equal(odds.text_ranks, prob.text_ranks)


def test_bad_inputs_fail_before_compiling():
    model, variables, texts, images, _ = model_case("uniter")
    p = program("uniter", 3)
    with pytest.raises(ValueError, match="'k' = 5 exceeds the 4 images"):
        program("uniter", 5)(variables, texts, images, CAPTION_IMAGE)
    with pytest.raises(ValueError, match="caption 3 is 4"):
        p(variables, texts, images, np.array([2, 0, 1, 4, 0, 2, 1]))
    with pytest.raises(ValueError, match="image 3 has no caption"):
        p(variables, texts, images, np.array([2, 0, 1, 1, 0, 2, 1]))
    with pytest.raises(ValueError, match="6 captions, 'input_ids' 7"):
        p(variables, texts, images, CAPTION_IMAGE[:6])
    with pytest.raises(ValueError, match="missing 'text_mask'"):
        p(variables, {"input_ids": texts["input_ids"]}, images, CAPTION_IMAGE)
    with pytest.raises(ValueError, match="'region_mask' of image 1"):
        p(variables, texts, {**images, "region_mask": images["region_mask"] * np.array([[1], [0], [1], [1]])},
          CAPTION_IMAGE)
    with pytest.raises(ValueError, match="'locations' has shape"):
        p(variables, texts, {**images, "locations": images["locations"][:, :, :2]}, CAPTION_IMAGE)
    with pytest.raises(ValueError, match="pairs per block"):
        RetrievalProgram(model, make_mesh(data=2, fsdp=2, devices=jax.devices()[:4]), text_block=3, image_block=1)
    with pytest.raises(ValueError, match="'k' must be"):
        RetrievalProgram(model, k=0)
    with pytest.raises(ValueError, match="'ties'"):
        RetrievalProgram(model, ties="random")
    with pytest.raises(ValueError, match="cache_prefix"):
        RetrievalProgram(model, cache_prefix=True)


# ------------------------------------------------------------------------------------------- zero-shot, planted

ZS_TRAIN, ZS_TEST, ZS_CLASSES, ZS_TOKENS = 256, 36, 12, 8  # images; 3 captions each; one object per image


@pytest.mark.slow
def test_zero_shot_retrieval_of_an_itm_trained_model_beats_random():
    """A tiny UNITER trained briefly for ITM (matched captions vs captions of another class, VOLTA's label 0 =
    match) on a synthetic world retrieves held-out images and captions far better than chance."""
    world = World(WorldConfig(num_images=ZS_TRAIN + ZS_TEST, num_classes=ZS_CLASSES, min_objects=1, max_objects=1,
                              num_regions=2, captions_per_image=3, detector_rank_probs=(1.0, 0.0, 0.0, 0.0, 0.0),
                              detector_temperature=0.5, seed=0))
    tok = Tokenizer.from_words(world.vocabulary())
    drawn = [it for s in range(8) for it in labelled_items(world, range(ZS_TRAIN), seed=s)]
    data = item_batch(world, drawn, tok, ZS_TOKENS)
    model = get_model("uniter", tiny=True, vocab_size=tok.vocab_size, num_object_classes=ZS_CLASSES,
                      max_position_embeddings=16)
    steps, batch = 600, 32
    tx = make_optimizer(OptimizerConfig(total_steps=steps, learning_rate=2e-3, warmup_fraction=0.05))
    shapes = {k: jnp.asarray(data[k][:1]) for k in ("input_ids", "features", "locations")}
    params = nn.meta.unbox(model.init(jax.random.key(0), **shapes)["params"])

    def step(carry, b):
        p, opt = carry
        first = jnp.zeros((b["input_ids"].shape[0], 1), jnp.int32)

        def loss(p):
            logits = model.apply({"params": p}, b["input_ids"], b["features"], b["locations"], b["token_type_ids"],
                                 b["text_mask"], b["region_mask"], text_positions=first,
                                 region_positions=first).itm_logits
            return optax.softmax_cross_entropy_with_integer_labels(logits, b["labels"]).mean()

        grads = jax.grad(loss)(p)
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), None

    train = jax.jit(lambda c, bs: jax.lax.scan(step, c, bs)[0])
    idx = np.random.default_rng(0).integers(0, len(data["labels"]), (steps, batch))
    params, _ = train((params, tx.init(params)), {k: v[idx] for k, v in data.items()})

    test = range(ZS_TRAIN, ZS_TRAIN + ZS_TEST)
    regions = [region_inputs(world[i].regions, 2) for i in test]
    images = {k: np.stack([r[k] for r in regions]) for k in ("features", "locations", "region_mask")}
    captions = [(j, c) for j, i in enumerate(test) for c in world[i].captions]
    encoded = [tok.encode(c, ZS_TOKENS) for _, c in captions]
    texts = {"input_ids": np.stack([e[0] for e in encoded]), "text_mask": np.stack([e[1] for e in encoded])}
    caption_image = np.array([j for j, _ in captions])
    program = RetrievalProgram(model, make_mesh(), k=5, text_block=16, image_block=8, compiler_options=FAST_COMPILE)
    metrics = program({"params": params}, texts, images, caption_image).metrics()
    m, n, gold = ZS_TEST, len(captions), 3
    # chance: a random order puts the gold image in the top 5 with probability 5 / M, at mean 1-based rank
    # (M + 1) / 2; the best of an image's 3 gold captions among N in the top 10 with 1 - C(N-3, 10) / C(N, 10), at
    # mean rank (N + 1) / 4. (Captions repeat across images of one class, and the ITM head is not calibrated across
    # captions, so text retrieval gains less.)
    chance_tr_r10 = 100 * (1 - np.prod([(n - gold - i) / (n - i) for i in range(10)]))
    assert metrics["ir_r5"] > 3 * 100 * 5 / m, metrics
    assert metrics["ir_meanr"] < 0.5 * (m + 1) / 2, metrics
    assert metrics["tr_r10"] > 2 * chance_tr_r10, metrics
    assert metrics["tr_meanr"] < 0.5 * (n + 1) / (gold + 1), metrics

"""Compiled caption decoding (jaxvl.caption.decoding) on tiny random captioners.

References written here without the cache: teacher-forced log-probs of the decoded sequences, a
plain-Python beam search in ORT's order (``CaptionModel.beam_search``: top k of the live beams'
expansions, finished beams leave, best k finished by score) driven by full teacher-forced passes, and
an exhaustive search over every caption of a 5-token vocabulary.
"""

from __future__ import annotations

import itertools
import json
from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxvl.caption import decoding
from jaxvl.data.caption_vocab import CaptionVocab, VocabMismatch
from jaxvl.models.ort.captioner import Captioner, CaptionerConfig

CFG = CaptionerConfig.tiny()  # vocab 20: 0 = BOS/EOS, UNK = 19
SMALL = CaptionerConfig.tiny(vocab_size=5)  # 0 = EOS, words 1..3, UNK = 4
B, R, T = 2, 5, 8
TRACES: list[tuple[str, tuple[int, ...]]] = []


class Recording(Captioner):
    """The captioner, recording at trace time the shapes its encoder, cross keys/values and decoder step see."""

    def encode(self, features, boxes, mask=None, deterministic=True):
        TRACES.append(("encode", features.shape))
        return super().encode(features, boxes, mask, deterministic)

    def precompute_cross_kv(self, memory):
        TRACES.append(("cross_kv", memory.shape))
        return super().precompute_cross_kv(memory)

    def decode_step(self, cache, token, position, deterministic=True):
        TRACES.append(("decode_step", token.shape))
        return super().decode_step(cache, token, position, deterministic)


@cache
def variables(cfg: CaptionerConfig, eos_bias: float = 0.0, unk_bias: float = 0.0):
    """Random parameters (numpy draws; LayerNorm scales near 1, the rest N(0, 0.3^2)); the generator's
    biases are 0 but for EOS and UNK (the given values)."""
    model = Captioner(cfg)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), **model.dummy_inputs())["params"]))
    rng = np.random.default_rng(1)
    flat = {path: (1.0 if path[-1] == "scale" else 0.0) + 0.3 * rng.normal(size=s.shape)
            for path, s in flatten_dict(shapes).items()}
    flat[("generator", "bias")] = np.zeros(cfg.vocab_size)
    flat[("generator", "bias")][[0, -1]] = [eos_bias, unk_bias]
    return {"params": unflatten_dict({k: jnp.asarray(v, jnp.float32) for k, v in flat.items()})}


def regions(batch: int = B, seed: int = 0) -> dict[str, np.ndarray]:
    """Random regions and relative boxes; image 1 (if any) has its last two regions padded."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(batch, R, CFG.feature_size)).astype(np.float32)
    xy = rng.uniform(0, 0.6, (batch, R, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.05, 0.4, (batch, R, 2))], -1).astype(np.float32)
    mask = np.ones((batch, R), np.int32)
    if batch > 1:
        mask[1, -2:] = 0
        feats[1, -2:] = 0.0
        boxes[1, -2:] = 0.0
    return dict(features=feats, boxes=boxes, mask=mask)


MODEL, SMALL_MODEL = Recording(CFG), Recording(SMALL)
X = regions()


@jax.jit
def _forward(v, features, boxes, mask, tokens):
    return MODEL.apply(v, features, boxes, mask, tokens)


@jax.jit
def _small_forward(v, features, boxes, mask, tokens):
    return SMALL_MODEL.apply(v, features, boxes, mask, tokens)


def forward(cfg: CaptionerConfig, v, x: dict, tokens: np.ndarray) -> np.ndarray:
    fn = _forward if cfg is CFG else _small_forward
    return np.array(fn(v, x["features"], x["boxes"], x["mask"], jnp.asarray(tokens, jnp.int32)))


def teacher_forced(cfg: CaptionerConfig, v, x: dict, tokens: np.ndarray, block_unk: bool = False):
    """Generated tokens [B, k, T] -> (log p of each token [B, k, T] from one teacher-forced pass, the full
    next-token log-probs [B, k, T, V] (UNK at -inf with ``block_unk``))."""
    b, k, t = tokens.shape
    inputs = np.concatenate([np.zeros((b, k, 1), np.int32), tokens[..., :-1]], -1).reshape(b * k, t)
    tiled = {name: np.repeat(value, k, axis=0) for name, value in x.items()}
    lp = forward(cfg, v, tiled, inputs).reshape(b, k, t, -1)
    if block_unk:
        lp[..., -1] = -np.inf
    return np.take_along_axis(lp, tokens[..., None], -1)[..., 0], lp


def assert_padded(out: decoding.DecodeOutput) -> None:
    """0 from the first EOS on, mask = 1 through it, per-token log-probs 0 off the mask, sums consistent."""
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
    first_eos = np.where((tokens == 0).any(-1), (tokens == 0).argmax(-1), tokens.shape[-1] - 1)
    positions = np.arange(tokens.shape[-1])
    np.testing.assert_array_equal(mask, (positions <= first_eos[..., None]).astype(np.float32))
    np.testing.assert_array_equal(tokens[positions > first_eos[..., None]], 0)
    np.testing.assert_array_equal(np.asarray(out.token_log_probs)[mask == 0], 0.0)
    np.testing.assert_allclose(np.asarray(out.log_probs), np.asarray(out.token_log_probs).sum(-1), rtol=1e-5)


def reference_beam_search(cfg: CaptionerConfig, v, x: dict, image: int, k: int, max_len: int, alpha: float):
    """ORT's beam search for one image, in plain Python over full teacher-forced passes (no cache, no early
    stop): -> the best k finished (score, log-prob, tokens padded with 0 to max_len), best first."""
    one = {name: np.repeat(value[image:image + 1], k, axis=0) for name, value in x.items()}

    def next_log_probs(prefixes):
        rows = np.zeros((k, max_len), np.int32)
        for i, p in enumerate(prefixes):
            rows[i, 1:len(p) + 1] = p
        lp = forward(cfg, v, one, rows)
        return [lp[i, len(p)] for i, p in enumerate(prefixes)]

    live, done = [((), np.float32(0.0))], []
    for t in range(max_len):
        candidates = []
        for (prefix, total), lp in zip(live, next_log_probs([p for p, _ in live]), strict=True):
            for word in range(cfg.vocab_size - 1):  # UNK (the last id) blocked
                candidates.append((np.float32(total + lp[word]), prefix + (word,)))
        candidates.sort(key=lambda c: -c[0])  # stable: ORT's sorted(candidates, key=-p)
        live = []
        for total, seq in candidates[:k]:
            if seq[-1] == 0 or t == max_len - 1:
                done.append((total / ((5 + len(seq)) / 6) ** alpha, total, seq + (0,) * (max_len - len(seq))))
            else:
                live.append((seq, total))
        if not live:
            break
    return sorted(done, key=lambda d: -d[0])[:k]


def check_against_reference(cfg, v, out: decoding.DecodeOutput, k: int, max_len: int, alpha: float) -> None:
    for image in range(out.tokens.shape[0]):
        ref = reference_beam_search(cfg, v, X, image, k, max_len, alpha)
        np.testing.assert_array_equal(np.asarray(out.tokens[image]), np.array([r[2] for r in ref]))
        np.testing.assert_allclose(np.asarray(out.scores[image]), [r[0] for r in ref], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(out.log_probs[image]), [r[1] for r in ref], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ greedy and beams


def test_greedy_picks_the_argmax_and_its_cached_log_probs_equal_teacher_forcing():
    v = variables(CFG, eos_bias=2.0)
    out = decoding.greedy(MODEL, v, X["features"], X["boxes"], X["mask"], max_len=T)
    assert out.tokens.shape == (B, 1, T) and out.tokens.dtype == jnp.int32
    assert_padded(out)
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
    tf_token_lp, tf_lp = teacher_forced(CFG, v, X, tokens, block_unk=True)
    np.testing.assert_array_equal(tokens[mask == 1], tf_lp.argmax(-1)[mask == 1])
    np.testing.assert_allclose(np.asarray(out.token_log_probs), tf_token_lp * mask, atol=1e-5)
    lengths = np.asarray(out.lengths)
    assert (lengths < T).any() and (lengths > 1).any(), f"want EOS inside max_len and real words: {lengths}"
    assert int(out.steps) == lengths.max()  # stops once every row has ended


def test_beam_size_one_equals_greedy():
    v = variables(CFG, eos_bias=2.0)
    g = decoding.greedy(MODEL, v, X["features"], X["boxes"], X["mask"], max_len=T)
    b = decoding.beam_search(MODEL, v, X["features"], X["boxes"], X["mask"], beam_size=1, max_len=T)
    np.testing.assert_array_equal(np.asarray(b.tokens), np.asarray(g.tokens))
    np.testing.assert_allclose(np.asarray(b.log_probs), np.asarray(g.log_probs), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(b.token_log_probs), np.asarray(g.token_log_probs), atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.8])
def test_beam_search_equals_orts_algorithm_without_the_cache(alpha):
    v = variables(CFG, eos_bias=2.0)
    out = decoding.beam_search(MODEL, v, X["features"], X["boxes"], X["mask"], beam_size=3, max_len=T, alpha=alpha)
    assert out.tokens.shape == (B, 3, T)
    assert_padded(out)
    check_against_reference(CFG, v, out, 3, T, alpha)
    scores = np.asarray(out.scores)
    assert (np.diff(scores, axis=1) <= 0).all()
    lengths = np.asarray(out.lengths)
    np.testing.assert_allclose(scores, np.asarray(out.log_probs) / ((5 + lengths) / 6) ** alpha, rtol=1e-5)
    tf_token_lp, _ = teacher_forced(CFG, v, X, np.asarray(out.tokens))
    np.testing.assert_allclose(np.asarray(out.token_log_probs), tf_token_lp * np.asarray(out.mask), atol=1e-5)


def test_beam_search_stops_early_with_the_full_search_result():
    v = variables(CFG, eos_bias=4.0)  # captions end fast: every live beam soon falls below the k finished
    out = decoding.beam_search(MODEL, v, X["features"], X["boxes"], X["mask"], beam_size=3, max_len=T)
    assert int(out.steps) < T
    check_against_reference(CFG, v, out, 3, T, 0.0)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_equals_exhaustive_search(alpha):
    """5 ids (EOS, 3 words, UNK), 3 steps: every caption is [0], [w,0], [w,w,0] or [w,w,w] (40 in all). 12
    beams keep every prefix, so the 12 returned must be the 12 best captions of all."""
    v, max_len, k = variables(SMALL, eos_bias=0.5), 3, 12
    out = decoding.beam_search(SMALL_MODEL, v, X["features"], X["boxes"], X["mask"], beam_size=k, max_len=max_len,
                               alpha=alpha)
    words = range(1, SMALL.vocab_size - 1)
    captions = [(*w, 0) for n in range(max_len) for w in itertools.product(words, repeat=n)]
    captions += list(itertools.product(words, repeat=max_len))
    assert len(captions) == 40
    lengths = np.array([len(c) for c in captions])
    padded = np.array([c + (0,) * (max_len - len(c)) for c in captions], np.int32)
    for image in range(B):
        one = {name: value[image:image + 1] for name, value in X.items()}
        token_lp, _ = teacher_forced(SMALL, v, one, padded[None])
        totals = (token_lp[0] * (np.arange(max_len) < lengths[:, None])).sum(-1)
        scores = totals / ((5 + lengths) / 6) ** alpha
        best = np.argsort(-scores, kind="stable")[:k]
        np.testing.assert_allclose(np.asarray(out.scores[image]), scores[best], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(out.tokens[image]), padded[best])


def test_unk_is_never_produced():
    v = variables(CFG, unk_bias=8.0)  # UNK would win almost every step
    unk = CFG.vocab_size - 1
    free = decoding.greedy(MODEL, v, X["features"], X["boxes"], X["mask"], max_len=T, block_unk=False)
    assert (np.asarray(free.tokens) == unk).any()
    outs = [decoding.greedy(MODEL, v, X["features"], X["boxes"], X["mask"], max_len=T),
            decoding.beam_search(MODEL, v, X["features"], X["boxes"], X["mask"], beam_size=3, max_len=T),
            decoding.sample(MODEL, v, X["features"], X["boxes"], X["mask"], jax.random.key(0), num_samples=4,
                            max_len=T)]
    for out in outs:
        assert not (np.asarray(out.tokens) == unk).any()
        assert np.isfinite(np.asarray(out.log_probs)).all()


# ------------------------------------------------------------------------------------------ sampling


def test_sampled_token_log_probs_equal_teacher_forcing():
    v = variables(CFG, eos_bias=2.0)
    out = decoding.sample(MODEL, v, X["features"], X["boxes"], X["mask"], jax.random.key(3), num_samples=4,
                          max_len=T)
    assert out.tokens.shape == (B, 4, T)
    assert_padded(out)
    tf_token_lp, _ = teacher_forced(CFG, v, X, np.asarray(out.tokens))
    np.testing.assert_allclose(np.asarray(out.token_log_probs), tf_token_lp * np.asarray(out.mask), atol=1e-5)
    for image in range(B):  # the samples of one image are independent draws
        assert len({tuple(row) for row in np.asarray(out.tokens[image])}) > 1


def test_sampling_is_deterministic_given_the_rng():
    v = variables(CFG, eos_bias=2.0)
    args = (MODEL, v, X["features"], X["boxes"], X["mask"])
    a = decoding.sample(*args, jax.random.key(7), num_samples=4, max_len=T)
    b = decoding.sample(*args, jax.random.key(7), num_samples=4, max_len=T)
    c = decoding.sample(*args, jax.random.key(8), num_samples=4, max_len=T)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.token_log_probs), np.asarray(b.token_log_probs))
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))


def test_sampling_at_temperature_near_zero_is_greedy():
    v = variables(CFG, eos_bias=2.0)
    g = decoding.greedy(MODEL, v, X["features"], X["boxes"], X["mask"], max_len=T)
    s = decoding.sample(MODEL, v, X["features"], X["boxes"], X["mask"], jax.random.key(0), num_samples=4, max_len=T,
                        temperature=1e-5)
    np.testing.assert_array_equal(np.asarray(s.tokens), np.repeat(np.asarray(g.tokens), 4, axis=1))
    np.testing.assert_allclose(np.asarray(s.log_probs), np.repeat(np.asarray(g.log_probs), 4, axis=1), rtol=1e-6)


def test_top_k_sampling_draws_only_the_k_most_likely_tokens():
    v = variables(CFG, eos_bias=2.0)
    out = decoding.sample(MODEL, v, X["features"], X["boxes"], X["mask"], jax.random.key(1), num_samples=4,
                          max_len=T, temperature=2.0, top_k=2)
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
    tf_token_lp, tf_lp = teacher_forced(CFG, v, X, tokens, block_unk=True)
    rank = (tf_lp > tf_token_lp[..., None]).sum(-1)  # how many tokens were more likely than the one drawn
    assert rank[mask == 1].max() == 1  # only ever the best or the second best, and the second sometimes
    np.testing.assert_allclose(np.asarray(out.token_log_probs), tf_token_lp * mask, atol=1e-5)


def test_sample_and_greedy_share_one_pass_and_match_the_separate_calls():
    v = variables(CFG, eos_bias=2.0)
    args = (MODEL, v, X["features"], X["boxes"], X["mask"])
    TRACES.clear()
    samples, baseline = decoding.sample_and_greedy(*args, jax.random.key(5), num_samples=3, max_len=T)
    assert ("encode", (B, R, CFG.feature_size)) in TRACES and ("decode_step", (B * 4,)) in TRACES
    assert [name for name, _ in TRACES].count("encode") == 1
    g = decoding.greedy(*args, max_len=T)
    np.testing.assert_array_equal(np.asarray(baseline.tokens), np.asarray(g.tokens))
    np.testing.assert_allclose(np.asarray(baseline.log_probs), np.asarray(g.log_probs), rtol=1e-6)
    assert samples.tokens.shape == (B, 3, T)
    tf_token_lp, _ = teacher_forced(CFG, v, X, np.asarray(samples.tokens))
    np.testing.assert_allclose(np.asarray(samples.token_log_probs), tf_token_lp * np.asarray(samples.mask), atol=1e-5)


# ------------------------------------------------------------------------------------------ compilation


def test_one_encoder_pass_per_image_and_no_retrace_on_a_new_batch():
    """Batch 3 (no other test uses it): each program traces once; the encoder and the cross keys/values see
    the 3 images, the decoder step 3 x k rows; new data, rng, temperature and alpha reuse the programs."""
    v = variables(CFG, eos_bias=2.0)
    first, second = regions(3, seed=1), regions(3, seed=2)
    TRACES.clear()
    for x, rng, temperature, alpha in ((first, 0, 1.0, 0.0), (second, 1, 0.5, 0.6)):
        args = (MODEL, v, x["features"], x["boxes"], x["mask"])
        decoding.beam_search(*args, beam_size=4, max_len=T, alpha=alpha)
        decoding.sample(*args, jax.random.key(rng), num_samples=5, max_len=T, temperature=temperature)
    assert TRACES == [("encode", (3, R, CFG.feature_size)), ("cross_kv", (3, R, CFG.d_model)), ("decode_step", (12,)),
                      ("encode", (3, R, CFG.feature_size)), ("cross_kv", (3, R, CFG.d_model)), ("decode_step", (15,))]


# ------------------------------------------------------------------------------------------ captions and files


def pipeline_batch() -> dict[str, np.ndarray]:
    """X as a caption-pipeline batch: pixel boxes of 200 x 100 (height x width) images, string ids."""
    size = np.array([[200, 100], [200, 100]], np.int32)
    boxes = X["boxes"] * np.array([100, 200, 100, 200], np.float32)
    return dict(features=X["features"], boxes=boxes, region_mask=X["mask"], image_size=size,
                image_id=np.array(["391895", "60623"]))


def test_decode_captions_and_coco_results(tmp_path):
    v = variables(CFG, eos_bias=2.0)
    vocab = CaptionVocab([f"w{i}" for i in range(1, CFG.vocab_size - 1)])
    assert len(vocab) == CFG.vocab_size and vocab.unk_id == CFG.vocab_size - 1
    batch = pipeline_batch()
    inputs = decoding.caption_model_inputs(batch)
    np.testing.assert_allclose(inputs["boxes"], X["boxes"], rtol=1e-6)
    beams = decoding.beam_search(MODEL, v, X["features"], X["boxes"], X["mask"], beam_size=3, max_len=T)
    captions = decoding.decode_captions(MODEL, v, batch, vocab=vocab, method="beam", beam_size=3, max_len=T)
    expected = [" ".join(f"w{i}" for i in row[:list(row).index(0) if 0 in row else T]) for row in
                np.asarray(beams.tokens[:, 0])]
    assert captions == expected and all(captions)
    greedy = decoding.decode_captions(MODEL, v, batch, vocab=vocab, method="greedy", max_len=T)
    assert greedy == [vocab.decode(r) for r in np.asarray(decoding.greedy(MODEL, v, X["features"], X["boxes"],
                                                                          X["mask"], max_len=T).tokens[:, 0])]
    path = tmp_path / "captions.json"
    decoding.write_coco_results(path, batch["image_id"], captions)
    assert json.loads(path.read_text()) == [{"image_id": 391895, "caption": captions[0]},
                                            {"image_id": 60623, "caption": captions[1]}]
    with pytest.raises(ValueError, match="image_id 60623 has more than one caption"):
        decoding.write_coco_results(path, [60623, "60623"], ["a", "b"])
    with pytest.raises(ValueError, match="2 image ids but 1 captions"):
        decoding.write_coco_results(path, ["1", "2"], ["a"])


def test_bad_input_is_rejected_before_compiling():
    v = variables(CFG)
    args = (MODEL, v, X["features"], X["boxes"], X["mask"])
    vocab = CaptionVocab([f"w{i}" for i in range(1, CFG.vocab_size - 1)])
    with pytest.raises(VocabMismatch, match="has 19 ids but the model predicts 20"):
        decoding.decode_captions(MODEL, v, pipeline_batch(), vocab=CaptionVocab(list(vocab.words[:-2])))
    with pytest.raises(ValueError, match="method='nucleus'"):
        decoding.decode_captions(MODEL, v, pipeline_batch(), vocab=vocab, method="nucleus")
    with pytest.raises(ValueError, match="needs an rng"):
        decoding.decode_captions(MODEL, v, pipeline_batch(), vocab=vocab, method="sample")
    with pytest.raises(KeyError, match="image_size"):
        decoding.caption_model_inputs({k: x for k, x in pipeline_batch().items() if k != "image_size"})
    with pytest.raises(ValueError, match="max_len=65"):
        decoding.greedy(*args, max_len=CFG.max_len + 1)
    with pytest.raises(ValueError, match="beam_size=0"):
        decoding.beam_search(*args, beam_size=0)
    with pytest.raises(ValueError, match="alpha=-0.5"):
        decoding.beam_search(*args, alpha=-0.5)
    with pytest.raises(ValueError, match="temperature=0"):
        decoding.sample(*args, jax.random.key(0), temperature=0)
    with pytest.raises(ValueError, match="top_k=21"):
        decoding.sample(*args, jax.random.key(0), top_k=21)
    with pytest.raises(ValueError, match="num_samples=0"):
        decoding.sample_and_greedy(*args, jax.random.key(0), num_samples=0)

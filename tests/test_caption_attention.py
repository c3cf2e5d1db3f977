"""Attention analyses of the captioner (``jaxvl.caption.attention``): the measures on constructed
weights against hand-computed values, Spearman against scipy, the label-matching rule, the noun-phrase links
the synthetic world, builder and pipeline carry, and ``analyze`` end to end on a tiny captioner against a
per-image numpy reference computed from an ORT-style forward pass (each image replicated per caption).
"""

from __future__ import annotations

import csv
import json
import logging

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import tensorflow_datasets as tfds
from flax import linen as nn
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxvl.caption import attention as ca
from jaxvl.caption.data import CaptionPipelineConfig, caption_dataset, caption_vocab_for
from jaxvl.cli import main
from jaxvl.data.builders.captions import CaptionExample, PhraseLink, encode_phrases
from jaxvl.data.caption_vocab import CaptionVocab
from jaxvl.data.grain import open_split
from jaxvl.data.records import BadRecord, RegionFeatures
from jaxvl.data.synthetic import WorldConfig
from jaxvl.data.synthetic.captions import CaptionWorld, CaptionWorldConfig
from jaxvl.models.ort.captioner import Captioner, CaptionerConfig, collect_attention, ort_token_mask

logging.getLogger("absl").setLevel(logging.ERROR)
tfds.disable_progress_bar()
# the measures jitted whole (op-by-op dispatch compiles every primitive on CPU)
entropy = jax.jit(ca.attention_entropy)
grounding = jax.jit(ca.grounding_mass)
proximity = jax.jit(ca.box_proximity)
similarity = jax.jit(ca.label_similarity)

# ---------------------------------------------------------------------------------------------- entropy


def test_entropy_uniform_one_hot_and_hand_value():
    # 2 images: image 0 has 4 valid keys and 3 counted queries; image 1 has 3 valid keys (key 3 padding) and
    # 2 counted queries (query 2 is padding and holds junk that must not count).
    keys = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
    queries = np.array([[1, 1, 1], [1, 1, 0]], bool)
    w = np.zeros((3, 2, 1, 3, 4), np.float32)
    w[0, 0], w[0, 1, :, :, :3] = 0.25, 1 / 3  # layer 1: uniform over the valid keys
    w[1, :, :, :, 1] = 1.0  # layer 2: one-hot
    w[2, :, :, :, :2] = [0.25, 0.75]  # layer 3: a two-key distribution
    w[:, 1, :, 2] = [0.9, 0.05, 0.05, 0.0]  # junk on the padded query
    total, count = entropy(jnp.asarray(w), jnp.asarray(queries), jnp.asarray(keys))
    assert int(count) == 5
    mean = np.asarray(total)[:, 0] / 5
    h = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    np.testing.assert_allclose(mean, [1.0, 0.0, (3 * h / np.log(4) + 2 * h / np.log(3)) / 5], atol=1e-6)
    # One valid key: log 1 = 0, the query is skipped.
    _, count = entropy(jnp.ones((1, 1, 1, 2, 3)) / 3, jnp.ones((1, 2), bool),
                                    jnp.asarray([[True, False, False]]))
    assert int(count) == 0


def test_decoder_entropy_over_the_causal_prefix():
    t = 5
    token_mask = jnp.ones((2, t), bool)
    prefix = np.tril(np.ones((t, t))) / np.arange(1, t + 1)[:, None]  # row q uniform over keys 0..q
    one_hot = np.eye(t)  # each query on itself
    w = jnp.asarray(np.stack([np.broadcast_to(prefix, (2, 3, t, t)), np.broadcast_to(one_hot, (2, 3, t, t))]))
    keys = ca.causal_key_mask(token_mask)
    np.testing.assert_array_equal(keys[0], np.tril(np.ones((t, t), bool)))
    queries = jnp.asarray(np.arange(t)[None] <= np.array([[4], [2]]))  # captions of 4 and 2 words
    total, count = entropy(w, queries, keys)
    assert int(count) == 4 + 2  # positions 1..L: position 0 sees one key
    np.testing.assert_allclose(np.asarray(total) / 6, [[1.0] * 3, [0.0] * 3], atol=1e-6)


# ---------------------------------------------------------------------------------------------- grounding


def test_phrase_query_alignment():
    spans = jnp.asarray([[[1, 3], [0, 0]]])  # words 1-2; an empty pad phrase
    np.testing.assert_array_equal(ca.phrase_query_mask(spans, 5)[0], [[0, 1, 1, 0, 0], [0] * 5])
    np.testing.assert_array_equal(ca.phrase_query_mask(spans, 5, "input")[0], [[0, 0, 1, 1, 0], [0] * 5])
    with pytest.raises(ValueError, match="align='both'"):
        ca.phrase_query_mask(spans, 5, "both")


def test_grounding_share_hand_computed():
    # 1 layer, 2 caption rows, 2 heads, 3 query positions, 3 regions (row 1: region 2 is padding).
    w = np.zeros((1, 2, 2, 3, 3), np.float32)
    w[0, 0, 0] = [[0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [1 / 3] * 3]
    w[0, 0, 1] = [[0.0, 1.0, 0.0], [0.1, 0.1, 0.8], [1 / 3] * 3]
    w[0, 1, 0] = [[0.5, 0.5, 0.0], [0.7, 0.3, 0.0], [0.4, 0.6, 0.0]]
    w[0, 1, 1] = [[0.9, 0.1, 0.0], [0.25, 0.75, 0.0], [0.5, 0.5, 0.0]]
    queries = np.zeros((2, 2, 3), bool)
    linked = np.zeros((2, 2, 3), bool)
    queries[0, 0, :2], linked[0, 0, [0, 2]] = True, True  # row 0 phrase 0: positions 0-1 -> regions 0 and 2
    queries[1, 0, 2], linked[1, 0, 0] = True, True  # row 1 phrase 0: position 2 -> region 0
    queries[1, 1, :2], linked[1, 1, 2] = True, True  # row 1 phrase 1: linked only to padding -> left out
    keys = np.array([[1, 1, 1], [1, 1, 0]], bool)
    out = {k: np.asarray(v) for k, v in grounding(jnp.asarray(w), jnp.asarray(queries), jnp.asarray(linked),
                                                          jnp.asarray(keys)).items()}
    # head 1: (0.2 + 0.5) + (0.6 + 0.2) + 0.4 = 1.9 of 3 tokens; head 2: 0 + 0.9 + 0.5 = 1.4
    np.testing.assert_allclose(out["linked"], [[1.9, 1.4]], atol=1e-6)
    np.testing.assert_allclose(out["total"], [[3.0, 3.0]], atol=1e-6)
    assert int(out["tokens"]) == 3
    np.testing.assert_allclose(out["chance"], 2 / 3 + 2 / 3 + 1 / 2, atol=1e-6)


def test_grounding_planted_all_mass_on_linked_regions():
    rng = np.random.default_rng(0)
    layers, rows, heads, t, n, p = 2, 6, 3, 7, 5, 2
    keys = rng.random((rows, n)) < 0.8
    keys[:, 0] = True
    linked = rng.random((rows, p, n)) < 0.4
    linked[:, 0, 0] = True
    queries = np.zeros((rows, p, t), bool)
    queries[:, 0, 1:3] = queries[:, 1, 4:6] = True
    on = linked & keys[:, None]
    w = rng.random((layers, rows, heads, t, n)).astype(np.float32) * keys[None, :, None, None]
    w /= w.sum(-1, keepdims=True)
    for r in range(rows):
        for j in range(p):
            if on[r, j].any():  # the phrase's queries put all their mass on its linked valid regions
                w[:, r, :, queries[r, j]] = on[r, j] / on[r, j].sum()
    out = grounding(jnp.asarray(w), jnp.asarray(queries), jnp.asarray(linked), jnp.asarray(keys))
    np.testing.assert_allclose(np.asarray(out["linked"]) / np.asarray(out["total"]), 1.0, atol=1e-6)
    assert float(out["chance"]) / int(out["tokens"]) < 0.9


# ---------------------------------------------------------------------------------------------- correlations


def test_spearman_and_ranks_match_scipy():
    rng = np.random.default_rng(1)
    y = np.round(rng.normal(size=300), 1)  # ties
    x = np.round(rng.normal(size=(2, 3, 300)) + 0.5 * y, 1)
    x[1, 2] = (rng.random(300) < 0.3).astype(float)  # a binary row: heavy ties
    np.testing.assert_array_equal(ca.average_ranks(x[0, 0]), scipy.stats.rankdata(x[0, 0]))
    rho = ca.spearman(x, y)
    assert rho.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(rho[i, j], scipy.stats.spearmanr(x[i, j], y).statistic, rtol=1e-10)
    assert np.isnan(ca.spearman(np.ones((1, 5)), np.arange(5.0))).all()


def test_proximity_and_label_similarity_by_hand():
    boxes = jnp.asarray([[[0, 0, 10, 10], [30, 40, 40, 50], [0, 0, 10, 10]]], jnp.float32)
    prox = np.asarray(proximity(boxes, jnp.asarray([[60, 80]])))  # diagonal 100; centres (5, 5), (35, 45)
    np.testing.assert_allclose(prox[0], [[0, -0.5, 0], [-0.5, 0, -0.5], [0, -0.5, 0]], atol=1e-7)
    ids = jnp.asarray([[3, 3, -1]])
    sim, defined = similarity(ids)
    np.testing.assert_array_equal(defined[0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(sim[0, :2, :2], np.ones((2, 2)))
    sim, _ = similarity(jnp.asarray([[0, 1]]), jnp.asarray([[2.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(sim[0], [[1, 2 ** -0.5], [2 ** -0.5, 1]], atol=1e-6)


# ---------------------------------------------------------------------------------------------- links


def test_label_linker_rule():
    caption = "a man holding a tennis racket near two dogs on the side of a dog bed".split()
    vocab = CaptionVocab(sorted(set(caption) | {"hot"}))
    labels = ["__background__", "dog", "tennis racket", "racket", "side", "hot dog", "man,person", "bed", "tennis"]
    linker = ca.LabelLinker(vocab, labels, max_phrases=3, min_conf=0.5)
    # heads: man; tennis racket ("tennis" inside it dropped); dogs -> dog; side is a spatial word; dog bed -> bed
    # (a compound: the head is its last noun)
    assert [(s, e, sorted(k)) for s, e, k in linker.heads(caption)] == [
        (1, 2, [5]), (4, 6, [1]), (8, 9, [0]), (15, 16, [6])]
    assert [(s, e) for s, e, _ in linker.heads("a hot dog on a bed".split())] == [(1, 3), (5, 6)]
    ids = np.array([[5, 1, 0, 0, 2, 6, 6]], np.int32)  # K-space classes of 7 regions
    conf = np.array([[0.9, 0.9, 0.9, 0.2, 0.9, 0.9, 0.9]], np.float32)
    region_mask = np.array([[1, 1, 1, 1, 1, 1, 0]], np.int32)
    tokens = vocab.encode(caption)
    captions = np.zeros((1, 2, 20), np.int32)
    captions[0, 0, 1:1 + len(tokens)] = tokens
    captions[0, 1, 1:3] = vocab.encode("UNKNOWN man".split())
    batch = dict(captions=captions, caption_lengths=np.array([[len(tokens), 2]]), objects_id=ids, objects_conf=conf,
                 region_mask=region_mask)
    spans, regions = linker(batch)
    assert spans.shape == (1, 2, 3, 2) and regions.shape == (1, 2, 3, 7)
    np.testing.assert_array_equal(spans[0, 0], [[1, 2], [4, 6], [8, 9]])  # bed: past max_phrases
    np.testing.assert_array_equal(regions[0, 0], [[1, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0],
                                                  [0, 0, 1, 0, 0, 0, 0]])  # dog: region 3 below min_conf
    np.testing.assert_array_equal(spans[0, 1], [[1, 2], [0, 0], [0, 0]])  # UNK matches nothing
    assert linker.dropped == 1
    with pytest.raises(ValueError, match="needs the batch's 'objects_id'"):
        linker({k: v for k, v in batch.items() if k != "objects_id"})


def test_world_noun_phrase_spans_and_links():
    world = CaptionWorld(CaptionWorldConfig(world=WorldConfig(num_images=12)))
    classes = world.world.class_names
    for image in world:
        for c, (text, objs) in enumerate(zip(image.captions, image.mentions, strict=True)):
            words = text.split(" ")
            assert len(image.spans[c]) == len(objs)
            for (start, end), o, regions in zip(image.spans[c], objs, image.linked_regions(c), strict=True):
                assert words[start] == "a" and end - start in (2, 3)
                assert words[end - 1] == classes[image.objects[o].label]  # the NP ends with its object's class
                np.testing.assert_array_equal(regions, np.flatnonzero(image.region_objects == o))
                assert len(regions) >= 1


def test_encode_phrases_cuts_and_refuses():
    rec = RegionFeatures("7", 10, 10, boxes=np.tile([0, 0, 5, 5], (3, 1)).astype(np.float32),
                         features=np.zeros((3, 2), np.float32))
    ex = CaptionExample(rec, [["a", "b", "c", "d"]], [[PhraseLink(0, 2, (0, 2)), PhraseLink(2, 4, (1,))]])
    spans, regions = encode_phrases(ex, max_phrases=3, num_regions=2, max_length=3, where="w")
    np.testing.assert_array_equal(spans[0], [[0, 2], [2, 3], [0, 0]])  # cut to T = 3 words
    np.testing.assert_array_equal(regions[0], [[1, 0], [0, 1], [0, 0]])  # region 2 beyond R = 2
    with pytest.raises(BadRecord, match="w: image '7' caption 0 has 2 noun phrases, more than max_phrases=1"):
        encode_phrases(ex, 1, 2, 3, "w")
    bad = CaptionExample(rec, [["a"]], [[PhraseLink(0, 2)]])
    with pytest.raises(BadRecord, match=r"noun phrase 0: span \[0, 2\) outside its 1 words"):
        encode_phrases(bad, 2, 2, 3, "w")
    bad = CaptionExample(rec, [["a"]], [[PhraseLink(0, 1, (3,))]])
    with pytest.raises(BadRecord, match=r"region 3 outside \[0, 3\)"):
        encode_phrases(bad, 2, 2, 3, "w")


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """8 synthetic captioning images prepared by ``jaxvl prepare``, their two batches of 4 with the analysis fields."""
    out = tmp_path_factory.mktemp("caption_attention")
    rc = main(["prepare", "--source", "synthetic-captions:num_images=8,val_images=0,test_images=0", "--out", str(out),
                       "--quiet"])
    assert rc == 0
    (path,) = (out / "jaxvl_synthetic_captions").glob("*/1.0.0")
    source, info = open_split(path, "train")
    cfg = CaptionPipelineConfig(batch_size=4, num_epochs=1, num_threads=0, analysis_fields=True)
    batches = list(caption_dataset(source, cfg, shard=grain.sharding.NoSharding()))
    world = CaptionWorld(CaptionWorldConfig(world=WorldConfig(num_images=8)))
    return batches, info, world, out


def test_pipeline_carries_the_world_links(synthetic):
    batches, info, world, _ = synthetic
    vocab = caption_vocab_for(info)
    assert len(batches) == 2
    for b in batches:
        assert b["phrase_spans"].shape == (4, 5, 2, 2) and b["phrase_regions"].shape == (4, 5, 2, 10)
        for i, image_id in enumerate(b["image_id"]):
            image = world[int(image_id)]
            np.testing.assert_array_equal(b["objects_id"][i], image.regions.objects_id)
            for c in range(5):
                words = vocab.decode(b["captions"][i, c, 1:]).split(" ")
                assert " ".join(words) == image.captions[c]
                for j, ((start, end), regions) in enumerate(zip(image.spans[c], image.linked_regions(c),
                                                                strict=True)):
                    np.testing.assert_array_equal(b["phrase_spans"][i, c, j], [start, end])
                    np.testing.assert_array_equal(np.flatnonzero(b["phrase_regions"][i, c, j]), regions)
                    # word j of a caption is captions[..., j + 1]
                    assert vocab.decode(b["captions"][i, c, 1 + start:1 + end]) == " ".join(words[start:end])
                assert not b["phrase_spans"][i, c, len(image.spans[c]):].any()  # padding slots


def random_params(cfg: CaptionerConfig):
    """Random parameters of the model's shapes drawn in numpy (no ``init`` compile): LN scales near 1, the rest
    N(0, 0.2^2)."""
    model = Captioner(cfg)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), **model.dummy_inputs())["params"]))
    rng = np.random.default_rng(0)
    return unflatten_dict({k: jnp.asarray((k[-1] == "scale") + 0.2 * rng.normal(size=s.shape), jnp.float32)
                           for k, s in flatten_dict(shapes).items()})


def reference(cfg: CaptionerConfig, params, batches) -> dict:
    """The analyses by per-image loops over the weights of an ORT-style forward pass (each image replicated per
    caption, the encoder run on every copy), Spearman by scipy."""
    sow = Captioner(cfg, sow_weights=True)
    forward = jax.jit(lambda p, *a: sow.apply({"params": p}, *a, mutable=["intermediates"])[1])
    ent = {f: 0.0 for f in ca.FAMILIES}
    counts = {f: 0 for f in ca.FAMILIES}
    linked = total = 0.0
    tokens = 0
    w_pairs, prox, same = [], [], []
    for b in batches:
        n_img, c, t2 = b["captions"].shape
        h, w = b["image_size"][:, 0:1, None].astype(np.float32), b["image_size"][:, 1:2, None].astype(np.float32)
        rel = np.clip(b["boxes"] / np.concatenate([w, h, w, h], -1), 0, 1)
        rep = [np.repeat(b[k], c, axis=0) for k in ("features",)] + [np.repeat(rel, c, 0),
                                                                     np.repeat(b["region_mask"], c, 0)]
        tokens_in = jnp.asarray(b["captions"][:, :, :-1].reshape(n_img * c, t2 - 1))
        att = jax.device_get(collect_attention(forward(params, *rep, tokens_in, ort_token_mask(tokens_in))[
            "intermediates"]))
        for i in range(n_img):
            valid = np.flatnonzero(b["region_mask"][i])
            enc = att["encoder_self"][:, i * c]  # [L, H, N, N] of the image's first copy
            for q in valid:
                if len(valid) > 1:
                    p = enc[:, :, q, valid]
                    ent["encoder_self"] += -(p * np.log(p)).sum(-1) / np.log(len(valid))
                    counts["encoder_self"] += 1
                for k in valid:
                    w_pairs.append(enc[:, :, q, k])
                    cq, ck = (b["boxes"][i, q, :2] + b["boxes"][i, q, 2:]) / 2, (b["boxes"][i, k, :2] +
                                                                                 b["boxes"][i, k, 2:]) / 2
                    prox.append(-np.linalg.norm(cq - ck) / np.linalg.norm(b["image_size"][i].astype(float)))
                    same.append(float(b["objects_id"][i, q] == b["objects_id"][i, k]))
            for j in range(c):
                r, length = i * c + j, b["caption_lengths"][i, j]
                for t in range(length + 1):
                    if t >= 1:
                        p = att["decoder_self"][:, r, :, t, :t + 1]
                        ent["decoder_self"] += -(p * np.log(p)).sum(-1) / np.log(t + 1)
                        counts["decoder_self"] += 1
                    p = att["cross"][:, r, :, t][..., valid]
                    ent["cross"] += -(p * np.log(p)).sum(-1) / np.log(len(valid))
                    counts["cross"] += 1
                for (start, end), regions in zip(b["phrase_spans"][i, j], b["phrase_regions"][i, j], strict=True):
                    on = np.flatnonzero(regions & (b["region_mask"][i] > 0))
                    if end > start and len(on):
                        linked = linked + att["cross"][:, r, :, start:end][..., on].sum((-1, -2))
                        total = total + att["cross"][:, r, :, start:end][..., valid].sum((-1, -2))
                        tokens += end - start
    w_pairs = np.stack(w_pairs, -1)  # [L, H, pairs]
    rho = {name: np.array([[scipy.stats.spearmanr(w_pairs[layer, head], y).statistic
                            for head in range(w_pairs.shape[1])] for layer in range(w_pairs.shape[0])])
           for name, y in (("proximity", np.array(prox)), ("label", np.array(same)))}
    return dict(entropy={f: ent[f] / counts[f] for f in ca.FAMILIES}, queries=counts, grounding=linked / total,
                phrase_tokens=tokens, spearman=rho, pairs=len(prox))


@pytest.mark.slow
def test_analyze_end_to_end_matches_per_image_reference(synthetic, tmp_path):
    batches, info, world, _ = synthetic
    cfg = CaptionerConfig.tiny(vocab_size=len(caption_vocab_for(info)), feature_size=24)
    params = random_params(cfg)
    res = ca.analyze(Captioner(cfg), params, batches, tmp_path / "report")
    ref = reference(cfg, params, batches)
    assert res["images"] == 8 and res["captions"] == 40
    assert res["queries"] == ref["queries"] and res["phrase_tokens"] == ref["phrase_tokens"] > 0
    for family in ca.FAMILIES:
        np.testing.assert_allclose(res["entropy"][family], ref["entropy"][family], rtol=1e-4, err_msg=family)
        assert ((res["entropy"][family] > 0) & (res["entropy"][family] <= 1)).all()
    np.testing.assert_allclose(res["grounding"], ref["grounding"], rtol=1e-4)
    for name in ("proximity", "label"):
        np.testing.assert_allclose(res["spearman"][name], ref["spearman"][name], atol=1e-4, err_msg=name)
        assert res["pairs"][name] == ref["pairs"]
    _, step = ca._compiled(Captioner(cfg, sow_weights=True), "predict", True)
    assert step._cache_size() == 1  # both batches ran one compiled program
    first_four = ca.analyze(Captioner(cfg), params, batches, pair_images=4)
    assert first_four["pairs"]["proximity"] == sum(int(m.sum()) ** 2 for m in batches[0]["region_mask"])
    np.testing.assert_array_equal(first_four["entropy"]["cross"], res["entropy"]["cross"])  # sums: all images

    # files: 3 families x 2 layers x 4 heads of entropy, 8 grounding, 1 chance, 2 x 8 correlations
    rows = list(csv.DictReader(open(tmp_path / "report" / "caption_attention.csv")))
    assert len(rows) == len(res["rows"]) == 24 + 8 + 1 + 16 and set(rows[0]) == set(ca.ROW_FIELDS)
    jsonl = [json.loads(line) for line in open(tmp_path / "report" / "caption_attention.jsonl")]
    chance = [r for r in jsonl if r["analysis"] == "grounding_chance"]
    assert chance == [dict(analysis="grounding_chance", family="cross", layer=None, head=None,
                           value=pytest.approx(res["grounding_chance"]), count=res["phrase_tokens"])]
    first = next(r for r in jsonl if r["analysis"] == "grounding" and r["layer"] == 2 and r["head"] == 3)
    assert first["value"] == pytest.approx(res["grounding"][1, 2])
    for name in ("entropy.png", "grounding.png", "correlations.png"):
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "jaxvl operationalisations" in (tmp_path / "report" / "caption_attention.md").read_text()

    # label-matching links instead of the stored ones: same shapes, so the same compiled program
    linker = ca.LabelLinker(caption_vocab_for(info), info.metadata["label_list"], max_phrases=2)
    stripped = [{k: v for k, v in b.items() if not k.startswith("phrase_")} for b in batches]
    by_rule = ca.analyze(Captioner(cfg), {"params": params}, stripped, links=linker, align="predict")
    assert step._cache_size() == 1
    expect = sum(int(np.diff(linker(b)[0], axis=-1).sum()) for b in stripped)  # head nouns: one word each
    assert by_rule["phrase_tokens"] == expect > 0 and np.isfinite(by_rule["grounding"]).all()


def test_analyze_refuses_bad_batches(synthetic):
    batches, info, _, _ = synthetic
    cfg = CaptionerConfig.tiny(vocab_size=len(caption_vocab_for(info)), feature_size=24)
    model, batch = Captioner(cfg), batches[0]
    cases = [({k: v for k, v in batch.items() if k != "caption_mask"}, cfg, "batch 0: missing \\['caption_mask'\\]"),
             (batch, CaptionerConfig.tiny(vocab_size=5, feature_size=24), "outside the model's vocab_size=5"),
             (batch, CaptionerConfig.tiny(vocab_size=cfg.vocab_size), "features must be \\[4, 10, 16\\]"),
             ({**batch, "phrase_regions": batch["phrase_regions"][..., :3]}, cfg, "phrase_regions must be")]
    for b, c, message in cases:
        with pytest.raises(ValueError, match=message):
            ca.analyze(Captioner(c), {}, [b])
    with pytest.raises(ValueError, match="align='output'"):
        ca.analyze(model, {}, [batch], align="output")

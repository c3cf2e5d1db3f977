"""LabelMatch: the head-noun rule, exactly-one-label matching over a VG-style vocabulary, a pluggable tagger, and
the detector agreement on the synthetic world (planted to match the real detector's on LabelMatch)."""

import grain
import jax
import numpy as np
import pytest

from jaxvl.ablation.conditions import Quirks, detector_rank, lang4vis_inputs
from jaxvl.ablation.data import AblationPipelineConfig, ablation_dataset, scan_ablation, world_ablation_source
from jaxvl.ablation.labelmatch import LabelMatcher, detector_rows, rule_nouns
from jaxvl.ablation.sweep import AblationResult, AblationSpec
from jaxvl.data.readers.visual_genome import load_objects_vocab
from jaxvl.data.synthetic import REAL_DETECTOR_RANK_PROBS, World, WorldConfig
from jaxvl.data.tokenizer import Tokenizer

VOCAB = ["man", "hat", "hard hat", "shirt,t-shirt,t shirt", "vest", "dog,puppy", "puppy", "tennis racket", "top"]


@pytest.fixture()
def matcher(tmp_path):
    path = tmp_path / "objects_vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return LabelMatcher.from_vocab(load_objects_vocab(path, expected=None))


@pytest.mark.parametrize("phrase, nouns", [
    ("A man", ("man",)),
    ("a blue hard hat", ("hard", "hat")),  # the longest label ending at the head
    ("orange safety vest", ("vest",)),  # stanza: ["safety", "vest"], no label; the rule: the head
    ("a man in a blue shirt", ("man",)),  # cut before the post-modifier
    ("the top of a building", ("top",)),
    ("two tennis racket ,", ("tennis", "racket")),
    ("a T-shirt", ("t-shirt",)),
    ("someone", ("someone",)),
])
def test_rule_nouns(matcher, phrase, nouns):
    assert matcher.nouns(phrase) == nouns


def test_exactly_one_label(matcher):
    assert matcher.match("A man") == 1  # (K+1)-space: background is 0, "man" the first line
    assert matcher.match("a blue hard hat") == 3
    assert matcher.match("an old t shirt") == 4 and matcher.match("a T-shirt") == 4  # any synonym
    assert matcher.match("a puppy") == -1  # "puppy" names two labels: not exactly one
    assert matcher.match("a dog") == 6
    assert matcher.match("someone") == -1 and matcher.match("") == -1
    assert matcher.tagger == "rule"
    assert rule_nouns("a man in a hat", {"man": 0}) == ("man",)


def test_a_tagger_can_replace_the_rule():
    def nouns_of(phrase):  # stands in for a real tagger: every word longer than 3 letters is a noun
        return [w for w in phrase.split() if len(w) > 3]

    synonyms = [("__background__",)] + [tuple(line.split(",")) for line in VOCAB]
    tagged = LabelMatcher(synonyms, nouns=nouns_of)
    assert tagged.tagger == "nouns_of"
    assert tagged.nouns("orange safety vest") == ("orange", "safety", "vest")
    assert tagged.match("orange safety vest") == -1
    assert tagged.match("a tennis racket") == 8 and tagged.match("a hat") == -1  # "hat" is no noun to it


def test_detector_agreement_on_the_synthetic_world_matches_the_real_detector():
    world = World(WorldConfig(num_images=80, seed=1))
    tok = Tokenizer.from_words(world.vocabulary())
    source = world_ablation_source(world, range(80))
    cfg = AblationPipelineConfig(batch_size=64, max_seq_length=20)
    index = scan_ablation(source, tok, cfg, label_matcher=LabelMatcher.from_label_list(world.label_list()))
    assert (index.vg_labels >= 1).all()  # every "a <attribute> <class>" phrase names its class
    @jax.jit
    def ranks_of(b):
        _, target, has, _ = lang4vis_inputs(b, 0, 0.5, tok.mask_id, "first", Quirks())
        return detector_rank(b, target, has)[0]

    ranks = [np.asarray(ranks_of(batch))[batch["valid"] == 1]
             for batch in ablation_dataset(source, tok, cfg, index, shard=grain.sharding.NoSharding())]
    rank = np.concatenate(ranks)
    rank = rank[rank >= 0]
    assert len(rank) > 0.9 * len(index)
    want = np.cumsum(REAL_DETECTOR_RANK_PROBS)[:4]  # top-1/3/5/10: 0.38, 0.55, 0.64, 0.75
    got = [float((rank < k).mean()) for k in (1, 3, 5, 10)]
    np.testing.assert_allclose(got, want, atol=0.08)


def test_detector_rows_per_threshold():
    spec = AblationSpec(4, vis4lang=(), thresholds=(0.3, 0.6))
    members = {"vis4lang": (), "lang4vis": spec.members("lang4vis")}
    rank = np.array([0, 2, 5, -1, 12, -1])
    has = np.array([1, 1, 1, 0, 1, 1], bool)
    vg = np.array([3, 3, 1, 2, 4, -1])
    m = len(members["lang4vis"])
    stats = {"detector_rank": np.tile(rank, (m, 1)), "detector_prob": np.tile([0.5, 0.2, 0.1, 0, 0.05, 0], (m, 1)),
             "has_target": np.tile(has, (m, 1)), "phrase_tokens": np.ones(6, int)}
    res = AblationResult(("a",), members, np.arange(6), {"lang4vis": {"mrc_kl": np.zeros((1, m, 6))}}, stats,
                         Quirks(), vg_label=vg)
    rows = detector_rows(res)
    assert [r["threshold"] for r in rows] == [0.3, 0.6]
    r = rows[0]
    assert r["labelmatch"] == 5 and r["with_target"] == 4 and r["agree"] == 1
    assert (r["top1"], r["top3"], r["top5"], r["top10"]) == (0.25, 0.5, 0.5, 0.75)
    assert r["mean_rank"] == pytest.approx((0 + 2 + 5 + 12) / 4) and r["mean_prob"] == pytest.approx(0.85 / 4)

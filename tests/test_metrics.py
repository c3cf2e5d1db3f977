"""Caption metrics: hand-computed values, and parity with pycocoevalcap 1.2 on the same tokenised captions.

The parity tests feed identical, already tokenised strings to jaxvl's scorers and to pycocoevalcap's ``Bleu``,
``Rouge`` and ``Cider`` (never its Java PTBTokenizer) and skip only when pycocoevalcap is not installed. The
tokenizer test against the Java PTBTokenizer and the METEOR test need Java as well.
"""

from __future__ import annotations

import math
import random
import shutil

import numpy as np
import pytest

import jaxvl.metrics.evaluate as evaluate_module
import jaxvl.metrics.meteor as meteor_module
from jaxvl.metrics import (
    METRICS,
    ORT_KARPATHY_TEST,
    CiderD,
    MetricUnavailable,
    cider_d,
    corpus_bleu,
    document_frequency,
    evaluate_captions,
    format_table,
    lcs_length,
    meteor_score,
    meteor_unavailable_reason,
    ptb_tokenize,
    rouge_l,
)

LOG2 = math.log(2)


def _pycoco(module: str):
    return pytest.importorskip(f"pycocoevalcap.{module}", reason="needs pycocoevalcap: pip install pycocoevalcap")


def _as_dicts(candidates, references):
    return {i: list(r) for i, r in enumerate(references)}, {i: [c] for i, c in enumerate(candidates)}


# --------------------------------------------------------------------------------------------- BLEU by hand


def test_bleu_hand_computed():
    corpus, per_image = corpus_bleu(["the cat sat on mat"], [["the cat sat on the mat"]])
    # precisions 5/5, 3/4, 2/3, 1/2; candidate 5 words, reference 6: brevity penalty exp(1 - 6/5)
    bp = math.exp(-0.2)
    expected = [bp, (3 / 4) ** 0.5 * bp, (1 / 2) ** (1 / 3) * bp, (1 / 4) ** 0.25 * bp]
    np.testing.assert_allclose(corpus, expected, rtol=1e-8)
    np.testing.assert_allclose(per_image[:, 0], expected, rtol=1e-8)


def test_bleu_closest_reference_length_ties_go_to_the_shorter():
    # 5 candidate words; references of 4 and 6 words are equally close: the shorter (4) is used, no penalty
    corpus, _ = corpus_bleu(["a b c d e"], [["a b c d", "a b c d e f"]])
    assert corpus[0] == pytest.approx(1.0, abs=1e-8)
    corpus, _ = corpus_bleu(["a b c d e"], [["a b c d e f"]])
    assert corpus[0] == pytest.approx(math.exp(1 - 6 / 5), rel=1e-8)


def test_bleu_clips_counts_and_sums_over_the_corpus():
    corpus, _ = corpus_bleu(["the the the the"], [["the cat"]])
    assert corpus[0] == pytest.approx(1 / 4, rel=1e-8)  # "the" counts once: clipped by the reference count
    corpus, per_image = corpus_bleu(["a b", "c d e f"], [["a b"], ["x y z w"]])
    assert corpus[0] == pytest.approx(2 / 6, rel=1e-8)  # summed matches / summed guesses, not a mean
    assert per_image[0, 0] == pytest.approx(1.0, abs=1e-8) and per_image[0, 1] < 1e-12


def test_bleu_identical_and_empty():
    corpus, _ = corpus_bleu(["a man riding a horse"], [["a man riding a horse", "a person on a horse"]])
    np.testing.assert_allclose(corpus, 1.0, atol=1e-8)
    corpus, per_image = corpus_bleu([""], [["a dog"]])
    np.testing.assert_array_equal(corpus, 0.0)
    np.testing.assert_array_equal(per_image, 0.0)


# -------------------------------------------------------------------------------------------- ROUGE-L by hand


def _lcs_dp(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_lcs_length_equals_dynamic_programming():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == _lcs_dp(a, b)


def test_rouge_l_hand_computed():
    # LCS(a b c d, a x c d e) = 3: P = 3/4, R = 3/5
    p, r = 3 / 4, 3 / 5
    mean, scores = rouge_l(["a b c d"], [["a x c d e"]])
    assert mean == pytest.approx(2.44 * p * r / (r + 1.44 * p), rel=1e-12)
    # P and R are maximised over the references separately: P from the second (3/4), R from the first (2/2)
    mean, _ = rouge_l(["a b c d"], [["a b", "a b c x y z w v"]])
    assert mean == pytest.approx(2.44 * 0.75 * 1.0 / (1.0 + 1.44 * 0.75), rel=1e-12)
    _, scores = rouge_l(["", "a dog", "dog"], [["a dog"], ["a dog", "cat"], ["cat"]])
    np.testing.assert_allclose(scores, [0.0, 1.0, 0.0])


# --------------------------------------------------------------------------------------------- CIDEr-D by hand


def test_cider_d_hand_computed():
    # two images, df 1 for every n-gram, idf = log 2: identical 2-word captions have cosine 1 at n = 1, 2 and
    # empty vectors at n = 3, 4, so CIDEr-D = 10 * mean(1, 1, 0, 0) = 5
    mean, scores = cider_d(["a b", "c d"], [["a b"], ["c d"]])
    np.testing.assert_allclose(scores, [5.0, 5.0], rtol=1e-12)
    # one word against "a b": cosine 1/sqrt(2) at n = 1; bigram counts 0 vs 1 give the penalty exp(-1/72)
    _, scores = cider_d(["a", "c d"], [["a b"], ["c d"]])
    assert scores[0] == pytest.approx(10 * (1 / math.sqrt(2)) * math.exp(-1 / 72) / 4, rel=1e-12)
    # "x" is in every image's references: idf 0, zero vector, score 0; a one-image corpus has ref_len log 1 = 0
    _, scores = cider_d(["x", "x b"], [["x a"], ["x b"]])
    np.testing.assert_allclose(scores, [0.0, 5.0], rtol=1e-12)
    assert cider_d(["a b"], [["a b"]])[0] == 0.0
    assert cider_d(["", "c d"], [["a b"], ["c d"]])[1][0] == 0.0


TRAIN = [["a b"], ["a c"], ["d e"], ["d f"]]  # 4 images: df(a) = df(d) = 2, every other n-gram 1


def test_cider_d_with_training_document_frequency():
    scorer = CiderD(TRAIN)
    assert scorer.idf("a") == pytest.approx(math.log(4) - LOG2) and scorer.idf("z") == pytest.approx(math.log(4))
    # "a c" vs "a b": weights a = log 2, b = c = 2 log 2: cosine log2^2 / (5 log2^2) = 1/5 at n = 1, 0 at n = 2
    # "a a" vs "a b": clipped min(2 log 2, log 2) * log 2 over norms 2 log 2 and sqrt(5) log 2
    # "z" vs "z": an n-gram unseen in the df corpus gets the full log 4 on both sides: cosine 1 at n = 1
    scores = scorer.scores(["a c", "a a", "z"], [["a b"], ["a b"], ["z"]])
    np.testing.assert_allclose(scores, [10 * 0.2 / 4, 10 / (2 * math.sqrt(5)) / 4, 10 / 4], rtol=1e-12)
    # the same captions with the df of the evaluated references themselves (one image each: ref_len 0)
    np.testing.assert_array_equal(cider_d(["a c"], [["a b"]])[1], [0.0])
    df = document_frequency(TRAIN)
    assert df["a"] == 2 and df["a b"] == 1 and "b a" not in df
    again = CiderD.from_document_frequency(df, num_images=4)
    np.testing.assert_array_equal(again.scores(["a c", "a a", "z"], [["a b"], ["a b"], ["z"]]), scores)
    as_tuples = CiderD.from_document_frequency({tuple(g.split()): d for g, d in df.items()}, num_images=4)
    np.testing.assert_array_equal(as_tuples.scores(["a c", "a a", "z"], [["a b"], ["a b"], ["z"]]), scores)


def test_cider_d_scores_repeated_captions_like_single_ones():
    rng = random.Random(1)
    corpus = [[_caption(rng, 6, 1, 9) for _ in range(5)] for _ in range(30)]
    scorer = CiderD(corpus)
    cands = [_caption(rng, 6, 0, 9) for _ in range(8)]
    cands = [c for c in cands for _ in range(5)]  # 5 samples per image share the image's references
    refs = [corpus[i // 5] for i in range(len(cands))]
    batch = scorer.scores(cands, refs)
    single = [scorer.scores([c], [r])[0] for c, r in zip(cands, refs, strict=True)]
    np.testing.assert_array_equal(batch, single)


def test_scorers_name_bad_input():
    with pytest.raises(ValueError, match="2 candidates but 1 reference lists"):
        corpus_bleu(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="references 1 must be a non-empty list"):
        rouge_l(["a", "b"], [["a"], []])
    with pytest.raises(TypeError, match="reference 0 of caption 0 is int"):
        CiderD(TRAIN).scores(["a"], [[3]])
    with pytest.raises(ValueError, match="reference list 1 of the df corpus"):
        CiderD([["a"], []])


# ------------------------------------------------------------------------------------- parity with pycocoevalcap


def _caption(rng: random.Random, vocab: int, lo: int, hi: int) -> str:
    return " ".join(f"w{rng.randrange(vocab)}" for _ in range(rng.randint(lo, hi)))


def _random_set(rng: random.Random) -> tuple[list[str], list[list[str]]]:
    """1-8 images, 1-7 references each, small vocabularies (so n-grams overlap); some candidates empty, one word,
    or copied from a reference."""
    vocab = rng.choice([2, 4, 8, 30])
    refs = [[_caption(rng, vocab, 1, 14) for _ in range(rng.randint(1, 7))] for _ in range(rng.randint(1, 8))]
    cands = []
    for image_refs in refs:
        kind = rng.random()
        cands.append(rng.choice(image_refs) if kind < 0.2 else _caption(rng, vocab, 0 if kind < 0.3 else 1, 16))
    return cands, refs


EDGE_SETS = [
    (["", "a man riding a horse", "dog", "dog"],
     [["a man riding a horse"], ["a man riding a horse", "a person on a horse"], ["dog"], ["a dog", "the dog runs"]]),
    (["a a a a a", "a b c d e f g h i j"], [["a", "a a"], ["a b", "c d e"]]),
    (["a cat on a mat"], [["a cat on a mat", "the cat sits"]]),  # one image: CIDEr-D's ref_len is log 1 = 0
    ([""], [["x y"]]),
]


def _assert_parity(cands, refs):
    Bleu, Rouge, Cider = _pycoco("bleu.bleu").Bleu, _pycoco("rouge.rouge").Rouge, _pycoco("cider.cider").Cider
    gts, res = _as_dicts(cands, refs)
    ref_bleu, ref_bleu_images = Bleu(4).compute_score(gts, res, verbose=0)
    ours, ours_images = corpus_bleu(cands, refs)
    np.testing.assert_allclose(ours, ref_bleu, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours_images, ref_bleu_images, rtol=0, atol=1e-6)
    ref_rouge, ref_rouge_images = Rouge().compute_score(gts, res)
    ours, ours_images = rouge_l(cands, refs)
    np.testing.assert_allclose([ours, *ours_images], [ref_rouge, *ref_rouge_images], rtol=0, atol=1e-6)
    ref_cider, ref_cider_images = Cider().compute_score(gts, res)
    ours, ours_images = cider_d(cands, refs)
    np.testing.assert_allclose([ours, *ours_images], [ref_cider, *ref_cider_images], rtol=0, atol=1e-6)


def test_parity_with_pycocoevalcap_on_random_caption_sets():
    rng = random.Random(2024)
    for _ in range(300):
        _assert_parity(*_random_set(rng))


@pytest.mark.parametrize("case", range(len(EDGE_SETS)))
def test_parity_with_pycocoevalcap_on_edge_cases(case):
    _assert_parity(*EDGE_SETS[case])


def test_cider_d_training_df_matches_pycocoevalcap_on_the_full_corpus():
    """df from a 40-image corpus, scores for 12 of its images: pycocoevalcap scoring all 40 at once uses the same
    df and ref_len, so its scores for those 12 must equal ours."""
    Cider = _pycoco("cider.cider").Cider
    rng = random.Random(7)
    refs = [[_caption(rng, 12, 1, 12) for _ in range(rng.randint(1, 5))] for _ in range(40)]
    cands = [_caption(rng, 12, 0, 12) for _ in range(40)]
    _, ref_scores = Cider().compute_score(*_as_dicts(cands, refs))
    subset = rng.sample(range(40), 12)
    ours = CiderD(refs).scores([cands[i] for i in subset], [refs[i] for i in subset])
    np.testing.assert_allclose(ours, ref_scores[subset], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------- tokenizer

TOKENIZED = [
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ("Two dogs, one black and one white, playing in the snow!", "two dogs one black and one white playing in the snow"),
    ('A dog\'s "ball" and don\'t it\'s', "a dog 's ball and do n't it 's"),
    ("A sign (red) says: STOP -- now...", "a sign -lrb- red -rrb- says stop now"),
    ("1,000 dogs cost $5 at 3:30, 50% off; really?!", "1,000 dogs cost $ 5 at 3:30 50 % off really ?!"),
    ("Mr. Smith lives in the U.S.", "mr. smith lives in the u.s."),
    ("I can't, we cannot, they're gonna", "i ca n't we can not they 're gon na"),
    ("  multiple   spaces\tand\nlines  ", "multiple spaces and lines"),
    ("...", ""),
    ("A 10-year-old boy's e-mail", "a 10-year-old boy 's e-mail"),
    ("cats' toys, a close up of a pizza:pepperoni", "cats toys a close up of a pizza pepperoni"),
    ("There's a \u201cSTOP\u201d sign on Main St. and 5th Ave.", "there 's a stop sign on main st. and 5th ave."),
    ("Here is a cat..  Where is it??", "here is a cat where is it ??"),
    ("A plate with food [rice, beans] and {sauce}.", "a plate with food -lsb- rice beans -rsb- and -lcb- sauce -rcb-"),
    ("Three kids' bikes aren\u2019t here; they've gone.", "three kids bikes are n't here they 've gone"),
    ("A train (the 'express') at 5:45 p.m.", "a train -lrb- the express -rrb- at 5:45 p.m."),
    ("'Welcome' reads the sign!!", "welcome reads the sign !!"),
    ("It is -5 degrees in the '90s: an x-ray of #hashtag #1 for $5.", "it is -5 degrees in the '90s an x-ray of "
     "#hashtag # 1 for $ 5"),
]


def test_ptb_tokenize_hand_written():
    for text, expected in TOKENIZED:
        assert ptb_tokenize(text) == expected, text
    with pytest.raises(TypeError, match="captions must be str"):
        ptb_tokenize(None)


def test_ptb_tokenize_matches_the_java_ptb_tokenizer():
    ptb = _pycoco("tokenizer.ptbtokenizer")
    if shutil.which("java") is None:
        pytest.skip("the Java PTBTokenizer needs java")
    java = ptb.PTBTokenizer().tokenize({i: [{"caption": text}] for i, (text, _) in enumerate(TOKENIZED)})
    assert [java[i][0] for i in range(len(TOKENIZED))] == [ptb_tokenize(text) for text, _ in TOKENIZED]


# -------------------------------------------------------------------------------------------- METEOR and SPICE


def test_meteor_reports_missing_java(monkeypatch, caplog):
    monkeypatch.setattr(meteor_module.shutil, "which", lambda name: None)
    reason = meteor_unavailable_reason()
    if meteor_module._meteor_dir() is None:
        assert "pycocoevalcap is not installed" in reason
    else:
        assert "no `java` on PATH" in reason
    with pytest.raises(MetricUnavailable, match="METEOR unavailable"):
        meteor_score(["a dog"], [["a dog"]])
    with caplog.at_level("WARNING", logger="jaxvl.metrics.evaluate"):
        results = evaluate_captions({1: "A dog."}, {1: ["A dog."]})
    assert results["METEOR"] is None and results["SPICE"] is None
    assert reason in caplog.text


def test_evaluate_captions_passes_tokenised_captions_to_meteor(monkeypatch):
    calls = []

    def fake_meteor(candidates, references):
        calls.append((candidates, references))
        return 0.25, np.zeros(len(candidates))

    monkeypatch.setattr(evaluate_module, "meteor_unavailable_reason", lambda: None)
    monkeypatch.setattr(evaluate_module, "meteor_score", fake_meteor)
    results = evaluate_captions({"x": "A Dog, running."}, {"x": ["The dog's run!", "A dog"]})
    assert calls == [(["a dog running"], [["the dog 's run", "a dog"]])]
    assert results["METEOR"] == 0.25


@pytest.mark.slow
def test_meteor_through_pycocoevalcap():
    reason = meteor_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    refs = [["a man riding a horse", "a person on a horse"], ["a cat"], ["a dog running on the grass"]]
    corpus, per_image = meteor_score(["a man riding a horse", "", "a dog runs on grass"], refs)
    assert per_image[0] == pytest.approx(1.0) and per_image[1] == 0.0 and 0.2 < per_image[2] < 0.9
    assert 0.0 < corpus < 1.0


# ---------------------------------------------------------------------------------- evaluate_captions and table


def test_evaluate_captions_tokenises_then_scores():
    predictions = {"img1": "A man riding a horse.", "img2": "Two dogs, playing!", 3: "A cat's toy"}
    references = {
        "img1": ["A man rides a brown horse.", "A person on a horse"],
        "img2": ["Two dogs are playing in the snow.", "Dogs play."],
        3: ["A toy for a cat", "The cat's toy (red)."],
    }
    results = evaluate_captions(predictions, references, use_meteor=False)
    assert tuple(results) == METRICS
    cands = ["a man riding a horse", "two dogs playing", "a cat 's toy"]
    refs = [[ptb_tokenize(r) for r in references[k]] for k in references]
    assert refs[2] == ["a toy for a cat", "the cat 's toy -lrb- red -rrb-"]
    bleus, _ = corpus_bleu(cands, refs)
    assert [results[f"BLEU-{k}"] for k in range(1, 5)] == pytest.approx(list(bleus), abs=1e-12)
    assert results["ROUGE-L"] == pytest.approx(rouge_l(cands, refs)[0], abs=1e-12)
    assert results["CIDEr-D"] == pytest.approx(cider_d(cands, refs)[0], abs=1e-12)
    assert results["METEOR"] is None and results["SPICE"] is None
    assert 0 < results["BLEU-4"] < results["BLEU-1"] < 1


def test_evaluate_captions_names_bad_input():
    with pytest.raises(ValueError, match=r"1 images without a prediction \(e.g. \['b'\]\)"):
        evaluate_captions({"a": "x"}, {"a": ["x"], "b": ["y"]}, use_meteor=False)
    with pytest.raises(ValueError, match=r"1 predictions without references \(e.g. \['c'\]\)"):
        evaluate_captions({"a": "x", "c": "z"}, {"a": ["x"]}, use_meteor=False)
    with pytest.raises(ValueError, match="references for image 'a' must be a non-empty list"):
        evaluate_captions({"a": "x"}, {"a": []}, use_meteor=False)
    with pytest.raises(TypeError, match="prediction for image 'a' is list"):
        evaluate_captions({"a": ["x"]}, {"a": ["x"]}, use_meteor=False)


def test_format_table_in_the_ort_layout():
    results = {"BLEU-1": 0.7561, "BLEU-2": 0.6, "BLEU-3": 0.45, "BLEU-4": 0.33449, "METEOR": None,
               "ROUGE-L": 0.5604, "CIDEr-D": 1.12649, "SPICE": None}
    assert format_table(results, name="ours") == (
        "| Model | B-1 | B-4 | METEOR | ROUGE-L | CIDEr-D | SPICE |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
        "| ours | 75.6 | 33.4 | n/a | 56.0 | 112.6 | n/a |"
    )
    table = format_table({**ORT_KARPATHY_TEST, "ours": results}).splitlines()
    assert len(table) == 2 + len(ORT_KARPATHY_TEST) + 1
    assert table[-2] == "| ORT + SCST (beam 5) | 80.5 | 38.6 | 28.7 | 58.4 | 128.3 | 22.6 |"
    with pytest.raises(KeyError, match="results for 'jaxvl' have no 'SPICE'"):
        format_table({"BLEU-1": 0.5, "BLEU-4": 0.1, "METEOR": 0.2, "ROUGE-L": 0.3, "CIDEr-D": 1.0})

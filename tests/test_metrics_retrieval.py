"""Retrieval metrics: VOLTA's eval_retrieval.py formulas, tie rules, hand-computed cases, bad inputs."""

import numpy as np
import pytest

from jaxvl.metrics.retrieval import (
    best_gold_captions,
    image_retrieval_ranks,
    recall_summary,
    retrieval_metrics,
    score_matrix_metrics,
    text_retrieval_ranks,
)


def volta_ranks(scores: np.ndarray, caption_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """eval_retrieval.py's loops, transcribed (argsort of -scores; target matrix from caption_image)."""
    n, m = scores.shape
    target = np.zeros((n, m))
    target[np.arange(n), caption_image] = 1
    ir = np.array([np.where((np.argsort(-scores[i]) == np.where(target[i] == 1)[0][0]) == 1)[0][0] for i in range(n)])
    tr = np.zeros(m)
    for j in range(m):
        order = np.argsort(-scores[:, j])
        tr[j] = min(np.where((order == c) == 1)[0][0] for c in np.where(target[:, j] == 1)[0])
    return ir, tr


def volta_summary(ranks: np.ndarray) -> dict[str, float]:
    return {"r1": 100.0 * np.sum(ranks < 1) / len(ranks), "r5": 100.0 * np.sum(ranks < 5) / len(ranks),
            "r10": 100.0 * np.sum(ranks < 10) / len(ranks), "medr": np.floor(np.median(ranks) + 1),
            "meanr": np.mean(ranks) + 1}


def test_hand_computed_case():
    # 4 captions, 3 images; captions 0, 1 -> image 0, caption 2 -> image 1, caption 3 -> image 2
    scores = np.array([[0.9, 0.1, 0.5],
                       [0.2, 0.8, 0.3],
                       [0.4, 0.7, 0.6],
                       [0.6, 0.2, 0.5]])
    cap = np.array([0, 0, 1, 2])
    np.testing.assert_array_equal(image_retrieval_ranks(scores, cap), [0, 2, 0, 1])
    # image 0's column [.9 .2 .4 .6]: caption 0 first -> 0; image 1 [.1 .8 .7 .2]: caption 2 second -> 1;
    # image 2 [.5 .3 .6 .5]: caption 3 ties caption 0 at 0.5 behind 0.6 -> stable 2, optimistic 1
    np.testing.assert_array_equal(text_retrieval_ranks(scores, cap), [0, 1, 2])
    np.testing.assert_array_equal(text_retrieval_ranks(scores, cap, ties="optimistic"), [0, 1, 1])
    s = recall_summary(np.array([0, 2, 0, 1]))
    assert s == {"r1": 50.0, "r5": 100.0, "r10": 100.0, "medr": 1.0, "meanr": 1.75}
    assert recall_summary(np.array([0, 1, 7, 12]))["medr"] == 5.0  # floor(median 4 + 1)
    assert recall_summary(np.array([0, 1, 7, 12])) == pytest.approx({"r1": 25.0, "r5": 50.0, "r10": 75.0,
                                                                      "medr": 5.0, "meanr": 6.0})


def test_ties_stable_and_optimistic():
    scores = np.array([[0.5, 0.5, 0.5, 0.1],
                       [0.3, 0.3, 0.3, 0.3],
                       [0.9, 0.1, 0.2, 0.3],
                       [0.1, 0.9, 0.2, 0.3]])
    cap = np.array([2, 3, 0, 1])
    # caption 0's gold image 2 ties images 0 and 1 (stable: 2, both come first; optimistic: 0); caption 1's gold
    # image 3 ties all three others (3; 0)
    np.testing.assert_array_equal(image_retrieval_ranks(scores, cap), [2, 3, 0, 0])
    np.testing.assert_array_equal(image_retrieval_ranks(scores, cap, ties="optimistic"), [0, 0, 0, 0])
    # image 3's column [.1 .3 .3 .3]: caption 1 ties captions 2, 3 but comes first -> 0 either way
    np.testing.assert_array_equal(text_retrieval_ranks(scores, cap), [0, 0, 0, 0])
    for i in range(4):  # equals numpy's stable argsort position
        want = np.flatnonzero(np.argsort(-scores[i], kind="stable") == cap[i])[0]
        assert image_retrieval_ranks(scores, cap)[i] == want


def test_best_gold_caption_prefers_lower_index_on_ties():
    cap = np.array([1, 0, 1, 1, 0])
    gold = np.array([0.5, 0.2, 0.7, 0.7, 0.2])
    np.testing.assert_array_equal(best_gold_captions(gold, cap, 2), [1, 2])


@pytest.mark.parametrize("seed", range(4))
def test_random_matrices_equal_volta_loops(seed):
    rng = np.random.default_rng(seed)
    m, per = 13, 3
    cap = rng.permutation(np.repeat(np.arange(m), per))
    scores = rng.normal(size=(m * per, m))  # continuous: no ties, so VOLTA's unstable argsort is determined
    ir, tr = volta_ranks(scores, cap)
    np.testing.assert_array_equal(image_retrieval_ranks(scores, cap), ir)
    np.testing.assert_array_equal(text_retrieval_ranks(scores, cap), tr)
    want = {f"ir_{k}": v for k, v in volta_summary(ir).items()} | {f"tr_{k}": v for k, v in volta_summary(tr).items()}
    assert score_matrix_metrics(scores, cap) == pytest.approx(want)
    assert retrieval_metrics(ir, tr) == pytest.approx(want)


def test_ties_equal_stable_argsort_on_discrete_scores():
    rng = np.random.default_rng(7)
    m, n = 6, 15
    cap = np.concatenate([np.arange(m), rng.integers(0, m, n - m)])
    scores = rng.integers(0, 3, size=(n, m)).astype(float)  # many ties
    ir = [np.flatnonzero(np.argsort(-scores[i], kind="stable") == cap[i])[0] for i in range(n)]
    tr = [min(np.flatnonzero(np.argsort(-scores[:, j], kind="stable") == c)[0] for c in np.flatnonzero(cap == j))
          for j in range(m)]
    np.testing.assert_array_equal(image_retrieval_ranks(scores, cap), ir)
    np.testing.assert_array_equal(text_retrieval_ranks(scores, cap), tr)
    opt_ir = (scores > scores[np.arange(n), cap][:, None]).sum(1)
    np.testing.assert_array_equal(image_retrieval_ranks(scores, cap, ties="optimistic"), opt_ir)
    assert (image_retrieval_ranks(scores, cap, ties="optimistic") <= image_retrieval_ranks(scores, cap)).all()


@pytest.mark.parametrize("scores, cap, match", [
    (np.zeros((3, 2)), [0, 1, 2], "caption 2 is 2"),
    (np.zeros((3, 2)), [0, 1, -1], "caption 2 is -1"),
    (np.zeros((3, 3)), [0, 1, 1], "image 2 has no caption"),
    (np.zeros((3, 2)), [0, 1], "2 captions, 'scores' 3"),
    (np.zeros((3, 2)), [0.0, 1.0, 1.0], "integer"),
    (np.zeros(3), [0, 1, 1], "'scores' must be"),
    (np.full((2, 2), np.nan), [0, 1], "NaN"),
])
def test_bad_inputs(scores, cap, match):
    with pytest.raises(ValueError, match=match):
        image_retrieval_ranks(scores, cap)


def test_bad_ties_and_ranks():
    with pytest.raises(ValueError, match="'ties'"):
        text_retrieval_ranks(np.zeros((2, 2)), [0, 1], ties="random")
    with pytest.raises(ValueError, match="'ranks'"):
        recall_summary(np.array([]))

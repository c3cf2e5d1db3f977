"""EMAP: the paper's example, the streaming sums against dense numpy, and the blocked compiled program against a
per-pair loop of the model (single-stream UNITER, dual-stream LXMERT with and without the prefix cache); the
labelled design (items with match / mismatch labels) against direct numpy and on planted additive and
interaction-only scores."""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest

from jaxvl.metrics.bootstrap import bootstrap_weights
from jaxvl.models import get_model
from jaxvl.probes import (
    EmapResult,
    PairItems,
    PairProgram,
    PairSums,
    block_stats,
    emap_metrics,
    emap_projection,
    full_metrics,
    interaction_share,
    itm_match_score,
)
from jaxvl.probes.emap import LabelledMetrics, labelled_metrics, run_emap
from jaxvl.runtime.compile import FAST_COMPILE
from jaxvl.runtime.sharding import make_mesh

# ------------------------------------------------------------------------------------------- dense references


def emap_dense(f: np.ndarray) -> np.ndarray:
    """f [N, N, C] (rows texts, columns images) -> EMAP's f_hat [N, N, C]."""
    r, c, g = f.mean(1), f.mean(0), f.mean((0, 1))
    return r[:, None] + c[None, :] - g


def auroc_dense(f: np.ndarray) -> float:
    """AUROC of the match score, diagonal vs off-diagonal pairs, by comparing every pair of pairs."""
    s = itm_match_score(f)
    off = ~np.eye(len(s), dtype=bool)
    pos, neg = np.diag(s)[:, None], s[off][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def accuracies_dense(f: np.ndarray) -> tuple[float, float]:
    says = f.argmax(-1) == 0
    off = ~np.eye(len(f), dtype=bool)
    return float(np.diag(says).mean()), float((~says[off]).mean())


def interaction_dense(f: np.ndarray) -> np.ndarray:
    return ((f - emap_dense(f)) ** 2).sum((0, 1)) / ((f - f.mean((0, 1))) ** 2).sum((0, 1))


def stream(f: np.ndarray, bt: int, bv: int, order: np.random.Generator | None = None,
           match_score=itm_match_score) -> PairSums:
    """PairSums of a dense f [N, N, C], block by block (padded blocks, in a shuffled order when ``order``)."""
    n, c = f.shape[0], f.shape[-1]
    rows = lambda size: -(-n // size) * size  # noqa: E731
    padded = np.zeros((rows(bt), rows(bv), c), np.float32)
    padded[:n, :n] = f
    padded[n:], padded[:, n:] = 99.0, -99.0  # padding must not count
    starts = [(t, i) for t in range(0, n, bt) for i in range(0, n, bv)]
    if order is not None:
        starts = [starts[k] for k in order.permutation(len(starts))]
    sums = PairSums.empty(n, c)
    for t0, i0 in starts:
        stats = block_stats(padded[t0:t0 + bt, i0:i0 + bv], t0 + np.arange(bt), i0 + np.arange(bv), n, match_score)
        sums.add(jax.tree.map(np.asarray, stats), t0, i0)
    assert sums.complete
    return sums


# ------------------------------------------------------------------------------------------- projection, metrics


def test_paper_appendix_example():
    f = np.array([[-1.3, 0.3, -0.2], [0.8, 3.0, 1.1], [1.1, -0.1, 0.7]])  # rows texts, columns images
    np.testing.assert_allclose(np.diag(f), [-1.3, 3.0, 0.7])
    proj = emap_projection(f.sum(1)[:, None], f.sum(0)[:, None], 3)[:, 0]
    np.testing.assert_allclose(np.round(proj, 1), [-0.8, 2.1, 0.5])
    np.testing.assert_allclose(proj, np.diag(emap_dense(f[..., None])[..., 0]))
    sums = stream(f[..., None].astype(np.float32), 2, 2, match_score=lambda x: x[..., 0])
    np.testing.assert_allclose(emap_projection(sums.row_sum, sums.col_sum, 3)[:, 0], proj, atol=1e-6)
    np.testing.assert_allclose(sums.diag[:, 0], np.diag(f), atol=1e-6)


@pytest.mark.parametrize("n,bt,bv", [(7, 3, 2), (5, 5, 5), (6, 4, 3)])
def test_streaming_sums_match_dense(n, bt, bv):
    rng = np.random.default_rng(n)
    f = rng.normal(size=(n, n, 2)).astype(np.float32)
    f[..., 0] += 0.7 * rng.normal(size=(n, 1)) + 1.5 * np.eye(n)  # text main effect + some matching signal
    f[: n // 2, : n // 2] = np.round(f[: n // 2, : n // 2])  # ties in the match score
    sums = stream(f, bt, bv, rng)
    f64 = f.astype(np.float64)
    np.testing.assert_allclose(sums.row_sum, f64.sum(1), atol=1e-5)
    np.testing.assert_allclose(sums.col_sum, f64.sum(0), atol=1e-5)
    np.testing.assert_allclose(sums.diag, np.diagonal(f64).T, atol=1e-6)
    np.testing.assert_allclose(sums.m2, ((f64 - f64.mean((0, 1))) ** 2).sum((0, 1)), rtol=1e-5)
    full = full_metrics(sums)
    assert full.auroc == pytest.approx(auroc_dense(f), abs=1e-12)
    assert (full.accuracy_matched, full.accuracy_mismatched) == pytest.approx(accuracies_dense(f))
    np.testing.assert_allclose(interaction_share(sums), interaction_dense(f64), rtol=1e-5)
    emap = emap_metrics(sums)
    fhat = emap_dense(f64)
    assert emap.auroc == pytest.approx(auroc_dense(fhat), abs=1e-12)
    assert (emap.accuracy_matched, emap.accuracy_mismatched) == pytest.approx(accuracies_dense(fhat))


def test_additive_scores_lose_nothing():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 1, 2)), rng.normal(size=(1, 6, 2))
    f = (a + b).astype(np.float32)
    sums = stream(f, 4, 4)
    np.testing.assert_allclose(interaction_share(sums), 0.0, atol=1e-5)
    assert emap_metrics(sums).auroc == pytest.approx(full_metrics(sums).auroc)


# ------------------------------------------------------------------------------------------- the model


N, TEXT_LENS, REGIONS = 5, (4, 6, 4, 6, 4), (3, 5, 5, 3, 3)  # regions include the global [IMG] row
LT, LV = 7, 6  # padded beyond the longest item


@functools.cache
def model_case(name: str) -> tuple:
    model = get_model(name, tiny=True)
    cfg = model.cfg
    variables = jax.jit(model.init, compiler_options=FAST_COMPILE)(jax.random.key(1), **model.dummy_inputs(1, 4, 3))
    rng = np.random.default_rng(3)
    texts = [rng.integers(1, cfg.vocab_size, size=length).astype(np.int32) for length in TEXT_LENS]
    feats = [rng.normal(size=(r, cfg.v_feature_size)).astype(np.float32) for r in REGIONS]
    locs = [rng.uniform(size=(r, cfg.num_locs)).astype(np.float32) for r in REGIONS]
    batch = {"input_ids": np.zeros((N, LT), np.int32), "text_mask": np.zeros((N, LT), np.int32),
             "features": np.zeros((N, LV, cfg.v_feature_size), np.float32),
             "locations": np.zeros((N, LV, cfg.num_locs), np.float32), "region_mask": np.zeros((N, LV), np.int32)}
    for i in range(N):
        batch["input_ids"][i, :TEXT_LENS[i]] = texts[i]
        batch["input_ids"][i, TEXT_LENS[i]:] = 7  # padding that is not zero must not matter either
        batch["text_mask"][i, :TEXT_LENS[i]] = 1
        batch["features"][i, :REGIONS[i]], batch["locations"][i, :REGIONS[i]] = feats[i], locs[i]
        batch["features"][i, REGIONS[i]:] = 5.0
        batch["region_mask"][i, :REGIONS[i]] = 1

    forward = jax.jit(lambda v, ids, f, loc: model.apply(v, ids, f, loc).itm_logits, compiler_options=FAST_COMPILE)
    dense = np.zeros((N, N, cfg.itm_dim), np.float64)
    for i in range(N):  # item i's real tokens with item j's real regions, unpadded
        for j in range(N):
            dense[i, j] = np.asarray(forward(variables, texts[i][None], feats[j][None], locs[j][None]))[0]
    return model, variables, PairItems.from_batch(batch), dense


@functools.cache
def blocked(name: str, cache_prefix: bool | None = None) -> PairSums:
    model, variables, items, _ = model_case(name)
    mesh = make_mesh(data=2, fsdp=2, devices=jax.devices()[:4])
    program = PairProgram(model, mesh, text_block=2, image_block=4, cache_prefix=cache_prefix,
                          compiler_options=FAST_COMPILE)
    return program(variables, items)


@pytest.mark.parametrize("name", ["uniter", pytest.param("lxmert", marks=pytest.mark.slow)])
def test_blocked_program_equals_per_pair_loop(name):
    _, _, _, dense = model_case(name)
    sums = blocked(name)
    np.testing.assert_allclose(sums.row_sum, dense.sum(1), atol=2e-5)
    np.testing.assert_allclose(sums.col_sum, dense.sum(0), atol=2e-5)
    np.testing.assert_allclose(sums.diag, np.diagonal(dense).T, atol=5e-6)
    assert sums.count == N * N
    np.testing.assert_allclose(sums.m2, ((dense - dense.mean((0, 1))) ** 2).sum((0, 1)), rtol=1e-4, atol=1e-9)
    # the metrics from the sums equal dense numpy on the collected matrix
    result = EmapResult.from_sums(sums, name)
    assert result.full.auroc == pytest.approx(auroc_dense(dense), abs=1e-9)
    assert result.emap.auroc == pytest.approx(auroc_dense(emap_dense(dense)), abs=1e-9)
    assert (result.full.accuracy_matched, result.full.accuracy_mismatched) == pytest.approx(accuracies_dense(dense))
    np.testing.assert_allclose(result.interaction_share, interaction_dense(dense), rtol=1e-3)
    np.testing.assert_allclose(result.emap_diag, np.diagonal(emap_dense(dense)).T, atol=2e-6)


def test_prefix_cache_equals_whole_model():
    assert get_model("lxmert", tiny=True).cfg.unimodal_prefix > 0
    cached, whole = blocked("lxmert"), blocked("lxmert", cache_prefix=False)
    for key in ("row_sum", "col_sum", "diag", "mean", "m2", "positive_scores"):
        np.testing.assert_allclose(getattr(cached, key), getattr(whole, key), atol=1e-5, err_msg=key)
    assert (cached.wins, cached.matched_correct, cached.mismatched_correct) == (
        whole.wins, whole.matched_correct, whole.mismatched_correct)


def test_result_table_and_json(tmp_path):
    result = EmapResult.from_sums(blocked("uniter"), "uniter-tiny")
    table = result.table()
    assert table.startswith("EMAP of uniter-tiny") and f"n = {N} items, {N * N} (text, image) pairs" in table
    assert "| full model |" in table and "| EMAP |" in table and "interaction share (%)" in table
    data = json.loads(result.save_json(tmp_path / "emap.json").read_text())
    assert data["n_items"] == N and data["n_pairs"] == N * N and len(data["matched_logits"]) == N
    assert data["full"]["auroc"] == pytest.approx(result.full.auroc)


def test_bad_blocks_and_single_stream_cache():
    mesh = make_mesh(data=2, fsdp=2, devices=jax.devices()[:4])
    with pytest.raises(ValueError, match="multiple of the 4 devices"):
        PairProgram(get_model("uniter", tiny=True), mesh, text_block=3, image_block=1)
    with pytest.raises(ValueError, match="unimodal prefix"):
        PairProgram(get_model("uniter", tiny=True), mesh, text_block=2, image_block=2, cache_prefix=True)


# ------------------------------------------------------------------------------------------- labelled items


def labelled_dense(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracies and AUROC of ``logits`` [N, C] against ``y`` [N], item by item."""
    says_match = logits.argmax(-1) == 0
    right = says_match == (y == 0)
    s = itm_match_score(logits)
    pos, neg = s[y == 0][:, None], s[y == 1][None, :]
    return dict(accuracy=right.mean(), accuracy_matched=right[y == 0].mean(), accuracy_mismatched=right[y == 1].mean(),
                auroc=((pos > neg) + 0.5 * (pos == neg)).mean())


@pytest.mark.parametrize("n,c", [(40, 2), (101, 3)])
def test_labelled_metrics_match_numpy(n, c):
    rng = np.random.default_rng(n)
    y = (rng.random(n) < 0.4).astype(np.int64)
    logits = rng.normal(size=(n, c))
    logits[:, 0] += 1.2 * (y == 0)  # some signal
    logits[: n // 3] = np.round(logits[: n // 3])  # ties in the match score
    m = labelled_metrics(logits, y, n_boot=2000, seed=1)
    want = labelled_dense(logits, y)
    for key, value in want.items():
        assert getattr(m, key) == pytest.approx(value, abs=1e-12), key
    assert (m.n_matched, m.n_mismatched) == ((y == 0).sum(), (y == 1).sum())
    assert m.balanced_accuracy == pytest.approx(0.5 * (want["accuracy_matched"] + want["accuracy_mismatched"]))
    # the percentile intervals: around the estimate, about as wide as the normal approximation's
    for est, low, high, se in (
            (m.accuracy, m.accuracy_low, m.accuracy_high, np.sqrt(m.accuracy * (1 - m.accuracy) / n)),
            (m.balanced_accuracy, m.balanced_low, m.balanced_high, 0.5 * np.sqrt(
                m.accuracy_matched * (1 - m.accuracy_matched) / m.n_matched
                + m.accuracy_mismatched * (1 - m.accuracy_mismatched) / m.n_mismatched))):
        assert low < est < high
        assert high - low == pytest.approx(2 * 1.96 * se, rel=0.25)
    # the same resamples as the bootstrap weights of the seed: a direct resampling of the accuracy
    w = bootstrap_weights(n, 2000, 1)
    right = (logits.argmax(-1) == 0) == (y == 0)
    boot = np.array([np.repeat(right, counts.astype(int)).mean() for counts in w])
    assert (m.accuracy_low, m.accuracy_high) == pytest.approx(tuple(np.percentile(boot, [2.5, 97.5])))


def planted_scores(n: int, kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """f [N, N, 2] over all (text i, image j) of N labelled items and their labels [N]: each image has a class,
    text k names image k's class (y = 0) or, for a foil (y = 1), the class of another item's image that differs
    (as ``jaxvl.data.synthetic.foils``). ``interaction``: f says match where the classes agree (needs both);
    ``tell``: every foil text carries a tell that f reads alone."""
    rng = np.random.default_rng(seed)
    image_class = rng.integers(0, 10, n)
    y = (rng.random(n) < 0.5).astype(np.int64)
    text_class = image_class.copy()
    for k in np.flatnonzero(y == 1):
        text_class[k] = image_class[rng.choice(np.flatnonzero(image_class != image_class[k]))]
    f = np.zeros((n, n, 2))
    if kind == "interaction":
        f[..., 0] = np.where(text_class[:, None] == image_class[None, :], 2.0, -2.0)
    else:
        f[..., 0] = np.where(y[:, None] == 1, -2.0, 2.0) + rng.normal(scale=0.3, size=(1, n))
    return f + 0.1 * rng.normal(size=f.shape), y


def test_labelled_emap_keeps_a_tell_and_loses_an_interaction():
    n = 200
    for kind in ("tell", "interaction"):
        f, y = planted_scores(n, kind)
        result = EmapResult.from_sums(stream(f.astype(np.float32), 32, 32), kind, labels=y)
        assert result.design == "labelled" and isinstance(result.full, LabelledMetrics)
        # the result scores each item by its own pair: the diagonal of f and of the dense projection
        for got, logits in ((result.full, np.diagonal(f).T), (result.emap, np.diagonal(emap_dense(f)).T)):
            for key, value in labelled_dense(logits, y).items():
                assert getattr(got, key) == pytest.approx(value, abs=1e-6), (kind, key)
        assert result.full.accuracy == 1.0 and result.full.accuracy_low > 0.95
        if kind == "tell":
            assert result.emap.accuracy == 1.0 and result.emap.auroc == 1.0
        else:
            assert result.emap.accuracy_low < 0.5 < result.emap.accuracy_high, result.emap
            assert result.emap.balanced_low <= 0.5 <= result.emap.balanced_high, result.emap
            # below 0.65: a frequent class is matched a little more often than foiled (a foil names another
            # class), a weak text-only tell the projection may keep
            assert abs(result.emap.auroc - 0.5) < 0.15, result.emap


def test_labelled_table_json_and_bad_labels(tmp_path):
    f, y = planted_scores(20, "tell")
    sums = stream(f.astype(np.float32), 8, 8)
    result = EmapResult.from_sums(sums, "toy", labels=y)
    table = result.table()
    assert table.startswith("EMAP of toy") and "Design: labelled items" in table
    assert f"n = 20 labelled items ({(y == 0).sum()} matched, {(y == 1).sum()} mismatched)" in table
    assert "| full model | 100.0 [100.0, 100.0] |" in table
    data = json.loads(result.save_json(tmp_path / "emap.json").read_text())
    assert data["design"] == "labelled" and data["labels"] == y.tolist() and len(data["item_logits"]) == 20
    assert data["emap"]["accuracy_low"] == pytest.approx(result.emap.accuracy_low)
    unlabelled = EmapResult.from_sums(sums, "toy")
    assert unlabelled.design == "pairs" and "Design: all N x N" in unlabelled.table()
    assert "labels" not in unlabelled.as_dict() and "matched_logits" in unlabelled.as_dict()
    for bad, match in ((y[:-1], r"labels: shape \(19,\)"), (np.where(y == 1, 2, 0), "labels: expected integers"),
                       (y.astype(float), "labels: expected integers")):
        with pytest.raises(ValueError, match=match):
            EmapResult.from_sums(sums, labels=bad)
    items = {"input_ids": np.ones((3, 4), int), "text_mask": np.ones((3, 4), int), "features": np.zeros((3, 2, 24)),
             "locations": np.zeros((3, 2, 5)), "region_mask": np.ones((3, 2), int)}
    with pytest.raises(ValueError, match="labels: shape"):  # before anything compiles: no variables needed
        run_emap(get_model("uniter", tiny=True), None, items, labels=np.zeros(4, int))

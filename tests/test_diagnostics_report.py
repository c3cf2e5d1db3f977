"""Report: bootstrap intervals, tidy rows of a hand-made result (means, counts, paired deltas, subsets, the
missing-target quirk), the paper-style table, and the files write_report writes."""

import csv
import gzip
import json
import math

import numpy as np
import pytest

from jaxvl.ablation.conditions import Quirks
from jaxvl.ablation.report import (
    TIDY_FIELDS,
    bootstrap_means,
    bootstrap_weights,
    markdown_table,
    tidy_rows,
    write_report,
)
from jaxvl.ablation.sweep import AblationResult, AblationSpec

N = 40


def test_bootstrap_weights_and_intervals():
    w = bootstrap_weights(50, 300, seed=1)
    assert w.shape == (300, 50) and (w.sum(1) == 50).all()
    np.testing.assert_array_equal(w, bootstrap_weights(50, 300, seed=1))
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (400, 1))
    mean, low, high = bootstrap_means(x, np.ones_like(x, bool), bootstrap_weights(400, 2000, 0))
    assert mean[0] == pytest.approx(x.mean())
    # the percentile interval of a mean is about +-1.96 standard errors
    assert (high[0] - low[0]) == pytest.approx(2 * 1.96 * x.std() / math.sqrt(400), rel=0.1)
    assert low[0] < x.mean() < high[0]
    # a masked column averages only its examples; an empty one is NaN
    vals = np.stack([np.arange(10.0), np.arange(10.0)], 1)
    mask = np.stack([np.arange(10) < 4, np.zeros(10, bool)], 1)
    mean, low, high = bootstrap_means(vals, mask, bootstrap_weights(10, 200, 0))
    assert mean[0] == 1.5 and 0 <= low[0] <= high[0] <= 3 and np.isnan(mean[1]) and np.isnan(low[1])


def hand_result(quirks: Quirks | None = None):
    """2 models; vis4lang none/object@0.5/all; lang4vis none/phrase/all @0.5; known per-example values."""
    quirks = quirks or Quirks()
    spec = AblationSpec(4, thresholds=(0.5,), quirks=quirks)
    members = {t: spec.members(t) for t in ("vis4lang", "lang4vis")}
    rng = np.random.default_rng(0)
    base = rng.normal(5.0, 1.0, N)
    mlm = np.stack([np.stack([base, base + 1.0, base + 2.0]), np.stack([base, base, base])])  # [K, M, N]
    kl = np.stack([np.stack([base, base + 0.5, base + 0.25]), np.stack([base] * 3)])
    has = np.arange(N) >= 10  # the first 10 examples have no aligned region: VOLTA scores them 0
    kl[:, :, ~has] = 0.0
    vg = np.where(np.arange(N) % 2 == 0, 3, -1)
    rank = np.where(has & (vg >= 0), np.arange(N) % 4, -1)
    stats = {"phrase_tokens": np.where(np.arange(N) == N - 1, 0, 3), "vis4lang_ablated": np.ones((3, N), int),
             "num_aligned": np.tile(has.astype(int), (3, 1)), "has_target": np.tile(has, (3, 1)),
             "text_masked": np.tile([[0], [3], [5]], (1, N)),
             "target_index": np.ones((3, N), int), "detector_rank": np.tile(rank, (3, 1)),
             "detector_prob": np.full((3, N), 0.25)}
    values = {"vis4lang": {"mlm": mlm}, "lang4vis": {"mrc_kl": kl, "mrc_xe_vg": kl * 2}}
    return AblationResult(("m1", "m2"), members, np.arange(N), values, stats, quirks, vg_label=vg)


def find(rows, **kw):
    hits = [r for r in rows if all(r[k] == v for k, v in kw.items())]
    assert len(hits) == 1, kw
    return hits[0]


def test_tidy_rows_means_counts_and_paired_deltas():
    res = hand_result()
    rows = tidy_rows(res, n_boot=300)
    assert all(tuple(r) == TIDY_FIELDS for r in rows)
    keep = np.arange(N) < N - 1  # vis4lang drops the example whose phrase lost every token
    base = res.values["vis4lang"]["mlm"][0, 0]
    r = find(rows, model="m1", task="vis4lang", condition="object", metric="mlm", subset="all")
    assert r["threshold"] == 0.5 and r["count"] == N - 1
    assert r["mean"] == pytest.approx(base[keep].mean() + 1.0)
    # a constant shift per example: the paired interval collapses onto it
    assert r["delta"] == pytest.approx(1.0) and r["delta_low"] == pytest.approx(1.0)
    assert r["delta_high"] == pytest.approx(1.0)
    assert r["ci_low"] < r["mean"] < r["ci_high"]
    r = find(rows, model="m2", task="vis4lang", condition="all", metric="mlm", subset="all")
    assert r["threshold"] is None and r["delta"] == pytest.approx(0.0)
    none = find(rows, model="m1", task="vis4lang", condition="none", metric="mlm", subset="all")
    assert none["delta"] == 0.0 and none["without_target"] is None
    # lang4vis (VOLTA): the 10 examples without a target count as 0 in the mean, and are reported
    kl = res.values["lang4vis"]["mrc_kl"][0]
    r = find(rows, model="m1", task="lang4vis", condition="phrase", metric="mrc_kl", subset="all")
    assert r["count"] == N and r["without_target"] == 10
    assert r["mean"] == pytest.approx(kl[1].mean())
    assert r["delta"] == pytest.approx((kl[1] - kl[0]).mean())
    # LabelMatch: even examples; agree: those with rank 0; MRC-XE-VG only on those subsets
    vg = res.vg_label >= 0
    r = find(rows, model="m1", task="lang4vis", condition="none", metric="mrc_kl", subset="labelmatch")
    assert r["count"] == vg.sum() and r["without_target"] == int((vg & ~res.stats["has_target"][0]).sum())
    r = find(rows, model="m1", task="lang4vis", condition="all", metric="mrc_xe_vg", subset="labelmatch_agree")
    agree = vg & (res.stats["detector_rank"][2] == 0)
    assert r["count"] == agree.sum() and r["mean"] == pytest.approx(2 * kl[2][agree].mean())
    assert not [r for r in rows if r["metric"] == "mrc_xe_vg" and r["subset"] == "all"]


def test_corrected_quirk_excludes_examples_without_target():
    res = hand_result(Quirks(missing_target_as_zero=False))
    rows = tidy_rows(res, n_boot=100)
    kl = res.values["lang4vis"]["mrc_kl"][0]
    r = find(rows, model="m1", task="lang4vis", condition="phrase", metric="mrc_kl", subset="all")
    assert r["count"] == N - 10 and r["without_target"] == 10
    assert r["mean"] == pytest.approx(kl[1][10:].mean())


def test_markdown_table_has_the_papers_layout():
    rows = tidy_rows(hand_result(), n_boot=100)
    table = markdown_table(rows)
    lines = table.strip().split("\n")
    assert lines[0].startswith("Mean loss in bits [95% bootstrap interval]: vis4lang MLM on n=39 examples;")
    assert lines[2] == ("| model | MLM None | MLM Object (IoT>0.5) | MLM All | MLM Δ All−None | "
                        "MRC-KL None (IoT>0.5) | MRC-KL Phrase (IoT>0.5) | MRC-KL All (IoT>0.5) | MRC-KL Δ All−None |")
    m1 = next(line for line in lines if line.startswith("| m1 |")).split(" | ")
    r = find(rows, model="m1", task="vis4lang", condition="all", metric="mlm", subset="all")
    assert m1[3].startswith(f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
    assert m1[4].startswith("+2.000 [2.000, 2.000]")
    assert "n=40 examples in the mean, 10 without an aligned region" in table


def test_write_report_files(tmp_path):
    res = hand_result()
    attention = [dict(model="m1", sublayer=0, stream="text", head=h, threshold=0.5, entropy=0.5 + 0.1 * h,
                      queries=10, aligned_share=0.4, chance_share=0.2, vision_mass=0.3, phrase_queries=5)
                 for h in range(2)]
    paths = write_report(res, tmp_path / "report", n_boot=100, phrases=[f"p{i}" for i in range(N)],
                         attention=attention)
    for name in ("conditions.png", "thresholds.png", "attention.png"):
        with open(paths[name], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(paths["results.csv"]) as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == TIDY_FIELDS and len(rows) == len(tidy_rows(res, n_boot=10))
    with open(paths["results.jsonl"]) as f:
        assert len([json.loads(line) for line in f]) == len(rows)
    with gzip.open(str(tmp_path / "report" / "per_example.vis4lang.csv.gz"), "rt") as f:
        per = list(csv.DictReader(f))
    assert len(per) == 2 * 3 * N and per[0]["phrase"] == "p0" and per[N - 1]["included"] == "0"
    with gzip.open(str(tmp_path / "report" / "per_example.lang4vis.csv.gz"), "rt") as f:
        per = list(csv.DictReader(f))
    assert len(per) == 2 * 3 * N and {"mrc_kl", "mrc_xe_vg", "has_target", "vg_label"} <= set(per[0])
    with open(paths["detector.csv"]) as f:
        det = list(csv.DictReader(f))
    assert len(det) == 1 and int(det[0]["labelmatch"]) == N // 2
    table = open(paths["table.md"]).read()
    assert "| m1 |" in table and "LabelMatch at IoT>0.5" in table and "labelmatch_agree" in table

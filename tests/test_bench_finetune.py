"""Smoke test of ``jaxvl bench finetune`` (jaxvl.benchmarks.finetune) at tiny size with small counts: the rows, the
JSON and the markdown tables, that every rate and projection follows from the measured times as the module doc says,
and that the per-pair loop scores the pairs as the retrieval program does (the timings themselves are not
asserted)."""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import pytest

from jaxvl.benchmarks import finetune

# NLVR2's step (2 images per example: 4 encoder rows for a batch of 2), 4 regions + [IMG]
STEPS = ["--sizes", "tiny", "--parts", "steps", "--tasks", "nlvr2", "--steps", "2", "--batch", "2", "--regions", "4",
         "--fast-compile", "--markdown"]
# LXMERT's retrieval: 2 images x 5 captions in 5 x 2 blocks, both program variants and a loop of 3 pairs
RETRIEVAL = ["--sizes", "tiny", "--parts", "retrieval", "--presets", "lxmert", "--images", "2", "--text-block", "5",
             "--image-block", "2", "--loop-pairs", "3", "--iters", "2", "--regions", "4", "--fast-compile",
             "--markdown"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    finetune.add_arguments(parser)
    return parser.parse_args(argv)


def test_bench_finetune_step_row_and_table(tmp_path, capsys):
    out = tmp_path / "finetune.json"
    result = finetune.run(parse([*STEPS, "--out", str(out)]))
    (step,) = result["rows"]
    assert (step["part"], step["task"], step["preset"], step["size"]) == ("steps", "nlvr2", "uniter", "tiny")
    assert (step["volta_task"], step["type"]) == ("TASK12", "VL-binary-classifier")
    assert (step["batch"], step["volta_batch"], step["rows_per_step"]) == (2, 64, 4)  # two images per sentence
    assert (step["text_len"], step["region_rows"]) == (40, 5) and step["params"] > 0 and np.isfinite(step["loss"])
    assert len(step["step_runs_ms"]) == 2  # rounded to 0.1 us
    assert step["step_ms"] == pytest.approx(statistics.median(step["step_runs_ms"]), abs=1e-3)
    assert step["steps_per_s"] == pytest.approx(1e3 / step["step_ms"])
    assert step["examples_per_s"] == pytest.approx(2 * step["steps_per_s"])
    assert step["rows_per_s"] == pytest.approx(4 * step["steps_per_s"])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert "| nlvr2 | uniter | tiny | VL-binary-classifier | 2 (64) | 4 x (40 + 5) |" in capsys.readouterr().out


@pytest.mark.slow  # ~25 s loaded: compiles the program and the loop for two presets
def test_bench_finetune_retrieval_rows_projections_and_loop(capsys):
    rows = finetune.run(parse(RETRIEVAL))["rows"]
    assert [(r["part"], r["variant"]) for r in rows] == [
        ("retrieval", "prefix cached"), ("retrieval", "whole model per pair"), ("retrieval", "per-pair loop")]
    cached, whole, loop = rows
    for r in rows:
        assert (r["preset"], r["images"], r["captions"], r["text_len"], r["region_rows"]) == ("lxmert", 2, 10, 30, 5)
        assert len(r["call_runs_s"]) == 2 and r["call_s"] == pytest.approx(statistics.median(r["call_runs_s"]),
                                                                           abs=1e-5)
        assert r["call_pairs_per_s"] == pytest.approx(r["pairs_per_call"] / r["call_s"])
        assert r["pairs_per_s"] == pytest.approx(r["pairs_per_call"] / (r["call_s"] - r["prefix_s"]))
        assert r["prefix_ms_per_item"] == pytest.approx(1e3 * r["prefix_s"] / 12)  # 10 captions + 2 images
        assert r["projection_pairs"] == 5_000_000
        assert r["projected_s"] == pytest.approx(5e6 / r["pairs_per_s"] + 6000 * r["prefix_ms_per_item"] / 1e3)
        assert r["projected_with_compile_s"] == pytest.approx(r["projected_s"] + r["compile_s"])
        assert 0 < r["compile_s"] < r["first_call_s"]
    assert (cached["cache_prefix"], whole["cache_prefix"], loop["cache_prefix"]) == (True, False, None)
    assert cached["pairs_per_call"] == whole["pairs_per_call"] == 20 and loop["pairs_per_call"] == 3
    assert (cached["text_block"], cached["image_block"], cached["k"]) == (5, 2, 2)
    for r in (cached, whole):
        assert r["speedup_vs_loop"] == pytest.approx(loop["projected_s"] / r["projected_s"])
    assert 0 < cached["prefix_s"] == pytest.approx(statistics.median(cached["prefix_runs_s"]), abs=1e-5)
    assert whole["prefix_s"] == loop["prefix_s"] == 0 and whole["prefix_runs_s"] is None
    rounds = [w / c for c, w in zip(cached["call_runs_s"], whole["call_runs_s"], strict=True)]
    assert cached["cache_call_speedup_rounds"] == pytest.approx(rounds, rel=1e-3)
    assert cached["cache_call_speedup"] == pytest.approx(statistics.median(rounds), rel=1e-3)
    assert cached["cache_speedup"] == pytest.approx(whole["projected_s"] / cached["projected_s"])
    # k = M = 2: every looped pair is in the program's lists, and the loop scores it as the program does
    assert loop["loop_checked_pairs"] == 3 and loop["loop_max_abs_diff"] < 1e-4
    printed = capsys.readouterr().out
    assert "| lxmert | tiny | per-pair loop | 3 | - |" in printed and "5 M pairs" in printed


def test_bench_finetune_refuses_bad_counts():
    with pytest.raises(SystemExit, match="--images=0"):
        finetune.run(parse(["--images", "0"]))
    with pytest.raises(SystemExit, match="--batch=-1 must be >= 0"):
        finetune.run(parse(["--batch", "-1"]))
    with pytest.raises(SystemExit, match="--regions=0"):
        finetune.run(parse(["--regions", "0"]))
    args = parse(["--sizes", "ctrl"])
    assert finetune.settings("ctrl", False, args).batch == 2  # a CPU's cut-down default
    assert finetune.settings("ctrl", True, args).batch is None  # VOLTA's
    assert finetune.settings("ctrl", False, parse(["--batch", "0"])).batch is None

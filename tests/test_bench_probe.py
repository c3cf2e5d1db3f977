"""Smoke test of ``jaxvl bench probe`` (jaxvl.benchmarks.probe) at tiny size with small N: the rows, the JSON and
the markdown tables, and that every rate and projection follows from the measured times as the module doc says
(the timings themselves are not asserted)."""

from __future__ import annotations

import argparse
import json
import math
import statistics

import pytest

from jaxvl.benchmarks import probe

# 16 items in 8 x 4 blocks (8 blocks per call); 12 text positions and 6 regions + [IMG]: 10 + 6 player slots
SMOKE = ["--sizes", "tiny", "--presets", "uniter,lxmert", "--items", "16", "--text-block", "8", "--image-block", "4",
         "--permutations", "2", "--chunk", "16", "--examples", "2", "--iters", "2", "--text-len", "12", "--regions",
         "6", "--fast-compile", "--markdown"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    probe.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.slow
def test_bench_probe_tiny_rows_tables_and_projections(tmp_path, capsys):
    out = tmp_path / "probe.json"
    result = probe.run(parse([*SMOKE, "--out", str(out)]))

    rows = result["rows"]
    assert [(r["probe"], r["preset"], r.get("cache_prefix")) for r in rows] == [
        ("emap", "uniter", False), ("mmshap", "uniter", None),
        ("emap", "lxmert", True), ("emap", "lxmert", False), ("mmshap", "lxmert", None)]
    for r in rows:
        assert r["size"] == "tiny" and r["text_len"] == 12 and r["region_rows"] == 7 and r["params"] > 0
        assert 0 < r["compile_s"] < r["first_call_s"]
        assert r["projected_with_compile_s"] == pytest.approx(r["projected_s"] + r["compile_s"])
    for r in (r for r in rows if r["probe"] == "emap"):
        assert (r["items"], r["pairs_per_call"], r["pairs_per_block"], r["blocks_per_call"]) == (16, 256, 32, 8)
        runs = r["block_runs_ms"]
        assert len(runs) == 2 * (8 - 1) and min(runs) > 0  # each call's first block is the setup's
        assert r["block_ms"] == pytest.approx(statistics.median(runs), rel=1e-3)
        assert r["pairs_per_s"] == pytest.approx(32 / (r["block_ms"] / 1e3))
        assert r["call_pairs_per_s"] == pytest.approx(256 / r["call_s"])
        assert r["call_s"] == pytest.approx(statistics.median(r["call_runs_s"]), rel=1e-4)
        assert (r["projection_items"], r["projection_pairs"]) == (1000, 10 ** 6)
        assert r["projection_blocks"] == math.ceil(1000 / 8) * math.ceil(1000 / 4)
        assert r["projected_s"] == pytest.approx(
            (r["projection_blocks"] * r["block_ms"] + 1000 * r["setup_ms_per_item"]) / 1e3 + result["emap_analysis_s"])
    cached, whole = rows[2], rows[3]
    for r in (cached, whole):
        assert r["block_round_ms"] == pytest.approx([statistics.median(r["block_runs_ms"][i * 7:(i + 1) * 7])
                                                     for i in range(2)], rel=1e-3)
    rounds = [w / c for w, c in zip(whole["block_round_ms"], cached["block_round_ms"], strict=True)]
    assert cached["cache_speedup_rounds"] == pytest.approx(rounds)
    assert cached["cache_speedup"] == pytest.approx(statistics.median(rounds))
    assert cached["cache_projected_speedup"] == pytest.approx(whole["projected_s"] / cached["projected_s"])
    for r in (r for r in rows if r["probe"] == "mmshap"):
        c = 2 + 2 * 2 * (16 - 1)  # the module doc's C = 2 + 2 K (S - 1)
        assert (r["slots"], r["coalitions_per_example"], r["batches_per_example"]) == (16, c, math.ceil(c / 16))
        assert len(r["example_runs_ms"]) == 2 * 2
        assert r["example_ms"] == pytest.approx(statistics.median(r["example_runs_ms"]), rel=1e-3)
        assert r["coalitions_per_s"] == pytest.approx(c / (r["example_ms"] / 1e3))
        assert r["batch_ms"] * r["batches_per_example"] == pytest.approx(r["example_ms"])
        c10 = 2 + 2 * 10 * (16 - 1)
        assert (r["projection_examples"], r["projection_coalitions_per_example"]) == (1000, c10)
        assert r["projected_s"] == pytest.approx(1000 * math.ceil(c10 / 16) * r["batch_ms"] / 1e3)

    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    printed = capsys.readouterr().out
    assert f"Device: {result['device']}" in printed and "host EMAP analysis at N = 1000" in printed
    assert "| preset | size | variant | N timed (pairs) |" in printed and "| coalitions / s |" in printed
    assert sum(line.startswith("| uniter | tiny |") for line in printed.splitlines()) == 2
    lxmert = [line for line in printed.splitlines() if line.startswith("| lxmert | tiny | prefix cached |")]
    assert len(lxmert) == 1 and f"| {cached['cache_speedup']:.2f}x |" in lxmert[0]


def test_settings_defaults_options_and_refusals():
    args = parse([])
    assert probe.settings("ctrl", False, args) == probe.DEFAULTS[("ctrl", False)]
    assert probe.settings("tiny", False, parse(["--items", "9"])).items == 9
    with pytest.raises(SystemExit, match="--chunk=0 must be >= 1"):
        probe.settings("tiny", False, parse(["--chunk", "0"]))
    with pytest.raises(SystemExit, match="--items=8 gives one block of 8 x 8"):
        probe.settings("tiny", False, parse(["--items", "8"]))


def test_a_refused_option_is_one_line_before_anything_runs(capsys):
    from jaxvl.cli import main

    assert main(["bench", "probe", "--sizes", "tiny", "--items", "8"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip() == (
        "jaxvl: error: --items=8 gives one block of 8 x 8: the block time needs at least 2 blocks per call")


def test_union_of_time_spans_counts_nested_and_overlapping_spans_once():
    assert probe.union_seconds([]) == 0.0
    assert probe.union_seconds([(0.0, 10.0), (2.0, 3.0), (9.0, 12.0), (20.0, 21.0)]) == pytest.approx(13.0)


def test_compile_clock_sees_a_compile_and_not_a_cached_call():
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda x: jnp.sin(x) * 3 + 1)
    with probe.compile_clock() as spans:
        f(jnp.ones(7)).block_until_ready()
    assert probe.union_seconds(spans) > 0
    with probe.compile_clock() as spans:
        f(jnp.ones(7)).block_until_ready()
    assert spans == []


def test_projections_by_hand():
    emap = {"text_block": 32, "image_block": 32, "block_ms": 100.0, "setup_ms_per_item": 2.0, "analysis_s": 0.5,
            "compile_s": 10.0}
    probe.add_emap_projection(emap)
    assert emap["projection_blocks"] == 32 * 32  # ceil(1000 / 32) = 32
    assert emap["projected_s"] == pytest.approx(1024 * 0.1 + 1000 * 0.002 + 0.5)
    shap = {"chunk": 256, "batch_ms": 50.0, "compile_s": 3.0}
    probe.add_mmshap_projection(shap, probe.coalitions_per_example(10, 72))
    assert shap["projection_coalitions_per_example"] == 2 + 2 * 10 * 71 == 1422
    assert shap["projected_s"] == pytest.approx(1000 * math.ceil(1422 / 256) * 0.05)
    assert shap["projected_with_compile_s"] == pytest.approx(shap["projected_s"] + 3.0)

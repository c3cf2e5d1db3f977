"""Smoke test of ``jaxvl bench ablate`` (jaxvl.benchmarks.ablate) at tiny size, with few members and short calls.

Beyond the result's structure it checks that the per-condition loop evaluates what the compiled sweep
evaluates (every metric, member and checkpoint equal up to float noise), that each loop program holds
exactly one member of the spec, and the projection arithmetic by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics

import pytest

from jaxvl.ablation.sweep import AblationSpec, Member
from jaxvl.benchmarks import ablate

SMOKE = ["--sizes", "tiny", "--presets", "lxmert", "--models", "2", "--vis4lang", "object", "--lang4vis", "phrase",
         "--thresholds", "0.3", "--batch", "4", "--text-len", "16", "--regions", "6", "--warmup", "0", "--iters", "2",
         "--fast-compile", "--member-batch", "vmap,1", "--rows", "scored,every", "--prefix", "shared"]


def bench(argv: list[str]) -> dict:
    """``jaxvl bench ablate ARGV``: the module's CLI hooks, as the CLI calls them."""
    parser = argparse.ArgumentParser()
    ablate.add_arguments(parser)
    return ablate.run(parser.parse_args(argv))


@pytest.mark.slow
def test_bench_ablate_tiny_rows_table_and_loop_equals_sweep(tmp_path, capsys):
    out = tmp_path / "ablate.json"
    result = bench([*SMOKE, "--out", str(out)])

    rows = result["rows"]
    assert [(r["preset"], r["size"], r["k"], r["member_batch_size"], r["head_rows"]) for r in rows] == [
        ("lxmert", "tiny", 2, None, "scored"), ("lxmert", "tiny", 2, None, "every"),
        ("lxmert", "tiny", 2, 1, "scored"), ("lxmert", "tiny", 2, 1, "every")]
    for r in rows:
        assert (r["members"], r["vis4lang_members"], r["lang4vis_members"]) == (2, 1, 1)
        assert r["batch"] == 4 and r["text_len"] == 16 and r["regions"] == 7  # 6 detector rows + [IMG]
        assert r["evals_per_call"] == 4 * 2 * 2 and r["loop_programs"] == 2
        assert r["params_per_model"] > 0 and r["fast_compile"] is True
        assert r["sweep_compile_s"] > r["sweep_lower_s"] > 0 and r["loop_compile_s"] > 0
        for what in ("sweep", "loop"):
            runs = r[f"{what}_runs_ms"]
            assert len(runs) == 2 and min(runs) > 0
            assert r[f"{what}_ms"] == pytest.approx(statistics.median(runs), rel=1e-3)
            assert r[f"{what}_evals_per_s"] == pytest.approx(r["evals_per_call"] / (r[f"{what}_ms"] / 1e3))
            assert r[f"{what}_projected_s"] == pytest.approx(math.ceil(14_433 / 4) * r[f"{what}_ms"] / 1e3)
        assert r["sweep_over_loop"] == pytest.approx(r["sweep_evals_per_s"] / r["loop_evals_per_s"])
        assert r["max_abs_diff_bits"] < 1e-4, "the loop must evaluate what the sweep evaluates"
    assert len({tuple(r["loop_runs_ms"]) for r in rows}) == 1  # every sweep variant against one loop timing
    assert result["options"]["models"] == [2]

    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    printed = capsys.readouterr().out
    assert "| preset | size | K | B | members |" in printed
    table = [line for line in printed.splitlines() if line.startswith("| lxmert | tiny | 2 | 4 | 2 |")]
    assert [line.split(" | ")[5] for line in table] == [
        "vmap, heads at scored rows, prefix shared", "vmap, heads at every row, prefix shared",
        "map 1, heads at scored rows, prefix shared", "map 1, heads at every row, prefix shared"]


def test_member_specs_hold_one_member_each_and_the_default_spec_has_42():
    spec = AblationSpec(mask_id=3)
    assert (len(spec.members("vis4lang")), len(spec.members("lang4vis"))) == (12, 30)
    for task, other in (("vis4lang", "lang4vis"), ("lang4vis", "vis4lang")):
        for member in spec.members(task):
            one = ablate.member_spec(spec, member)
            assert one.members(task) == (member,) and one.members(other) == ()
            assert one.mask_id == 3 and one.quirks == spec.quirks
    assert ablate.member_spec(spec, Member("vis4lang", "all", None)).thresholds == ()


def test_projection_and_durations_by_hand():
    row = {"batch": 16, "sweep_ms": 1000.0, "sweep_compile_s": 10.0, "loop_ms": 42_000.0, "loop_compile_s": 420.0}
    ablate.add_projection(row)
    assert row["projection_batches"] == 903  # ceil(14,433 / 16)
    assert row["sweep_projected_s"] == pytest.approx(903.0)
    assert row["sweep_projected_with_compile_s"] == pytest.approx(913.0)
    assert row["loop_projected_s"] == pytest.approx(903 * 42.0)
    assert row["loop_projected_with_compile_s"] == pytest.approx(903 * 42.0 + 420.0)
    assert [ablate.duration(s) for s in (42, 210, 7560, None)] == ["42 s", "3.5 min", "2.1 h", "-"]


@pytest.mark.parametrize("flags, message", [(["--thresholds", "0.5,1.5"], "outside [0, 1]"),
                                            (["--models", "1,0"], "every K must be >= 1"),
                                            (["--batch", "0"], "--batch=0"),
                                            (["--member-batch", "vmap,0"], "every N must be >= 1")])
def test_bad_options_fail_before_anything_is_built(flags, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        bench(["--sizes", "tiny", *flags])

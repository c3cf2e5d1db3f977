"""Smoke test of ``jaxvl bench caption`` (jaxvl.benchmarks.caption) at tiny size, with few, short calls.

Beyond the result's structure it checks that the two baselines decode what jaxvl's batched decoding
decodes: the per-image loop and the no-cache ORT-style decoder (a full-prefix decoder with host beam
bookkeeping) give every image the same best caption, and the ORT-style step equals the last position
of ``Captioner.decode``.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import pytest
from flax import linen as nn

from jaxvl.benchmarks import caption
from jaxvl.benchmarks.caption_decode import ort_next_log_probs
from jaxvl.models.ort.captioner import Captioner, CaptionerConfig

SMOKE = ["--sizes", "tiny", "--batch", "3", "--loop-images", "2", "--max-len", "3", "--xe-batch", "2",
         "--scst-batch", "2", "--captions", "2", "--df-images", "3", "--warmup", "0", "--iters", "2", "--fast-compile"]


def bench(argv: list[str]) -> dict:
    """``jaxvl bench caption ARGV``: the module's CLI hooks, as the CLI calls them."""
    parser = argparse.ArgumentParser()
    caption.add_arguments(parser)
    return caption.run(parser.parse_args(argv))


def _check_saved_and_printed(result: dict, out, printed: str, rows: int, header: str) -> None:
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["models"]["tiny"]["params"] > 0 and result["options"]["fast_compile"] is True
    assert len([line for line in printed.splitlines() if line.startswith("| tiny | float32 |")]) == rows
    assert header in printed


@pytest.mark.slow
def test_bench_caption_decoding_rows_and_same_captions(tmp_path, capsys):
    out = tmp_path / "caption.json"
    result = bench([*SMOKE, "--parts", "decode", "--out", str(out)])
    decode = result["decode"]
    assert result["train"] == []
    assert [(r["method"], r["mode"]) for r in decode] == [(m, mode) for m in caption.METHODS for mode in caption.MODES]
    for r in decode:
        batched = next(b for b in decode if b["method"] == r["method"] and b["mode"] == "batched")
        assert r["size"] == "tiny" and r["dtype"] == "float32" and r["beam"] == (1 if r["method"] == "greedy" else 5)
        assert len(r["runs_ms"]) == 2 and r["compile_s"] > 0 and r["captions_per_s"] > 0
        assert r["captions_per_s"] == pytest.approx(r["images_per_call"] / (r["ms_per_call"] / 1e3))
        assert 1 <= r["decoder_steps"] <= 3 and 1 <= r["mean_length"] <= 3
        if r["mode"] == "batched":
            assert r["images_per_call"] == 3 and r["same_as_batched"] is None and r["batched_over_this"] is None
        else:  # the baselines decode what the batched program decodes
            assert r["same_as_batched"] == 1.0
            assert r["batched_over_this"] == pytest.approx(batched["captions_per_s"] / r["captions_per_s"])
    per_call = {(r["method"], r["mode"]): r["images_per_call"] for r in decode}
    assert per_call[("greedy", "ort-style")] == 3 and per_call[("beam", "ort-style")] == 2  # ORT: batched greedy
    assert per_call[("beam", "per-image")] == 2
    _check_saved_and_printed(result, out, capsys.readouterr().out, len(decode), "| size | dtype | method | mode |")


@pytest.mark.slow
def test_bench_caption_training_rows(tmp_path, capsys):
    out = tmp_path / "caption.json"
    result = bench([*SMOKE, "--parts", "train", "--out", str(out)])
    assert result["decode"] == []
    xe, scst = result["train"]
    assert (xe["step"], scst["step"]) == ("xe", "scst")
    assert xe["images"] == 2 and scst["images"] == 2 and xe["captions_per_image"] == 2
    for r in (xe, scst):
        assert len(r["runs_ms"]) == 2 and r["compile_s"] > 0
        assert r["steps_per_s"] == pytest.approx(1e3 / r["ms_per_step"])
        assert r["captions_per_s"] == pytest.approx(r["steps_per_s"] * 4)
    assert scst["compile_s"] == pytest.approx(scst["compile_sampler_s"] + scst["compile_update_s"])
    assert min(scst["sampler_ms"], scst["reward_ms"], scst["update_ms"]) > 0 and 0 < scst["reward_share"] < 1
    _check_saved_and_printed(result, out, capsys.readouterr().out, 2, "| size | dtype | step |")


def test_ort_style_step_is_the_last_position_of_teacher_forcing():
    cfg = CaptionerConfig.tiny()
    model = Captioner(cfg)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), **model.dummy_inputs())["params"]))
    rng = np.random.default_rng(1)  # random weights without compiling an init
    variables = {"params": jax.tree.map(lambda x: (0.3 * rng.standard_normal(x.shape)).astype(np.float32), shapes)}
    x = caption.random_regions(cfg, batch=2, regions=5, seed=0)
    x["mask"][1, -2:] = 0
    ys = np.random.default_rng(0).integers(1, cfg.vocab_size - 1, (2, 4)).astype(np.int32)
    ys[:, 0] = 0  # BOS

    @jax.jit
    def both(v, features, boxes, mask, ys):
        memory = model.apply(v, features, boxes, mask, method="encode")
        return (model.apply(v, memory, mask, ys, method="decode")[:, -1],
                model.apply(v, memory, mask, ys, method=ort_next_log_probs))

    expected, got = both(variables, x["features"], x["boxes"], x["mask"], ys)
    assert got.shape == (2, cfg.vocab_size)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flag", [["--iters", "0"], ["--beam", "0"], ["--warmup", "-1"], ["--sizes", "big"]])
def test_bad_options_are_rejected_before_compiling(flag):
    with pytest.raises(SystemExit):
        bench(["--parts", "decode", *flag])

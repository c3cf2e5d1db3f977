"""`jaxvl probe emap` end to end on a tiny pretrained checkpoint: emap.json and table.md with N items and N^2 pairs,
one item per image, and its bad inputs as ONE line `jaxvl: error: ...` naming the key or file."""

from __future__ import annotations

import json
import shutil

import pytest

from jaxvl.cli import main

WORLD = "synthetic:num_images=32,val_images=8"  # its val split: 16 captions of 8 images
TINY = ["--config.fast_compile=True", "--config.progress=False", "--config.data.batch_size=8",
        "--config.data.max_seq_length=12", "--config.eval_every=0"]
PROBE = ["probe", "emap", "--config", "probes:emap,tiny", "--config.progress=False"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("probe") / "uniter"
    assert main(["pretrain", "--config", "pretrain:uniter,tiny", "--workdir", str(run), "--config.steps=2",
                 f"--config.data.dataset={WORLD}", *TINY]) == 0
    return run


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxvl: error: "), err
    return lines[0]


def test_probe_emap_writes_the_report(checkpoint, tmp_path, capsys):
    out = tmp_path / "emap"
    assert main([*PROBE, "--workdir", str(out), f"--config.checkpoints={checkpoint}"]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "uniter" / "emap.json").read_text())
    n = 8  # n_items 16 of the tiny variant, capped by the split's 8 images (one caption per image)
    assert record["n_items"] == n and record["n_pairs"] == n * n and len(record["image_ids"]) == n
    assert len(set(record["image_ids"])) == n and record["split"] == "val" and record["max_seq_length"] == 12
    assert len(record["matched_logits"]) == n and len(record["matched_logits"][0]) == record["num_classes"] == 2
    for predictor in ("full", "emap"):
        assert 0.0 <= record[predictor]["auroc"] <= 1.0
    table = (out / "uniter" / "table.md").read_text()
    assert f"n = {n} items, {n * n} (text, image) pairs" in table and "| EMAP |" in table
    assert table.strip() in (out / "table.md").read_text() and "| full model |" in printed


def test_probe_emap_samples_n_items(checkpoint, tmp_path):
    out = tmp_path / "emap"
    assert main([*PROBE, "--workdir", str(out), f"--config.checkpoints={checkpoint}", "--config.names=u",
                 "--config.n_items=5", "--config.seed=0", "--config.text_block=4", "--config.image_block=2"]) == 0
    record = json.loads((out / "u" / "emap.json").read_text())
    assert record["n_items"] == 5 and record["n_pairs"] == 25 and len(set(record["image_ids"])) == 5
    assert (record["text_block"], record["image_block"]) == (4, 2)


def test_probe_emap_bad_inputs_are_one_line(checkpoint, tmp_path, capsys):
    out = str(tmp_path / "out")
    missing = tmp_path / "nope"
    assert main([*PROBE, "--workdir", out, f"--config.checkpoints={missing}"]) == 2
    assert f"{missing}: no such jaxvl workdir" in _error_line(capsys)
    assert main([*PROBE, "--workdir", out]) == 2
    assert "config checkpoints is empty" in _error_line(capsys)
    assert main([*PROBE, "--workdir", out, f"--config.checkpoints={checkpoint}", "--config.n_items=1"]) == 2
    assert "config n_items=1: expected an integer >= 2" in _error_line(capsys)
    assert main([*PROBE, "--workdir", out, f"--config.checkpoints={checkpoint}", "--config.data.split=test"]) == 2
    assert "no split 'test'" in _error_line(capsys)
    assert main([*PROBE, "--workdir", out, f"--config.checkpoints={checkpoint}", "--config.text_block=3",
                 "--config.image_block=1"]) == 2  # 3 pairs per call do not split over conftest's 8 devices
    assert "3 x 1 pairs per block must be a positive multiple of the 8 devices" in _error_line(capsys)

    no_itm = tmp_path / "no_itm"  # the same run, its model config saying it has no ITM head
    shutil.copytree(checkpoint / "checkpoints", no_itm / "checkpoints")
    info = json.loads((checkpoint / "run.json").read_text())
    info["model_config"]["fusion_method"] = "none"
    (no_itm / "run.json").write_text(json.dumps(info))
    assert main([*PROBE, "--workdir", out, f"--config.checkpoints={no_itm}"]) == 2
    line = _error_line(capsys)
    assert f"checkpoint {no_itm}" in line and "no ITM head" in line

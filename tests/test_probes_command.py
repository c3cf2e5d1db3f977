"""`jaxvl probe emap` end to end on a tiny pretrained checkpoint: emap.json and table.md with N items and N^2 pairs,
one item per image, and its bad inputs as ONE line `jaxvl: error: ...` naming the key or file; the plots of
`jaxvl probe emap` / `mmshap` (emap.png, mmshap.png: valid PNGs; what they say, from the returned figures)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxvl.cli import main
from jaxvl.probes.plots import UNTRAINED, plot_emap, plot_mmshap

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


def _png_size(path) -> tuple[int, int]:
    """(width, height) of the PNG at ``path``, after checking that it decodes."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        image.load()
        return image.size


def _texts(fig) -> str:
    """Every title, label and text of a matplotlib figure, one string."""
    parts = [fig.get_suptitle(), *(t.get_text() for t in fig.texts)]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), *(t.get_text() for t in ax.get_xticklabels())]
        legend = ax.get_legend()
        parts += [t.get_text() for t in legend.get_texts()] if legend else []
    return "\n".join(parts)


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
    width, height = _png_size(out / "uniter" / "emap.png")
    assert width > 300 and height > 200
    assert not (out / "emap.png").exists()  # one checkpoint: no side-by-side plot
    rows = list(csv.DictReader((out / "uniter" / "emap.csv").open()))  # tidy: item x predictor x class
    assert len(rows) == n * 2 * 2 and {r["predictor"] for r in rows} == {"full", "emap"}
    first = [float(r["logit"]) for r in rows if r["item"] == str(record["item_index"][0]) and r["predictor"] == "full"]
    np.testing.assert_allclose(first, record["matched_logits"][0], rtol=1e-6)


def test_probe_emap_plots_several_checkpoints_side_by_side(checkpoint, tmp_path):
    out = tmp_path / "emap"
    assert main([*PROBE, "--workdir", str(out), f"--config.checkpoints={checkpoint},{checkpoint}",
                 "--config.names=a,b", "--config.n_items=4", "--config.text_block=4", "--config.image_block=2"]) == 0
    for path in (out / "a" / "emap.png", out / "b" / "emap.png", out / "emap.png"):
        assert _png_size(path)[0] > 300
    assert _png_size(out / "emap.png")[0] > _png_size(out / "a" / "emap.png")[0]  # two checkpoints' bars


def test_probe_mmshap_writes_its_plot(checkpoint, tmp_path):
    out = tmp_path / "mmshap"
    assert main(["probe", "mmshap", "--config", "probes:mmshap,tiny", "--config.progress=False", "--workdir", str(out),
                 f"--config.checkpoints={checkpoint}", "--config.n_items=3", "--config.permutations=1"]) == 0
    record = json.loads((out / "uniter" / "mmshap.json").read_text())
    assert record["model"] == "uniter" and record["n_examples"] == 3
    rows = list(csv.DictReader((out / "uniter" / "mmshap.csv").open()))  # tidy: item x measure
    assert len(rows) == 3 * 4 and {r["measure"] for r in rows} == {"t_shap", "v_shap", "f_all", "f_none"}
    t = [float(r["value"]) for r in rows if r["measure"] == "t_shap" and r["value"]]
    np.testing.assert_allclose(t, [e["t_shap"] for e in record["examples"] if e["t_shap"] is not None], rtol=1e-6)
    width, height = _png_size(out / "uniter" / "mmshap.png")
    assert width > 300 and height > 200
    fig = plot_mmshap(record, tmp_path / "again.png")
    assert f"n = {record['n_defined']}" in _texts(fig)
    assert (UNTRAINED in _texts(fig)) == (record["itm_trained"] is False)


# ------------------------------------------------------------------------------------------- the plots alone

PAIRS = {"probe": "emap", "model": "u", "score": "ITM logits", "n_items": 8, "n_pairs": 64, "itm_trained": True,
         "full": {"accuracy_matched": 0.75, "accuracy_mismatched": 0.6, "balanced_accuracy": 0.675, "auroc": 0.7},
         "emap": {"accuracy_matched": 0.5, "accuracy_mismatched": 0.5, "balanced_accuracy": 0.5, "auroc": 0.5}}


def test_plot_emap_says_no_interval_and_marks_an_untrained_head(tmp_path):
    fig = plot_emap(PAIRS, tmp_path / "one.png")
    text = _texts(fig)
    assert "no interval" in text and "n = 8 items, 64 (text, image) pairs" in text and UNTRAINED not in text
    assert [ax.get_ylabel() for ax in fig.axes] == ["balanced accuracy (%)", "AUROC (0-1)"]
    assert not [line for ax in fig.axes for line in ax.lines if line.get_marker() == "_"]  # no error bar caps
    fig = plot_emap([PAIRS, {**PAIRS, "model": "v", "itm_trained": False}], tmp_path / "two.png")
    text = _texts(fig)
    assert UNTRAINED in text and "(ITM untrained)" in text
    assert _png_size(tmp_path / "two.png")[0] > _png_size(tmp_path / "one.png")[0]


def test_plot_emap_draws_the_intervals_a_record_carries(tmp_path):
    full = {"accuracy": 0.8, "accuracy_low": 0.7, "accuracy_high": 0.9, "accuracy_matched": 0.8,
            "accuracy_mismatched": 0.8, "balanced_accuracy": 0.8, "balanced_low": 0.7, "balanced_high": 0.9,
            "auroc": 0.9, "n_matched": 30, "n_mismatched": 10}
    emap = {**full, "accuracy": 0.5, "accuracy_low": 0.4, "accuracy_high": 0.6}
    record = {**PAIRS, "design": "labelled", "full": full, "emap": emap}
    fig = plot_emap(record, tmp_path / "labelled.png")
    text = _texts(fig)
    assert [ax.get_ylabel() for ax in fig.axes] == ["accuracy (%)", "balanced accuracy (%)", "AUROC (0-1)"]
    assert "error bars" in text and "no interval on AUROC" in text and "majority label (75%)" in text
    caps = [line for line in fig.axes[0].lines if line.get_marker() == "_"]  # the error bars' caps
    assert sorted({round(y, 6) for cap in caps for y in cap.get_ydata()}) == [40.0, 60.0, 70.0, 90.0]


def test_plot_mmshap_marks_the_mean_and_its_interval(tmp_path):
    record = {"permutations": 10, "removal": "mean", "n_examples": 4, "n_defined": 3, "t_shap": 30.0,
              "t_shap_low": 20.0, "t_shap_high": 40.0, "model": "u", "itm_trained": False,
              "examples": [{"t_shap": 0.2}, {"t_shap": 0.3}, {"t_shap": 0.4}, {"t_shap": None}]}
    fig = plot_mmshap(record, tmp_path / "mmshap.png")
    text = _texts(fig)
    assert "n = 3 of 4 examples" in text and "mean T-SHAP 30.0%" in text and "[20.0, 40.0]" in text
    assert UNTRAINED in text and "T-SHAP (%)" in text and "examples (count)" in text
    assert sum(p.get_height() for p in fig.axes[0].patches if round(p.get_width(), 6) == 5.0) == 3  # the 5-point bins
    assert "no interval" in _texts(plot_mmshap({**record, "t_shap_low": None}, tmp_path / "bare.png"))


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

"""`jaxvl ablate` on jaxvl checkpoints: the report files, and bad input refused before any compilation."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from jaxvl.cli import main
from jaxvl.configs import load_config

REPO = Path(__file__).resolve().parents[1]
WORLD = "synthetic:num_images=32,val_images=8"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny UNITER pretrained for 2 steps on a small world (the checkpoint the ablation reads)."""
    root = tmp_path_factory.mktemp("ablate")
    args = ["pretrain", "--config", "pretrain:uniter,tiny", "--workdir", str(root / "run"),
            f"--config.data.dataset={WORLD}", f"--config.data.prepare_dir={root / 'data'}", "--config.steps=2",
            "--config.eval_every=0", "--config.fast_compile=True", "--config.progress=False",
            "--config.data.batch_size=8", "--config.data.max_seq_length=12"]
    assert main(args) == 0
    return root / "run", root / "data"


def _ablate(run, data, out, *overrides: str) -> list[str]:
    return ["ablate", "--config", "ablate:tiny", "--workdir", str(out),
            f"--config.checkpoints={run},{run}", "--config.names=a,b", f"--config.data.dataset={WORLD}",
            f"--config.data.prepare_dir={data}", "--config.fast_compile=True", "--config.progress=False",
            "--config.data.max_seq_length=12", *[f"--config.{o}" for o in overrides]]


def test_ablate_writes_the_report(run, tmp_path, capsys):
    """Two checkpoints of one model (stacked, one program), 3 + 3 conditions at two thresholds: tidy results per
    model, condition and threshold with intervals and counts, the paper-style table, per-example losses,
    LabelMatch, attention rows and the plots."""
    assert main(_ablate(*run, tmp_path, "thresholds=(0.3,0.5)", "n_boot=200")) == 0
    out = capsys.readouterr().out
    assert "| model | n | MLM None |" in out and "| a |" in out and "| b |" in out
    assert "Verdicts at IoT>0.5" in out and "| a | MLM object |" in out  # each condition against its control
    tables = out[out.index("Mean loss in bits"):out.index("\nreport, per-example")]  # what ablate returned
    assert max(len(line) for line in tables.splitlines()) <= 120 and "Not shown" not in out  # a run: every head
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = {(r["model"], r["task"], r["condition"], r["threshold"]) for r in rows}
    assert ("a", "vis4lang", "object", "0.3") in keys and ("b", "lang4vis", "phrase", "0.5") in keys
    assert all(float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"]) for r in rows if r["mean"])
    verdicts = {(r["task"], r["condition"], r["threshold"]): r["verdict"] for r in rows if r["subset"] == "all"}
    assert verdicts[("vis4lang", "all", "")] and verdicts[("lang4vis", "phrase", "0.5")]  # controls at 0.5 only
    assert not verdicts[("lang4vis", "phrase", "0.3")] and not verdicts[("lang4vis", "none", "0.5")]
    # the same parameters twice: the two stacked members give identical numbers
    a = {(r["task"], r["condition"], r["threshold"], r["metric"], r["subset"]): r["mean"] for r in rows
         if r["model"] == "a"}
    b = {(r["task"], r["condition"], r["threshold"], r["metric"], r["subset"]): r["mean"] for r in rows
         if r["model"] == "b"}
    assert a == b and a
    group = tmp_path / "a+b"
    for name in ("results.csv", "table.md", "conditions.png", "thresholds.png", "attention.csv", "detector.csv"):
        assert (group / name).stat().st_size > 0, name
    assert any(p.name.startswith("per_example") for p in group.iterdir())
    assert (tmp_path / "thresholds.png").stat().st_size > 0


@pytest.mark.parametrize("override, message", [
    ("vis4lang='none,obj'", "unknown vis4lang condition"),
    ("thresholds=(0.5,1.5)", r"outside \[0, 1\]"),
    ("data.split='nope'", "no split 'nope'"),
    ("report_threshold=0.55", r"report_threshold=0.55 is not one of thresholds .* \(or set controls=False\)"),
])
def test_bad_spec_or_split_is_refused(run, tmp_path, override, message, capsys):
    assert main(_ablate(*run, tmp_path, override)) == 2
    err = capsys.readouterr().err  # a user error: one line (after any data preparation's progress), exit 2
    assert "Traceback" not in err and re.search(f"^jaxvl: error: .*{message}", err.splitlines()[-1])


def test_checkpoint_that_does_not_fit_the_data(run, tmp_path, capsys):
    """A world with 16-d features and other words: named before anything compiles."""
    other = "synthetic:num_images=16,val_images=4,feature_dim=16,num_classes=12"
    args = _ablate(*run, tmp_path) + [f"--config.data.dataset={other}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(r"^jaxvl: error: .*feature size: data 16, model 24.*detector classes: "
                                                r"data 12, model 20", err.splitlines()[-1])


def test_configs_parse():
    cfg = load_config("ablate")
    assert cfg.thresholds == tuple(round(0.1 * i, 1) for i in range(10)) and cfg.quirks.missing_target_as_zero


# `jaxvl demo` end to end (the README's main job): tests/test_wheel.py runs it from the installed wheel (the same
# command, `--steps 20`, on one device as a user runs it) and checks its table and report. (A second, in-process
# run here on 8 fake devices cost 2-3 minutes of the suite for the same checks.)


def test_volta_checkpoint_gives_the_same_numbers(run, tmp_path):
    """The jaxvl checkpoint written as a VOLTA state dict (``jaxvl.convert.volta``) with its VOLTA config JSON:
    `jaxvl ablate` reads it through the converter and reports the jaxvl checkpoint's results (to float32
    rounding). One ablation of both checkpoints (the jaxvl workdir ``a`` and the VOLTA file ``v``)."""
    import json

    from jaxvl.ablation import model_config_from_run
    from jaxvl.convert.volta import to_volta
    from jaxvl.models.volta.config import to_volta_dict
    from jaxvl.runtime.checkpoint import restore_params

    torch = pytest.importorskip("torch", reason="needs torch to write a VOLTA .bin: pip install -e '.[test]'")
    workdir, data = run
    model_cfg, _ = model_config_from_run(str(workdir / "run.json"))
    params, _ = restore_params(workdir / "checkpoints")
    torch.save({k: torch.from_numpy(v.copy()) for k, v in to_volta(params, model_cfg).items()}, tmp_path / "m.bin")
    (tmp_path / "m.json").write_text(json.dumps(to_volta_dict(model_cfg)))
    args = _ablate(workdir, data, tmp_path / "out", "thresholds=0.5", "n_boot=10", "attention=False",
                   f"checkpoints={workdir},{tmp_path / 'm.bin'}", "names=a,v",
                   f"model.volta_config={tmp_path / 'm.json'}", "model.num_object_classes=20")
    assert main(args) == 0
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ours, theirs = ({(r["task"], r["condition"], r["metric"], r["subset"]): r["mean"] for r in rows
                     if r["model"] == name} for name in ("a", "v"))
    assert ours.keys() == theirs.keys() and ours
    # the same parameters through two loaders: equal up to float32 rounding (~1e-7 relative)
    for key, value in ours.items():
        assert (value == theirs[key] == "") or float(theirs[key]) == pytest.approx(float(value), rel=1e-5), key


def test_labelmatch_without_a_label_list_is_said():
    """LabelMatch on a dataset without a detector label list and without ``labelmatch.objects_vocab``: not
    computed, and the report says so (it used to be skipped silently)."""
    from types import SimpleNamespace

    from jaxvl.ablation.run import label_matcher

    cfg = load_config("ablate:tiny")
    matcher, note = label_matcher(cfg, SimpleNamespace(metadata={}), "data/f30k")
    assert matcher is None and "LabelMatch not computed: data/f30k" in note and "labelmatch.objects_vocab" in note
    matcher, note = label_matcher(cfg, SimpleNamespace(metadata={"label_list": ["__background__", "dog"]}), "w")
    assert matcher is not None and note == ""
    cfg.labelmatch.enabled = False
    assert label_matcher(cfg, SimpleNamespace(metadata={}), "w") == (None, "")

"""What the demo and the ablation report say (issue 13, section 1): each member read on the head it trained,
tables of at most 120 characters on the console, the demo's planted / expected text and its "as expected?"
column. Hand-made results and the stored sweep members of ``tests/data/pre_move``: nothing is trained."""

import csv
import functools
from pathlib import Path

import numpy as np
import pytest

from jaxvl.ablation.report import (
    CONSOLE_WIDTH,
    console_tables,
    full_tables,
    labelmatch_table,
    plot_conditions,
    tidy_rows,
    write_report,
)
from jaxvl.ablation.run import load_checkpoint, metric_head
from jaxvl.ablation.sweep import AblationResult, AblationSpec
from jaxvl.ablation.verdicts import as_expected, verdict_table
from jaxvl.configs import load_config
from jaxvl.data.synthetic import WorldConfig
from jaxvl.demo import WORLD, expected_verdicts, planted, world_config

SWEEP = Path(__file__).parent / "data" / "pre_move" / "pretrain_sweep"
N = 48
# Per (metric, condition, control): the shift over `none` each model shows. "xe"'s MRC-KL head and "kl"'s MRC-XE
# head are untrained: their shifts (here a striking -0.9 bits) must never be shown.
SHIFTS = {"kl": {"mlm": {"object": 1.0, "all": 1.2}, "mrc_kl": {"phrase": 0.6, "all": 0.7},
                 "mrc_xe": {"phrase": -0.9, "all": -0.9}, "mrc_xe_vg": {"phrase": 0.4, "all": 0.4}},
          "xe": {"mlm": {"object": 1.0, "all": 1.2}, "mrc_kl": {"phrase": -0.9, "all": -0.9},
                 "mrc_xe": {"phrase": 0.02, "all": 0.03}, "mrc_xe_vg": {"phrase": -0.9, "all": -0.9}}}
UNTRAINED = {"kl": {"mrc_xe"}, "xe": {"mrc_kl", "mrc_xe_vg"}}


def hand_result(all_agree: bool = True) -> AblationResult:
    """Two models ("kl" trained only MRC-KL, "xe" only MRC-XE), every condition beside its control at IoT>0.5:
    per example, a condition shifts the loss by ``SHIFTS`` over ``none``, a control by nothing. Every example
    has a LabelMatch label; the detector agrees with it on all (``all_agree``) or on half of them."""
    spec = AblationSpec(4, thresholds=(0.5,), control_threshold=0.5)
    members = {t: spec.members(t) for t in ("vis4lang", "lang4vis")}
    rng = np.random.default_rng(0)
    base = rng.normal(5.0, 1.0, N)

    def values(task: str, metric: str) -> np.ndarray:  # [K, M, N]
        return np.stack([np.stack([base + (0.0 if m.control else SHIFTS[k][metric].get(m.condition, 0.0))
                                   + rng.normal(0.0, 0.05, N) for m in members[task]]) for k in SHIFTS])

    rank = np.zeros(N, int) if all_agree else np.arange(N) % 2
    m_v, m_l = len(members["vis4lang"]), len(members["lang4vis"])
    stats = {"phrase_tokens": np.full(N, 2), "vis4lang_ablated": np.ones((m_v, N), int),
             "num_aligned": np.ones((m_l, N), int), "has_target": np.ones((m_l, N), bool),
             "target_index": np.ones((m_l, N), int), "text_masked": np.full((m_l, N), 2),
             "detector_rank": np.tile(rank, (m_l, 1)), "detector_prob": np.full((m_l, N), 0.5)}
    out = {"vis4lang": {"mlm": values("vis4lang", "mlm")},
           "lang4vis": {m: values("lang4vis", m) for m in ("mrc_kl", "mrc_xe", "mrc_xe_vg")}}
    return AblationResult(tuple(SHIFTS), members, np.arange(N), out, stats, spec.quirks, vg_label=np.full(N, 3))


@functools.cache
def rows(all_agree: bool = True) -> list[dict]:
    return tidy_rows(hand_result(all_agree), n_boot=200, untrained=UNTRAINED)


def table_rows(text: str, model: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"| {model} |")]


def cells(text: str, model: str) -> list[list[str]]:
    """The cells of ``model``'s rows in the markdown tables of ``text``."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in table_rows(text, model)]


# ------------------------------------------------------------------------------ each member on its head


def test_sweep_members_are_read_on_the_heads_they_trained():
    """The stored MRC-KL / MRC-XE members of a sweep (both heads in their model): the checkpoint meta's member
    weights say which head each trained."""
    cfg = load_config("ablate:tiny")
    for name, trained, untrained in [("mrc-kl", {"0"}, {"mrc_xe"}), ("mrc-xe", {"3"}, {"mrc_kl", "mrc_xe_vg"})]:
        ckpt = load_checkpoint(str(SWEEP / "members" / name), name, cfg)
        assert set(ckpt.model_cfg.visual_targets) == {"0", "3"}
        assert ckpt.trained_heads == trained and ckpt.untrained_metrics() == untrained, name


def test_metric_heads_follow_the_losses():
    """MRC-XE of a model without the "3" head is read on "0" (VOLTA's xent_1601), MRC-XE-VG on "0" first."""
    assert metric_head("mrc_xe", {"0"}) == "0" and metric_head("mrc_xe", {"0", "3"}) == "3"
    assert metric_head("mrc_xe_vg", {"0", "3"}) == "0" and metric_head("mrc_xe_vg", {"3"}) == "3"
    assert metric_head("mrc_kl", {"3"}) is None


def test_untrained_heads_are_marked_and_never_shown(tmp_path):
    """The rows read on an untrained head are kept in results.csv (trained_head False) and absent from every
    table: the console's, table.md's paper tables, verdicts and LabelMatch; one note names them."""
    all_rows = rows()
    hidden = {(r["model"], r["metric"]) for r in all_rows if not r["trained_head"]}
    assert hidden == {(m, k) for m, ks in UNTRAINED.items() for k in ks}
    for text in (console_tables(all_rows), full_tables(all_rows, labelmatch=True)):
        assert "-0.9" not in text  # no number of an untrained head, as a mean shift or an effect
        assert not [line for line in table_rows(text, "kl") if "MRC-XE " in line]
        assert not [line for line in table_rows(text, "xe") if "MRC-KL" in line or "MRC-XE-VG" in line]
        assert "Not shown: losses read on a head the model never trained (kl: MRC-XE; xe: MRC-KL, MRC-XE-VG)" in text
        assert text.count("vis4lang (vision for language)") == 1 and text.count("lang4vis (language for vision)") == 1
    summary, verdicts = console_tables(all_rows).split("Verdicts at")
    assert [c[5] for c in cells(summary, "kl") + cells(summary, "xe")] == ["MRC-KL", "MRC-XE"]
    assert {(c[0], c[1]): c[6] for c in cells(verdicts, "kl") + cells(verdicts, "xe")} == {
        ("kl", "MLM object"): "found", ("kl", "MLM all"): "found", ("kl", "MRC-KL phrase"): "found",
        ("kl", "MRC-KL all"): "found", ("xe", "MLM object"): "found", ("xe", "MLM all"): "found",
        ("xe", "MRC-XE phrase"): "not found", ("xe", "MRC-XE all"): "not found"}
    full = full_tables(all_rows, labelmatch=True)
    kl_table, xe_table = (full[full.index(f"lang4vis {name} at"):] for name in ("MRC-KL", "MRC-XE"))
    assert table_rows(kl_table.split("\n\n")[1], "xe") == [] and table_rows(xe_table.split("\n\n")[1], "kl") == []
    paths = write_report(hand_result(), tmp_path, n_boot=50, untrained=UNTRAINED)
    with open(paths["results.csv"], newline="") as f:
        saved = {(r["model"], r["metric"]) for r in csv.DictReader(f) if r["trained_head"] == "False"}
    assert saved == hidden and "-0.9" not in open(paths["table.md"]).read()


def test_plots_skip_untrained_heads(tmp_path, monkeypatch):
    """The lang4vis panel draws each model on the loss of the head it trained, nothing else."""
    import matplotlib.axes

    labels = []
    real_bar = matplotlib.axes.Axes.bar
    monkeypatch.setattr(matplotlib.axes.Axes, "bar",
                        lambda self, *a, label=None, **k: labels.append(label) or real_bar(self, *a, label=label, **k))
    plot_conditions(rows(), tmp_path / "c.png", 0.5, ("mrc_kl", "mrc_xe"))
    assert labels == ["kl", "xe", "kl MRC-KL", "xe MRC-XE"]


# ------------------------------------------------------------------------------ tables


def test_console_tables_are_at_most_120_characters():
    """Titles, unit, n and the IoT threshold in the column names; the full form (intervals) only in table.md."""
    console = console_tables(rows(), expected={("vis4lang", "object"): "found"})
    assert max(len(line) for line in console.splitlines()) <= CONSOLE_WIDTH
    assert console.startswith("Mean loss in bits") and "Verdicts at IoT>0.5, in bits" in console
    assert "| model | n | MLM None | MLM Object (IoT>0.5) | MLM All | loss | n | None (IoT>0.5) |" in console
    assert "| model | condition (IoT>0.5) | n | Δ condition |" in console and "| kl | 48 | " in console
    full = full_tables(rows(), labelmatch=True)
    assert "MRC-KL Phrase (IoT>0.5)" in full and "vis4lang MLM on n=48 examples" in full
    assert "MRC-XE-VG: cross-entropy to the phrase's own Visual Genome label" in full


@pytest.mark.parametrize("all_agree, subsets", [(True, ["labelmatch = agree"]),
                                                (False, ["labelmatch", "labelmatch_agree"])])
def test_labelmatch_rows_are_merged_when_equal(all_agree, subsets):
    """labelmatch_agree holds the same examples as labelmatch when the detector agrees on all: one row each."""
    table = labelmatch_table(rows(all_agree))
    kl = cells(table, "kl")
    assert [(c[1], c[2]) for c in kl] == [(s, m) for s in subsets for m in ("MRC-KL", "MRC-XE-VG")]
    assert [c[-1] for c in kl] == ["48"] * 2 + (["24"] * 2 if not all_agree else [])
    assert [c[2] for c in cells(table, "xe")] == ["MRC-XE"] * len(subsets)


# ------------------------------------------------------------------------------ the demo's expectations


def test_demo_says_what_its_world_plants():
    world = world_config(WORLD)
    assert (world.vision_to_language, world.ambiguous_fraction, world.num_classes) == (1.0, 1.0, 12)
    text = planted(world)
    assert max(len(line) for line in text.splitlines()) <= CONSOLE_WIDTH
    for part in ("vision -> language (vision_to_language=1): every caption names the object of its image",
                 "language -> vision (ambiguous_fraction=1): 12 of the 12 classes come in 6 pairs that share one",
                 "only the caption tells the two classes of a pair apart",
                 "vis4lang object / all: removing the phrase's region, or every region, should raise the MLM loss",
                 "MRC-KL members on MRC-KL, MRC-XE members on MRC-XE): found."):
        assert part in " ".join(line.strip() for line in text.splitlines()), part
    assert set(expected_verdicts(world).values()) == {"found"} and len(expected_verdicts(world)) == 4


@pytest.mark.parametrize("knobs, vis4lang, lang4vis", [
    (dict(vision_to_language=0.0, ambiguous_fraction=0.0), "not found", "not found"),
    (dict(vision_to_language=1.0, ambiguous_fraction=0.0), "found", "not found"),
    (dict(vision_to_language=0.0, ambiguous_fraction=1.0), "not found", "not found"),  # captions name nothing
    (dict(vision_to_language=0.5, ambiguous_fraction=0.5), "found", "found"),
])
def test_expected_verdicts_follow_the_knobs(knobs, vis4lang, lang4vis):
    world = WorldConfig(**knobs)
    expected = expected_verdicts(world)
    assert expected == {("vis4lang", "object"): vis4lang, ("vis4lang", "all"): vis4lang,
                        ("lang4vis", "phrase"): lang4vis, ("lang4vis", "all"): lang4vis}
    flat = " ".join(line.strip() for line in planted(world).splitlines())
    unless = " no more than its control does" if vis4lang != "found" else ""
    assert f"MLM loss of the masked phrase{unless}: {vis4lang}." in flat


def _row(model: str, task: str, condition: str, metric: str, verdict: str | None) -> dict:
    return dict(model=model, task=task, condition=condition, metric=metric, subset="all", count=10, delta=0.5,
                control_delta=0.1, effect=0.4, effect_low=0.3, effect_high=0.5, verdict=verdict, control_shortfall=0,
                threshold=None if (task, condition) == ("vis4lang", "all") else 0.5, trained_head=True)


def test_as_expected_column():
    """yes where the verdict is the expected one, no where not (also opposite for found), – without either."""
    assert [as_expected(v, e) for v, e in [("found", "found"), ("not found", "found"), ("opposite", "found"),
                                           ("not found", "not found"), (None, "found"), ("found", None)]] == \
        ["yes", "no", "no", "yes", "–", "–"]
    synthetic = [_row("m", "vis4lang", "object", "mlm", "found"), _row("m", "vis4lang", "all", "mlm", "opposite"),
                 _row("m", "lang4vis", "phrase", "mrc_kl", "not found"),
                 _row("m", "lang4vis", "all", "mrc_kl", "found")]
    expected = {("vis4lang", "object"): "found", ("vis4lang", "all"): "found", ("lang4vis", "phrase"): "not found"}
    table = verdict_table(synthetic, expected=expected)
    assert [c[-3:] for c in cells(table, "m")] == [["found", "found", "yes"], ["opposite", "found", "no"],
                                                   ["not found", "not found", "yes"], ["found", "–", "–"]]
    assert "| verdict | expected | as expected? |" in table and "expected: the verdict the data's" in table
    assert "expected" not in verdict_table(synthetic)  # without expectations, no such columns
